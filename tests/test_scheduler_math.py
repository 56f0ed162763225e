"""Property tests of the derivation's formulas, in float64 (equation ids as in docs/derivation.md)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from ddpm_from_scratch import ScratchDDPMScheduler
from ddpm_from_scratch.beta_schedules import cosine_betas, make_betas, rescale_zero_terminal_snr
from ddpm_from_scratch.diffusion_math import DiffusionChain


def chain_for(schedule: str = "linear", T: int = 1000) -> DiffusionChain:
    betas = make_betas(schedule, T, 1e-4, 0.02)
    return DiffusionChain.training_chain(torch.cumprod(1 - betas, 0))


def normal_pdf(x, mean, var):
    return torch.exp(-((x - mean) ** 2) / (2 * var)) / torch.sqrt(2 * math.pi * var)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_f1_iterated_is_f2_with_unit_variance_noise(schedule):
    """Iterating F1 is a linear map of x_0 and z_1..z_t: its x_0 coefficient is sqrt(abar_t) (F2) and
    its noise coefficients have squared norm 1 - abar_t, i.e. the summed noise is sqrt(1-abar_t) z~ with
    Var z~ = 1 exactly (F3)."""
    chain = chain_for(schedule)
    one = torch.ones((), dtype=torch.float64)
    x0_coef, noise_coefs = one, torch.zeros(0, dtype=torch.float64)
    for t in range(chain.num_timesteps):
        x0_coef = chain.q_step(x0_coef, 0 * one, t)
        noise_coefs = torch.cat([chain.q_step(noise_coefs, 0 * noise_coefs, t), chain.q_step(0 * one, one, t)[None]])
        if t in (0, 1, 9, 499, chain.num_timesteps - 1):
            assert torch.allclose(x0_coef, chain.sqrt_alphas_cumprod[t], rtol=1e-12, atol=0)
            summed_noise_var = (noise_coefs**2).sum()
            assert torch.allclose(summed_noise_var, 1 - chain.alphas_cumprod[t], rtol=1e-10, atol=1e-14)
            assert torch.allclose(summed_noise_var / (1 - chain.alphas_cumprod[t]), one, rtol=1e-10)


def test_f1_iterated_matches_f2_in_distribution():
    """Monte Carlo: the random chain x_0 -> x_t through F1 has the law of F2 (two-sample KS test)."""
    T, n = 40, 40_000
    betas = torch.linspace(0.01, 0.2, T, dtype=torch.float64)
    chain = DiffusionChain.training_chain(torch.cumprod(1 - betas, 0))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(T):
        x = chain.q_step(x, torch.randn(n, generator=g, dtype=torch.float64), t)
    closed = chain.q_sample(x0, torch.randn(n, generator=g, dtype=torch.float64), T - 1)
    assert stats.ks_2samp(x.numpy(), closed.numpy()).pvalue > 1e-3
    mean, var = chain.q_mean_variance(x0[:1], T - 1)  # F4
    se = math.sqrt(var.item() / n)
    assert abs(x.mean().item() - mean.item()) < 5 * se
    assert abs(x.var().item() / var.item() - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_is_the_normalised_bayes_product(t):
    """P1 on a grid: q(x_t|x_{t-1}) q(x_{t-1}|x_0) / q(x_t|x_0) is a density equal to N(mu~ (P2), beta~ (E3))."""
    chain = chain_for()
    x0 = torch.tensor(0.3, dtype=torch.float64)
    alpha_t = 1 - chain.betas[t]
    mean_prev, var_prev = chain.sqrt_alphas_cumprod[t - 1] * x0, 1 - chain.alphas_cumprod[t - 1]  # E2 corrected
    mean_t, var_t = chain.q_mean_variance(x0, t)
    xt = mean_t - 0.8 * var_t.sqrt()  # a typical x_t, so that no density underflows
    post_mean, post_var, _ = chain.q_posterior_mean_variance(x0, xt, t)
    grid = post_mean + torch.sqrt(post_var) * torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    bayes = normal_pdf(xt, alpha_t.sqrt() * grid, chain.betas[t]) * normal_pdf(grid, mean_prev, var_prev)
    bayes = bayes / normal_pdf(xt, mean_t, var_t)
    assert torch.trapezoid(bayes, grid).item() == pytest.approx(1.0, abs=1e-9)  # the evidence normalises it
    assert torch.allclose(bayes, normal_pdf(grid, post_mean, post_var), rtol=1e-8, atol=1e-12 * bayes.max())


def test_posterior_variance_is_not_the_texts_slip():
    """E3: the text's alpha_t/(1-alpha_t) + 1/(1-abar_{t-1}) is the posterior *precision*."""
    chain = chain_for()
    t = 499  # code index of the paper's t = 500 (docs/derivation.md, "Index convention")
    slip = (1 - chain.betas[t]) / chain.betas[t] + 1 / (1 - chain.alphas_cumprod[t - 1])
    assert chain.posterior_variance[t].item() == pytest.approx(0.0100, abs=5e-5)
    assert slip.item() > 90
    assert (1 / slip).item() == pytest.approx(chain.posterior_variance[t].item(), rel=1e-12)


def test_averaging_the_posterior_over_xt_gives_q_prev_given_x0():
    """int q(x_{t-1}|x_t,x_0) q(x_t|x_0) dx_t = q(x_{t-1}|x_0) = N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}),
    for every t at once (moments of the Gaussian mixture), and by quadrature at one t."""
    chain = chain_for()
    t = torch.arange(1, chain.num_timesteps)
    x0 = torch.tensor(0.45, dtype=torch.float64)
    mean_t, var_t = chain.q_mean_variance(x0, t)
    c1, c2 = chain.posterior_mean_coef1[t], chain.posterior_mean_coef2[t]
    mixture_mean = c1 * x0 + c2 * mean_t
    mixture_var = chain.posterior_variance[t] + c2**2 * var_t
    assert torch.allclose(mixture_mean, chain.sqrt_alphas_cumprod[t - 1] * x0, rtol=1e-12, atol=1e-15)
    assert torch.allclose(mixture_var, 1 - chain.alphas_cumprod[t - 1], rtol=1e-10, atol=1e-15)

    s = 300  # quadrature: marginalise x_t on a grid at fixed x_{t-1} values
    xt_grid = mean_t[s - 1] + var_t[s - 1].sqrt() * torch.linspace(-12, 12, 20_001, dtype=torch.float64)
    for x_prev in (-1.0, 0.2, 1.3):
        post_mean, post_var, _ = chain.q_posterior_mean_variance(x0.expand_as(xt_grid), xt_grid, s)
        integrand = normal_pdf(torch.tensor(x_prev, dtype=torch.float64), post_mean, post_var) * normal_pdf(
            xt_grid, mean_t[s - 1], var_t[s - 1]
        )
        marginal = torch.trapezoid(integrand, xt_grid)
        expected = normal_pdf(torch.tensor(x_prev, dtype=torch.float64), chain.sqrt_alphas_cumprod[s - 1] * x0,
                              1 - chain.alphas_cumprod[s - 1])
        assert marginal.item() == pytest.approx(expected.item(), rel=1e-9)


def test_x0_and_noise_round_trip_through_e4_and_v():
    chain = chain_for()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 900, 999])
    xt = chain.q_sample(x0, eps, t)
    assert torch.allclose(chain.predict_xstart_from_eps(xt, eps, t), x0, atol=1e-9)
    assert torch.allclose(chain.predict_eps_from_xstart(xt, x0, t), eps, atol=1e-9)
    v = chain.velocity(x0, eps, t)
    assert torch.allclose(chain.predict_xstart_from_v(xt, v, t), x0, atol=1e-12)
    # E4 as printed in the text (x_{t-1} in place of x_t) does not recover x_0
    x_prev = chain.q_sample(x0, eps, t.clamp(min=1) - 1)
    wrong = chain.predict_xstart_from_eps(x_prev, eps, t)
    assert (wrong - x0).abs().max() > 1e-3


def test_p3_mean_equals_p2_with_e4():
    """P3 (mean in terms of the noise) is P2 evaluated at the x_0 of E4."""
    chain = chain_for()
    g = torch.Generator().manual_seed(2)
    xt = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 100, 700, 999])
    via_p2 = chain.q_posterior_mean(chain.predict_xstart_from_eps(xt, eps, t), xt, t)
    assert torch.allclose(chain.p_mean_from_eps(xt, eps, t), via_p2, rtol=1e-10, atol=1e-12)


def test_strided_chain_posterior_is_the_merged_steps_bayes_product():
    """For a step t -> s the posterior uses alpha_{t|s} = abar_t / abar_s: averaging it over x_t gives
    q(x_s | x_0), the same identity as for single steps."""
    sched = ScratchDDPMScheduler()
    sched.set_timesteps(10)
    chain = sched.sampling_chain
    t = sched.timesteps[:-1]
    s = chain.prev_timesteps[t]
    assert torch.equal(s, sched.timesteps[1:])
    x0 = torch.tensor(-0.6, dtype=torch.float64)
    _, var_t = chain.q_mean_variance(x0, t)
    c2 = chain.posterior_mean_coef2[t]
    mixture_mean = chain.posterior_mean_coef1[t] * x0 + c2 * chain.sqrt_alphas_cumprod[t] * x0
    assert torch.allclose(mixture_mean, chain.sqrt_alphas_cumprod[s] * x0, rtol=1e-12)
    assert torch.allclose(chain.posterior_variance[t] + c2**2 * var_t, 1 - chain.alphas_cumprod[s], rtol=1e-10)
    final = sched.timesteps[-1]
    assert chain.posterior_variance[final] == 0 and chain.posterior_mean_coef1[final] == 1


def test_beta_schedules():
    T = 1000
    abar_cos = torch.cumprod(1 - cosine_betas(T), 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert abar_cos[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    betas = make_betas("linear", T, 1e-4, 0.02)
    assert betas[0] == 1e-4 and betas[-1] == pytest.approx(0.02) and betas.dtype == torch.float64
    rescaled = rescale_zero_terminal_snr(betas)
    abar = torch.cumprod(1 - rescaled, 0)
    assert abar[-1].item() == pytest.approx(0.0, abs=1e-20)
    assert abar[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    scaled = make_betas("scaled_linear", T, 0.00085, 0.012)
    assert torch.allclose(scaled.sqrt()[1:] - scaled.sqrt()[:-1], (scaled.sqrt()[1] - scaled.sqrt()[0]).expand(T - 1))
    sig = make_betas("sigmoid", T, 1e-4, 0.02)
    assert sig[0] > 1e-4 and sig[-1] < 0.02 and bool((sig[1:] > sig[:-1]).all())
    trained = make_betas("linear", 3, 0, 0, trained_betas=[0.1, 0.2, 0.3])
    assert torch.equal(trained, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))


def test_tables_are_float64_and_cast_at_use():
    sched = ScratchDDPMScheduler()
    assert sched.forward_chain.posterior_variance.dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 2, 2, generator=g).half()
    noise = torch.randn(2, 1, 2, 2, generator=g).half()
    t = torch.tensor([3, 900])
    out = sched.add_noise(x, noise, t)
    assert out.dtype == torch.float16
    # F2 from the float64 tables, rounded once to float16 per factor: within a few half-precision ulps
    abar = sched.forward_chain.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    exact = abar.sqrt() * x.double() + (1 - abar).sqrt() * noise.double()
    torch.testing.assert_close(out.double(), exact, rtol=4e-3, atol=4e-3)
