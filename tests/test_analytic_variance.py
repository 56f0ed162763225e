"""The optimal reverse variance (Bao et al. 2022, Analytic-DPM): A1-A3 of docs/derivation.md.

The toy model: data x_0 ~ N(mu, s^2 I). Then x_t ~ N(sqrt(abar_t) mu, v_t I), v_t = abar_t s^2 + 1 - abar_t,
and (x_t, eps) are jointly Gaussian with Cov(eps, x_t) = sqrt(1 - abar_t) I, so the optimal noise
predictor and its statistic are, in closed form,

    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / v_t
    Gamma_t      = E ||eps*||^2 / d = (1 - abar_t) v_t / v_t^2 = (1 - abar_t) / v_t

and ||eps*||^2 / d = Gamma_t chi^2_d / d per image, so a mean over N images has standard error
Gamma_t sqrt(2 / (d N)). Written here from those formulas, not from the code under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_from_scratch.bound.analytic_variance import estimate_eps_sq_mean, evaluated_timesteps
from ddpm_from_scratch.diffusion_math import (
    DiffusionChain,
    analytic_variance,
    analytic_variance_bounds,
    analytic_variance_unclipped,
)
from ddpm_from_scratch.bound.likelihood import nll_bits_per_dim
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

F64 = torch.float64
MU, S = 0.1, 0.25  # the toy data: N(MU, S^2) per pixel, inside [-1, 1] up to 3.6 standard deviations


def toy_gamma(abar: torch.Tensor) -> torch.Tensor:
    return (1 - abar) / (abar * S**2 + 1 - abar)


class ToyEps:
    """eps*(x_t, t) of Gaussian data, for a (B,) batch of timesteps."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.abar = alphas_cumprod.to(F64)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t.cpu()].to(x_t).reshape(-1, *([1] * (x_t.ndim - 1)))
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)


def toy_data(n: int, shape=(1, 4, 4), seed: int = 0) -> torch.Tensor:
    return MU + S * torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_the_toy_closed_forms():
    """eps* is E[eps | x_t] (its residual is uncorrelated with x_t) and E ||eps*||^2 / d = Gamma_t."""
    sched = ScratchDDPMScheduler()
    model = ToyEps(sched.forward_chain.alphas_cumprod)
    n = 400_000
    g = torch.Generator().manual_seed(1)
    for t in (0, 50, 300, 999):
        abar = sched.forward_chain.alphas_cumprod[t]
        x0 = MU + S * torch.randn(n, generator=g, dtype=F64)
        eps = torch.randn(n, generator=g, dtype=F64)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        predicted = model(x_t.reshape(n, 1), torch.full((n,), t)).reshape(n)
        residual = eps - predicted
        se = 5 / math.sqrt(n)
        assert abs(float((residual * (x_t - x_t.mean())).mean())) < se * float(x_t.std())
        assert abs(float(residual.mean())) < se
        assert float((predicted**2).mean()) == pytest.approx(float(toy_gamma(abar)), rel=10 / math.sqrt(n))


def test_a1_is_the_posterior_variance_plus_the_x0_error_through_the_mean():
    """sigma*^2 = beta~ + coef1^2 E||x_0 - E[x_0 | x_t]||^2 / d: for Gaussian data Var(x_0 | x_t) is known."""
    sched = ScratchDDPMScheduler()
    sched.set_timesteps(25)
    chain = sched.sampling_chain
    abar, abar_prev = chain.alphas_cumprod, chain.alphas_cumprod_prev
    var_x0_given_xt = S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
    beta = 1 - abar / abar_prev
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    coef1 = abar_prev.sqrt() * beta / (1 - abar)
    expected = beta_tilde + coef1**2 * var_x0_given_xt
    torch.testing.assert_close(analytic_variance_unclipped(chain, toy_gamma(abar)), expected, rtol=1e-10, atol=1e-14)
    lower, upper = analytic_variance_bounds(chain)
    torch.testing.assert_close(lower, beta_tilde, rtol=1e-12, atol=0)
    torch.testing.assert_close(upper, beta_tilde + coef1**2, rtol=1e-12, atol=0)
    assert bool(((expected >= lower) & (expected <= upper)).all())  # S < 1: inside the bounds, no clipping
    # clipping: Gamma > 1 gives the lower bound, Gamma = 0 beyond the data range the upper one
    torch.testing.assert_close(analytic_variance(chain, torch.full_like(abar, 1.5)), lower)
    torch.testing.assert_close(analytic_variance(chain, torch.zeros_like(abar)),
                               torch.minimum(upper, analytic_variance_unclipped(chain, torch.zeros_like(abar))))
    with pytest.raises(ValueError, match="one value per training timestep"):
        analytic_variance(chain, torch.zeros(10, dtype=F64))
    # without the statistic the chain's table is NaN and the reverse step says what is missing
    assert torch.isnan(DiffusionChain.training_chain(abar).analytic_log_variance).all()


@pytest.mark.parametrize("num_timesteps_sampled", [None, 40])
def test_the_monte_carlo_estimate_converges_to_the_true_gamma(num_timesteps_sampled):
    sched = ScratchDDPMScheduler()
    abar = sched.forward_chain.alphas_cumprod
    model, truth = ToyEps(abar), toy_gamma(abar)
    d = 16
    errors = []
    for n in (100, 1600):
        result = estimate_eps_sq_mean(model, sched, toy_data(n, seed=n), num_timesteps_sampled=num_timesteps_sampled,
                                      batch_size=4096, generator=torch.Generator().manual_seed(n), progress=False)
        at = result.timesteps
        assert result.eps_sq_mean.shape == (1000,) and result.num_images == n
        z = (result.eps_sq_mean[at] - truth[at]) / result.standard_error[at]
        assert float(z.abs().max()) < 5.0, n  # within 5 standard errors at every evaluated timestep
        # the reported standard error is the true one, Gamma_t sqrt(2 / (d N)), up to its own noise
        ratio = result.standard_error[at] / (truth[at] * math.sqrt(2 / (d * n)))
        assert float((ratio - 1).abs().median()) < 0.15
        errors.append(float((result.eps_sq_mean[at] - truth[at]).abs().mean()))
        # between evaluated timesteps the estimate is interpolated linearly, and so close to the smooth truth
        grid = torch.arange(1000, dtype=F64)
        expected = torch.from_numpy(np.interp(grid.numpy(), at.numpy(), result.eps_sq_mean[at].numpy()))
        torch.testing.assert_close(result.eps_sq_mean, expected, rtol=1e-12, atol=1e-12)
        interpolated_truth = np.interp(grid.numpy(), at.numpy(), truth[at].numpy())
        assert np.abs(interpolated_truth - truth.numpy()).max() < 0.003
    assert errors[1] < errors[0] / 2  # 16x the images: about 1/4 of the error


def test_estimate_is_vectorised_over_timesteps_and_reproducible():
    sched = ScratchDDPMScheduler(num_train_timesteps=50, prediction_type="v_prediction")
    calls = []

    def v_model(x_t, t):  # a v-prediction of the toy eps*: the estimator must convert it back
        calls.append(t.clone())
        abar = sched.forward_chain.alphas_cumprod[t].to(x_t).reshape(-1, 1, 1, 1)
        eps = ToyEps(sched.forward_chain.alphas_cumprod)(x_t, t)
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0

    images = toy_data(30)
    a = estimate_eps_sq_mean(v_model, sched, images, batch_size=256, generator=torch.Generator().manual_seed(0),
                             progress=False)
    assert len(calls) == math.ceil(30 * 50 / 256) and len(set(calls[0].tolist())) == 50  # timesteps mixed
    b = estimate_eps_sq_mean(v_model, sched, images, batch_size=256, generator=torch.Generator().manual_seed(0),
                             progress=False)
    assert torch.equal(a.eps_sq_mean, b.eps_sq_mean)
    truth = toy_gamma(sched.forward_chain.alphas_cumprod)
    assert float(((a.eps_sq_mean - truth) / a.standard_error).abs().max()) < 5
    assert evaluated_timesteps(50, 5).tolist() == [0, 3, 12, 28, 49]  # quadratic: densest at small t
    assert evaluated_timesteps(50, 50).tolist() == list(range(50))
    with pytest.raises(ValueError, match="num_timesteps_sampled must be in"):
        evaluated_timesteps(50, 51)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        estimate_eps_sq_mean(v_model, sched, images, batch_size=0)


def grid_toy_data(n: int) -> torch.Tensor:
    """Toy data on the 8-bit grid k / 127.5 - 1 (what the bound's decoder expects)."""
    x = toy_data(n, seed=7).clamp(-1, 1)
    return torch.round((x + 1) * 127.5) / 127.5 - 1


@pytest.mark.parametrize("num_inference_steps", [10, 25, 100, None], ids=["K=10", "K=25", "K=100", "K=T"])
def test_the_analytic_variance_gives_the_best_bound(num_inference_steps):
    """On the toy model, with its true Gamma_t, at every step count: no worse than fixed_small or fixed_large."""
    base = ScratchDDPMScheduler(clip_sample=False)
    abar = base.forward_chain.alphas_cumprod
    model, x0 = ToyEps(abar), grid_toy_data(64)
    bounds = {}
    for variance_type in ("fixed_small", "fixed_large", "analytic"):
        extra = dict(analytic_eps_sq_mean=toy_gamma(abar).tolist()) if variance_type == "analytic" else {}
        sched = ScratchDDPMScheduler(clip_sample=False, variance_type=variance_type, **extra)
        bound = nll_bits_per_dim(model, sched, x0, generator=torch.Generator().manual_seed(0), progress=False,
                                 num_inference_steps=num_inference_steps)
        bounds[variance_type] = bound
    analytic = bounds["analytic"].bits_per_dim
    for other in ("fixed_small", "fixed_large"):
        # the same draws for each variance type: the difference is systematic, not Monte-Carlo noise
        assert analytic <= bounds[other].bits_per_dim, (other, analytic, bounds[other].bits_per_dim)
    if num_inference_steps is not None:
        used = bounds["analytic"].timesteps
        assert len(used) == num_inference_steps and used == sorted(used, reverse=True)
        unused = sorted(set(range(1000)) - set(used))
        assert torch.equal(bounds["analytic"].vb_bpd[:, unused], torch.zeros(64, len(unused), dtype=F64))


def test_a_strided_bound_uses_the_sampling_chain_of_set_timesteps():
    """The strided bound's terms: the prior at the first timestep, the merged steps' KLs, the decoder last."""
    sched = ScratchDDPMScheduler(clip_sample=False)
    model, x0 = ToyEps(sched.forward_chain.alphas_cumprod), grid_toy_data(8)
    custom = [999, 600, 200, 30, 0]
    bound = nll_bits_per_dim(model, sched, x0, generator=torch.Generator().manual_seed(0), progress=False,
                             timesteps=custom)
    assert bound.timesteps == custom and sched.num_inference_steps is None  # the caller's scheduler is untouched
    assert torch.equal(bound.decoder_bpd, bound.vb_bpd[:, 0])
    full = nll_bits_per_dim(model, sched, x0, generator=torch.Generator().manual_seed(0), progress=False)
    assert full.timesteps is None
    torch.testing.assert_close(bound.prior_bpd, full.prior_bpd)  # both start at T - 1
    trailing = ScratchDDPMScheduler(clip_sample=False, timestep_spacing="trailing")
    b = nll_bits_per_dim(model, trailing, x0, generator=torch.Generator().manual_seed(0), progress=False,
                         num_inference_steps=10)
    assert b.timesteps[-1] == 99 and torch.equal(b.decoder_bpd, b.vb_bpd[:, 99])  # the chain ends at t = 99
    with pytest.raises(ValueError, match="exactly one of"):
        nll_bits_per_dim(model, sched, x0, num_inference_steps=10, timesteps=custom, progress=False)


def test_the_statistic_survives_save_load_and_from_config_swaps(tmp_path):
    gamma = toy_gamma(ScratchDDPMScheduler().forward_chain.alphas_cumprod)
    ours = ScratchDDPMScheduler(variance_type="analytic", analytic_eps_sq_mean=gamma)  # a tensor is accepted
    assert isinstance(ours.config.analytic_eps_sq_mean, list)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["analytic_eps_sq_mean"] == gamma.tolist()
    loaded = ScratchDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.variance_type == "analytic" and loaded.config.analytic_eps_sq_mean == gamma.tolist()
    assert torch.equal(loaded.forward_chain.analytic_log_variance, ours.forward_chain.analytic_log_variance)
    loaded.set_timesteps(10)
    assert torch.isfinite(loaded.sampling_chain.analytic_log_variance).all()

    # diffusers -> ours: no key, default None; asking for "analytic" then says how to get the statistic
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    swapped = ScratchDDPMScheduler.from_config(ref.config)
    assert swapped.config.analytic_eps_sq_mean is None and swapped.config.variance_type == "fixed_small"
    with pytest.raises(ValueError, match="ddpm-estimate-variance"):
        ScratchDDPMScheduler.from_config(ref.config, variance_type="analytic")
    # ours (with the statistic) -> diffusers: the unknown key is ignored, every key diffusers knows is kept
    plain = ScratchDDPMScheduler.from_config(ours.config, variance_type="fixed_large")
    back = DDPMScheduler.from_config(plain.config)
    for key in ("beta_schedule", "num_train_timesteps", "variance_type", "prediction_type"):
        assert back.config[key] == plain.config[key]
    # diffusers keeps the key it does not use in its config, so a swap there and back keeps the statistic
    again = ScratchDDPMScheduler.from_config(back.config, variance_type="analytic")
    assert again.config.analytic_eps_sq_mean == gamma.tolist()
    assert torch.equal(again.forward_chain.analytic_log_variance, ours.forward_chain.analytic_log_variance)
