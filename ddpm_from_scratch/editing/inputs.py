"""What the editing pipelines take in: an image and a mask as PIL, numpy or torch, checked and converted once.

Value ranges are the pipeline's own output ranges, so an output can be fed back in unchanged:
floats in [0, 1] (``output_type="np"``: (H, W, C) or (B, H, W, C); ``"pt"``: (C, H, W) or
(B, C, H, W)), and PIL images or uint8 arrays, read as k / 255. The model works on [-1, 1]
(x = 2 u - 1, the training data scaling). Every check raises before any denoising step.

A mask marks the pixels to fill: 1 (white) = unknown, to be generated; 0 (black) = known, kept
(diffusers' inpainting convention; RePaint's own code uses the opposite). Soft masks are binarised
at 0.5, as diffusers does.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import PIL.Image
import torch

# masks by name, for the command line: the region that is filled
NAMED_MASKS = ("lower-half", "upper-half", "left-half", "right-half", "centre")
_ALLOWED_TYPES = "a PIL image, a list of PIL images, a numpy array or a torch tensor"


def named_mask(name: str, height: int, width: int) -> np.ndarray:
    """The (H, W) float32 mask ``name`` (1 = fill): a half of the image, or the centre square of half its side."""
    mask = np.zeros((height, width), dtype=np.float32)
    if name == "lower-half":
        mask[height // 2:] = 1
    elif name == "upper-half":
        mask[: height // 2] = 1
    elif name == "left-half":
        mask[:, : width // 2] = 1
    elif name == "right-half":
        mask[:, width // 2:] = 1
    elif name == "centre":
        top, left = height // 4, width // 4
        mask[top: top + math.ceil(height / 2), left: left + math.ceil(width / 2)] = 1
    else:
        raise ValueError(f"mask name must be one of {NAMED_MASKS}, got {name!r}")
    return mask


def check_strength(strength: Any, num_inference_steps: int) -> int:
    """The number of denoising steps image-to-image runs: int(strength * num_inference_steps), checked.

    ``strength`` in (0, 1] is the fraction of the chain that is run (diffusers' img2img convention).
    """
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    steps = int(strength * num_inference_steps)
    if steps < 1:
        raise ValueError(
            f"strength={strength} runs int(strength * num_inference_steps) = 0 of the {num_inference_steps} steps; "
            f"use strength >= {1 / num_inference_steps:.3g} or more num_inference_steps"
        )
    return steps


def _pil_to_array(images: list[PIL.Image.Image], name: str, mode: str | None) -> np.ndarray:
    """PIL images -> (B, H, W, C) uint8; ``mode`` ("L", "RGB") converts them, None keeps their channels."""
    arrays = []
    for index, image in enumerate(images):
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"{name}[{index}] is a {type(image).__name__}; a list must hold PIL images only")
        if mode is not None:
            image = image.convert(mode)
        elif image.mode not in ("1", "L", "RGB"):
            image = image.convert("L")
        array = np.asarray(image, dtype=np.uint8) * (255 if image.mode == "1" else 1)
        arrays.append(array[..., None] if array.ndim == 2 else array)
    sizes = {array.shape for array in arrays}
    if len(sizes) > 1:
        raise ValueError(f"{name}: the PIL images must share one size and mode, got shapes {sorted(sizes)}")
    return np.stack(arrays)


def _as_bchw(value: Any, name: str, pil_mode: str | None) -> torch.Tensor:
    """Any accepted input -> float (B, C, H, W) in its own scale ([0, 1], or 0..255 for uint8/PIL, divided here)."""
    if isinstance(value, PIL.Image.Image):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list")
        value = _pil_to_array(list(value), name, pil_mode)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got a numpy array of dtype {value.dtype}")
        if value.ndim == 2:  # (H, W): one grey image
            value = value[None, ..., None]
        elif value.ndim == 3:  # (H, W, C)
            value = value[None]
        if value.ndim != 4:
            raise ValueError(
                f"{name}: a numpy array must be (H, W), (H, W, C) or (B, H, W, C), got shape {value.shape}"
            )
        scale = 255.0 if value.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(value)).permute(0, 3, 1, 2).to(torch.float32) / scale
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            value = value.float()
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point or bool tensor in [0, 1], got dtype {value.dtype}")
        if value.ndim == 2:  # (H, W)
            value = value[None, None]
        elif value.ndim == 3:  # (C, H, W)
            value = value[None]
        if value.ndim != 4:
            raise ValueError(
                f"{name}: a tensor must be (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(value.shape)}"
            )
        return value.detach().to("cpu", torch.float32)
    raise TypeError(f"{name} must be {_ALLOWED_TYPES}, got {type(value).__name__}")


def _check_values(values: torch.Tensor, name: str) -> None:
    if values.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(values.shape)})")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"{name} values must lie in [0, 1] (the pipeline's output range; PIL images and uint8 arrays are "
            f"read as k / 255), got values in [{low:.4g}, {high:.4g}]"
        )


def _check_size(values: torch.Tensor, name: str, height: int, width: int) -> None:
    if tuple(values.shape[-2:]) != (height, width):
        raise ValueError(
            f"{name} is {values.shape[-2]}x{values.shape[-1]} (height x width) but the model makes "
            f"{height}x{width} images; resize it first"
        )


def image_to_model_range(image: Any, channels: int, height: int, width: int) -> torch.Tensor:
    """``image`` as a float32 (B, C, H, W) CPU tensor in the model's range [-1, 1] (x = 2 u - 1).

    PIL images are converted to the model's mode ('L' for one channel, 'RGB' for three); arrays and
    tensors must already have ``channels`` channels.
    """
    pil_mode = {1: "L", 3: "RGB"}.get(channels)
    values = _as_bchw(image, "image", pil_mode)
    if values.shape[1] != channels:
        raise ValueError(
            f"image has {values.shape[1]} channel(s) but the model's UNet takes {channels} "
            f"({'grey' if channels == 1 else 'colour'} images)"
        )
    _check_size(values, "image", height, width)
    _check_values(values, "image")
    return values * 2 - 1


def mask_to_tensor(mask: Any, batch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """``mask_image`` as a bool (1 or B, 1 or C, H, W) CPU tensor, True where pixels are filled (binarised at 0.5).

    A mask has one channel (all channels of a pixel filled together) or the image's ``channels``,
    and one image or ``batch_size``; PIL masks are read as grey ('L'). numpy masks are channel-last like images: (H, W), (H, W, C),
    (B, H, W, C); tensors (H, W), (C, H, W), (B, C, H, W).
    """
    values = _as_bchw(mask, "mask_image", "L")  # a PIL mask is a black-and-white picture whatever its file mode
    if values.shape[1] not in (1, channels):
        raise ValueError(
            f"mask_image has {values.shape[1]} channels; it must have 1 or the image's {channels}"
        )
    if values.shape[0] not in (1, batch_size):
        raise ValueError(f"mask_image holds {values.shape[0]} masks; give 1 or one per image ({batch_size})")
    _check_size(values, "mask_image", height, width)
    _check_values(values, "mask_image")
    return values >= 0.5
