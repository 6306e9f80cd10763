"""LeRobot v3 datasets: reading one (for `masklam ingest`) and writing one (`masklam export --format lerobot`).

The layout, as LeRobot's ``LeRobotDataset`` (lerobot 0.4) reads it::

    meta/info.json                                  codebase_version "v3.0", fps, features {key: dtype, shape,
                                                    names}, totals, chunks_size, data_path / video_path templates,
                                                    splits {"train": "0:N", ...}
    meta/stats.json                                 per feature: min, max, mean, std, count (+ quantiles)
    meta/tasks.parquet                              one row per task: index = the task's text, column task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: episode_index, tasks, length,
                                                    dataset_from_index / dataset_to_index (global frame index),
                                                    data/chunk_index, data/file_index, and per video key
                                                    videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}
    data/chunk-000/file-000.parquet                 one row per frame, many episodes per file: every non-video
                                                    feature (images as {bytes, path} PNG structs), timestamp,
                                                    frame_index, episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4             frames of a video feature; an episode is the span
                                                    [from_timestamp, to_timestamp) of its file

This module reads and writes those files with pyarrow and PyAV only: ``lerobot`` itself pins torch < 2.11 and
huggingface_hub < 0.36, which cannot be installed beside masklam's test extras (see docs/install.md).
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from masklam.data.schema import MASK_SOURCE_RE
from masklam.errors import UsageError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_KEY = "observation.image"
MASK_PREFIX = "observation.mask."
LABELLED_KEY = "action_labelled"
# An ingested dataset's record of where each frame came from: exported as columns of their own (LeRobot's
# timestamp must stay frame_index / fps), and read back on re-ingest.
SOURCE_COLUMNS = {"source_frame": "int64", "source_time": "float64"}
CAMERA_DTYPES = ("video", "image")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def flat_names(names: Any, size: int, prefix: str) -> list[str]:
    """Per-dimension names of a feature: LeRobot stores a list, or {"motors": [...]} in older datasets."""
    if isinstance(names, dict):
        names = [name for group in names.values() for name in (group if isinstance(group, list) else [group])]
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{prefix}{i}" for i in range(size)]


# --- reading -----------------------------------------------------------------------------------
@dataclass
class LeRobotEpisode:
    index: int  # episode_index
    length: int
    task: str
    timestamps: np.ndarray  # (length,) seconds within the episode
    data_file: tuple[int, int]  # (chunk_index, file_index)
    first_row: int  # dataset_from_index
    video: tuple[int, int, float, float] | None = None  # (chunk, file, from_timestamp, to_timestamp) of the camera


@dataclass
class LeRobotFolder:
    """A local LeRobot v3 dataset, opened for one camera."""

    root: Path
    info: dict[str, Any]
    camera: str
    episodes: list[LeRobotEpisode]
    action_names: list[str] | None
    state_names: list[str] | None
    mask_sources: list[str] = field(default_factory=list)  # observation.mask.<source> image features (masklam's export)
    _tables: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def camera_is_video(self) -> bool:
        return self.info["features"][self.camera]["dtype"] == "video"

    def rows(self, episode: LeRobotEpisode) -> Any:
        """The episode's rows of its data file (a pyarrow table), in frame order."""
        import pyarrow.compute as pc

        key = episode.data_file
        if key not in self._tables:
            self._tables.clear()  # episodes come in file order: keep one file in memory
            columns = ["index", "frame_index"] + [c for c in ("action", "observation.state", LABELLED_KEY, *SOURCE_COLUMNS) if c in self.info["features"]]
            if not self.camera_is_video:
                columns.append(self.camera)
            columns += [MASK_PREFIX + source for source in self.mask_sources]
            path = self.root / self.info["data_path"].format(chunk_index=key[0], file_index=key[1])
            self._tables[key] = read_parquet(path, columns)
        table = self._tables[key]
        mask = pc.and_(pc.greater_equal(table["index"], episode.first_row), pc.less(table["index"], episode.first_row + episode.length))
        rows = table.filter(mask).sort_by("index")
        if rows.num_rows != episode.length:
            raise UsageError(f"{self.root}: episode {episode.index} has {rows.num_rows} data rows, its metadata says {episode.length}: the dataset is damaged")
        return rows

    def video_path(self, episode: LeRobotEpisode) -> Path:
        chunk, file, _, _ = episode.video
        return self.root / self.info["video_path"].format(video_key=self.camera, chunk_index=chunk, file_index=file)


def read_parquet(path: Path, columns: list[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: the LeRobot dataset is incomplete") from None
    except Exception as error:  # pyarrow raises ArrowInvalid, KeyError, OSError, ...
        raise UsageError(f"cannot read {path} ({' '.join(str(error).split())[:200]}): the LeRobot dataset is damaged") from None


def is_lerobot_folder(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def open_lerobot(root: Path, camera: str | None) -> LeRobotFolder:
    """Open a local LeRobot v3 folder for ``camera`` (optional when it has one camera)."""
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {root}/meta/info.json ({error}): not a LeRobot dataset") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise UsageError(
            f"{root} is a LeRobot {version or 'unknown-version'} dataset: masklam reads v3.0; convert it with "
            "LeRobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`"
        )
    features = info.get("features", {})
    # A dataset masklam exported stores its masks as image features too (observation.mask.SOURCE): not cameras.
    cameras = sorted(key for key, feature in features.items() if feature.get("dtype") in CAMERA_DTYPES and not key.startswith(MASK_PREFIX))
    if not cameras:
        raise UsageError(f"{root} has no image or video features: nothing to ingest")
    if camera is None:
        if len(cameras) > 1:
            raise UsageError(f"{root} has several cameras: choose one with --camera ({', '.join(cameras)})")
        camera = cameras[0]
    if camera not in cameras:
        raise UsageError(f"{root} has no camera {camera!r}: choose --camera from {', '.join(cameras)}")

    episode_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not episode_files:
        raise UsageError(f"{root}/meta/episodes holds no parquet files: the LeRobot dataset is incomplete")
    import pyarrow as pa

    table = pa.concat_tables([read_parquet(path) for path in episode_files]).sort_by("episode_index").to_pylist()
    tasks = _read_tasks(root)
    data_index = pa.concat_tables(
        [read_parquet(path, ["index", "episode_index", "timestamp"]) for path in sorted((root / "data").glob("*/*.parquet"))]
    ).sort_by("index")
    timestamps = np.asarray(data_index["timestamp"].to_numpy(zero_copy_only=False), np.float64)
    indexes = np.asarray(data_index["index"].to_numpy(), np.int64)
    episodes = []
    for row in table:
        start = int(row["dataset_from_index"])
        position = int(np.searchsorted(indexes, start))
        length = int(row["length"])
        video = None
        if features[camera]["dtype"] == "video":
            prefix = f"videos/{camera}/"
            video = (
                int(row[prefix + "chunk_index"]),
                int(row[prefix + "file_index"]),
                float(row[prefix + "from_timestamp"]),
                float(row[prefix + "to_timestamp"]),
            )
        task_list = row.get("tasks") or []
        episodes.append(
            LeRobotEpisode(
                index=int(row["episode_index"]),
                length=length,
                task=str(task_list[0]) if task_list else tasks.get(0, ""),
                timestamps=timestamps[position : position + length],
                data_file=(int(row["data/chunk_index"]), int(row["data/file_index"])),
                first_row=start,
                video=video,
            )
        )
    names = {
        key: flat_names(features[key].get("names"), int(np.prod(features[key]["shape"])), prefix)
        for key, prefix in (("action", "action_"), ("observation.state", "state_"))
        if key in features
    }
    # masklam's export writes each mask source as observation.mask.<source>: restored as mask sources, not cameras
    # (a name masklam could not register as a source, e.g. with a dash, is left out like any other feature)
    masks = sorted(
        key.removeprefix(MASK_PREFIX)
        for key, feature in features.items()
        if key.startswith(MASK_PREFIX) and feature.get("dtype") == "image" and MASK_SOURCE_RE.match(key.removeprefix(MASK_PREFIX))
    )
    return LeRobotFolder(root, info, camera, episodes, names.get("action"), names.get("observation.state"), masks)


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        return {}
    table = read_parquet(path).to_pylist()
    # pandas writes the task text as the index column "__index_level_0__" (or "task" once reset)
    return {int(row["task_index"]): str(row.get("task", row.get("__index_level_0__", ""))) for row in table}


def decode_span(path: Path, start: float, stop: float, times: np.ndarray, convert) -> np.ndarray:
    """Frames of ``path`` at ``start + times`` (seconds), each the decoded frame nearest in time, converted.

    Seeks to the key frame before ``start`` and decodes up to ``stop``, as LeRobot's own decoders do.
    """
    import av

    wanted = start + np.asarray(times, np.float64)
    tolerance = 0.5 / max(len(times), 1) if len(times) < 2 else 0.5 * float(np.min(np.diff(times)))
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            picked: dict[int, Any] = {}
            for frame in container.decode(stream):
                time = float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time)
                if time < wanted[0] - tolerance:
                    continue
                if time > wanted[-1] + tolerance:
                    break
                i = int(np.argmin(np.abs(wanted - time)))
                if abs(wanted[i] - time) <= tolerance and i not in picked:
                    picked[i] = convert(frame)
    except (av.error.FFmpegError, OSError) as error:
        raise UsageError(f"cannot decode video {path} ({' '.join(str(error).split())}): re-encode or delete the file") from None
    if len(picked) != len(wanted):
        missing = sorted(set(range(len(wanted))) - set(picked))[:3]
        raise UsageError(f"video {path} lacks frames at {[round(float(wanted[i]), 3) for i in missing]} s: the LeRobot dataset is damaged")
    return np.stack([picked[i] for i in range(len(wanted))])


def decode_png_struct(value: dict[str, Any], root: Path) -> Any:
    """An image cell of a LeRobot data file ({bytes, path}) as a PIL image."""
    from PIL import Image

    if value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    return Image.open(root / value["path"])


# --- writing -----------------------------------------------------------------------------------
@dataclass
class RunningStats:
    """min / max / mean / std / count of a feature over frames; quantiles from the kept values (vectors only)."""

    values: list[np.ndarray] = field(default_factory=list)
    # images: per-channel sums over pixels
    image_sum: np.ndarray | None = None
    image_sq: np.ndarray | None = None
    image_min: np.ndarray | None = None
    image_max: np.ndarray | None = None
    count: int = 0
    pixels: int = 0

    def add(self, array: np.ndarray) -> None:
        if len(array):
            self.values.append(np.asarray(array, np.float64))
            self.count += len(array)

    def add_images(self, frames: np.ndarray) -> None:
        """(n, H, W, C) uint8 frames, normalised to [0, 1] as LeRobot's image stats are."""
        pixels = frames.reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
        sums, squares = pixels.sum(0), (pixels**2).sum(0)
        low, high = pixels.min(0), pixels.max(0)
        if self.image_sum is None:
            self.image_sum, self.image_sq, self.image_min, self.image_max = sums, squares, low, high
        else:
            self.image_sum, self.image_sq = self.image_sum + sums, self.image_sq + squares
            self.image_min, self.image_max = np.minimum(self.image_min, low), np.maximum(self.image_max, high)
        self.pixels += len(pixels)
        self.count += len(frames)

    def to_json(self) -> dict[str, Any] | None:
        if self.image_sum is not None:
            mean = self.image_sum / self.pixels
            std = np.sqrt(np.maximum(self.image_sq / self.pixels - mean**2, 0.0))
            channel = lambda v: [[[round(float(x), 8)]] for x in v]
            return {"min": channel(self.image_min), "max": channel(self.image_max), "mean": channel(mean), "std": channel(std), "count": [self.count]}
        if not self.values:
            return None
        values = np.concatenate(self.values).reshape(self.count, -1)
        stats = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0)}
        stats.update({f"q{round(q * 100):02d}": np.quantile(values, q, axis=0) for q in QUANTILES})
        return {**{k: [round(float(x), 8) for x in v] for k, v in stats.items()}, "count": [self.count]}


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def video_codec() -> str:
    """H.264 (libx264 on one thread gives the same bytes on every run; LeRobot's decoders read it), else AV1."""
    import av

    for name in ("libx264", "libsvtav1"):
        if name in av.codecs_available:
            return name
    raise UsageError("this PyAV has neither libsvtav1 nor libx264: use --frames image")


def encode_video(path: Path, frames: np.ndarray, fps: float, codec: str) -> None:
    """Encode frames to an mp4 as LeRobot does (yuv420p, a key frame every 2 frames for random access)."""
    import av

    from masklam.atomic import atomic_file

    rate = Fraction(fps).limit_denominator(1000)
    with atomic_file(path) as handle:
        with av.open(handle, mode="w", format="mp4") as container:
            options = {"g": "2", "crf": "20", "preset": "medium", "threads": "1"} if codec == "libx264" else {"g": "2", "crf": "30", "preset": "12"}
            stream = container.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.codec_context.thread_count = 1  # one thread: the same bytes on every run
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())


@dataclass
class LeRobotWriter:
    """Writes a LeRobot v3 folder episode by episode: one data file per call of ``close_file``."""

    root: Path
    fps: float
    frames_as: str  # "image" | "video"
    image_shape: tuple[int, int, int]
    mask_sources: list[str]
    action_names: list[str] | None
    state_names: list[str] | None
    metadata: dict[str, Any]
    source_columns: bool = False  # the dataset records source_frame / source_time (ingested data)
    codec: str = ""
    tasks: dict[str, int] = field(default_factory=dict)
    episode_rows: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[str, list[Any]] = field(default_factory=dict)
    stats: dict[str, RunningStats] = field(default_factory=dict)
    file_index: int = 0
    frames_written: int = 0
    split_ranges: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames_as not in CAMERA_DTYPES:
            raise UsageError(f"--frames {self.frames_as!r}: choose image (PNG, lossless) or video (mp4, lossy)")
        if self.frames_as == "video":
            self.codec = video_codec()
        self._new_file()

    def _new_file(self) -> None:
        self.rows = {name: [] for name in self.data_columns()}

    def data_columns(self) -> list[str]:
        columns = [] if self.frames_as == "video" else [IMAGE_KEY]
        columns += [MASK_PREFIX + source for source in self.mask_sources]
        columns += ["observation.state"] if self.state_names is not None else []
        columns += ["action", LABELLED_KEY] if self.action_names is not None else []
        columns += list(SOURCE_COLUMNS) if self.source_columns else []
        return columns + ["timestamp", "frame_index", "episode_index", "index", "task_index"]

    def add_episode(
        self,
        split: str,
        rgb: np.ndarray,
        masks: dict[str, np.ndarray],
        action: np.ndarray | None,
        labelled: np.ndarray,
        state: np.ndarray | None,
        task: str,
        origin: dict[str, np.ndarray] | None = None,
    ) -> None:
        """One episode's frames (n, H, W, 3), masks {source: (n, H, W) 0/1}, action (n, A) with NaN where unknown,
        and (ingested data) ``origin``: each frame's source_frame and source_time."""
        episode, n = len(self.episode_rows), len(rgb)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        first = self.frames_written
        timestamps = (np.arange(n) / self.fps).astype(np.float32)
        row = {
            "episode_index": episode,
            "tasks": [task],
            "length": n,
            "data/chunk_index": self.file_index // CHUNKS_SIZE,
            "data/file_index": self.file_index,
            "dataset_from_index": first,
            "dataset_to_index": first + n,
        }
        if self.frames_as == "video":
            path = self.root / VIDEO_PATH.format(video_key=IMAGE_KEY, chunk_index=episode // CHUNKS_SIZE, file_index=episode)
            encode_video(path, rgb, self.fps, self.codec)
            prefix = f"videos/{IMAGE_KEY}/"
            row.update(
                {
                    prefix + "chunk_index": episode // CHUNKS_SIZE,
                    prefix + "file_index": episode,
                    prefix + "from_timestamp": 0.0,
                    prefix + "to_timestamp": n / self.fps,
                }
            )
        else:
            self.rows[IMAGE_KEY] += [{"bytes": png_bytes(frame), "path": None} for frame in rgb]
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self.episode_rows.append(row)
        self.stats.setdefault(IMAGE_KEY, RunningStats()).add_images(rgb)
        for source in self.mask_sources:
            scaled = masks[source] * np.uint8(255)  # agent = 255, as the MaskLAM authors' datasets store it
            self.rows[MASK_PREFIX + source] += [{"bytes": png_bytes(mask), "path": None} for mask in scaled]
            self.stats.setdefault(MASK_PREFIX + source, RunningStats()).add_images(masks[source][..., None])
        if state is not None:
            self.rows["observation.state"] += list(state.astype(np.float32))
            self.stats.setdefault("observation.state", RunningStats()).add(state)
        if self.action_names is not None:
            known = labelled & np.all(np.isfinite(action), axis=1)
            self.rows["action"] += list(np.where(known[:, None], action, 0.0).astype(np.float32))
            self.rows[LABELLED_KEY] += [bool(k) for k in known]
            self.stats.setdefault("action", RunningStats()).add(action[known])
            self.stats.setdefault(LABELLED_KEY, RunningStats()).add(known.astype(np.float64)[:, None])
        if self.source_columns:
            for name, dtype in SOURCE_COLUMNS.items():
                values = np.asarray(origin[name], dtype)
                self.rows[name] += values.tolist()
                self.stats.setdefault(name, RunningStats()).add(values.astype(np.float64)[:, None])
        columns = {
            "timestamp": timestamps,
            "frame_index": np.arange(n),
            "episode_index": np.full(n, episode),
            "index": np.arange(first, first + n),
            "task_index": np.full(n, task_index),
        }
        for name, values in columns.items():
            self.rows[name] += values.tolist()
            self.stats.setdefault(name, RunningStats()).add(values.astype(np.float64)[:, None])
        self.frames_written += n
        self.split_ranges.setdefault(split, [episode, episode])[1] = episode + 1

    def close_file(self) -> None:
        """Write the rows gathered since the last call as one data parquet file."""
        if not self.rows["index"]:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        from masklam.atomic import atomic_file

        features = self.features()
        arrays = {}
        for name, values in self.rows.items():
            dtype, shape = features[name]["dtype"], features[name]["shape"]
            if dtype == "image":
                arrays[name] = pa.array(values, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            elif shape == [1]:  # LeRobot keeps a one-element feature as a plain column (datasets.Value)
                column = np.asarray([np.asarray(v).reshape(-1)[0] for v in values], dtype)
                arrays[name] = pa.array(column, pa.from_numpy_dtype(np.dtype(dtype)))
            else:
                flat = pa.array(np.concatenate(values).astype(dtype), pa.from_numpy_dtype(np.dtype(dtype)))
                arrays[name] = pa.FixedSizeListArray.from_arrays(flat, shape[0])
        table = pa.table(arrays).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": hf_features(features, list(arrays))}})})
        path = self.root / DATA_PATH.format(chunk_index=self.file_index // CHUNKS_SIZE, file_index=self.file_index)
        with atomic_file(path) as handle:
            pq.write_table(table, handle, compression="snappy")
        self.file_index += 1
        self._new_file()

    def features(self) -> dict[str, Any]:
        height, width, channels = self.image_shape
        image_names = ["height", "width", "channels"]
        features: dict[str, Any] = {IMAGE_KEY: {"dtype": self.frames_as, "shape": [height, width, channels], "names": image_names}}
        if self.frames_as == "video":
            features[IMAGE_KEY]["info"] = {
                "video.height": height,
                "video.width": width,
                "video.codec": "av1" if self.codec == "libsvtav1" else "h264",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": self.fps,
                "video.channels": channels,
                "has_audio": False,
            }
        for source in self.mask_sources:
            features[MASK_PREFIX + source] = {"dtype": "image", "shape": [height, width, 1], "names": image_names}
        if self.state_names is not None:
            features["observation.state"] = {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names}
        if self.action_names is not None:
            features["action"] = {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names}
            features[LABELLED_KEY] = {"dtype": "bool", "shape": [1], "names": None}
        if self.source_columns:
            features.update({name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in SOURCE_COLUMNS.items()})
        features.update({"timestamp": {"dtype": "float32", "shape": [1], "names": None}})
        features.update({name: {"dtype": "int64", "shape": [1], "names": None} for name in ("frame_index", "episode_index", "index", "task_index")})
        return features

    def finish(self) -> None:
        """Write meta/: info.json, stats.json, tasks.parquet and the episodes file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from masklam.atomic import atomic_file, atomic_write_json

        self.close_file()
        episodes = pa.Table.from_pylist(self.episode_rows)
        with atomic_file(self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)) as handle:
            pq.write_table(episodes, handle, compression="snappy")
        order = sorted(self.tasks.items(), key=lambda item: item[1])
        tasks = pa.table(
            {"task_index": pa.array([index for _, index in order], pa.int64()), "__index_level_0__": pa.array([task for task, _ in order], pa.large_string())}
        )
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
                {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.0.0",
        }
        tasks = tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
        with atomic_file(self.root / "meta" / "tasks.parquet") as handle:
            pq.write_table(tasks, handle)
        atomic_write_json(self.root / "meta" / "stats.json", {name: s for name, stats in sorted(self.stats.items()) if (s := stats.to_json()) is not None})
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": None,
            "total_episodes": len(self.episode_rows),
            "total_frames": self.frames_written,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": int(self.fps) if float(self.fps).is_integer() else self.fps,
            "splits": {split: f"{a}:{b}" for split, (a, b) in self.split_ranges.items()},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.frames_as == "video" else None,
            "features": self.features(),
            "masklam": self.metadata,
        }
        atomic_write_json(self.root / "meta" / "info.json", info)


def hf_features(features: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """The ``datasets`` Features of the data file's columns, as the "huggingface" schema metadata holds them."""
    out = {}
    for name in columns:
        dtype, shape = features[name]["dtype"], features[name]["shape"]
        if dtype == "image":
            out[name] = {"_type": "Image"}
        elif shape == [1]:
            out[name] = {"dtype": dtype, "_type": "Value"}
        else:
            out[name] = {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "List"}
    return out


# What `masklam export --format lerobot` writes (DATA_PATH, VIDEO_PATH, EPISODES_PATH and the meta files):
# --overwrite replaces these and nothing else.
EXPORT_FILES = re.compile(
    r"meta/(?:info\.json|stats\.json|tasks\.parquet)|meta/episodes/chunk-\d+/file-\d+\.parquet"
    r"|data/chunk-\d+/file-\d+\.parquet|videos/[^/]+/chunk-\d+/file-\d+\.mp4"
)


def check_replaceable(out: Path) -> None:
    """``out`` may be replaced only if it is a LeRobot folder masklam exported, holding nothing else."""
    from masklam.data.storage import foreign_files

    if not out.is_dir():
        raise UsageError(f"output {out} is a file: choose another --out")
    if "masklam" not in read_json_or_empty(out / "meta" / "info.json"):
        raise UsageError(f"output {out} is not a LeRobot export of masklam's: --overwrite replaces only those; choose another --out")
    foreign = foreign_files(out, EXPORT_FILES)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UsageError(f"output {out} holds {foreign[0]}{more}, which masklam did not write: move it away, or choose another --out")


def read_json_or_empty(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def replace_folder(staging: Path, out: Path) -> None:
    """Move a finished staging folder onto ``out``: what was there (checked: only masklam's export) goes."""
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def iter_file_episodes(records: Iterator[Any]) -> Iterator[list[Any]]:
    """Group a shard's records (chunks of one episode are consecutive) into lists of chunks, one per episode."""
    group: list[Any] = []
    for record in records:
        if group and record.meta.episode != group[-1].meta.episode:
            yield group
            group = []
        group.append(record)
    if group:
        yield group


# --- exporting a masklam dataset ---------------------------------------------------------------
def export_lerobot(data: str | Path, out: Path, frames_as: str = "image", overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Write the dataset at ``data`` as a LeRobot v3 folder ``out``: train episodes first, then test.

    Built in a staging folder beside ``out`` and renamed into place: an error leaves no partial output.
    """
    import os

    from tqdm import tqdm

    from masklam.data.dataset import join_chunks, open_dataset
    from masklam.data.schema import SPLITS

    dataset = open_dataset(data)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UsageError(f"output {out} exists and is not empty: choose another --out, or --overwrite to replace it")
        check_replaceable(out)  # masklam never deletes a file it did not write
    info = dataset.info
    sources = sorted(info.get("mask_sources", {}))
    action_dim = info["features"]["action"]["shape"][0] if "action" in info["features"] else 0
    action_names = (info.get("action_names") or [f"action_{i}" for i in range(action_dim)]) if action_dim else None
    state = info["features"].get("state")
    state_names = (info.get("state_names") or []) if state else None
    if state and len(state_names or []) != state["shape"][0]:
        state_names = [f"state_{i}" for i in range(state["shape"][0])]
    size = info["env"]["render"]["size"]
    env_id = info["env"]["env_id"]
    metadata = {
        "exported_from": str(dataset.root),
        "masklam_version": info.get("masklam_version"),
        "env_id": env_id,
        "simulator": info.get("simulator", True),
        "source": info.get("source"),
        "mask_sources": info.get("mask_sources", {}),
        "unlabelled_actions": f"rows whose {LABELLED_KEY} is false have no recorded action: their action is 0, not a label "
        "(unlabelled episodes, and the final frame of every episode); filter on it before training on actions",
        "masks": f"{MASK_PREFIX}<source> images: 255 = agent, 0 = background (LeRobotDataset returns them as floats in [0, 1])",
    }
    staging = out.with_name(f".masklam-tmp-{os.getpid()}-export-{out.name}")  # marked: masklam's alone
    if staging.exists():  # this pid's leftover from an earlier, killed process
        shutil.rmtree(staging)
    source_columns = all(name in info["features"] for name in SOURCE_COLUMNS)
    writer = LeRobotWriter(staging, float(info["fps"]), frames_as, (size, size, 3), sources, action_names, state_names, metadata, source_columns)
    total = sum(entry["frames"] for entry in info["splits"].values())
    try:
        with tqdm(total=total, unit="frame", desc=f"export {dataset.root.name}", disable=not show_progress or None) as bar:
            for split in [split for split in SPLITS if split in info["splits"]]:  # train first, then test
                for shard in dataset.shards(split):
                    for chunks in iter_file_episodes(dataset.records(split, mask_sources=sources, shards=[shard])):
                        record = join_chunks(chunks)
                        n = record.meta.frames
                        action = record.steps.get("action")
                        if action_dim and action is None:
                            action = np.full((n, action_dim), np.nan, np.float32)
                        labelled = np.full(n, record.meta.labelled)
                        task = record.meta.extra.get("task") or env_id
                        origin = {name: record.steps[name] for name in SOURCE_COLUMNS} if source_columns else None
                        writer.add_episode(split, record.steps["rgb"], record.masks, action, labelled, record.steps.get("state"), task, origin)
                        bar.update(n)
                    writer.close_file()
        writer.finish()
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"episodes": len(writer.episode_rows), "frames": writer.frames_written, "files": writer.file_index}
