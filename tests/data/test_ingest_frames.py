"""Ingest keeps exactly the frames a decoder shows (issue 29): NTSC rates (30000/1001 ...) lose no frame at the
one-second mark, a variable-rate video keeps every frame, `--fps` follows its documented tick rule, and image
folders are read in natural order. Videos are made here with PyAV's libx264 (B-frames on by default) and every
result is compared with an independent PyAV decode."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from masklam.data.dataset import open_dataset
from masklam.data.ingest import IngestConfig, ingest

SIZE = 32


def numbered_frames(count: int) -> np.ndarray:
    """Frame i shows i in its top rows (bright blocks): which source frame was stored is read back."""
    frames = np.zeros((count, SIZE, SIZE, 3), np.uint8)
    for i in range(count):
        for bit in range(8):
            frames[i, 0:8, bit * 4 : bit * 4 + 4] = 255 if (i >> bit) & 1 else 0
        frames[i, 16:, :, 1] = (7 * i) % 256
    return frames


def frame_number(frame: np.ndarray) -> int:
    return sum(1 << bit for bit in range(8) if frame[2:6, bit * 4 + 1 : bit * 4 + 3].mean() > 127)


def write_video(path: Path, frames: np.ndarray, rate: Fraction, pts: list[int] | None = None) -> None:
    """libx264 at ``rate``; with ``pts`` (in 1/rate units... of the stream's time base 1/1000) a variable rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "0", "threads": "1"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv444p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def decoded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """PyAV's own decode: every frame shown, and its presentation time."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), np.array([f.time for f in frames])


def stored(root: Path) -> list:
    return list(open_dataset(root).records("train", mask_sources=()))


@pytest.mark.parametrize(("rate", "count"), [(Fraction(30000, 1001), 120), (Fraction(24000, 1001), 100), (Fraction(60000, 1001), 130)])
def test_ntsc_rates_keep_every_frame_and_their_exact_rate(tmp_path, rate, count):
    write_video(tmp_path / "clip.mp4", numbered_frames(count), rate)
    reference, _ = decoded(tmp_path / "clip.mp4")
    info = ingest(IngestConfig(str(tmp_path / "clip.mp4"), size=SIZE), tmp_path / "out", show_progress=False)
    assert info["fps"] == pytest.approx(float(rate), rel=1e-12)  # not rounded to 29.97
    (record,) = stored(tmp_path / "out")
    assert record.meta.frames == len(reference) == count
    np.testing.assert_array_equal(record.steps["rgb"], reference)
    assert [frame_number(f) for f in record.steps["rgb"]] == list(range(count))


def test_a_variable_rate_video_keeps_every_frame_and_fps_follows_the_tick_rule(tmp_path):
    pts = [0, 40, 80, 250, 290, 330, 500, 540, 580, 750, 790, 830]  # ms: bursts of 3 frames, 25 fps within
    write_video(tmp_path / "vfr.mp4", numbered_frames(len(pts)), Fraction(25), pts)
    _, times = decoded(tmp_path / "vfr.mp4")
    assert len(times) == len(pts)
    ingest(IngestConfig(str(tmp_path / "vfr.mp4"), size=SIZE), tmp_path / "all", show_progress=False)
    (record,) = stored(tmp_path / "all")
    assert [frame_number(f) for f in record.steps["rgb"]] == list(range(len(pts)))  # none dropped
    # --fps 10: for each tick k / 10 s from the first frame, the first frame at or after it, kept once.
    ticks = times[0] + np.arange(int((times[-1] - times[0]) * 10 + 1e-6) + 1) / 10
    expected = sorted({int(np.flatnonzero(times >= tick - 1e-6)[0]) for tick in ticks})
    assert expected == [0, 3, 5, 6, 9, 11]  # by hand: ticks 0, .1 .. .8 s -> frames at 0, .25, .33, .5, .75, .83 s
    ingest(IngestConfig(str(tmp_path / "vfr.mp4"), size=SIZE, fps=10), tmp_path / "ten", show_progress=False)
    (record,) = stored(tmp_path / "ten")
    assert [frame_number(f) for f in record.steps["rgb"]] == expected
    # each stored frame says which source frame it is, and when the decoder shows it
    np.testing.assert_array_equal(record.steps["source_frame"], expected)
    np.testing.assert_array_equal(record.steps["source_time"], times[expected])


def test_image_folders_and_clips_are_read_in_natural_order(tmp_path):
    frames = numbered_frames(12)
    folder = tmp_path / "src" / "take2"
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{i}.png")  # frame10 sorts before frame2 as strings
    np.save(tmp_path / "src" / "take2.actions.npy", np.arange(12, dtype=np.float32)[:, None])  # row i: frame i's action
    write_video(tmp_path / "src" / "take10.mp4", numbered_frames(5), Fraction(30))
    ingest(IngestConfig(str(tmp_path / "src"), size=SIZE, fps=30, image_fps=30), tmp_path / "out", show_progress=False)
    records = stored(tmp_path / "out")
    assert [r.meta.extra["source"] for r in records] == ["take2", "take10.mp4"]  # clips in natural order too
    take2 = records[0]
    assert [frame_number(f) for f in take2.steps["rgb"]] == list(range(12))
    np.testing.assert_array_equal(take2.steps["action"][:-1, 0], np.arange(11))
