"""Atomic file writes: a crash never leaves a half-written output behind.

Everything wtal writes (results, checkpoints, CAS files, plots, configs) goes through these helpers:
the data is written to a temporary file in the destination folder, flushed, fsynced and then renamed
over the destination, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: str | Path, writer: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Call ``writer(file_handle)`` on a temporary file, then move it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
        writer(fh)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda fh: fh.write(text))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = None) -> Path:
    return write_atomic(path, lambda fh: json.dump(obj, fh, indent=indent))
