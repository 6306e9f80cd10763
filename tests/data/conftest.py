"""Synthetic records (numpy only, no simulator) and helpers shared by the data tests, as fixtures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from masklam.data.backend import Backend
from masklam.data.dataset import BACKENDS
from masklam.data.schema import ORACLE, Feature, Record, RecordMeta, record_key

H = W = 10  # square, as every writer's frames are (info.json's env.render.size); not a multiple of 8
FEATURES = {
    "rgb": Feature("uint8", (H, W, 3)),
    "state": Feature("float64", (5,)),
    "action": Feature("float32", (2,)),
    "reward": Feature("float32", ()),
    "terminated": Feature("bool", ()),
    "truncated": Feature("bool", ()),
    "distractor_bg_frame": Feature("int32", ()),
}


def build_episode(
    episode: int,
    frames: int,
    chunk_frames: int,
    labelled: bool = True,
    sources: tuple[str, ...] = (ORACLE,),
    split: str = "train",
) -> tuple[Record, list[Record]]:
    """An episode of random data and its chunks (consecutive chunks share their boundary frame)."""
    rng = np.random.default_rng(episode)
    steps = {
        "rgb": rng.integers(0, 256, (frames, H, W, 3), dtype=np.uint8),
        "state": rng.normal(size=(frames, 5)),
        "action": rng.uniform(-1, 1, (frames, 2)).astype(np.float32),
        "reward": rng.random(frames).astype(np.float32),
        "terminated": np.zeros(frames, bool),
        "truncated": np.zeros(frames, bool),
        "distractor_bg_frame": np.arange(frames, dtype=np.int32) * 3 + episode,
    }
    steps["action"][-1] = steps["reward"][-1] = np.nan  # the final frame has no transition
    steps["truncated"][-1] = True
    if not labelled:
        del steps["action"]
    masks = {source: (rng.random((frames, H, W)) < 0.3).astype(np.uint8) for source in sources}
    meta = RecordMeta(
        key=record_key(episode, 0),
        split=split,
        episode=episode,
        chunk=0,
        start=0,
        frames=frames,
        episode_frames=frames,
        seed=1000 + episode,
        labelled=labelled,
        episode_return=float(np.nansum(steps["reward"])),
        extra={"success": episode % 2 == 0, "note": "synthetic"},
    )
    chunks = []
    start = 0
    while True:
        end = min(start + chunk_frames, frames)
        chunk = len(chunks)
        chunk_meta = dataclasses.replace(meta, key=record_key(episode, chunk), chunk=chunk, start=start, frames=end - start)
        chunks.append(
            Record(
                chunk_meta,
                {name: array[start:end] for name, array in steps.items()},
                {source: mask[start:end] for source, mask in masks.items()},
            )
        )
        if end == frames:
            return Record(meta, steps, masks), chunks
        start = end - 1


def check_same_record(got: Record, want: Record, mask_sources: tuple[str, ...] | None = None) -> None:
    assert got.meta == want.meta
    assert sorted(got.steps) == sorted(want.steps)
    for name, array in want.steps.items():
        assert got.steps[name].dtype == array.dtype, name
        np.testing.assert_array_equal(got.steps[name], array, err_msg=name, strict=True)  # NaN == NaN here
    sources = sorted(want.masks) if mask_sources is None else sorted(mask_sources)
    assert sorted(got.masks) == sources
    for source in sources:
        assert got.masks[source].dtype == np.uint8
        np.testing.assert_array_equal(got.masks[source], want.masks[source], strict=True)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def make_episode() -> Callable[..., tuple[Record, list[Record]]]:
    return build_episode


@pytest.fixture
def assert_same_record() -> Callable[..., None]:
    return check_same_record


@pytest.fixture
def tree_files() -> Callable[[Path], dict[str, bytes]]:
    return read_tree


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def shard_records() -> Callable[..., list[Record]]:
    """Records of a shard: chunks of a labelled and an unlabelled episode, plus a one-chunk episode."""

    def build(sources: tuple[str, ...] = (ORACLE, "sam_vit_h"), first_episode: int = 0) -> list[Record]:
        records = []
        for offset, (frames, labelled) in enumerate([(9, True), (7, False), (4, True)]):
            records += build_episode(first_episode + offset, frames, 4, labelled, sources)[1]
        return records

    return build


@pytest.fixture
def features() -> dict[str, Feature]:
    return FEATURES
