"""What one LAM training run of each trainer preset costs, against the papers' runs counted the same way.

    OMP_NUM_THREADS=1 python benchmarks/preset_flops.py

For each method x preset (masklam/trainers/<method>-<preset>.toml) the method's real model, built as `masklam train
lam` builds it at the preset's image size (64 px for `small` and `paper`: DCS's; --image-size 128 for DMW's frames in
the paper rows), takes optimiser steps on synthetic batches. torch.utils.flop_counter counts the matmuls and
convolutions of the forward and backward pass (not element-wise ops, LAOM's augmentations or the optimiser's update).
FLOPs are counted at batch 1 (and a labelled batch of 1 for laom-labels), at batch 2 to separate the two, and scaled
linearly to the preset's batches; the scaling is checked against a count at the full batch of each `tiny` preset.

"papers" rows: the `paper` trainer with the settings of LAOM's released configs (github.com/dunnolab/laom,
configs/{lapo,laom,laom-labels}.yaml: IMPALA width x 6, batch 512, labelled batch 128, latent 8192, head width 1024,
10 epochs over 5,000 episodes of 1,000 steps, 990 windows each at K = 10: 96,680 steps). MaskLAM compares in that
setting; its own schedule is not in the sources read here, so its row assumes LAOM's with its 128-d latent. They are
counted with masklam's models, whose encoders convolve before pooling (LAOM's convolve with stride 2) and whose LAOM
heads are plain MLPs (LAOM's are 3-stage residual MLPs): an estimate of the papers' compute, not a count of their code.

Wall times: total FLOPs over an assumed 30 % of the bf16 dense peak of one A100 (312 TFLOP/s) and one H100 SXM
(989 TFLOP/s); on one core of this CPU, from the process CPU time of steps measured on one thread (float32,
channels_last weights as the trainer has them; CPU time, not wall clock, so that other jobs on the machine slow the
figure less, though they still share its caches): `tiny` and `small` at their own batches, `paper` at --paper-batch
and scaled by FLOPs to its batch; the papers' rows at the FLOP rate measured for the method's `paper` preset.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from masklam.configs import load_config
from masklam.models.presets import PRESETS, build_lam
from masklam.train.lam import LAMTrainConfig
from masklam.train.loop import make_optimizer, train_step
from masklam.train.presets import trainer_file

METHODS = ("lapo", "masklam", "laom", "laom-labels")
ACTION_DIM = 6  # DCS cheetah-run
GPUS = {"A100": 312e12, "H100 SXM": 989e12}  # bf16 dense peak FLOP/s
UTILISATION = 0.30
PAPER_STEPS = 10 * math.ceil(5000 * (1000 - 10) / 512)  # LAOM: 10 epochs of its DataLoader over 4.95M windows, batch 512
PAPERS = {  # LAOM's released configs, as masklam settings on top of the `paper` trainer
    "lapo": ["model.multiplier=6", "model.latent_dim=8192"],
    "masklam": ["model.multiplier=6"],
    "laom": ["model.multiplier=6", "model.hidden_dim=1024"],
    "laom-labels": ["model.multiplier=6", "model.hidden_dim=1024"],
}
PAPER_RUN = ["data.batch_size=512", "data.labelled_batch_size=128", f"optim.steps={PAPER_STEPS}"]


def synthetic_batch(batch: int, labelled: int, size: int, stack: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The keys and dtypes `masklam train lam` streams: uint8 frames and masks, float actions."""
    g = torch.Generator().manual_seed(seed)

    def frames(n: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, *shape, size, size, 3), generator=g, dtype=torch.uint8)

    def masks(n: int, *shape: int) -> torch.Tensor:
        return (torch.rand((n, *shape, size, size), generator=g) < 0.3).to(torch.uint8)

    return {
        "obs": frames(batch, stack),
        "future": frames(batch, stack),
        "next": frames(batch),
        "obs_mask": masks(batch, stack),
        "future_mask": masks(batch, stack),
        "next_mask": masks(batch),
        "action": torch.randn(batch, ACTION_DIM, generator=g),
        "labelled": torch.ones(batch, dtype=torch.bool),
        "labelled_obs": frames(labelled, stack),
        "labelled_future": frames(labelled, stack),
        "labelled_action": torch.randn(labelled, ACTION_DIM, generator=g),
    }


class Step:
    """A model as `masklam train lam` builds it, with its optimiser, taking steps on synthetic batches."""

    def __init__(self, config: LAMTrainConfig, size: int | None = None):
        torch.manual_seed(0)
        self.config, self.size = config, size or PRESETS[config.preset]["image_size"]
        self.model = build_lam(config.model_config(self.size), ACTION_DIM).to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config.optim)

    def batch(self, batch: int, labelled: int) -> dict[str, torch.Tensor]:
        return synthetic_batch(batch, labelled, self.size, self.config.data.stack)

    def run(self, batch: dict[str, torch.Tensor]) -> None:
        train_step(self.model, self.model, self.optimizer, batch, self.config.optim.grad_clip)

    def flops(self, batch: int, labelled: int) -> int:
        with FlopCounterMode(display=False) as counter:
            self.run(self.batch(batch, labelled))
        return counter.get_total_flops()

    def per_sample(self) -> tuple[int, int]:
        """FLOPs per window of the batch and per window of the labelled batch."""
        one, two = self.flops(1, 1), self.flops(2, 1)
        return two - one, 2 * one - two

    def seconds(self, batch: int, labelled: int, steps: int = 5, warmup: int = 2) -> tuple[float, float]:
        """Mean CPU seconds and wall seconds of an optimiser step at these batches."""
        data = self.batch(batch, labelled)
        for _ in range(warmup):
            self.run(data)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            self.run(data)
        return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def trainer(method: str, preset: str, *overrides: str) -> LAMTrainConfig:
    return load_config(LAMTrainConfig, trainer_file(f"{method}-{preset}"), list(overrides))


def batches(config: LAMTrainConfig) -> tuple[int, int]:
    return config.data.batch_size, config.data.labelled_batch_size if config.method == "laom-labels" else 0


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2g} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.0f} d"
    return f"{seconds / (365 * 86400):.0f} y"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper-batch", type=int, default=4, help="batch the paper presets' CPU step is timed at")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset (after 2 warm-up steps)")
    parser.add_argument("--image-size", type=int, help="frame size of the paper and papers rows (default 64, DCS's; DMW's is 128)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")

    rows, rate, checks, walls = [], {}, [], []
    for method in METHODS:
        for preset in (*PRESETS, "papers"):
            config = trainer(method, "paper", *PAPERS[method], *PAPER_RUN) if preset == "papers" else trainer(method, preset)
            step = Step(config, args.image_size if preset in ("paper", "papers") else None)
            main_batch, labelled = batches(config)
            per_window, per_labelled = step.per_sample()
            per_step = per_window * main_batch + per_labelled * labelled
            if preset == "tiny":
                counted = step.flops(main_batch, labelled)
                checks.append((method, main_batch, labelled, counted, per_step))
            if preset == "papers":
                cpu = per_step / rate[method]
            else:
                timed = min(main_batch, args.paper_batch) if preset == "paper" else main_batch
                timed_labelled = min(labelled, timed)
                scale = per_step / (per_window * timed + per_labelled * timed_labelled)  # 1 but for `paper`
                cpu, wall = (seconds * scale for seconds in step.seconds(timed, timed_labelled, args.steps))
                rate[method] = per_step / cpu  # the paper preset's, the last one timed, serves the papers' row
                walls.append(f"{method}-{preset}: {cpu:.3g} s of CPU, {wall:.3g} s of wall clock a step")
            rows.append((method, preset, step.size, config, per_step, cpu))
            print(".", end="", flush=True)
    print(f" load average {os.getloadavg()[0]:.2f} at the end\n")

    gpus = " | ".join(f"{name} at {UTILISATION:.0%}" for name in GPUS)
    print(f"| method | preset | px | channels x width | batch (labelled) | steps | GFLOP / step | total FLOP | {gpus} | this CPU, 1 core |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(GPUS) + "---|")
    for method, preset, size, config, per_step, cpu_step in rows:
        model = config.model_config(size)
        main_batch, labelled = batches(config)
        total = per_step * config.optim.steps
        times = " | ".join(duration(total / (peak * UTILISATION)) for peak in GPUS.values())
        cpu = duration(cpu_step * config.optim.steps) + ("" if preset in ("tiny", "small") else " (est.)")
        shown = f"{main_batch}" + (f" ({labelled})" if labelled else "")
        print(
            f"| {method} | {preset} | {size} | {model.channels} x {model.multiplier} | {shown} | {config.optim.steps:,} | "
            f"{per_step / 1e9:,.1f} | {total:.2g} | {times} | {cpu} |"
        )
    print("\nStep times (CPU time is the table's; the wall clock shows the machine's other load):")
    for line in walls:
        print(f"  {line}")
    print("\nLinear scaling (tiny presets: FLOPs counted at the full batch against batch-1 counts scaled):")
    for method, main_batch, labelled, counted, scaled in checks:
        print(f"  {method}: batch {main_batch} ({labelled}): counted {counted:,}, scaled {scaled:,}, ratio {counted / scaled:.6f}")
    print("\nThe paper presets against the papers' runs (total FLOPs):")
    totals = {(method, preset): per_step * config.optim.steps for method, preset, _, config, per_step, _ in rows}
    for method in METHODS:
        print(f"  {method}: paper / papers = {totals[method, 'paper'] / totals[method, 'papers']:.3f}")


if __name__ == "__main__":
    main()
