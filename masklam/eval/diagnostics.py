"""What a latent-FDM method's latent does for its forward model (LAOM, LAOM-Labels; docs/method.md, "LAOM's
diagnostics"). The FDM predicts the target encoder's embedding of the next stack from the embedding at t and
the latent z. Its error is measured with z as inferred, and with z replaced by the latent of another window of
the same episode, of a random window, and by the mean latent; beside them, the target's own one-step change
(the error of predicting "no change"). A z that carries the transition makes the true-z error much smaller
than the swapped ones and than the one-step change; a z that only restores an episode's appearance makes the
same-episode swap about as good as the true z.

For an augmenting model, the target's augmentation spread too: in training the target stack is augmented
independently of the FDM's inputs, so no z can predict that part of it; the spread of the target embedding
over AUGMENT_DRAWS augmentations of one window (variance per dimension, averaged) is the floor it puts under
the training loss, to read beside the one-step change that z is there to explain."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from masklam.devices import device_of
from masklam.models.augment import augment
from masklam.models.lam import LAOM, preprocess

AUGMENT_DRAWS = 4


def thinned(batches: Iterable[dict[str, torch.Tensor]], fraction: float, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Each window of ``batches`` kept with probability ``fraction`` (seeded): from a stream that reads the
    episodes one after another, a sample of all of them rather than the first ones' windows."""
    if fraction >= 1:
        yield from batches
        return
    rng = np.random.default_rng(seed)
    for batch in batches:
        keep = torch.from_numpy(rng.random(len(batch["episode"])) < fraction)
        if keep.any():
            yield {key: value[keep] for key, value in batch.items()}


@torch.no_grad()
def latent_fdm_diagnostics(model: LAOM, batches: Iterable[dict[str, torch.Tensor]], limit: int = 2048, seed: int = 0) -> dict[str, float | int]:
    """Mean squared errors per embedding dimension over up to ``limit`` windows of k = 1 (``future`` is the
    stack at t+1) that carry their ``episode``; the swaps are drawn from ``seed``."""
    device = device_of(model)
    scale = model.config.pixel_scale
    embeddings, latents, targets, changes, spreads, episodes = [], [], [], [], [], []
    augmenting = model.config.augment.enabled
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for batch in batches:
        obs, future = preprocess(batch["obs"].to(device), scale), preprocess(batch["future"].to(device), scale)
        embedding, latent = model.idm_latent(obs, future)
        target, before = model.target_encoder(future), model.target_encoder(obs)
        embeddings.append(embedding)
        latents.append(latent)
        targets.append(target)
        changes.append(((target - before) ** 2).mean(1))
        if augmenting:
            draws = torch.stack([model.target_encoder(augment(future, model.config.augment, generator)) for _ in range(AUGMENT_DRAWS)])
            spreads.append(draws.var(0).mean(1))
        episodes.append(batch["episode"].cpu())
        count += len(latent)
        if count >= limit:
            break
    embedding, latent, target = (torch.cat(parts)[:limit] for parts in (embeddings, latents, targets))
    episode = torch.cat(episodes)[:limit].numpy()

    def error(z: torch.Tensor, rows: np.ndarray | None = None) -> float:
        squared = (model.fdm(torch.cat([embedding, z], 1)) - target) ** 2
        return float((squared if rows is None else squared[torch.from_numpy(rows).to(device)]).mean())

    rng = np.random.default_rng(seed)
    same = np.arange(len(episode))
    for value in np.unique(episode):  # each window takes another window's z of its own episode
        rows = np.flatnonzero(episode == value)
        if len(rows) > 1:
            same[rows] = rows[(np.arange(len(rows)) + rng.integers(1, len(rows))) % len(rows)]
    swapped = same != np.arange(len(episode))
    return {
        "windows": len(latent),
        "episodes": len(np.unique(episode)),
        "fdm_error": error(latent),
        # over the windows whose episode has another in the sample (the true z's error on them beside it)
        "fdm_error_same_episode_z": error(latent[torch.from_numpy(same).to(device)], np.flatnonzero(swapped)) if swapped.any() else None,
        "fdm_error_same_episode_rows": error(latent, np.flatnonzero(swapped)) if swapped.any() else None,
        "fdm_error_random_z": error(latent[torch.from_numpy(rng.permutation(len(latent))).to(device)]),
        "fdm_error_mean_z": error(latent.mean(0, keepdim=True).expand_as(latent)),
        "target_one_step_change": float(torch.cat(changes)[:limit].mean()),
        "target_augmentation_spread": float(torch.cat(spreads)[:limit].mean()) if augmenting else None,
    }
