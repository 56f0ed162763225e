"""The output folder: refuse one the run could not write to, or whose files it would overwrite, before
any long work. A folder an earlier run of this trainer wrote may be written again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.saving.layout import (CHECKPOINT_PATTERN, CHECKPOINT_STAGING_PREFIX, CHECKPOINTS_SUBDIR,
                                             MODEL_INDEX_NAME)
from ddpm_from_scratch.saving.shipped_code import class_source_file, code_closure, top_level_package

from .options import TrainingOptions

# what a run writes at the top of --output_dir, besides the pipeline's code files and the logging folder
RUN_OUTPUT_NAMES = (MODEL_INDEX_NAME, "unet", "scheduler", "README.md", "sample_grid.png", "samples",
                    "loss_curve.png", "metrics.json", CHECKPOINTS_SUBDIR)


def run_output_names(opts: TrainingOptions) -> list[str]:
    """Top-level names of --output_dir that a run writes (files it may overwrite)."""
    code = code_closure(class_source_file(ScratchDDPMPipeline), top_level_package(ScratchDDPMPipeline))
    names = [*RUN_OUTPUT_NAMES, *sorted(path.name for path in code)]
    logging_path = opts.logging_path
    if logging_path.parent == opts.output_path:
        names.append(logging_path.name)
    return names


def is_our_model_card(path: Path) -> bool:
    """True for a README.md this project wrote: YAML metadata whose tags hold ddpm-from-scratch."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:8192]
    except OSError:
        return False
    if not text.startswith("---"):
        return False
    metadata = text[3:].split("\n---", 1)[0]
    return any(line.strip() == "- ddpm-from-scratch" for line in metadata.splitlines())


def is_checkpoint_staging(path: Path) -> bool:
    """True for the staging folder of a checkpoint save (.tmp-checkpoint-<step>, saving/layout.py)."""
    name = path.name
    return (path.is_dir() and name.startswith(CHECKPOINT_STAGING_PREFIX)
            and CHECKPOINT_PATTERN.match(name[len(CHECKPOINT_STAGING_PREFIX):]) is not None)


def is_previous_run(folder: Path) -> bool:
    """True if `folder` holds a pipeline or checkpoints this trainer wrote, or only the staging folders of
    checkpoint saves (a run killed while saving its first checkpoint: the next run removes them)."""
    index = folder / MODEL_INDEX_NAME
    if index.is_file():
        try:
            return "ScratchDDPMPipeline" in str(json.loads(index.read_text()).get("_class_name"))
        except (OSError, ValueError, AttributeError):
            return False
    checkpoints = folder / CHECKPOINTS_SUBDIR
    if any(checkpoints.glob("checkpoint-*")):
        return True
    entries = list(checkpoints.iterdir()) if checkpoints.is_dir() else []
    return bool(entries) and all(is_checkpoint_staging(path) for path in entries)


def foreign_outputs(opts: TrainingOptions) -> list[str]:
    """Entries of --output_dir that the run would overwrite and that this trainer did not write.

    A folder written by an earlier run (its pipeline or checkpoints) may be written again; a README.md
    counts as ours only if it is one of our model cards, whatever else the folder holds.
    """
    folder = opts.output_path
    if not folder.is_dir():
        return []
    previous = is_previous_run(folder)
    found = []
    for name in run_output_names(opts):
        path = folder / name
        if not path.exists():
            continue
        if name == "README.md" and not is_our_model_card(path):
            found.append(name)
        elif name != "README.md" and not previous:
            found.append(name + ("/" if path.is_dir() else ""))
    return found


def prepare_output_dir(opts: TrainingOptions) -> None:
    """Refuse an --output_dir the run could not write to, or whose files it would overwrite, before any
    long work: create it, write and remove a probe file, and look for files that are not ours."""
    folder = opts.output_path
    shown = str(opts.output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output_dir {shown!r} is a file, not a folder; pass a folder to write the pipeline into")
    foreign = foreign_outputs(opts)
    if foreign and not opts.overwrite_output_dir:
        raise ValueError(
            f"--output_dir {shown!r} holds files this trainer did not write and would overwrite: "
            f"{', '.join(foreign[:8])}{', ...' if len(foreign) > 8 else ''}; pass another --output_dir, or "
            "--overwrite_output_dir to overwrite them"
        )
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ddpm-from-scratch write probe")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--output_dir {shown!r} cannot be written ({error.strerror or error}); pass a folder "
                         "you can create files in") from error
