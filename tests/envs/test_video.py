"""Background videos: built-in source, bounce playback, folder layouts and their errors."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklam.envs.video import BUILTIN, MAX_CLIP_FRAMES, BackgroundVideo, VideoPool, open_video_pools
from masklam.errors import UsageError

# --------------------------------------------------------------------------------------------------- builtin


@pytest.fixture(scope="module")
def builtin() -> dict[str, VideoPool]:
    return open_video_pools(BUILTIN)


def test_builtin_pools_are_disjoint_and_mix_photos_and_textures(builtin: dict[str, VideoPool]) -> None:
    train, test = builtin["train"], builtin["test"]
    assert len(train) > len(test) > 0
    assert not set(train.names) & set(test.names)
    for pool in (train, test):
        assert any(name.startswith(("noise-", "blobs-", "gratings-")) for name in pool.names)
        assert any("-" not in name for name in pool.names)  # photos


@pytest.mark.parametrize("size", [32, 48, 64])
def test_builtin_frames_shape_and_smooth_motion(builtin: dict[str, VideoPool], size: int) -> None:
    # One photo and one texture per split keeps this fast; every clip is covered at 32 px below.
    for pool in builtin.values():
        for index in (0, len(pool) - 1):
            frames = pool.frames(index, size)
            assert frames.dtype == np.uint8
            assert frames.shape[1:] == (size, size, 3)
            assert 100 <= len(frames) <= 150
            _assert_smooth_motion(frames)


def test_every_builtin_clip_moves_smoothly(builtin: dict[str, VideoPool]) -> None:
    for pool in builtin.values():
        for index in range(len(pool)):
            _assert_smooth_motion(pool.frames(index, 32))


def _assert_smooth_motion(frames: np.ndarray) -> None:
    step = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    far = np.abs(frames[0].astype(np.int16) - frames[len(frames) // 2]).mean()
    assert step.min() > 0.05  # every step moves
    assert step.max() < 40  # consecutive frames stay alike
    assert far > step.mean()  # and drift apart over the clip


def test_builtin_is_deterministic_across_opens_and_processes(builtin: dict[str, VideoPool]) -> None:
    script = "from masklam.envs.video import open_video_pools; from tests.envs.test_video import _digest; print(_digest(open_video_pools('builtin')))"
    other_process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    # A fresh pool (not the shared cached one) must regenerate the same bytes.
    fresh = pickle.loads(pickle.dumps(builtin))
    assert other_process.stdout.strip() == _digest(fresh)
    for split in ("train", "test"):
        np.testing.assert_array_equal(fresh[split].frames(1, 32), builtin[split].frames(1, 32))


def _digest(pools: dict[str, VideoPool]) -> str:
    """Hash of the first and last clip of each split at 48 px (one photo and one texture each)."""
    clips = [pools[split].frames(i, 48) for split in ("train", "test") for i in (0, len(pools[split]) - 1)]
    return hashlib.sha256(b"".join(clip.tobytes() for clip in clips)).hexdigest()


def test_frames_are_cached_and_read_only(builtin: dict[str, VideoPool]) -> None:
    pool = builtin["train"]
    first = pool.frames(2, 32)
    assert pool.frames(2, 32) is first
    assert not first.flags.writeable


def test_bad_size_is_a_usage_error(builtin: dict[str, VideoPool]) -> None:
    with pytest.raises(UsageError, match="positive integer"):
        builtin["train"].frames(0, 0)
    with pytest.raises(UsageError, match="positive integer"):
        BackgroundVideo(builtin["train"], 32.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- BackgroundVideo


def _counting_pool(*lengths: int, size: int = 4) -> VideoPool:
    """Clips whose frame t is filled with the value t (and clip c's channel 1 with c): frames identify themselves."""
    arrays = []
    for clip, length in enumerate(lengths):
        frames = np.zeros((length, size, size, 3), np.uint8)
        frames[..., 0] = np.arange(length)[:, None, None]
        frames[..., 1] = clip
        arrays.append(frames)
    return VideoPool.from_arrays([f"clip{c}" for c in range(len(lengths))], arrays)


def _play(video: BackgroundVideo, seed: int, steps: int) -> list[int]:
    frames = [video.reset(np.random.default_rng(seed))] + [video.step() for _ in range(steps)]
    return [int(frame[0, 0, 0]) for frame in frames]


def test_bounce_sequence_is_exact() -> None:
    video = BackgroundVideo(_counting_pool(4), size=4)
    video.reset(np.random.default_rng(0))
    video.frame, video.direction = 2, 1
    assert [int(video.step()[0, 0, 0]) for _ in range(8)] == [3, 2, 1, 0, 1, 2, 3, 2]
    assert video.direction == -1

    video.frame, video.direction = 1, -1
    assert [int(video.step()[0, 0, 0]) for _ in range(4)] == [0, 1, 2, 3]


def test_reset_draws_clip_start_and_direction_from_the_rng_in_order() -> None:
    pool = _counting_pool(5, 7, 9)
    video = BackgroundVideo(pool, size=4)
    for seed in range(5):
        first = video.reset(np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        clip = int(rng.integers(3))
        start = int(rng.integers((5, 7, 9)[clip]))
        direction = int(rng.choice([-1, 1]))
        assert (video.video, video.frame, video.direction) == (clip, start, direction)
        assert (first[0, 0, 0], first[0, 0, 1]) == (start, clip)


def test_playback_is_deterministic_and_covers_both_directions() -> None:
    pool = _counting_pool(5, 6, 3)
    video = BackgroundVideo(pool, size=4)
    assert _play(video, 7, 30) == _play(BackgroundVideo(pool, size=4), 7, 30)
    draws = set()
    for seed in range(40):
        video.reset(np.random.default_rng(seed))
        draws.add((video.video, video.direction))
    assert {d for _, d in draws} == {-1, 1}
    assert {v for v, _ in draws} == {0, 1, 2}


def test_single_frame_clip_stays() -> None:
    video = BackgroundVideo(_counting_pool(1), size=4)
    assert _play(video, 3, 5) == [0] * 6


def test_step_before_reset_fails() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        BackgroundVideo(_counting_pool(3), size=4).step()


def test_array_pool_resizes_to_the_requested_size() -> None:
    pool = VideoPool.from_arrays(["wide"], [np.full((2, 20, 40, 3), 200, np.uint8)])
    frames = pool.frames(0, 8)
    assert frames.shape == (2, 8, 8, 3)
    assert (frames == 200).all()


# ---------------------------------------------------------------------------------------------- folder sources


def _frame_folder(folder: Path, count: int = 3, suffix: str = ".png", size: tuple[int, int] = (24, 16)) -> Path:
    folder.mkdir(parents=True)
    for t in range(count):
        Image.new("RGB", size, (10 * t, 100, 50)).save(folder / f"{t:05d}{suffix}")
    return folder


def _video_file(path: Path, count: int = 10) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * t, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _davis(root: Path, train: list[str], val: list[str], videos: list[str] | None = None) -> Path:
    for name in videos if videos is not None else train + val:
        _frame_folder(root / "JPEGImages" / "480p" / name, count=2, suffix=".jpg")
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"{name}\n" for name in train))
    (sets / "val.txt").write_text("".join(f"{name}\n" for name in val))
    return root


def test_davis_layout(tmp_path: Path) -> None:
    root = _davis(tmp_path / "davis", ["bear", "boat", "car"], ["dog", "goat"])
    pools = open_video_pools(str(root))
    assert pools["train"].names == ("bear", "boat", "car")
    assert pools["test"].names == ("dog", "goat")
    assert pools["test"].frames(1, 8).shape == (2, 8, 8, 3)


def test_train_test_subfolders_with_frames_and_video(tmp_path: Path) -> None:
    _frame_folder(tmp_path / "train" / "a", suffix=".jpg")
    _frame_folder(tmp_path / "train" / "b", count=2)
    _video_file(tmp_path / "test" / "clip.mp4")
    (tmp_path / "train" / "notes.txt").write_text("not a clip")
    pools = open_video_pools(str(tmp_path))
    assert pools["train"].names == ("a", "b")
    assert pools["test"].names == ("clip.mp4",)
    frames = pools["test"].frames(0, 16)
    assert frames.shape == (10, 16, 16, 3)
    assert frames[-1].mean() > frames[0].mean() + 100  # decoded in order
    assert pools["train"].frames(1, 8).shape == (2, 8, 8, 3)


def test_flat_folder_split_every_fourth_clip(tmp_path: Path) -> None:
    for name in "abcdefghi":
        _frame_folder(tmp_path / name, count=1)
    pools = open_video_pools(str(tmp_path))
    assert pools["test"].names == ("d", "h")
    assert pools["train"].names == ("a", "b", "c", "e", "f", "g", "i")


def test_flat_folder_with_two_clips_holds_out_the_last(tmp_path: Path) -> None:
    _frame_folder(tmp_path / "x", count=1)
    _frame_folder(tmp_path / "y", count=1)
    pools = open_video_pools(str(tmp_path))
    assert (pools["train"].names, pools["test"].names) == (("x",), ("y",))


def test_long_clips_are_capped(tmp_path: Path) -> None:
    folder = tmp_path / "long"
    folder.mkdir()
    tiny = Image.new("RGB", (2, 2))
    for t in range(MAX_CLIP_FRAMES + 5):
        tiny.save(folder / f"{t:05d}.bmp")
    _frame_folder(tmp_path / "short", count=1)
    pools = open_video_pools(str(tmp_path))
    assert len(pools["train"].frames(0, 2)) == MAX_CLIP_FRAMES


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("empty", "no clips found"),
        ("loose_frames", "its own sub-folder"),
        ("one_clip", "add clips or use train/ and test/"),
        ("empty_clip", "holds no frame images"),
        ("no_test", "no test/"),
        ("corrupt_video", "cannot open video"),
        ("davis_no_val", "val.txt is missing"),
        ("davis_unknown", "names video 'ghost'"),
        ("davis_overlap", "is in both"),
        ("davis_empty", "lists no videos"),
        ("davis_no_480p", "JPEGImages/480p"),
    ],
)
def test_bad_layouts_raise_usage_errors(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "source"
    if layout == "file":
        root.write_text("x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "loose_frames":
        _frame_folder(root)
    elif layout == "one_clip":
        _frame_folder(root / "only")
    elif layout == "empty_clip":
        _frame_folder(root / "a")
        (root / "b").mkdir()
    elif layout == "no_test":
        _frame_folder(root / "train" / "a")
    elif layout == "corrupt_video":
        _frame_folder(root / "a")
        (root / "b.mp4").write_bytes(b"definitely not a video" * 10)
    elif layout == "davis_no_val":
        _davis(root, ["a"], ["b"])
        (root / "ImageSets" / "2017" / "val.txt").unlink()
    elif layout == "davis_unknown":
        _davis(root, ["a"], ["ghost"], videos=["a"])
    elif layout == "davis_overlap":
        _davis(root, ["a", "b"], ["b"], videos=["a", "b"])
    elif layout == "davis_empty":
        _davis(root, ["a"], [], videos=["a"])
    elif layout == "davis_no_480p":
        (root / "JPEGImages").mkdir(parents=True)
    with pytest.raises(UsageError, match=message) as caught:
        open_video_pools(str(root))
    assert "\n" not in str(caught.value) and ": " in str(caught.value)


def test_corrupt_frame_image_fails_when_decoded(tmp_path: Path) -> None:
    _frame_folder(tmp_path / "a")
    _frame_folder(tmp_path / "b")
    (tmp_path / "b" / "00001.png").write_bytes(b"\x89PNG broken")
    pools = open_video_pools(str(tmp_path))  # layout is fine: images are decoded lazily
    with pytest.raises(UsageError, match=r"cannot read frame image .*00001\.png"):
        pools["test"].frames(0, 8)


def test_folder_pools_survive_pickling(tmp_path: Path) -> None:
    _frame_folder(tmp_path / "a")
    _frame_folder(tmp_path / "b")
    pools = pickle.loads(pickle.dumps(open_video_pools(str(tmp_path))))
    assert pools["test"].frames(0, 8).shape == (3, 8, 8, 3)
