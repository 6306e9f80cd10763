"""A full disk is one line and exit 2, at the write layer of each stage (ENOSPC injected where masklam renames a
finished temp file into place), and the same command resumes to the same bytes once there is space."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import masklam.atomic

COLLECT = ["collect", "--env", "dmc:cheetah-run", "--steps", "6", "--size", "16", "--episodes", "3", "--test-episodes", "1"]
COLLECT += ["--episodes-per-shard", "1", "--no-progress"]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fill_disk_after(monkeypatch, renames: int) -> None:
    """Let ``renames`` atomic writes land, then every later one fails as a full disk does."""
    replace, landed = os.replace, []

    def full(source, target):
        if len(landed) >= renames:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        landed.append(target)
        return replace(source, target)

    monkeypatch.setattr(masklam.atomic.os, "replace", full)


@pytest.mark.parametrize("backend", ["webdataset", "zarr"])
def test_a_full_disk_during_collect_is_one_line_and_the_rerun_is_identical(masklam_cli, tmp_path, monkeypatch, backend):
    clean = tmp_path / "clean"
    assert masklam_cli(*COLLECT, "--backend", backend, "--out", str(clean)).returncode == 0
    out = tmp_path / "data"
    with monkeypatch.context() as patch:
        fill_disk_after(patch, renames=3)
        result = masklam_cli(*COLLECT, "--backend", backend, "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no space left on the device while writing ") and str(out) in lines[0]
    assert not any(name.endswith(".tmp") for name in files(out))  # no temp file left behind
    assert masklam_cli(*COLLECT, "--backend", backend, "--out", str(out)).returncode == 0
    assert files(out) == files(clean)


def test_a_full_disk_while_training_is_one_line(masklam_cli, tmp_path, monkeypatch):
    data = tmp_path / "data"
    assert masklam_cli(*COLLECT, "--out", str(data)).returncode == 0
    train = ["train", "lam", "--data", str(data), "--trainer", "lapo-tiny", "--out", str(tmp_path / "run"), "--no-progress"]
    train += ["--set", "optim.steps=4", "--set", "data.batch_size=4", "--set", "model.latent_dim=8"]
    with monkeypatch.context() as patch:
        fill_disk_after(patch, renames=1)
        result = masklam_cli(*train)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "no space left on the device" in lines[0], result.stderr
    assert masklam_cli(*train).returncode == 0


def test_a_full_disk_inside_zarrs_store_names_where_it_was_writing(masklam_cli, tmp_path, monkeypatch):
    """zarr's store raises ENOSPC with no file name (seen on a real 2 MB tmpfs): the line says which shard's
    staging folder it was, inside --out."""
    import masklam.data.zarr_backend as zarr_backend

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as zarr's LocalStore raises it: no filename

    out = tmp_path / "data"
    with monkeypatch.context() as patch:
        patch.setattr(zarr_backend, "write_array", full)
        result = masklam_cli(*COLLECT, "--backend", "zarr", "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: no space left on the device while writing {out}/.masklam-tmp-"), lines[0]
    assert masklam_cli(*COLLECT, "--backend", "zarr", "--out", str(out)).returncode == 0  # resumes with space
