#!/usr/bin/env python
"""Measure candidate settings of the `digits` preset: training time, final loss and sample quality at N = 360.

    OMP_NUM_THREADS=1 python -m benchmarks.tune_digits_preset --candidates preset steps2000 --seeds 0 1 --jobs 2

Each candidate is a complete `training/train.py --preset digits` run (data, training, checkpoints,
saving) in a subprocess, with the candidate's options added, once per training seed. Each trained
pipeline is then scored by `ddpm-evaluate` on N = 360 samples (image i seeded i) at each
`--eval-steps` K with the saved variance, against the 360 held-out digits. The table has one row
per run and, with several seeds, one mean +- sd row per candidate.

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

# name -> (options added to `--preset digits`, overrides of the digits UNet preset's config)
CANDIDATES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "preset": ([], {}),
    # the 0.2.0 preset: what `preset` meant when the table in docs/training.md was measured
    "v0.2.0": (["--max_train_steps", "1500"], {"layers_per_block": 2}),
    "steps1000": (["--max_train_steps", "1000"], {}),
    "steps2000": (["--max_train_steps", "2000"], {}),
    "steps3000": (["--max_train_steps", "3000"], {}),
    "cosine": (["--lr_scheduler", "cosine"], {}),
    "lr2e-3": (["--learning_rate", "2e-3"], {}),
    "batch128": (["--train_batch_size", "128"], {}),
    "ema0.9995": (["--ema_max_decay", "0.9995"], {}),
    "ema_power2/3": (["--ema_power", "0.6667"], {}),
    "cosine_betas": (["--beta_schedule", "squaredcos_cap_v2"], {}),
    "l1": ([], {"layers_per_block": 1}),
    "l1_steps2500": (["--max_train_steps", "2500"], {"layers_per_block": 1}),
    "l1_steps3000": (["--max_train_steps", "3000"], {"layers_per_block": 1}),
    "wide48": ([], {"block_out_channels": [48, 96, 96]}),
}


def unet_config_file(overrides: dict[str, Any], folder: Path) -> Path:
    """A config.json of the digits UNet preset with `overrides` applied, for --model_config_name_or_path."""
    from ddpm_from_scratch.unet import UNET_PRESETS

    config = {**UNET_PRESETS["digits"], "dropout": 0.0, **overrides}
    path = folder / "unet_config.json"
    path.write_text(json.dumps({"_class_name": "ScratchUNet2DModel", **config}))
    return path


def train_and_score(name: str, seed: int, eval_steps: list[int], keep: Path) -> dict[str, Any]:
    options, unet_overrides = CANDIDATES[name]
    output_dir = keep / f"{name.replace('/', '_')}-seed{seed}"
    output_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(TRAIN), "--preset", "digits", "--output_dir", str(output_dir / "run"),
               "--report_to", "none", "--overwrite_output_dir", "--seed", str(seed), "--num_grid_images", "4",
               *options]
    if unet_overrides:
        command += ["--model_config_name_or_path", str(unet_config_file(unet_overrides, output_dir))]
    row: dict[str, Any] = {"name": name, "seed": seed}
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    row["wall_s"] = round(time.time() - started, 1)
    if result.returncode:
        print(f"{name} seed {seed} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
        return {**row, "error": result.returncode}
    metrics = json.loads((output_dir / "run" / "metrics.json").read_text())
    row.update(train_min=metrics["training_minutes"], final_loss=metrics["final_loss"])
    for steps in eval_steps:
        report = output_dir / f"eval{steps}.json"
        evaluate = ["ddpm-evaluate", str(output_dir / "run"), "--num-samples", "360", "--num-inference-steps",
                    str(steps), "--nll-images", "0", "--no-progress", "--json", str(report)]
        result = subprocess.run(evaluate, capture_output=True, text=True)
        if result.returncode:
            print(f"{name} seed {seed} evaluation failed:\n{result.stderr[-3000:]}", file=sys.stderr)
            return {**row, "error": result.returncode}
        figures = json.loads(report.read_text())
        row[f"fd{steps}"] = figures["sample_quality"]["samples"]["frechet_distance"]
        row[f"score{steps}"] = figures["sample_quality"]["samples"]["classifier_score"]
    return row


def summary(rows: list[dict[str, Any]], columns: list[str]) -> dict[str, str]:
    """mean +- sd of each column over the rows of one candidate."""
    cells = {"name": rows[0]["name"], "seed": "mean +- sd"}
    for column in columns[2:]:
        values = [row[column] for row in rows if column in row]
        if len(values) > 1:
            cells[column] = f"{statistics.mean(values):.4g} +- {statistics.stdev(values):.2g}"
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=["preset"], choices=sorted(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (--seed of the trainer)")
    parser.add_argument("--eval-steps", nargs="+", type=int, default=[50], help="sampling steps of the scoring")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (give each one thread: OMP_NUM_THREADS=1)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' folders here (default: a temp folder)")
    args = parser.parse_args()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="tune-digits-"))
    columns = ["name", "seed", "wall_s", "train_min", "final_loss",
               *[f"{kind}{steps}" for steps in args.eval_steps for kind in ("fd", "score")]]
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, jobs {args.jobs}, runs in {keep}")
    runs = [(name, seed) for name in args.candidates for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda run: train_and_score(*run, args.eval_steps, keep), runs))
    table = []
    for name in args.candidates:
        mine = [row for row in rows if row["name"] == name and "error" not in row]
        table += [row for row in rows if row["name"] == name]
        if len(mine) > 1:
            table.append(summary(mine, columns))
    print_table(columns, [[_cell(row.get(column, "")) for column in columns] for row in table])


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
