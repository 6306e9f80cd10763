"""What the storage backends share: checking records before writing, atomic files, error messages."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from upath import UPath

from masklam.atomic import dumps_json, is_temp_name
from masklam.data.schema import MASK_SOURCE_RE, ORACLE, Feature, Record, RecordMeta
from masklam.errors import UsageError

# Keys and feature names become file and array names: no dots (WebDataset splits names at the first dot).
RECORD_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
FEATURE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
# The zarr backend keeps masks in data/mask, next to the features.
RESERVED_FEATURE_NAMES = frozenset({"mask"})

# Where a dataset is read from: a local folder, or a folder of an fsspec filesystem (s3://bucket/prefix, ...).
DataPath = Path | UPath


# --- what masklam writes in a dataset folder -------------------------------------------------------------------
# An inventory by layout (relative POSIX paths): `collect --overwrite`, the replacement of a Zarr shard or mask
# source and the removal of a failed source delete these and nothing else; anything else is a user's, kept.
SPLIT = r"(?:train|test)"  # masklam.data.schema.SPLITS
SHARD = r"shard-\d{6}"
SOURCE = MASK_SOURCE_RE.pattern.strip("^$")
# Inside a Zarr array folder: its metadata and its chunks, named by their grid position.
ZARR_ARRAY_FILES = re.compile(r"zarr\.json|c(?:/\d+)+")
# Inside a Zarr shard folder: group and array metadata, the step arrays, the masks, the record ends.
_ARRAY = f"(?:{ZARR_ARRAY_FILES.pattern})"
ZARR_SHARD_FILES = re.compile(
    rf"zarr\.json|(?:data|meta|data/mask)/zarr\.json|data/[A-Za-z0-9_]+/{_ARRAY}|data/mask/{SOURCE}/{_ARRAY}|meta/record_ends/{_ARRAY}"
)
DATASET_FILES = re.compile(
    "|".join(
        [
            r"collect\.json|info\.json",  # masklam.data.collect.CONFIG_FILE, masklam.data.dataset.INFO
            rf"index/{SPLIT}/{SHARD}\.json",
            rf"{SPLIT}/{SHARD}\.tar",  # webdataset
            rf"masks/{SOURCE}/{SPLIT}/{SHARD}\.tar",
            rf"data\.zarr/zarr\.json|data\.zarr/{SPLIT}/zarr\.json|data\.zarr/{SPLIT}/{SHARD}(?:\.zip|/(?:{ZARR_SHARD_FILES.pattern}))",  # zarr
            rf"segment/{SOURCE}/(?:config\.json|distill\.json|student\.pt|{SPLIT}/{SHARD}\.json)",  # masklam segment
            # its teacher's cache (masklam.segment.distill.CACHED, key.json)
            rf"segment/{SOURCE}/teacher/(?:key\.json|marked\.json|proposer\.pt|(?:test-)?run-\d+\.npy|record-[^/]+\.npy|marked-\d+\.npz)",
            rf"compare/compare-{SOURCE}-vs-{SOURCE}(?:\.json|-worst\.png)",  # masklam masks compare
            r"(?:.*/)?\.[^/]+\.masklam-\d+-\d+\.tmp|\.masklam-tmp-\d+-[^/]+(?:/.+)?|\.masklam-write-test-\d+",  # an interrupted writer's leftovers
        ]
    )
)


def foreign_files(folder: Path, owned: re.Pattern[str] = DATASET_FILES, prefix: str = "") -> list[str]:
    """Files (and links) under ``folder`` that masklam does not write there, as paths relative to it, sorted.

    ``owned`` matches the paths masklam writes, relative to ``folder`` (``prefix`` + the path, when the pattern
    is of a folder above)."""
    found = []
    for parent, subfolders, names in os.walk(folder):
        for name in subfolders:  # a link to a folder is not walked into: it is foreign, whatever it points to
            if (Path(parent) / name).is_symlink():
                found.append((Path(parent) / name).relative_to(folder).as_posix())
        for name in names:
            path = Path(parent) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not owned.fullmatch(prefix + relative):
                found.append(relative)
    return sorted(found)


def remove_owned(folder: Path, owned: re.Pattern[str], prefix: str = "") -> list[str]:
    """Delete masklam's files under ``folder`` (those ``owned`` matches, see foreign_files) and the folders below it
    left empty; return the foreign files, which stay (with the folders holding them)."""
    foreign = foreign_files(folder, owned, prefix)
    kept = set(foreign)
    for parent, subfolders, names in os.walk(folder, topdown=False):
        for name in names:
            path = Path(parent) / name
            if path.relative_to(folder).as_posix() not in kept:
                path.unlink()
        for name in subfolders:
            path = Path(parent) / name
            if path.is_symlink() or any(path.iterdir()):
                continue  # a user's link, or a folder holding a user's file
            path.rmdir()
    return foreign  # ``folder`` itself stays: it may be a mount point, or the user's


def as_data_path(location: str | Path) -> DataPath:
    """A local path or file:// URL as a plain Path (read as before); any other URL as a UPath, read through fsspec.

    fsspec takes the filesystem's options from the environment: for S3, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_PROFILE, ... as boto does, or FSSPEC_S3_<OPTION> (e.g. FSSPEC_S3_ENDPOINT_URL) as fsspec does.
    A Hub dataset is hf://datasets/OWNER/NAME (a branch: hf://datasets/OWNER/NAME@BRANCH), read through
    huggingface_hub's HfFileSystem with its token and endpoint (HF_TOKEN, HF_ENDPOINT).
    """
    if isinstance(location, Path) or "://" not in str(location):
        return Path(location)
    try:
        path = UPath(str(location))
        path.fs  # noqa: B018 - imports the filesystem's package now, for a clear error
    except ImportError as e:  # fsspec says which package: "Install s3fs to access S3", ...
        raise UsageError(f"cannot read {location}: {e} (hf:// needs masklam[hub], s3:// masklam[s3])") from None
    return Path(path.path) if path.protocol in ("file", "local") else path


def check_records(records: list[Record], split: str, features: dict[str, Feature]) -> list[str]:
    """Check records against the features before writing a shard; return the mask sources they carry.

    Bad records are a bug in the caller, not user input, hence ValueError.
    """
    if not records:
        raise ValueError("a shard needs at least one record")
    for name in features:
        if not FEATURE_NAME_RE.match(name) or name in RESERVED_FEATURE_NAMES:
            raise ValueError(f"feature name {name!r} must match {FEATURE_NAME_RE.pattern} and not be 'mask'")
    keys = [record.key for record in records]
    if len(set(keys)) != len(keys):
        raise ValueError(f"record keys repeat within the shard: {keys}")
    sources = sorted(records[0].masks)
    for record in records:
        meta = record.meta
        if not RECORD_KEY_RE.match(meta.key):
            raise ValueError(f"record key {meta.key!r} must match {RECORD_KEY_RE.pattern}")
        if meta.split != split:
            raise ValueError(f"record {meta.key} belongs to split {meta.split!r}, not {split!r}")
        dumps_json(meta.to_json())  # raises if the metadata is not plain JSON (e.g. numpy scalars in extra)
        expected = {name for name in features if name != "action" or meta.labelled}
        if set(record.steps) != expected:
            raise ValueError(f"record {meta.key} (labelled={meta.labelled}) has step arrays {sorted(record.steps)}, expected {sorted(expected)}")
        for name, array in record.steps.items():
            feature = features[name]
            shape = (meta.frames, *feature.shape)
            if array.dtype != np.dtype(feature.dtype) or array.shape != shape:
                raise ValueError(f"record {meta.key}: {name} is {array.dtype}{list(array.shape)}, expected {feature.dtype}{list(shape)}")
        if "action" in record.steps:
            frame = non_finite_action(meta, record.steps["action"])
            if frame is not None:  # a label that is not a number: the policy (or whatever made the data) is broken
                raise UsageError(action_error(meta, frame, "refusing to write the shard") + ": check the policy")
        if sorted(record.masks) != sources:
            raise ValueError(f"record {meta.key} carries masks {sorted(record.masks)}, the first record {sources}")
    for source in sources:
        check_masks(source, {record.key: record.masks[source] for record in records}, [r.meta for r in records])
    return sources


def non_finite_action(meta: RecordMeta, action: np.ndarray) -> int | None:
    """The first frame of a labelled record whose action is NaN or inf (the episode's final frame has none)."""
    ends_episode = meta.start + meta.frames == meta.episode_frames
    labelled = action[:-1] if ends_episode else action
    bad = ~np.isfinite(labelled.reshape(len(labelled), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def action_error(meta: RecordMeta, frame: int, where: str) -> str:
    return (
        f"{where}: the labelled action of episode {meta.episode} of split {meta.split!r} (record {meta.key}) is NaN or infinite at frame {meta.start + frame}"
    )


def check_masks(source: str, masks: dict[str, np.ndarray], metas: list[RecordMeta]) -> None:
    """Check one source's masks: one (frames, H, W) uint8 0/1 array per record of the shard, all H, W alike."""
    if not MASK_SOURCE_RE.match(source):
        raise ValueError(f"mask source {source!r} must match {MASK_SOURCE_RE.pattern}")
    keys = {meta.key for meta in metas}
    if set(masks) != keys:
        raise ValueError(f"'{source}' masks must cover exactly the shard's records: missing {sorted(keys - set(masks))}, unknown {sorted(set(masks) - keys)}")
    image_shapes = set()
    for meta in metas:
        mask = masks[meta.key]
        if mask.dtype != np.uint8 or mask.ndim != 3 or mask.shape[0] != meta.frames:
            raise ValueError(f"'{source}' mask of {meta.key} is {mask.dtype}{list(mask.shape)}, expected uint8 [{meta.frames}, H, W]")
        if mask.size and mask.max() > 1:
            raise ValueError(f"'{source}' mask of {meta.key} holds values above 1: masks are 0/1")
        image_shapes.add(mask.shape[1:])
    if len(image_shapes) > 1:
        raise ValueError(f"'{source}' masks of one shard differ in size: {sorted(image_shapes)}")


def step_or_nan(record: Record, name: str, feature: Feature) -> np.ndarray:
    """The record's step array ``name``, or NaN for the action an unlabelled record lacks."""
    if name in record.steps:
        return record.steps[name]
    return np.full((record.meta.frames, *feature.shape), np.nan, feature.dtype)


def drop_unlabelled_action(record_steps: dict[str, np.ndarray], meta: RecordMeta) -> dict[str, np.ndarray]:
    """Readers return no action for an unlabelled record: the stored NaN placeholder is not a label."""
    if not meta.labelled:
        record_steps.pop("action", None)
    return record_steps


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of ``path`` itself); 0 when it does not exist."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not is_temp_name(d)]  # an interrupted writer's leftovers are not the dataset
        total += sum((Path(folder) / name).stat().st_size for name in names if not is_temp_name(name))
    return total


def writer_command(source: str = ORACLE) -> str:
    """The command that writes frames and oracle masks (collect), or another mask source."""
    if source == ORACLE:
        return "re-run the same `masklam collect` (or `masklam ingest`) command"
    return f"re-run the command that added the '{source}' masks"


def corrupt_error(path: DataPath, problem: str, source: str = ORACLE) -> UsageError:
    return UsageError(f"{path} is corrupt or incomplete ({problem}): {writer_command(source)} to rewrite it, or delete it")


def missing_shard_error(path: DataPath) -> UsageError:
    return UsageError(f"{path} does not exist: the shard was never written; {writer_command()} to write it")


def missing_masks_error(path: DataPath, source: str, stored: list[str]) -> UsageError:
    return UsageError(
        f"{path} does not exist: this shard has no '{source}' masks (it has {stored or 'none'}); "
        f"ask only for stored sources, or {writer_command(source)} to write them"
    )
