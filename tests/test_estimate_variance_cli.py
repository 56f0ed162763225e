"""ddpm-estimate-variance: Gamma_t into a saved pipeline's scheduler config, then sampling with it."""

from __future__ import annotations

import json

import pytest
import torch
from _pipeline_fixtures import (
    ddpm_scheduler,
    scratch_scheduler,
    tiny_diffusers_unet,
    tiny_scratch_unet,
)

from ddpm_from_scratch.bound.analytic_variance import estimate_eps_sq_mean
from ddpm_from_scratch.cli.estimate_variance import main, training_images
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

ARGS = ["--num-images", "12", "--num-timesteps", "10", "--batch-size", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "pipe"
    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).save_pretrained(path)
    return path


def scheduler_config(path) -> dict:
    return json.loads((path / "scheduler" / "scheduler_config.json").read_text())


def test_the_statistic_is_written_and_used_only_when_asked(saved, capsys):
    assert main([str(saved), *ARGS]) == 0
    assert "wrote analytic_eps_sq_mean" in capsys.readouterr().out
    config = scheduler_config(saved)
    assert config["variance_type"] == "fixed_small" and len(config["analytic_eps_sq_mean"]) == 50
    assert not list(saved.glob("scheduler/.*.tmp"))  # written atomically: no temporary file left

    # the same estimate as the library function on the same images and seed
    pipeline = ScratchDDPMPipeline.from_pretrained(saved)
    direct = estimate_eps_sq_mean(pipeline.unet, pipeline.scheduler, training_images("builtin:digits", 12, 0),
                                  num_timesteps_sampled=10, batch_size=64, generator=torch.Generator().manual_seed(0),
                                  progress=False)
    assert config["analytic_eps_sq_mean"] == pytest.approx(direct.tolist(), rel=1e-5)

    assert main([str(saved), *ARGS, "--set-default"]) == 0
    pipeline = ScratchDDPMPipeline.from_pretrained(saved)
    assert pipeline.scheduler.config.variance_type == "analytic"
    images = pipeline(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (2, 8, 8, 1) and (images >= 0).all() and (images <= 1).all()
    # Delta_t comes from the same pass, and --set-default analytic_model_error samples with it
    assert config["analytic_eps_error_sq_mean"] == pytest.approx(direct.eps_error_sq_mean.tolist(), rel=1e-5)
    assert main([str(saved), *ARGS, "--set-default", "analytic_model_error"]) == 0
    model_error = ScratchDDPMPipeline.from_pretrained(saved)
    assert model_error.scheduler.config.variance_type == "analytic_model_error"
    assert model_error(batch_size=2, num_inference_steps=5, output_type="np").images.shape == (2, 8, 8, 1)
    # without --set-default the statistic is there for a from_config swap
    swapped = ScratchDDPMScheduler.from_config(pipeline.scheduler.config, variance_type="fixed_large")
    assert ScratchDDPMScheduler.from_config(swapped.config, variance_type="analytic").config.analytic_eps_sq_mean


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--dataset", "cifar10"], r"--dataset must be one of \('builtin:digits',\)"),
        (["--num-images", "5000"], "--num-images must be at most 1437"),
    ],
)
def test_bad_arguments_are_reported(saved, extra, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(saved), *ARGS, *extra])
    assert exit_info.value.code == 1 and match.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
    assert "analytic_eps_sq_mean" not in scheduler_config(saved) or scheduler_config(saved)["analytic_eps_sq_mean"] is None


def test_folders_it_cannot_use_are_reported(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), *ARGS])
    assert "has no scheduler/scheduler_config.json" in capsys.readouterr().err
    stock = tmp_path / "stock"
    ScratchDDPMPipeline(unet=tiny_diffusers_unet(), scheduler=ddpm_scheduler()).save_pretrained(stock)
    with pytest.raises(SystemExit):
        main([str(stock), *ARGS, "--set-default"])
    assert "--set-default needs a saved ScratchDDPMScheduler" in capsys.readouterr().err


def test_out_writes_a_new_pipeline_and_leaves_the_folder_as_it_was(saved, tmp_path, capsys):
    before = {p.relative_to(saved).as_posix(): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    out = tmp_path / "with-estimate"
    assert main([str(saved), *ARGS, "--out", str(out), "--set-default"]) == 0
    assert f"wrote analytic_eps_sq_mean and analytic_eps_error_sq_mean to {out / 'scheduler' / 'scheduler_config.json'}" in capsys.readouterr().out
    assert {p.relative_to(saved).as_posix(): p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before
    estimated = ScratchDDPMPipeline.from_pretrained(out)  # its weights verify against its own manifest
    assert estimated.scheduler.config.variance_type == "analytic"
    assert len(estimated.scheduler.config.analytic_eps_sq_mean) == 50
    # nothing is overwritten: --out must be new or empty, checked before the estimate
    for taken in (out, saved / "model_index.json"):
        with pytest.raises(SystemExit) as exit_info:
            main([str(saved), *ARGS, "--out", str(taken)])
        assert exit_info.value.code == 1 and f"--out '{taken}' is " in capsys.readouterr().err
