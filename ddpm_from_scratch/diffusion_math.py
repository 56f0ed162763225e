"""The derivation's formulas as code, one method per formula, and the one reverse step built from them.

Equation ids refer to ``docs/derivation.md``: F1/F2/F4 forward process, P1-P3 posterior, E3/E4 the
derivation's slips *as corrected*, L2 the target of L_simple, A1-A3 the optimal reverse variance
(Analytic-DPM), D1-D4 the DDIM family of posteriors with the same marginals. Notation: alpha_t = 1 - beta_t, abar_t = prod_{i<=t} alpha_i (a product, no square
root: E1).

A :class:`DiffusionChain` holds every per-timestep coefficient as a float64 table indexed by the
timestep itself (length T). Building the tables once and gathering with ``timesteps`` keeps the hot
paths free of Python loops and host syncs, and the same lookup serves the training chain
(t -> t-1) and strided sampling chains (t -> previous timestep of ``set_timesteps``): for a step
t -> s the single-step quantities are those of the merged step, alpha_{t|s} = abar_t / abar_s.

``p_mean_variance(chain, model_output, x_t, t, config, eta)`` is THE reverse step p_theta(x_s | x_t), a
``ReverseStepConfig`` saying how the model output is read and ``eta`` which member of the DDIM family
it follows (None: DDPM's posterior P2). Everything above this module calls it:
the sampler (``ScratchDDPMScheduler.step``), the variational bound (``bound/likelihood``) and the
hybrid loss (``bound/losses``), so bits/dim always describe the distribution the sampler draws from.
This module imports nothing of the package but ``tensor_utils``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cached_property

import math

import torch

from .tensor_utils import ArgumentTypeError, add_scaled, append_dims, extract

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
FIXED_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")  # the model outputs 2C channels: [mean part | variance part]
# the optimal variance of Analytic-DPM (A1-A2): fixed at sampling time, but from a statistic of the model
ANALYTIC_VARIANCE_TYPE = "analytic"
# the optimal variance for the model's own (imperfect) mean (D4), from its per-timestep noise error Delta_t
MODEL_ERROR_VARIANCE_TYPE = "analytic_model_error"
VARIANCE_TYPES = FIXED_VARIANCE_TYPES + LEARNED_VARIANCE_TYPES + (ANALYTIC_VARIANCE_TYPE, MODEL_ERROR_VARIANCE_TYPE)
# the variance types the DDIM family (eta is not None) is defined for: sigma^2 = eta^2 beta~ or its optimum
FAMILY_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", ANALYTIC_VARIANCE_TYPE, MODEL_ERROR_VARIANCE_TYPE)
# the data range [-r, r] the upper bound A2 assumes when x_0 is neither clipped nor thresholded (images in [-1, 1])
DATA_HALF_RANGE = 1.0
# the floor of a variance whose log is taken (diffusers clamps at the same value)
MIN_VARIANCE = 1e-20

Coefficient = "float | torch.Tensor"  # a Python float for a scalar timestep, else a broadcastable tensor


@dataclass(frozen=True)
class DiffusionChain:
    """Float64 tables of length T for a chain of steps t -> prev_timesteps[t] (prev < 0: the last step)."""

    prev_timesteps: torch.Tensor  # int64, s = prev(t); -1 marks the final step of the chain
    alphas_cumprod: torch.Tensor  # abar_t
    alphas_cumprod_prev: torch.Tensor  # abar_s, 1 at the final step (x_{-1} := x_0 exactly)
    betas: torch.Tensor  # beta_{t|s} = 1 - abar_t / abar_s, the merged step's beta
    log_betas: torch.Tensor  # log beta_{t|s}: the upper end of the "learned_range" interpolation
    fixed_large_log_variance: torch.Tensor  # log beta_{t|s}, the final step's replaced (see below)
    not_final: torch.Tensor  # 1 where the step adds noise, 0 on the chain's final step (prev < 0)
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor  # 1 / sqrt(abar_t), E4
    sqrt_recipm1_alphas_cumprod: torch.Tensor  # sqrt(1 / abar_t - 1), E4
    posterior_variance: torch.Tensor  # beta~_t, E3 corrected
    posterior_log_variance_clipped: torch.Tensor  # log beta~_t, final step's 0 replaced (see below)
    posterior_mean_coef1: torch.Tensor  # x_0 coefficient of P2
    posterior_mean_coef2: torch.Tensor  # x_t coefficient of P2
    eps_sq_mean: torch.Tensor  # Gamma_t (A3) by the step's start t; NaN when not given
    eps_error_sq_mean: torch.Tensor  # Delta_t (D4) by the step's start t; NaN when not given
    # log sigma*^2 of A1 clipped to A2 (variance_type "analytic"), the decoder's variance on a final step;
    # NaN without eps_sq_mean
    analytic_log_variance: torch.Tensor
    # log of D4's variance at eta = 1 (variance_type "analytic_model_error"); NaN without eps_error_sq_mean
    model_error_log_variance: torch.Tensor

    @classmethod
    def build(
        cls,
        alphas_cumprod: torch.Tensor,
        prev_timesteps: torch.Tensor,
        eps_sq_mean: torch.Tensor | None = None,
        eps_error_sq_mean: torch.Tensor | None = None,
        data_half_range: float = DATA_HALF_RANGE,
    ) -> "DiffusionChain":
        """Tables for the chain t -> prev_timesteps[t], from abar (float64, length T).

        ``eps_sq_mean``: Gamma_t = E ||eps_theta(x_t, t)||^2 / d at every training timestep (A3), for
        the analytic variance; ``eps_error_sq_mean``: Delta_t = E ||eps - eps_theta(x_t, t)||^2 / d
        (D4), for the model-error-aware one. Without them those tables are NaN. ``data_half_range``:
        r of the bound A2, data in [-r, r].
        """
        alphas_cumprod = alphas_cumprod.to(torch.float64)
        prev_timesteps = prev_timesteps.to(torch.int64)
        one = torch.ones((), dtype=torch.float64)
        alphas_cumprod_prev = torch.where(prev_timesteps >= 0, alphas_cumprod[prev_timesteps.clamp(min=0)], one)
        alphas = alphas_cumprod / alphas_cumprod_prev
        betas = 1 - alphas
        # E3 corrected: the text's alpha_t/(1-alpha_t) + 1/(1-abar_{t-1}) is the precision, not the variance.
        posterior_variance = (1 - alphas_cumprod_prev) / (1 - alphas_cumprod) * betas
        # The final step's posterior variance is 0 (x_0 is given), so its log is -inf. As in Ho et al.'s
        # code, substitute the variance of the step into it, which keeps the learned-range interpolation
        # and the decoder's log-variance finite.
        # A chain's first step has no step into it (timesteps=[T-1]): there the training chain's own
        # beta~_{t|t-1} (at t >= 1) stands in, so a one-step chain's decoder is not a point mass.
        is_final = prev_timesteps < 0
        successors = _successor_timesteps(prev_timesteps)
        training_posterior_variance = _training_posterior_variance(alphas_cumprod)
        own = training_posterior_variance[torch.arange(len(alphas_cumprod)).clamp(min=1, max=len(alphas_cumprod) - 1)]
        clip_value = torch.where(successors >= 0, posterior_variance[successors.clamp(min=0)], own).clamp(min=MIN_VARIANCE)
        posterior_log_variance_clipped = torch.log(torch.where(is_final, clip_value, posterior_variance))
        # The final step's "fixed_large" variance is the decoder's: beta~ of the step into it, not beta,
        # as in Ho et al.'s diffusion_utils_2.py ("to get a better decoder log likelihood"). The sampler
        # adds no noise on the final step, so only the bound's L_0 sees it.
        log_betas = betas.log()
        fixed_large_log_variance = torch.where(is_final, posterior_log_variance_clipped, log_betas)
        chain = cls(
            prev_timesteps=prev_timesteps,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            betas=betas,
            log_betas=log_betas,
            fixed_large_log_variance=fixed_large_log_variance,
            not_final=(prev_timesteps >= 0).to(torch.float64),
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
            sqrt_recip_alphas_cumprod=alphas_cumprod.rsqrt(),
            sqrt_recipm1_alphas_cumprod=(1 / alphas_cumprod - 1).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=posterior_log_variance_clipped,
            posterior_mean_coef1=alphas_cumprod_prev.sqrt() * betas / (1 - alphas_cumprod),
            posterior_mean_coef2=alphas.sqrt() * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod),
            eps_sq_mean=statistic_table("eps_sq_mean", eps_sq_mean, len(alphas_cumprod)),
            eps_error_sq_mean=statistic_table("eps_error_sq_mean", eps_error_sq_mean, len(alphas_cumprod)),
            analytic_log_variance=torch.full_like(alphas_cumprod, math.nan),
            model_error_log_variance=torch.full_like(alphas_cumprod, math.nan),
        )
        tables = {}
        if eps_sq_mean is not None:
            # On the final step A1 is the variance of x_0 given x_t, which an estimated Gamma_t >= 1 makes 0 and
            # the decoder term of the bound explode; Bao et al.'s code uses Ho's decoder variance there, as here.
            analytic = analytic_variance(chain, chain.eps_sq_mean, data_half_range).log()
            tables["analytic_log_variance"] = torch.where(is_final, posterior_log_variance_clipped, analytic)
        if eps_error_sq_mean is not None:
            tables["model_error_log_variance"] = model_error_variance(chain, chain.eps_error_sq_mean, data_half_range).log()
        return replace(chain, **tables) if tables else chain

    @classmethod
    def training_chain(cls, alphas_cumprod: torch.Tensor, **statistics) -> "DiffusionChain":
        """The chain the model is trained on: every t steps to t - 1. ``statistics``: ``build``'s keywords."""
        return cls.build(alphas_cumprod, torch.arange(len(alphas_cumprod)) - 1, **statistics)

    @classmethod
    def strided(cls, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, **statistics) -> "DiffusionChain":
        """The chain a sampler walks over descending ``timesteps`` (K,): each steps to the next, the last
        to x_0. Timesteps off the chain keep the training step t -> t - 1. ``statistics``: ``build``'s keywords."""
        timesteps = torch.as_tensor(timesteps, dtype=torch.int64).cpu()
        prev_timesteps = torch.arange(len(alphas_cumprod)) - 1
        prev_timesteps[timesteps] = torch.cat([timesteps[1:], timesteps.new_tensor([-1])])
        return cls.build(alphas_cumprod, prev_timesteps, **statistics)

    def to(self, device: torch.device | str) -> "DiffusionChain":
        """A copy on ``device``. MPS has no float64, so there the tables are float32."""
        device = torch.device(device)
        float_dtype = torch.float32 if device.type == "mps" else torch.float64
        moved = {}
        for f in fields(self):
            table = getattr(self, f.name)
            moved[f.name] = table.to(device, float_dtype if table.is_floating_point() else table.dtype)
        return DiffusionChain(**moved)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @cached_property
    def _host_tables(self) -> dict[str, list]:
        return {f.name: getattr(self, f.name).tolist() for f in fields(self)}

    def lookup(self, name: str, t, like: torch.Tensor) -> Coefficient:
        """Table ``name`` at ``t``, ready to multiply ``like``.

        For a Python int timestep the value is a Python float: a tensor times a float is one kernel
        with no extra tensor, which is most of what makes a sampling step cheap at small batch sizes.
        Otherwise a gathered tensor shaped to broadcast (see ``extract``), with no host sync.
        """
        if isinstance(t, int):
            values = self._host_tables[name]
            if not 0 <= t < len(values):
                raise ValueError(f"timestep must lie in [0, {len(values) - 1}], got {t}")
            return values[t]
        return extract(getattr(self, name), t, like)

    # ---- forward process -------------------------------------------------------------------

    def q_step(self, x_prev: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """One forward step, eq. F1: x_t = sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) z_t."""
        alphas = 1 - self.betas
        return extract(alphas.sqrt(), t, x_prev) * x_prev + extract(self.betas.sqrt(), t, x_prev) * noise

    def q_sample(self, x_start: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Closed form of the forward process, eq. F2: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z~."""
        sqrt_abar, sqrt_one_minus_abar = self.lookup("sqrt_alphas_cumprod", t, x_start), self.lookup(
            "sqrt_one_minus_alphas_cumprod", t, x_start
        )
        return add_scaled(sqrt_abar * x_start, sqrt_one_minus_abar, noise)

    def q_mean_variance(self, x_start: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), eq. F4: returns (mean, variance)."""
        mean = extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = extract(1 - self.alphas_cumprod, t, x_start)
        return mean, variance

    def velocity(self, x_start: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, sec. 4)."""
        sqrt_abar, sqrt_one_minus_abar = self.lookup("sqrt_alphas_cumprod", t, x_start), self.lookup(
            "sqrt_one_minus_alphas_cumprod", t, x_start
        )
        return add_scaled(sqrt_abar * noise, -sqrt_one_minus_abar, x_start)

    # ---- posterior q(x_s | x_t, x_0) ------------------------------------------------------

    def q_posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """Posterior mean, eq. P2:
        mu~ = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t."""
        coef1, coef2 = self.lookup("posterior_mean_coef1", t, x_t), self.lookup("posterior_mean_coef2", t, x_t)
        return add_scaled(coef1 * x_start, coef2, x_t)

    def q_posterior_variance(self, t, like: torch.Tensor) -> torch.Tensor:
        """Posterior variance, eq. E3 corrected: beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t."""
        return extract(self.posterior_variance, t, like)

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mu~ (P2), beta~ (E3)): (mean, variance, clipped log-variance)."""
        return (
            self.q_posterior_mean(x_start, x_t, t),
            self.q_posterior_variance(t, x_t),
            extract(self.posterior_log_variance_clipped, t, x_t),
        )

    # ---- reparametrisations of the model output ------------------------------------------

    def predict_xstart_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """x_0 from the noise, eq. E4 corrected (x_t, not x_{t-1}): x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        recip, recipm1 = self.lookup("sqrt_recip_alphas_cumprod", t, x_t), self.lookup("sqrt_recipm1_alphas_cumprod", t, x_t)
        return add_scaled(recip * x_t, -recipm1, eps)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, x_start: torch.Tensor, t) -> torch.Tensor:
        """The inverse of E4: eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x_start) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def predict_xstart_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
        """x_0 from the velocity: x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        sqrt_abar, sqrt_one_minus_abar = self.lookup("sqrt_alphas_cumprod", t, x_t), self.lookup("sqrt_one_minus_alphas_cumprod", t, x_t)
        return add_scaled(sqrt_abar * x_t, -sqrt_one_minus_abar, v)

    def predict_eps_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
        """The noise from the velocity: eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
        sqrt_abar, sqrt_one_minus_abar = self.lookup("sqrt_alphas_cumprod", t, x_t), self.lookup("sqrt_one_minus_alphas_cumprod", t, x_t)
        return add_scaled(sqrt_one_minus_abar * x_t, sqrt_abar, v)

    def p_mean_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """Model mean in terms of the noise, eq. P3: mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)."""
        alphas = 1 - self.betas
        return (x_t - extract(self.betas / self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
            alphas.sqrt(), t, x_t
        )


def _training_posterior_variance(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """beta~_t of the training chain t -> t - 1 (E3 corrected), 0 at t = 0."""
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod_prev) / (1 - alphas_cumprod) * (1 - alphas_cumprod / alphas_cumprod_prev)


def statistic_table(name: str, values, num_timesteps: int) -> torch.Tensor:
    """A per-timestep mean of squares (Gamma_t, Delta_t) as a float64 table (NaN when None): one finite value
    >= 0 per training timestep, else a ValueError naming ``name``."""
    if values is None:
        return torch.full((num_timesteps,), math.nan, dtype=torch.float64)
    table = torch.as_tensor(values, dtype=torch.float64).cpu()
    if table.shape != (num_timesteps,):
        raise ValueError(
            f"{name} must have one value per training timestep, shape ({num_timesteps},), got shape {tuple(table.shape)}"
        )
    if not (torch.isfinite(table).all() and (table >= 0).all()):
        raise ValueError(f"{name} must be finite and >= 0 (it is a mean of squares)")
    return table


def _successor_timesteps(prev_timesteps: torch.Tensor) -> torch.Tensor:
    """For each timestep s, the largest t with prev(t) = s (the step leading into s), or -1 if none."""
    timesteps = torch.arange(len(prev_timesteps))
    has_prev = prev_timesteps >= 0
    successors = torch.full_like(prev_timesteps, -1)
    return successors.scatter_reduce(0, prev_timesteps[has_prev], timesteps[has_prev], reduce="amax")


# ---- the reverse step p_theta(x_s | x_t) (section 3) -----------------------------------------


@dataclass(frozen=True)
class ReverseStep:
    """p_theta(x_s | x_t) = N(mean, exp(log_variance) I), and the x_0 prediction the mean was built from.

    ``log_variance`` broadcasts against ``mean``; it is a Python float for a Python-int timestep
    under a fixed variance type (the scheduler's fast path).
    """

    mean: torch.Tensor
    log_variance: float | torch.Tensor
    pred_xstart: torch.Tensor


def check_model_output(model_output: torch.Tensor, x_t: torch.Tensor) -> None:
    """``model_output`` fits ``x_t`` (the scheduler's ``sample``): floating-point tensors on one device,
    equal in every dim but the channels (dim 1, checked by ``split_model_output``). Metadata only: free."""
    for name, tensor in (("model_output", model_output), ("sample", x_t)):
        if not isinstance(tensor, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ArgumentTypeError(f"{name} must have a floating-point dtype, got {tensor.dtype}")
    if model_output.device != x_t.device:
        raise ValueError(
            f"model_output and sample must be on the same device, got {model_output.device} and {x_t.device}"
        )
    out_shape, shape = tuple(model_output.shape), tuple(x_t.shape)
    if len(shape) < 2 or len(out_shape) != len(shape) or out_shape[0] != shape[0] or out_shape[2:] != shape[2:]:
        raise ValueError(
            f"model_output of shape {out_shape} does not fit sample of shape {shape}: both must be (batch, channels, ...) "
            "with the same batch size and spatial dims (the channels may be C or 2C)"
        )


def split_model_output(
    model_output: torch.Tensor, x_t: torch.Tensor, variance_type: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean part, variance part) of a model output for ``variance_type``.

    A learned variance type needs 2C output channels for a C-channel ``x_t``: [mean part | variance
    part]. Under a fixed variance type the output has C channels, or 2C whose variance half is
    ignored (as diffusers' DDPMScheduler does), and the variance part is None.
    """
    check_model_output(model_output, x_t)
    channels, out_channels = x_t.shape[1], model_output.shape[1]
    learned = variance_type in LEARNED_VARIANCE_TYPES
    if out_channels == 2 * channels and channels > 0:
        mean_part, variance_part = torch.split(model_output, channels, dim=1)
        return mean_part, (variance_part if learned else None)
    if out_channels != channels:
        raise ValueError(
            f"model_output has {out_channels} channels; expected {channels} (the sample's) "
            f"or {2 * channels} (with a variance prediction)"
        )
    if learned:
        raise ValueError(
            f"variance_type={variance_type!r} needs a model that outputs 2x the sample's channels "
            f"({2 * channels}), got model_output with {out_channels} channels"
        )
    return model_output, None


def predict_xstart(chain: DiffusionChain, model_output: torch.Tensor, x_t: torch.Tensor, t, prediction_type: str):
    """x_0 from the mean part of a model output: E4 corrected (epsilon), the output itself (sample), or from v."""
    if prediction_type == "epsilon":
        return chain.predict_xstart_from_eps(x_t, model_output, t)
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return chain.predict_xstart_from_v(x_t, model_output, t)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def predict_eps(chain: DiffusionChain, model_output: torch.Tensor, x_t: torch.Tensor, t, prediction_type: str):
    """eps from the mean part of a model output: the output itself (epsilon), the inverse of E4 (sample), or from v."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return chain.predict_eps_from_xstart(x_t, model_output, t)
    if prediction_type == "v_prediction":
        return chain.predict_eps_from_v(x_t, model_output, t)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def dynamic_threshold(x_start: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = the ``ratio`` quantile of |x_0| per
    sample, clamped to [1, max_value]; x_0 is clipped to [-s, s] and divided by s."""
    dtype = x_start.dtype
    flat = x_start.reshape(x_start.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile is not implemented for half precision
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value)
    s = append_dims(s, flat.ndim)
    return (flat.clamp(-s, s) / s).reshape(x_start.shape).to(dtype)


def model_log_variance(
    chain: DiffusionChain, t, like: torch.Tensor, variance_type: str, variance_output: torch.Tensor | None
) -> Coefficient:
    """log sigma_t^2 of p_theta(x_s | x_t) for ``variance_type`` (always a log-variance).

    fixed_small(_log): log beta~_t (E3 corrected, clipped at the final step); fixed_large(_log):
    log beta_t (beta~ of the step into the final step there); learned: log of the variance part
    itself (diffusers' convention); learned_range: the variance part v in [-1, 1] interpolates,
    log sigma^2 = (v+1)/2 log beta_t + (1-v)/2 log beta~_t (Nichol & Dhariwal 2021, eq. 15).
    analytic: log sigma*^2 (A1 clipped to A2, from the chain's Gamma_t).
    ``variance_output``: the variance part from ``split_model_output`` (learned types only).
    """
    if variance_type in ("fixed_small", "fixed_small_log"):
        return chain.lookup("posterior_log_variance_clipped", t, like)
    if variance_type in ("fixed_large", "fixed_large_log"):
        return chain.lookup("fixed_large_log_variance", t, like)
    if variance_type == "learned":
        return torch.log(variance_output)
    if variance_type == "learned_range":
        frac = (variance_output + 1) / 2
        min_log = chain.lookup("posterior_log_variance_clipped", t, like)
        max_log = chain.lookup("log_betas", t, like)
        return frac * max_log + (1 - frac) * min_log
    if variance_type in (ANALYTIC_VARIANCE_TYPE, MODEL_ERROR_VARIANCE_TYPE):
        table = "analytic_log_variance" if variance_type == ANALYTIC_VARIANCE_TYPE else "model_error_log_variance"
        return _statistic_lookup(chain, table, t, like, variance_type)
    raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")


_STATISTIC_NEEDED = {  # table -> (what it needs, the scheduler config key that gives it)
    "analytic_log_variance": ("Gamma_t (eps_sq_mean)", "analytic_eps_sq_mean"),
    "eps_sq_mean": ("Gamma_t (eps_sq_mean)", "analytic_eps_sq_mean"),
    "model_error_log_variance": ("Delta_t (eps_error_sq_mean)", "analytic_eps_error_sq_mean"),
    "eps_error_sq_mean": ("Delta_t (eps_error_sq_mean)", "analytic_eps_error_sq_mean"),
}


def _statistic_lookup(chain: DiffusionChain, table: str, t, like: torch.Tensor, variance_type: str) -> Coefficient:
    """A table built from a model statistic, refused with a clear error when the chain was built without it.
    Checked on the host only (a Python-float lookup): a device lookup is not read back."""
    value = chain.lookup(table, t, like)
    if isinstance(value, float) and math.isnan(value):
        needed, key = _STATISTIC_NEEDED[table]
        raise ValueError(
            f"variance_type={variance_type!r} needs {needed} in the chain: use ScratchDDPMScheduler({key}=...), "
            "which `ddpm-estimate-variance PATH --num-images N` writes into a saved pipeline"
        )
    return value


@dataclass(frozen=True)
class ReverseStepConfig:
    """How a model output defines p_theta(x_s | x_t): what it predicts, the variance, and the x_0 clipping.

    The fields are the scheduler config keys of the same names (diffusers' DDPMScheduler has them too),
    with the same defaults.
    """

    prediction_type: str = "epsilon"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    @property
    def data_half_range(self) -> float:
        """r of the bound A2 (data in [-r, r]): the range x_0 is clipped or thresholded to, else DATA_HALF_RANGE."""
        if self.thresholding:
            return self.sample_max_value
        return self.clip_sample_range if self.clip_sample else DATA_HALF_RANGE

    @classmethod
    def from_config(cls, config, clip_denoised: bool | None = None) -> "ReverseStepConfig":
        """The reverse step of a scheduler ``config``. ``clip_denoised`` overrides its x_0 clipping: None
        clips or thresholds as configured, True clips to [-clip_sample_range, clip_sample_range], False
        leaves x_0 as predicted."""
        step_config = cls(**{f.name: config[f.name] for f in fields(cls)})
        if clip_denoised is None:
            return step_config
        return replace(step_config, clip_sample=clip_denoised, thresholding=False)


def p_mean_variance(
    chain: DiffusionChain,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t,
    config: ReverseStepConfig,
    eta: float | None = None,
) -> ReverseStep:
    """The reverse step p_theta(x_s | x_t), s = ``chain.prev_timesteps[t]``, from the model output at (x_t, t).

    1. Split the output (``split_model_output``); 2. x_0 from its mean part (``predict_xstart``, E4
    corrected for epsilon); 3. threshold x_0 dynamically (``thresholding``) or else clip it to
    [-clip_sample_range, clip_sample_range] (``clip_sample``); 4. the mean at that x_0: DDPM's posterior
    mean mu~(x_t, x_0), eq. P2, when ``eta`` is None, else the DDIM family's c_0 x_0 + c_t x_t (D2) with
    sigma^2 = eta^2 beta~ (eta = 1 is P2, eta = 0 DDIM); 5. log-variance for ``variance_type``
    (``model_log_variance``, or ``family_log_variance`` with eta). Both means take x_0 only through
    x_0 itself and x_t, so the noise they imply is the one consistent with the clipped x_0.
    ``t``: a Python int (Python-float coefficients) or a tensor on the chain's device. Shapes: x_t
    (B, C, ...), model_output (B, C or 2C, ...); mean and pred_xstart as x_t.
    """
    mean_output, variance_output = split_model_output(model_output, x_t, config.variance_type)
    pred_xstart = predict_xstart(chain, mean_output, x_t, t, config.prediction_type)
    if config.thresholding:
        pred_xstart = dynamic_threshold(pred_xstart, config.dynamic_thresholding_ratio, config.sample_max_value)
    elif config.clip_sample:
        pred_xstart = pred_xstart.clamp(-config.clip_sample_range, config.clip_sample_range)
    if eta is None:
        return ReverseStep(
            mean=chain.q_posterior_mean(pred_xstart, x_t, t),
            log_variance=model_log_variance(chain, t, x_t, config.variance_type, variance_output),
            pred_xstart=pred_xstart,
        )
    lambda_sq, coef_x0, coef_xt = ddim_family_coefficients(
        chain.lookup("alphas_cumprod", t, x_t), chain.lookup("alphas_cumprod_prev", t, x_t),
        chain.lookup("posterior_variance", t, x_t), check_eta(eta, config.variance_type),
    )
    return ReverseStep(
        mean=add_scaled(coef_x0 * pred_xstart, coef_xt, x_t),
        log_variance=family_log_variance(chain, t, x_t, config, lambda_sq, coef_x0),
        pred_xstart=pred_xstart,
    )


def check_eta(eta, variance_type: str) -> float:
    """``eta`` as a float in [0, 1], for a variance type the family is defined for (free: host values only)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0: DDIM, 1: DDPM's posterior) or None, got {eta!r}")
    if variance_type not in FAMILY_VARIANCE_TYPES:
        raise ValueError(
            f"eta is defined for variance_type in {FAMILY_VARIANCE_TYPES}, got {variance_type!r}; "
            "use eta=None for DDPM's step with this variance"
        )
    return float(eta)


def family_log_variance(
    chain: DiffusionChain, t, like: torch.Tensor, config: ReverseStepConfig, lambda_sq: Coefficient, coef_x0: Coefficient
) -> Coefficient:
    """log sigma^2 of the family's step t -> s for ``config.variance_type`` (eta given):

    fixed_small(_log): lambda^2 = eta^2 beta~ (D1); analytic: D3 with 1 - Gamma_t, clipped to
    [lambda^2, lambda^2 + c_0^2 r^2] (A2's argument for any c_0); analytic_model_error: D3 with
    Delta_t (D4), the bound where abar_t = 0. On the chain's final step (lambda^2 = 0, x_0 given) fixed_small
    and analytic use the decoder's variance, as at eta = 1, and analytic_model_error keeps D4. At eta = 1
    each equals ``model_log_variance`` of the same type. A zero variance (eta = 0) is floored at MIN_VARIANCE.
    """
    variance_type = config.variance_type
    upper = lambda_sq + coef_x0**2 * config.data_half_range**2
    abar_t = chain.lookup("alphas_cumprod", t, like)
    if variance_type == ANALYTIC_VARIANCE_TYPE:
        gamma = _statistic_lookup(chain, "eps_sq_mean", t, like, variance_type)
        variance = _clamp(_finite_or(optimal_variance(lambda_sq, coef_x0, abar_t, 1 - gamma), abar_t, upper), lambda_sq, upper)
    elif variance_type == MODEL_ERROR_VARIANCE_TYPE:
        delta = _statistic_lookup(chain, "eps_error_sq_mean", t, like, variance_type)
        return _log(_finite_or(optimal_variance(lambda_sq, coef_x0, abar_t, delta), abar_t, upper))
    else:
        variance = lambda_sq
    not_final = chain.lookup("not_final", t, like)
    decoder = chain.lookup("posterior_log_variance_clipped", t, like)
    return not_final * _log(variance) + (1 - not_final) * decoder


def _finite_or(value: Coefficient, alphas_cumprod: Coefficient, fallback: Coefficient) -> Coefficient:
    """``value`` where abar_t > 0, ``fallback`` where abar_t = 0 (there D3 divides by zero)."""
    if isinstance(alphas_cumprod, torch.Tensor):
        return torch.where(alphas_cumprod > 0, value, fallback)
    return value if alphas_cumprod > 0 else fallback


def _clamp(value: Coefficient, lower: Coefficient, upper: Coefficient) -> Coefficient:
    if isinstance(value, torch.Tensor) or isinstance(lower, torch.Tensor):
        return torch.minimum(torch.maximum(torch.as_tensor(value), torch.as_tensor(lower)), torch.as_tensor(upper))
    return min(max(value, lower), upper)


def _log(variance: Coefficient) -> Coefficient:
    if isinstance(variance, torch.Tensor):
        return variance.clamp(min=MIN_VARIANCE).log()
    return math.log(max(variance, MIN_VARIANCE))


# ---- the training objective (section 4) ---------------------------------------------------


def simple_loss_target(chain: DiffusionChain, x_start: torch.Tensor, noise: torch.Tensor, t, prediction_type: str):
    """What the model regresses onto under L_simple (L2): the noise (epsilon), x_0 (sample) or v."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x_start
    if prediction_type == "v_prediction":
        return chain.velocity(x_start, noise, t)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


# ---- the optimal reverse variance (section 5; Bao et al. 2022, Analytic-DPM) ---------------


def optimal_variance(lambda_sq: Coefficient, coef_x0: Coefficient, alphas_cumprod: Coefficient,
                     residual: Coefficient) -> Coefficient:
    """The variance of p(x_s | x_t) that maximises the bound for a mean c_0 x0_hat + c_t x_t, eq. D3:

        sigma^2 = lambda^2 + c_0^2 E ||x_0 - x0_hat||^2 / d = lambda^2 + c_0^2 (1 - abar_t) / abar_t residual

    since x_0 - x0_hat = sqrt((1 - abar_t) / abar_t) (eps_theta - eps) (E4). ``residual`` is
    E ||eps - eps_theta||^2 / d: 1 - Gamma_t for the optimal predictor (A1 at lambda^2 = beta~), Delta_t
    for the model's own (D4). At abar_t = 0 the ratio is infinite (x_t says nothing of x_0): callers
    take a bound there. Floats or tensors alike.
    """
    if isinstance(alphas_cumprod, torch.Tensor):
        ratio = (1 - alphas_cumprod) / alphas_cumprod  # inf where abar_t = 0
    else:
        ratio = (1 - alphas_cumprod) / alphas_cumprod if alphas_cumprod > 0 else math.inf
    return lambda_sq + coef_x0**2 * ratio * residual


def analytic_variance_unclipped(chain: DiffusionChain, eps_sq_mean: torch.Tensor) -> torch.Tensor:
    """The variance of p(x_s | x_t) that maximises the bound, eq. A1 (Analytic-DPM, Theorem 1):

        sigma*^2_{t|s} = beta~_{t|s} + beta_{t|s}^2 / (alpha_{t|s} (1 - abar_t)) (1 - Gamma_t)

    for a mean that is P2 at the model's x_0 (E4): D3 at lambda^2 = beta~, c_0 = posterior_mean_coef1.
    ``eps_sq_mean``: Gamma_t = E ||eps_theta(x_t, t)||^2 / d (A3), length T, indexed by the step's
    start t. A (T,) float64 table (inf where abar_t = 0).
    """
    gamma = statistic_table("eps_sq_mean", eps_sq_mean, chain.num_timesteps)
    return optimal_variance(chain.posterior_variance, chain.posterior_mean_coef1, chain.alphas_cumprod, 1 - gamma)


def analytic_variance_bounds(
    chain: DiffusionChain, data_half_range: float = DATA_HALF_RANGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds of sigma*^2, eq. A2 (Analytic-DPM, Theorem 2), for data in [-r, r], r = ``data_half_range``:

        beta~_{t|s} <= sigma*^2_{t|s} <= beta~_{t|s} + (posterior_mean_coef1_{t|s})^2 r^2

    (lower: Gamma_t <= 1; upper: Var(x_0 | x_t) <= r^2 per dimension). (lower, upper) tables.
    """
    lower = chain.posterior_variance
    return lower, lower + chain.posterior_mean_coef1**2 * _checked_half_range(data_half_range) ** 2


def _checked_half_range(data_half_range: float) -> float:
    if not (isinstance(data_half_range, (int, float)) and math.isfinite(data_half_range) and data_half_range > 0):
        raise ValueError(f"data_half_range must be a finite number > 0, got {data_half_range!r}")
    return float(data_half_range)


def analytic_variance(
    chain: DiffusionChain, eps_sq_mean: torch.Tensor, data_half_range: float = DATA_HALF_RANGE
) -> torch.Tensor:
    """sigma*^2 of A1 clipped to the bounds of A2: the variance of variance_type "analytic", (T,) float64.

    Clipping absorbs the Monte-Carlo error of an estimated Gamma_t, and a model whose
    E ||eps_theta||^2 differs from that of the optimal one; at abar_t = 0 it gives the upper bound.
    (On a chain's final step the scheduler uses the decoder's variance instead: ``DiffusionChain.build``.)
    """
    lower, upper = analytic_variance_bounds(chain, data_half_range)
    unclipped = analytic_variance_unclipped(chain, eps_sq_mean)
    return torch.minimum(torch.maximum(torch.nan_to_num(unclipped, nan=math.inf), lower), upper)


def model_error_variance(
    chain: DiffusionChain, eps_error_sq_mean: torch.Tensor, data_half_range: float = DATA_HALF_RANGE
) -> torch.Tensor:
    """D4 at eta = 1: beta~_{t|s} + posterior_mean_coef1^2 (1 - abar_t) / abar_t Delta_t, (T,) float64.

    The optimum for the model's own mean (Bao et al., ICML 2022, "Estimating the Optimal Covariance
    with Imperfect Mean"); never below beta~, finite on the final step (where beta~ = 0). Where
    abar_t = 0 (D3 divides by zero there) it takes the bound A2, beta~ + c_0^2 r^2.
    """
    delta = statistic_table("eps_error_sq_mean", eps_error_sq_mean, chain.num_timesteps)
    variance = optimal_variance(chain.posterior_variance, chain.posterior_mean_coef1, chain.alphas_cumprod, delta)
    _, upper = analytic_variance_bounds(chain, data_half_range)
    return torch.where(chain.alphas_cumprod > 0, variance, upper).clamp(min=MIN_VARIANCE)


# ---- the DDIM family: posteriors with DDPM's marginals (Song et al. 2021, eq. 7) ----------


def ddim_family_coefficients(
    alphas_cumprod: Coefficient, alphas_cumprod_prev: Coefficient, posterior_variance: Coefficient, eta: float
) -> tuple[Coefficient, Coefficient, Coefficient]:
    """(lambda^2, c_0, c_t) of q_sigma(x_s | x_t, x_0) = N(c_0 x_0 + c_t x_t, lambda^2 I), eqs. D1-D2:

        lambda^2 = eta^2 beta~_{t|s},   c_t = sqrt(1 - abar_s - lambda^2) / sqrt(1 - abar_t),
        c_0 = sqrt(abar_s) - c_t sqrt(abar_t)

    so that q(x_s | x_0) = N(sqrt(abar_s) x_0, (1 - abar_s) I) for any eta. eta = 1 gives P2/E3
    (c_0, c_t = posterior_mean_coef1, coef2), eta = 0 DDIM. Floats or tensors alike.
    """
    lambda_sq = eta**2 * posterior_variance
    remaining = 1 - alphas_cumprod_prev - lambda_sq  # >= 0 for eta <= 1; rounding can make it -1e-17
    if isinstance(remaining, torch.Tensor):
        coef_xt = remaining.clamp(min=0).sqrt() / (1 - alphas_cumprod) ** 0.5
    else:
        coef_xt = math.sqrt(max(remaining, 0.0)) / math.sqrt(1 - alphas_cumprod)
    return lambda_sq, alphas_cumprod_prev**0.5 - coef_xt * alphas_cumprod**0.5, coef_xt
