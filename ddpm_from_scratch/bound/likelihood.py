"""The variational bound of DDPM, term by term, and the NLL of data in bits per dimension.

The bound the code implements is the paper's (Ho et al. 2020, eq. 5; L1 in ``docs/derivation.md``),
*not* the derivation's final line (slip E5: that line is a "KL" between densities over different
variables):

    -log p_theta(x_0) <= L = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                          prior_kl
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))    posterior_kl_term
    L_0     = -log p_theta(x_0 | x_1), discretised over 8-bit bins  decoder_nll

Indexing: diffusers' timestep index i = 0..T-1 is the paper's t = i + 1. The term evaluated at index
i is therefore the paper's L_i: index 0 is the decoder L_0, index i >= 1 the KL L_i, and the prior
uses abar at index T - 1. All terms are in nats summed over the dimensions of an image; bits/dim is
nats / (dims * ln 2) (``nats_to_bits_per_dim``). Data are images in [-1, 1] that came from uint8
pixels (x = k / 127.5 - 1), so the bound is on the negative log-*probability* of the 8-bit image
and is comparable with the paper's "<= 3.70 bits/dim" on CIFAR-10.

Every term takes a ``DiffusionChain`` (for q) and the ``ReverseStep`` that diffusion_math's
``p_mean_variance`` returns (for p_theta): the step the sampler takes (x_0 from the model output,
clipped or thresholded as the ``ReverseStepConfig`` says, mean = posterior mean P2 at that x_0,
log-variance for its ``variance_type``). For ``fixed_large`` the decoder variance is beta~_1 (the
posterior variance of the paper's t = 2), not beta_1, as in Ho et al.'s ``diffusion_utils_2.py`` and
improved-diffusion (``np.append(posterior_variance[1], betas[1:])``); the sampler adds no noise on
its final step, so it never uses that variance. Only ``nll_bits_per_dim`` sees a scheduler: it
reads the chain and the step's config off it once, at the entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..diffusion_math import DiffusionChain, ReverseStep, ReverseStepConfig, p_mean_variance
from ..scheduler import ScratchDDPMScheduler  # nll_bits_per_dim's entry only: a scheduler -> its chain
from ..tensor_utils import draw_noise

LN2 = math.log(2.0)
NUM_PIXEL_BINS = 256
# half the width of one 8-bit bin in [-1, 1]: bins are centred on k / 127.5 - 1, k = 0..255
HALF_BIN_WIDTH = 1.0 / 255.0


# ---------------------------------------------------------------------------- Gaussian formulas


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor | float, logvar2: torch.Tensor | float
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (broadcasting).

    Closed form for univariate Gaussians: 1/2 (logvar2 - logvar1 + e^(logvar1 - logvar2)
    + (mean1 - mean2)^2 e^(-logvar2) - 1). Log-variances in, so that tiny variances stay exact.
    """
    mean1, logvar1 = torch.as_tensor(mean1), torch.as_tensor(logvar1)
    mean2 = torch.as_tensor(mean2, dtype=mean1.dtype, device=mean1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=logvar1.dtype, device=logvar1.device)
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - e^a) for a <= 0, accurate at both ends (Maechler 2012): expm1 near 0, log1p far below."""
    return torch.where(a > -LN2, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _log_normal_interval_probability(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for standardised edges lower < upper, without cancellation.

    An interval in the upper tail is mirrored into the lower tail (Phi(u) - Phi(l) = Phi(-l) - Phi(-u)),
    where log Phi is accurate; then log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(1 - Phi(lo) / Phi(hi)).
    """
    mirror = (lower + upper) > 0
    lo = torch.where(mirror, -upper, lower)
    hi = torch.where(mirror, -lower, upper)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)


def pixel_bin_index(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit value k (0..255) whose bin [k/127.5 - 1 -+ 1/255] contains x in [-1, 1] (clamped)."""
    return torch.round((x + 1.0) * 127.5).clamp(0, NUM_PIXEL_BINS - 1)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor
) -> torch.Tensor:
    """log P(x) elementwise, P the Gaussian N(mean, exp(log_variance)) discretised over 8-bit bins.

    The decoder of Ho et al. (2020), eq. 13: for data x in [-1, 1] on the grid k / 127.5 - 1,
    P(x) = Phi((x + 1/255 - mean) / sigma) - Phi((x - 1/255 - mean) / sigma), with the lower edge
    of the bin at x = -1 moved to -inf and the upper edge of the bin at x = 1 moved to +inf, so that
    the 256 bin probabilities sum to 1. x is snapped to the centre of the bin that contains it.
    Exact normal CDFs in log space (``log_ndtr``), not the tanh approximation of the reference code,
    so that far-tail bins give finite log-probabilities. Nats; gradients flow to mean and variance.
    """
    k = pixel_bin_index(x)
    centre = k / 127.5 - 1.0
    inv_std = torch.exp(-0.5 * log_variance)
    upper = (centre + HALF_BIN_WIDTH - mean) * inv_std
    lower = (centre - HALF_BIN_WIDTH - mean) * inv_std
    # All three branches are computed with finite edges, so no inf reaches autograd through where().
    log_cdf_upper = torch.special.log_ndtr(upper)  # bin 0: (-inf, upper]
    log_survival_lower = torch.special.log_ndtr(-lower)  # bin 255: [lower, +inf)
    log_interval = _log_normal_interval_probability(lower, upper)
    return torch.where(k == 0, log_cdf_upper, torch.where(k == NUM_PIXEL_BINS - 1, log_survival_lower, log_interval))


def nats_to_bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """A negative log-likelihood (or bound) in nats for one image -> bits per dimension: nats / (dims ln 2)."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return nats / (num_dims * LN2)


def sum_over_dims(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): a per-dimension term summed over each image's dimensions."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


# ---------------------------------------------------------------------------- the bound's terms


def prior_kl(chain: DiffusionChain, x_start: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)), q(x_T | x_0) = N(sqrt(abar_T) x_0, (1 - abar_T) I) (F4).

    (B,) nats per image. No parameters: this is the gap left by a forward process that does not
    reach N(0, I) exactly (about 1e-5 nats/dim for the paper's linear schedule, T = 1000).
    ``timestep``: where the sampling chain starts from N(0, I) (default: the last, T - 1).
    """
    last = chain.num_timesteps - 1 if timestep is None else timestep
    mean, variance = chain.q_mean_variance(x_start, last)  # (B, C, ...), 0-d
    return sum_over_dims(normal_kl(mean, torch.log(variance).expand_as(mean), 0.0, 0.0))


def posterior_kl_term(
    chain: DiffusionChain, x_start: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, step: ReverseStep
) -> torch.Tensor:
    """L_{t-1} = KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t)), s = the chain's next timestep, closed form.

    (B,) nats per image. q(x_s | x_t, x_0) = N(mu~ (P2), beta~ (E3 corrected)) of the chain's step at
    ``timesteps`` (B,) (the merged step's posterior on a strided chain); p_theta = N(step.mean,
    exp(step.log_variance)). For steps that add noise (on the final step the posterior is a point
    mass and the term is the decoder's, ``decoder_nll``).
    """
    true_mean, _, true_log_variance = chain.q_posterior_mean_variance(x_start, x_t, timesteps)
    return sum_over_dims(normal_kl(true_mean, true_log_variance.expand_as(true_mean), step.mean, step.log_variance))


def decoder_nll(x_start: torch.Tensor, step: ReverseStep) -> torch.Tensor:
    """L_0 = -log p_theta(x_0 | x_1) with the discretised Gaussian decoder (eq. 13), (B,) nats per image."""
    log_variance = torch.as_tensor(step.log_variance, dtype=step.mean.dtype, device=step.mean.device)
    return -sum_over_dims(discretized_gaussian_log_likelihood(x_start, step.mean, log_variance))


def vlb_term(
    chain: DiffusionChain, x_start: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, step: ReverseStep
) -> torch.Tensor:
    """The bound's term at each image's timestep: L_0 (decoder) where the chain ends, the posterior KL
    elsewhere. On the training chain: L_0 at t = 0, L_t at t >= 1.

    (B,) nats per image; ``timesteps`` (B,) may differ across the batch (as in training). ``step``:
    ``p_mean_variance`` of the model's output at (x_t, timesteps) on ``chain``.
    """
    is_final = chain.lookup("not_final", timesteps, step.mean).reshape(-1) == 0  # (B,): no noise added there
    kl = posterior_kl_term(chain, x_start, x_t, timesteps, step)
    return torch.where(is_final, decoder_nll(x_start, step), kl)


# ---------------------------------------------------------------------------- the whole bound


@dataclass
class VariationalBound:
    """The bound for each image, in bits/dim, term by term.

    ``vb_bpd[:, i]`` is the term at timestep index i, the paper's L_i: column 0 is the decoder L_0,
    column i >= 1 the KL L_i. ``total_bpd = prior_bpd + vb_bpd.sum(1)`` bounds -log2 p(x_0) / dims.
    For a strided chain (``timesteps``) the columns off the chain are 0, the decoder is the column of
    the chain's last timestep and the prior is taken at its first.
    """

    total_bpd: torch.Tensor  # (N,)
    prior_bpd: torch.Tensor  # (N,) L_T
    decoder_bpd: torch.Tensor  # (N,) L_0 (= vb_bpd[:, 0] on the training chain)
    vb_bpd: torch.Tensor  # (N, T)
    num_dims: int  # dimensions per image (C * H * W)
    timesteps: list[int] | None = None  # the chain's timesteps, descending; None: all T (the training chain)

    @property
    def bits_per_dim(self) -> float:
        """The bound averaged over the images: the dataset's NLL upper bound in bits/dim."""
        return float(self.total_bpd.mean())

    @property
    def standard_error(self) -> float:
        """Standard error of ``bits_per_dim`` over images (images vary, and each term is a one-draw estimate)."""
        n = self.total_bpd.numel()
        return float(self.total_bpd.std() / math.sqrt(n)) if n > 1 else float("nan")

    def terms_per_timestep(self) -> torch.Tensor:
        """(T,) each term averaged over the images: the bound over t, ready to plot."""
        return self.vb_bpd.mean(dim=0)

    def total_nats(self) -> torch.Tensor:
        """(N,) the bound in nats per image."""
        return self.total_bpd * (self.num_dims * LN2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: means over the images, and the per-timestep curve."""
        return {
            "bits_per_dim": self.bits_per_dim,
            "bits_per_dim_standard_error": self.standard_error if self.total_bpd.numel() > 1 else None,
            "prior_bpd": float(self.prior_bpd.mean()),
            "decoder_bpd": float(self.decoder_bpd.mean()),
            "num_images": int(self.total_bpd.numel()),
            "num_dims": self.num_dims,
            "timesteps": self.timesteps,
            "terms_per_timestep_bpd": self.terms_per_timestep().tolist(),
        }


def _compute_dtype(device: torch.device) -> torch.dtype:
    # the bound's terms are differences of nearly equal numbers at small t: float64 where the device has it
    return torch.float32 if device.type == "mps" else torch.float64


def _as_scratch_scheduler(scheduler: Any) -> ScratchDDPMScheduler:
    if isinstance(scheduler, ScratchDDPMScheduler):
        return scheduler
    if getattr(scheduler, "config", None) is not None and "num_train_timesteps" in scheduler.config:
        # diffusers' DDPMScheduler has the same config keys: rebuild it as the scheduler with the math
        return ScratchDDPMScheduler.from_config(scheduler.config)
    raise ValueError(
        f"scheduler must be a ScratchDDPMScheduler or a diffusers DDPMScheduler, got {type(scheduler).__name__}"
    )


def call_model(
    model: Callable, x_t: torch.Tensor, timesteps: torch.Tensor, model_kwargs: dict[str, Any]
) -> torch.Tensor:
    """Run a diffusers-style model (output with ``.sample``) or a plain callable returning a tensor."""
    output = model(x_t, timesteps, **model_kwargs)
    return output.sample if hasattr(output, "sample") else output


def _check_data(x_start: torch.Tensor) -> None:
    if x_start.ndim < 2 or x_start.shape[0] < 1:
        raise ValueError(f"x_start must be a batch (N, C, ...) with N >= 1, got shape {tuple(x_start.shape)}")
    if not x_start.is_floating_point():
        raise ValueError(f"x_start must be floating point in [-1, 1] (uint8 k -> k / 127.5 - 1), got {x_start.dtype}")
    low, high = float(x_start.min()), float(x_start.max())
    if low < -1.0 - 1e-5 or high > 1.0 + 1e-5:
        raise ValueError(
            f"x_start must lie in [-1, 1] (8-bit images scaled as k / 127.5 - 1), got values in [{low:.4g}, {high:.4g}]"
        )


@torch.no_grad()
def nll_bits_per_dim(
    model: Callable,
    scheduler: Any,
    x_start: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    clip_denoised: bool | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    num_inference_steps: int | None = None,
    timesteps: list[int] | None = None,
) -> VariationalBound:
    """The variational bound on -log p_theta(x_0) of each image, in bits/dim, with every term.

    Exact over t: for each timestep index t = T-1 .. 0 one draw x_t ~ q(x_t | x_0) (F2) per image,
    one model call, and the term L_t there (``vlb_term``); plus the prior L_T. Each image's total is
    an unbiased estimate of its bound (Ho et al.'s ``calc_bpd_loop``).

    The bound of a sampler with fewer steps: ``num_inference_steps`` (spaced as the scheduler's
    ``timestep_spacing`` says) or custom descending ``timesteps``, as ``set_timesteps`` takes them.
    Then the chain is t -> s = the next timestep: the prior at the first timestep, the KL of the
    merged step's posterior at each later one, the decoder at the last; the same reverse step the
    sampler takes with that chain.

    Args:
        model: called as ``model(x_t, timesteps, **model_kwargs)``; a diffusers UNet (``.sample``) or
            any callable returning a tensor. Inputs are cast to ``x_start``'s dtype.
        scheduler: ``ScratchDDPMScheduler`` (or diffusers' ``DDPMScheduler``, rebuilt from its config):
            betas, ``prediction_type``, ``variance_type`` and clipping define p_theta.
        x_start: (N, C, H, W) images in [-1, 1] from 8-bit pixels (k / 127.5 - 1).
        generator: for the x_t draws (reproducible bounds); draws are made on the generator's device.
        batch_size: images per model call (default: all N at once).
        clip_denoised: override the scheduler's clip_sample for x_0 (None: as the sampler does).
        model_kwargs: extra model arguments, e.g. ``class_labels`` for all N images.
        progress: show a tqdm progress bar over the T x batches model calls.
        num_inference_steps, timesteps: a strided chain (at most one of them; default: all T steps).
    """
    from tqdm.auto import tqdm

    scheduler = _as_scratch_scheduler(scheduler)
    chain_timesteps = scheduler.chain_timesteps(num_inference_steps, timesteps)
    step_config = ReverseStepConfig.from_config(scheduler.config, clip_denoised)
    _check_data(x_start)
    n = x_start.shape[0]
    batch_size = n if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    model_kwargs = dict(model_kwargs or {})
    num_dims = x_start[0].numel()
    device, model_dtype = x_start.device, x_start.dtype
    dtype = _compute_dtype(device)
    chain = scheduler.diffusion_chain(num_inference_steps, timesteps, device)
    num_timesteps = chain.num_timesteps

    prior, vb = [], []
    bar = tqdm(total=len(chain_timesteps) * math.ceil(n / batch_size), desc="NLL bound", disable=not progress)
    for start in range(0, n, batch_size):
        x0 = x_start[start : start + batch_size].to(dtype)
        kwargs = _batch_slice(model_kwargs, start, batch_size, n)
        terms = torch.zeros(x0.shape[0], num_timesteps, dtype=dtype, device=device)
        for t in chain_timesteps:
            batch_timesteps = torch.full((x0.shape[0],), t, dtype=torch.long, device=device)
            noise = draw_noise(tuple(x0.shape), generator, device, dtype)
            x_t = chain.q_sample(x0, noise, batch_timesteps)  # F2
            model_output = call_model(model, x_t.to(model_dtype), batch_timesteps, kwargs).to(dtype)
            step = p_mean_variance(chain, model_output, x_t, batch_timesteps, step_config)
            terms[:, t] = vlb_term(chain, x0, x_t, batch_timesteps, step)  # the decoder on the last step
            bar.update(1)
        prior.append(prior_kl(chain, x0, chain_timesteps[0]))
        vb.append(terms)
    bar.close()

    prior_bpd = nats_to_bits_per_dim(torch.cat(prior), num_dims)
    vb_bpd = nats_to_bits_per_dim(torch.cat(vb), num_dims)
    return VariationalBound(
        total_bpd=prior_bpd + vb_bpd.sum(dim=1),
        prior_bpd=prior_bpd,
        decoder_bpd=vb_bpd[:, chain_timesteps[-1]],
        vb_bpd=vb_bpd,
        num_dims=num_dims,
        timesteps=None if num_inference_steps is None and timesteps is None else chain_timesteps,
    )


def _batch_slice(model_kwargs: dict[str, Any], start: int, batch_size: int, n: int) -> dict[str, Any]:
    """Per-image tensors (first dim N) are sliced with the images; anything else is passed as is."""
    def per_image(value: Any) -> bool:
        return torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == n

    end = start + batch_size
    return {key: value[start:end] if per_image(value) else value for key, value in model_kwargs.items()}
