"""The stages after the LAM: latent behaviour cloning, then the action decoder (method.md, section 3).

1. `bc`: a latent policy maps the frame stack o_{t-2..t} to the frozen LAM's latent action for
   (o_t, o_{t+1}) (k = 1), on every train transition, labelled or not; MSE.
2. `decoder`: with the latent policy frozen, an MLP (256 hidden, 2 layers) maps its latent to the real
   action, trained only on labelled transitions: the first ``labelled`` of a seeded shuffled pass
   (0 = all), whose latents are computed once and kept in memory.

Both write into the LAM's run folder: bc.pt / decoder.pt, their configs and metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from masklam.configs import apply_overrides, build
from masklam.data.dataset import open_dataset
from masklam.errors import UsageError
from masklam.models.lam import ActionDecoder, ActionDecoderConfig, LatentPolicy
from masklam.models.presets import PRESETS, policy_config
from masklam.train.lam import CHECKPOINT, CONFIG, LAMTrainConfig, build_model
from masklam.train.loader import WindowDataset, WindowSpec, make_loader
from masklam.train.loop import OptimConfig, claim_run_folder, fit, load_checkpoint


@dataclass(frozen=True)
class StageConfig:
    data: str = ""  # dataset; empty = the one the LAM trained on
    preset: str = "small"  # encoder size of the latent policy
    batch_size: int = 64
    shuffle_buffer: int = 2048
    labelled: int = 0  # decoder only: labelled transitions to train on (0 = all)
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=2000, lr=3e-4))
    log_every: int = 50
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(f"unknown model preset '{self.preset}': choose one of {', '.join(PRESETS)}")
        if self.labelled < 0 or self.batch_size < 1 or self.seed < 0:
            raise UsageError("labelled and seed must be >= 0 and batch_size >= 1")


def stage_config(overrides: list[str] = (), where: str = "stage", **settings: Any) -> StageConfig:
    """Settings (None = the default) with ``--stage-set`` style overrides on top."""
    return build(StageConfig, apply_overrides({k: v for k, v in settings.items() if v is not None}, list(overrides)), where)


def frozen_lam(run_dir: Path) -> tuple[LAMTrainConfig, torch.nn.Module, dict[str, Any]]:
    """The trained LAM of a run folder, in eval mode, with its dataset's info."""
    if not (run_dir / CHECKPOINT).exists() or not (run_dir / CONFIG).exists():
        raise UsageError(f"{run_dir} has no trained LAM ({CHECKPOINT}, {CONFIG}): run `masklam train lam --out {run_dir}` first")
    config = build(LAMTrainConfig, json.loads((run_dir / CONFIG).read_text()), "lam-config")
    info = open_dataset(config.data.path).info
    model = build_model(config, info)
    load_checkpoint(run_dir / CHECKPOINT, model)
    model.eval().requires_grad_(False)
    return config, model, info


def policy_model(stage: StageConfig, lam: torch.nn.Module, latent_dim: int | None = None) -> LatentPolicy:
    """The policy network: the stage's encoder size, the LAM's image and stack sizes, and the LAM's latent
    size unless ``latent_dim`` says otherwise (the action size, for BC on true actions)."""
    torch.manual_seed(stage.seed)
    return LatentPolicy(policy_config(stage.preset, lam.config, **({"latent_dim": latent_dim} if latent_dim else {})))


def frozen_stage_policy(run_dir: Path, stage: str, lam: torch.nn.Module, latent_dim: int | None = None) -> LatentPolicy | None:
    """A trained stage's policy network (``bc``, ``bc-actions``), frozen; None if that stage was not run."""
    if not (run_dir / f"{stage}.pt").exists():
        return None
    config = build(StageConfig, json.loads((run_dir / f"{stage}-config.json").read_text()), f"{stage}-config")
    policy = policy_model(config, lam, latent_dim)
    load_checkpoint(run_dir / f"{stage}.pt", policy)
    return policy.eval().requires_grad_(False)


def window_spec(lam_config: LAMTrainConfig, labelled_only: bool, fields: tuple[str, ...] = ()) -> WindowSpec:
    """Windows for the stages after the LAM: k = 1, the LAM's stack and masks."""
    masks = lam_config.data.mask_source if lam_config.uses_masks else None
    return WindowSpec(stack=lam_config.data.stack, future_max=1, mask_source=masks, labelled_only=labelled_only, fields=fields)


def train_bc(run_dir: Path, stage: StageConfig, show_progress: bool = True) -> dict[str, Any]:
    run_dir = Path(run_dir)
    lam_config, lam, _ = frozen_lam(run_dir)
    claim_run_folder(run_dir, "bc", stage)
    policy = policy_model(stage, lam)
    data = stage.data or lam_config.data.path
    windows = WindowDataset(data, "train", window_spec(lam_config, labelled_only=False), seed=stage.seed, shuffle_buffer=stage.shuffle_buffer)
    batches = iter(make_loader(windows, stage.batch_size))

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return policy({**batch, "latent_target": lam.latent(batch)})  # the frozen IDM's latent for (o_t, o_{t+1})

    return fit("bc", run_dir, policy, forward, batches, stage.optim, stage.log_every, stage.checkpoint_every, batch_size=stage.batch_size, show_progress=show_progress)


def frozen_policy(run_dir: Path, lam: torch.nn.Module) -> LatentPolicy:
    policy = frozen_stage_policy(run_dir, "bc", lam)
    if policy is None:
        raise UsageError(f"{run_dir} has no latent policy (bc.pt): run `masklam train bc {run_dir}` first")
    return policy


def labelled_latents(run_dir: Path, stage: StageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent-policy outputs and actions of the first ``stage.labelled`` labelled train transitions."""
    lam_config, lam, _ = frozen_lam(run_dir)
    policy = frozen_policy(run_dir, lam)
    data = stage.data or lam_config.data.path
    windows = WindowDataset(data, "train", window_spec(lam_config, labelled_only=True), seed=stage.seed, shuffle_buffer=stage.shuffle_buffer, epochs=1)
    latents, actions, count = [], [], 0
    with torch.no_grad():
        for batch in make_loader(windows, stage.batch_size):
            latents.append(policy.latent(batch))
            actions.append(batch["action"])
            count += len(batch["action"])
            if stage.labelled and count >= stage.labelled:
                break
    latents_t, actions_t = torch.cat(latents), torch.cat(actions)
    if stage.labelled:
        if len(latents_t) < stage.labelled:
            raise UsageError(f"--labelled {stage.labelled}: the dataset has only {len(latents_t)} labelled train transitions")
        latents_t, actions_t = latents_t[: stage.labelled], actions_t[: stage.labelled]
    return latents_t, actions_t


def train_decoder(run_dir: Path, stage: StageConfig, show_progress: bool = True) -> dict[str, Any]:
    run_dir = Path(run_dir)
    latents, actions = labelled_latents(run_dir, stage)
    claim_run_folder(run_dir, "decoder", stage)
    torch.manual_seed(stage.seed)
    decoder = ActionDecoder(ActionDecoderConfig(latent_dim=latents.shape[1]), actions.shape[1])
    sampler = torch.Generator().manual_seed(stage.seed)

    def batches():
        while True:
            index = torch.randint(len(latents), (stage.batch_size,), generator=sampler)
            yield {"latent": latents[index], "action": actions[index], "labelled": torch.ones(len(index), dtype=torch.bool)}

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss, metrics = decoder.loss(batch)
        return {**metrics, "loss": loss}

    result = fit("decoder", run_dir, decoder, forward, batches(), stage.optim, stage.log_every, stage.checkpoint_every, batch_size=stage.batch_size, show_progress=show_progress)
    return {**result, "labelled_transitions": len(latents)}


def train_action_bc(run_dir: Path, stage: StageConfig, show_progress: bool = True) -> dict[str, Any]:
    """The reference policy: the same network, from the frame stack straight to the true actions, on every
    labelled train transition (all of the dataset's labels). Its online return normalises the LAM policies'."""
    run_dir = Path(run_dir)
    lam_config, lam, info = frozen_lam(run_dir)
    claim_run_folder(run_dir, "bc-actions", stage)
    policy = policy_model(stage, lam, latent_dim=info["features"]["action"]["shape"][0])
    data = stage.data or lam_config.data.path
    windows = WindowDataset(data, "train", window_spec(lam_config, labelled_only=True), seed=stage.seed, shuffle_buffer=stage.shuffle_buffer)
    batches = iter(make_loader(windows, stage.batch_size))

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return policy({**batch, "latent_target": batch["action"]})

    return fit("bc-actions", run_dir, policy, forward, batches, stage.optim, stage.log_every, stage.checkpoint_every, batch_size=stage.batch_size, show_progress=show_progress)

