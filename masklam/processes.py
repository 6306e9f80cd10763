"""Worker processes that never outlive the process that started them.

A worker started by masklam (collect's pool) calls ``die_with_parent`` first thing: when its parent dies, even by
SIGKILL, the kernel kills it too (Linux's PR_SET_PDEATHSIG); elsewhere a thread watches the parent's pid. So a
killed job leaves no worker writing into its output, or racing the re-run that resumes it.
``worker_initializer`` makes that the first thing a spawned worker does, before it imports anything heavy (a
worker's imports take seconds: a parent killed meanwhile is noticed at once, not after them).
``no_interrupts_while_starting`` starts workers with Ctrl-C ignored: the parent alone handles it, as one line.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (the process that started it) ends."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the request was made
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass  # no prctl: watch the parent instead
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="masklam-watch-parent", daemon=True).start()


def _watch_parent(parent_pid: int, every: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every)
    os._exit(1)


@contextmanager
def no_interrupts_while_starting() -> Iterator[None]:
    """Processes started inside this block never see Ctrl-C: they inherit a blocked SIGINT, which Python leaves
    blocked, so they print no KeyboardInterrupt tracebacks and stop when this process stops them. This process
    still gets it: SIGINT is blocked in its main thread only, so a Ctrl-C is taken by another of its threads (and
    Python's handler still runs in the main thread) or stays pending until the block is left.

    (Ignoring SIGINT here instead, as before, dropped a Ctrl-C that a renderer or progress-bar thread took while
    the workers started: collect then ran to the end.) Only in the main thread, where signal handlers live."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def worker_initializer(parent_pid: int, initializer: str, payload: bytes, *inherited) -> None:
    """A pool's initializer: die with the parent, then import ``initializer`` ("module:function") and call it with
    the pickled ``payload``'s arguments and then ``inherited`` (objects only spawning may pass, such as queues).
    The payload is unpickled here, after die_with_parent, because unpickling it imports the heavy modules."""
    die_with_parent(parent_pid)
    module, _, name = initializer.partition(":")
    getattr(importlib.import_module(module), name)(*pickle.loads(payload), *inherited)
