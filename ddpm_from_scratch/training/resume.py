"""Whether a checkpoint can be continued with this run's options, data and model, checked before training.

Options that change what the model computes (its architecture, the noise schedule, what it predicts)
are refused: the saved weights would be trained towards another target. Options that only change
how it is trained from here on (learning rate, batch size, EMA decay, ...) are allowed, with a warning
stating the old and new value. A checkpoint of version 0.1.0 is refused (checkpoint_state.check_loadable).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ddpm_from_scratch.saving.layout import OPTIONS_NAME

from .checkpoint_state import check_loadable, load_checkpoint, read_json, saved_unet
from .checkpoints import (
    list_checkpoints,
    plan_resume,
    read_training_state,
    remove_pipeline_staging_leftovers,
    remove_staging_leftovers,
    set_aside,
)

logger = logging.getLogger(__name__)

# changing these changes what the saved weights mean
MODEL_DEFINING_OPTIONS = ("unet_preset", "resolution", "class_conditional", "prediction_type", "variance_type",
                          "loss_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
# these may change between the run and its continuation; the new value is used from the checkpoint on
ADJUSTABLE_OPTIONS = ("learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2",
                      "adam_weight_decay", "adam_epsilon", "max_grad_norm", "train_batch_size",
                      "gradient_accumulation_steps", "dropout", "lambda_vlb", "class_dropout_prob", "use_ema",
                      "ema_max_decay", "ema_min_decay", "ema_inv_gamma", "ema_power", "random_flip", "center_crop",
                      "dataset_name", "dataset_config_name", "train_data_dir", "split", "image_column",
                      "label_column", "seed", "mixed_precision")
# the UNet config keys that follow from an option (named in the error instead of the key)
CONFIG_KEY_OPTIONS = {"sample_size": "--resolution", "num_class_embeds": "--class_conditional (or the dataset's "
                      "number of classes)", "out_channels": "--variance_type", "in_channels": "the data's channels"}
CONFIG_KEYS_THAT_MAY_CHANGE = ("dropout",)


def check_options(saved: dict[str, Any], options: dict[str, Any], checkpoint: str) -> list[str]:
    """Raise ValueError for changed model-defining options; return a warning per changed adjustable one."""
    refused = [name for name in MODEL_DEFINING_OPTIONS if name in saved and saved.get(name) != options.get(name)]
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
            "from here on" for name in ADJUSTABLE_OPTIONS if name in saved and saved[name] != options.get(name)]


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


def check_architecture(saved_config: dict[str, Any], saved_shapes: dict[str, tuple[int, ...]],
                       model: torch.nn.Module, num_channels: int, checkpoint: str) -> None:
    """Raise ValueError, before any weight is loaded, when the checkpoint's UNet is not this run's."""
    saved_channels = saved_config.get("in_channels")
    if saved_channels != num_channels:
        raise ValueError(
            f"cannot resume from {checkpoint}: its UNet takes {saved_channels}-channel images, the training data "
            f"has {num_channels} channel(s) ({_channel_words(saved_channels)} vs {_channel_words(num_channels)}); "
            "resume on data with the checkpoint's channels, or start a new run in another --output_dir"
        )
    config = dict(model.config)
    changed = [key for key in sorted(set(saved_config) | set(config)) if not key.startswith("_")
               and key not in CONFIG_KEYS_THAT_MAY_CHANGE and _plain(saved_config.get(key)) != _plain(config.get(key))]
    if changed:
        details = "; ".join(f"{key} (set by {CONFIG_KEY_OPTIONS.get(key, 'the UNet preset')}): the checkpoint "
                            f"has {saved_config.get(key)!r}, this run {config.get(key)!r}" for key in changed)
        raise ValueError(f"cannot resume from {checkpoint}: its UNet differs from this run's: {details}; "
                         "start a new run in another --output_dir")
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    mismatched = sorted(key for key in set(expected) | set(saved_shapes) if expected.get(key) != saved_shapes.get(key))
    if mismatched:
        details = ", ".join(f"{key}: {saved_shapes.get(key)} saved, {expected.get(key)} here" for key in mismatched[:5])
        raise ValueError(f"cannot resume from {checkpoint}: its weights do not fit this run's UNet "
                         f"({len(mismatched)} tensors differ, e.g. {details}); start a new run in another --output_dir")


def _channel_words(channels: int) -> str:
    return {1: "grey", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels} channels")


def _plain(value: Any) -> Any:
    """A config value as JSON gives it back (tuples become lists), so saved and built configs compare."""
    return json.loads(json.dumps(value))


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


def restore_checkpoint(path: Path, opts, accelerator, unet, optimizer, lr_scheduler, ema, ema_unet, *,
                       num_channels: int, max_train_steps: int) -> dict[str, Any]:
    """Check the checkpoint against this run (ValueError before any weight is loaded), load it into the
    run's objects (every process), log a WARNING for each change; returns its training_state.json."""
    check_loadable(path)
    state = read_training_state(path)
    for warning in check_options(read_json(path / OPTIONS_NAME), opts.for_model_card(), path.name):
        logger.warning(warning)
    check_run_length(state["global_step"], max_train_steps, path.name, "num_epochs" in opts.explicit)
    model = accelerator.unwrap_model(unet)
    check_architecture(*saved_unet(path), model, num_channels, path.name)
    for warning in load_checkpoint(path, accelerator.process_index, unet=model, optimizer=optimizer,
                                   lr_scheduler=lr_scheduler, ema=ema, ema_unet=ema_unet, grad_scaler=accelerator.scaler):
        logger.warning(warning)
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
