#!/usr/bin/env python
"""Measure candidate settings for the `digits` preset: wall time and sample quality of full runs.

    python training/tune_digits_preset.py --candidates b64_s1500 b32_s3000 --threads 1

Each candidate is a complete `training/train.py` run (data, training, checkpoints, the final grid,
saving) in a subprocess, timed end to end; quality comes from the run's metrics.json (the digits
classifier's Frechet distance and classifier score on the final grid's samples, see
ddpm_from_scratch/digits/quality.py). Prints one table row per run. Timings depend on the machine
and on what else runs on it: report them with the device and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = Path(__file__).resolve().parent / "train.py"

# name -> options added to `--preset digits`
CANDIDATES: dict[str, list[str]] = {
    "preset": [],  # batch 64, 1500 updates, lr 1e-3, EMA 0.999 (power 3/4), 100 images x 1000 steps
    "steps1000": ["--max_train_steps", "1000"],
    "steps2500": ["--max_train_steps", "2500"],
    "batch32": ["--train_batch_size", "32"],
    "batch128_steps1000": ["--train_batch_size", "128", "--max_train_steps", "1000"],
    "lr2e-4": ["--learning_rate", "2e-4"],
    "lr2e-3": ["--learning_rate", "2e-3"],
    "ema0.9999": ["--ema_max_decay", "0.9999", "--ema_power", "0.6667"],
    "no_ema": ["--no-use_ema"],
    "dropout0.1": ["--dropout", "0.1"],
    "grid250": ["--grid_inference_steps", "250"],
}

COLUMNS = ["name", "wall_s", "train_min", "final_loss", "digits_frechet_distance", "digits_classifier_score",
           "digits_confident_fraction", "digits_class_coverage", "digits_near_copy_fraction"]


def run(name: str, extra: list[str], threads: int | None, keep: Path | None) -> dict:
    output_dir = (keep / name) if keep else Path(tempfile.mkdtemp(prefix=f"digits-{name}-"))
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, str(TRAIN), "--preset", "digits", "--output_dir", str(output_dir), "--report_to", "none",
               "--overwrite_output_dir"] + extra
    started = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr)
        return {"name": name, "wall_s": round(wall, 1), "error": result.returncode}
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {"name": name, "wall_s": round(wall, 1), "train_min": metrics["training_minutes"], **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=["preset"], choices=sorted(CANDIDATES))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: torch's)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' output folders under this folder")
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()}, threads {args.threads or 'default'}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for name in args.candidates:
        row = run(name, CANDIDATES[name], args.threads, args.keep)
        print("| " + " | ".join(str(row.get(column, "")) for column in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    main()
