"""Damaged datasets, both backends: every command that reads the damage stops with one line on stderr and exit 2,
leaves every input file as it was, and `masklam verify` lists the problem.

The base datasets are collected once per session (tiny: 16 px, 8 steps) and copied per case. Commands run
in-process through typer's CliRunner. Each case goes through `verify` and `info` (which verifies before it
summarises); the other commands get the
cases that touch what they read (train lam: the train split's frames, actions and masks; probe: both splits'
frames and actions; masks transform: frames and masks; publish --dry-run: everything).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from masklam.cli import app
from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.data.validate import INFO_FIELDS
from masklam.data.webdataset_backend import CHECKSUM_FIELD, decode_npy, encode_mask, encode_npy, with_checksums
from masklam.data.zarr_backend import MASKS_BLOSC, write_array
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset

BACKENDS = ("webdataset", "zarr")
SIZE = 16
runner = CliRunner()


def tiny_config(backend: str) -> CollectConfig:
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=SIZE), distractor_preset("none"), episode_steps=8)
    return CollectConfig(env=env, backend=backend, episodes=3, test_episodes=1, labelled_episodes=2, episodes_per_shard=2, seed=5)


@pytest.fixture(scope="session")
def clean(tmp_path_factory) -> dict[str, Path]:
    """An undamaged tiny dataset per backend (never modified: cases copy it)."""
    roots = {}
    for backend in BACKENDS:
        roots[backend] = tmp_path_factory.mktemp(f"clean-{backend}") / "data"
        assert collect(tiny_config(backend), roots[backend], show_progress=False)
    return roots


@pytest.fixture(scope="session")
def lam_run(clean, tmp_path_factory) -> Path:
    """A LAM trained for 2 steps on the clean webdataset dataset, for `probe`."""
    out = tmp_path_factory.mktemp("run") / "lam"
    result = cli("train", "lam", "--data", str(clean["webdataset"]), "--out", str(out), "--trainer", "lapo-tiny", "--set", "optim.steps=2", "--no-progress")
    assert result.exit_code == 0, result.stderr
    return out


def cli(*args: str):
    return runner.invoke(app, list(args))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- ways to damage a dataset ------------------------------------------------------------------------------


def rewrite_tar(
    path: Path, edit: Callable[[str, str, bytes], bytes | None], fix_checksums: bool = True, order: Callable[[list[str]], list[str]] | None = None
) -> None:
    """Rewrite a tar member by member: ``edit(key, suffix, data)`` gives new bytes or None (drop the member);
    with ``fix_checksums`` the edited samples get checksums that match (damage a checksum cannot see)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, suffix = member.name.split(".", 1)
            samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in (order or list)(list(samples)):
            members = {}
            for suffix, data in samples[key].items():
                new = edit(key, suffix, data)
                if new is not None:
                    members[suffix] = new
            if fix_checksums and CHECKSUM_FIELD in members and members != samples[key]:
                members = with_checksums({s: d for s, d in members.items() if s != CHECKSUM_FIELD})
            for suffix, data in sorted(members.items()):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.chmod(0o644)
    path.write_bytes(out.getvalue())


def only(key: str, suffix: str, change: Callable[[bytes], bytes | None]):
    return lambda k, s, data: change(data) if (k, s) == (key, suffix) else data


def flip_byte(data: bytes, at: float = 0.6) -> bytes:
    i = int(len(data) * at)
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def chunk_files(root: Path, array: str) -> list[Path]:
    return sorted(p for p in (root / "data.zarr/train/shard-000000" / array / "c").rglob("*") if p.is_file())


def labelled_key(root: Path) -> str:
    return next(m.key for m in open_dataset(root).shard_index("train", 0) if m.labelled)


def set_action(root: Path, backend: str, split: str, value: float) -> None:
    """Put ``value`` in the first action of a labelled record of ``split``, written as a valid shard would be."""
    key = labelled_key(root) if split == "train" else "e000000-c000"
    if backend == "webdataset":

        def change(data: bytes) -> bytes:
            action = decode_npy(data)
            action[0, 0] = value
            return encode_npy(action)

        rewrite_tar(root / split / "shard-000000.tar", only(key, "action.npy", change))
    else:
        metas = open_dataset(root).shard_index(split, 0)
        start = sum(m.frames for m in metas[: [m.key for m in metas].index(key)])
        array = zarr.open_array(root / f"data.zarr/{split}/shard-000000/data/action", mode="r+")
        array[start, 0] = value


def wrong_shape_mask(root: Path, backend: str) -> None:
    if backend == "webdataset":
        key = labelled_key(root)
        frames = open_dataset(root).shard_index("train", 0)[0].frames
        rewrite_tar(root / "masks/oracle/train/shard-000000.tar", only(key, "mask.npy.gz", lambda _: encode_mask(np.zeros((frames, SIZE, SIZE - 1), np.uint8))))
    else:
        folder = root / "data.zarr/train/shard-000000/data/mask/oracle"
        frames = zarr.open_array(folder, mode="r").shape[0]
        shutil.rmtree(folder)
        write_array(zarr.storage.LocalStore(folder), None, np.zeros((frames, SIZE, SIZE - 1), np.uint8), MASKS_BLOSC)


def truncate(root: Path, backend: str) -> None:
    path = root / "train/shard-000000.tar" if backend == "webdataset" else chunk_files(root, "data/rgb")[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_member(what: str) -> Callable[[Path, str], None]:
    def damage(root: Path, backend: str) -> None:
        key = labelled_key(root)
        if backend == "webdataset":
            tar = root / ("masks/oracle/train/shard-000000.tar" if what == "mask" else "train/shard-000000.tar")
            suffix = {"rgb": "rgb.npy", "action": "action.npy", "mask": "mask.npy.gz"}[what]
            rewrite_tar(tar, only(key, suffix, lambda _: None), fix_checksums=False)
        elif what == "action":
            shutil.rmtree(root / "data.zarr/train/shard-000000/data/action")  # the whole array
        else:
            chunk_files(root, {"rgb": "data/rgb", "mask": "data/mask/oracle"}[what])[0].unlink()

    return damage


def flip(what: str) -> Callable[[Path, str], None]:
    def damage(root: Path, backend: str) -> None:
        if backend == "webdataset":
            tar = root / ("masks/oracle/train/shard-000000.tar" if what == "mask" else "train/shard-000000.tar")
            suffix = "mask.npy.gz" if what == "mask" else "rgb.npy"
            rewrite_tar(tar, only(labelled_key(root), suffix, flip_byte), fix_checksums=False)
        else:
            path = chunk_files(root, "data/mask/oracle" if what == "mask" else "data/rgb")[0]
            path.write_bytes(flip_byte(path.read_bytes()))

    return damage


def edit_info(change: Callable[[dict], None]) -> Callable[[Path, str], None]:
    def damage(root: Path, backend: str) -> None:
        info = json.loads((root / "info.json").read_text())
        change(info)
        (root / "info.json").write_text(json.dumps(info))

    return damage


def empty_split(root: Path, backend: str) -> None:
    for path in [*(root / "index/test").iterdir(), *(root / ("test" if backend == "webdataset" else "data.zarr/test")).iterdir()]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def repeated_record(root: Path, backend: str) -> None:
    """The frames hold their first record twice (its masks, intact, once)."""
    if backend == "webdataset":
        rewrite_tar(root / "train/shard-000000.tar", lambda k, s, d: d, order=lambda keys: keys + keys[:1])
    else:
        path = root / "data.zarr/train/shard-000000/zarr.json"
        group = json.loads(path.read_text())
        group["attributes"]["records"].append(group["attributes"]["records"][0])
        path.write_text(json.dumps(group))


DAMAGE: dict[str, Callable[[Path, str], None]] = {
    "truncated shard": truncate,
    "deleted frames": delete_member("rgb"),
    "deleted actions": delete_member("action"),
    "deleted masks": delete_member("mask"),
    "info.json not JSON": lambda root, backend: (root / "info.json").write_text('{"schema_version": 1, '),
    "wrong-shape mask": wrong_shape_mask,
    "NaN labelled action": lambda root, backend: set_action(root, backend, "train", np.nan),
    "inf test action": lambda root, backend: set_action(root, backend, "test", np.inf),
    "flipped frame byte": flip("rgb"),
    "flipped mask byte": flip("mask"),
    "empty split": empty_split,
    **{f"info.json without {field}": edit_info(lambda info, field=field: info.pop(field)) for field in INFO_FIELDS},
    "info.json with a bad split count": edit_info(lambda info: info["splits"]["train"].update(shards="two")),
    # info.json that disagrees with the arrays (each field well formed on its own)
    "info.json with another frame size": edit_info(lambda info: info["env"]["render"].update(size=2 * SIZE)),
    "info.json without the test split": edit_info(lambda info: info["splits"].pop("test")),
    "info.json listing masks not stored": edit_info(lambda info: info["mask_sources"].update(ghost={"kind": "derived"})),
    "a frames record twice": repeated_record,
}
# Damage `masklam info --no-verify` still sees: it reads info.json and the shard indexes, not the shards.
METADATA = {"info.json not JSON", "empty split", "info.json with a bad split count", "info.json with another frame size", "info.json without the test split"}
METADATA |= {f"info.json without {field}" for field in INFO_FIELDS}
# Which damage each command (besides verify and info) is run on: what it reads, one case per kind at least.
COMMANDS: dict[str, list[str]] = {
    "train lam": [
        "truncated shard",
        "deleted actions",
        "NaN labelled action",
        "wrong-shape mask",
        "flipped mask byte",
        "info.json without env",
        "info.json without mask_sources",
        "info.json with another frame size",
        "info.json without the test split",
    ],
    "probe": ["inf test action", "deleted actions", "flipped frame byte", "info.json without features"],
    "masks transform": ["deleted masks", "flipped mask byte", "wrong-shape mask", "info.json without mask_sources", "empty split"],
    "masks compare": ["a frames record twice", "info.json with another frame size"],
    "publish --dry-run": ["deleted frames", "inf test action", "flipped frame byte", "info.json without env"],
}


def command_args(command: str, data: Path, tmp_path: Path, lam_run: Path) -> list[str]:
    return {
        "verify": ["verify", str(data)],
        "info": ["info", str(data)],
        "train lam": [
            "train",
            "lam",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--trainer",
            "masklam-tiny",
            "--set",
            "optim.steps=2",
            "--no-progress",
        ],
        "probe": ["probe", str(lam_run), "--data", str(data), "--windows", "20", "--no-progress"],
        "masks transform": ["masks", "transform", str(data), "--erode", "1", "--no-progress"],
        "masks compare": ["masks", "compare", str(data), "--pred", "oracle"],
        "publish --dry-run": ["publish", str(data), "--repo-id", "someone/tiny", "--dry-run", "--no-progress", "--stage", str(tmp_path / "stage")],
    }[command]


CASES = [
    pytest.param(backend, case, command, id=f"{backend}-{case}-{command}")
    for backend in BACKENDS
    for case in DAMAGE
    for command in ("verify", "info", *(c for c, cases in COMMANDS.items() if case in cases))
]


@pytest.mark.parametrize("backend, case, command", CASES)
def test_damage_is_one_line_and_exit_2(clean, request, tmp_path, backend, case, command):
    data = tmp_path / "data"
    shutil.copytree(clean[backend], data)
    DAMAGE[case](data, backend)
    before = snapshot(data)
    run = request.getfixturevalue("lam_run") if command == "probe" else None
    result = cli(*command_args(command, data, tmp_path, run))
    after = snapshot(data)
    assert {name: after.get(name) for name in before} == before, "an input file changed"
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.stderr}{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if command == "verify":
        assert "problem" in lines[0], lines[0]
        assert str(data) in result.stdout, "verify lists each problem, naming the file, on stdout"
    else:
        assert str(data) in lines[0], "the error names the damaged file"


# Damage that one file holds, and the intact files an error must not blame (nor tell the user to delete).
BLAME = {
    ("webdataset", "a frames record twice"): ("train/shard-000000.tar", "masks/"),
    ("zarr", "a frames record twice"): ("data.zarr/train/shard-000000", "data/mask"),
    ("webdataset", "info.json with another frame size"): ("info.json", "shard-"),
    ("webdataset", "info.json without the test split"): ("info.json", "shard-"),
}


@pytest.mark.parametrize("backend, case", sorted(BLAME))
@pytest.mark.parametrize("command", ["verify", "info", "masks compare"])
def test_errors_blame_the_damaged_file(clean, tmp_path, backend, case, command):
    data = tmp_path / "data"
    shutil.copytree(clean[backend], data)
    DAMAGE[case](data, backend)
    result = cli(*command_args(command, data, tmp_path, None))
    said = result.stdout + result.stderr
    damaged, intact = BLAME[backend, case]
    assert result.exit_code == 2 and f"{data}/{damaged}" in said, said
    assert intact not in said, said


@pytest.mark.parametrize("case", ["deleted frames", "flipped mask byte", "info.json not JSON"])
def test_info_no_verify_reads_the_metadata_only(clean, tmp_path, case):
    data = tmp_path / "data"
    shutil.copytree(clean["webdataset"], data)
    DAMAGE[case](data, "webdataset")
    result = cli("info", str(data), "--no-verify")
    if case in METADATA:
        assert result.exit_code == 2 and str(data) in result.stderr, result.stderr
    else:  # the shards are not read: the summary comes out, the damage is verify's (and plain info's) to find
        assert result.exit_code == 0 and "episodes" in result.stdout, result.stderr
        assert cli("info", str(data)).exit_code == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_clean_dataset_verifies(clean, backend):
    result = cli("verify", str(clean[backend]))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "ok" in result.stdout and "every checksum verified" in result.stdout


def test_reordered_mask_tar_is_read_by_key_and_flagged_by_verify(clean, tmp_path):
    """masklam joins masks to frames by key, so a reordered mask tar reads right; verify still flags it, as plain
    webdataset readers that zip the two tars would pair the wrong masks."""
    data = tmp_path / "data"
    shutil.copytree(clean["webdataset"], data)
    want = {r.key: r.masks["oracle"] for r in open_dataset(data).records("train", fields=())}
    rewrite_tar(data / "masks/oracle/train/shard-000000.tar", lambda k, s, d: d, order=lambda keys: keys[::-1])
    got = {r.key: r.masks["oracle"] for r in open_dataset(data).records("train", fields=())}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    result = cli("verify", str(data))
    assert result.exit_code == 2 and "not in the order" in result.stdout, result.stdout


def test_old_dataset_without_checksums_still_opens(clean, tmp_path):
    """A dataset written before checksums: no checksums.json members, no "checksums" in info.json."""
    data = tmp_path / "data"
    shutil.copytree(clean["webdataset"], data)
    for tar in data.rglob("*.tar"):
        rewrite_tar(tar, lambda k, s, d: None if s == CHECKSUM_FIELD else d, fix_checksums=False)
    edit_info(lambda info: info.pop("checksums"))(data, "webdataset")
    with tarfile.open(data / "train/shard-000000.tar") as tar:
        assert not any(name.endswith(CHECKSUM_FIELD) for name in tar.getnames())
    result = cli("verify", str(data))
    assert result.exit_code == 0 and "no checksums: written by an older masklam" in result.stdout, result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_transform_stopped_by_damage_leaves_no_partial_source(clean, tmp_path, backend):
    """The damage is in the second train shard, so the first shard's new masks were written before the error."""
    data = tmp_path / "data"
    shutil.copytree(clean[backend], data)
    if backend == "webdataset":
        rewrite_tar(data / "masks/oracle/train/shard-000001.tar", lambda k, s, d: flip_byte(d) if s == "mask.npy.gz" else d, fix_checksums=False)
    else:
        chunk = sorted(p for p in (data / "data.zarr/train/shard-000001/data/mask/oracle/c").rglob("*") if p.is_file())[0]
        chunk.write_bytes(flip_byte(chunk.read_bytes()))
    before = snapshot(data)
    result = cli("masks", "transform", str(data), "--erode", "1", "--no-progress")
    assert result.exit_code == 2 and "shard-000001" in result.stderr, result.stderr
    assert snapshot(data) == before, "the transform left files behind"
    assert not (data / "segment/oracle_erode1").exists() and not (data / "masks/oracle_erode1").exists()


def test_verify_notes_masks_stored_but_not_registered(clean, tmp_path):
    """Masks info.json does not list are not damage (a segment or transform that has not finished): a note."""
    data = tmp_path / "data"
    shutil.copytree(clean["zarr"], data)
    assert cli("masks", "transform", str(data), "--erode", "1", "--no-progress").exit_code == 0
    edit_info(lambda info: info["mask_sources"].pop("oracle_erode1"))(data, "zarr")
    result = cli("verify", str(data))
    assert result.exit_code == 0 and "'oracle_erode1' masks are stored but not registered" in result.stdout, result.stdout
