"""`masklam ingest`: a masklam dataset from video files, image sequences or a local LeRobot v3 dataset.

The source is planned first and completely (each video decoded once for its frames' count and presentation
times, exactly as a player shows them: edit lists honoured, B-frames in display order; sidecar arrays,
LeRobot's metadata and timestamp columns), so bad input fails before anything is written. The plan
is a pure function of the source and the settings: episode ``i`` is a fixed span of frames of one source
video (or LeRobot episode), the test split is a seeded choice of episodes, and a shard holds a fixed list of
episodes. Shards are written atomically; a re-run skips the finished ones (resume) and writes the same bytes.

Frames are decoded with PyAV and scaled by FFmpeg's own filters in one C pass per frame (``FrameScaler``): a
rotation tag (display matrix) turns the frame first, as ``ffmpeg`` and players do; ``--resize crop`` cuts the centre square out, ``--resize squash`` keeps the whole frame (changing its aspect);
then swscale's area-averaging filter scales it to ``--size`` and converts it to RGB last, so only the small
frame is converted (ingest went from 0.7-0.8x of decoding alone to 1.4-1.7x: docs/performance.md).
Image files go through the same filters, so every source is scaled alike.

An ingested dataset has no simulator: info.json says ``"simulator": false`` and where the data came from
(``source``); it has no oracle masks, and commands that need a simulator refuse it (``require_simulator``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import masklam
from masklam.atomic import atomic_write_json
from masklam.data.collect import CONFIG_FILE, prepare_output
from masklam.data.dataset import INFO, get_backend, index_path, read_json, split_counts, write_index
from masklam.data.schema import RESIZE_MODES, SCHEMA_VERSION, SPLITS, Feature, Record, RecordMeta, record_key
from masklam.data.validate import CHECKSUMS
from masklam.errors import UsageError, did_you_mean
from masklam.locks import writer_lock

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SIDECAR = ".actions.npy"
HUB_PREFIX = "hf://datasets/"


@dataclass(frozen=True)
class IngestConfig:
    """What defines an ingested dataset (with the source's content): equal configs give identical bytes."""

    source: str
    backend: str = "webdataset"
    size: int = 64
    resize: str = "crop"  # crop: centre square, then resize | squash: the whole frame resized to a square
    fps: float | None = None  # subsample to this frame rate (None: the source's)
    image_fps: float = 30.0  # frame rate of image-sequence folders (they carry none)
    chunk_seconds: float = 0.0  # cut each video into episodes of this many seconds (0: one episode per video)
    min_frames: int = 3  # shorter videos are refused (the trainer presets stack 3 frames)
    camera: str | None = None  # LeRobot: the image or video feature to take
    test_episodes: int = 0
    seed: int = 0
    labelled_episodes: int | None = None
    label_fraction: float | None = None
    chunk_steps: int = 0
    episodes_per_shard: int = 8

    def __post_init__(self) -> None:
        get_backend(self.backend)
        if not 16 <= self.size <= 512:
            raise UsageError(f"--size {self.size}: use a size between 16 and 512 px (64 and 128 are usual)")
        if self.resize not in RESIZE_MODES:
            raise UsageError(
                f"--resize {self.resize!r}{did_you_mean(self.resize, RESIZE_MODES)}: choose crop (centre square, then resize) or squash (whole frame to a square)"
            )
        if (self.fps is not None and self.fps <= 0) or self.image_fps <= 0 or self.chunk_seconds < 0:
            raise UsageError("--fps and --image-fps must be positive and --chunk-seconds >= 0")
        if self.min_frames < 2:
            raise UsageError(f"--min-frames {self.min_frames}: an episode needs at least 2 frames (one transition)")
        if self.test_episodes < 0 or self.episodes_per_shard < 1 or self.chunk_steps < 0:
            raise UsageError("--test-episodes must be >= 0, --episodes-per-shard >= 1 and --chunk-steps >= 0")
        if self.labelled_episodes is not None and self.label_fraction is not None:
            raise UsageError("--labelled-episodes and --label-fraction both given: pass only one")
        if self.label_fraction is not None and not 0.0 <= self.label_fraction <= 1.0:
            raise UsageError(f"--label-fraction {self.label_fraction} must be between 0 and 1")
        if self.labelled_episodes is not None and self.labelled_episodes < 0:
            raise UsageError(f"--labelled-episodes {self.labelled_episodes} must be >= 0")

    # What a recipe's pipeline asks of a dataset's settings (as of CollectSettings): the config, and its identity.
    def config(self) -> IngestConfig:
        return self

    def identity(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- sources: what can be planned without decoding ----------------------------------------------
@dataclass
class Clip:
    """One source video: a file, a folder of frames, or a LeRobot episode."""

    name: str
    times: np.ndarray  # presentation time (s) of each source frame, increasing
    actions: np.ndarray | None  # (frames, A) float32, NaN where none was taken
    task: str = ""
    load: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None  # source frame indices -> {"rgb", "action", "state"}


@dataclass
class Source:
    kind: str  # "video" | "lerobot"
    description: dict[str, Any]  # what info.json's "source" says
    clips: list[Clip]
    fps: float  # the frame rate the clips share
    fingerprint: list[Any]  # files and sizes: a changed source is not resumed
    action_names: list[str] | None = None
    state_names: list[str] | None = None
    mask_sources: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # name -> info.json entry (no coverage)


MASK_STEP = "mask:"  # a Clip.load key "mask:<source>": that source's (frames, size, size) 0/1 masks, not a step array


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _import_av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is a core dependency
        raise UsageError("reading video files needs PyAV: pip install av") from None
    return av


def display_filters(frame: Any) -> list[tuple[str, str]]:
    """The filters that turn a decoded frame the way a player shows it, from its display matrix (the rotation a
    phone writes): FFmpeg's own rule (fftools' autorotate), so 90/180/270 degrees and mirrorings come out as
    ``ffmpeg`` and players show them. An untagged frame needs none."""
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return []
    matrix = np.frombuffer(bytes(side), np.int32)
    theta = -round(float(frame.rotation))  # clockwise degrees, as fftools' get_rotation
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return [("transpose", "cclock_flip" if matrix[3] > 0 else "clock")]
    if abs(theta - 180) < 1:
        return [("hflip", "")] * bool(matrix[0] < 0) + [("vflip", "")] * bool(matrix[4] < 0)
    if abs(theta - 270) < 1:
        return [("transpose", "clock_flip" if matrix[3] < 0 else "cclock")]
    if abs(theta) > 1:
        return [("rotate", f"{theta:f}*PI/180")]
    return [("vflip", "")] if matrix[4] < 0 else []


class FrameScaler:
    """PyAV video frames (any size and pixel format) to (size, size, 3) uint8 RGB arrays, with FFmpeg's filters:
    the display matrix's rotation (``display_filters``), crop (centre square, for ``crop``), scale (swscale's
    area average; bilinear when enlarging), rgb24. The filter graph is built for the first frame's geometry and
    rebuilt if a later frame's differs."""

    def __init__(self, size: int, resize: str) -> None:
        self.size, self.resize = size, resize
        self.graph: Any = None
        self.geometry: tuple[Any, ...] | None = None

    def __call__(self, frame: Any) -> np.ndarray:
        geometry = (frame.width, frame.height, frame.format.name, tuple(display_filters(frame)))
        if geometry != self.geometry:
            self.graph, self.geometry = self._build(*geometry), geometry
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()

    def _build(self, width: int, height: int, pixel_format: str, turn: tuple[tuple[str, str], ...]) -> Any:
        from fractions import Fraction

        av = _import_av()
        graph = av.filter.Graph()
        chain = [graph.add_buffer(width=width, height=height, format=pixel_format, time_base=Fraction(1, 1000))]
        chain += [graph.add(name, arguments or None) for name, arguments in turn]
        if self.resize == "crop":
            side = min(width, height)  # a quarter turn swaps width and height: the square's side is the same
            chain.append(graph.add("crop", f"{side}:{side}"))  # centred by default
        chain += [graph.add("scale", f"{self.size}:{self.size}:flags=area+full_chroma_int"), graph.add("format", "rgb24"), graph.add("buffersink")]
        for upstream, downstream in zip(chain, chain[1:]):
            upstream.link_to(downstream)
        graph.configure()
        return graph

    def image(self, image: Any) -> np.ndarray:
        """A PIL image, scaled by the same filters as video frames."""
        return self(_import_av().VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24"))


def probe_video(path: Path) -> tuple[np.ndarray, float]:
    """Presentation times (s, as the decoder reports them: ``frame.time``) of the frames a decoder shows, and the
    stream's rate (exact: a 30000/1001 stream is 29.97002997..., never rounded). Decoded, not read off packets:
    packets outside an edit list, or that decode to nothing, are no frames, and a damaged stream (a packet the
    decoder rejects, or a frame it had to patch up: ``is_corrupt``) fails here, before anything is written."""
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UsageError(f"{path} has no video stream: re-encode or delete the file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            times = []
            for frame in container.decode(stream):
                if frame.is_corrupt:  # concealed decoding errors: the picture is not what was recorded
                    raise UsageError(
                        f"video {path} is damaged at frame {len(times)} ({frame.time or 0:.3f} s: the decoder had to conceal errors): "
                        "re-encode it from an intact copy or cut the damaged part out"
                    )
                times.append(frame.time)
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise UsageError(f"cannot read video {path} ({_one_line(error)}): re-encode or delete the file") from None
    if not times:
        raise UsageError(f"video {path} has no frames: re-encode or delete the file")
    if any(t is None for t in times):  # e.g. some AVI files: frames are evenly spaced at the stream's rate
        if rate is None:
            raise UsageError(f"video {path} has neither timestamps nor a frame rate: re-encode it")
        return np.arange(len(times)) / rate, rate
    times = np.asarray(times, np.float64)  # not re-based: source_time is the time a player shows
    return times, rate or (len(times) - 1) / max(times[-1] - times[0], 1e-9)


def decode_video(path: Path, keep: np.ndarray, size: int, resize: str) -> np.ndarray:
    """The frames ``keep`` (indices in presentation order) of a video file, scaled."""
    av = _import_av()
    out = np.empty((len(keep), size, size, 3), np.uint8)
    scale = FrameScaler(size, resize)
    position, last = 0, int(keep[-1])
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index == keep[position]:
                    out[position] = scale(frame)
                    position += 1
                    if index == last:
                        break
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise UsageError(f"cannot decode video {path} ({_one_line(error)}): re-encode or delete the file") from None
    if position != len(keep):
        raise UsageError(f"video {path} decoded to {position} of its {len(keep)} planned frames: re-encode the file")
    return out


def read_sidecar(path: Path, frames: int) -> np.ndarray | None:
    """``<video>.actions.npy``: (frames, A) (one per frame; the last is ignored) or (frames - 1, A)."""
    if not path.is_file():
        return None
    try:
        actions = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read actions {path} ({_one_line(error)}): save a float array with numpy.save") from None
    if actions.ndim == 1:
        actions = actions[:, None]
    if actions.ndim != 2 or not np.issubdtype(actions.dtype, np.number) or len(actions) not in (frames, frames - 1):
        raise UsageError(
            f"actions {path} have shape {list(actions.shape)}: the video has {frames} frames, so use "
            f"({frames - 1}, A) (one per transition) or ({frames}, A) (one per frame)"
        )
    actions = actions.astype(np.float32)
    if len(actions) == frames - 1:
        actions = np.concatenate([actions, np.full((1, actions.shape[1]), np.nan, np.float32)])
    actions[-1] = np.nan  # no action is taken at the final frame
    return actions


def _video_clip(path: Path, config: IngestConfig) -> tuple[Clip, float, list[Any]]:
    times, rate = probe_video(path)

    def load(keep: np.ndarray) -> dict[str, np.ndarray]:
        return {"rgb": decode_video(path, keep, config.size, config.resize)}

    stem = path.with_suffix("")  # a.mp4 -> a.actions.npy
    actions = read_sidecar(stem.with_name(stem.name + SIDECAR), len(times))
    return Clip(path.name, times, actions, load=load), rate, [path.name, path.stat().st_size]


def _frames_clip(folder: Path, config: IngestConfig) -> tuple[Clip, float, list[Any]]:
    from PIL import Image, ImageOps

    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")), key=natural_order)
    if not paths:
        raise UsageError(f"folder {folder} holds no frames ({', '.join(IMAGE_EXTENSIONS)}): add frames or remove it")

    def load(keep: np.ndarray) -> dict[str, np.ndarray]:
        frames, scale = [], FrameScaler(config.size, config.resize)
        for index in keep:
            try:
                with Image.open(paths[index]) as image:
                    image.draft("RGB", (config.size, config.size))  # JPEG: decode at a reduced scale, still >= size
                    frames.append(scale.image(ImageOps.exif_transpose(image)))  # a phone's EXIF turn, as viewers show it
            except (OSError, ValueError) as error:
                raise UsageError(f"cannot read frame {paths[index]} ({_one_line(error)}): replace or delete it") from None
        return {"rgb": np.stack(frames)}

    actions = read_sidecar(folder.with_name(folder.name + SIDECAR), len(paths))
    fingerprint = [folder.name, len(paths), sum(p.stat().st_size for p in paths)]
    return Clip(folder.name, np.arange(len(paths)) / config.image_fps, actions, load=load), config.image_fps, fingerprint


def video_source(path: Path, config: IngestConfig) -> Source:
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise UsageError(f"{path} is not a video file ({', '.join(VIDEO_EXTENSIONS)})")
        entries = [path]
    else:
        entries = sorted(
            (
                p
                for p in path.iterdir()
                if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS)
                and not (p / CONFIG_FILE).exists()  # a masklam dataset (e.g. --out inside SOURCE) is no clip
            ),
            key=natural_order,
        )
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
            entries = [path]  # the folder itself is one image sequence
    if not entries:
        raise UsageError(f"{path} holds no video files ({', '.join(VIDEO_EXTENSIONS)}) and no folders of frames")
    clips, rates, fingerprint = [], {}, []
    for entry in entries:
        clip, rate, print_ = _frames_clip(entry, config) if entry.is_dir() else _video_clip(entry, config)
        clips.append(clip)
        rates[clip.name] = rate
        fingerprint.append(print_)
    widths = {clip.actions.shape[1] for clip in clips if clip.actions is not None}
    if len(widths) > 1:
        raise UsageError(f"the action sidecars of {path} differ in width ({sorted(widths)}): give every video the same action dimensions")
    fps = _common_fps(rates, config, path)
    description = {"kind": "video", "path": str(path.resolve()), "videos": len(clips)}
    names = [f"action_{i}" for i in range(widths.pop())] if widths else None
    return Source("video", description, clips, fps, fingerprint, action_names=names)


def _common_fps(rates: dict[str, float], config: IngestConfig, path: Path) -> float:
    if config.fps is not None:
        slower = {name: rate for name, rate in rates.items() if rate < config.fps - 1e-3}
        if slower:
            name, rate = next(iter(slower.items()))
            raise UsageError(f"--fps {config.fps:g} is above the frame rate of {name} ({rate:g}): masklam does not invent frames; pass --fps {rate:g} or lower")
        return float(config.fps)
    first = next(iter(rates.values()))
    if any(abs(rate - first) > 1e-6 * first for rate in rates.values()):
        shown = sorted({float(f"{rate:.6g}") for rate in rates.values()})
        raise UsageError(f"the videos of {path} have different frame rates ({shown}): pass --fps to resample them to one")
    return float(first)


def lerobot_source(path: Path, config: IngestConfig, hub: dict[str, Any] | None = None) -> Source:
    from masklam.data.lerobot_format import LABELLED_KEY, MASK_PREFIX, SOURCE_COLUMNS, decode_png_struct, decode_span, open_lerobot

    folder = open_lerobot(path, config.camera)
    clips = []
    for episode in folder.episodes:

        def load(keep: np.ndarray, episode=episode) -> dict[str, np.ndarray]:
            rows = folder.rows(episode)
            out: dict[str, np.ndarray] = {}
            scale = FrameScaler(config.size, config.resize)
            if folder.camera_is_video:
                start, stop = episode.video[2], episode.video[3]
                out["rgb"] = decode_span(folder.video_path(episode), start, stop, episode.timestamps[keep], scale)
            else:
                cells = rows[folder.camera].to_pylist()
                out["rgb"] = np.stack([scale.image(decode_png_struct(cells[i], path)) for i in keep])
            if "observation.state" in rows.column_names:
                out["state"] = np.asarray(rows["observation.state"].to_pylist(), np.float32)[keep]
            for name, dtype in SOURCE_COLUMNS.items():  # masklam's export of an ingested dataset: the original source's
                if name in rows.column_names:
                    out[name] = np.asarray(rows[name].to_pylist(), dtype).reshape(-1)[keep]
            for source in folder.mask_sources:
                cells = rows[MASK_PREFIX + source].to_pylist()
                out[MASK_STEP + source] = np.stack([scale_mask(decode_png_struct(cells[i], path), scale) for i in keep])
            return out

        actions = None
        if folder.action_names is not None:
            rows = folder.rows(episode)
            actions = np.asarray(rows["action"].to_pylist(), np.float32).reshape(episode.length, -1)
            if LABELLED_KEY in rows.column_names:  # a dataset masklam exported: rows without a recorded action
                known = np.asarray(rows[LABELLED_KEY].to_pylist(), bool).reshape(-1)
                actions[~known] = np.nan
                actions = actions if known.any() else None
        clips.append(Clip(f"episode_{episode.index:06d}", episode.timestamps, actions, episode.task, load))
    fps = _common_fps({"the dataset": folder.fps}, config, path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)
    fingerprint = [[str(p.relative_to(path)), p.stat().st_size] for p in files]
    description = {
        "kind": "lerobot",
        "camera": folder.camera,
        "codebase_version": folder.info.get("codebase_version"),
        "source_fps": folder.fps,
        "robot_type": folder.info.get("robot_type"),
    }
    description.update(hub or {"path": str(path.resolve())})
    exported = (folder.info.get("masklam") or {}).get("mask_sources") or {}  # what masklam's export says of them
    masks = {}
    for name in folder.mask_sources:
        entry = exported.get(name) if isinstance(exported.get(name), dict) else {}
        masks[name] = {
            "kind": str(entry.get("kind", "lerobot")),
            "description": str(entry.get("description", "")) or f"the LeRobot feature {MASK_PREFIX}{name}",
            "restored_from": f"{MASK_PREFIX}{name}",
        }
    return Source("lerobot", description, clips, fps, fingerprint, folder.action_names, folder.state_names, masks)


def scale_mask(image: Any, scale: FrameScaler) -> np.ndarray:
    """A LeRobot mask image (255 = agent) as (size, size) 0/1 at the frames' geometry: the same crop and scale as
    the frame, then the majority (>= 128) of each pixel's area. At the export's own size it is the mask unchanged."""
    return (scale.image(image)[..., 0] >= 128).astype(np.uint8)


def open_source(config: IngestConfig) -> Source:
    if config.source.startswith(HUB_PREFIX):
        return _hub_source(config)
    path = Path(config.source)
    if not path.exists():
        raise UsageError(f"{path} does not exist: pass a video file, a folder of videos or frames, or a LeRobot v3 folder")
    from masklam.data.lerobot_format import is_lerobot_folder

    if path.is_dir() and is_lerobot_folder(path):
        return lerobot_source(path, config)
    if config.camera is not None:
        raise UsageError(f"--camera is for LeRobot datasets, and {path} is not one (it has no meta/info.json)")
    return video_source(path, config)


def _hub_source(config: IngestConfig) -> Source:
    """hf://datasets/OWNER/NAME[@REVISION]: downloaded with huggingface_hub, then read as a local folder."""
    repo, _, revision = config.source.removeprefix(HUB_PREFIX).partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UsageError("hf:// sources need masklam[hub]: pip install 'masklam[hub]'") from None
    try:
        local = snapshot_download(repo, repo_type="dataset", revision=revision or None)
    except Exception as error:  # network, auth, missing repo: one line
        raise UsageError(f"cannot download {config.source} ({_one_line(error)[:200]}): check the id and your network") from None
    hub = {"repo_id": repo, "revision": revision or "main", "path": config.source}
    return lerobot_source(Path(local), config, hub)


# --- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodePlan:
    clip: int  # index in Source.clips
    frames: tuple[int, ...]  # source frame indices
    piece: int  # which --chunk-seconds piece of the clip


def subsample(times: np.ndarray, fps: float) -> np.ndarray:
    """Indices of the frames kept at ``fps``: for each tick k / fps from the first frame (k = 0, 1, ... up to
    the last frame's time), the first frame at or after it; a frame that is the first after several ticks (a
    gap in a variable-rate video) is kept once. Ticks count from the first frame, not from the frames kept."""
    ticks = times[0] + np.arange(int(np.floor((times[-1] - times[0]) * fps + 1e-6)) + 1) / fps
    return np.unique(np.searchsorted(times, ticks - 1e-6, side="left"))


def natural_order(path: Path) -> list:
    """Sort key: digit runs as numbers, so frame2 comes before frame10 (as a file browser shows them)."""
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name) if part]


def plan_episodes(source: Source, config: IngestConfig) -> list[EpisodePlan]:
    episodes = []
    for index, clip in enumerate(source.clips):
        keep = subsample(clip.times, source.fps) if config.fps is not None else np.arange(len(clip.times))  # every frame
        if len(keep) < config.min_frames:
            raise UsageError(
                f"{clip.name} has {len(keep)} frames at {source.fps:g} fps, fewer than --min-frames {config.min_frames} "
                "(the frame stack and one transition): remove it or lower --min-frames"
            )
        piece = round(config.chunk_seconds * source.fps) if config.chunk_seconds else len(keep)
        if config.chunk_seconds and piece < config.min_frames:
            raise UsageError(f"--chunk-seconds {config.chunk_seconds:g} gives {piece}-frame episodes, fewer than --min-frames {config.min_frames}")
        for number, start in enumerate(range(0, len(keep), piece)):
            frames = keep[start : start + piece]
            if len(frames) >= config.min_frames:  # a video's short tail is dropped
                episodes.append(EpisodePlan(index, tuple(int(f) for f in frames), number))
    return episodes


@dataclass(frozen=True)
class ShardPlan:
    split: str
    shard: int
    episodes: tuple[tuple[int, int], ...]  # (episode index within the split, index into the episode plan)


def split_and_shard(episodes: list[EpisodePlan], source: Source, config: IngestConfig) -> tuple[list[ShardPlan], dict[str, set[int]]]:
    """Shards of each split, and the labelled episodes (split episode indices) of each split."""
    if config.test_episodes >= len(episodes):
        raise UsageError(f"--test-episodes {config.test_episodes} leaves no train episode: the source has {len(episodes)}")
    order = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(98,))).permutation(len(episodes))
    test = {int(i) for i in order[: config.test_episodes]}
    members = {"train": [i for i in range(len(episodes)) if i not in test], "test": sorted(test)}
    has_actions = {split: [n for n, i in enumerate(ids) if source.clips[episodes[i].clip].actions is not None] for split, ids in members.items()}
    labelled = {"test": set(has_actions["test"]), "train": set(has_actions["train"])}
    if config.labelled_episodes is not None or config.label_fraction is not None:
        candidates = has_actions["train"]
        count = config.labelled_episodes if config.labelled_episodes is not None else round(config.label_fraction * len(candidates))
        if count > len(candidates):
            raise UsageError(f"--labelled-episodes {count}: only {len(candidates)} train episodes have actions")
        chosen = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(99,))).permutation(len(candidates))[:count]
        labelled["train"] = {candidates[int(i)] for i in chosen}
    plans = []
    for split in SPLITS:
        ids = members[split]
        for shard, start in enumerate(range(0, len(ids), config.episodes_per_shard)):
            chunk = ids[start : start + config.episodes_per_shard]
            plans.append(ShardPlan(split, shard, tuple((start + n, i) for n, i in enumerate(chunk))))
    return plans, labelled


# --- writing ------------------------------------------------------------------------------------
class IngestWriter:
    def __init__(self, config: IngestConfig, source: Source, root: Path) -> None:
        self.config, self.source, self.root = config, source, root
        self.backend = get_backend(config.backend)
        self.episodes = plan_episodes(source, config)
        self.plans, self.labelled = split_and_shard(self.episodes, source, config)
        self.features = ingest_features(source, config)

    def is_done(self, plan: ShardPlan) -> bool:
        return index_path(self.root, plan.split, plan.shard).is_file() and self.backend.has_shard(self.root, plan.split, plan.shard)

    def load(self, plan: EpisodePlan) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """An episode's step arrays and its masks by source."""
        clip = self.source.clips[plan.clip]
        keep = np.asarray(plan.frames)
        steps = clip.load(keep)
        masks = {key.removeprefix(MASK_STEP): steps.pop(key) for key in [k for k in steps if k.startswith(MASK_STEP)]}
        # where each stored frame came from: a user maps it back to the source (a player's time, or frame index)
        steps.setdefault("source_frame", keep.astype(np.int64))  # a re-ingested export brings its own
        steps.setdefault("source_time", clip.times[keep].astype(np.float64))
        if clip.actions is not None:
            # The action at a kept frame; with --fps the actions of dropped frames are dropped (see docs/ingest.md).
            action = clip.actions[keep].copy()
            action[-1] = np.nan  # an episode's final frame has no action (its transition leaves the episode)
            steps["action"] = action
        return steps, masks

    def read(self, plan: ShardPlan, progress: Callable[[int], None] | None = None) -> tuple[list[Record], dict[str, Any]]:
        """A shard's records (decoded and scaled) and its action statistics, ready for ``save``."""
        records, sums, squares, count = [], 0.0, 0.0, 0
        coverage = {source: [0.0, 0] for source in self.source.mask_sources}  # sum of records' mask means, records
        for split_episode, episode_id in plan.episodes:
            episode = self.episodes[episode_id]
            clip = self.source.clips[episode.clip]
            labelled = split_episode in self.labelled[plan.split]
            steps, masks = self.load(episode)
            frames = len(steps["rgb"])
            if "action" not in steps:
                steps["action"] = np.full((frames, *self.features["action"].shape), np.nan, np.float32)
            if labelled:
                known = steps["action"][:-1].astype(np.float64)
                sums, squares, count = sums + known.sum(0), squares + (known**2).sum(0), count + len(known)
            extra = {"source": clip.name, "source_frames": [episode.frames[0], episode.frames[-1] + 1], "piece": episode.piece}
            if clip.task:
                extra["task"] = clip.task
            new = episode_records(plan.split, split_episode, episode_id, labelled, steps, extra, self.config.chunk_steps, masks)
            for record in new:
                for source, mask in record.masks.items():
                    coverage[source][0] += float(mask.mean())
                    coverage[source][1] += 1
            records += new
            if progress is not None:
                progress(frames)
        stats = {"action_count": count, "action_sum": np.asarray(sums).tolist(), "action_sq_sum": np.asarray(squares).tolist(), "mask_coverage": coverage}
        return records, stats

    def save(self, plan: ShardPlan, records: list[Record], stats: dict[str, Any]) -> None:
        self.backend.write_shard(self.root, plan.split, plan.shard, records, self.features)
        write_index(self.root, plan.split, plan.shard, [r.meta for r in records], stats)


def episode_records(
    split: str,
    episode: int,
    seed: int,
    labelled: bool,
    steps: dict[str, np.ndarray],
    extra: dict[str, Any],
    chunk_steps: int,
    masks: dict[str, np.ndarray] | None = None,
) -> list[Record]:
    frames = len(steps["rgb"])
    transitions = frames - 1
    length = chunk_steps or transitions
    records = []
    for chunk, start in enumerate(range(0, transitions, length)):
        stop = min(start + length, transitions) + 1  # chunks share their boundary frame
        arrays = {name: array[start:stop] for name, array in steps.items() if labelled or name != "action"}
        meta = RecordMeta(record_key(episode, chunk), split, episode, chunk, start, stop - start, frames, seed, labelled, 0.0, dict(extra))
        records.append(Record(meta, arrays, {source: mask[start:stop] for source, mask in (masks or {}).items()}))
    return records


def ingest_features(source: Source, config: IngestConfig) -> dict[str, Feature]:
    size = config.size
    action_dim = len(source.action_names or [])
    features = {
        "rgb": Feature("uint8", (size, size, 3), f"RGB frame of the source ({source.kind}), {config.resize} to {size} px"),
        "action": Feature(
            "float32",
            (action_dim,),
            "recorded action at this frame; NaN at an episode's final frame and throughout unlabelled episodes (readers return no action for those)"
            + ("" if action_dim else "; the source has no actions (shape 0)"),
        ),
    }
    features["source_frame"] = Feature(
        "int64",
        (),
        "index of this frame among the frames the source shows, from 0 (a video in display order; a folder in natural name order; a LeRobot episode's frame_index)",
    )
    features["source_time"] = Feature(
        "float64",
        (),
        "presentation time of this frame in the source, seconds (a video: as its decoder reports it; a folder of frames: index / --image-fps; LeRobot: the row's timestamp)",
    )
    if source.state_names is not None:
        features["state"] = Feature("float32", (len(source.state_names),), "observation.state: " + ", ".join(source.state_names))
    return features


def source_identity(config: IngestConfig, source: Source) -> dict[str, Any]:
    identity = dataclasses.asdict(config)
    identity["source_files_sha256"] = hashlib.sha256(repr(source.fingerprint).encode()).hexdigest()
    identity["kind"] = "ingest"
    return identity


class _Identity:
    """prepare_output's view of a config: its identity."""

    def __init__(self, identity: dict[str, Any]) -> None:
        self._identity = identity

    def identity(self) -> dict[str, Any]:
        return self._identity


def ingest(config: IngestConfig, root: Path, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Plan the source (all checks), then write every shard not yet on disk, then info.json. Returns info."""
    root = Path(root)
    source = open_source(config)
    writer = IngestWriter(config, source, root)
    identity = source_identity(config, source)
    with writer_lock(root):  # one writer per dataset
        prepare_output(root, _Identity(identity), overwrite)
        todo = [plan for plan in writer.plans if not writer.is_done(plan)]
        total = sum(len(writer.episodes[i].frames) for plan in todo for _, i in plan.episodes)
        bar = tqdm(total=total, unit="frame", desc=f"ingest {Path(config.source).name}", disable=not show_progress or None, smoothing=0.1)
        # A shard is written (compressed, fsynced) on a thread of its own while the next one decodes.
        with bar, ThreadPoolExecutor(1, thread_name_prefix="masklam-write") as saver:
            saving: Future | None = None
            for plan in todo:
                shard = writer.read(plan, bar.update)
                if saving is not None:
                    saving.result()
                saving = saver.submit(writer.save, plan, *shard)
            if saving is not None:
                saving.result()
        return write_info(root, config, source, writer)


def write_info(root: Path, config: IngestConfig, source: Source, writer: IngestWriter) -> dict[str, Any]:
    made_by = read_json(root / CONFIG_FILE, "re-run the same masklam ingest command")
    splits, count, sums, squares = {}, 0, 0.0, 0.0
    coverage = {name: [0.0, 0] for name in source.mask_sources}
    for split in SPLITS:
        files = [read_json(index_path(root, p.split, p.shard), "re-run the same masklam ingest command") for p in writer.plans if p.split == split]
        records = [RecordMeta.from_json(r) for f in files for r in f["records"]]
        for f in files:
            for name, (total, number) in f.get("mask_coverage", {}).items():
                coverage[name] = [coverage[name][0] + total, coverage[name][1] + number]
        splits[split] = {"shards": len(files), **split_counts(records), "mean_return": None}
        if split == "train" and files:
            count = sum(f["action_count"] for f in files)
            sums = np.sum([f["action_sum"] for f in files], axis=0)
            squares = np.sum([f["action_sq_sum"] for f in files], axis=0)
    action_dim = writer.features["action"].shape[0]
    mean = np.asarray(sums, np.float64) / max(count, 1) if count else np.zeros(action_dim)
    var = np.maximum(np.asarray(squares, np.float64) / max(count, 1) - mean**2, 0.0) if count else np.zeros(action_dim)
    distractors = {"background": False, "videos": None, "camera_scale": 0.0, "color_scale": 0.0, "objects": 0}
    info = {
        "schema_version": SCHEMA_VERSION,
        "masklam_version": masklam.__version__,
        "backend": config.backend,
        "simulator": False,
        "source": {**source.description, "settings": {k: v for k, v in dataclasses.asdict(config).items() if k != "source"}},
        # what the rest of masklam reads of "env": the image size; there is no environment to build
        "env": {
            "env_id": f"{source.kind}:{_source_name(config)}",
            "render": {"size": config.size, "resize": config.resize},
            "distractors": distractors,
            "episode_steps": 0,
        },
        "fps": source.fps,
        "features": {name: f.to_json() for name, f in writer.features.items()},
        "state_names": source.state_names or [],
        "action_names": source.action_names or [],
        "action_stats": {
            "split": "train" if count else None,
            "transitions": int(count),
            "mean": mean.round(8).tolist(),
            "var": var.round(8).tolist(),
            "var_mean": float(np.round(np.mean(var), 8)) if action_dim else 0.0,
            "note": "over the labelled train transitions only (an ingested source has no actions for the others)",
        },
        # masks restored from masklam's own LeRobot export (coverage: the mean of the records' agent fractions)
        "mask_sources": {
            name: {**entry, "coverage": round(coverage[name][0] / coverage[name][1], 6) if coverage[name][1] else None}
            for name, entry in source.mask_sources.items()
        },
        "splits": splits,
        "ingest": {key: made_by[key] for key in ("config", "command")},
        "checksums": CHECKSUMS[config.backend],  # the backends write them; verify checks them (not "an older masklam")
    }
    atomic_write_json(root / INFO, info)
    return info


def _source_name(config: IngestConfig) -> str:
    return config.source.removeprefix(HUB_PREFIX).rstrip("/").rsplit("/", 1)[-1] or "source"


def require_simulator(info: dict[str, Any], root: Any, what: str) -> None:
    """Refuse ``what`` (evaluate, oracle masks, ...) on a dataset that has no simulator, in one line."""
    if info.get("simulator", True) is False:
        kind = info.get("source", {}).get("kind", "data")
        raise UsageError(
            f"{root} was ingested from {kind} and has no simulator: {what} needs one "
            "(use the probe and masks from a segmentation model prompted with --point/--box instead)"
        )
