"""The one checksum format: ``manifest.json`` records the size and SHA-256 of a folder's files.

    {"format": 1, "files": {"relative/posix/path": {"size": <bytes>, "sha256": "<64 hex digits>"}}}

A training checkpoint records every file it holds; a saved pipeline records its weights files (and
shard indexes). Loaders verify weights against the manifest before reading them, because
safetensors checks a file's header but not its tensor bytes: a flipped byte would load silently as a
slightly different model. A folder without a manifest (saved by ddpm-from-scratch 0.1.0 or by stock
diffusers) loads unverified, with one warning (`verify_files` returns the unrecorded files).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .atomic_io import write_json_atomic
from .layout import MANIFEST_NAME

MANIFEST_FORMAT = 1
_CHUNK_BYTES = 1 << 20


class WeightsChecksumError(OSError):
    """A weights file whose bytes do not match the size and SHA-256 recorded when it was saved."""


def sha256_of_file(path: str | os.PathLike, *, fsync: bool = False) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks; ``fsync`` also flushes the file to disk
    (a writer hashing what it just wrote, before renaming the folder into place)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def write_manifest(
    folder: Path, files: Iterable[Path] | None = None, *, fsync: bool = False, keep: dict[str, dict] | None = None
) -> dict:
    """Record ``files`` (default: every file under ``folder`` but the manifest) in ``folder/manifest.json``.

    ``keep``: entries of an earlier manifest to carry over (files this save leaves in place, such as
    other variants' weights); a file hashed now replaces its entry. The manifest is written
    atomically, after every file is hashed; returns what it holds.
    """
    folder = Path(folder)
    if files is None:
        files = (path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST_NAME)
    entries = dict(keep or {})
    for path in sorted(Path(path) for path in files):
        relative = path.relative_to(folder).as_posix()
        entries[relative] = {"size": path.stat().st_size, "sha256": sha256_of_file(path, fsync=fsync)}
    manifest = {"format": MANIFEST_FORMAT, "files": dict(sorted(entries.items()))}
    write_json_atomic(manifest, folder / MANIFEST_NAME, indent=1)
    return manifest


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def read_manifest(folder: Path) -> dict[Path, tuple[int, str]] | None:
    """{``folder / relative path``: (size, sha256)} from ``folder/manifest.json``; None if there is none.

    A manifest that is not the format above raises a ValueError naming it.
    """
    manifest_file = Path(folder) / MANIFEST_NAME
    if not manifest_file.is_file():
        return None
    try:
        data = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"expected format {MANIFEST_FORMAT} and a 'files' object")
        recorded = {}
        for name, entry in files.items():
            relative = PurePosixPath(name)
            size, digest = entry["size"], entry["sha256"]
            if relative.is_absolute() or ".." in relative.parts or not isinstance(size, int) or not _is_sha256(digest):
                raise ValueError(f"bad entry {name!r}: {entry!r}")
            recorded[Path(folder, *relative.parts)] = (size, digest)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"manifest {str(manifest_file)!r} is malformed: {error}") from error
    return recorded


def _problem(path: Path, size: int, digest: str) -> str | None:
    """Why ``path`` does not match (size, digest), or None when it does."""
    if not path.is_file():
        return "is missing"
    if path.stat().st_size != size:
        return f"has {path.stat().st_size} bytes, the manifest says {size}"
    if sha256_of_file(path) != digest:
        return "does not match its SHA-256 in the manifest (the file is damaged)"
    return None


def verify_manifest(folder: Path, required: Iterable[str] = ()) -> list[str]:
    """Problems with ``folder`` against its manifest (an empty list: it verifies), each naming the file.

    ``required``: relative paths the manifest must record.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    try:
        recorded = read_manifest(folder)
    except ValueError as error:
        return [str(error)]
    if not recorded:
        return [f"{MANIFEST_NAME} is missing or empty (the save never finished, or it was not written here)"]
    problems = []
    for path, (size, digest) in sorted(recorded.items()):
        problem = _problem(path, size, digest)
        if problem:
            problems.append(f"{path.relative_to(folder).as_posix()} {problem}")
    recorded_names = {path.relative_to(folder).as_posix() for path in recorded}
    problems += [f"{name} is not in the manifest" for name in required if name not in recorded_names]
    return problems


def verify_files(files: Iterable[Path], recorded: dict[Path, tuple[int, str]] | None) -> list[Path]:
    """Check each of ``files`` against ``recorded`` (from `read_manifest`); returns the files it has no
    entry for. A mismatch raises WeightsChecksumError naming the file."""
    by_path = {Path(os.path.abspath(path)): entry for path, entry in (recorded or {}).items()}
    unrecorded = []
    for path in files:
        entry = by_path.get(Path(os.path.abspath(path)))
        if entry is None:
            unrecorded.append(Path(path))
            continue
        problem = _problem(Path(path), *entry)
        if problem:
            raise WeightsChecksumError(
                f"weights file {str(path)!r} is corrupted: {Path(path).name} {problem}; it was damaged on disk or "
                "in transfer, or partly overwritten, since it was saved: save or download it again"
            )
    return unrecorded
