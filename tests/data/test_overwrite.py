"""`collect --overwrite` deletes only what masklam wrote, and re-running a finished collect changes nothing
(mask sources added since stay registered)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from masklam.cli import app
from masklam.data.dataset import open_dataset

runner = CliRunner()
COLLECT = [
    "collect",
    "--env",
    "dmc:cheetah-run",
    "--steps",
    "6",
    "--size",
    "16",
    "--episodes",
    "2",
    "--test-episodes",
    "1",
    "--episodes-per-shard",
    "1",
    "--no-progress",
]


def cli(*args: str):
    return runner.invoke(app, list(args))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=["webdataset", "zarr"])
def with_sources(request, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished dataset with a derived mask source and a segmented one (the oracle 'model': no weights needed)."""
    root = tmp_path_factory.mktemp(f"sources-{request.param}") / "data"
    command = [*COLLECT, "--backend", request.param, "--out", str(root)]
    assert cli(*command).exit_code == 0
    assert cli("masks", "transform", str(root), "--erode", "2", "--no-progress").exit_code == 0
    result = cli("segment", str(root), "--model", "oracle", "--name", "oracle_copy", "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert sorted(open_dataset(root).info["mask_sources"]) == ["oracle", "oracle_copy", "oracle_erode2"]
    return root, command


def test_rerunning_a_finished_collect_changes_nothing(with_sources):
    root, command = with_sources
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    result = cli(*command)
    assert result.exit_code == 0, result.stderr
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()} == before
    result = cli(
        "train",
        "lam",
        "--data",
        str(root),
        "--out",
        str(root.parent / "run"),
        "--trainer",
        "masklam-tiny",
        "--mask-source",
        "oracle_erode2",
        "--set",
        "optim.steps=1",
        "--no-progress",
    )
    assert result.exit_code == 0, result.stderr


def test_a_rewritten_shard_unregisters_only_the_sources_it_lost(with_sources, tmp_path):
    """A deleted shard is written again by the same collect: the sources added to the old shard are gone from it,
    so they leave info.json (and their shard is to do again); re-running their command brings them back."""
    root = tmp_path / "data"
    shutil.copytree(with_sources[0], root)
    command = [arg if arg != str(with_sources[0]) else str(root) for arg in with_sources[1]]
    backend = open_dataset(root).info["backend"]
    (root / "index/train/shard-000000.json").unlink()
    shutil.rmtree(root / "data.zarr/train/shard-000000") if backend == "zarr" else (root / "train/shard-000000.tar").unlink()
    assert cli(*command).exit_code == 0
    assert sorted(open_dataset(root).info["mask_sources"]) == ["oracle"]
    assert cli("verify", str(root)).exit_code == 0
    assert cli("masks", "transform", str(root), "--erode", "2", "--no-progress").exit_code == 0
    assert sorted(open_dataset(root).info["mask_sources"]) == ["oracle", "oracle_erode2"]
    assert cli("verify", str(root)).exit_code == 0


def user_files(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub" / "keep.txt").write_text("keep me")


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    out = tmp_path / "mine"
    user_files(out)
    before = snapshot(out)
    result = cli(*COLLECT, "--out", str(out), "--overwrite")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "notes.txt" in result.stderr and "nothing was deleted" in result.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["beside", "inside"])
def test_overwrite_refuses_a_dataset_holding_user_files(with_sources, tmp_path, where):
    out = tmp_path / "data"
    shutil.copytree(with_sources[0], out)
    if where == "beside":
        user_files(out)
    else:
        (out / "index" / "sub").mkdir()
        (out / "index" / "sub" / "keep.txt").write_text("keep me")
    before = snapshot(out)
    result = cli(*COLLECT, "--seed", "1", "--out", str(out), "--overwrite")  # another config
    assert result.exit_code == 2
    foreign = "notes.txt" if where == "beside" else "index/sub/keep.txt"
    assert len(result.stderr.strip().splitlines()) == 1 and foreign in result.stderr, result.stderr
    assert snapshot(out) == before


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Inside the backend's own folders, where every other file is masklam's: a shard (Zarr) or a mask source.
INSIDE_SHARD = {
    "zarr": ["data.zarr/train/shard-000000/notes.txt", "data.zarr/train/shard-000000/data/rgb/c/notes.txt", "data.zarr/train/shard-000000/data/mask/x"],
    "webdataset": ["masks/oracle/train/notes.txt", "train/shard-000000.tar.bak"],
}


@pytest.mark.parametrize("which", [0, 1])
def test_overwrite_refuses_a_user_file_inside_a_shard_and_keeps_it(with_sources, tmp_path, which):
    out = tmp_path / "data"
    shutil.copytree(with_sources[0], out)
    backend = open_dataset(out).info["backend"]
    foreign = out / INSIDE_SHARD[backend][which]
    foreign.write_text("the user's own notes")
    digest, before = sha256(foreign), snapshot(out)
    result = cli(*COLLECT, "--seed", "1", "--out", str(out), "--overwrite")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and INSIDE_SHARD[backend][which] in lines[0], result.stderr
    assert sha256(foreign) == digest and snapshot(out) == before


def test_replacing_a_zarr_mask_source_keeps_a_user_file_inside_it(tmp_path):
    """segment --overwrite replaces a Zarr source's array folder: a user's file in it is refused, not deleted."""
    out = tmp_path / "data"
    assert cli(*COLLECT, "--backend", "zarr", "--out", str(out)).exit_code == 0
    assert cli("segment", str(out), "--model", "oracle", "--name", "copy", "--no-progress").exit_code == 0
    foreign = out / "data.zarr/train/shard-000000/data/mask/copy/notes.txt"
    foreign.write_text("mine")
    digest = sha256(foreign)
    result = cli("masks", "transform", str(out), "--erode", "1", "--name", "copy", "--overwrite", "--no-progress")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and str(foreign) in lines[0], result.stderr
    assert sha256(foreign) == digest


def test_overwrite_replaces_a_dataset_made_by_masklam(with_sources, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(with_sources[0], out)
    (out / ".info.json.masklam-123-456.tmp").write_bytes(b"left by a killed writer")
    result = cli(*COLLECT, "--seed", "1", "--out", str(out), "--overwrite")
    assert result.exit_code == 0, result.stderr
    info = open_dataset(out).info
    assert info["collect"]["config"]["seed"] == 1 and sorted(info["mask_sources"]) == ["oracle"]
    assert not (out / "segment").exists() and not (out / ".info.json.masklam-123-456.tmp").exists()
    assert json.loads((out / "collect.json").read_text())["config"]["seed"] == 1


def test_overwrite_takes_a_distilled_source_and_its_teacher_cache_for_masklams(with_sources, tmp_path):
    """segment --distill leaves the teacher's cache (segment/NAME/teacher/): masklam's files, not a user's."""
    out = tmp_path / "data"
    shutil.copytree(with_sources[0], out)
    done = cli("segment", str(out), "--model", "oracle", "--name", "student", "--distill", "10", "--distill-steps", "2", "--no-progress")
    assert done.exit_code == 0, done.stderr
    cache = out / "segment" / "student" / "teacher"
    assert (cache / "key.json").is_file() and list(cache.glob("run-*.npy"))
    (cache / "notes.txt").write_text("mine")  # a user's file in there is still refused, and kept
    refused = cli(*COLLECT, "--seed", "1", "--out", str(out), "--overwrite")
    assert refused.exit_code == 2 and "segment/student/teacher/notes.txt" in refused.stderr, refused.stderr
    (cache / "notes.txt").unlink()
    result = cli(*COLLECT, "--seed", "1", "--out", str(out), "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not (out / "segment").exists() and sorted(open_dataset(out).info["mask_sources"]) == ["oracle"]
