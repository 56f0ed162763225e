"""ScratchDDPMPipeline sampling: parity with diffusers' pipelines, outputs, determinism, guidance, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _pipeline_fixtures import (
    NUM_TRAIN_TIMESTEPS,
    ddpm_scheduler,
    scratch_scheduler,
    seeded,
    tiny_diffusers_unet,
    tiny_scratch_unet,
)
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, PNDMPipeline, PNDMScheduler
from diffusers.utils.torch_utils import randn_tensor

from ddpm_from_scratch.conditioning import class_conditioning, classifier_free_guidance
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

STEPS = 4
NUM_CLASSES = 3


def make_pipeline(unet, scheduler) -> ScratchDDPMPipeline:
    pipeline = ScratchDDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def conditional_pipeline() -> ScratchDDPMPipeline:
    return make_pipeline(tiny_scratch_unet(num_class_embeds=NUM_CLASSES), scratch_scheduler())


@pytest.fixture(scope="module")
def unconditional_pipeline() -> ScratchDDPMPipeline:
    return make_pipeline(tiny_diffusers_unet(), ddpm_scheduler())


# ---- parity with diffusers ------------------------------------------------------------------------


@pytest.mark.parametrize("generators", ["one", "list"])
def test_same_images_as_diffusers_ddpm_pipeline(generators):
    unet, scheduler = tiny_diffusers_unet(), ddpm_scheduler()
    reference = DDPMPipeline(unet=unet, scheduler=scheduler)
    reference.set_progress_bar_config(disable=True)

    def generator():
        return seeded(7) if generators == "one" else [seeded(7), seeded(8), seeded(9)]

    expected = reference(batch_size=3, generator=generator(), num_inference_steps=STEPS, output_type="np").images
    ours = make_pipeline(unet, scheduler)(
        batch_size=3, generator=generator(), num_inference_steps=STEPS, output_type="np"
    )
    np.testing.assert_array_equal(ours.images, expected)


def test_scratch_scheduler_in_the_pipeline_matches_diffusers_ddpm_pipeline():
    unet = tiny_diffusers_unet()
    reference = DDPMPipeline(unet=unet, scheduler=ddpm_scheduler())
    reference.set_progress_bar_config(disable=True)
    expected = reference(batch_size=2, generator=seeded(3), num_inference_steps=STEPS, output_type="np").images
    ours = make_pipeline(unet, scratch_scheduler())(
        batch_size=2, generator=seeded(3), num_inference_steps=STEPS, output_type="np"
    ).images
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_same_images_as_diffusers_ddim_pipeline_with_eta_and_the_clipped_model_output():
    """Our pipeline drives DDIMScheduler with use_clipped_model_output=True (docs/differences.md); diffusers'
    DDIMPipeline gives the same images with that switch, and other ones by default (the random UNet's x_0
    predictions leave [-1, 1], so clipping is active and the switch matters)."""
    unet = tiny_diffusers_unet()
    scheduler = DDIMScheduler.from_config(ddpm_scheduler().config)
    reference = DDIMPipeline(unet=unet, scheduler=scheduler)
    reference.set_progress_bar_config(disable=True)
    call = dict(batch_size=2, num_inference_steps=STEPS, eta=0.5, output_type="np")
    expected = reference(generator=seeded(5), use_clipped_model_output=True, **call).images
    diffusers_default = reference(generator=seeded(5), **call).images
    ours = make_pipeline(unet, scheduler)(generator=seeded(5), **call)
    np.testing.assert_array_equal(ours.images, expected)
    assert np.abs(ours.images - diffusers_default).max() > 1e-3


def test_scheduler_whose_step_takes_no_generator_gives_diffusers_pndm_pipeline_images_and_rejects_eta():
    unet = tiny_diffusers_unet()
    reference = PNDMPipeline(unet=unet, scheduler=PNDMScheduler.from_config(ddpm_scheduler().config))
    reference.set_progress_bar_config(disable=True)
    expected = reference(batch_size=2, generator=seeded(0), num_inference_steps=STEPS, output_type="np").images
    pipeline = make_pipeline(unet, PNDMScheduler.from_config(ddpm_scheduler().config))
    images = pipeline(batch_size=2, generator=seeded(0), num_inference_steps=STEPS, output_type="np").images
    assert expected.std() > 0.05  # not a blank image
    np.testing.assert_array_equal(images, expected)
    with pytest.raises(ValueError, match="eta"):
        pipeline(num_inference_steps=STEPS, eta=0.5)


# ---- outputs and determinism ----------------------------------------------------------------------


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_output_types_agree_for_grayscale_and_rgb(channels, mode):
    pipeline = make_pipeline(tiny_diffusers_unet(in_channels=channels), ddpm_scheduler())

    def run(output_type):
        return pipeline(batch_size=2, generator=seeded(1), num_inference_steps=STEPS, output_type=output_type).images

    pt, np_images, pil = run("pt"), run("np"), run("pil")
    assert pt.shape == (2, channels, 8, 8) and 0 <= pt.min() and pt.max() <= 1
    assert np_images.shape == (2, 8, 8, channels) and np_images.dtype == np.float32
    np.testing.assert_array_equal(np_images, pt.permute(0, 2, 3, 1).numpy())
    assert [image.mode for image in pil] == [mode, mode] and pil[0].size == (8, 8)
    as_uint8 = (np_images * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(pil[1]).reshape(8, 8, channels), as_uint8[1])
    assert isinstance(pipeline(num_inference_steps=1, return_dict=False), tuple)


def test_same_generator_same_images_and_list_of_generators_is_per_image(unconditional_pipeline):
    def run(generator, batch_size):
        return unconditional_pipeline(
            batch_size=batch_size, generator=generator, num_inference_steps=STEPS, output_type="pt"
        ).images

    torch.testing.assert_close(run(seeded(11), 2), run(seeded(11), 2), rtol=0, atol=0)
    assert not torch.allclose(run(seeded(11), 2), run(seeded(12), 2))
    batch = run([seeded(21), seeded(22), seeded(23)], 3)
    for index, seed in enumerate([21, 22, 23]):
        torch.testing.assert_close(batch[index : index + 1], run([seeded(seed)], 1), rtol=0, atol=1e-5)


def test_progress_bar_counts_the_steps_and_can_be_turned_off(capsys):
    pipeline = ScratchDDPMPipeline(unet=tiny_diffusers_unet(), scheduler=ddpm_scheduler())
    pipeline(num_inference_steps=STEPS)
    assert f"{STEPS}/{STEPS}" in capsys.readouterr().err
    pipeline.set_progress_bar_config(disable=True)
    pipeline(num_inference_steps=STEPS)
    assert f"{STEPS}/{STEPS}" not in capsys.readouterr().err


# ---- classifier-free guidance ---------------------------------------------------------------------


def test_classifier_free_guidance_formula():
    uncond, cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 3.0), torch.tensor([7.0, 4.0]))


def test_class_conditioning_of_both_unets():
    assert class_conditioning(tiny_scratch_unet()) is None
    assert class_conditioning(tiny_scratch_unet(num_class_embeds=10)) == (10, 10)
    assert class_conditioning(tiny_diffusers_unet()) is None
    # diffusers' table has num_class_embeds rows; the last one is the null class
    assert class_conditioning(tiny_diffusers_unet(num_class_embeds=11)) == (10, 10)


def test_guidance_is_one_batched_unet_call_per_step(conditional_pipeline):
    calls = []
    hook = conditional_pipeline.unet.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((args[0].shape[0], kwargs["class_labels"].tolist())),
        with_kwargs=True,
    )
    try:
        conditional_pipeline(batch_size=2, class_labels=[0, 2], guidance_scale=3.0, num_inference_steps=STEPS)
    finally:
        hook.remove()
    null = NUM_CLASSES
    assert calls == [(4, [0, 2, null, null])] * STEPS


def sample_by_hand(unet, scheduler, labels, seed, w=None, null_label=None, steps=STEPS) -> torch.Tensor:
    """Images in [0, 1] from a loop written out here: one UNet call per branch and step, eps guided as
    eps(x, null) + w (eps(x, y) - eps(x, null)) when w is given, else eps(x, y)."""
    scheduler.set_timesteps(steps)
    generator = seeded(seed)
    sample = randn_tensor((len(labels), 1, 8, 8), generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(sample, t, class_labels=labels).sample
            if w is not None:
                eps_uncond = unet(sample, t, class_labels=torch.full_like(labels, null_label)).sample
                eps = eps_uncond + w * (eps - eps_uncond)
            sample = scheduler.step(eps, t, sample, generator=generator).prev_sample
    return (sample / 2 + 0.5).clamp(0, 1)


def test_guided_samples_match_separately_computed_predictions(conditional_pipeline):
    unet, w, labels = conditional_pipeline.unet, 2.5, torch.tensor([1, 0])
    expected = sample_by_hand(unet, scratch_scheduler(), labels, seed=4, w=w, null_label=unet.null_class_label)
    images = conditional_pipeline(
        batch_size=2,
        generator=seeded(4),
        class_labels=labels,
        guidance_scale=w,
        num_inference_steps=STEPS,
        output_type="pt",
    ).images
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_guidance_scale_one_is_conditional_zero_and_no_labels_are_unconditional(conditional_pipeline):
    def run(**kwargs):
        return conditional_pipeline(
            batch_size=2, generator=seeded(9), num_inference_steps=STEPS, output_type="pt", **kwargs
        ).images

    conditional = run(class_labels=[1, 1])
    torch.testing.assert_close(run(class_labels=[1, 1], guidance_scale=1.0), conditional, rtol=0, atol=0)
    unconditional = run()
    torch.testing.assert_close(run(class_labels=[1, 1], guidance_scale=0.0), unconditional, rtol=0, atol=1e-5)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)
    assert not torch.allclose(run(class_labels=1), run(class_labels=2), atol=1e-3)
    torch.testing.assert_close(run(class_labels=1), conditional, rtol=0, atol=0)  # an int means every image


def test_diffusers_class_conditional_unet_uses_its_last_class_as_null():
    unet = tiny_diffusers_unet(num_class_embeds=NUM_CLASSES + 1)  # rows 0..2: classes, row 3: null
    pipeline = make_pipeline(unet, ddpm_scheduler())
    labels, null = torch.tensor([0, 1, 2]), NUM_CLASSES

    def run(**kwargs):
        return pipeline(batch_size=3, generator=seeded(6), num_inference_steps=STEPS, output_type="pt", **kwargs).images

    # no labels: every image is sampled with the null class, the unconditional branch itself
    unconditional = run()
    torch.testing.assert_close(unconditional, sample_by_hand(unet, ddpm_scheduler(), torch.full((3,), null), seed=6),
                               rtol=0, atol=0)
    # guidance: its unconditional branch is the last class (one batched call: float tolerance)
    guided = run(class_labels=labels, guidance_scale=2.0)
    torch.testing.assert_close(guided, sample_by_hand(unet, ddpm_scheduler(), labels, seed=6, w=2.0, null_label=null),
                               rtol=0, atol=1e-5)
    assert not torch.allclose(guided, sample_by_hand(unet, ddpm_scheduler(), labels, seed=6, w=2.0, null_label=0),
                              atol=1e-3)  # another row as "null" would give other images
    # w = 0 keeps only the unconditional branch
    torch.testing.assert_close(run(class_labels=labels, guidance_scale=0.0), unconditional, rtol=0, atol=1e-5)
    assert not torch.allclose(guided, unconditional, atol=1e-3)
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 3\)"):
        pipeline(class_labels=NUM_CLASSES, num_inference_steps=2)


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_scheduler", [ddpm_scheduler, scratch_scheduler], ids=["diffusers", "scratch"])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-2), "batch_size"),
        (dict(batch_size=1.5), "batch_size"),
        (dict(batch_size=True), "batch_size"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=NUM_TRAIN_TIMESTEPS + 1), "num_inference_steps"),
        (dict(num_inference_steps=2.0), "num_inference_steps"),
        (dict(output_type="jpg"), "output_type"),
        (dict(batch_size=2, generator=[seeded(0)] * 3), "generator"),
        (dict(class_labels=0), "unconditional"),
        (dict(guidance_scale=2.0), "unconditional"),
    ],
)
def test_bad_arguments_raise_value_errors(make_scheduler, kwargs, match):
    pipeline = make_pipeline(tiny_diffusers_unet(), make_scheduler())
    with pytest.raises(ValueError, match=match):
        pipeline(**{"num_inference_steps": STEPS, **kwargs})


def test_eta_is_refused_by_a_scheduler_whose_step_does_not_take_it():
    pipeline = make_pipeline(tiny_diffusers_unet(), ddpm_scheduler())
    with pytest.raises(ValueError, match="eta is not an argument of DDPMScheduler.step"):
        pipeline(num_inference_steps=STEPS, eta=0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_labels=NUM_CLASSES), r"class_labels must be in \[0, 3\)"),  # the null class is not a class
        (dict(class_labels=-1), "class_labels"),
        (dict(class_labels=[0, 1, 2]), "batch_size=2"),
        (dict(class_labels=[0.0, 1.0]), "integers"),
        (dict(class_labels=[[0], [1]]), "class_labels"),
        (dict(guidance_scale=2.0), "guidance_scale needs class_labels"),
        (dict(class_labels=[0, 1], guidance_scale=-1.0), "guidance_scale"),
        (dict(class_labels=[0, 1], guidance_scale=float("nan")), "guidance_scale"),
    ],
)
def test_bad_class_labels_and_guidance_raise_value_errors(conditional_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        conditional_pipeline(batch_size=2, num_inference_steps=STEPS, **kwargs)


# ---- callback_on_step_end (diffusers' pipeline convention) ------------------------------------------


SCHEDULERS = {"scratch (sync-free loop)": scratch_scheduler, "diffusers DDPM (plain loop)": ddpm_scheduler}


@pytest.mark.parametrize("make_scheduler", list(SCHEDULERS.values()), ids=list(SCHEDULERS))
@pytest.mark.parametrize("fast", [None, "bf16 autocast"])
def test_a_callback_sees_every_step_and_can_replace_the_latents(make_scheduler, fast):
    pipeline = make_pipeline(tiny_scratch_unet(), make_scheduler())
    if fast:
        pipeline.enable_fast_sampling(autocast_dtype=torch.bfloat16)
    plain = pipeline(batch_size=2, generator=seeded(0), num_inference_steps=STEPS, output_type="np").images
    seen = []

    def record(pipe, i, t, callback_kwargs):
        assert pipe is pipeline and set(callback_kwargs) == {"latents"}
        seen.append((i, int(t), callback_kwargs["latents"].clone()))
        return callback_kwargs

    observed = pipeline(batch_size=2, generator=seeded(0), num_inference_steps=STEPS, output_type="np",
                        callback_on_step_end=record).images
    np.testing.assert_array_equal(observed, plain)  # returning the latents unchanged changes nothing
    assert [i for i, _, _ in seen] == list(range(STEPS))
    assert [t for _, t, _ in seen] == pipeline.scheduler.timesteps.tolist()
    np.testing.assert_allclose(((seen[-1][2] / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy(), plain, atol=1e-6)

    def zero_first_image(pipe, i, t, callback_kwargs):
        latents = callback_kwargs["latents"].clone()
        if i == STEPS - 1:
            latents[0] = 0.0
        return {"latents": latents}

    replaced = pipeline(batch_size=2, generator=seeded(0), num_inference_steps=STEPS, output_type="np",
                        callback_on_step_end=zero_first_image, callback_on_step_end_tensor_inputs=["latents"]).images
    assert np.all(replaced[0] == 0.5) and np.array_equal(replaced[1], plain[1])  # x_0 = 0 is mid-grey


def test_a_diffusers_pipeline_callback_brings_its_tensor_inputs():
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    class CountSteps(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            calls.append(step_index)
            return callback_kwargs

    class NeedsPromptEmbeds(CountSteps):
        tensor_inputs = ["prompt_embeds"]

    calls = []
    pipeline = make_pipeline(tiny_scratch_unet(), scratch_scheduler())
    pipeline(num_inference_steps=STEPS, callback_on_step_end=MultiPipelineCallbacks([CountSteps(), CountSteps()]))
    assert calls == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs must be a list of names in \['latents'\]"):
        pipeline(num_inference_steps=STEPS, callback_on_step_end=NeedsPromptEmbeds())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(callback_on_step_end="not callable"), "callback_on_step_end must be None or a callable"),
        (dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"]),
         "callback_on_step_end_tensor_inputs must be a list of names in"),
        (dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs="latents"),
         "callback_on_step_end_tensor_inputs must be a list"),
        (dict(callback_on_step_end=lambda *a: None), "callback_on_step_end must return a dict"),
        (dict(callback_on_step_end=lambda *a: {"latents": torch.zeros(1, 1, 4, 4)}), "sample's shape"),
    ],
)
def test_bad_callbacks_raise_value_errors(kwargs, match):
    pipeline = make_pipeline(tiny_scratch_unet(), scratch_scheduler())
    with pytest.raises(ValueError, match=match):
        pipeline(num_inference_steps=STEPS, **kwargs)


# ---- images that are not numbers ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{0: float("nan")}, {1: float("inf"), 2: float("-inf")}, {}])
def test_non_finite_images_are_reported_in_a_warning(bad, caplog):
    pipeline = make_pipeline(tiny_scratch_unet(), scratch_scheduler())

    def poison(pipe, i, t, callback_kwargs):
        latents = callback_kwargs["latents"]
        for index, value in bad.items():
            latents[index, 0, 0, 0] = value
        return callback_kwargs

    with caplog.at_level("WARNING", logger="ddpm_from_scratch.pipeline"):
        pipeline(batch_size=3, num_inference_steps=STEPS, callback_on_step_end=poison, output_type="np")
    if bad:
        indices = ", ".join(str(i) for i in sorted(bad))
        assert f"{len(bad)} of 3 sampled images contain NaN or inf values (images {indices})" in caplog.text
    else:
        assert "NaN" not in caplog.text
