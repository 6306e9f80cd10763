"""Publishing to and pulling from the Hub: the stage folder loads with the real `datasets` offline, the card's
YAML names every split, and upload / pull / streaming go through the real huggingface_hub client to a local
stand-in for the Hub's HTTP API (tests/hub_server.py, the only mocked boundary)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.data.hub import PublishConfig, build_stage
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.segment.transforms import MaskTransform, derive_source

sys.path.insert(0, str(Path(__file__).parents[1]))
from hub_server import FakeHub  # noqa: E402

TOKEN = "hf_masklamTestToken1234567890"
SOURCES = ("oracle", "oracle_dilate1")


def make_dataset(root: Path, backend: str) -> Path:
    """3 train episodes (one unlabelled) in 4-step chunks, 1 test episode, and a second mask source."""
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=10)
    config = CollectConfig(env=env, backend=backend, episodes=3, test_episodes=1, episodes_per_shard=2, chunk_steps=4, labelled_episodes=2, seed=5)
    collect(config, root, show_progress=False)
    derive_source(root, "oracle", MaskTransform(dilate=1), None, False, False)
    return root


@pytest.fixture(scope="module")
def datasets_by_backend(tmp_path_factory) -> dict[str, Path]:
    return {backend: make_dataset(tmp_path_factory.mktemp(backend) / "tiny", backend) for backend in ("webdataset", "zarr")}


@pytest.fixture(scope="module")
def staged(datasets_by_backend, tmp_path_factory) -> dict[str, Path]:
    stages = {}
    for backend, data in datasets_by_backend.items():
        stages[backend] = tmp_path_factory.mktemp(f"{backend}-stage") / "stage"
        build_stage(data, stages[backend], PublishConfig("me/tiny"), show_progress=False)
    return stages


def stage_files(stage: Path) -> dict[str, bytes]:
    return {
        p.relative_to(stage).as_posix(): p.read_bytes()
        for p in sorted(stage.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(stage).parts and p.name != ".masklam-stage.json"
    }


def assert_same_episodes(rows: dict[str, np.ndarray], data: Path, split: str) -> None:
    """The view's rows of ``split`` hold exactly the dataset's episodes, frame by frame."""
    dataset = open_dataset(data)
    episodes = sorted({meta.episode for meta in dataset.index(split)})
    assert sorted(set(rows["episode"].tolist())) == episodes
    for episode in episodes:
        whole = dataset.episode(split, episode, mask_sources=SOURCES)
        picked = rows["episode"] == episode
        np.testing.assert_array_equal(rows["frame"][picked], np.arange(whole.meta.episode_frames))
        assert set(rows["labelled"][picked].tolist()) == {whole.meta.labelled}
        np.testing.assert_array_equal(np.stack(rows["rgb"][picked]), whole.steps["rgb"], strict=True)
        for source in SOURCES:
            np.testing.assert_array_equal(np.stack(rows[f"mask_{source}"][picked]), whole.masks[source], strict=True)
        for name in ("state", "reward", "terminated"):
            np.testing.assert_array_equal(np.stack(rows[name][picked]), whole.steps[name], strict=True)
        actions = np.stack(rows["action"][picked])
        assert actions.dtype == np.float32
        if whole.meta.labelled:
            np.testing.assert_array_equal(actions, whole.steps["action"], strict=True)  # NaN at the end
        else:
            assert np.isnan(actions).all()


@pytest.mark.parametrize("backend", ["webdataset", "zarr"])
def test_stage_loads_with_datasets_and_matches_the_source(backend, staged, datasets_by_backend, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = datasets.load_dataset(str(staged[backend]), cache_dir=str(staged[backend].parent / "cache"))
    assert sorted(loaded) == ["test", "train"]
    features = loaded["train"].features
    assert isinstance(features["rgb"], datasets.Image) and isinstance(features["mask_oracle_dilate1"], datasets.Image)
    assert features["labelled"].dtype == "bool" and features["action"].feature.dtype == "float32"
    for split in ("train", "test"):
        rows = loaded[split].with_format("numpy")[:]
        assert rows["rgb"][0].dtype == np.uint8 and rows["mask_oracle"][0].dtype == np.uint8
        assert_same_episodes(rows, datasets_by_backend[backend], split)
    assert not all(loaded["train"]["labelled"])  # the unlabelled episode is there


def test_card_yaml_parses_and_names_every_split(staged):
    for stage in staged.values():
        card = (stage / "README.md").read_text()
        assert card.startswith("---\n")
        metadata = yaml.safe_load(card.split("---\n")[1])
        info = json.loads((stage / "info.json").read_text())
        assert metadata["license"] == "cc-by-4.0" and "robotics" in metadata["task_categories"]
        assert metadata["size_categories"] == ["n<1K"] and "cheetah-run" in metadata["tags"]
        (config,) = metadata["configs"]
        splits = {entry["split"]: entry["path"] for entry in config["data_files"]}
        assert sorted(splits) == sorted(info["splits"])
        for split, pattern in splits.items():
            assert len(list(stage.glob(pattern))) == info["splits"][split]["shards"]
        columns = [feature["name"] for feature in metadata["dataset_info"]["features"]]
        assert {f"mask_{source}" for source in SOURCES} | {"rgb", "action", "labelled", "episode", "frame"} <= set(columns)
        assert "view.png" in card and (stage / "view.png").stat().st_size > 0
        for source in SOURCES:
            assert f"mask_{source}" in card


def test_zipped_zarr_stage_reads_like_the_dataset_and_rebuilds_incrementally(staged, datasets_by_backend):
    stage, data = staged["zarr"], datasets_by_backend["zarr"]
    assert not list((stage / "data.zarr").glob("*/shard-*/")) and list((stage / "data.zarr").glob("*/shard-*.zip"))
    original, published = open_dataset(data), open_dataset(stage)
    for split in ("train", "test"):
        want = list(original.records(split, SOURCES))
        got = list(published.records(split, SOURCES))
        assert [r.meta for r in got] == [r.meta for r in want]
        for a, b in zip(got, want):
            assert sorted(a.steps) == sorted(b.steps)
            for name in b.steps:
                np.testing.assert_array_equal(a.steps[name], b.steps[name], strict=True)
            for source in SOURCES:
                np.testing.assert_array_equal(a.masks[source], b.masks[source], strict=True)
    before = {p: p.stat().st_mtime_ns for p in stage.rglob("*.zip")} | {p: p.stat().st_mtime_ns for p in stage.rglob("*.parquet")}
    files = build_stage(data, stage, PublishConfig("me/tiny"), show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten: all up to date
    assert sorted(stage_files(stage)) == files


def run_cli(args: list[str], hub: FakeHub, home: Path, token: str | None = TOKEN, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, **hub.env(home=home, token=token), **env}
    if token is None:
        environment.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "masklam.cli", *args], capture_output=True, text=True, env=environment, timeout=300)


# huggingface_hub sends large files through Xet storage when hf_xet is installed, which the stand-in does not
# speak: "lfs" turns Xet off (files of 64 KiB and more go by LFS), "pipeline" keeps it on with every file sent
# inline, through huggingface_hub's resumable multi-commit upload.
@pytest.mark.slow
@pytest.mark.parametrize("transfer", ["lfs", "pipeline"])
def test_publish_uploads_the_stage_and_never_leaks_the_token(transfer, datasets_by_backend, tmp_path):
    data = shutil.copytree(datasets_by_backend["webdataset"], tmp_path / "tiny")
    home = tmp_path / "hf-home"
    xet = {"HF_HUB_DISABLE_XET": "1" if transfer == "lfs" else "0"}
    with FakeHub(lfs_threshold=64 * 1024 if transfer == "lfs" else None) as hub:
        result = run_cli(
            ["publish", str(data), "--repo-id", "me/tiny", "--private", "--revision", "dev", "--message", "first version", "--no-progress"], hub, home, **xet
        )
        assert result.returncode == 0, result.stderr
        stage = tmp_path / "tiny.publish"
        assert hub.files("me/tiny", "dev") == stage_files(stage)
        assert hub.repos["me/tiny"]["private"] is True
        titles = [commit["title"] for commit in hub.commits("me/tiny", "dev")]
        assert titles[0] == "first version"  # the card and info.json come last, with the user's message
        if transfer == "lfs":
            assert any(method == "PUT" and path.startswith("/lfs-upload/") for method, path, _ in hub.requests)
        assert any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)
        leaks = [p for root in (stage, data, home) for p in root.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
        assert not leaks and TOKEN not in result.stdout + result.stderr

        # Publishing again unchanged sends no file and makes no commit.
        commits, puts = len(hub.commits("me/tiny", "dev")), sum(method == "PUT" for method, _, _ in hub.requests)
        result = run_cli(["publish", str(data), "--repo-id", "me/tiny", "--revision", "dev", "--no-progress"], hub, home, **xet)
        assert result.returncode == 0, result.stderr
        assert len(hub.commits("me/tiny", "dev")) == commits
        assert sum(method == "PUT" for method, _, _ in hub.requests) == puts

        # A removed mask source disappears from the repo on the next publish.
        shutil.rmtree(data / "masks" / "oracle_dilate1")
        shutil.rmtree(data / "segment")
        info = json.loads((data / "info.json").read_text())
        del info["mask_sources"]["oracle_dilate1"]
        (data / "info.json").write_text(json.dumps(info))
        result = run_cli(["publish", str(data), "--repo-id", "me/tiny", "--revision", "dev", "--no-progress"], hub, home, **xet)
        assert result.returncode == 0, result.stderr
        assert hub.files("me/tiny", "dev") == stage_files(stage)
        assert not any(path.startswith("masks/oracle_dilate1/") for path in hub.files("me/tiny", "dev"))


@pytest.mark.slow
def test_pull_streams_and_loads_back_from_the_hub(datasets_by_backend, staged, tmp_path):
    data, stage = datasets_by_backend["zarr"], staged["zarr"]
    home = tmp_path / "hf-home"
    with FakeHub() as hub:
        hub.put_files("me/tiny", stage_files(stage), message="published")
        out = tmp_path / "pulled"
        result = run_cli(["pull", "me/tiny", "--out", str(out), "--no-progress"], hub, home, token=None)
        assert result.returncode == 0, result.stderr
        assert not list(out.rglob("*.zip")) and not (out / "parquet").exists()
        pulled, original = open_dataset(out), open_dataset(data)
        for split in ("train", "test"):
            got, want = list(pulled.records(split, SOURCES)), list(original.records(split, SOURCES))
            assert [r.meta for r in got] == [r.meta for r in want]
            for a, b in zip(got, want):
                for name in b.steps:
                    np.testing.assert_array_equal(a.steps[name], b.steps[name], strict=True)

        # Resumable: what is missing comes back, info.json last.
        shutil.rmtree(out / "data.zarr" / "train" / "shard-000001")
        (out / "info.json").unlink()
        result = run_cli(["pull", "me/tiny", "--out", str(out), "--no-progress"], hub, home, token=None)
        assert result.returncode == 0, result.stderr
        assert len(list(open_dataset(out).records("train"))) == len(list(original.records("train")))

        # Streaming straight from the Hub into training, and `datasets` from the repo id.
        run = tmp_path / "run"
        result = run_cli(
            [
                "train",
                "lam",
                "--data",
                "hf://datasets/me/tiny",
                "--out",
                str(run),
                "--trainer",
                "masklam-tiny",
                "--mask-source",
                "oracle_dilate1",
                "--set",
                "optim.steps=2",
                "--set",
                "data.batch_size=4",
                "--no-progress",
            ],
            hub,
            home,
            token=None,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads((run / "lam-config.json").read_text())["data"]["path"] == "hf://datasets/me/tiny"
        script = (
            "import datasets; d = datasets.load_dataset('me/tiny', split='train');print(d.num_rows, sorted(c for c in d.column_names if c.startswith('mask_')))"
        )
        environment = {**os.environ, **hub.env(home=home)}
        loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)
        assert loaded.returncode == 0, loaded.stderr
        frames = open_dataset(data).info["splits"]["train"]["frames"]
        assert loaded.stdout.split()[0] == str(frames) and "mask_oracle_dilate1" in loaded.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, token, message",
    [
        (["publish", "{data}", "--repo-id", "me/tiny"], None, "no Hugging Face token"),
        (["publish", "{data}", "--repo-id", "not-a-repo-id"], TOKEN, "OWNER/NAME"),
        (["publish", "{tmp}/nowhere", "--repo-id", "me/tiny"], TOKEN, "no dataset folder"),
        (["publish", "{data}", "--repo-id", "me/tiny", "--zarr-layout", "tar"], TOKEN, "--zarr-layout"),
        (["publish", "{data}", "--repo-id", "me/tiny", "--stage", "{data}/.."], TOKEN, "must not hold one another"),
        (["publish", "{data}", "--repo-id", "me/tiny", "--stage", "{tmp}", "--dry-run"], TOKEN, "holds other files"),
        (["pull", "me/missing", "--out", "{tmp}/pulled"], None, "has no dataset me/missing"),
        (["pull", "me/tiny", "--out", "{data}"], None, "choose another --out"),
    ],
)
def test_bad_publish_and_pull_input_is_a_one_line_error(args, token, message, datasets_by_backend, tmp_path):
    data = datasets_by_backend["webdataset"]
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    (tmp_path / "notes.txt").write_text("a user's file")
    with FakeHub() as hub:
        hub.put_files("me/tiny", {"info.json": b"{}"})
        result = run_cli([a.format(data=data, tmp=tmp_path) for a in args], hub, tmp_path / "hf-home", token=token)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before  # nothing of the dataset touched
    assert (tmp_path / "notes.txt").read_text() == "a user's file"


@pytest.mark.slow
@pytest.mark.parametrize("backend, layout", [("webdataset", "zip"), ("zarr", "dir")])
def test_every_layout_publishes_and_pulls_back(backend, layout, datasets_by_backend, tmp_path):
    data = datasets_by_backend[backend]
    stage = tmp_path / "stage"
    build_stage(data, stage, PublishConfig("me/tiny", zarr_layout=layout), show_progress=False)
    if backend == "zarr":  # folders, as on disk
        assert list((stage / "data.zarr").glob("*/shard-*/zarr.json")) and not list(stage.rglob("*.zip"))
    with FakeHub() as hub:
        hub.put_files("me/tiny", stage_files(stage))
        out = tmp_path / "pulled"
        result = run_cli(["pull", "me/tiny", "--out", str(out), "--no-progress"], hub, tmp_path / "hf-home", token=None)
    assert result.returncode == 0, result.stderr
    pulled, original = open_dataset(out), open_dataset(data)
    for split in ("train", "test"):
        got, want = list(pulled.records(split, SOURCES)), list(original.records(split, SOURCES))
        assert [r.meta for r in got] == [r.meta for r in want]
        for a, b in zip(got, want):
            for source in SOURCES:
                np.testing.assert_array_equal(a.masks[source], b.masks[source], strict=True)
            np.testing.assert_array_equal(a.steps["rgb"], b.steps["rgb"], strict=True)


# --- a real full disk: a small tmpfs (root only; skipped where the machine does not permit mounting) ------------
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 64 KiB at tmp_path/"disk"; ``grow()`` gives it room without touching what is on it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the injected-ENOSPC tests still run")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)

    yield disk, grow
    subprocess.run(["umount", "-l", str(disk)], check=False)


def full_disk_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("error: no space left on the device") and "re-run the same command" in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_a_full_disk_while_staging_a_publish_is_one_line_and_the_rerun_finishes(datasets_by_backend, staged, small_disk, tmp_path):
    disk, grow = small_disk
    stage = disk / "stage"
    command = ["publish", str(datasets_by_backend["zarr"]), "--repo-id", "me/tiny", "--dry-run", "--no-progress", "--stage", str(stage)]
    with FakeHub() as hub:  # --dry-run never calls it
        line = full_disk_line(run_cli(command, hub, tmp_path / "hf-home"))
        assert str(disk) in line  # names where it was writing
        grow()
        result = run_cli(command, hub, tmp_path / "hf-home")
    assert result.returncode == 0, result.stderr
    assert stage_files(stage) == stage_files(staged["zarr"])  # the same stage as one built with space


@pytest.mark.slow
def test_a_full_disk_while_pulling_is_one_line_and_the_rerun_finishes(datasets_by_backend, staged, small_disk, tmp_path):
    disk, grow = small_disk
    out = disk / "pulled"
    with FakeHub() as hub:
        hub.put_files("me/tiny", stage_files(staged["webdataset"]), message="published")
        command = ["pull", "me/tiny", "--out", str(out), "--no-progress"]
        line = full_disk_line(run_cli(command, hub, tmp_path / "hf-home", token=None))
        assert str(out) in line and "network" not in line  # a full disk, not the Hub out of reach
        grow()
        result = run_cli(command, hub, tmp_path / "hf-home", token=None)
    assert result.returncode == 0, result.stderr
    pulled, original = open_dataset(out), open_dataset(datasets_by_backend["webdataset"])
    for split in ("train", "test"):
        assert [r.meta for r in pulled.records(split)] == [r.meta for r in original.records(split)]
