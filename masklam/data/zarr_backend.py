"""Zarr (v3) storage: one store, a group per shard, laid out like diffusion_policy's replay buffer.

Layout under the dataset folder::

    data.zarr/<split>/shard-000000/
        zarr.json                  attributes: records (RecordMeta dicts, in order), compressors
        data/<feature>             the records' step arrays concatenated on axis 0
        data/mask/<source>         the records' masks concatenated on axis 0, one array per source
        meta/record_ends           cumulative frame counts (int64): record i is [ends[i-1], ends[i])

A published dataset may hold a shard as one uncompressed zip of that folder instead, ``<split>/shard-000000.zip``
(``masklam publish --zarr-layout zip``: one file per shard on the Hub instead of one per chunk); readers take either.

Records of unlabelled episodes hold NaN in ``data/action``; reading drops it, as the WebDataset backend does.
Arrays are chunked along axis 0 only (~1 MiB, at least 64 frames) so that a window reads one or two chunks.
A shard (or a mask source) is built under ``.masklam-tmp-PID-XXXX/`` in the dataset folder and renamed into place.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from fsspec.implementations.dirfs import DirFileSystem
from zarr.storage import FsspecStore, LocalStore

from masklam.atomic import atomic_write_bytes
from masklam.data.schema import ORACLE, SCHEMA_VERSION, Feature, Record, RecordMeta, shard_name
from masklam.data.storage import (
    ZARR_ARRAY_FILES,
    ZARR_SHARD_FILES,
    DataPath,
    check_masks,
    check_records,
    corrupt_error,
    drop_unlabelled_action,
    foreign_files,
    missing_masks_error,
    missing_shard_error,
    step_or_nan,
    tree_bytes,
)
from masklam.errors import UsageError, naming_full_disk

STORE = "data.zarr"
STAGING = ".masklam-tmp-"  # in the dataset folder: same filesystem, so a rename moves a finished folder into place
# Fixed Blosc settings (the output is then a function of the data). Byte shuffle helps float arrays and is a
# no-op on uint8 frames; bit shuffle suits 0/1 masks (87x vs 65x without it on DMC masks). Blosc has no
# checksum: a crc32c per chunk makes damaged chunks fail to read instead of decoding to wrong values.
STEPS_BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "shuffle"}
MASKS_BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "bitshuffle"}
CHUNK_BYTES = 1 << 20
MIN_CHUNK_FRAMES = 64
GROUP_JSON = b'{\n  "attributes": {},\n  "zarr_format": 3,\n  "node_type": "group"\n}'  # as zarr writes it
# Errors that reading a damaged store raises (RuntimeError: Blosc on a damaged chunk).
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError)


def chunk_frames(frame_bytes: int, frames: int) -> int:
    """Frames per chunk: a power of two near CHUNK_BYTES, at least MIN_CHUNK_FRAMES, at most the array."""
    target = 2 ** int(math.log2(max(1, CHUNK_BYTES // max(1, frame_bytes))))
    return min(max(target, MIN_CHUNK_FRAMES), frames)


def compressors_json(blosc: dict[str, Any]) -> list[dict[str, Any]]:
    """The compressors as zarr.json lists them, for the shard's attributes."""
    return [{"name": "blosc", "configuration": blosc}, {"name": "crc32c"}]


def write_array(store: LocalStore, name: str | None, data: np.ndarray, blosc: dict[str, Any]) -> None:
    """Write ``data`` as array ``name`` of the store (None: the store's root is the array)."""
    zarr.create_array(
        store,
        name=name,
        shape=data.shape,
        chunks=(chunk_frames(data[0].nbytes, len(data)), *data.shape[1:]),
        dtype=data.dtype,
        compressors=[zarr.codecs.BloscCodec(**blosc), zarr.codecs.Crc32cCodec()],
        fill_value=0,
        # Every chunk on disk, even all-zero ones, so that a missing chunk file means damage.
        config={"write_empty_chunks": True},
    )[...] = data


def check_chunk_files(array: zarr.Array, shard: ShardFiles) -> None:
    """Zarr reads a missing chunk as fill values: count the chunk files instead of trusting it."""
    # An axis of length 0 (an ingested video's 0-wide action) has a chunk length of 0 and no chunk at all.
    expected = math.prod(math.ceil(size / chunk) if chunk else 0 for size, chunk in zip(array.shape, array.chunks))
    found = shard.count_files(f"{array.path}/c")
    if found != expected:
        raise ValueError(f"{array.path} has {found} of its {expected} chunk files")


@dataclass
class ShardFiles:
    """A shard's files, from its folder (local or through fsspec) or from the zip a published dataset holds."""

    path: DataPath  # the folder or the zip, for messages
    store: LocalStore | FsspecStore
    fs: fsspec.AbstractFileSystem  # rooted at the shard: paths are relative to it

    def count_files(self, sub: str) -> int:
        return len(self.fs.find(sub)) if self.fs.isdir(sub) else 0

    def nodes(self, group: str) -> list[str]:
        """Names of the arrays and groups in ``group``, listed from the files (zarr's own listing of a store
        rooted at a zip's top mangles the names)."""
        if not self.fs.isdir(group):
            return []
        names = [PurePosixPath(p).name for p in self.fs.ls(group, detail=False)]
        return sorted(name for name in names if self.fs.isfile(f"{group}/{name}/zarr.json"))

    def mask_sources(self) -> list[str]:
        return self.nodes("data/mask")


def shard_files(folder: DataPath, archive: DataPath) -> ShardFiles | None:
    """The shard's files from ``folder`` if it holds one, else from the zip ``archive``; None when neither exists."""
    if (folder / "zarr.json").is_file():
        if isinstance(folder, Path):
            return ShardFiles(folder, LocalStore(folder, read_only=True), DirFileSystem(str(folder), fsspec.filesystem("file")))
        store = FsspecStore.from_url(str(folder), storage_options=folder.storage_options, read_only=True)
        return ShardFiles(folder, store, DirFileSystem(folder.path, folder.fs))
    if archive.is_file():
        target = {} if isinstance(archive, Path) else {"target_protocol": archive.protocol, "target_options": archive.storage_options}
        fs = fsspec.filesystem("zip", fo=str(archive) if isinstance(archive, Path) else archive.path, **target)
        return ShardFiles(archive, FsspecStore(AsyncFileSystemWrapper(fs, asynchronous=True), path="", read_only=True), fs)
    return None


def fsync_tree(path: Path) -> None:
    for folder, _, names in os.walk(path):
        for name in names:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class ZarrBackend:
    name = "zarr"

    def shard_path(self, root: DataPath, split: str, shard: int) -> DataPath:
        return root / STORE / split / shard_name(shard)

    def zip_path(self, root: DataPath, split: str, shard: int) -> DataPath:
        return root / STORE / split / f"{shard_name(shard)}.zip"

    def _files(self, root: DataPath, split: str, shard: int) -> ShardFiles | None:
        return shard_files(self.shard_path(root, split, shard), self.zip_path(root, split, shard))

    def write_shard(self, root: Path, split: str, shard: int, records: list[Record], features: dict[str, Feature]) -> None:
        sources = check_records(records, split, features)
        unlabelled = any(not record.meta.labelled for record in records)
        if unlabelled and "action" in features and not np.issubdtype(features["action"].dtype, np.floating):
            raise ValueError("the zarr backend stores unlabelled actions as NaN: the action feature must be a float")
        attributes = {
            "schema_version": SCHEMA_VERSION,
            "records": [record.meta.to_json() for record in records],
            "compressors": {"steps": compressors_json(STEPS_BLOSC), "masks": compressors_json(MASKS_BLOSC)},
        }
        with self._staging(root) as tmp:
            store = LocalStore(tmp)
            zarr.create_group(store, zarr_format=3, attributes=attributes)
            for name, feature in sorted(features.items()):
                arrays = [step_or_nan(record, name, feature) for record in records]
                write_array(store, f"data/{name}", np.concatenate(arrays), STEPS_BLOSC)
            zarr.create_group(store, path="data/mask")  # present even when empty, for write_masks to add to
            for source in sources:
                masks = np.concatenate([record.masks[source] for record in records])
                write_array(store, f"data/mask/{source}", masks, MASKS_BLOSC)
            ends = np.cumsum([record.meta.frames for record in records], dtype=np.int64)
            write_array(store, "meta/record_ends", ends, STEPS_BLOSC)
            self._ensure_groups(root, split)
            self._move_into_place(tmp, self.shard_path(root, split, shard), ZARR_SHARD_FILES)

    def write_masks(self, root: Path, split: str, shard: int, source: str, masks: dict[str, np.ndarray]) -> None:
        if not self.has_shard(root, split, shard) and self.zip_path(root, split, shard).is_file():
            raise UsageError(
                f"{self.zip_path(root, split, shard)} is a zipped shard (as published): masks are added to shard "
                "folders only; get the dataset with `masklam pull`, which unzips it"
            )
        metas = self._open(root, split, shard)[2]
        check_masks(source, masks, metas)
        with self._staging(root) as tmp:
            write_array(LocalStore(tmp), None, np.concatenate([masks[meta.key] for meta in metas]), MASKS_BLOSC)
            self._move_into_place(tmp, self.shard_path(root, split, shard) / "data" / "mask" / source, ZARR_ARRAY_FILES)

    @staticmethod
    @contextmanager
    def _staging(root: Path) -> Iterator[Path]:
        """A path in a fresh folder ROOT/.masklam-tmp-PID-XXXX (one per writer, so parallel writers never share one),
        removed afterwards with whatever is left in it. A full disk inside zarr's store raises an OSError that
        names no file: it is raised again naming the staging folder, so the one-line message says where."""
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=root))  # the pid: a later run can tell a dead writer's
        try:
            with naming_full_disk(folder):
                yield folder / "node"
        finally:
            shutil.rmtree(folder)

    @staticmethod
    def _move_into_place(tmp: Path, dest: Path, owned: re.Pattern[str]) -> None:
        """Rename the finished folder ``tmp`` to ``dest``; an existing ``dest`` is moved aside first (and deleted),
        refused if it holds a file that ``owned`` (the files masklam writes there) does not match.

        A directory cannot be swapped for another in one step: readers see the old node or none
        for a moment, never a partial one.
        """
        foreign = foreign_files(dest, owned) if dest.is_dir() else []
        if foreign:
            raise UsageError(f"{dest / foreign[0]} is not a file masklam wrote, and replacing {dest} would delete it: move it away and re-run")
        fsync_tree(tmp)
        if dest.exists():
            os.rename(dest, tmp.with_name("old"))  # removed with the staging folder
        os.rename(tmp, dest)

    @staticmethod
    def _ensure_groups(root: Path, split: str) -> None:
        # Writers of several shards may race here: each writes the same bytes atomically.
        for folder in (root / STORE, root / STORE / split):
            if not (folder / "zarr.json").exists():
                atomic_write_bytes(folder / "zarr.json", GROUP_JSON)

    def _open(self, root: DataPath, split: str, shard: int) -> tuple[ShardFiles, zarr.Group, list[RecordMeta], np.ndarray]:
        """Open a shard: its files, group, records' metadata and record ends, checked against each other."""
        files = self._files(root, split, shard)
        if files is None:
            raise missing_shard_error(self.shard_path(root, split, shard))
        path = files.path
        try:
            group = zarr.open_group(files.store, mode="r")
            metas = [RecordMeta.from_json(meta) for meta in group.attrs["records"]]
            ends_array = group["meta/record_ends"]
            check_chunk_files(ends_array, files)
            ends = ends_array[...]
        except READ_ERRORS as e:
            raise corrupt_error(path, repr(e)) from e
        if list(ends) != list(np.cumsum([meta.frames for meta in metas])):
            raise corrupt_error(path, "meta/record_ends does not match the records' frame counts")
        return files, group, metas, ends

    def read_shard(
        self,
        root: DataPath,
        split: str,
        shard: int,
        mask_sources: Sequence[str] = (ORACLE,),
        fields: Sequence[str] | None = None,
        require_checksums: bool = False,  # every chunk carries a crc32c (a zarr codec): always checked
    ) -> Iterator[Record]:
        files, group, metas, ends = self._open(root, split, shard)
        path = files.path
        stored_sources = files.mask_sources()
        for source in mask_sources:
            if source not in stored_sources:
                raise missing_masks_error(path / "data" / "mask" / source, source, stored_sources)
        try:
            names = [name for name in files.nodes("data") if name != "mask"]
            missing = sorted(set(fields or ()) - set(names))
            if missing:
                raise ValueError(f"the array data/{missing[0]} is missing")
            steps = {name: group[f"data/{name}"] for name in names if fields is None or name in fields}
            masks = {source: group[f"data/mask/{source}"] for source in mask_sources}
            for array in [*steps.values(), *masks.values()]:
                check_chunk_files(array, files)
                if array.shape[0] != ends[-1]:
                    raise ValueError(f"{array.path} has {array.shape[0]} frames, the records {ends[-1]}")
        except READ_ERRORS as e:
            raise corrupt_error(path, repr(e)) from e
        for meta, end in zip(metas, ends):
            start = end - meta.frames
            record_steps = {name: self._read(path, array, start, end, meta) for name, array in steps.items()}
            record_masks = {source: self._read(path, array, start, end, meta) for source, array in masks.items()}
            yield Record(meta, drop_unlabelled_action(record_steps, meta), record_masks)

    @staticmethod
    def _read(path: DataPath, array: zarr.Array, start: int, end: int, meta: RecordMeta) -> np.ndarray:
        try:
            return array[start:end]
        except READ_ERRORS as e:
            problem = "a chunk fails its crc32c checksum (its bytes changed)" if "checksum" in str(e) else repr(e)
            raise corrupt_error(path, f"{array.path} of record {meta.key}: {problem}") from e

    def location(self, root: DataPath, split: str, shard: int) -> DataPath:
        files = self._files(root, split, shard)
        return self.shard_path(root, split, shard) if files is None else files.path

    def mask_location(self, root: DataPath, split: str, shard: int, source: str) -> DataPath:
        return self.location(root, split, shard) / "data" / "mask" / source

    def layout_problems(self, root: DataPath, split: str, shard: int) -> list[str]:
        return []  # masks are arrays beside the frames', in one order by construction

    def has_shard(self, root: DataPath, split: str, shard: int) -> bool:
        """Whether the shard's folder is complete on disk (a zipped shard is read, never written)."""
        return (self.shard_path(root, split, shard) / "zarr.json").is_file()

    def mask_sources(self, root: DataPath, split: str, shard: int) -> list[str]:
        files = self._files(root, split, shard)
        return [] if files is None else files.mask_sources()

    def shard_bytes(self, root: Path, split: str, shard: int) -> int:
        folder = self.shard_path(root, split, shard)
        return tree_bytes(folder if folder.exists() else self.zip_path(root, split, shard))
