"""L_simple and the hybrid loss (losses.py): values against a direct computation, gradients by autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ddpm_from_scratch.bound.losses import LOSS_TYPES, hybrid_loss, simple_loss, training_loss, vlb_loss
from ddpm_from_scratch.diffusion_math import DiffusionChain, ReverseStepConfig
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

F64 = torch.float64
T = 10
BETAS = torch.linspace(0.001, 0.2, T, dtype=F64)
C = 2  # image channels; a learned-variance model outputs 2C


def scheduler(**config) -> ScratchDDPMScheduler:
    config.setdefault("variance_type", "learned_range")
    return ScratchDDPMScheduler(num_train_timesteps=T, beta_start=0.001, beta_end=0.2, **config)


def chain_and_config(sched=None, **config) -> tuple[DiffusionChain, ReverseStepConfig]:
    """What the losses take: the training chain and how the output is read, as a trainer gets them."""
    sched = scheduler(**config) if sched is None else sched
    return sched.diffusion_chain(), sched.reverse_step_config


def batch(seed=0, timesteps=(0, 1, 4, 9, 0, 6)):
    """x_0 on the 8-bit grid, noise, t (including the decoder's t = 0) and x_t, in float64."""
    g = torch.Generator().manual_seed(seed)
    b = len(timesteps)
    x0 = torch.randint(0, 256, (b, C, 3, 3), generator=g).to(F64) / 127.5 - 1
    noise = torch.randn(b, C, 3, 3, generator=g, dtype=F64)
    t = torch.tensor(timesteps)
    abar = torch.cumprod(1 - BETAS, 0)[t].reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return x0, noise, t, x_t


def model_output(x_t, seed=1, channels=2 * C, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = 0.3 * torch.randn(x_t.shape[0], channels, *x_t.shape[2:], generator=g, dtype=F64)
    out[:, C:] = out[:, C:].clamp(-1, 1)  # the variance half: v in [-1, 1]
    return out.requires_grad_(requires_grad)


# ----------------------------------------------------------------------------- direct computation


def direct_target(prediction_type, x0, noise, t):
    abar = torch.cumprod(1 - BETAS, 0)[t].reshape(-1, 1, 1, 1)
    return {"epsilon": noise, "sample": x0, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0}[prediction_type]


def direct_vlb_bits_per_dim(out, x0, x_t, t):
    """L_t from the paper's definitions (epsilon model, learned_range, no clipping), in bits/dim per image."""
    abar = torch.cumprod(1 - BETAS, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    beta_tilde = (1 - abar_prev) / (1 - abar) * BETAS
    beta_tilde_clipped = torch.cat([beta_tilde[1:2], beta_tilde[1:]])
    shape = (-1, 1, 1, 1)
    a, ap, b, btc = (v[t].reshape(shape) for v in (abar, abar_prev, BETAS, beta_tilde_clipped))
    eps, v = out[:, :C], out[:, C:]
    x0_pred = (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def posterior_mean(x_start):  # P2
        return (ap.sqrt() * b * x_start + (1 - b).sqrt() * (1 - ap) * x_t) / (1 - a)

    frac = (v + 1) / 2
    model_std = torch.exp(0.5 * (frac * b.log() + (1 - frac) * btc.log()))
    p = torch.distributions.Normal(posterior_mean(x0_pred), model_std)
    q = torch.distributions.Normal(posterior_mean(x0), btc.sqrt())
    kl = torch.distributions.kl_divergence(q, p)
    upper = torch.where(x0 > 0.999, torch.tensor(math.inf, dtype=F64), x0 + 1 / 255)
    lower = torch.where(x0 < -0.999, torch.tensor(-math.inf, dtype=F64), x0 - 1 / 255)
    decoder = -torch.log(p.cdf(upper) - p.cdf(lower))
    terms = torch.where(t.reshape(shape) == 0, decoder, kl)
    return terms.reshape(len(t), -1).sum(1) / (x0[0].numel() * math.log(2))


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize(
    "channels,variance_type", [(C, "fixed_small"), (2 * C, "fixed_small"), (2 * C, "learned_range")]
)
def test_simple_loss_is_the_mse_to_the_training_target(prediction_type, channels, variance_type):
    """A 2C output is scored on its mean half, also under a fixed variance (whose variance half is ignored)."""
    x0, noise, t, x_t = batch()
    out = model_output(x_t, channels=channels)
    sched = scheduler(prediction_type=prediction_type, variance_type=variance_type)
    expected = ((out[:, :C] - direct_target(prediction_type, x0, noise, t)) ** 2).mean(dim=(1, 2, 3))
    got = simple_loss(out, *chain_and_config(sched), x0, noise, t)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    # what the trainer's L_simple computes: F.mse_loss over the whole batch
    loss = training_loss("simple", out, *chain_and_config(sched), x0, x_t, noise, t)
    torch.testing.assert_close(loss, F.mse_loss(out[:, :C], direct_target(prediction_type, x0, noise, t)),
                               rtol=1e-12, atol=1e-14)


def test_hybrid_loss_matches_a_direct_computation():
    x0, noise, t, x_t = batch()
    out = model_output(x_t)
    loss = hybrid_loss(out, *chain_and_config(), x0, x_t, noise, t, lambda_vlb=0.001)
    vlb = direct_vlb_bits_per_dim(out, x0, x_t, t)
    simple = ((out[:, :C] - noise) ** 2).mean(dim=(1, 2, 3))
    got_vlb = vlb_loss(out, *chain_and_config(), x0, x_t, t)
    torch.testing.assert_close(got_vlb, vlb, rtol=1e-10, atol=1e-12)
    assert (got_vlb > 0).all()
    # lambda * L_vlb with L_vlb = sum over T terms, estimated by T * L_t at the drawn t
    torch.testing.assert_close(loss, (simple + 0.001 * T * vlb).mean(), rtol=1e-12, atol=1e-14)
    hybrid = training_loss("hybrid", out, *chain_and_config(), x0, x_t, noise, t)
    torch.testing.assert_close(hybrid, loss, rtol=0, atol=0)
    zero = hybrid_loss(out, *chain_and_config(), x0, x_t, noise, t, lambda_vlb=0.0)
    torch.testing.assert_close(zero, simple.mean(), rtol=1e-12, atol=1e-14)


def test_hybrid_loss_in_float32_matches_float64():
    x0, noise, t, x_t = batch()
    out = model_output(x_t)
    reference = hybrid_loss(out, *chain_and_config(), x0, x_t, noise, t)
    single = hybrid_loss(out.float(), *chain_and_config(), x0.float(), x_t.float(), noise.float(), t)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), reference, rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------- gradients


def test_the_mean_learns_only_from_l_simple():
    x0, noise, t, x_t = batch()
    out = model_output(x_t, requires_grad=True)
    (grad_hybrid,) = torch.autograd.grad(hybrid_loss(out, *chain_and_config(), x0, x_t, noise, t), out)
    (grad_simple,) = torch.autograd.grad(simple_loss(out, *chain_and_config(), x0, noise, t).mean(), out)
    (grad_vlb,) = torch.autograd.grad(direct_vlb_bits_per_dim(out, x0, x_t, t).mean(), out)

    # the bound would move the mean (so the stop-gradient matters) ...
    assert grad_vlb[:, :C].abs().max() > 1e-3
    # ... but in the hybrid loss the mean's gradient is L_simple's exactly
    torch.testing.assert_close(grad_hybrid[:, :C], grad_simple[:, :C], rtol=0, atol=1e-15)
    # and the variance half learns from the bound alone, with weight lambda * T
    assert grad_simple[:, C:].abs().max() == 0
    torch.testing.assert_close(grad_hybrid[:, C:], 0.001 * T * grad_vlb[:, C:], rtol=1e-9, atol=1e-15)
    assert grad_hybrid[:, C:].abs().max() > 0


class TwoHeadModel(torch.nn.Module):
    """Separate heads for the mean and the variance halves, so parameter gradients can be told apart."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mean_head = torch.nn.Conv2d(C, C, 1).double()
        self.variance_head = torch.nn.Conv2d(C, C, 1).double()

    def forward(self, x_t):
        return torch.cat([self.mean_head(x_t), torch.tanh(self.variance_head(x_t))], dim=1)


def test_parameter_gradients_of_the_mean_head_come_from_l_simple_only():
    x0, noise, t, x_t = batch()
    model = TwoHeadModel()
    hybrid_grads = torch.autograd.grad(
        hybrid_loss(model(x_t), *chain_and_config(), x0, x_t, noise, t), list(model.parameters())
    )
    simple_grads = torch.autograd.grad(
        simple_loss(model(x_t), *chain_and_config(), x0, noise, t).mean(), list(model.parameters()), allow_unused=True
    )
    for (name, _), g_hybrid, g_simple in zip(model.named_parameters(), hybrid_grads, simple_grads):
        if name.startswith("mean_head"):
            torch.testing.assert_close(g_hybrid, g_simple, rtol=0, atol=1e-15)
        else:
            assert (g_simple is None or g_simple.abs().max() == 0) and g_hybrid.abs().max() > 0


# ----------------------------------------------------------------------------- errors


def test_bad_arguments_are_refused():
    x0, noise, t, x_t = batch()
    out = model_output(x_t)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        training_loss("vlb", out, *chain_and_config(), x0, x_t, noise, t)
    with pytest.raises(ValueError, match="variance_type is 'fixed_small'"):
        hybrid_loss(out, *chain_and_config(variance_type="fixed_small"), x0, x_t, noise, t)
    with pytest.raises(ValueError, match=r"variance_type='learned_range' needs .* 2x .* \(4\), got model_output with 2"):
        vlb_loss(out[:, :C], *chain_and_config(), x0, x_t, t)
    with pytest.raises(ValueError, match=r"variance_type='learned_range' needs .* 2x"):
        simple_loss(out[:, :C], *chain_and_config(), x0, noise, t)
    with pytest.raises(ValueError, match="channels"):
        simple_loss(out[:, :3], *chain_and_config(), x0, noise, t)
    with pytest.raises(ValueError, match="lambda_vlb"):
        hybrid_loss(out, *chain_and_config(), x0, x_t, noise, t, lambda_vlb=-1.0)
    with pytest.raises(ValueError, match="chain must be a DiffusionChain"):
        simple_loss(out, DDPMScheduler(num_train_timesteps=T), scheduler().reverse_step_config, x0, noise, t)
    with pytest.raises(ValueError, match="config must be a ReverseStepConfig"):
        simple_loss(out, scheduler().diffusion_chain(), scheduler().config, x0, noise, t)
    assert LOSS_TYPES == ("simple", "hybrid")
