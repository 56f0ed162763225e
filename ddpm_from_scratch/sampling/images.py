"""Pixel scalings, grids of sampled images and atomic image writes.

The model works on [-1, 1] (``uint8_to_model_range``: k -> k / 127.5 - 1, the paper's data scaling,
sec. 3.3); the pipeline returns [0, 1] (PIL images, (N, H, W, C) numpy arrays or (N, C, H, W)
tensors, its ``output_type``), which ``unit_range_to_uint8`` rounds back to 8-bit pixels.
``make_image_grid`` takes any of the pipeline's outputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from diffusers.utils import make_image_grid as diffusers_image_grid

from ..saving.atomic_io import atomic_write

ImageBatch = Sequence[PIL.Image.Image] | np.ndarray | torch.Tensor


def uint8_to_model_range(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """8-bit pixels k in 0..255 -> float32 k / 127.5 - 1 in [-1, 1], same shape.

    The data scaling the model trains on (Ho et al. 2020, sec. 3.3); the bins of the discrete
    decoder L_0 are centred on these values.
    """
    if isinstance(pixels, np.ndarray):
        pixels = np.ascontiguousarray(pixels)  # torch cannot wrap negative strides
    return torch.as_tensor(pixels).to(torch.float32) / 127.5 - 1.0


def unit_range_to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (the pipeline's output range) -> the nearest 8-bit value round(255 x), uint8.

    Values outside [0, 1] are clipped first.
    """
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_pil_images(images: ImageBatch) -> list[PIL.Image.Image]:
    """Convert a batch of images to a list of PIL images ('L' for one channel, else 'RGB').

    Arrays are (N, H, W), (N, H, W, C) floats in [0, 1] or uint8; tensors are (N, C, H, W)
    floats in [0, 1] (the pipeline's ``output_type="pt"``).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images: a tensor batch must be (N, C, H, W), got shape {tuple(images.shape)}")
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3:  # (N, H, W): grayscale without a channel axis
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"images: an array batch must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {images.shape}"
            )
        if images.dtype != np.uint8:
            images = unit_range_to_uint8(images)
        if images.shape[-1] == 1:
            return [PIL.Image.fromarray(image[..., 0], mode="L") for image in images]
        return [PIL.Image.fromarray(image) for image in images]
    images = list(images)
    for index, image in enumerate(images):
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(
                f"images[{index}] is a {type(image).__name__}; expected PIL images, an (N, H, W[, C]) numpy "
                "array or an (N, C, H, W) tensor"
            )
    return images


def make_image_grid(
    images: ImageBatch, cols: int | None = None, *, padding: int = 0, scale: int = 1
) -> PIL.Image.Image:
    """Tile ``images`` row by row into one image with diffusers' ``make_image_grid``; any count works.

    What this adds to diffusers' (which takes exactly rows x cols PIL images and returns RGB): any
    of the pipeline's outputs; ``cols`` defaulting to ceil(sqrt(N)) (64 images make 8x8, 10 make
    4 columns x 3 rows), cells past the last image left black; ``padding`` black pixels between
    cells; ``scale``, an integer enlargement with nearest-neighbour resampling (an 8x8 digit is too
    small to see otherwise); and an 'L' grid if every image is grayscale.
    """
    pil_images = to_pil_images(images)
    if not pil_images:
        raise ValueError("images is empty; make_image_grid needs at least one image")
    if cols is not None and (not isinstance(cols, int) or cols < 1):
        raise ValueError(f"cols must be a positive integer or None, got {cols!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    width, height = pil_images[0].size
    for index, image in enumerate(pil_images):
        if image.size != (width, height):
            raise ValueError(
                f"images[{index}] is {image.size[0]}x{image.size[1]} but images[0] is {width}x{height}; "
                "a grid needs images of one size"
            )
    mode = "L" if all(image.mode == "L" for image in pil_images) else "RGB"
    cols = min(cols or math.ceil(math.sqrt(len(pil_images))), len(pil_images))
    rows = math.ceil(len(pil_images) / cols)
    # each cell: the scaled image with `padding` black pixels right and below (cropped off the grid's edge)
    cells = [
        PIL.ImageOps.expand(
            image.convert(mode).resize((width * scale, height * scale), resample=PIL.Image.NEAREST),
            border=(0, 0, padding, padding), fill=0,
        )
        for image in pil_images
    ]
    cells += [PIL.Image.new(mode, cells[0].size, color=0)] * (rows * cols - len(cells))
    grid = diffusers_image_grid(cells, rows=rows, cols=cols)
    return grid.crop((0, 0, grid.width - padding, grid.height - padding)).convert(mode)  # RGB -> L is exact for gray


def save_image_atomic(image: PIL.Image.Image, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write ``image`` to ``path`` atomically (``atomic_io.atomic_write``).

    A crash mid-write leaves the previous file (if any) intact instead of a truncated PNG.
    The format comes from the suffix unless given.
    """
    path = Path(path)
    image_format = format or PIL.Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"cannot tell the image format of {str(path)!r} from its suffix; use e.g. .png")
    with atomic_write(path, "wb") as handle:
        image.save(handle, format=image_format)
    return path
