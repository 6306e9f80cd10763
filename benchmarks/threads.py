"""`masklam train lam` on an idle machine and beside one busy process pinned to a core, before and after
masklam sized its threads (masklam/threads.py).

    python benchmarks/threads.py --out /tmp/masklam-threads

Collects a small dataset once (dmc:cheetah-run, 32 px, kept in --out), then times whole `masklam train lam
--trainer masklam-tiny` processes (start-up included, as a user waits for them) in rounds. Each round runs
both variants, idle and loaded, in an order that alternates between rounds, so a load from elsewhere on a
shared machine falls on all four cells alike:

- before: `masklam --threads 0 ...`, the libraries' defaults (torch: one thread per core), masklam's behaviour
  before it sized threads;
- after: `masklam ...`, threads sized at start-up.

"loaded" runs beside `taskset -c 0 python -c 'while True: pass'`. OMP_NUM_THREADS, MKL_NUM_THREADS,
LP_NUM_THREADS and MASKLAM_THREADS are removed from the environment of every timed run. Prints a markdown table
(median seconds per cell, loaded/idle ratios) for docs/performance.md, and what the sizing chose at the
time of each "after" run (sampled by a separate process just before it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLEAN = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LP_NUM_THREADS", "MASKLAM_THREADS")
VARIANTS = {"before": ["--threads", "0"], "after": []}


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLEAN}


def masklam(*args: str) -> list[str]:
    return [sys.executable, "-m", "masklam.cli", *args]


def dataset(root: Path) -> Path:
    data = root / "data"
    if not (data / "info.json").exists():
        subprocess.run(
            masklam(
                "collect",
                "--env",
                "dmc:cheetah-run",
                "--out",
                str(data),
                "--size",
                "32",
                "--episodes",
                "4",
                "--test-episodes",
                "1",
                "--steps",
                "100",
                "--no-progress",
            ),
            check=True,
            env=environment(),
        )
    return data


def time_training(root: Path, data: Path, variant: str, steps: int) -> float:
    out = root / "run"
    shutil.rmtree(out, ignore_errors=True)
    command = masklam(
        *VARIANTS[variant],
        "train",
        "lam",
        "--data",
        str(data),
        "--out",
        str(out),
        "--trainer",
        "masklam-tiny",
        "--set",
        f"optim.steps={steps}",
        "--no-progress",
    )
    began = time.perf_counter()
    subprocess.run(command, check=True, env=environment(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def chosen_threads() -> str:
    script = "from masklam.threads import auto_threads; print(auto_threads())"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment(), check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/masklam-threads"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = dataset(args.out)
    times: dict[tuple[str, str], list[float]] = {(v, c): [] for v in VARIANTS for c in ("idle", "loaded")}
    chosen: dict[str, list[str]] = {"idle": [], "loaded": []}
    for round_ in range(args.rounds):
        conditions = ("idle", "loaded") if round_ % 2 == 0 else ("loaded", "idle")
        for condition in conditions:
            busy = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"]) if condition == "loaded" else None
            try:
                if busy is not None:
                    time.sleep(1.0)  # let it take its core
                variants = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
                for variant in variants:
                    if variant == "after":
                        chosen[condition].append(chosen_threads())
                    seconds = time_training(args.out, data, variant, args.steps)
                    times[variant, condition].append(seconds)
                    print(f"round {round_ + 1} {condition:6} {variant:6} {seconds:6.1f} s", file=sys.stderr, flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    print(f"\n`python benchmarks/threads.py --rounds {args.rounds} --steps {args.steps}` (median of {args.rounds} runs per cell, seconds):\n")
    print("| threads | idle | beside a busy core | loaded / idle |")
    print("|---|---|---|---|")
    for variant, label in (("before", "torch's default (before)"), ("after", "sized at start-up (after)")):
        idle, loaded = (statistics.median(times[variant, c]) for c in ("idle", "loaded"))
        print(f"| {label} | {idle:.1f} | {loaded:.1f} | {loaded / idle:.2f} |")
    print(f"\nthreads the sizing chose: idle {', '.join(chosen['idle'])}; loaded {', '.join(chosen['loaded'])}")
    print("all runs:", {f"{v}/{c}": [round(t, 1) for t in ts] for (v, c), ts in times.items()})


if __name__ == "__main__":
    main()
