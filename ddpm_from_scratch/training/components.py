"""What the trainer builds from the trained UNet: the pipeline, its sample grids, the model card, the upload.

Each project class is reached through one function here or in model.py, so the trainer never names them directly.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import PIL.Image
import PIL.ImageOps
import torch

from ddpm_from_scratch.sampling.images import make_image_grid, to_pil_images
from ddpm_from_scratch.saving.model_card import ModelCardInfo
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.sampling.seeded import class_labels_in_turn, sample_with_image_seeds

from .options import BUILTIN_DIGITS, TrainingOptions

logger = logging.getLogger(__name__)

# a grid is enlarged (nearest neighbour) until it is at least this many pixels wide, so that 8x8
# digits can be seen; larger images are left at their size
MIN_GRID_WIDTH = 512
GRID_FRAME_GREY = 96


def build_pipeline(unet: torch.nn.Module, noise_scheduler, default_inference_steps: int | None = None,
                   default_eta: float | None = None) -> ScratchDDPMPipeline:
    """A pipeline around `unet` with its own copy of the scheduler (sampling sets timesteps on it), recording
    the default sampling setting (--default_inference_steps, --default_eta)."""
    return ScratchDDPMPipeline(unet=unet, scheduler=ScratchDDPMScheduler.from_config(noise_scheduler.config),
                               default_num_inference_steps=default_inference_steps, default_eta=default_eta)


@torch.no_grad()
def sample_images(
    unet: torch.nn.Module,
    noise_scheduler,
    num_images: int,
    num_inference_steps: int,
    batch_size: int,
    seed: int,
    num_classes: int | None = None,
    show_progress: bool = True,
) -> list[PIL.Image.Image]:
    """`num_images` samples, image i drawn from its own generator seeded seed + i
    (sampling.seeded.sample_with_image_seeds), so the grid holds the images ``ddpm-sample`` and
    ``ddpm-evaluate`` give for the saved model with the same seed and steps, however they batch.

    Class-conditional models get the labels 0, 1, ..., num_classes - 1 repeated. The progress bar counts
    images (fractions of a batch as its denoising steps complete), so it shows images/s.
    """
    from tqdm.auto import tqdm

    pipeline = build_pipeline(unet, noise_scheduler)
    pipeline.set_progress_bar_config(disable=True)  # one bar for the whole grid instead of one per batch
    progress = tqdm(total=num_images, desc=f"sampling the grid ({num_inference_steps} steps)", unit="image",
                    disable=not show_progress, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}, {rate_fmt}]")

    def advance(pipe, step_index, timestep, callback_kwargs):
        progress.update(callback_kwargs["latents"].shape[0] / num_inference_steps)
        return {}

    was_training = unet.training
    unet.eval()
    try:
        images = sample_with_image_seeds(
            pipeline, num_images, num_inference_steps=num_inference_steps, batch_size=batch_size, seed=seed,
            class_labels_for=class_labels_in_turn(num_classes) if num_classes is not None else None,
            callback_on_step_end=advance,
        )
    finally:
        unet.train(was_training)
        progress.close()
    return to_pil_images(images)


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


def run_model_card(opts: TrainingOptions, data_description: str, num_classes: int | None, metrics: dict,
                   sample_grid: PIL.Image.Image | None, run_facts: dict) -> ModelCardInfo:
    """The model card of a run: its options (those worth recording), the data, `run_facts` (what the launch
    decided: processes, accumulation, ...), the metrics and the final grid; tagged with the preset."""
    training_config = {**opts.for_model_card(), "data": data_description, **run_facts}
    hub_dataset = opts.dataset_name if opts.dataset_name not in (None, BUILTIN_DIGITS) else None
    tags = [f"preset-{opts.preset}"] + (["class-conditional"] if num_classes else [])
    return ModelCardInfo(dataset=hub_dataset, training_config=training_config, metrics=metrics,
                         sample_grid=sample_grid, tags=tags)


def push_pipeline(pipeline: ScratchDDPMPipeline, opts: TrainingOptions, model_card: ModelCardInfo,
                  commit_message: str) -> Any:
    """Upload the pipeline with its model card. The pipeline saves a fresh copy to upload, so the
    training output folder (checkpoints, samples, logs) never leaves the machine."""
    try:
        result = pipeline.push_to_hub(opts.hub_model_id, private=opts.hub_private_repo, token=opts.hub_token,
                                      commit_message=commit_message, model_card=model_card)
    except Exception:
        logger.error("the pipeline is saved in %s but pushing it to %s failed; retry with "
                     "ScratchDDPMPipeline.from_pretrained(%r).push_to_hub(%r)", opts.output_path,
                     opts.hub_model_id, str(opts.output_path), opts.hub_model_id)
        raise
    logger.info("pushed the pipeline to https://huggingface.co/%s", opts.hub_model_id)
    return result
