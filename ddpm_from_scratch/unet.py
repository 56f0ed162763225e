"""The DDPM denoising network (Ho et al. 2020, appendix B), written from scratch on torch.nn.

Architecture (a PixelCNN++-style U-Net with a time embedding, as in the paper's TF code):

    t --sinusoid(ch)--> Linear(ch, 4ch) --SiLU--> Linear(4ch, 4ch) = temb      (+ class embedding)
    x --conv3x3--> h
    down: for each level i (channels ch*mult[i], resolution R/2^i):
              layers_per_block x [ResBlock -> (SelfAttention if R/2^i in attention_resolutions)]
              then a stride-2 conv (not after the last level); every output is kept as a skip
    mid:  ResBlock -> SelfAttention (unless mid_block_add_attention=False) -> ResBlock
    up:   for each level, lowest resolution first:
              (layers_per_block + 1) x [concat(h, skip) -> ResBlock -> (SelfAttention)]
              then nearest x2 + conv3x3 (not after the last level)
    out:  GroupNorm -> SiLU -> conv3x3

    ResBlock(x, temb) = skip(x) + conv2(dropout(SiLU(GN(conv1(SiLU(GN(x))) + W SiLU(temb)))))
        skip is a 1x1 conv when the channel count changes, else the identity.
    SelfAttention(x)  = x + proj_out(softmax(q k^T / sqrt(d)) v),  q, k, v = qkv(GN(x)),
        qkv one fused linear over the H*W positions; a single head unless attention_head_dim is set.

The down-sampling conv pads (0, 1, 0, 1) before a stride-2 3x3 conv: TensorFlow's "SAME" padding,
which is what the paper's checkpoints were trained with (diffusers' `downsample_padding=0`), so
published DDPM weights convert without changing the function (see convert.py).

The defaults are the paper's network; the other choices diffusers' `UNet2DModel` offers for these blocks
(sinusoid order and shift, downsample padding, head size, no middle attention, input centring) are config
keys too, so that any UNet2DModel of the DDPM family converts.

Initialisation follows the paper's code: fan-average uniform (Xavier) for every conv/linear, zero
biases, and zero weights for the last conv of each residual branch, the attention output projection
and the output conv, so every block starts as the identity and the network starts by predicting 0.

Class conditioning (optional, `num_class_embeds=K`): an embedding table with K + 1 rows is added to
temb. Row K is the "null" class (`model.null_class_label`): train with labels randomly replaced by K
and sample with classifier-free guidance eps = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null)).

With `out_channels == 2 * in_channels` the second half of the output is the variance interpolation
`v` of Nichol & Dhariwal (schedulers' `variance_type="learned_range"`).

A model folder written by `save_pretrained` holds ``manifest.json``, the size and SHA-256 of its
weights files, and `from_pretrained` checks a local folder against it (or against the pipeline's or
checkpoint's manifest one folder up, for a ``subfolder``) before diffusers reads the weights:
safetensors checks a file's header, not its tensor bytes. The format is
ddpm_from_scratch.saving.checksums's, ``{"format": 1, "files": {"relative/path": {"size", "sha256"}}}``;
it is written and read here with hashlib and json because this file ships alone.

Remote-code rule: this file is copied into saved pipelines, so it imports only stdlib/torch/diffusers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

# Presets. "cifar10" is the paper's 35.7M-parameter CIFAR-10 model (appendix B: ch=128,
# mult (1,2,2,2), 2 res blocks per level, attention at 16x16, dropout 0.1). "digits" is a small
# model for the 8x8 scikit-learn digits that trains to readable samples in minutes on a CPU.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        attention_resolutions=(16,),
        dropout=0.1,
        norm_num_groups=32,
    ),
    "digits": dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        # one res block per level: at 8x8 the second buys less than the extra updates its time pays for
        # (docs/training.md, "Presets")
        layers_per_block=1,
        attention_resolutions=(2,),
        dropout=0.1,
        norm_num_groups=8,
    ),
}


@dataclass
class ScratchUNet2DOutput(BaseOutput):
    """Output of `ScratchUNet2DModel` (same field as diffusers' `UNet2DOutput`).

    sample: (B, out_channels, H, W) predicted noise (and variance interpolation if out_channels == 2 * in_channels).
    """

    sample: torch.Tensor


def sinusoidal_timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = False, freq_shift: float = 1
) -> torch.Tensor:
    """Transformer sinusoidal position embedding of the timestep; the defaults are the paper's code.

    emb[:, i] = sin(t * max_period^(-i / (half - freq_shift))), emb[:, half + i] = cos(same), half = dim // 2;
    flip_sin_to_cos puts the cos half first. timesteps: (B,) -> (B, dim) float32 (zero-padded when dim is odd).
    """
    half = dim // 2
    # a single frequency has exponent 0 whatever the denominator; this avoids dividing 0 by 0
    denominator = half - freq_shift if half > 1 else 1
    steps = torch.arange(half, device=timesteps.device, dtype=torch.float32)
    # the same exponent, rounded in float32 as the reference code of each layout rounds it (they differ
    # by up to 6e-5 at t = 999): the paper's TF code i * (log(P) / (half - 1)), diffusers' (log(P) * i) / (half - shift)
    if freq_shift == 1:
        exponent = steps * (-math.log(max_period) / denominator)
    else:
        exponent = (-math.log(max_period) * steps) / denominator
    freqs = torch.exp(exponent)
    angles = timesteps.float()[:, None] * freqs[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """sinusoid(t) -> Linear -> SiLU -> Linear: the paper's two-layer time embedding."""

    def __init__(self, base_channels: int, embed_dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1):
        super().__init__()
        self.base_channels = base_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.fc_in = nn.Linear(base_channels, embed_dim)
        self.fc_out = nn.Linear(embed_dim, embed_dim)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        # the sinusoid is computed in float32 (in bf16, angles t * freq of up to ~1000 rad would be
        # rounded by several radians), then cast to the weights' dtype for a bf16/fp16 model
        emb = sinusoidal_timestep_embedding(
            timesteps, self.base_channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        ).to(self.fc_in.weight.dtype)
        return self.fc_out(F.silu(self.fc_in(emb)))


class ResBlock(nn.Module):
    """Residual block: GN -> SiLU -> conv3x3 -> + time projection -> GN -> SiLU -> dropout -> conv3x3, plus skip."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # a 1x1 conv only where the channel count changes (the paper's "nin_shortcut")
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W); temb_act: SiLU(temb), (B, temb_channels), shared by all blocks -> (B, Cout, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        # in-place adds are safe for autograd here: conv backward needs its input, not its output
        h += self.time_proj(temb_act)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h += x if self.skip is None else self.skip(x)
        return h


class SelfAttention(nn.Module):
    """Spatial self-attention with a residual: x + proj_out(SDPA(q, k, v)), q, k, v from one fused linear."""

    def __init__(self, channels: int, head_dim: int | None, groups: int, eps: float):
        super().__init__()
        head_dim = channels if head_dim is None else head_dim
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Linear(channels, 3 * channels)  # output features [q | k | v], each [head0 | head1 | ...]
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor | None = None) -> torch.Tensor:
        b, c, height, width = x.shape
        tokens = height * width
        # (B, C, H, W) -> (B, HW, C) as a view; the linear makes (B, HW, 3C) with the head dim
        # contiguous, which SDPA's fused CPU/GPU kernels want (a 1x1 conv would leave it strided)
        qkv = self.qkv(self.norm(x.reshape(b, c, tokens)).transpose(1, 2))
        q, k, v = qkv.reshape(b, tokens, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d); scale 1/sqrt(d)
        out = self.proj_out(out.transpose(1, 2).reshape(b, tokens, c))
        # x first: the sum takes x's memory layout. The other order would hand a channels-last
        # tensor to every later conv, which costs ~10-20% on CPU.
        return x + out.transpose(1, 2).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: halves H and W. padding=0: TF "SAME" padding (right/bottom by one), else conv padding."""

    def __init__(self, channels: int, padding: int = 0):
        super().__init__()
        self.same_padding = padding == 0
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.same_padding else x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv: doubles H and W."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the U-Net: res blocks, each optionally followed by attention, and a resampler.

    `resample` is a Downsample on the way down, an Upsample on the way up, None at the end of a path.
    """

    def __init__(
        self, res_blocks: list[ResBlock], attn_blocks: list[SelfAttention], resample: nn.Module | None
    ):
        super().__init__()
        self.res_blocks = nn.ModuleList(res_blocks)
        self.attn_blocks = nn.ModuleList(attn_blocks)  # empty, or one per res block
        self.resample = resample


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _attention_levels(sample_size: Any, channels: tuple, attention_resolutions: tuple) -> list[bool]:
    """Whether each level (resolution height / 2^i) has attention; a ValueError for a resolution no level has."""
    height = _as_tuple(sample_size)[0]
    level_resolutions = [height // 2**i for i in range(len(channels))]
    unknown = [r for r in attention_resolutions if r not in level_resolutions]
    if unknown:
        raise ValueError(
            f"attention_resolutions {attention_resolutions} contains {unknown}, which are not level "
            f"resolutions; allowed values for this sample_size: {level_resolutions}"
        )
    return [res in attention_resolutions for res in level_resolutions]


# ---- the weights' checksums (module doc) ----
MANIFEST_NAME = "manifest.json"
WEIGHTS_PREFIX = "diffusion_pytorch_model"  # diffusers' weights, shards and shard indexes of every variant


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_weights_manifest(folder: Path) -> None:
    """``folder/manifest.json``: the size and SHA-256 of every weights file in ``folder``, written atomically."""
    files = {path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
             for path in sorted(folder.iterdir()) if path.name.startswith(WEIGHTS_PREFIX) and path.is_file()}
    staged = folder / f".{MANIFEST_NAME}.tmp"
    staged.write_text(json.dumps({"format": 1, "files": files}, indent=1), encoding="utf-8")
    os.replace(staged, folder / MANIFEST_NAME)


def check_weights(root: Path, subfolder: str) -> None:
    """Before loading the model folder ``root/subfolder``: an OSError naming the folder and the file expected
    if it has no weights, or naming the file if a weights file differs from its entry in the folder's
    manifest (else, for a subfolder, the pipeline's or checkpoint's manifest in ``root``)."""
    folder = root / subfolder
    if not any(path.name.startswith(WEIGHTS_PREFIX) for path in folder.iterdir()):
        raise OSError(f"model folder {str(folder)!r} has no weights: expected {WEIGHTS_PREFIX}.safetensors "
                      f"(or its shards and {WEIGHTS_PREFIX}.safetensors.index.json)")
    candidates = [(folder, "")] + ([(root, f"{Path(subfolder).as_posix()}/")] if subfolder else [])
    base, prefix = next(((b, p) for b, p in candidates if (b / MANIFEST_NAME).is_file()), (None, ""))
    if base is None:
        return  # saved without checksums (stock diffusers, ddpm-from-scratch 0.1.0): loaded as it is
    manifest = base / MANIFEST_NAME
    try:
        entries = {name: (entry["size"], entry["sha256"])
                   for name, entry in json.loads(manifest.read_text(encoding="utf-8"))["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise OSError(f"manifest {str(manifest)!r} is malformed: {error!r}") from error
    for name, (size, digest) in entries.items():
        path = base / name
        if (name.startswith(prefix) and path.name.startswith(WEIGHTS_PREFIX) and path.is_file()
                and (path.stat().st_size != size or _sha256(path) != digest)):
            raise OSError(f"weights file {str(path)!r} is corrupted: it does not match its size and SHA-256 in "
                          f"{str(manifest)!r} (damaged on disk or in transfer since it was saved): save or "
                          "download it again")


class ScratchUNet2DModel(ModelMixin, ConfigMixin):
    """The DDPM U-Net (see the module docstring), a drop-in for diffusers' `UNet2DModel` in DDPM pipelines.

    Args:
        sample_size: training image size (int, or (H, W)); `attention_resolutions` refer to its height.
        in_channels / out_channels: image channels; out_channels = 2 * in_channels also predicts a variance.
        block_out_channels: channels of each resolution level (ch * channel_mult in the paper).
        layers_per_block: residual blocks per level on the way down (the way up has one more).
        attention_resolutions: feature-map heights (e.g. (16,)) whose res blocks are followed by self-attention.
        attention_head_dim: channels per attention head (as in diffusers' UNet2DModel); None = a single head
            (the paper). It must divide the channels of every level with attention.
        dropout: dropout rate inside the residual blocks.
        norm_num_groups / norm_eps: GroupNorm settings.
        num_class_embeds: number of classes for class conditioning (None = unconditional). The table has one
            extra row, `null_class_label` (= num_class_embeds), for classifier-free guidance.
        time_embedding_dim: width of the time embedding; None = 4 * block_out_channels[0].
        flip_sin_to_cos: put the cos half of the timestep sinusoid first (diffusers' default; the paper: False).
        freq_shift: in [0, 1]; sinusoid frequencies max_period^(-i / (half - freq_shift)) (the paper: 1).
        downsample_padding: 0 = TF "SAME" padding before the stride-2 conv (the paper), 1 = pad every side by one.
        mid_block_add_attention: self-attention between the two middle res blocks (the paper: True).
        center_input_sample: map the input x -> 2x - 1 before the first conv (for data in [0, 1]).
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["norm"]
    _no_split_modules = ["ResBlock", "SelfAttention"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 256, 256, 256),
        layers_per_block: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        attention_head_dim: int | None = None,
        dropout: float = 0.1,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        num_class_embeds: int | None = None,
        time_embedding_dim: int | None = None,
        flip_sin_to_cos: bool = False,
        freq_shift: float = 1,
        downsample_padding: int = 0,
        mid_block_add_attention: bool = True,
        center_input_sample: bool = False,
    ):
        super().__init__()
        self.check_config({k: v for k, v in self.config.items() if not k.startswith("_")})
        channels = _as_tuple(block_out_channels)
        with_attention = _attention_levels(sample_size, channels, _as_tuple(attention_resolutions))
        temb_dim = time_embedding_dim or 4 * channels[0]

        def res_block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, temb_dim, dropout, norm_num_groups, norm_eps)

        def attention(ch: int) -> SelfAttention:
            return SelfAttention(ch, attention_head_dim, norm_num_groups, norm_eps)

        self.time_embed = TimestepMLP(channels[0], temb_dim, flip_sin_to_cos, freq_shift)
        self.class_embed = nn.Embedding(num_class_embeds + 1, temb_dim) if num_class_embeds is not None else None
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        # down path; skip_channels records the channels of every tensor pushed on the skip stack
        skip_channels = [channels[0]]
        self.down_levels = nn.ModuleList()
        ch = channels[0]
        for i, level_ch in enumerate(channels):
            res_blocks, attn_blocks = [], []
            for _ in range(layers_per_block):
                res_blocks.append(res_block(ch, level_ch))
                ch = level_ch
                if with_attention[i]:
                    attn_blocks.append(attention(ch))
                skip_channels.append(ch)
            is_last = i == len(channels) - 1
            if not is_last:
                skip_channels.append(ch)
            resample = None if is_last else Downsample(ch, downsample_padding)
            self.down_levels.append(Level(res_blocks, attn_blocks, resample))

        self.mid_res_in = res_block(ch, ch)
        self.mid_attn = attention(ch) if mid_block_add_attention else None
        self.mid_res_out = res_block(ch, ch)

        # up path, lowest resolution first; each res block consumes one skip (concatenated on channels)
        self.up_levels = nn.ModuleList()
        for i in reversed(range(len(channels))):
            res_blocks, attn_blocks = [], []
            for _ in range(layers_per_block + 1):
                res_blocks.append(res_block(ch + skip_channels.pop(), channels[i]))
                ch = channels[i]
                if with_attention[i]:
                    attn_blocks.append(attention(ch))
            self.up_levels.append(Level(res_blocks, attn_blocks, Upsample(ch) if i > 0 else None))

        self.norm_out = nn.GroupNorm(norm_num_groups, ch, eps=norm_eps)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

        self.gradient_checkpointing = False
        self._downsampling_factor = 2 ** (len(channels) - 1)
        self._init_weights()

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Raise a ValueError naming the key and its allowed values unless `config` builds a network.

        config: keyword arguments of `__init__`; missing keys take their defaults.
        """
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
        unknown = sorted(set(config) - set(defaults))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; allowed keys: {sorted(defaults)}")
        c = {**defaults, **config}
        sizes = _as_tuple(c["sample_size"])
        if len(sizes) not in (1, 2) or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sample_size must be a positive int or an (H, W) pair, got {c['sample_size']!r}")
        channels = _as_tuple(c["block_out_channels"])
        if not channels or any(not isinstance(ch, int) or ch < 1 for ch in channels):
            raise ValueError(f"block_out_channels must be a non-empty sequence of positive ints, got {channels!r}")
        factor = 2 ** (len(channels) - 1)
        if any(s % factor for s in sizes):
            raise ValueError(
                f"sample_size {c['sample_size']!r} must be divisible by 2**(len(block_out_channels) - 1) = {factor}"
            )
        for name in ("in_channels", "out_channels"):
            if not isinstance(c[name], int) or c[name] < 1:
                raise ValueError(f"{name} must be a positive int, got {c[name]!r}")
        groups = c["norm_num_groups"]
        if not isinstance(groups, int) or groups < 1 or any(ch % groups for ch in channels):
            raise ValueError(
                f"norm_num_groups={groups!r} must be a positive int dividing every block_out_channels entry {channels}"
            )
        if not isinstance(c["layers_per_block"], int) or c["layers_per_block"] < 1:
            raise ValueError(f"layers_per_block must be an int >= 1, got {c['layers_per_block']!r}")
        with_attention = _attention_levels(c["sample_size"], channels, _as_tuple(c["attention_resolutions"]))
        attended = [ch for ch, a in zip(channels, with_attention) if a]
        attended += [channels[-1]] if c["mid_block_add_attention"] else []
        head_dim = c["attention_head_dim"]
        bad_head_dim = not isinstance(head_dim, int) or head_dim < 1 or any(ch % head_dim for ch in attended)
        if head_dim is not None and bad_head_dim:
            raise ValueError(
                f"attention_head_dim={head_dim!r} must be None or a positive int dividing the channels of every "
                f"level with attention (the middle one included): {sorted(set(attended))}"
            )
        if not 0.0 <= c["dropout"] < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {c['dropout']!r}")
        classes = c["num_class_embeds"]
        if classes is not None and (not isinstance(classes, int) or classes < 1):
            raise ValueError(f"num_class_embeds must be None or an int >= 1, got {classes!r}")
        for name in ("flip_sin_to_cos", "mid_block_add_attention", "center_input_sample"):
            if not isinstance(c[name], bool):
                raise ValueError(f"{name} must be True or False, got {c[name]!r}")
        shift = c["freq_shift"]
        if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not 0 <= shift <= 1:
            raise ValueError(f"freq_shift must be a number in [0, 1] (1: the paper, 0: diffusers), got {shift!r}")
        padding = c["downsample_padding"]
        if padding not in (0, 1) or isinstance(padding, bool):
            raise ValueError(f"downsample_padding must be 0 (TF 'SAME', the paper) or 1, got {padding!r}")

    def _init_weights(self) -> None:
        """The paper's init: Xavier-uniform weights, zero biases, zero last layer of every residual branch."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        zero_init = [self.conv_out]
        zero_init += [m.conv2 for m in self.modules() if isinstance(m, ResBlock)]
        zero_init += [m.proj_out for m in self.modules() if isinstance(m, SelfAttention)]
        for module in zero_init:
            nn.init.zeros_(module.weight)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        **kwargs: Any,
    ) -> None:
        """diffusers' ``ModelMixin.save_pretrained``, then the weights' ``manifest.json`` (module doc).

        The keywords are spelled out: a pipeline's save passes only those its components' signatures name.
        """
        # a str: diffusers' push_to_hub branch splits the path as a string, even when repo_id is given
        super().save_pretrained(os.fspath(save_directory), is_main_process=is_main_process,
                                safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size,
                                **kwargs)
        if is_main_process:
            write_weights_manifest(Path(save_directory))

    def _upload_folder(self, working_dir: str | os.PathLike, repo_id: str, **kwargs: Any) -> Any:
        """diffusers' upload of a saved folder, with the weights' ``manifest.json`` written first:
        ``save_pretrained(push_to_hub=True)`` uploads from inside diffusers' save, before the line above."""
        write_weights_manifest(Path(working_dir))
        return super()._upload_folder(working_dir, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs: Any) -> Any:
        """diffusers' ``ModelMixin.from_pretrained``; a local folder's weights are checked first (`check_weights`)."""
        subfolder = kwargs.get("subfolder") or ""
        if pretrained_model_name_or_path is not None and os.path.isdir(Path(pretrained_model_name_or_path, subfolder)):
            check_weights(Path(pretrained_model_name_or_path), subfolder)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ScratchUNet2DModel":
        """Build a preset from `UNET_PRESETS` ("cifar10", "digits"), with config keys overridden by `overrides`."""
        if name not in UNET_PRESETS:
            raise ValueError(f"unknown preset name {name!r}; allowed values: {sorted(UNET_PRESETS)}")
        config = {**UNET_PRESETS[name], **overrides}
        cls.check_config(config)  # before the call: an unknown key would be a TypeError there
        return cls(**config)

    @property
    def null_class_label(self) -> int | None:
        """Class index meaning "no class" (classifier-free guidance); None for an unconditional model."""
        return self.config.num_class_embeds

    @property
    def predicts_variance(self) -> bool:
        """True when the output carries a second half for `variance_type="learned_range"`."""
        return self.config.out_channels == 2 * self.config.in_channels

    def _batch_vector(self, value: Any, name: str, batch: int, device: torch.device) -> torch.Tensor:
        """A number, 0-d tensor, (1,) or (B,) tensor -> a (B,) tensor on `device`."""
        if not torch.is_tensor(value):
            if isinstance(value, (int, float)):  # checked first: the path torch.compile traces
                pass
            elif isinstance(value, numbers.Integral):  # numpy integers are not int subclasses
                value = int(value)
            elif isinstance(value, numbers.Real):
                value = float(value)
            else:
                raise ValueError(f"{name} must be a number or a tensor, got {type(value).__name__}")
            return torch.full((batch,), value, device=device)
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] not in (1, batch)):
            raise ValueError(
                f"{name} must be a scalar, a 0-d tensor or a 1-d tensor of length 1 or the sample batch "
                f"size {batch}, got shape {tuple(value.shape)}"
            )
        return value.to(device).reshape(-1).expand(batch)

    def _check_sample(self, sample: torch.Tensor) -> None:
        if sample.ndim != 4:
            raise ValueError(f"sample must have shape (B, C, H, W), got shape {tuple(sample.shape)}")
        if not sample.is_floating_point():
            raise ValueError(f"sample must be a floating-point tensor, got dtype {sample.dtype}")
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"sample has {sample.shape[1]} channels but the model's in_channels is {self.config.in_channels}"
            )
        factor = self._downsampling_factor
        if sample.shape[2] % factor or sample.shape[3] % factor:
            raise ValueError(
                f"sample height and width {tuple(sample.shape[2:])} must be divisible by {factor} "
                f"(the model downsamples {len(self.down_levels) - 1} times)"
            )

    def _class_embedding(self, class_labels: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.class_embed is None:
            if class_labels is not None:
                raise ValueError("class_labels were given but the model is unconditional (num_class_embeds=None)")
            return None
        num_classes = self.config.num_class_embeds
        if class_labels is None:
            raise ValueError(
                f"class_labels are required for this class-conditional model; pass labels in [0, {num_classes}), "
                f"or null_class_label={num_classes} for the unconditional branch"
            )
        class_labels = self._batch_vector(class_labels, "class_labels", batch, device)
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}")
        # a value check reads the data (a host sync, a graph break), so it runs in eager mode only;
        # compiled code still fails loudly, inside the embedding lookup
        if not torch.compiler.is_compiling():
            if bool(((class_labels < 0) | (class_labels > num_classes)).any()):
                raise ValueError(
                    f"class_labels must be in [0, {num_classes}] ({num_classes} = null_class_label), "
                    f"got values in [{int(class_labels.min())}, {int(class_labels.max())}]"
                )
        return self.class_embed(class_labels)

    def _run(self, block: nn.Module, h: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        # activation checkpointing per block: recompute it in backward instead of storing its activations
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, h, temb_act)
        return block(h, temb_act)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | int | None = None,
        return_dict: bool = True,
    ) -> ScratchUNet2DOutput | tuple[torch.Tensor]:
        """Predict the noise eps_theta(x_t, t[, y]) (term P3 of the derivation).

        sample: (B, in_channels, H, W), H and W divisible by 2**(levels - 1).
        timestep: int/float, 0-d tensor, or (B,) tensor (may be fractional).
        class_labels: (B,) integer tensor (or an int) for a class-conditional model; None otherwise.
        Returns `ScratchUNet2DOutput(sample=(B, out_channels, H, W))`, or a 1-tuple if return_dict is False.
        """
        self._check_sample(sample)
        batch = sample.shape[0]
        timesteps = self._batch_vector(timestep, "timestep", batch, sample.device)
        temb = self.time_embed(timesteps.float())
        class_emb = self._class_embedding(class_labels, batch, sample.device)
        if class_emb is not None:
            temb = temb + class_emb.to(temb.dtype)
        # every res block applies SiLU before its own time projection: compute it once
        temb_act = F.silu(temb)

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        h = self.conv_in(sample)
        skips = [h]
        for level in self.down_levels:
            for i, res_block in enumerate(level.res_blocks):
                h = self._run(res_block, h, temb_act)
                if len(level.attn_blocks):
                    h = self._run(level.attn_blocks[i], h, temb_act)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)

        h = self._run(self.mid_res_in, h, temb_act)
        if self.mid_attn is not None:
            h = self._run(self.mid_attn, h, temb_act)
        h = self._run(self.mid_res_out, h, temb_act)

        for level in self.up_levels:
            for i, res_block in enumerate(level.res_blocks):
                h = self._run(res_block, torch.cat([h, skips.pop()], dim=1), temb_act)
                if len(level.attn_blocks):
                    h = self._run(level.attn_blocks[i], h, temb_act)
            if level.resample is not None:
                h = level.resample(h)

        out = self.conv_out(F.silu(self.norm_out(h)))
        if not return_dict:
            return (out,)
        return ScratchUNet2DOutput(sample=out)
