"""What a checkpoint holds, written and read without ever running code from the files.

A checkpoint folder (names in saving/layout.py; written by `write_process_files` on every process,
then `write_shared_files` on the main one; checkpoints.py adds training_state.json and manifest.json):

    unet/config.json, unet/diffusion_pytorch_model.safetensors        raw weights (diffusers layout)
    unet_ema/config.json, unet_ema/diffusion_pytorch_model.safetensors EMA weights (absent with --no-use_ema)
    scheduler/scheduler_config.json                                    the noise scheduler
    optimizer.pt            Adam's state: tensors and numbers only, read with torch.load(weights_only=True)
    lr_scheduler.json       the LR schedule's counters and base rates
    ema.json                the EMA's update count and settings
    grad_scaler.json        fp16's loss scale (only under --mixed_precision fp16)
    random_states_<rank>.safetensors / .json   each process's torch generators (uint8 tensors) and
                            numpy's and Python's `random` states
    training_options.json   the options the run was started with, compared on resume

A checkpoint of version 0.1.0 (accelerate's save_state: model.safetensors and pickles) is refused
with one line: its training state is pickled, and this version reads no pickle.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import CONFIG_NAME
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME as WEIGHTS_NAME
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddpm_from_scratch.saving.atomic_io import write_json_atomic
from ddpm_from_scratch.saving.layout import (
    EMA_STATE_NAME,
    EMA_UNET_DIR,
    GRAD_SCALER_NAME,
    LR_SCHEDULE_NAME,
    OPTIMIZER_NAME,
    OPTIONS_NAME,
    SCHEDULER_DIR,
    UNET_DIR,
)

from .ema import ema_state, load_ema

# the weights file of a 0.1.0 checkpoint (accelerate's save_state), whose other files are pickles
V0_1_0_WEIGHTS_NAME = "model.safetensors"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than tensors and plain data (it was not run)."""


def _rng_names(rank: int) -> tuple[str, str]:
    return f"random_states_{rank}.safetensors", f"random_states_{rank}.json"


# ---- writing -----------------------------------------------------------------------------------


def write_process_files(folder: Path, rank: int) -> None:
    """This process's RNG states (dropout draws from the global generators)."""
    tensors_name, json_name = _rng_names(rank)
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


# ---- reading -----------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from error


def load_weights_only(path: Path) -> Any:
    """torch.load that accepts tensors and plain Python data only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain data, so it was not loaded (loading it could "
            f"run code{f'; it asks for {refused.group(1)}' if refused else ''})"
        ) from error


def check_loadable(folder: Path) -> None:
    """Raise ValueError, in one line, for a folder this version cannot resume from (0.1.0, or no weights)."""
    if (folder / UNET_DIR / WEIGHTS_NAME).is_file():
        return
    if (folder / V0_1_0_WEIGHTS_NAME).is_file():
        raise ValueError(
            f"checkpoint {folder.name} was written by ddpm-from-scratch 0.1.0, whose training state (pickles) cannot "
            f"be resumed by this version; start a new run (another --output_dir), or use its weights: "
            f"{V0_1_0_WEIGHTS_NAME} still loads with safetensors into a ScratchUNet2DModel of that run's config"
        )
    raise ValueError(f"{folder} holds no {UNET_DIR}/{WEIGHTS_NAME}: it is not a checkpoint of this trainer")


def saved_unet(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The raw UNet's config and the shape of each weight (read from the header: no tensor is loaded)."""
    with safe_open(str(folder / UNET_DIR / WEIGHTS_NAME), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    return read_json(folder / UNET_DIR / CONFIG_NAME), shapes


def _read_rng(folder: Path, rank: int) -> tuple[dict[str, Any] | None, str | None]:
    tensors_name, json_name = _rng_names(rank)
    if not (folder / tensors_name).is_file() or not (folder / json_name).is_file():
        written = sorted(p.name for p in folder.glob("random_states_*"))
        return None, f"it has no RNG state for process {rank} ({tensors_name}; it holds {written or 'none'})"
    tensors = load_file(str(folder / tensors_name))
    saved = read_json(folder / json_name)
    numpy_state = saved["numpy"]
    return {
        "torch_cpu": tensors["torch_cpu"],
        "torch_cuda": [tensors[f"torch_cuda_{i}"] for i in range(sum(k.startswith("torch_cuda_") for k in tensors))],
        "numpy": (numpy_state["bit_generator"], np.asarray(numpy_state["key"], dtype=np.uint32),
                  numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]),
        "python": (saved["python"]["version"], tuple(saved["python"]["state"]), saved["python"]["gauss_next"]),
    }, None


def _restore_rng(rng: dict[str, Any]) -> str | None:
    """Set the global generators; returns what could not be restored (None: everything)."""
    torch.set_rng_state(rng["torch_cpu"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if torch.cuda.is_available():
        devices = torch.cuda.device_count()
        if len(rng["torch_cuda"]) != devices:
            return f"the CUDA generators were saved for {len(rng['torch_cuda'])} GPU(s), this machine has {devices}"
        torch.cuda.set_rng_state_all(rng["torch_cuda"])
    return None


# ---- restoring -----------------------------------------------------------------------------------


def load_checkpoint(folder: Path, rank: int, *, unet, optimizer, lr_scheduler, ema, ema_unet, grad_scaler) -> list[str]:
    """Load a checkpoint into the run's objects (after resume.py's checks); returns warnings for what it could
    not restore. Every file is read as safetensors, JSON, or torch's weights-only format.

    Adam's hyperparameters and the base learning rate are this run's (they may change on resume);
    its moments, the schedule's position and the EMA are the checkpoint's.
    """
    warnings = []
    optimizer_state = load_weights_only(folder / OPTIMIZER_NAME)  # refused before anything is changed
    unet.load_state_dict(load_file(str(folder / UNET_DIR / WEIGHTS_NAME)))
    fresh = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(optimizer_state)
    lr_scheduler.load_state_dict(read_json(folder / LR_SCHEDULE_NAME))
    lr_scheduler.base_lrs = [settings["initial_lr"] for settings in fresh]
    for group, settings, lr_lambda in zip(optimizer.param_groups, fresh, lr_scheduler.lr_lambdas):
        group.update(settings)
        group["lr"] = settings["initial_lr"] * lr_lambda(lr_scheduler.last_epoch)  # as LambdaLR.step computes it
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if ema is not None:
        if (folder / EMA_UNET_DIR / WEIGHTS_NAME).is_file():
            load_ema(ema, ema_unet, load_file(str(folder / EMA_UNET_DIR / WEIGHTS_NAME)),
                     int(read_json(folder / EMA_STATE_NAME)["num_updates"]))
        else:
            warnings.append(f"{folder.name} has no EMA (trained with --no-use_ema); starting the EMA from its weights")
            load_ema(ema, ema_unet, unet.state_dict(), 0)
    if grad_scaler is not None and (folder / GRAD_SCALER_NAME).is_file():
        grad_scaler.load_state_dict(read_json(folder / GRAD_SCALER_NAME))
    rng, problem = _read_rng(folder, rank)
    problem = problem if rng is None else _restore_rng(rng)
    if problem is not None:
        warnings.append(f"the random number generators were not restored from {folder.name}: {problem}. Dropout "
                        "and other global random draws now differ from an uninterrupted run, so this run is no "
                        "longer bit-reproducible")
    return warnings
