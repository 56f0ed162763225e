"""What the console commands share: argument types, device resolution, output-path checks, the
scheduler and reverse-process variance overrides, and turning a user's mistake into one
``prog: error: ...`` line.

Every check here runs before any long work (loading a model, sampling), so a typo in ``--out`` or
``--device`` costs seconds, not a sampling run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

VARIANCE_CHOICES = ("saved", "fixed_small", "fixed_large", "learned_range")
# --scheduler: the saved one, or diffusers' DDIMScheduler with the same betas (stepped with
# use_clipped_model_output=True by the pipeline, ScratchDDPMPipeline._step_kwargs)
SCHEDULER_CHOICES = ("saved", "ddim")
# a command's user-facing failures (a bad path, a folder that is not a model, a bad value, a Hub error);
# anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, OSError)


def int_at_least(minimum: int):
    """An argparse ``type`` accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be a torch device this machine has.

    A device string torch does not know, or a CUDA / MPS device that is not available here (no GPU,
    a CPU-only torch build, an index past the last GPU), is a ValueError naming ``--device``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists every device type it was built to know, and no argument name
        raise ValueError(
            f"--device {name!r} is not a torch device; allowed forms: auto, cpu, cuda, cuda:N (N a GPU index), mps, "
            "or another torch device type such as xpu"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name!r}: CUDA is not available here (torch.cuda.is_available() is False: no GPU, no "
                "driver, or a CPU-only torch build); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r}: MPS is not available here; use --device cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, device.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"--device {name!r}: torch has no available {device.type!r} backend here")
    return device


def check_output_file(path: str | os.PathLike, option: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check, before any work, that ``path`` can be written: it is not a folder, the first folder of
    it that exists is a writable folder (missing ones are created when writing), and (if given) its
    suffix is one of ``suffixes``. Errors name ``option`` and the path as the user gave it."""
    given = Path(path)
    target = given.expanduser()
    if target.is_dir():
        raise ValueError(f"{option} {str(given)!r} is a folder; give a file name")
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {str(given)!r}: the file name must end in one of {', '.join(suffixes)}")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {str(given)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(given)!r}: cannot write in the folder {str(parent)!r} (permission denied)")
    return target


def check_new_folder(path: str | os.PathLike, option: str) -> Path:
    """Check, before any work, that ``path`` is a folder to create or an empty one, whose parent can be
    created: nothing in it would be overwritten. Errors name ``option`` and the path as the user gave it."""
    given = Path(path)
    target = given.expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{option} {str(given)!r} is an existing file; give the path of a new folder")
    if target.is_dir() and any(target.iterdir()):
        raise ValueError(f"{option} {str(given)!r} is a folder that is not empty; give the path of a new folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option} {str(given)!r}: its parent folder cannot be created: {error}") from None
    return target


def write_output(write: Callable[[Path], Any], path: Path, option: str) -> Any:
    """Run ``write(path)``; an OSError (disk full, permissions changed) names ``option`` and ``path``,
    not the temporary file an atomic write goes through."""
    try:
        return write(path)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OSError(f"could not write {option} {str(path)!r}: {reason}") from error


def chosen_scheduler(choice: str, saved: Any) -> Any:
    """``--scheduler``: ``saved`` is the pipeline's own scheduler ``saved``; ``ddim`` is diffusers' DDIMScheduler
    built from its config (same betas, prediction type and clipping)."""
    if choice not in SCHEDULER_CHOICES:
        raise ValueError(f"--scheduler must be one of {SCHEDULER_CHOICES}, got {choice!r}")
    if choice == "saved":
        return saved
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(saved.config)


def override_variance_type(pipeline: Any, variance_type: str) -> None:
    """``--variance-type``: replace the pipeline's scheduler by one of the same class and config with
    ``variance_type`` (``saved`` keeps it). A scheduler without that option is a ValueError."""
    if variance_type == "saved":
        return
    scheduler = pipeline.scheduler
    if "variance_type" not in scheduler.config:
        raise ValueError(f"--variance-type: {type(scheduler).__name__} has no variance_type option; use 'saved'")
    pipeline.scheduler = type(scheduler).from_config(scheduler.config, variance_type=variance_type)


def exit_with_error(parser: argparse.ArgumentParser, error: BaseException) -> NoReturn:
    """``prog: error: <message>`` on one line (usage first, as argparse does) and exit status 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    parser.error(message)
