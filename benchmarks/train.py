"""LAM training throughput, loader throughput, achieved FLOP/s and the loader's peak memory, in one run.

    python benchmarks/train.py --out /tmp/masklam-bench

Collects two dmc:cheetah-run --distractors low datasets at 64 px (--episodes, and 4x as many; kept in --out
and reused), then prints markdown tables for docs/performance.md:

1. Training samples/s of each method x model preset (the TOML presets in masklam/trainers/, their batch sizes), one
   optimiser step at a time on batches already in memory, so the figure is the model's alone.
2. Loader samples/s on its own (the same batches `masklam train lam` streams: frame stacks, future stacks,
   masks for masklam, the labelled batch for laom-labels) next to the trainer's consumption at the small
   preset. The loader must deliver at least 2x what the trainer consumes.
3. Achieved FLOP/s of a training step (FLOPs counted by torch.utils.flop_counter) against a plain square
   matmul in the same process: the machine's practical ceiling for these threads.
4. Peak resident memory of a process streaming one full epoch of each dataset through the loader (default
   shuffle buffer), and of 20 training steps on each: it must not grow with the dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from masklam.configs import load_config
from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.data.storage import tree_bytes
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.train.lam import LAMTrainConfig, build_model, window_batches
from masklam.train.loop import make_optimizer, train_step
from masklam.train.presets import trainer_file

METHODS = ("lapo", "masklam", "laom", "laom-labels")
PRESETS = ("tiny", "small", "paper")
TABLES = ("trainer", "loader", "memory")


def dataset(root: Path, episodes: int, steps: int) -> Path:
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=64), distractor_preset("low"), episode_steps=steps)
    collect(CollectConfig(env=env, episodes=episodes, test_episodes=1, labelled_episodes=max(1, episodes // 4), seed=0), root, workers=2, show_progress=False)
    return root


def trainer_config(data: Path, method: str, preset: str, *overrides: str) -> LAMTrainConfig:
    return load_config(LAMTrainConfig, trainer_file(f"{method}-{preset}"), [f'data.path="{data}"', *overrides])


def training_rate(config: LAMTrainConfig, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(samples/s, FLOPs per step) of optimiser steps on a few real batches held in memory."""
    torch.manual_seed(0)
    model = build_model(config, open_dataset(config.data.path).info).to(memory_format=torch.channels_last)  # as train_lam
    optimizer = make_optimizer(model, config.optim)
    batches = list(islice(window_batches(config, 0, 1), 4))
    with FlopCounterMode(display=False) as counter:
        train_step(model, model, optimizer, batches[0], config.optim.grad_clip)
    for batch in batches[1 : 1 + warmup]:
        train_step(model, model, optimizer, batch, config.optim.grad_clip)
    start = time.perf_counter()
    for i in range(steps):
        train_step(model, model, optimizer, batches[i % len(batches)], config.optim.grad_clip)
    return steps * config.data.batch_size / (time.perf_counter() - start), counter.get_total_flops()


def loader_rate(config: LAMTrainConfig, batches: int) -> float:
    stream = window_batches(config, 0, 1)
    # Start-up: every worker opens a shard and fills its shuffle buffer before the first batch it sends.
    warmup = (config.data.workers + 1) * config.data.shuffle_buffer // config.data.batch_size
    for _ in islice(stream, warmup):
        pass
    start = time.perf_counter()
    for _ in islice(stream, batches):
        pass
    return batches * config.data.batch_size / (time.perf_counter() - start)


def matmul_flops_per_second(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


MEMORY_CHILD = """
import json, re, sys
from itertools import islice
from masklam.configs import load_config
from masklam.train.lam import LAMTrainConfig, train_lam
from masklam.train.loader import WindowDataset, WindowSpec, make_loader
from masklam.train.presets import trainer_file
data, mode, out = sys.argv[1:4]
if mode == "epoch":
    windows = WindowDataset(data, "train", WindowSpec(stack=3, future_max=10), epochs=1)
    count = sum(len(batch["k"]) for batch in make_loader(windows, 32))
else:
    overrides = [f'data.path="{data}"', "optim.steps=20", "checkpoint_every=1000"]
    train_lam(load_config(LAMTrainConfig, trainer_file("masklam-small"), overrides), out, show_progress=False)
    count = 20 * 32
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"windows": count, "peak_mib": peak_kib / 1024}))
"""


def peak_memory(data: Path, mode: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(data), mode, str(out)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def dataset_mib(root: Path) -> float:
    return tree_bytes(root) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/masklam-bench"))
    parser.add_argument("--episodes", type=int, default=32, help="episodes of the smaller dataset (the larger has 4x)")
    parser.add_argument("--steps", type=int, default=200, help="steps per episode")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES), help="which tables to measure (default: all)")
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS), help="model presets of the trainer table")
    args = parser.parse_args()
    small = dataset(args.out / "data-1x", args.episodes, args.steps)
    large = dataset(args.out / "data-4x", 4 * args.episodes, args.steps) if "memory" in args.tables else None  # the memory table's alone
    threads = torch.get_num_threads()
    sizes = " and ".join(f"{dataset_mib(root):.0f} MiB" for root in (small, large) if root is not None)
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} cores; dataset {sizes}\n")

    trainer = {}
    if "trainer" in args.tables or "loader" in args.tables:
        wanted = {*args.presets, *(["small"] if "loader" in args.tables else [])}  # the loader table compares with small
        trainer = trainer_table(small, [preset for preset in PRESETS if preset in wanted])
    if "loader" in args.tables:
        loader_table(small, trainer)
    if "memory" in args.tables:
        memory_table(small, large, args.out)


def trainer_table(small: Path, presets: list[str]) -> dict[tuple[str, str], float]:
    ceiling = matmul_flops_per_second()
    print(f"plain 2048 x 2048 float32 matmul: {ceiling / 1e9:.1f} GFLOP/s\n")
    print("| method | preset | batch | training samples/s | GFLOP per step | achieved GFLOP/s | of matmul |")
    print("|---|---|---|---|---|---|---|")
    trainer = {}
    for preset in presets:
        for method in METHODS:
            # Measured at batch 16: a step of the paper presets' batch of 128 takes minutes on a CPU.
            config = trainer_config(small, method, preset, *(["data.batch_size=16", "data.labelled_batch_size=16"] if preset == "paper" else []))
            rate, flops = training_rate(config, steps=2 if preset == "paper" else 15, warmup=1 if preset == "paper" else 2)
            trainer[method, preset] = rate
            achieved = flops * rate / config.data.batch_size
            print(
                f"| {method} | {preset} | {config.data.batch_size} | {rate:.1f} | {flops / 1e9:.2f} | {achieved / 1e9:.1f} | {achieved / ceiling:.0%} |",
                flush=True,
            )
    return trainer


def loader_table(small: Path, trainer: dict[tuple[str, str], float]) -> None:
    print("\n| method (small preset) | loader workers | loader samples/s | trainer samples/s | loader / trainer |")
    print("|---|---|---|---|---|")
    for method in METHODS:
        for workers in (0, 2):
            config = trainer_config(small, method, "small", f"data.workers={workers}")
            rate = loader_rate(config, batches=400)
            print(f"| {method} | {workers} | {rate:.0f} | {trainer[method, 'small']:.1f} | {rate / trainer[method, 'small']:.1f}x |", flush=True)


def memory_table(small: Path, large: Path, out: Path) -> None:
    print("\n| dataset | size on disk | loader: one epoch, peak RSS | masklam-small: 20 steps, peak RSS |")
    print("|---|---|---|---|")
    for name, root in (("1x", small), ("4x", large)):
        epoch = peak_memory(root, "epoch", out / "unused")
        training = peak_memory(root, "train", out / f"run-{name}-{time.time_ns()}")
        print(
            f"| {name} ({epoch['windows']} windows) | {dataset_mib(root):.0f} MiB | {epoch['peak_mib']:.0f} MiB | {training['peak_mib']:.0f} MiB |", flush=True
        )


if __name__ == "__main__":
    main()
