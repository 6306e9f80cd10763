"""Frames/s of `masklam ingest` on mp4 files against decoding alone with the same decoder, in one run.

    python benchmarks/ingest.py --videos 4 --frames 300 --width 320 --height 240 --size 64

The videos are made here with PyAV's libx264 (a moving pattern over noise, so the codec has work to do).
"Decoding alone" is PyAV decoding every frame of every video with the same threading as ingest uses, and
converting each frame to an RGB array at its own size (what a reader of the frames does). "Decoding, no RGB"
stops at the decoder's own frames (YUV), the floor of any reader. Ingest is the whole command: packet probe,
decode, crop and scale to --size (RGB made at that size), write shards and index, info.json. Each is timed
--repeats times, alternating, and the best of each is reported, by wall-clock time and by the CPU time of
the process (all its threads): on a shared, overloaded machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from masklam.data.ingest import IngestConfig, ingest


def make_videos(folder: Path, count: int, frames: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    for index in range(count):
        with av.open(str(folder / f"clip{index:02d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=30, options={"crf": "23"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for t in range(frames):
                image = np.empty((height, width, 3), np.uint8)
                image[..., 0] = (xx + 3 * t) % 256
                image[..., 1] = (yy * 2 + t) % 256
                image[..., 2] = rng.integers(0, 64, (height, width), dtype=np.uint8)
                x = int(width / 2 + width / 3 * np.sin(t / 15))
                image[height // 3 : height // 3 + 40, max(0, x - 20) : x + 20] = 255
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())


def decode_alone(folder: Path, rgb: bool = True) -> tuple[int, float, float]:
    start, cpu, frames = time.perf_counter(), time.process_time(), 0
    for path in sorted(folder.glob("*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # as masklam.data.ingest.decode_video
            for frame in container.decode(stream):
                if rgb:
                    frame.to_ndarray(format="rgb24")
                frames += 1
    return frames, time.perf_counter() - start, time.process_time() - cpu


def ingest_once(folder: Path, out: Path, size: int, backend: str) -> tuple[int, float, float]:
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    info = ingest(IngestConfig(str(folder), size=size, backend=backend), out, show_progress=False)
    return info["splits"]["train"]["frames"], time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="masklam-ingest-bench-"))
    try:
        folder = work / "videos"
        folder.mkdir()
        make_videos(folder, args.videos, args.frames, args.width, args.height)
        ingest_once(folder, work / "out", args.size, "webdataset")  # warm-up: imports, first torch call
        best: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, run in (
                ("decode alone", lambda: decode_alone(folder)),
                ("decoding, no RGB", lambda: decode_alone(folder, rgb=False)),
                ("ingest webdataset", lambda: ingest_once(folder, work / "out", args.size, "webdataset")),
                ("ingest zarr", lambda: ingest_once(folder, work / "out", args.size, "zarr")),
            ):
                frames, wall, cpu = run()
                old = best.get(name, [0.0, 0.0])
                best[name] = [max(old[0], frames / wall), max(old[1], frames / cpu)]
        print(f"{args.videos} x {args.frames} frames, {args.width}x{args.height} H.264 -> {args.size} px; best of {args.repeats}")
        base_wall, base_cpu = best["decode alone"]
        for name, (wall, cpu) in best.items():
            print(f"{name:<18} wall {wall:6.0f} frames/s ({wall / base_wall:.2f}x)   CPU {cpu:6.0f} frames/CPU-s ({cpu / base_cpu:.2f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
