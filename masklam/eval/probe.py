"""Linear probes on frozen latent actions (the papers' normalised probe MSE, Eq. 5 of MaskLAM).

A fresh linear map (least squares with a small ridge term, closed form) from z_t to a_t is fitted on
the train split's labelled transitions and scored on the test split:

    NMSE = MSE_test / Var(a),  Var(a) = mean per-dimension variance of the train actions

1.0 means no better than predicting the mean action. The distractor probe fits the same kind of map
from z_t to each stored distractor state (background frame, camera offset, colour offset, object
positions) and reports NMSE against that feature's variance: the lower, the more of the distractor
the latent encodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from masklam.errors import UsageError

RIDGE = 1e-3


def fit_linear(features: np.ndarray, targets: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Weights (D+1, T) of targets ~ [features, 1] @ W, ridge-regularised (bias not penalised)."""
    x = np.concatenate([features, np.ones((len(features), 1))], axis=1).astype(np.float64)
    penalty = ridge * len(x) * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ targets.astype(np.float64))


def predict_linear(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    return np.concatenate([features, np.ones((len(features), 1))], axis=1) @ weights


def normalised_mse(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, variance: float | None = None) -> float:
    """MSE of a linear probe fitted on train and scored on test, over Var (mean per-dimension train variance)."""
    train_y, test_y = train_y.reshape(len(train_y), -1), test_y.reshape(len(test_y), -1)
    weights = fit_linear(train_x, train_y)
    mse = float(np.mean((predict_linear(weights, test_x) - test_y) ** 2))
    var = float(np.mean(train_y.var(axis=0))) if variance is None else variance
    return mse / max(var, 1e-12)


def collect_latents(latent_of: Callable[[dict[str, torch.Tensor]], torch.Tensor], batches: Iterable[dict[str, torch.Tensor]], fields: tuple[str, ...], limit: int, desc: str = "latents", show_progress: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Latents of up to ``limit`` windows and the batches' ``fields`` alongside them."""
    latents, values = [], {name: [] for name in fields}
    count = 0
    with torch.no_grad(), tqdm(total=limit, unit="window", desc=desc, disable=not show_progress or None) as bar:
        for batch in batches:
            latents.append(latent_of(batch).float().cpu().numpy())
            for name in fields:
                values[name].append(batch[name].float().cpu().numpy())
            count += len(latents[-1])
            bar.update(min(len(latents[-1]), limit - bar.n))
            if count >= limit:
                break
    return np.concatenate(latents)[:limit], {name: np.concatenate(v)[:limit] for name, v in values.items()}


def probe_run(run_dir, data: str, windows: int = 20000, batch_size: int = 64, show_progress: bool = True) -> dict:
    """Action and distractor probes of a trained LAM run (lam.pt + lam-config.json) on a dataset."""
    from pathlib import Path

    from masklam.atomic import atomic_write_json
    from masklam.data.dataset import open_dataset
    from masklam.train.loader import WindowDataset, action_variance, make_loader
    from masklam.train.stages import frozen_lam, window_spec

    if windows < 1:
        raise UsageError(f"--windows {windows}: the probes need at least 1 train window")
    run_dir = Path(run_dir)
    config, model, _ = frozen_lam(run_dir, fallback=data)  # --data gives the model's shapes if the run's data moved
    info = open_dataset(data).info
    # Distractor states to probe; the background video's index is a category, not a state, so it is left out.
    distractors = tuple(name for name in info["features"] if name.startswith("distractor_") and name != "distractor_bg_video")
    spec = window_spec(config, labelled_only=True, fields=distractors)

    def latents(split: str, limit: int):
        stream = WindowDataset(data, split, spec, seed=config.seed, shuffle_buffer=256, epochs=1)
        return collect_latents(model.latent, make_loader(stream, batch_size), ("action", *distractors), limit, f"probe {split}", show_progress)

    train_z, train_values = latents("train", windows)
    test_z, test_values = latents("test", max(windows // 4, 1))
    result = {
        "run": str(run_dir),
        "data": str(data),
        "method": config.method,
        "windows": {"train": len(train_z), "test": len(test_z)},
        "action_nmse": normalised_mse(train_z, train_values["action"], test_z, test_values["action"], float(np.mean(action_variance(data)))),
        "distractor_nmse": {name.removeprefix("distractor_"): normalised_mse(train_z, train_values[name], test_z, test_values[name]) for name in distractors},
    }
    atomic_write_json(run_dir / "probe.json", result)
    return result


def render_probe(result: dict) -> str:
    lines = [f"{result['method']} on {result['data']} ({result['windows']['train']} train / {result['windows']['test']} test windows)",
             f"action probe NMSE      {result['action_nmse']:.4f}   (1.0 = no better than the mean action)"]
    for name, value in result["distractor_nmse"].items():
        lines.append(f"distractor {name:<11} {value:.4f}   (lower = the latent encodes more of it)")
    return "\n".join(lines)
