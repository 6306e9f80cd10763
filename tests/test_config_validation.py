"""Model, data and optimiser settings are checked by the typed configs, whichever way they arrive (trainer
TOML, --set on `train lam` / `train all`, a recipe's train.lam): a bad one is one line on stderr, exit 2, and
nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from masklam.cli import app
from masklam.configs import SettingError
from masklam.models.presets import lam_config
from masklam.pipeline.recipe import load_recipe
from masklam.pipeline.run import plan
from masklam.train.lam import load_trainer

# (trainer, --set, what the one line must name). The dataset path does not exist: every setting must be refused
# before anything is opened or written, so an error about the dataset would fail the test.
BAD_SETTINGS = [
    ("masklam-tiny", 'data.mask_source="none"', "masklam learns from agent masks"),  # the loader's message offered none
    ("laom-labels-tiny", "model.latent_dim=0", "model.latent_dim"),
    ("laom-tiny", "model.augment.seed=x", "model.augment.seed"),
    ("laom-tiny", "model.augment=false", "model.augment.enabled"),  # the message shows the spelling that works
    ("laom-tiny", 'model.augment="off"', "model.augment"),
    ("laom-tiny", "model.augment.shift=0.9", "model.augment.shift"),
    ("laom-tiny", "model.augment.rotation=-5", "model.augment.rotation"),
    ("laom-tiny", 'model.augment.compositions=["twirl"]', "twirl"),
    ("laom-tiny", "model.augment.compositions=[]", "model.augment.compositions"),
    ("laom-tiny", "model.tau=0", "model.tau"),
    ("laom-tiny", "model.tau=1.5", "model.tau"),
    ("laom-tiny", "model.normalize_embedding=maybe", "model.normalize_embedding"),
    ("laom-tiny", "model.hidden_layers=-1", "model.hidden_layers"),
    ("laom-labels-tiny", "model.action_weight=-1", "model.action_weight"),
    ("laom-labels-tiny", "data.labelled_batch_size=0", "data.labelled_batch_size"),
    ("masklam-tiny", "model.channels=[8,16]", "model.channels"),
    ("masklam-tiny", "model.channels=[8,0,16]", "model.channels"),
    ("masklam-tiny", "model.multiplier=0", "model.multiplier"),
    ("masklam-tiny", "model.mask_input=alpha", "mask_input"),
    ("masklam-tiny", "model.pixel_scale=0", "model.pixel_scale"),
    ("masklam-tiny", "model.image_size=64", "model.image_size"),
    ("masklam-tiny", "model.frame_stack=2", "data.stack"),
    ("masklam-tiny", "model.foo=1", "model.foo"),
    ("masklam-tiny", "model=3", "model"),
    ("lapo-tiny", "model.vq=true --set model.latent_dim=100", "vq_code_dim"),  # 100 latents are no whole 16-value codes
    ("masklam-tiny", "optim.lr=-1", "optim.lr"),
    ("masklam-tiny", "optim.lr=nan", "optim.lr"),
    ("masklam-tiny", "optim.steps=0", "optim.steps"),
    ("masklam-tiny", "optim.grad_clip=0", "optim.grad_clip"),
    ("masklam-tiny", "optim.weight_decay=-0.1", "optim.weight_decay"),
    ("masklam-tiny", "data.stack=0", "data.stack"),
    ("masklam-tiny", "data.future_max=0", "data.future_max"),
    ("masklam-tiny", "data.batch_size=0", "data.batch_size"),
    ("masklam-tiny", "data.workers=-1", "data.workers"),
    ("masklam-tiny", "log_every=0", "log_every"),
    ("masklam-tiny", "seed=-1", "seed"),
    ("masklam-tiny", 'device="gpu"', "device"),
]


def invoke(*args: str):
    return CliRunner().invoke(app, [*args, "--no-progress"])


def assert_refused(result, expected: str, *unwritten: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    for path in unwritten:
        assert not path.exists(), f"{path} was written"


def set_args(setting: str) -> list[str]:
    return [part for item in setting.split(" --set ") for part in ("--set", item)]


@pytest.mark.parametrize(("trainer", "setting", "expected"), BAD_SETTINGS, ids=[s for _, s, _ in BAD_SETTINGS])
def test_train_lam_refuses_a_bad_setting_in_one_line(tmp_path, trainer, setting, expected):
    out = tmp_path / "run"
    result = invoke("train", "lam", "--data", str(tmp_path / "data"), "--out", str(out), "--trainer", trainer, *set_args(setting))
    assert_refused(result, expected, out)


@pytest.mark.parametrize(
    ("option", "setting", "expected"),
    [
        ("--set", "model.latent_dim=0", "model.latent_dim"),
        ("--set", "optim.lr=-1", "optim.lr"),
        ("--stage-set", "optim.steps=0", "optim.steps"),
        ("--stage-set", "seed=-1", "seed"),
    ],
)
def test_train_all_refuses_a_bad_setting_in_one_line(tmp_path, option, setting, expected):
    out = tmp_path / "run"
    result = invoke("train", "all", "--data", str(tmp_path / "data"), "--out", str(out), "--trainer", "laom-labels-tiny", option, setting)
    assert_refused(result, expected, out)


RECIPE = """
methods = ["laom-labels", "masklam"]
[collect]
env = "dmc:cheetah-run"
size = 32
steps = 10
episodes = 2
test_episodes = 1
[train]
preset = "tiny"
lam = [{lam}]
{sweep}
"""


@pytest.mark.parametrize(
    ("lam", "sweep", "expected"),
    [
        ('"model.augment.enabled=0"', "", "model.augment.enabled"),
        ('"optim.steps=0"', "", "optim.steps"),
        ("", '[sweep]\n"model.tau" = [0.01, 2.0]', "model.tau"),
    ],
)
def test_a_recipe_with_a_bad_lam_setting_is_refused_before_anything_runs(tmp_path, lam, sweep, expected):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(lam=lam, sweep=sweep))
    out = tmp_path / "runs"
    assert_refused(invoke("run", str(recipe), "--out", str(out)), expected, out)
    assert_refused(invoke("run", str(recipe), "--out", str(out), "--dry-run"), expected, out)


def test_laom_knobs_from_a_trainer_file_set_and_a_recipe_sweep(tmp_path):
    trainer = tmp_path / "my-laom.toml"
    trainer.write_text(
        'method = "laom-labels"\npreset = "tiny"\n[data]\nlabelled_batch_size = 8\n'
        "[model]\ntau = 0.01\nnormalize_embedding = false\naction_weight = 1.0\n"
        '[model.augment]\nshift = 0.1\nrotation = 30.0\ncompositions = ["shift", "rotate-shift"]\n'
    )
    config = load_trainer(str(trainer), ["model.augment.perspective=0.2", "model.augment.seed=3"])
    model = config.model_config(64)
    assert (model.tau, model.normalize_embedding, model.action_weight, config.data.labelled_batch_size) == (0.01, False, 1.0, 8)
    augment = model.augment
    assert (augment.enabled, augment.shift, augment.rotation, augment.perspective, augment.seed) == (True, 0.1, 30.0, 0.2, 3)
    assert augment.compositions == ("shift", "rotate-shift")
    assert not load_trainer("laom-tiny", ["model.augment.enabled=false"]).model_config(32).augment.enabled

    recipe = tmp_path / "recipe.toml"
    # A LAOM-only knob for one method of several: train.lam_per_method; a sweep of it needs LAOM methods only.
    per_method = '[train.lam_per_method]\nlaom-labels = ["model.action_weight=1.0", "model.tau=0.01"]'
    recipe.write_text(RECIPE.format(lam='"optim.steps=5"', sweep=per_method))
    result = invoke("run", str(recipe), "--out", str(tmp_path / "runs"), "--dry-run")
    assert result.exit_code == 0, result.output
    models = {s.settings["method"]: s.settings["model"] for s in plan(load_recipe(recipe), tmp_path / "runs") if s.id.startswith("train lam")}
    assert models == {"laom-labels": {"action_weight": 1.0, "tau": 0.01}, "masklam": {}}
    recipe.write_text(RECIPE.format(lam='"optim.steps=5"', sweep=per_method.replace("laom-labels =", "laom =")))
    assert_refused(invoke("run", str(recipe), "--out", str(tmp_path / "runs")), "lam_per_method", tmp_path / "runs")
    sweep = '[sweep]\n"model.augment.enabled" = [true, false]'
    recipe.write_text(RECIPE.format(lam='"optim.steps=5"', sweep=sweep).replace('"laom-labels", "masklam"', '"laom", "laom-labels"'))
    result = invoke("run", str(recipe), "--out", str(tmp_path / "runs"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "train lam none laom enabled=False seed0" in result.stdout and "laom-labels enabled=True" in result.stdout


def test_python_callers_get_the_same_checks_as_value_errors():
    with pytest.raises(ValueError, match="model.tau"):
        lam_config("laom", "tiny", tau=-1.0)
    with pytest.raises(SettingError, match="model.augment.shift"):
        lam_config("laom", "tiny", augment={"shift": 2.0})
    assert lam_config("laom", "tiny", augment=None).augment.enabled is False  # None still means no augmentation


@pytest.mark.slow
def test_laom_labels_without_augmentation_trains_logs_its_action_loss_and_reports_a_finished_run(tiny_labelled_data, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "lam",
        "--data",
        str(tiny_labelled_data),
        "--out",
        str(out),
        "--trainer",
        "laom-labels-tiny",
        "--set",
        "model.augment.enabled=false",
        "--set",
        "optim.steps=3",
        "--set",
        "log_every=1",
        "--set",
        "data.batch_size=4",
        "--set",
        "data.labelled_batch_size=4",
    ]
    first = invoke(*args)
    assert first.exit_code == 0, (first.output, first.exception)
    saved = json.loads((out / "lam-config.json").read_text())
    assert saved["model"] == {"action_weight": 1.0, "augment": {"enabled": False}}  # the tiny preset's lambda, then --set
    rows = [json.loads(line) for line in (out / "lam-metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:  # the head's loss beside Var(a), and their ratio: below 1 beats the mean action
        assert row["action_variance"] > 0 and row["action_nmse"] == pytest.approx(row["action_loss"] / row["action_variance"], rel=1e-5)

    # Run again, finished: no step runs, and it reports the loss of its last step, not NaN.
    again = invoke(*args)
    assert again.exit_code == 0, (again.output, again.exception)
    assert f"final loss {rows[-1]['loss']:.4f}" in again.stdout and "nan" not in again.stdout

    # A bad value with a real dataset: refused before the folder is claimed.
    other = tmp_path / "other"
    refused = invoke("train", "lam", "--data", str(tiny_labelled_data), "--out", str(other), "--trainer", "laom-labels-tiny", "--set", "optim.lr=-1")
    assert_refused(refused, "optim.lr", other)


@pytest.fixture(scope="module")
def tiny_labelled_data(tmp_path_factory) -> Path:
    from masklam.data.collect import CollectConfig, collect
    from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset

    root = tmp_path_factory.mktemp("validation-data")
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("none"), episode_steps=12)
    collect(CollectConfig(env=env, episodes=2, test_episodes=1, episodes_per_shard=2, seed=1), root, show_progress=False)
    return root
