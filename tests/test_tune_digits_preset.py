"""benchmarks/tune_digits_preset.py: every candidate is a run the trainer accepts, and its summary rows are right.

The runs themselves are full trainings (minutes each), measured by the script, not here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

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


def test_the_real_row_gives_each_figure_with_its_spread_under_every_columns_k():
    figures = {"draws": 10, "frechet_distance": 3.09, "frechet_distance_std": 0.37, "kid": -150.9, "kid_std": 21.5,
               "precision": 0.9732, "precision_std": 0.0024, "recall": 0.95, "recall_std": 0.0066,
               "density": 1.037, "density_std": 0.0066, "confident_fraction": 0.961}
    cells = tune.real_row(figures, [None, 50])
    assert cells["seed"] == "10 draws" and cells["fd"] == cells["fd50"] == "3.09 +- 0.37"
    assert cells["precision"] == "0.9732 +- 0.0024" and cells["confident"] == "0.961"
    assert tune.figure_cells(figures, 50)["kid50"] == -150.9 and "fd" in tune.figure_cells(figures, None)


def test_candidates_are_the_tuning_base_with_one_named_change_and_the_winner_is_the_preset():
    assert tune.on_linear_2500(snr_gamma="5") == ["--beta_schedule", "linear", "--max_train_steps", "2500",
                                                  "--snr_gamma", "5"]
    assert tune.on_linear_2500(max_train_steps="4000")[2:4] == ["--max_train_steps", "4000"]
    winner = parse_options(["--output_dir", "x", *tune.CANDIDATES["cosine_betas_steps3500"][0]])
    preset = parse_options(["--output_dir", "x"])
    assert (winner.beta_schedule, winner.max_train_steps) == (preset.beta_schedule, preset.max_train_steps)


def write_stand_in_report(command: list[str], value: float) -> None:
    """What `ddpm-evaluate ... --json PATH` writes, every figure equal to ``value``."""
    report = {"sample_quality": {"samples": {key: value for _, key in tune.FIGURES}, "reference": {"draws": 10}}}
    Path(command[command.index("--json") + 1]).write_text(json.dumps(report))


def test_each_trained_run_is_scored_once_per_sampling_seed_with_that_seed(tmp_path, monkeypatch):
    """The subprocesses are stood in for: training writes metrics.json, each evaluation its report."""
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        if command[0] == "ddpm-evaluate":
            write_stand_in_report(command, float(command[command.index("--seed") + 1]))
        else:
            run = Path(command[command.index("--output_dir") + 1])
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"training_minutes": 4.0, "final_loss": 0.13}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(tune.subprocess, "run", fake_run)
    rows = tune.train_and_score("preset", 2, [], [0, 1000], tmp_path)
    assert len(calls) == 3 and "--seed" in calls[0] and calls[0][calls[0].index("--seed") + 1] == "2"
    assert [(row["seed"], row["sample_seed"], row["fd"], row["train_min"]) for row in rows] == [
        (2, 0, 0.0, 4.0), (2, 1000, 1000.0, 4.0)]
    assert sorted(path.name for path in (tmp_path / "preset-seed2").glob("*.json")) == [
        "evaldefault-sampleseed1000.json", "evaldefault.json"]
    cells = tune.summary(rows, ["name", "seed", "sample_seed", "fd"])
    assert cells["sample_seed"] == "2 draws" and cells["fd"] == f"500 +- {statistics.stdev([0, 1000]):.2g}"


def test_a_finished_run_is_scored_again_without_training_at_the_asked_n(tmp_path, monkeypatch):
    run = tmp_path / "preset-seed0" / "run"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"training_minutes": 4.0, "final_loss": 0.13}))
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        assert command[0] == "ddpm-evaluate", "a finished run was trained again"
        write_stand_in_report(command, 1.0)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(tune.subprocess, "run", fake_run)
    rows = tune.train_and_score("preset", 0, [], [0, 1000], tmp_path, num_samples=5000)
    assert [command[command.index("--num-samples") + 1] for command in calls] == ["5000", "5000"]
    assert [(row["sample_seed"], row["train_min"]) for row in rows] == [(0, 4.0), (1000, 4.0)]
    assert sorted(path.name for path in run.parent.glob("*.json")) == [
        "evaldefault-n5000-sampleseed1000.json", "evaldefault-n5000.json"]
