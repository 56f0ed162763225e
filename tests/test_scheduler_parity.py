"""Plumbing: ScratchDDPMScheduler against diffusers' DDPMScheduler, same inputs and generator.

Tolerance. Both compute in float32 at the point of use, but diffusers also builds its tables in
float32 while ours are float64 and cast. Two roundings dominate the difference:
* diffusers forms beta_{t|s} = 1 - abar_t / abar_s in float32; near t = 0 this cancels, leaving an
  absolute error of about eps32 = 2^-24 in beta, i.e. a relative error of eps32 / beta_t in the
  posterior-mean coefficients (6e-4 at beta = 1e-4);
* E4 divides by sqrt(abar_t), multiplying the float32 error of abar_t by 1 / sqrt(abar_t).
So each element must satisfy |ours - diffusers| / (1 + |diffusers|) <= K * eps32 * (1/beta_t + 1/sqrt(abar_t)).
Over every schedule, spacing, prediction and variance type below the worst measured ratio was 4.4;
K = 16 gives headroom. Separately, ours is at least as close as diffusers to a float64 reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_from_scratch import ScratchDDPMScheduler

EPS32 = 2.0**-24
K = 16


def step_tolerance(sched: ScratchDDPMScheduler, t: int) -> float:
    chain = sched.sampling_chain
    return K * EPS32 * (1 / chain.betas[t].item() + 1 / chain.sqrt_alphas_cumprod[t].item())


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs() / (1 + ref.abs())).max().item()


def random_model_output(sched, sample, generator):
    channels = sample.shape[1] * (2 if sched.config.variance_type.startswith("learned") else 1)
    out = torch.randn(sample.shape[0], channels, *sample.shape[2:], generator=generator)
    if sched.config.variance_type == "learned_range":
        out[:, sample.shape[1]:] = out[:, sample.shape[1]:].tanh()
    if sched.config.variance_type == "learned":
        out[:, sample.shape[1]:] = out[:, sample.shape[1]:].exp() * 1e-3  # a positive variance
    return out


CASES = list(
    itertools.product(
        ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"],
        ["epsilon", "sample", "v_prediction"],
        ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"],
    )
)


@pytest.mark.parametrize("variance_type,prediction_type,beta_schedule", CASES)
@pytest.mark.parametrize("num_inference_steps,spacing", [(None, "leading"), (25, "leading"), (25, "linspace"), (30, "trailing")])
def test_step_matches_diffusers(variance_type, prediction_type, beta_schedule, num_inference_steps, spacing):
    config = dict(variance_type=variance_type, prediction_type=prediction_type, beta_schedule=beta_schedule,
                  timestep_spacing=spacing, clip_sample=prediction_type != "sample")
    ref, ours = DDPMScheduler(**config), ScratchDDPMScheduler(**config)
    if num_inference_steps:
        ref.set_timesteps(num_inference_steps)
        ours.set_timesteps(num_inference_steps)
    assert torch.equal(ref.timesteps, ours.timesteps)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 4, 4, generator=g)
    timesteps = ours.timesteps.tolist()
    if timesteps[-1] > 0:  # diffusers adds noise on a final step t > 0; see the dedicated test below
        timesteps = timesteps[:-1]
    for t in timesteps[:: max(1, len(timesteps) // 12)] + timesteps[-3:]:
        model_output = random_model_output(ours, sample, g)
        a = ref.step(model_output, t, sample, generator=torch.Generator().manual_seed(t))
        b = ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(t))
        tol = step_tolerance(ours, t)
        assert relative_error(b.prev_sample, a.prev_sample) <= tol, (t, "prev_sample")
        assert relative_error(b.pred_original_sample, a.pred_original_sample) <= tol, (t, "pred_original_sample")


def test_full_sampling_loop_matches_diffusers():
    """A 1000-step chain with a fixed 'model': errors do not accumulate beyond the per-step tolerance."""
    ref, ours = DDPMScheduler(), ScratchDDPMScheduler()
    g_ref, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x_ref = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x_ours = x_ref.clone()
    model = lambda x, t: 0.5 * x  # noqa: E731  (a contraction, like a denoiser)
    for t in ours.timesteps:
        x_ref = ref.step(model(x_ref, t), t, x_ref, generator=g_ref).prev_sample
        x_ours = ours.step(model(x_ours, t), t, x_ours, generator=g_ours).prev_sample
    assert torch.allclose(x_ours, x_ref, atol=1e-4, rtol=1e-4)


def test_ours_is_at_least_as_accurate_as_diffusers():
    """Against a float64 evaluation of P2 with x_0 from E4, built here from the betas alone."""
    T = 1000
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    ref, ours = DDPMScheduler(clip_sample=False), ScratchDDPMScheduler(clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 4, 4, generator=g)
    for t in (1, 2, 5, 50, 500, 999):
        eps = torch.randn(8, 1, 4, 4, generator=g)
        x0 = (x.double() - np.sqrt(1 - abar[t]) * eps.double()) / np.sqrt(abar[t])
        mean = (np.sqrt(abar[t - 1]) * betas[t] / (1 - abar[t])) * x0 + (
            np.sqrt(1 - betas[t]) * (1 - abar[t - 1]) / (1 - abar[t])
        ) * x.double()
        # noise is drawn with the same generator by both; subtract it to compare the means
        a = ref.step(eps, t, x, generator=torch.Generator().manual_seed(1)).prev_sample.double()
        b = ours.step(eps, t, x, generator=torch.Generator().manual_seed(1)).prev_sample.double()
        noise = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1)).double()
        std = np.sqrt((1 - abar[t - 1]) / (1 - abar[t]) * betas[t])
        err_ref = (a - std * noise - mean).abs().max().item()
        err_ours = (b - std * noise - mean).abs().max().item()
        assert err_ours <= err_ref * 1.01 + 1e-6, t


def test_add_noise_and_velocity_match_diffusers():
    ref, ours = DDPMScheduler(), ScratchDDPMScheduler()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    # both are F2 with float32 coefficients from (float32 vs float64) abar: ~1 ulp of the coefficients
    assert torch.allclose(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 50, 999, 1000])
def test_timesteps_match_diffusers(spacing, n):
    for offset in (0, 1):
        if spacing == "leading" and offset and n == 1000:
            continue  # 999 + 1 is out of range: ours raises (see test_errors)
        ref = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
        ours = ScratchDDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
        ref.set_timesteps(n)
        ours.set_timesteps(n)
        assert torch.equal(ours.timesteps, ref.timesteps)
        for t in ours.timesteps[:3].tolist() + ours.timesteps[-2:].tolist():
            assert int(ours.previous_timestep(torch.tensor(t))) == int(ref.previous_timestep(torch.tensor(t)))


def test_custom_timesteps_match_diffusers():
    custom = [999, 800, 500, 120, 3, 0]
    ref, ours = DDPMScheduler(), ScratchDDPMScheduler()
    ref.set_timesteps(timesteps=custom)
    ours.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, ref.timesteps) and ours.custom_timesteps
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 4, generator=g)
    for t in custom:
        out = torch.randn(2, 1, 4, 4, generator=g)
        a = ref.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = ours.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        assert relative_error(b, a) <= step_tolerance(ours, t)


@pytest.mark.parametrize("num_inference_steps", [None, 25])
def test_fixed_large_log_is_the_fixed_large_step_where_diffusers_gives_nan(num_inference_steps):
    """The README's differences table: under fixed_large_log diffusers' samples are NaN (issue 14569: it
    takes the square root of a log-variance); ours are the fixed_large distribution, draw for draw."""
    ref = DDPMScheduler(variance_type="fixed_large_log")
    ours = ScratchDDPMScheduler(variance_type="fixed_large_log")
    large = ScratchDDPMScheduler(variance_type="fixed_large")
    if num_inference_steps:
        for sched in (ref, ours, large):
            sched.set_timesteps(num_inference_steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    for t in ours.timesteps.tolist()[:: max(1, len(ours.timesteps) // 8)] + ours.timesteps.tolist()[-2:]:
        out = torch.randn(2, 3, 4, 4, generator=g)
        a = ref.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = ours.step(out, t, x, generator=torch.Generator().manual_seed(t))
        c = large.step(out, t, x, generator=torch.Generator().manual_seed(t))
        assert torch.equal(b.prev_sample, c.prev_sample) and torch.equal(b.pred_original_sample, c.pred_original_sample)
        if t > 0:  # a step that adds noise: diffusers' std is sqrt(log beta) of a negative log
            assert torch.isnan(a).all(), t
        else:  # the final step adds no noise in either: both return the x_0 prediction
            assert relative_error(b.prev_sample, a) <= step_tolerance(ours, t)


def test_final_step_of_a_chain_not_ending_at_zero_adds_no_noise():
    """With steps_offset=1 the chain ends at t=1 -> x_0; its posterior is a point mass at x_0. diffusers
    still adds sqrt(beta) noise there under fixed_large; ours returns the x_0 prediction."""
    ours = ScratchDDPMScheduler(variance_type="fixed_large", steps_offset=1)
    ref = DDPMScheduler(variance_type="fixed_large", steps_offset=1)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    t = int(ours.timesteps[-1])
    assert t == 1 and ours.previous_timestep(t) == -1
    x, out = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    b = ours.step(out, t, x, generator=torch.Generator().manual_seed(0))
    a = ref.step(out, t, x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(b.prev_sample, b.pred_original_sample, atol=1e-6)
    assert not torch.allclose(a.prev_sample, a.pred_original_sample, atol=1e-3)


STATISTIC_KEYS = {"analytic_eps_sq_mean", "analytic_eps_error_sq_mean"}


def test_from_config_both_directions_and_save_load(tmp_path):
    config = dict(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", prediction_type="v_prediction",
                  timestep_spacing="trailing", steps_offset=1, clip_sample=False, rescale_betas_zero_snr=True)
    ref = DDPMScheduler(**config)
    ours = ScratchDDPMScheduler.from_config(ref.config)
    back = DDPMScheduler.from_config(ours.config)
    for key in DDPMScheduler().config:
        if key == "_use_default_values":  # ours also lists its own defaults of the analytic statistics
            assert set(ours.config[key]) - STATISTIC_KEYS == set(ref.config[key]) == set(back.config[key])
            continue
        assert ours.config[key] == ref.config[key] == back.config[key], key
    # two keys more: the statistics of the analytic variances, which DDPMScheduler lacks (it ignores them)
    assert set(ScratchDDPMScheduler().config) == set(DDPMScheduler().config) | STATISTIC_KEYS
    ours.save_pretrained(tmp_path)
    loaded = ScratchDDPMScheduler.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(ours.config)
    assert torch.equal(loaded.forward_chain.alphas_cumprod, ours.forward_chain.alphas_cumprod)
    assert len(loaded) == 1000 and loaded.order == 1 and loaded.init_noise_sigma == 1.0
    x = torch.randn(1, 1, 2, 2)
    assert loaded.scale_model_input(x, 3) is x


def test_trained_betas_and_thresholding_match_diffusers():
    betas = np.linspace(1e-3, 0.05, 50).tolist()
    config = dict(trained_betas=betas, num_train_timesteps=50, thresholding=True, sample_max_value=2.0,
                  dynamic_thresholding_ratio=0.9)
    ref, ours = DDPMScheduler(**config), ScratchDDPMScheduler(**config)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(3, 2, 4, 4, generator=g)
    for t in (49, 20, 1, 0):
        out = torch.randn(3, 2, 4, 4, generator=g)
        a = ref.step(out, t, x, generator=torch.Generator().manual_seed(t))
        b = ours.step(out, t, x, generator=torch.Generator().manual_seed(t))
        assert relative_error(b.pred_original_sample, a.pred_original_sample) <= step_tolerance(ours, t)
        assert relative_error(b.prev_sample, a.prev_sample) <= step_tolerance(ours, t)
        assert b.pred_original_sample.abs().max() <= 1.0 + 1e-6


def test_generator_lists_and_tuples():
    ours, ref = ScratchDDPMScheduler(), DDPMScheduler()
    x, out = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    a = ref.step(out, 400, x, generator=gens()).prev_sample
    b = ours.step(out, 400, x, generator=gens()).prev_sample
    assert relative_error(b, a) <= step_tolerance(ours, 400)
    b2, _ = ours.step(out, 400, x, generator=gens(), return_dict=False)
    assert torch.equal(b, b2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="quadratic"), "beta_schedule must be one of"),
        (dict(variance_type="small"), "variance_type must be one of"),
        (dict(prediction_type="noise"), "prediction_type must be one of"),
        (dict(timestep_spacing="uniform"), "timestep_spacing must be one of"),
        (dict(num_train_timesteps=0), "num_train_timesteps must be an int >= 1"),
        (dict(dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio"),
        (dict(beta_start=-0.1), r"0 < beta_start <= beta_end < 1, got beta_start=-0.1"),
        (dict(beta_end=1.5), r"0 < beta_start <= beta_end < 1, got beta_start=0.0001, beta_end=1.5"),
        (dict(trained_betas=[0.1, 1.0], num_train_timesteps=2), r"open interval \(0, 1\); trained_betas"),
        (dict(trained_betas=[[0.1]], num_train_timesteps=1), "non-empty 1-d"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScratchDDPMScheduler(**kwargs)


def test_errors():
    sched = ScratchDDPMScheduler()
    with pytest.raises(ValueError, match="exactly one of"):
        sched.set_timesteps()
    with pytest.raises(ValueError, match="exactly one of"):
        sched.set_timesteps(10, timesteps=[5, 0])
    with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, num_train_timesteps=1000\]"):
        sched.set_timesteps(1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(0)
    with pytest.raises(ValueError, match="strictly descending"):
        sched.set_timesteps(timesteps=[0, 5])
    with pytest.raises(ValueError, match="must lie in"):
        sched.set_timesteps(timesteps=[1000, 5])
    with pytest.raises(ValueError, match="steps_offset=1"):
        ScratchDDPMScheduler(steps_offset=1).set_timesteps(1000)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="must lie in"):
        sched.add_noise(x, x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="shapes must match"):
        sched.add_noise(x, x[:1], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size 3"):
        sched.add_noise(x, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="expected 1 .* or 2"):
        sched.step(torch.randn(2, 3, 4, 4), 10, x)
    with pytest.raises(ValueError, match="needs a model that outputs 2x"):
        ScratchDDPMScheduler(variance_type="learned_range").step(torch.randn(2, 1, 4, 4), 10, x)
    with pytest.raises(ValueError, match="one per sample"):
        sched.step(x, 10, x, generator=[torch.Generator(), torch.Generator(), torch.Generator()])


def test_public_posterior_and_training_target():
    sched = ScratchDDPMScheduler(prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    t = torch.tensor([10, 700])
    xt = sched.add_noise(x0, noise, t)
    target = sched.training_target(x0, noise, t)
    assert torch.allclose(target, sched.get_velocity(x0, noise, t))
    assert torch.allclose(sched.predict_original_sample(target, xt, t), x0, atol=1e-5)
    mean, var, log_var = sched.q_posterior_mean_variance(x0, xt, t)
    assert mean.shape == x0.shape and var.shape == (2, 1, 1, 1)
    assert torch.allclose(var.log(), log_var)
    assert ScratchDDPMScheduler(prediction_type="sample").training_target(x0, noise, t) is x0
    assert ScratchDDPMScheduler().training_target(x0, noise, t) is noise


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_host_and_tensor_timesteps_take_the_same_step(variance_type):
    """A Python int (Python-float coefficients) and a batched tensor (gathered tables) are one formula."""
    sched = ScratchDDPMScheduler(variance_type=variance_type, prediction_type="v_prediction")
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g)
    out = torch.randn(3, 4 if variance_type == "learned_range" else 2, 4, 4, generator=g).tanh()
    t = int(sched.timesteps[10])
    a = sched.step(out, t, x, generator=torch.Generator().manual_seed(1))
    b = sched.step(out, torch.full((3,), t), x, generator=torch.Generator().manual_seed(1))
    c = sched.step(out, torch.tensor(t), x, generator=torch.Generator().manual_seed(1))
    for field in ("prev_sample", "pred_original_sample"):
        assert torch.allclose(getattr(a, field), getattr(b, field), atol=1e-6)
        assert torch.equal(getattr(a, field), getattr(c, field))
    with pytest.raises(ValueError, match=r"timestep must lie in \[0, 999\]"):
        sched.step(out, 1000, x)
