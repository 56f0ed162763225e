"""ddpm-sample: sample from a saved pipeline and write a PNG grid.

    ddpm-sample PATH --num-images 64 --out grid.png
    ddpm-sample PATH --num-images 64 --out grid.png --num-inference-steps 250 --seed 0 --device cuda

PATH is a folder written by ``save_pretrained`` or a Hub repo id. Image i is drawn with its own
generator seeded ``seed + i``, so a grid does not depend on ``--batch-size`` (or the device the noise
is drawn on: generators live on the CPU). diffusers' progress bar shows each batch's denoising steps.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np

from ..image_utils import make_image_grid, save_image_atomic
from ..seeded_sampling import sample_with_image_seeds
from .args import positive_int, resolve_device

SCHEDULER_CHOICES = ("saved", "ddim")


def _class_label(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a class index or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a class index >= 0 or 'all', got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-sample",
        description="Sample images from a saved ScratchDDPMPipeline and write them as a PNG grid.",
    )
    parser.add_argument("path", help="folder written by save_pretrained, or a Hub repo id")
    parser.add_argument("--num-images", type=positive_int, default=64, help="images in the grid (default 64)")
    parser.add_argument("--out", default="grid.png", help="output PNG file (default grid.png)")
    parser.add_argument(
        "--num-inference-steps",
        type=positive_int,
        default=None,
        help="denoising steps (default: the scheduler's num_train_timesteps, i.e. full DDPM sampling)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses a generator seeded seed + i (default 0)")
    parser.add_argument(
        "--device", default="auto", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULER_CHOICES,
        default="saved",
        help="'saved' uses the pipeline's scheduler; 'ddim' swaps in diffusers' DDIMScheduler with the same betas",
    )
    parser.add_argument(
        "--class-label",
        type=_class_label,
        default=None,
        help="class-conditional models: a class index for every image, or 'all' to cycle through the classes "
        "(default: unconditional samples)",
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="classifier-free guidance weight (needs --class-label)"
    )
    parser.add_argument(
        "--cols", type=positive_int, default=None, help="grid columns (default: ceil(sqrt(num images)))"
    )
    parser.add_argument(
        "--scale",
        type=positive_int,
        default=None,
        help="enlarge each image by this integer factor (default: enough to make cells >= 32 px)",
    )
    return parser


def _labels_for(class_label: int | str | None, count: int, offset: int, num_classes: int | None) -> list[int] | None:
    if class_label is None:
        return None
    if num_classes is None:
        raise ValueError("--class-label was given but the model is unconditional")
    if class_label == "all":
        return [(offset + i) % num_classes for i in range(count)]
    return [int(class_label)] * count


def sample_grid(args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """Run the sampler as ``args`` say; returns (images as float (N, H, W, C) in [0, 1], steps)."""
    from ..pipeline import ScratchDDPMPipeline, class_conditioning

    pipeline = ScratchDDPMPipeline.from_pretrained(args.path)
    if args.scheduler == "ddim":
        from diffusers import DDIMScheduler

        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.to(resolve_device(args.device))
    conditioning = class_conditioning(pipeline.unet)
    num_classes = None if conditioning is None else conditioning[0]
    steps = args.num_inference_steps or pipeline.scheduler.config.num_train_timesteps
    images = sample_with_image_seeds(
        pipeline,
        args.num_images,
        num_inference_steps=steps,
        batch_size=args.batch_size,
        seed=args.seed,
        class_labels_for=lambda count, offset: _labels_for(args.class_label, count, offset, num_classes),
        describe_batches=True,
        guidance_scale=args.guidance_scale,
    )
    return images, steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        images, steps = sample_grid(args)
        height = images.shape[1]
        scale = args.scale or max(1, math.ceil(32 / height))
        grid = make_image_grid(images, cols=args.cols, scale=scale)
        out = save_image_atomic(grid, args.out)
    except (ValueError, OSError) as error:
        parser.exit(1, f"ddpm-sample: error: {error}\n")
    print(f"wrote {out}: {len(images)} images, {grid.size[0]}x{grid.size[1]} px, {steps} denoising steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
