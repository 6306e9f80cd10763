"""WebDataset storage: plain tar shards of ``.npy`` arrays, one sample per record.

Layout under the dataset folder::

    <split>/shard-000000.tar                   frames: per record <key>.<feature>.npy ... and <key>.meta.json
    masks/<source>/<split>/shard-000000.tar    masks: per record <key>.mask.npy.gz, same keys in the same order

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
)

META_FIELD = "meta.json"
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
                raise corrupt_error(path, str(e), source) from e
            if sample is None:
                return
            yield sample


class WebDatasetBackend:
    name = "webdataset"

    def frames_path(self, root: DataPath, split: str, shard: int) -> DataPath:
        return root / split / f"{shard_name(shard)}.tar"

    def masks_path(self, root: DataPath, split: str, shard: int, source: str) -> DataPath:
        return root / "masks" / source / split / f"{shard_name(shard)}.tar"

    def write_shard(
        self, root: Path, split: str, shard: int, records: list[Record], features: dict[str, Feature]
    ) -> None:
        sources = check_records(records, split, features)
        # Masks of other sources left by an earlier version of this shard belong to the old frames.
        for stale in set(self.mask_sources(root, split, shard)) - set(sources):
            self.masks_path(root, split, shard, stale).unlink()
        with atomic_file(self.frames_path(root, split, shard)) as f, tar_writer(f) as writer:
            for record in records:
                # Every sample has every field (NaN actions when unlabelled): tools that infer columns
                # from the first samples (Hugging Face datasets) then read every shard alike.
                sample = {f"{name}.npy": encode_npy(step_or_nan(record, name, feature)) for name, feature in features.items()}
                writer.write({"__key__": record.key, META_FIELD: dumps_json(record.meta.to_json()), **sample})
        for source in sources:
            self._write_mask_tar(root, split, shard, source, [(r.key, r.masks[source]) for r in records])

    def write_masks(self, root: Path, split: str, shard: int, source: str, masks: dict[str, np.ndarray]) -> None:
        metas = self._read_metas(root, split, shard)
        check_masks(source, masks, metas)
        self._write_mask_tar(root, split, shard, source, [(meta.key, masks[meta.key]) for meta in metas])

    def _write_mask_tar(
        self, root: Path, split: str, shard: int, source: str, masks: list[tuple[str, np.ndarray]]
    ) -> None:
        with atomic_file(self.masks_path(root, split, shard, source)) as f, tar_writer(f) as writer:
            for key, mask in masks:
                writer.write({"__key__": key, MASK_FIELD: encode_mask(mask)})

    def _read_metas(self, root: DataPath, split: str, shard: int) -> list[RecordMeta]:
        """The shard's record metadata in order, reading only the meta.json members."""
        path = self.frames_path(root, split, shard)
        if not path.exists():
            raise missing_shard_error(path)
        return [self._decode_meta(path, sample) for sample in read_samples(path, ORACLE, {META_FIELD})]

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
    ) -> Iterator[Record]:
        frames_path = self.frames_path(root, split, shard)
        if not frames_path.exists():
            raise missing_shard_error(frames_path)
        mask_paths = {source: self.masks_path(root, split, shard, source) for source in mask_sources}
        for source, path in mask_paths.items():
            if not path.exists():
                raise missing_masks_error(path, source, self.mask_sources(root, split, shard))
        suffixes = None if fields is None else {META_FIELD, *(f"{name}.npy" for name in fields)}
        mask_samples = {source: read_samples(path, source, {MASK_FIELD}) for source, path in mask_paths.items()}
        for sample in read_samples(frames_path, ORACLE, suffixes):
            key = sample["__key__"]
            meta = self._decode_meta(frames_path, sample)
            try:
                steps = {
                    suffix.removesuffix(".npy"): decode_npy(data)
                    for suffix, data in sorted(sample.items())
                    if suffix.endswith(".npy")
                }
            except READ_ERRORS as e:
                raise corrupt_error(frames_path, f"record {key}: {e!r}") from e
            if any(len(array) != meta.frames for array in steps.values()):
                raise corrupt_error(frames_path, f"record {key}: arrays do not have {meta.frames} frames")
            drop_unlabelled_action(steps, meta)
            masks = {}
            for source, samples in mask_samples.items():
                masks[source] = self._next_mask(mask_paths[source], source, samples, meta)
            yield Record(meta, steps, masks)
        for source, samples in mask_samples.items():
            extra = next(samples, None)
            if extra is not None:
                raise corrupt_error(mask_paths[source], f"record {extra['__key__']} is not in {frames_path}", source)

    @staticmethod
    def _next_mask(path: DataPath, source: str, samples: Iterator[dict[str, Any]], meta: RecordMeta) -> np.ndarray:
        """The mask of ``meta``'s record: the next sample of the mask tar, which must have the same key."""
        sample = next(samples, None)
        if sample is None or sample["__key__"] != meta.key:
            found = "the end of the tar" if sample is None else f"record {sample['__key__']}"
            raise corrupt_error(path, f"expected the mask of record {meta.key}, found {found}", source)
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
