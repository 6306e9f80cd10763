"""WebDataset storage: plain tar shards of ``.npy`` arrays, one sample per record.

Layout under the dataset folder::

    <split>/shard-000000.tar                   frames: per record <key>.<feature>.npy ..., <key>.meta.json
                                               and <key>.checksums.json
    masks/<source>/<split>/shard-000000.tar    masks: per record <key>.mask.npy.gz and <key>.checksums.json,
                                               same keys in the same order (read by key all the same)

Each sample's ``checksums.json`` holds the CRC-32C of every other member of the sample (``{"crc32c": {"rgb.npy":
...}}``): a flipped byte, or a member deleted from the tar, fails the read of that record. Tars written before
masklam had checksums have no such member and are read unchecked.

Frames are plain ``.npy``: rendered frames with a video background barely compress (gzip: 1.5x for 5x slower
reads). Masks are ``.npy`` gzipped (50x smaller; plain webdataset and Hugging Face ``datasets`` both
gunzip ``.gz`` fields on their own). Tars are written with fixed owner and mtime, so the same records give
byte-identical shards.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c  # zarr's own crc32c: hardware CRC, about 2x zlib.crc32
import numpy as np
import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys

from masklam.atomic import atomic_file, dumps_json
from masklam.data.schema import ORACLE, Feature, Record, RecordMeta, shard_name
from masklam.data.storage import (
    DataPath,
    check_masks,
    check_records,
    corrupt_error,
    drop_unlabelled_action,
    missing_masks_error,
    missing_shard_error,
    step_or_nan,
    writer_command,
)

META_FIELD = "meta.json"
CHECKSUM_FIELD = "checksums.json"
MASK_FIELD = "mask.npy.gz"
MASK_GZIP_LEVEL = 6  # masks are written once and are tiny next to frames: take the better ratio
TAR_END = 2 * tarfile.BLOCKSIZE  # a complete tar ends with (at least) two zero blocks
# Errors that reading a damaged tar or array raises.
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, KeyError, TypeError)


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # C order always: the same values give the same bytes whatever the memory layout of the input
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def encode_mask(mask: np.ndarray) -> bytes:
    return gzip.compress(encode_npy(mask), compresslevel=MASK_GZIP_LEVEL, mtime=0)  # mtime=0: reproducible


def decode_mask(data: bytes) -> np.ndarray:
    return decode_npy(gzip.decompress(data))


def checksum(data: bytes) -> int:
    """CRC-32C (Castagnoli), as zarr's crc32c codec: the same check in both backends."""
    return google_crc32c.value(data)


def with_checksums(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample with its checksums member: the crc32c of every other member's bytes."""
    sums = {suffix: checksum(data) for suffix, data in sample.items() if not suffix.startswith("__")}
    return {**sample, CHECKSUM_FIELD: dumps_json({"crc32c": sums})}


def check_sample(sample: dict[str, Any], path: DataPath, source: str, wanted: set[str] | None, required: bool) -> None:
    """Check the members read of a sample against its checksums; a listed member that was asked for must be there.

    ``required``: the dataset was written with checksums, so a sample without them is damaged.
    """
    key = sample["__key__"]
    raw = sample.get(CHECKSUM_FIELD)
    if raw is None:
        if required:
            raise corrupt_error(path, f"record {key} has no {CHECKSUM_FIELD} member", source)
        return
    try:
        sums = json.loads(raw)["crc32c"]
        if not isinstance(sums, dict):
            raise TypeError("not an object")
    except READ_ERRORS + (json.JSONDecodeError,) as e:
        raise corrupt_error(path, f"{key}.{CHECKSUM_FIELD} is unreadable: {e!r}", source) from None
    for suffix, data in sample.items():
        if suffix.startswith("__") or suffix == CHECKSUM_FIELD:
            continue
        if suffix not in sums:
            raise corrupt_error(path, f"member {key}.{suffix} is not in the record's checksums", source)
        if checksum(data) != sums[suffix]:
            raise corrupt_error(path, f"member {key}.{suffix} fails its crc32c checksum (its bytes changed)", source)
    for suffix in sums:
        if suffix not in sample and (wanted is None or suffix in wanted):
            raise corrupt_error(path, f"member {key}.{suffix} is missing", source)


class SamplesByKey:
    """The samples of a tar, taken by key: in the usual case the next one; samples met on the way are kept for
    later, so a tar in another order than the frames' is still joined right (masks are small: keeping them is cheap)."""

    def __init__(self, samples: Iterator[dict[str, Any]], path: DataPath, source: str) -> None:
        self.samples, self.path, self.source = samples, path, source
        self.waiting: dict[str, dict[str, Any]] = {}

    def take(self, key: str) -> dict[str, Any] | None:
        if key in self.waiting:
            return self.waiting.pop(key)
        for sample in self.samples:
            if sample["__key__"] == key:
                return sample
            if sample["__key__"] in self.waiting:
                raise corrupt_error(self.path, f"record {sample['__key__']} is in the tar twice", self.source)
            self.waiting[sample["__key__"]] = sample
        return None

    def left_over(self) -> str | None:
        """The key of a sample no record asked for, if any."""
        if self.waiting:
            return next(iter(self.waiting))
        extra = next(self.samples, None)
        return None if extra is None else extra["__key__"]


def tar_writer(f: BinaryIO) -> wds.TarWriter:
    # Fixed owner and mtime: the same samples always give the same bytes.
    return wds.TarWriter(f, encoder=False, mtime=0, user="masklam", group="masklam")


def tar_files(f: BinaryIO, path: DataPath, wanted: Callable[[str], bool]) -> Iterator[dict[str, Any]]:
    """The tar's regular files as webdataset's tar_file_iterator gives them, then a check of the archive's end.

    tarfile silently stops at a damaged header or at a cut between members, as if the archive ended
    there; a complete tar goes on from that point with only zeros (its end-of-archive blocks and padding).
    """
    tar = tarfile.open(fileobj=f, mode="r|")
    for info in tar:
        if info.isreg() and wanted(info.name):
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": str(path)}
        tar.members = []  # streaming: keep no headers
    f.seek(tar.offset)
    rest = 0
    while block := f.read(1 << 20):
        if block.count(0) != len(block):
            raise ValueError(f"unreadable tar member header at byte {tar.offset}")
        rest += len(block)
    if rest < TAR_END:
        raise ValueError(f"the tar stops at byte {tar.offset} without its end-of-archive blocks: it was cut short")


def read_samples(path: DataPath, source: str, suffixes: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield a tar's samples grouped as webdataset groups them (``__key__`` + raw bytes by suffix).

    Only members whose suffix is in ``suffixes`` are read into memory (all when None). Damage -> UsageError.
    A remote tar is streamed through fsspec (its files can seek, for the check of the archive's end).
    """

    def wanted(fname: str) -> bool:
        return suffixes is None or base_plus_ext(fname)[1] in suffixes

    try:
        f = path.open("rb")
    except OSError as e:
        raise corrupt_error(path, str(e), source) from e
    with f:
        samples = group_by_keys(tar_files(f, path, wanted))
        while True:
            try:
                sample = next(samples, None)
            except READ_ERRORS as e:
                problem = str(e)
                if "duplicate file name" in problem:  # webdataset's group_by_keys: a record repeated in a row
                    problem = f"member {str(e.args[0][0] if isinstance(e.args[0], tuple) else e.args[0]).split(':')[0]} is in the tar twice"
                raise corrupt_error(path, problem, source) from e
            if sample is None:
                return
            yield sample


class WebDatasetBackend:
    name = "webdataset"

    def frames_path(self, root: DataPath, split: str, shard: int) -> DataPath:
        return root / split / f"{shard_name(shard)}.tar"

    def masks_path(self, root: DataPath, split: str, shard: int, source: str) -> DataPath:
        return root / "masks" / source / split / f"{shard_name(shard)}.tar"

    def write_shard(self, root: Path, split: str, shard: int, records: list[Record], features: dict[str, Feature]) -> None:
        sources = check_records(records, split, features)
        # Masks of other sources left by an earlier version of this shard belong to the old frames.
        for stale in set(self.mask_sources(root, split, shard)) - set(sources):
            self.masks_path(root, split, shard, stale).unlink()
        with atomic_file(self.frames_path(root, split, shard)) as f, tar_writer(f) as writer:
            for record in records:
                # Every sample has every field (NaN actions when unlabelled): tools that infer columns
                # from the first samples (Hugging Face datasets) then read every shard alike.
                sample = {f"{name}.npy": encode_npy(step_or_nan(record, name, feature)) for name, feature in features.items()}
                writer.write({"__key__": record.key, **with_checksums({META_FIELD: dumps_json(record.meta.to_json()), **sample})})
        for source in sources:
            self._write_mask_tar(root, split, shard, source, [(r.key, r.masks[source]) for r in records])

    def write_masks(self, root: Path, split: str, shard: int, source: str, masks: dict[str, np.ndarray]) -> None:
        metas = self._read_metas(root, split, shard)
        check_masks(source, masks, metas)
        self._write_mask_tar(root, split, shard, source, [(meta.key, masks[meta.key]) for meta in metas])

    def _write_mask_tar(self, root: Path, split: str, shard: int, source: str, masks: list[tuple[str, np.ndarray]]) -> None:
        with atomic_file(self.masks_path(root, split, shard, source)) as f, tar_writer(f) as writer:
            for key, mask in masks:
                writer.write({"__key__": key, **with_checksums({MASK_FIELD: encode_mask(mask)})})

    def location(self, root: DataPath, split: str, shard: int) -> DataPath:
        return self.frames_path(root, split, shard)

    def mask_location(self, root: DataPath, split: str, shard: int, source: str) -> DataPath:
        return self.masks_path(root, split, shard, source)

    def _read_metas(self, root: DataPath, split: str, shard: int) -> list[RecordMeta]:
        """The shard's record metadata in order, reading only the meta.json members (checked when they have checksums)."""
        path = self.frames_path(root, split, shard)
        if not path.exists():
            raise missing_shard_error(path)
        metas = []
        for sample in read_samples(path, ORACLE, {META_FIELD, CHECKSUM_FIELD}):
            check_sample(sample, path, ORACLE, {META_FIELD}, required=False)
            metas.append(self._decode_meta(path, sample))
        return metas

    def record_order(self, root: DataPath, split: str, shard: int, source: str | None = None) -> list[str]:
        """The keys of the frames tar (or of a mask source's tar) in the order stored."""
        path = self.frames_path(root, split, shard) if source is None else self.masks_path(root, split, shard, source)
        small = {CHECKSUM_FIELD, META_FIELD if source is None else MASK_FIELD}
        return [sample["__key__"] for sample in read_samples(path, source or ORACLE, small)]

    def layout_problems(self, root: DataPath, split: str, shard: int) -> list[str]:
        """What masklam reads right but plain webdataset readers would not: a mask tar in another order than the
        frames (readers that zip the two tars, as docs/dataset-format.md shows, would pair the wrong masks)."""
        frames = self.record_order(root, split, shard)
        problems = []
        for source in self.mask_sources(root, split, shard):
            if self.record_order(root, split, shard, source) != frames:
                problems.append(
                    f"{self.masks_path(root, split, shard, source)}: records are not in the order of "
                    f"{self.frames_path(root, split, shard)} (masklam joins them by key; plain webdataset "
                    f"readers would pair the wrong masks); {writer_command(source)} to rewrite it"
                )
        return problems

    @staticmethod
    def _decode_meta(path: DataPath, sample: dict[str, Any]) -> RecordMeta:
        try:
            return RecordMeta.from_json(json.loads(sample[META_FIELD]))
        except READ_ERRORS as e:
            raise corrupt_error(path, f"record {sample['__key__']}: {e!r}") from e

    def read_shard(
        self,
        root: DataPath,
        split: str,
        shard: int,
        mask_sources: Sequence[str] = (ORACLE,),
        fields: Sequence[str] | None = None,
        require_checksums: bool = False,
    ) -> Iterator[Record]:
        frames_path = self.frames_path(root, split, shard)
        if not frames_path.exists():
            raise missing_shard_error(frames_path)
        mask_paths = {source: self.masks_path(root, split, shard, source) for source in mask_sources}
        for source, path in mask_paths.items():
            if not path.exists():
                raise missing_masks_error(path, source, self.mask_sources(root, split, shard))
        suffixes = None if fields is None else {META_FIELD, CHECKSUM_FIELD, *(f"{name}.npy" for name in fields)}
        masks_by_key = {source: SamplesByKey(read_samples(path, source, {MASK_FIELD, CHECKSUM_FIELD}), path, source) for source, path in mask_paths.items()}
        seen: set[str] = set()
        for sample in read_samples(frames_path, ORACLE, suffixes):
            key = sample["__key__"]
            if key in seen:  # the frames tar's damage: its mask tars, which hold each key once, are intact
                raise corrupt_error(frames_path, f"record {key} is in the tar twice")
            seen.add(key)
            check_sample(sample, frames_path, ORACLE, suffixes, require_checksums)
            meta = self._decode_meta(frames_path, sample)
            try:
                steps = {suffix.removesuffix(".npy"): decode_npy(data) for suffix, data in sorted(sample.items()) if suffix.endswith(".npy")}
            except READ_ERRORS as e:
                raise corrupt_error(frames_path, f"record {key}: {e!r}") from e
            if any(len(array) != meta.frames for array in steps.values()):
                raise corrupt_error(frames_path, f"record {key}: arrays do not have {meta.frames} frames")
            drop_unlabelled_action(steps, meta)
            masks = {}
            for source, samples in masks_by_key.items():
                masks[source] = self._mask(mask_paths[source], source, samples.take(meta.key), meta, require_checksums)
            yield Record(meta, steps, masks)
        for source, samples in masks_by_key.items():
            extra = samples.left_over()
            if extra is not None:
                raise corrupt_error(mask_paths[source], f"record {extra} is not in {frames_path}", source)

    @staticmethod
    def _mask(path: DataPath, source: str, sample: dict[str, Any] | None, meta: RecordMeta, require_checksums: bool) -> np.ndarray:
        """The mask of ``meta``'s record from its sample of the mask tar (None: the tar has none)."""
        if sample is None:
            raise corrupt_error(path, f"the tar has no mask of record {meta.key}", source)
        check_sample(sample, path, source, {MASK_FIELD}, require_checksums)
        try:
            mask = decode_mask(sample[MASK_FIELD])
        except READ_ERRORS as e:
            raise corrupt_error(path, f"record {meta.key}: {e!r}", source) from e
        if mask.dtype != np.uint8 or mask.ndim != 3 or len(mask) != meta.frames:
            raise corrupt_error(path, f"record {meta.key}: mask is {mask.dtype}{list(mask.shape)}", source)
        return mask

    def has_shard(self, root: DataPath, split: str, shard: int) -> bool:
        return self.frames_path(root, split, shard).is_file()

    def mask_sources(self, root: DataPath, split: str, shard: int) -> list[str]:
        folder = root / "masks"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if self.masks_path(root, split, shard, p.name).is_file())

    def shard_bytes(self, root: Path, split: str, shard: int) -> int:
        paths = [self.frames_path(root, split, shard)]
        paths += [self.masks_path(root, split, shard, source) for source in self.mask_sources(root, split, shard)]
        return sum(path.stat().st_size for path in paths if path.exists())
