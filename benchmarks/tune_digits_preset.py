#!/usr/bin/env python
"""Measure candidate settings of the `digits` preset: training time, final loss, and the evaluator's figures.

    OMP_NUM_THREADS=1 python -m benchmarks.tune_digits_preset --candidates preset linear2500 --seeds 0 1 --jobs 2
    OMP_NUM_THREADS=1 python -m benchmarks.tune_digits_preset --candidates preset --seeds 0 1 2 --sample-seeds 0 1000 2000 --jobs 2
    OMP_NUM_THREADS=1 python -m benchmarks.tune_digits_preset --candidates preset preset+cosine_lr --seeds 0 1 2 --num-samples 5000 --jobs 2 --keep runs

Each candidate is a complete `training/train.py --preset digits` run (data, training, checkpoints,
saving) in a subprocess, with the candidate's options added, once per training seed. Each trained
pipeline is then scored by `ddpm-evaluate` on N = 1,000 samples (`--num-samples`; image i seeded
sample_seed + i), once per `--sample-seeds` value, sampled with the setting the pipeline saved (the
preset's default: 100 DDPM steps) or with each `--eval-steps` K, against the 360 held-out digits.
The table has one row per draw (training seed, sampling seed), one mean +- sd row per candidate over
all its draws, and a last row with the same figures for 1,000 real train digits (mean +- sd over 10
draws): the spread a model has to fall within.

With `--keep`, a run already finished there is scored again without retraining (the same seed gives
the same weights), so a kept set of runs can be re-scored at another N or with other sampling seeds.
`--num-samples` above 1,437 scores more samples than there are real train digits: the real row is then
all of them, and candidates are compared with each other at equal N.

`train min` is the trainer's own `training_minutes` (the update loop, without start-up or the final
grid). With `--jobs 2` two runs share the machine, one thread each: times are comparable between rows
of one table, not with a 2-thread run of the main command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import print_table

TRAIN = Path(__file__).resolve().parents[1] / "training" / "train.py"

def on_preset(**changes: str) -> list[str]:
    """The command-line options that change the current preset by ``changes`` (option names without the dashes)."""
    return [item for name, value in changes.items() for item in (f"--{name}", value)]


# The base of the first tuning round: the digits preset before it (linear betas, 2,500 updates). Its
# candidates are this base with the named change; the second round's are the current preset with one.
LINEAR_2500 = {"beta_schedule": "linear", "max_train_steps": "2500"}


def on_linear_2500(**changes: str) -> list[str]:
    """The command-line options of LINEAR_2500 with ``changes``."""
    return on_preset(**{**LINEAR_2500, **changes})


# name -> (options added to `--preset digits`, overrides of the digits UNet preset's config)
CANDIDATES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "preset": ([], {}),
    "linear2500": (on_linear_2500(), {}),
    # the 0.2.0 preset, the digits model of docs/experiments.md's comparison with stock diffusers
    "v0.2.0": (on_linear_2500(max_train_steps="1500"), {"layers_per_block": 2}),
    "steps4000": (on_linear_2500(max_train_steps="4000"), {}),
    "cosine_lr": (on_linear_2500(lr_scheduler="cosine"), {}),
    "snr5": (on_linear_2500(snr_gamma="5"), {}),
    "v_prediction": (on_linear_2500(prediction_type="v_prediction"), {}),
    "batch128": (on_linear_2500(train_batch_size="128"), {}),
    "cosine_betas": (on_linear_2500(beta_schedule="squaredcos_cap_v2"), {}),
    "cosine_betas_batch128": (on_linear_2500(beta_schedule="squaredcos_cap_v2", train_batch_size="128"), {}),
    "cosine_betas_steps3500": (on_linear_2500(beta_schedule="squaredcos_cap_v2", max_train_steps="3500"), {}),
    "wide48": (on_linear_2500(), {"block_out_channels": [48, 96, 96]}),
    # the second round: the preset (cosine betas, 3,500 updates) with one change
    "preset+v_prediction": (on_preset(prediction_type="v_prediction"), {}),
    "preset+lr2e-3": (on_preset(learning_rate="2e-3"), {}),
    # the EMA's averaging window at the last update, 1 / (1 - decay): about 1,000 updates (preset: 455)
    # and about 230 (decay = 1 - (1 + step)^-power, capped at ema_max_decay)
    "preset+ema_longer": (on_preset(ema_power="0.85", ema_max_decay="0.9995"), {}),
    "preset+ema_shorter": (on_preset(ema_power="0.6667"), {}),
    # the third round, scored at N = 5,000 (one draw's spread at 1,000 hides differences of this size)
    "preset+cosine_lr": (on_preset(lr_scheduler="cosine"), {}),
    "preset+snr5": (on_preset(snr_gamma="5"), {}),
    "preset+adam_beta2_0.99": (on_preset(adam_beta2="0.99"), {}),
    "preset+attention4": (on_preset(), {"attention_resolutions": [4, 2]}),
    # twice the updates, over the time budget: how far more training alone goes
    "preset+steps7000": (on_preset(max_train_steps="7000"), {}),
    # dropout against the drift toward the training digits that steps7000 shows
    "preset+dropout0.1": (on_preset(dropout="0.1"), {}),
    # the fourth round: capacity at the same updates (more time per update)
    "preset+wide48": (on_preset(), {"block_out_channels": [48, 96, 96]}),
    "preset+layers2": (on_preset(), {"layers_per_block": 2}),
}

# the evaluator's figures in the table: (column, key of ddpm-evaluate's sample_quality.samples)
FIGURES = (("fd", "frechet_distance"), ("kid", "kid"), ("precision", "precision"), ("recall", "recall"),
           ("density", "density"), ("confident", "confident_fraction"))
NUM_SAMPLES = 1000
LABEL_COLUMNS = ("name", "seed", "sample_seed")


def unet_config_file(overrides: dict[str, Any], folder: Path) -> Path:
    """A config.json of the digits UNet preset with `overrides` applied, for --model_config_name_or_path."""
    from ddpm_from_scratch.unet import UNET_PRESETS

    config = {**UNET_PRESETS["digits"], "dropout": 0.0, **overrides}
    path = folder / "unet_config.json"
    path.write_text(json.dumps({"_class_name": "ScratchUNet2DModel", **config}))
    return path


def train_and_score(name: str, seed: int, eval_steps: list[int], sample_seeds: list[int], keep: Path,
                    num_samples: int = NUM_SAMPLES) -> list[dict[str, Any]]:
    """Train candidate `name` with training seed `seed`, then score it once per sampling seed: one row each.

    A run already finished in `keep` (its metrics.json written) is scored again without retraining: the
    trainer is deterministic for a seed, so retraining would give the same weights.
    """
    output_dir = keep / f"{name.replace('/', '_')}-seed{seed}"
    metrics_file = output_dir / "run" / "metrics.json"
    run: dict[str, Any] = {"name": name, "seed": seed}
    if not metrics_file.is_file():
        output_dir.mkdir(parents=True, exist_ok=True)
        options, unet_overrides = CANDIDATES[name]
        command = [sys.executable, str(TRAIN), "--preset", "digits", "--output_dir", str(output_dir / "run"),
                   "--report_to", "none", "--overwrite_output_dir", "--seed", str(seed), "--num_grid_images", "4",
                   *options]
        if unet_overrides:
            command += ["--model_config_name_or_path", str(unet_config_file(unet_overrides, output_dir))]
        started = time.time()
        result = subprocess.run(command, capture_output=True, text=True)
        run["wall_s"] = round(time.time() - started, 1)
        if result.returncode:
            print(f"{name} seed {seed} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
            return [{**run, "error": result.returncode}]
    metrics = json.loads(metrics_file.read_text())
    run.update(train_min=metrics["training_minutes"], final_loss=metrics["final_loss"])
    rows = []
    for sample_seed in sample_seeds:
        row = {**run, "sample_seed": sample_seed}
        for steps in eval_steps or [None]:
            # sampling seed 0 at N = 1,000 keeps the file name of a one-draw run
            suffix = (f"-n{num_samples}" if num_samples != NUM_SAMPLES else "") + (
                f"-sampleseed{sample_seed}" if sample_seed else "")
            report = output_dir / f"eval{steps or 'default'}{suffix}.json"
            evaluate = ["ddpm-evaluate", str(output_dir / "run"), "--num-samples", str(num_samples), "--nll-images",
                        "0", "--seed", str(sample_seed), "--no-progress", "--json", str(report)]
            if steps is not None:
                evaluate += ["--num-inference-steps", str(steps)]
            result = subprocess.run(evaluate, capture_output=True, text=True)
            if result.returncode:
                print(f"{name} seed {seed} evaluation failed:\n{result.stderr[-3000:]}", file=sys.stderr)
                return rows + [{**row, "error": result.returncode}]
            quality = json.loads(report.read_text())["sample_quality"]
            row.update(figure_cells(quality["samples"], steps))
            row["real"] = quality["reference"]  # the same for every run: real digits, the same draws
        rows.append(row)
    return rows


def figure_cells(figures: dict[str, Any], steps: int | None) -> dict[str, float]:
    """The table's cells of one evaluator report (samples or real digits), the columns suffixed by K."""
    return {f"{column}{steps or ''}": figures[key] for column, key in FIGURES}


def real_row(figures: dict[str, Any], eval_steps: list[int | None]) -> dict[str, str]:
    """The real train digits' figures (mean +- sd over the evaluator's draws), under every K's columns."""
    cells = {"name": "real train digits", "seed": f"{figures['draws']} draws"}
    for column, key in FIGURES:
        std = figures.get(f"{key}_std")  # the classifier's figures come from one draw, without a spread
        cell = f"{figures[key]:.4g}" + ("" if std is None else f" +- {std:.2g}")
        cells.update({f"{column}{steps or ''}": cell for steps in eval_steps})
    return cells


def summary(rows: list[dict[str, Any]], columns: list[str]) -> dict[str, str]:
    """mean +- sd of each column over the rows of one candidate: every (training seed, sampling seed) draw."""
    cells = {"name": rows[0]["name"], "seed": "mean +- sd", "sample_seed": f"{len(rows)} draws"}
    for column in columns:
        if column in LABEL_COLUMNS:
            continue
        values = [row[column] for row in rows if column in row]
        if len(values) > 1:
            cells[column] = f"{statistics.mean(values):.4g} +- {statistics.stdev(values):.2g}"
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=["preset"], choices=sorted(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (--seed of the trainer)")
    parser.add_argument("--eval-steps", nargs="+", type=int, default=[],
                        help="sampling steps of the scoring (default: the setting the pipeline saved)")
    parser.add_argument("--sample-seeds", nargs="+", type=int, default=[0],
                        help="score each trained run once per sampling seed (ddpm-evaluate --seed: image i seeded "
                             "seed + i); at N = 1,000 one draw's FD, KID and recall vary about as much as training "
                             "seeds do (default: 0, one draw)")
    parser.add_argument("--num-samples", type=int, default=NUM_SAMPLES,
                        help="samples per draw (default 1,000); above 1,437 the real row is all the train digits, "
                             "so compare candidates with each other at equal N, not with that row")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (give each one thread: OMP_NUM_THREADS=1)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' folders here (default: a temp folder)")
    args = parser.parse_args()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="tune-digits-"))
    eval_steps = args.eval_steps or [None]
    columns = [*LABEL_COLUMNS, "wall_s", "train_min", "final_loss",
               *[f"{column}{steps or ''}" for steps in eval_steps for column, _ in FIGURES]]
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, jobs {args.jobs}, runs in {keep}")
    runs = [(name, seed) for name in args.candidates for seed in args.seeds]

    def one_run(run: tuple[str, int]) -> list[dict[str, Any]]:
        return train_and_score(*run, args.eval_steps, args.sample_seeds, keep, args.num_samples)

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [row for run_rows in pool.map(one_run, runs) for row in run_rows]
    table = []
    for name in args.candidates:
        mine = [row for row in rows if row["name"] == name and "error" not in row]
        table += [row for row in rows if row["name"] == name]
        if len(mine) > 1:
            table.append(summary(mine, columns))
    scored = [row for row in rows if "real" in row]
    if scored:
        table.append(real_row(scored[0]["real"], eval_steps))
    print_table(columns, [[_cell(row.get(column, "")) for column in columns] for row in table])


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
