"""The report's intervals and paired comparisons (issue 28): seeds and test episodes resampled together, the
ratio's own interval, an exact sign-flip p over seeds, and one column per distractor state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from masklam.data.collect import CollectSettings
from masklam.pipeline.recipe import Recipe, recipe_json
from masklam.pipeline.run import grid
from masklam.report.tables import grid_ci, mean_ci, paired_ratio, sign_flip_p, write_report


def test_the_sign_flip_p_is_exact_and_bounded_by_the_seed_count():
    better = np.array([[1.0, 1.2], [1.1, 0.9], [1.3, 1.0]])
    worse = better + 0.5
    assert sign_flip_p(worse, better) == pytest.approx(2 / 8)  # 3 seeds: only the two all-same-sign flips are as extreme
    five = np.vstack([better, better[:2]]), np.vstack([worse, worse[:2]])
    assert sign_flip_p(*five) == pytest.approx(2 / 32)
    mixed = np.array([[1.0], [0.0], [1.0], [0.0]])
    assert sign_flip_p(mixed, mixed[::-1]) == 1.0  # differences +1, 0, 0... cancel: no evidence
    assert sign_flip_p(better[:1], worse[:1]) is None


def test_resampling_test_episodes_covers_the_mean_more_often_than_three_seeds_alone():
    """3 seeds x 4 test episodes, both varying: the seeds-only percentile interval of 3 values is their min and
    max (it misses the true mean about a quarter of the time); the two-way interval misses it less often."""
    rng = np.random.default_rng(3)
    truth, seed_sd, episode_sd = 1.0, 0.2, 0.4
    covered = {"seeds": 0, "seeds x episodes": 0}
    trials = 300
    for _ in range(trials):
        episode_effect = rng.normal(0, episode_sd, 4)  # the same test episodes for every seed
        grid = truth + rng.normal(0, seed_sd, (3, 1)) + episode_effect + rng.normal(0, 0.05, (3, 4))
        _, low, high = mean_ci(list(grid.mean(axis=1)))
        covered["seeds"] += low <= truth <= high
        _, low, high = grid_ci(grid)
        covered["seeds x episodes"] += low <= truth <= high
    assert covered["seeds"] / trials < 0.8 and covered["seeds x episodes"] / trials > covered["seeds"] / trials + 0.05, covered


def test_the_ratio_interval_holds_the_ratio_and_narrows_with_agreement():
    rng = np.random.default_rng(4)
    lapo = 1.0 + 0.3 * rng.normal(size=(5, 4))
    tight = paired_ratio(lapo, lapo / 2 + 0.01 * rng.normal(size=lapo.shape))
    loose = paired_ratio(lapo, 0.5 + 0.3 * rng.normal(size=lapo.shape))
    assert tight[1] <= tight[0] <= tight[2] and tight[0] == pytest.approx(2.0, rel=0.05)
    assert tight[2] - tight[1] < loose[2] - loose[1]


def write_runs(root, numbers: dict, episodes: int = 3, distractor: dict | None = None, variants: dict | None = None) -> None:
    recipe = Recipe(
        name="r", collect=CollectSettings(env="dmc:cheetah-run", distractors="hard"), methods=["lapo", "masklam"], seeds=[0, 1, 2], variants=variants
    )
    (root / "recipe.json").write_text(json.dumps(recipe_json(recipe)))
    for run in grid(recipe):
        nmse, ret = numbers[run.method]
        folder = run.folder(root)
        folder.mkdir(parents=True)
        per_episode = {str(e): nmse * (1 + 0.2 * e) + 0.01 * run.seed for e in range(episodes)}
        probe = {
            "probe_version": 3,
            "action_nmse": float(np.mean(list(per_episode.values()))),
            "in_pool_nmse": nmse / 2,
            "action": {"test_nmse_per_episode": per_episode},
            "distractor": distractor or {},
            "episode_share": {"latent": 0.1 if run.variant == "clean" else 0.3, "action": 0.004},
        }
        (folder / "probe.json").write_text(json.dumps(probe))
        returns = [ret * (1 + 0.1 * i) + run.seed for i in range(5)]
        evaluation = {"return_mean": float(np.mean(returns)), "returns": returns, "collector_return": 100.0}
        evaluation |= {"normalised_by_collector": float(np.mean(returns)) / 100, "normalised_by_bc_actions": None}
        (folder / "evaluate.json").write_text(json.dumps(evaluation))


def test_the_table_names_what_its_intervals_resampled_and_compares_paired(tmp_path):
    states = {"camera": {"r2": -0.2}, "color": {"r2": None}, "objects": {"r2": 0.4}}
    write_runs(tmp_path, {"lapo": (0.8, 20.0), "masklam": (0.4, 40.0)}, distractor=states)
    summary = write_report([tmp_path], tmp_path / "report", echo=lambda _: None)
    table = (tmp_path / "report" / "results.md").read_text()
    assert "probe NMSE, test (3 seeds × 3 test episodes)" in table and "returns (3 seeds × 5 rollouts)" in table
    assert "The action's own episode share: 0.004." in table
    header = next(line for line in table.splitlines() if line.startswith("| method |"))
    assert "R² camera ↓" in header and "R² objects ↓" in header and "color" not in header  # a constant state is left out
    masklam = next(line for line in table.splitlines() if line.startswith("| masklam |"))
    assert "| -0.200 |" in masklam  # unclipped: worse than the state's mean
    assert ", p 0.25 |" in masklam  # 3 seeds, all on one side: the smallest two-sided p there is
    ratio = summary["r/hard"]["rows"]["masklam"]["nmse"]
    assert ratio[1] < ratio[0] < ratio[2]  # an interval from the episodes, though the 3 seeds nearly agree
    assert "2.0" in masklam.split("|")[-3]  # LAPO NMSE / NMSE, with its interval


def test_a_distracted_tables_episode_share_has_the_clean_variants_beside_it(tmp_path):
    write_runs(tmp_path, {"lapo": (0.8, 20.0), "masklam": (0.4, 40.0)}, variants={"clean": {"distractors": "none"}, "hard": {}})
    write_report([tmp_path], tmp_path / "report", echo=lambda _: None)
    sections = (tmp_path / "report" / "results.md").read_text().split("## ")
    hard = next(s for s in sections if "`r/hard`" in s.splitlines()[0])
    clean = next(s for s in sections if "`r/clean`" in s.splitlines()[0])
    header = next(line for line in hard.splitlines() if line.startswith("| method |")).split(" | ")
    column = header.index("episode share, clean data")
    lapo = next(line for line in hard.splitlines() if line.startswith("| lapo |")).split(" | ")
    assert lapo[column] == "0.100" and lapo[column - 1] == "0.300"  # the clean run's share beside the distracted one
    assert "episode share, clean data" not in clean  # no baseline for the baseline


def test_the_bar_charts_title_says_what_its_whiskers_resampled():
    from masklam.report.plots import whiskers

    one_seed = {"resampled": {"nmse": "1 seed × 2 test episodes", "in_pool": "1 seed", "by_expert": "1 seed × 5 rollouts"}}
    rows = {"lapo": one_seed | {"nmse": (1, 0.9, 1.1), "in_pool": (1, 1, 1), "by_expert": (0.5, 0.4, 0.6)}}
    said = whiskers(rows)
    assert "test NMSE 1 seed × 2 test episodes" in said and "in-pool none (1 seed)" in said and "over seeds" not in said
