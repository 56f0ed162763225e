"""Sampling where image i always comes from its own generator seeded ``seed + i``.

Image i then depends on neither the batch size nor the device (the generators live on the CPU),
so ``ddpm-sample`` and ``ddpm-evaluate`` give the same images for the same seed however they batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

ClassLabelsFor = Callable[[int, int], "list[int] | None"]


def sample_with_image_seeds(
    pipeline: Any,
    num_images: int,
    *,
    num_inference_steps: int,
    batch_size: int,
    seed: int,
    class_labels_for: ClassLabelsFor | None = None,
    describe_batches: bool = False,
    **call_kwargs: Any,
) -> np.ndarray:
    """``num_images`` samples as float (N, H, W, C) in [0, 1] (the pipeline's ``output_type="np"``).

    Works with any diffusers image pipeline that takes a list of generators. ``class_labels_for(count,
    offset)`` gives the labels of the images offset .. offset + count - 1 (None: unconditional);
    ``describe_batches`` names each batch on the progress bar ("batch 2/3"). ``call_kwargs`` go to
    every pipeline call.
    """
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    batches = []
    num_batches = math.ceil(num_images / batch_size)
    for batch_index, start in enumerate(range(0, num_images, batch_size)):
        count = min(batch_size, num_images - start)
        generators = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(count)]
        if describe_batches:
            pipeline.set_progress_bar_config(desc=f"batch {batch_index + 1}/{num_batches}")
        extra = dict(call_kwargs)
        if class_labels_for is not None:
            extra["class_labels"] = class_labels_for(count, start)
        output = pipeline(
            batch_size=count, generator=generators, num_inference_steps=num_inference_steps, output_type="np", **extra
        )
        batches.append(output.images)
    return np.concatenate(batches)
