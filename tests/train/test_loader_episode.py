"""WindowSpec(episode=True): each window says which episode it was cut from (the probe groups by it)."""

from __future__ import annotations

import numpy as np
import pytest

from masklam.atomic import atomic_write_json
from masklam.data.dataset import BACKENDS, write_index
from masklam.data.schema import ORACLE, SCHEMA_VERSION, Feature, Record, RecordMeta, record_key
from masklam.errors import UsageError
from masklam.train.loader import WindowDataset, WindowSpec

FEATURES = {"rgb": Feature("uint8", (4, 4, 3)), "state": Feature("float32", (1,)), "action": Feature("float32", (1,))}


def write_dataset(root, backend: str, episodes: dict[int, int]):
    """One chunked shard; every pixel of episode e holds e, so a window's frames say where it came from."""
    records = []
    for episode, frames in episodes.items():
        for chunk, start in enumerate(range(0, frames - 1, 4)):  # chunks of 5 frames sharing their boundary frame
            stop = min(start + 5, frames)
            meta = RecordMeta(record_key(episode, chunk), "train", episode, chunk, start, stop - start, frames, episode, True, 0.0)
            steps = {
                "rgb": np.full((stop - start, 4, 4, 3), episode, np.uint8),
                "state": np.zeros((stop - start, 1), np.float32),
                "action": np.zeros((stop - start, 1), np.float32),
            }
            records.append(Record(meta, steps, {ORACLE: np.zeros((stop - start, 4, 4), np.uint8)}))
    BACKENDS[backend].write_shard(root, "train", 0, records, FEATURES)
    write_index(root, "train", 0, [r.meta for r in records], {})
    atomic_write_json(
        root / "info.json",
        {  # every field the schema checks (masklam/data/validate.py), with this dataset's counts
            "schema_version": SCHEMA_VERSION,
            "masklam_version": "test",
            "backend": backend,
            "env": {"env_id": "synthetic", "render": {"size": 4}, "distractors": {}, "episode_steps": 0},
            "fps": 10.0,
            "splits": {
                "train": {
                    "shards": 1,
                    "episodes": len(episodes),
                    "records": len(records),
                    "frames": sum(episodes.values()),
                    "labelled_episodes": len(episodes),
                }
            },
            "features": {k: f.to_json() for k, f in FEATURES.items()},
            "state_names": ["zero"],
            "action_bounds": {"low": [-1.0], "high": [1.0]},
            "mask_sources": {ORACLE: {}},
            "collect": {},
        },
    )
    return root


@pytest.mark.parametrize("backend", ["zarr", "webdataset"])
def test_windows_carry_their_episode_only_when_asked(tmp_path, backend):
    root = write_dataset(tmp_path, backend, {3: 9, 7: 6})
    windows = list(WindowDataset(root, "train", WindowSpec(stack=2, episode=True), epochs=1))
    assert sorted(int(w["episode"]) for w in windows) == [3] * 8 + [7] * 5
    assert all(int(w["episode"]) == int(w["next"][0, 0, 0]) for w in windows)
    assert "episode" not in next(iter(WindowDataset(root, "train", WindowSpec(stack=2), epochs=1)))


def test_episode_is_not_a_field_name():
    with pytest.raises(UsageError, match="episode"):
        WindowSpec(fields=("episode",))
