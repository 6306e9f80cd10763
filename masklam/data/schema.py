"""The dataset schema shared by every storage backend.

A dataset is a folder::

    DATASET/
      collect.json                         the command and config that made it (written first)
      info.json                            schema, features, env, splits, stats (written last)
      index/<split>/shard-000000.json      one per finished shard: its records' metadata
      <backend data>                       see masklam.data.webdataset_backend / zarr_backend

A *record* is one episode, or a fixed-length chunk of one, never a single frame, so that
windows (o_t, o_{t+k}) are read from one record. Every per-step array of a record has one
entry per frame: a record of ``n`` frames holds ``n - 1`` transitions. Entry ``i`` holds frame
``o_i`` and the action ``a_i`` taken at it, the reward of that transition, and flags saying
whether ``o_i`` is terminal / the last frame of a truncated episode. The final frame of an
episode has no action: its action and reward are NaN. Consecutive chunks of one episode
share their boundary frame, so no transition is lost between chunks; in a chunk that does not end
the episode, the last entry holds the real action and reward of that frame (the transition itself
lives in the next chunk). Unlabelled episodes store NaN actions, and readers return no "action"
for them, so every record has the same fields on disk.

Masks are stored per named *source* ("oracle" from the simulator, later "sam_vit_h" and
others), apart from the frames, so a new source is added without rewriting frames.
Masks are uint8 arrays of 0/1 with shape (n, H, W), stored losslessly.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
SPLITS = ("train", "test")
# Names users type, here (numpy is this module's only import) so that the CLI lists them without loading more.
BACKEND_NAMES = ("webdataset", "zarr")
ZARR_LAYOUTS = ("zip", "dir")  # a Zarr shard as one zip file, or a folder of chunk files
RESIZE_MODES = ("crop", "squash")  # how ingest makes a frame square
ORACLE = "oracle"

# A mask source name becomes part of file names: keep it a plain identifier.
MASK_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class Feature:
    """One per-step array of a record: dtype and shape of a single step's entry."""

    dtype: str
    shape: tuple[int, ...]
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "description": self.description}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Feature:
        return cls(obj["dtype"], tuple(obj["shape"]), obj.get("description", ""))


@dataclass
class RecordMeta:
    """What a record says about itself (and the episode it belongs to)."""

    key: str  # unique within a split; no dots (WebDataset splits names at the first dot)
    split: str
    episode: int  # episode index within the split
    chunk: int  # chunk index within the episode
    start: int  # index of the record's first frame within the episode
    frames: int  # number of frames (per-step entries) in this record
    episode_frames: int  # frames in the whole episode (transitions + 1)
    seed: int  # the episode's seed
    labelled: bool  # whether actions are stored for this episode
    episode_return: float  # undiscounted return of the whole episode
    extra: dict[str, Any] = field(default_factory=dict)  # env-specific (e.g. Meta-World success)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RecordMeta:
        return cls(**obj)


@dataclass
class Record:
    """A record in memory: metadata, per-step arrays and masks by source."""

    meta: RecordMeta
    steps: dict[str, np.ndarray]  # feature name -> array of shape (frames, *feature.shape)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # source -> (frames, H, W) uint8

    @property
    def key(self) -> str:
        return self.meta.key


def record_key(episode: int, chunk: int) -> str:
    return f"e{episode:06d}-c{chunk:03d}"


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"
