"""Thread sizing (masklam/threads.py): the free share of the usable cores, overridden by --threads or
MASKLAM_THREADS, applied to torch (intra- and inter-op) and llvmpipe before either starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from masklam import threads
from masklam.cli import app
from masklam.errors import UsageError


@pytest.mark.parametrize(("free", "cores", "expected"), [(2.0, 2, 2), (1.7, 2, 2), (1.1, 2, 1), (0.0, 2, 1), (None, 4, 4), (7.9, 4, 4)])
def test_auto_threads_counts_the_free_share_of_usable_cores(monkeypatch, free, cores, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "free_cores", lambda: free)
    assert threads.auto_threads() == expected


def test_free_cores_leaves_out_a_busy_core(monkeypatch):
    samples = iter(
        [
            {0: (100, 1000), 1: (100, 1000), 2: (0, 1000)},
            {0: (200, 1100), 1: (190, 1100), 2: (0, 1100)},  # core 0 all busy, core 1 90 %, core 2 not ours
        ]
    )
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads.free_cores(seconds=0) == pytest.approx(0.1)


def test_the_option_beats_the_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.requested(2) == 2
    assert threads.requested(None) == 3
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(UsageError, match="MASKLAM_THREADS='many'"):
        threads.requested(None)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--threads", "-1"], {}, "error: --threads -1"),
        ([], {"MASKLAM_THREADS": "two"}, "error: MASKLAM_THREADS='two'"),
    ],
)
def test_bad_thread_counts_are_one_line_and_exit_2(tmp_path, args, env, message):
    result = CliRunner().invoke(app, [*args, "probe", str(tmp_path), "--data", str(tmp_path)], env=env)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()] and message in result.output


def test_a_count_reaches_torch_and_llvmpipe_and_a_users_omp_num_threads_is_kept():
    # One interpreter for both (importing torch is the slow part): an explicit count, then a fresh sizing
    # without one, where the user's own OMP_NUM_THREADS decides torch's threads and the sizing llvmpipe's.
    script = (
        "import os\n"
        "for name in ('OMP_NUM_THREADS', 'LP_NUM_THREADS', 'MASKLAM_THREADS'): os.environ.pop(name, None)\n"
        "from masklam import threads\n"
        "threads.configure(3)\n"
        "import torch\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads(), os.environ['LP_NUM_THREADS'])\n"
        "threads._configured = False\n"
        "os.environ['OMP_NUM_THREADS'] = '1'; os.environ.pop('LP_NUM_THREADS')\n"
        "threads.auto_threads = lambda: 2\n"
        "threads.configure(None)\n"
        "print(torch.get_num_threads(), os.environ['LP_NUM_THREADS'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split() == ["3", "3", "3", "1", "2"]
