"""Min-SNR-gamma weighting of L_simple (L3 in docs/derivation.md, Hang et al. 2023), and --snr_gamma.

Every prediction type's weighted squared error must be the same x_0-space loss
min(SNR_t, gamma) ||x_0 - x0_hat||^2, with x0_hat read from the model output by the scheduler (E4
and its x_0 / v forms), which the tests compute independently of the weight's code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ddpm_from_scratch.bound.losses import min_snr_weight, simple_loss, training_loss, vlb_loss
from ddpm_from_scratch.scheduler import PREDICTION_TYPES, ScratchDDPMScheduler
from ddpm_from_scratch.training.config import parse_options
from ddpm_from_scratch.training.objective import diffusion_loss

F64 = torch.float64
T = 1000
# the paper's schedule in float64, computed here rather than read from the chain
ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=F64), 0)
# both ends of the chain (SNR_1 = 9999, SNR_T = 4.0e-5), gamma = 5's crossing (code index 129 | 130) and random ones
TIMESTEPS = torch.cat([torch.tensor([0, 1, 129, 130, 998, 999]),
                       torch.randint(0, T, (9,), generator=torch.Generator().manual_seed(3))])


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def batch(prediction_type: str, seed: int = 0, variance_type: str = "fixed_small"):
    """A scheduler, random x_0, eps, x_t (F2) and a random model output, all float64, at TIMESTEPS."""
    scheduler = ScratchDDPMScheduler(prediction_type=prediction_type, variance_type=variance_type)
    g = torch.Generator().manual_seed(seed)
    b = len(TIMESTEPS)
    x0 = torch.rand(b, 2, 4, 4, generator=g, dtype=F64) * 2 - 1
    noise = torch.randn(b, 2, 4, 4, generator=g, dtype=F64)
    channels = 4 if variance_type == "learned_range" else 2
    output = torch.randn(b, channels, 4, 4, generator=g, dtype=F64)
    if variance_type == "learned_range":
        output[:, 2:] = output[:, 2:].clamp(-1, 1)
    abar = ALPHAS_CUMPROD[TIMESTEPS].reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return scheduler, x0, noise, x_t, output


def per_image_mean(squared: torch.Tensor) -> torch.Tensor:
    return squared.reshape(squared.shape[0], -1).mean(dim=1)


def snr() -> torch.Tensor:
    abar = ALPHAS_CUMPROD[TIMESTEPS]
    return abar / (1 - abar)


# ---- L3: the weight --------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.5, 5.0, 1e3])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_each_weighted_loss_is_min_snr_times_the_x0_error(prediction_type, gamma):
    scheduler, x0, noise, x_t, output = batch(prediction_type)
    weighted = simple_loss(output, scheduler.diffusion_chain(), scheduler.reverse_step_config, x0, noise, TIMESTEPS,
                           snr_gamma=gamma)
    x0_hat = scheduler.predict_original_sample(output, x_t, TIMESTEPS)  # E4 and its x_0 / v forms
    # the stated factor is 1: each type's weight divides out exactly what its error carries over x_0's
    expected = torch.clamp(snr(), max=gamma) * per_image_mean((x0 - x0_hat) ** 2)
    assert weighted.dtype == F64 and weighted.shape == (len(TIMESTEPS),)
    torch.testing.assert_close(weighted, expected, rtol=1e-10, atol=0)
    # the batch loss is the mean over images of the weighted per-image MSE, as in diffusers' examples
    batch_loss = training_loss("simple", output, scheduler.diffusion_chain(), scheduler.reverse_step_config, x0, x_t,
                               noise, TIMESTEPS, snr_gamma=gamma)
    torch.testing.assert_close(batch_loss, expected.mean(), rtol=1e-10, atol=0)


def test_the_weights_closed_forms_and_their_limits():
    s = snr()
    abar = ALPHAS_CUMPROD[TIMESTEPS]
    gamma = 5.0
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    # diffusers' train_text_to_image.py forms: min(SNR, gamma) / SNR, min(SNR, gamma), min(SNR, gamma) / (SNR + 1)
    torch.testing.assert_close(min_snr_weight(abar, gamma, "epsilon"), clipped / s, rtol=1e-13, atol=0)
    torch.testing.assert_close(min_snr_weight(abar, gamma, "sample"), clipped, rtol=1e-13, atol=0)
    torch.testing.assert_close(min_snr_weight(abar, gamma, "v_prediction"), clipped / (s + 1), rtol=1e-13, atol=0)
    # not the form min(SNR + 1, gamma) / (SNR + 1) once used for v: it differs wherever SNR_t < gamma
    old_v = torch.minimum(s + 1, torch.full_like(s, gamma)) / (s + 1)
    assert not torch.allclose(min_snr_weight(abar, gamma, "v_prediction"), old_v)
    # gamma = inf clips nothing: weight 1 exactly for epsilon, SNR_t for x_0, abar_t for v
    assert torch.equal(min_snr_weight(abar, math.inf, "epsilon"), torch.ones_like(abar))
    torch.testing.assert_close(min_snr_weight(abar, math.inf, "sample"), s, rtol=1e-13, atol=0)
    torch.testing.assert_close(min_snr_weight(abar, math.inf, "v_prediction"), abar, rtol=1e-13, atol=0)
    # zero terminal SNR (abar_T = 0): finite, x_t carries no x_0 so the x_0-space weight is 0
    zero = torch.zeros(1, dtype=F64)
    assert min_snr_weight(zero, gamma, "sample").item() == 0 and min_snr_weight(zero, gamma, "v_prediction").item() == 0
    assert min_snr_weight(zero, gamma, "epsilon").item() == 1


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_weight_reads_nothing_back_to_the_host(prediction_type):
    """On the meta device (no data) any read of a value (.item(), a Python branch on a tensor) fails:
    the weighted loss is computed from the gathered table alone."""
    scheduler = ScratchDDPMScheduler(prediction_type=prediction_type)
    chain = scheduler.diffusion_chain(device="meta")
    x = torch.empty(4, 1, 8, 8, device="meta")
    t = torch.empty(4, dtype=torch.long, device="meta")
    loss = training_loss("simple", x, chain, scheduler.reverse_step_config, x, x, x, t, snr_gamma=5.0)
    assert loss.device.type == "meta" and loss.shape == () and loss.dtype == torch.float32


def test_the_numbers_quoted_in_the_derivation():
    """docs/derivation.md, L3: on the paper's schedule SNR_1 = 9999, SNR_T = 4.0e-5, and SNR_t > 5 exactly
    for t = 1..130, where gamma = 5 lowers the epsilon weight (to 5 / 9999 = 5.0e-4 at t = 1)."""
    s = ALPHAS_CUMPROD / (1 - ALPHAS_CUMPROD)
    assert round(s[0].item(), 6) == 9999 and f"{s[-1].item():.1e}" == "4.0e-05"
    assert torch.equal(torch.nonzero(s > 5).flatten(), torch.arange(130))
    weight = min_snr_weight(ALPHAS_CUMPROD, 5.0, "epsilon")
    assert f"{weight[0].item():.1e}" == "5.0e-04" and torch.equal(weight[130:], torch.ones(T - 130, dtype=F64))
    text = (Path(__file__).resolve().parents[1] / "docs" / "derivation.md").read_text()
    for quoted in ("SNR_1 = 9999", "SNR_T = 4.0e-5", "SNR_t > gamma for t = 1..130", "5 / 9999 = 5.0e-4",
                   "the other 870 keep it"):
        assert quoted in text, quoted


@pytest.mark.parametrize("gamma, message", [(0.0, "snr_gamma must be a number > 0"), (-1.0, "snr_gamma"),
                                            (math.nan, "snr_gamma"), ("5", "snr_gamma"), (True, "snr_gamma")])
def test_bad_gamma_or_prediction_type_is_refused(gamma, message):
    with pytest.raises(ValueError, match=message):
        min_snr_weight(ALPHAS_CUMPROD[:3], gamma, "epsilon")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        min_snr_weight(ALPHAS_CUMPROD[:3], 5.0, "x0")


# ---- gamma = inf and gamma unset ---------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_infinite_gamma_is_ho_et_als_l_simple_on_the_implied_noise(prediction_type):
    """gamma = inf weights min(SNR_t, inf) ||x_0 - x0_hat||^2 = ||eps - eps_hat||^2: L_simple in eps form
    for every type. For epsilon that is the unweighted loss bit for bit; for x_0 and v it is not the
    unweighted loss of their own target (what --snr_gamma unset trains)."""
    scheduler, x0, noise, x_t, output = batch(prediction_type)
    chain, config = scheduler.diffusion_chain(), scheduler.reverse_step_config
    at_inf = simple_loss(output, chain, config, x0, noise, TIMESTEPS, snr_gamma=math.inf)
    unset = simple_loss(output, chain, config, x0, noise, TIMESTEPS)
    abar = ALPHAS_CUMPROD[TIMESTEPS].reshape(-1, 1, 1, 1)
    x0_hat = scheduler.predict_original_sample(output, x_t, TIMESTEPS)
    eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()  # F2 solved for the noise
    torch.testing.assert_close(at_inf, per_image_mean((noise - eps_hat) ** 2), rtol=1e-10, atol=0)
    if prediction_type == "epsilon":
        assert torch.equal(at_inf, unset)
    else:
        assert not torch.allclose(at_inf, unset)


class _FixedModel(torch.nn.Module):
    """Returns a fixed function of its input, so two calls on the same draws give the same output."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, sample, timestep, **_):
        from types import SimpleNamespace

        out = torch.sin(3 * sample + timestep.view(-1, 1, 1, 1) / 100)
        out = torch.cat([out] * (self.out_channels // sample.shape[1]), 1)  # a learned variance half in [-1, 1]
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("loss_type, variance_type", [("simple", "fixed_small"), ("hybrid", "learned_range")])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_unset_gamma_is_the_unweighted_loss_bit_for_bit(prediction_type, loss_type, variance_type):
    scheduler = ScratchDDPMScheduler(prediction_type=prediction_type, variance_type=variance_type)
    model = _FixedModel(2 if loss_type == "simple" else 4)
    clean = torch.rand(6, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = diffusion_loss(model, scheduler, clean, torch.Generator().manual_seed(0), loss_type=loss_type).loss
    explicit_none = diffusion_loss(model, scheduler, clean, torch.Generator().manual_seed(0), loss_type=loss_type,
                                   snr_gamma=None).loss
    # the loss written out: the draws diffusion_loss makes, then mean over pixels, then over the batch
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=generator)
    t = torch.randint(0, T, (6,), generator=generator)
    x_t = scheduler.add_noise(clean, noise, t)
    output = model(x_t, t).sample
    target = scheduler.training_target(clean, noise, t)
    per_image = ((output[:, :2] - target) ** 2).reshape(6, -1).mean(dim=1)
    if loss_type == "hybrid":
        chain = scheduler.diffusion_chain()
        per_image = per_image + 0.001 * T * vlb_loss(output, chain, scheduler.reverse_step_config, clean, x_t, t)
    assert torch.equal(loss, per_image.mean()) and torch.equal(explicit_none, loss)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_in_the_hybrid_loss_only_the_l_simple_term_is_weighted(prediction_type):
    scheduler, x0, noise, x_t, output = batch(prediction_type, variance_type="learned_range")
    chain, config = scheduler.diffusion_chain(), scheduler.reverse_step_config
    args = (output, chain, config, x0, x_t, noise, TIMESTEPS)
    weighted = training_loss("hybrid", *args, lambda_vlb=0.001, snr_gamma=5.0)
    simple = simple_loss(output, chain, config, x0, noise, TIMESTEPS)
    vlb = vlb_loss(output, chain, config, x0, x_t, TIMESTEPS)
    weight = min_snr_weight(ALPHAS_CUMPROD[TIMESTEPS], 5.0, prediction_type)
    torch.testing.assert_close(weighted, (weight * simple + 0.001 * T * vlb).mean(), rtol=1e-12, atol=0)


# ---- the trainer's option ----------------------------------------------------------------------------


def test_snr_gamma_parses_and_defaults_to_unset():
    assert parse_options([]).snr_gamma is None
    opts = parse_options(["--snr_gamma", "5"])
    assert opts.snr_gamma == 5.0 and "snr_gamma" in opts.explicit and opts.for_model_card()["snr_gamma"] == 5.0


@pytest.mark.parametrize("value, message", [
    ("0", "--snr_gamma must be a finite number > 0"),
    ("-5", "--snr_gamma must be a finite number > 0"),
    ("inf", "--snr_gamma must be a finite number > 0"),
    ("nan", "--snr_gamma must be a finite number > 0"),
    ("five", "argument --snr_gamma: invalid float value"),
])
def test_bad_snr_gamma_is_refused_with_the_option_named(value, message):
    with pytest.raises(ValueError, match=message):
        parse_options(["--snr_gamma", value])


def test_fit_refuses_a_bad_snr_gamma_before_training(tmp_path):
    from ddpm_from_scratch.training import fit

    with pytest.raises(ValueError, match="--snr_gamma must be a finite number > 0"):
        fit(output_dir=str(tmp_path / "run"), snr_gamma=0.0, report_to="none")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~9 s on 2 shared cores: two training runs and their final sample evaluation
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_tiny_fit_with_snr_gamma_trains_on_the_weighted_loss(tmp_path, monkeypatch, prediction_type):
    import ddpm_from_scratch.bound.losses as losses
    from ddpm_from_scratch.training import fit

    seen = []
    weight = losses.min_snr_weight

    def recording_weight(alphas_cumprod_t, gamma, kind):
        seen.append((gamma, kind, alphas_cumprod_t.dtype))
        return weight(alphas_cumprod_t, gamma, kind)

    monkeypatch.setattr(losses, "min_snr_weight", recording_weight)
    out = fit(preset="digits", output_dir=str(tmp_path / "run"), max_train_steps=2, train_batch_size=8,
              num_grid_images=8, grid_inference_steps=2, report_to="none", use_ema=False, checkpointing_steps=None,
              prediction_type=prediction_type, snr_gamma=5)
    assert seen == [(5.0, prediction_type, F64)] * 2  # one micro-batch per update
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["final_loss"])
