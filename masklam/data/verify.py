"""`masklam verify`: read a whole dataset and list every problem found, one line each.

It checks info.json and every shard index against the schema, the counts info.json gives against the indexes,
then reads every shard of every split in full (every array, every registered mask source), which verifies each
record against its index, each array's dtype, shape and values, and every stored checksum, and joins frames and
masks by record key. A problem in one shard does not stop the others from being read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masklam.data.dataset import Dataset, open_dataset, split_counts
from masklam.errors import UsageError


@dataclass
class Verdict:
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"shards": 0, "records": 0, "frames": 0})
    sources: list[str] = field(default_factory=list)
    unregistered: set[str] = field(default_factory=set)  # mask sources stored in a shard that info.json does not list

    def summary(self) -> str:
        if self.problems:
            return f"{self.path}: {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''} (listed above)"
        checked = "; ".join(self.notes)
        return (
            f"{self.path}: ok ({self.counts['shards']} shards, {self.counts['records']} records, "
            f"{self.counts['frames']} frames, masks {', '.join(self.sources)}; {checked})"
        )


def drain(records) -> tuple[int, int]:
    """Read records to the end (each is checked as it is read); (records, frames)."""
    count = frames = 0
    for record in records:
        count, frames = count + 1, frames + record.meta.frames
    return count, frames


def verify_split(dataset: Dataset, split: str, verdict: Verdict) -> None:
    entry: dict[str, Any] = dataset.info["splits"][split]
    try:
        shards = dataset.shards(split)
    except UsageError as error:
        verdict.problems.append(str(error))
        return
    metas, every_index = [], True
    registered = sorted(dataset.info["mask_sources"])
    for shard in shards:
        try:
            metas += dataset.shard_index(split, shard)
        except UsageError as error:
            verdict.problems.append(str(error))
            every_index = False
            continue
        verdict.counts["shards"] += 1
        found = len(verdict.problems)
        try:
            records, frames = drain(dataset._shard_records(split, shard, (), None))
            verdict.counts["records"] += records
            verdict.counts["frames"] += frames
        except UsageError as error:
            verdict.problems.append(str(error))
        for source in registered:
            try:
                drain(dataset._shard_records(split, shard, (source,), ()))
            except UsageError as error:
                if str(error) not in verdict.problems:  # the frames' damage, met again reading the masks
                    verdict.problems.append(str(error))
        if len(verdict.problems) == found:  # a shard that reads well may still be laid out against the format
            verdict.problems += dataset.backend.layout_problems(dataset.root, split, shard)
        try:
            verdict.unregistered.update(set(dataset.backend.mask_sources(dataset.root, split, shard)) - set(registered))
        except UsageError:
            pass  # an unreadable shard: its problem is listed above
    if every_index:
        counted = split_counts(metas)
        for key, value in counted.items():
            if entry[key] != value:
                verdict.problems.append(f"{dataset.root / 'info.json'}: splits.{split}.{key} is {entry[key]}, the shard indexes give {value}")


def verify_dataset(path: str | Path) -> Verdict:
    verdict = Verdict(str(path))
    try:
        dataset = open_dataset(path)
    except UsageError as error:
        verdict.problems.append(str(error))
        return verdict
    verdict.sources = sorted(dataset.info["mask_sources"])
    for split in dataset.info["splits"]:
        verify_split(dataset, split, verdict)
    if not dataset.has_checksums and dataset.info["backend"] == "webdataset":  # zarr chunks always carry a crc32c
        verdict.notes.append("no checksums: written by an older masklam (re-collect to add them)")
    else:
        verdict.notes.append("every checksum verified")
    for source in sorted(verdict.unregistered):  # not damage: a segment or transform that has not finished
        verdict.notes.append(f"'{source}' masks are stored but not registered in info.json (unfinished: re-run the command that makes them)")
    return verdict
