"""From the command line to checked options: apply the preset, then every check that needs no data.

A preset fills every option the user did not give: parsing leaves those options at None, then
`resolve_options` takes the preset's value, then the field's default in `TrainingOptions`. Which
options the user gave explicitly is kept (`TrainingOptions.explicit`) for the conflict checks and the
model card. Each check raises ValueError naming the option and the values it accepts.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path
from typing import Sequence

from ddpm_from_scratch.beta_schedules import check_beta_range
from ddpm_from_scratch.diffusion_math import FAMILY_VARIANCE_TYPES, FIXED_VARIANCE_TYPES, LEARNED_VARIANCE_TYPES

from .command_line import build_parser
from .model import check_unet_config, load_unet_config
from .options import CUSTOM_UNET, DIFFUSERS_ONLY_OPTIONS, PRESETS, TRACKER_PACKAGES, TrainingOptions


def resolve_options(namespace: argparse.Namespace) -> TrainingOptions:
    """Fill what the user left unset from the preset, then from the defaults of TrainingOptions."""
    given = {key: value for key, value in vars(namespace).items() if value is not None}
    values = {"output_dir": f"{given['preset']}-ddpm", **PRESETS[given["preset"]], **given}
    # the data source is --dataset_name or --train_data_dir; the preset's dataset only when neither is given
    if "train_data_dir" in given and "dataset_name" not in given:
        values["dataset_name"] = None
    # diffusers' --eval_batch_size is the number of images in the evaluation grid, all sampled at once
    if "eval_batch_size" in given and "num_grid_images" not in given:
        values["num_grid_images"] = given["eval_batch_size"]
    if "save_images_epochs" in given and "save_images_steps" not in given:
        values["save_images_steps"] = 0
    # a preset's default sampling setting was measured at its own T: another --num_train_timesteps records none
    if "num_train_timesteps" in given and "default_inference_steps" not in given:
        values["default_inference_steps"] = None
        values["default_eta"] = given.get("default_eta")
    if given.get("model_config_name_or_path") is not None:
        values["unet_config"] = load_unet_config(given["model_config_name_or_path"])
        values["unet_preset"] = CUSTOM_UNET
        if "resolution" not in given:
            size = values["unet_config"]["sample_size"]
            values["resolution"] = size if isinstance(size, int) else size[0]
    return TrainingOptions(**values, explicit=frozenset(given) - {"preset"})


def check_options(opts: TrainingOptions) -> None:
    """Every check that needs neither data nor a model: raise ValueError naming the option."""
    explicit = opts.explicit
    for name, instead in DIFFUSERS_ONLY_OPTIONS.items():
        if name in explicit:
            raise ValueError(f"--{name} is an option of diffusers' train_unconditional.py that this trainer does not "
                             f"take: {instead}")
    if not str(opts.output_dir).strip():
        raise ValueError("--output_dir is empty; name the folder to write the pipeline, samples and checkpoints into "
                         "(use --output_dir . for the current folder)")
    if "save_images_epochs" in explicit and opts.save_images_steps:
        raise ValueError("--save_images_epochs and --save_images_steps both given; pass only one (they both set "
                         "when grids are sampled)")
    check_report_to(opts.report_to)
    if opts.dataset_name is not None and opts.train_data_dir is not None:
        raise ValueError("--dataset_name and --train_data_dir both given; pass only one data source")
    if "num_epochs" in explicit and "max_train_steps" in explicit:
        raise ValueError("--num_epochs and --max_train_steps both given; pass only one (they both set the run length)")
    if opts.resume_from_checkpoint is not None and opts.overwrite_output_dir:
        raise ValueError(
            "--resume_from_checkpoint continues the run in --output_dir while --overwrite_output_dir deletes its "
            "checkpoints; pass only one"
        )
    if opts.push_to_hub and not opts.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (the repository to create, e.g. your-name/ddpm-digits)")
    if opts.variance_type in LEARNED_VARIANCE_TYPES and opts.loss_type != "hybrid":
        raise ValueError(
            f"--variance_type {opts.variance_type} needs a loss that trains the variance output: add "
            f"--loss_type hybrid, or use one of {FIXED_VARIANCE_TYPES} with L_simple"
        )
    if opts.loss_type == "hybrid" and opts.variance_type not in LEARNED_VARIANCE_TYPES:
        raise ValueError(
            f"--loss_type hybrid trains a learned variance; add --variance_type learned_range "
            f"(one of {LEARNED_VARIANCE_TYPES}), got {opts.variance_type!r}"
        )
    _require_finite_at_least_zero(opts, "lambda_vlb", "adam_weight_decay")
    if opts.snr_gamma is not None and not (math.isfinite(opts.snr_gamma) and opts.snr_gamma > 0):
        raise ValueError(f"--snr_gamma must be a finite number > 0 (5 in Hang et al. 2023), or left unset for the "
                         f"unweighted loss; got {opts.snr_gamma!r}")
    if opts.num_threads is not None and (isinstance(opts.num_threads, bool) or not isinstance(opts.num_threads, int)
                                         or opts.num_threads < 1):
        raise ValueError(f"--num_threads must be an int >= 1, or left unset for all available cores; got {opts.num_threads!r}")
    for name in ("label_column", "class_dropout_prob"):
        if name in explicit and not opts.class_conditional:
            raise ValueError(f"--{name} is only used with --class_conditional; add it or drop --{name}")

    _require_positive_int(opts, "resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                          "num_train_timesteps", "num_grid_images", "grid_inference_steps", "eval_batch_size",
                          "logging_steps")
    _require_positive_int(opts, "num_epochs", "checkpointing_steps", "checkpoints_total_limit", "save_images_epochs",
                          allow_none=True)
    _require_non_negative_int(opts, "lr_warmup_steps", "save_images_steps", "dataloader_num_workers")
    if opts.grid_inference_steps > opts.num_train_timesteps:
        raise ValueError(
            f"--grid_inference_steps {opts.grid_inference_steps} exceeds --num_train_timesteps "
            f"{opts.num_train_timesteps}; it must be in [1, {opts.num_train_timesteps}]"
        )
    check_default_sampling(opts)
    for name in ("learning_rate", "max_grad_norm", "adam_epsilon", "ema_inv_gamma", "ema_power"):
        value = getattr(opts, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a positive number, got {value!r}")
    for name in ("adam_beta1", "adam_beta2", "ema_max_decay", "ema_min_decay", "dropout", "class_dropout_prob"):
        value = getattr(opts, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {value!r}")
    if opts.ema_min_decay > opts.ema_max_decay:
        raise ValueError(f"--ema_min_decay {opts.ema_min_decay} is above --ema_max_decay {opts.ema_max_decay}")
    try:
        check_beta_range(opts.beta_start, opts.beta_end)  # the scheduler's own rule, so the two never disagree
    except ValueError as error:
        raise ValueError(f"--beta_start/--beta_end: {error}") from None
    if opts.train_data_dir is not None and not Path(opts.train_data_dir).is_dir():
        raise ValueError(f"--train_data_dir {opts.train_data_dir!r} is not a folder")
    if opts.unet_config is not None:
        check_unet_config(opts)


def check_default_sampling(opts: TrainingOptions) -> None:
    """--default_inference_steps in [1, T] or none; --default_eta (finite, >= 0) only with it and a variance the
    DDIM family is defined for: checked now, not when the trained pipeline is saved."""
    steps, eta = opts.default_inference_steps, opts.default_eta
    if steps is not None and not (isinstance(steps, int) and 1 <= steps <= opts.num_train_timesteps):
        raise ValueError(f"--default_inference_steps must be in [1, --num_train_timesteps = {opts.num_train_timesteps}], "
                         f"got {steps!r}")
    if eta is None:
        return
    if steps is None:
        raise ValueError("--default_eta needs --default_inference_steps (the eta is part of that default setting)")
    if not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
        raise ValueError(f"--default_eta must be a number in [0, 1] (0: DDIM, 1: DDPM's posterior), got {eta!r}")
    if opts.variance_type not in FAMILY_VARIANCE_TYPES:
        raise ValueError(f"--default_eta needs a --variance_type the DDIM family is defined for, one of "
                         f"{FAMILY_VARIANCE_TYPES}; got {opts.variance_type!r}")


def _require_finite_at_least_zero(opts: TrainingOptions, *names: str) -> None:
    # inf passes a plain ">= 0" and makes the first update diverge: refuse it here, before any data is read
    for name in names:
        value = getattr(opts, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name} must be a finite number >= 0, got {value!r}")


def check_report_to(report_to: str) -> None:
    """--report_to must name one tracker accelerate knows (installed), or be all / none."""
    if report_to in ("all", "none"):
        return
    package = TRACKER_PACKAGES.get(report_to)
    if package is None:
        raise ValueError(f"--report_to {report_to!r} is not a tracker accelerate knows; use one of "
                         f"{', '.join(TRACKER_PACKAGES)}, all, or none")
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"--report_to {report_to}: the {package} package is not installed (pip install {package}, "
                         "or pass --report_to none)")


def _require_positive_int(opts: TrainingOptions, *names: str, allow_none: bool = False) -> None:
    for name in names:
        value = getattr(opts, name)
        if value is None and allow_none:
            continue
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value!r}")


def _require_non_negative_int(opts: TrainingOptions, *names: str) -> None:
    for name in names:
        value = getattr(opts, name)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"--{name} must be a non-negative integer, got {value!r}")


def parse_options(argv: Sequence[str] | None = None) -> TrainingOptions:
    """Parse, apply the preset, check. Raises ValueError for a bad combination."""
    opts = resolve_options(build_parser().parse_args(argv))
    check_options(opts)
    return opts
