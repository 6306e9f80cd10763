"""`masklam score-actions`: the decoded latent policy's action error on recorded frames, link by link.

An online return needs a simulator, and when it is low it does not say which link of the chain lost:
frames -> latent policy -> action decoder -> action. On the labelled windows of the test split (held-out seeds
and background videos) and of the in-pool episodes (held-out train episodes whose labels no stage read), this
scores each link against what was recorded:

- decoder on the LAM's latent: the action decoder applied to the frozen IDM's latent of the recorded
  transition (o_t, o_{t+1}): how well the latent turns into the action when the latent is the right one (the
  decoder learnt on the latent policy's outputs, which on train windows match the IDM's closely);
- latent BC: the latent policy's prediction from o_{t-2..t} against that latent, MSE over the latent's
  variance on the same windows (1.0 = predicting the split's mean latent);
- decoded policy: decoder(policy(o)) against the recorded action: what the policy would do in the recorded
  states, open loop;
- BC on true actions (when the run folder has it): the reference network's action error in the same states.

Action errors are NMSE: MSE over Var(a), the mean per-dimension variance of the train split's actions (the
probe's normaliser; 1.0 = the mean action). No simulator is needed: data ingested from video is scored the
same way when its test episodes carry labels (a split with none is scored None).

The in-pool episodes' actions were read by no stage, but their frames were in latent BC's stream (it reads no
actions): its in-pool error is a training error, the test split's is not.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from masklam.atomic import atomic_write_json
from masklam.data.dataset import open_dataset
from masklam.devices import resolve, to_device
from masklam.errors import UsageError
from masklam.eval.outputs import ACTION_SCORES
from masklam.eval.rollout import load_decoded_policy
from masklam.train.loader import WindowDataset, action_variance, make_loader
from masklam.train.stages import frozen_stage_policy, window_spec

ACTION_SCORES_VERSION = 1  # in a recipe step's settings: a changed score re-runs the step


def scored_records(dataset, split: str, episodes: frozenset[int] | None) -> list:
    """The split's labelled records, only those of ``episodes`` when given."""
    if split not in dataset.info["splits"]:
        return []
    return [meta for meta in dataset.index(split) if meta.labelled and (episodes is None or meta.episode in episodes)]


def split_windows(data: str, split: str, spec, episodes: frozenset[int] | None, limit: int, batch_size: int = 256):
    """Batches of the split's labelled windows in stored order, up to ``limit`` windows, only those of
    ``episodes`` when given (the caller checks that it has labelled records there)."""
    wanted = None if episodes is None else sorted(episodes)
    taken = 0
    for batch in make_loader(WindowDataset(data, split, spec, epochs=1, shuffle_buffer=1), batch_size):
        if wanted is not None:
            keep = torch.from_numpy(np.isin(batch["episode"].numpy(), wanted))
            if not keep.any():
                continue
            batch = {key: value[keep] for key, value in batch.items()}
        batch = {key: value[: limit - taken] for key, value in batch.items()}
        taken += len(batch["action"])
        yield batch
        if taken >= limit:
            return


@torch.no_grad()
def score_split(lam, policy, decoder, reference, batches, action_var: float, device: str, bar) -> dict[str, Any] | None:
    """Each link's error over the windows of ``batches``; None when there are none."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in ("latent", "predicted", "through_latent", "decoded", "reference", "action")}
    episodes: list[np.ndarray] = []
    for batch in batches:
        batch = to_device(batch, device)
        latent, predicted = lam.latent(batch).float(), policy.latent(batch).float()
        parts["latent"].append(latent)
        parts["predicted"].append(predicted)
        parts["through_latent"].append(decoder(latent).float())
        parts["decoded"].append(decoder(predicted).float())
        if reference is not None:
            parts["reference"].append(reference.latent(batch).float())
        parts["action"].append(batch["action"].float())
        episodes.append(batch["episode"].cpu().numpy())
        bar.update(len(latent))
    if not parts["action"]:
        return None
    got = {name: torch.cat(values) for name, values in parts.items() if values}
    action = got["action"]

    def action_nmse(prediction: torch.Tensor) -> float:
        return float(((prediction - action) ** 2).mean() / action_var)

    latent_var = float(got["latent"].var(0, unbiased=False).mean())
    return {  # the keys of ACTION_SCORE_LINKS, and what they were scored on
        "windows": len(action),
        "episodes": sorted(int(e) for e in np.unique(np.concatenate(episodes))),
        "decoder_on_lam_latent": action_nmse(got["through_latent"]),
        "latent_bc": float(((got["predicted"] - got["latent"]) ** 2).mean() / latent_var) if latent_var > 0 else None,
        "decoded_policy": action_nmse(got["decoded"]),
        "bc_actions": action_nmse(got["reference"]) if "reference" in got else None,
    }


def score_actions(run_dir: Path, data: str | None = None, windows: int = 5000, device: str = "auto", show_progress: bool = True) -> dict[str, Any]:
    """Score the run folder's decoded policy on recorded frames (module docstring); written to
    RUN/action-scores.json. ``windows``: at most this many per split; ``data``: the LAM's dataset, when moved."""
    run_dir, device = Path(run_dir), resolve(device)
    if windows < 1:
        raise UsageError(f"--windows {windows}: score at least 1 window per split")
    lam_config, lam, policy, decoder, info = load_decoded_policy(run_dir, data, device)
    reference = frozen_stage_policy(run_dir, "bc-actions", lam, latent_dim=info["features"]["action"]["shape"][0])
    source = lam_config.data.path
    dataset = open_dataset(source)
    spec = replace(window_spec(lam_config, labelled_only=True), labels="all", episode=True)  # a yardstick reads every label
    action_var = float(np.mean(action_variance(source)))
    splits = {"test": ("test", None), "in_pool": ("train", dataset.in_pool_episodes())}
    records = {name: scored_records(dataset, split, episodes) for name, (split, episodes) in splits.items()}  # read once
    expected = sum(min(windows, sum(meta.frames - 1 for meta in metas)) for metas in records.values())
    scores = {}
    with tqdm(total=expected, unit="window", desc="score actions", disable=not show_progress or None) as bar:
        for name, (split, episodes) in splits.items():
            batches = split_windows(source, split, spec, episodes, windows) if records[name] else ()
            scores[name] = score_split(lam, policy, decoder, reference, batches, action_var, device, bar)
    result = {"run": str(run_dir), "version": ACTION_SCORES_VERSION, "action_variance": action_var, **scores}
    atomic_write_json(run_dir / ACTION_SCORES, result)
    return result


def render_action_scores(result: dict[str, Any]) -> str:
    names = {
        "decoder_on_lam_latent": "decoder on the LAM's latent (action NMSE)",
        "latent_bc": "latent BC (latent NMSE)",
        "decoded_policy": "decoded policy (action NMSE)",
        "bc_actions": "BC on true actions (action NMSE)",
    }
    lines = []
    for split, title in (("test", "test split"), ("in_pool", "in-pool episodes")):
        score = result[split]
        if score is None:
            lines.append(f"{title}: no labelled windows")
            continue
        lines.append(f"{title} ({score['windows']} windows, {len(score['episodes'])} episodes):")
        lines += [f"  {label:<44} {score[key]:.4f}" for key, label in names.items() if score[key] is not None]
    return "\n".join(lines)
