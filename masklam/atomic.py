"""Atomic writes: a reader sees the old file or the complete new one, never a partial file."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from masklam.errors import naming_full_disk


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file next to ``path``; on success fsync it and rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread, so concurrent writers of one path never share a temp file.
    tmp = path.with_name(f".{path.name}.{TEMP_MARK}{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with naming_full_disk(path):  # write() names no file: the message says which
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def nan_to_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: JSON has no NaN, and a value that is not a number is missing."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: nan_to_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_null(value) for value in obj]
    return obj


def json_line(obj: Any) -> str:
    """One line of a JSONL log: strict JSON, a metric that is not a number written as null."""
    return json.dumps(nan_to_null(obj), allow_nan=False)


def dumps_json(obj: Any) -> bytes:
    """Canonical JSON: the same object always gives the same bytes."""
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps_json(obj))


# --- temp files of interrupted writers -----------------------------------------------------------------------
# The names masklam's writers give their temp files and folders, and only those, each with masklam's mark so
# that no user's file is taken for one (a user's ".tmp-cache/" or ".draft.999999-1.tmp" once was, and was
# deleted): atomic_file's ".NAME.masklam-PID-THREAD.tmp", the Zarr backend's staging folders
# ".masklam-tmp-PID-XXXX", publish's ".NAME.masklam-PID.link" and collect's ".masklam-write-test-PID". Group
# "pid" is the writer's process. Leftovers of masklam before the mark (7 December 2026) are not recognised.
TEMP_MARK = "masklam-"
TEMP_NAME = re.compile(
    r"^\.(?:.+\.masklam-(?P<pid>\d+)-\d+\.tmp|masklam-tmp-(?P<staging_pid>\d+)-[A-Za-z0-9_]+|.+\.masklam-(?P<link_pid>\d+)\.link"
    r"|masklam-write-test-(?P<test_pid>\d+))$"
)
STALE_AFTER_SECONDS = 3600.0  # a temp file untouched this long belongs to no live writer, whoever made it


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one masklam gives a temp file or folder while it writes (never a finished file)."""
    return TEMP_NAME.match(name) is not None


def _writer_pid(name: str) -> int | None:
    match = TEMP_NAME.match(name)
    if match is None:
        return None
    pid = next((g for g in match.group("pid", "staging_pid", "link_pid", "test_pid") if g is not None), None)
    return int(pid) if pid is not None else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temp_files(root: Path, same_host: bool = True) -> list[Path]:
    """Delete the temp files and folders that interrupted masklam writers left under ``root``; returns them.

    A temp name is stale when the process in its name is gone (``same_host``: every writer of ``root`` runs on
    this machine, so the pid means something here) or when it has not been touched for an hour (writers on
    other machines, names without a pid). Nothing but masklam's own temp names is ever deleted.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed, now = [], time.time()
    for folder, dirs, names in os.walk(root):
        for name in [*names, *dirs]:
            if not is_temp_name(name):
                continue
            path = Path(folder) / name
            pid = _writer_pid(name)
            try:
                if pid is not None and same_host:
                    stale = pid != os.getpid() and not _process_alive(pid)
                else:
                    stale = now - path.lstat().st_mtime > STALE_AFTER_SECONDS
                if not stale:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:  # its writer finished (renamed it) or another run removed it meanwhile
                continue
            removed.append(path)
        dirs[:] = [d for d in dirs if not is_temp_name(d)]
    return removed
