"""`masklam export --format lerobot` read back as LeRobot reads it, and LeRobot datasets ingested.

Two readers: ``datasets.Dataset.from_parquet`` with the features of meta/info.json (what ``LeRobotDataset``
does for its data files) and PyAV at the episodes' timestamps (what its video decoders do) always run; the
``lerobot`` package itself is used when it is importable (it cannot be installed beside the test extras: see
docs/install.md for the separate virtual environment these tests also pass in).
"""

from __future__ import annotations

import json
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
    return [dataset.episode(split, meta.episode) for split in ("train", "test") for meta in dataset.index(split) if meta.chunk == 0]


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


def test_a_one_dimensional_action_exports_and_comes_back(tmp_path):
    """cartpole's action has one dimension: LeRobot keeps it as a plain column (it once failed in pyarrow)."""
    spec = EnvSpec("dmc:cartpole-swingup", RenderSpec(size=32), distractor_preset("none"), episode_steps=8)
    collect(CollectConfig(env=spec, episodes=2, test_episodes=0, seed=3), tmp_path / "sim", show_progress=False)
    export_lerobot(tmp_path / "sim", tmp_path / "lerobot", "image", show_progress=False)
    info, rows = read_rows(tmp_path / "lerobot")
    assert info["features"]["action"]["shape"] == [1] and rows.features["action"].dtype == "float32"
    ingest(IngestConfig(str(tmp_path / "lerobot"), size=32), tmp_path / "back", show_progress=False)
    back = list(open_dataset(tmp_path / "back").records("train", mask_sources=()))
    for got, want in zip(back, masklam_episodes(tmp_path / "sim")):
        assert got.steps["action"].shape == want.steps["action"].shape == (9, 1)
        np.testing.assert_array_equal(got.steps["action"][:-1], want.steps["action"][:-1])


def test_export_refuses_a_non_empty_folder(collected, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        export_lerobot(collected, tmp_path / "taken", "image", show_progress=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_lerobot_dataset_loads_the_export(collected, tmp_path):
    lerobot = pytest.importorskip("lerobot.datasets.lerobot_dataset", reason="lerobot is not installed (see docs/install.md)")
    import torch

    export_lerobot(collected, tmp_path / "lerobot", "image", show_progress=False)
    loaded = lerobot.LeRobotDataset("masklam/export", root=tmp_path / "lerobot")
    assert loaded.num_episodes == 3 and len(loaded) == 39 and loaded.fps == open_dataset(collected).info["fps"]
    episodes = masklam_episodes(collected)
    for episode, frame in [(0, 0), (0, 12), (1, 5), (2, 7)]:
        item = loaded[sum(e.meta.frames for e in episodes[:episode]) + frame]
        want = episodes[episode]
        assert int(item["episode_index"]) == episode and int(item["frame_index"]) == frame
        torch.testing.assert_close(item[IMAGE_KEY], torch.from_numpy(want.steps["rgb"][frame]).permute(2, 0, 1).float() / 255)
        torch.testing.assert_close(item[MASK_PREFIX + ORACLE][0], torch.from_numpy(want.masks[ORACLE][frame]).float())
        if bool(item[LABELLED_KEY]):
            torch.testing.assert_close(item["action"], torch.from_numpy(want.steps["action"][frame]))


def lerobot_written(root: Path) -> Path:
    """Three short episodes written by lerobot's own LeRobotDataset.create / add_frame / save_episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.images.front": {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channels"]},
        "observation.images.wrist": {"dtype": "image", "shape": (24, 24, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "gripper"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["dx", "dy"]},
    }
    made = LeRobotDataset.create("local/arm", fps=10, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    for episode in range(3):
        x = 20
        for _t in range(8 + episode):
            frame = np.full((48, 64, 3), 40, np.uint8)
            x = int(np.clip(x + rng.integers(-3, 4), 6, 58))
            frame[10:30, x - 6 : x + 6] = (250, 200, 30)
            made.add_frame(
                {
                    "observation.images.front": frame,
                    "observation.images.wrist": frame[::2, ::2][:24, :24].copy(),
                    "observation.state": np.array([x, 20, episode], np.float32),
                    "action": rng.normal(size=2).astype(np.float32),
                    "task": "push the block" if episode < 2 else "wave",
                }
            )
        made.save_episode()
    made.finalize()
    return root


@pytest.mark.slow
def test_a_dataset_lerobot_wrote_is_ingested_segmented_trained_and_probed(tmp_path):
    pytest.importorskip("lerobot.datasets.lerobot_dataset", reason="lerobot is not installed (see docs/install.md)")
    source = lerobot_written(tmp_path / "arm")
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
