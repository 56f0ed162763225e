"""benchmarks/tune_digits_preset.py: every candidate is a run the trainer accepts, and its summary rows are right.

The runs themselves are full trainings (minutes each), measured by the script, not here.
"""

from __future__ import annotations

import statistics

import pytest

from benchmarks import tune_digits_preset as tune
from ddpm_from_scratch.training.model import load_unet_config
from ddpm_from_scratch.training.config import parse_options


@pytest.mark.parametrize("name", sorted(tune.CANDIDATES))
def test_every_candidate_is_an_accepted_training_command(name, tmp_path):
    options, unet_overrides = tune.CANDIDATES[name]
    argv = ["--preset", "digits", "--output_dir", str(tmp_path / "run"), *options]
    if unet_overrides:
        config_file = tune.unet_config_file(unet_overrides, tmp_path)
        assert {key: load_unet_config(str(config_file))[key] for key in unet_overrides} == {
            key: list(value) if isinstance(value, tuple) else value for key, value in unet_overrides.items()}
        argv += ["--model_config_name_or_path", str(config_file)]
    opts = parse_options(argv)
    assert {flag.removeprefix("--") for flag in options[::2]} <= opts.explicit


def test_the_summary_row_is_mean_and_sample_sd_per_column():
    rows = [{"name": "x", "seed": seed, "fd50": fd} for seed, fd in [(0, 8.0), (1, 9.0), (2, 13.0)]]
    cells = tune.summary(rows, ["name", "seed", "fd50"])
    assert cells["name"] == "x" and cells["seed"] == "mean +- sd"
    assert cells["fd50"] == f"{statistics.mean([8, 9, 13]):.4g} +- {statistics.stdev([8, 9, 13]):.2g}" == "10 +- 2.6"
