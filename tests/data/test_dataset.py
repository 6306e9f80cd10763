"""The dataset reader over both backends: index, records, episodes rejoined, and errors a user can fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from masklam.atomic import atomic_write_json
from masklam.data.backend import Backend
from masklam.data.dataset import get_backend, index_path, open_dataset, write_index
from masklam.data.schema import ORACLE, SCHEMA_VERSION, Record
from masklam.errors import UsageError

# split -> shards -> (episode, frames, labelled) whose chunks the shard holds; episode 0 spans both train shards
# (its last chunk goes to shard 1).
LAYOUT = {
    "train": [[(0, 11, True), (1, 6, False)], [(2, 3, True)]],
    "test": [[(0, 5, True)]],
}
CHUNK_FRAMES = 4


@pytest.fixture
def dataset(tmp_path, backend, features, make_episode) -> tuple[Path, dict[str, dict[int, Record]]]:
    """A small dataset written the way the collector writes it; returns its folder and the whole episodes."""
    episodes: dict[str, dict[int, Record]] = {}
    splits = {}
    for split, shards in LAYOUT.items():
        shard_records: list[list[Record]] = [[] for _ in shards]
        for shard, specs in enumerate(shards):
            for episode, frames, labelled in specs:
                whole, chunks = make_episode(episode, frames, CHUNK_FRAMES, labelled, split=split)
                episodes.setdefault(split, {})[episode] = whole
                shard_records[shard] += chunks
        if split == "train":  # move episode 0's last chunk to shard 1
            shard_records[1].insert(0, shard_records[0].pop(len(make_episode(0, 11, CHUNK_FRAMES)[1]) - 1))
        for shard, records in enumerate(shard_records):
            backend.write_shard(tmp_path, split, shard, records, features)
            write_index(tmp_path, split, shard, [r.meta for r in records], {"env": "synthetic"})
        splits[split] = {
            "shards": len(shards),
            "episodes": len(episodes[split]),
            "records": sum(map(len, shard_records)),
            "frames": sum(r.meta.frames for records in shard_records for r in records),
            "labelled_episodes": sum(whole.meta.labelled for whole in episodes[split].values()),
        }
    atomic_write_json(
        tmp_path / "info.json",
        {
            "schema_version": SCHEMA_VERSION,
            "masklam_version": "test",
            "backend": backend.name,
            "env": {"env_id": "synthetic", "render": {"size": features["rgb"].shape[0]}, "distractors": {}, "episode_steps": 10},
            "fps": 10.0,
            "splits": splits,
            "features": {name: feature.to_json() for name, feature in features.items()},
            "state_names": [],
            "action_bounds": {"low": [-1.0, -1.0], "high": [1.0, 1.0]},
            "mask_sources": {ORACLE: {}},
            "collect": {},
        },
    )
    return tmp_path, episodes


def written_records(root: Path, split: str, backend: Backend) -> list[Record]:
    shards = range(len(LAYOUT[split]))
    return [r for shard in shards for r in backend.read_shard(root, split, shard)]


def test_records_and_index_follow_the_shards(dataset, backend, assert_same_record, tree_files):
    root, _ = dataset
    ds = open_dataset(str(root))

    assert ds.backend is backend and ds.root == root and ds.info["schema_version"] == SCHEMA_VERSION
    assert ds.shards("train") == [0, 1]
    records = list(ds.records("train"))
    assert [r.meta for r in records] == ds.index("train")
    for read, written in zip(records, written_records(root, "train", backend), strict=True):
        assert_same_record(read, written)
    assert json.loads(index_path(root, "train", 0).read_text())["env"] == "synthetic"
    assert ds.bytes_on_disk() == sum(map(len, tree_files(root).values()))


def test_fields_subset(dataset):
    ds = open_dataset(dataset[0])
    for record in ds.records("train", mask_sources=(), fields=["reward", "action"]):
        assert sorted(record.steps) == (["action", "reward"] if record.meta.labelled else ["reward"])
        assert record.masks == {}
    with pytest.raises(UsageError, match="unknown fields \\['pixels'\\].*rgb"):
        list(ds.records("train", fields=["pixels"]))


def test_episode_rejoins_its_chunks(dataset, assert_same_record):
    root, episodes = dataset
    ds = open_dataset(root)
    assert len([m for m in ds.index("train") if m.episode == 0]) > 2  # the join is exercised
    for split, by_episode in episodes.items():
        for episode, whole in by_episode.items():
            assert_same_record(ds.episode(split, episode), whole)
    with pytest.raises(UsageError, match="no episode 7"):
        ds.episode("train", 7)


def test_shard_that_lost_records_is_a_usage_error(dataset, backend, features):
    root, _ = dataset
    records = written_records(root, "train", backend)
    shard0 = [r for r in records if r.key in {m.key for m in open_dataset(root).shard_index("train", 0)}]
    backend.write_shard(root, "train", 0, shard0[:-1], features)  # a well-formed shard, one record short
    with pytest.raises(UsageError, match="shard 0 of split 'train'.*masklam collect"):
        list(open_dataset(root).records("train"))


def test_missing_index_or_unknown_split_is_a_usage_error(dataset):
    root, _ = dataset
    with pytest.raises(UsageError, match="no split 'valid'.*test, train"):
        open_dataset(root).shards("valid")
    index_path(root, "train", 1).unlink()
    with pytest.raises(UsageError, match="incomplete"):
        open_dataset(root).shards("train")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "info.json").unlink(), "info.json is missing.*masklam collect"),
        (lambda root: (root / "info.json").write_text("{"), "info.json is unreadable"),
        (lambda root: (root / "info.json").write_text('{"schema_version": 99}'), "schema_version 99.*reads 1"),
        (lambda root: (root / "info.json").write_text('{"schema_version": 1}'), "masklam_version is missing"),
    ],
    ids=["no info", "corrupt info", "newer schema", "no backend"],
)
def test_bad_dataset_folder_is_a_usage_error(tmp_path, damage, message):
    atomic_write_json(tmp_path / "info.json", {})
    damage(tmp_path)
    with pytest.raises(UsageError, match=message):
        open_dataset(tmp_path)


def test_missing_folder_and_unknown_backend_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no dataset folder"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="'hdf5'.*webdataset, zarr"):
        get_backend("hdf5")


def test_write_index_keeps_its_own_keys(tmp_path):
    with pytest.raises(ValueError, match="records"):
        write_index(tmp_path, "train", 0, [], {"records": []})
    write_index(tmp_path, "train", 3, [], {"stats": {"frames": 0}})
    assert json.loads(index_path(tmp_path, "train", 3).read_text()) == {"records": [], "shard": 3, "split": "train", "stats": {"frames": 0}}
    assert np.all([not p.name.endswith(".tmp") for p in tmp_path.rglob("*")])
