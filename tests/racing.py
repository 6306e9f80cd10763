"""Two masklam writers started together, trial after trial, for the tests of issue 30's "one writer at a time".

Starting two interpreters per trial costs seconds of imports and lets the first one start well ahead of the
second. Here two spawned processes import masklam once and run each trial's command in-process (Typer's
CliRunner, the console script's parsing and exit codes), released at the same instant by a barrier; the parent
resets the output before a trial and checks it after."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Iterator


def _writer(commands: list[list[str]], env: dict[str, str], start, finish, outcomes) -> None:
    os.environ.update(env)
    from typer.testing import CliRunner

    from masklam.cli import app

    try:
        for args in commands:
            start.wait()
            result = CliRunner().invoke(app, args, prog_name="masklam")
            stderr = result.stderr
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                stderr += "".join(traceback.format_exception(*result.exc_info))  # a crash reads as one would
            outcomes.put((result.exit_code, stderr))
            del result  # its traceback holds the run's frames: free its renderers now, not at exit after EGL closed
            gc.collect()
            finish.wait()
    except threading.BrokenBarrierError:  # the parent stopped early (a failed check)
        return


def race(commands: list[list[str]], reset: Callable[[int], None], env: dict[str, str] | None = None) -> Iterator[list[tuple[int, str]]]:
    """Run ``commands[i]`` in two processes at once after ``reset(i)``; yield each trial's two (exit code,
    stderr) once both have finished, before the next reset."""
    context = multiprocessing.get_context("spawn")  # no inherited MuJoCo/EGL state, no forked threads
    start, finish, outcomes = context.Barrier(3), context.Barrier(3), context.Queue()
    settings = {"OMP_NUM_THREADS": "1", **(env or {})}
    writers = [context.Process(target=_writer, args=(commands, settings, start, finish, outcomes), daemon=True) for _ in range(2)]
    for writer in writers:
        writer.start()
    try:
        for trial in range(len(commands)):
            reset(trial)
            start.wait(timeout=300)  # the first trial waits for the imports
            pair = [outcomes.get(timeout=300) for _ in range(2)]
            yield pair
            finish.wait(timeout=60)
    finally:
        start.abort()
        finish.abort()
        for writer in writers:
            writer.join(timeout=30)
            if writer.is_alive():
                writer.kill()
