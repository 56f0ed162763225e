"""Atomic file writes: a reader (or a later run after a crash) sees the old file or the new one, never half.

Every file the project writes for a user (images, JSON reports, checkpoints' small files, cached
weights) goes through :func:`atomic_write`: the bytes go to a temporary file in the target's own
folder (a rename is only atomic within one file system), are flushed to disk, and the temporary
file is renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file: mkstemp's 0600 would hide saved models from other users."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temporary_file_next_to(path: Path) -> tuple[int, str]:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp_name, _default_file_mode())
    return fd, tmp_name


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on a clean exit it replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"``. On an exception the temporary file is removed and ``path``
    is left as it was. The parent folder is created if needed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _temporary_file_next_to(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the bytes reach the disk before the rename makes them visible
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for writers that take a file name (safetensors' ``save_file``).

    The caller writes the temporary path; on a clean exit it is fsynced and renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _temporary_file_next_to(path)
    os.close(fd)
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(data: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (NaN and inf are written as JSON's NaN/Infinity)."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=indent, allow_nan=True)
    return Path(path)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)
