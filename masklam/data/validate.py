"""The dataset schema, checked: info.json, shard indexes, record metadata and the arrays read from shards.

Every check raises a UsageError of one line that names the file and the field (``info.json: splits.train.shards
is 'two', expected an integer >= 0``), so a damaged or hand-edited dataset stops a command with exit 2 before any
of it is used, never with a KeyError deep in a trainer. The checks of arrays are cheap next to decoding them:
a comparison of dtype and shape, one ``max`` over each mask and ``isfinite`` over each labelled action.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from masklam.data.schema import MASK_SOURCE_RE, SCHEMA_VERSION, SPLITS, Record, RecordMeta
from masklam.data.storage import RECORD_KEY_RE, DataPath, action_error, non_finite_action, writer_command
from masklam.errors import UsageError

# Fields every info.json has, in the order they are checked (the damaged-dataset tests remove each in turn).
INFO_FIELDS = (
    "schema_version",
    "masklam_version",
    "backend",
    "env",
    "fps",
    "features",
    "state_names",
    "action_bounds",
    "mask_sources",
    "splits",
    "collect",
)  # and, checked when present: action_stats (readers compute Var(a) without them), checksums
# An ingested dataset ("simulator": false) says where it came from instead of how it was collected, and has no
# action bounds (no environment defines them).
INGESTED_FIELDS = tuple(key for key in INFO_FIELDS if key not in ("action_bounds", "collect")) + ("source", "ingest")
SPLIT_COUNTS = ("shards", "episodes", "records", "frames", "labelled_episodes")
RECORD_FIELDS = {field.name for field in RecordMeta.__dataclass_fields__.values()}
# How info.json says which checksums its shards carry (absent: written before masklam had them).
CHECKSUMS = {"webdataset": "crc32c", "zarr": "crc32c"}


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


class Fields:
    """Reads fields of one JSON file's object, failing with a line that names the file and the field."""

    def __init__(self, path: DataPath, hint: str) -> None:
        self.path, self.hint = path, hint

    def fail(self, field: str, problem: str) -> UsageError:
        return UsageError(f"{self.path}: {field} {problem}; {self.hint}")

    def get(self, obj: dict[str, Any], key: str, prefix: str = "") -> Any:
        if key not in obj:
            raise self.fail(f"{prefix}{key}", "is missing")
        return obj[key]

    def object(self, obj: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = self.get(obj, key, prefix)
        if not isinstance(value, dict):
            raise self.fail(f"{prefix}{key}", f"is {value!r:.40}, expected an object")
        return value

    def int(self, obj: dict[str, Any], key: str, prefix: str = "", low: int = 0) -> int:
        value = self.get(obj, key, prefix)
        if not is_int(value) or value < low:
            raise self.fail(f"{prefix}{key}", f"is {value!r:.40}, expected an integer >= {low}")
        return value

    def number(self, obj: dict[str, Any], key: str, prefix: str = "", optional: bool = False) -> float | None:
        value = self.get(obj, key, prefix)
        if not (is_number(value) or (optional and value is None)):
            raise self.fail(f"{prefix}{key}", f"is {value!r:.40}, expected a finite number{' or null' if optional else ''}")
        return value

    def string(self, obj: dict[str, Any], key: str, prefix: str = "") -> str:
        value = self.get(obj, key, prefix)
        if not isinstance(value, str):
            raise self.fail(f"{prefix}{key}", f"is {value!r:.40}, expected a string")
        return value

    def numbers(self, obj: dict[str, Any], key: str, prefix: str = "", length: int | None = None) -> list[float]:
        value = self.get(obj, key, prefix)
        if not isinstance(value, list) or not all(is_number(v) for v in value) or (length is not None and len(value) != length):
            count = "" if length is None else f"{length} "
            raise self.fail(f"{prefix}{key}", f"is {value!r:.40}, expected a list of {count}finite numbers")
        return value


def check_info(info: Any, path: DataPath, backends: Sequence[str]) -> dict[str, Any]:
    """info.json against the schema: every field present with its type, shapes that agree with each other."""
    hint = f"the file is damaged; {writer_command()} to rewrite it"
    if not isinstance(info, dict):
        raise UsageError(f"{path} holds {type(info).__name__}, not an object: {hint}")
    f = Fields(path, hint)
    version = f.get(info, "schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema_version {version!r}, this masklam reads {SCHEMA_VERSION}: "
            "use the masklam version that wrote it, or re-collect the dataset with this one"
        )
    simulated = info.get("simulator", True) is not False
    for key in INFO_FIELDS if simulated else INGESTED_FIELDS:
        f.get(info, key)
    f.string(info, "masklam_version")
    backend = f.string(info, "backend")
    if backend not in backends:
        raise f.fail("backend", f"is {backend!r}, expected one of {', '.join(backends)}")
    env = f.object(info, "env")
    f.string(env, "env_id", "env.")
    f.int(f.object(env, "render", "env."), "size", "env.render.", low=1)
    f.object(env, "distractors", "env.")
    f.int(env, "episode_steps", "env.")
    if f.number(info, "fps") <= 0:
        raise f.fail("fps", "must be positive")
    features = f.object(info, "features")
    for name, feature in features.items():
        prefix = f"features.{name}."
        if not isinstance(feature, dict):
            raise f.fail(f"features.{name}", "is not an object")
        try:
            np.dtype(f.string(feature, "dtype", prefix))
        except TypeError:
            raise f.fail(f"{prefix}dtype", f"is {feature['dtype']!r}, not a numpy dtype") from None
        shape = f.get(feature, "shape", prefix)
        if not isinstance(shape, list) or not all(is_int(n) and n >= 0 for n in shape):
            raise f.fail(f"{prefix}shape", f"is {shape!r:.40}, expected a list of integers >= 0")
    for name in ("rgb", "state", "action") if simulated else ("rgb", "action"):  # a video has no state
        if name not in features:
            raise f.fail(f"features.{name}", "is missing")
    rgb = features["rgb"]
    if rgb["dtype"] != "uint8" or len(rgb["shape"]) != 3 or rgb["shape"][2] != 3:
        raise f.fail("features.rgb", f"is {rgb['dtype']}{rgb['shape']}, expected uint8[H, W, 3]")
    size = env["render"]["size"]  # what models and mask writers are built for: the frames must be that size
    if rgb["shape"][:2] != [size, size]:
        raise f.fail("features.rgb.shape", f"is {rgb['shape']}, but env.render.size says {size} px frames ([{size}, {size}, 3])")
    action_shape = features["action"]["shape"]
    if len(action_shape) != 1 or not np.issubdtype(np.dtype(features["action"]["dtype"]), np.floating):
        raise f.fail("features.action", f"is {features['action']['dtype']}{action_shape}, expected a float vector")
    dims = action_shape[0]
    names = f.get(info, "state_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise f.fail("state_names", "is not a list of strings")
    if simulated or "action_bounds" in info:
        bounds = f.object(info, "action_bounds")
        low, high = f.numbers(bounds, "low", "action_bounds.", dims), f.numbers(bounds, "high", "action_bounds.", dims)
        if any(lo > hi for lo, hi in zip(low, high)):
            raise f.fail("action_bounds", "has a low bound above its high bound")
    if "action_stats" in info:
        stats = f.object(info, "action_stats")
        f.numbers(stats, "var", "action_stats.", dims)  # what readers use; the rest when present
        if "mean" in stats:
            f.numbers(stats, "mean", "action_stats.", dims)
        if "var_mean" in stats:
            f.number(stats, "var_mean", "action_stats.")
    for source, entry in f.object(info, "mask_sources").items():
        if not MASK_SOURCE_RE.match(source):
            raise f.fail(f"mask_sources.{source}", f"is not a mask source name ({MASK_SOURCE_RE.pattern})")
        if not isinstance(entry, dict):
            raise f.fail(f"mask_sources.{source}", "is not an object")
        if "coverage" in entry:
            f.number(entry, "coverage", f"mask_sources.{source}.", optional=True)
    splits = f.object(info, "splits")
    if "train" not in splits or not set(splits) <= set(SPLITS):
        raise f.fail("splits", f"has {sorted(splits)}, expected train (and test)")
    for split, entry in splits.items():
        prefix = f"splits.{split}."
        if not isinstance(entry, dict):
            raise f.fail(f"splits.{split}", "is not an object")
        counts = {key: f.int(entry, key, prefix) for key in SPLIT_COUNTS}
        if counts["labelled_episodes"] > counts["episodes"]:
            raise f.fail(f"{prefix}labelled_episodes", f"({counts['labelled_episodes']}) exceeds {prefix}episodes ({counts['episodes']})")
        if "mean_return" in entry:
            f.number(entry, "mean_return", prefix, optional=True)
    f.object(info, "collect" if simulated else "ingest")
    if "checksums" in info and info["checksums"] != CHECKSUMS[backend]:
        raise f.fail("checksums", f"is {info['checksums']!r}, expected {CHECKSUMS[backend]!r} for {backend} shards")
    return info


def check_record_meta(obj: Any, f: Fields, where: str, split: str) -> RecordMeta:
    """One record's metadata (from a shard index, a tar's meta.json or a Zarr shard's attributes)."""
    if not isinstance(obj, dict):
        raise f.fail(where, "is not an object")
    unknown = sorted(set(obj) - RECORD_FIELDS)
    if unknown:
        raise f.fail(f"{where}.{unknown[0]}", "is not a record field")
    prefix = f"{where}."
    key = f.string(obj, "key", prefix)
    if not RECORD_KEY_RE.match(key):
        raise f.fail(f"{prefix}key", f"is {key!r}, expected a record key ({RECORD_KEY_RE.pattern})")
    if f.string(obj, "split", prefix) != split:
        raise f.fail(f"{prefix}split", f"is {obj['split']!r}, expected {split!r}")
    for name in ("episode", "chunk", "start", "seed"):
        f.int(obj, name, prefix)
    frames = f.int(obj, "frames", prefix, low=1)
    episode_frames = f.int(obj, "episode_frames", prefix, low=1)
    if obj["start"] + frames > episode_frames:
        raise f.fail(f"{prefix}frames", f"runs past the episode's end (start {obj['start']} + {frames} > episode_frames {episode_frames})")
    if not isinstance(f.get(obj, "labelled", prefix), bool):
        raise f.fail(f"{prefix}labelled", f"is {obj['labelled']!r}, expected true or false")
    f.number(obj, "episode_return", prefix, optional=True)
    if not isinstance(obj.get("extra", {}), dict):
        raise f.fail(f"{prefix}extra", "is not an object")
    return RecordMeta.from_json(obj)


def check_index(index: Any, path: DataPath, split: str, shard: int) -> list[RecordMeta]:
    """A shard index file: its shard number, split and records."""
    f = Fields(path, f"the shard index is damaged; {writer_command()} to rewrite it")
    if not isinstance(index, dict):
        raise UsageError(f"{path} holds {type(index).__name__}, not an object; {f.hint}")
    if f.int(index, "shard") != shard:
        raise f.fail("shard", f"is {index['shard']}, expected {shard} (the file's name)")
    if f.string(index, "split") != split:
        raise f.fail("split", f"is {index['split']!r}, expected {split!r}")
    records = f.get(index, "records")
    if not isinstance(records, list) or not records:
        raise f.fail("records", "is not a list of at least one record")
    metas = [check_record_meta(meta, f, f"records[{i}]", split) for i, meta in enumerate(records)]
    keys = [meta.key for meta in metas]
    if len(set(keys)) != len(keys):
        raise f.fail("records", "repeats a record key")
    return metas


def check_record(record: Record, expected: RecordMeta, info: dict[str, Any], fields: Sequence[str], path: str, mask_path: Callable[[str], str]) -> None:
    """A record read from a shard against its index entry and info.json's features and image size."""
    meta = record.meta
    hint = f"the shard is damaged; {writer_command()} to rewrite it"
    if meta != expected:
        raise UsageError(f"{path}: record {meta.key}'s metadata differs from its shard index; {hint}")
    features = info["features"]
    for name in fields:
        if name == "action" and not meta.labelled:
            continue
        array = record.steps.get(name)
        if array is None:
            raise UsageError(f"{path}: record {meta.key} has no {name!r} array; {hint}")
        feature = features[name]
        shape = (meta.frames, *feature["shape"])
        if array.dtype != np.dtype(feature["dtype"]) or array.shape != shape:
            raise UsageError(f"{path}: {name} of record {meta.key} is {array.dtype}{list(array.shape)}, expected {feature['dtype']}{list(shape)}; {hint}")
    if "action" in record.steps:
        frame = non_finite_action(meta, record.steps["action"])
        if frame is not None:
            raise UsageError(action_error(meta, frame, path) + f": fix or drop the episode, or {writer_command()}")
    height, width = info["features"]["rgb"]["shape"][:2]  # a mask per frame, the frame's size
    for source, mask in record.masks.items():
        if mask.dtype != np.uint8 or mask.shape != (meta.frames, height, width):
            raise UsageError(
                f"{mask_path(source)}: the '{source}' mask of record {meta.key} is {mask.dtype}{list(mask.shape)}, "
                f"expected uint8{[meta.frames, height, width]}; {writer_command(source)} to rewrite it"
            )
        if mask.size and mask.max() > 1:
            raise UsageError(
                f"{mask_path(source)}: the '{source}' mask of record {meta.key} holds values above 1 (masks are 0/1); {writer_command(source)} to rewrite it"
            )
