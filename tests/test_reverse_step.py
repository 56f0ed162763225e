"""The bound and the sampler take one reverse step p_theta(x_s | x_t).

For every variance_type x prediction_type, on the training chain and on a strided chain, the mean and
standard deviation of ``ScratchDDPMScheduler.step`` (read off its output for z = 0 and z = 1) equal
those of ``p_mean_variance`` on the scheduler's ``diffusion_chain`` (what ``likelihood`` and
``losses`` call), and both equal the mean P2 and the variance written here from abar alone. On the
training chain the bound's term L_{t-1} is the KL to the Gaussian the sampler draws from.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddpm_from_scratch.diffusion_math import (
    FIXED_VARIANCE_TYPES,
    DiffusionChain,
    LEARNED_VARIANCE_TYPES,
    PREDICTION_TYPES,
    VARIANCE_TYPES,
    p_mean_variance,
    split_model_output,
)
from ddpm_from_scratch.bound.likelihood import vlb_term
from ddpm_from_scratch.bound.losses import vlb_loss
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

F64 = torch.float64
B, C = 3, 2
CLIPPING = {
    "clip": dict(clip_sample=True),
    "none": dict(clip_sample=False),
    "threshold": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
}


# Gamma_t for the analytic variance: values in [0, 1.3], so that both clipping bounds (A2) are hit somewhere
EPS_SQ_MEAN = (0.65 + 0.65 * torch.sin(torch.arange(1000, dtype=F64) / 37.0)).tolist()
# Delta_t for the model-error-aware variance: a noise-prediction error in [0.01, 0.41]
EPS_ERROR_SQ_MEAN = (0.21 + 0.2 * torch.cos(torch.arange(1000, dtype=F64) / 53.0)).tolist()
STATISTICS = {"analytic": dict(analytic_eps_sq_mean=EPS_SQ_MEAN),
              "analytic_model_error": dict(analytic_eps_error_sq_mean=EPS_ERROR_SQ_MEAN)}


def make_scheduler(variance_type, prediction_type, clipping, num_inference_steps=None):
    sched = ScratchDDPMScheduler(variance_type=variance_type, prediction_type=prediction_type,
                                 **CLIPPING[clipping], **STATISTICS.get(variance_type, {}))
    if num_inference_steps is not None:
        sched.set_timesteps(num_inference_steps)
    return sched


def model_output(variance_type, x, seed):
    g = torch.Generator().manual_seed(seed)
    out = 2 * torch.randn(x.shape, generator=g, dtype=F64)
    if variance_type == "learned":  # the variance itself, positive, of the order of beta_t
        return torch.cat([out, 1e-3 * torch.rand(x.shape, generator=g, dtype=F64) + 1e-5], dim=1)
    if variance_type == "learned_range":  # v in [-1, 1]
        return torch.cat([out, torch.rand(x.shape, generator=g, dtype=F64) * 2 - 1], dim=1)
    return out


def reference_step(sched, out, x, t):
    """Mean P2 and variance of p(x_s | x_t), s = prev(t), from abar_t and abar_s alone (s < 0: abar_s = 1)."""
    config = sched.config
    abar = sched.forward_chain.alphas_cumprod
    s = int(sched.sampling_chain.prev_timesteps[t])
    a_t, a_s = abar[t].item(), (abar[s].item() if s >= 0 else 1.0)
    beta = 1 - a_t / a_s  # the merged step's beta
    eps_or_x0_or_v = out[:, :C]
    x0 = {
        "epsilon": (x - math.sqrt(1 - a_t) * eps_or_x0_or_v) / math.sqrt(a_t),
        "sample": eps_or_x0_or_v,
        "v_prediction": math.sqrt(a_t) * x - math.sqrt(1 - a_t) * eps_or_x0_or_v,
    }[config.prediction_type]
    if config.thresholding:
        q = torch.quantile(x0.abs().reshape(B, -1), config.dynamic_thresholding_ratio, dim=1)
        q = q.clamp(1, config.sample_max_value).reshape(B, 1, 1, 1)
        x0 = x0.clamp(-q, q) / q
    elif config.clip_sample:
        x0 = x0.clamp(-1, 1)
    mean = math.sqrt(a_s) * beta / (1 - a_t) * x0 + math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t) * x
    beta_tilde = (1 - a_s) / (1 - a_t) * beta  # E3 corrected
    # A1 (Analytic-DPM Theorem 1) clipped to A2 (Theorem 2, data in [-r, r]: r is what x_0 is clipped or
    # thresholded to)
    r = config.sample_max_value if config.thresholding else 1.0
    optimal = beta_tilde + beta**2 / ((1 - beta) * (1 - a_t)) * (1 - EPS_SQ_MEAN[t])
    analytic = min(max(optimal, beta_tilde), beta_tilde + a_s * beta**2 / (1 - a_t) ** 2 * r**2)
    # D4 at eta = 1: the x_0 coefficient of P2 squared, times E||x_0 - x0_hat||^2 / d = (1 - a_t) / a_t Delta_t
    model_error = beta_tilde + a_s * beta**2 / (1 - a_t) ** 2 * (1 - a_t) / a_t * EPS_ERROR_SQ_MEAN[t]
    variance = {
        "analytic": analytic,
        "analytic_model_error": model_error,
        "fixed_small": beta_tilde,
        "fixed_small_log": beta_tilde,
        "fixed_large": beta,
        "fixed_large_log": beta,
        "learned": out[:, C:],
        "learned_range": torch.exp((out[:, C:] + 1) / 2 * math.log(beta) + (1 - out[:, C:]) / 2 * math.log(beta_tilde))
        if s >= 0 else None,
    }[config.variance_type]
    return mean, variance, s


def sampler_mean_and_std(sched, out, x, t):
    """The step's output for z = 0 is its mean; for z = 1 it is mean + std."""
    zero = sched.step(out, t, x, variance_noise=torch.zeros_like(x)).prev_sample
    one = sched.step(out, t, x, variance_noise=torch.ones_like(x)).prev_sample
    return zero, one - zero


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("num_inference_steps", [None, 10], ids=["training_chain", "strided_10"])
def test_sampler_step_and_bound_share_mean_and_variance(variance_type, prediction_type, clipping, num_inference_steps):
    sched = make_scheduler(variance_type, prediction_type, clipping, num_inference_steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, 3, 3, generator=g, dtype=F64)
    timesteps = sched.timesteps.tolist()
    for i, t in enumerate([timesteps[0], timesteps[len(timesteps) // 2], timesteps[-3], timesteps[-2], timesteps[-1]]):
        out = model_output(variance_type, x, seed=10 + i)
        step_mean, step_std = sampler_mean_and_std(sched, out, x, t)
        # what the bound takes: the same step on the chain it builds, with per-image tensor timesteps
        chain = sched.diffusion_chain(num_inference_steps)
        bound = p_mean_variance(chain, out, x, torch.full((B,), t), sched.reverse_step_config)
        mean, variance, s = reference_step(sched, out, x, t)

        torch.testing.assert_close(step_mean, bound.mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(step_mean, mean, rtol=1e-10, atol=1e-12)
        if s < 0:  # the chain's final step: x_0 is returned, no noise whatever the variance type
            assert t == timesteps[-1] and torch.equal(step_std, torch.zeros_like(x))
            continue
        bound_std = torch.exp(0.5 * bound.log_variance).expand_as(x)
        torch.testing.assert_close(step_std, bound_std, rtol=1e-10, atol=0)
        torch.testing.assert_close(step_std, torch.as_tensor(variance, dtype=F64).sqrt().expand_as(x),
                                   rtol=1e-10, atol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
def test_the_bounds_kl_is_to_the_gaussian_the_sampler_draws_from(variance_type, prediction_type):
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(step mean, step std^2)), the step's moments read off its output."""
    sched = make_scheduler(variance_type, prediction_type, "clip")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 256, (B, C, 3, 3), generator=g).to(F64) / 127.5 - 1
    abar = sched.forward_chain.alphas_cumprod
    for i, t in enumerate((999, 400, 20, 1)):
        x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * torch.randn(x0.shape, generator=g, dtype=F64)
        out = model_output(variance_type, x_t, seed=20 + i)
        step_mean, step_std = sampler_mean_and_std(sched, out, x_t, t)
        beta, a_prev = 1 - abar[t] / abar[t - 1], abar[t - 1]
        q = torch.distributions.Normal(
            (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x_t) / (1 - abar[t]),
            ((1 - a_prev) / (1 - abar[t]) * beta).sqrt(),
        )
        expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(step_mean, step_std))
        timesteps, chain = torch.full((B,), t), sched.diffusion_chain()
        step = p_mean_variance(chain, out, x_t, timesteps, sched.reverse_step_config)
        got = vlb_term(chain, x0, x_t, timesteps, step)
        torch.testing.assert_close(got, expected.reshape(B, -1).sum(1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variance_type", FIXED_VARIANCE_TYPES)
def test_a_2c_output_under_a_fixed_variance_is_its_mean_half(variance_type):
    """As in diffusers' DDPMScheduler, the variance half is ignored, by the sampler and the bound alike."""
    sched = make_scheduler(variance_type, "epsilon", "clip")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, C, 3, 3, generator=g, dtype=F64)
    out = torch.randn(B, 2 * C, 3, 3, generator=g, dtype=F64)
    for t in (999, 10):
        noise = torch.randn(x.shape, generator=g, dtype=F64)
        full = sched.step(out, t, x, variance_noise=noise)
        half = sched.step(out[:, :C], t, x, variance_noise=noise)
        assert torch.equal(full.prev_sample, half.prev_sample)
        assert torch.equal(full.pred_original_sample, half.pred_original_sample)
        timesteps = torch.full((B,), t)
        chain, config = sched.diffusion_chain(), sched.reverse_step_config
        bound_full = p_mean_variance(chain, out, x, timesteps, config)
        bound_half = p_mean_variance(chain, out[:, :C], x, timesteps, config)
        assert torch.equal(bound_full.mean, bound_half.mean)
        assert torch.equal(torch.as_tensor(bound_full.log_variance), torch.as_tensor(bound_half.log_variance))


@pytest.mark.parametrize("variance_type", LEARNED_VARIANCE_TYPES)
def test_one_check_that_a_learned_variance_has_2c_channels(variance_type):
    x = torch.zeros(B, C, 3, 3, dtype=F64)
    message = rf"variance_type='{variance_type}' needs a model that outputs 2x the sample's channels \(4\), got model_output with 2 channels"
    with pytest.raises(ValueError, match=message):
        split_model_output(x, x, variance_type)
    sched = make_scheduler(variance_type, "epsilon", "clip")
    with pytest.raises(ValueError, match=message):
        sched.step(x, 10, x)
    chain, config, timesteps = sched.diffusion_chain(), sched.reverse_step_config, torch.full((B,), 10)
    with pytest.raises(ValueError, match=message):
        p_mean_variance(chain, x, x, timesteps, config)
    with pytest.raises(ValueError, match=message):
        vlb_loss(x, chain, config, x, x, timesteps)
    with pytest.raises(ValueError, match=r"model_output has 3 channels; expected 2 \(the sample's\) or 4"):
        split_model_output(torch.zeros(B, 3, 3, 3), x, variance_type)
    mean_part, variance_part = split_model_output(torch.arange(4.0).reshape(1, 4, 1, 1), x[:1, :, :1, :1], variance_type)
    assert mean_part.flatten().tolist() == [0.0, 1.0] and variance_part.flatten().tolist() == [2.0, 3.0]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_the_chain_the_bound_takes_is_the_one_set_timesteps_walks(spacing):
    """``diffusion_chain``/``chain_timesteps`` give the chain ``set_timesteps`` would build, table for table,
    and leave the scheduler's own state alone; with no arguments they give the training chain."""
    sched = ScratchDDPMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0,
                                 variance_type="analytic", analytic_eps_sq_mean=EPS_SQ_MEAN)
    chain, walk = sched.diffusion_chain(num_inference_steps=10), sched.chain_timesteps(num_inference_steps=10)
    assert sched.num_inference_steps is None and sched.sampling_chain is sched.forward_chain
    assert sched.diffusion_chain() is sched.forward_chain and sched.chain_timesteps() == list(range(999, -1, -1))
    sched.set_timesteps(10)
    assert walk == sched.timesteps.tolist() and int(chain.prev_timesteps[walk[-1]]) == -1
    for field in dataclasses.fields(DiffusionChain):
        torch.testing.assert_close(getattr(chain, field.name), getattr(sched.sampling_chain, field.name), rtol=0, atol=0,
                                   equal_nan=True)  # the statistics a scheduler was not given are NaN
    assert sched.chain_timesteps(timesteps=[999, 500, 3]) == [999, 500, 3]
    with pytest.raises(ValueError, match="exactly one of"):
        sched.diffusion_chain(num_inference_steps=10, timesteps=[999, 500, 3])
