"""How many threads a command computes with: the cores it can use now, not the cores the machine has.

torch (OpenMP) and Mesa's llvmpipe (which renders our frames on CPUs) start one thread per core and split
each operation evenly between them. When another process keeps one of those cores busy, every operation
waits for the thread that shares it, while the others spin: `masklam train lam` ran 5x slower with torch's
two threads than with one on a busy 2-core machine (docs/performance.md). Knowing which cores we may
use (``os.sched_getaffinity``) is not enough, since another process on an allowed core is invisible to it.
So a CPU-heavy command, once at start-up, counts:

1. the cores it may run on: its CPU affinity (taskset, Slurm, cpusets), capped by a cgroup CPU quota;
2. how much of those cores is free right now: /proc/stat sampled over 0.2 s; a core another process keeps
   busy does not count, a half-busy one counts half;
3. the worker processes it starts itself (they bring their own threads): ``leave_for_workers``.

The count is set once: a load that appears later is not seen (pass ``--threads`` then). ``--threads N`` or
``MASKLAM_THREADS=N`` sets the count (0: leave every library's own default); without them, a user's own
OMP_NUM_THREADS (torch) or LP_NUM_THREADS (llvmpipe) is kept.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

ENV = "MASKLAM_THREADS"
SAMPLE_SECONDS = 0.2
_chosen: int | None = None  # threads this process computes with, when masklam chose them
_configured = False


def usable_cores() -> int:
    """The cores this process may run on: its affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cgroup_quota() -> float | None:
    """CPUs a cgroup lets this process use (cgroup v2 cpu.max, v1 cfs_quota_us), None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) jiffies since boot, from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle = values[3] + values[4]
            times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def free_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of this process's cores other processes leave free, sampled over ``seconds`` while this one
    sleeps; None where /proc/stat cannot be read (not Linux)."""
    try:
        cores = os.sched_getaffinity(0)
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
    except (AttributeError, OSError, ValueError):
        return None
    free = 0.0
    for core in cores:
        if core in before and core in after:
            busy, total = (a - b for a, b in zip(after[core], before[core]))
            free += 1.0 - busy / total if total > 0 else 1.0
    return free


def auto_threads() -> int:
    """Threads for one compute-heavy process: the usable cores others leave free, rounded, at least 1."""
    cores = usable_cores()
    free = free_cores()
    return cores if free is None else max(1, min(cores, math.floor(free + 0.5)))


def requested(option: int | None) -> int | None:
    """``--threads`` if given, else ``MASKLAM_THREADS``; None when neither says."""
    if option is not None:
        return option
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    from masklam.errors import UsageError

    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{ENV}={value!r} is not a number of threads: set a whole number (0 = libraries' defaults)") from None


def configure(option: int | None, uses_torch: bool = True) -> int | None:
    """Size torch's and llvmpipe's threads for this process (before any GL context exists); the count set, or
    None when the libraries keep their own defaults. ``uses_torch`` imports torch now to size its inter-op
    pool too (it must be set before torch first uses it)."""
    global _chosen, _configured
    from masklam.errors import UsageError

    wanted = requested(option)
    if _configured and wanted is None:  # once per process: a second command in-process (tests) keeps the count
        return _chosen
    if wanted is not None and wanted < 0:
        raise UsageError(f"--threads {wanted}: pass a number of threads >= 1, or 0 for the libraries' defaults")
    _configured = True
    if wanted == 0:
        _chosen = None
        return None
    explicit = wanted is not None
    users = os.environ.get("OMP_NUM_THREADS", "").strip()
    count = wanted if explicit else auto_threads()
    torch_threads = int(users) if not explicit and users.isdigit() and int(users) > 0 else count
    # Environment first: it reaches torch when imported later, llvmpipe when a GL context is made, and workers.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LP_NUM_THREADS"):
        if explicit or not os.environ.get(name, "").strip():
            os.environ[name] = str(count)
    if uses_torch or "torch" in sys.modules:
        set_torch_threads(torch_threads)
    _chosen = torch_threads
    return torch_threads


def set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:  # already set, or already used, in this process (e.g. a second command in-process)
        pass


def leave_for_workers(workers: int) -> None:
    """A command that starts ``workers`` compute processes of its own (data loaders) gives them their cores."""
    if _chosen is not None and workers > 0:
        import torch

        torch.set_num_threads(max(1, _chosen - workers))
