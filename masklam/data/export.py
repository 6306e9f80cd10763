"""A Parquet view of a dataset, one row per frame, for Hugging Face ``datasets`` and the Hub's viewer.

``datasets`` cannot read masklam's native shards: a WebDataset sample must sit in one tar, but masklam keeps
each mask source in tars of its own (so that a source is added without rewriting frames), and ``datasets`` has
no Zarr reader. The view is written beside the native shards, one Parquet file per native shard::

    parquet/<split>/shard-000000.parquet

Columns: ``episode``, ``frame`` (index within the episode), ``labelled``, ``rgb`` (PNG, lossless),
``mask_<source>`` for every mask source (PNG, 0/1 values, lossless), and every other per-step feature
(``action`` is NaN throughout unlabelled episodes and at an episode's final frame, as in the native shards:
nulls would break ``datasets``' batch formatting to numpy and torch; ``labelled`` says which rows have actions).
Consecutive chunks of an episode share their boundary frame: the view keeps it once (the later copy, as
``Dataset.episode`` does), so an episode of T transitions has T + 1 rows.

Each file records the fingerprint of what it was made from (its shard index and the mask sources): a file
whose fingerprint still matches is kept when the view is rebuilt, so an interrupted build resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from masklam.atomic import atomic_file
from masklam.data.dataset import Dataset, index_path
from masklam.data.schema import Feature, Record, shard_name
from masklam.data.storage import step_or_nan

PARQUET = "parquet"
FINGERPRINT_KEY = b"masklam_fingerprint"
ROWS_PER_GROUP = 256  # the Hub's viewer reads row groups whole: keep them a few MiB


def mask_column(source: str) -> str:
    return f"mask_{source}"


def parquet_path(split: str, shard: int) -> str:
    return f"{PARQUET}/{split}/{shard_name(shard)}.parquet"


def features_of(info: dict[str, Any]):
    """The ``datasets`` Features of the view's rows, from info.json's features and mask sources."""
    from datasets import Array2D, Array3D, Features, Image, List, Value

    columns: dict[str, Any] = {"episode": Value("int64"), "frame": Value("int64"), "labelled": Value("bool")}
    for name, feature in sorted(info["features"].items()):
        dtype, shape = feature["dtype"], tuple(feature["shape"])
        if name == "rgb":
            columns[name] = Image()
        elif not shape:
            columns[name] = Value(dtype)
        elif len(shape) == 1:
            columns[name] = List(Value(dtype), length=shape[0])
        elif len(shape) == 2:
            columns[name] = Array2D(shape, dtype)
        else:
            columns[name] = Array3D(shape, dtype)
    for source in sorted(info["mask_sources"]):
        columns[mask_column(source)] = Image()
    return Features(columns)


def frame_rows(record: Record, features: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The record's frames as rows; a chunk that does not end its episode leaves its last frame to the next chunk."""
    meta = record.meta
    steps = {name: step_or_nan(record, name, Feature.from_json(feature)) for name, feature in features.items()}
    ends_episode = meta.start + meta.frames == meta.episode_frames
    for i in range(meta.frames if ends_episode else meta.frames - 1):
        row: dict[str, Any] = {"episode": meta.episode, "frame": meta.start + i, "labelled": meta.labelled}
        row |= {name: array[i] for name, array in steps.items()}
        row |= {mask_column(source): mask[i] for source, mask in record.masks.items()}
        yield row


def shard_fingerprint(dataset: Dataset, split: str, shard: int, sources: list[str]) -> str:
    """What a view file depends on: its shard's index (records, written with the shard) and the mask sources."""
    digest = hashlib.sha256(index_path(dataset.root, split, shard).read_bytes())
    digest.update(json.dumps(sources).encode())
    return digest.hexdigest()


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint a view file was written with (None when it is missing or unreadable)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None
    value = metadata.get(FINGERPRINT_KEY)
    return value.decode() if value is not None else None


def write_parquet_shard(dataset: Dataset, split: str, shard: int, out: Path, features, fingerprint: str) -> None:
    """Write one view file atomically, a row group at a time (a shard is never held decoded in memory whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sources = sorted(dataset.info["mask_sources"])
    schema = features.arrow_schema
    schema = schema.with_metadata({**(schema.metadata or {}), FINGERPRINT_KEY: fingerprint.encode()})
    with atomic_file(out) as f:
        with pq.ParquetWriter(f, schema, compression="zstd") as writer:
            batch: list[dict[str, Any]] = []
            for record in dataset.records(split, mask_sources=sources, shards=[shard]):
                for row in frame_rows(record, dataset.info["features"]):
                    batch.append(features.encode_example(row))
                    if len(batch) == ROWS_PER_GROUP:
                        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                        batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def write_parquet_view(dataset: Dataset, folder: Path, show_progress: bool = True) -> list[str]:
    """Write (or bring up to date) the view of every shard under ``folder``; returns the files' relative paths.

    Files of shards the dataset no longer has are left for the caller (build_stage removes every stale file)."""
    features = features_of(dataset.info)
    sources = sorted(dataset.info["mask_sources"])
    jobs = [(split, shard) for split in dataset.info["splits"] for shard in dataset.shards(split)]
    written = []
    with tqdm(total=len(jobs), unit="shard", desc="parquet view", disable=not show_progress or None) as bar:
        for split, shard in jobs:
            relative = parquet_path(split, shard)
            fingerprint = shard_fingerprint(dataset, split, shard, sources)
            if stored_fingerprint(folder / relative) != fingerprint:
                write_parquet_shard(dataset, split, shard, folder / relative, features, fingerprint)
            written.append(relative)
            bar.update()
    return written
