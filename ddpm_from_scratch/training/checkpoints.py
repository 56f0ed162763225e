"""Checkpoint folders that survive being killed at any moment, and that say when they are damaged.

Layout: <output_dir>/checkpoints/checkpoint-<step>/ holding the files of training/checkpoint_state.py
(the UNet, its EMA and the scheduler in diffusers layout, optimizer, LR schedule, RNG states, the
run's options), plus training_state.json (step counters, loss history) and, written last,
manifest.json (size and SHA-256 of every other file).

A save goes to .tmp-checkpoint-<step>/ and is renamed into place only once complete and fsynced;
a rename is atomic, so a run killed while saving leaves the previous checkpoints as they were and a
staging folder that is ignored (and removed when the next run starts). A checkpoint whose files no
longer match its manifest (truncated, bit rot, a file deleted) is reported, and `latest` falls back
to the newest one that verifies, setting the damaged one aside as checkpoint-<step>.corrupt; set-aside
folders count towards --checkpoints_total_limit like the others and are pruned once a newer good
checkpoint exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ddpm_from_scratch.saving.atomic_io import write_json_atomic

CHECKPOINTS_SUBDIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
CORRUPT_PATTERN = re.compile(r"^checkpoint-(\d+)\.corrupt(-\d+)?$")
STAGING_PREFIX = ".tmp-"
MANIFEST_NAME = "manifest.json"
STATE_NAME = "training_state.json"
MANIFEST_FORMAT = 1


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_SUBDIR


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every committed checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(checkpoint_step(path), path) for path in root.iterdir() if path.is_dir()]
    return sorted((step, path) for step, path in found if step is not None)


# ---- manifest ------------------------------------------------------------------------------


def _sha256_and_fsync(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(handle.fileno())  # the bytes reach the disk before the folder is renamed into place
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> dict[str, Any]:
    """Hash every file under `folder` (recursively) into manifest.json, written last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256_and_fsync(path)}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    write_json_atomic(manifest, folder / MANIFEST_NAME, indent=1)
    return manifest


def verify_checkpoint(folder: Path) -> list[str]:
    """Problems that make `folder` unusable as a checkpoint; an empty list means it verifies."""
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return [f"{MANIFEST_NAME} is missing (the save never finished, or this is not a checkpoint of this trainer)"]
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        assert isinstance(files, dict) and files
    except Exception as error:
        return [f"{MANIFEST_NAME} is unreadable: {error!r}"]
    problems = []
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}")
        elif _sha256(path) != expected["sha256"]:
            problems.append(f"{name} does not match its SHA-256 in the manifest (the file is damaged)")
    if STATE_NAME not in files:
        problems.append(f"{STATE_NAME} is not in the manifest")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_training_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_NAME).read_text())


# ---- choosing where to resume --------------------------------------------------------------


@dataclass
class ResumePlan:
    """The checkpoint to resume from (None: start fresh) and the newer ones rejected as corrupt."""

    path: Path | None
    rejected: list[tuple[Path, list[str]]] = field(default_factory=list)


def _format_problems(path: Path, problems: list[str]) -> str:
    return f"{path}: " + "; ".join(problems)


def plan_resume(output_dir: str | os.PathLike, requested: str | None) -> ResumePlan:
    """Resolve --resume_from_checkpoint. Raises ValueError when it cannot be honoured.

    'latest': the newest checkpoint that verifies (newer corrupt ones are reported in `rejected`);
    no checkpoint at all means a fresh start, so the same command can launch and relaunch a job.
    A path: that checkpoint (also looked up inside output_dir and output_dir/checkpoints), which
    must exist and verify.
    """
    if requested is None:
        return ResumePlan(None)
    root = checkpoints_root(output_dir)
    available = list_checkpoints(root)
    if requested == "latest":
        rejected = []
        for _, path in reversed(available):
            problems = verify_checkpoint(path)
            if not problems:
                return ResumePlan(path, rejected)
            rejected.append((path, problems))
        if rejected:
            details = "\n  ".join(_format_problems(path, problems) for path, problems in rejected)
            raise ValueError(f"--resume_from_checkpoint latest: no usable checkpoint in {root}; all are damaged:\n  {details}")
        return ResumePlan(None)
    candidates = [Path(requested), Path(output_dir) / requested, root / requested]
    path = next((candidate for candidate in candidates if candidate.exists()), None)
    names = [p.name for _, p in available]
    if path is None:
        raise ValueError(
            f"--resume_from_checkpoint {requested!r} does not exist (looked at {', '.join(str(c) for c in candidates)}); "
            f"checkpoints in {root}: {names or 'none'}; or pass 'latest'"
        )
    problems = verify_checkpoint(path)
    if problems:
        usable = [p.name for _, p in available if p != path and not verify_checkpoint(p)]
        raise ValueError(
            f"--resume_from_checkpoint {requested!r} is not a usable checkpoint: {'; '.join(problems)}. "
            f"Usable checkpoints in {root}: {usable or 'none'} (or pass 'latest' to take the newest usable one)"
        )
    return ResumePlan(path)


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the way (kept for inspection, never counted again)."""
    target = path.with_name(f"{path.name}.corrupt")
    if target.exists():
        target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    path.rename(target)
    return target


# ---- saving --------------------------------------------------------------------------------


def save_checkpoint(accelerator, root: Path, step: int, write_files: Callable[[Path], None],
                    training_state: dict[str, Any]) -> Path:
    """Save the full training state atomically as root/checkpoint-<step>. Call on every process:
    `write_files(staging)` runs on each (each writes its own RNG state, the main process the rest)."""
    final = root / f"checkpoint-{step}"
    staging = root / f"{STAGING_PREFIX}checkpoint-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)  # left by a save that was killed
        staging.mkdir()
    accelerator.wait_for_everyone()
    write_files(staging)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(training_state, staging / STATE_NAME, indent=1)
        write_manifest(staging)
        _fsync_dir(staging)
        if final.exists():  # the same step saved by an earlier attempt of this run
            _remove(final)
        os.rename(staging, final)
        _fsync_dir(root)
    accelerator.wait_for_everyone()
    return final


def _remove(path: Path) -> None:
    """Delete a folder so that it disappears from the checkpoint list at once (rename, then delete)."""
    doomed = path.with_name(f"{STAGING_PREFIX}delete-{path.name}")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def list_set_aside(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint set aside as damaged (`set_aside`), oldest first."""
    if not root.is_dir():
        return []
    found = [(CORRUPT_PATTERN.match(path.name), path) for path in root.iterdir() if path.is_dir()]
    return sorted((int(match.group(1)), path) for match, path in found if match)


def prune_checkpoints(root: Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest folders beyond `total_limit`, damaged ones set aside included; returns them.

    Called right after a checkpoint is committed. The newest good checkpoint is never deleted, and a
    damaged one only once a newer good checkpoint exists (at equal steps the damaged one is older).
    """
    if total_limit is None:
        return []
    good = list_checkpoints(root)
    if not good:
        return []
    newest_step, newest = good[-1]
    entries = sorted([(step, 1, path) for step, path in good] + [(step, 0, path) for step, path in list_set_aside(root)])
    doomed = [path for step, _, path in entries[: max(len(entries) - total_limit, 0)]
              if path != newest and step <= newest_step]
    for path in doomed:
        _remove(path)
    return doomed


def remove_staging_leftovers(root: Path) -> list[Path]:
    """Delete .tmp-* folders left by saves that were killed (they never held a committed checkpoint)."""
    if not root.is_dir():
        return []
    leftovers = [path for path in root.iterdir() if path.name.startswith(STAGING_PREFIX)]
    for path in leftovers:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return leftovers


# a pipeline save (ddpm_from_scratch.saving.folder) stages in .<output_dir name>.saving-<8 random
# characters> next to output_dir (or .saving-<8> inside it); its first write is the pipeline's code
PIPELINE_STAGING_SUFFIX = r"saving-[A-Za-z0-9_]{8}$"
PIPELINE_STAGING_MARKER = "pipeline.py"


def remove_pipeline_staging_leftovers(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the staging folders of pipeline saves into `output_dir` that were killed.

    Only folders named as a save names them that are empty or hold the pipeline code a save writes
    first are removed; anything else of that name is left alone.
    """
    target = Path(output_dir).resolve()
    places = [(target.parent, re.compile(rf"^\.{re.escape(target.name)}\.{PIPELINE_STAGING_SUFFIX}")),
              (target, re.compile(rf"^\.{PIPELINE_STAGING_SUFFIX}"))]
    removed = []
    for folder, pattern in places:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if pattern.match(path.name) and path.is_dir() and (
                    not any(path.iterdir()) or (path / PIPELINE_STAGING_MARKER).is_file()):
                shutil.rmtree(path)
                removed.append(path)
    return removed

