"""The interface every storage backend implements, and the registry of backends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from masklam.data.schema import ORACLE, Feature, Record


class Backend(Protocol):
    """Stores shards of records under a dataset folder.

    A shard is written whole and atomically: a reader sees all of it or none of it.
    Masks live apart from frames, one set per source, so ``write_masks`` adds a source
    to a finished shard without touching its frames.
    """

    name: str

    def write_shard(self, root: Path, split: str, shard: int, records: list[Record], features: dict[str, Feature]) -> None:
        """Write ``records`` (steps and every mask source they carry) as one shard, atomically.

        Records of unlabelled episodes have no "action" array in ``steps``.
        """

    def write_masks(self, root: Path, split: str, shard: int, source: str, masks: dict[str, np.ndarray]) -> None:
        """Add (or replace) mask source ``source`` of a finished shard; ``masks`` maps record key -> (n, H, W) uint8."""

    def read_shard(
        self,
        root: Path,
        split: str,
        shard: int,
        mask_sources: Sequence[str] = (ORACLE,),
        fields: Sequence[str] | None = None,
        require_checksums: bool = False,
    ) -> Iterator[Record]:
        """Yield the shard's records in the order written; ``fields`` limits which step arrays are decoded (a field
        asked for that the shard lacks is damage). Stored checksums are verified as the records are read; with
        ``require_checksums`` a record without them is damage too."""

    def location(self, root: Path, split: str, shard: int) -> Path:
        """The shard's file or folder, for messages."""

    def mask_location(self, root: Path, split: str, shard: int, source: str) -> Path:
        """Where the shard's masks of ``source`` are, for messages."""

    def layout_problems(self, root: Path, split: str, shard: int) -> list[str]:
        """Problems of the shard's layout that masklam reads through but other readers would not (for verify)."""

    def has_shard(self, root: Path, split: str, shard: int) -> bool:
        """Whether the shard's frames are complete on disk."""

    def mask_sources(self, root: Path, split: str, shard: int) -> list[str]:
        """The mask sources stored for a shard."""

    def shard_bytes(self, root: Path, split: str, shard: int) -> int:
        """Bytes on disk of the shard, its masks included."""
