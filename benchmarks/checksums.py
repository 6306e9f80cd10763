"""What checking costs the loader: checksums (crc32c per WebDataset member) and the schema's checks of each record.

    python benchmarks/checksums.py --out /tmp/masklam-bench-checksums

Collects a dmc:cheetah-run --distractors low dataset at 64 px per backend (kept in --out and reused), then
measures the loader's samples/s (the batches `masklam train lam` streams for masklam-small, in the main process:
data.workers=0, where any cost shows in full) with every check on, and with the checks switched off (the
checksum test and the per-record schema check replaced by no-ops), alternating the two --repeats times. Prints a
markdown table of the medians for docs/performance.md, and the share of the checked runs' time spent inside the
checks (timed directly: on a shared machine it is steadier than the difference of two rates).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from train import loader_rate, trainer_config  # benchmarks/train.py

import masklam.data.dataset as dataset_module
import masklam.data.webdataset_backend as webdataset_module
from masklam.data.collect import CollectConfig, collect
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset

CHECKS = {"check_sample": webdataset_module.check_sample, "check_record": dataset_module.check_record}


SPENT = [0.0]  # seconds inside the checks while they are on


def timed(check):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return check(*args, **kwargs)
        finally:
            SPENT[0] += time.perf_counter() - start

    return run


def checks(on: bool) -> None:
    """Switch the checksum test and the per-record schema check on (timed) or off."""
    webdataset_module.check_sample = timed(CHECKS["check_sample"]) if on else (lambda *args, **kwargs: None)
    dataset_module.check_record = timed(CHECKS["check_record"]) if on else (lambda *args, **kwargs: None)


def checksum_rate(megabytes: int = 256) -> float:
    data = bytes(range(256)) * (megabytes * 4096)
    start = time.perf_counter()
    webdataset_module.checksum(data)
    return megabytes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/masklam-bench-checksums"))
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"crc32c (google_crc32c): {checksum_rate():.0f} MB/s\n")
    print("| backend | method (small preset) | loader samples/s, checks off | checks on | slower by | time in checks |")
    print("|---|---|---|---|---|---|")
    for backend in ("webdataset", "zarr"):
        root = args.out / f"data-{backend}"
        env = EnvSpec("dmc:cheetah-run", RenderSpec(size=64), distractor_preset("low"), episode_steps=args.steps)
        config = CollectConfig(env=env, backend=backend, episodes=args.episodes, test_episodes=1, labelled_episodes=max(1, args.episodes // 4), seed=0)
        collect(config, root, workers=2, show_progress=False)
        for method in ("lapo", "masklam"):
            trainer = trainer_config(root, method, "small", "data.workers=0")
            rates: dict[bool, list[float]] = {False: [], True: []}
            spent = elapsed = 0.0
            for repeat in range(args.repeats):
                for on in (False, True) if repeat % 2 == 0 else (True, False):  # balanced: load drifts on a shared machine
                    checks(on)
                    SPENT[0], start = 0.0, time.perf_counter()
                    rates[on].append(loader_rate(trainer, args.batches))
                    if on:
                        spent, elapsed = spent + SPENT[0], elapsed + time.perf_counter() - start
            checks(True)
            off, on = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"| {backend} | {method} | {off:.0f} | {on:.0f} | {1 - on / off:+.1%} | {spent / elapsed:.1%} |", flush=True)


if __name__ == "__main__":
    main()
