"""Hostile cases (issue 30): a user's files with names like masklam's temp files, at several levels of every kind of
output (a dataset in both backends, a mask source, a run folder, a report folder), a user's file inside a Zarr
shard, a disk that fills up at the write layer of each stage, and two writers of one output at once. Each case
asserts the exit code, one line of stderr, and the sha256 of every foreign file before and after."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

TINY = ["--env", "dmc:cheetah-run", "--steps", "6", "--size", "16", "--episodes", "2", "--test-episodes", "1", "--episodes-per-shard", "1"]
COLLECT = ["collect", *TINY, "--no-progress"]
# Names like the temp files of masklam or of other tools, none carrying masklam's mark with a pid: a user's.
LOOK_ALIKES = [".tmp-cache/notes.txt", ".draft.999999-1.tmp", ".info.json.999999-1.tmp", ".masklam-tmp-mine/keep.txt", "notes.txt"]
LEVELS = {
    "webdataset": ["", "index/train/", "train/", "masks/oracle/train/"],
    "zarr": ["", "index/train/", "data.zarr/train/", "data.zarr/train/shard-000000/", "data.zarr/train/shard-000000/data/rgb/"],
}


def plant(root: Path, levels: list[str], names: list[str] = LOOK_ALIKES) -> dict[Path, str]:
    """Write a user's file of each name at each level; their sha256 by path."""
    planted = {}
    for level in levels:
        for name in names:
            path = root / level / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"the user's {level}{name}")
            planted[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return planted


def intact(planted: dict[Path, str]) -> bool:
    return all(path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest for path, digest in planted.items())


def one_line(result, code: int = 2) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (result.returncode, result.stderr)
    return lines[0]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAM_CACHE", str(tmp_path / "cache"))  # writer locks live there


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    from masklam.data.collect import CollectSettings, collect

    roots = {}
    for backend in LEVELS:
        roots[backend] = tmp_path_factory.mktemp(backend) / "data"
        settings = CollectSettings(env="dmc:cheetah-run", steps=6, size=16, episodes=2, test_episodes=1, episodes_per_shard=1, backend=backend)
        assert collect(settings.config(), roots[backend], show_progress=False)
    return roots


def copy(datasets, backend: str, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(datasets[backend], data)
    return data


# --- foreign files at every level ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", sorted(LEVELS))
def test_a_dataset_keeps_every_foreign_file(masklam_cli, datasets, tmp_path, backend):
    # A folder of the user's: refused, nothing cleaned first.
    mine = tmp_path / "mine"
    planted = plant(mine, [""])
    assert "not made by this command" in one_line(masklam_cli(*COLLECT, "--backend", backend, "--out", str(mine)))
    assert intact(planted)
    # A dataset resumed (one shard to write again) with the user's files at every level, and then --overwrite.
    data = copy(datasets, backend, tmp_path)
    planted = plant(data, LEVELS[backend])
    (data / "index/train/shard-000001.json").unlink()
    (data / "info.json").unlink()
    resumed = masklam_cli(*COLLECT, "--backend", backend, "--out", str(data))
    assert resumed.returncode == 0, resumed.stderr
    assert intact(planted) and masklam_cli("verify", str(data)).returncode == 0
    refused = one_line(masklam_cli(*COLLECT, "--backend", backend, "--seed", "1", "--out", str(data), "--overwrite"))
    assert "--overwrite refused" in refused and "nothing was deleted" in refused
    assert intact(planted) and masklam_cli("verify", str(data)).returncode == 0


def test_a_user_file_in_a_zarr_shard_to_rewrite_is_refused_and_kept(masklam_cli, datasets, tmp_path):
    data = copy(datasets, "zarr", tmp_path)
    planted = plant(data, ["data.zarr/train/shard-000001/", "data.zarr/train/shard-000001/meta/record_ends/c/"], ["notes.txt"])
    (data / "index/train/shard-000001.json").unlink()  # the shard is written again, its folder replaced
    assert "notes.txt is not a file masklam wrote" in one_line(masklam_cli(*COLLECT, "--backend", "zarr", "--out", str(data)))
    assert intact(planted)


@pytest.mark.parametrize("backend", sorted(LEVELS))
def test_a_mask_source_keeps_every_foreign_file(masklam_cli, datasets, tmp_path, backend):
    data = copy(datasets, backend, tmp_path)
    levels = ["segment/", "segment/oracle_erode1/", "segment/oracle_erode1/train/"]
    levels += ["masks/oracle_erode1/train/"] if backend == "webdataset" else ["data.zarr/train/shard-000000/data/mask/"]
    planted = plant(data, levels)
    done = masklam_cli("masks", "transform", str(data), "--erode", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert intact(planted)
    # A run stopped by damaged input removes its partial source: masklam's files only.
    failed = copy(datasets, backend, tmp_path / "failed")
    planted = plant(failed, ["segment/oracle_erode1/", "segment/oracle_erode1/train/"])
    index = failed / "index/test/shard-000000.json"
    index.write_text(index.read_text().replace('"split": "test"', '"split": "train"'))
    assert "index" in one_line(masklam_cli("masks", "transform", str(failed), "--erode", "1", "--no-progress"))
    assert intact(planted)


def test_a_run_folder_keeps_every_foreign_file(masklam_cli, datasets, tmp_path):
    run = tmp_path / "run"
    train = ["train", "lam", "--data", str(datasets["webdataset"]), "--trainer", "lapo-tiny", "--out", str(run), "--no-progress"]
    train += ["--set", "optim.steps=2", "--set", "data.batch_size=4", "--set", "model.latent_dim=8", "--set", "checkpoint_every=1"]
    planted = plant(run, ["", "sub/"])
    first = masklam_cli(*train)
    assert first.returncode == 0, first.stderr
    assert intact(planted)
    again = masklam_cli(*train)  # finished: resumes to nothing
    assert again.returncode == 0, again.stderr
    assert intact(planted)


def fake_runs(root: Path) -> Path:
    """A `masklam run` folder holding one probe result (as tests/report/test_tables.py writes them)."""
    from masklam.data.collect import CollectSettings
    from masklam.pipeline.recipe import Recipe, recipe_json
    from masklam.pipeline.run import grid

    recipe = Recipe(name="r", collect=CollectSettings(env="dmc:cheetah-run"), methods=["lapo"], seeds=[0])
    root.mkdir(parents=True)
    (root / "recipe.json").write_text(json.dumps(recipe_json(recipe)))
    folder = next(iter(grid(recipe))).folder(root)
    folder.mkdir(parents=True)
    (folder / "probe.json").write_text(json.dumps({"action_nmse": 0.5, "in_pool_nmse": 0.4, "distractor_r2": 0.1}))
    return root


def test_a_report_folder_keeps_every_foreign_file(masklam_cli, tmp_path):
    runs, out = fake_runs(tmp_path / "runs"), tmp_path / "report"
    planted = plant(out, ["", "plots/"])
    done = masklam_cli("report", str(runs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert intact(planted) and (out / "results.md").is_file()


# --- a full disk at the write layer of each stage --------------------------------------------------------------
from test_disk_full import fill_disk_after  # noqa: E402  (tests/ is on the path, as for hub_server)

STAGES = {
    "segment": lambda data, out: ["segment", str(data), "--model", "oracle", "--name", "copy", "--no-progress"],
    "masks transform": lambda data, out: ["masks", "transform", str(data), "--erode", "1", "--no-progress"],
    # The teacher's cache is the first thing a distilling segment writes: the full disk hits it.
    "segment --distill": lambda data, out: [
        "segment",
        str(data),
        "--model",
        "oracle",
        "--name",
        "student",
        "--distill",
        "10",
        "--distill-steps",
        "2",
        "--no-progress",
    ],
    "report": lambda data, out: ["report", str(fake_runs(out.parent / "runs")), "--out", str(out)],
    "ingest": lambda data, out: [
        "ingest",
        str(frame_folder(out.parent / "frames")),
        "--out",
        str(out.parent / "ingested"),
        "--size",
        "16",
        "--test-episodes",
        "0",
    ],
}


def frame_folder(folder: Path) -> Path:
    """A folder of 8 PNG frames: the cheapest source ingest reads."""
    from PIL import Image

    clip = folder / "clip"
    if not clip.exists():
        clip.mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(clip / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize(
    "stage, backend",
    [(stage, backend) for stage in sorted(STAGES) for backend in sorted(LEVELS) if stage not in ("report", "ingest", "segment --distill") or backend == "zarr"],
)
def test_a_full_disk_is_one_line_at_every_stage(masklam_cli, datasets, tmp_path, monkeypatch, stage, backend):
    data = copy(datasets, backend, tmp_path)
    out = tmp_path / "report"
    planted = plant(data, [""]) | plant(out, [""])
    command = STAGES[stage](data, out)  # once: the report's run folder is made here
    with monkeypatch.context() as patch:
        fill_disk_after(patch, renames=1)
        line = one_line(masklam_cli(*command))
    assert line.startswith("error: no space left on the device while writing ") and "re-run the same command" in line
    if stage == "segment --distill":
        assert "/segment/student/teacher/" in line  # its cache
    assert intact(planted)
    again = masklam_cli(*command)  # with space: the same command finishes
    assert again.returncode == 0, again.stderr
    assert intact(planted)


# --- two writers at once ---------------------------------------------------------------------------------------
def test_two_writers_of_one_dataset_never_fail_but_in_one_line(datasets, tmp_path):
    """20 trials: two collects resuming one dataset, released at the same instant (tests/racing.py)."""
    from racing import race

    data = copy(datasets, "zarr", tmp_path)
    planted = plant(data, ["", "index/train/", "data.zarr/train/"])
    command = [*COLLECT, "--backend", "zarr", "--workers", "1", "--out", str(data)]

    def reset(_trial: int) -> None:
        (data / "index/train/shard-000000.json").unlink()  # a shard to write again, and info.json after it
        (data / "info.json").unlink()

    outcomes = []
    for results in race([command] * 20, reset, {"MASKLAM_CACHE": os.environ["MASKLAM_CACHE"]}):
        for code, err in results:
            assert code in (0, 2), results
            if code == 2:
                # The holder may not have written its pid yet: "(a process that has not said who it is yet)".
                assert len(err.strip().splitlines()) == 1 and "is being written by another masklam (" in err, err
        assert any(code == 0 for code, _ in results), results
        assert intact(planted) and (data / "info.json").is_file()
        outcomes.append(tuple(sorted(code for code, _ in results)))
    from masklam.data.verify import verify_dataset

    assert len(outcomes) == 20 and not verify_dataset(data).problems
    print(f"outcomes of 20 trials: {sorted(set(outcomes))}")
