"""diffusers' DDIMScheduler swapped into our pipeline does not get worse with more steps.

The pipeline drives DDIMScheduler with ``use_clipped_model_output=True``: the noise is re-derived from
the clipped x_0, as our own step does. diffusers' default (False) steps with the clipped x_0 and the
model's unclipped noise, which are inconsistent wherever clipping acts. That error has the size of the
clipping at every step, whatever the step size, so it grows with the number of steps.

Checked on a toy whose optimal noise predictor is known in closed form, against the closed-form truth,
and end to end through ``ddpm-sample --scheduler ddim``.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import pytest
import torch
from _pipeline_fixtures import ddpm_scheduler, scratch_scheduler, tiny_diffusers_unet, tiny_scratch_unet
from diffusers import DDIMPipeline, DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ddpm_from_scratch.cli.evaluate import main as evaluate_main
from ddpm_from_scratch.cli.sample import main as sample_main
from ddpm_from_scratch.digits.evaluation import sample_digits
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

# ---- the toy -------------------------------------------------------------------------------------------

DATA_MEAN, DATA_STD = 0.8, 0.3  # a quarter of the data lies above 1, so clipping x_0 to [-1, 1] acts
# the toy model's error: its noise prediction is the optimum minus this much, so its x_0 prediction
# overshoots by sqrt(1 - abar_t) / sqrt(abar_t) * 0.01 (a trained network errs far more)
EPS_ERROR = -0.01
IMAGE_SIZE, NUM_IMAGES = 4, 1000  # 16,000 pixels, independent and identically distributed
MC_TOLERANCE = 4.0  # standard errors


@dataclass
class _Output(BaseOutput):
    sample: torch.Tensor


class GaussianPixelEps(ModelMixin, ConfigMixin):
    """The optimal noise predictor for pixels x_0 ~ N(mu, s^2), independent, plus a constant ``eps_error``.

    Derivation (F2: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, 1) independent of x_0): x_t and
    eps are jointly Gaussian with E[x_t] = sqrt(abar_t) mu, Var[x_t] = abar_t s^2 + 1 - abar_t and
    Cov[eps, x_t] = sqrt(1 - abar_t), so the regression of eps on x_t, which minimises E (eps - eps_theta)^2, is

        E[eps | x_t] = Cov / Var (x_t - E[x_t]) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 - abar_t).

    (`test_the_toy_predictor_is_the_regression_of_the_noise_on_x_t` checks it on draws.) A UNet's call and config.
    """

    @register_to_config
    def __init__(self, mean, std, alphas_cumprod, eps_error=0.0, sample_size=IMAGE_SIZE, in_channels=1):
        super().__init__()
        # float32, the dtype the pipeline reads off the model for its samples; the formula runs in float64
        self.register_buffer("abar", torch.tensor(alphas_cumprod, dtype=torch.float32))

    def forward(self, sample, timestep, class_labels=None):
        abar = self.abar[torch.as_tensor(timestep).long()].double()
        mu, s = self.config.mean, self.config.std
        eps = (1 - abar).sqrt() * (sample.double() - abar.sqrt() * mu) / (abar * s**2 + 1 - abar)
        return _Output(sample=(eps + self.config.eps_error).to(sample.dtype))


def ddim_scheduler() -> DDIMScheduler:
    """diffusers' DDIMScheduler from our scheduler's config (T = 1000, linear betas, x_0 clipped to [-1, 1]),
    as ``ddpm-sample --scheduler ddim`` builds it."""
    return DDIMScheduler.from_config(ScratchDDPMScheduler(num_train_timesteps=1000).config)


def toy_unet(eps_error: float) -> GaussianPixelEps:
    return GaussianPixelEps(DATA_MEAN, DATA_STD, ddim_scheduler().alphas_cumprod.tolist(), eps_error)


def clipped_normal_moments(mu: float, s: float, r: float = 1.0) -> tuple[float, float]:
    """Mean and standard deviation of clamp(X, -r, r), X ~ N(mu, s^2): what an exact sampler gives when the
    samples are clipped to the data range (its last step returns the clipped x_0)."""
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    a, b = (-r - mu) / s, (r - mu) / s
    inside = cdf(b) - cdf(a)
    mean = -r * cdf(a) + r * (1 - cdf(b)) + mu * inside + s * (pdf(a) - pdf(b))
    second = r * r * (cdf(a) + 1 - cdf(b)) + mu * mu * inside + 2 * mu * s * (pdf(a) - pdf(b)) + s * s * (
        inside + a * pdf(a) - b * pdf(b))
    return mean, math.sqrt(second - mean * mean)


TRUE_MEAN, TRUE_STD = clipped_normal_moments(DATA_MEAN, DATA_STD)


def error(samples: torch.Tensor) -> float:
    """The larger of |mean - true mean| and |std - true std| over all pixels."""
    x = samples.double().flatten()
    return max(abs(x.mean().item() - TRUE_MEAN), abs(x.std().item() - TRUE_STD))


def pipeline_samples(eps_error: float, steps: int) -> torch.Tensor:
    """Samples in [-1, 1] of our pipeline with diffusers' DDIMScheduler (eta = 0)."""
    pipe = ScratchDDPMPipeline(unet=toy_unet(eps_error), scheduler=ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    images = pipe(NUM_IMAGES, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                  output_type="pt").images
    return images * 2 - 1


def hand_loop_samples(eps_error: float, steps: int, use_clipped_model_output: bool) -> torch.Tensor:
    """The same sampler driven by hand, as diffusers' DDIMPipeline drives it (same noise)."""
    unet, scheduler = toy_unet(eps_error), ddim_scheduler()
    scheduler.set_timesteps(steps)
    x = randn_tensor((NUM_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=use_clipped_model_output,
                           generator=None).prev_sample
    return x.clamp(-1, 1)


def test_the_toy_predictor_is_the_regression_of_the_noise_on_x_t():
    """On 10^6 draws of (x_0, eps) the least-squares line of eps on x_t is the toy's line (within 4 standard
    errors of the fitted slope and intercept), at three t."""
    n = 1_000_000
    generator = torch.Generator().manual_seed(0)
    x_start = DATA_MEAN + DATA_STD * torch.randn(n, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    unet = toy_unet(0.0)
    for t in (10, 300, 900):
        abar = unet.abar[t].double()
        x_t = abar.sqrt() * x_start + (1 - abar).sqrt() * noise
        slope = torch.cov(torch.stack([x_t, noise]))[0, 1] / x_t.var()
        intercept = noise.mean() - slope * x_t.mean()
        residual_var = (noise - intercept - slope * x_t).var()
        slope_se = (residual_var / (n * x_t.var())).sqrt()
        intercept_se = (residual_var / n * (1 + x_t.mean() ** 2 / x_t.var())).sqrt()
        at_zero, at_one = unet(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1), torch.tensor(t)).sample.flatten().double()
        assert abs(at_one - at_zero - slope) < MC_TOLERANCE * slope_se, (t, at_one - at_zero, slope)
        assert abs(at_zero - intercept) < MC_TOLERANCE * intercept_se, (t, at_zero, intercept)


def test_diffusers_ddim_in_our_pipeline_is_no_worse_at_1000_steps_than_at_25_and_diffusers_default_is():
    """Mean and std of the samples against clamp(N(0.8, 0.3^2), -1, 1) (16,000 pixels, eta = 0).

    The exact predictor: 1000 steps match the truth within Monte-Carlo error, and the switch cannot show
    (x_0's overshoot is removed by the very step that clips it, so both end on the clip). The predictor
    that errs by 0.01 in the noise, as any trained model errs: with the clipped model output (what the
    pipeline passes) 1000 steps are no worse than 25 (errors 0.010 and 0.033); the same loop driven by
    hand with diffusers' default (False) ends far off at 1000 steps (error 0.33: the samples' mean drops
    from the true 0.75 to 0.43).
    """
    n = NUM_IMAGES * IMAGE_SIZE**2
    standard_error = TRUE_STD / math.sqrt(n)
    assert error(pipeline_samples(0.0, 1000)) < MC_TOLERANCE * standard_error

    at_25, at_1000 = pipeline_samples(EPS_ERROR, 25), pipeline_samples(EPS_ERROR, 1000)
    consistent = hand_loop_samples(EPS_ERROR, 1000, use_clipped_model_output=True)
    torch.testing.assert_close(consistent, at_1000, atol=1e-6, rtol=0)  # the pipeline is this loop with True
    assert error(at_1000) <= error(at_25) + MC_TOLERANCE * standard_error, (error(at_1000), error(at_25))

    diffusers_default = hand_loop_samples(EPS_ERROR, 1000, use_clipped_model_output=False)
    assert error(diffusers_default) > 5 * error(at_1000) and error(diffusers_default) > 3 * error(at_25), (
        error(diffusers_default), error(at_1000), error(at_25))


# ---- the commands and a stock DDIMPipeline: the switch is passed ----------------------------------------


@pytest.fixture
def ddim_step_switches(monkeypatch):
    """The use_clipped_model_output of every DDIMScheduler.step call (a spy that keeps the step's signature)."""
    calls = []
    step = DDIMScheduler.step

    @functools.wraps(step)
    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("use_clipped_model_output"))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "step", spy)
    return calls


def test_ddpm_sample_with_ddim_passes_the_clipped_model_output(tmp_path, ddim_step_switches):
    path = tmp_path / "pipe"
    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).save_pretrained(path)
    argv = [str(path), "--scheduler", "ddim", "--num-images", "3", "--num-inference-steps", "5", "--device", "cpu",
            "--no-progress", "--out", str(tmp_path / "grid.png")]
    assert sample_main(argv) == 0
    assert ddim_step_switches == [True] * 5  # one batch of 3 images, 5 steps


def test_ddpm_evaluate_with_ddim_samples_with_the_clipped_model_output(tmp_path, ddim_step_switches, capsys):
    path = tmp_path / "pipe"
    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).save_pretrained(path)
    argv = [str(path), "--scheduler", "ddim", "--num-samples", "2", "--nll-images", "0", "--num-inference-steps", "4",
            "--device", "cpu", "--no-progress", "--json", str(tmp_path / "eval.json")]
    assert evaluate_main(argv) == 0
    assert ddim_step_switches == [True] * 4
    report = json.loads((tmp_path / "eval.json").read_text())
    assert (report["sampling_scheduler"], report["num_inference_steps"]) == ("DDIMScheduler", 4)


def test_a_stock_ddim_pipeline_is_sampled_with_the_clipped_model_output(ddim_step_switches):
    pipeline = DDIMPipeline(unet=tiny_diffusers_unet(), scheduler=DDIMScheduler.from_config(ddpm_scheduler().config))
    pipeline.set_progress_bar_config(disable=True)
    sample_digits(pipeline, 2, num_inference_steps=3, batch_size=2, seed=0)
    assert ddim_step_switches == [True] * 3
