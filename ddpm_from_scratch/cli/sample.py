"""ddpm-sample: sample from a saved pipeline and write a PNG grid.

    ddpm-sample PATH --num-images 64 --out grid.png
    ddpm-sample PATH --num-images 64 --out grid.png --num-inference-steps 250 --seed 0 --device cuda
    ddpm-sample PATH --scheduler ddim --num-inference-steps 50 --out grid.png     # diffusers' DDIMScheduler
    ddpm-sample PATH --image digit.png --mask lower-half --out fills.png     # inpainting (cli/editing.py)
    ddpm-sample PATH --image digit.png --strength 0.5 --out edits.png       # image-to-image

PATH is a folder written by ``save_pretrained``, a training checkpoint folder (checkpoint-N/: its
EMA weights if it has them, else the raw ones) or a Hub repo id. Without ``--num-inference-steps`` a
pipeline samples with the default setting it records (steps and eta), if any, else with all T
steps (``ScratchDDPMPipeline.sampling_setting``). Images come from
``sampling.seeded.sample_with_image_seeds``: image i is drawn with its own generator seeded
``seed + i``, so a grid does not depend on ``--batch-size`` (or the device the noise is drawn on:
generators live on the CPU), and it holds the images ``ddpm-evaluate`` and the trainer's grids draw
for the same seed. One progress bar counts all images (images/s in its postfix; ``--no-progress``
hides it). Every mistake (a missing folder, an unwritable ``--out``, an unavailable device, a bad
value) is one ``ddpm-sample: error: ...`` line and exit status 2, reported before sampling starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import torch

import PIL.Image

from ..sampling.images import make_image_grid, save_image_atomic
from ..sampling.seeded import sample_with_image_seeds
from .editing import add_editing_arguments, check_editing_arguments, edit_images
from .args import (
    SCHEDULER_CHOICES,
    USER_ERRORS,
    VARIANCE_CHOICES,
    check_output_file,
    chosen_scheduler,
    exit_with_error,
    override_variance_type,
    positive_int,
    resolve_device,
    write_output,
)


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
    parser.add_argument(
        "path", help="folder written by save_pretrained, a training checkpoint folder, or a Hub repo id"
    )
    parser.add_argument("--num-images", type=positive_int, default=64, help="images in the grid (default 64)")
    parser.add_argument("--out", default="grid.png", help="output PNG file (default grid.png)")
    parser.add_argument(
        "--num-inference-steps",
        type=positive_int,
        default=None,
        help="denoising steps (default: the pipeline's recorded default setting, else the scheduler's "
        "num_train_timesteps, i.e. full DDPM sampling)",
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
        help="'saved' uses the pipeline's scheduler; 'ddim' swaps in diffusers' DDIMScheduler with the same betas "
        "(stepped with use_clipped_model_output=True)",
    )
    parser.add_argument(
        "--variance-type",
        choices=VARIANCE_CHOICES,
        default="saved",
        help="reverse-process variance (default: the saved scheduler's); as ddpm-evaluate's option",
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
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_editing_arguments(parser)
    return parser


def _labels_for(class_label: int | str | None, count: int, offset: int, num_classes: int | None) -> list[int] | None:
    if class_label is None:
        return None
    if num_classes is None:
        raise ValueError("--class-label was given but the model is unconditional")
    if class_label == "all":
        return [(offset + i) % num_classes for i in range(count)]
    return [int(class_label)] * count


def load_sampling_pipeline(args: argparse.Namespace) -> tuple[object, int | None]:
    """The pipeline ``args`` describe, on its device, and its number of classes (None: unconditional).

    Everything that can be refused without sampling is checked here: the folder, the device, the
    variance, class labels against the model, the step count against the scheduler.
    """
    from ..pipeline import ScratchDDPMPipeline, class_conditioning, class_label_tensors
    from ..saving.folder import load_any_pipeline

    device = resolve_device(args.device)
    pipeline = load_any_pipeline(args.path)  # a stock diffusers pipeline (e.g. DDPMPipeline) samples too
    if not isinstance(pipeline, ScratchDDPMPipeline) and (args.class_label, args.guidance_scale) != (None, None):
        raise ValueError(f"--class-label and --guidance-scale need a ScratchDDPMPipeline, not a {type(pipeline).__name__}")
    pipeline.scheduler = chosen_scheduler(args.scheduler, pipeline.scheduler)
    override_variance_type(pipeline, args.variance_type)
    conditioning = class_conditioning(pipeline.unet)
    num_classes = None if conditioning is None else conditioning[0]
    class_label_tensors(  # labels in range, guidance with labels: refused now, not after loading a batch
        pipeline.unet, _labels_for(args.class_label, 1, 0, num_classes), args.guidance_scale, 1, torch.device("cpu")
    )
    steps, _ = sampling_setting(pipeline, args)
    if isinstance(pipeline, ScratchDDPMPipeline):
        pipeline._set_timesteps(steps, torch.device("cpu"))
    else:
        pipeline.scheduler.set_timesteps(steps)
    return pipeline.to(device), num_classes


def sampling_setting(pipeline: object, args: argparse.Namespace) -> tuple[int, float | None]:
    """(steps, eta) of the run: ``--num-inference-steps``, else the pipeline's recorded default setting
    (``ScratchDDPMPipeline.sampling_setting``), else all T steps. Editing runs the chain of the given step
    count or all T steps (its own defaults)."""
    if args.image is None and hasattr(pipeline, "sampling_setting"):
        return pipeline.sampling_setting(args.num_inference_steps)
    return args.num_inference_steps or pipeline.scheduler.config.num_train_timesteps, None


def sample_grid(args: argparse.Namespace) -> tuple[np.ndarray, int, float | None]:
    """Run the sampler as ``args`` say; returns (images as float (N, H, W, C) in [0, 1], steps, eta)."""
    pipeline, num_classes = load_sampling_pipeline(args)
    steps, eta = sampling_setting(pipeline, args)
    labels_for = None if args.class_label is None else (
        lambda count, offset: _labels_for(args.class_label, count, offset, num_classes))
    if args.image is not None:
        return edit_images(args, pipeline, steps, labels_for), steps, None
    images = sample_with_image_seeds(
        pipeline,
        args.num_images,
        num_inference_steps=steps,
        batch_size=args.batch_size,
        seed=args.seed,
        class_labels_for=labels_for,
        progress=not args.no_progress,
        **({} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}),
        **({} if eta is None else {"eta": eta}),
    )
    return images, steps, eta


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_editing_arguments(args, parser)
        out = check_output_file(args.out, "--out", tuple(PIL.Image.registered_extensions()))
        images, steps, eta = sample_grid(args)
        height = images.shape[1]
        scale = args.scale or max(1, math.ceil(32 / height))
        grid = make_image_grid(images, cols=args.cols, scale=scale)
        write_output(lambda path: save_image_atomic(grid, path), out, "--out")
    except USER_ERRORS as error:
        exit_with_error(parser, error)
    setting = f"{steps} denoising steps" + ("" if eta is None else f", eta {eta:g}")
    print(f"wrote {args.out}: {len(images)} images, {grid.size[0]}x{grid.size[1]} px, {setting}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
