"""The model statistics of the analytic variances, by Monte Carlo over data, in one pass.

The optimal reverse variance (Bao et al. 2022, Analytic-DPM; A1-A2 in ``docs/derivation.md``,
``diffusion_math.analytic_variance``) depends on the model only through

    A3:  Gamma_t = E_{x_0 ~ data, eps ~ N(0, I)} ||eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 / d

and the optimum for the model's own mean (D4, ``diffusion_math.model_error_variance``) through its
noise-prediction error

    D4:  Delta_t = E ||eps - eps_theta(x_t, t)||^2 / d

one number each per training timestep, estimated once per model from the same model calls.
``estimate_eps_sq_mean`` draws one x_t per (image, timestep) pair and averages over the images; a
batch mixes timesteps, so each model call serves many of them. The results go into the scheduler's
config (``analytic_eps_sq_mean``, ``analytic_eps_error_sq_mean``), which a saved pipeline keeps;
``ddpm-estimate-variance`` does that for a saved folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..diffusion_math import predict_eps, split_model_output
from .likelihood import call_model
from ..scheduler import ScratchDDPMScheduler
from ..tensor_utils import draw_noise, require_int


@dataclass
class EpsSqMeanEstimate:
    """Gamma_t (A3) and Delta_t (D4) at every training timestep, with their Monte-Carlo standard errors.

    ``timesteps`` are those the model was evaluated at; values in between are linearly interpolated.
    """

    eps_sq_mean: torch.Tensor  # (T,) float64, Gamma_t
    standard_error: torch.Tensor  # (T,) float64
    timesteps: torch.Tensor  # (K,) int64, ascending
    num_images: int
    eps_error_sq_mean: torch.Tensor  # (T,) float64, Delta_t
    error_standard_error: torch.Tensor  # (T,) float64

    def tolist(self) -> list[float]:
        """Gamma_t as ``ScratchDDPMScheduler(analytic_eps_sq_mean=...)`` takes it."""
        return self.eps_sq_mean.tolist()

    def scheduler_config(self) -> dict[str, list[float]]:
        """Both statistics under their scheduler config keys."""
        return {"analytic_eps_sq_mean": self.eps_sq_mean.tolist(),
                "analytic_eps_error_sq_mean": self.eps_error_sq_mean.tolist()}


def evaluated_timesteps(num_train_timesteps: int, num_timesteps_sampled: int | None) -> torch.Tensor:
    """Up to K = ``num_timesteps_sampled`` timesteps t_k = round((T-1) (k / (K-1))^2), ascending, both ends
    included (all T when it is None). Quadratic spacing puts them densest at small t, where Gamma_t
    rises fastest: on Gaussian toy data linear interpolation between 40 of them is off by < 0.003,
    8x less than with even spacing."""
    if num_timesteps_sampled is None:
        return torch.arange(num_train_timesteps)
    k = require_int("num_timesteps_sampled", num_timesteps_sampled, minimum=2)
    if k > num_train_timesteps:
        raise ValueError(f"num_timesteps_sampled must be in [2, num_train_timesteps={num_train_timesteps}], got {k}")
    if k == num_train_timesteps:
        return torch.arange(num_train_timesteps)
    positions = (num_train_timesteps - 1) * np.linspace(0.0, 1.0, k) ** 2
    return torch.from_numpy(np.unique(positions.round().astype(np.int64)))


@torch.no_grad()
def estimate_eps_sq_mean(
    unet: Callable,
    scheduler: ScratchDDPMScheduler,
    images: torch.Tensor,
    num_timesteps_sampled: int | None = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    *,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> EpsSqMeanEstimate:
    """Gamma_t = E ||eps_theta(x_t, t)||^2 / d (A3) and Delta_t = E ||eps - eps_theta(x_t, t)||^2 / d (D4)
    for every training timestep, by Monte Carlo.

    Every image is noised once at every evaluated timestep (F2) and ``unet`` predicts the noise;
    for ``sample`` and ``v_prediction`` models the prediction is converted to eps (E4 inverted, or
    from v), and a 2C-channel output is scored on its mean half. Gamma_t is the mean over the images of
    ||eps_theta||^2 / d, Delta_t that of ||eps - eps_theta||^2 / d, each with standard error std / sqrt(N).

    Args:
        unet: called as ``unet(x_t, timesteps, **model_kwargs)``; a diffusers UNet or any callable.
        scheduler: its betas and ``prediction_type`` (a diffusers DDPMScheduler config works too).
        images: (N, C, ...) training images, in the range the model was trained on ([-1, 1]).
        num_timesteps_sampled: evaluate up to K timesteps (0 and T-1 included, ``evaluated_timesteps``)
            and interpolate linearly in between (default: all T; the cost is N x K model evaluations).
        batch_size: (image, timestep) pairs per model call.
        generator: for the noise, drawn per batch: the same seed and batch size give the same estimate.
        model_kwargs: extra model arguments; tensors whose first dim is N (e.g. ``class_labels``) go
            with their images, anything else is passed as is.
        progress: a tqdm bar of the noised images evaluated, with their rate.
    """
    from tqdm.auto import tqdm

    if not isinstance(scheduler, ScratchDDPMScheduler):
        scheduler = ScratchDDPMScheduler.from_config(scheduler.config)
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or images.shape[0] < 1:
        raise ValueError(f"images must be a tensor (N, C, ...) with N >= 1, got {getattr(images, 'shape', images)!r}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in the model's range ([-1, 1]), got {images.dtype}")
    batch_size = require_int("batch_size", batch_size, minimum=1)
    config = scheduler.config
    T = config.num_train_timesteps
    timesteps = evaluated_timesteps(T, num_timesteps_sampled)
    n, k = images.shape[0], len(timesteps)
    device, dtype = images.device, torch.float32 if images.dtype in (torch.float16, torch.bfloat16) else images.dtype
    chain = scheduler.diffusion_chain(device=device)  # the training chain
    model_kwargs = dict(model_kwargs or {})
    # per timestep: sums of ||eps_theta||^2 / d and of its square (row 0), and of ||eps - eps_theta||^2 / d (row 1)
    total = torch.zeros(2, k, dtype=torch.float64, device=device)
    total_sq = torch.zeros(2, k, dtype=torch.float64, device=device)
    device_timesteps = timesteps.to(device)

    bar = tqdm(total=n * k, desc=f"Gamma_t at {k} timesteps", unit="img", disable=not progress)
    # pairs p = image * K + timestep index: a batch covers consecutive images at every timestep
    for start in range(0, n * k, batch_size):
        pairs = torch.arange(start, min(start + batch_size, n * k), device=device)
        image_index, timestep_index = pairs // k, pairs % k
        t = device_timesteps[timestep_index]
        x0 = images[image_index].to(dtype)
        noise = draw_noise(tuple(x0.shape), generator, device, dtype)
        x_t = chain.q_sample(x0, noise, t)  # F2
        kwargs = {key: _per_pair(value, image_index, n) for key, value in model_kwargs.items()}
        output = call_model(unet, x_t.to(images.dtype), t, kwargs).to(dtype)
        mean_part, _ = split_model_output(output, x_t, config.variance_type)
        eps = predict_eps(chain, mean_part, x_t, t, config.prediction_type)
        eps = eps.to(torch.float64).reshape(len(pairs), -1)
        per_pair = torch.stack([eps.pow(2).mean(dim=1), (noise.to(torch.float64).reshape(len(pairs), -1) - eps).pow(2).mean(dim=1)])
        total.index_add_(1, timestep_index, per_pair)
        total_sq.index_add_(1, timestep_index, per_pair**2)
        bar.update(len(pairs))
    bar.close()

    mean = (total / n).cpu()
    variance = ((total_sq / n).cpu() - mean**2).clamp(min=0) * (n / max(n - 1, 1))
    standard_error = (variance / n).sqrt() if n > 1 else torch.full_like(mean, math.nan)
    return EpsSqMeanEstimate(
        eps_sq_mean=_interpolate(timesteps, mean[0], T),
        standard_error=_interpolate(timesteps, standard_error[0], T),
        timesteps=timesteps,
        num_images=n,
        eps_error_sq_mean=_interpolate(timesteps, mean[1], T),
        error_standard_error=_interpolate(timesteps, standard_error[1], T),
    )


def _per_pair(value: Any, image_index: torch.Tensor, n: int) -> Any:
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == n:
        return value[image_index.to(value.device)]
    return value


def _interpolate(timesteps: torch.Tensor, values: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Values at ``timesteps`` -> every training timestep, linearly in t (exact where evaluated)."""
    if len(timesteps) == num_train_timesteps:
        return values
    grid = np.arange(num_train_timesteps)
    return torch.from_numpy(np.interp(grid, timesteps.numpy(), values.numpy()))
