"""The stages after the LAM: latent behaviour cloning, then the action decoder (method.md, section 3).

1. `bc`: a latent policy maps the frame stack o_{t-2..t} to the frozen LAM's latent action for
   (o_t, o_{t+1}) (k = 1), on every train transition, labelled or not; MSE.
2. `decoder`: with the latent policy frozen, an MLP (256 hidden, 2 layers) maps its latent to the real
   action, trained only on labelled transitions: the first ``labelled`` of a seeded shuffled pass
   (0 = all), whose latents are computed once and kept in memory. The probe's in-pool episodes are never
   among them (masklam.train.loader: labels held out).

Both write into the LAM's run folder: bc.pt / decoder.pt, their configs and metrics.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from masklam.configs import ADDED_LATER, apply_overrides, build, require, to_dict
from masklam.data.dataset import open_dataset
from masklam.devices import AUTO, device_of, resolve, to_device
from masklam.errors import UsageError, did_you_mean
from masklam.models.lam import ActionDecoder, ActionDecoderConfig, LatentPolicy
from masklam.models.presets import PRESETS, policy_config
from masklam.threads import leave_for_workers
from masklam.train.lam import CHECKPOINT, CONFIG, PLACEMENT, LAMTrainConfig, build_model, train_lam, window_batches, with_absolute_data
from masklam.train.loader import WindowDataset, WindowSpec, make_loader
from masklam.train.loop import (
    OptimConfig,
    absolute_location,
    check_optim,
    claim_run_folder,
    find_dataset,
    fit,
    is_local,
    kept_checkpoint,
    load_checkpoint,
    read_run_config,
    same_settings,
    stage_files,
    stored_location,
)


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
    # Loader processes that decode windows beside training (a GPU waits on one decoding process); the stream's
    # order depends on their number, so it is a recorded setting.
    workers: int = field(default=0, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        require(self.workers >= 0, "workers", self.workers, "must be at least 0 (0: decode in the training process)")
        if self.preset not in PRESETS:
            raise UsageError(f"unknown model preset '{self.preset}'{did_you_mean(self.preset, PRESETS)}: choose one of {', '.join(PRESETS)}")
        if self.labelled < 0 or self.batch_size < 1 or self.seed < 0:
            raise UsageError("labelled and seed must be >= 0 and batch_size >= 1")


DECODER_ONLY = ("labelled",)  # stage settings that change the decoder alone: bc and bc-actions ignore them


def stage_config(overrides: list[str] = (), where: str = "stage", **settings: Any) -> StageConfig:
    """Settings (None = the default) with ``--stage-set`` style overrides on top."""
    return build(StageConfig, apply_overrides({k: v for k, v in settings.items() if v is not None}, list(overrides)), where)


def lam_dataset(run_dir: Path, data: str | None = None, fallback: str | None = None) -> str:
    """Where the dataset of a run folder's LAM is: ``data`` when given, else where the run folder says, else
    ``fallback`` (a dataset of the same shapes the caller reads: --data of probe and the later stages)."""
    if data:
        return absolute_location(data)
    try:
        return find_dataset(run_dir, *stored_location(run_dir, "lam"))
    except UsageError:
        if fallback:
            return absolute_location(fallback)
        raise


def require_lam(run_dir: Path, weights: Path | None = None) -> None:
    """A one-line refusal of a run folder with no trained LAM (``weights``: the checkpoint asked for)."""
    if not (weights or run_dir / CHECKPOINT).exists() or not (run_dir / CONFIG).exists():
        raise UsageError(f"{run_dir} has no trained LAM ({CHECKPOINT}, {CONFIG}): run `masklam train lam --out {run_dir}` first")


def frozen_lam(
    run_dir: Path, data: str | None = None, fallback: str | None = None, device: str = "cpu", at: int | None = None
) -> tuple[LAMTrainConfig, torch.nn.Module, dict[str, Any]]:
    """The trained LAM of a run folder, in eval mode on ``device``, with its dataset's info; ``at``: the model
    kept at that step of its training (`train lam --probe-at`) instead of the final one. The config's
    data.path is where the dataset is now (see lam_dataset: ``data`` says where it has moved)."""
    weights = run_dir / CHECKPOINT if at is None else kept_checkpoint(run_dir, "lam", at)
    if at is not None and not weights.exists() and (run_dir / CONFIG).exists():
        raise UsageError(f"{run_dir} kept no LAM at step {at} ({weights.name}): train it with --probe-at {at} (a new run folder)")
    require_lam(run_dir, weights)
    config = build(LAMTrainConfig, read_run_config(run_dir, "lam"), "lam-config")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=lam_dataset(run_dir, data, fallback)))
    info = open_dataset(config.data.path).info
    model = build_model(config, info).to(memory_format=torch.channels_last)  # see train_lam
    load_checkpoint(weights, model)
    model.to(device).eval().requires_grad_(False)
    return config, model, info


def as_lams_data(run_dir: Path, stage: StageConfig) -> StageConfig:
    """``stage`` with its dataset left empty when it is the LAM's own (wherever it is now), as a run folder
    records it: passing --data for a moved dataset then resumes the stage rather than being another config."""
    if not stage.data or not is_local(stage.data) or not (run_dir / CONFIG).exists():
        return stage
    stored, relative = stored_location(run_dir, "lam")
    here = absolute_location(stage.data)
    beside = str((run_dir / relative).resolve()) if relative is not None else None
    return dataclasses.replace(stage, data="") if here in (absolute_location(stored), beside) else dataclasses.replace(stage, data=here)


def policy_model(stage: StageConfig, lam: torch.nn.Module, latent_dim: int | None = None) -> LatentPolicy:
    """The policy network: the stage's encoder size, the LAM's image and stack sizes, and the LAM's latent
    size unless ``latent_dim`` says otherwise (the action size, for BC on true actions)."""
    torch.manual_seed(stage.seed)
    policy = LatentPolicy(policy_config(stage.preset, lam.config, **({"latent_dim": latent_dim} if latent_dim else {})))
    return policy.to(memory_format=torch.channels_last)  # see train_lam


def frozen_stage_policy(run_dir: Path, stage: str, lam: torch.nn.Module, latent_dim: int | None = None) -> LatentPolicy | None:
    """A trained stage's policy network (``bc``, ``bc-actions``), frozen; None if that stage was not run."""
    if not (run_dir / f"{stage}.pt").exists():
        return None
    config = build(StageConfig, read_run_config(run_dir, stage), f"{stage}-config")
    policy = policy_model(config, lam, latent_dim)
    load_checkpoint(run_dir / f"{stage}.pt", policy)
    return policy.to(device_of(lam)).eval().requires_grad_(False)


def window_spec(lam_config: LAMTrainConfig, labelled_only: bool, fields: tuple[str, ...] = ()) -> WindowSpec:
    """Windows for the stages after the LAM: k = 1, the LAM's stack and masks."""
    masks = lam_config.data.mask_source if lam_config.uses_masks else None
    return WindowSpec(stack=lam_config.data.stack, future_max=1, mask_source=masks, labelled_only=labelled_only, fields=fields)


def train_bc(run_dir: Path, stage: StageConfig, show_progress: bool = True, lam_data: str | None = None, device: str = AUTO) -> dict[str, Any]:
    """``lam_data``: where the LAM's dataset is now, when the caller knows; ``device``: where to train
    (masklam/devices.py). Neither is a setting: neither is recorded."""
    run_dir, device = Path(run_dir), resolve(device)
    stage = as_lams_data(run_dir, stage)
    lam_config, lam, _ = frozen_lam(run_dir, lam_data, fallback=stage.data, device=device)
    check_optim(stage.optim)
    claim_run_folder(run_dir, "bc", stage, ignore=DECODER_ONLY)
    policy = policy_model(stage, lam).to(device)
    data = stage.data or lam_config.data.path
    spec = dataclasses.replace(window_spec(lam_config, labelled_only=False), episode=True, step=True)
    leave_for_workers(stage.workers)  # before the label pass: its loader starts them too
    targets = latent_targets(lam, data, spec, show_progress, workers=stage.workers)
    windows = WindowDataset(data, "train", spec, seed=stage.seed, shuffle_buffer=stage.shuffle_buffer)
    batches = iter(make_loader(windows, stage.batch_size, stage.workers))

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The frozen IDM's latent for (o_t, o_{t+1}): labelled once per window, or here when the cache was too big.
        target = targets.lookup(batch) if targets is not None else lam.latent(batch)
        return policy({**batch, "latent_target": target})

    return fit_stage("bc", run_dir, policy, forward, batches, stage, device, show_progress)


def fit_stage(name: str, run_dir: Path, model: torch.nn.Module, forward, batches, stage: StageConfig, device: str, show_progress: bool) -> dict[str, Any]:
    """``fit`` with a stage's optimiser, logging and checkpoint settings."""
    return fit(
        name,
        run_dir,
        model,
        forward,
        batches,
        stage.optim,
        stage.log_every,
        stage.checkpoint_every,
        device,
        batch_size=stage.batch_size,
        show_progress=show_progress,
    )


LABEL_CACHE_BYTES = 1 << 30  # latent BC labels every window once when the latents fit in this much memory


class LatentTargets:
    """The frozen IDM's latent of every train window, by (episode, t): latent BC trains for more steps than the
    split has windows (1,000 x 16 over 6,000 at the recipe scale), and labelling each batch anew cost it half of
    its time (the IDM's forward on two stacks against the policy's on one, measured with cProfile)."""

    def __init__(self, keys: np.ndarray, latents: torch.Tensor) -> None:
        self.row = {(int(e), int(t)): i for i, (e, t) in enumerate(keys)}
        self.latents = latents

    def lookup(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = [self.row[(int(e), int(t))] for e, t in zip(batch["episode"].tolist(), batch["step"].tolist())]
        return self.latents[rows]


def latent_targets(lam: torch.nn.Module, data: str, spec: WindowSpec, show_progress: bool, batch_size: int = 256, workers: int = 0) -> LatentTargets | None:
    """Every train window's latent, once, in evaluation batches; None when they would not fit LABEL_CACHE_BYTES
    (the paper preset's 8,192-dim LAOM latents over millions of windows), and BC labels each batch instead.
    Kept by (episode, t): the same whatever order ``workers`` loader processes deliver the windows in."""
    windows = sum(meta.frames - 1 for meta in open_dataset(data).index("train"))
    if windows * lam.config.latent_dim * 4 > LABEL_CACHE_BYTES:  # the latent's width, as the policy's output
        return None
    keys, latents = [], []
    stream = WindowDataset(data, "train", spec, epochs=1, shuffle_buffer=1)  # every window once, in stored order
    with torch.no_grad(), tqdm(total=windows, unit="window", desc="label windows", disable=not show_progress or None) as bar:
        for batch in make_loader(stream, batch_size, workers):
            latents.append(lam.latent(to_device(batch, device_of(lam))))
            keys.append(torch.stack([batch["episode"], batch["step"]], 1))
            bar.update(len(keys[-1]))
    return LatentTargets(torch.cat(keys).numpy(), torch.cat(latents))


def frozen_policy(run_dir: Path, lam: torch.nn.Module) -> LatentPolicy:
    policy = frozen_stage_policy(run_dir, "bc", lam)
    if policy is None:
        raise UsageError(f"{run_dir} has no latent policy (bc.pt): run `masklam train bc {run_dir}` first")
    return policy


def labelled_transitions(data: str) -> int:
    """Labelled train transitions a stage may learn from, from the index (every record's frames but its last);
    the probe's in-pool episodes are not among them."""
    dataset = open_dataset(data)
    held = dataset.in_pool_episodes()
    return sum(meta.frames - 1 for meta in dataset.index("train") if meta.labelled and meta.episode not in held)


def check_labelled(data: str, labelled: int) -> None:
    """The decoder's label budget against the dataset: it needs labelled transitions, at least ``labelled``."""
    available = labelled_transitions(data)
    if available == 0:
        raise UsageError(f"{data} has no labelled train transitions, which the action decoder trains on: collect with --labelled-episodes > 0")
    if labelled > available:
        raise UsageError(
            f"--labelled {labelled}: the dataset has only {available} labelled train transitions outside the probe's in-pool episodes (pass at most {available}, or 0 for all)"
        )


def labelled_latents(run_dir: Path, stage: StageConfig, lam_data: str | None = None, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Latent-policy outputs and actions of the first ``stage.labelled`` labelled train transitions, on ``device``."""
    lam_config, lam, _ = frozen_lam(run_dir, lam_data, fallback=stage.data, device=device)
    policy = frozen_policy(run_dir, lam)
    data = stage.data or lam_config.data.path
    check_labelled(data, stage.labelled)
    windows = WindowDataset(data, "train", window_spec(lam_config, labelled_only=True), seed=stage.seed, shuffle_buffer=stage.shuffle_buffer, epochs=1)
    latents, actions, count = [], [], 0
    with torch.no_grad():
        for batch in make_loader(windows, stage.batch_size, stage.workers):
            batch = to_device(batch, device)
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


def train_decoder(run_dir: Path, stage: StageConfig, show_progress: bool = True, lam_data: str | None = None, device: str = AUTO) -> dict[str, Any]:
    run_dir, device = Path(run_dir), resolve(device)
    stage = as_lams_data(run_dir, stage)
    check_optim(stage.optim)
    latents, actions = labelled_latents(run_dir, stage, lam_data, device)
    claim_run_folder(run_dir, "decoder", stage)
    torch.manual_seed(stage.seed)
    decoder = ActionDecoder(ActionDecoderConfig(latent_dim=latents.shape[1]), actions.shape[1]).to(device)
    sampler = torch.Generator().manual_seed(stage.seed)

    def batches():
        while True:
            index = torch.randint(len(latents), (stage.batch_size,), generator=sampler).to(device)  # drawn on the CPU: the same on any device
            yield {"latent": latents[index], "action": actions[index], "labelled": torch.ones(len(index), dtype=torch.bool)}

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss, metrics = decoder.loss(batch)
        return {**metrics, "loss": loss}

    result = fit_stage("decoder", run_dir, decoder, forward, batches(), stage, device, show_progress)
    return {**result, "labelled_transitions": len(latents)}


def train_action_bc(run_dir: Path, stage: StageConfig, show_progress: bool = True, lam_data: str | None = None, device: str = AUTO) -> dict[str, Any]:
    """The reference policy: the same network, from the frame stack straight to the true actions, on every
    labelled train transition (all of the dataset's labels). Its online return normalises the LAM policies'."""
    run_dir, device = Path(run_dir), resolve(device)
    stage = as_lams_data(run_dir, stage)
    lam_config, lam, info = frozen_lam(run_dir, lam_data, fallback=stage.data)  # its shapes only: it stays on the CPU
    check_optim(stage.optim)
    data = stage.data or lam_config.data.path
    windows = WindowDataset(data, "train", window_spec(lam_config, labelled_only=True), seed=stage.seed, shuffle_buffer=stage.shuffle_buffer)
    claim_run_folder(run_dir, "bc-actions", stage, ignore=DECODER_ONLY)
    policy = policy_model(stage, lam, latent_dim=info["features"]["action"]["shape"][0]).to(device)
    leave_for_workers(stage.workers)
    batches = iter(make_loader(windows, stage.batch_size, stage.workers))

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return policy({**batch, "latent_target": batch["action"]})

    return fit_stage("bc-actions", run_dir, policy, forward, batches, stage, device, show_progress)


# --- every stage in one run folder (`masklam train all`) --------------------------------------------------------
# Which stages each one's output feeds: a stage that reruns makes those after it rerun too.
DOWNSTREAM = {"lam": ("bc", "decoder", "bc-actions"), "bc": ("decoder",), "decoder": (), "bc-actions": ()}


def validate_all(lam: LAMTrainConfig, stage: StageConfig, reference: bool) -> None:
    """Check every stage's settings against the dataset before the first one runs: a late stage's mistake
    must not cost the LAM's training first."""
    torch.manual_seed(lam.seed)
    build_model(lam, open_dataset(lam.data.path).info)  # model settings the method's config refuses
    check_optim(lam.optim)
    no_workers = dataclasses.replace(lam, data=dataclasses.replace(lam.data, workers=0))  # no loader process starts
    window_batches(no_workers, 0, 1)  # the mask source, laom-labels' labelled episodes (nothing is read yet)
    check_optim(stage.optim)
    data = absolute_location(stage.data) if stage.data else lam.data.path
    if stage.data:
        open_dataset(data)
    check_labelled(data, stage.labelled)  # the decoder's budget (and the reference's labels)


def stale_stages(run_dir: Path, lam: LAMTrainConfig, stage: StageConfig, reference: bool) -> list[str]:
    """Stages whose saved settings differ from these (and the stages after them), to train again.
    A LAM with another config is refused (retraining it is a new run: another --out)."""

    def changed(name: str, config: Any, ignore: tuple[str, ...] = ()) -> bool:
        saved = run_dir / f"{name}-config.json"
        if not saved.exists():
            return False
        try:
            previous = json.loads(saved.read_text())
        except (OSError, ValueError):
            return True
        return not same_settings(previous, to_dict(config), run_dir, ignore)

    if changed("lam", lam, PLACEMENT) and (run_dir / CHECKPOINT).exists():
        raise UsageError(
            f"{run_dir} holds a lam run with another config: use another --out, or the same LAM settings to resume it "
            "(settings of the later stages may change: those stages are trained again)"
        )
    planned = {
        "bc": changed("bc", stage, DECODER_ONLY),
        "decoder": changed("decoder", stage),
        "bc-actions": reference and changed("bc-actions", stage, DECODER_ONLY),
    }
    stale = {name for name, differs in planned.items() if differs}
    for name in list(stale):
        stale.update(DOWNSTREAM[name])
    return [name for name in ("bc", "decoder", "bc-actions") if name in stale]


def train_all(lam: LAMTrainConfig, run_dir: Path, stage: StageConfig, reference: bool = True, show_progress: bool = True, echo=print) -> dict[str, Any]:
    """The LAM, latent BC, the action decoder and (``reference``) BC on true actions, in one run folder. Every
    stage's settings are checked first; a stage whose settings changed since an earlier run is trained again,
    with the stages after it, and the others resume (a finished one is left as it is)."""
    run_dir = Path(run_dir)
    lam = with_absolute_data(lam)
    validate_all(lam, stage, reference)
    for name in stale_stages(run_dir, lam, as_lams_data(run_dir, stage), reference):
        echo(f"{name}: settings changed since the last run in {run_dir}; training it again")
        for path in stage_files(run_dir, name):
            path.unlink(missing_ok=True)
    train_lam(lam, run_dir, show_progress=show_progress)
    train_bc(run_dir, stage, show_progress=show_progress, device=lam.device)  # one device for every stage
    result = train_decoder(run_dir, stage, show_progress=show_progress, device=lam.device)
    if reference:
        train_action_bc(run_dir, stage, show_progress=show_progress, device=lam.device)
    return result
