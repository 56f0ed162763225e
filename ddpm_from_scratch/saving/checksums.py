"""The one checksum format: ``manifest.json`` records the size and SHA-256 of a folder's files.

    {"format": 1, "files": {"relative/posix/path": {"size": <bytes>, "sha256": "<64 hex digits>"}}}

A training checkpoint records every file it holds; a saved pipeline records its weights files (and
shard indexes). Loaders verify weights against the manifest before reading them, because
safetensors checks a file's header but not its tensor bytes: a flipped byte would load silently as a
slightly different model. A folder without a manifest (saved by ddpm-from-scratch 0.1.0 or by stock
diffusers) loads unverified, with one warning (`verify_files`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from diffusers.utils import logging
from huggingface_hub.utils.sha import sha_fileobj

from .atomic_io import write_json_atomic
from .layout import MANIFEST_NAME

MANIFEST_FORMAT = 1
logger = logging.get_logger(__name__)


class WeightsChecksumError(OSError):
    """A weights file whose bytes do not match the size and SHA-256 recorded when it was saved."""


def sha256_of_file(path: str | os.PathLike, *, fsync: bool = False) -> str:
    """Hex SHA-256 of the file's bytes (huggingface_hub's ``sha_fileobj``, 1 MiB chunks); ``fsync`` also flushes
    the file to disk (a writer hashing what it just wrote, before renaming the folder into place)."""
    with open(path, "rb") as handle:
        digest = sha_fileobj(handle).hex()
        if fsync:
            os.fsync(handle.fileno())
    return digest


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


def read_manifest(folder: Path) -> dict[str, tuple[int, str]] | None:
    """{relative posix path: (size, sha256)} from ``folder/manifest.json``; None if there is none.

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
            relative, size, digest = PurePosixPath(name), entry["size"], entry["sha256"]
            if (relative.is_absolute() or ".." in relative.parts or not isinstance(size, int)
                    or not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest))):
                raise ValueError(f"bad entry {name!r}: {entry!r}")
            recorded[relative.as_posix()] = (size, digest)
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
    """Problems with every file ``folder``'s manifest records (an empty list: it verifies), each naming the
    file; ``required``: relative paths the manifest must record."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    try:
        recorded = read_manifest(folder)
    except ValueError as error:
        return [str(error)]
    if not recorded:
        return [f"{MANIFEST_NAME} is missing or empty (the save never finished, or it was not written here)"]
    problems = [f"{name} {problem}" for name, entry in sorted(recorded.items())
                if (problem := _problem(folder / name, *entry))]
    return problems + [f"{name} is not in the manifest" for name in required if name not in recorded]


def verify_files(folder: Path, files: Iterable[Path]) -> None:
    """Check ``files`` (under ``folder``) against ``folder``'s manifest before they are loaded: a mismatch
    raises WeightsChecksumError naming the file; files it does not record load with one warning."""
    recorded, unrecorded = read_manifest(folder) or {}, []
    for path in files:
        entry = recorded.get(Path(os.path.abspath(path)).relative_to(os.path.abspath(folder)).as_posix())
        if entry is None:
            unrecorded.append(repr(str(path)))
        elif problem := _problem(Path(path), *entry):
            raise WeightsChecksumError(
                f"weights file {str(path)!r} is corrupted: {Path(path).name} {problem}; it was damaged on disk or "
                "in transfer, or partly overwritten, since it was saved: save or download it again"
            )
    if unrecorded:
        logger.warning(
            f"{', '.join(unrecorded)}: no SHA-256 recorded (a folder saved without a {MANIFEST_NAME}, e.g. by "
            "ddpm-from-scratch 0.1.0 or stock diffusers), loaded without verifying the bytes"
        )
