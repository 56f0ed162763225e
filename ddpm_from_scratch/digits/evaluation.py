"""The NLL bound and the sample quality of a saved digits pipeline, in one report (``ddpm-evaluate``).

* the variational bound on -log p(x_0) of the held-out digits in bits/dim (``likelihood``: all T
  terms, exact per-timestep loop; the test split of ``load_digits_dataset``, uint8 -> [-1, 1]);
* the sample-quality figures (:mod:`.quality`) of generated digits beside the same figures for
  real held-out digits, with the number of samples and sampling steps.

Samples come from ``sampling.seeded.sample_with_image_seeds`` (sample i from a generator seeded
``seed + i``: the images ``ddpm-sample`` and the trainer's grids give for the same seed), the bound's
x_t draws from one generator seeded ``seed``: the figures do not depend on the batch size. Without a
step count, the samples use the pipeline's recorded default setting (steps and eta), if any, else
all T steps (``ScratchDDPMPipeline.sampling_setting``). A stock diffusers ``DDIMPipeline`` is called
with ``use_clipped_model_output=True``, as our pipeline steps ``DDIMScheduler``.
A pipeline saved by stock diffusers (e.g. ``DDPMPipeline``) is evaluated by the same code, and a
training checkpoint folder (its EMA weights if it has them) too.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..conditioning import class_conditioning, class_label_tensors
from ..sampling.images import uint8_to_model_range, unit_range_to_uint8
from ..bound.likelihood import VariationalBound, nll_bits_per_dim
from ..sampling.seeded import CLASS_LABEL_CHOICES, class_labels_in_turn, sample_with_image_seeds
from .data import DIGITS_RESOLUTION, held_out_digits
from .quality import SampleQualityReport, evaluate_samples, figure_rows, format_figure_table


def _check_digits_model(unet: Any) -> None:
    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else tuple(config.sample_size)
    if config.in_channels != 1 or size not in (DIGITS_RESOLUTION, (DIGITS_RESOLUTION, DIGITS_RESOLUTION)):
        raise ValueError(
            f"ddpm-evaluate measures models of the built-in 1x{DIGITS_RESOLUTION}x{DIGITS_RESOLUTION} digits; "
            f"this UNet takes {config.in_channels}x{size} images"
        )


def unconditional_model_kwargs(unet: Any, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The UNet's keyword arguments for the unconditional model p(x): a class-conditional UNet gets the
    null class as every label (``conditioning.class_label_tensors``), an unconditional one nothing."""
    labels, _ = class_label_tensors(unet, None, None, batch, device)
    return {} if labels is None else {"class_labels": labels}


@dataclass(frozen=True)
class SampleLabels:
    """Which model a class-conditional pipeline's samples come from.

    ``"null"``: every image gets the null class, so the samples are the model's unconditional p(x) (an
    unconditional pipeline gets no labels at all). ``"balanced"``: image i gets class i mod K, so the samples
    are the mixture of the K conditional models with equal weights (the held-out split is stratified, so
    its classes are balanced to within one digit), guided with ``guidance_scale`` if it is not None.
    """

    class_labels: str = "null"
    guidance_scale: float | None = None

    def check(self, pipeline: Any) -> None:
        """Refuse a choice this pipeline cannot sample, before any long work."""
        if self.class_labels not in CLASS_LABEL_CHOICES:
            raise ValueError(f"class_labels must be one of {list(CLASS_LABEL_CHOICES)}, got {self.class_labels!r}")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.guidance_scale is not None and self.class_labels != "balanced":
            raise ValueError("guidance_scale needs class_labels='balanced' (guidance steers towards a class)")
        if self.class_labels == "balanced":
            if class_conditioning(pipeline.unet) is None:
                raise ValueError("class_labels='balanced' needs a class-conditional UNet; this one is unconditional "
                                 "(its num_class_embeds is None)")
            if "class_labels" not in inspect.signature(pipeline.__call__).parameters:
                raise ValueError(f"class_labels='balanced' needs a pipeline that takes class_labels; "
                                 f"{type(pipeline).__name__} does not")

    def sampling_kwargs(self, pipeline: Any) -> dict[str, Any]:
        """``sample_with_image_seeds``'s keyword arguments for these labels."""
        if self.class_labels == "null":
            return {}
        num_classes, _ = class_conditioning(pipeline.unet)
        kwargs: dict[str, Any] = {"class_labels_for": class_labels_in_turn(num_classes)}
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        return kwargs

    def describe(self) -> str:
        """The labels as the table's sampling row names them."""
        if self.class_labels == "null":
            return ""
        guidance = "" if self.guidance_scale is None else f", guidance {self.guidance_scale:g}"
        return f", balanced class labels{guidance}"


def sample_images(
    pipeline: Any, num_samples: int, num_inference_steps: int, batch_size: int, seed: int, progress: bool = False,
    eta: float | None = None, labels: SampleLabels = SampleLabels(),
) -> np.ndarray:
    """``num_samples`` generated images as float (N, H, W, C) in [0, 1]; sample i uses a CPU generator seeded
    ``seed + i`` (`sample_with_image_seeds`, one progress bar over all samples if ``progress``); ``eta`` (if not
    None) goes to every pipeline call; ``labels`` says which classes a class-conditional model samples."""
    call: dict[str, Any] = {} if eta is None else {"eta": eta}
    if "use_clipped_model_output" in inspect.signature(pipeline.__call__).parameters:
        call["use_clipped_model_output"] = True  # diffusers' DDIMPipeline: the step our pipeline takes
    return sample_with_image_seeds(
        pipeline, num_samples, num_inference_steps=num_inference_steps, batch_size=batch_size, seed=seed,
        progress=progress, **labels.sampling_kwargs(pipeline), **call,
    )


def sample_digits(
    pipeline: Any, num_samples: int, num_inference_steps: int, batch_size: int, seed: int, progress: bool = False,
    eta: float | None = None, labels: SampleLabels = SampleLabels(),
) -> np.ndarray:
    """``sample_images`` of a one-channel digits model as uint8 (N, H, W)."""
    images = sample_images(pipeline, num_samples, num_inference_steps, batch_size, seed, progress, eta, labels)
    return unit_range_to_uint8(images[..., 0])


def _check_sampling_steps(scheduler: Any, steps: int) -> None:
    """Refuse a step count the scheduler does not accept before the bound's long loop, not after it
    (on a copy: the bound uses the scheduler as it is)."""
    try:
        type(scheduler).from_config(scheduler.config).set_timesteps(steps)
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(
            f"num_inference_steps={steps} is not accepted by {type(scheduler).__name__} "
            f"(num_train_timesteps={scheduler.config.num_train_timesteps}): {error}"
        ) from error


@contextlib.contextmanager
def _scheduler_swapped(pipeline: Any, scheduler: Any):
    """``pipeline`` with ``scheduler`` in place of its own, put back after."""
    saved, pipeline.scheduler = pipeline.scheduler, scheduler
    try:
        yield
    finally:
        pipeline.scheduler = saved


@dataclass
class EvaluationReport:
    """What ``ddpm-evaluate`` prints: the bound on held-out digits and the sample-quality report."""

    path: str
    num_train_timesteps: int
    prediction_type: str
    variance_type: str
    num_inference_steps: int | None
    seed: int
    device: str
    bound: VariationalBound | None
    quality: SampleQualityReport | None
    seconds: dict[str, float] = field(default_factory=dict)
    eta: float | None = None  # the samples' eta (None: the scheduler's own step, DDPM for ours)
    sampling_scheduler: str | None = None  # the class the samples were drawn with
    labels: SampleLabels | None = None  # the classes a class-conditional model's samples were drawn with

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
            "variance_type": self.variance_type,
            "num_inference_steps": self.num_inference_steps,
            "eta": self.eta,
            "sampling_scheduler": self.sampling_scheduler,
            "class_labels": None if self.labels is None else self.labels.class_labels,
            "guidance_scale": None if self.labels is None else self.labels.guidance_scale,
            "seed": self.seed,
            "device": self.device,
            "nll": None if self.bound is None else self.bound.to_dict(),
            "sample_quality": None if self.quality is None else self.quality.to_dict(),
            "seconds": dict(self.seconds),
        }

    def format_table(self) -> str:
        """One plain-text table: figure | model | real held-out digits."""
        rows: list[tuple[str, str, str]] = []
        if self.bound is not None:
            b = self.bound
            n = b.total_bpd.numel()
            rows += [
                (f"NLL bound on {n} held-out digits, bits/dim (lower better)",
                 f"{b.bits_per_dim:.3f} +- {b.standard_error:.3f}", ""),
                ("  prior L_T + decoder L_0, bits/dim",
                 f"{float(b.prior_bpd.mean()):.4f} + {float(b.decoder_bpd.mean()):.3f}", ""),
            ]
        if self.quality is not None:
            s, r = self.quality.samples, self.quality.reference
            rows += [
                ("images (generated | held-out)", f"{s.num_images}", f"{r.num_images}"),
                ("sampling steps", f"{self.num_inference_steps}" + ("" if self.eta is None else f", eta {self.eta:g}")
                 + ("" if self.labels is None else self.labels.describe()) + f" ({self.sampling_scheduler})", ""),
                *figure_rows(self.quality),
            ]
        title = (
            f"{self.path}: T = {self.num_train_timesteps} training steps, prediction {self.prediction_type}, "
            f"variance {self.variance_type}, seed {self.seed}, device {self.device}"
        )
        if self.quality is not None:
            title += f"; digits classifier held-out accuracy {100 * self.quality.classifier_held_out_accuracy:.1f}%"
        return format_figure_table(title, "model", "real held-out digits", rows)

    def __str__(self) -> str:
        return self.format_table()


def evaluate_pipeline(
    pipeline: Any,
    *,
    path: str = "",
    num_samples: int = 360,
    num_inference_steps: int | None = None,
    nll_images: int | None = None,
    batch_size: int = 360,
    seed: int = 0,
    classifier_cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    sampling_scheduler: Any = None,
    labels: SampleLabels = SampleLabels(),
) -> EvaluationReport:
    """Bound on the first ``nll_images`` held-out digits (None: all 360; 0: skip) and the sample quality of
    ``num_samples`` samples (0: skip) drawn with ``num_inference_steps`` (None: the pipeline's recorded default
    setting, else the scheduler's T). ``sampling_scheduler`` (e.g. a DDIMScheduler) replaces the pipeline's
    scheduler for the samples only; the bound is the saved scheduler's. ``labels``: the classes of a
    class-conditional model's samples; its bound is always that of the unconditional model (the null class)."""
    unet, scheduler = pipeline.unet, pipeline.scheduler
    sampling_scheduler = scheduler if sampling_scheduler is None else sampling_scheduler
    _check_digits_model(unet)
    labels.check(pipeline)
    held_out = held_out_digits()
    nll_images = len(held_out) if nll_images is None else nll_images
    if not 0 <= nll_images <= len(held_out):
        raise ValueError(f"nll_images must be in [0, {len(held_out)}] (the held-out split), got {nll_images}")
    if num_samples == 1 or num_samples < 0:
        raise ValueError(f"num_samples must be 0 (skip) or >= 2 (a covariance needs 2 images), got {num_samples}")
    if nll_images == 0 and num_samples == 0:
        raise ValueError("nothing to evaluate: nll_images and num_samples are both 0")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    T = scheduler.config.num_train_timesteps
    with _scheduler_swapped(pipeline, sampling_scheduler):
        steps, eta = (pipeline.sampling_setting(num_inference_steps) if hasattr(pipeline, "sampling_setting")
                      else (T if num_inference_steps is None else num_inference_steps, None))
    if num_samples:
        _check_sampling_steps(sampling_scheduler, steps)
    device = pipeline.device
    unet.eval()
    pipeline.set_progress_bar_config(disable=not progress)

    report = EvaluationReport(
        path=str(path), num_train_timesteps=T, prediction_type=scheduler.config.get("prediction_type", "epsilon"),
        variance_type=scheduler.config.get("variance_type", "fixed_small"),
        num_inference_steps=steps if num_samples else None, seed=seed, device=str(device), bound=None, quality=None,
        eta=eta if num_samples else None, sampling_scheduler=type(sampling_scheduler).__name__ if num_samples else None,
        labels=labels if num_samples else None,
    )
    if nll_images:
        x_start = uint8_to_model_range(held_out[:nll_images]).unsqueeze(1).to(device=device, dtype=unet.dtype)
        started = time.perf_counter()
        report.bound = nll_bits_per_dim(
            unet, scheduler, x_start,
            generator=torch.Generator("cpu").manual_seed(seed),
            batch_size=batch_size,
            model_kwargs=unconditional_model_kwargs(unet, nll_images, device),
            progress=progress,
        )
        report.seconds["nll"] = time.perf_counter() - started
    if num_samples:
        started = time.perf_counter()
        with _scheduler_swapped(pipeline, sampling_scheduler):
            samples = sample_digits(pipeline, num_samples, steps, batch_size, seed, progress=progress, eta=eta,
                                    labels=labels)
        report.seconds["sampling"] = time.perf_counter() - started
        report.quality = evaluate_samples(samples, cache_dir=classifier_cache_dir)
    return report
