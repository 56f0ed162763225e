"""convert.py: a diffusers UNet2DModel in the DDPM layout -> ScratchUNet2DModel computing the same function.

Equal outputs on random weights prove that ScratchUNet2DModel is the same network as diffusers' DDPM
UNet (and so the paper's, whose checkpoints diffusers loads), and that published weights can be used.
"""

from __future__ import annotations

import re

import pytest
import torch
from _unet_fixtures import DIFFUSERS_CIFAR10_CONFIG
from diffusers import UNet2DModel

from ddpm_from_scratch.cli.convert import main
from ddpm_from_scratch.convert import (
    convert_diffusers_unet,
    convert_state_dict,
    diffusers_config_from_scratch,
    scratch_config_from_diffusers,
)
from ddpm_from_scratch.unet import UNET_PRESETS, ScratchUNet2DModel


# a small DDPM-layout config: 3 levels, attention at the middle one, 1 head, "SAME" downsampling
TINY_DIFFUSERS = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=None,
    norm_num_groups=8,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
)


def random_diffusers_unet(**overrides) -> UNet2DModel:
    torch.manual_seed(0)
    model = UNet2DModel(**{**TINY_DIFFUSERS, **overrides})
    with torch.no_grad():  # perturb all weights, GroupNorm affine parameters included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def assert_same_function(theirs: UNet2DModel, ours: ScratchUNet2DModel, class_labels=None) -> None:
    cfg = theirs.config
    torch.manual_seed(1)
    x = torch.randn(3, cfg.in_channels, 16, 16)
    for t in (torch.tensor([0, 437, 999]), 250):
        with torch.no_grad():
            expected = theirs(x, t, class_labels=class_labels).sample
            actual = ours(x, t, class_labels=class_labels).sample
        assert expected.abs().max() > 0.1  # not a trivially-zero comparison
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(out_channels=6),  # learned_range: eps and the variance interpolation v
        dict(attention_head_dim=8),  # multi-head attention
        dict(down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"), layers_per_block=1, dropout=0.1),
    ],
)
def test_converted_model_computes_the_same_function(overrides):
    theirs = random_diffusers_unet(**overrides)
    assert_same_function(theirs, convert_diffusers_unet(theirs))


def test_class_conditional_model_converts_with_a_zero_null_class():
    theirs = random_diffusers_unet(num_class_embeds=4)
    ours = convert_diffusers_unet(theirs)
    assert ours.null_class_label == 4
    assert torch.count_nonzero(ours.class_embed.weight[4]) == 0  # the null class adds nothing to temb
    assert_same_function(theirs, ours, class_labels=torch.tensor([0, 3, 1]))


def test_state_dict_and_config_path_and_legacy_attention_names():
    theirs = random_diffusers_unet()
    # checkpoints saved before diffusers' Attention refactor name the projections query/key/value/proj_attn
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state_dict = {
        re.sub(r"\.(to_q|to_k|to_v|to_out\.0)\.", lambda m: f".{legacy[m.group(1)]}.", k): v
        for k, v in theirs.state_dict().items()
    }
    assert any(".query." in k for k in state_dict)
    assert_same_function(theirs, convert_diffusers_unet(state_dict, config=dict(theirs.config)))


def test_full_cifar10_checkpoint_layout_maps_onto_the_cifar10_preset():
    # google/ddpm-cifar10-32's config; meta tensors: the shape mapping of all 35.7M parameters, no memory
    assert scratch_config_from_diffusers(DIFFUSERS_CIFAR10_CONFIG) == {
        **UNET_PRESETS["cifar10"], "attention_head_dim": None, "norm_eps": 1e-6,
        "num_class_embeds": None, "time_embedding_dim": None,
    }
    with torch.device("meta"):
        theirs = UNet2DModel(**DIFFUSERS_CIFAR10_CONFIG)
        ours = ScratchUNet2DModel.from_preset("cifar10")
    converted = convert_state_dict(theirs.state_dict())
    expected = ours.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert sum(v.numel() for v in converted.values()) == 35_746_307


def test_digits_preset_equals_its_diffusers_equivalent():
    # the reverse config mapping (used by benchmarks/bench_unet.py) builds the same network
    config = diffusers_config_from_scratch(UNET_PRESETS["digits"])
    assert {**UNET_PRESETS["digits"], **scratch_config_from_diffusers(config)} == scratch_config_from_diffusers(config)
    theirs = random_diffusers_unet(**config)
    ours = convert_diffusers_unet(theirs)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, 321).sample, theirs(x, 321).sample, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(flip_sin_to_cos=True), "flip_sin_to_cos"),
        (dict(freq_shift=0), "freq_shift"),
        (dict(downsample_padding=1), "downsample_padding"),
        (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
        (dict(down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")), "same resolutions"),
        (dict(down_block_types=("DownBlock2D", "SkipDownBlock2D", "DownBlock2D")), "down_block_types"),
    ],
)
def test_non_ddpm_layouts_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        scratch_config_from_diffusers({**TINY_DIFFUSERS, **overrides})


def test_mismatched_state_dict_is_refused():
    state_dict = random_diffusers_unet().state_dict()
    with pytest.raises(ValueError, match="config is required"):
        convert_diffusers_unet(state_dict)
    with pytest.raises(ValueError, match="missing"):
        convert_diffusers_unet({k: v for k, v in state_dict.items() if "conv_out" not in k}, config=TINY_DIFFUSERS)
    with pytest.raises(ValueError, match="not part of the DDPM"):
        convert_diffusers_unet({**state_dict, "extra.weight": torch.zeros(1)}, config=TINY_DIFFUSERS)


def test_command_line_converts_a_saved_pipeline_folder(tmp_path):
    theirs = random_diffusers_unet()
    theirs.save_pretrained(tmp_path / "pipe" / "unet")
    assert main([str(tmp_path / "pipe"), str(tmp_path / "scratch")]) == 0
    assert_same_function(theirs, ScratchUNet2DModel.from_pretrained(tmp_path / "scratch").eval())
