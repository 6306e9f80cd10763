"""The training loop every stage shares (LAM, latent BC, action decoder), readable top to bottom.

A stage gives a model, a loss over a batch and an iterator of batches. The loop resumes from the stage's
checkpoint by replaying the (deterministic) batch stream to the saved step, so a resumed run is
bit-identical to an uninterrupted one; logs go to JSONL and TensorBoard; checkpoints are atomic.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from masklam.atomic import atomic_file, atomic_write_bytes, atomic_write_json, json_line, remove_stale_temp_files
from masklam.configs import require, to_dict
from masklam.errors import UsageError
from masklam.locks import writer_lock

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", self.steps, "train for at least 1 step")
        require(0 < self.lr < math.inf, "lr", self.lr, "the learning rate must be a positive number")
        require(0 <= self.weight_decay < math.inf, "weight_decay", self.weight_decay, "must be a number >= 0")
        require(0 < self.grad_clip <= math.inf, "grad_clip", self.grad_clip, "the gradient norm bound must be > 0 (inf: no clipping)")


# Settings that name a dataset: compared by the folder they resolve to, and stored with where they are from the
# run folder too, so that a run folder moved or copied together with its dataset still finds it.
DATA_KEYS = ("data.path", "data")
BAR_METRICS = ("loss", "action_nmse")  # on the progress bar (action_nmse: LAOM-Labels' head against Var(a))
LOCATIONS = "_locations"  # key of a saved config: dataset setting -> its path relative to the run folder


def is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def absolute_location(location: str) -> str:
    """A local dataset path as an absolute one (``file://`` dropped); a URL as it is."""
    if not location or not is_local(location):
        return location
    return str(Path(location.removeprefix("file://")).expanduser().resolve())


def _get(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def data_settings(config: dict[str, Any]) -> dict[str, str]:
    """The config's dataset settings that name a local folder: dotted key -> path."""
    values = {key: _get(config, key) for key in DATA_KEYS}
    return {key: value for key, value in values.items() if isinstance(value, str) and value and is_local(value)}


def read_run_config(run_dir: Path, stage: str) -> dict[str, Any]:
    """A stage's saved settings, as its dataclass takes them (without the stored dataset locations)."""
    saved = json.loads((Path(run_dir) / f"{stage}-config.json").read_text())
    saved.pop(LOCATIONS, None)
    return saved


def stored_location(run_dir: Path, stage: str, key: str = "data.path") -> tuple[str, str | None]:
    """The dataset a stage's config names: (the path as saved, the path relative to the run folder or None)."""
    saved = json.loads((Path(run_dir) / f"{stage}-config.json").read_text())
    return _get(saved, key) or "", saved.get(LOCATIONS, {}).get(key)


def find_dataset(run_dir: Path, stored: str, relative: str | None, what: str = "the dataset this run trained on") -> str:
    """Where a run folder's dataset is now: beside the run folder as it was (a folder moved or copied with its
    data), else where it was when the run was claimed. A UsageError that says to pass --data when neither is."""
    if not stored or not is_local(stored):
        return stored
    if relative is not None:
        beside = (Path(run_dir) / relative).resolve()
        if beside.is_dir():
            return str(beside)
    if Path(stored.removeprefix("file://")).is_dir():
        return stored
    raise UsageError(f"{what}, {stored}, is not there any more (moved or deleted?): pass --data with where it is now")


def same_settings(saved: dict[str, Any], new: dict[str, Any], run_dir: Path, ignore: tuple[str, ...]) -> bool:
    """Equal settings, datasets compared by the folder they name (absolute, or the same place beside the run)."""
    saved, new = json.loads(json.dumps(saved)), json.loads(json.dumps(new))
    locations = saved.pop(LOCATIONS, {})
    for key in ignore:
        saved.pop(key, None)
        new.pop(key, None)
    for key in DATA_KEYS:
        old_value, new_value = _get(saved, key), _get(new, key)
        if not (isinstance(old_value, str) and isinstance(new_value, str)) or old_value == new_value:
            continue
        same = absolute_location(old_value) == absolute_location(new_value)
        if not same and key in locations and is_local(new_value):
            same = str((Path(run_dir) / locations[key]).resolve()) == absolute_location(new_value)
        if same:
            _set(new, key, old_value)
    return saved == new


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def stage_files(run_dir: Path, stage: str) -> list[Path]:
    """What a stage writes into its run folder."""
    return [run_dir / f"{stage}{suffix}" for suffix in (".pt", "-config.json", "-metrics.jsonl")]


def claim_run_folder(run_dir: Path, stage: str, config: Any, rank: int = 0, ignore: tuple[str, ...] = ()) -> None:
    """Record a stage's settings; refuse a folder whose stage was run with other settings (``ignore``: top-level
    settings that do not change this stage). A stage that never saved a checkpoint holds no work: its folder is
    taken over by the new settings. Temp files of interrupted writers in the folder are removed."""
    run_dir = Path(run_dir)
    saved = run_dir / f"{stage}-config.json"
    settings = to_dict(config)
    previous, same = None, False
    if saved.exists():
        try:
            previous = json.loads(saved.read_text())
        except (OSError, ValueError):
            pass
        same = isinstance(previous, dict) and same_settings(previous, settings, run_dir, ignore)
        if not same:
            if (run_dir / f"{stage}.pt").exists():
                raise UsageError(f"{run_dir} holds a {stage} run with another config: use another --out, or the same settings to resume it")
            if rank == 0:
                (run_dir / f"{stage}-metrics.jsonl").unlink(missing_ok=True)
    if rank == 0:
        remove_stale_temp_files(run_dir, same_host=int(os.environ.get("WORLD_SIZE", "1")) == 1)
        locations = {key: os.path.relpath(absolute_location(value), run_dir.resolve()) for key, value in data_settings(settings).items()}
        record = {**settings, **({LOCATIONS: locations} if locations else {})}
        if same:  # settings this stage ignores keep their recorded values
            record.update({key: previous[key] for key in ignore if key in previous})
        if record != previous:  # unchanged: left as it is
            atomic_write_json(saved, record)


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows of a JSONL metrics log up to ``step`` (a resumed run logs the steps after it again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a row cut short by a kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, loss: float | None = None) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "torch_rng": torch.get_rng_state()}
    if loss is not None:  # the loss of the step saved: what a finished run reports when run again
        state["loss"] = loss
    generator = getattr(model, "generator", None)
    if generator is not None:  # LAOM's augmentation draws
        state["generator"] = generator.get_state()
    with atomic_file(path) as f:
        torch.save(state, f)


def kept_checkpoint(run_dir: Path, stage: str, step: int) -> Path:
    """Where ``fit(keep_at=...)`` keeps the model of ``step``."""
    return Path(run_dir) / f"{stage}-step{step}.pt"


def check_keep_at(keep_at: tuple[int, ...], steps: int) -> tuple[int, ...]:
    """Steps to keep a checkpoint at, sorted; each within the run's 1..steps."""
    wrong = [step for step in keep_at if not 1 <= step <= steps]
    if wrong:
        raise UsageError(f"probe points {wrong} are outside this run's steps 1..{steps}: choose steps the LAM trains through")
    return tuple(sorted(set(keep_at)))


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


def saved_loss(path: Path) -> float:
    """The loss of the step a checkpoint was taken at (NaN for a checkpoint from before it was recorded)."""
    return float(torch.load(path, map_location="cpu", weights_only=False).get("loss", math.nan))


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
    """The stage's optimiser; settings torch refuses (a negative learning rate, ...) are a UsageError."""
    try:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=optim.lr, weight_decay=optim.weight_decay)
    except ValueError as error:
        raise UsageError(f"optim settings rejected ({error}): fix optim.lr / optim.weight_decay") from None


def check_optim(optim: OptimConfig) -> None:
    """Validate optimiser settings before a run folder is claimed: build the optimiser over a stand-in parameter."""
    make_optimizer(torch.nn.Linear(1, 1), optim)  # OptimConfig checks its own ranges; this catches what torch refuses


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
    keep_at: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Train ``model`` by ``forward(batch)["loss"]`` for ``optim.steps`` steps; resume from ``run_dir/<stage>.pt``.
    At each step in ``keep_at`` a copy of the model is kept as ``<stage>-step<N>.pt`` (kept_checkpoint), to be
    probed later: a run is then probed along its training without being trained again."""
    with writer_lock(run_dir, f"{stage}-rank{rank}"):  # one trainer per run folder, stage (and rank)
        checkpoint = run_dir / f"{stage}.pt"
        optimizer = make_optimizer(model, optim)
        start = load_checkpoint(checkpoint, model, optimizer)
        for _ in range(start):  # replay the deterministic stream up to the resumed step
            next(batches)

        log = writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            truncate_log(run_dir / f"{stage}-metrics.jsonl", start)  # each step once, however often it was resumed
            log = open(run_dir / f"{stage}-metrics.jsonl", "a")
            writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start)
        bar = tqdm(total=optim.steps, initial=start, unit="step", desc=f"train {stage}", disable=rank != 0 or not show_progress or None)
        # A finished run runs no step: it reports the loss its last checkpoint recorded.
        began, loss = time.perf_counter(), torch.tensor(saved_loss(checkpoint) if start >= optim.steps else math.nan)
        # Finiteness is gathered on the device and read at log and checkpoint steps only: reading it every step
        # made the host wait for each step's last kernel, and a GPU sit idle while the next batch is prepared.
        finite, checked = torch.ones((), dtype=torch.bool, device=device), start
        for step in range(start + 1, optim.steps + 1):
            out = train_step(model, forward, optimizer, next(batches), optim.grad_clip, device, bf16)
            loss = out["loss"]
            finite &= torch.isfinite(loss.detach())
            if step % log_every == 0 or step % checkpoint_every == 0 or step == optim.steps or step in keep_at:
                if not finite:  # before a non-finite loss is logged or a model checkpointed
                    raise UsageError(f"the {stage} loss became {loss.item()} between steps {checked + 1} and {step}: lower optim.lr or check the data")
                checked = step
            bar.update(1)
            if rank == 0 and step % log_every == 0:
                row = {"step": step, "loss": loss.item(), **{k: float(v.detach()) for k, v in out.items() if v.dim() == 0 and k != "loss"}}
                row["samples_per_second"] = (step - start) * batch_size * world_size / (time.perf_counter() - began)
                log.write(json_line(row) + "\n")
                log.flush()
                for name, value in row.items():
                    writer.add_scalar(f"{stage}/{name}", value, step)
                bar.set_postfix({name: f"{row[name]:.4f}" for name in BAR_METRICS if name in row})
            if rank == 0 and step in keep_at:  # before the resume checkpoint: a run killed after it has its copy
                save_checkpoint(kept_checkpoint(run_dir, stage, step), model, optimizer, step, loss.item())
            if rank == 0 and (step % checkpoint_every == 0 or step == optim.steps):
                save_checkpoint(checkpoint, model, optimizer, step, loss.item())
        if start < optim.steps:  # the bar ends on the last step's loss, not the last logged one
            bar.set_postfix({name: f"{float(out[name].detach()):.4f}" for name in BAR_METRICS if name in out})
        bar.close()
        if rank == 0:
            log.close()
            writer.close()
        return {"steps": optim.steps, "final_loss": loss.item()}
