"""Awkward videos (issue 29): each made here with PyAV, ingested, and compared frame by frame with PyAV's own
decode (``to_ndarray`` of every frame the decoder shows, turned by ``frame.rotation`` with numpy): B-frames, an
edit-list trim, an odd size, yuv444p and 10-bit, an audio stream first, rotation 90/180/270; and the files that
must be refused in one line with exit code 2 and no output folder: a damaged packet mid-stream, a 1-frame video,
a zero-byte file. Every clip is tiny (24-63 px, 12-30 frames) so the module runs in seconds."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from masklam.data.dataset import open_dataset
from masklam.data.ingest import IngestConfig, ingest

RATE = Fraction(10)


def smooth_frames(count: int, height: int, width: int) -> np.ndarray:
    """Gradients that drift by frame: the encoder predicts (P and B frames), yet every frame differs."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([(x * 7 + i * 3) % 256, (y * 9 + i * 5) % 256, (x + y + i * 11) % 256], -1) for i in range(count)]
    return np.asarray(frames, np.uint8)


def encode(
    path: Path,
    frames: np.ndarray,
    pix_fmt: str = "yuv444p",
    options: dict[str, str] | None = None,
    rotation: int = 0,
    audio_first: bool = False,
) -> None:
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=8000) if audio_first else None  # stream 0: the audio
        stream = container.add_stream("libx264", rate=RATE, options={"crf": "0", "threads": "1", **(options or {})})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)  # the display matrix a phone writes (counter-clockwise degrees)
        if audio is not None:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 8000, 0
            container.mux(audio.encode(samples))
            container.mux(audio.encode())
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def trimmed(full: Path, path: Path, key_frame: int, start: int) -> None:
    """A stream copy of ``full`` from the key frame ``key_frame`` on, with an mp4 edit list starting the picture
    at frame ``start`` (as ``ffmpeg -ss 1.5 -c copy`` makes: the frames between are decoded, not shown)."""
    with av.open(str(full)) as source, av.open(str(path), "w") as out:
        video = source.streams.video[0]
        copy = out.add_stream_from_template(video)
        step = int(1 / (RATE * video.time_base))
        for packet in source.demux(video):
            if packet.pts is None or packet.pts < key_frame * step:
                continue
            packet.pts -= start * step  # negative: before the edit list's start
            packet.dts -= start * step
            packet.stream = copy
            out.mux(packet)


def reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """PyAV's decode, turned as a player shows it: every frame and its presentation time."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    turned = [np.rot90(f.to_ndarray(format="rgb24"), round(f.rotation / 90)) for f in frames]
    return np.stack(turned), np.array([f.time for f in frames])


def centre_square(frames: np.ndarray) -> np.ndarray:
    height, width = frames.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return frames[:, top : top + side, left : left + side]


def ingested(path: Path, out: Path, size: int) -> object:
    ingest(IngestConfig(str(path), size=size), out, show_progress=False)
    (record,) = open_dataset(out).records("train", mask_sources=())
    return record


def assert_same_order(frames: np.ndarray, source: np.ndarray) -> None:
    """Frame i is nearest to source frame i (of all of them): none dropped, repeated or swapped."""
    errors = np.abs(frames[:, None].astype(np.int16) - source[None].astype(np.int16)).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(len(source)))


def check_frame_exact(path: Path, out: Path, tolerance: int = 0) -> np.ndarray:
    """The stored frames are PyAV's (centre square, at its own size: no scaling), with their index and time."""
    frames, times = reference(path)
    want = centre_square(frames)
    record = ingested(path, out, want.shape[1])
    assert record.meta.frames == len(frames)
    if tolerance:
        assert np.abs(record.steps["rgb"].astype(int) - want).max() <= tolerance
        assert_same_order(record.steps["rgb"], want)
    else:
        np.testing.assert_array_equal(record.steps["rgb"], want)
    np.testing.assert_array_equal(record.steps["source_frame"], np.arange(len(frames)))
    np.testing.assert_array_equal(record.steps["source_time"], times)
    return frames


def test_b_frames_are_stored_in_display_order(tmp_path):
    source = smooth_frames(16, 24, 24)
    encode(tmp_path / "b.mp4", source, options={"crf": "10", "x264-params": "bframes=3:b-adapt=0"})  # lossless has none
    with av.open(str(tmp_path / "b.mp4")) as container:
        order = [p.pts for p in container.demux(video=0) if p.pts is not None]
    assert order != sorted(order)  # packets really are out of display order
    assert_same_order(check_frame_exact(tmp_path / "b.mp4", tmp_path / "out"), source)


def test_an_edit_list_trim_keeps_the_frames_a_player_shows(tmp_path):
    source = smooth_frames(30, 16, 16)
    encode(tmp_path / "full.mp4", source, options={"g": "10", "sc_threshold": "0"})
    trimmed(tmp_path / "full.mp4", tmp_path / "trim.mp4", key_frame=10, start=15)
    with av.open(str(tmp_path / "trim.mp4")) as container:
        discarded = sum(p.is_discard for p in container.demux(video=0))
    assert discarded == 5  # frames 10-14 are in the file, outside the edit list
    frames = check_frame_exact(tmp_path / "trim.mp4", tmp_path / "out")
    assert len(frames) == 15
    assert_same_order(frames, source[15:])


@pytest.mark.parametrize(("name", "height", "width", "pix_fmt"), [("odd", 47, 63, "yuv444p"), ("ten-bit-444", 24, 24, "yuv444p10le")])
def test_odd_sizes_and_deep_colour(tmp_path, name, height, width, pix_fmt):
    encode(tmp_path / f"{name}.mp4", smooth_frames(12, height, width), pix_fmt=pix_fmt)
    with av.open(str(tmp_path / f"{name}.mp4")) as container:
        assert container.streams.video[0].codec_context.pix_fmt == pix_fmt
    check_frame_exact(tmp_path / f"{name}.mp4", tmp_path / "out")


def test_ten_bit_420_is_the_decoded_picture_with_its_colour_interpolated(tmp_path):
    """yuv420p10le: masklam converts with full chroma interpolation (swscale's full_chroma_int), PyAV's plain
    to_ndarray does not, so they differ by a few levels (measured: at most 5 of 255, mean 2.0); masklam's is
    the closer to the encoded picture (mean error 1.34 against PyAV's 2.96)."""
    source = smooth_frames(12, 24, 24)
    encode(tmp_path / "deep.mp4", source, pix_fmt="yuv420p10le")
    check_frame_exact(tmp_path / "deep.mp4", tmp_path / "out", tolerance=6)
    stored = next(open_dataset(tmp_path / "out").records("train", mask_sources=())).steps["rgb"]
    plain, _ = reference(tmp_path / "deep.mp4")
    assert np.abs(stored.astype(int) - source).mean() < np.abs(plain.astype(int) - source).mean()


def test_an_audio_stream_first_is_skipped(tmp_path):
    encode(tmp_path / "audio.mp4", smooth_frames(12, 24, 24), audio_first=True)
    with av.open(str(tmp_path / "audio.mp4")) as container:
        assert container.streams[0].type == "audio" and container.streams[1].type == "video"
    check_frame_exact(tmp_path / "audio.mp4", tmp_path / "out")


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_rotation_metadata_is_applied(tmp_path, rotation, pix_fmt):
    """A 40x24 clip tagged as a phone tags a portrait video: stored as shown (a quarter turn makes it 24x40)."""
    source = smooth_frames(12, 24, 40)
    source[:, :4, :4] = 255  # a white top-left corner: where it goes shows the turn
    encode(tmp_path / "turned.mp4", source, pix_fmt=pix_fmt, rotation=rotation)
    frames = check_frame_exact(tmp_path / "turned.mp4", tmp_path / "out")
    corner = {90: (-1, 0), 180: (-1, -1), 270: (0, -1)}[rotation]  # counter-clockwise turns of the top-left
    assert frames.shape[1:3] == ((40, 24) if rotation != 180 else (24, 40))
    assert frames[0, corner[0], corner[1]].min() > 200


# --- refused: one line, exit code 2, no output folder ----------------------------------------------------------
def run_cli(*args: str):
    from typer.testing import CliRunner

    from masklam.cli import app

    return CliRunner().invoke(app, list(args))


def refused(source: Path, out: Path, *needles: str) -> None:
    result = run_cli("ingest", str(source), "--out", str(out), "--no-progress")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not out.exists()  # nothing a rerun could mistake for a finished (or resumable) dataset


def damage_packet(path: Path, number: int) -> None:
    """Invert 20 bytes in the middle of video packet ``number`` (its header intact): a damaged stream."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    position, size = packets[number]
    data = bytearray(path.read_bytes())
    middle = position + size // 2
    data[middle : middle + 20] = bytes(b ^ 0xFF for b in data[middle : middle + 20])
    path.write_bytes(bytes(data))


def test_a_damaged_packet_mid_stream_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "src").mkdir()
    rng = np.random.default_rng(0)  # noise: packets large enough that damage in the middle hits picture data
    noise = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    encode(tmp_path / "src" / "a-good.mp4", noise, pix_fmt="yuv420p")
    encode(tmp_path / "src" / "b-damaged.mp4", noise, pix_fmt="yuv420p")
    damage_packet(tmp_path / "src" / "b-damaged.mp4", 6)
    refused(tmp_path / "src", tmp_path / "out", "b-damaged.mp4", "damaged", "re-encode")


def test_a_one_frame_video_and_a_zero_byte_file_are_refused(tmp_path):
    encode(tmp_path / "one.mp4", smooth_frames(1, 24, 24))
    refused(tmp_path / "one.mp4", tmp_path / "out", "has 1 frames", "--min-frames")
    (tmp_path / "empty.mp4").write_bytes(b"")
    refused(tmp_path / "empty.mp4", tmp_path / "out", "cannot read video", "empty.mp4")


def test_image_files_are_turned_by_their_exif_orientation(tmp_path):
    from PIL import Image

    source = smooth_frames(3, 24, 40)
    (tmp_path / "phone").mkdir()
    for i, frame in enumerate(source):
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to view", as a phone held upright writes
        Image.fromarray(frame).save(tmp_path / "phone" / f"{i}.png", exif=exif)
    record = ingested(tmp_path / "phone", tmp_path / "out", 24)
    np.testing.assert_array_equal(record.steps["rgb"], centre_square(np.rot90(source, -1, axes=(1, 2))))
