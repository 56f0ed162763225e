"""The sampling trade-off over several seeds, and the default it supports.

    python -m benchmarks.tradeoff_seeds runs/tradeoff_seed*.json

Reads the JSON files ``benchmarks/sampling_tradeoff.py --out-json`` wrote for one model at one N with
different ``--seed`` values (disjoint noise: image i of seed s is seeded s + i), and prints, for every
(method, K) measured at two seeds or more, the mean and standard deviation over the seeds of the
Frechet distance, the classifier score and the confident fraction, with the CPU seconds per 1,000
images. The yardstick is the spread between independent draws of 1000-step ``fixed_small`` (the
model as trained): a setting is "within the spread" when its mean FD is at most the baseline's mean
plus one standard deviation of the baseline's draws. The last line names the fastest such setting
(fewest steps; ties go to the lower mean FD): the default a saved pipeline should record.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table
from ddpm_from_scratch.sampling.images import save_image_atomic

BASELINE = ("fixed_small", 1000)
FIGURES = ("frechet_distance", "classifier_score", "confident_fraction")


def load_cells(paths: list[Path]) -> tuple[dict[tuple[str, int], dict[int, dict[str, Any]]], dict[str, Any]]:
    """(method, K) -> seed -> the cell's samples, checked to be one model at one N; and the first file's settings."""
    cells: dict[tuple[str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    first: dict[str, Any] | None = None
    for path in paths:
        data = json.loads(Path(path).read_text())
        settings = data["settings"]
        if first is None:
            first = settings
        for key in ("path", "num_images"):
            if settings[key] != first[key]:
                raise ValueError(f"{path}: {key} = {settings[key]!r}, but {first[key]!r} in the first file: "
                                 "the seeds must come from one model at one N")
        for cell in data["cells"]:
            if cell.get("samples"):
                cells[cell["method"], cell["steps"]][settings["seed"]] = cell["samples"]
    if first is None:
        raise ValueError("no files given")
    return cells, first


def summarize(cells: dict[tuple[str, int], dict[int, dict[str, Any]]]) -> tuple[list[dict[str, Any]], str | None]:
    """One row per (method, K) with >= 2 seeds: means, sds, CPU s per 1000 images; and the chosen setting."""
    if len(cells.get(BASELINE, {})) < 2:
        raise ValueError(f"the baseline {BASELINE[0]} at K = {BASELINE[1]} needs two seeds or more")
    base = [draw["frechet_distance"] for draw in cells[BASELINE].values()]
    limit = statistics.mean(base) + statistics.stdev(base)
    rows = []
    for (method, steps), draws in sorted(cells.items(), key=lambda item: (item[0][1], item[0][0])):
        if len(draws) < 2:
            continue
        row: dict[str, Any] = {"method": method, "steps": steps, "seeds": sorted(draws)}
        for figure in FIGURES:
            values = [draw[figure] for draw in draws.values()]
            row[figure] = (statistics.mean(values), statistics.stdev(values))
        row["cpu_s"] = statistics.median(draw["sampling_cpu_s"] for draw in draws.values())
        row["within"] = row["frechet_distance"][0] <= limit
        rows.append(row)
    candidates = [row for row in rows if row["within"] and (row["method"], row["steps"]) != BASELINE]
    chosen = min(candidates, key=lambda row: (row["steps"], row["frechet_distance"][0]), default=None)
    return rows, (None if chosen is None else f"{chosen['method']} at K = {chosen['steps']}")


def plot(rows: list[dict[str, Any]], settings: dict[str, Any]):
    """sampling_tradeoff's plot of the seed means: mean FD against median CPU seconds per 1000 images, the
    grey band the baseline's mean +- the sd of its draws."""
    from benchmarks.sampling_tradeoff import render_plot

    base = next(row for row in rows if (row["method"], row["steps"]) == BASELINE)
    cells = [{"method": row["method"], "steps": row["steps"],
              "samples": {"frechet_distance": row["frechet_distance"][0], "sampling_cpu_s": row["cpu_s"]}}
             for row in rows]
    result = {"settings": {**settings, "num_train_timesteps": BASELINE[1]}, "cells": cells,
              "reference": {"frechet_distance_sd": base["frechet_distance"][1]}}
    return render_plot(result, 30.0, time_key="sampling_cpu_s", band_label="1000-step fixed_small +- sd of its draws")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="sampling_tradeoff.py --out-json files, one per seed")
    parser.add_argument("--plot", default=None, help="write mean FD against CPU seconds per 1000 images (PNG) here")
    args = parser.parse_args(argv)
    cells, settings = load_cells(args.files)
    rows, chosen = summarize(cells)
    if args.plot:
        save_image_atomic(plot(rows, settings), args.plot)
    num_images = settings["num_images"]
    print(f"{settings['path']}: N = {num_images} per draw; {settings['device']}; CPU s per 1000 images: median over "
          f"the seeds of the sampling CPU time x 1000 / N")
    print(markdown_table(
        ["method", "K", "seeds", "FD (mean +- sd)", "classifier score", "confident", "CPU s / 1000 images",
         "within the 1000-step spread"],
        [[row["method"], row["steps"], len(row["seeds"]),
          "{:.2f} +- {:.2f}".format(*row["frechet_distance"]), "{:.2f} +- {:.2f}".format(*row["classifier_score"]),
          "{:.3f} +- {:.3f}".format(*row["confident_fraction"]),
          f"{row['cpu_s'] * 1000 / num_images:.1f}",
          "baseline" if (row["method"], row["steps"]) == BASELINE else ("yes" if row["within"] else "no")]
         for row in rows]))
    print(f"fastest setting within the spread: {chosen or 'none'}")
    return rows


if __name__ == "__main__":
    main()
