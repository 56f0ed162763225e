"""Checkpoint folders that survive being killed at any moment, and that say when they are damaged.

What a checkpoint holds is listed in saving/layout.py: safetensors, JSON, and optimizer.pt (Adam's
tensors and numbers, read back with torch's weights-only loader), so resuming reads no pickle (resume.py).
`write_process_files` runs on every process (its RNG states, read back by `restore_rng_states`),
`write_shared_files` on the main one; `save_checkpoint` adds training_state.json and, last,
manifest.json (saving/checksums.py).

A save goes to .tmp-checkpoint-<step>/ and is renamed into place only once complete and fsynced;
a rename is atomic, so a run killed while saving leaves the previous checkpoints as they were and a
staging folder that is ignored (and removed when the next run starts). A checkpoint whose files no
longer match its manifest (truncated, bit rot, a file deleted) is reported, and `latest` falls back
to the newest one that verifies, setting the damaged one aside as checkpoint-<step>.corrupt; set-aside
folders count towards --checkpoints_total_limit like the others and are pruned once a newer good
checkpoint exists.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddpm_from_scratch.saving.atomic_io import read_json, write_json_atomic
from ddpm_from_scratch.saving.checksums import verify_manifest, write_manifest
from ddpm_from_scratch.saving.layout import (CHECKPOINT_PATTERN, CHECKPOINT_STAGING_PREFIX, CHECKPOINTS_SUBDIR,
                                             EMA_STATE_NAME, EMA_UNET_DIR, GRAD_SCALER_NAME, LR_SCHEDULE_NAME,
                                             OPTIMIZER_NAME, OPTIONS_NAME, PIPELINE_STAGING_MARKER, SCHEDULER_DIR,
                                             STATE_NAME, UNET_DIR, rng_state_names)

from .ema import ema_state

CORRUPT_PATTERN = re.compile(r"^checkpoint-(\d+)\.corrupt(-\d+)?$")
# the first file a pipeline save (saving/folder.py) writes into its staging folder: its code
PIPELINE_STAGING_FIRST_FILE = "pipeline.py"


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_SUBDIR


def _steps(root: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(pattern.match(path.name), path) for path in root.iterdir() if path.is_dir()]
    return sorted((int(match.group(1)), path) for match, path in found if match)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every committed checkpoint under `root`, oldest first."""
    return _steps(root, CHECKPOINT_PATTERN)


def list_set_aside(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint set aside as damaged (`set_aside`), oldest first."""
    return _steps(root, CORRUPT_PATTERN)


def verify_checkpoint(folder: Path) -> list[str]:
    """Problems that make `folder` unusable as a checkpoint; an empty list means it verifies."""
    return verify_manifest(folder, required=(STATE_NAME,))


def read_training_state(folder: Path) -> dict[str, Any]:
    return read_json(folder / STATE_NAME, "training state")


# ---- choosing where to resume --------------------------------------------------------------


class ResumePlan(NamedTuple):
    """The checkpoint to resume from (None: start fresh) and the newer ones rejected as corrupt."""

    path: Path | None
    rejected: Sequence[tuple[Path, list[str]]] = ()


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
            details = "\n  ".join(f"{path}: {'; '.join(problems)}" for path, problems in rejected)
            raise ValueError(f"--resume_from_checkpoint latest: no usable checkpoint in {root}; all are damaged:\n  {details}")
        return ResumePlan(None)
    candidates = [Path(requested), Path(output_dir) / requested, root / requested]
    path = next((candidate for candidate in candidates if candidate.exists()), None)
    if path is None:
        raise ValueError(
            f"--resume_from_checkpoint {requested!r} does not exist (looked at {', '.join(str(c) for c in candidates)}); "
            f"checkpoints in {root}: {[p.name for _, p in available] or 'none'}; or pass 'latest'"
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


# ---- a checkpoint's files (the RNG states are also read back here, next to their writer) ----------------


def write_process_files(folder: Path, rank: int) -> None:
    """This process's RNG states (dropout draws from the global generators)."""
    tensors_name, json_name = rng_state_names(rank)
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"torch_cuda_{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(folder / tensors_name))
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    write_json_atomic({
        "numpy": {"bit_generator": bit_generator, "key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }, folder / json_name, indent=None)


def _read_rng_states(folder: Path, rank: int) -> tuple[dict[str, torch.Tensor], tuple, tuple]:
    """(torch's tensors, numpy's state, Python's state) as `write_process_files` wrote them, each checked by
    setting it on a private generator, so a bad file raises ValueError naming it before any global is set."""
    tensors_name, json_name = rng_state_names(rank)
    path = folder / tensors_name
    try:
        tensors = load_file(str(path))
        torch.Generator().set_state(tensors["torch_cpu"])
        path = folder / json_name
        saved = read_json(path, "RNG state")
        numpy_saved, python_saved = saved["numpy"], saved["python"]
        numpy_state = (numpy_saved["bit_generator"], np.asarray(numpy_saved["key"], dtype=np.uint32),
                       int(numpy_saved["pos"]), int(numpy_saved["has_gauss"]), float(numpy_saved["cached_gaussian"]))
        np.random.RandomState().set_state(numpy_state)
        python_state = (python_saved["version"], tuple(python_saved["state"]), python_saved["gauss_next"])
        random.Random().setstate(python_state)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:  # all: unreadable
        reason = f"it lacks {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise ValueError(
            f"cannot resume from {folder.name}: its RNG state {path} cannot be read ({reason}); resume from "
            "another checkpoint (--resume_from_checkpoint checkpoint-<step>), or start a new run in another "
            "--output_dir"
        ) from error
    return tensors, numpy_state, python_state


def restore_rng_states(folder: Path, rank: int) -> str | None:
    """Set the global generators from what `write_process_files` wrote for process ``rank`` (every file is read
    and checked before any generator is set); returns what could not be restored (None: everything).
    Raises ValueError, naming the file, for a state file that is there but cannot be read."""
    tensors_name, json_name = rng_state_names(rank)
    if not (folder / tensors_name).is_file() or not (folder / json_name).is_file():
        written = sorted(p.name for p in folder.glob("random_states_*"))
        return f"it has no RNG state for process {rank} ({tensors_name}; it holds {written or 'none'})"
    tensors, numpy_state, python_state = _read_rng_states(folder, rank)
    cuda_states = [tensors[f"torch_cuda_{i}"] for i in range(sum(key.startswith("torch_cuda_") for key in tensors))]
    torch.set_rng_state(tensors["torch_cpu"])
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    if torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            return (f"the CUDA generators were saved for {len(cuda_states)} GPU(s), this machine has "
                    f"{torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(cuda_states)
    return None


def write_shared_files(folder: Path, *, unet, optimizer, lr_scheduler, ema, ema_unet, noise_scheduler, grad_scaler,
                       options: dict[str, Any]) -> None:
    """Everything every process holds the same copy of (main process only). `unet` is the unwrapped model;
    `ema` a diffusers EMAModel (None with --no-use_ema) and `ema_unet` a model holding its weights."""
    unet.save_pretrained(folder / UNET_DIR, safe_serialization=True)
    if ema is not None:
        ema_unet.save_pretrained(folder / EMA_UNET_DIR, safe_serialization=True)
        write_json_atomic(ema_state(ema), folder / EMA_STATE_NAME, indent=1)
    noise_scheduler.save_config(folder / SCHEDULER_DIR)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_NAME)
    write_json_atomic(lr_scheduler.state_dict(), folder / LR_SCHEDULE_NAME, indent=1)
    if grad_scaler is not None:
        write_json_atomic(grad_scaler.state_dict(), folder / GRAD_SCALER_NAME, indent=1)
    write_json_atomic(options, folder / OPTIONS_NAME, indent=1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, root: Path, step: int, write_files: Callable[[Path], None],
                    training_state: dict[str, Any]) -> Path:
    """Save the full training state atomically as root/checkpoint-<step>. Call on every process:
    `write_files(staging)` runs on each (each writes its own RNG state, the main process the rest)."""
    final = root / f"checkpoint-{step}"
    staging = root / f"{CHECKPOINT_STAGING_PREFIX}checkpoint-{step}"
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
        write_manifest(staging, fsync=True)  # every byte on disk before the folder is renamed into place
        _fsync_dir(staging)
        if final.exists():  # the same step saved by an earlier attempt of this run
            _remove(final)
        os.rename(staging, final)
        _fsync_dir(root)
    accelerator.wait_for_everyone()
    return final


# ---- removing ----------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    """Delete a folder so that it disappears from the checkpoint list at once (rename, then delete)."""
    doomed = path.with_name(f"{CHECKPOINT_STAGING_PREFIX}delete-{path.name}")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def prune_checkpoints(root: Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest folders beyond `total_limit`, damaged ones set aside included; returns them.

    Called right after a checkpoint is committed. The newest good checkpoint is never deleted, and a
    damaged one only once a newer good checkpoint exists (at equal steps the damaged one is older).
    """
    good = list_checkpoints(root)
    if total_limit is None or not good:
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
    leftovers = [path for path in root.iterdir() if path.name.startswith(CHECKPOINT_STAGING_PREFIX)]
    for path in leftovers:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return leftovers


def remove_pipeline_staging_leftovers(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the staging folders of pipeline saves into `output_dir` that were killed.

    A save stages in .<output_dir name>.saving-* next to output_dir, or .saving-* inside it. Only
    such folders that are empty or hold the pipeline code a save writes first are removed; anything
    else of that name is left alone.
    """
    target = Path(output_dir).resolve()
    places = [(target.parent, f".{target.name}{PIPELINE_STAGING_MARKER}"), (target, PIPELINE_STAGING_MARKER)]
    removed = [path for folder, prefix in places if folder.is_dir() for path in folder.iterdir()
               if path.name.startswith(prefix) and path.is_dir()
               and (not any(path.iterdir()) or (path / PIPELINE_STAGING_FIRST_FILE).is_file())]
    for path in removed:
        shutil.rmtree(path)
    return removed
