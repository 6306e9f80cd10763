"""Both storage backends: exact round trips, masks added later, determinism, atomicity, damage, interop."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import zarr

from masklam.data import webdataset_backend, zarr_backend
from masklam.data.dataset import BACKENDS
from masklam.data.schema import ORACLE
from masklam.errors import UsageError

SAM = "sam_vit_h"
WDS = webdataset_backend.WebDatasetBackend()
ZARR = zarr_backend.ZarrBackend()


def test_round_trip(tmp_path, backend, features, shard_records, assert_same_record, tree_files):
    records = shard_records()
    backend.write_shard(tmp_path, "train", 0, records, features)

    assert backend.has_shard(tmp_path, "train", 0) and not backend.has_shard(tmp_path, "train", 1)
    assert backend.mask_sources(tmp_path, "train", 0) == [ORACLE, SAM]
    got = list(backend.read_shard(tmp_path, "train", 0, (ORACLE, SAM)))
    assert [r.key for r in got] == [r.key for r in records]
    for read, written in zip(got, records):
        assert_same_record(read, written)
    assert any(not r.meta.labelled for r in got)
    shard_files = [data for path, data in tree_files(tmp_path).items() if "shard-000000" in path]
    assert backend.shard_bytes(tmp_path, "train", 0) == sum(map(len, shard_files))


def test_default_reads_oracle_masks_and_fields_subset(tmp_path, backend, features, shard_records):
    backend.write_shard(tmp_path, "train", 0, shard_records(), features)

    assert all(sorted(r.masks) == [ORACLE] for r in backend.read_shard(tmp_path, "train", 0))
    for record in backend.read_shard(tmp_path, "train", 0, mask_sources=(), fields=["rgb", "action"]):
        assert sorted(record.steps) == (["action", "rgb"] if record.meta.labelled else ["rgb"])
        assert record.masks == {}


def test_write_masks_adds_a_source_without_touching_frames(tmp_path, backend, features, shard_records):
    records = shard_records(sources=(ORACLE,))
    backend.write_shard(tmp_path, "train", 0, records, features)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}

    for flip in (False, True):  # add the source, then replace it
        masks = {r.key: (1 - r.masks[ORACLE]) if flip else r.masks[ORACLE] for r in records}
        backend.write_masks(tmp_path, "train", 0, SAM, masks)
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
        assert backend.mask_sources(tmp_path, "train", 0) == [ORACLE, SAM]
        for record in backend.read_shard(tmp_path, "train", 0, (SAM,)):
            np.testing.assert_array_equal(record.masks[SAM], masks[record.key], strict=True)


def test_same_records_give_identical_bytes(tmp_path, backend, features, shard_records, tree_files):
    for folder in ("a", "b"):
        records = shard_records(sources=(ORACLE,))
        backend.write_shard(tmp_path / folder, "train", 0, records, features)
        backend.write_masks(tmp_path / folder, "train", 0, SAM, {r.key: r.masks[ORACLE] for r in records})
    assert tree_files(tmp_path / "a") == tree_files(tmp_path / "b")
    for path in (tmp_path / "a").rglob("zarr.json"):
        assert b"time" not in path.read_bytes()


def test_rewriting_a_shard_replaces_it_and_leaves_no_temp_files(tmp_path, backend, features, shard_records):
    backend.write_shard(tmp_path, "train", 0, shard_records(), features)
    new = shard_records(sources=(ORACLE,), first_episode=10)
    backend.write_shard(tmp_path, "train", 0, new, features)

    assert [r.key for r in backend.read_shard(tmp_path, "train", 0)] == [r.key for r in new]
    assert backend.mask_sources(tmp_path, "train", 0) == [ORACLE]  # the old sam masks went with the old frames
    assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name]


# A step of each backend that runs once its temp file / folder exists.
LATE_STEPS = {"webdataset": (webdataset_backend, "encode_mask"), "zarr": (zarr_backend, "fsync_tree")}


def test_failed_write_leaves_no_temp_files(tmp_path, backend, features, shard_records, monkeypatch):
    def fail(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(*LATE_STEPS[backend.name], fail)
    with pytest.raises(RuntimeError):
        backend.write_shard(tmp_path, "train", 0, shard_records(), features)
    assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name]


def test_missing_shard_or_mask_source_is_a_usage_error(tmp_path, backend, features, shard_records):
    with pytest.raises(UsageError, match="masklam collect"):
        list(backend.read_shard(tmp_path, "train", 0))
    backend.write_shard(tmp_path, "train", 0, shard_records(sources=(ORACLE,)), features)
    with pytest.raises(UsageError, match=f"no '{SAM}' masks"):
        list(backend.read_shard(tmp_path, "train", 0, (ORACLE, SAM)))
    with pytest.raises(UsageError, match="masklam collect"):
        backend.write_masks(tmp_path, "train", 1, SAM, {})


def truncate(path: Path, keep: float) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def garble(path: Path) -> None:
    """Overwrite the middle third of a file (a tar keeps its intact end)."""
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = b"\x07" * third
    path.write_bytes(bytes(data))


def cut_inside_last_member(path: Path) -> None:
    """Cut a tar in the middle of its last member's data: its end-of-archive blocks are gone."""
    with tarfile.open(path) as tar:
        member = tar.getmembers()[-1]
    os.truncate(path, member.offset_data + member.size // 2)


def cut_between_records(path: Path) -> None:
    """Cut a tar right after a member in its middle: what is left is a well-formed run of members."""
    with tarfile.open(path) as tar:
        member = tar.getmembers()[len(tar.getmembers()) // 2]
    os.truncate(path, member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)


def other_shards_masks(root: Path) -> None:
    shutil.copy(root / "masks/oracle/train/shard-000001.tar", root / "masks/oracle/train/shard-000000.tar")


SHARD0 = "data.zarr/train/shard-000000"
DAMAGE = {
    "webdataset": {
        "truncated frames tar": lambda root: truncate(root / "train/shard-000000.tar", 0.5),
        "frames tar without its end": lambda root: cut_inside_last_member(root / "train/shard-000000.tar"),
        "frames tar cut between records": lambda root: cut_between_records(root / "train/shard-000000.tar"),
        "truncated mask tar": lambda root: truncate(root / "masks/oracle/train/shard-000000.tar", 0.6),
        "garbled frames tar": lambda root: garble(root / "train/shard-000000.tar"),
        "missing mask tar": lambda root: (root / "masks/oracle/train/shard-000000.tar").unlink(),
        "another shard's masks": other_shards_masks,
    },
    "zarr": {
        "garbled chunk": lambda root: garble(root / SHARD0 / "data/reward/c/0"),
        "missing chunk": lambda root: (root / SHARD0 / "data/reward/c/0").unlink(),
        "garbled group metadata": lambda root: garble(root / SHARD0 / "zarr.json"),
        "missing mask array": lambda root: shutil.rmtree(root / SHARD0 / "data/mask/oracle"),
        "truncated record ends": lambda root: truncate(root / SHARD0 / "meta/record_ends/c/0", 0.5),
    },
}


@pytest.mark.parametrize("backend_name, damage", [(name, damage) for name, damages in DAMAGE.items() for damage in damages])
def test_damaged_shard_is_a_usage_error(tmp_path, backend_name, damage, features, shard_records):
    backend = BACKENDS[backend_name]
    backend.write_shard(tmp_path, "train", 0, shard_records(sources=(ORACLE,)), features)
    backend.write_shard(tmp_path, "train", 1, shard_records(sources=(ORACLE,), first_episode=10), features)
    DAMAGE[backend_name][damage](tmp_path)
    with pytest.raises(UsageError, match="shard-000000.*(masklam collect|masks)"):
        list(backend.read_shard(tmp_path, "train", 0))
    if "mask" not in damage:  # the others damage what every read needs: reward is read here
        with pytest.raises(UsageError, match="shard-000000.*masklam collect"):
            list(backend.read_shard(tmp_path, "train", 0, mask_sources=(), fields=["reward"]))


@pytest.mark.parametrize(
    "change",
    [
        lambda r: dataclasses.replace(r, meta=dataclasses.replace(r.meta, key="e0.c0")),
        lambda r: dataclasses.replace(r, steps={**r.steps, "reward": r.steps["reward"].astype(np.float64)}),
        lambda r: dataclasses.replace(r, steps={**r.steps, "action": np.zeros((r.meta.frames, 2), np.float32)}),
        lambda r: dataclasses.replace(r, masks={ORACLE: r.masks[ORACLE] * 2}),
    ],
    ids=["dot in key", "wrong dtype", "action in unlabelled record", "mask not 0/1"],
)
def test_bad_records_are_rejected(tmp_path, backend, features, shard_records, change):
    records = shard_records(sources=(ORACLE,))
    unlabelled = next(i for i, r in enumerate(records) if not r.meta.labelled)
    records[unlabelled] = change(records[unlabelled])
    with pytest.raises(ValueError):
        backend.write_shard(tmp_path, "train", 0, records, features)
    assert not backend.has_shard(tmp_path, "train", 0)


def test_plain_webdataset_reads_the_tars(tmp_path, features, shard_records):
    records = shard_records()
    WDS.write_shard(tmp_path, "train", 0, records, features)

    samples = list(wds.WebDataset(str(tmp_path / "train/shard-000000.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [r.key for r in records]
    for sample, record in zip(samples, records):
        assert sample["meta.json"] == record.meta.to_json()
        np.testing.assert_array_equal(sample["rgb.npy"], record.steps["rgb"], strict=True)
        # Every sample has every field; an unlabelled record's action is all NaN.
        assert np.isnan(sample["action.npy"]).all() != record.meta.labelled
    masks = wds.WebDataset(str(tmp_path / f"masks/{SAM}/train/shard-000000.tar"), shardshuffle=False).decode()
    for sample, record in zip(masks, records, strict=True):
        np.testing.assert_array_equal(sample["mask.npy.gz"], record.masks[SAM], strict=True)


def test_plain_zarr_reads_the_store(tmp_path, features, shard_records):
    records = shard_records()
    ZARR.write_shard(tmp_path, "train", 0, records, features)

    shard = zarr.open_group(tmp_path / "data.zarr", mode="r")["train/shard-000000"]
    assert shard.attrs["records"] == [r.meta.to_json() for r in records]
    ends = np.cumsum([r.meta.frames for r in records])
    np.testing.assert_array_equal(shard["meta/record_ends"][:], ends, strict=False)
    np.testing.assert_array_equal(shard["data/rgb"][:], np.concatenate([r.steps["rgb"] for r in records]))
    np.testing.assert_array_equal(shard[f"data/mask/{SAM}"][:], np.concatenate([r.masks[SAM] for r in records]))
    actions = shard["data/action"][:]
    for record, end in zip(records, ends):
        rows = actions[end - record.meta.frames : end]
        assert np.isnan(rows).all() != record.meta.labelled
