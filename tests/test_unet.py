"""ScratchUNet2DModel: presets, forward contract, conditioning, errors and diffusers model features.

Parity with diffusers' UNet2DModel (same function on random weights) is in test_unet_convert.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from _helpers import DIFFUSERS_CIFAR10_CONFIG, perturb_
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_from_scratch.saving.convert_unet import convert_diffusers_unet, diffusers_config_from_scratch
from ddpm_from_scratch.unet import (
    UNET_PRESETS,
    ScratchUNet2DModel,
    ScratchUNet2DOutput,
    sinusoidal_timestep_embedding,
)

TINY = dict(
    sample_size=8,
    in_channels=2,
    out_channels=2,
    block_out_channels=(8, 16),
    layers_per_block=1,
    attention_resolutions=(4,),
    norm_num_groups=4,
    dropout=0.0,
)


def tiny(**overrides) -> ScratchUNet2DModel:
    torch.manual_seed(0)
    return perturb_(ScratchUNet2DModel(**{**TINY, **overrides}), 0.05, seed=0).eval()


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- presets


def test_cifar10_preset_has_the_parameter_count_of_diffusers_ddpm_unet():
    with torch.device("meta"):  # no memory, no init cost
        ours = ScratchUNet2DModel.from_preset("cifar10")
        theirs = UNet2DModel(**DIFFUSERS_CIFAR10_CONFIG)
    assert num_params(ours) == num_params(theirs) == 35_746_307


def test_cifar10_preset_is_the_paper_model():
    cfg = UNET_PRESETS["cifar10"]
    assert cfg["block_out_channels"] == (128, 256, 256, 256)  # ch=128, mult (1, 2, 2, 2)
    assert cfg["layers_per_block"] == 2 and cfg["attention_resolutions"] == (16,) and cfg["dropout"] == 0.1
    assert (cfg["sample_size"], cfg["in_channels"], cfg["out_channels"]) == (32, 3, 3)


def test_digits_preset_is_small_and_runs_on_8x8_grey_images():
    model = ScratchUNet2DModel.from_preset("digits")
    assert 0.5e6 <= num_params(model) <= 2e6
    out = model(torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999])).sample
    assert out.shape == (3, 1, 8, 8)


def test_from_preset_overrides_and_rejects_unknown_names():
    model = ScratchUNet2DModel.from_preset("digits", num_class_embeds=10, dropout=0.0)
    assert model.config.num_class_embeds == 10 and model.config.dropout == 0.0
    with pytest.raises(ValueError, match="preset name"):
        ScratchUNet2DModel.from_preset("imagenet")
    with pytest.raises(ValueError, match="unknown config keys.*num_classes"):
        ScratchUNet2DModel.from_preset("digits", num_classes=10)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(attention_resolutions=(3,)), "attention_resolutions"),
        (dict(sample_size=6), "sample_size"),
        (dict(block_out_channels=(8, 18)), "norm_num_groups"),
        (dict(attention_head_dim=3), "attention_head_dim"),
        (dict(layers_per_block=0), "layers_per_block"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_class_embeds=0), "num_class_embeds"),
        (dict(attention_resolutions=(8,), attention_head_dim=16), r"attention_head_dim=16 .*\[8, 16\]"),
        (dict(freq_shift=2), r"freq_shift must be a number in \[0, 1\]"),
        (dict(downsample_padding=2), "downsample_padding must be 0"),
        (dict(flip_sin_to_cos="yes"), "flip_sin_to_cos must be True or False"),
        (dict(mid_block_add_attention=None), "mid_block_add_attention must be True or False"),
        (dict(center_input_sample=1), "center_input_sample must be True or False"),
    ],
)
def test_bad_config_raises_value_error_naming_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        ScratchUNet2DModel(**{**TINY, **overrides})


# ---------------------------------------------------------------- math and init


def test_timestep_embedding_is_the_papers_sinusoid():
    t = torch.tensor([0.0, 1.0, 37.5, 999.0])
    emb = sinusoidal_timestep_embedding(t, 8)
    half = 4
    freqs = [10000 ** (-i / (half - 1)) for i in range(half)]
    expected = [[math.sin(tt * f) for f in freqs] + [math.cos(tt * f) for f in freqs] for tt in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert sinusoidal_timestep_embedding(t, 7).shape == (4, 7)  # odd widths are zero-padded


@pytest.mark.parametrize("flip_sin_to_cos, freq_shift", [(True, 0), (False, 0), (True, 1), (False, 0.5)])
def test_timestep_embedding_order_and_shift_are_diffusers_options(flip_sin_to_cos, freq_shift):
    t = torch.tensor([0.0, 3.0, 999.0])
    emb = sinusoidal_timestep_embedding(t, 8, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift)
    freqs = [10000 ** (-i / (4 - freq_shift)) for i in range(4)]
    sin = [[math.sin(tt * f) for f in freqs] for tt in t.tolist()]
    cos = [[math.cos(tt * f) for f in freqs] for tt in t.tolist()]
    halves = (cos, sin) if flip_sin_to_cos else (sin, cos)
    torch.testing.assert_close(emb, torch.cat([torch.tensor(h) for h in halves], dim=1), rtol=1e-5, atol=1e-4)


def test_layout_options_change_the_network_as_documented():
    x = torch.rand(2, 2, 8, 8)
    base = tiny()
    with torch.no_grad():
        ref = base(x, 5).sample
        centred = tiny(center_input_sample=True)  # same weights (same seed), input mapped to 2x - 1 first
        torch.testing.assert_close(centred(x, 5).sample, base(2 * x - 1, 5).sample)
        padded = tiny(downsample_padding=1)
        assert padded(x, 5).sample.shape == ref.shape and not torch.allclose(padded(x, 5).sample, ref)
        flipped = tiny(flip_sin_to_cos=True, freq_shift=0)
        assert not torch.allclose(flipped(x, 5).sample, ref)
    no_mid_attention = tiny(mid_block_add_attention=False)
    assert no_mid_attention.mid_attn is None
    assert num_params(base) - num_params(no_mid_attention) == num_params(base.mid_attn)


def test_fresh_model_predicts_zero_like_the_papers_init():
    # zero-initialised output conv: the untrained network predicts eps = 0 everywhere
    model = ScratchUNet2DModel(**TINY)
    assert torch.count_nonzero(model(torch.randn(2, 2, 8, 8), 3).sample) == 0


# ---------------------------------------------------------------- forward contract


def test_timestep_forms_agree():
    model = tiny()
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        ref = model(x, torch.tensor([7, 7, 7])).sample
        for t in (7, 7.0, np.int64(7), torch.tensor(7), torch.tensor([7]), torch.tensor([7.0, 7.0, 7.0])):
            torch.testing.assert_close(model(x, t).sample, ref)
        # fractional timesteps are allowed and change the output
        assert not torch.allclose(model(x, 7.5).sample, ref)


def test_batch_elements_do_not_interact():
    model = tiny()
    x, t = torch.randn(4, 2, 8, 8), torch.tensor([1, 50, 300, 999])
    with torch.no_grad():
        batched = model(x, t).sample
        single = torch.cat([model(x[i : i + 1], t[i : i + 1]).sample for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_return_dict_false_gives_a_tuple():
    model = tiny()
    x = torch.randn(1, 2, 8, 8)
    out = model(x, 1)
    assert isinstance(out, ScratchUNet2DOutput)
    (plain,) = model(x, 1, return_dict=False)
    torch.testing.assert_close(plain, out.sample)


def test_non_square_images_work():
    model = tiny(sample_size=(8, 16))
    assert model(torch.randn(1, 2, 8, 16), 1).sample.shape == (1, 2, 8, 16)


def test_learned_range_output_has_twice_the_channels():
    model = tiny(out_channels=4)
    assert model.predicts_variance and not tiny().predicts_variance
    assert model(torch.randn(2, 2, 8, 8), 1).sample.shape == (2, 4, 8, 8)


def test_class_conditioning_with_a_null_class():
    model = tiny(num_class_embeds=3)
    assert model.null_class_label == 3 and tiny().null_class_label is None
    assert model.class_embed.num_embeddings == 4  # 3 classes + the null class
    x = torch.randn(1, 2, 8, 8).expand(4, -1, -1, -1)
    with torch.no_grad():
        out = model(x, 5, class_labels=torch.tensor([0, 1, 2, model.null_class_label])).sample
        assert model(x[:1], 5, class_labels=2).sample.shape == (1, 2, 8, 8)  # a Python int label
    assert all(not torch.allclose(out[i], out[j]) for i in range(4) for j in range(i))


def test_multi_head_attention_runs_and_differs_from_one_head():
    x = torch.randn(2, 2, 8, 8)
    one, four = tiny(), tiny(attention_head_dim=4)
    four.load_state_dict(one.state_dict())  # same weights, only the head split differs
    with torch.no_grad():
        assert not torch.allclose(one(x, 3).sample, four(x, 3).sample)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m(torch.randn(2, 3, 8, 8), 1), "in_channels"),
        (lambda m: m(torch.randn(2, 2, 8), 1), "sample"),
        (lambda m: m(torch.randn(2, 2, 7, 8), 1), "divisible"),
        (lambda m: m(torch.randn(2, 2, 8, 11), 1), "divisible"),
        (lambda m: m(torch.randn(2, 2, 8, 8), torch.tensor([1, 2, 3])), "timestep"),
        (lambda m: m(torch.randn(2, 2, 8, 8), torch.ones(2, 1)), "timestep"),
        (lambda m: m(torch.randn(2, 2, 8, 8), "1"), "timestep"),
        (lambda m: m(torch.randn(2, 2, 8, 8), 1, class_labels=torch.tensor([0, 1])), "class_labels.*unconditional"),
        (lambda m: m(torch.ones(2, 2, 8, 8, dtype=torch.int64), 1), "sample must be a floating-point tensor"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


@pytest.mark.parametrize(
    "labels, match",
    [
        (None, "class_labels are required"),
        (torch.tensor([0, 4]), r"class_labels must be in \[0, 3\]"),
        (torch.tensor([-1, 0]), r"class_labels must be in \[0, 3\]"),
        (torch.tensor([0.0, 1.0]), "class_labels must be an integer"),
        (torch.tensor([0, 1, 2]), "class_labels"),
    ],
)
def test_bad_class_labels_raise_value_error(labels, match):
    with pytest.raises(ValueError, match=match):
        tiny(num_class_embeds=3)(torch.randn(2, 2, 8, 8), 1, class_labels=labels)


# ---------------------------------------------------------------- diffusers model features


def test_save_and_load_with_safetensors(tmp_path):
    model = tiny(num_class_embeds=3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = ScratchUNet2DModel.from_pretrained(tmp_path).eval()
    public = lambda cfg: {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if not k.startswith("_")}
    assert public(loaded.config) == public(model.config)
    x, y = torch.randn(2, 2, 8, 8), torch.tensor([0, 3])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 4, y).sample, model(x, 4, y).sample, rtol=0, atol=0)


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's bytes, which safetensors never checks
    path.write_bytes(bytes(data))


def test_a_saved_model_folder_records_its_weights_in_the_pipelines_manifest_format(tmp_path):
    import json

    from ddpm_from_scratch.saving.checksums import verify_manifest

    tiny().save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == 1 and set(manifest["files"]) == {weights.name}
    assert verify_manifest(tmp_path) == []  # the package's reader takes the model's manifest as it is
    _flip_last_byte(weights)
    assert verify_manifest(tmp_path) == [f"{weights.name} does not match its SHA-256 in the manifest (the file is damaged)"]
    with pytest.raises(OSError, match=rf"weights file '{re.escape(str(weights))}' is corrupted: .*manifest\.json"):
        ScratchUNet2DModel.from_pretrained(tmp_path)


def test_a_pipelines_unet_loaded_alone_is_checked_against_the_pipelines_manifest(tmp_path):
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    ScratchDDPMPipeline(unet=tiny(), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path)
    assert not (tmp_path / "unet" / "manifest.json").exists()  # the pipeline's manifest records the UNet's weights
    ScratchUNet2DModel.from_pretrained(tmp_path, subfolder="unet")
    _flip_last_byte(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(OSError, match=r"unet/diffusion_pytorch_model\.safetensors' is corrupted"):
        ScratchUNet2DModel.from_pretrained(tmp_path, subfolder="unet")


def test_a_missing_weights_file_is_named_with_its_folder(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(OSError, match=rf"model folder '{re.escape(str(tmp_path))}' has no weights: "
                                      r"expected diffusion_pytorch_model\.safetensors"):
        ScratchUNet2DModel.from_pretrained(tmp_path)


def test_gradient_checkpointing_recomputes_blocks_and_gives_the_same_gradients():
    model = tiny(dropout=0.2).train()  # dropout: the recomputation must replay the same masks
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3, 900])

    def grads_and_block_calls():
        calls = []
        # a pre-hook: non-reentrant checkpointing stops the recomputation early, before forward hooks
        hook = model.mid_res_in.register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        model.zero_grad()
        model(x, t).sample.square().mean().backward()
        hook.remove()
        return [p.grad.clone() for p in model.parameters()], len(calls)

    plain, plain_calls = grads_and_block_calls()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    ckpt, ckpt_calls = grads_and_block_calls()
    assert (plain_calls, ckpt_calls) == (1, 2)  # the block ran again during backward
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channels_last_gives_the_same_output():
    model = tiny()
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        ref = model(x, 3).sample
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last), 3).sample
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_and_bf16_weights():
    model = tiny(num_class_embeds=2)
    x, y = torch.randn(2, 2, 8, 8), torch.tensor([0, 2])
    with torch.no_grad():
        ref = model(x, 500, y).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x, 500, y).sample
        half = model.to(torch.bfloat16)(x.bfloat16(), 500, y).sample
    assert half.dtype == torch.bfloat16
    for out in (auto, half):
        assert torch.isfinite(out).all()
        assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_and_backward():
    # backend aot_eager: dynamo must capture the whole graph (fullgraph=True fails on any graph
    # break) and AOTAutograd traces the backward; inductor's C++ codegen takes minutes on 2 cores
    torch._dynamo.reset()
    model = tiny(num_class_embeds=3)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(2, 2, 8, 8), torch.tensor([1, 3])
    out = compiled(x, torch.tensor([5, 9]), class_labels=y).sample
    out.square().mean().backward()
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, torch.tensor([5, 9]), class_labels=y).sample)
        torch.testing.assert_close(compiled(x, 5, class_labels=y).sample, model(x, 5, class_labels=y).sample)


@pytest.mark.parametrize("variance_type, out_channels", [("fixed_small", 1), ("learned_range", 2)])
def test_drops_into_diffusers_ddpm_pipeline(variance_type, out_channels):
    """diffusers' own DDPMPipeline samples the same images with our UNet as with its UNet2DModel holding
    the same weights (the UNets agree to ~1e-6 per call: test_unet_convert.py)."""
    torch.manual_seed(0)
    config = diffusers_config_from_scratch({**TINY, "in_channels": 1, "out_channels": out_channels})
    theirs = perturb_(UNet2DModel(**config), 0.05).eval()
    ours = convert_diffusers_unet(theirs)

    def images(unet):
        scheduler = DDPMScheduler(num_train_timesteps=10, variance_type=variance_type)
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images

    expected, actual = images(theirs), images(ours)
    assert actual.shape == (2, 8, 8, 1) and expected.std() > 0.05  # not a blank image
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
