"""`masklam train lam`: pretrain a latent action model on a dataset's unlabelled transitions.

Read top to bottom: config, model, distributed set-up, then data and model handed to the loop every
stage shares (masklam/train/loop.py: optimiser, resume, logging, checkpoints).
Distributed training is torch DDP launched by torchrun (gloo on CPU, nccl on GPU); every rank reads
its own shards. The data stream is deterministic, so a resumed run replays the stream up to its
step and continues bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from masklam.configs import SettingError, load_config, require
from masklam.data.dataset import open_dataset
from masklam.devices import AUTO, resolve
from masklam.errors import UsageError, did_you_mean
from masklam.methods import uses_masks
from masklam.models.lam import LAOMLabels
from masklam.models.presets import METHODS, PRESETS, LAMConfig, build_lam, lam_config
from masklam.ranks import local_rank, rank_device
from masklam.threads import leave_for_workers
from masklam.train.loader import WindowDataset, WindowSpec, action_variance, make_loader
from masklam.train.loop import OptimConfig, absolute_location, check_keep_at, check_optim, claim_run_folder, fit
from masklam.train.presets import trainer_file

CHECKPOINT = "lam.pt"
CONFIG = "lam-config.json"


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # dataset folder or URL (file://, s3://, ...)
    stack: int = 3
    future_max: int = 10  # multi-step IDM: k ~ U{1..K}
    mask_source: str = "oracle"  # used by masked methods; ignored by lapo and laom
    batch_size: int = 32
    labelled_batch_size: int = 32  # laom-labels: the separate labelled batch drawn each step
    shuffle_buffer: int = 2048
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("stack", "future_max", "batch_size", "labelled_batch_size"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1")
        for name in ("shuffle_buffer", "workers"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be at least 0")


# Model fields the trainer sets itself: from the dataset's frames and from data.stack.
PLACEMENT = ("device",)  # where the LAM trains, not what: a run folder resumes on another device

DERIVED_MODEL_FIELDS = {"image_size": "the dataset's frame size", "frame_stack": "data.stack"}


@dataclass(frozen=True)
class LAMTrainConfig:
    method: str = "masklam"
    preset: str = "small"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: dict[str, Any] = field(default_factory=dict)  # any field of the method's model config (checked below)
    log_every: int = 50
    checkpoint_every: int = 500
    device: str = "auto"  # where it trains (masklam/devices.py); not recorded as a setting that changes the run
    bf16: bool = False  # autocast matmuls to bfloat16 (GPUs)
    compile: bool = False  # torch.compile the model (GPUs)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}'{did_you_mean(self.method, METHODS)}: choose one of {', '.join(METHODS)}")
        if self.preset not in PRESETS:
            raise UsageError(f"unknown model preset '{self.preset}'{did_you_mean(self.preset, PRESETS)}: choose one of {', '.join(PRESETS)}")
        require(self.seed >= 0, "seed", self.seed, "seeds are integers >= 0")
        for name in ("log_every", "checkpoint_every"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1 (steps)")
        try:
            self.device == AUTO or torch.device(self.device)
        except RuntimeError:
            raise SettingError(f"device = {self.device!r}: use auto, cpu, cuda, cuda:1, mps, ...", "device") from None
        for name, source in DERIVED_MODEL_FIELDS.items():
            if name in self.model:
                raise UsageError(f"model.{name} is set from {source}: leave it out of the model settings")
        # Every model setting is checked now, at the preset's image size, before any dataset is opened or
        # folder written; build_model checks them again at the dataset's image size.
        self.model_config(PRESETS[self.preset]["image_size"])
        if self.uses_masks and self.data.mask_source == "none":
            raise SettingError(
                f"data.mask_source = 'none': {self.method} learns from agent masks; make masks with `masklam segment`, or "
                "train a method without masks (lapo, laom)",
                "data.mask_source",
            )

    def model_config(self, image_size: int) -> LAMConfig:
        """The method's model config: the preset's sizes, ``image_size``, data.stack and the model settings."""
        return lam_config(self.method, self.preset, image_size, frame_stack=self.data.stack, **self.model)

    @property
    def uses_masks(self) -> bool:
        return uses_masks(self.method, self.model)


def load_trainer(trainer: str, overrides: list[str] = (), data: str | None = None, mask_source: str | None = None) -> LAMTrainConfig:
    """A trainer preset (or TOML file) with ``--set`` overrides; then the mask source and the dataset, when given."""
    extra = [] if mask_source is None else [f"data.mask_source={json.dumps(mask_source)}"]
    extra += [] if data is None else [f"data.path={json.dumps(data)}"]
    return load_config(LAMTrainConfig, trainer_file(trainer), [*overrides, *extra])


def build_model(config: LAMTrainConfig, info: dict[str, Any]) -> torch.nn.Module:
    size = info["env"]["render"]["size"]
    action_dim = info["features"]["action"]["shape"][0]
    try:
        model_config = config.model_config(size)
    except SettingError as error:  # a setting that does not fit this dataset's frames
        raise UsageError(f"dataset {config.data.path} ({size} px frames): {error}") from None
    return build_lam(model_config, action_dim)


# --- distributed (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...) --------------------------
def setup_distributed(device: str) -> tuple[int, int]:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def seed_augmentations(model: torch.nn.Module, rank: int) -> None:
    """LAOM's augmentation draws: rank r seeds with seed + r, so that ranks do not augment their shares of the
    batch alike (rank 0 keeps the single-process draws)."""
    if getattr(model, "generator", None) is not None:
        model.generator.manual_seed(model.config.augment.seed + rank)


def release_process_group() -> None:
    """Tear the process group down in the same order on every rank. Callers first drop their DDP model:
    its reducer holds the group, and a group freed late (at interpreter exit, gloo's threads still up) can
    abort a process whose work is done."""
    gc.collect()  # the DDP model's reducer, and with it its hold on the group, goes now
    dist.barrier()  # every rank done with collectives and its reducer before any closes its connections
    dist.destroy_process_group()


# --- data -----------------------------------------------------------------------------------
def window_batches(config: LAMTrainConfig, rank: int, world_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of training windows; for laom-labels each also carries a separate labelled batch
    (``labelled_obs``, ``labelled_future``, ``labelled_action``) from its own stream of labelled records."""
    data = config.data
    spec = WindowSpec(stack=data.stack, future_max=data.future_max, mask_source=data.mask_source if config.uses_masks else None)
    windows = WindowDataset(data.path, "train", spec, seed=config.seed, shuffle_buffer=data.shuffle_buffer, rank=rank, world_size=world_size)
    batches = iter(make_loader(windows, data.batch_size, data.workers))
    if config.method != "laom-labels":
        return batches
    labelled_spec = WindowSpec(stack=data.stack, future_max=data.future_max, mask_source=None, labelled_only=True)
    # Another seed than the main stream's, so the two streams do not visit records in the same order.
    try:
        labelled = WindowDataset(
            data.path, "train", labelled_spec, seed=config.seed + 7919, shuffle_buffer=data.shuffle_buffer, rank=rank, world_size=world_size
        )
    except UsageError as error:
        raise UsageError(
            f"laom-labels needs labelled episodes, and {error.args[0].split(': ')[0]}: collect with --labelled-episodes > 0, or train another method"
        ) from None
    # As many loader processes as the main stream, or as many as its labelled records keep busy (make_loader).
    labelled_batches = iter(make_loader(labelled, data.labelled_batch_size, data.workers))
    return (batch | {f"labelled_{key}": extra[key] for key in LAOMLabels.LABELLED_KEYS} for batch, extra in zip(batches, labelled_batches))


# --- training -------------------------------------------------------------------------------
def with_absolute_data(config: LAMTrainConfig) -> LAMTrainConfig:
    """The config with a local dataset path made absolute: the run folder then names it whatever the cwd."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, path=absolute_location(config.data.path)))


def train_lam(config: LAMTrainConfig, run_dir: Path, show_progress: bool = True, keep_at: tuple[int, ...] = ()) -> dict[str, Any]:
    """``keep_at``: steps whose model is kept as lam-step<N>.pt, for probes along training (not a setting:
    the same run with or without them)."""
    run_dir = Path(run_dir)
    keep_at = check_keep_at(tuple(keep_at), config.optim.steps)
    chosen = resolve(config.device)
    config = with_absolute_data(config)
    info = open_dataset(config.data.path).info
    torch.manual_seed(config.seed)
    check_optim(config.optim)
    rank, world_size = setup_distributed(chosen)  # the process group first, then this rank's device
    device = rank_device(chosen, world_size, local_rank())
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # NCCL's collectives and plain .cuda() go to this rank's GPU
    # Convolution weights in channels_last: a tiny LAM step 1.25-1.29x faster on this CPU, the same loss to the
    # last bit (7 December, interleaved timing); before DDP wraps the parameters.
    model = build_model(config, info).to(device, memory_format=torch.channels_last)
    seed_augmentations(model, rank)
    leave_for_workers(config.data.workers)  # loader processes decode beside the training threads
    batches = window_batches(config, rank, world_size)  # bad settings fail here, before the run folder is claimed
    if isinstance(model, LAOMLabels):  # logged beside the action loss: does the head beat the mean action?
        model.action_variance = float(np.mean(action_variance(config.data.path)))
    claim_run_folder(run_dir, "lam", config, rank, ignore=PLACEMENT)

    device_ids = [torch.device(device).index] if device.startswith("cuda") else None
    trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids) if world_size > 1 else model
    forward = torch.compile(trained) if config.compile else trained  # DDP's forward all-reduces the gradients
    result = fit(
        "lam",
        run_dir,
        model,
        forward,
        batches,
        config.optim,
        config.log_every,
        config.checkpoint_every,
        device,
        config.bf16,
        rank,
        world_size,
        config.data.batch_size,
        show_progress,
        keep_at,
    )
    if world_size > 1:
        del forward, trained
        release_process_group()
    return result
