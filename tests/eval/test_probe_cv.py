"""The cross-validated probe on synthetic latents: it measures the latent, not the probe.

Episodes are blocks of windows; a "background" is a nuisance direction of its own per episode, so a probe
that fits it on train episodes has nothing to go on in new ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold

from masklam.eval.probe import GroupedRidgeCV, action_probe, distractor_probe, distractor_states, episode_share, grouped_ridge_cv, render_probe

STEPS = 20  # windows per episode


def episodes(count: int, seed: int, nuisance: int = 0, signal: float = 1.0):
    """Actions (count*STEPS, 6), episode ids, and a latent: signal * action + unit noise, then ``nuisance``
    dimensions where each episode's background moves along its own random direction (plus a little jitter)."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (count, STEPS, 6))
    direction, motion = rng.normal(size=(count, 1, nuisance)), rng.normal(size=(count, STEPS, 1))
    background = direction * motion + 0.05 * rng.normal(size=(count, STEPS, nuisance))
    latent = np.concatenate([signal * actions + rng.normal(size=actions.shape), background], -1)
    ids = np.repeat(np.arange(count) + 1000 * seed, STEPS)
    return latent.reshape(count * STEPS, -1), actions.reshape(count * STEPS, -1), ids


def old_probe_nmse(train_z, train_a, test_z, test_a) -> float:
    """The previous probe: ridge 1e-3 per window on raw latents, scored on the test windows."""
    probe = Ridge(alpha=1e-3 * len(train_z)).fit(train_z, train_a)
    return float(np.mean((probe.predict(test_z) - test_a) ** 2) / np.mean(train_a.var(0)))


def test_episode_specific_nuisance_does_not_push_the_probe_above_one():
    train_z, train_a, ids = episodes(20, seed=1, nuisance=200)
    test_z, test_a, _ = episodes(5, seed=2, nuisance=200)
    result = action_probe(train_z, train_a, ids, test_z, test_a)
    # The action explains a quarter of the latent's first dimensions: the best linear NMSE is 0.75.
    assert result["test_nmse"] <= 0.9 and result["in_pool_nmse"] <= 0.9
    assert result["ridge"] > 1e-2 and not result["ridge_at_grid_edge"]
    assert old_probe_nmse(train_z, train_a, test_z, test_a) > 5  # the near-unregularised probe extrapolates


def test_a_latent_that_is_the_action_scores_near_zero():
    _, train_a, ids = episodes(10, seed=3)
    _, test_a, _ = episodes(3, seed=4)
    result = action_probe(train_a, train_a, ids, test_a, test_a)
    assert result["test_nmse"] < 1e-3 and result["in_pool_nmse"] < 1e-3


def test_a_random_latent_scores_near_one():
    train_z, train_a, ids = episodes(10, seed=5, nuisance=30)
    test_z, test_a, _ = episodes(3, seed=6, nuisance=30)
    rng = np.random.default_rng(7)
    result = action_probe(rng.normal(size=train_z.shape), train_a, ids, rng.normal(size=test_z.shape), test_a)
    assert 0.95 < result["test_nmse"] < 1.1 and 0.95 < result["in_pool_nmse"] < 1.1


def test_the_test_split_plays_no_part_in_choosing_the_ridge():
    train_z, train_a, ids = episodes(10, seed=8, nuisance=50)
    first = action_probe(train_z, train_a, ids, *episodes(3, seed=9, nuisance=50)[:2])
    second = action_probe(train_z, train_a, ids, *episodes(3, seed=10, nuisance=50)[:2])
    assert first["ridge"] == second["ridge"] and first["in_pool_nmse"] == second["in_pool_nmse"]
    assert first["test_nmse"] != second["test_nmse"]


def test_nmse_is_over_the_given_action_variance():
    train_z, train_a, ids = episodes(10, seed=11, signal=2.0)
    test_z, test_a, _ = episodes(3, seed=12, signal=2.0)
    own = action_probe(train_z, train_a, ids, test_z, test_a)
    doubled = action_probe(train_z, train_a, ids, test_z, test_a, variance=2 * float(np.mean(train_a.var(0))))
    assert doubled["test_nmse"] == pytest.approx(own["test_nmse"] / 2)
    assert doubled["in_pool_nmse"] == pytest.approx(own["in_pool_nmse"] / 2)


def test_the_cross_validation_curve_matches_sklearn_ridge_refits():
    z, a, ids = episodes(6, seed=13, nuisance=10)
    grid = (1e-3, 1e-1, 10.0)
    cv = grouped_ridge_cv(z, a, ids, grid, folds=3)
    squared = np.zeros(len(grid))
    for fit, held in GroupKFold(n_splits=3).split(z, groups=ids):
        for i, ridge in enumerate(grid):
            probe = Ridge(alpha=ridge * len(fit)).fit(z[fit], a[fit])
            squared[i] += np.sum((probe.predict(z[held]) - a[held]) ** 2)
    np.testing.assert_allclose(list(cv.curve.values()), squared / a.size, rtol=1e-6)
    assert cv.ridge == grid[int(np.argmin(squared))] and cv.folds == 3


def test_latents_wider_than_a_fold_use_the_dual_form_and_match_sklearn():
    rng = np.random.default_rng(17)
    z = rng.normal(size=(60, 200))  # 200-d latents, 40 windows per fitting fold: the dual form
    a = z[:, :2] @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(60, 3))
    ids = np.repeat(np.arange(6), 10)
    grid = (1e-3, 1e-1, 10.0)
    cv = GroupedRidgeCV(z, ids, folds=3)
    assert all(fold[-1] for fold in cv.folds) and all(fold[3].shape == (40, 40) for fold in cv.folds)
    squared = np.zeros(len(grid))
    for fit, held in GroupKFold(n_splits=3).split(z, groups=ids):
        for i, ridge in enumerate(grid):
            probe = Ridge(alpha=ridge * len(fit)).fit(z[fit], a[fit])
            squared[i] += np.sum((probe.predict(z[held]) - a[held]) ** 2)
    np.testing.assert_allclose(list(cv(a, grid).curve.values()), squared / a.size, rtol=1e-6)


def test_the_in_pool_score_is_no_better_than_the_best_point_of_the_curve():
    z, a, ids = episodes(12, seed=14, nuisance=40)
    cv = grouped_ridge_cv(z, a, ids)
    assert cv.in_pool_mse >= min(cv.curve.values()) - 1e-12  # no fold picks its own ridge


def test_one_episode_is_too_few_to_cross_validate():
    z, _, _ = episodes(2, seed=15)
    with pytest.raises(ValueError, match="at least 2"):
        GroupedRidgeCV(z, np.zeros(len(z)))


def test_distractor_decodability_says_whether_the_latent_encodes_the_distractor():
    _, actions, ids = episodes(12, seed=16)
    rng = np.random.default_rng(17)
    # A distractor state that means the same in every episode: a random start, then a drift of one unit per step.
    frame = (rng.integers(0, 50, 12)[:, None] + np.arange(STEPS)).reshape(-1).astype(np.float32)
    encodes = np.concatenate([actions, frame[:, None] / 10 + 0.1 * rng.normal(size=(len(frame), 1)), rng.normal(size=(len(frame), 20))], 1)
    ignores = np.concatenate([actions, rng.normal(size=(len(frame), 21))], 1)
    assert distractor_probe(encodes, frame, ids)["r2"] > 0.9
    assert distractor_probe(ignores, frame, ids)["r2"] < 0.05
    constant = distractor_probe(encodes, np.zeros(len(frame)), ids)
    assert constant["r2"] is None and constant["in_pool_nmse"] is None  # not probed, so not averaged in as a 0


def test_distractor_dimensions_weigh_alike_whatever_their_units():
    _, actions, ids = episodes(12, seed=18)
    rng = np.random.default_rng(19)
    angle, zoom = rng.normal(0, 0.01, len(ids)), rng.normal(1, 0.1, len(ids))  # radians, a factor
    latent = np.concatenate([actions, angle[:, None], rng.normal(size=(len(ids), 10))], 1)  # encodes the angle only
    camera = np.stack([angle, zoom], 1)
    assert distractor_probe(latent, camera, ids)["r2"] == pytest.approx(0.5, abs=0.05)  # one of two dimensions


def test_a_latent_that_holds_the_cameras_motion_shows_in_the_motion_column_not_the_pose():
    _, actions, ids = episodes(12, seed=20)
    rng = np.random.default_rng(21)
    # A camera that walks: pose at t and t+1 of each window, the step between them drawn afresh each window.
    pose = np.cumsum(rng.normal(0, 0.01, (len(ids), 4)), axis=0) + 0.3 * rng.normal(size=(12, 1, 4)).repeat(STEPS, 1).reshape(-1, 4)
    step = rng.normal(0, 0.01, pose.shape)
    values = {"distractor_camera": pose, "next_distractor_camera": pose + step, "distractor_objects": rng.normal(size=(len(ids), 2, 3))}
    states = distractor_states(values, ("distractor_camera", "distractor_objects"))
    assert sorted(states) == ["camera", "camera_motion", "objects"]
    np.testing.assert_allclose(states["camera_motion"], step)
    latent = np.concatenate([actions, step * 100 + 0.05 * rng.normal(size=step.shape), rng.normal(size=(len(ids), 10))], 1)
    assert distractor_probe(latent, states["camera_motion"], ids)["r2"] > 0.9
    assert distractor_probe(latent, states["camera"], ids)["r2"] < 0.1  # the pose alone would have said "ignores the camera"


def test_the_printout_shows_the_ridge_and_both_scores():
    train_z, train_a, ids = episodes(6, seed=20, nuisance=5)
    test_z, test_a, _ = episodes(2, seed=21, nuisance=5)
    action = action_probe(train_z, train_a, ids, test_z, test_a)
    result = {
        "method": "lapo",
        "data": "d",
        "windows": {"train": len(ids), "test": len(test_a)},
        "train_episodes": 6,
        "in_pool_episodes": [5],
        "action": action,
        "distractor": {"bg_frame": {"r2": 0.25}},
        "episode_share": {"latent": 0.5, "action": 0.01},
    }
    text = render_probe(result)
    assert f"ridge                  {action['ridge']:.3g}" in text and f"{action['folds']}-fold" in text
    assert f"test      {action['test_nmse']:.4f}" in text and f"in-pool   {action['in_pool_nmse']:.4f}" in text
    assert "distractor bg_frame      R² 0.2500" in text


def test_the_episode_share_says_how_much_of_the_latent_is_per_episode():
    _, actions, ids = episodes(20, seed=24)
    rng = np.random.default_rng(25)
    assert episode_share(actions, ids) < 0.1 and episode_share(rng.normal(size=(len(ids), 4)), ids) == pytest.approx(1 / STEPS, abs=0.03)
    offsets = np.repeat(rng.normal(size=(20, 3)), STEPS, axis=0)  # half the variance of each dimension per episode
    assert episode_share(offsets + rng.normal(size=offsets.shape), ids) == pytest.approx(0.5, abs=0.15)
    assert episode_share(np.ones((len(ids), 3)), ids) is None


def test_near_dead_dimensions_do_not_move_the_weighted_episode_share():
    """Three action-like dimensions plus five per-episode ones at scale 1e-4: the variance-weighted share is the
    action-like dimensions' own; the unweighted mean (probe versions 1-2) counted the dead ones fully."""
    _, actions, ids = episodes(20, seed=26)
    rng = np.random.default_rng(27)
    live = actions[:, :3]
    dead = 1e-4 * np.repeat(rng.normal(size=(20, 5)), STEPS, axis=0)  # per-episode, almost no variance
    latent = np.concatenate([live, dead], axis=1)
    assert episode_share(latent, ids) == pytest.approx(episode_share(live, ids), abs=1e-6)
    assert episode_share(latent, ids, weighted=False) > 0.6 > 0.1 > episode_share(latent, ids)
