"""ddpm-sample's editing options: image-to-image (--image, --strength) and inpainting (--image, --mask).

    ddpm-sample PATH --image digit.png --strength 0.5 --num-images 16 --out edits.png
    ddpm-sample PATH --image digit.png --mask lower-half --num-images 16 --out fills.png

--mask is a named region (``editing.inputs.NAMED_MASKS``) or an image file (white = fill); with
it the command inpaints (ScratchInpaintPipeline, RePaint), without it --image is edited by SDEdit
(ScratchImg2ImgPipeline). The image is edited --num-images times, edit i with a generator seeded
seed + i, as ``ddpm-sample`` seeds its samples. Bad combinations are refused before loading the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image

from ..editing.inputs import NAMED_MASKS, named_mask
from ..sampling.seeded import image_generators
from .args import positive_int

DEFAULT_STRENGTH = 0.8


def add_editing_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("editing (SDEdit image-to-image, RePaint inpainting; docs/editing.md)")
    group.add_argument("--image", default=None, help="an image file to edit instead of sampling from noise")
    group.add_argument(
        "--mask", default=None,
        help=f"inpaint --image: a named region to fill ({', '.join(NAMED_MASKS)}) or a mask image (white = fill)",
    )
    group.add_argument(
        "--strength", type=float, default=None,
        help=f"image-to-image: the fraction of the chain run from --image, in (0, 1] (default {DEFAULT_STRENGTH})",
    )
    group.add_argument(
        "--jump-length", type=positive_int, default=10, help="inpainting: RePaint's jump length j (default 10)"
    )
    group.add_argument(
        "--jump-n-sample", type=positive_int, default=10,
        help="inpainting: RePaint's resampling count r (default 10; 1 = no resampling)",
    )


def check_editing_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse the combinations that cannot mean anything, before any work (ValueError naming the options)."""
    jumps_given = (args.jump_length, args.jump_n_sample) != (parser.get_default("jump_length"),
                                                             parser.get_default("jump_n_sample"))
    if args.image is None:
        for option, given in (("--mask", args.mask is not None), ("--strength", args.strength is not None),
                              ("--jump-length/--jump-n-sample", jumps_given)):
            if given:
                raise ValueError(f"{option} needs --image (the image to edit)")
        return
    if args.mask is not None and args.strength is not None:
        raise ValueError("give --mask (inpainting) or --strength (image-to-image), not both")
    if args.mask is None and jumps_given:
        raise ValueError("--jump-length and --jump-n-sample need --mask (they set RePaint's resampling)")
    if args.strength is not None and not 0 < args.strength <= 1:
        raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
    if args.mask is not None and args.scheduler != "saved":
        raise ValueError("--mask (RePaint) walks the saved DDPM chain; leave --scheduler saved")
    for option, value in (("--image", args.image), ("--mask", args.mask)):
        if value is not None and not (option == "--mask" and value in NAMED_MASKS) and not Path(value).is_file():
            hint = f" nor one of the named masks {', '.join(NAMED_MASKS)}" if option == "--mask" else ""
            raise ValueError(f"{option} {value!r} is not a file{hint}")


def _open_image(path: str, option: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(path) as image:
            return image.copy()
    except OSError as error:  # PIL's UnidentifiedImageError is one
        raise OSError(f"{option} {path!r} is not an image PIL can read: {error}") from error


def edit_images(
    args: argparse.Namespace, pipeline: Any, steps: int, class_labels_for: Callable[[int, int], Any] | None
) -> np.ndarray:
    """--num-images edits of --image as float (N, H, W, C) in [0, 1], in batches of --batch-size."""
    from ..editing import ScratchImg2ImgPipeline, ScratchInpaintPipeline

    image = _open_image(args.image, "--image")
    if args.mask is None:
        editor = ScratchImg2ImgPipeline.from_pipe(pipeline)
        call_kwargs: dict[str, Any] = {"strength": DEFAULT_STRENGTH if args.strength is None else args.strength}
    else:
        editor = ScratchInpaintPipeline.from_pipe(pipeline)
        size = editor.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        mask = named_mask(args.mask, height, width) if args.mask in NAMED_MASKS else _open_image(args.mask, "--mask")
        call_kwargs = {"mask_image": mask, "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample}
    if args.guidance_scale is not None:
        call_kwargs["guidance_scale"] = args.guidance_scale
    editor.set_progress_bar_config(disable=args.no_progress)
    batches = []
    for start in range(0, args.num_images, args.batch_size):
        count = min(args.batch_size, args.num_images - start)
        labels = None if class_labels_for is None else class_labels_for(count, start)
        output = editor([image] * count, generator=image_generators(args.seed, start, count), num_inference_steps=steps,
                        class_labels=labels, output_type="np", **call_kwargs)
        batches.append(output.images)
    return np.concatenate(batches)
