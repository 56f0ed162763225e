"""The DDIM family in the one reverse step (D1-D4): ``ScratchDDPMScheduler.step(eta=...)``.

Properties: eta = 1 is DDPM's step; eta = 0 is diffusers' DDIM step with use_clipped_model_output=True;
every eta keeps the marginals q(x_s | x_0); the step's noise is the one consistent with the clipped x_0;
the family's optimal variances (analytic, model-error-aware) are the true optimum on Gaussian data,
for the optimal predictor and for an imperfect one. Then the variance's edge cases.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from ddpm_from_scratch.bound.analytic_variance import estimate_eps_sq_mean
from ddpm_from_scratch.bound.likelihood import nll_bits_per_dim
from ddpm_from_scratch.diffusion_math import (
    DiffusionChain,
    analytic_variance,
    ddim_family_coefficients,
    p_mean_variance,
)
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

F64 = torch.float64


def mean_and_std(scheduler, out, x, t, **kwargs):
    """The step's output for z = 0 is its mean; for z = 1 it is mean + std."""
    zero = scheduler.step(out, t, x, variance_noise=torch.zeros_like(x), **kwargs).prev_sample
    one = scheduler.step(out, t, x, variance_noise=torch.ones_like(x), **kwargs).prev_sample
    return zero, one - zero


# ---- the family against DDPM and diffusers' DDIM ------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("num_inference_steps", [None, 10])
def test_eta_one_is_ddpms_step(prediction_type, clip_sample, num_inference_steps):
    scheduler = ScratchDDPMScheduler(prediction_type=prediction_type, clip_sample=clip_sample)
    if num_inference_steps:
        scheduler.set_timesteps(num_inference_steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
    for t in scheduler.timesteps.tolist()[:: max(1, len(scheduler.timesteps) // 7)] + [0]:
        out = 2 * torch.randn(x.shape, generator=g, dtype=F64)
        ddpm = mean_and_std(scheduler, out, x, t)
        family = mean_and_std(scheduler, out, x, t, eta=1.0)
        torch.testing.assert_close(family, ddpm, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_eta_zero_is_diffusers_ddim_with_the_clipped_model_output(prediction_type, eta):
    """A whole 20-step chain, same model outputs and noise, x_0 clipping active (outputs of scale 3)."""
    ours = ScratchDDPMScheduler(prediction_type=prediction_type)
    ref = DDIMScheduler.from_config(ours.config)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    x_ours = x_ref = torch.randn(4, 1, 8, 8, generator=g)
    for t in ours.timesteps.tolist():
        out = 3 * torch.randn(x_ours.shape, generator=g)
        noise = torch.randn(x_ours.shape, generator=g)
        a = ours.step(out, t, x_ours, eta=eta, variance_noise=noise)
        b = ref.step(out, t, x_ref, eta=eta, use_clipped_model_output=True, variance_noise=noise)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-4, atol=1e-4)
        x_ours, x_ref = a.prev_sample, b.prev_sample
    # diffusers' default mixes the clipped x_0 with the unclipped eps: a different step, not a rounding
    plain = DDIMScheduler.from_config(ours.config)
    plain.set_timesteps(20)
    out = 3 * torch.randn(x_ours.shape, generator=g)
    t = ours.timesteps.tolist()[5]
    mixed = plain.step(out, t, x_ours, eta=0.0).prev_sample
    assert (mixed - ours.step(out, t, x_ours, eta=0.0).prev_sample).abs().max() > 1e-2


def test_ddim_draws_no_noise_and_ddpm_draws_as_before():
    scheduler = ScratchDDPMScheduler()
    scheduler.set_timesteps(10)
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    scheduler.step(out, 500, x, generator=g, eta=0.0)
    assert torch.equal(g.get_state(), state)
    scheduler.step(out, 500, x, generator=g, eta=0.5)
    assert not torch.equal(g.get_state(), state)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_every_eta_keeps_the_marginals(eta):
    """x_t ~ q(x_t | x_0), then x_s from the step with the true x_0: x_s ~ q(x_s | x_0) = N(sqrt(abar_s) x_0, 1 - abar_s)."""
    scheduler = ScratchDDPMScheduler(prediction_type="sample", clip_sample=False)
    scheduler.set_timesteps(10)
    chain, n = scheduler.sampling_chain, 200_000
    g = torch.Generator().manual_seed(2)
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=F64)
    for t in (900, 500, 100):
        s = int(chain.prev_timesteps[t])
        a_t, a_s = float(chain.alphas_cumprod[t]), float(chain.alphas_cumprod[s])
        x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * torch.randn(x0.shape, generator=g, dtype=F64)
        x_s = scheduler.step(x0, t, x_t, eta=eta, generator=g).prev_sample
        assert x_s.mean().item() == pytest.approx(math.sqrt(a_s) * 0.7, abs=5 * math.sqrt((1 - a_s) / n))
        assert x_s.var().item() == pytest.approx(1 - a_s, rel=5 * math.sqrt(2 / n))


def test_the_step_uses_the_noise_of_the_clipped_x0():
    """DDIM's deterministic step moves along the eps it infers: x_s and x_t imply the same eps given x0_hat."""
    scheduler = ScratchDDPMScheduler()
    scheduler.set_timesteps(25)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=F64)
    chain = scheduler.sampling_chain
    for t in scheduler.timesteps.tolist()[:-1]:
        step = scheduler.step(4 * torch.randn(x.shape, generator=g, dtype=F64), t, x, eta=0.0)
        assert step.pred_original_sample.abs().max() <= 1  # clipped
        s = int(chain.prev_timesteps[t])
        a_t, a_s = float(chain.alphas_cumprod[t]), float(chain.alphas_cumprod[s])
        eps_t = (x - math.sqrt(a_t) * step.pred_original_sample) / math.sqrt(1 - a_t)
        eps_s = (step.prev_sample - math.sqrt(a_s) * step.pred_original_sample) / math.sqrt(1 - a_s)
        torch.testing.assert_close(eps_s, eps_t, rtol=1e-9, atol=1e-9)


def test_device_timesteps_give_the_host_step():
    scheduler = ScratchDDPMScheduler(variance_type="analytic", analytic_eps_sq_mean=[0.5] * 1000)
    scheduler.set_timesteps(10)
    x, out = torch.randn(2, 1, 4, 4, dtype=F64), torch.randn(2, 1, 4, 4, dtype=F64)
    for t in (900, 0):
        host = mean_and_std(scheduler, out, x, t, eta=0.3)
        batched = mean_and_std(scheduler, out, x, torch.tensor([t, t]), eta=0.3)
        torch.testing.assert_close(batched, host, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("eta", [-0.1, 1.5, "0", True])
def test_bad_eta_is_refused(eta):
    scheduler = ScratchDDPMScheduler()
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        scheduler.step(torch.zeros(1, 1, 2, 2), 999, torch.zeros(1, 1, 2, 2), eta=eta)


@pytest.mark.parametrize("variance_type", ["fixed_large", "learned_range"])
def test_eta_with_a_variance_outside_the_family_is_refused(variance_type):
    scheduler = ScratchDDPMScheduler(variance_type=variance_type)
    channels = 2 if variance_type == "learned_range" else 1
    with pytest.raises(ValueError, match="eta is defined for variance_type in"):
        scheduler.step(torch.zeros(1, channels, 2, 2), 999, torch.zeros(1, 1, 2, 2), eta=0.0)


# ---- the family's optimal variances on Gaussian data (known optimum) ------------------------------

S, M = 0.5, 0.3  # data: x_0 ~ N(M, S^2) per pixel


def posterior_of_x0(x_t, a_t):
    """E[x_0 | x_t] and Var(x_0 | x_t) for Gaussian data (a product of Gaussians)."""
    precision = a_t * S**2 + 1 - a_t
    return M + math.sqrt(a_t) * S**2 * (x_t - math.sqrt(a_t) * M) / precision, S**2 * (1 - a_t) / precision


def gamma_of_the_optimal_predictor(alphas_cumprod):
    """Gamma_t = E ||E[eps | x_t]||^2 / d = 1 - a_t Var(x_0 | x_t) / (1 - a_t) = (1 - a_t) / (a_t S^2 + 1 - a_t)."""
    return (1 - alphas_cumprod) / (alphas_cumprod * S**2 + 1 - alphas_cumprod)


def imperfect_x0(x_t, a_t):
    """A biased, shrunk x_0 prediction: 0.8 E[x_0 | x_t] + 0.1."""
    return 0.8 * posterior_of_x0(x_t, a_t)[0] + 0.1


def imperfect_error(a_t):
    """E (x_0 - x0_hat)^2 of ``imperfect_x0``: Var(x_0|x_t) + 0.2^2 Var(E[x_0|x_t]) + (0.2 M - 0.1)^2."""
    variance = posterior_of_x0(torch.zeros(()), a_t)[1]
    return variance + 0.04 * (S**2 - variance) + (0.2 * M - 0.1) ** 2


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_the_family_analytic_variance_is_the_optimum_for_the_optimal_predictor(eta):
    """sigma^2 of D3 equals E (x_s - mean)^2 over x_s ~ q_sigma(x_s | x_t, x_0): the variance that maximises the bound."""
    base = ScratchDDPMScheduler()
    gamma = gamma_of_the_optimal_predictor(base.forward_chain.alphas_cumprod)
    scheduler = ScratchDDPMScheduler(variance_type="analytic", analytic_eps_sq_mean=gamma, prediction_type="sample",
                                     clip_sample=False)
    scheduler.set_timesteps(10)
    chain, n = scheduler.sampling_chain, 400_000
    g = torch.Generator().manual_seed(4)
    for t in (900, 500, 200):
        s = int(chain.prev_timesteps[t])
        a_t, a_s = float(chain.alphas_cumprod[t]), float(chain.alphas_cumprod[s])
        x0 = M + S * torch.randn(n, 1, 1, 1, generator=g, dtype=F64)
        x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * torch.randn(x0.shape, generator=g, dtype=F64)
        mean, std = mean_and_std(scheduler, posterior_of_x0(x_t, a_t)[0], x_t, t, eta=eta)
        # x_s from the family's own posterior q_sigma(x_s | x_t, x_0), D1-D2
        lam2, c0, ct = ddim_family_coefficients(a_t, a_s, float(chain.posterior_variance[t]), eta)
        x_s = c0 * x0 + ct * x_t + math.sqrt(lam2) * torch.randn(x0.shape, generator=g, dtype=F64)
        optimum = (x_s - mean).pow(2)
        assert std[0].item() ** 2 == pytest.approx(optimum.mean().item(), abs=4 * optimum.std().item() / math.sqrt(n))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_model_error_variance_estimated_in_one_pass_is_the_optimum_for_an_imperfect_predictor(eta):
    """Delta_t from estimate_eps_sq_mean (the same pass as Gamma_t) gives the variance that maximises the
    bound for the model's own mean, lambda^2 + c_0^2 E (x_0 - x0_hat)^2; the analytic variance (which
    assumes the optimal predictor) does not."""
    base = ScratchDDPMScheduler(prediction_type="sample", clip_sample=False)

    def model(x_t, timesteps):  # an x_0 predictor, one timestep per image
        a_t = base.forward_chain.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1).to(x_t)
        return 0.8 * (M + a_t.sqrt() * S**2 * (x_t - a_t.sqrt() * M) / (a_t * S**2 + 1 - a_t)) + 0.1

    g = torch.Generator().manual_seed(5)
    images = M + S * torch.randn(4000, 1, 4, 4, generator=g, dtype=F64)
    estimate = estimate_eps_sq_mean(model, base, images, num_timesteps_sampled=60, batch_size=8192, generator=g,
                                    progress=False)
    scheduler = ScratchDDPMScheduler(prediction_type="sample", clip_sample=False, variance_type="analytic_model_error",
                                     **estimate.scheduler_config())
    analytic = ScratchDDPMScheduler.from_config(scheduler.config, variance_type="analytic")
    scheduler.set_timesteps(10)
    analytic.set_timesteps(10)
    chain = scheduler.sampling_chain
    x = torch.zeros(1, 1, 1, 1, dtype=F64)
    ratios = []
    for t in (900, 500, 100, 0):
        s = int(chain.prev_timesteps[t])
        a_t, a_s = float(chain.alphas_cumprod[t]), (float(chain.alphas_cumprod[s]) if s >= 0 else 1.0)
        lam2, c0, _ = ddim_family_coefficients(a_t, a_s, float(chain.posterior_variance[t]), eta)
        optimum = lam2 + c0**2 * float(imperfect_error(a_t))
        variance = math.exp(float(p_mean_variance(chain, x, x, t, scheduler.reverse_step_config, eta).log_variance))
        assert variance == pytest.approx(optimum, rel=0.03)  # Monte-Carlo error of Delta_t: about 1%
        if s >= 0:
            wrong = math.exp(float(p_mean_variance(analytic.sampling_chain, x, x, t, analytic.reverse_step_config,
                                                   eta).log_variance))
            ratios.append(wrong / optimum)
    # the optimal predictor's variance, from this model's Gamma_t, misses the optimum somewhere by far
    assert min(ratios) < 0.8, ratios


# ---- the variance's edge cases --------------------------------------------------------------------


def test_the_analytic_variance_on_a_final_step_is_the_decoders():
    """An estimated Gamma_0 >= 1 (plausible on 8-bit data) made the decoder's variance 1e-20 and the bound ~1e15."""
    scheduler = ScratchDDPMScheduler(variance_type="analytic", analytic_eps_sq_mean=[1.2] * 1000)
    chain = scheduler.forward_chain
    assert chain.analytic_log_variance[0] == chain.posterior_log_variance_clipped[0]
    assert math.exp(chain.analytic_log_variance[0]) > 1e-5
    x_start = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bits = nll_bits_per_dim(lambda x, t: torch.zeros_like(x), scheduler, x_start, num_inference_steps=10,
                            generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.isfinite(bits.decoder_bpd).all() and bits.decoder_bpd.max() < 20  # was about 1e15


def test_epsilon_prediction_at_zero_terminal_snr_is_refused_naming_v_prediction():
    with pytest.raises(ValueError, match="v_prediction"):
        ScratchDDPMScheduler(rescale_betas_zero_snr=True, prediction_type="epsilon")
    # the pairing that works: finite at t = T-1, where abar_t = 0, on a trailing chain
    scheduler = ScratchDDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                     timestep_spacing="trailing")
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [999] and scheduler.alphas_cumprod[999] == 0
    x = torch.randn(2, 1, 4, 4)
    assert torch.isfinite(scheduler.step(torch.randn(2, 1, 4, 4), 999, x).prev_sample).all()


def test_a_one_step_chain_from_the_top_has_a_decoder_variance():
    scheduler = ScratchDDPMScheduler()
    chain = scheduler.diffusion_chain(timesteps=[999])
    decoder = math.exp(float(chain.posterior_log_variance_clipped[999]))
    training = scheduler.forward_chain.posterior_variance[999].item()  # beta~ of the step 999 -> 998
    assert decoder == pytest.approx(training) and decoder > 1e-3
    x_start = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bits = nll_bits_per_dim(lambda x, t: torch.zeros_like(x), scheduler, x_start, timesteps=[999],
                            generator=torch.Generator().manual_seed(0), progress=False)
    assert bits.total_bpd.max() < 100


def test_the_bounds_data_range_is_the_clipping_range():
    gamma = [0.0] * 1000  # far below the optimum: A1 is clipped to the upper bound of A2
    narrow = ScratchDDPMScheduler(variance_type="analytic", analytic_eps_sq_mean=gamma)
    wide = ScratchDDPMScheduler(variance_type="analytic", analytic_eps_sq_mean=gamma, clip_sample_range=2.0)
    chain = narrow.forward_chain
    t = 800  # abar_t < 0.2, so (1 - abar_t) / abar_t > 4: A1 exceeds both upper bounds
    beta_tilde, coef1 = chain.posterior_variance[t], chain.posterior_mean_coef1[t]
    torch.testing.assert_close(chain.analytic_log_variance[t].exp(), beta_tilde + coef1**2)
    torch.testing.assert_close(wide.forward_chain.analytic_log_variance[t].exp(), beta_tilde + 4 * coef1**2)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_gamma_and_delta_must_be_means_of_squares_everywhere(bad):
    alphas_cumprod = ScratchDDPMScheduler().forward_chain.alphas_cumprod
    values = [0.5] * 999 + [bad]
    for keyword in ("eps_sq_mean", "eps_error_sq_mean"):
        with pytest.raises(ValueError, match="finite and >= 0"):
            DiffusionChain.training_chain(alphas_cumprod, **{keyword: values})
    with pytest.raises(ValueError, match="finite and >= 0"):
        analytic_variance(DiffusionChain.training_chain(alphas_cumprod), torch.tensor(values, dtype=F64))
    with pytest.raises(ValueError, match="finite and >= 0"):
        ScratchDDPMScheduler(variance_type="analytic_model_error", analytic_eps_error_sq_mean=values)


def test_the_analytic_variances_are_finite_where_abar_is_zero():
    scheduler = ScratchDDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                     variance_type="analytic", analytic_eps_sq_mean=[1.0] * 1000,
                                     analytic_eps_error_sq_mean=[0.3] * 1000)
    assert scheduler.forward_chain.alphas_cumprod[999] == 0
    for variance_type in ("analytic", "analytic_model_error"):
        chain = ScratchDDPMScheduler.from_config(scheduler.config, variance_type=variance_type).forward_chain
        table = chain.analytic_log_variance if variance_type == "analytic" else chain.model_error_log_variance
        assert torch.isfinite(table).all(), variance_type
        lam2, c0, _ = ddim_family_coefficients(0.0, float(chain.alphas_cumprod[998]), float(chain.posterior_variance[999]), 0.5)
        x = torch.zeros(1, 1, 1, 1, dtype=F64)
        config = ScratchDDPMScheduler.from_config(scheduler.config, variance_type=variance_type).reverse_step_config
        step = p_mean_variance(chain, x, x, 999, config, eta=0.5)
        assert math.exp(step.log_variance) == pytest.approx(lam2 + c0**2)  # the bound A2 with r = 1
