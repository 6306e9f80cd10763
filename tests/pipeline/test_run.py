"""`masklam run` on a tiny recipe: every step runs once, in one folder; a second run skips them all; a changed
setting reruns only the steps it touches; the report has a row per run and its plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from masklam.errors import UsageError
from masklam.pipeline.recipe import load_recipe
from masklam.pipeline.run import grid, run_recipe

TINY = """
name = "tiny"
methods = ["lapo", "masklam"]
seeds = [0]
labels = [40, 0]
masks = ["oracle", "oracle_dilate1"]
transforms = [{from = "oracle", dilate = 1}]

[collect]
env = "dmc:cheetah-run"
distractors = "low"
policy = "expert"
size = 32
steps = 20
episodes = 3
test_episodes = 1
labelled_episodes = 3

[train]
preset = "tiny"
lam = ["optim.steps=4", "data.batch_size=8"]
stages = ["optim.steps=4", "batch_size=8"]

[evaluate]
probe_windows = 40
episodes = 1
steps = 10
"""


@pytest.fixture(scope="module")
def finished(masklam_cli, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pipeline")
    recipe, root = folder / "tiny.toml", folder / "run"
    recipe.write_text(TINY)
    done = masklam_cli("run", str(recipe), "--out", str(root), "--no-progress")
    assert done.returncode == 0, done.stderr
    return recipe, root


def test_the_grid_crosses_methods_masks_and_seeds(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    runs = grid(load_recipe(tmp_path / "tiny.toml", ["seeds=[0, 1]"]))
    labels = sorted({run.label for run in runs})
    assert labels == ["lapo", "masklam", "masklam [oracle_dilate1]"]  # LAPO reads no masks: one run per seed
    assert len(runs) == 6


@pytest.mark.slow
def test_a_run_writes_every_output_under_one_folder(finished):
    _, root = finished
    runs = root / "runs" / "low"
    for run in ("lapo", "masklam", "masklam-oracle_dilate1"):
        folder = runs / run / "seed0"
        assert (folder / "lam.pt").exists() and (folder / "probe.json").exists()
        for budget in (40, 0):  # each label budget: its own decoder and evaluation beside the shared LAM
            assert json.loads((folder / f"labels-{budget}" / "evaluate.json").read_text())["episodes"] == 1
            scores = json.loads((folder / f"labels-{budget}" / "action-scores.json").read_text())  # on recorded frames
            assert scores["test"]["windows"] == scores["in_pool"]["windows"] == 20  # 1 test, 1 in-pool episode of 20 steps
    decoder = json.loads((runs / "lapo" / "seed0" / "labels-40" / "decoder-config.json").read_text())
    assert decoder["labelled"] == 40
    info = json.loads((root / "data" / "low" / "info.json").read_text())
    assert set(info["mask_sources"]) == {"oracle", "oracle_dilate1"}
    masked = json.loads((runs / "masklam-oracle_dilate1" / "seed0" / "lam-config.json").read_text())
    assert masked["data"]["mask_source"] == "oracle_dilate1"


@pytest.mark.slow
def test_the_report_has_a_row_per_run_and_its_plots(finished):
    _, root = finished
    results = json.loads((root / "report" / "results.json").read_text())
    rows = results["tiny/low"]["rows"]
    assert set(rows) == {"lapo", "masklam", "masklam [oracle_dilate1]"}
    for row in rows.values():
        assert row["n"] == 1 and row["nmse"][0] > 0 and row["by_expert"] is not None
    scores = results["tiny/low"]["action_scores"]  # the label budget the table shows: every label (0)
    assert set(scores) == set(rows) and all(row["test:decoded_policy"][0] > 0 for row in scores.values())
    table = (root / "report" / "results.md").read_text()
    assert "1.00×" in table  # LAPO against itself
    # Each row's mask source scored against the oracle by the recipe's compare step: 1 for the oracle itself,
    # below 1 for dilated masks, none for LAPO (it reads no masks).
    comparison = json.loads((root / "data" / "low" / "compare" / "compare-oracle_dilate1-vs-oracle.json").read_text())
    train, test = (comparison["splits"][split]["iou"] for split in ("train", "test"))
    assert all(0.2 < iou < 1 for iou in (train, test, comparison["overall"]["iou"]))
    assert comparison["overall"]["recall"] == 1.0  # a dilated mask holds all of the oracle's
    assert f"| masklam [oracle_dilate1] | 1 | {train:.3f} / {test:.3f} |" in table
    assert "| masklam | 1 | 1.000 / 1.000 |" in table and "| lapo | 1 | — |" in table
    assert "| method | seeds | decoder on the LAM's latent, test ↓ | latent BC, test ↓ | decoded policy, test ↓ |" in table
    for plot in ("tiny-low-bars.png", "tiny-low-labels.png", "tiny-low-masks.png"):
        assert (root / "report" / plot).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_second_run_skips_finished_steps_and_a_change_reruns_only_what_it_touches(finished):
    recipe, root = finished
    ledger = (root / "steps.json").read_text()
    assert run_recipe(load_recipe(recipe), root, show_progress=False, echo=lambda _: None) == []
    assert (root / "steps.json").read_text() == ledger
    todo = run_recipe(load_recipe(recipe, ["evaluate.episodes=2"]), root, dry_run=True, echo=lambda _: None)
    assert todo and all(step.id.startswith("evaluate ") for step in todo) and len(todo) == 6
    # a step whose output is gone runs again
    (root / "runs" / "low" / "lapo" / "seed0" / "probe.json").unlink()
    todo = run_recipe(load_recipe(recipe), root, dry_run=True, echo=lambda _: None)
    assert [step.id for step in todo] == ["probe low lapo seed0"]
    # the same folder spelled relative to another working directory is the same run
    here = os.getcwd()
    try:
        os.chdir(root.parent)
        assert len(run_recipe(load_recipe(recipe), Path(root.name), dry_run=True, echo=lambda _: None)) == 1
    finally:
        os.chdir(here)


@pytest.mark.slow
def test_bc_on_true_actions_is_trained_once_per_seed_and_shared(finished, tmp_path):
    import shutil

    import torch

    from masklam.configs import build
    from masklam.train.loop import read_run_config
    from masklam.train.stages import StageConfig, train_action_bc

    _, root = finished
    ledger = json.loads((root / "steps.json").read_text())
    assert sorted(step for step in ledger if "bc-actions" in step) == [
        "share bc-actions low masklam [oracle_dilate1] seed0",
        "share bc-actions low masklam seed0",
        "train bc-actions low lapo seed0",
    ]
    runs = root / "runs" / "low"
    trained = torch.load(runs / "lapo" / "seed0" / "bc-actions.pt", weights_only=False)["model"]
    returns = set()
    for run in ("lapo", "masklam", "masklam-oracle_dilate1"):
        shared = runs / run / "seed0" / "bc-actions.pt"
        assert shared.read_bytes() == (runs / "lapo" / "seed0" / "bc-actions.pt").read_bytes()
        for budget in (40, 0):
            returns.add(json.loads((runs / run / "seed0" / f"labels-{budget}" / "evaluate.json").read_text())["bc_actions_return"])
    assert len(returns) == 1  # one network, the same evaluation episodes
    # ... rolled out once, in the owner's folder: every run of the seed is normalised by those returns
    kept = [path.relative_to(runs) for path in runs.rglob("bc-actions-evaluate.json")]
    assert kept == [Path("lapo/seed0/bc-actions-evaluate.json")]
    assert np.mean(json.loads((runs / kept[0]).read_text())["returns"]) == pytest.approx(returns.pop())
    # Why sharing is sound: trained in MaskLAM's own run folder (whose windows carry masks), the network is the
    # one trained in LAPO's.
    own = tmp_path / "masklam"
    own.mkdir()
    for name in ("lam.pt", "lam-config.json"):
        shutil.copy2(runs / "masklam" / "seed0" / name, own / name)
    stage = build(StageConfig, read_run_config(runs / "lapo" / "seed0", "bc-actions"), "bc-actions-config")
    train_action_bc(own, stage, show_progress=False, lam_data=str(root / "data" / "low"))
    retrained = torch.load(own / "bc-actions.pt", weights_only=False)["model"]
    assert retrained.keys() == trained.keys()
    assert all(torch.equal(retrained[key], trained[key]) for key in trained)


@pytest.mark.slow
def test_until_probe_with_probe_points_keeps_models_draws_curves_and_a_full_run_resumes_the_rest(finished, tmp_path):
    """`--until probe` on the finished run's data, with a probe point: each LAM trains (keeping its model at
    step 2) and is probed at step 2 and at its end; no later stage runs; the report draws the curve."""
    import shutil

    import torch

    recipe, root = finished
    copy = tmp_path / "run"
    shutil.copytree(root / "data", copy / "data")
    ledger = json.loads((root / "steps.json").read_text())
    data_steps = {step: entry for step, entry in ledger.items() if step.split()[0] in ("collect", "masks", "compare")}
    (copy / "steps.json").write_text(json.dumps(data_steps))
    with_points = load_recipe(recipe, ["train.probe_at=[2]"])
    ran = run_recipe(with_points, copy, show_progress=False, echo=lambda _: None, until="probe")
    runs = ("lapo", "masklam", "masklam [oracle_dilate1]")
    assert sorted(step.id for step in ran) == sorted(
        [f"train lam low {run} seed0" for run in runs] + [f"probe low {run} seed0" for run in runs] + [f"probe low {run} seed0 step2" for run in runs]
    )
    lapo = copy / "runs" / "low" / "lapo" / "seed0"
    assert not list(copy.rglob("bc.pt")) and not list(copy.rglob("evaluate.json"))
    # The kept model changes nothing about the run: the same final LAM as the finished run's, trained without it.
    final = torch.load(root / "runs" / "low" / "lapo" / "seed0" / "lam.pt", weights_only=False)["model"]
    assert all(torch.equal(torch.load(lapo / "lam.pt", weights_only=False)["model"][key], final[key]) for key in final)
    point, last = (json.loads((lapo / name).read_text()) for name in ("probe-step2.json", "probe.json"))
    assert (point["step"], last["step"]) == (2, 4) and (lapo / "lam-step2.pt").exists()
    report = (copy / "report" / "results.md").read_text()
    assert "| lapo | 1 |" in report and "along the LAM's training" in report and "| step 2 | step 4 |" in report
    assert (copy / "report" / "tiny-low-curves.png").read_bytes()[:4] == b"\x89PNG"
    curves = json.loads((copy / "report" / "results.json").read_text())["tiny/low"]["curves"]
    assert sorted(curves["lapo"]) == ["2", "4"]  # one seed: each point's mean is its one value
    assert curves["lapo"]["2"][0] == pytest.approx(point["action_nmse"]) and curves["lapo"]["4"][0] == pytest.approx(last["action_nmse"])
    rest = run_recipe(with_points, copy, dry_run=True, echo=lambda _: None)
    assert rest and not any(step.id.startswith(("train lam", "probe")) for step in rest)
    # Other probe points retrain each LAM from step 0 (its earlier models were not kept).
    other = run_recipe(load_recipe(recipe, ["train.probe_at=[1]"]), copy, dry_run=True, echo=lambda _: None, until="probe")
    assert sum(step.id.startswith("train lam") for step in other) == 3
    with pytest.raises(UsageError, match="outside this run's steps"):
        run_recipe(load_recipe(recipe, ["train.probe_at=[5]"]), copy, dry_run=True, echo=lambda _: None)
    with pytest.raises(UsageError, match="--until takes one of"):
        run_recipe(load_recipe(recipe), copy, dry_run=True, echo=lambda _: None, until="returns")


@pytest.mark.slow
def test_a_retrained_lam_takes_what_it_made_stale_with_it(finished, tmp_path):
    """A LAM trained again with other settings deletes its cell's probe, latent policy, decoders and returns (all
    made from the LAM it replaces), so a run stopped after the LAM reports none of them; BC on true actions stays."""
    import shutil

    recipe, root = finished
    copy = shutil.copytree(root, tmp_path / "run", symlinks=True)
    cell = copy / "runs" / "low" / "lapo" / "seed0"
    stale = [cell / name for name in ("bc.pt", "bc-config.json")] + [
        cell / f"labels-{b}" / f for b in (40, 0) for f in ("decoder.pt", "evaluate.json", "action-scores.json")
    ]
    assert all(path.exists() for path in stale)  # (another test of the module deletes probe.json of this cell)
    stale.append(cell / "probe.json")
    changed = load_recipe(recipe, ['train.lam=["optim.steps=4", "data.batch_size=8", "optim.lr=0.002"]'])
    run_recipe(changed, copy, show_progress=False, echo=lambda _: None, until="lam")
    assert not any(path.exists() for path in stale) and (cell / "lam.pt").exists() and (cell / "bc-actions.pt").exists()
    table = (copy / "report" / "results.md").read_text()
    assert "| lapo | 0 | — | — | — | — | — | — |" in table  # no probe, no return of the old LAM


@pytest.mark.slow
def test_report_command_and_dry_run(masklam_cli, finished, tmp_path):
    recipe, root = finished
    done = masklam_cli("report", str(root), "--out", str(tmp_path / "report"))
    assert done.returncode == 0 and "| lapo | 1 |" in done.stdout, done.stderr
    done = masklam_cli("run", str(recipe), "--out", str(tmp_path / "fresh"), "--dry-run")
    assert done.returncode == 0 and "[todo] collect low" in done.stdout and not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "no-such-recipe"], "no recipe file"),
        (["run", "quickstart", "--set", 'methods=["vae"]', "--dry-run"], "recipe methods"),
        (["run", "quickstart", "--set", 'masks=["sam_vit_h"]', "--dry-run"], "made by no [[segment]]"),
        (["run", "quickstart", "--set", 'collect.env="dmc:cheetah-fly"', "--dry-run"], "unknown env"),
        (["run", "quickstart", "--set", 'train.preset="huge"', "--dry-run"], "no trainer preset"),
        (["report", "{tmp}", "--out", "{tmp}/report"], "not a `masklam run` folder"),
    ],
)
def test_bad_recipes_are_one_line_errors(masklam_cli, tmp_path, args, message):
    done = masklam_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "report").exists()


def test_shipped_recipes_are_valid():
    from masklam.packaged import RECIPES

    paths = sorted(RECIPES.glob("*.toml"))
    assert len(paths) >= 10
    for path in paths:
        recipe = load_recipe(path)
        assert grid(recipe), path


def test_unknown_recipe_setting_is_refused(tmp_path):
    (tmp_path / "r.toml").write_text("steps = 3\n" + TINY)
    with pytest.raises(UsageError, match="unknown setting recipe.steps"):
        load_recipe(tmp_path / "r.toml")
