"""The sampling fast path: same images as the plain loop, nothing read back from the device per step.

Runs on the CPU. "Nothing read back" is checked on PyTorch's meta device, which has no data: any
`.item()`/`bool()` of a device tensor raises there, and host-to-device copies are counted with a
dispatch mode. The CUDA-graph path itself needs a GPU (tests at the end, skipped without one).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import torch
from _pipeline_fixtures import (
    NUM_TRAIN_TIMESTEPS,
    ddpm_scheduler,
    scratch_scheduler,
    seeded,
    tiny_scratch_unet,
)
from diffusers import DDPMPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ddpm_from_scratch.diffusion_math import DiffusionChain
from ddpm_from_scratch.fast_sampling import step_noise
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

STEPS = 4
def needs_cuda(test):
    """Marked `cuda` (`pytest -m cuda` selects it, as benchmarks/gpu_check.py does) and skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def make_pipeline(unet=None, scheduler=None) -> ScratchDDPMPipeline:
    pipeline = ScratchDDPMPipeline(unet=unet or tiny_scratch_unet(), scheduler=scheduler or scratch_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def images(pipeline: ScratchDDPMPipeline, generator=None, steps: int = STEPS, **kwargs) -> torch.Tensor:
    generator = seeded(11) if generator is None else generator
    return pipeline(batch_size=2, generator=generator, num_inference_steps=steps, output_type="pt", **kwargs).images


def plain_loop(unet, scheduler, generator, steps: int = STEPS, batch: int = 2) -> torch.Tensor:
    """Algorithm 2 written out with CPU timesteps, the scheduler drawing each z itself."""
    sample = randn_tensor((batch, 1, 8, 8), generator=generator)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            sample = scheduler.step(unet(sample, t).sample, t, sample, generator=generator).prev_sample
    return (sample / 2 + 0.5).clamp(0, 1)


# ---- same images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("generators", ["one", "list"])
def test_sync_free_loop_gives_the_plain_loops_images_and_leaves_the_generator_as_diffusers_does(generators):
    unet = tiny_scratch_unet()

    def generator():
        return seeded(11) if generators == "one" else [seeded(11), seeded(12)]

    expected = plain_loop(unet, scratch_scheduler(), generator())
    ours_generator = generator()
    torch.testing.assert_close(images(make_pipeline(unet), ours_generator), expected, rtol=0, atol=0)

    # noise is drawn at the same steps as in diffusers' DDPMPipeline, so the generator ends in the same state
    reference_generator = generator()
    reference = DDPMPipeline(unet=unet, scheduler=ddpm_scheduler())
    reference.set_progress_bar_config(disable=True)
    reference(batch_size=2, generator=reference_generator, num_inference_steps=STEPS, output_type="np")
    for ours, theirs in zip(tree_leaves(ours_generator), tree_leaves(reference_generator)):
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_step_noise_is_the_stream_the_scheduler_draws():
    for generator in (seeded(3), [seeded(3), seeded(4)]):
        drawn = step_noise((2, 1, 8, 8), generator, torch.device("cpu"), torch.float32)
        again = seeded(3) if isinstance(generator, torch.Generator) else [seeded(3), seeded(4)]
        torch.testing.assert_close(drawn, randn_tensor((2, 1, 8, 8), generator=again), rtol=0, atol=0)


def test_variance_noise_replaces_the_generators_draw():
    scheduler = scratch_scheduler()
    scheduler.set_timesteps(STEPS)
    t = scheduler.timesteps[1]
    sample, model_output = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    from_generator = scheduler.step(model_output, t, sample, generator=seeded(5)).prev_sample
    z = torch.randn((2, 1, 8, 8), generator=seeded(5))
    given = scheduler.step(model_output, t, sample, generator=seeded(99), variance_noise=z).prev_sample
    torch.testing.assert_close(given, from_generator, rtol=0, atol=0)
    with pytest.raises(ValueError, match="variance_noise"):
        scheduler.step(model_output, t, sample, variance_noise=torch.randn(2, 1, 4, 4))


@pytest.mark.slow
def test_compiled_unet_gives_the_same_images_and_is_compiled_once():
    pipeline = make_pipeline(tiny_scratch_unet(num_class_embeds=3))
    expected = images(pipeline, class_labels=[0, 2], guidance_scale=2.0)
    pipeline.enable_fast_sampling(compile={"backend": "aot_eager", "fullgraph": True})
    fast = images(pipeline, class_labels=[0, 2], guidance_scale=2.0)
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5)
    compiled = pipeline._sampling_unet()
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    images(pipeline, class_labels=[0, 2], guidance_scale=2.0)
    assert pipeline._sampling_unet() is compiled  # reused by later calls
    pipeline.disable_fast_sampling()
    assert pipeline._sampling_unet() is pipeline.unet


def test_bf16_autocast_runs_the_unet_in_bf16_and_keeps_the_sample_in_float32():
    pipeline = make_pipeline()
    expected = images(pipeline)
    dtypes = []
    pipeline.unet.conv_out.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    pipeline.enable_fast_sampling(autocast_dtype=torch.bfloat16)
    fast = images(pipeline)
    assert dtypes == [torch.bfloat16] * STEPS
    assert fast.dtype == torch.float32
    difference = (fast - expected).abs().max().item()
    assert 0 < difference < 0.05  # bf16 rounding in the network only: close, not equal


def test_cuda_graph_off_cuda_falls_back_to_the_plain_step_with_a_warning(caplog):
    pipeline = make_pipeline()
    expected = images(pipeline)
    pipeline.enable_fast_sampling(cuda_graph=True)
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(images(pipeline), expected, rtol=0, atol=0)
    assert "cuda_graph=True has no effect on cpu" in caplog.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compile": "yes"}, "compile must be a bool or a dict"),
        ({"cuda_graph": 1}, "cuda_graph must be a bool"),
        ({"autocast_dtype": torch.float64}, "autocast_dtype must be None or one of"),
        ({"cuda_graph": True, "compile": {"mode": "reduce-overhead"}}, "records CUDA graphs itself"),
    ],
)
def test_bad_fast_sampling_options_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_pipeline().enable_fast_sampling(**kwargs)


def test_cuda_graph_needs_a_sync_free_scheduler():
    with pytest.raises(ValueError, match="DDPMScheduler is not one"):
        make_pipeline(scheduler=ddpm_scheduler()).enable_fast_sampling(cuda_graph=True)
    pipeline = make_pipeline()
    pipeline.enable_fast_sampling(cuda_graph=True)
    pipeline.scheduler = ddpm_scheduler()  # replaced after enabling: refused at call time
    with pytest.raises(ValueError, match="DDPMScheduler is not one"):
        images(pipeline)


# ---- nothing read back from the device ------------------------------------------------------------


class HostToDeviceCopies(TorchDispatchMode):
    """Records every op that takes a CPU tensor and returns a tensor on another device."""

    def __init__(self):
        super().__init__()
        self.copies: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor) and a.device.type == "cpu"]
        moved = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor) and o.device.type != "cpu"]
        if inputs and moved:
            self.copies.append((str(func), tuple(inputs[0].shape)))
        return out


def copies_on_meta(pipeline: ScratchDDPMPipeline, steps: int, monkeypatch, **kwargs) -> list:
    """Sample on the meta device; returns the host-to-device copies made."""
    pipeline.unet.to("meta")
    # the one read-back of the call, before the loop, is the list of timesteps: give it from the CPU
    host = ScratchDDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    host.set_timesteps(steps)
    monkeypatch.setattr(ScratchDDPMPipeline, "_host_timesteps", lambda self: host.timesteps.tolist())
    with HostToDeviceCopies() as mode:
        out = pipeline(batch_size=2, generator=None, num_inference_steps=steps, output_type="pt", **kwargs).images
    assert out.device.type == "meta"
    return mode.copies


def test_the_loop_reads_nothing_back_and_copies_nothing_per_step(monkeypatch):
    few = copies_on_meta(make_pipeline(), 3, monkeypatch)
    many = copies_on_meta(make_pipeline(), 9, monkeypatch)
    # per call: the timesteps, then each of the scheduler's tables once; nothing per step
    tables = len(dataclasses.fields(DiffusionChain))
    assert [shape for _, shape in few] == [(3,)] + [(NUM_TRAIN_TIMESTEPS,)] * tables
    assert [shape for _, shape in many] == [(9,)] + [(NUM_TRAIN_TIMESTEPS,)] * tables


@pytest.mark.xfail(strict=True, raises=RuntimeError,
                   reason="ScratchUNet2DModel checks class labels with bool() in eager mode: one sync per step")
def test_class_conditional_loop_reads_nothing_back(monkeypatch):
    copies_on_meta(make_pipeline(tiny_scratch_unet(num_class_embeds=3)), 3, monkeypatch, class_labels=1)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"variance_type": "fixed_large"},
        {"variance_type": "learned_range"},
        {"prediction_type": "v_prediction", "clip_sample": False},
        {"thresholding": True},
        {"timestep_spacing": "trailing", "steps_offset": 1},
    ],
)
def test_scheduler_step_on_device_timesteps_reads_nothing_back(config):
    scheduler = ScratchDDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, **config)
    scheduler.set_timesteps(5, device="meta")
    channels = 2 if config.get("variance_type") == "learned_range" else 1
    sample = torch.randn(2, 1, 8, 8, device="meta")
    for t in scheduler.timesteps:
        model_output = torch.randn(2, channels, 8, 8, device="meta")
        sample = scheduler.step(model_output, t, sample, variance_noise=torch.randn_like(sample)).prev_sample
    assert sample.shape == (2, 1, 8, 8)


# ---- on a GPU (skipped without one) --------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("compile_kwargs", [None, {"fullgraph": True}])
def test_cuda_graph_gives_the_eager_images_on_cuda(compile_kwargs):
    """Replaying the graph gives the images of the same code run without it (compiled or not).

    Compiled code is compared with compiled code: inductor's kernels round differently from eager
    ones (on an H200, 10 steps of compiled vs eager sampling differed by 5.9e-4, as much as eager with
    cuDNN's TF32 on vs off), which says nothing about the graph.
    """
    pipeline = make_pipeline().to("cuda")
    generator = torch.Generator("cuda")
    if compile_kwargs:
        pipeline.enable_fast_sampling(compile=compile_kwargs)
    expected = images(pipeline, generator.manual_seed(0), steps=10)
    pipeline.enable_fast_sampling(cuda_graph=True, compile=compile_kwargs or False)
    torch.testing.assert_close(images(pipeline, generator.manual_seed(0), steps=10), expected, rtol=0, atol=1e-4)


@needs_cuda
def test_a_step_end_callback_runs_between_cuda_graph_replays_and_keeps_its_copies():
    pipeline = make_pipeline().to("cuda")
    generator = torch.Generator("cuda")

    def run(callback=None) -> torch.Tensor:
        return images(pipeline, generator.manual_seed(0), steps=6, callback_on_step_end=callback)

    def collect_and_zero_image_0(pipe, i, t, callback_kwargs):
        kept.append(callback_kwargs["latents"])  # kept without a copy: must not be overwritten by later replays
        latents = callback_kwargs["latents"].clone()
        latents[0] = 0.0
        return {"latents": latents}

    kept = []
    eager = run(collect_and_zero_image_0)
    eager_kept = [latents.clone() for latents in kept]
    kept.clear()
    pipeline.enable_fast_sampling(cuda_graph=True)
    graphed = run(collect_and_zero_image_0)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-4)
    assert len(kept) == 6 and len({latents.data_ptr() for latents in kept}) == 6
    for mine, reference in zip(kept, eager_kept):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-4)


@needs_cuda
def test_no_cuda_sync_per_step():
    pipeline = make_pipeline().to("cuda")

    def syncs(steps: int) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                images(pipeline, torch.Generator("cuda").manual_seed(0), steps=steps)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(3)  # warm-up (cuDNN, allocator)
    assert syncs(5) == syncs(40)  # per-call syncs only (timesteps, tables), none per step
