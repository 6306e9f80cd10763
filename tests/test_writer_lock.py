"""One writer at a time (masklam/locks.py): a second writer of the same dataset, mask source or run stage is
refused in one line naming the holder; a lock whose process died is taken over; two real writers started
together never fail with anything but that line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from masklam.locks import lock_path, writer_lock

COLLECT = ["collect", "--env", "dmc:cheetah-run", "--steps", "6", "--size", "16", "--episodes", "2", "--test-episodes", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAM_CACHE", str(tmp_path / "cache"))  # the locks live in masklam's cache


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(masklam_cli, tmp_path):
    out = tmp_path / "data"
    with writer_lock(out):
        result = masklam_cli(*COLLECT, "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "is being written by another masklam (pid " + str(os.getpid()) in lines[0]
    assert not out.exists()  # the lock lives in masklam's cache, not in the user's folder
    assert masklam_cli(*COLLECT, "--out", str(out)).returncode == 0  # released with its holder


def test_the_lock_of_a_killed_process_is_taken_over(masklam_cli, tmp_path):
    out = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from masklam.locks import writer_lock\nwith writer_lock({str(out)!r}):\n    print('held', flush=True)\n    input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert holder.stdout.readline().strip() == "held"
    assert masklam_cli(*COLLECT, "--out", str(out)).returncode == 2
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert lock_path(out).is_file()  # left behind by the dead process, and taken over:
    assert masklam_cli(*COLLECT, "--out", str(out)).returncode == 0


def test_two_transforms_of_one_new_source_at_once_never_crash(masklam_cli, tmp_path, monkeypatch):
    """20 trials: two `masks transform` making the same new Zarr source, released at the same instant."""
    from racing import race

    monkeypatch.setenv("MASKLAM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    assert masklam_cli(*COLLECT, "--backend", "zarr", "--out", str(data)).returncode == 0
    names = [f"oracle_erode1_{trial}" for trial in range(20)]
    commands = [["masks", "transform", str(data), "--erode", "1", "--no-progress", "--name", name] for name in names]
    for trial, results in enumerate(race(commands, lambda _: None, {"MASKLAM_CACHE": str(tmp_path / "cache")})):
        assert all(code in (0, 2) for code, _ in results), results
        assert any(code == 0 for code, _ in results), results
        for code, err in results:
            if code == 2:
                assert "is being written by another masklam" in err and len(err.strip().splitlines()) == 1, err
        assert masklam_cli("masks", "compare", str(data), "--pred", names[trial]).returncode == 0  # the source is whole


@pytest.mark.parametrize(
    "command, part",
    [
        (["publish", "DATA", "--repo-id", "someone/tiny", "--dry-run", "--no-progress", "--stage", "OUT"], "publish"),
        (["pull", "someone/tiny", "--out", "OUT", "--no-progress"], "pull"),
        (["report", "RUN", "--out", "OUT"], "report"),
    ],
)
def test_publish_pull_and_report_refuse_a_held_output(masklam_cli, tmp_path, command, part):
    out = tmp_path / "out"
    args = [{"OUT": str(out), "DATA": str(tmp_path / "data"), "RUN": str(tmp_path / "run")}.get(arg, arg) for arg in command]
    with writer_lock(out, part):
        result = masklam_cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"{out} is being written by another masklam (pid {os.getpid()} on " in lines[0]
    assert not out.exists()  # refused before anything was written


def test_a_second_segment_of_one_source_is_refused_before_its_teacher_runs(masklam_cli, tmp_path):
    """segment's lock covers the teacher and the student, not only the mask-writing step: a second
    `segment --distill` of the same source used to redo the teacher's work before meeting the lock."""
    from masklam.segment.writer import source_lock

    data = tmp_path / "data"
    assert masklam_cli(*COLLECT, "--out", str(data)).returncode == 0
    segment = ["segment", str(data), "--model", "oracle", "--name", "copy", "--distill", "10", "--no-progress"]
    with source_lock(data.resolve(), "copy", 0):
        result = masklam_cli(*segment)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "is being written by another masklam (pid " in lines[0], result.stderr
    assert not (data / "segment" / "copy").exists()  # no teacher cache, no student: nothing was done
