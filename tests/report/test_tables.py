"""The report's arithmetic on run folders whose probe and evaluation files are written by hand: means and
bootstrap intervals over seeds, ratios against LAPO, missing runs shown as dashes."""

from __future__ import annotations

import json

import pytest

from masklam.data.collect import CollectSettings
from masklam.pipeline.recipe import Recipe, recipe_json
from masklam.pipeline.run import grid
from masklam.report.tables import write_report


def test_means_over_seeds_and_ratios_against_lapo(tmp_path):
    recipe = Recipe(name="r", collect=CollectSettings(env="metaworld:push-v3", distractors="low"), methods=["lapo", "masklam"], seeds=[0, 1])
    (tmp_path / "recipe.json").write_text(json.dumps(recipe_json(recipe)))
    numbers = {("lapo", 0): (0.8, 10.0), ("lapo", 1): (0.6, 30.0), ("masklam", 0): (0.2, 50.0)}  # masklam seed 1 unfinished
    for run in grid(recipe):
        if (run.method, run.seed) not in numbers:
            continue
        nmse, ret = numbers[run.method, run.seed]
        folder = run.folder(tmp_path)
        folder.mkdir(parents=True)
        (folder / "probe.json").write_text(
            json.dumps({"action_nmse": nmse, "in_pool_nmse": nmse / 2, "distractor_r2": 0.25, "episode_share": {"latent": 0.5, "action": 0.01}})
        )
        (folder / "evaluate.json").write_text(
            json.dumps({"return_mean": ret, "normalised_by_collector": ret / 100, "normalised_by_bc_actions": None, "success_rate": 0.5})
        )
    summary = write_report([tmp_path], tmp_path / "report", echo=lambda _: None)
    rows = summary["r/low"]["rows"]
    assert rows["lapo"]["nmse"] == pytest.approx((0.7, 0.6, 0.8))  # two seeds: the interval spans both
    assert rows["lapo"]["in_pool"] == pytest.approx((0.35, 0.3, 0.4))
    assert rows["lapo"]["n"] == 2 and rows["masklam"]["n"] == 1
    assert rows["masklam"]["distractor"] == (0.25, 0.25, 0.25)  # one seed: no interval
    table = (tmp_path / "report" / "results.md").read_text()
    line = next(row for row in table.splitlines() if row.startswith("| masklam |"))
    assert "3.50×" in line  # LAPO's NMSE 0.7 / 0.2
    assert "2.50×" in line  # return 0.5 / LAPO's 0.2
    assert "| 0.200 | 0.100 | 0.250 | 0.500 |" in line  # one seed: means alone
    assert "| 50 % |" in line  # Meta-World: success rate column
    lapo = next(row for row in table.splitlines() if row.startswith("| lapo |"))
    assert "| 0.700 [0.600, 0.800] | 0.350 [0.300, 0.400] |" in lapo
    assert "| — |" in line  # no BC reference was trained


def test_model_mask_rows_show_their_source_iou_on_train_and_test(tmp_path):
    from masklam.pipeline.layout import mask_comparison

    recipe = Recipe(
        name="r",
        collect=CollectSettings(env="dmc:cheetah-run", distractors="low"),
        methods=["lapo", "masklam"],
        masks=["oracle", "oracle_erode1"],
        transforms=[{"from": "oracle", "erode": 1}],
        seeds=[0],
    )
    (tmp_path / "recipe.json").write_text(json.dumps(recipe_json(recipe)))
    for run in grid(recipe):
        run.folder(tmp_path).mkdir(parents=True)
        (run.folder(tmp_path) / "probe.json").write_text(json.dumps({"action_nmse": 0.5}))
    path = mask_comparison(tmp_path, "low", "oracle_erode1")
    path.parent.mkdir(parents=True)
    # as `masks compare` writes it: keys sorted, so "test" comes before "train"
    path.write_text(json.dumps({"overall": {"iou": 0.8}, "splits": {"test": {"iou": 0.6}, "train": {"iou": 0.9}}}, sort_keys=True))
    write_report([tmp_path], tmp_path / "report", echo=lambda _: None)
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| mask IoU, train / test ↑ |" in table
    assert "| masklam [oracle_erode1] | 1 | 0.900 / 0.600 |" in table and "| masklam | 1 | 1.000 / 1.000 |" in table and "| lapo | 1 | — |" in table
