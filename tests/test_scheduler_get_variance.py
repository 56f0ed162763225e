"""diffusers' private ``DDPMScheduler._get_variance`` contract, kept on ScratchDDPMScheduler as an adapter.

diffusers' own ``ValueGuidedRLPipeline`` (diffusers.experimental) calls ``scheduler._get_variance(t)``
on a DDPM scheduler. The adapter returns what diffusers returns for every variance type (whose unit
depends on the type), and the pipeline gives the same trajectories with either scheduler. The tiny
value function and UNet1DModel are built from configs with random weights; the "environment" is a
stand-in with the three attributes the pipeline reads (no gym, no network).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet1DModel
from diffusers.experimental import ValueGuidedRLPipeline

from ddpm_from_scratch import ScratchDDPMScheduler

EPS32 = 2.0**-24
TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
LOG_TYPES = ("fixed_large_log", "learned_range")  # diffusers returns a log-variance for these


def tolerance(sched: ScratchDDPMScheduler, t: int) -> float:
    """diffusers forms beta_{t|s} = 1 - abar_t / abar_s and 1 - abar_s in float32: relative errors of
    ~eps32 / beta_{t|s} and ~eps32 / (1 - abar_s) in the posterior variance."""
    chain = sched.sampling_chain
    one_minus_abar_prev = 1 - chain.alphas_cumprod_prev[t].item()
    return 16 * EPS32 * (1 / chain.betas[t].item() + (1 / one_minus_abar_prev if one_minus_abar_prev > 0 else 0) + 1)


@pytest.mark.parametrize("num_inference_steps", [None, 7], ids=["training_chain", "strided_7"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("variance_type", TYPES)
def test_get_variance_returns_what_diffusers_returns(variance_type, beta_schedule, num_inference_steps):
    config = dict(num_train_timesteps=50, beta_schedule=beta_schedule, variance_type=variance_type)
    ref, ours = DDPMScheduler(**config), ScratchDDPMScheduler(**config)
    if num_inference_steps:
        ref.set_timesteps(num_inference_steps)
        ours.set_timesteps(num_inference_steps)
    predicted = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for t in ours.timesteps.tolist():
        for timestep in (t, torch.tensor(t)):  # pipelines pass elements of scheduler.timesteps
            a = ref._get_variance(timestep, predicted_variance=predicted)
            b = ours._get_variance(timestep, predicted_variance=predicted)
            assert isinstance(b, torch.Tensor) and b.dtype == torch.float32 and b.shape == a.shape
            tol = tolerance(ours, t)
            if variance_type in LOG_TYPES:  # an error in the variance is an absolute error in its log
                torch.testing.assert_close(b, a, rtol=0, atol=tol)
            else:
                torch.testing.assert_close(b, a, rtol=tol, atol=0)
    # the variance_type argument overrides the config's, as in diffusers
    t = int(ours.timesteps[1])
    for other in ("fixed_small", "fixed_large", "fixed_large_log"):
        torch.testing.assert_close(ours._get_variance(t, variance_type=other), ref._get_variance(t, variance_type=other),
                                   rtol=tolerance(ours, t), atol=tolerance(ours, t))


def test_get_variance_of_the_analytic_type_is_the_step_variance():
    gamma = [0.3] * 50
    sched = ScratchDDPMScheduler(num_train_timesteps=50, variance_type="analytic", analytic_eps_sq_mean=gamma)
    sched.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    for t in sched.timesteps.tolist()[:-1]:
        std = sched.step(x, t, x, variance_noise=torch.ones_like(x)).prev_sample - sched.step(
            x, t, x, variance_noise=torch.zeros_like(x)).prev_sample
        torch.testing.assert_close(sched._get_variance(t), (std[0, 0, 0, 0] ** 2).float(), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="needs predicted_variance"):
        sched._get_variance(5, variance_type="learned_range")
    with pytest.raises(ValueError, match="variance_type must be one of"):
        sched._get_variance(5, variance_type="small")
    with pytest.raises(ValueError, match="a single timestep"):
        sched._get_variance(torch.tensor([5, 4]))
    plain = ScratchDDPMScheduler(num_train_timesteps=50)
    with pytest.raises(ValueError, match="needs Gamma_t"):
        plain._get_variance(5, variance_type="analytic")


STATE_DIM, ACTION_DIM, HORIZON = 3, 2, 8


def tiny_unet1d(value_function: bool) -> UNet1DModel:
    """The hopper models' block types (diffusers' convert_models_diffuser_to_diffusers.py), two blocks wide."""
    common = dict(
        in_channels=STATE_DIM + ACTION_DIM, out_channels=STATE_DIM + ACTION_DIM, extra_in_channels=0,
        block_out_channels=(16, 32), layers_per_block=1, time_embedding_type="positional",
        use_timestep_embedding=True, flip_sin_to_cos=False, freq_shift=1, norm_num_groups=8, act_fn="mish",
        down_block_types=("DownResnetBlock1D",) * 2,
    )
    if value_function:
        return UNet1DModel(up_block_types=(), mid_block_type="ValueFunctionMidBlock1D", out_block_type="ValueFunction",
                           downsample_each_block=True, **common).eval()
    return UNet1DModel(up_block_types=("UpResnetBlock1D",), mid_block_type="MidResTemporalBlock1D",
                       out_block_type="OutConv1DBlock", downsample_each_block=False, **common).eval()


class StandInEnv:
    """What ValueGuidedRLPipeline reads from a gym environment: the spaces' shapes and a dataset."""

    observation_space = SimpleNamespace(shape=(STATE_DIM,))
    action_space = SimpleNamespace(shape=(ACTION_DIM,))

    def get_dataset(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {"observations": rng.normal(size=(64, STATE_DIM)), "actions": rng.normal(size=(64, ACTION_DIM))}


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "fixed_small"])
def test_value_guided_rl_pipeline_runs_the_same_with_our_scheduler(variance_type):
    """The pipeline scales its value gradient by exp(0.5 * _get_variance(t)) and steps the scheduler."""
    torch.manual_seed(0)
    value_function, unet = tiny_unet1d(value_function=True), tiny_unet1d(value_function=False)
    reference = DDPMScheduler(num_train_timesteps=20, beta_start=0.01, beta_end=0.2, clip_sample=False,
                              variance_type=variance_type)
    results = []
    for scheduler in (reference, ScratchDDPMScheduler.from_config(reference.config)):
        pipe = ValueGuidedRLPipeline(value_function=value_function, unet=unet, scheduler=scheduler, env=StandInEnv())
        pipe.set_progress_bar_config(disable=True)
        torch.manual_seed(1)  # the pipeline draws its noise from the global generator
        x = torch.randn(4, HORIZON, STATE_DIM + ACTION_DIM)
        trajectories, values = pipe.run_diffusion(x, {0: torch.zeros(4, STATE_DIM)}, n_guide_steps=2, scale=0.1)
        torch.manual_seed(2)
        action = pipe(np.zeros(STATE_DIM), batch_size=4, planning_horizon=HORIZON, n_guide_steps=2, scale=0.1)
        results.append((trajectories.detach(), values.detach(), action))
    (ref_x, ref_y, ref_action), (our_x, our_y, our_action) = results
    assert torch.isfinite(our_x).all() and ref_x.abs().max() > 0.1
    torch.testing.assert_close(our_x, ref_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(our_y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(our_action, ref_action, rtol=1e-4, atol=1e-4)
