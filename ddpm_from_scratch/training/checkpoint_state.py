"""What a checkpoint holds, written and read without ever running code from the files.

A checkpoint folder (written by `write_process_files` on every process, then `write_shared_files`
on the main one; training/checkpoints.py adds training_state.json and manifest.json and commits it):

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

`read_checkpoint` also reads the layout of version 0.1.0 (accelerate's save_state: model.safetensors,
optimizer.bin, custom_checkpoint_0.pkl, random_states_<rank>.pkl) with torch's weights-only loader;
numpy's RNG arrays are let through an explicit allowlist that builds nothing but plain uint32 arrays.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddpm_from_scratch.saving.atomic_io import write_json_atomic

logger = logging.getLogger("training")

UNET_DIR = "unet"
EMA_DIR = "unet_ema"
SCHEDULER_DIR = "scheduler"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
LR_SCHEDULE_NAME = "lr_scheduler.json"
EMA_STATE_NAME = "ema.json"
GRAD_SCALER_NAME = "grad_scaler.json"
OPTIONS_NAME = "training_options.json"
LAYOUT = "1"  # of the files above; 0.1.0 checkpoints have none of them
LEGACY_LAYOUT = "0.1.0"


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


def write_shared_files(folder: Path, *, unet, optimizer, lr_scheduler, ema, noise_scheduler, grad_scaler,
                       options: dict[str, Any]) -> None:
    """Everything every process holds the same copy of (main process only). `unet` is the unwrapped model."""
    unet.save_pretrained(folder / UNET_DIR, safe_serialization=True)
    if ema is not None:
        ema.averaged_model.save_pretrained(folder / EMA_DIR, safe_serialization=True)
        ema_state = {key: value for key, value in ema.state_dict().items() if key != "averaged_model"}
        write_json_atomic(ema_state, folder / EMA_STATE_NAME, indent=1)
    noise_scheduler.save_config(folder / SCHEDULER_DIR)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_NAME)
    write_json_atomic(lr_scheduler.state_dict(), folder / LR_SCHEDULE_NAME, indent=1)
    if grad_scaler is not None:
        write_json_atomic(grad_scaler.state_dict(), folder / GRAD_SCALER_NAME, indent=1)
    write_json_atomic(options, folder / OPTIONS_NAME, indent=1)


# ---- reading -----------------------------------------------------------------------------------


@dataclass
class CheckpointContents:
    """A checkpoint read into memory; `rng` is None (with `rng_problem` saying why) when it cannot be restored."""

    layout: str
    weights: dict[str, torch.Tensor]
    unet_config: dict[str, Any] | None
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    ema_weights: dict[str, torch.Tensor] | None
    ema_num_updates: int | None
    grad_scaler: dict[str, Any] | None
    options: dict[str, Any] | None
    rng: dict[str, Any] | None
    rng_problem: str | None = None
    weight_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def read_checkpoint(folder: Path, rank: int) -> CheckpointContents:
    """Read a checkpoint of either layout; raises UnsafeCheckpointError / ValueError naming the file."""
    if (folder / UNET_DIR / WEIGHTS_NAME).is_file():
        return _read_current(folder, rank)
    if (folder / "model.safetensors").is_file():
        return _read_legacy(folder, rank)
    raise ValueError(f"{folder} holds neither {UNET_DIR}/{WEIGHTS_NAME} nor a 0.1.0 model.safetensors")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from error


def load_weights_only(path: Path, allowed: list | None = None) -> Any:
    """torch.load that accepts tensors and plain Python data only (plus `allowed` globals)."""
    import pickle
    import re

    try:
        if allowed:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain data, so it was not loaded (loading it could "
            f"run code{f'; it asks for {refused.group(1)}' if refused else ''})"
        ) from error


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def _read_current(folder: Path, rank: int) -> CheckpointContents:
    weights_path = folder / UNET_DIR / WEIGHTS_NAME
    ema_path = folder / EMA_DIR / WEIGHTS_NAME
    has_ema = ema_path.is_file()
    scaler_path = folder / GRAD_SCALER_NAME
    rng, problem = _read_rng(folder, rank)
    return CheckpointContents(
        layout=LAYOUT,
        weights=load_file(str(weights_path)),
        unet_config=_read_json(folder / UNET_DIR / "config.json"),
        optimizer=load_weights_only(folder / OPTIMIZER_NAME),
        lr_scheduler=_read_json(folder / LR_SCHEDULE_NAME),
        ema_weights=load_file(str(ema_path)) if has_ema else None,
        ema_num_updates=int(_read_json(folder / EMA_STATE_NAME)["num_updates"]) if has_ema else None,
        grad_scaler=_read_json(scaler_path) if scaler_path.is_file() else None,
        options=_read_json(folder / OPTIONS_NAME),
        rng=rng,
        rng_problem=problem,
        weight_shapes=_shapes(weights_path),
    )


def _read_rng(folder: Path, rank: int) -> tuple[dict[str, Any] | None, str | None]:
    tensors_name, json_name = _rng_names(rank)
    if not (folder / tensors_name).is_file() or not (folder / json_name).is_file():
        written = sorted(p.name for p in folder.glob("random_states_*"))
        return None, f"it has no RNG state for process {rank} ({tensors_name}; it holds {written or 'none'})"
    tensors = load_file(str(folder / tensors_name))
    saved = _read_json(folder / json_name)
    numpy_state = saved["numpy"]
    return {
        "torch_cpu": tensors["torch_cpu"],
        "torch_cuda": [tensors[f"torch_cuda_{i}"] for i in range(sum(k.startswith("torch_cuda_") for k in tensors))],
        "numpy": (numpy_state["bit_generator"], np.asarray(numpy_state["key"], dtype=np.uint32),
                  numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]),
        "python": (saved["python"]["version"], tuple(saved["python"]["state"]), saved["python"]["gauss_next"]),
    }, None


# ---- the 0.1.0 layout ----------------------------------------------------------------------------


def _reconstruct_plain_array(subtype, shape, dtype_code):
    """numpy's array constructor as a 0.1.0 RNG state uses it (for its Mersenne Twister key), limited to
    plain arrays; the pickle then sets the data and the dtype, which `_uint32_dtype` limits to uint32."""
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError(f"refusing to build a {subtype!r} while reading an RNG state")
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _uint32_dtype(name, align=False, copy=False):
    if name != "u4":
        raise UnsafeCheckpointError(f"refusing numpy dtype {name!r} while reading an RNG state (only uint32)")
    return np.dtype(name, align, copy)


# numpy pickles name its array constructor after the numpy that wrote them (numpy.core before 2.0)
NUMPY_RNG_ALLOWLIST = [
    (_reconstruct_plain_array, "numpy._core.multiarray._reconstruct"),
    (_reconstruct_plain_array, "numpy.core.multiarray._reconstruct"),
    (_uint32_dtype, "numpy.dtype"),
    np.ndarray,
    type(np.dtype(np.uint32)),
]


def _legacy_rng(folder: Path, rank: int) -> tuple[dict[str, Any] | None, str | None]:
    path = folder / f"random_states_{rank}.pkl"
    if not path.is_file():
        return None, f"it has no RNG state for process {rank} ({path.name})"
    states = load_weights_only(path, NUMPY_RNG_ALLOWLIST)
    try:
        name, key, pos, has_gauss, cached = states["numpy_random_seed"]
        key = np.asarray(key)
        if name != "MT19937" or key.dtype != np.uint32 or key.shape != (624,):
            raise ValueError("not a Mersenne Twister state")
        python = states["random_state"]
        rng = {"torch_cpu": states["torch_manual_seed"], "torch_cuda": list(states.get("torch_cuda_manual_seed", [])),
               "numpy": (name, key, int(pos), int(has_gauss), float(cached)),
               "python": (int(python[0]), tuple(int(v) for v in python[1]), python[2])}
    except (KeyError, TypeError, ValueError) as error:
        return None, f"{path.name} is not an RNG state of accelerate ({error!r})"
    return rng, None


def _read_legacy(folder: Path, rank: int) -> CheckpointContents:
    extras = load_weights_only(folder / "custom_checkpoint_0.pkl")
    ema = extras.get("ema")
    scaler_path = folder / "scaler.pt"
    rng, problem = _legacy_rng(folder, rank)
    return CheckpointContents(
        layout=LEGACY_LAYOUT,
        weights=load_file(str(folder / "model.safetensors")),
        unet_config=None,
        optimizer=load_weights_only(folder / "optimizer.bin"),
        lr_scheduler=extras["lr_scheduler"],
        ema_weights=dict(ema["averaged_model"]) if ema is not None else None,
        ema_num_updates=int(ema["num_updates"]) if ema is not None else None,
        grad_scaler=load_weights_only(scaler_path) if scaler_path.is_file() else None,
        options=None,
        rng=rng,
        rng_problem=problem,
        weight_shapes=_shapes(folder / "model.safetensors"),
    )


# ---- restoring -----------------------------------------------------------------------------------


def restore_rng(rng: dict[str, Any]) -> str | None:
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


def apply_checkpoint(contents: CheckpointContents, checkpoint: str, *, unet, optimizer, lr_scheduler, ema,
                     grad_scaler) -> list[str]:
    """Load what `read_checkpoint` read into the run's objects; returns warnings for what it could not restore.

    Adam's hyperparameters and the base learning rate are this run's (they may change on resume);
    its moments, the schedule's position and the EMA are the checkpoint's.
    """
    warnings = []
    unet.load_state_dict(contents.weights)
    fresh = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(contents.optimizer)
    lr_scheduler.load_state_dict(contents.lr_scheduler)
    lr_scheduler.base_lrs = [settings["initial_lr"] for settings in fresh]
    for group, settings, lr_lambda in zip(optimizer.param_groups, fresh, lr_scheduler.lr_lambdas):
        group.update(settings)
        group["lr"] = settings["initial_lr"] * lr_lambda(lr_scheduler.last_epoch)  # as LambdaLR.step computes it
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if ema is not None:
        if contents.ema_weights is None:
            warnings.append(f"{checkpoint} has no EMA (trained with --no-use_ema); starting the EMA from its weights")
            ema.load_state_dict({"averaged_model": unet.state_dict(), "num_updates": 0})
        else:
            ema.load_state_dict({"averaged_model": contents.ema_weights, "num_updates": contents.ema_num_updates})
    if grad_scaler is not None and contents.grad_scaler is not None:
        grad_scaler.load_state_dict(contents.grad_scaler)
    problem = contents.rng_problem if contents.rng is None else restore_rng(contents.rng)
    if problem is not None:
        warnings.append(f"the random number generators were not restored from {checkpoint}: {problem}. Dropout "
                        "and other global random draws now differ from an uninterrupted run, so this run is no "
                        "longer bit-reproducible")
    return warnings
