"""Training objectives from a model output: L_simple (Ho et al. 2020) and the hybrid loss (Nichol & Dhariwal 2021).

Both take what one training step already has (x_0, the noise, the drawn timesteps, x_t and the
model's output at (x_t, t)), the training chain (a ``DiffusionChain``, t -> t - 1) and the
``ReverseStepConfig`` that reads the output, so a trainer calls the model once and picks the loss:

    L_simple = E_{t, x_0, eps} ||target - model(x_t, t)||^2                (L2 in docs/derivation.md)
    L_hybrid = L_simple + lambda L_vlb,   L_vlb = sum_t L_t ~ T * L_t at a uniformly drawn t

``target`` is the noise, x_0 or v (``diffusion_math.simple_loss_target``). With ``snr_gamma`` each
image's L_simple term is multiplied by the Min-SNR-gamma weight (Hang et al. 2023; L3,
``min_snr_weight``) before the batch mean; in L_hybrid only the L_simple term is weighted.

L_t is likelihood's ``vlb_term`` of diffusion_math's ``p_mean_variance``: the step the sampler takes.
In L_vlb the mean half of the output is detached, so the bound trains only the variance half
(``learned_range``: the interpolation v of Nichol & Dhariwal's eq. 15) while the mean is trained by
L_simple alone (their sec. 3.1). Units follow improved-diffusion: MSE averaged over dimensions, L_t in bits/dim, and
lambda = 0.001 multiplying T * L_t (improved-diffusion: ``vb * num_timesteps / 1000``). As there,
the bound term uses the unclipped x_0 (the config's clipping is ignored): the model is trained, not
sampled. The model output is split by diffusion_math's ``split_model_output``, the one check that a
learned variance comes with 2C output channels.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..diffusion_math import (
    LEARNED_VARIANCE_TYPES,
    PREDICTION_TYPES,
    DiffusionChain,
    ReverseStepConfig,
    p_mean_variance,
    simple_loss_target,
    split_model_output,
)
from ..tensor_utils import extract
from .likelihood import nats_to_bits_per_dim, vlb_term

LOSS_TYPES = ("simple", "hybrid")
DEFAULT_LAMBDA_VLB = 0.001


def min_snr_weight(alphas_cumprod_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """The Min-SNR-gamma weight on one image's L_simple term for ``prediction_type``, eq. L3:

        SNR_t = abar_t / (1 - abar_t)
        epsilon:       min(SNR_t, gamma) / SNR_t        = min(1, gamma (1 - abar_t) / abar_t)
        sample:        min(SNR_t, gamma)
        v_prediction:  min(SNR_t, gamma) / (SNR_t + 1)  = min(SNR_t, gamma) (1 - abar_t)

    Each turns its own squared error into the same x_0-space loss min(SNR_t, gamma) ||x_0 - x0_hat||^2
    (Hang et al. 2023), since ||eps - eps_hat||^2 = SNR_t ||x_0 - x0_hat||^2 and
    ||v - v_hat||^2 = (SNR_t + 1) ||x_0 - x0_hat||^2 (E4 and its v form). ``alphas_cumprod_t``: abar_t
    gathered per image, (B,), float64 from the chain's table; the result has its shape and dtype.
    ``gamma`` > 0; ``inf`` clips nothing (weight 1 for epsilon, SNR_t for sample, abar_t for v). The
    right-hand forms stay finite at abar_t = 0 (zero terminal SNR: weight 0 for sample and v).
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"snr_gamma must be a number > 0 (inf: no clipping), got {gamma!r}")
    gamma = float(gamma)
    if prediction_type == "epsilon":
        return (gamma * (1 - alphas_cumprod_t) / alphas_cumprod_t).clamp(max=1.0)
    snr_clipped = (alphas_cumprod_t / (1 - alphas_cumprod_t)).clamp(max=gamma)  # min(SNR_t, gamma)
    if prediction_type == "sample":
        return snr_clipped
    if prediction_type == "v_prediction":
        return snr_clipped * (1 - alphas_cumprod_t)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def simple_loss(
    model_output: torch.Tensor,
    chain: DiffusionChain,
    config: ReverseStepConfig,
    x_start: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """L_simple per image (L2): mean over dimensions of (target - output)^2, (B,).

    ``target = simple_loss_target(chain, x_start, noise, timesteps, config.prediction_type)`` (noise,
    x_0 or v). A model with 2C output channels is scored on its first C (the mean part). With
    ``snr_gamma``, each image's term times ``min_snr_weight`` at its t (L3), the weight taken from the
    chain's float64 ``alphas_cumprod`` and cast to the loss's dtype.
    """
    _check_chain_and_config(chain, config)
    mean_output, _ = split_model_output(model_output, x_start, config.variance_type)  # (B, C, ...)
    target = simple_loss_target(chain, x_start, noise, timesteps, config.prediction_type)
    per_image = ((mean_output - target) ** 2).reshape(x_start.shape[0], -1).mean(dim=1)  # (B,)
    if snr_gamma is None:
        return per_image
    # a float64 (B,) "like" keeps the gathered abar_t in the table's precision
    alphas_cumprod_t = extract(chain.alphas_cumprod, timesteps, per_image.to(torch.float64))
    weight = min_snr_weight(alphas_cumprod_t, snr_gamma, config.prediction_type)
    return per_image * weight.to(per_image.dtype)


def vlb_loss(
    model_output: torch.Tensor,
    chain: DiffusionChain,
    config: ReverseStepConfig,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """The bound's term L_t at each image's t in bits/dim, (B,), with the mean's gradient stopped.

    L_0 (discretised decoder) where t = 0, KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) where
    t >= 1 (``likelihood.vlb_term``), p_theta the unclipped ``p_mean_variance``. Only the variance
    half of ``model_output`` (B, 2C, ...) receives gradient.
    """
    _check_learned_variance(chain, config)
    mean_output, variance_output = split_model_output(model_output, x_t, config.variance_type)
    frozen_output = torch.cat([mean_output.detach(), variance_output], dim=1)
    unclipped = replace(config, clip_sample=False, thresholding=False)
    step = p_mean_variance(chain, frozen_output, x_t, timesteps, unclipped)
    nats = vlb_term(chain, x_start, x_t, timesteps, step)
    return nats_to_bits_per_dim(nats, x_start[0].numel())


def hybrid_loss(
    model_output: torch.Tensor,
    chain: DiffusionChain,
    config: ReverseStepConfig,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    lambda_vlb: float = DEFAULT_LAMBDA_VLB,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """L_hybrid = L_simple + lambda_vlb * T * L_t (Nichol & Dhariwal 2021, eq. 16), averaged over the batch: a scalar.

    For ``learned``/``learned_range`` configs and models with 2C output channels. T * L_t at a
    uniformly drawn t is an unbiased estimate of L_vlb = sum_t L_t. ``snr_gamma`` weights the L_simple
    term only (L3); the bound term keeps its weight, so the variance is still trained on L_vlb.
    """
    if not lambda_vlb >= 0:
        raise ValueError(f"lambda_vlb must be >= 0, got {lambda_vlb}")
    simple = simple_loss(model_output, chain, config, x_start, noise, timesteps, snr_gamma)
    vlb = vlb_loss(model_output, chain, config, x_start, x_t, timesteps)
    return (simple + lambda_vlb * chain.num_timesteps * vlb).mean()


def training_loss(
    loss_type: str,
    model_output: torch.Tensor,
    chain: DiffusionChain,
    config: ReverseStepConfig,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    lambda_vlb: float = DEFAULT_LAMBDA_VLB,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The scalar loss named by ``loss_type`` ("simple" or "hybrid") for one batch; what a trainer's
    ``--loss_type`` selects. ``chain``: the training chain on the batch's device, e.g.
    ``scheduler.diffusion_chain(device=...)``; ``config``: ``scheduler.reverse_step_config``.
    ``snr_gamma``: None for the unweighted L_simple, else gamma > 0 of the Min-SNR-gamma weight on
    each image's L_simple term (L3, ``min_snr_weight``). Compute in float32 or float64 (cast a
    mixed-precision output first)."""
    if loss_type == "simple":
        return simple_loss(model_output, chain, config, x_start, noise, timesteps, snr_gamma).mean()
    if loss_type == "hybrid":
        return hybrid_loss(model_output, chain, config, x_start, x_t, noise, timesteps, lambda_vlb, snr_gamma)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def _check_chain_and_config(chain: DiffusionChain, config: ReverseStepConfig) -> None:
    if not isinstance(chain, DiffusionChain):
        raise ValueError(
            f"chain must be a DiffusionChain (the training chain: scheduler.diffusion_chain(device=...)), "
            f"got {type(chain).__name__}"
        )
    if not isinstance(config, ReverseStepConfig):
        raise ValueError(
            f"config must be a ReverseStepConfig (scheduler.reverse_step_config), got {type(config).__name__}"
        )


def _check_learned_variance(chain: DiffusionChain, config: ReverseStepConfig) -> None:
    _check_chain_and_config(chain, config)
    if config.variance_type not in LEARNED_VARIANCE_TYPES:
        raise ValueError(
            f"the hybrid loss trains a learned variance, but the variance_type is {config.variance_type!r}; "
            f"use variance_type in {LEARNED_VARIANCE_TYPES} with a model of out_channels = 2 * in_channels, "
            "or loss_type='simple'"
        )
