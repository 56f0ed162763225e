"""convert.py: a diffusers UNet2DModel in the DDPM layout -> ScratchUNet2DModel computing the same function.

Equal outputs on random weights prove that ScratchUNet2DModel is the same network as diffusers' DDPM
UNet (and so the paper's, whose checkpoints diffusers loads), and that published weights can be used.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from _helpers import perturb_
from diffusers import UNet2DModel

from ddpm_from_scratch.cli.convert import main
from ddpm_from_scratch.saving.convert_unet import (
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
    """A diffusers UNet2DModel: TINY_DIFFUSERS with `overrides` (pass `base={}` for UNet2DModel's defaults)."""
    base = overrides.pop("base", TINY_DIFFUSERS)
    torch.manual_seed(0)
    return perturb_(UNet2DModel(**{**base, **overrides}), 0.05).eval()


def assert_same_function(theirs: UNet2DModel, ours: ScratchUNet2DModel, class_labels=None, size: int = 16) -> float:
    """Both models on the same (3, C, size, size) input at several timesteps; returns the max abs difference.

    float32 models must agree within 1e-5, float64 ones within 1e-10.
    """
    cfg = theirs.config
    torch.manual_seed(1)
    x = torch.randn(3, cfg.in_channels, size, size, dtype=theirs.dtype)
    atol = 1e-10 if theirs.dtype == torch.float64 else 1e-5
    worst = 0.0
    for t in (torch.tensor([0, 437, 999]), 250):
        with torch.no_grad():
            expected = theirs(x, t, class_labels=class_labels).sample
            actual = ours(x, t, class_labels=class_labels).sample
        assert expected.abs().max() > 0.1  # not a trivially-zero comparison
        torch.testing.assert_close(actual, expected, rtol=0, atol=atol)
        worst = max(worst, (actual - expected).abs().max().item())
    return worst


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(out_channels=6),  # learned_range: eps and the variance interpolation v
        dict(attention_head_dim=8),  # multi-head attention
        dict(down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"), layers_per_block=1, dropout=0.1),
        dict(flip_sin_to_cos=True),  # cos half first
        dict(freq_shift=0),  # frequencies max_period^(-i / half)
        dict(downsample_padding=1),  # symmetric padding of the stride-2 conv
        dict(add_attention=False),  # no attention in the middle block
        dict(center_input_sample=True),  # x -> 2x - 1 first
        dict(act_fn="swish", norm_eps=1e-5, time_embedding_dim=48, attn_norm_num_groups=8),
        dict(sample_size=(16, 8)),  # the config's size only places attention; the input stays 16x16
    ],
)
def test_converted_model_computes_the_same_function(overrides):
    theirs = random_diffusers_unet(**overrides)
    assert_same_function(theirs, convert_diffusers_unet(theirs))


# what diffusers users build: the configs of diffusers' own examples and tests
UNET2D_DEFAULTS_32 = dict(sample_size=32)  # 4 levels (224, 448, 672, 896), attention at 3, 8-dim heads
TRAIN_UNCONDITIONAL = dict(  # examples/unconditional_image_generation/train_unconditional.py, 128 px
    sample_size=128,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)
DDPM_PIPELINE_TEST_UNET = dict(  # tests/pipelines/ddpm/test_ddpm.py's dummy_uncond_unet (recent diffusers)
    block_out_channels=(4, 8),
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=8,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
DDPM_PIPELINE_TEST_UNET_OLD = dict(  # the same test in older diffusers releases
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)


def scaled_widths(config: dict, divisor: int) -> dict:
    """`config` with block_out_channels divided by `divisor`: the same blocks, cheap on a CPU."""
    channels = config.get("block_out_channels", (224, 448, 672, 896))  # UNet2DModel's default
    return {**config, "block_out_channels": tuple(c // divisor for c in channels)}


@pytest.mark.parametrize(
    "config, size",
    [
        # widths / 7: (32, 64, 96, 128); default 32 groups and 8-dim heads (4, 8, 12, 16 heads)
        pytest.param(scaled_widths(UNET2D_DEFAULTS_32, 7), 32, id="UNet2DModel-defaults"),
        # widths / 4: (32, 32, 64, 64, 128, 128), on a 32x32 input instead of 128x128 (attention at 2x2)
        pytest.param(scaled_widths(TRAIN_UNCONDITIONAL, 4), 32, id="train_unconditional"),
        pytest.param(DDPM_PIPELINE_TEST_UNET, 8, id="ddpm-pipeline-test"),
        pytest.param(DDPM_PIPELINE_TEST_UNET_OLD, 16, id="ddpm-pipeline-test-old"),
    ],
)
def test_diffusers_default_layouts_convert(config, size):
    theirs = random_diffusers_unet(base={}, **config)
    ours = convert_diffusers_unet(theirs)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert_same_function(theirs, ours, size=size)
    # the reverse mapping names the same network
    assert scratch_config_from_diffusers(diffusers_config_from_scratch(ours.config)) == scratch_config_from_diffusers(
        theirs.config
    )


@pytest.mark.parametrize(
    "config, parameters",
    [(UNET2D_DEFAULTS_32, 274_056_163), (TRAIN_UNCONDITIONAL, 113_673_219)],
    ids=["UNet2DModel-defaults", "train_unconditional"],
)
def test_full_width_default_layouts_map_one_to_one(config, parameters):
    # meta tensors: every parameter of the full-width networks finds its place, at no memory cost
    with torch.device("meta"):
        theirs = UNet2DModel(**config)
        ours = ScratchUNet2DModel(**scratch_config_from_diffusers(theirs.config))
    converted = convert_state_dict(theirs.state_dict())
    expected = ours.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert sum(v.numel() for v in converted.values()) == parameters


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(time_embedding_type="fourier"), r"time_embedding_type='fourier'.*allowed values: \['positional'\]"),
        (dict(time_embedding_type="learned", num_train_timesteps=10), "time_embedding_type='learned'"),
        (dict(resnet_time_scale_shift="scale_shift"), r"resnet_time_scale_shift.*\['default'\]"),
        (dict(act_fn="gelu"), r"act_fn='gelu'.*\['silu', 'swish'\]"),
        (dict(mid_block_type=None), "mid_block_type=None"),
        (dict(mid_block_scale_factor=2.0), "mid_block_scale_factor"),
        (dict(downsample_type="resnet"), r"downsample_type='resnet'.*\['conv'\]"),
        (dict(upsample_type="resnet"), "upsample_type='resnet'"),
        (dict(class_embed_type="timestep"), "class_embed_type='timestep'"),
        (dict(attn_norm_num_groups=4), "attn_norm_num_groups=4"),
        (dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")),
         r"down_block_types contains 'CrossAttnDownBlock2D'.*\['DownBlock2D', 'AttnDownBlock2D'\]"),
        (dict(up_block_types=("UpBlock2D", "SkipUpBlock2D", "UpBlock2D")), "up_block_types contains 'SkipUpBlock2D'"),
        (dict(down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")), "same resolutions"),
        (dict(down_block_types=("DownBlock2D", "AttnDownBlock2D")), "same length"),
        (dict(attention_head_dim=12), r"attention_head_dim=12 .*\[32\]"),
        (dict(freq_shift=2), r"freq_shift must be a number in \[0, 1\]"),
        (dict(downsample_padding=2), "downsample_padding must be 0"),
        (dict(sample_size=None), "sample_size=None"),
    ],
)
def test_layouts_outside_the_ddpm_family_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        scratch_config_from_diffusers({**TINY_DIFFUSERS, **overrides})


def test_head_dim_only_needs_to_divide_the_levels_with_attention():
    # (4, 8) with 8-dim heads: the 4-channel level has no attention, so diffusers builds it and so do we
    config = scratch_config_from_diffusers({**DDPM_PIPELINE_TEST_UNET, "attention_head_dim": 8})
    assert config["attention_head_dim"] == 8 and config["attention_resolutions"] == (4,)
    with pytest.raises(ValueError, match="attention_head_dim=8"):  # but not with attention at that level
        ScratchUNet2DModel(**{**config, "attention_resolutions": (8, 4)})


@pytest.mark.parametrize(
    "scratch_overrides",
    [
        {},
        dict(flip_sin_to_cos=True, freq_shift=0, downsample_padding=1),
        dict(mid_block_add_attention=False, center_input_sample=True, attention_head_dim=16, num_class_embeds=3),
    ],
)
def test_reverse_mapping_builds_the_same_network(scratch_overrides):
    scratch = {**UNET_PRESETS["digits"], **scratch_overrides}
    config = diffusers_config_from_scratch(scratch)
    defaults = {k: p.default for k, p in inspect.signature(ScratchUNet2DModel.__init__).parameters.items() if k != "self"}
    assert scratch_config_from_diffusers(config) == {**defaults, **scratch}
    theirs = random_diffusers_unet(base={}, **config)
    ours = convert_diffusers_unet(theirs)
    labels = torch.tensor([0, 2, 1]) if scratch.get("num_class_embeds") else None
    assert_same_function(theirs, ours, class_labels=labels, size=8)


def test_mismatched_state_dict_is_refused():
    state_dict = random_diffusers_unet().state_dict()
    with pytest.raises(ValueError, match="config is required"):
        convert_diffusers_unet(state_dict)
    with pytest.raises(ValueError, match="missing"):
        convert_diffusers_unet({k: v for k, v in state_dict.items() if "conv_out" not in k}, config=TINY_DIFFUSERS)
    with pytest.raises(ValueError, match="not part of the DDPM"):
        convert_diffusers_unet({**state_dict, "extra.weight": torch.zeros(1)}, config=TINY_DIFFUSERS)


def test_command_line_converts_a_saved_pipeline_folder(tmp_path, capsys):
    theirs = random_diffusers_unet()
    theirs.save_pretrained(tmp_path / "pipe" / "unet")
    assert main([str(tmp_path / "pipe"), str(tmp_path / "scratch")]) == 0
    assert "wrote ScratchUNet2DModel" in capsys.readouterr().out
    assert_same_function(theirs, ScratchUNet2DModel.from_pretrained(tmp_path / "scratch").eval())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "scratch"]  # no staging folder left


def test_command_line_reads_a_model_folder_an_explicit_subfolder_bin_weights_and_an_empty_output_folder(tmp_path):
    theirs = random_diffusers_unet()
    theirs.save_pretrained(tmp_path / "model")
    theirs.save_pretrained(tmp_path / "pipe" / "unet_ema")
    theirs.save_pretrained(tmp_path / "bin_only", safe_serialization=False)  # read with weights_only=True
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "model"), str(tmp_path / "empty")]) == 0
    assert main([str(tmp_path / "pipe"), str(tmp_path / "new" / "nested"), "--subfolder", "unet_ema"]) == 0
    assert main([str(tmp_path / "bin_only"), str(tmp_path / "from_bin")]) == 0
    for out in ("empty", "new/nested", "from_bin"):
        assert_same_function(theirs, ScratchUNet2DModel.from_pretrained(tmp_path / out).eval())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Source folders for the bad-argument cases, built once; `a_file.txt` stands for any existing file."""
    root = tmp_path_factory.mktemp("sources")
    random_diffusers_unet().save_pretrained(root / "good")
    (root / "config_only").mkdir()
    (root / "config_only" / "config.json").write_text(json.dumps(dict(random_diffusers_unet().config)))
    random_diffusers_unet(resnet_time_scale_shift="scale_shift").save_pretrained(root / "scale_shift")
    tiny = dict(sample_size=8, block_out_channels=(8,), attention_resolutions=(), norm_num_groups=4)
    ScratchUNet2DModel(**tiny).save_pretrained(root / "scratch_model")
    (root / "no_config").mkdir()
    (root / "a_file.txt").write_text("keep me")
    return root


BAD_ARGUMENTS = {  # case -> (argv with {src} = the sources folder, {out} = a fresh folder; the message)
    "missing source": (["{src}/missing", "{out}/model"], "source '.*missing' does not exist"),
    "source is a file": (["{src}/a_file.txt", "{out}/model"], "source .* is a file"),
    "no config.json": (["{src}/no_config", "{out}/model"], "source .* has no config.json"),
    "no weights": (["{src}/config_only", "{out}/model"], "has no weights file: neither diffusion_pytorch_model.safetensors"),
    "not a UNet2DModel": (["{src}/scratch_model", "{out}/model"], "holds a ScratchUNet2DModel"),
    "non-DDPM layout": (["{src}/scale_shift", "{out}/model"], "source .* does not convert: .*resnet_time_scale_shift"),
    "bad subfolder": (["{src}/good", "{out}/model", "--subfolder", "unet"], "--subfolder 'unet': .* is not a folder"),
    "output is a file": (["{src}/good", "{src}/a_file.txt"], "output .* is an existing file"),
    "output not empty": (["{src}/good", "{src}/no_config/.."], "output .* is a folder that is not empty"),
    "output unwritable": (["{src}/good", "{src}/a_file.txt/model"], "output .* cannot be created"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_command_line_bad_arguments_give_one_error_line_and_status_2(case, sources, tmp_path, capsys):
    argv, message = BAD_ARGUMENTS[case]
    argv = [a.format(src=sources, out=tmp_path) for a in argv]
    before = sorted(str(p) for p in sources.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpm-convert-unet: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    # nothing written, nothing left behind
    assert sorted(str(p) for p in sources.rglob("*")) == before and not any(tmp_path.iterdir())
    assert (sources / "a_file.txt").read_text() == "keep me"


def test_command_line_hub_failure_is_one_error_line(tmp_path, capsys, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nto load this model.")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", unreachable)
    with pytest.raises(SystemExit) as exit_info:
        main(["someone/no-such-model", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source 'someone/no-such-model' is not a local folder" in err
    assert "couldn't connect" in err and not (tmp_path / "out").exists()


def test_a_failed_save_leaves_no_half_written_model(tmp_path, capsys, monkeypatch):
    random_diffusers_unet().save_pretrained(tmp_path / "model")

    def save_half_then_fail(self, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ScratchUNet2DModel, "save_pretrained", save_half_then_fail)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "model"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"ddpm-convert-unet: error: output .*out' cannot be written: .*No space left on device\n", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no output, no staging folder
