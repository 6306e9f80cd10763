"""`masklam train lam`: pretrain a latent action model on a dataset's unlabelled transitions.

Read top to bottom: config, set-up (distributed, data, model, optimiser, resume), the loop.
Distributed training is torch DDP launched by torchrun (gloo on CPU, nccl on GPU); every rank reads
its own shards. The data stream is deterministic, so a resumed run replays the stream up to its
step and continues bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from masklam.atomic import atomic_file, atomic_write_json
from masklam.configs import to_dict
from masklam.data.dataset import open_dataset
from masklam.errors import UsageError
from masklam.models.presets import METHODS, PRESETS, build_lam, lam_config
from masklam.train.loader import WindowDataset, WindowSpec, make_loader

CHECKPOINT = "lam.pt"
CONFIG = "lam-config.json"


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # dataset folder or URL (file://, s3://, ...)
    stack: int = 3
    future_max: int = 10  # multi-step IDM: k ~ U{1..K}
    mask_source: str = "oracle"  # used by masked methods; ignored by lapo and laom
    batch_size: int = 32
    shuffle_buffer: int = 2048
    workers: int = 0


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass(frozen=True)
class LAMTrainConfig:
    method: str = "masklam"
    preset: str = "small"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: dict[str, Any] = field(default_factory=dict)  # any field of the method's model config
    log_every: int = 50
    checkpoint_every: int = 500
    device: str = "cpu"
    bf16: bool = False  # autocast matmuls to bfloat16 (GPUs)
    compile: bool = False  # torch.compile the model (GPUs)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}': choose one of {', '.join(METHODS)}")
        if self.preset not in PRESETS:
            raise UsageError(f"unknown model preset '{self.preset}': choose one of {', '.join(PRESETS)}")
        if self.optim.steps < 1 or self.data.batch_size < 1:
            raise UsageError("optim.steps and data.batch_size must be at least 1")

    @property
    def uses_masks(self) -> bool:
        options = METHODS[self.method][1]
        return options.get("loss") == "masked" or self.model.get("loss") == "masked" or self.model.get("mask_input", options.get("mask_input", "none")) != "none"


def build_model(config: LAMTrainConfig, info: dict[str, Any]) -> torch.nn.Module:
    size = info["env"]["render"]["size"]
    action_dim = info["features"]["action"]["shape"][0]
    try:
        model_config = lam_config(config.method, config.preset, image_size=size, frame_stack=config.data.stack, **config.model)
    except TypeError as error:
        raise UsageError(f"model setting rejected ({error}): see the fields of {METHODS[config.method][0].__name__}") from None
    return build_lam(model_config, action_dim)


# --- distributed (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...) --------------------------
def setup_distributed(device: str) -> tuple[int, int]:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- checkpoints ----------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "torch_rng": torch.get_rng_state()}
    generator = getattr(model, "generator", None)
    if generator is not None:  # LAOM's augmentation draws
        state["generator"] = generator.get_state()
    with atomic_file(run_dir / CHECKPOINT) as f:
        torch.save(state, f)


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as error:
        raise UsageError(f"checkpoint {path} cannot be loaded ({type(error).__name__}): delete it to start over") from None
    torch.set_rng_state(state["torch_rng"])
    if "generator" in state:
        model.generator.set_state(state["generator"])
    return int(state["step"])


# --- training -------------------------------------------------------------------------------
def train_lam(config: LAMTrainConfig, run_dir: Path, show_progress: bool = True) -> dict[str, Any]:
    run_dir = Path(run_dir)
    rank, world_size = setup_distributed(config.device)
    info = open_dataset(config.data.path).info
    saved_config = run_dir / CONFIG
    if saved_config.exists() and json.loads(saved_config.read_text()) != to_dict(config):
        raise UsageError(f"{run_dir} holds a run with another config: use another --out, or the same settings to resume it")
    if rank == 0:
        atomic_write_json(saved_config, to_dict(config))

    torch.manual_seed(config.seed)
    model = build_model(config, info).to(config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    start = load_checkpoint(run_dir, model, optimizer)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    forward = torch.compile(trained) if config.compile else trained

    spec = WindowSpec(stack=config.data.stack, future_max=config.data.future_max, mask_source=config.data.mask_source if config.uses_masks else None)
    windows = WindowDataset(config.data.path, "train", spec, seed=config.seed, shuffle_buffer=config.data.shuffle_buffer, rank=rank, world_size=world_size)
    batches = iter(make_loader(windows, config.data.batch_size, config.data.workers))
    for _ in range(start):  # replay the deterministic stream up to the resumed step
        next(batches)

    log = open(run_dir / "metrics.jsonl", "a") if rank == 0 else None
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start)
    bar = tqdm(total=config.optim.steps, initial=start, unit="step", desc=f"train lam {config.method}", disable=rank != 0 or not show_progress or None)
    began, loss = time.perf_counter(), torch.tensor(float("nan"))
    for step in range(start + 1, config.optim.steps + 1):
        batch = to_device(next(batches), config.device)
        with torch.autocast(device_type=config.device.split(":")[0], dtype=torch.bfloat16, enabled=config.bf16):
            out = forward(batch)  # through DDP's forward when distributed, so gradients are all-reduced
        loss = out["loss"]
        metrics = {name: value.detach() for name, value in out.items() if value.dim() == 0 and name != "loss"}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        if hasattr(model, "update_target"):
            model.update_target()  # LAOM's EMA target encoder
        if not torch.isfinite(loss):
            raise UsageError(f"the loss became {loss.item()} at step {step}: lower optim.lr or check the data")
        bar.update(1)
        if rank == 0 and step % config.log_every == 0:
            row = {"step": step, "loss": loss.item(), **{k: float(v) for k, v in metrics.items()}, "samples_per_second": (step - start) * config.data.batch_size * world_size / (time.perf_counter() - began)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            for name, value in row.items():
                writer.add_scalar(f"lam/{name}", value, step)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if rank == 0 and (step % config.checkpoint_every == 0 or step == config.optim.steps):
            save_checkpoint(run_dir, model, optimizer, step)
    bar.close()
    if rank == 0:
        log.close()
        writer.close()
    if world_size > 1:
        dist.destroy_process_group()
    return {"steps": config.optim.steps, "final_loss": loss.item()}

