"""The derivation's formulas as code, one method per formula.

Equation ids refer to ``shared/derivation/README.md`` (the English map of the derivation):
F1/F2/F4 forward process, P1-P3 posterior, E3/E4 the derivation's slips *as corrected*.
Notation: alpha_t = 1 - beta_t, abar_t = prod_{i<=t} alpha_i (a product, no square root: E1).

A :class:`DiffusionChain` holds every per-timestep coefficient as a float64 table indexed by the
timestep itself (length T). Building the tables once and gathering with ``timesteps`` keeps the hot
paths free of Python loops and host syncs, and the same lookup serves the training chain
(t -> t-1) and strided sampling chains (t -> previous timestep of ``set_timesteps``): for a step
t -> s the single-step quantities are those of the merged step, alpha_{t|s} = abar_t / abar_s.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

import torch

from .tensor_utils import add_scaled, extract

Coefficient = "float | torch.Tensor"  # a Python float for a scalar timestep, else a broadcastable tensor


@dataclass(frozen=True)
class DiffusionChain:
    """Float64 tables of length T for a chain of steps t -> prev_timesteps[t] (prev < 0: the last step)."""

    prev_timesteps: torch.Tensor  # int64, s = prev(t); -1 marks the final step of the chain
    alphas_cumprod: torch.Tensor  # abar_t
    alphas_cumprod_prev: torch.Tensor  # abar_s, 1 at the final step (x_{-1} := x_0 exactly)
    betas: torch.Tensor  # beta_{t|s} = 1 - abar_t / abar_s, the merged step's beta
    log_betas: torch.Tensor  # log beta_{t|s}: the "fixed_large" log-variance
    not_final: torch.Tensor  # 1 where the step adds noise, 0 on the chain's final step (prev < 0)
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor  # 1 / sqrt(abar_t), E4
    sqrt_recipm1_alphas_cumprod: torch.Tensor  # sqrt(1 / abar_t - 1), E4
    posterior_variance: torch.Tensor  # beta~_t, E3 corrected
    posterior_log_variance_clipped: torch.Tensor  # log beta~_t, final step's 0 replaced (see below)
    posterior_mean_coef1: torch.Tensor  # x_0 coefficient of P2
    posterior_mean_coef2: torch.Tensor  # x_t coefficient of P2

    @classmethod
    def build(cls, alphas_cumprod: torch.Tensor, prev_timesteps: torch.Tensor) -> "DiffusionChain":
        """Tables for the chain t -> prev_timesteps[t], from abar (float64, length T)."""
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
        is_final = prev_timesteps < 0
        successors = _successor_timesteps(prev_timesteps)
        clip_value = torch.where(successors >= 0, posterior_variance[successors.clamp(min=0)], 1e-20)
        posterior_log_variance_clipped = torch.log(torch.where(is_final, clip_value, posterior_variance))
        return cls(
            prev_timesteps=prev_timesteps,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            betas=betas,
            log_betas=betas.log(),
            not_final=(prev_timesteps >= 0).to(torch.float64),
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
            sqrt_recip_alphas_cumprod=alphas_cumprod.rsqrt(),
            sqrt_recipm1_alphas_cumprod=(1 / alphas_cumprod - 1).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=posterior_log_variance_clipped,
            posterior_mean_coef1=alphas_cumprod_prev.sqrt() * betas / (1 - alphas_cumprod),
            posterior_mean_coef2=alphas.sqrt() * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod),
        )

    @classmethod
    def training_chain(cls, alphas_cumprod: torch.Tensor) -> "DiffusionChain":
        """The chain the model is trained on: every t steps to t - 1."""
        return cls.build(alphas_cumprod, torch.arange(len(alphas_cumprod)) - 1)

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

    def p_mean_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """Model mean in terms of the noise, eq. P3: mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)."""
        alphas = 1 - self.betas
        return (x_t - extract(self.betas / self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
            alphas.sqrt(), t, x_t
        )


def _successor_timesteps(prev_timesteps: torch.Tensor) -> torch.Tensor:
    """For each timestep s, the largest t with prev(t) = s (the step leading into s), or -1 if none."""
    timesteps = torch.arange(len(prev_timesteps))
    has_prev = prev_timesteps >= 0
    successors = torch.full_like(prev_timesteps, -1)
    return successors.scatter_reduce(0, prev_timesteps[has_prev], timesteps[has_prev], reduce="amax")
