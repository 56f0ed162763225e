"""Continuing a checkpoint: checked against this run's options, data and model before any weight is
loaded, then loaded without ever running code from its files.

Options that change what the model computes (its architecture, the noise schedule, what it predicts)
are refused: the saved weights would be trained towards another target. Options that only change
how it is trained from here on (learning rate, batch size, EMA decay, ...) are allowed, with a warning
stating the old and new value. A checkpoint whose own files disagree (its options against its
scheduler or UNet config) is refused too: nothing says which of them its weights were trained for.
A checkpoint of version 0.1.0 (accelerate's save_state: model.safetensors and pickles) is refused in one
line: its training state is pickled, and this version reads no pickle.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME
from diffusers.utils import CONFIG_NAME
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME as WEIGHTS_NAME
from safetensors.torch import load_file

from ddpm_from_scratch.diffusion_math import LEARNED_VARIANCE_TYPES
from ddpm_from_scratch.saving.atomic_io import read_json
from ddpm_from_scratch.saving.layout import (EMA_STATE_NAME, EMA_UNET_DIR, GRAD_SCALER_NAME, LR_SCHEDULE_NAME,
                                             OPTIMIZER_NAME, OPTIONS_NAME, SCHEDULER_DIR, UNET_DIR)

from .checkpoints import (list_checkpoints, plan_resume, read_training_state, remove_pipeline_staging_leftovers,
                          remove_staging_leftovers, restore_rng_states, set_aside)
from .ema import load_ema

logger = logging.getLogger(__name__)

# changing these changes what the saved weights mean
MODEL_DEFINING_OPTIONS = ("unet_preset", "resolution", "class_conditional", "prediction_type", "variance_type",
                          "loss_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
# these may change between the run and its continuation; the new value is used from the checkpoint on
ADJUSTABLE_OPTIONS = ("learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2",
                      "adam_weight_decay", "adam_epsilon", "max_grad_norm", "train_batch_size",
                      "gradient_accumulation_steps", "dropout", "lambda_vlb", "snr_gamma", "class_dropout_prob", "use_ema",
                      "ema_max_decay", "ema_min_decay", "ema_inv_gamma", "ema_power", "random_flip", "center_crop",
                      "dataset_name", "dataset_config_name", "train_data_dir", "split", "image_column",
                      "label_column", "seed", "mixed_precision")
# the UNet config keys that follow from an option (named in the error instead of the key)
CONFIG_KEY_OPTIONS = {"sample_size": "--resolution", "num_class_embeds": "--class_conditional (or the dataset's "
                      "number of classes)", "out_channels": "--variance_type", "in_channels": "the data's channels"}
CONFIG_KEYS_THAT_MAY_CHANGE = ("dropout",)
# the options a checkpoint's scheduler config also records, under the same names
SCHEDULER_OPTIONS = ("prediction_type", "variance_type", "num_train_timesteps", "beta_schedule", "beta_start",
                     "beta_end")
# the weights file of a 0.1.0 checkpoint (accelerate's save_state), whose other files are pickles
V0_1_0_WEIGHTS_NAME = "model.safetensors"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than tensors and plain data (it was not run)."""


# ---- checks, before any weight is loaded ---------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value as JSON gives it back (tuples become lists), so saved and built values compare."""
    return json.loads(json.dumps(value))


def _changed(saved: dict[str, Any], current: dict[str, Any], names) -> list[str]:
    """The ``names`` whose value in ``current`` differs from ``saved``; one ``saved`` lacks is not compared."""
    return [name for name in names if name in saved and _plain(saved[name]) != _plain(current.get(name))]


def check_options(saved: dict[str, Any], options: dict[str, Any], checkpoint: str) -> list[str]:
    """Raise ValueError for changed model-defining options; return a warning per changed adjustable one."""
    refused = _changed(saved, options, MODEL_DEFINING_OPTIONS)
    if refused:
        details = "; ".join(f"{_flag(name)}: the checkpoint has {saved[name]!r}, this run {options.get(name)!r}"
                            for name in refused)
        resume_with = " ".join(_as_argument(name, saved[name]) for name in refused)
        raise ValueError(
            f"cannot resume from {checkpoint}: {details}. These options define what the model computes, so a "
            f"continued run must keep them: resume with {resume_with}, or start a new run (another "
            "--output_dir, or --overwrite_output_dir to delete these checkpoints)"
        )
    return [f"--{name} changed since {checkpoint}: it had {saved[name]!r}, this run uses {options.get(name)!r} "
            "from here on" for name in _changed(saved, options, ADJUSTABLE_OPTIONS)]


def _flag(name: str) -> str:
    return "--preset" if name == "unet_preset" else f"--{name}"  # the UNet preset comes with --preset


def _as_argument(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"no --{name}"
    return f"{_flag(name)} {value}"


def check_run_length(done: int, max_train_steps: int, checkpoint: str, by_epochs: bool) -> None:
    """A run shorter than what the checkpoint already did is an error, not a silent no-op."""
    if max_train_steps < done:
        option = "--num_epochs" if by_epochs else f"--max_train_steps {max_train_steps}"
        raise ValueError(
            f"{option} asks for {max_train_steps} updates, but {checkpoint} has already done {done}: pass "
            f"--max_train_steps {done} or more to continue it (exactly {done} saves its pipeline without training), "
            "or start a new run in another --output_dir"
        )


def check_architecture(saved_config: dict[str, Any], model: torch.nn.Module, num_channels: int,
                       checkpoint: str) -> None:
    """Raise ValueError when the checkpoint's UNet config is not this run's (the same config of the same
    class builds the same tensors, and the weights match their config: the manifest verified them)."""
    channels = {1: "grey", 3: "RGB", 4: "RGBA"}
    saved_channels = saved_config.get("in_channels")
    if saved_channels != num_channels:
        raise ValueError(
            f"cannot resume from {checkpoint}: its UNet takes {saved_channels}-channel images, the training data "
            f"has {num_channels} channel(s) ({channels.get(saved_channels, f'{saved_channels} channels')} vs "
            f"{channels.get(num_channels, f'{num_channels} channels')}); resume on data with the checkpoint's "
            "channels, or start a new run in another --output_dir"
        )
    config = dict(model.config)
    changed = [key for key in sorted(set(saved_config) | set(config)) if not key.startswith("_")
               and key not in CONFIG_KEYS_THAT_MAY_CHANGE and _plain(saved_config.get(key)) != _plain(config.get(key))]
    if changed:
        details = "; ".join(f"{key} (set by {CONFIG_KEY_OPTIONS.get(key, 'the UNet preset')}): the checkpoint "
                            f"has {saved_config.get(key)!r}, this run {config.get(key)!r}" for key in changed)
        raise ValueError(f"cannot resume from {checkpoint}: its UNet differs from this run's: {details}; "
                         "start a new run in another --output_dir")


def _disagreements(options: dict[str, Any], scheduler: dict[str, Any], unet: dict[str, Any]) -> list[str]:
    """'<option> is <value> in training_options.json but <what the config says> in <its file>' for each option
    the saved scheduler or UNet config contradicts; a value one side lacks is not compared."""
    scheduler_file, unet_file = f"{SCHEDULER_DIR}/{SCHEDULER_CONFIG_NAME}", f"{UNET_DIR}/{CONFIG_NAME}"
    found = [(name, options[name], repr(scheduler[name]), scheduler_file) for name in SCHEDULER_OPTIONS
             if name in options and name in scheduler and _plain(options[name]) != _plain(scheduler[name])]
    size = unet.get("sample_size")
    if "resolution" in options and size is not None and _plain(size) not in (options["resolution"],
                                                                              [options["resolution"]] * 2):
        found.append(("resolution", options["resolution"], f"sample_size={size!r}", unet_file))
    classes = unet.get("num_class_embeds")
    if "class_conditional" in options and bool(options["class_conditional"]) != (classes is not None):
        found.append(("class_conditional", options["class_conditional"], f"num_class_embeds={classes!r}", unet_file))
    if "variance_type" in options and isinstance(unet.get("in_channels"), int):
        expected = unet["in_channels"] * (2 if options["variance_type"] in LEARNED_VARIANCE_TYPES else 1)
        if unet.get("out_channels") != expected:
            found.append(("variance_type", options["variance_type"], f"out_channels={unet.get('out_channels')!r} for "
                          f"in_channels={unet['in_channels']} (it needs {expected})", unet_file))
    return [f"{name} is {ours!r} in {OPTIONS_NAME} but {theirs} in {file}" for name, ours, theirs, file in found]


def check_parts_agree(folder: Path, options: dict[str, Any], unet_config: dict[str, Any]) -> None:
    """Raise ValueError, in one line naming both values and both files, when the checkpoint's training options
    contradict its saved scheduler or UNet config, or its EMA UNet's config its UNet's (an edited file, or
    parts of two runs): its weights were trained for one of them, and nothing says which."""
    scheduler_config = read_json(folder / SCHEDULER_DIR / SCHEDULER_CONFIG_NAME, "scheduler config")
    found = _disagreements(options, scheduler_config, unet_config)
    ema_config_path = folder / EMA_UNET_DIR / CONFIG_NAME
    if ema_config_path.is_file():  # the EMA copy is the same model: every key but diffusers' own
        ema_config = read_json(ema_config_path, "EMA UNet config")
        found += [f"{key} is {unet_config.get(key)!r} in {UNET_DIR}/{CONFIG_NAME} but {ema_config.get(key)!r} in "
                  f"{EMA_UNET_DIR}/{CONFIG_NAME}" for key in sorted(set(unet_config) | set(ema_config))
                  if not key.startswith("_") and _plain(unet_config.get(key)) != _plain(ema_config.get(key))]
    if found:
        raise ValueError(
            f"cannot resume from {folder.name}: its files disagree: {'; '.join(found)}; the checkpoint was edited "
            "or mixed from different runs, so what its weights were trained for is unknown: resume from another "
            "checkpoint (--resume_from_checkpoint checkpoint-<step>), or start a new run in another --output_dir"
        )


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


# ---- choosing the checkpoint ----------------------------------------------------------------------------


def agree_on_checkpoint(accelerator, opts, root: Path) -> Path | None:
    """`choose_checkpoint` on the main process, its answer (or its ValueError) shared with every process."""
    from accelerate.utils import broadcast_object_list

    answer: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            answer[0] = ("ok", choose_checkpoint(opts, root))
        except ValueError as error:
            answer[0] = ("error", str(error))
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    status, value = answer[0]
    accelerator.wait_for_everyone()
    if status == "error":
        raise ValueError(value)
    return value


def choose_checkpoint(opts, root: Path) -> Path | None:
    """On the main process: clear what interrupted saves left, set damaged checkpoints aside and return
    the one to resume from (None: a new run). Raises ValueError when --output_dir holds another run."""
    existing = list_checkpoints(root)
    if opts.resume_from_checkpoint is None and existing:
        if not opts.overwrite_output_dir:
            raise ValueError(
                f"--output_dir {str(opts.output_path)!r} already holds checkpoints of a previous run "
                f"({', '.join(p.name for _, p in existing)}): pass --resume_from_checkpoint latest to continue it, "
                "--overwrite_output_dir to delete them and start over, or another --output_dir"
            )
        logger.warning("--overwrite_output_dir: deleting %d checkpoints in %s", len(existing), root)
        shutil.rmtree(root)
    for leftover in remove_staging_leftovers(root) + remove_pipeline_staging_leftovers(opts.output_path):
        logger.warning("removed %s, left by a save that was interrupted", leftover)
    plan = plan_resume(opts.output_path, opts.resume_from_checkpoint)
    for path, problems in plan.rejected:
        moved = set_aside(path)
        logger.error("checkpoint %s is damaged (%s); moved it to %s", path.name, "; ".join(problems), moved.name)
    if plan.rejected and plan.path is not None:
        logger.warning("resuming from %s, the newest checkpoint that verifies", plan.path.name)
    if opts.resume_from_checkpoint == "latest" and plan.path is None:
        logger.info("--resume_from_checkpoint latest: no checkpoint in %s yet, starting a new run", root)
    return plan.path


# ---- loading: safetensors, JSON, and torch's weights-only format -----------------------------------------


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


def load_checkpoint(folder: Path, rank: int, *, unet, optimizer, lr_scheduler, ema, ema_unet, grad_scaler) -> None:
    """Load a checkpoint into the run's objects (after the checks above); a WARNING for what it could not restore.

    Adam's hyperparameters and the base learning rate are this run's (they may change on resume);
    its moments, the schedule's position and the EMA are the checkpoint's.
    """
    optimizer_state = load_weights_only(folder / OPTIMIZER_NAME)  # refused before anything is changed
    unet.load_state_dict(load_file(str(folder / UNET_DIR / WEIGHTS_NAME)))
    fresh = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(optimizer_state)
    lr_scheduler.load_state_dict(read_json(folder / LR_SCHEDULE_NAME, "LR schedule state"))
    lr_scheduler.base_lrs = [settings["initial_lr"] for settings in fresh]
    for group, settings, lr_lambda in zip(optimizer.param_groups, fresh, lr_scheduler.lr_lambdas):
        group.update(settings)
        group["lr"] = settings["initial_lr"] * lr_lambda(lr_scheduler.last_epoch)  # as LambdaLR.step computes it
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if ema is not None:
        if (folder / EMA_UNET_DIR / WEIGHTS_NAME).is_file():
            load_ema(ema, ema_unet, load_file(str(folder / EMA_UNET_DIR / WEIGHTS_NAME)),
                     int(read_json(folder / EMA_STATE_NAME, "EMA state")["num_updates"]))
        else:
            logger.warning("%s has no EMA (trained with --no-use_ema); starting the EMA from its weights", folder.name)
            load_ema(ema, ema_unet, unet.state_dict(), 0)
    if grad_scaler is not None and (folder / GRAD_SCALER_NAME).is_file():
        grad_scaler.load_state_dict(read_json(folder / GRAD_SCALER_NAME, "loss scale state"))
    problem = restore_rng_states(folder, rank)
    if problem is not None:
        logger.warning("the random number generators were not restored from %s: %s. Dropout and other global "
                       "random draws now differ from an uninterrupted run, so this run is no longer bit-reproducible",
                       folder.name, problem)


def restore_checkpoint(path: Path, opts, accelerator, unet, optimizer, lr_scheduler, ema, ema_unet, *,
                       num_channels: int, max_train_steps: int) -> dict[str, Any]:
    """Check the checkpoint against this run (ValueError before any weight is loaded), load it into the
    run's objects (every process), log a WARNING for each change; returns its training_state.json."""
    check_loadable(path)
    try:
        state, saved_options = read_training_state(path), read_json(path / OPTIONS_NAME, "training options")
        saved_config = read_json(path / UNET_DIR / CONFIG_NAME, "UNet config")
        check_parts_agree(path, saved_options, saved_config)
    except FileNotFoundError as error:  # refused in one line, like every other reason not to resume
        raise ValueError(f"cannot resume from {path.name}: {error}") from error
    for warning in check_options(saved_options, opts.for_model_card(), path.name):
        logger.warning(warning)
    check_run_length(state["global_step"], max_train_steps, path.name, "num_epochs" in opts.explicit)
    model = accelerator.unwrap_model(unet)
    check_architecture(saved_config, model, num_channels, path.name)
    load_checkpoint(path, accelerator.process_index, unet=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                    ema=ema, ema_unet=ema_unet, grad_scaler=accelerator.scaler)
    return state


def resume_position(state: dict[str, Any], layout: dict[str, int], images_per_micro_batch: int) -> int:
    """Micro-batches per process the resumed run skips: the checkpoint's count when the data layout (batch
    size, process count, accumulation, seed, dataset size) is the same, else the same number of images."""
    if state["data_layout"] == layout:
        return state["micro_batches_per_process"]
    logger.warning("the checkpoint was written with data layout %s, this run has %s: resuming after the same number "
                   "of images (%d), but the data order will differ from an uninterrupted run", state["data_layout"],
                   layout, state["samples_seen"])
    return state["samples_seen"] // images_per_micro_batch
