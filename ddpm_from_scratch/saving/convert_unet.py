"""Convert a diffusers `UNet2DModel` of the DDPM family into a `ScratchUNet2DModel` computing the same function.

The DDPM family: levels of DownBlock2D/AttnDownBlock2D and UpBlock2D/AttnUpBlock2D with attention at
the same resolutions on both paths, a UNetMidBlock2D (with or without attention), a positional
timestep embedding (either sinusoid order, any freq_shift in [0, 1]), conv down/up-sampling with
either padding, SiLU, no scale-shift norm, optional `num_class_embeds`. That covers the published
google/ddpm-* checkpoints, `UNet2DModel()`'s defaults and what diffusers' train_unconditional.py builds.
Anything else is refused with a ValueError naming the config key and its allowed values.

Weights map one to one, except attention: diffusers' separate to_q/to_k/to_v linears become one fused
linear (`qkv`, output rows [q | k | v]). A class-conditional
model gains one zero row in its class table: the null class used for classifier-free guidance.

Command line: `ddpm-convert-unet` (ddpm_from_scratch/cli/convert.py).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..unet import ScratchUNet2DModel

# UNet2DModel config keys that ScratchUNet2DModel has under the same name and with the same meaning
_SHARED_CONFIG_KEYS = (
    "sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
    "attention_head_dim", "dropout", "norm_num_groups", "norm_eps", "num_class_embeds", "time_embedding_dim",
    "flip_sin_to_cos", "freq_shift", "downsample_padding", "center_input_sample",
)
# UNet2DModel config key -> the values the DDPM family allows (the first is the one written back);
# missing keys take UNet2DModel's defaults
_FIXED_DIFFUSERS_CONFIG: dict[str, tuple] = {
    "time_embedding_type": ("positional",),
    "act_fn": ("silu", "swish"),  # the same function in diffusers
    "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "resnet_time_scale_shift": ("default",),
    "class_embed_type": (None,),
}
_DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")  # (without, with) attention
_UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")

# old diffusers attention parameter names (checkpoints saved before the Attention refactor)
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

# per-block parameter renames: diffusers name -> ScratchUNet2DModel name
_RESNET_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_emb_proj": "time_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "skip",
}
_TOP_LEVEL_NAMES = {
    "time_embedding.linear_1": "time_embed.fc_in",
    "time_embedding.linear_2": "time_embed.fc_out",
    "conv_in": "conv_in",
    "conv_norm_out": "norm_out",
    "conv_out": "conv_out",
}


def _unet2d_defaults() -> dict[str, Any]:
    from diffusers import UNet2DModel

    params = inspect.signature(UNet2DModel.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def _attention_per_level(block_types: Any, key: str, allowed: tuple[str, str]) -> list[bool]:
    levels = []
    for block_type in block_types:
        if block_type not in allowed:
            raise ValueError(
                f"config {key} contains {block_type!r}, which is outside the DDPM family; "
                f"allowed values: {list(allowed)}"
            )
        levels.append(block_type == allowed[1])
    return levels


def scratch_config_from_diffusers(
    config: Mapping[str, Any], sample_size: int | tuple[int, int] | None = None
) -> dict[str, Any]:
    """The `ScratchUNet2DModel` config equivalent to a diffusers `UNet2DModel` config (DDPM family only).

    Raises a ValueError naming the config key (and the allowed values) for anything outside the family.
    """
    full = {**_unet2d_defaults(), **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key, allowed in _FIXED_DIFFUSERS_CONFIG.items():
        if full[key] not in allowed:
            raise ValueError(f"config {key}={full[key]!r} is outside the DDPM family; allowed values: {list(allowed)}")
    attn_groups = full["attn_norm_num_groups"]
    if attn_groups not in (None, full["norm_num_groups"]):
        raise ValueError(
            f"config attn_norm_num_groups={attn_groups!r} is outside the DDPM family; allowed values: "
            f"None or norm_num_groups ({full['norm_num_groups']!r})"
        )
    if not isinstance(full["add_attention"], bool):
        raise ValueError(f"config add_attention={full['add_attention']!r}; allowed values: True, False")

    down = _attention_per_level(full["down_block_types"], "down_block_types", _DOWN_BLOCK_TYPES)
    up = _attention_per_level(full["up_block_types"], "up_block_types", _UP_BLOCK_TYPES)
    channels = tuple(full["block_out_channels"])
    if not len(down) == len(up) == len(channels):
        raise ValueError("config down_block_types, up_block_types and block_out_channels must have the same length")
    if down != up[::-1]:
        raise ValueError(
            f"attention must sit at the same resolutions on both paths: config down_block_types "
            f"{tuple(full['down_block_types'])} vs up_block_types {tuple(full['up_block_types'])}"
        )

    size = sample_size if sample_size is not None else full["sample_size"]
    if size is None:
        raise ValueError("the diffusers config has sample_size=None; pass sample_size=")
    height = size if isinstance(size, int) else size[0]
    scratch = {key: full[key] for key in _SHARED_CONFIG_KEYS}
    scratch.update(
        sample_size=size if isinstance(size, int) else tuple(size),
        block_out_channels=channels,
        attention_resolutions=tuple(height // 2**i for i, has_attn in enumerate(down) if has_attn),
        mid_block_add_attention=full["add_attention"],
    )
    ScratchUNet2DModel.check_config(scratch)
    return scratch


def diffusers_config_from_scratch(config: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers `UNet2DModel` config of the same network as a `ScratchUNet2DModel` config.

    Used to build the diffusers equivalent of a preset (tests, benchmarks). A class-conditional model
    maps to `num_class_embeds` rows in diffusers, i.e. without the null class row.
    """
    full = {**_scratch_defaults(), **{k: v for k, v in config.items() if not k.startswith("_")}}
    channels = tuple(full["block_out_channels"])
    size = full["sample_size"]
    height = size if isinstance(size, int) else size[0]
    with_attention = [height // 2**i in tuple(full["attention_resolutions"]) for i in range(len(channels))]
    return dict(
        {key: full[key] for key in _SHARED_CONFIG_KEYS},
        block_out_channels=channels,
        down_block_types=tuple(_DOWN_BLOCK_TYPES[a] for a in with_attention),
        up_block_types=tuple(_UP_BLOCK_TYPES[a] for a in reversed(with_attention)),
        add_attention=full["mid_block_add_attention"],
        attn_norm_num_groups=None,
        **{key: allowed[0] for key, allowed in _FIXED_DIFFUSERS_CONFIG.items()},
    )


def _scratch_defaults() -> dict[str, Any]:
    params = inspect.signature(ScratchUNet2DModel.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def _rename(key: str) -> str:
    """diffusers parameter name -> ScratchUNet2DModel name (attention q/k/v keep a marker, fused later)."""
    for old, new in _TOP_LEVEL_NAMES.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        path, level, kind, index, rest = m.groups()
        prefix = f"{'down' if path == 'down_blocks' else 'up'}_levels.{level}"
        if kind in ("downsamplers", "upsamplers"):
            return f"{prefix}.resample.{rest}"
        if kind == "resnets":
            return f"{prefix}.res_blocks.{index}.{_rename_resnet(rest, key)}"
        return f"{prefix}.attn_blocks.{index}.{rest}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, index, rest = m.groups()
        if kind == "resnets":
            return f"{('mid_res_in', 'mid_res_out')[int(index)]}.{_rename_resnet(rest, key)}"
        return f"mid_attn.{rest}"
    raise ValueError(f"state dict key {key!r} is not part of the DDPM UNet2DModel layout")


def _rename_resnet(rest: str, key: str) -> str:
    module, _, param = rest.partition(".")
    if module not in _RESNET_NAMES:
        raise ValueError(f"state dict key {key!r} is not part of the DDPM UNet2DModel layout")
    return f"{_RESNET_NAMES[module]}.{param}"


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a `UNet2DModel` state dict (DDPM family) onto `ScratchUNet2DModel` parameter names and shapes."""
    converted: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}  # "<attn prefix>.<weight|bias>" -> {"to_q": ...}
    for key, value in state_dict.items():
        for legacy, modern in _LEGACY_ATTENTION_NAMES.items():
            key = re.sub(rf"(attentions\.\d+)\.{legacy}\.", rf"\1.{modern}.", key)
        if key == "class_embedding.weight":
            # one extra zero row: the null class of classifier-free guidance adds nothing to temb
            converted["class_embed.weight"] = torch.cat([value, value.new_zeros(1, value.shape[1])])
            continue
        new_key = _rename(key)
        m = re.fullmatch(r"(.+)\.(to_q|to_k|to_v)\.(weight|bias)", new_key)
        if m:
            prefix, proj, param = m.groups()
            qkv_parts.setdefault(f"{prefix}.{param}", {})[proj] = value
            continue
        converted[new_key.replace(".to_out.0.", ".proj_out.").replace(".group_norm.", ".norm.")] = value
    for name, parts in qkv_parts.items():
        if set(parts) != {"to_q", "to_k", "to_v"}:
            raise ValueError(f"attention {name} has only {sorted(parts)}; to_q, to_k and to_v are all needed")
        prefix, param = name.rsplit(".", 1)
        converted[f"{prefix}.qkv.{param}"] = torch.cat([parts["to_q"], parts["to_k"], parts["to_v"]])
    return converted


def convert_diffusers_unet(
    unet: Any,
    config: Mapping[str, Any] | None = None,
    sample_size: int | tuple[int, int] | None = None,
) -> ScratchUNet2DModel:
    """Build a `ScratchUNet2DModel` equal (as a function) to a diffusers `UNet2DModel` of the DDPM family.

    unet: a `UNet2DModel`, or its state dict (then `config`, the UNet2DModel config dict, is required).
    The result has the source's dtype and is in eval mode.
    """
    if isinstance(unet, Mapping):
        if config is None:
            raise ValueError("config is required when unet is a state dict")
        state_dict = unet
    elif isinstance(unet, torch.nn.Module) and hasattr(unet, "config"):
        state_dict = unet.state_dict()
        config = unet.config if config is None else config
    else:
        raise ValueError(f"unet must be a diffusers UNet2DModel or its state dict, got {type(unet).__name__}")
    scratch_config = scratch_config_from_diffusers(config, sample_size=sample_size)
    converted = convert_state_dict(state_dict)

    model = ScratchUNet2DModel(**scratch_config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state dict does not match the config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    wrong_shape = [k for k in expected if expected[k].shape != converted[k].shape]
    if wrong_shape:
        k = wrong_shape[0]
        raise ValueError(
            f"state dict shapes do not match the config, e.g. {k}: {tuple(converted[k].shape)} "
            f"vs {tuple(expected[k].shape)}"
        )
    dtype = next(iter(state_dict.values())).dtype
    model.load_state_dict(converted)
    if dtype != model.dtype:
        model = model.to(dtype)
    return model.eval()
