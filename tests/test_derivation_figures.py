"""The figures of docs/derivation.md (benchmarks/derivation_figures.py), and the closed forms its
sections 1, 5 and 6 introduce, each checked against what it claims to be.

The closed forms are written here in plain torch from the derivation's text, not taken from the
package: the schedules (section 1), the Gaussian toy's Gamma_t (section 5), the DDIM family D1-D2, its
optimal variance D3 and the model-error variance D4 (section 6). Monte-Carlo checks use 5 standard errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks import derivation_figures as figures
from ddpm_from_scratch.beta_schedules import make_betas

F64 = torch.float64
T = 1000
DERIVATION = Path(__file__).resolve().parents[1] / "docs" / "derivation.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def linear_alphas_cumprod() -> torch.Tensor:
    """abar_t of the paper's schedule, code index t - 1."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=F64), dim=0)


def gaussian_draws(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, generator=generator, dtype=F64) for _ in range(3))


def assert_within_standard_errors(samples: torch.Tensor, expected: float, k: float = 5.0) -> None:
    """The mean of ``samples`` is ``expected`` within k standard errors."""
    mean, standard_error = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    assert abs(mean - expected) <= k * standard_error + 1e-12, (mean, expected, standard_error)


# ---- the figures -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_script_writes_every_figure_as_a_png(tmp_path):
    paths = figures.main(["--out", str(tmp_path)])
    assert sorted(path.name for path in paths) == sorted(figures.FIGURES)
    for name in figures.FIGURES:
        path = tmp_path / name
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert 10_000 < len(data) < 2_000_000, (name, len(data))
        with Image.open(path) as image:
            image.verify()  # a complete, uncorrupted PNG
        with Image.open(path) as image:
            width, height = image.size
        assert 600 <= width <= 2000 and 200 <= height <= 1000, (name, width, height)


def test_the_derivation_embeds_every_figure_with_its_command():
    text = DERIVATION.read_text()
    for name in figures.FIGURES:
        assert f"(assets/{name})" in text, name
        assert (Path(__file__).resolve().parents[1] / "docs" / "assets" / name).is_file(), name
    assert "python -m benchmarks.derivation_figures" in text


def test_the_numbers_quoted_in_the_derivation():
    """beta~_500, the text's E3 at t = 500, beta~_2 and abar_T of the paper's schedule, as the page quotes them."""
    abar = linear_alphas_cumprod()
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    i = 500 - 1  # code index of the paper's t = 500
    beta_tilde_500 = (1 - abar[i - 1]) / (1 - abar[i]) * betas[i]
    slip_500 = (1 - betas[i]) / betas[i] + 1 / (1 - abar[i - 1])
    beta_tilde_2 = (1 - abar[0]) / (1 - abar[1]) * betas[1]
    assert f"{beta_tilde_500.item():.4f}" == "0.0100"
    assert f"{slip_500.item():.1f}" == "99.7"
    assert (1 / slip_500).item() == pytest.approx(beta_tilde_500.item(), rel=1e-12)  # the precision
    assert figures.texts_e3_slip(abar)[i - 1].item() == pytest.approx(slip_500.item(), rel=1e-12)  # t = 2.. in the figure
    assert f"{beta_tilde_2.item():.3g}" == "5.45e-05"
    assert f"{abar[-1].item():.3g}" == "4.04e-05"
    text = DERIVATION.read_text()
    for quoted in ("beta~_500 = 0.0100", "99.7", "beta~_2 = beta_1 beta_2 / (1 - abar_2) = 5.45e-5", "abar_T = 4.04e-5"):
        assert quoted in text, quoted


# ---- section 1: the schedules -----------------------------------------------------------------------


@pytest.mark.parametrize("num_timesteps", [1000, 37])
def test_the_schedule_formulas_of_the_derivation_match_the_code(num_timesteps):
    t = torch.arange(1, num_timesteps + 1, dtype=F64)
    u = (t - 1) / (num_timesteps - 1)
    start, end = 1e-4, 0.02
    written = {
        "linear": start + (end - start) * u,
        "scaled_linear": (math.sqrt(start) + (math.sqrt(end) - math.sqrt(start)) * u) ** 2,
        "sigmoid": start + (end - start) / (1 + torch.exp(6 - 12 * u)),
    }

    def f(x):
        return torch.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

    written["squaredcos_cap_v2"] = torch.clamp(1 - f(t / num_timesteps) / f((t - 1) / num_timesteps), max=0.999)
    for schedule, betas in written.items():
        torch.testing.assert_close(make_betas(schedule, num_timesteps, start, end), betas, rtol=1e-12, atol=0)
    # the cosine's abar telescopes to f(t/T) / f(0) wherever the cap does not bind (all but t = T)
    abar = torch.cumprod(1 - written["squaredcos_cap_v2"], dim=0)
    torch.testing.assert_close(abar[:-1], f(t[:-1] / num_timesteps) / f(torch.zeros((), dtype=F64)), rtol=1e-10, atol=0)
    assert (written["squaredcos_cap_v2"] == 0.999).nonzero().flatten().tolist() == [num_timesteps - 1]

    # zero terminal SNR: sqrt(abar') affine in sqrt(abar), abar'_1 = abar_1, abar'_T = 0
    for schedule in ("linear", "squaredcos_cap_v2"):
        abar = torch.cumprod(1 - make_betas(schedule, num_timesteps, start, end), dim=0)
        root, first, last = abar.sqrt(), abar[0].sqrt(), abar[-1].sqrt()
        rescaled_abar = ((root - last) * first / (first - last)) ** 2
        rescaled = torch.cat([1 - rescaled_abar[:1], 1 - rescaled_abar[1:] / rescaled_abar[:-1]])
        code = make_betas(schedule, num_timesteps, start, end, rescale_betas_zero_snr=True)
        torch.testing.assert_close(code, rescaled, rtol=1e-10, atol=1e-15)
        assert code[-1].item() == 1.0 and code[0].item() == pytest.approx(1 - abar[0].item(), rel=1e-12)


# ---- section 5: the Gaussian toy -----------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 50, 200, 500, 999])
def test_the_toys_gamma_is_the_second_moment_of_the_conditional_mean_of_the_noise(t):
    """Gamma_t = E[E[eps | x_t]^2] for x_0 ~ N(0, s^2), with E[eps | x_t] estimated by binning x_t (no formula for it)."""
    abar = linear_alphas_cumprod()[t]
    n, per_bin = 400_000, 1_000
    x_start, eps, _ = gaussian_draws(n, seed=t)
    x_t = abar.sqrt() * figures.TOY_STD * x_start + (1 - abar).sqrt() * eps
    order = torch.argsort(x_t)
    binned = eps[order].reshape(-1, per_bin)  # (n / per_bin, per_bin): equal-count bins of x_t
    means = binned.mean(dim=1)
    # E[mean^2] overshoots E[E[eps|x_t]^2] by the sampling variance of each bin's mean: subtract it
    estimate = (means**2 - binned.var(dim=1) / per_bin).mean().item()
    truth = figures.toy_gamma(abar.reshape(1)).item()
    assert estimate == pytest.approx(truth, abs=0.005 + 0.01 * truth), (t, estimate, truth)


def test_the_two_ends_of_the_toy_are_the_two_fixed_variances():
    """A1 with the toy's Gamma_t: s = 0 (one point) gives beta~_t (fixed_small), s = 1 (N(0, I)) gives beta_t (fixed_large)."""
    abar = linear_alphas_cumprod()
    abar_prev, abar_t = abar[:-1], abar[1:]  # the training chain t -> t - 1 at t = 2..T
    betas = 1 - abar_t / abar_prev
    beta_tilde = (1 - abar_prev) / (1 - abar_t) * betas

    def a1(std):
        return beta_tilde + betas**2 / ((1 - betas) * (1 - abar_t)) * (1 - figures.toy_gamma(abar_t, std))

    torch.testing.assert_close(a1(0.0), beta_tilde, rtol=1e-12, atol=0)
    torch.testing.assert_close(a1(1.0), betas, rtol=1e-10, atol=0)
    between = a1(figures.TOY_STD)
    assert bool(((between >= beta_tilde) & (between <= betas)).all())


# ---- section 6: the DDIM family --------------------------------------------------------------------------


def family(abar_t: float, abar_s: float, eta: float) -> tuple[float, float, float]:
    """(lambda^2, c_0, c_t) of D1-D2 with lambda^2 = eta^2 beta~_{t|s}, written from the derivation."""
    beta = 1 - abar_t / abar_s
    lambda_sq = eta**2 * (1 - abar_s) / (1 - abar_t) * beta
    c_t = math.sqrt(max(1 - abar_s - lambda_sq, 0.0)) / math.sqrt(1 - abar_t)
    return lambda_sq, math.sqrt(abar_s) - c_t * math.sqrt(abar_t), c_t


# (t, s) as code indices; s = -1 is past the chain's end, where abar_s = 1 and x_s = x_0
STEPS = [(999, 979), (600, 400), (10, 9), (300, -1)]


def abar_pair(t: int, s: int) -> tuple[float, float]:
    abar = linear_alphas_cumprod()
    return abar[t].item(), (abar[s].item() if s >= 0 else 1.0)


@pytest.mark.parametrize("t,s", STEPS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_the_family_keeps_the_marginal(t, s, eta):
    """D1-D2: x_t ~ q(x_t | x_0), then x_s ~ q_lambda(x_s | x_t, x_0), gives x_s ~ N(sqrt(abar_s) x_0, 1 - abar_s)."""
    abar_t, abar_s = abar_pair(t, s)
    lambda_sq, c_0, c_t = family(abar_t, abar_s, eta)
    n = 200_000
    _, eps, z = gaussian_draws(n, seed=t + 7 * s)
    x_start = torch.linspace(-1, 1, n, dtype=F64)  # a different x_0 for every draw
    x_t = math.sqrt(abar_t) * x_start + math.sqrt(1 - abar_t) * eps
    x_s = c_0 * x_start + c_t * x_t + math.sqrt(lambda_sq) * z
    residual = x_s - math.sqrt(abar_s) * x_start  # should be N(0, 1 - abar_s) whatever x_0 is
    if abar_s == 1.0:
        assert residual.abs().max().item() < 1e-12  # x_s = x_0 exactly
        return
    assert_within_standard_errors(residual, 0.0)
    assert_within_standard_errors(residual**2, 1 - abar_s)
    assert_within_standard_errors(residual * x_start, 0.0)  # the mean is sqrt(abar_s) x_0 for every x_0
    if eta > 0 and (t, s) == (600, 400):
        # the test can fail: c_t without lambda^2 (sqrt(1 - abar_s) / sqrt(1 - abar_t)) inflates the variance
        naive = math.sqrt(abar_s) * x_start + math.sqrt((1 - abar_s) / (1 - abar_t)) * (x_t - math.sqrt(abar_t) * x_start)
        naive = naive + math.sqrt(lambda_sq) * z - math.sqrt(abar_s) * x_start
        assert naive.pow(2).mean().item() > (1 - abar_s) + 10 * naive.pow(2).std().item() / math.sqrt(n)


@pytest.mark.parametrize("stride", [1, 20, 100])
def test_eta_one_is_ddpms_posterior_and_eta_zero_keeps_the_noise(stride):
    """At lambda^2 = beta~_{t|s}, c_0 and c_t are P2's coefficients; at lambda = 0 the step keeps x_t's eps."""
    abar = linear_alphas_cumprod()
    for t in range(stride, T, stride):
        s = t - stride
        abar_t, abar_s = abar[t].item(), abar[s].item()
        _, c_0, c_t = family(abar_t, abar_s, 1.0)
        alpha, beta = abar_t / abar_s, 1 - abar_t / abar_s
        assert c_0 == pytest.approx(math.sqrt(abar_s) * beta / (1 - abar_t), rel=1e-9)
        assert c_t == pytest.approx(math.sqrt(alpha) * (1 - abar_s) / (1 - abar_t), rel=1e-9)
        _, c_0, c_t = family(abar_t, abar_s, 0.0)
        x_start, eps = 0.3, -1.2
        x_t = math.sqrt(abar_t) * x_start + math.sqrt(1 - abar_t) * eps
        assert c_0 * x_start + c_t * x_t == pytest.approx(math.sqrt(abar_s) * x_start + math.sqrt(1 - abar_s) * eps,
                                                          rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_step_must_use_the_noise_of_the_clipped_x0(eta):
    """D2's eps form equals c_0 x0_hat + c_t x_t only with eps_hat from the clipped x0_hat; diffusers'
    DDIMScheduler with use_clipped_model_output=False is off by the term the derivation gives, which does
    not shrink with the step."""
    from diffusers import DDIMScheduler

    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 1, 8, 8, generator=generator)
    eps_theta = 2.0 * torch.randn(4, 1, 8, 8, generator=generator)  # large enough that x0_theta leaves [-1, 1]
    scheduler = DDIMScheduler(clip_sample=True)
    scheduler.set_timesteps(50)  # t = 980, 960, ..., 0: a step t -> t - 20
    t, s = 500, 480
    abar_t, abar_s = scheduler.alphas_cumprod[t].item(), scheduler.alphas_cumprod[s].item()
    lambda_sq, c_0, c_t = family(abar_t, abar_s, eta)
    x0_theta = (x_t - math.sqrt(1 - abar_t) * eps_theta) / math.sqrt(abar_t)  # E4, unclipped
    x0_hat = x0_theta.clamp(-1, 1)
    assert bool((x0_hat != x0_theta).any())
    eps_hat = (x_t - math.sqrt(abar_t) * x0_hat) / math.sqrt(1 - abar_t)
    consistent = math.sqrt(abar_s) * x0_hat + math.sqrt(1 - abar_s - lambda_sq) * eps_hat
    torch.testing.assert_close(consistent, c_0 * x0_hat + c_t * x_t, rtol=1e-5, atol=1e-5)
    mixed = math.sqrt(abar_s) * x0_hat + math.sqrt(1 - abar_s - lambda_sq) * eps_theta
    error_coefficient = math.sqrt(1 - abar_s - lambda_sq) * math.sqrt(abar_t / (1 - abar_t))
    torch.testing.assert_close(mixed - consistent, error_coefficient * (x0_hat - x0_theta), rtol=1e-4, atol=1e-5)

    zero = torch.zeros_like(x_t)  # eta > 0 adds lambda z: z = 0 leaves the mean
    for use_clipped, expected in ((False, mixed), (True, consistent)):
        step = scheduler.step(eps_theta, t, x_t, eta=eta, use_clipped_model_output=use_clipped, variance_noise=zero)
        torch.testing.assert_close(step.prev_sample, expected, rtol=1e-4, atol=1e-5)

    # as s -> t the step's own move vanishes, but the error coefficient tends to sqrt(abar_t), not 0
    abar = scheduler.alphas_cumprod.to(F64)
    lambda_sq, _, _ = family(abar[t].item(), abar[t - 1].item(), eta)
    shortest = math.sqrt(1 - abar[t - 1].item() - lambda_sq) * math.sqrt(abar[t].item() / (1 - abar[t].item()))
    assert shortest == pytest.approx(math.sqrt(abar[t].item()), rel=0.01)


@pytest.mark.parametrize("t,s", STEPS[:3])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_d3_is_the_mean_squared_residual_of_the_best_step(t, s, eta):
    """D3: with the best x0_hat = E[x_0 | x_t] (Gaussian toy), E (x_s - mu(x_t))^2 = lambda^2 + c_0^2 (1 - abar_t) / abar_t (1 - Gamma_t),
    and D3's two written forms agree."""
    abar_t, abar_s = abar_pair(t, s)
    lambda_sq, c_0, c_t = family(abar_t, abar_s, eta)
    std = figures.TOY_STD
    n = 400_000
    unit, eps, z = gaussian_draws(n, seed=3 * t + s)
    x_start = std * unit
    x_t = math.sqrt(abar_t) * x_start + math.sqrt(1 - abar_t) * eps
    x_s = c_0 * x_start + c_t * x_t + math.sqrt(lambda_sq) * z
    v_t = abar_t * std**2 + 1 - abar_t
    x0_hat = math.sqrt(abar_t) * std**2 / v_t * x_t  # E[x_0 | x_t]: Cov(x_0, x_t) / Var(x_t) x_t
    residual_sq = (x_s - (c_0 * x0_hat + c_t * x_t)) ** 2
    gamma = figures.toy_gamma(torch.tensor(abar_t, dtype=F64)).item()
    d3 = lambda_sq + c_0**2 * (1 - abar_t) / abar_t * (1 - gamma)
    d3_bao = lambda_sq + (math.sqrt((1 - abar_t) / (abar_t / abar_s)) - math.sqrt(1 - abar_s - lambda_sq)) ** 2 * (1 - gamma)
    assert d3_bao == pytest.approx(d3, rel=1e-9, abs=1e-15)
    assert_within_standard_errors(residual_sq, d3)
    assert lambda_sq <= d3 <= lambda_sq + c_0**2  # the bounds, r = 1


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_d4_is_the_mean_squared_residual_for_the_models_own_mean(eta):
    """D4: for an imperfect eps_theta, E (x_s - mu_theta(x_t))^2 = lambda^2 + c_0^2 (1 - abar_t) / abar_t Delta_t,
    Delta_t = E (eps - eps_theta)^2; it exceeds D3 by the model's error."""
    t, s = 600, 400
    abar_t, abar_s = abar_pair(t, s)
    lambda_sq, c_0, c_t = family(abar_t, abar_s, eta)
    std = figures.TOY_STD
    n = 400_000
    unit, eps, z = gaussian_draws(n, seed=11)
    x_start = std * unit
    x_t = math.sqrt(abar_t) * x_start + math.sqrt(1 - abar_t) * eps
    x_s = c_0 * x_start + c_t * x_t + math.sqrt(lambda_sq) * z
    v_t = abar_t * std**2 + 1 - abar_t
    eps_best = math.sqrt(1 - abar_t) / v_t * x_t
    eps_theta = 0.7 * eps_best + 0.1  # shrunk and biased
    x0_theta = (x_t - math.sqrt(1 - abar_t) * eps_theta) / math.sqrt(abar_t)  # E4, unclipped
    residual_sq = (x_s - (c_0 * x0_theta + c_t * x_t)) ** 2
    delta = ((eps - eps_theta) ** 2).mean().item()
    d4 = lambda_sq + c_0**2 * (1 - abar_t) / abar_t * delta
    assert_within_standard_errors(residual_sq, d4)
    gamma = figures.toy_gamma(torch.tensor(abar_t, dtype=F64)).item()
    d3 = lambda_sq + c_0**2 * (1 - abar_t) / abar_t * (1 - gamma)
    model_error = ((eps_best - eps_theta) ** 2).mean().item()
    assert d4 > d3 and delta == pytest.approx(1 - gamma + model_error, abs=5 * math.sqrt(2 / n))
