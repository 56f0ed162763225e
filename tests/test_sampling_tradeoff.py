"""benchmarks/sampling_tradeoff.py runs end to end on a tiny pipeline (T = 50, a few images) and resumes."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from _helpers import table_rows
from _pipeline_fixtures import NUM_TRAIN_TIMESTEPS, scratch_scheduler, tiny_scratch_unet

from diffusers import DDIMScheduler

from benchmarks import sampling_tradeoff
from ddpm_from_scratch.cli.estimate_variance import main as estimate_variance
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline


@pytest.fixture(scope="module")
def script():
    return sampling_tradeoff


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "pipe"
    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).save_pretrained(path)
    return path


@pytest.mark.slow
def test_every_method_and_step_count_gets_a_row_and_a_rerun_resumes(script, saved, tmp_path, capsys):
    assert estimate_variance([str(saved), "--num-images", "8", "--num-timesteps", "10", "--no-progress"]) == 0
    out_json, plot = tmp_path / "tradeoff.json", tmp_path / "plot.png"
    args = [str(saved), "--num-images", "4", "--nll-images", "2", "--steps", "5", str(NUM_TRAIN_TIMESTEPS), "2",
            "--out-json", str(out_json), "--plot", str(plot)]
    capsys.readouterr()
    result = script.main(args)
    output = capsys.readouterr().out
    config = ScratchDDPMPipeline.from_pretrained(saved).scheduler.config
    methods = [m for m in script.METHODS if script.missing_statistic(m, config) is None]
    assert (set(script.METHODS) - set(methods) <= {"analytic_model_error"}
            and ("skipping analytic_model_error" in output) == (len(methods) < len(script.METHODS)))
    rows = {(row[0], int(row[1])): row for row in table_rows(output)}
    assert set(rows) == {(m, k) for m in methods for k in (2, 5, NUM_TRAIN_TIMESTEPS)}
    assert rows[("fixed_small", NUM_TRAIN_TIMESTEPS)][-1] == "baseline"
    assert all(row[-1] in ("yes", "no", "baseline") for row in rows.values())
    for (method, _), row in rows.items():  # a bound where the method has one: sigma = 0 has no density
        spec = script.METHODS[method]
        assert ("+-" in row[2]) == (spec.has_bound and script.bound_takes(spec.eta)), row
    assert all(rows[(m, k)][2] == "-" for m in ("ddim", "diffusers_ddim") for k in (2, 5))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cells = {(c["method"], c["steps"]): c for c in result["cells"]}
    assert cells[("ddim", 2)]["bound"] is None and cells[("analytic", 2)]["bound"]["bits_per_dim"] > 0
    assert cells[("ddim", 2)]["eta"] == 0.0 and cells[("diffusers_ddim", 2)]["eta"] is None
    assert result["reference"]["num_images"] == 4 and result["reference"]["frechet_distance_sd"] > 0

    saved_json = json.loads(out_json.read_text())
    resumed = script.main([*args, "--resume"])
    assert resumed["cells"] == saved_json["cells"]  # nothing was measured again
    with pytest.raises(ValueError, match="other settings"):
        script.main([*args[:2], "5", *args[3:], "--resume"])


def test_the_analytic_rows_need_the_statistic_before_anything_runs(script, saved):
    with pytest.raises(ValueError, match="ddpm-estimate-variance"):
        script.main([str(saved), "--num-images", "4", "--steps", "2", "--methods", "analytic"])


def test_the_model_error_rows_are_skipped_with_a_message_without_their_statistic(script, saved, capsys):
    script.main([str(saved), "--num-images", "2", "--nll-images", "0", "--steps", "2", "--methods",
                 "analytic_model_error", "fixed_small"])
    output = capsys.readouterr().out
    assert "skipping analytic_model_error: the saved scheduler config has no analytic_eps_error_sq_mean" in output
    assert {row[0] for row in table_rows(output)} == {"fixed_small"}


def test_diffusers_ddim_rows_step_as_diffusers_ships_and_ddim_rows_with_the_clipped_model_output(script):
    """diffusers_ddim is diffusers' DDIMScheduler stepped with its default use_clipped_model_output=False, even
    inside our pipeline (which passes True to a step that takes the switch); ddim is our eta = 0 step."""
    config = ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).scheduler.config
    shipped, reference = script.scheduler_for("diffusers_ddim", config), DDIMScheduler.from_config(config)
    assert "use_clipped_model_output" not in inspect.signature(shipped.step).parameters
    shipped.set_timesteps(5)
    reference.set_timesteps(5)
    generator = torch.Generator().manual_seed(0)
    x, eps = 3 * torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, generator=generator)
    t = reference.timesteps[3]
    default = reference.step(eps, t, x, use_clipped_model_output=False).prev_sample
    torch.testing.assert_close(shipped.step(eps, t, x).prev_sample, default, rtol=0, atol=0)
    assert not torch.allclose(reference.step(eps, t, x, use_clipped_model_output=True).prev_sample, default)
    assert script.METHODS["ddim"] == script.Method("fixed_small", 0.0, False)


def _seed_file(path, seed, fds, num_images=100):
    """A sampling_tradeoff JSON holding one cell per (method, K) -> FD, as the script writes them."""
    cells = [{"method": method, "steps": steps, "eta": None, "bound": None,
              "samples": {"frechet_distance": fd, "classifier_score": 9.0 - fd / 10, "confident_fraction": 0.9,
                          "sampling_cpu_s": steps / 10}}
             for (method, steps), fd in fds.items()]
    settings = {"path": "model", "num_images": num_images, "seed": seed, "device": "CPU"}
    path.write_text(json.dumps({"settings": settings, "reference": {}, "cells": cells}))
    return path


def test_tradeoff_seeds_picks_the_fewest_steps_within_one_sd_of_the_baseline(tmp_path, capsys):
    from benchmarks import tradeoff_seeds

    # baseline FDs 4 and 6 (mean 5, sd 1.41): within means a mean FD <= 6.41
    draws = {0: {("fixed_small", 1000): 4.0, ("fixed_small", 50): 6.0, ("fixed_small", 25): 7.0, ("ddim", 25): 6.0},
             1000: {("fixed_small", 1000): 6.0, ("fixed_small", 50): 6.5, ("fixed_small", 25): 8.0, ("ddim", 25): 6.5}}
    files = [_seed_file(tmp_path / f"s{seed}.json", seed, fds) for seed, fds in draws.items()]
    rows = tradeoff_seeds.main([str(f) for f in files])
    output = capsys.readouterr().out
    within = {(row["method"], row["steps"]): row["within"] for row in rows}
    assert within == {("ddim", 25): True, ("fixed_small", 25): False, ("fixed_small", 50): True,
                      ("fixed_small", 1000): True}
    assert output.strip().endswith("fastest setting within the spread: ddim at K = 25")
    with pytest.raises(ValueError, match="one model at one N"):
        tradeoff_seeds.main([str(files[0]), str(_seed_file(tmp_path / "other.json", 7, draws[0], num_images=50))])
