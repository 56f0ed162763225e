"""Command line of training/train.py: options, presets, and the checks that need no data.

Option names follow diffusers' examples/unconditional_image_generation/train_unconditional.py where
one exists (a few of its names are accepted as aliases), so its users can keep their commands.

A preset fills every option the user did not give: parsing leaves those options at None, then
`resolve_options` takes the preset's value, then the global default. Which options the user gave
explicitly is kept (`TrainingOptions.explicit`) for the conflict checks and the model card.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ddpm_from_scratch.beta_schedules import BETA_SCHEDULES, check_beta_range
from ddpm_from_scratch.diffusion_math import FIXED_VARIANCE_TYPES, LEARNED_VARIANCE_TYPES
from ddpm_from_scratch.bound.losses import LOSS_TYPES
from ddpm_from_scratch.scheduler import PREDICTION_TYPES, VARIANCE_TYPES

# Options a preset may set. Anything not listed here has one global default (GLOBAL_DEFAULTS).
PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train on a 2-core CPU in well under 10 minutes, sampling included; the
    # numbers were picked by measurement (docs/training.md, "Presets").
    "digits": dict(
        unet_preset="digits",
        dataset_name="builtin:digits",
        resolution=8,
        random_flip=False,  # a mirrored 2 is not a digit
        train_batch_size=64,
        learning_rate=1e-3,
        lr_warmup_steps=100,
        max_train_steps=2500,
        ema_max_decay=0.999,
        ema_power=0.75,
        dropout=0.0,
        checkpointing_steps=500,
        checkpoints_total_limit=2,
        save_images_steps=0,  # only the final grid by default
        num_grid_images=100,
        # 50 strided steps with the fixed_small variance: within the noise of 1000-step sampling at
        # N = 360 and 1,000 digits in under 30 s on 2 cores (docs/experiments.md, "the trade-off")
        grid_inference_steps=50,
        logging_steps=10,
        dataloader_num_workers=0,
    ),
    # Ho et al. 2020, appendix B: batch 128, Adam lr 2e-4, 5000 warmup steps, dropout 0.1,
    # EMA 0.9999, random horizontal flips, 800k steps, grad clip 1.0.
    "cifar10": dict(
        unet_preset="cifar10",
        dataset_name="uoft-cs/cifar10",
        resolution=32,
        random_flip=True,
        train_batch_size=128,
        learning_rate=2e-4,
        lr_warmup_steps=5000,
        max_train_steps=800_000,
        ema_max_decay=0.9999,
        ema_power=2 / 3,
        dropout=0.1,
        checkpointing_steps=10_000,
        checkpoints_total_limit=3,
        save_images_steps=10_000,
        num_grid_images=64,
        grid_inference_steps=1000,
        logging_steps=50,
        dataloader_num_workers=4,
    ),
}

GLOBAL_DEFAULTS: dict[str, Any] = dict(
    center_crop=True,
    split="train",
    gradient_accumulation_steps=1,
    lr_scheduler="constant_with_warmup",
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_weight_decay=0.0,
    adam_epsilon=1e-8,
    max_grad_norm=1.0,
    use_ema=True,
    ema_inv_gamma=1.0,
    ema_min_decay=0.0,
    seed=0,
    prediction_type="epsilon",
    variance_type="fixed_small",
    loss_type="simple",
    lambda_vlb=0.001,
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    report_to="tensorboard",
    eval_batch_size=128,
    class_conditional=False,
    class_dropout_prob=0.1,
    gradient_checkpointing=False,
    overwrite_output_dir=False,
    push_to_hub=False,
    hub_private_repo=False,
)

# diffusers.optimization.get_scheduler's names that need no extra option
LR_SCHEDULERS = ("constant_with_warmup", "constant", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
BUILTIN_DIGITS = "builtin:digits"
# the unet_preset of a run whose UNet comes from --model_config_name_or_path
CUSTOM_UNET = "custom"
# the trackers accelerate's `log_with` knows, and the package each one needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}

# options of diffusers' train_unconditional.py this trainer refuses, with what to use instead
DIFFUSERS_ONLY_OPTIONS = {
    "save_model_epochs": "this trainer saves the pipeline once, at the end, and the full training state every "
                         "--checkpointing_steps updates (load one with ddpm-sample CHECKPOINT or "
                         "ScratchUNet2DModel.from_pretrained(CHECKPOINT, subfolder='unet_ema')); use --checkpointing_steps",
    "enable_xformers_memory_efficient_attention": "ScratchUNet2DModel's attention already calls "
                         "torch.nn.functional.scaled_dot_product_attention, which picks the memory-efficient kernels "
                         "itself; drop the option",
}


@dataclass
class TrainingOptions:
    """All options after the preset and the defaults are applied (attribute access like argparse's)."""

    values: dict[str, Any]
    explicit: frozenset[str] = field(default_factory=frozenset)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def output_path(self) -> Path:
        return Path(self.values["output_dir"])

    @property
    def logging_path(self) -> Path:
        """--logging_dir, relative to --output_dir as in diffusers' scripts (an absolute path stays as it is)."""
        return self.output_path / (self.values["logging_dir"] or "logs")

    def for_model_card(self) -> dict[str, Any]:
        """The options worth recording with the model (no token, no local paths that mean nothing elsewhere)."""
        hidden = {"hub_token", "output_dir", "logging_dir", "cache_dir", "resume_from_checkpoint", "overwrite_output_dir",
                  "model_config_name_or_path", "unet_config", "local_rank", *DIFFUSERS_ONLY_OPTIONS}
        return {key: value for key, value in sorted(self.values.items()) if key not in hidden}


class OptionParser(argparse.ArgumentParser):
    """argparse, with its errors (unknown option, bad choice or type) raised as ValueError instead of
    printed with the usage and exiting, so the command line reports them like every other input error."""

    def error(self, message: str):
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        prog="train.py",
        description="Train a DDPM (ScratchUNet2DModel + ScratchDDPMScheduler) and save a ScratchDDPMPipeline.",
        epilog="presets (every option not given on the command line comes from the preset):\n"
        + "\n".join(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in preset.items()) for name, preset in PRESETS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bool_flag = argparse.BooleanOptionalAction
    parser.add_argument("--preset", choices=sorted(PRESETS), default="digits",
                        help="recipe filling every option not given: 'digits' (CPU, minutes) or 'cifar10' (the paper's)")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None,
                      help="a Hub dataset (e.g. uoft-cs/cifar10), or builtin:digits (scikit-learn's digits, no "
                           "download); default: the preset's (digits: builtin:digits, cifar10: uoft-cs/cifar10)")
    data.add_argument("--dataset_config_name", default=None, help="the Hub dataset's configuration")
    data.add_argument("--train_data_dir", default=None,
                      help="a local folder of images (read with datasets' 'imagefolder'; sub-folders become labels)")
    data.add_argument("--split", default=None, help="dataset split to train on (default: train)")
    data.add_argument("--cache_dir", default=None, help="datasets cache folder")
    data.add_argument("--image_column", default=None, help="column holding the images (default: auto-detected)")
    data.add_argument("--label_column", default=None,
                      help="column holding class labels, read with --class_conditional (default: auto-detected)")
    data.add_argument("--class_conditional", action="store_true", default=None,
                      help="train a class-conditional model on the dataset's labels")
    data.add_argument("--class_dropout_prob", type=float, default=None,
                      help="with --class_conditional: fraction of labels replaced by the null class, so the "
                           "model also learns the unconditional score (classifier-free guidance)")
    data.add_argument("--resolution", type=int, default=None, help="training image size (square)")
    data.add_argument("--center_crop", action=bool_flag, default=None,
                      help="resize the shorter side to --resolution and crop the centre; with --no-center_crop "
                           "images are resized to resolution x resolution (aspect ratio not kept)")
    data.add_argument("--random_flip", action=bool_flag, default=None, help="random horizontal flips")
    data.add_argument("--dataloader_num_workers", type=int, default=None, help="data loading worker processes")

    model = parser.add_argument_group("model and diffusion")
    model.add_argument("--model_config_name_or_path", default=None,
                       help="build the UNet from this config instead of the preset's: a config.json, a folder holding "
                            "one (or unet/config.json), or a Hub id; a ScratchUNet2DModel config, or a diffusers "
                            "UNet2DModel config in the DDPM layout (converted). Its sample_size is the default "
                            "--resolution and its in_channels (1 or 3) the training channels")
    model.add_argument("--dropout", type=float, default=None,
                       help="dropout inside the UNet's residual blocks (default: the preset's or the model config's)")
    model.add_argument("--prediction_type", choices=PREDICTION_TYPES, default=None,
                       help="what the network predicts: the noise (paper), x_0, or v")
    model.add_argument("--variance_type", choices=VARIANCE_TYPES, default=None,
                       help="reverse-process variance written to the scheduler config (used when sampling)")
    model.add_argument("--loss_type", choices=LOSS_TYPES, default=None,
                       help="simple: L_simple (the paper); hybrid: L_simple + lambda_vlb * L_vlb (Nichol & Dhariwal "
                            "2021), which also trains a learned variance (needs --variance_type learned_range)")
    model.add_argument("--lambda_vlb", type=float, default=None, help="weight of L_vlb in the hybrid loss")
    model.add_argument("--num_train_timesteps", "--ddpm_num_steps", type=int, default=None, help="T")
    model.add_argument("--beta_schedule", "--ddpm_beta_schedule", choices=BETA_SCHEDULES, default=None)
    model.add_argument("--beta_start", type=float, default=None)
    model.add_argument("--beta_end", type=float, default=None)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=None, help="images per process per micro-batch")
    optim.add_argument("--max_train_steps", type=int, default=None, help="optimizer updates in total")
    optim.add_argument("--num_epochs", type=int, default=None,
                       help="train for this many passes over the data instead of --max_train_steps")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=None,
                       help="micro-batches per optimizer update")
    optim.add_argument("--learning_rate", type=float, default=None)
    optim.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default=None)
    optim.add_argument("--lr_warmup_steps", type=int, default=None, help="linear warmup, in optimizer updates")
    optim.add_argument("--adam_beta1", type=float, default=None)
    optim.add_argument("--adam_beta2", type=float, default=None)
    optim.add_argument("--adam_weight_decay", type=float, default=None)
    optim.add_argument("--adam_epsilon", type=float, default=None)
    optim.add_argument("--max_grad_norm", type=float, default=None, help="gradient clipping (global L2 norm)")
    optim.add_argument("--use_ema", action=bool_flag, default=None, help="keep an EMA of the weights and save it")
    optim.add_argument("--ema_max_decay", type=float, default=None)
    optim.add_argument("--ema_min_decay", type=float, default=None)
    optim.add_argument("--ema_inv_gamma", type=float, default=None)
    optim.add_argument("--ema_power", type=float, default=None,
                       help="EMA warmup: decay = 1 - (1 + step/inv_gamma)^-power, capped at --ema_max_decay")
    optim.add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default=None,
                       help="default: the accelerate config's; the forward process is always float32")
    optim.add_argument("--gradient_checkpointing", action="store_true", default=None,
                       help="recompute activations in the backward pass to save memory")
    optim.add_argument("--seed", type=int, default=None)

    ckpt = parser.add_argument_group("checkpoints and outputs")
    ckpt.add_argument("--output_dir", default=None,
                      help="where the pipeline, samples, logs and checkpoints go (default: <preset>-ddpm); a folder "
                           "holding files this trainer did not write (e.g. your own README.md) needs --overwrite_output_dir")
    ckpt.add_argument("--overwrite_output_dir", action="store_true", default=None,
                      help="start a new run in an output_dir that holds checkpoints (they are deleted) or files this "
                           "trainer would overwrite")
    ckpt.add_argument("--checkpointing_steps", type=int, default=None, help="save a checkpoint every N updates")
    ckpt.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most N checkpoints")
    ckpt.add_argument("--resume_from_checkpoint", default=None,
                      help="'latest' (newest valid checkpoint in output_dir; a fresh start if there is none) "
                           "or a checkpoint folder")

    logs = parser.add_argument_group("logging and samples")
    logs.add_argument("--report_to", "--logger", default=None,
                      help=f"tracker: {', '.join(TRACKER_PACKAGES)}, all (every one installed), or none "
                           "(default: tensorboard); loss, learning rate and sample grids go to it")
    logs.add_argument("--logging_dir", default=None,
                      help="tracker folder, relative to --output_dir (default: logs)")
    logs.add_argument("--logging_steps", type=int, default=None, help="average and log the loss every N updates")
    logs.add_argument("--save_images_steps", type=int, default=None,
                      help="sample a grid from the EMA weights every N updates (0: only at the end)")
    logs.add_argument("--save_images_epochs", type=int, default=None,
                      help="sample a grid after every N-th epoch instead (diffusers' option)")
    logs.add_argument("--num_grid_images", type=int, default=None,
                      help="images in each sample grid (default: the preset's, or --eval_batch_size when only that is given)")
    logs.add_argument("--grid_inference_steps", "--ddpm_num_inference_steps", type=int, default=None,
                      help="sampling steps for the grids")
    logs.add_argument("--eval_batch_size", type=int, default=None,
                      help="images sampled at once for the grids; given alone it is also the grid size, as in "
                           "diffusers' train_unconditional.py")

    diffusers_only = parser.add_argument_group("diffusers train_unconditional.py options with no counterpart here")
    diffusers_only.add_argument("--save_model_epochs", type=int, default=None, help="use --checkpointing_steps")
    diffusers_only.add_argument("--enable_xformers_memory_efficient_attention", action="store_true", default=None,
                                help="not needed: the UNet uses torch's scaled_dot_product_attention")
    diffusers_only.add_argument("--local_rank", type=int, default=None,
                                help="accepted and ignored: accelerate and torchrun pass the rank in LOCAL_RANK")

    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push_to_hub", action="store_true", default=None,
                     help="upload the final EMA pipeline with its model card (never the checkpoints)")
    hub.add_argument("--hub_model_id", default=None, help="repository to push to, e.g. you/ddpm-digits")
    hub.add_argument("--hub_token", default=None, help="token (default: the one `hf auth login` stored)")
    hub.add_argument("--hub_private_repo", action="store_true", default=None)
    return parser


def resolve_options(namespace: argparse.Namespace) -> TrainingOptions:
    """Fill what the user left unset from the preset, then from GLOBAL_DEFAULTS."""
    given = {key: value for key, value in vars(namespace).items() if value is not None}
    preset = PRESETS[given["preset"]]
    values = {key: None for key in vars(namespace)}
    values.update({**GLOBAL_DEFAULTS, **preset, **given})
    if values["output_dir"] is None:
        values["output_dir"] = f"{given['preset']}-ddpm"
    # the data source is --dataset_name or --train_data_dir; the preset's dataset only when neither is given
    if "train_data_dir" in given and "dataset_name" not in given:
        values["dataset_name"] = None
    # diffusers' --eval_batch_size is the number of images in the evaluation grid, all sampled at once
    if "eval_batch_size" in given and "num_grid_images" not in given:
        values["num_grid_images"] = given["eval_batch_size"]
    if "save_images_epochs" in given and "save_images_steps" not in given:
        values["save_images_steps"] = 0
    values["unet_config"] = None
    if given.get("model_config_name_or_path") is not None:
        from ddpm_from_scratch.training.components import load_unet_config

        values["unet_config"] = load_unet_config(given["model_config_name_or_path"])
        values["unet_preset"] = CUSTOM_UNET
        if "resolution" not in given:
            size = values["unet_config"]["sample_size"]
            values["resolution"] = size if isinstance(size, int) else size[0]
    return TrainingOptions(values=values, explicit=frozenset(given) - {"preset"})


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
        from ddpm_from_scratch.training.components import check_unet_config

        check_unet_config(opts)


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
    import importlib.util

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


def options_as_argv(**options: Any) -> list[str]:
    """Keyword options (option names without the dashes) as the command line that gives them.

    True sets a flag, False clears a --[no-]flag (and leaves a plain flag unset), None leaves the option
    to the preset. An unknown name is a ValueError listing the known ones.
    """
    actions = {action.dest: action for action in build_parser()._actions if action.option_strings}
    argv = []
    for name, value in options.items():
        action = actions.get(name)
        if action is None or name == "help":
            raise ValueError(f"unknown training option {name!r}; options: {', '.join(sorted(set(actions) - {'help'}))}")
        flag = f"--{name}"
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else f"--no-{name}")
        elif action.nargs == 0:  # a plain flag
            if not isinstance(value, bool):
                raise ValueError(f"training option {name!r} is a flag: pass True or False, got {value!r}")
            if value:
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def parse_options(argv: Sequence[str] | None = None) -> TrainingOptions:
    """Parse, apply the preset, check. Raises ValueError for a bad combination."""
    opts = resolve_options(build_parser().parse_args(argv))
    check_options(opts)
    return opts


# ---- the output folder -----------------------------------------------------------------------

# what a run writes at the top of --output_dir, besides the pipeline's code files and the logging folder
RUN_OUTPUT_NAMES = ("model_index.json", "unet", "scheduler", "README.md", "sample_grid.png", "samples",
                    "loss_curve.png", "metrics.json", "checkpoints")


def run_output_names(opts: TrainingOptions) -> list[str]:
    """Top-level names of --output_dir that a run writes (files it may overwrite)."""
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
    from ddpm_from_scratch.saving.shipped_code import class_source_file, code_closure, top_level_package

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


def is_previous_run(folder: Path) -> bool:
    """True if `folder` holds a pipeline or checkpoints this trainer wrote."""
    import json

    index = folder / "model_index.json"
    if index.is_file():
        try:
            return "ScratchDDPMPipeline" in str(json.loads(index.read_text()).get("_class_name"))
        except (OSError, ValueError, AttributeError):
            return False
    return any((folder / "checkpoints").glob("checkpoint-*"))


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
    import os

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
