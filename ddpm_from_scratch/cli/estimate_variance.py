"""ddpm-estimate-variance: estimate the statistics of the analytic variances and store them in a saved pipeline.

    ddpm-estimate-variance PATH --num-images 1000
    ddpm-estimate-variance PATH --num-images 1000 --num-timesteps 100 --set-default
    ddpm-estimate-variance PATH --num-images 1000 --set-default analytic_model_error

Gamma_t = E ||eps_theta(x_t, t)||^2 / d (A3 in docs/derivation.md) and Delta_t = E ||eps - eps_theta||^2 / d
(D4) are estimated from the same model calls on training images (``--dataset builtin:digits``: the
digits' training split, as the trainer splits it) and written into PATH/scheduler/scheduler_config.json
as ``analytic_eps_sq_mean`` and ``analytic_eps_error_sq_mean`` (atomically). The saved sampler is
unchanged unless ``--set-default`` also sets ``variance_type`` ("analytic", or "analytic_model_error");
otherwise choose it when loading:
``ScratchDDPMScheduler.from_config(pipe.scheduler.config, variance_type="analytic_model_error")``.
A class-conditional model is estimated as the unconditional model p(x) (the null class), as
``ddpm-evaluate`` measures it.

``--out DIR`` leaves PATH as it is and writes a pipeline with the estimate to the new folder DIR
instead. A training checkpoint is never modified (its manifest records the scheduler config, so an
edit would make the run refuse to resume from it): on a checkpoint ``--out`` is required.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import torch

from ..saving.atomic_io import write_json_atomic
from .args import check_new_folder, int_at_least, positive_int, resolve_device

DATASETS = ("builtin:digits",)
VARIANCE_CHOICES = ("analytic", "analytic_model_error")
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
OUR_SCHEDULER = "ScratchDDPMScheduler"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-estimate-variance",
        description="Estimate Gamma_t = E||eps_theta(x_t, t)||^2 / d on training images and store it in a saved "
        "pipeline's scheduler config, for variance_type='analytic' (Bao et al. 2022, Analytic-DPM).",
    )
    parser.add_argument("path", help="a local folder written by save_pretrained (or a training checkpoint folder)")
    parser.add_argument("--num-images", type=positive_int, required=True,
                        help="training images in the Monte-Carlo average (each noised once per timestep)")
    parser.add_argument("--dataset", default="builtin:digits",
                        help=f"where the training images come from, one of {DATASETS} (default builtin:digits)")
    parser.add_argument("--num-timesteps", type=int_at_least(2), default=None,
                        help="evaluate this many evenly spaced timesteps and interpolate between them "
                        "(default: all num_train_timesteps)")
    parser.add_argument("--batch-size", type=positive_int, default=512, help="noised images per model call (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset and the noise (default 0)")
    parser.add_argument("--device", default="auto", help="torch device, e.g. cpu, cuda (default: cuda if available)")
    parser.add_argument("--out", default=None,
                        help="save a pipeline with the estimate to this new (or empty) folder and leave PATH as it is "
                        "(required when PATH is a training checkpoint)")
    parser.add_argument("--set-default", nargs="?", const="analytic", default=None, choices=VARIANCE_CHOICES,
                        help="also set the saved scheduler's variance_type: 'analytic' (the default of the flag) or "
                        "'analytic_model_error'")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def training_images(dataset: str, num_images: int, seed: int) -> torch.Tensor:
    """``num_images`` training images in [-1, 1], (N, 1, 8, 8), a seeded random subset of the training split."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
    from ..digits.data import digits_as_uint8, split_indices
    from ..sampling.images import uint8_to_model_range

    images, labels = digits_as_uint8()
    train, _ = split_indices(labels)
    if num_images > len(train):
        raise ValueError(f"--num-images must be at most {len(train)} (the digits' training split), got {num_images}")
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:num_images]
    return uint8_to_model_range(images[train[chosen.numpy()]]).unsqueeze(1)


def scheduler_config_file(path: str) -> Path:
    folder = Path(path).expanduser()
    config_file = folder / SCHEDULER_CONFIG
    if not config_file.is_file():
        raise ValueError(
            f"{folder} has no {SCHEDULER_CONFIG}: pass a local folder written by save_pretrained "
            "(download a Hub pipeline with save_pretrained first)"
        )
    return config_file


def estimate(args: argparse.Namespace) -> tuple[Path, dict]:
    """Run the estimate as ``args`` say and write it; returns (config file, summary)."""
    from ..bound.analytic_variance import estimate_eps_sq_mean
    from ..digits.evaluation import unconditional_model_kwargs
    from ..saving.folder import is_training_checkpoint, load_any_pipeline

    config_file = scheduler_config_file(args.path)
    out = None if args.out is None else check_new_folder(args.out, "--out")
    if out is None and is_training_checkpoint(config_file.parent.parent):
        raise ValueError(
            f"{args.path} is a training checkpoint, which this command does not modify (its manifest would no "
            "longer match and the run could not resume from it): pass --out DIR to save a pipeline with the estimate"
        )
    saved = json.loads(config_file.read_text())
    if args.set_default and saved.get("_class_name") != OUR_SCHEDULER:
        raise ValueError(
            f"--set-default needs a saved {OUR_SCHEDULER}; this folder's scheduler is {saved.get('_class_name')!r}, "
            f"which would ignore variance_type={args.set_default!r}"
        )
    device = resolve_device(args.device)
    pipeline = load_any_pipeline(args.path)
    pipeline.to(device)
    unet = pipeline.unet
    images = training_images(args.dataset, args.num_images, args.seed).to(device=device, dtype=unet.dtype)
    if (unet.config.in_channels, unet.config.sample_size) not in ((1, 8), (1, (8, 8)), (1, [8, 8])):
        raise ValueError(
            f"{args.dataset} has 1x8x8 images; this UNet takes {unet.config.in_channels} channels of size "
            f"{unet.config.sample_size}"
        )
    result = estimate_eps_sq_mean(
        unet,
        pipeline.scheduler,
        images,
        num_timesteps_sampled=args.num_timesteps,
        batch_size=args.batch_size,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        model_kwargs=unconditional_model_kwargs(unet, len(images), device),
        progress=not args.no_progress,
    )
    saved.update(result.scheduler_config())
    if args.set_default:
        saved["variance_type"] = args.set_default
    if out is not None:  # the loaded pipeline (a checkpoint's: its EMA UNet) saved anew, then its config edited
        pipeline.to("cpu").save_pretrained(out, safe_serialization=True)
        config_file = out / SCHEDULER_CONFIG
    write_json_atomic(saved, config_file)
    shipped = config_file.parent / "scheduler.py"
    if shipped.is_file() and "analytic_eps_sq_mean" not in shipped.read_text():
        print(
            f"warning: {shipped} (the code loaded with trust_remote_code=True) predates the analytic variance "
            "and ignores the statistic; re-save the pipeline with this package to update it"
        )
    summary = {
        "num_images": result.num_images,
        "num_timesteps_evaluated": len(result.timesteps),
        "min": float(result.eps_sq_mean.min()),
        "max": float(result.eps_sq_mean.max()),
        "max_standard_error": float(max(result.standard_error.max(), result.error_standard_error.max())),
        "error_min": float(result.eps_error_sq_mean.min()),
        "error_max": float(result.eps_error_sq_mean.max()),
    }
    return config_file, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config_file, summary = estimate(args)
    except (ValueError, OSError) as error:
        parser.exit(1, f"ddpm-estimate-variance: error: {error}\n")
    print(
        f"wrote analytic_eps_sq_mean and analytic_eps_error_sq_mean to {config_file}: "
        f"Gamma_t in [{summary['min']:.4f}, {summary['max']:.4f}], "
        f"Delta_t in [{summary['error_min']:.4f}, {summary['error_max']:.4f}] "
        f"from {summary['num_images']} images at {summary['num_timesteps_evaluated']} timesteps "
        f"(largest standard error {summary['max_standard_error']:.2g})"
        + (f"; variance_type is now {args.set_default!r}" if args.set_default else
           "; use them with variance_type='analytic' or 'analytic_model_error' (or rerun with --set-default)")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
