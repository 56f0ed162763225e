"""The command line of the trainer: argparse options (named as the fields of `TrainingOptions`) and
`options_as_argv`, which turns `fit`'s keywords into the same command line.

Option names follow diffusers' examples/unconditional_image_generation/train_unconditional.py where
one exists (a few of its names are accepted as aliases), so its users can keep their commands. Every
option parses to None when not given, so that the preset can fill it (config.resolve_options).
"""

from __future__ import annotations

import argparse
from typing import Any

from ddpm_from_scratch.beta_schedules import BETA_SCHEDULES
from ddpm_from_scratch.bound.losses import LOSS_TYPES
from ddpm_from_scratch.scheduler import PREDICTION_TYPES, VARIANCE_TYPES

from .options import LR_SCHEDULERS, MIXED_PRECISIONS, PRESETS, TRACKER_PACKAGES


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
    model.add_argument("--snr_gamma", type=float, default=None,
                       help="weight each image's L_simple term by Min-SNR-gamma (Hang et al. 2023): min(SNR_t, gamma) "
                            "on its x_0 error, i.e. min(SNR_t, gamma) / SNR_t on the noise error, min(SNR_t, gamma) on "
                            "x_0's, min(SNR_t, gamma) / (SNR_t + 1) on v's; a finite number > 0, 5 in the paper "
                            "(default: none, the unweighted loss)")
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
    optim.add_argument("--num_threads", type=int, default=None,
                       help="on a CPU: torch threads per process (default: the cores available / processes on this "
                            "machine; replaces the OMP_NUM_THREADS=1 accelerate launch sets)")
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
    logs.add_argument("--default_inference_steps", type=int, default=None,
                      help="sampling steps the saved pipeline records as its default: a call without "
                           "num_inference_steps (and ddpm-sample, ddpm-evaluate) uses them (default: the preset's; "
                           "none: all num_train_timesteps DDPM steps)")
    logs.add_argument("--default_eta", type=float, default=None,
                      help="the DDIM family's eta recorded with --default_inference_steps (0: DDIM; 1 with "
                           "fixed_small: DDPM; default: the preset's; none: the DDPM step)")
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
