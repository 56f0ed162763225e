"""A pipeline's default sampling setting (default_num_inference_steps, default_eta): used by a call without a
step count, recorded in model_index.json, carried by every loader, from_pipe and the trainer, refused when bad."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _pipeline_fixtures import (NUM_TRAIN_TIMESTEPS, ddpm_scheduler, isolated_remote_code_cache, scratch_scheduler,
                                seeded, tiny_scratch_unet)
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline

from ddpm_from_scratch.cli.sample import main as sample_main
from ddpm_from_scratch.editing import ScratchImg2ImgPipeline
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

DEFAULT_STEPS = 5


def make_pipeline(steps=None, eta=None, scheduler=None) -> ScratchDDPMPipeline:
    pipeline = ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scheduler or scratch_scheduler(),
                                   default_num_inference_steps=steps, default_eta=eta)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def images(pipeline, **kwargs) -> np.ndarray:
    return pipeline(batch_size=2, generator=seeded(4), output_type="np", **kwargs).images


class StepCount:
    """callback_on_step_end counting the denoising steps of a call."""

    def __init__(self):
        self.steps = 0

    def __call__(self, pipeline, step_index, timestep, callback_kwargs):
        self.steps += 1
        return callback_kwargs


def steps_of_a_call(pipeline, **kwargs) -> int:
    count = StepCount()
    pipeline(batch_size=1, generator=seeded(0), output_type="np", callback_on_step_end=count, **kwargs)
    return count.steps


# ---- the call -------------------------------------------------------------------------------------------


def test_a_call_without_a_step_count_uses_the_recorded_default():
    assert steps_of_a_call(make_pipeline(DEFAULT_STEPS)) == DEFAULT_STEPS
    np.testing.assert_array_equal(images(make_pipeline(DEFAULT_STEPS)),
                                  images(make_pipeline(), num_inference_steps=DEFAULT_STEPS))


def test_the_recorded_eta_goes_with_the_default_and_a_given_eta_replaces_it():
    """Needs ScratchDDPMScheduler.step(..., eta=...)."""
    with_default = make_pipeline(DEFAULT_STEPS, eta=0.0)
    plain = make_pipeline()
    np.testing.assert_array_equal(images(with_default), images(plain, num_inference_steps=DEFAULT_STEPS, eta=0.0))
    np.testing.assert_array_equal(images(with_default, eta=1.0),
                                  images(plain, num_inference_steps=DEFAULT_STEPS, eta=1.0))
    assert with_default.sampling_setting() == (DEFAULT_STEPS, 0.0)
    assert with_default.sampling_setting(eta=0.5) == (DEFAULT_STEPS, 0.5)


def test_an_explicit_step_count_is_the_call_of_a_pipeline_without_defaults():
    with_default, plain = make_pipeline(DEFAULT_STEPS, eta=0.0), make_pipeline()
    np.testing.assert_array_equal(images(with_default, num_inference_steps=3), images(plain, num_inference_steps=3))
    assert with_default.sampling_setting(3) == (3, None)


def test_without_a_default_or_with_another_scheduler_a_call_runs_all_training_steps():
    assert steps_of_a_call(make_pipeline()) == NUM_TRAIN_TIMESTEPS
    # the recorded setting is for ScratchDDPMScheduler's step; diffusers' schedulers sample as without one
    for scheduler in (ddpm_scheduler(), DDIMScheduler.from_config(scratch_scheduler().config)):
        assert steps_of_a_call(make_pipeline(DEFAULT_STEPS, scheduler=scheduler)) == NUM_TRAIN_TIMESTEPS
    swapped = make_pipeline(DEFAULT_STEPS, eta=0.0)
    swapped.scheduler = DDPMScheduler.from_config(swapped.scheduler.config)
    assert swapped.sampling_setting() == (NUM_TRAIN_TIMESTEPS, None)


# ---- bad values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, eta, match",
    [
        (0, None, "default_num_inference_steps must be None or an int in \\[1, num_train_timesteps = 50\\]"),
        (NUM_TRAIN_TIMESTEPS + 1, None, "default_num_inference_steps"),
        (2.5, None, "default_num_inference_steps"),
        (True, None, "default_num_inference_steps"),
        ("5", None, "default_num_inference_steps"),
        (None, 0.0, "default_eta=0.0 needs default_num_inference_steps"),
        (5, -0.1, "default_eta must be None or a number in \\[0, 1\\]"),
        (5, 1.5, "default_eta must be None or a number in \\[0, 1\\]"),
        (5, float("nan"), "default_eta"),
        (5, float("inf"), "default_eta"),
        (5, True, "default_eta"),
        (5, "0", "default_eta"),
    ],
)
def test_bad_default_settings_are_refused(steps, eta, match):
    with pytest.raises(ValueError, match=match):
        make_pipeline(steps, eta)
    with pytest.raises(ValueError, match=match):
        make_pipeline().set_default_sampling(steps, eta)


def test_a_folder_recording_a_bad_default_is_refused_on_load(tmp_path):
    make_pipeline(DEFAULT_STEPS).save_pretrained(tmp_path / "pipe")
    index_file = tmp_path / "pipe" / "model_index.json"
    index_file.write_text(json.dumps({**json.loads(index_file.read_text()), "default_num_inference_steps": -3}))
    with pytest.raises(ValueError, match="default_num_inference_steps must be None or an int"):
        ScratchDDPMPipeline.from_pretrained(tmp_path / "pipe")


# ---- saving and loading ------------------------------------------------------------------------------


def test_the_default_round_trips_through_both_loaders_and_the_model_card(tmp_path):
    saved = make_pipeline(DEFAULT_STEPS, eta=0.0)
    saved.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert (index["default_num_inference_steps"], index["default_eta"]) == (DEFAULT_STEPS, 0.0)
    assert "samples with the default setting it records in `model_index.json`: 5 steps, eta 0.0" in (
        tmp_path / "pipe" / "README.md").read_text()
    expected = images(saved)

    loaded = ScratchDDPMPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling_setting() == (DEFAULT_STEPS, 0.0)
    np.testing.assert_array_equal(images(loaded), expected)
    # a keyword of from_pretrained replaces the recorded value, as diffusers' loader does
    assert ScratchDDPMPipeline.from_pretrained(tmp_path / "pipe", default_num_inference_steps=7,
                                               default_eta=None).sampling_setting() == (7, None)

    with isolated_remote_code_cache(tmp_path / "modules"):
        remote = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
        remote.set_progress_bar_config(disable=True)
        assert type(remote).__module__.startswith("diffusers_modules")  # the shipped code, not the package
        assert remote.sampling_setting() == (DEFAULT_STEPS, 0.0)
        np.testing.assert_array_equal(images(remote), expected)
        remote.save_pretrained(tmp_path / "resaved")  # the package is installed: its save, with the setting
    assert json.loads((tmp_path / "resaved" / "model_index.json").read_text())["default_num_inference_steps"] == 5


def test_a_folder_saved_without_the_setting_loads_with_none(tmp_path):
    make_pipeline().save_pretrained(tmp_path / "pipe")
    index_file = tmp_path / "pipe" / "model_index.json"
    index = json.loads(index_file.read_text())
    assert index["default_num_inference_steps"] is None and index["default_eta"] is None
    del index["default_num_inference_steps"], index["default_eta"]  # as saved before the setting existed
    index_file.write_text(json.dumps(index))
    assert ScratchDDPMPipeline.from_pretrained(tmp_path / "pipe").sampling_setting() == (NUM_TRAIN_TIMESTEPS, None)
    with isolated_remote_code_cache(tmp_path / "modules"):
        remote = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
        assert remote.sampling_setting() == (NUM_TRAIN_TIMESTEPS, None)


def test_editing_pipelines_carry_the_setting_through_from_pipe_and_save_it(tmp_path):
    pipeline = make_pipeline(DEFAULT_STEPS, eta=0.0)
    editing = ScratchImg2ImgPipeline.from_pipe(pipeline)
    assert editing.unet is pipeline.unet and editing.config.default_num_inference_steps == DEFAULT_STEPS
    assert editing.sampling_pipeline().sampling_setting() == (DEFAULT_STEPS, 0.0)
    editing.save_pretrained(tmp_path / "pipe")
    assert ScratchDDPMPipeline.from_pretrained(tmp_path / "pipe").sampling_setting() == (DEFAULT_STEPS, 0.0)
    assert ScratchImg2ImgPipeline.from_pretrained(tmp_path / "pipe").config.default_eta == 0.0


def test_ddpm_sample_without_a_step_count_uses_the_default(tmp_path, capsys):
    make_pipeline(DEFAULT_STEPS, eta=0.0).save_pretrained(tmp_path / "pipe")
    argv = [str(tmp_path / "pipe"), "--num-images", "2", "--device", "cpu", "--no-progress"]
    assert sample_main([*argv, "--out", str(tmp_path / "default.png")]) == 0
    assert "5 denoising steps, eta 0" in capsys.readouterr().out
    assert sample_main([*argv, "--out", str(tmp_path / "explicit.png"), "--num-inference-steps", "3"]) == 0
    assert "3 denoising steps" in capsys.readouterr().out


# ---- the trainer --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--default_inference_steps", "0"], "--default_inference_steps must be in \\[1, --num_train_timesteps"),
        (["--default_inference_steps", "2000"], "--default_inference_steps"),
        (["--num_train_timesteps", "50", "--grid_inference_steps", "10", "--default_eta", "0"],
         "--default_eta needs --default_inference_steps"),
        (["--default_inference_steps", "50", "--default_eta", "-1"], "--default_eta must be a number in \\[0, 1\\]"),
        (["--default_inference_steps", "50", "--default_eta", "0", "--variance_type", "fixed_large"],
         "--default_eta needs a --variance_type"),
    ],
)
def test_the_trainer_refuses_bad_default_settings_before_training(argv, match):
    from ddpm_from_scratch.training.config import parse_options

    with pytest.raises(ValueError, match=match):
        parse_options(["--preset", "digits", *argv])


@pytest.mark.slow
def test_the_trainer_records_the_default_in_the_saved_pipeline(tmp_path):
    from ddpm_from_scratch.training import fit

    out = fit(preset="digits", output_dir=str(tmp_path / "run"), max_train_steps=1, train_batch_size=8,
              num_grid_images=1, grid_inference_steps=2, report_to="none", use_ema=False, checkpointing_steps=None,
              default_inference_steps=25, default_eta=0.0)
    pipeline = ScratchDDPMPipeline.from_pretrained(out)
    assert pipeline.sampling_setting() == (25, 0.0)
    card = (out / "README.md").read_text()
    assert "25 steps, eta 0.0" in card and '"default_inference_steps": 25' in card


def test_a_presets_default_setting_belongs_to_its_number_of_timesteps():
    """The digits preset records 100 DDPM steps (docs/experiments.md, the trade-off); measured at T = 1000, it
    is not carried to another --num_train_timesteps."""
    from ddpm_from_scratch.training.config import parse_options

    digits = parse_options(["--preset", "digits"])
    assert (digits.default_inference_steps, digits.default_eta) == (100, None)
    assert digits.grid_inference_steps == 100  # the final grid shows what pipe() draws
    other_t = ["--num_train_timesteps", "50", "--grid_inference_steps", "10"]
    assert parse_options(other_t).default_inference_steps is None
    assert parse_options(other_t + ["--default_inference_steps", "10"]).default_inference_steps == 10
