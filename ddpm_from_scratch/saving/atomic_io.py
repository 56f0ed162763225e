"""Atomic file writes: a reader (or a later run after a crash) sees the old file or the new one, never half;
and the one JSON reader, whose errors name the file.

The bytes go to a temporary file in the target's own folder (a rename is only atomic within one
file system), are flushed to disk, and the temporary file is renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for writers that take a file name (safetensors' ``save_file``).

    On a clean exit it is fsynced and renamed over ``path``; on an exception it is removed and
    ``path`` is left as it was. The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # what open() would give; mkstemp's 0600 would hide saved files
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())  # the bytes reach the disk before the rename makes them visible
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` (``mode`` "wb" or "w"); on a clean exit it replaces ``path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def write_json_atomic(data: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (NaN and inf are written as JSON's NaN/Infinity)."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=indent, allow_nan=True)
    return Path(path)


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``what`` names it in errors): a missing file is a FileNotFoundError,
    anything but a JSON object a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data
