"""The EMA of the weights (the paper samples from EMA weights, decay 0.9999): diffusers' EMAModel with warmup.

After optimizer update k = 1, 2, ...:  ema <- decay_k * ema + (1 - decay_k) * theta, with
decay_k = clip(1 - (1 + (k - 1) / inv_gamma)^-power, min_decay, max_decay) and decay_1 = 0 (a copy, so the
average never carries the random init for long). With power 3/4 the decay reaches 0.999 after ~10k
updates, with 2/3 it reaches 0.9999 after ~1M (a full-length run).

EMAModel keeps the average as a list of float32 tensors; `ema_unet` is a model that carries them when
they are sampled from, checked or saved (`ema_weights`). A checkpoint stores them as a diffusers model
folder (unet_ema/) and the update count in ema.json, so resuming reads no pickle.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.training_utils import EMAModel

from .options import TrainingOptions


def make_ema(unet: torch.nn.Module, opts: TrainingOptions, device: torch.device) -> tuple[EMAModel, torch.nn.Module]:
    """The EMA of `unet` with the run's settings, and the model that carries its weights."""
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False).to(device)
    ema = EMAModel(ema_unet.parameters(), decay=opts.ema_max_decay, min_decay=opts.ema_min_decay, use_ema_warmup=True,
                   inv_gamma=opts.ema_inv_gamma, power=opts.ema_power, foreach=True)
    return ema, ema_unet


def ema_weights(ema: EMAModel, ema_unet: torch.nn.Module) -> torch.nn.Module:
    """`ema_unet` holding the current average."""
    ema.copy_to(ema_unet.parameters())
    return ema_unet


def ema_state(ema: EMAModel) -> dict[str, Any]:
    """What ema.json records: the update count (read back on resume) and the settings (for reference)."""
    return {"num_updates": ema.optimization_step,
            "settings": {"max_decay": ema.decay, "min_decay": ema.min_decay, "inv_gamma": ema.inv_gamma,
                         "power": ema.power}}


def load_ema(ema: EMAModel, ema_unet: torch.nn.Module, weights: dict[str, torch.Tensor], num_updates: int) -> None:
    """Continue the average from saved weights after `num_updates` updates; the settings stay this run's."""
    ema_unet.load_state_dict(weights)
    ema.load_state_dict({"optimization_step": num_updates,
                         "shadow_params": [param.detach() for param in ema_unet.parameters()]})
