"""The editing pipelines (ddpm_from_scratch/editing): SDEdit image-to-image and RePaint inpainting.

Checked against the truth on a toy whose optimal noise predictor is known in closed form
(Gaussian data x_0 ~ N(mu, Sigma) on 2x2 images), against the sampling pipeline (strength 1), and
against diffusers' deprecated RePaintPipeline where its semantics agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import PIL.Image
import pytest
import torch
from _pipeline_fixtures import (NUM_TRAIN_TIMESTEPS, ddpm_scheduler, scratch_scheduler, seeded, tiny_diffusers_unet,
                                tiny_scratch_unet)
from diffusers import DDIMScheduler, DDPMPipeline, RePaintPipeline, RePaintScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from benchmarks import repaint_gaussian as toy
from ddpm_from_scratch.editing import ScratchImg2ImgPipeline, ScratchInpaintPipeline, named_mask, repaint_schedule
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

# ---- the Gaussian toy ------------------------------------------------------------------------------
# Its data, the exact conditional and the exact law of RePaint's walk are in benchmarks/repaint_gaussian.py.

# Monte-Carlo tolerance: this many standard errors, sqrt(S_ii / N) for a mean, sqrt((S_ii S_jj + S_ij^2) / N) for a
# covariance entry
MC_TOLERANCE = 4.0


@dataclass
class _Output(BaseOutput):
    sample: torch.Tensor


class GaussianOptimalEps(ModelMixin, ConfigMixin):
    """The optimal noise predictor for x_0 ~ N(mu, Sigma): E[eps | x_t] =
    sqrt(1 - abar_t) (abar_t Sigma + (1 - abar_t) I)^{-1} (x_t - sqrt(abar_t) mu), with a UNet's call and config."""

    @register_to_config
    def __init__(self, mean, covariance, alphas_cumprod, sample_size=2, in_channels=1):
        super().__init__()
        mu, sigma = torch.tensor(mean, dtype=torch.float64), torch.tensor(covariance, dtype=torch.float64)
        abar = torch.tensor(alphas_cumprod, dtype=torch.float64)[:, None, None]
        gain = (1 - abar).sqrt() * torch.linalg.inv(abar * sigma + (1 - abar) * torch.eye(len(mu), dtype=torch.float64))
        self.register_buffer("gain", gain.float())  # (T, d, d)
        self.register_buffer("shift", (abar[:, :, 0].sqrt() * mu).float())  # (T, d)

    def forward(self, sample, timestep, class_labels=None):
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1).expand(sample.shape[0])
        eps = torch.einsum("bij,bj->bi", self.gain[t], sample.flatten(1) - self.shift[t])
        return _Output(sample=eps.reshape(sample.shape))


def toy_scheduler(num_train_timesteps: int) -> ScratchDDPMScheduler:
    """The toy's betas (the paper's, stretched to T steps); no x_0 clipping (the data are Gaussian). Variance
    beta_t ("fixed_large"): with the optimal mean, DDPM's samples of this toy have the data's covariance to
    within 1-5% at T = 200; beta~_t ("fixed_small") gives 9-16% too little at T = 200 (5% at T = 1000), which
    would hide RePaint's own error (docs/editing.md)."""
    return ScratchDDPMScheduler(num_train_timesteps=num_train_timesteps, trained_betas=toy.toy_betas(num_train_timesteps),
                                clip_sample=False, variance_type="fixed_large")


def toy_unet(scheduler: ScratchDDPMScheduler) -> GaussianOptimalEps:
    return GaussianOptimalEps(toy.TOY_MEAN, toy.toy_covariance().tolist(),
                              scheduler.forward_chain.alphas_cumprod.tolist())


class FinalLatents:
    """callback_on_step_end that keeps the last x (model space [-1, 1], before the output's clamp)."""

    def __call__(self, pipeline, step_index, timestep, callback_kwargs):
        self.latents = callback_kwargs["latents"].clone()
        return callback_kwargs


def toy_inpaint(num_train_timesteps: int, jump_length: int, jump_n_sample: int, num_samples: int,
                seed: int = 0) -> torch.Tensor:
    """(num_samples, 2) samples of the lower row given the upper row (toy.known_row()), float64."""
    scheduler = toy_scheduler(num_train_timesteps)
    pipe = ScratchInpaintPipeline(unet=toy_unet(scheduler), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    x_start = torch.zeros(4, dtype=torch.float64)
    x_start[toy.KNOWN], x_start[toy.UNKNOWN] = toy.known_row(), 0.9  # far from the answer: must not leak
    image = ((x_start.reshape(1, 1, 2, 2) + 1) / 2).float().repeat(num_samples, 1, 1, 1)
    final = FinalLatents()
    pipe(image, named_mask("lower-half", 2, 2), num_inference_steps=num_train_timesteps, jump_length=jump_length,
         jump_n_sample=jump_n_sample, generator=seeded(seed), output_type="pt", callback_on_step_end=final)
    samples = final.latents.flatten(1)
    assert torch.equal(samples[:, toy.KNOWN], (image * 2 - 1).flatten(1)[:, toy.KNOWN])  # the known pixels, exactly
    return samples.double()[:, toy.UNKNOWN]


def z_scores(samples: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many standard errors the samples' mean and covariance are from (mean, covariance)."""
    mean_se, cov_se = toy.standard_errors(covariance, len(samples))
    return (samples.mean(0) - mean) / mean_se, (torch.cov(samples.T) - covariance) / cov_se


def test_repaint_samples_have_the_exact_law_of_its_walk():
    """The pipeline samples RePaint's algorithm exactly: on the Gaussian toy every step is affine plus Gaussian
    noise, so the law of the output has a mean and covariance computable without sampling
    (toy.repaint_moments, the moments behind docs/editing.md's table). N = 4000, T = 100, j = 5, r = 5."""
    samples = toy_inpaint(100, jump_length=5, jump_n_sample=5, num_samples=4000)
    law = toy.repaint_moments(100, jump_length=5, jump_n_sample=5)
    mean_z, cov_z = z_scores(samples, law.mean, law.covariance)
    assert (mean_z.abs() < MC_TOLERANCE).all() and (cov_z.abs() < MC_TOLERANCE).all(), (mean_z, cov_z)


@pytest.mark.slow
def test_repaint_with_resampling_matches_the_exact_conditional_and_without_it_does_not():
    """N = 2000 samples of the lower row given the upper row (one standard deviation above its mean), T = 400.

    RePaint is an approximation: the unknown pixels see the known x_0 only through its noised x_t. Its own
    error at j = 5, r = 20 (exact, from toy.repaint_moments) is 3-4% of the shift in the mean (1.5-1.7
    standard errors at this N) and under 3% in the covariance, so the samples match the exact conditional
    within Monte-Carlo error. Without resampling the mean gets only 53-59% of the way from the prior mean
    (~18 standard errors short) and the covariance is 20-65% too large.
    """
    n, steps = 2000, 400
    mean, covariance = toy.exact_conditional(toy.known_row())
    own_error = (toy.repaint_moments(steps, 5, 20).mean - mean) / toy.standard_errors(covariance, n)[0]
    assert (own_error.abs() < 2).all(), own_error  # the setting is one where RePaint itself is within 2 SE

    mean_z, cov_z = z_scores(toy_inpaint(steps, jump_length=5, jump_n_sample=20, num_samples=n), mean, covariance)
    assert (mean_z.abs() < MC_TOLERANCE).all() and (cov_z.abs() < MC_TOLERANCE).all(), (mean_z, cov_z)

    off = toy_inpaint(steps, jump_length=5, jump_n_sample=1, num_samples=n)
    shift = mean - toy.toy_mean()[toy.UNKNOWN]
    mean_z, cov_z = z_scores(off, mean, covariance)
    assert ((off.mean(0) - mean).abs() >= 0.3 * shift.abs()).all() and (mean_z.abs() > 10).all(), mean_z
    assert (cov_z.abs() > MC_TOLERANCE).any(), cov_z


def test_the_moment_table_script_prints_one_row_per_setting(capsys):
    toy.main(["--num-train-timesteps", "20", "--jump-lengths", "2", "--jump-n-samples", "1", "3",
              "--variance", "fixed_large", "exact"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| T | variance | j | r | mean error / shift") and len(lines) == 2 + 4
    assert "| 20 | exact | 2 | 3 |" in "\n".join(lines)


def test_unconditional_toy_chain_samples_the_data_distribution():
    """The toy itself is right: with the whole image masked, RePaint is plain DDPM sampling of N(mu, Sigma)."""
    scheduler = toy_scheduler(200)
    pipe = ScratchInpaintPipeline(unet=toy_unet(scheduler), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    final = FinalLatents()
    image = torch.full((4000, 1, 2, 2), 0.5)
    pipe(image, torch.ones(2, 2), num_inference_steps=200, jump_n_sample=1, generator=seeded(1),
         output_type="pt", callback_on_step_end=final)
    mean_z, cov_z = z_scores(final.latents.double().flatten(1), toy.toy_mean(), toy.toy_covariance())
    assert (mean_z.abs() < MC_TOLERANCE).all() and (cov_z.abs() < MC_TOLERANCE).all(), (mean_z, cov_z)


# ---- known pixels, strength ------------------------------------------------------------------------


def tiny_pipe(cls, unet=None, scheduler=None):
    pipe = cls(unet=unet or tiny_scratch_unet(), scheduler=scheduler or scratch_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def digit_like_images(count: int = 2, channels: int = 1) -> np.ndarray:
    """(count, 8, 8, channels) uint8 images with structure (not constant)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, 8, 8, channels), dtype=np.uint8)


@pytest.mark.parametrize("mask_name", ["lower-half", "centre"])
def test_known_pixels_come_back_exactly(mask_name):
    pipe = tiny_pipe(ScratchInpaintPipeline)
    images = digit_like_images()
    mask = named_mask(mask_name, 8, 8)
    final = FinalLatents()
    pil = pipe([PIL.Image.fromarray(image[..., 0]) for image in images], mask, num_inference_steps=20,
               jump_length=3, jump_n_sample=3, generator=seeded(0), callback_on_step_end=final).images
    kept = mask == 0
    x_start = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    assert torch.equal(final.latents[:, :, torch.from_numpy(kept)], x_start[:, :, torch.from_numpy(kept)])
    for image, out in zip(images, pil):
        assert out.mode == "L"
        np.testing.assert_array_equal(np.asarray(out)[kept], image[..., 0][kept])
        assert not np.array_equal(np.asarray(out)[~kept], image[..., 0][~kept])  # the filled pixels are new


@pytest.mark.parametrize(
    "scheduler", [scratch_scheduler, ddpm_scheduler, lambda: DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)]
)
def test_strength_one_is_ordinary_sampling(scheduler):
    unet = tiny_scratch_unet()
    sampler = ScratchDDPMPipeline(unet=unet, scheduler=scheduler())
    sampler.set_progress_bar_config(disable=True)
    expected = sampler(batch_size=3, generator=[seeded(i) for i in range(3)], num_inference_steps=10,
                       output_type="np").images
    img2img = ScratchImg2ImgPipeline.from_pipe(sampler)
    got = img2img(digit_like_images(3), strength=1.0, generator=[seeded(i) for i in range(3)], num_inference_steps=10,
                  output_type="np").images
    np.testing.assert_array_equal(got, expected)


def test_tiny_strength_returns_the_input_almost_unchanged_and_more_strength_changes_more():
    pipe = tiny_pipe(ScratchImg2ImgPipeline, scheduler=ScratchDDPMScheduler(num_train_timesteps=1000))
    images = digit_like_images(4).astype(np.float32) / 255
    tiny = pipe(images, strength=0.001, num_inference_steps=1000, generator=seeded(0), output_type="np").images
    half = pipe(images, strength=0.5, num_inference_steps=20, generator=seeded(0), output_type="np").images
    assert np.abs(tiny - images).max() < 0.05 and np.abs(tiny - images).mean() < 0.01
    assert np.abs(half - images).mean() > 10 * np.abs(tiny - images).mean()


def test_img2img_runs_the_last_strength_fraction_of_the_chain():
    pipe = tiny_pipe(ScratchImg2ImgPipeline)
    seen = []

    def record(pipeline, i, t, kwargs):
        seen.append(int(t))
        return kwargs

    pipe(digit_like_images(1), strength=0.3, num_inference_steps=20, generator=seeded(0), callback_on_step_end=record)
    assert seen == pipe.scheduler.timesteps[-6:].tolist()


def test_inputs_as_pil_numpy_and_tensor_give_the_same_edit():
    pipe = tiny_pipe(ScratchInpaintPipeline)
    image = digit_like_images(1)[0]
    mask = named_mask("left-half", 8, 8)
    kwargs = dict(num_inference_steps=10, jump_length=2, jump_n_sample=2, output_type="np")
    outputs = [
        pipe(PIL.Image.fromarray(image[..., 0]), PIL.Image.fromarray((mask * 255).astype(np.uint8)),
             generator=seeded(0), **kwargs).images,
        pipe(image.astype(np.float32) / 255, mask, generator=seeded(0), **kwargs).images,
        pipe(torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(mask).bool(),
             generator=seeded(0), **kwargs).images,
        pipe(PIL.Image.fromarray(image[..., 0]), PIL.Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB"),
             generator=seeded(0), **kwargs).images,  # a PIL mask is read as grey whatever its mode
    ]
    for output in outputs[1:]:
        np.testing.assert_array_equal(output, outputs[0])


def test_colour_model_takes_rgb_images_and_converts_pil_ones():
    pipe = tiny_pipe(ScratchImg2ImgPipeline, unet=tiny_scratch_unet(in_channels=3))
    rgb = digit_like_images(1, channels=3)[0]
    from_pil = pipe(PIL.Image.fromarray(rgb), strength=0.5, num_inference_steps=10, generator=seeded(0)).images[0]
    assert from_pil.mode == "RGB" and from_pil.size == (8, 8)
    grey_pil = PIL.Image.fromarray(rgb).convert("L")  # converted to the model's mode, as the UNet needs
    assert pipe(grey_pil, strength=0.5, num_inference_steps=10, generator=seeded(0)).images[0].mode == "RGB"
    with pytest.raises(ValueError, match="image has 1 channel.*takes 3"):
        pipe(np.zeros((8, 8, 1), np.float32), strength=0.5, num_inference_steps=10)


def test_class_labels_and_guidance_on_a_class_conditional_model():
    pipe = tiny_pipe(ScratchInpaintPipeline, unet=tiny_scratch_unet(num_class_embeds=3))
    images = digit_like_images(2)
    kwargs = dict(num_inference_steps=8, jump_length=2, jump_n_sample=2, output_type="np")
    a = pipe(images, named_mask("centre", 8, 8), class_labels=[0, 1], guidance_scale=3.0, generator=seeded(0), **kwargs)
    b = pipe(images, named_mask("centre", 8, 8), class_labels=[2, 2], guidance_scale=3.0, generator=seeded(0), **kwargs)
    assert not np.array_equal(a.images, b.images)
    img2img = ScratchImg2ImgPipeline.from_pipe(pipe)
    img2img(images, class_labels=1, guidance_scale=2.0, num_inference_steps=8, generator=seeded(0))
    with pytest.raises(ValueError, match="class_labels must be in"):
        img2img(images, class_labels=7, num_inference_steps=8)
    with pytest.raises(ValueError, match="unconditional"):
        tiny_pipe(ScratchImg2ImgPipeline)(images, class_labels=1, num_inference_steps=8)


def test_step_end_callback_sees_every_entry_of_the_walk_and_can_replace_x():
    pipe = tiny_pipe(ScratchInpaintPipeline)
    calls = []

    def callback(pipeline, i, t, kwargs):
        calls.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = pipe(digit_like_images(1), named_mask("upper-half", 8, 8), num_inference_steps=6, jump_length=2,
               jump_n_sample=3, output_type="np", callback_on_step_end=callback).images
    assert calls == list(range(len(repaint_schedule(6, 2, 3))))
    np.testing.assert_array_equal(out, 0.5)  # x replaced by 0 (grey) after the last entry


# ---- loading, from_pipe, saving --------------------------------------------------------------------


def test_from_pipe_shares_the_weights_of_a_scratch_and_a_diffusers_pipeline():
    scratch = ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler())
    stock = DDPMPipeline(unet=tiny_diffusers_unet(), scheduler=ddpm_scheduler())
    for source in (scratch, stock):
        for cls in (ScratchImg2ImgPipeline, ScratchInpaintPipeline):
            edited = cls.from_pipe(source)
            assert type(edited) is cls and edited.unet is source.unet and edited.scheduler is source.scheduler


def test_from_pretrained_loads_saved_pipelines_and_saving_writes_a_plain_sampling_pipeline(tmp_path):
    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).save_pretrained(tmp_path / "scratch")
    DDPMPipeline(unet=tiny_diffusers_unet(), scheduler=ddpm_scheduler()).save_pretrained(tmp_path / "stock")
    img2img = ScratchImg2ImgPipeline.from_pretrained(tmp_path / "scratch")
    inpaint = ScratchInpaintPipeline.from_pretrained(tmp_path / "stock")  # a DDPMScheduler: stepped as ours
    img2img.set_progress_bar_config(disable=True)
    inpaint.set_progress_bar_config(disable=True)
    images = digit_like_images(1)
    img2img(images, strength=0.5, num_inference_steps=10, generator=seeded(0))
    inpaint(images, named_mask("centre", 8, 8), num_inference_steps=10, jump_length=2, jump_n_sample=2)
    replaced = ScratchInpaintPipeline.from_pretrained(tmp_path / "scratch", scheduler=ddpm_scheduler())
    assert type(replaced.scheduler).__name__ == "DDPMScheduler"

    img2img.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ScratchDDPMPipeline"]
    assert not list((tmp_path / "saved").rglob("img2img.py")) and not list((tmp_path / "saved").rglob("inputs.py"))
    reloaded = ScratchInpaintPipeline.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded.unet.conv_in.weight, img2img.unet.conv_in.weight)


# ---- one clear error before any step --------------------------------------------------------------


@pytest.fixture
def guarded():
    """(img2img, inpaint) pipelines whose UNet raises if it is ever called: errors must come first."""
    unet = tiny_scratch_unet()

    def refuse(*args):
        raise AssertionError("the UNet ran before the bad argument was refused")

    unet.register_forward_pre_hook(refuse)
    return tiny_pipe(ScratchImg2ImgPipeline, unet=unet), tiny_pipe(ScratchInpaintPipeline, unet=unet)


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan"), True, "0.5", 0.01])
def test_bad_strength(guarded, strength):
    img2img, _ = guarded
    match = "strength=0.01 runs int" if strength == 0.01 else r"strength must be a number in \(0, 1\]"
    with pytest.raises(ValueError, match=match):
        img2img(digit_like_images(1), strength=strength, num_inference_steps=20)


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.ones((4, 4), np.float32), r"mask_image is 4x4 .* makes 8x8"),
        (np.full((8, 8), 2.0, np.float32), r"mask_image values must lie in \[0, 1\]"),
        (-torch.ones(1, 8, 8), r"mask_image values must lie in \[0, 1\]"),
        (np.ones((8, 8, 3), np.float32), "mask_image has 3 channels; it must have 1 or the image's 1"),
        (torch.ones(3, 1, 8, 8), "mask_image holds 3 masks; give 1 or one per image"),
        (np.full((8, 8), np.nan, np.float32), "mask_image contains NaN"),
        ("lower-half", "mask_image must be a PIL image"),
    ],
)
def test_bad_mask(guarded, mask, match):
    _, inpaint = guarded
    with pytest.raises((ValueError, TypeError), match=match):
        inpaint(digit_like_images(2), mask, num_inference_steps=10, jump_length=2, jump_n_sample=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_inference_steps=10, jump_length=10, jump_n_sample=2), r"jump_length=10 is longer than the chain"),
        (dict(num_inference_steps=10, jump_length=0), "jump_length must be an int >= 1"),
        (dict(num_inference_steps=10, jump_n_sample=0), "jump_n_sample must be an int >= 1"),
        (dict(num_inference_steps=NUM_TRAIN_TIMESTEPS + 1), "num_inference_steps must be an int in"),
        (dict(num_inference_steps=10, output_type="jpg"), "output_type must be one of"),
        (dict(num_inference_steps=10, generator=[seeded(0)]), "a list of 1 generators but batch_size is 2"),
    ],
)
def test_bad_inpainting_arguments(guarded, kwargs, match):
    _, inpaint = guarded
    with pytest.raises(ValueError, match=match):
        inpaint(digit_like_images(2), named_mask("centre", 8, 8), **kwargs)


def test_jump_length_that_fits_and_no_resampling_with_any_jump_length(guarded):
    assert repaint_schedule(10, 9, 2)[:11] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1]
    assert repaint_schedule(10, 50, 1) == list(range(9, -1, -1))


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((4, 4), np.float32), r"image is 4x4 .* makes 8x8"),
        (np.full((8, 8), 1.5, np.float32), r"image values must lie in \[0, 1\]"),
        (torch.zeros(2, 3, 8, 8), "image has 3 channel"),
        (np.zeros((8, 8), np.complex64), "image must hold numbers"),
        ([], "image is an empty list"),
        ("picture.png", "image must be a PIL image"),
    ],
)
def test_bad_image(guarded, image, match):
    img2img, inpaint = guarded
    with pytest.raises((ValueError, TypeError), match=match):
        img2img(image, strength=0.5, num_inference_steps=10)
    with pytest.raises((ValueError, TypeError), match=match):
        inpaint(image, named_mask("centre", 8, 8), num_inference_steps=10)


def test_inpainting_refuses_a_scheduler_without_the_ddpm_chain(guarded):
    _, inpaint = guarded
    inpaint.scheduler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    with pytest.raises(ValueError, match="needs a ScratchDDPMScheduler or diffusers' DDPMScheduler.*DDIMScheduler"):
        inpaint(digit_like_images(1), named_mask("centre", 8, 8), num_inference_steps=10)


def test_named_masks():
    assert named_mask("lower-half", 4, 4).tolist() == [[0] * 4, [0] * 4, [1] * 4, [1] * 4]
    assert named_mask("right-half", 2, 2).tolist() == [[0, 1], [0, 1]]
    assert named_mask("centre", 8, 8).sum() == 16 and named_mask("centre", 8, 8)[2:6, 2:6].all()
    with pytest.raises(ValueError, match="mask name must be one of"):
        named_mask("middle", 8, 8)


# ---- parity with diffusers' deprecated RePaint -------------------------------------------------------


def test_repaint_schedule_is_diffusers():
    for steps, jump_length, jump_n_sample in [(4, 1, 2), (20, 3, 4), (50, 10, 10), (30, 7, 1)]:
        scheduler = RePaintScheduler(num_train_timesteps=steps)
        scheduler.set_timesteps(steps, jump_length, jump_n_sample)
        assert scheduler.timesteps.tolist() == repaint_schedule(steps, jump_length, jump_n_sample)


@pytest.mark.filterwarnings("ignore:The preprocess method is deprecated:FutureWarning")
def test_parity_with_diffusers_repaint_where_the_semantics_agree():
    """Same UNet, betas and generator; diffusers' mask is 1 where pixels are kept (ours: 1 where filled).

    They agree on the full chain (num_inference_steps = T), eta = 1 (its DDIM update is then the DDPM
    posterior step) and clip_sample = False: its unknown part steps with the raw eps, ours with the
    eps of the clipped x_0 (P2 at the clipped x_0), so with clipping they differ where clipping bites.
    On a strided chain they differ too: its jump back up applies the betas of the n training steps
    *above* the target timestep, ours the merged step into it (F1 of the strided chain).
    """
    unet = tiny_diffusers_unet()
    images = digit_like_images(2).astype(np.float32) / 255
    mask = named_mask("lower-half", 8, 8)
    theirs = RePaintPipeline(unet=unet, scheduler=RePaintScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                                                                   clip_sample=False))
    theirs.set_progress_bar_config(disable=True)
    expected = theirs(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1, torch.from_numpy(1 - mask)[None, None],
                      num_inference_steps=NUM_TRAIN_TIMESTEPS, eta=1.0, jump_length=5, jump_n_sample=3,
                      generator=seeded(0), output_type="np").images
    ours = tiny_pipe(ScratchInpaintPipeline, unet=unet,
                     scheduler=ScratchDDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, clip_sample=False))
    got = ours(images, mask, num_inference_steps=NUM_TRAIN_TIMESTEPS, jump_length=5, jump_n_sample=3,
               generator=seeded(0), output_type="np").images
    np.testing.assert_allclose(got, expected, atol=2e-5)  # float rounding of the two forms of the same step


def test_cuda_graph_option_is_refused_before_any_step(guarded):
    img2img, _ = guarded
    img2img.enable_fast_sampling(cuda_graph=True)
    with pytest.raises(ValueError, match="runs its steps eagerly"):
        img2img(digit_like_images(1), strength=0.5, num_inference_steps=10)
