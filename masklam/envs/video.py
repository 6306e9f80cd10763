"""Background distractor videos for simulated rollouts.

A *source* gives two disjoint pools of clips, ``train`` and ``test``. :class:`BackgroundVideo` plays one clip per
episode as in the Distracting Control Suite: a random clip, start frame and direction at each reset, one frame per
env step, bouncing at both ends. Unlike the original DCS code every draw comes from the generator passed to
``reset``, so rollouts are reproducible from a seed.

Sources (``open_video_pools``):

* ``"builtin"``: no downloads. Slow camera paths (pan + zoom) over the real photographs shipped inside the
  scikit-image wheel, plus a few moving procedural textures (multi-scale noise, coloured blobs, gratings).
  Photos, not just clips, are split between train and test. Every clip is a pure function of its name.
* a DAVIS-2017 folder: ``ROOT/JPEGImages/480p/<video>/*.jpg`` with ``ROOT/ImageSets/2017/train.txt`` (train pool)
  and ``val.txt`` (test pool), one video name per line.
* a folder with ``train/`` and ``test/`` sub-folders, each holding clips.
* a flat folder of clips, split by sorted name: clips at positions 3, 7, 11, ... (every 4th, 0-based) go to test,
  the rest to train; with only 2 or 3 clips the last one is the test pool.

A clip is a sub-folder of frame images (sorted by file name, so number frames with zero padding) or a video file
decoded with PyAV. The layout is checked when the source is opened; frames are decoded only when a clip is first
played, and at most the first ``MAX_CLIP_FRAMES`` frames of a clip are kept to bound memory.
"""

from __future__ import annotations

import math
import operator
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from masklam.errors import UsageError

BUILTIN = "builtin"
MAX_CLIP_FRAMES = 300
CACHED_CLIPS = 8
FRAME_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
VIDEO_EXTENSIONS = (".avi", ".gif", ".mkv", ".mov", ".mp4", ".webm")

_RESAMPLE = Image.Resampling.LANCZOS
_FRAME_HELP = f"frame images ({', '.join(FRAME_EXTENSIONS)})"
_CLIP_HELP = f"sub-folders of {_FRAME_HELP} or video files ({', '.join(VIDEO_EXTENSIONS)})"


class _Clip(Protocol):
    def load(self, size: int) -> np.ndarray:
        """All frames, (T, size, size, 3) uint8, T >= 1."""
        ...


class VideoPool:
    """An ordered, immutable list of clips for one split.

    Decoded clips are kept in a small LRU cache (``CACHED_CLIPS`` clips) because episodes replay them; the returned
    arrays are read-only so that a caller cannot corrupt the cache.
    """

    def __init__(self, names: Sequence[str], clips: Sequence[_Clip]) -> None:
        if len(names) != len(clips):
            raise ValueError(f"{len(names)} names for {len(clips)} clips")
        if len(set(names)) != len(names):
            raise ValueError(f"clip names must be unique: {list(names)}")
        self.names: tuple[str, ...] = tuple(names)
        self._clips: tuple[_Clip, ...] = tuple(clips)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_arrays(cls, names: Sequence[str], arrays: Sequence[np.ndarray]) -> VideoPool:
        """A pool of in-memory clips, each (T, H, W, 3) uint8 with T >= 1 (tests, custom generators)."""
        return cls(names, [_ArrayClip(np.asarray(array)) for array in arrays])

    def __len__(self) -> int:
        return len(self._clips)

    def __repr__(self) -> str:
        return f"VideoPool({len(self)} clips: {', '.join(self.names)})"

    def frames(self, index: int, size: int) -> np.ndarray:
        """(T, size, size, 3) uint8 frames of clip ``index``: centre-cropped to a square, resized with antialiasing."""
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for a pool of {len(self)} clips")
        size = _check_size(size)
        key = (index, size)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        # Decode outside the lock: it is slow, and two threads loading the same clip get identical arrays anyway.
        frames = self._clips[index].load(size)
        frames.setflags(write=False)
        with self._lock:
            self._cache[key] = frames
            self._cache.move_to_end(key)
            while len(self._cache) > CACHED_CLIPS:
                self._cache.popitem(last=False)
        return frames

    # Pools travel to worker processes: send the clip list, not the cache or the lock.
    def __getstate__(self) -> dict[str, Any]:
        return {"names": self.names, "clips": self._clips}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["names"], state["clips"])  # type: ignore[misc]


class BackgroundVideo:
    """Plays one clip per episode: random clip, start frame and direction at reset; one frame per step; bounces
    at the ends (``..., T-2, T-1, T-2, ...`` and ``..., 1, 0, 1, ...``; a 1-frame clip stays put).

    Returned frames are read-only views into the pool's cache.
    """

    def __init__(self, pool: VideoPool, size: int) -> None:
        if len(pool) == 0:
            raise UsageError("the background video pool is empty: give a source with at least one clip per split")
        self.pool = pool
        self.size = _check_size(size)
        self.video = 0
        self.frame = 0
        self.direction = 1
        self._frames: np.ndarray | None = None

    def reset(self, rng: np.random.Generator) -> np.ndarray:
        """Draw clip, start frame and direction (in that order) from ``rng``; return the start frame."""
        self.video = int(rng.integers(len(self.pool)))
        self._frames = self.pool.frames(self.video, self.size)
        self.frame = int(rng.integers(len(self._frames)))
        self.direction = int(rng.choice([-1, 1]))
        return self._frames[self.frame]

    def step(self) -> np.ndarray:
        """Advance one frame, turning around at either end, and return it."""
        if self._frames is None:
            raise RuntimeError("BackgroundVideo.step() called before reset()")
        length = len(self._frames)
        if length > 1:
            if not 0 <= self.frame + self.direction < length:
                self.direction = -self.direction
            self.frame += self.direction
        return self._frames[self.frame]


def open_video_pools(source: str) -> dict[str, VideoPool]:
    """``{"train": VideoPool, "test": VideoPool}`` for ``"builtin"`` or a folder (layouts in the module docstring)."""
    if source == BUILTIN:
        return dict(_builtin_pools())  # a fresh dict around the shared pools: callers may edit their dict
    root = Path(source).expanduser()
    if not root.exists():
        raise UsageError(f"background video folder {source!r} does not exist: pass {BUILTIN!r} or a folder of clips")
    if not root.is_dir():
        raise UsageError(f"background video source {source!r} is a file, not a folder: put clips in a folder and pass the folder")
    if (root / "JPEGImages").is_dir() or (root / "ImageSets").is_dir():
        return _davis_pools(root)
    if (root / "train").is_dir() or (root / "test").is_dir():
        return _subfolder_pools(root)
    return _flat_pools(root)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise UsageError(f"background frame size must be a positive integer, got {size!r}: pass the image size in pixels")
    return int(size)


def _square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to size x size with an antialiasing filter."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    resized = image.convert("RGB").resize((size, size), _RESAMPLE, box=box, reducing_gap=3.0)
    return np.asarray(resized)


# ---------------------------------------------------------------------------------------------------------------
# Folder sources


@dataclass(frozen=True)
class _ArrayClip:
    array: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 4 or self.array.shape[-1] != 3 or self.array.dtype != np.uint8 or len(self.array) == 0:
            raise ValueError(f"a clip array must be (T, H, W, 3) uint8 with T >= 1, got {self.array.shape} {self.array.dtype}")

    def load(self, size: int) -> np.ndarray:
        if self.array.shape[1:3] == (size, size):
            return self.array.copy()
        return np.stack([_square_resize(Image.fromarray(frame), size) for frame in self.array])


@dataclass(frozen=True)
class _FrameFolderClip:
    paths: tuple[Path, ...]

    def load(self, size: int) -> np.ndarray:
        frames = []
        for path in self.paths[:MAX_CLIP_FRAMES]:
            try:
                with Image.open(path) as image:
                    image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size (much faster)
                    frames.append(_square_resize(image, size))
            except (OSError, ValueError) as error:
                raise UsageError(f"cannot read frame image {path} ({_one_line(error)}): replace or delete the file") from None
        return np.stack(frames)


@dataclass(frozen=True)
class _VideoFileClip:
    path: Path

    def load(self, size: int) -> np.ndarray:
        av = _import_av(self.path)
        frames = []
        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(container.streams.video[0]):
                    frames.append(_square_resize(frame.to_image(), size))
                    if len(frames) == MAX_CLIP_FRAMES:
                        break
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise UsageError(f"cannot decode video {self.path} ({_one_line(error)}): re-encode or delete the file") from None
        if not frames:
            raise UsageError(f"video {self.path} has no decodable frames: re-encode or delete the file")
        return np.stack(frames)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _import_av(path: Path) -> Any:
    # Imported only when a video file is seen: frame folders and the built-in source work without PyAV.
    try:
        import av
    except ImportError:
        raise UsageError(f"reading video file {path} needs PyAV: run `pip install av` or use folders of frames") from None
    return av


def _frame_folder_clip(folder: Path) -> _FrameFolderClip:
    paths = tuple(
        sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
    )
    if not paths:
        raise UsageError(f"clip folder {folder} holds no {_FRAME_HELP}: add frames or remove the folder")
    return _FrameFolderClip(paths)


def _video_file_clip(path: Path) -> _VideoFileClip:
    av = _import_av(path)
    # Probe the container now (cheap) so a corrupt file fails when the source is opened, not mid-collection.
    try:
        with av.open(str(path)) as container:
            has_video = len(container.streams.video) > 0
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise UsageError(f"cannot open video {path} ({_one_line(error)}): re-encode or delete the file") from None
    if not has_video:
        raise UsageError(f"file {path} has no video stream: re-encode or delete the file")
    return _VideoFileClip(path)


def _list_clips(folder: Path) -> tuple[list[str], list[_Clip]]:
    """Clips in ``folder`` sorted by name: sub-folders of frames and video files; other files are ignored."""
    names: list[str] = []
    clips: list[_Clip] = []
    loose_frames = False
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            names.append(entry.name)
            clips.append(_frame_folder_clip(entry))
        elif entry.suffix.lower() in VIDEO_EXTENSIONS:
            names.append(entry.name)
            clips.append(_video_file_clip(entry))
        elif entry.suffix.lower() in FRAME_EXTENSIONS:
            loose_frames = True
    if not clips:
        if loose_frames:
            raise UsageError(f"{folder} holds frame images but no clips: put each clip's frames in its own sub-folder of {folder}")
        raise UsageError(f"no clips found in {folder}: add {_CLIP_HELP}")
    return names, clips


def _subfolder_pools(root: Path) -> dict[str, VideoPool]:
    pools = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise UsageError(f"{root} has a train/ or test/ folder but no {split}/: add {folder} with clips")
        pools[split] = VideoPool(*_list_clips(folder))
    return pools


def _flat_pools(root: Path) -> dict[str, VideoPool]:
    names, clips = _list_clips(root)
    if len(clips) < 2:
        raise UsageError(f"{root} holds only {len(clips)} clip, not enough for disjoint train and test pools: add clips or use train/ and test/ sub-folders")
    # Every 4th clip (positions 3, 7, 11, ...) is held out; with 2 or 3 clips the last one is.
    test = {i for i in range(len(clips)) if i % 4 == 3} or {len(clips) - 1}
    train = [i for i in range(len(clips)) if i not in test]
    return {
        "train": VideoPool([names[i] for i in train], [clips[i] for i in train]),
        "test": VideoPool([names[i] for i in sorted(test)], [clips[i] for i in sorted(test)]),
    }


def _davis_pools(root: Path) -> dict[str, VideoPool]:
    frames_root = root / "JPEGImages" / "480p"
    if not frames_root.is_dir():
        raise UsageError(f"{root} looks like DAVIS 2017 but {frames_root} is not a folder: DAVIS needs JPEGImages/480p/<video>/*.jpg")
    split_dir = root / "ImageSets" / "2017"
    train = _read_davis_split(split_dir / "train.txt", frames_root)
    test = _read_davis_split(split_dir / "val.txt", frames_root)
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise UsageError(
            f"DAVIS video {overlap[0]!r} is in both {split_dir / 'train.txt'} and {split_dir / 'val.txt'}: "
            "remove it from one list so train and test stay disjoint"
        )
    return {
        "train": VideoPool(train, [_frame_folder_clip(frames_root / name) for name in train]),
        "test": VideoPool(test, [_frame_folder_clip(frames_root / name) for name in test]),
    }


def _read_davis_split(split_file: Path, frames_root: Path) -> list[str]:
    if not split_file.is_file():
        raise UsageError(f"DAVIS split file {split_file} is missing: add it with one video name per line")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not names:
        raise UsageError(f"DAVIS split file {split_file} lists no videos: add one video name per line")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise UsageError(f"DAVIS split file {split_file} lists video {name!r} twice: remove the duplicate line")
        if not (frames_root / name).is_dir():
            raise UsageError(f"DAVIS split file {split_file} names video {name!r} but {frames_root / name} is not a folder: fix the name or add its frames")
    return names


# ---------------------------------------------------------------------------------------------------------------
# Built-in source: camera paths over scikit-image photographs, and procedural textures

# Photos that ship inside the scikit-image wheel (those needing a pooch download are left out). The stereo pair
# motorcycle_left/right is one scene, so both halves sit in the same (test) pool.
_TRAIN_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coins", "grass", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "rocket",
)  # fmt: skip
_TEST_PHOTOS = ("coffee", "gravel", "motorcycle_left", "motorcycle_right", "retina")
_TRAIN_TEXTURES = ("noise-0", "noise-1", "blobs-0", "gratings-0")
_TEST_TEXTURES = ("noise-2", "blobs-1")

_MIN_ZOOM, _MAX_ZOOM = 0.5, 0.85  # crop side as a fraction of the photo's short side
_OVERSAMPLE = 2  # the photo is pre-shrunk so that the smallest crop still has >= 2x the output pixels


@lru_cache(maxsize=1)
def _builtin_pools() -> dict[str, VideoPool]:
    # Shared within a process: pools are immutable, so every env reuses the same decoded-clip cache.
    def pool(photos: tuple[str, ...], textures: tuple[str, ...]) -> VideoPool:
        clips: list[_Clip] = [_PhotoClip(name) for name in photos]
        clips += [_TEXTURES[name.split("-")[0]](name) for name in textures]
        return VideoPool(photos + textures, clips)

    return {"train": pool(_TRAIN_PHOTOS, _TRAIN_TEXTURES), "test": pool(_TEST_PHOTOS, _TEST_TEXTURES)}


def _clip_rng(name: str) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process.
    return np.random.default_rng(zlib.crc32(name.encode()))


def _clip_length(rng: np.random.Generator) -> int:
    return int(rng.integers(100, 151))


def _smooth_wave(rng: np.random.Generator, length: int) -> np.ndarray:
    """A smooth random signal in [-1, 1]: two sinusoids of 0.2-1 cycles per clip (slow, DAVIS-like motion)."""
    t = np.arange(length) / length
    freq = rng.uniform([0.2, 0.5], [0.5, 1.0])
    phase = rng.uniform(0, 2 * np.pi, 2)
    weight = rng.uniform(0.3, 1.0, 2)
    return weight @ np.sin(2 * np.pi * freq[:, None] * t + phase[:, None]) / weight.sum()


def _load_photo(name: str) -> np.ndarray:
    try:
        from skimage import data

        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            photo = left if name == "motorcycle_left" else right
        else:
            photo = getattr(data, name)()
    except Exception as error:  # an incomplete install fails in many ways (missing file, pooch import, ...)
        raise UsageError(f"built-in background photo {name!r} cannot be loaded ({_one_line(error)}): reinstall scikit-image") from None
    return np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo[..., :3]


@dataclass(frozen=True)
class _PhotoClip:
    """A smooth pan + zoom path over one photo."""

    name: str

    def load(self, size: int) -> np.ndarray:
        photo = _load_photo(self.name)
        height, width = photo.shape[:2]
        rng = _clip_rng(self.name)
        length = _clip_length(rng)
        side = min(height, width) * ((_MAX_ZOOM + _MIN_ZOOM) / 2 + (_MAX_ZOOM - _MIN_ZOOM) / 2 * _smooth_wave(rng, length))
        left = (width - side) * (0.5 + 0.5 * _smooth_wave(rng, length))
        top = (height - side) * (0.5 + 0.5 * _smooth_wave(rng, length))

        # Shrinking once up front makes the per-frame antialiased resize ~5x cheaper at no visible cost.
        scale = min(1.0, _OVERSAMPLE * size / (_MIN_ZOOM * min(height, width)))
        image = Image.fromarray(photo)
        if scale < 1.0:
            image = image.resize((round(width * scale), round(height * scale)), _RESAMPLE)
        sx, sy = image.width / width, image.height / height
        frames = []
        for x0, y0, s in zip(left, top, side):
            # Float boxes keep sub-pixel camera motion smooth; min() absorbs rounding at the border.
            box = (x0 * sx, y0 * sy, min((x0 + s) * sx, image.width), min((y0 + s) * sy, image.height))
            frames.append(np.asarray(image.resize((size, size), _RESAMPLE, box=box)))
        return np.stack(frames)


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): textures are defined in these units, so every size shows the same scene."""
    coords = (np.arange(size) + 0.5) / size
    return coords[None, :], coords[:, None]  # x (row vector), y (column vector)


def _random_chroma(rng: np.random.Generator) -> np.ndarray:
    """Two orthonormal RGB directions orthogonal to grey: colour variation that leaves brightness alone."""
    basis = np.array([[1, -1, 0], [1, 1, -2]], dtype=float)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return rotation @ basis


def _to_uint8(frames: Sequence[np.ndarray]) -> np.ndarray:
    return np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _NoiseClip:
    """Multi-scale 1/f noise (natural-image spectrum); each octave drifts at its own velocity and slowly evolves."""

    name: str
    max_frequency: int = 24  # cycles per frame width

    def load(self, size: int) -> np.ndarray:
        rng = _clip_rng(self.name)
        length = _clip_length(rng)
        k = np.arange(-self.max_frequency, self.max_frequency + 1)
        ky, kx = (a.ravel() for a in np.meshgrid(k, k, indexing="ij"))
        radius = np.hypot(kx, ky)
        keep = (radius > 0) & (radius <= self.max_frequency)
        kx, ky, radius = kx[keep], ky[keep], radius[keep]
        # Channel 0 is luminance, 1-2 are weaker chroma fields.
        coeffs = (rng.normal(size=(3, len(radius))) + 1j * rng.normal(size=(3, len(radius)))) * radius**-1.2
        sigma = np.sqrt(0.5 * (np.abs(coeffs) ** 2).sum(axis=1))  # std of each real field
        octave = np.floor(np.log2(radius)).astype(int)
        speed = rng.uniform(0.003, 0.012, octave.max() + 1)  # frame widths per frame
        heading = rng.uniform(0, 2 * np.pi, octave.max() + 1)
        velocity = speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        boil = rng.uniform(-0.05, 0.05, len(radius))  # phase change per frame: the texture evolves, not just slides
        base = rng.uniform(70, 180, 3)
        colour = np.vstack([np.full(3, 45.0), 30.0 * _random_chroma(rng)])  # (field, rgb)

        # Synthesise at this size: drop frequencies at or above Nyquist, shift phases to sample pixel centres.
        fits = (np.abs(kx) < size / 2) & (np.abs(ky) < size / 2)
        kx, ky, coeffs, octave, boil = kx[fits], ky[fits], coeffs[:, fits], octave[fits], boil[fits]
        coeffs = coeffs * np.exp(1j * np.pi * (kx + ky) / size) * size * size
        drift = -2 * np.pi * (kx * velocity[octave, 0] + ky * velocity[octave, 1]) + boil
        grid = np.zeros((3, size, size), dtype=complex)
        frames = []
        for t in range(length):
            grid[:, ky % size, kx % size] = coeffs * np.exp(1j * drift * t)
            fields = np.fft.ifft2(grid).real / sigma[:, None, None]
            frames.append(base + np.einsum("fyx,fc->yxc", fields, colour))
        return _to_uint8(frames)


@dataclass(frozen=True)
class _BlobsClip:
    """Soft coloured discs moving along smooth paths over a slowly turning colour gradient."""

    name: str
    count: int = 12

    def load(self, size: int) -> np.ndarray:
        rng = _clip_rng(self.name)
        length = _clip_length(rng)
        colours = rng.uniform(0, 255, (self.count, 3))
        radii = rng.uniform(0.06, 0.2, self.count)
        centres = rng.uniform(0.1, 0.9, (self.count, 2))
        amplitudes = rng.uniform(0.05, 0.3, (self.count, 2))
        freqs = rng.uniform(0.3, 1.2, (self.count, 2))  # cycles per clip
        phases = rng.uniform(0, 2 * np.pi, (self.count, 2))
        ends = rng.uniform(30, 225, (2, 3))
        angle0, turn = rng.uniform(0, 2 * np.pi), rng.uniform(-0.01, 0.01)

        x, y = _pixel_grid(size)
        edge = max(1.0 / size, 0.02)  # soft edge of at least a pixel: antialiased at every size
        frames = []
        for t in range(length):
            angle = angle0 + turn * t
            ramp = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)[..., None]
            image = ends[0] * (1 - ramp) + ends[1] * ramp
            positions = centres + amplitudes * np.sin(2 * np.pi * freqs * t / length + phases)
            for (cx, cy), radius, colour in zip(positions, radii, colours):
                # Only the blob's bounding box can change (alpha is exactly 0 beyond radius + edge / 2): ~4x faster.
                reach = radius + edge
                cols = slice(max(0, math.floor((cx - reach) * size)), max(0, math.ceil((cx + reach) * size)))
                rows = slice(max(0, math.floor((cy - reach) * size)), max(0, math.ceil((cy + reach) * size)))
                distance = np.sqrt((x[:, cols] - cx) ** 2 + (y[rows] - cy) ** 2)
                alpha = (0.85 * np.clip((radius - distance) / edge + 0.5, 0, 1))[..., None]
                image[rows, cols] += alpha * (colour - image[rows, cols])
            frames.append(image)
        return _to_uint8(frames)


@dataclass(frozen=True)
class _GratingsClip:
    """A plaid of three coloured sinusoidal gratings, each drifting and slowly rotating."""

    name: str
    count: int = 3

    def load(self, size: int) -> np.ndarray:
        rng = _clip_rng(self.name)
        length = _clip_length(rng)
        angles = rng.uniform(0, np.pi, self.count)
        turns = rng.uniform(-0.004, 0.004, self.count)  # radians per frame
        freqs = rng.uniform(1.5, 6.0, self.count)  # cycles per frame width
        drifts = rng.choice([-1, 1], self.count) * rng.uniform(0.05, 0.15, self.count)  # phase per frame
        phases = rng.uniform(0, 2 * np.pi, self.count)
        colours = rng.normal(size=(self.count, 3))
        colours *= 35 / np.linalg.norm(colours, axis=1, keepdims=True)
        base = rng.uniform(90, 165, 3)

        x, y = _pixel_grid(size)
        frames = []
        for t in range(length):
            image = np.broadcast_to(base, (size, size, 3)).astype(float)
            for angle, turn, freq, drift, phase, colour in zip(angles, turns, freqs, drifts, phases, colours):
                direction = angle + turn * t
                wave = np.cos(2 * np.pi * freq * (x * np.cos(direction) + y * np.sin(direction)) + phase + drift * t)
                image += wave[..., None] * colour
            frames.append(image)
        return _to_uint8(frames)


_TEXTURES: dict[str, Callable[[str], _Clip]] = {"noise": _NoiseClip, "blobs": _BlobsClip, "gratings": _GratingsClip}
