"""What the trainer builds and saves: the UNet, the noise scheduler, the pipeline and its samples.

Each project class is reached through one function here, so the trainer never names them directly.
"""

from __future__ import annotations

import math
from typing import Any

import PIL.Image
import PIL.ImageOps
import torch

from ddpm_from_scratch.model_card import ModelCardInfo
from ddpm_from_scratch.image_utils import make_image_grid
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import UNET_PRESETS, ScratchUNet2DModel

from .config import LEARNED_VARIANCE_TYPES, TrainingOptions

# a grid is enlarged (nearest neighbour) until it is at least this many pixels wide, so that 8x8
# digits can be seen; larger images are left at their size
MIN_GRID_WIDTH = 512
GRID_FRAME_GREY = 96


def unet_downsampling_factor(preset: str) -> int:
    return 2 ** (len(UNET_PRESETS[preset]["block_out_channels"]) - 1)


def check_resolution(preset: str, resolution: int) -> None:
    """Raise ValueError if the UNet preset cannot run at `resolution` (it halves the image per level)."""
    factor = unet_downsampling_factor(preset)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution} cannot be used with the {preset!r} UNet preset: it halves the image "
            f"{int(math.log2(factor))} times, so the resolution must be a multiple of {factor} "
            f"(e.g. {max(factor, resolution // factor * factor)} or {(resolution // factor + 1) * factor})"
        )


def attention_resolutions_at(preset: str, resolution: int) -> tuple[int, ...]:
    """The preset's attention resolutions moved to `resolution`: attention stays at the same UNet levels."""
    config = UNET_PRESETS[preset]
    ratio = config["sample_size"] / resolution
    return tuple(int(round(res / ratio)) for res in config["attention_resolutions"])


def build_unet(opts: TrainingOptions, num_channels: int, num_classes: int | None) -> ScratchUNet2DModel:
    """The preset's UNet at ``opts.resolution`` (checked by `check_resolution` when the trainer starts)."""
    return ScratchUNet2DModel.from_preset(
        opts.unet_preset,
        sample_size=opts.resolution,
        in_channels=num_channels,
        # a learned variance doubles the output: (mean part, variance part), learned_range's v
        out_channels=num_channels * (2 if opts.variance_type in LEARNED_VARIANCE_TYPES else 1),
        attention_resolutions=attention_resolutions_at(opts.unet_preset, opts.resolution),
        dropout=opts.dropout,
        num_class_embeds=num_classes,
    )


def build_noise_scheduler(opts: TrainingOptions) -> ScratchDDPMScheduler:
    return ScratchDDPMScheduler(
        num_train_timesteps=opts.num_train_timesteps,
        beta_schedule=opts.beta_schedule,
        beta_start=opts.beta_start,
        beta_end=opts.beta_end,
        variance_type=opts.variance_type,
        prediction_type=opts.prediction_type,
    )


def build_pipeline(unet: torch.nn.Module, noise_scheduler) -> ScratchDDPMPipeline:
    """A pipeline around `unet` with its own copy of the scheduler (sampling sets timesteps on it)."""
    return ScratchDDPMPipeline(unet=unet, scheduler=ScratchDDPMScheduler.from_config(noise_scheduler.config))


@torch.no_grad()
def sample_images(
    unet: torch.nn.Module,
    noise_scheduler,
    num_images: int,
    num_inference_steps: int,
    batch_size: int,
    seed: int,
    num_classes: int | None = None,
) -> list[PIL.Image.Image]:
    """`num_images` samples; the same seed gives the same starting noise at every call.

    Class-conditional models get the labels 0, 1, ..., num_classes - 1 repeated.
    """
    pipeline = build_pipeline(unet, noise_scheduler)
    pipeline.set_progress_bar_config(disable=True)  # the training bar is the one to watch
    was_training = unet.training
    unet.eval()
    generator = torch.Generator().manual_seed(seed)
    images = []
    try:
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            extra = {}
            if num_classes is not None:
                extra["class_labels"] = [(start + i) % num_classes for i in range(count)]
            images += pipeline(batch_size=count, generator=generator, num_inference_steps=num_inference_steps,
                               output_type="pil", **extra).images
    finally:
        unet.train(was_training)
    return images


def grid_of(images: list[PIL.Image.Image], num_classes: int | None = None) -> PIL.Image.Image:
    """Tile samples into a grid (one class per column for a class-conditional model), each framed by a
    grey line (digits are white on black, and black padding would run them together), enlarged with
    nearest-neighbour pixels to at least MIN_GRID_WIDTH pixels wide."""
    framed = [PIL.ImageOps.expand(image, border=1, fill=GRID_FRAME_GREY if image.mode == "L" else (GRID_FRAME_GREY,) * 3)
              for image in images]
    cols = num_classes if num_classes is not None and len(images) >= num_classes else None
    width = make_image_grid(framed, cols=cols).width
    return make_image_grid(framed, cols=cols, scale=max(1, math.ceil(MIN_GRID_WIDTH / width)))


def digits_sample_quality(images: list[PIL.Image.Image]) -> dict[str, float]:
    """Sample-quality figures of generated 8x8 digits (ddpm_from_scratch.digits.quality) for the model card."""
    from ddpm_from_scratch.digits.quality import evaluate_samples

    report = evaluate_samples(images)
    figures = report.samples
    return {
        "digits_frechet_distance": round(figures.frechet_distance, 3),
        "digits_frechet_distance_real_reference": round(report.reference.frechet_distance, 3),
        "digits_classifier_score": round(figures.classifier_score, 3),
        "digits_class_coverage": round(figures.class_coverage, 3),
        "digits_confident_fraction": round(figures.confident_fraction, 3),
        "digits_near_copy_fraction": round(figures.near_copy_fraction, 3),
    }


def save_pipeline(pipeline: ScratchDDPMPipeline, output_dir: str, model_card: ModelCardInfo) -> None:
    """Write the loadable pipeline into output_dir (its checkpoints, samples and logs are left alone)."""
    pipeline.save_pretrained(output_dir, model_card=model_card)


def make_model_card(dataset: str | None, training_config: dict, metrics: dict, sample_grid: PIL.Image.Image | None,
                    tags: list[str]) -> ModelCardInfo:
    return ModelCardInfo(dataset=dataset, training_config=training_config, metrics=metrics, sample_grid=sample_grid,
                         tags=tags)


def push_pipeline(pipeline: ScratchDDPMPipeline, opts: TrainingOptions, model_card: ModelCardInfo,
                  commit_message: str) -> Any:
    """Upload the pipeline with its model card. The pipeline saves a fresh copy to upload, so the
    training output folder (checkpoints, samples, logs) never leaves the machine."""
    return pipeline.push_to_hub(opts.hub_model_id, private=opts.hub_private_repo, token=opts.hub_token,
                                commit_message=commit_message, model_card=model_card)
