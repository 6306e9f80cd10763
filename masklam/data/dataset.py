"""Reading a dataset folder (see masklam.data.schema for its layout), whatever backend stored it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masklam.atomic import atomic_write_json
from masklam.data.backend import Backend
from masklam.data.schema import BACKEND_NAMES, ORACLE, SPLITS, Record, RecordMeta, shard_name
from masklam.data.storage import DataPath, as_data_path, tree_bytes, writer_command
from masklam.data.validate import check_index, check_info, check_record
from masklam.errors import UsageError, did_you_mean

INFO = "info.json"


class Backends(Mapping[str, Backend]):
    """The storage backends by name, each imported when first used: webdataset imports torch where it is
    installed, and what only reads a dataset's JSON (masklam report, recipes) needs neither."""

    NAMES = BACKEND_NAMES

    def __init__(self) -> None:
        self._made: dict[str, Backend] = {}

    def __getitem__(self, name: str) -> Backend:
        if name not in self.NAMES:
            raise KeyError(name)
        if name not in self._made:
            if name == "webdataset":
                from masklam.data.webdataset_backend import WebDatasetBackend as backend
            else:
                from masklam.data.zarr_backend import ZarrBackend as backend
            self._made[name] = backend()
        return self._made[name]

    def __contains__(self, name: object) -> bool:  # without importing the backend
        return name in self.NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


BACKENDS = Backends()


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UsageError(f"unknown storage backend {name!r}{did_you_mean(name, BACKENDS)}: choose one of {', '.join(sorted(BACKENDS))}")


def get_backend(name: str) -> Backend:
    check_backend(name)
    return BACKENDS[name]


def index_path(root: DataPath, split: str, shard: int) -> DataPath:
    return root / "index" / split / f"{shard_name(shard)}.json"


def write_index(root: Path, split: str, shard: int, records_meta: list[RecordMeta], extra: dict[str, Any]) -> None:
    """Write a finished shard's index file (after the backend's write_shard): its records' metadata and ``extra``."""
    own = {"shard": shard, "split": split, "records": [meta.to_json() for meta in records_meta]}
    if own.keys() & extra.keys():
        raise ValueError(f"extra must not set {sorted(own.keys() & extra.keys())}: write_index sets them")
    atomic_write_json(index_path(root, split, shard), {**extra, **own})


def read_json(path: DataPath, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is unreadable ({e}): {what}") from None


def split_counts(metas) -> dict[str, int]:
    """What info.json's splits say of a split (besides its shards), counted from its records' metadata."""
    episodes = {meta.episode: meta for meta in metas}
    return {
        "episodes": len(episodes),
        "records": len(metas),
        "frames": sum(meta.episode_frames for meta in episodes.values()),
        "labelled_episodes": sum(meta.labelled for meta in episodes.values()),
    }


def join_chunks(chunks: list[Record]) -> Record:
    """One episode from its chunks in order: each chunk's last frame is the next chunk's first, kept once.

    The later copy is kept: its action and reward belong to a transition inside that chunk.
    """

    def join(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([array[:-1] for array in arrays[:-1]] + arrays[-1:])

    steps = {name: join([chunk.steps[name] for chunk in chunks]) for name in chunks[-1].steps}
    masks = {source: join([chunk.masks[source] for chunk in chunks]) for source in chunks[-1].masks}
    return Record(dataclasses.replace(chunks[0].meta, frames=chunks[0].meta.episode_frames), steps, masks)


IN_POOL_SHARE = 5  # one labelled train episode in five is held out of training, for the probe's in-pool score


@dataclass
class Dataset:
    root: DataPath  # a local folder, or a UPath for a URL (see open_dataset)
    info: dict[str, Any]
    backend: Backend

    def _check_split(self, split: str) -> None:
        if split not in self.info["splits"]:
            raise UsageError(f"{self.root} has no split {split!r}{did_you_mean(split, self.info['splits'])}: choose one of {', '.join(self.info['splits'])}")

    def shards(self, split: str) -> list[int]:
        """The split's shard numbers, checked against the count info.json gives."""
        self._check_split(split)
        folder = self.root / "index" / split
        names = sorted(folder.glob("shard-*.json")) if folder.is_dir() else []
        shards = [int(path.stem.removeprefix("shard-")) for path in names]
        expected = self.info["splits"][split]["shards"]
        if len(shards) != expected:
            raise UsageError(
                f"{folder} holds {len(shards)} shard index files, {self.root / INFO} says {expected}: "
                f"the dataset is incomplete; {writer_command()} to finish it"
            )
        return shards

    def shard_index(self, split: str, shard: int) -> list[RecordMeta]:
        path = index_path(self.root, split, shard)
        index = read_json(path, f"the dataset is incomplete; {writer_command()} to finish it")
        return check_index(index, path, split, shard)

    def index(self, split: str) -> list[RecordMeta]:
        return [meta for shard in self.shards(split) for meta in self.shard_index(split, shard)]

    def in_pool_episodes(self) -> frozenset[int]:
        """Train episodes whose actions only the probe reads, for its in-pool score: the last fifth (rounded up)
        of the labelled train episodes, when at least 3 are labelled (the probe needs 2 others to cross-validate).
        No stage that learns from actions sees theirs (masklam.train.loader.WindowSpec.labels)."""
        if "train" not in self.info["splits"]:
            return frozenset()
        labelled = sorted({meta.episode for meta in self.index("train") if meta.labelled})
        held = -(-len(labelled) // IN_POOL_SHARE) if len(labelled) >= 3 else 0
        return frozenset(labelled[len(labelled) - held :])

    def episode_frames(self) -> dict[str, dict[int, int]]:
        """split -> {episode: frames in the whole episode}, from the index (no frames read)."""
        return {split: {meta.episode: meta.episode_frames for meta in self.index(split)} for split in self.info["splits"]}

    def check_fields(self, fields: Sequence[str]) -> None:
        unknown = sorted(set(fields) - set(self.info["features"]))
        if unknown:
            raise UsageError(f"unknown fields {unknown}: the features are {', '.join(sorted(self.info['features']))}")

    def records(
        self,
        split: str,
        mask_sources: Sequence[str] = (ORACLE,),
        fields: Sequence[str] | None = None,
        shards: Sequence[int] | None = None,
    ) -> Iterator[Record]:
        """All records of a split (or of its ``shards``, in that order), shard by shard, in the order written."""
        self.check_fields(fields or ())
        for shard in self.shards(split) if shards is None else shards:
            yield from self._shard_records(split, shard, mask_sources, fields)

    @property
    def has_checksums(self) -> bool:
        """Whether every shard carries checksums (datasets written before masklam had them do not)."""
        return "checksums" in self.info

    def _shard_records(self, split: str, shard: int, mask_sources: Sequence[str], fields: Sequence[str] | None) -> Iterator[Record]:
        """A shard's records, checked against its index (a shard cut short shows as missing records) and against
        the schema: every asked-for array present with its dtype and shape, 0/1 masks, finite labelled actions."""
        metas = self.shard_index(split, shard)
        expected = [meta.key for meta in metas]
        fields = list(self.info["features"]) if fields is None else list(fields)
        location = str(self.backend.location(self.root, split, shard))
        found = []
        records = self.backend.read_shard(self.root, split, shard, mask_sources, fields, require_checksums=self.has_checksums)
        for record in records:
            found.append(record.key)
            if found != expected[: len(found)]:
                break
            check_record(
                record, metas[len(found) - 1], self.info, fields, location, lambda source: str(self.backend.mask_location(self.root, split, shard, source))
            )
            yield record
        if found != expected:
            raise UsageError(
                f"shard {shard} of split {split!r} in {self.root} holds records {found[:3]}... "
                f"({len(found)}), its index {expected[:3]}... ({len(expected)}): the shard is damaged; "
                f"{writer_command()} to rewrite it"
            )

    def episode(self, split: str, episode: int, mask_sources: Sequence[str] = (ORACLE,)) -> Record:
        """One whole episode, its chunks joined back together."""
        wanted: dict[int, set[str]] = {}  # shard -> keys of the episode's chunks
        metas: list[RecordMeta] = []
        for shard in self.shards(split):
            for meta in self.shard_index(split, shard):
                if meta.episode == episode:
                    wanted.setdefault(shard, set()).add(meta.key)
                    metas.append(meta)
        if not metas:
            raise UsageError(f"split {split!r} of {self.root} has no episode {episode}")
        metas.sort(key=lambda meta: meta.chunk)
        starts = [0]
        for meta in metas[:-1]:
            starts.append(starts[-1] + meta.frames - 1)  # each chunk's last frame is the next chunk's first
        complete = (
            [meta.chunk for meta in metas] == list(range(len(metas)))
            and [meta.start for meta in metas] == starts
            and metas[-1].start + metas[-1].frames == metas[0].episode_frames
        )
        if not complete:
            raise UsageError(
                f"episode {episode} of split {split!r} in {self.root} is incomplete: its chunks cover frames "
                f"{[(m.start, m.start + m.frames) for m in metas]} of {metas[0].episode_frames}; "
                f"{writer_command()} to rewrite it"
            )
        chunks = {
            record.key: record for shard, keys in wanted.items() for record in self._shard_records(split, shard, mask_sources, None) if record.key in keys
        }
        return join_chunks([chunks[meta.key] for meta in metas])

    def bytes_on_disk(self) -> int:
        return tree_bytes(self.root)


def is_folder(root: DataPath) -> bool:
    """Whether ``root`` is a folder; a remote store that cannot be reached raises its own error (which the CLI
    turns into one line saying so) rather than reading as "no folder", as fsspec's isdir would have it."""
    if isinstance(root, Path):
        return root.is_dir()
    try:
        return root.fs.info(root.path)["type"] == "directory"
    except FileNotFoundError:
        return False


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder: a local path, a file:// URL, or a URL fsspec reads (s3://bucket/prefix, ...)."""
    root = as_data_path(path)
    if not is_folder(root):
        raise UsageError(f"no dataset folder at {root}: check the path, or make one with `masklam collect`")
    if not (root / INFO).exists() and (root / "meta" / INFO).exists():  # LeRobot keeps its info.json in meta/
        raise UsageError(f"{root} is a LeRobot dataset, not a masklam one: make one from it with `masklam ingest {root} --out DATA`")
    info = read_json(
        root / INFO,
        f"{root} is not a finished masklam dataset; {writer_command()} that made it (see {root / 'collect.json'})",
    )
    info = check_info(info, root / INFO, sorted(BACKENDS))
    for split in SPLITS:  # a split on disk that info.json lost: every reader would skip it without a word
        folder = root / "index" / split
        if split not in info["splits"] and folder.is_dir() and any(folder.glob("shard-*.json")):
            raise UsageError(
                f"{root / INFO}: splits.{split} is missing, but {folder} holds shard index files: the file is damaged; {writer_command()} to rewrite it"
            )
    return Dataset(root, info, get_backend(info["backend"]))
