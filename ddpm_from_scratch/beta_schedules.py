"""Noise schedules beta_1..beta_T, all built in float64.

The scheduler casts at the point of use; keeping the tables in float64 matters because
``alphas_cumprod`` is a product of up to 1,000 factors, and float32 would lose ~1e-5 of it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .tensor_utils import ArgumentTypeError, require_int, require_real

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
# the schedules built from beta_start and beta_end (squaredcos_cap_v2 ignores both)
ENDPOINT_SCHEDULES = ("linear", "scaled_linear", "sigmoid")


def check_beta_range(beta_start, beta_end) -> tuple[float, float]:
    """THE rule for a schedule's end points: finite real numbers with 0 < beta_start <= beta_end < 1.

    Returns them as floats. beta_start = beta_end is a constant schedule; beta_start > beta_end would
    add the most noise first, which no schedule here means. Raises ValueError naming both.
    """
    beta_start, beta_end = require_real("beta_start", beta_start), require_real("beta_end", beta_end)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
            f"beta_end={beta_end}"
        )
    return beta_start, beta_end


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Ho et al. (2020), sec. 4: beta_t linear from beta_start (1e-4) to beta_end (0.02)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Latent diffusion's schedule: sqrt(beta_t) linear, i.e. beta_t quadratic in t."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999, offset: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021), eq. 17: abar(t) = cos^2((t/T + s)/(1 + s) * pi/2), s = 0.008.

    beta_t = 1 - abar(t)/abar(t-1), capped at ``max_beta`` so the last steps stay finite.
    """
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    alpha_bar = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    return torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=max_beta)


def sigmoid_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """beta_t = beta_start + (beta_end - beta_start) * sigmoid(x_t), x_t linear in [-6, 6] (GeoDiff)."""
    x = torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), Algorithm 1: shift and scale sqrt(abar_t) so that abar_T = 0 (zero terminal SNR)
    while abar_1 is unchanged."""
    sqrt_alphas_cumprod = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_alphas_cumprod[0].clone(), sqrt_alphas_cumprod[-1].clone()
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * first / (first - last)
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """The float64 betas for a diffusers-style scheduler config (``trained_betas`` wins if given).

    The end points follow ``check_beta_range`` for the schedules that use them; every beta_t must be
    finite and in (0, 1).
    """
    if trained_betas is None:
        num_train_timesteps = require_int("num_train_timesteps", num_train_timesteps, minimum=1)
        if beta_schedule in ENDPOINT_SCHEDULES:
            beta_start, beta_end = check_beta_range(beta_start, beta_end)
    if trained_betas is not None:
        betas = _trained_betas(trained_betas)
    elif beta_schedule == "linear":
        betas = linear_betas(num_train_timesteps, beta_start, beta_end)
    elif beta_schedule == "scaled_linear":
        betas = scaled_linear_betas(num_train_timesteps, beta_start, beta_end)
    elif beta_schedule == "squaredcos_cap_v2":
        betas = cosine_betas(num_train_timesteps)
    elif beta_schedule == "sigmoid":
        betas = sigmoid_betas(num_train_timesteps, beta_start, beta_end)
    else:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES} (or pass trained_betas), got {beta_schedule!r}")
    outside = ~((betas > 0) & (betas < 1))  # NaN is outside
    if bool(outside.any()):
        source = "trained_betas" if trained_betas is not None else f"beta_start={beta_start}, beta_end={beta_end}"
        raise ValueError(
            f"every beta_t must lie in the open interval (0, 1); {source} gives {int(outside.sum())} outside it "
            f"(min {betas.min().item():.3g}, max {betas.max().item():.3g})"
        )
    # the rescaled schedule ends at beta_T = 1 (abar_T = 0) on purpose: checked before it
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def _trained_betas(trained_betas) -> torch.Tensor:
    """``trained_betas`` as a float64 tensor, refusing strings and bools (numpy would parse "0.1")."""
    array = np.asarray(trained_betas.detach().cpu() if isinstance(trained_betas, torch.Tensor) else trained_betas)
    if array.dtype.kind not in "iuf":
        raise ArgumentTypeError(f"trained_betas must be real numbers, got {array.dtype} values")
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"trained_betas must be a non-empty 1-d sequence, got shape {tuple(array.shape)}")
    return torch.as_tensor(array.astype(np.float64))
