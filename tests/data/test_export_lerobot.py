"""`masklam export --format lerobot` read back as LeRobot reads it, and LeRobot datasets ingested.

Three readers: ``datasets.Dataset.from_parquet`` with the features of meta/info.json (what ``LeRobotDataset``
does for its data files) and PyAV at the episodes' timestamps (what its video decoders do), in this process;
and ``LeRobotDataset`` itself (and LeRobot's writer), in the LeRobot venv that ``scripts/lerobot_venv.sh``
makes (lerobot cannot be installed beside the test extras: docs/install.md), through ``tests/lerobot_check.py``.
Without that venv those tests skip and say how to make it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.data.ingest import IngestConfig, ingest
from masklam.data.lerobot_format import IMAGE_KEY, LABELLED_KEY, MASK_PREFIX, export_lerobot
from masklam.data.schema import ORACLE
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.errors import UsageError

LEROBOT_CHECK = Path(__file__).resolve().parents[1] / "lerobot_check.py"
LEROBOT_VENV = Path(__file__).resolve().parents[2] / ".venv-lerobot"


def lerobot_python() -> str:
    """The LeRobot venv's Python: $MASKLAM_LEROBOT_PYTHON, else .venv-lerobot/bin/python; skips if there is none."""
    python = os.environ.get("MASKLAM_LEROBOT_PYTHON") or str(LEROBOT_VENV / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no LeRobot venv ({python}): `bash scripts/lerobot_venv.sh` makes it (scripts/test.sh does); see docs/install.md")
    return python


def run_lerobot(tmp: Path, *args: str) -> dict:
    """tests/lerobot_check.py ARGS in the LeRobot venv: the JSON it printed."""
    # offline, and Hugging Face caches (datasets caches its parquet reads) under the test's own folder
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf-home")}
    done = subprocess.run([lerobot_python(), "-I", str(LEROBOT_CHECK), *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """Two train episodes (one unlabelled) and a test episode of a distracting cheetah, with oracle masks."""
    root = tmp_path_factory.mktemp("export") / "sim"
    spec = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=12)
    collect(CollectConfig(env=spec, episodes=2, test_episodes=1, labelled_episodes=1, chunk_steps=5, seed=2), root, show_progress=False)
    return root


def masklam_episodes(data: Path) -> list:
    """Episodes in export order: train, then test."""
    dataset = open_dataset(data)
    sources = tuple(dataset.info["mask_sources"])
    return [
        dataset.episode(split, meta.episode, sources)
        for split in ("train", "test")
        if split in dataset.info["splits"]
        for meta in dataset.index(split)
        if meta.chunk == 0
    ]


def read_rows(out: Path):
    """The data files as LeRobotDataset loads them: datasets' from_parquet with the features of info.json."""
    from datasets import Dataset, Features, List, Value
    from datasets import Image as HFImage

    info = json.loads((out / "meta" / "info.json").read_text())
    features = {}
    for name, feature in info["features"].items():
        if feature["dtype"] == "video":
            continue
        if feature["dtype"] == "image":
            features[name] = HFImage()
        elif feature["shape"] == [1]:
            features[name] = Value(feature["dtype"])
        else:
            features[name] = List(Value(feature["dtype"]), length=feature["shape"][0])
    files = sorted(str(p) for p in (out / "data").glob("*/*.parquet"))
    return info, Dataset.from_parquet(files, features=Features(features))


def test_image_export_is_lossless(collected, tmp_path):
    out = tmp_path / "lerobot"
    result = export_lerobot(collected, out, "image", show_progress=False)
    episodes = masklam_episodes(collected)
    assert result == {"episodes": 3, "frames": 39, "files": 2}  # one data file per masklam shard
    info, rows = read_rows(out)
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 39 and info["splits"] == {"train": "0:2", "test": "2:3"}
    assert info["features"]["action"]["names"] == open_dataset(collected).info.get("action_names", [f"action_{i}" for i in range(6)])
    assert len(info["features"]["observation.state"]["names"]) == 17
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["action"]["count"] == [24] and len(stats[IMAGE_KEY]["mean"]) == 3  # labelled transitions only
    row = 0
    for number, episode in enumerate(episodes):
        n = episode.meta.frames
        chunk = rows[row : row + n]
        assert chunk["episode_index"] == [number] * n and chunk["frame_index"] == list(range(n))
        np.testing.assert_allclose(chunk["timestamp"], np.arange(n) / info["fps"], atol=1e-6)
        np.testing.assert_array_equal(np.stack([np.asarray(im) for im in chunk[IMAGE_KEY]]), episode.steps["rgb"])
        mask = np.stack([np.asarray(im) for im in chunk[MASK_PREFIX + ORACLE]])
        np.testing.assert_array_equal(mask, episode.masks[ORACLE] * 255)
        np.testing.assert_array_equal(np.asarray(chunk["observation.state"]), episode.steps["state"])
        labelled = np.asarray(chunk[LABELLED_KEY])
        if episode.meta.labelled:
            assert labelled[:-1].all() and not labelled[-1]  # the final frame takes no action
            np.testing.assert_array_equal(np.asarray(chunk["action"])[:-1], episode.steps["action"][:-1])
        else:
            assert not labelled.any() and not np.asarray(chunk["action"]).any()
        row += n
    episodes_meta = __import__("pyarrow.parquet").parquet.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes_meta] == [(0, 13), (13, 26), (26, 39)]


def test_video_export_is_within_the_codec_error(collected, tmp_path):
    out = tmp_path / "lerobot"
    export_lerobot(collected, out, "video", show_progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"][IMAGE_KEY]["dtype"] == "video" and info["video_path"]
    import pyarrow.parquet as pq

    errors = []
    for row, episode in zip(pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist(), masklam_episodes(collected)):
        path = out / info["video_path"].format(
            video_key=IMAGE_KEY, chunk_index=row[f"videos/{IMAGE_KEY}/chunk_index"], file_index=row[f"videos/{IMAGE_KEY}/file_index"]
        )
        with av.open(str(path)) as container:
            frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
        assert len(frames) == episode.meta.frames
        assert row[f"videos/{IMAGE_KEY}/to_timestamp"] == pytest.approx(len(frames) / info["fps"])
        errors.append(np.abs(frames.astype(int) - episode.steps["rgb"]).mean())
    # H.264 yuv420 at crf 20 on 32 px frames with a video background: measured 7.4, 7.5 and 13.1 of 255
    # (mean absolute error per episode; yuv420 halves the colour resolution, which costs most at 32 px)
    assert 0 < max(errors) < 16, errors
    # masks stay lossless (PNG) next to lossy frames
    _, rows = read_rows(out)
    np.testing.assert_array_equal(np.asarray(rows[0][MASK_PREFIX + ORACLE]), masklam_episodes(collected)[0].masks[ORACLE][0] * 255)


def test_export_then_ingest_round_trip(collected, tmp_path):
    export_lerobot(collected, tmp_path / "lerobot", "image", show_progress=False)
    # The exported masks are image features too, but not cameras: the one camera is taken without --camera.
    with pytest.raises(UsageError, match="no camera 'observation.images.top': choose --camera from observation.image$"):
        ingest(IngestConfig(str(tmp_path / "lerobot"), size=32, camera="observation.images.top"), tmp_path / "bad", show_progress=False)
    assert not (tmp_path / "bad").exists()
    info = ingest(IngestConfig(str(tmp_path / "lerobot"), size=32), tmp_path / "back", show_progress=False)
    assert info["source"]["camera"] == IMAGE_KEY
    assert info["source"]["kind"] == "lerobot" and info["splits"]["train"]["labelled_episodes"] == 2  # train + test ones
    # The masks come back as mask sources of the same names, bit-exact, not as a camera and not dropped.
    original = open_dataset(collected).info["mask_sources"]
    assert info["mask_sources"].keys() == original.keys() == {ORACLE}
    assert info["mask_sources"][ORACLE]["kind"] == original[ORACLE]["kind"]
    assert info["mask_sources"][ORACLE]["restored_from"] == MASK_PREFIX + ORACLE
    back = list(open_dataset(tmp_path / "back").records("train", mask_sources=(ORACLE,)))
    assert len(back) == 3
    for got, want in zip(back, masklam_episodes(collected)):
        np.testing.assert_array_equal(got.steps["rgb"], want.steps["rgb"])
        np.testing.assert_array_equal(got.masks[ORACLE], want.masks[ORACLE])
        np.testing.assert_array_equal(got.steps["state"], want.steps["state"])
        np.testing.assert_array_equal(got.steps["source_frame"], np.arange(want.meta.frames))  # the LeRobot frame_index
        assert got.meta.labelled == want.meta.labelled
        if want.meta.labelled:
            np.testing.assert_array_equal(got.steps["action"][:-1], want.steps["action"][:-1])
    coverage = np.mean([r.masks[ORACLE].mean() for r in back])
    assert info["mask_sources"][ORACLE]["coverage"] == pytest.approx(coverage, abs=1e-6)
    # At another size the masks take the frames' crop and scale (majority of each pixel's area).
    small = ingest(IngestConfig(str(tmp_path / "lerobot"), size=16, test_episodes=1), tmp_path / "small", show_progress=False)
    assert small["mask_sources"].keys() == {ORACLE}
    record = next(open_dataset(tmp_path / "small").records("train", mask_sources=(ORACLE,)))
    assert record.masks[ORACLE].shape == (record.meta.frames, 16, 16) and set(np.unique(record.masks[ORACLE])) <= {0, 1}
    # and a second export of the re-ingested data carries them again
    export_lerobot(tmp_path / "back", tmp_path / "again", "image", show_progress=False)
    again, rows = read_rows(tmp_path / "again")
    assert MASK_PREFIX + ORACLE in again["features"]
    np.testing.assert_array_equal(np.asarray(rows[0][MASK_PREFIX + ORACLE]), masklam_episodes(collected)[0].masks[ORACLE][0] * 255)


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory) -> Path:
    """Two episodes of cartpole-swingup, whose action has one dimension, with oracle masks."""
    root = tmp_path_factory.mktemp("cartpole") / "sim"
    spec = EnvSpec("dmc:cartpole-swingup", RenderSpec(size=32), distractor_preset("none"), episode_steps=8)
    collect(CollectConfig(env=spec, episodes=2, test_episodes=0, seed=3), root, show_progress=False)
    return root


def test_a_one_dimensional_action_exports_and_comes_back(cartpole, tmp_path):
    """cartpole's action has one dimension: LeRobot keeps it as a plain column (it once failed in pyarrow)."""
    export_lerobot(cartpole, tmp_path / "lerobot", "image", show_progress=False)
    info, rows = read_rows(tmp_path / "lerobot")
    assert info["features"]["action"]["shape"] == [1] and rows.features["action"].dtype == "float32"
    ingest(IngestConfig(str(tmp_path / "lerobot"), size=32), tmp_path / "back", show_progress=False)
    back = list(open_dataset(tmp_path / "back").records("train", mask_sources=()))
    for got, want in zip(back, masklam_episodes(cartpole)):
        assert got.steps["action"].shape == want.steps["action"].shape == (9, 1)
        np.testing.assert_array_equal(got.steps["action"][:-1], want.steps["action"][:-1])


def test_an_ingested_videos_source_frames_and_times_survive_export_and_re_ingest(tmp_path):
    """A variable-rate video's own frame times are not LeRobot's timestamp (frame_index / fps): they travel as
    source_frame / source_time columns and come back on re-ingest."""
    from fractions import Fraction

    videos = tmp_path / "videos"
    videos.mkdir()
    pts = [0, 40, 120, 160, 300, 340, 380, 500, 540, 580]  # ms: gaps of 40 to 160
    with av.open(str(videos / "vfr.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"threads": "1"})
        stream.width = stream.height = 16
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    ingest(IngestConfig(str(videos), size=16, test_episodes=0), tmp_path / "data", show_progress=False)
    export_lerobot(tmp_path / "data", tmp_path / "lerobot", "image", show_progress=False)
    ingest(IngestConfig(str(tmp_path / "lerobot"), size=16, test_episodes=0), tmp_path / "back", show_progress=False)
    original, back = (next(open_dataset(tmp_path / d).records("train", mask_sources=())) for d in ("data", "back"))
    np.testing.assert_array_equal(back.steps["source_frame"], original.steps["source_frame"])
    np.testing.assert_allclose(back.steps["source_time"], np.array(pts) / 1000, atol=1e-9)
    np.testing.assert_array_equal(back.steps["source_time"], original.steps["source_time"])


def test_export_refuses_a_non_empty_folder(collected, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        export_lerobot(collected, tmp_path / "taken", "image", show_progress=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    # --overwrite replaces masklam's own export only, never a folder of the user's or a file put into an export
    with pytest.raises(UsageError, match="not a LeRobot export of masklam's"):
        export_lerobot(collected, tmp_path / "taken", "image", overwrite=True, show_progress=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    export_lerobot(collected, tmp_path / "export", "image", show_progress=False)
    (tmp_path / "export" / "meta" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds meta/notes.txt, which masklam did not write"):
        export_lerobot(collected, tmp_path / "export", "image", overwrite=True, show_progress=False)
    (tmp_path / "export" / "meta" / "notes.txt").unlink()
    before = (tmp_path / "export" / "meta" / "info.json").read_bytes()
    export_lerobot(collected, tmp_path / "export", "image", overwrite=True, show_progress=False)  # its own: replaced
    assert (tmp_path / "export" / "meta" / "info.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".masklam-tmp-")]  # no staging left behind


# --- LeRobot's own loader, LeRobotDataset, in the LeRobot venv -------------------------------------------
@pytest.fixture(scope="module")
def no_action_video(tmp_path_factory) -> Path:
    """An mp4 without actions (16 frames at 10 fps, each frame unlike the others), ingested at 32 px."""
    root = tmp_path_factory.mktemp("video")
    (root / "videos").mkdir()
    with av.open(str(root / "videos" / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "10", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for t in range(16):
            frame = np.zeros((32, 48, 3), np.uint8)
            frame[..., 2] = 12 * t  # the frame's own blue level
            frame[8:24, 2 * t : 2 * t + 10] = (255, 220, 0)  # and a block moving right
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    ingest(IngestConfig(str(root / "videos"), size=32), root / "data", show_progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def lerobot_venv() -> str:
    return lerobot_python()


@pytest.fixture(scope="module")
def lerobot_loaded(lerobot_venv, collected, cartpole, no_action_video, tmp_path_factory) -> dict:  # the venv first: it may skip
    """LeRobotDataset over four exports, in one LeRobot process (its imports take seconds): per export, the
    JSON lerobot_check.py printed ("error" set if LeRobot raised), the items' arrays, the masklam episodes."""
    from typer.testing import CliRunner

    from masklam.cli import app

    root = tmp_path_factory.mktemp("lerobot")
    exports = {"cheetah": (collected, "image"), "cartpole": (cartpole, "image"), "video": (no_action_video, "image"), "mp4": (no_action_video, "video")}
    for name, (data, frames_as) in exports.items():  # `masklam export`, in this process
        done = CliRunner().invoke(app, ["export", str(data), "--out", str(root / name), "--frames", frames_as, "--no-progress"])
        assert done.exit_code == 0, done.output
    report = run_lerobot(root, "load", str(root), *(str(root / name) for name in list(exports)[:3]), f"{root / 'mp4'}=pyav")
    loaded = {}
    for position, (name, (data, _)) in enumerate(exports.items()):
        result = report["datasets"][position]
        arrays = dict(np.load(root / f"{position}.npz")) if result["error"] is None else {}
        loaded[name] = {
            **result,
            "versions": report["versions"],
            "arrays": arrays,
            "masklam": masklam_episodes(data),
            "masklam_info": open_dataset(data).info,
        }
    return loaded


def assert_loaded_as_recorded(loaded: dict, frames_exact: bool = True) -> None:
    """Every item LeRobotDataset returned is the masklam record's frame: index, timestamp, image, mask, state, action."""
    assert loaded["error"] is None, loaded["error"]
    episodes, got, info = loaded["masklam"], loaded["arrays"], loaded["masklam_info"]
    fps, action_dim = info["fps"], info["features"]["action"]["shape"][0]
    assert loaded["episodes"] == len(episodes) and loaded["frames"] == sum(e.meta.frames for e in episodes) and loaded["fps"] == fps
    first = 0
    for number, episode in enumerate(episodes):
        n, rows = episode.meta.frames, slice(first, first + episode.meta.frames)
        np.testing.assert_array_equal(got["episode_index"][rows], number)
        np.testing.assert_array_equal(got["frame_index"][rows], np.arange(n))
        np.testing.assert_array_equal(got["index"][rows], np.arange(first, first + n))
        np.testing.assert_allclose(got["timestamp"][rows], np.arange(n) / fps, rtol=0, atol=1e-6)  # float32 seconds
        if "source_time" in episode.steps:  # an ingested video: the time its player shows the frame
            np.testing.assert_allclose(got["timestamp"][rows], episode.steps["source_time"], rtol=0, atol=1e-6)
        # images: float32 in [0, 1], channels first (value / 255, so exact for the PNG frames)
        images = np.rint(got[IMAGE_KEY][rows] * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        if frames_exact:
            np.testing.assert_array_equal(images, episode.steps["rgb"])
        for source, mask in episode.masks.items():
            np.testing.assert_array_equal(got[MASK_PREFIX + source][rows][:, 0], mask.astype(np.float32))
        if "state" in episode.steps:
            np.testing.assert_array_equal(got["observation.state"][rows], episode.steps["state"].astype(np.float32))
        if action_dim == 0:
            assert "action" not in got and LABELLED_KEY not in got  # no action feature, not zeros
        else:
            labelled = np.full(n, episode.meta.labelled)
            labelled[-1] = False  # the final frame takes no action
            np.testing.assert_array_equal(got[LABELLED_KEY][rows], labelled)
            action = got["action"][rows].reshape(n, -1)  # LeRobot returns a one-element feature as a scalar
            if episode.meta.labelled:  # an unlabelled record has no action; LeRobot has zeros there
                np.testing.assert_array_equal(action[:-1], episode.steps["action"][:-1])
            assert not action[~labelled].any() and action.shape[1] == action_dim
        first += n


def test_lerobot_dataset_loads_the_export(lerobot_loaded):
    """A distracting cheetah: 6-dim actions, an unlabelled episode, oracle masks, train and test."""
    loaded = lerobot_loaded["cheetah"]
    assert loaded["frames"] == 39 and set(loaded["tasks"]) == {"dmc:cheetah-run"}
    assert_loaded_as_recorded(loaded)


def test_lerobot_dataset_loads_a_one_dimensional_action(lerobot_loaded):
    """cartpole-swingup: LeRobot returns its 1-dim action as one float per frame."""
    loaded = lerobot_loaded["cartpole"]
    assert loaded["arrays"]["action"].shape == (18,) and loaded["arrays"]["observation.state"].shape == (18, 5)
    assert_loaded_as_recorded(loaded)


def test_lerobot_dataset_loads_an_ingested_video_without_actions(lerobot_loaded):
    """An mp4 with no actions: LeRobot returns its frames and times, and no action (not zeros)."""
    loaded = lerobot_loaded["video"]
    assert loaded["frames"] == 16 and loaded["fps"] == 10
    assert sorted(loaded["arrays"]) == ["episode_index", "frame_index", "index", IMAGE_KEY, "source_frame", "source_time", "task_index", "timestamp"]
    assert_loaded_as_recorded(loaded)
    record = loaded["masklam"][0]  # where each frame came from in the mp4, as LeRobot returns the columns
    np.testing.assert_array_equal(loaded["arrays"]["source_frame"].reshape(-1), record.steps["source_frame"])
    np.testing.assert_allclose(loaded["arrays"]["source_time"].reshape(-1), record.steps["source_time"], atol=1e-9)


def test_lerobot_dataset_decodes_the_video_export_with_pyav(lerobot_loaded):
    """--frames video, read by LeRobotDataset(video_backend="pyav"): each frame is its own, within the codec's error."""
    loaded = lerobot_loaded["mp4"]
    if loaded["error"] and not loaded["versions"]["video_reader"]:
        pytest.skip(
            f"LeRobot's pyav backend is torchvision.io.VideoReader, which torchvision {loaded['versions']['torchvision']} lacks "
            f"({loaded['error'][:80]}...): run with MASKLAM_LEROBOT_PYTHON set to a plain `pip install lerobot==0.4.4` venv (docs/install.md)"
        )
    assert_loaded_as_recorded(loaded, frames_exact=False)
    want = loaded["masklam"][0].steps["rgb"].astype(int)
    got = np.rint(loaded["arrays"][IMAGE_KEY] * 255).astype(int).transpose(0, 2, 3, 1)
    errors = np.abs(got[:, None] - want[None]).mean(axis=(2, 3, 4))  # (LeRobot frame, masklam frame)
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(len(want)))  # no frame shifted, dropped or repeated
    # libx264 yuv420p at crf 20, 32 px: measured 0.5-2.7 of 255 per frame (mean absolute error), the nearest
    # other frame 8.2-17 (lerobot 0.4.4, torch 2.10, torchvision 0.25, PyAV 15.1)
    assert 0 < errors.diagonal().max() < 6, errors.diagonal()


@pytest.mark.slow
def test_a_dataset_lerobot_wrote_is_ingested_segmented_trained_and_probed(tmp_path):
    source = tmp_path / "arm"  # three episodes written by LeRobotDataset.create / add_frame / save_episode / finalize
    assert run_lerobot(tmp_path, "write", str(source))["frames"] == 8 + 9 + 10
    data = tmp_path / "data"
    info = ingest(IngestConfig(str(source), size=32, camera="observation.images.front", test_episodes=1, seed=0), data, show_progress=False)
    assert info["fps"] == 10 and info["action_names"] == ["dx", "dy"] and info["state_names"] == ["x", "y", "gripper"]
    assert info["source"]["camera"] == "observation.images.front"
    assert info["splits"]["train"]["frames"] + info["splits"]["test"]["frames"] == 8 + 9 + 10
    dataset = open_dataset(data)
    tasks = {meta.extra["task"] for split in ("train", "test") for meta in dataset.index(split)}
    assert tasks == {"push the block", "wave"}

    sam = pytest.importorskip("segment_anything", reason="the sam extra is not installed: the segment step is skipped")
    del sam
    import torch

    from masklam.segment.sam import SamArchitecture

    torch.manual_seed(0)
    checkpoint = tmp_path / "sam_small.pth"
    small = SamArchitecture(
        image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,), decoder_depth=2, decoder_mlp_dim=64
    )
    torch.save(small.build().state_dict(), checkpoint)
    from masklam.segment.run import SegmentConfig, segment_dataset

    segment_dataset(SegmentConfig.from_options(str(data), "sam_vit_h", ["16,12"], checkpoint=str(checkpoint), name="sam_point"), show_progress=False)
    assert "sam_point" in open_dataset(data).info["mask_sources"]

    from masklam.configs import load_config
    from masklam.eval.probe import probe_run
    from masklam.train.lam import LAMTrainConfig, train_lam
    from masklam.train.presets import trainer_file

    overrides = [f'data.path="{data}"', 'data.mask_source="sam_point"', "data.batch_size=4", "log_every=2", "optim.steps=3", "model.latent_dim=8"]
    train_lam(load_config(LAMTrainConfig, trainer_file("masklam-tiny"), overrides), tmp_path / "run", show_progress=False)
    result = probe_run(tmp_path / "run", str(data), windows=16, batch_size=4, show_progress=False)
    assert 0 < result["action_nmse"] < 100


@pytest.mark.slow
def test_a_lerobot_dataset_on_the_hub_is_ingested_by_its_hf_id(collected, tmp_path):
    """hf://datasets/OWNER/NAME: the real huggingface_hub client downloads it from the local stand-in Hub."""
    import os
    import subprocess
    import sys

    from huggingface_hub import HfApi

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hub_server import FakeHub

    export_lerobot(collected, tmp_path / "lerobot", "image", show_progress=False)
    with FakeHub(lfs_threshold=None) as hub:
        api = HfApi(endpoint=hub.endpoint, token="secret")
        api.create_repo("me/arm", repo_type="dataset")
        api.upload_folder(repo_id="me/arm", repo_type="dataset", folder_path=tmp_path / "lerobot")
        env = {**os.environ, **hub.env(home=tmp_path / "hf-home", token="secret")}
        args = ["ingest", "hf://datasets/me/arm", "--camera", IMAGE_KEY, "--size", "32", "--out", str(tmp_path / "data"), "--no-progress"]
        done = subprocess.run([sys.executable, "-m", "masklam.cli", *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    info = open_dataset(tmp_path / "data").info
    assert info["source"]["kind"] == "lerobot" and info["source"]["repo_id"] == "me/arm" and info["source"]["revision"] == "main"
    assert info["splits"]["train"]["frames"] == 39
