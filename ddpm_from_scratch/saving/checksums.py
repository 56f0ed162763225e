"""SHA-256 checksums of saved weights files, written at save time and checked before loading.

safetensors checks a file's header (tensor names, shapes, offsets) but not the tensor bytes, so a
flipped or zeroed byte inside a tensor loads silently as a slightly different model. Every weights
file a pipeline save writes (``diffusion_pytorch_model[.<variant>][-i-of-n].safetensors`` and a shard
index) gets ``<file>.sha256`` beside it, in ``sha256sum`` format (``<hex>  <file name>``, so
``sha256sum -c`` checks it too). A training checkpoint (training/checkpoints.py) records the SHA-256
of all its files in its ``manifest.json`` instead; `manifest_checksums` reads that.

A file without a recorded checksum (a folder saved by ddpm-from-scratch 0.1.0, by stock diffusers,
or copied without its .sha256 files) is loaded unverified: `verify_weights_files` returns it and the
loader warns once per folder.

Not shipped with saved pipelines.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .atomic_io import write_bytes_atomic

CHECKSUM_SUFFIX = ".sha256"
_CHUNK_BYTES = 1 << 20


class WeightsChecksumError(OSError):
    """A weights file whose bytes do not match the SHA-256 recorded when it was saved."""


def sha256_of_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_file_for(weights_file: Path) -> Path:
    return weights_file.with_name(weights_file.name + CHECKSUM_SUFFIX)


def write_checksum_files(weights_files: Iterable[Path]) -> list[Path]:
    """Write ``<file>.sha256`` (sha256sum format) beside each weights file; returns the files written."""
    written = []
    for weights_file in weights_files:
        line = f"{sha256_of_file(weights_file)}  {weights_file.name}\n"
        written.append(write_bytes_atomic(line.encode("ascii"), checksum_file_for(weights_file)))
    return written


def _recorded_sha256(weights_file: Path) -> str | None:
    """The hex digest in ``<file>.sha256``, or None if there is none; a malformed one is an error naming it."""
    checksum_file = checksum_file_for(weights_file)
    if not checksum_file.is_file():
        return None
    fields = checksum_file.read_text(encoding="ascii", errors="replace").split()
    digest = fields[0].lower() if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise WeightsChecksumError(f"checksum file {str(checksum_file)!r} does not hold a SHA-256 (64 hex digits)")
    return digest


def manifest_checksums(folder: Path, manifest_name: str = "manifest.json") -> dict[Path, str]:
    """{file: SHA-256} from a training checkpoint's manifest (``{"files": {relative path: {"sha256": ...}}}``);
    empty if the folder has no readable manifest."""
    manifest_file = folder / manifest_name
    try:
        files = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
        return {folder / name: entry["sha256"] for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def verify_weights_files(weights_files: Iterable[Path], recorded: dict[Path, str] | None = None) -> list[Path]:
    """Check each file against ``recorded[file]`` or else its ``.sha256``; returns the files with neither.

    A mismatch raises WeightsChecksumError naming the file (damaged on disk or in transfer, or
    overwritten by an interrupted save).
    """
    recorded = recorded or {}
    unverified = []
    for weights_file in weights_files:
        expected = recorded.get(weights_file) or _recorded_sha256(weights_file)
        if expected is None:
            unverified.append(weights_file)
            continue
        actual = sha256_of_file(weights_file)
        if actual != expected:
            raise WeightsChecksumError(
                f"weights file {str(weights_file)!r} is corrupted: its SHA-256 is {actual}, but {expected} was "
                "recorded when it was saved (the file was damaged on disk or in transfer, or partly overwritten); "
                "save or download it again"
            )
    return unverified
