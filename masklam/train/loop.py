"""The training loop every stage shares (LAM, latent BC, action decoder), readable top to bottom.

A stage gives a model, a loss over a batch and an iterator of batches. The loop resumes from the stage's
checkpoint by replaying the (deterministic) batch stream to the saved step, so a resumed run is
bit-identical to an uninterrupted one; logs go to JSONL and TensorBoard; checkpoints are atomic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from masklam.atomic import atomic_file, atomic_write_json, json_line
from masklam.configs import to_dict
from masklam.errors import UsageError

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0


def claim_run_folder(run_dir: Path, stage: str, config: Any, rank: int = 0) -> None:
    """Record a stage's settings; refuse a folder whose stage was run with other settings."""
    saved = run_dir / f"{stage}-config.json"
    if saved.exists() and json.loads(saved.read_text()) != to_dict(config):
        raise UsageError(f"{run_dir} holds a {stage} run with another config: use another --out, or the same settings to resume it")
    if rank == 0:
        atomic_write_json(saved, to_dict(config))


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "torch_rng": torch.get_rng_state()}
    generator = getattr(model, "generator", None)
    if generator is not None:  # LAOM's augmentation draws
        state["generator"] = generator.get_state()
    with atomic_file(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore a checkpoint into ``model`` (and ``optimizer``); the step it was taken at, 0 if there is none."""
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except Exception as error:
        raise UsageError(f"checkpoint {path} cannot be loaded ({type(error).__name__}): delete it to start over") from None
    if optimizer is not None:
        torch.set_rng_state(state["torch_rng"])
        if "generator" in state:
            model.generator.set_state(state["generator"])
    return int(state["step"])


def train_step(
    model: torch.nn.Module,
    forward: Callable[[Batch], dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    grad_clip: float,
    device: str = "cpu",
    bf16: bool = False,
) -> dict[str, torch.Tensor]:
    """One optimiser step on ``batch``; ``forward``'s outputs."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        out = forward(batch)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if hasattr(model, "update_target"):
        model.update_target()  # LAOM's EMA target encoder
    return out


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=optim.lr, weight_decay=optim.weight_decay)


def fit(
    stage: str,
    run_dir: Path,
    model: torch.nn.Module,
    forward: Callable[[Batch], dict[str, torch.Tensor]],
    batches: Iterator[Batch],
    optim: OptimConfig,
    log_every: int = 50,
    checkpoint_every: int = 500,
    device: str = "cpu",
    bf16: bool = False,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` by ``forward(batch)["loss"]`` for ``optim.steps`` steps; resume from ``run_dir/<stage>.pt``."""
    checkpoint = run_dir / f"{stage}.pt"
    optimizer = make_optimizer(model, optim)
    start = load_checkpoint(checkpoint, model, optimizer)
    for _ in range(start):  # replay the deterministic stream up to the resumed step
        next(batches)

    log = writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        log = open(run_dir / f"{stage}-metrics.jsonl", "a")
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start)
    bar = tqdm(total=optim.steps, initial=start, unit="step", desc=f"train {stage}", disable=rank != 0 or not show_progress or None)
    began, loss = time.perf_counter(), torch.tensor(float("nan"))
    for step in range(start + 1, optim.steps + 1):
        out = train_step(model, forward, optimizer, next(batches), optim.grad_clip, device, bf16)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise UsageError(f"the {stage} loss became {loss.item()} at step {step}: lower optim.lr or check the data")
        bar.update(1)
        if rank == 0 and step % log_every == 0:
            row = {"step": step, "loss": loss.item(), **{k: float(v.detach()) for k, v in out.items() if v.dim() == 0 and k != "loss"}}
            row["samples_per_second"] = (step - start) * batch_size * world_size / (time.perf_counter() - began)
            log.write(json_line(row) + "\n")
            log.flush()
            for name, value in row.items():
                writer.add_scalar(f"{stage}/{name}", value, step)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if rank == 0 and (step % checkpoint_every == 0 or step == optim.steps):
            save_checkpoint(checkpoint, model, optimizer, step)
    bar.close()
    if rank == 0:
        log.close()
        writer.close()
    return {"steps": optim.steps, "final_loss": loss.item()}
