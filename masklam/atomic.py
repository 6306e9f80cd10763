"""Atomic writes: a reader sees the old file or the complete new one, never a partial file."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file next to ``path``; on success fsync it and rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread, so concurrent writers of one path never share a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
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
