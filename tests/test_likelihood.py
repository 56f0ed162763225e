"""Properties of the variational bound (likelihood.py), in float64, with analytic toy models.

The reference values here are written from the paper's definitions with the scheduler's betas only
(torch.distributions densities, erf, a forward chain run step by step), not from the code under test.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_from_scratch.bound.likelihood import (
    LN2,
    VariationalBound,
    discretized_gaussian_log_likelihood,
    nats_to_bits_per_dim,
    nll_bits_per_dim,
    normal_kl,
    prior_kl,
)
from ddpm_from_scratch.diffusion_math import p_mean_variance
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

F64 = torch.float64
BIN_CENTRES = torch.arange(256, dtype=F64) / 127.5 - 1


def grid(values) -> torch.Tensor:
    """Values snapped to the 8-bit grid k / 127.5 - 1."""
    return torch.round((torch.as_tensor(values, dtype=F64) + 1) * 127.5) / 127.5 - 1


# ------------------------------------------------------------------------------- closed forms


def test_normal_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean1, mean2 = torch.randn(500, generator=g, dtype=F64) * 3, torch.randn(500, generator=g, dtype=F64) * 3
    logvar1 = torch.empty(500, dtype=F64).uniform_(-20, 4, generator=g)
    logvar2 = torch.empty(500, dtype=F64).uniform_(-20, 4, generator=g)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean1, (0.5 * logvar1).exp()), torch.distributions.Normal(mean2, (0.5 * logvar2).exp())
    )
    torch.testing.assert_close(normal_kl(mean1, logvar1, mean2, logvar2), expected, rtol=1e-10, atol=1e-12)
    # KL(p || p) = 0, and scalars broadcast (the prior N(0, I))
    assert normal_kl(mean1, logvar1, mean1, logvar1).abs().max() < 1e-12
    torch.testing.assert_close(
        normal_kl(mean1, logvar1, 0.0, 0.0),
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean1, (0.5 * logvar1).exp()), torch.distributions.Normal(0.0, 1.0)
        ),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("mean", [-1.7, -1.0, -0.3, 0.0, 0.999, 1.0, 1.4, 4.0])
@pytest.mark.parametrize("log_variance", [-22.0, -14.0, -9.0, -4.0, 0.0, 3.0])
def test_the_256_bin_probabilities_sum_to_one(mean, log_variance):
    log_p = discretized_gaussian_log_likelihood(
        BIN_CENTRES, torch.full((256,), mean, dtype=F64), torch.full((256,), log_variance, dtype=F64)
    )
    assert torch.isfinite(log_p).all()
    assert abs(float(log_p.exp().sum()) - 1.0) < 1e-12
    # each bin agrees with the plain CDF difference where that is not lost to cancellation
    std = torch.tensor(math.exp(0.5 * log_variance), dtype=F64)
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=F64), std)
    upper = torch.where(BIN_CENTRES > 0.999, torch.tensor(math.inf, dtype=F64), BIN_CENTRES + 1 / 255)
    lower = torch.where(BIN_CENTRES < -0.999, torch.tensor(-math.inf, dtype=F64), BIN_CENTRES - 1 / 255)
    direct = normal.cdf(upper) - normal.cdf(lower)
    sizeable = direct > 1e-6
    torch.testing.assert_close(log_p.exp()[sizeable], direct[sizeable], rtol=1e-9, atol=0)


def test_far_tail_bins_are_exact_with_finite_gradients():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    x = grid([-1.0, -0.6, 0.2, 0.9, 1.0])
    mean = torch.tensor([0.9, 0.95, -0.8, -0.9, -0.9], dtype=F64, requires_grad=True)
    log_variance = torch.tensor([-12.0, -10.0, -9.0, -8.0, -5.0], dtype=F64, requires_grad=True)
    log_p = discretized_gaussian_log_likelihood(x, mean, log_variance)
    values = log_p.detach()
    for i in range(5):
        m, c = mpmath.mpf(float(mean.detach()[i])), mpmath.mpf(float(x[i]))
        s = mpmath.sqrt(mpmath.exp(float(log_variance.detach()[i])))
        upper = mpmath.inf if float(x[i]) > 0.999 else (c + mpmath.mpf(1) / 255 - m) / s
        lower = -mpmath.inf if float(x[i]) < -0.999 else (c - mpmath.mpf(1) / 255 - m) / s
        # Phi(u) - Phi(l) = Phi(-l) - Phi(-u): take the tail where the CDFs are tiny, so 50 digits suffice
        mass = mpmath.ncdf(-lower) - mpmath.ncdf(-upper) if lower > 0 else mpmath.ncdf(upper) - mpmath.ncdf(lower)
        exact = mpmath.log(mass)
        assert float(values[i]) < -50  # far in a tail: a plain CDF difference would give log(0) = -inf
        assert abs(float(values[i]) - float(exact)) < 1e-9 * abs(float(exact))
    log_p.sum().backward()
    # d log P / d mean = (phi(l) - phi(u)) / (s P), d log P / d log_variance = (l phi(l) - u phi(u)) / (2 P)
    for i in range(5):
        m, c = mpmath.mpf(float(mean.detach()[i])), mpmath.mpf(float(x[i]))
        s = mpmath.sqrt(mpmath.exp(float(log_variance.detach()[i])))
        upper = mpmath.inf if float(x[i]) > 0.999 else (c + mpmath.mpf(1) / 255 - m) / s
        lower = -mpmath.inf if float(x[i]) < -0.999 else (c - mpmath.mpf(1) / 255 - m) / s
        mass = mpmath.ncdf(-lower) - mpmath.ncdf(-upper) if lower > 0 else mpmath.ncdf(upper) - mpmath.ncdf(lower)
        pdf = lambda z: 0 if mpmath.isinf(z) else mpmath.npdf(z)  # noqa: E731
        z_pdf = lambda z: 0 if mpmath.isinf(z) else z * mpmath.npdf(z)  # noqa: E731
        d_mean = (pdf(lower) - pdf(upper)) / (s * mass)
        d_log_variance = (z_pdf(lower) - z_pdf(upper)) / (2 * mass)
        assert float(mean.grad[i]) == pytest.approx(float(d_mean), rel=1e-7)
        assert float(log_variance.grad[i]) == pytest.approx(float(d_log_variance), rel=1e-7)


def test_data_is_snapped_to_its_bin():
    x = grid([-1.0, -0.2, 0.5, 1.0])
    mean, log_variance = torch.full((4,), 0.1, dtype=F64), torch.full((4,), -5.0, dtype=F64)
    on_grid = discretized_gaussian_log_likelihood(x, mean, log_variance)
    jitter = torch.tensor([0.3, -0.4, 0.45, -0.2], dtype=F64) / 255  # within half a bin (1/255)
    torch.testing.assert_close(discretized_gaussian_log_likelihood(x + jitter, mean, log_variance), on_grid)


def test_prior_kl_uses_the_last_timestep():
    scheduler = ScratchDDPMScheduler(num_train_timesteps=7, beta_schedule="linear", beta_start=0.01, beta_end=0.3)
    x0 = grid(torch.linspace(-1, 1, 6)).reshape(2, 1, 3, 1)
    abar_T = torch.cumprod(1 - torch.linspace(0.01, 0.3, 7, dtype=F64), 0)[-1]
    q_T = torch.distributions.Normal(abar_T.sqrt() * x0, (1 - abar_T).sqrt())
    expected = torch.distributions.kl_divergence(q_T, torch.distributions.Normal(0.0, 1.0)).reshape(2, -1).sum(1)
    torch.testing.assert_close(prior_kl(scheduler.diffusion_chain(), x0), expected, rtol=1e-12, atol=1e-14)


def test_nats_to_bits_per_dim():
    assert nats_to_bits_per_dim(64 * LN2 * 3.5, 64) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="num_dims"):
        nats_to_bits_per_dim(1.0, 0)


# ------------------------------------------------------------------------------- a toy model with a known bound

TOY_BETAS = [1e-4, 0.05, 0.15, 0.3, 0.5, 0.7]


class LinearToyModel:
    """x0_pred(x_t, t) = x* + c_t (x_t - sqrt(abar_t) x*) + d_t: linear in x_t, so p_theta is Gaussian in closed
    form; output in the scheduler's parametrisation, plus tanh(e_t x_t + f_t) as learned_range's v."""

    def __init__(self, x_star, betas, prediction_type, learned_variance):
        self.x_star = x_star
        self.abar = torch.cumprod(1 - torch.tensor(betas, dtype=F64), 0)
        self.c = torch.tensor([0.002, -0.01, 0.1, 0.2, -0.1, 0.3], dtype=F64)
        self.d = torch.tensor([0.004, 0.005, -0.05, 0.1, 0.0, -0.2], dtype=F64)
        self.e = torch.tensor([0.5, -1.0, 0.3, 0.8, -0.4, 0.2], dtype=F64)
        self.f = torch.tensor([-0.3, 0.2, 0.6, -0.5, 0.1, 0.9], dtype=F64)
        self.prediction_type = prediction_type
        self.learned_variance = learned_variance

    def coefficients(self, t):
        shape = (-1,) + (1,) * 3
        return [table[t].reshape(shape) for table in (self.abar, self.c, self.d, self.e, self.f)]

    def x0_pred(self, x_t, t):
        abar, c, d, _, _ = self.coefficients(t)
        return self.x_star + c * (x_t - abar.sqrt() * self.x_star) + d

    def v(self, x_t, t):
        _, _, _, e, f = self.coefficients(t)
        return torch.tanh(e * x_t + f)

    def __call__(self, x_t, t):
        abar = self.coefficients(t)[0]
        x0 = self.x0_pred(x_t, t)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        v_target = abar.sqrt() * eps - (1 - abar).sqrt() * x0
        out = {"epsilon": eps, "sample": x0, "v_prediction": v_target}[self.prediction_type]
        return torch.cat([out, self.v(x_t, t)], dim=1) if self.learned_variance else out


def reverse_variance(betas, t, variance_type, v=None):
    """sigma_t^2 from the paper's definitions; at t = 0 beta~ is replaced by beta~_1 (Ho et al.'s decoder)."""
    betas = torch.tensor(betas, dtype=F64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    beta_tilde = (1 - abar_prev) / (1 - abar) * betas
    beta_tilde[0] = beta_tilde[1]
    if variance_type == "fixed_small":
        return beta_tilde[t]
    if variance_type == "fixed_large":
        return beta_tilde[0] if t == 0 else betas[t]
    frac = (v + 1) / 2
    return torch.exp(frac * betas[t].log() + (1 - frac) * beta_tilde[t].log())


def monte_carlo_bound(model, betas, x0, variance_type, num_draws, seed):
    """-(log p_theta(x_{0:T}) - log q(x_{1:T} | x_0)) for x_{1:T} ~ q drawn step by step (F1), per draw (nats).

    Densities are evaluated directly: p(x_T) = N(0, I), p_theta(x_{t-1} | x_t) = N(mu, sigma^2) with mu the
    posterior mean (P2) at the model's x_0, and the decoder as the Gaussian mass of x_0's 8-bit bin."""
    g = torch.Generator().manual_seed(seed)
    T = len(betas)
    b = torch.tensor(betas, dtype=F64)
    abar = torch.cumprod(1 - b, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    x0 = x0.expand(num_draws, *x0.shape[1:])
    xs, prev, log_q = [], x0, 0.0
    for t in range(T):  # forward chain, one step at a time
        x = (1 - b[t]).sqrt() * prev + b[t].sqrt() * torch.randn(prev.shape, generator=g, dtype=F64)
        log_q = log_q + torch.distributions.Normal((1 - b[t]).sqrt() * prev, b[t].sqrt()).log_prob(x)
        xs.append(x)
        prev = x
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(xs[-1])
    for t in range(T - 1, -1, -1):
        x_t = xs[t]
        tt = torch.full((num_draws,), t)
        x0_pred = model.x0_pred(x_t, tt)
        mean = (abar_prev[t].sqrt() * b[t] * x0_pred + (1 - b[t]).sqrt() * (1 - abar_prev[t]) * x_t) / (1 - abar[t])
        std = reverse_variance(betas, t, variance_type, model.v(x_t, tt) if model.learned_variance else None).sqrt()
        normal = torch.distributions.Normal(mean, std)
        if t > 0:
            log_p = log_p + normal.log_prob(xs[t - 1])
        else:
            upper = torch.where(x0 > 0.999, torch.tensor(math.inf, dtype=F64), x0 + 1 / 255)
            lower = torch.where(x0 < -0.999, torch.tensor(-math.inf, dtype=F64), x0 - 1 / 255)
            log_p = log_p + torch.log(normal.cdf(upper) - normal.cdf(lower))
    return -(log_p - log_q).reshape(num_draws, -1).sum(1)


@pytest.mark.parametrize(
    "variance_type, prediction_type",
    [
        ("fixed_small", "epsilon"),
        ("fixed_large", "epsilon"),
        ("learned_range", "epsilon"),
        ("fixed_small", "sample"),
        ("learned_range", "v_prediction"),
    ],
)
def test_bound_equals_a_monte_carlo_estimate_of_the_elbo(variance_type, prediction_type):
    scheduler = ScratchDDPMScheduler(
        trained_betas=TOY_BETAS, variance_type=variance_type, prediction_type=prediction_type, clip_sample=False
    )
    x_star = grid([[-1.0, 0.2]]).reshape(1, 1, 1, 2)  # two pixels, one in the edge bin
    model = LinearToyModel(x_star, TOY_BETAS, prediction_type, variance_type == "learned_range")

    n_bound, n_mc = 10_000, 100_000
    bound = nll_bits_per_dim(
        model, scheduler, x_star.expand(n_bound, 1, 1, 2), generator=torch.Generator().manual_seed(1), progress=False
    ).total_nats()
    mc = monte_carlo_bound(model, TOY_BETAS, x_star, variance_type, n_mc, seed=2)

    se = math.sqrt(bound.var() / n_bound + mc.var() / n_mc)
    assert se < 0.02  # the test can tell apart bounds that differ by a few hundredths of a nat
    assert abs(float(bound.mean() - mc.mean())) < 4 * se, (float(bound.mean()), float(mc.mean()), se)
    # the closed-form terms are a (much) lower-variance estimator of the same expectation
    assert bound.var() < mc.var()


# ------------------------------------------------------------------------------- an oracle on a one-point dataset


class OnePointOracle:
    """The exact denoiser for data = {x*}: E[x_0 | x_t] = x*, returned as the noise that gives it (E4 inverted)."""

    def __init__(self, x_star, scheduler):
        self.x_star = x_star
        self.abar = scheduler.forward_chain.alphas_cumprod

    def __call__(self, x_t, t):
        abar = self.abar[t].reshape(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * self.x_star) / (1 - abar).sqrt()


def exact_one_point_nll(x_star, decoder_variance):
    """-log p_theta(x*) for the oracle: its decoder mean is x* whatever x_1, so p_theta(x*) is the mass
    N(x*, decoder_variance) puts on x*'s own bin: erf(h / (sqrt(2) s)) inside, Phi(h / s) at the edge bins."""
    h = 1 / 255 / math.sqrt(2 * decoder_variance)
    nll = 0.0
    for value in x_star.flatten().tolist():
        p = 0.5 * (1 + math.erf(h)) if abs(value) > 0.999 else math.erf(h)
        nll -= math.log(p)
    return nll


def prior_gap(x_star, abar_T):
    """KL(q(x_T | x*) || N(0, I)) from the closed form."""
    return float(0.5 * (abar_T * x_star**2 + (1 - abar_T) - 1 - math.log(1 - abar_T)).sum())


def test_oracle_on_one_point_data_gives_the_exact_nll():
    # With the oracle and fixed_small, p_theta(x_{t-1} | x_t) = q(x_{t-1} | x_t, x*) exactly for t >= 1 and the
    # decoder does not depend on x_1, so q(x_{1:T} | x*) and p_theta(x_{1:T} | x*) differ only in p(x_T):
    # bound - NLL = KL(q(x_{1:T} | x*) || p_theta(x_{1:T} | x*)) = L_T, about 1e-5 nats/dim here.
    scheduler = ScratchDDPMScheduler(num_train_timesteps=1000)  # the paper's linear schedule
    x_star = grid([-1.0, -0.2, 0.5, 1.0]).reshape(1, 1, 2, 2)
    x0 = x_star.expand(3, 1, 2, 2)
    oracle = OnePointOracle(x_star, scheduler)
    result = nll_bits_per_dim(oracle, scheduler, x0, generator=torch.Generator().manual_seed(0), progress=False)
    chain = scheduler.forward_chain
    exact = exact_one_point_nll(x_star, float(chain.posterior_variance[1]))
    gap = prior_gap(x_star, float(chain.alphas_cumprod[-1]))
    assert 0 < gap < 1e-4
    torch.testing.assert_close(result.total_nats(), torch.full((3,), exact + gap, dtype=F64), rtol=1e-9, atol=1e-9)
    assert result.vb_bpd[:, 1:].abs().max() < 1e-9  # every KL L_t, t >= 1, vanishes
    # the true data entropy is 0; what is left is the decoder's spread over x*'s bin (sigma ~ 1.9 half-bins)
    assert 0.3 < exact / 4 < 1.5


def test_oracle_with_a_sharp_decoder_has_a_bound_near_zero():
    # A tiny first beta makes the decoder much narrower than a bin: the exact NLL of the one-point data is ~0,
    # and so is the bound.
    betas = torch.cat([torch.tensor([1e-8], dtype=F64), torch.linspace(1e-4, 0.02, 999, dtype=F64)]).tolist()
    scheduler = ScratchDDPMScheduler(trained_betas=betas)
    x_star = grid([-1.0, -0.2, 0.5, 1.0]).reshape(1, 1, 2, 2)
    result = nll_bits_per_dim(OnePointOracle(x_star, scheduler), scheduler, x_star, progress=False)
    assert exact_one_point_nll(x_star, float(scheduler.forward_chain.posterior_variance[1])) < 1e-12
    assert 0 < result.bits_per_dim < 1e-4


def test_oracle_bound_is_looser_with_fixed_large():
    # fixed_large's variance beta_t != beta~_t adds a KL at every t >= 1; the decoder (and so the NLL) is the same.
    x_star = grid([-0.5, 0.3]).reshape(1, 1, 1, 2)
    results = {}
    for variance_type in ("fixed_small", "fixed_large"):
        scheduler = ScratchDDPMScheduler(num_train_timesteps=100, variance_type=variance_type)
        results[variance_type] = nll_bits_per_dim(
            OnePointOracle(x_star, scheduler), scheduler, x_star, generator=torch.Generator().manual_seed(0), progress=False
        )
    small, large = results["fixed_small"], results["fixed_large"]
    torch.testing.assert_close(large.decoder_bpd, small.decoder_bpd)
    assert (large.vb_bpd[:, 1:] > 0).all() and large.bits_per_dim > small.bits_per_dim + 0.01


@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_large_log"])
def test_fixed_large_decoder_variance_is_ho_et_al_choice(variance_type):
    scheduler = ScratchDDPMScheduler(num_train_timesteps=50, variance_type=variance_type)
    chain = scheduler.forward_chain
    x_t = torch.zeros(3, 1, 2, 2, dtype=F64)
    config = scheduler.reverse_step_config
    step = p_mean_variance(chain, torch.zeros_like(x_t), x_t, torch.tensor([0, 1, 49]), config)
    expected = torch.stack([chain.posterior_variance[1], chain.betas[1], chain.betas[49]]).log()
    torch.testing.assert_close(step.log_variance[:, 0, 0, 0], expected, rtol=1e-14, atol=0)
    # the host-timestep path (Python floats) gives the same variances
    for t, value in zip((0, 1, 49), expected.tolist()):
        assert p_mean_variance(chain, torch.zeros_like(x_t), x_t, t, config).log_variance == pytest.approx(
            value, rel=1e-14
        )


# ------------------------------------------------------------------------------- the API


def toy_scheduler(**config):
    return ScratchDDPMScheduler(num_train_timesteps=8, beta_start=0.01, beta_end=0.3, **config)


def random_images(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 2, 2), generator=g).to(F64) / 127.5 - 1


def shrinking_model(x_t, t):
    return 0.5 * x_t


def test_result_terms_add_up_and_are_reproducible():
    scheduler, x0 = toy_scheduler(), random_images()
    first = nll_bits_per_dim(shrinking_model, scheduler, x0, generator=torch.Generator().manual_seed(3), progress=False)
    again = nll_bits_per_dim(shrinking_model, scheduler, x0, generator=torch.Generator().manual_seed(3), progress=False)
    other = nll_bits_per_dim(shrinking_model, scheduler, x0, generator=torch.Generator().manual_seed(4), progress=False)
    assert isinstance(first, VariationalBound) and first.vb_bpd.shape == (5, 8) and first.num_dims == 4
    torch.testing.assert_close(first.total_bpd, first.prior_bpd + first.vb_bpd.sum(1))
    torch.testing.assert_close(first.decoder_bpd, first.vb_bpd[:, 0])
    torch.testing.assert_close(first.total_nats(), first.total_bpd * 4 * math.log(2))
    torch.testing.assert_close(again.total_bpd, first.total_bpd)
    assert not torch.equal(other.total_bpd, first.total_bpd)
    torch.testing.assert_close(other.prior_bpd, first.prior_bpd)  # L_T needs no draws
    summary = first.to_dict()
    assert summary["bits_per_dim"] == pytest.approx(float(first.total_bpd.mean()))
    assert len(summary["terms_per_timestep_bpd"]) == 8 and summary["num_images"] == 5


def test_diffusers_style_outputs_kwargs_batches_and_schedulers():
    x0, labels = random_images(5), torch.arange(5)
    seen = []

    def labelled_model(x_t, t, class_labels):
        assert class_labels.shape[0] == x_t.shape[0]
        seen.append(class_labels.tolist())
        return SimpleNamespace(sample=0.5 * x_t)

    kwargs = dict(generator=torch.Generator().manual_seed(0), progress=False)
    plain = nll_bits_per_dim(shrinking_model, toy_scheduler(), x0, **kwargs)
    kwargs["generator"].manual_seed(0)
    wrapped = nll_bits_per_dim(labelled_model, toy_scheduler(), x0, model_kwargs={"class_labels": labels}, **kwargs)
    torch.testing.assert_close(wrapped.total_bpd, plain.total_bpd)
    # a diffusers DDPMScheduler with the same config gives the same bound
    stock = DDPMScheduler(num_train_timesteps=8, beta_start=0.01, beta_end=0.3)
    kwargs["generator"].manual_seed(0)
    torch.testing.assert_close(nll_bits_per_dim(shrinking_model, stock, x0, **kwargs).total_bpd, plain.total_bpd)
    seen.clear()
    batched = nll_bits_per_dim(
        labelled_model, toy_scheduler(), x0, model_kwargs={"class_labels": labels}, batch_size=2, progress=False
    )
    assert batched.total_bpd.shape == (5,) and seen[0] == [0, 1] and seen[-1] == [4]


def test_float32_model_inputs_and_float64_terms():
    x0 = random_images(3)
    dtypes = []

    def model(x_t, t):
        dtypes.append(x_t.dtype)
        return 0.5 * x_t

    single = nll_bits_per_dim(model, toy_scheduler(), x0.float(), generator=torch.Generator().manual_seed(0),
                              progress=False)
    assert set(dtypes) == {torch.float32} and single.total_bpd.dtype == F64
    # the terms are computed in float64: the bound is the float64 one up to the float32 rounding of the data
    double = nll_bits_per_dim(model, toy_scheduler(), x0, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(single.vb_bpd, double.vb_bpd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(single.prior_bpd, double.prior_bpd, rtol=1e-6, atol=0)


def test_clip_denoised_follows_the_scheduler_unless_overridden():
    x0 = random_images(4)
    wild = lambda x_t, t: 5.0 * x_t  # predicts x_0 far outside [-1, 1]
    run = lambda scheduler, clip=None: nll_bits_per_dim(
        wild, scheduler, x0, generator=torch.Generator().manual_seed(0), clip_denoised=clip, progress=False
    ).total_bpd
    clipped, unclipped = run(toy_scheduler(clip_sample=True)), run(toy_scheduler(clip_sample=False))
    assert not torch.allclose(clipped, unclipped)
    torch.testing.assert_close(run(toy_scheduler(clip_sample=False), True), clipped)
    torch.testing.assert_close(run(toy_scheduler(clip_sample=True), False), unclipped)


@pytest.mark.parametrize(
    "x0, match",
    [
        (torch.full((2, 1, 2, 2), 1.5, dtype=F64), r"\[-1, 1\]"),
        (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), "floating point"),
        (torch.zeros(4, dtype=F64), "batch"),
    ],
)
def test_bad_data_is_refused(x0, match):
    with pytest.raises(ValueError, match=match):
        nll_bits_per_dim(shrinking_model, toy_scheduler(), x0, progress=False)


def test_bad_arguments_are_refused():
    x0 = random_images(2)
    with pytest.raises(ValueError, match="batch_size"):
        nll_bits_per_dim(shrinking_model, toy_scheduler(), x0, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="2x the sample's channels"):
        nll_bits_per_dim(shrinking_model, toy_scheduler(variance_type="learned_range"), x0, progress=False)
    with pytest.raises(ValueError, match="channels"):
        nll_bits_per_dim(lambda x, t: torch.cat([x, x, x], 1), toy_scheduler(), x0, progress=False)
    with pytest.raises(ValueError, match="scheduler"):
        nll_bits_per_dim(shrinking_model, object(), x0, progress=False)
