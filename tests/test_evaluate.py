"""ddpm-evaluate on tiny pipelines saved here (T = 10, a few samples): the table, the JSON, the loaders.

The digits classifier is trained once per session into a temporary cache (conftest.py; seconds).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _helpers import perturb_
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_from_scratch.cli.evaluate import main
from ddpm_from_scratch.digits.data import held_out_digits
from ddpm_from_scratch.digits.evaluation import SampleLabels, evaluate_pipeline, sample_digits
from ddpm_from_scratch.saving.folder import load_any_pipeline
from ddpm_from_scratch.sampling.images import uint8_to_model_range, unit_range_to_uint8
from ddpm_from_scratch.bound.likelihood import nll_bits_per_dim
from ddpm_from_scratch.editing import ScratchInpaintPipeline
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import ScratchUNet2DModel

T = 10


def tiny_unet(in_channels=1, out_channels=2, sample_size=8):
    torch.manual_seed(0)
    unet = ScratchUNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=out_channels, block_out_channels=(8, 16),
        layers_per_block=1, attention_resolutions=(), dropout=0.0, norm_num_groups=4,
    )
    return perturb_(unet, 0.1).eval()  # random (not zero) output layers: the output depends on the input


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """A learned-variance (learned_range, out_channels = 2) pipeline with T = 10, saved with its code."""
    folder = tmp_path_factory.mktemp("pipeline") / "tiny-digits"
    scheduler = ScratchDDPMScheduler(num_train_timesteps=T, beta_end=0.2, variance_type="learned_range")
    ScratchDDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cache_dir(digits_classifier_cache):
    return digits_classifier_cache  # the session's classifier cache (conftest.py): trained once


def test_command_prints_one_table_and_writes_json(saved_pipeline, cache_dir, tmp_path, capsys):
    out = tmp_path / "results" / "eval.json"
    argv = [str(saved_pipeline), "--num-samples", "24", "--nll-images", "12", "--batch-size", "16",
            "--json", str(out), "--no-progress", "--classifier-cache-dir", str(cache_dir)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for expected in ("T = 10 training steps", "variance learned_range", "NLL bound on 12 held-out digits, bits/dim", "sampling steps", "Frechet distance to held-out", "classifier score",
                     "near-copy fraction", "real held-out digits", "KID to held-out", "precision (k = 5",
                     "recall (k = 5", "density (k = 5", "coverage (k = 5", "24 train digits vs held-out, 10 draws"):
        assert expected in printed, expected

    data = json.loads(out.read_text())
    assert data["num_train_timesteps"] == T and data["num_inference_steps"] == T and data["seed"] == 0
    nll = data["nll"]
    assert nll["num_images"] == 12 and nll["num_dims"] == 64 and len(nll["terms_per_timestep_bpd"]) == T
    assert math.isfinite(nll["bits_per_dim"]) and nll["bits_per_dim"] > 0
    assert nll["bits_per_dim"] == pytest.approx(nll["prior_bpd"] + sum(nll["terms_per_timestep_bpd"]))
    quality = data["sample_quality"]
    assert quality["samples"]["num_images"] == 24 and quality["reference"]["num_images"] == 360
    # the real-vs-real row: 24 train digits against the held-out split, 10 draws, for every feature-space figure
    reference = quality["reference"]
    assert reference["fd_num_images"] == 24 and reference["draws"] == 10
    for figure in ("frechet_distance", "kid", "precision", "recall", "density", "coverage"):
        assert math.isfinite(quality["samples"][figure]) and reference[f"{figure}_std"] > 0, figure
    assert quality["samples"]["kid_subset_size"] == reference["kid_subset_size"] == 12
    assert f"{nll['bits_per_dim']:.3f}" in printed and f"{quality['samples']['frechet_distance']:.3f}" in printed

    # the printed bound is the library's, on the first 12 held-out digits with a generator seeded --seed
    pipeline = ScratchDDPMPipeline.from_pretrained(saved_pipeline)
    direct = nll_bits_per_dim(
        pipeline.unet, pipeline.scheduler, uint8_to_model_range(held_out_digits()[:12]).unsqueeze(1),
        generator=torch.Generator().manual_seed(0), batch_size=16, progress=False,
    )
    assert direct.bits_per_dim == pytest.approx(nll["bits_per_dim"], rel=1e-12)


def test_samples_do_not_depend_on_the_batch_size(saved_pipeline):
    pipeline = ScratchDDPMPipeline.from_pretrained(saved_pipeline)
    pipeline.set_progress_bar_config(disable=True)
    one_batch = sample_digits(pipeline, 5, num_inference_steps=4, batch_size=5, seed=3)
    three_batches = sample_digits(pipeline, 5, num_inference_steps=4, batch_size=2, seed=3)
    assert one_batch.dtype == np.uint8 and one_batch.shape == (5, 8, 8)
    np.testing.assert_array_equal(one_batch, three_batches)


def test_variance_type_override_changes_the_bound(saved_pipeline, tmp_path):
    results = {}
    for variance in ("saved", "fixed_large"):
        out = tmp_path / f"{variance}.json"
        main([str(saved_pipeline), "--num-samples", "0", "--nll-images", "4", "--variance-type", variance,
              "--json", str(out), "--no-progress"])
        results[variance] = json.loads(out.read_text())
    assert results["saved"]["variance_type"] == "learned_range"
    assert results["fixed_large"]["variance_type"] == "fixed_large"
    assert results["saved"]["sample_quality"] is None and results["saved"]["num_inference_steps"] is None
    assert results["saved"]["nll"]["bits_per_dim"] != results["fixed_large"]["nll"]["bits_per_dim"]


def save_stock_pipeline(folder):
    """A tiny diffusers DDPMPipeline (diffusers' own UNet2DModel), saved to ``folder``."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(folder)


def test_a_stock_diffusers_pipeline_folder_is_evaluated_too(tmp_path, capsys):
    save_stock_pipeline(tmp_path / "stock")
    assert isinstance(load_any_pipeline(tmp_path / "stock"), DDPMPipeline)
    assert main([str(tmp_path / "stock"), "--num-samples", "0", "--nll-images", "3", "--no-progress"]) == 0
    assert "NLL bound on 3 held-out digits" in capsys.readouterr().out


def test_a_stock_pipeline_takes_the_models_loading_keywords_and_refuses_others(saved_pipeline, tmp_path):
    save_stock_pipeline(tmp_path / "stock")
    assert load_any_pipeline(tmp_path / "stock", torch_dtype=torch.float64).unet.dtype == torch.float64
    for folder in (tmp_path / "stock", saved_pipeline):  # the editing pipelines keep the dtype asked for
        assert ScratchInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float64).unet.dtype == torch.float64
    with pytest.raises(ValueError, match=r"unexpected keyword arguments \['default_eta'\] for the diffusers pipeline"):
        load_any_pipeline(tmp_path / "stock", default_eta=0.5)


MISTAKES = {
    "missing folder": (lambda saved, tmp: [str(tmp / "missing")], "folder '{tmp}/missing' does not exist"),
    "nothing to evaluate": (lambda saved, tmp: [str(saved), "--num-samples", "0", "--nll-images", "0"],
                            "nothing to evaluate"),
    "one sample": (lambda saved, tmp: [str(saved), "--num-samples", "1"], "--num-samples must be 0 (skip) or >= 2"),
    "negative samples": (lambda saved, tmp: [str(saved), "--num-samples", "-3"], "must be an integer >= 0"),
    "json is a folder": (lambda saved, tmp: [str(saved), "--json", str(tmp)], "--json '{tmp}' is a folder"),
    "json not .json": (lambda saved, tmp: [str(saved), "--json", str(tmp / "out.txt")], "must end in one of .json"),
    "unknown device": (lambda saved, tmp: [str(saved), "--device", "gpu"], "--device 'gpu' is not a torch device"),
    "too many steps": (lambda saved, tmp: [str(saved), "--num-inference-steps", "11"], "num_inference_steps=11"),
    "rgb model": (lambda saved, tmp: [str(_rgb_pipeline(tmp))], "1x8x8 digits"),
    "labels of an unconditional model": (lambda saved, tmp: [str(saved), "--class-labels", "balanced"],
                                         "class_labels='balanced' needs a class-conditional UNet"),
    "guidance without labels": (lambda saved, tmp: [str(saved), "--guidance-scale", "2"],
                                "guidance_scale needs class_labels='balanced'"),
    "negative guidance": (lambda saved, tmp: [str(saved), "--class-labels", "balanced", "--guidance-scale", "-1"],
                          "guidance_scale must be a finite number >= 0, got -1.0"),
    "unknown labels": (lambda saved, tmp: [str(saved), "--class-labels", "all"], "invalid choice: 'all'"),
}


def _rgb_pipeline(tmp_path):
    folder = tmp_path / "rgb"
    rgb_unet = tiny_unet(in_channels=3, out_channels=3, sample_size=16)
    ScratchDDPMPipeline(unet=rgb_unet, scheduler=ScratchDDPMScheduler(num_train_timesteps=T)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistakes_are_one_error_line_and_exit_status_2_before_the_work(
    saved_pipeline, tmp_path, capsys, monkeypatch, mistake
):
    make_argv, message = MISTAKES[mistake]
    monkeypatch.setattr("ddpm_from_scratch.digits.evaluation.nll_bits_per_dim",
                        lambda *a, **k: pytest.fail("the bound started before the mistake was reported"))
    with pytest.raises(SystemExit) as exit_info:
        main([*make_argv(saved_pipeline, tmp_path), "--nll-images", "2", "--no-progress"]
             if "--nll-images" not in make_argv(saved_pipeline, tmp_path) else make_argv(saved_pipeline, tmp_path))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("ddpm-evaluate: error: ")]
    assert len(error_lines) == 1 and message.format(tmp=tmp_path) in error_lines[0], err


def test_a_training_checkpoint_folder_is_evaluated_from_its_ema_weights(saved_pipeline, tmp_path, capsys):
    pipeline = ScratchDDPMPipeline.from_pretrained(saved_pipeline)
    checkpoint = tmp_path / "checkpoint-3"
    tiny_unet().save_pretrained(checkpoint / "unet")  # same seed, but the EMA weights below differ
    ema = ScratchDDPMPipeline.from_pretrained(saved_pipeline).unet
    with torch.no_grad():
        for parameter in ema.parameters():
            parameter.mul_(0.5)
    ema.save_pretrained(checkpoint / "unet_ema")
    pipeline.scheduler.save_pretrained(checkpoint / "scheduler")
    (checkpoint / "training_state.json").write_text("{}")
    loaded = load_any_pipeline(checkpoint)
    for key, value in loaded.unet.state_dict().items():
        torch.testing.assert_close(value, ema.state_dict()[key], rtol=0, atol=0)
    out = tmp_path / "ckpt.json"
    assert main([str(checkpoint), "--num-samples", "0", "--nll-images", "2", "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["variance_type"] == "learned_range"


def test_a_stock_folder_without_safetensors_is_reported_clearly(tmp_path, capsys):
    save_stock_pipeline(tmp_path / "stock")
    (tmp_path / "stock" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "stock"), "--num-samples", "0", "--nll-images", "2", "--no-progress"])
    assert exit_info.value.code == 2
    assert "unet' has no safetensors weights (diffusion_pytorch_model.safetensors" in capsys.readouterr().err


def test_evaluate_shows_one_progress_bar_over_all_samples(saved_pipeline, cache_dir, capsys):
    assert main([str(saved_pipeline), "--num-samples", "6", "--nll-images", "0", "--batch-size", "4",
                 "--num-inference-steps", "2", "--classifier-cache-dir", str(cache_dir)]) == 0
    err = capsys.readouterr().err
    assert "6.0/6 images" in err and "images/s" in err


def test_evaluate_pipeline_refuses_bad_values(saved_pipeline):
    pipeline = ScratchDDPMPipeline.from_pretrained(saved_pipeline)
    with pytest.raises(ValueError, match="nll_images must be in"):
        evaluate_pipeline(pipeline, nll_images=1000, num_samples=0, progress=False)
    with pytest.raises(ValueError, match="num_samples must be 0"):
        evaluate_pipeline(pipeline, nll_images=2, num_samples=1, progress=False)
    rgb_unet = tiny_unet(in_channels=3, out_channels=3, sample_size=16)
    rgb = ScratchDDPMPipeline(unet=rgb_unet, scheduler=ScratchDDPMScheduler(num_train_timesteps=T))
    with pytest.raises(ValueError, match="1x8x8 digits"):
        evaluate_pipeline(rgb, nll_images=2, num_samples=0, progress=False)


@pytest.fixture(scope="module")
def conditional_pipeline(tmp_path_factory):
    """A class-conditional pipeline (3 classes and the null class) with T = 10, saved with its code."""
    folder = tmp_path_factory.mktemp("conditional") / "tiny-digits-3-classes"
    torch.manual_seed(0)
    unet = ScratchUNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                              layers_per_block=1, attention_resolutions=(), dropout=0.0, norm_num_groups=4,
                              num_class_embeds=3)
    perturb_(unet, 0.1).eval()
    ScratchDDPMPipeline(unet=unet, scheduler=ScratchDDPMScheduler(num_train_timesteps=T)).save_pretrained(folder)
    return folder


def test_balanced_labels_give_image_i_the_class_i_mod_k(conditional_pipeline):
    """Image i of a balanced draw is what the pipeline gives for class i mod 3 with image i's generator,
    guided as asked; the default (null) labels give other images."""
    pipeline = ScratchDDPMPipeline.from_pretrained(conditional_pipeline)
    pipeline.set_progress_bar_config(disable=True)
    balanced = sample_digits(pipeline, 5, num_inference_steps=3, batch_size=2, seed=4,
                             labels=SampleLabels("balanced", guidance_scale=2.0))
    for i in range(5):
        one = pipeline(batch_size=1, generator=[torch.Generator().manual_seed(4 + i)], num_inference_steps=3,
                       class_labels=[i % 3], guidance_scale=2.0, output_type="np").images
        np.testing.assert_array_equal(balanced[i], unit_range_to_uint8(one[0, ..., 0]))
    null = sample_digits(pipeline, 5, num_inference_steps=3, batch_size=2, seed=4)
    assert not np.array_equal(balanced, null)


def test_command_records_the_labels_in_the_table_and_the_json(conditional_pipeline, cache_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main([str(conditional_pipeline), "--num-samples", "6", "--nll-images", "2", "--class-labels", "balanced",
                 "--guidance-scale", "1.5", "--json", str(out), "--no-progress",
                 "--classifier-cache-dir", str(cache_dir)]) == 0
    assert "balanced class labels, guidance 1.5" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["class_labels"] == "balanced" and data["guidance_scale"] == 1.5
    assert main([str(conditional_pipeline), "--num-samples", "0", "--nll-images", "2", "--json", str(out),
                 "--no-progress"]) == 0
    assert json.loads(out.read_text())["class_labels"] is None  # no samples, no labels
