"""The model a run trains: the UNet (a preset, or the config of --model_config_name_or_path) and its
noise scheduler, with the checks of a UNet config against the options.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from ddpm_from_scratch.diffusion_math import LEARNED_VARIANCE_TYPES
from ddpm_from_scratch.saving.convert_unet import scratch_config_from_diffusers
from ddpm_from_scratch.saving.folder import is_hub_repo_id
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import UNET_PRESETS, ScratchUNet2DModel

from .options import CUSTOM_UNET, TrainingOptions


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
    it is, a diffusers UNet2DModel config (DDPM layout) through convert_unet.scratch_config_from_diffusers."""
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
