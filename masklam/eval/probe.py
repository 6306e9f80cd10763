"""Linear probes on frozen latent actions (the papers' normalised probe MSE, Eq. 5 of MaskLAM), fitted so
that the number measures the latent, not the probe (method.md, section 3).

The action probe is a ridge regression from z_t to a_t:

1. latents are standardised with the train split's per-dimension mean and std;
2. the ridge strength is chosen from a log grid by K-fold cross-validation over the train split's labelled
   windows, grouped by episode (a fold holds whole episodes, so a probe is always scored on episodes it never
   saw); the test split plays no part in it;
3. a probe with that ridge is fitted on every train window and scored twice:

   - test NMSE: on the test split (held-out seeds and background videos): MSE_test / Var(a);
   - in-pool NMSE: on the in-pool episodes (same background pool, the MaskLAM authors' kind of split):
     a fifth of the labelled train episodes (``Dataset.in_pool_episodes``) that no training stage read the
     actions of (LAOM-Labels' head, the decoder and BC on actions see them unlabelled), and that the probe
     neither fits nor cross-validates on. Before probe version 3 it was the cross-validated MSE over every
     train episode, which LAOM-Labels' head had trained on.

   Var(a) is the mean per-dimension variance of the train split's actions; 1.0 means no better than the mean.

A near-unregularised probe (the previous one: ridge 1e-3 on raw latents) fits per-episode background
directions and scores far above 1.0 on episodes it has not seen; cross-validating the ridge lets it shrink
towards the mean action instead.

Distractor decodability: the same cross-validated probe from z_t to each distractor state that means the
same in every episode (camera offsets, the camera's motion from o_t to o_{t+1}, the colour offset the agent's
pixels show, object positions), scored only in-pool (on held-out train episodes). It is reported as R^2 = 1 - in-pool NMSE (each dimension with its own ridge, over its own
train variance, averaged), not clipped: the fraction of the distractor's variance the latent gives away
linearly (below 0: none, and worse than the state's mean). 0 = nothing of it; 1 = all of it. Lower is better for a latent action meant to ignore distractors.
The background has no such state (its frame index counts frames within a clip): the episode share, the
share of the latent's variance that lies between train episodes, stands for it (see episode_share).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from masklam.errors import UsageError
from masklam.eval.outputs import probe_file

# Ridge strengths tried: the penalty per train window on standardised latents, i.e. the fit minimises
# mean squared error + ridge * ||w||^2 (sklearn's alpha = ridge * windows). Half-decade steps from plain
# least squares to enough to shrink any standardised latent of up to ~10^4 dimensions to the mean.
RIDGE_GRID = tuple(float(r) for r in np.logspace(-6, 5, 23))
FOLDS = 5  # at most; fewer when the train windows come from fewer episodes
# 1: ridge 1e-3 on raw latents, test only; 2: in-pool by cross-validation; 3: in-pool episodes held out, R²
# unclipped, share weighted; 4: the camera's motion between a window's frames probed beside its pose
PROBE_VERSION = 4
DIAGNOSTIC_WINDOWS = 2048  # train windows for a latent-FDM method's diagnostics (LAOM, LAOM-Labels)


@dataclass(frozen=True)
class CrossValidated:
    ridge: float  # chosen by the grouped cross-validation over all folds
    curve: dict[float, float]  # ridge -> cross-validated MSE (per window and target dimension)
    in_pool_mse: float  # each fold scored at the ridge chosen by the other folds
    folds: int

    @property
    def at_grid_edge(self) -> bool:
        return self.ridge in (min(self.curve), max(self.curve))


def standardise(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``train_x`` and ``others`` standardised with train_x's per-dimension mean and std (constant dims: std 1)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x.astype(np.float64))
    return [scaler.transform(x.astype(np.float64)) for x in (train_x, *others)]


class GroupedRidgeCV:
    """K-fold cross-validation of ridge probes from ``x``, grouped by ``groups`` (episodes).

    One eigendecomposition of each fold serves every ridge value and every target (sklearn's GridSearchCV
    would refit per ridge value and target: minutes for 8192-d latents). The intercept is not penalised.
    A fold decomposes the smaller of its two Gram matrices: features x features (the primal form) or, when
    latents are wider than the fold has windows, windows x windows (the dual form; 8192-d latents would
    otherwise hold a 512 MB matrix per fold). Both give the same predictions.
    """

    def __init__(self, x: np.ndarray, groups: np.ndarray, folds: int = FOLDS) -> None:
        from sklearn.model_selection import GroupKFold

        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError("grouped cross-validation needs windows from at least 2 groups (episodes)")
        self.x = x.astype(np.float64)
        self.folds = []  # (fit rows, held rows, eigenvalues, eigenvectors, held rows projected on them, dual?)
        for fit, held in GroupKFold(n_splits=min(folds, n_groups)).split(self.x, groups=groups):
            x_mean = self.x[fit].mean(0)
            centred, held_centred = self.x[fit] - x_mean, self.x[held] - x_mean
            dual = centred.shape[1] > centred.shape[0]
            if dual:  # C C' = U S U', w = C' U (S + r)^-1 U' y
                eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
                projected_held = (held_centred @ centred.T) @ vectors
            else:  # C'C = V S V', w = V (S + r)^-1 V' C' y
                eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
                projected_held = held_centred @ vectors
            self.folds.append((fit, held, np.clip(eigenvalues, 0.0, None), vectors, projected_held, dual))

    def __call__(self, y: np.ndarray, grid: Iterable[float] = RIDGE_GRID) -> CrossValidated:
        grid = sorted(grid)
        y = y.reshape(len(y), -1).astype(np.float64)
        errors = []  # per fold: summed squared error of its held-out windows at each ridge
        for fit, held, eigenvalues, vectors, projected_held, dual in self.folds:
            y_mean = y[fit].mean(0)
            centred_y = y[fit] - y_mean
            projected_y = vectors.T @ (centred_y if dual else self.x[fit].T @ centred_y)  # sum of (x - mean) y' = sum of x y'
            fold = []
            for ridge in grid:
                prediction = projected_held @ (projected_y / (eigenvalues + ridge * len(fit))[:, None]) + y_mean
                fold.append(float(np.sum((prediction - y[held]) ** 2)))
            errors.append(fold)
        errors = np.asarray(errors)  # (folds, ridges)
        total = errors.sum(0)
        per_value = y.size

        def best(summed: np.ndarray) -> int:  # ties (a flat curve): the strongest ridge, the simplest probe
            return len(grid) - 1 - int(np.argmin(summed[::-1]))

        in_pool = sum(errors[f, best(total - errors[f])] for f in range(len(errors)))
        return CrossValidated(grid[best(total)], dict(zip(grid, (total / per_value).tolist(), strict=True)), float(in_pool) / per_value, len(errors))


def grouped_ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid: Iterable[float] = RIDGE_GRID, folds: int = FOLDS) -> CrossValidated:
    """Choose a ridge strength from ``grid`` by K-fold cross-validation grouped by ``groups`` (episodes)."""
    return GroupedRidgeCV(x, groups, folds)(y, grid)


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float):
    """A ridge probe (sklearn) with the penalty ``ridge`` per window; intercept not penalised."""
    from sklearn.linear_model import Ridge

    return Ridge(alpha=ridge * len(x)).fit(x.astype(np.float64), y.reshape(len(y), -1).astype(np.float64))


def feature_variance(y: np.ndarray) -> float:
    return float(np.mean(y.reshape(len(y), -1).astype(np.float64).var(axis=0)))


def action_probe(
    train_z: np.ndarray,
    train_a: np.ndarray,
    episodes: np.ndarray,
    test_z: np.ndarray,
    test_a: np.ndarray,
    variance: float | None = None,
    folds: GroupedRidgeCV | None = None,
    in_pool: tuple[np.ndarray, np.ndarray] | None = None,
    test_episodes: np.ndarray | None = None,
) -> dict:
    """Test-split and in-pool NMSE of the cross-validated ridge probe z -> a, and the chosen ridge.

    ``variance``: Var(a) (default: the mean per-dimension variance of train_a). ``folds``: the cross-validation
    of the standardised train_z, if already made (it does not depend on the target). ``in_pool``: (z, a) of
    held-out train episodes to score in-pool; without them the in-pool NMSE is the cross-validated one.
    ``test_episodes``: each test window's episode, for the test NMSE of each episode (what the report resamples)."""
    variance = max(feature_variance(train_a) if variance is None else variance, 1e-12)
    train_x, test_x, *pool_x = standardise(train_z, test_z, *([] if in_pool is None else [in_pool[0]]))
    cv = (folds or GroupedRidgeCV(train_x, episodes))(train_a)
    probe = fit_ridge(train_x, train_a, cv.ridge)

    def nmse(x: np.ndarray, a: np.ndarray) -> float:
        return float(np.mean((probe.predict(x) - a.reshape(len(a), -1)) ** 2)) / variance

    per_episode = {} if test_episodes is None else {str(int(e)): nmse(test_x[test_episodes == e], test_a[test_episodes == e]) for e in np.unique(test_episodes)}
    return {
        "test_nmse": nmse(test_x, test_a),
        "test_nmse_per_episode": per_episode,
        "in_pool_nmse": cv.in_pool_mse / variance if in_pool is None else nmse(pool_x[0], in_pool[1]),
        "cross_validated_nmse": cv.in_pool_mse / variance,
        "ridge": cv.ridge,
        "ridge_at_grid_edge": cv.at_grid_edge,
        "folds": cv.folds,
        "cv_nmse": {f"{ridge:.3g}": mse / variance for ridge, mse in cv.curve.items()},
    }


def distractor_probe(train_z: np.ndarray, target: np.ndarray, episodes: np.ndarray, folds: GroupedRidgeCV | None = None) -> dict:
    """In-pool decodability of one distractor state from the latent: R^2 = 1 - in-pool NMSE, not clipped (below
    0: worse than the state's mean, which a probe with the strongest ridge would give; probe versions 1-2
    clipped at 0); a state constant over the windows is not probed (``r2`` None).

    Each non-constant dimension of the state gets its own cross-validated ridge and its own NMSE (MSE over its
    train variance), and the NMSE is their mean: camera angles in radians and a zoom factor weigh alike.
    ``folds``: the cross-validation of the standardised train_z, if already made."""
    target = target.reshape(len(target), -1).astype(np.float64)
    target = target[:, target.std(axis=0) > 1e-6]
    if target.shape[1] == 0:  # a constant state: nothing to decode, and nothing to average in
        return {"in_pool_nmse": None, "r2": None, "ridge": None}
    folds = folds or GroupedRidgeCV(standardise(train_z)[0], episodes)
    dimensions = [folds(column / column.std()) for column in target.T]
    nmse = float(np.mean([cv.in_pool_mse for cv in dimensions]))
    return {"in_pool_nmse": nmse, "r2": 1.0 - nmse, "ridge": [cv.ridge for cv in dimensions]}


def episode_share(values: np.ndarray, episodes: np.ndarray, weighted: bool = True) -> float | None:
    """The share of ``values``' variance that lies between episodes: the variance of the per-episode means over
    the total variance, summed over dimensions (``weighted``: each dimension counts by its variance, so a
    near-dead dimension hardly counts), or averaged over non-constant dimensions (``weighted=False``, probe
    versions 1-2: three action-like dimensions and five per-episode ones at scale 1e-4 scored 0.63); None if
    every dimension is constant.

    Within the train pool the distractors are drawn per episode (background clip, start frame and direction,
    the walks' slow drift) while the agent's actions vary step by step: on the dcs-cheetah-run-low data 0.2 %
    of the action's variance is between episodes. Latent actions with a much larger share than the action
    carry episode-specific content, which is the distractor's. Independent noise scores 1 / (windows per
    episode)."""
    values = values.reshape(len(values), -1).astype(np.float64)
    values = values[:, values.std(axis=0) > 1e-6 * (1 + np.abs(values).max(axis=0))]
    if values.shape[1] == 0:
        return None
    ids, index, counts = np.unique(episodes, return_inverse=True, return_counts=True)
    means = np.zeros((len(ids), values.shape[1]))
    np.add.at(means, index, values)
    means /= counts[:, None]
    between = np.sum(counts[:, None] * (means - values.mean(axis=0)) ** 2, axis=0) / len(values)
    total = values.var(axis=0)
    return float(between.sum() / total.sum()) if weighted else float(np.mean(between / total))


# Stored states whose change over the window is probed too (read at t+1 as next_<name>), and its report name.
MOTIONS = {"distractor_camera": "camera_motion"}


def distractor_states(values: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The states the distractor probe reads, by report name: each stored one, and the camera's motion between
    the window's two frames (its pose at t+1 minus at t) where the camera shakes: a latent action, made from
    that pair of frames, is the place a camera's motion would hide, more than its pose."""
    states = {name.removeprefix("distractor_"): values[name] for name in names}
    for name in (name for name in names if name in MOTIONS):
        states[MOTIONS[name]] = values[f"next_{name}"] - values[name]
    return states


def collect_latents(
    latent_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batches: Iterable[dict[str, torch.Tensor]],
    fields: tuple[str, ...],
    limit: int,
    desc: str = "latents",
    show_progress: bool = True,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Latents of up to ``limit`` windows and the batches' ``fields`` alongside them (dtypes kept)."""
    latents, values = [], {name: [] for name in fields}
    count = 0
    with torch.no_grad(), tqdm(total=limit, unit="window", desc=desc, disable=not show_progress or None) as bar:
        for batch in batches:
            latents.append(latent_of(batch).float().cpu().numpy())
            for name in fields:
                values[name].append(batch[name].cpu().numpy())
            count += len(latents[-1])
            bar.update(min(len(latents[-1]), limit - bar.n))
            if count >= limit:
                break
    return np.concatenate(latents)[:limit], {name: np.concatenate(v)[:limit] for name, v in values.items()}


def probe_run(run_dir, data: str, windows: int = 20000, batch_size: int = 64, show_progress: bool = True, device: str = "auto", at: int | None = None) -> dict:
    """Action and distractor probes of a trained LAM run (lam.pt + lam-config.json) on a dataset, into
    probe.json; ``at``: of the model kept at that training step, into probe-step<N>.json. The LAM's latents are
    computed on ``device`` (masklam/devices.py), the ridge probes on the CPU."""
    from dataclasses import replace
    from pathlib import Path

    from masklam.atomic import atomic_write_json
    from masklam.data.dataset import open_dataset
    from masklam.devices import resolve, to_device
    from masklam.eval.diagnostics import latent_fdm_diagnostics, thinned
    from masklam.models.lam import LAOM
    from masklam.train.loader import WindowDataset, action_variance, make_loader
    from masklam.train.stages import frozen_lam, window_spec

    if windows < 1:
        raise UsageError(f"--windows {windows}: the probes need at least 1 train window")
    run_dir = Path(run_dir)
    device = resolve(device)
    config, model, _ = frozen_lam(run_dir, fallback=data, device=device, at=at)  # --data: the model's shapes if the run's data moved
    dataset = open_dataset(data)
    info = dataset.info
    # Distractor states to probe: those that mean the same in every episode. Not the background's: its frame
    # index counts frames within a clip (the same index is another picture in another clip), and the clip's
    # index, probed one-hot, read 0.06 for LAPO and 0.08 for MaskLAM on the dcs-cheetah-run-low data, where
    # LAPO's latent has 48 % of its variance between episodes and MaskLAM's 0.8 %: the episode share stands
    # for the background instead.
    background = ("distractor_bg_frame", "distractor_bg_video")
    distractors = tuple(name for name in info["features"] if name.startswith("distractor_") and name not in background)
    moving = tuple(name for name in distractors if name in MOTIONS)  # their motion too: at t+1
    spec = replace(window_spec(config, labelled_only=True, fields=distractors), labels="all", next_fields=moving)  # the yardstick reads every label

    def latents(split: str, limit: int):
        stream = WindowDataset(data, split, replace(spec, episode=True), seed=config.seed, shuffle_buffer=256, epochs=1)
        fields = ("action", *distractors, *(f"next_{name}" for name in moving), "episode")
        latent_of = lambda batch: model.latent(to_device(batch, device))  # noqa: E731
        return collect_latents(latent_of, make_loader(stream, batch_size), fields, limit, f"probe {split}", show_progress)

    train_z, train_values = latents("train", windows)
    test_z, test_values = latents("test", max(windows // 4, 1))
    episodes = train_values["episode"]
    held = np.isin(episodes, sorted(dataset.in_pool_episodes()))  # scored in-pool, never fitted on
    fit = ~held
    if len(np.unique(episodes[fit])) < 2:
        raise UsageError(
            f"the probe cross-validates over train episodes (the in-pool ones aside), and its {int(fit.sum())} train windows "
            "there come from one: probe more windows (--windows) or label more train episodes"
        )
    action = action_probe(
        train_z[fit],
        train_values["action"][fit],
        episodes[fit],
        test_z,
        test_values["action"],
        float(np.mean(action_variance(data))),
        in_pool=(train_z[held], train_values["action"][held]) if held.any() else None,
        test_episodes=test_values["episode"],
    )
    if not held.any():
        action["in_pool_nmse"] = None  # no episode whose actions training never read: no in-pool score
    folds = GroupedRidgeCV(standardise(train_z)[0], episodes)  # the distractor probes' (no action read)
    states = distractor_states(train_values, distractors)
    distractor = {name: distractor_probe(train_z, state, episodes, folds) for name, state in states.items()}
    result = {
        "run": str(run_dir),
        "data": str(data),
        "method": config.method,
        "step": at if at is not None else config.optim.steps,  # the training step of the model probed
        "probe_version": PROBE_VERSION,
        "windows": {"train": len(train_z), "test": len(test_z)},
        "train_episodes": len(np.unique(episodes)),
        "in_pool_episodes": sorted(int(e) for e in np.unique(episodes[held])),
        "in_pool_windows": int(held.sum()),
        "action_nmse": action["test_nmse"],  # the headline number: held-out seeds and videos
        "in_pool_nmse": action["in_pool_nmse"],
        "ridge": action["ridge"],
        "action": action,
        "distractor": distractor,
        # The mean over the states that vary (the report shows each state too); None when none does.
        "distractor_r2": float(np.mean(varying)) if (varying := [d["r2"] for d in distractor.values() if d["r2"] is not None]) else None,
        "episode_share": {
            "latent": episode_share(train_z, episodes),  # variance-weighted
            "latent_unweighted": episode_share(train_z, episodes, weighted=False),
            "action": episode_share(train_values["action"], episodes),
        },
    }
    if isinstance(model, LAOM):  # a latent FDM: what z does for it (masklam/eval/diagnostics.py)
        stream = WindowDataset(data, "train", replace(spec, episode=True), seed=config.seed, shuffle_buffer=256, epochs=1)
        limit = min(windows, DIAGNOSTIC_WINDOWS)
        total = sum(meta.frames - 1 for meta in dataset.index("train") if stream.reads(meta))
        # A sample of every episode: the stream's first windows came from a third of them (2,048 of 6,000 at the
        # recipe scale), and episodes differ most (their backgrounds): it read an FDM error of 0.126 on the first
        # 1,024 windows and 0.185 on the first 2,048 of one model.
        batches = thinned(make_loader(stream, batch_size), limit / total, config.seed)
        result["fdm_diagnostics"] = latent_fdm_diagnostics(model, batches, limit, config.seed)
    atomic_write_json(run_dir / probe_file(at), result)
    return result


def render_probe(result: dict) -> str:
    action = result["action"]
    edge = "  (at the grid's edge)" if action["ridge_at_grid_edge"] else ""
    windows = f"{result['windows']['train']} train windows from {result['train_episodes']} episodes / {result['windows']['test']} test windows"
    lines = [
        f"{result['method']} on {result['data']} ({windows})",
        f"ridge                  {action['ridge']:.3g}{edge}   (chosen by {action['folds']}-fold cross-validation over train episodes, standardised latents)",
        f"action NMSE, test      {action['test_nmse']:.4f}   (held-out seeds and videos; 1.0 = no better than the mean action)",
    ]
    if action["in_pool_nmse"] is not None:
        lines.append(
            f"action NMSE, in-pool   {action['in_pool_nmse']:.4f}   ({len(result['in_pool_episodes'])} held-out train episodes, same background "
            "pool; no training stage read their actions)"
        )
    share = result["episode_share"]
    if share["latent"] is not None:
        lines.append(
            f"episode share, latent  {share['latent']:.4f}   (of its variance, between train episodes; the action's: {share['action']:.4f}; lower is better)"
        )
    for name, value in result["distractor"].items():
        if value["r2"] is None:
            lines.append(f"distractor {name:<13} constant in these windows: not probed")
            continue
        lines.append(f"distractor {name:<13} R² {value['r2']:.4f}   (in-pool; 0 = the latent gives none of it away, 1 = all, below 0 worse than its mean)")
    if fdm := result.get("fdm_diagnostics"):
        same = "n/a" if fdm["fdm_error_same_episode_z"] is None else f"{fdm['fdm_error_same_episode_z']:.4g}"
        lines.append(
            f"latent FDM error       {fdm['fdm_error']:.4g} with its z; {same} with z of the same episode, {fdm['fdm_error_random_z']:.4g} "
            f"of a random window, {fdm['fdm_error_mean_z']:.4g} with the mean z; the target's one-step change {fdm['target_one_step_change']:.4g}"
        )
        if fdm.get("target_augmentation_spread") is not None:
            lines.append(
                f"target's augmentation  {fdm['target_augmentation_spread']:.4g}   (its spread over augmentations: a floor no z can lower in training)"
            )
    return "\n".join(lines)
