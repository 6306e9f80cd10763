"""The command line: bad input is one line on stderr, exit code 2, and nothing written.

Commands run in-process (``masklam_cli``, Typer's CliRunner: the same parsing and commands as the console script);
one test per kind of failure also runs the real console entry point in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = ["--env", "dmc:cheetah-run", "--size", "32", "--steps", "5", "--episodes", "1", "--test-episodes", "1", "--no-progress"]


def masklam_process(*args: str) -> subprocess.CompletedProcess:
    """The console entry point in a fresh interpreter: what a user's shell runs."""
    return subprocess.run([sys.executable, "-m", "masklam.cli", *args], capture_output=True, text=True, timeout=300)


def davis(root: Path, train: str, val: str | None) -> Path:
    for name in ("bear", "camel"):
        clip = root / "JPEGImages" / "480p" / name
        clip.mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (8, 8), (10, 20, 30)).save(clip / "00000.jpg")
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text(train)
    if val is not None:
        (sets / "val.txt").write_text(val)
    return root


BAD_INPUTS = {
    "unknown env": (["--env", "dmc:cheetah-fly"], "unknown env"),
    "misspelt env": (["--env", "dmc:cheeta-run"], "unknown env 'dmc:cheeta-run' (did you mean 'dmc:cheetah-run'?)"),
    "misspelt suite": (["--env", "dcm:cheetah-run"], "(did you mean 'dmc'?)"),
    "unknown preset": (["--distractors", "medium"], "unknown distractor preset"),
    "misspelt preset": (["--distractors", "lwo"], "(did you mean 'low'?)"),
    "misspelt backend": (["--backend", "zar"], "(did you mean 'zarr'?)"),
    "impossible size": (["--size", "4"], "image size"),
    "missing video folder": (["--distractors", "low", "--videos", "{tmp}/no-such-folder"], "does not exist"),
    "empty video folder": (["--distractors", "low", "--videos", "{tmp}/empty"], "no"),
    "malformed DAVIS split": (["--distractors", "low", "--videos", "{tmp}/davis"], "val.txt"),
    "unknown DAVIS video": (["--distractors", "low", "--videos", "{tmp}/davis2"], "zebra"),
    "missing checkpoint": (["--policy", "{tmp}/missing.pt"], "does not exist"),
    "corrupt checkpoint": (["--policy", "{tmp}/corrupt.pt"], "corrupt"),
    "no shipped expert": (["--env", "dmc:humanoid-run", "--policy", "expert"], "no expert is shipped"),
    "unknown backend": (["--backend", "hdf5"], "hdf5"),
    "both label options": (["--labelled-episodes", "1", "--label-fraction", "0.5"], "only one"),
    "unwritable output": (["--out", "{tmp}/a-file/data"], "cannot write"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_collect_input_fails_cleanly(masklam_cli, tmp_path, case):
    (tmp_path / "empty").mkdir()
    davis(tmp_path / "davis", "bear\n", None)
    davis(tmp_path / "davis2", "bear\n", "zebra\n")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "a-file").write_text("x")
    extra, message = BAD_INPUTS[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    out = tmp_path / "out"
    args = ["collect", *ENV, "--out", str(out), *extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = masklam_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["run", "dcs-cheetah-run-lo", "--out", "{tmp}/run"], "(did you mean 'dcs-cheetah-run-low'?)"),
        (["train", "lam", "--data", "{tmp}", "--trainer", "masklam-tiy", "--out", "{tmp}/run"], "(did you mean 'masklam-tiny'?)"),
        (["segment", "{tmp}", "--model", "mobile_sa", "--box", "1,1,5,5"], "(did you mean 'mobile_sam'?)"),
        (["ingest", "{tmp}", "--out", "{tmp}/o", "--resize", "crp"], "(did you mean 'crop'?)"),
        (["run", "quickstart", "--set", 'methods=["lapp"]', "--dry-run", "--out", "{tmp}/run"], "(did you mean 'lapo'?)"),
    ],
)
def test_a_misspelt_name_gets_a_suggestion(masklam_cli, tmp_path, args, hint):
    result = masklam_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2 and hint in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_lists_the_codes_own_choices(masklam_cli):
    from masklam.data.schema import BACKEND_NAMES, SPLITS
    from masklam.envs.spec import PRESETS

    collect = masklam_cli("collect", "--help").stdout
    assert f"--distractors [{'|'.join(PRESETS)}]" in collect and f"--backend [{'|'.join(BACKEND_NAMES)}]" in collect
    assert f"--split [{'|'.join(SPLITS)}]" in masklam_cli("view", "--help").stdout
    assert "[x0,y0,x1,y1]" in masklam_cli("segment", "--help").stdout  # not eaten as rich markup


def test_info_and_view_on_missing_dataset_fail_cleanly(masklam_cli, tmp_path):
    for args in (["info", str(tmp_path / "nothing")], ["view", str(tmp_path / "nothing"), "--out", str(tmp_path / "v.png")]):
        result = masklam_cli(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_evaluate_on_a_folder_without_a_lam_fails_cleanly(masklam_cli, tmp_path):
    result = masklam_cli("evaluate", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path} has no trained LAM (lam.pt, lam-config.json): run `masklam train lam --out {tmp_path}` first"
    ], result.stderr


@pytest.mark.slow
def test_the_console_script_fails_cleanly_in_a_fresh_process(tmp_path):
    """The real entry point: nothing but the error line reaches a real process's stderr (no warnings, no traceback)."""
    result = masklam_process("collect", *ENV, "--env", "dmc:cheetah-fly", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stdout == "", result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown env"), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_version_and_shell_completion(masklam_cli):
    from importlib.metadata import version

    done = masklam_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"masklam {version('masklam')}"
    script = masklam_cli("--show-completion", "bash")
    assert script.returncode == 0 and "_masklam_completion" in script.stdout
    # What the installed script asks the program when the user presses TAB after `masklam collect --dis`.
    env = {**os.environ, "COMP_WORDS": "masklam collect --dis", "COMP_CWORD": "2", "_MASKLAM_COMPLETE": "complete_bash"}
    completed = subprocess.run([sys.executable, "-m", "masklam.cli"], capture_output=True, text=True, env=env, timeout=120)
    assert completed.stdout.split() == ["--distractors"], completed


@pytest.mark.parametrize("backend", ["webdataset", "zarr"])
def test_collect_info_view(masklam_cli, tmp_path, backend):
    out = tmp_path / "data"
    result = masklam_cli("collect", *ENV, "--distractors", "hard", "--backend", backend, "--out", str(out))
    assert result.returncode == 0, result.stderr
    info = masklam_cli("info", str(out))
    assert info.returncode == 0 and "dmc:cheetah-run" in info.stdout and "oracle" in info.stdout and "train" in info.stdout
    assert "background, camera 0.1, colour 0.1" in info.stdout
    for name in ("grid.png", "anim.gif"):
        shown = masklam_cli("view", str(out), "--out", str(tmp_path / name), "--episodes", "1", "--frames", "3")
        assert shown.returncode == 0, shown.stderr
        from PIL import Image

        with Image.open(tmp_path / name) as picture:
            if name.endswith(".png"):
                assert picture.size == (3 * 128, 2 * 128)  # 3 frames, frame above overlay, upscaled to 128 px cells
            else:
                assert picture.size == (128, 2 * 128) and picture.n_frames == 6  # every frame of a 5-step episode
    bad = masklam_cli("view", str(out), "--out", str(tmp_path / "v.png"), "--mask-source", "sam_vit_h")
    assert bad.returncode == 2 and "oracle" in bad.stderr
    frames_only = masklam_cli("view", str(out), "--out", str(tmp_path / "plain.png"), "--episodes", "1", "--frames", "3", "--mask-source", "none")
    assert frames_only.returncode == 0, frames_only.stderr
    with Image.open(tmp_path / "plain.png") as picture:
        assert picture.size == (3 * 128, 128)  # frames only, no overlay row
    # One frame with a pixel grid, and the click drawn on it, to read and check a prompt for `segment --on`.
    clicked = masklam_cli("view", str(out), "--out", str(tmp_path / "click.png"), "--at", "train/0/2", "--box", "4,4,20,20", "--point", "neg:2,30")
    assert clicked.returncode == 0, clicked.stderr
    with Image.open(tmp_path / "click.png") as picture:
        plain = masklam_cli("view", str(out), "--out", str(tmp_path / "frame.png"), "--at", "train/0/2")
        assert plain.returncode == 0 and Image.open(tmp_path / "frame.png").size == picture.size
        assert picture.getpixel((28 + 4 * 8 + 40, 28 + 4 * 8)) == (255, 220, 0)  # the box's top edge
        assert picture.getpixel((28 + 2 * 8 + 4, 28 + 30 * 8 + 4)) == (220, 0, 0)  # the negative point
    outside = masklam_cli("view", str(out), "--out", str(tmp_path / "x.png"), "--at", "train/0/2", "--point", "40,3")
    assert outside.returncode == 2 and "--at train/0/2: the point 40,3 is outside the frame" in outside.stderr
    assert masklam_cli("view", str(out), "--out", str(tmp_path / "x.png"), "--at", "train/0/99").returncode == 2


@pytest.fixture(scope="module")
def cheetah_low(masklam_cli, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-train") / "cheetah-low"
    args = ["--env", "dmc:cheetah-run", "--distractors", "low", "--size", "32", "--steps", "20", "--episodes", "4"]
    done = masklam_cli("collect", *args, "--test-episodes", "1", "--labelled-episodes", "2", "--episodes-per-shard", "2", "--out", str(root), "--no-progress")
    assert done.returncode == 0, done.stderr
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lapo", "masklam", "laom", "laom-labels"])
def test_train_all_then_probe_and_evaluate(masklam_cli, cheetah_low, tmp_path, method):
    """The whole loop from the command line, at smoke scale, for each method: train all, probe, evaluate."""
    run = tmp_path / method
    steps = ["--set", "optim.steps=6", "--stage-set", "optim.steps=6", "--stage-set", "batch_size=8"]
    done = masklam_cli(
        "train", "all", "--data", str(cheetah_low), "--out", str(run), "--trainer", f"{method}-tiny", "--labelled", "30", *steps, "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    assert f"trained {method}" in done.stdout and "30 labelled transitions" in done.stdout
    assert {"lam.pt", "bc.pt", "decoder.pt", "bc-actions.pt"} <= {p.name for p in run.iterdir()}

    done = masklam_cli("probe", str(run), "--data", str(cheetah_low), "--windows", "40", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "NMSE" in done.stdout and (run / "probe.json").exists()

    done = masklam_cli("evaluate", str(run), "--episodes", "2", "--steps", "8", "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert result["return_mean"] == pytest.approx(sum(result["returns"]) / 2, abs=1e-3)  # returns are rounded


TRAIN_BAD_INPUTS = {
    "missing dataset": (["train", "lam", "--data", "{tmp}/nowhere", "--out", "{tmp}/run"], "nowhere"),
    "unknown trainer": (["train", "lam", "--data", "{data}", "--out", "{tmp}/run", "--trainer", "vae-small"], "no trainer preset"),
    "unknown setting": (["train", "lam", "--data", "{data}", "--out", "{tmp}/run", "--set", "optim.speed=2"], "speed"),
    "wrong type": (["train", "lam", "--data", "{data}", "--out", "{tmp}/run", "--set", "optim.steps=many"], "optim.steps"),
    "unknown mask source": (["train", "lam", "--data", "{data}", "--out", "{tmp}/run", "--trainer", "masklam-tiny", "--mask-source", "sam"], "sam"),
    "probe without a LAM": (["probe", "{tmp}/run", "--data", "{data}"], "lam"),
    "bc without a LAM": (["train", "bc", "{tmp}/run"], "lam"),
    "evaluate without a decoder": (["evaluate", "{tmp}/run"], "run"),
}


@pytest.mark.parametrize("case", list(TRAIN_BAD_INPUTS))
def test_bad_train_input_fails_cleanly(masklam_cli, cheetah_low, tmp_path, case):
    args, expected = TRAIN_BAD_INPUTS[case]
    done = masklam_cli(*(a.format(tmp=tmp_path, data=cheetah_low) for a in args), "--no-progress")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_core_never_imports_ultralytics():
    code = "import sys, masklam.cli, masklam.segment.run, masklam.segment.sam; assert 'ultralytics' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_masks_transform_and_compare(masklam_cli, cheetah_low, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cheetah_low, data)
    done = masklam_cli("masks", "transform", str(data), "--from", "oracle", "--dilate", "1", "--no-progress")
    assert done.returncode == 0 and "oracle_dilate1" in done.stdout, done.stderr
    done = masklam_cli("masks", "compare", str(data), "--ref", "oracle", "--pred", "oracle_dilate1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["overall"]["recall"] == 1.0 and result["overall"]["precision"] < 1.0
    assert (data / "compare" / "compare-oracle_dilate1-vs-oracle-worst.png").exists()
    # training reads the derived source by name
    done = masklam_cli(
        "train",
        "lam",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--trainer",
        "masklam-tiny",
        "--mask-source",
        "oracle_dilate1",
        "--set",
        "optim.steps=2",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "lam-config.json").read_text())["data"]["mask_source"] == "oracle_dilate1"
    done = masklam_cli("masks", "compare", str(data), "--pred", "sam_vit_h")
    assert done.returncode == 2 and "no 'sam_vit_h' masks" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = masklam_cli("segment", str(data), "--model", "sam_vit_h", "--no-progress")
    assert done.returncode == 2 and "no prompt" in done.stderr
