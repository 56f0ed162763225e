"""ScratchDDPMScheduler: the DDPM forward process and ancestral sampler as a diffusers scheduler.

A drop-in for diffusers' ``DDPMScheduler``: the same config keys and defaults (so ``from_config``
works in both directions), the same public methods and the same random stream for a given
generator. The math lives in :mod:`diffusion_math` (one method per formula of the derivation, and
the one reverse step ``p_mean_variance``); this module adds the scheduler contract around it:

* ``forward_chain``: float64 tables of the training chain t -> t-1 (``add_noise``, the posterior);
* ``sampling_chain``: the same tables for the chain chosen by ``set_timesteps`` (t -> previous
  timestep), which is what ``step`` walks. Both are built once and gathered by timestep.

The bound and the losses (``bound/``) take a chain and ``reverse_step_config`` from here and call
``p_mean_variance`` themselves: ``diffusion_chain`` gives the training chain (on a device) or the
chain of any ``set_timesteps`` arguments, without touching this scheduler's own state.

Where diffusers' DDPMScheduler is wrong this one is right (see the README's "Where we differ from diffusers"):
``fixed_large_log`` gives NaN there (diffusers issue 14569) and a proper std here, and the last step of
a chain that does not end at t = 0 (``steps_offset > 0``, custom timesteps) adds no noise here, since
its posterior q(x_0 | x_t, x_0) is a point mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from .beta_schedules import BETA_SCHEDULES, make_betas
from .diffusion_math import (
    ANALYTIC_VARIANCE_TYPE,
    MIN_VARIANCE,
    MODEL_ERROR_VARIANCE_TYPE,
    PREDICTION_TYPES,
    VARIANCE_TYPES,
    DiffusionChain,
    ReverseStepConfig,
    model_log_variance,
    p_mean_variance,
    predict_xstart,
    simple_loss_target,
    statistic_table,
)
from .tensor_utils import (
    ArgumentTypeError,
    add_scaled,
    as_timesteps,
    draw_noise,
    require_bool,
    require_finite,
    require_int,
    require_real,
)

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


@dataclass
class ScratchDDPMSchedulerOutput(SchedulerOutput):
    """``prev_sample`` is x_{t-1} (the next model input); ``pred_original_sample`` the model's x_0."""

    pred_original_sample: torch.Tensor | None = None


def _require_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int) -> np.ndarray:
    """Descending sampling timesteps for ``num_inference_steps`` steps (Lin et al. 2024, Table 2).

    linspace: evenly spaced over [0, T-1], rounded; leading: multiples of T // n, plus
    ``steps_offset``; trailing: evenly spaced down from T - 1.
    """
    n, T = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n).round()[::-1]
    elif spacing == "leading":
        timesteps = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        timesteps = np.round(np.arange(T, 0, -T / n)) - 1
    else:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    return timesteps.astype(np.int64).copy()


class ScratchDDPMScheduler(SchedulerMixin, ConfigMixin):
    """Denoising diffusion probabilistic models (Ho et al. 2020), written from the derivation.

    Config keys and defaults are those of diffusers' ``DDPMScheduler``. ``variance_type`` picks the
    reverse-process variance: ``fixed_small`` (posterior variance beta~_t, E3), ``fixed_large``
    (beta_t), their ``_log`` aliases (same distribution), ``learned`` (the model outputs the variance
    itself, diffusers' convention) and ``learned_range`` (the model outputs v in [-1, 1] and
    log sigma^2 = (v+1)/2 log beta_t + (1-v)/2 log beta~_t, Nichol & Dhariwal 2021 eq. 15), and
    ``analytic``: the bound-optimal variance of Analytic-DPM (A1 clipped to A2), from the per-timestep
    statistic ``analytic_eps_sq_mean`` (Gamma_t, A3), and ``analytic_model_error``: the optimum for the
    model's own mean (D4), from ``analytic_eps_error_sq_mean`` (Delta_t). ``ddpm-estimate-variance``
    writes both statistics; they are the two config keys diffusers' DDPMScheduler lacks.

    ``step(..., eta=...)`` takes the DDIM family's step instead of DDPM's (D1-D4): eta = 0 is DDIM.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    # Read by ScratchDDPMPipeline's sampling loop (a performance contract, see docs/performance.md): with
    # ``set_timesteps(device=...)`` ``step`` reads nothing back to the host (no device sync per step,
    # capturable in a CUDA graph), and it takes ``variance_noise`` instead of drawing from ``generator``.
    sync_free_device_timesteps = True
    # Opt-in: ``step`` refuses NaN/inf in model_output and sample. Off by default because it reads the
    # values back (a device sync per step). An attribute, not a config key: configs are shared with
    # other schedulers through from_config.
    check_finite = False

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        analytic_eps_sq_mean: Sequence[float] | None = None,
        analytic_eps_error_sq_mean: Sequence[float] | None = None,
    ):
        self._reverse_step_config: tuple[object, ReverseStepConfig] | None = None
        self._check_config(locals())
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        if trained_betas is not None and len(betas) != num_train_timesteps:
            # diffusers' convention: trained_betas define T. Keep the config consistent with them.
            self.register_to_config(num_train_timesteps=len(betas))
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        # the chains' keywords: the model statistics of the analytic variances and the data range of A2
        self._statistics = {
            "eps_sq_mean": self._checked_statistic(
                "analytic_eps_sq_mean", analytic_eps_sq_mean, variance_type == ANALYTIC_VARIANCE_TYPE, len(betas)),
            "eps_error_sq_mean": self._checked_statistic(
                "analytic_eps_error_sq_mean", analytic_eps_error_sq_mean,
                variance_type == MODEL_ERROR_VARIANCE_TYPE, len(betas)),
            "data_half_range": self.reverse_step_config.data_half_range,
        }
        self.forward_chain = DiffusionChain.training_chain(alphas_cumprod, **self._statistics)
        self.sampling_chain = self.forward_chain
        self._chains_on_device: dict[tuple[int, str], tuple[DiffusionChain, DiffusionChain]] = {}

        # float32 views under diffusers' attribute names, for code that reads them directly
        self.betas = betas.float()
        self.alphas = (1 - betas).float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.init_noise_sigma = 1.0
        self.variance_type = variance_type
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(len(betas) - 1, -1, -1)

    def _check_config(self, config: dict) -> None:
        """Every config value is checked here, where it enters; numpy numbers are stored as Python ones
        (the config is written as JSON)."""
        if config["trained_betas"] is None:
            _require_choice("beta_schedule", config["beta_schedule"], BETA_SCHEDULES)
        _require_choice("variance_type", config["variance_type"], VARIANCE_TYPES)
        _require_choice("prediction_type", config["prediction_type"], PREDICTION_TYPES)
        _require_choice("timestep_spacing", config["timestep_spacing"], TIMESTEP_SPACINGS)
        clean = {
            "num_train_timesteps": require_int("num_train_timesteps", config["num_train_timesteps"], minimum=1),
            "steps_offset": require_int("steps_offset", config["steps_offset"], minimum=0),
            "beta_start": require_real("beta_start", config["beta_start"]),
            "beta_end": require_real("beta_end", config["beta_end"]),
        }
        for name in ("clip_sample", "thresholding", "rescale_betas_zero_snr"):
            clean[name] = require_bool(name, config[name])
        for name in ("clip_sample_range", "sample_max_value"):
            clean[name] = require_real(name, config[name])
            if clean[name] <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {config[name]!r}")
        ratio = clean["dynamic_thresholding_ratio"] = require_real(
            "dynamic_thresholding_ratio", config["dynamic_thresholding_ratio"]
        )
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {ratio}")
        if clean["rescale_betas_zero_snr"] and config["prediction_type"] == "epsilon":
            # abar_{T-1} = 0: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) is 0/0 there (x_T is the noise)
            raise ValueError(
                "rescale_betas_zero_snr=True needs prediction_type 'v_prediction' (Lin et al. 2024) or 'sample': "
                "at zero terminal SNR an epsilon prediction does not determine x_0 at t = T-1"
            )
        self.register_to_config(**clean)

    def _checked_statistic(self, key: str, values, required: bool, num_train_timesteps: int) -> torch.Tensor | None:
        """A per-timestep model statistic of the analytic variances: Gamma_t (A3, ``analytic_eps_sq_mean``)
        or Delta_t (D4, ``analytic_eps_error_sq_mean``); finite, >= 0, one per training timestep; stored as a list."""
        if values is None:
            if required:
                raise ValueError(
                    f"variance_type={self.config.variance_type!r} needs {key}, one value per training timestep "
                    "(Gamma_t = E ||eps_theta(x_t, t)||^2 / d for 'analytic', Delta_t = E ||eps - eps_theta(x_t, t)||^2 / d "
                    "for 'analytic_model_error'); estimate both for a saved pipeline with "
                    "`ddpm-estimate-variance PATH --num-images N` (or ddpm_from_scratch.bound.analytic_variance.estimate_eps_sq_mean)"
                )
            return None
        array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
        if array.dtype.kind not in "iuf":
            raise ArgumentTypeError(f"{key} must be real numbers, got {array.dtype} values")
        table = statistic_table(key, array, num_train_timesteps)
        self.register_to_config(**{key: table.tolist()})
        return table

    # ---- the diffusers scheduler contract -------------------------------------------------

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM feeds x_t to the model unscaled; kept for interchangeability with other schedulers."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling chain: ``num_inference_steps`` spaced by ``timestep_spacing``, or custom
        descending ``timesteps``. Each step t -> s then uses the merged step's posterior (abar_t / abar_s)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        chain = self._resolve_timesteps(num_inference_steps, timesteps)
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(chain)
        self.timesteps = torch.from_numpy(chain).to(device)
        self.sampling_chain = DiffusionChain.strided(self.forward_chain.alphas_cumprod, chain, **self._statistics)
        self._chains_on_device.clear()

    def chain_timesteps(
        self, num_inference_steps: int | None = None, timesteps: Sequence[int] | None = None
    ) -> list[int]:
        """The descending timesteps ``set_timesteps(num_inference_steps, timesteps=timesteps)`` would choose
        (at most one of them; both None: all T, the training chain). Leaves this scheduler as it is."""
        if num_inference_steps is None and timesteps is None:
            return list(range(self.config.num_train_timesteps - 1, -1, -1))
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(
                "pass exactly one of num_inference_steps or timesteps for a strided chain, "
                "or neither for the training chain"
            )
        return self._resolve_timesteps(num_inference_steps, timesteps).tolist()

    def diffusion_chain(
        self,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        device: str | torch.device | None = None,
    ) -> DiffusionChain:
        """The chain over ``chain_timesteps(num_inference_steps, timesteps)``, on ``device`` (default: the
        CPU): the training chain t -> t - 1 when both are None, else the one ``set_timesteps`` would walk.
        What the bound and the losses take; this scheduler's own timesteps are left as they are."""
        if num_inference_steps is None and timesteps is None:
            return self._chain_on(device, self.forward_chain)
        walk = torch.tensor(self.chain_timesteps(num_inference_steps, timesteps))
        chain = DiffusionChain.strided(self.forward_chain.alphas_cumprod, walk, **self._statistics)
        return chain if device is None else chain.to(device)

    @property
    def reverse_step_config(self) -> ReverseStepConfig:
        """How this config reads a model output into p_theta(x_s | x_t) (prediction, variance, clipping)."""
        config = self.config
        # kept per config object (register_to_config replaces it): rebuilt per step it adds ~5 us to each
        if self._reverse_step_config is None or self._reverse_step_config[0] is not config:
            self._reverse_step_config = (config, ReverseStepConfig.from_config(config))
        return self._reverse_step_config[1]

    def _resolve_timesteps(self, num_inference_steps: int | None, timesteps: Sequence[int] | None) -> np.ndarray:
        """Descending int64 timesteps for exactly one of the two arguments, checked."""
        T = self.config.num_train_timesteps
        if timesteps is not None:
            chain = as_timesteps("timesteps", timesteps)
            chain = np.atleast_1d(np.asarray(chain.cpu() if isinstance(chain, torch.Tensor) else chain, dtype=np.int64))
            if chain.ndim != 1 or len(chain) == 0:
                raise ValueError(f"timesteps must be a non-empty 1-d sequence of ints, got {timesteps!r}")
            if np.any(np.diff(chain) >= 0):
                raise ValueError(f"timesteps must be strictly descending, got {chain.tolist()}")
        else:
            num_inference_steps = require_int("num_inference_steps", num_inference_steps)
            if not 1 <= num_inference_steps <= T:
                raise ValueError(
                    f"num_inference_steps must be an int in [1, num_train_timesteps={T}], got {num_inference_steps!r}"
                )
            chain = spaced_timesteps(self.config.timestep_spacing, T, int(num_inference_steps), self.config.steps_offset)
        if chain.min() < 0 or chain.max() >= T:
            raise ValueError(
                f"timesteps must lie in [0, num_train_timesteps - 1 = {T - 1}], got {chain.tolist()}"
                + (f" (steps_offset={self.config.steps_offset})" if timesteps is None else "")
            )
        return chain

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep the sampling chain steps to from ``timestep`` (-1 after the last step)."""
        t = as_timesteps("timestep", timestep)
        prev = self.sampling_chain.prev_timesteps[torch.as_tensor(t).cpu()]
        return int(prev) if isinstance(t, int) else prev

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
        eta: float | None = None,
    ) -> ScratchDDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One sampling step x_t -> x_s, s = ``previous_timestep(t)``: DDPM's, or the DDIM family's with ``eta``.

        ``eta`` (DDIMScheduler's argument): None is DDPM's ancestral step (diffusers' DDPMScheduler,
        exactly); a number in [0, 1] steps with the DDIM family's posterior q_sigma(x_s | x_t, x_0),
        sigma^2 = eta^2 beta~_{t|s} (D1-D2): 0 is DDIM (deterministic, no noise drawn), 1 DDPM's
        posterior again. With eta, ``variance_type`` "analytic" / "analytic_model_error" give the
        family's optimal variance (D3-D4), which adds noise even at eta = 0 (Analytic-DDIM);
        fixed_large and the learned types are refused. The step's noise
        always comes from the x_0 the model gives after clipping, so eta = 0 equals diffusers'
        ``DDIMScheduler.step(..., use_clipped_model_output=True)``.

        ``variance_noise`` (DDIMScheduler's argument): the z of sigma_t z, drawn by the caller (shape
        of ``sample``) instead of from ``generator``; the sampling loop uses it to draw noise outside a
        CUDA graph and to copy host-drawn noise without a sync.

        The mean and variance are diffusion_math's ``p_mean_variance`` for ``reverse_step_config``:
        x_0 from the model output, clipped or thresholded, mean = posterior mean P2, log-variance for
        ``variance_type``. The step adds sigma_t z, with no noise on the chain's final step.

        Inputs are checked where they are free to check (types, dtypes, shapes, devices; a fractional
        timestep is refused, never truncated). Set ``scheduler.check_finite = True`` to also refuse
        NaN/inf in ``model_output`` or ``sample``: that reads them back, one device sync per step.
        """
        t = self._host_timestep(timestep)
        if self.check_finite:
            require_finite(t, model_output=model_output, sample=sample)
        chain = self._chain_for(t, sample.device, self.sampling_chain)
        reverse = p_mean_variance(chain, model_output, sample, t, self.reverse_step_config, eta)
        prev_sample, pred_original_sample = reverse.mean, reverse.pred_xstart
        # diffusers draws noise exactly when t > 0; doing the same keeps the random streams equal.
        # DDIM (eta = 0, variance lambda^2 = 0) adds none and draws none, as diffusers' DDIMScheduler.
        deterministic = eta == 0 and self.config.variance_type in ("fixed_small", "fixed_small_log")
        if not deterministic and self._draws_noise(t):
            if variance_noise is None:
                noise = draw_noise(sample.shape, generator, sample.device, model_output.dtype)
            else:
                self._check_same_shape(sample=sample, variance_noise=variance_noise)
                noise = variance_noise
            log_variance = reverse.log_variance
            std = math.exp(0.5 * log_variance) if isinstance(log_variance, float) else torch.exp(0.5 * log_variance)
            prev_sample = add_scaled(prev_sample, chain.lookup("not_final", t, sample) * std, noise)

        if not return_dict:
            return prev_sample, pred_original_sample
        return ScratchDDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward process in closed form, eq. F2: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        self._check_same_shape(original_samples=original_samples, noise=noise)
        chain = self._chain_on(original_samples.device, self.forward_chain)
        return chain.q_sample(original_samples, noise, self._checked_timesteps(timesteps))

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (``sample`` is x_0)."""
        self._check_same_shape(sample=sample, noise=noise)
        chain = self._chain_on(sample.device, self.forward_chain)
        return chain.velocity(sample, noise, self._checked_timesteps(timesteps))

    # ---- the math on the training chain, for code that holds a scheduler -------------------

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior q(x_{t-1} | x_t, x_0) of the training chain: (mean P2, variance E3, clipped log-variance)."""
        self._check_same_shape(x_start=x_start, x_t=x_t)
        chain = self._chain_on(x_t.device, self.forward_chain)
        return chain.q_posterior_mean_variance(x_start, x_t, self._checked_timesteps(timesteps))

    def predict_original_sample(
        self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """x_0 from a model output of the configured ``prediction_type`` (E4 corrected for epsilon)."""
        chain = self._chain_on(sample.device, self.forward_chain)
        return predict_xstart(chain, model_output, sample, self._checked_timesteps(timesteps),
                              self.config.prediction_type)

    def training_target(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model regresses onto under L_simple (L2): the noise, x_0 (``sample``) or v."""
        self._check_same_shape(sample=sample, noise=noise)
        chain = self._chain_on(sample.device, self.forward_chain)
        return simple_loss_target(chain, sample, noise, self._checked_timesteps(timesteps), self.config.prediction_type)

    def _get_variance(
        self, t: int | torch.Tensor, predicted_variance: torch.Tensor | None = None, variance_type: str | None = None
    ) -> torch.Tensor:
        """diffusers' private ``DDPMScheduler._get_variance``, for code that calls it on a DDPM scheduler
        (diffusers' ``ValueGuidedRLPipeline`` does). Not used by ``step``.

        For the step t -> previous_timestep(t) it returns what diffusers returns, whose unit depends on
        the type: fixed_small: beta~ (floored at 1e-20); fixed_small_log: its square root, the std;
        fixed_large: beta; fixed_large_log: log beta; learned: ``predicted_variance`` itself;
        learned_range: the interpolated log-variance; analytic: sigma*^2 (A1 clipped to A2);
        analytic_model_error: D4's variance.
        A float32 tensor, like diffusers'.
        """
        t = self._host_timestep(t)
        if not isinstance(t, int):
            if t.numel() != 1:
                raise ValueError(f"t must be a single timestep, got shape {tuple(t.shape)}")
            t = int(t.reshape(()))
        variance_type = self.config.variance_type if variance_type is None else variance_type
        _require_choice("variance_type", variance_type, VARIANCE_TYPES)
        chain = self.sampling_chain
        posterior_variance = max(chain.lookup("posterior_variance", t, self.betas), MIN_VARIANCE)
        beta = chain.lookup("betas", t, self.betas)
        if variance_type in ("learned", "learned_range") and predicted_variance is None:
            raise ValueError(f"variance_type={variance_type!r} needs predicted_variance, the model's variance part")
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * math.log(beta) + (1 - frac) * math.log(posterior_variance)
        value = {
            "fixed_small": lambda: posterior_variance,
            "fixed_small_log": lambda: math.sqrt(posterior_variance),
            "fixed_large": lambda: beta,
            "fixed_large_log": lambda: math.log(beta),
            ANALYTIC_VARIANCE_TYPE: lambda: math.exp(model_log_variance(chain, t, self.betas, variance_type, None)),
            MODEL_ERROR_VARIANCE_TYPE: lambda: math.exp(model_log_variance(chain, t, self.betas, variance_type, None)),
        }[variance_type]()
        return torch.tensor(value, dtype=torch.float32)

    # ---- helpers ----------------------------------------------------------------------------

    def _chain_for(self, t: int | torch.Tensor, device: torch.device, chain: DiffusionChain) -> DiffusionChain:
        # a host timestep reads Python-float coefficients; a tensor one gathers on the sample's device (no sync)
        return chain if isinstance(t, int) else self._chain_on(device, chain)

    @staticmethod
    def _host_timestep(timestep: int | torch.Tensor) -> int | torch.Tensor:
        """A timestep already on the host as a Python int (free to read); device or batched ones as they are.
        Floats and bools are refused (``as_timesteps``)."""
        if type(timestep) is int:
            return timestep
        timestep = as_timesteps("timestep", timestep)
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 0 and timestep.device.type == "cpu":
            return int(timestep)
        return timestep

    @staticmethod
    def _draws_noise(t: int | torch.Tensor) -> bool:
        # A timestep on an accelerator is not read back (that would sync every step): noise is drawn
        # and the final-step mask zeroes it, which changes nothing but the generator's later state.
        if isinstance(t, int):
            return t > 0
        if t.device.type != "cpu":
            return True
        return bool((t > 0).any())

    def _chain_on(self, device: torch.device | str | None, chain: DiffusionChain) -> DiffusionChain:
        if device is None:
            return chain
        device = torch.device(device)
        if device.type != "mps" and chain.alphas_cumprod.device == device:
            return chain  # already there (e.g. a chain the caller moved): nothing to cache
        key = (id(chain), str(device))
        cached = self._chains_on_device.get(key)
        # the cache keeps the chain itself too, so its id cannot be reused by another chain meanwhile
        if cached is None or cached[0] is not chain:
            cached = self._chains_on_device[key] = (chain, chain.to(device))
        return cached[1]

    def _checked_timesteps(self, timesteps: torch.Tensor | int) -> torch.Tensor | int:
        # Integer dtype always (free); range checks only where they are free: reading a CUDA tensor back would sync.
        timesteps = as_timesteps("timesteps", timesteps)
        t = torch.as_tensor(timesteps)
        if t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= self.config.num_train_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.config.num_train_timesteps - 1}], got min {int(t.min())}, max {int(t.max())}"
            )
        return timesteps

    @staticmethod
    def _check_same_shape(**tensors: torch.Tensor) -> None:
        """Tensors that enter together: floating point, one shape, one device (metadata only: free)."""
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if not tensor.is_floating_point():
                raise ArgumentTypeError(f"{name} must have a floating-point dtype, got {tensor.dtype}")
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"shapes must match, got {shapes}")
        devices = {name: str(t.device) for name, t in tensors.items()}
        if len(set(devices.values())) > 1:
            raise ValueError(f"tensors must be on one device, got {devices}")
