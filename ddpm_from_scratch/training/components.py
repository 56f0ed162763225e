"""What the trainer builds and saves: the UNet, the noise scheduler, the pipeline and its samples.

Each project class is reached through one function here, so the trainer never names them directly.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageOps
import torch

from ddpm_from_scratch.sampling.images import make_image_grid, to_pil_images
from ddpm_from_scratch.saving.model_card import ModelCardInfo
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.sampling.seeded import sample_with_image_seeds
from ddpm_from_scratch.unet import UNET_PRESETS, ScratchUNet2DModel

from .config import CUSTOM_UNET, LEARNED_VARIANCE_TYPES, TrainingOptions

# a grid is enlarged (nearest neighbour) until it is at least this many pixels wide, so that 8x8
# digits can be seen; larger images are left at their size
MIN_GRID_WIDTH = 512
GRID_FRAME_GREY = 96


def _downsampling_factor(config: dict[str, Any]) -> int:
    return 2 ** (len(config["block_out_channels"]) - 1)


def _check_divisible(config: dict[str, Any], resolution: int, what: str) -> None:
    factor = _downsampling_factor(config)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution} cannot be used with {what}: it halves the image "
            f"{int(math.log2(factor))} times, so the resolution must be a multiple of {factor} "
            f"(e.g. {max(factor, resolution // factor * factor)} or {(resolution // factor + 1) * factor})"
        )


def check_resolution(preset: str, resolution: int) -> None:
    """Raise ValueError if the UNet preset cannot run at `resolution` (it halves the image per level).
    A UNet from --model_config_name_or_path (preset CUSTOM_UNET) is checked by `check_unet_config`."""
    if preset != CUSTOM_UNET:
        _check_divisible(UNET_PRESETS[preset], resolution, f"the {preset!r} UNet preset")


def attention_resolutions_at(config: dict[str, Any], resolution: int) -> tuple[int, ...]:
    """A UNet config's attention resolutions moved to `resolution`: attention stays at the same UNet levels
    (as in diffusers, where attention belongs to a block, not to a feature-map size)."""
    size = config["sample_size"]
    ratio = (size if isinstance(size, int) else size[0]) / resolution
    return tuple(int(round(res / ratio)) for res in config.get("attention_resolutions", ()))


@functools.lru_cache(maxsize=8)
def _read_unet_config(name_or_path: str) -> dict[str, Any]:
    option = f"--model_config_name_or_path {name_or_path!r}"
    path = Path(name_or_path)
    if path.is_dir():
        candidates = [path / "config.json", path / "unet" / "config.json"]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            raise ValueError(f"{option} is a folder without config.json or unet/config.json")
        path = found
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{option}: {path} is not a readable JSON file ({error})") from error
    else:
        from ddpm_from_scratch.saving.folder import is_hub_repo_id

        if not is_hub_repo_id(name_or_path):
            raise ValueError(f"{option} is neither a file, a folder, nor a Hub model id")
        try:
            config = ScratchUNet2DModel.load_config(name_or_path)
        except Exception:  # noqa: BLE001 - a pipeline repository keeps the UNet config in unet/
            try:
                config = ScratchUNet2DModel.load_config(name_or_path, subfolder="unet")
            except Exception as error:  # noqa: BLE001 - offline, missing repo, no config: all one message
                raise ValueError(f"{option}: cannot read config.json or unet/config.json from the Hub ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{option}: the config must be a JSON object, got {type(config).__name__}")
    return config


def load_unet_config(name_or_path: str) -> dict[str, Any]:
    """The ScratchUNet2DModel config named by --model_config_name_or_path: a ScratchUNet2DModel config as
    it is, a diffusers UNet2DModel config (DDPM layout) through convert.scratch_config_from_diffusers."""
    from ddpm_from_scratch.saving.convert_unet import scratch_config_from_diffusers

    option = f"--model_config_name_or_path {name_or_path!r}"
    raw = _read_unet_config(str(name_or_path))
    class_name = raw.get("_class_name")
    try:
        if class_name == "UNet2DModel" or (class_name is None and "down_block_types" in raw):
            config = scratch_config_from_diffusers(raw)
        elif class_name in (None, ScratchUNet2DModel.__name__):
            config = {key: value for key, value in raw.items() if not key.startswith("_")}
        else:
            raise ValueError(f"it is a {class_name} config; expected ScratchUNet2DModel or diffusers' UNet2DModel")
        ScratchUNet2DModel.check_config(config)
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from error
    return config


def check_unet_config(opts: TrainingOptions) -> None:
    """The checks of a UNet config against the options (the data's class count is checked in build_unet)."""
    config, option = opts.unet_config, f"--model_config_name_or_path {opts.model_config_name_or_path!r}"
    size = config["sample_size"]
    if not isinstance(size, int) and size[0] != size[1]:
        raise ValueError(f"{option} has sample_size {list(size)}; training images are square, so it must be one int")
    _check_divisible(config, opts.resolution, f"the UNet of {option}")
    if config["in_channels"] not in (1, 3):
        raise ValueError(f"{option} has in_channels={config['in_channels']}; training images have 1 (grayscale) or 3 (RGB)")
    learned = opts.variance_type in LEARNED_VARIANCE_TYPES
    expected = config["in_channels"] * (2 if learned else 1)
    if config["out_channels"] != expected:
        raise ValueError(
            f"{option} has out_channels={config['out_channels']} for in_channels={config['in_channels']}; "
            f"--variance_type {opts.variance_type} needs out_channels={expected}"
            + (" (a mean part and a variance part)" if learned else " (pass --variance_type learned_range "
               "--loss_type hybrid for a UNet that also predicts the variance)" if config["out_channels"] == 2 * expected else "")
        )
    if config.get("num_class_embeds") is not None and not opts.class_conditional:
        raise ValueError(f"{option} is class-conditional (num_class_embeds={config['num_class_embeds']}); "
                         "add --class_conditional, or use an unconditional config")


def build_unet(opts: TrainingOptions, num_channels: int, num_classes: int | None) -> ScratchUNet2DModel:
    """The UNet to train at ``opts.resolution``: the preset's (checked by `check_resolution` when the trainer
    starts), or the one of --model_config_name_or_path (checked by `check_unet_config`)."""
    # a learned variance doubles the output: (mean part, variance part), learned_range's v
    out_channels = num_channels * (2 if opts.variance_type in LEARNED_VARIANCE_TYPES else 1)
    if opts.unet_config is None:
        preset = UNET_PRESETS[opts.unet_preset]
        return ScratchUNet2DModel.from_preset(
            opts.unet_preset, sample_size=opts.resolution, in_channels=num_channels, out_channels=out_channels,
            attention_resolutions=attention_resolutions_at(preset, opts.resolution), dropout=opts.dropout,
            num_class_embeds=num_classes,
        )
    config = dict(opts.unet_config)
    configured_classes = config.get("num_class_embeds")
    if configured_classes is not None and configured_classes != num_classes:
        raise ValueError(f"--model_config_name_or_path has num_class_embeds={configured_classes} but the dataset's "
                         f"labels have {num_classes} classes")
    config.update(sample_size=opts.resolution, attention_resolutions=attention_resolutions_at(config, opts.resolution),
                  num_class_embeds=num_classes)
    if "dropout" in opts.explicit:
        config["dropout"] = opts.dropout
    return ScratchUNet2DModel(**config)


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


def grid_class_labels(num_classes: int) -> Any:
    """Labels of a class-conditional grid: image i gets class i % num_classes (one class per column)."""
    return lambda count, offset: [(offset + i) % num_classes for i in range(count)]


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
    (seeded_sampling.sample_with_image_seeds), so the grid holds the images ``ddpm-sample`` and
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
            class_labels_for=grid_class_labels(num_classes) if num_classes is not None else None,
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
