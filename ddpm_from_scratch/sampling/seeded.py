"""THE sampling path of the package's tools: image i always comes from its own generator seeded ``seed + i``.

``ddpm-sample``, ``ddpm-evaluate`` and the trainer's sample grids all call `sample_with_image_seeds`,
and it is the pipeline called with one generator per image::

    pipe(batch_size=n, generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(n)],
         num_inference_steps=steps, output_type="np")

so for one model, seed, step count and variance they all give the same images. Image i depends on
neither the batch size nor the device (the generators live on the CPU).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

ClassLabelsFor = Callable[[int, int], "list[int] | None"]


# the classes a tool samples a class-conditional model with: the null class (its unconditional p(x)), or
# every class in turn (`class_labels_in_turn`)
CLASS_LABEL_CHOICES = ("null", "balanced")


def class_labels_in_turn(num_classes: int) -> ClassLabelsFor:
    """Image i gets class i mod ``num_classes``: one class per column of a grid with ``num_classes``
    columns, and within one of balanced classes in any run of images."""
    return lambda count, offset: [(offset + i) % num_classes for i in range(count)]


def image_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """The CPU generators of images start .. start + count - 1: image i's is seeded ``seed + i``."""
    return [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(count)]


class _ImagesProgress:
    """One tqdm bar over all images of a run (not one per batch), with images/s in its postfix.

    It advances by count / steps images after every denoising step when the pipeline takes
    ``callback_on_step_end``, else by a whole batch when the batch is done.
    """

    def __init__(self, num_images: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=num_images, unit="img", disable=not enabled, desc="sampling",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} images [{elapsed}<{remaining}{postfix}]",
        )
        self.started = time.perf_counter()

    def advance(self, images: float) -> None:
        self.bar.update(images)
        elapsed = time.perf_counter() - self.started
        if elapsed > 0:
            self.bar.set_postfix_str(f"{self.bar.n / elapsed:.3g} images/s", refresh=False)

    def step_callback(self, count: int, steps: int) -> Callable[..., dict[str, Any]]:
        def on_step_end(pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            self.advance(count / steps)
            return callback_kwargs

        return on_step_end

    def close(self) -> None:
        self.bar.close()


@contextmanager
def _pipeline_bar_hidden(pipeline: Any) -> Iterator[None]:
    """Hide the pipeline's own per-call step bar while the one bar runs; restore its settings after."""
    saved = dict(getattr(pipeline, "_progress_bar_config", {}))
    pipeline.set_progress_bar_config(**{**saved, "disable": True})
    try:
        yield
    finally:
        pipeline._progress_bar_config = saved


def _takes_step_callback(pipeline: Any) -> bool:
    return "callback_on_step_end" in inspect.signature(pipeline.__call__).parameters


def sample_with_image_seeds(
    pipeline: Any,
    num_images: int,
    *,
    num_inference_steps: int,
    batch_size: int,
    seed: int,
    class_labels_for: ClassLabelsFor | None = None,
    progress: bool = False,
    **call_kwargs: Any,
) -> np.ndarray:
    """``num_images`` samples as float (N, H, W, C) in [0, 1] (the pipeline's ``output_type="np"``).

    Works with any diffusers image pipeline that takes a list of generators (stock ``DDPMPipeline``
    too). ``class_labels_for(count, offset)`` gives the labels of the images offset .. offset + count - 1
    (None: unconditional). ``progress`` shows one bar over all images with images/s (the pipeline's
    own per-batch bar is hidden meanwhile). ``call_kwargs`` go to every pipeline call.
    """
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    per_step = progress and _takes_step_callback(pipeline) and "callback_on_step_end" not in call_kwargs
    bar = _ImagesProgress(num_images, enabled=progress)
    batches = []
    try:
        with _pipeline_bar_hidden(pipeline):
            for start in range(0, num_images, batch_size):
                count = min(batch_size, num_images - start)
                extra = dict(call_kwargs)
                if class_labels_for is not None:
                    extra["class_labels"] = class_labels_for(count, start)
                if per_step:
                    extra["callback_on_step_end"] = bar.step_callback(count, num_inference_steps)
                output = pipeline(
                    batch_size=count,
                    generator=image_generators(seed, start, count),
                    num_inference_steps=num_inference_steps,
                    output_type="np",
                    **extra,
                )
                batches.append(output.images)
                # the rest of the batch: all of it without per-step updates; float rounding with them
                bar.advance(start + count - bar.bar.n)
    finally:
        bar.close()
    return np.concatenate(batches)
