"""`masklam ingest` from video files and image sequences: a simulated rollout rendered to mp4 with PyAV's
libx264 encoder, ingested back; bad input refused in one line with exit code 2 and nothing written."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.data.ingest import IngestConfig, ingest
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.errors import UsageError

FPS = 20


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode (T, H, W, 3) uint8 frames with libx264 (a standard encoder nobody here wrote)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def moving_square(frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 2] = np.linspace(0, 200, width, dtype=np.uint8)
    x = np.clip(np.cumsum(rng.integers(-2, 3, frames)) + width // 2, 8, width - 8)
    for t in range(frames):
        video[t, 10:26, x[t] - 6 : x[t] + 6] = (255, 255, 0)
    return video


def masklam(*args: str):
    """The command line, in this process (a fresh interpreter costs seconds of imports per call)."""
    from typer.testing import CliRunner

    from masklam.cli import app

    result = CliRunner().invoke(app, list(args))
    result.returncode = result.exit_code
    return result


@pytest.fixture(scope="module")
def rollout_videos(tmp_path_factory) -> tuple[Path, dict]:
    """Three collected cheetah episodes (32 px), each rendered to an mp4 with its actions as the sidecar."""
    root = tmp_path_factory.mktemp("rollout")
    spec = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=20)
    collect(CollectConfig(env=spec, episodes=3, test_episodes=0, seed=1), root / "sim", show_progress=False)
    dataset = open_dataset(root / "sim")
    folder = root / "videos"
    folder.mkdir()
    episodes = {}
    for record in dataset.records("train", mask_sources=()):
        name = f"rollout{record.meta.episode}"
        write_mp4(folder / f"{name}.mp4", record.steps["rgb"])
        np.save(folder / f"{name}.actions.npy", record.steps["action"][:-1])  # (T-1, A): one per transition
        episodes[name] = record
    return folder, {"episodes": episodes, "fps": dataset.info["fps"]}


def test_a_rendered_rollout_comes_back_with_its_frames_actions_and_rate(rollout_videos, tmp_path):
    folder, sim = rollout_videos
    info = ingest(IngestConfig(str(folder), size=32, test_episodes=1, seed=0), tmp_path / "data", show_progress=False)
    assert info["fps"] == FPS and info["simulator"] is False and info["source"]["kind"] == "video"
    assert info["features"]["rgb"]["shape"] == [32, 32, 3] and info["features"]["action"]["shape"] == [6]
    assert info["splits"]["train"]["episodes"] == 2 and info["splits"]["test"]["episodes"] == 1
    assert info["splits"]["train"]["labelled_episodes"] == 2 and info["mask_sources"] == {}
    dataset = open_dataset(tmp_path / "data")
    for split in ("train", "test"):
        for record in dataset.records(split, mask_sources=()):
            original = sim["episodes"][record.meta.extra["source"].removesuffix(".mp4")]
            assert record.meta.frames == original.meta.frames == 21
            np.testing.assert_array_equal(record.steps["action"][:-1], original.steps["action"][:-1])
            assert np.isnan(record.steps["action"][-1]).all()
            # Same size in and out: the frames are exactly what PyAV decodes, and within the codec's error of
            # the rendered ones (yuv420 halves the colour resolution: measured 10.0 of 255 at 32 px).
            with av.open(str(folder / record.meta.extra["source"])) as container:
                decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
            np.testing.assert_array_equal(record.steps["rgb"], decoded)
            error = np.abs(record.steps["rgb"].astype(int) - original.steps["rgb"]).mean()
            assert 0 < error < 16, f"codec error {error:.2f} of 255"


def test_subsampling_chunking_and_square_modes(tmp_path):
    write_mp4(tmp_path / "wide.mp4", moving_square(40))
    config = IngestConfig(str(tmp_path / "wide.mp4"), size=16, fps=10, chunk_seconds=0.5, min_frames=3)
    info = ingest(config, tmp_path / "out", show_progress=False)
    # 40 frames at 20 fps -> 20 at 10 fps -> 4 episodes of 5 frames (0.5 s)
    assert info["fps"] == 10 and info["splits"]["train"]["episodes"] == 4 and info["splits"]["train"]["frames"] == 20
    assert info["splits"]["train"]["labelled_episodes"] == 0 and info["features"]["action"]["shape"] == [0]
    records = list(open_dataset(tmp_path / "out").records("train", mask_sources=()))
    assert [r.meta.extra["source_frames"] for r in records][:2] == [[0, 9], [10, 19]]
    crop = ingest(IngestConfig(str(tmp_path / "wide.mp4"), size=16), tmp_path / "crop", show_progress=False)
    squash = ingest(IngestConfig(str(tmp_path / "wide.mp4"), size=16, resize="squash"), tmp_path / "squash", show_progress=False)
    crop_rgb = next(open_dataset(tmp_path / "crop").records("train", mask_sources=())).steps["rgb"]
    squash_rgb = next(open_dataset(tmp_path / "squash").records("train", mask_sources=())).steps["rgb"]
    assert crop["source"]["settings"]["resize"] == "crop" and squash["source"]["settings"]["resize"] == "squash"
    # the blue ramp spans the whole width: squashing keeps both ends, the centre crop loses them
    assert squash_rgb[0, 8, 0, 2] < crop_rgb[0, 8, 0, 2] and squash_rgb[0, 8, -1, 2] > crop_rgb[0, 8, -1, 2]


@pytest.mark.parametrize("backend", ["webdataset", "zarr"])
def test_freshly_ingested_data_verifies_every_checksum(tmp_path, backend):
    """verify said "no checksums: written by an older masklam" on new ingests; on Zarr, a video's 0-wide action
    array then crashed the chunk count."""
    from masklam.data.verify import verify_dataset

    write_mp4(tmp_path / "clip.mp4", moving_square(12))
    ingest(IngestConfig(str(tmp_path / "clip.mp4"), size=16, backend=backend, test_episodes=0), tmp_path / "out", show_progress=False)
    verdict = verify_dataset(tmp_path / "out")
    assert verdict.problems == [] and "every checksum verified" in verdict.summary() and "no checksums" not in verdict.summary()


def test_image_sequences_are_videos_too(tmp_path):
    frames = moving_square(6)
    for clip in ("walk", "run"):
        (tmp_path / "src" / clip).mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp_path / "src" / clip / f"{t:04d}.png")
    np.save(tmp_path / "src" / "run.actions.npy", np.ones((6, 3), np.float32))  # (T, A): the last is ignored
    info = ingest(IngestConfig(str(tmp_path / "src"), size=24, image_fps=12, backend="zarr"), tmp_path / "out", show_progress=False)
    assert info["fps"] == 12 and info["splits"]["train"]["frames"] == 12 and info["splits"]["train"]["labelled_episodes"] == 1
    records = {r.meta.extra["source"]: r for r in open_dataset(tmp_path / "out").records("train", mask_sources=())}
    assert "action" not in records["walk"].steps and records["run"].steps["action"].shape == (6, 3)
    assert records["walk"].steps["rgb"].shape == (6, 24, 24, 3)


def test_byte_identical_and_resumable(tmp_path, tree_files):
    (tmp_path / "src").mkdir()
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        write_mp4(tmp_path / "src" / f"{name}.mp4", moving_square(12, seed=seed))
    config = IngestConfig(str(tmp_path / "src"), size=16, test_episodes=1, episodes_per_shard=1, seed=5)
    ingest(config, tmp_path / "out1", show_progress=False)
    ingest(config, tmp_path / "out2", show_progress=False)
    first, second = tree_files(tmp_path / "out1"), tree_files(tmp_path / "out2")
    assert first.keys() == second.keys() and all(first[k] == second[k] for k in first if k != "collect.json")
    (tmp_path / "out2" / "index" / "train" / "shard-000001.json").unlink()  # as if interrupted
    (tmp_path / "out2" / "info.json").unlink()
    ingest(config, tmp_path / "out2", show_progress=False)
    assert tree_files(tmp_path / "out2") == second


def test_label_budget_and_seeded_split(rollout_videos, tmp_path):
    folder, _ = rollout_videos
    info = ingest(IngestConfig(str(folder), size=32, labelled_episodes=1), tmp_path / "one", show_progress=False)
    assert info["splits"]["train"]["labelled_episodes"] == 1 and info["action_stats"]["transitions"] == 20
    with pytest.raises(UsageError, match="only 3 train episodes have actions"):
        ingest(IngestConfig(str(folder), size=32, labelled_episodes=4), tmp_path / "four", show_progress=False)
    assert not (tmp_path / "four").exists()


def one_line_exit_2(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    one_line_exit_2(masklam("ingest", str(tmp_path / "missing.mp4"), "--out", str(out)), "does not exist")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 10)
    one_line_exit_2(masklam("ingest", str(tmp_path / "broken.mp4"), "--out", str(out)), "cannot read video")
    (tmp_path / "short").mkdir()
    write_mp4(tmp_path / "short" / "clip.mp4", moving_square(2))
    one_line_exit_2(masklam("ingest", str(tmp_path / "short"), "--out", str(out)), "fewer than --min-frames 3")
    write_mp4(tmp_path / "long.mp4", moving_square(10))
    np.save(tmp_path / "long.actions.npy", np.zeros((7, 2), np.float32))
    one_line_exit_2(masklam("ingest", str(tmp_path / "long.mp4"), "--out", str(out)), "(9, A)", "(10, A)")
    assert not out.exists()


def test_no_simulator_means_no_oracle_and_no_evaluate(tmp_path):
    write_mp4(tmp_path / "clip.mp4", moving_square(8))
    ingest(IngestConfig(str(tmp_path / "clip.mp4"), size=16), tmp_path / "out", show_progress=False)
    one_line_exit_2(masklam("segment", str(tmp_path / "out"), "--model", "oracle"), "no simulator", "--point/--box")


@pytest.mark.slow
def test_the_probe_runs_on_ingested_videos_with_sidecar_actions(rollout_videos, tmp_path):
    """Train a tiny LAPO (no masks: an ingested dataset has none until `segment`), probe it on the test video and
    score its decoded policy there."""
    from masklam.configs import load_config
    from masklam.eval.probe import probe_run
    from masklam.train.lam import LAMTrainConfig, train_lam
    from masklam.train.presets import trainer_file

    folder, _ = rollout_videos
    data = tmp_path / "data"
    ingest(IngestConfig(str(folder), size=32, test_episodes=1), data, show_progress=False)
    overrides = [f'data.path="{data}"', "data.batch_size=8", "log_every=5", "optim.steps=4", "model.latent_dim=8"]
    train_lam(load_config(LAMTrainConfig, trainer_file("lapo-tiny"), overrides), tmp_path / "run", show_progress=False)
    result = probe_run(tmp_path / "run", str(data), windows=40, batch_size=8, show_progress=False)
    assert result["windows"] == {"train": 40, "test": 10}
    assert 0 < result["action_nmse"] < 10 and result["distractor"] == {}
    if result["train_episodes"] >= 3:  # a fifth of them (rounded up) is held out and scored in-pool
        assert 0 < result["in_pool_nmse"] < 10 and len(result["in_pool_episodes"]) >= 1
    else:  # too few to hold one out: no in-pool score rather than one on episodes the stages learnt from
        assert result["in_pool_nmse"] is None and result["in_pool_episodes"] == []
    # and evaluate refuses: there is no simulator to roll the policy out in
    from masklam.eval.rollout import evaluate_run

    with pytest.raises(UsageError, match="no simulator"):
        evaluate_run(tmp_path / "run", episodes=1)
    # what it has instead: the decoded policy's action error on the recorded test video
    from masklam.eval.offline import score_actions
    from masklam.train.loop import OptimConfig
    from masklam.train.stages import StageConfig, train_bc, train_decoder

    stage = StageConfig(preset="tiny", batch_size=8, optim=OptimConfig(steps=2))
    train_bc(tmp_path / "run", stage, show_progress=False)
    train_decoder(tmp_path / "run", stage, show_progress=False)
    scores = score_actions(tmp_path / "run", show_progress=False)
    test_windows = sum(meta.frames - 1 for meta in open_dataset(data).index("test"))
    assert scores["test"]["windows"] == test_windows and 0 < scores["test"]["decoded_policy"] < 10
    assert (scores["in_pool"] is None) == (result["in_pool_nmse"] is None)


def test_frames_are_cropped_then_scaled_by_ffmpeg_alike_for_videos_and_images(tmp_path):
    from masklam.data.ingest import FrameScaler, decode_video

    video = moving_square(12, height=48, width=64)
    write_mp4(tmp_path / "clip.mp4", video)
    keep = np.array([0, 3, 4, 11])
    frames = decode_video(tmp_path / "clip.mp4", keep, 32, "crop")
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    # crop: the centre 48x48 square, area-averaged to 32 px; PIL's box filter is the same average, so they agree
    # up to the codec's error; squash (the whole width) does not.
    centre = video[keep][:, :, 8:56]
    pil = np.stack([np.asarray(Image.fromarray(frame).resize((32, 32), Image.BOX)) for frame in centre]).astype(int)
    assert np.abs(pil - frames).mean() < 4
    assert np.abs(pil - decode_video(tmp_path / "clip.mp4", keep, 32, "squash")).mean() > 8
    scaler = FrameScaler(32, "crop")  # image files go through the same filters
    images = np.stack([scaler.image(Image.fromarray(frame)) for frame in video[keep]]).astype(int)
    assert np.abs(images - pil).mean() < 3
    assert scaler.image(Image.fromarray(video[0, :32])).shape == (32, 32, 3)  # another geometry: a new graph
