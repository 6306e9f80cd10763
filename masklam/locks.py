"""One writer at a time per output: a second masklam writing the same dataset, mask source or run folder is
refused in one line that says who holds it.

The lock is an advisory ``flock`` on a small file in masklam's cache (``$MASKLAM_CACHE`` or ~/.cache/masklam,
``locks/``), named by the output folder's resolved path and a part (the rank, or the mask source, so that a
dataset's ranks, or two different mask sources, may still be written at once): nothing is added to the
user's folder, not even when the command then refuses. The kernel drops a flock when its process ends, however
it ends, so a lock left by a dead process is taken over by the next writer without any cleanup. The file says
who last held it. One machine only: flock means nothing across machines on most network filesystems.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from masklam.errors import UsageError
from masklam.packaged import cache_root


def lock_path(folder: Path, part: str = "") -> Path:
    import hashlib

    key = hashlib.sha256(f"{Path(folder).resolve()}\0{part}".encode()).hexdigest()[:32]
    return cache_root() / "locks" / f"{key}.lock"


@contextmanager
def writer_lock(folder: Path, part: str = "") -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the block; UsageError if another live process holds it."""
    path = lock_path(folder, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{folder} is being written by another masklam ({holder(path)}): wait for it to finish, or stop it") from None
        os.ftruncate(fd, 0)
        held = {"folder": str(Path(folder).resolve()), "part": part, "pid": os.getpid(), "host": socket.gethostname()}
        os.write(fd, json.dumps({**held, "since": time.time(), "command": " ".join(sys.argv)}).encode())
        yield path
    finally:
        os.close(fd)  # releases the flock


def holder(path: Path) -> str:
    try:
        held = json.loads(path.read_text())
        since = time.strftime("%H:%M:%S", time.localtime(held["since"]))
        return f"pid {held['pid']} on {held['host']}, since {since}: {held['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"
