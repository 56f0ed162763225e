"""Sampling steps and variance, measured: the bound, sample quality and sampling time of one digits model.

For every method (`METHODS`) and every number of sampling steps K, one table row. The methods:

* ``fixed_small``, ``fixed_large``, ``analytic``, ``analytic_model_error``: our scheduler's DDPM step
  with that ``variance_type`` (eta None);
* ``ddim``: our scheduler's step of the DDIM family with eta = 0 (fixed_small: sigma = 0, the noise
  re-derived from the clipped x_0); ``ddim_analytic``: eta = 0 with ``variance_type="analytic"``
  (sigma^2 from the family's optimal-variance formula);
* ``diffusers_ddim``: diffusers' ``DDIMScheduler.from_config(pipe.scheduler.config)`` as diffusers'
  ``DDIMPipeline`` steps it by default (eta = 0, ``use_clipped_model_output=False``: `ShippedDDIMScheduler`).

``analytic`` rows need ``analytic_eps_sq_mean`` in the saved scheduler config and
``analytic_model_error`` rows ``analytic_eps_error_sq_mean`` (``ddpm-estimate-variance`` writes both);
without the first the run stops before any row, without the second those rows are skipped with a message.
Each row has

* the variational bound of the K-step chain on the first ``--nll-images`` held-out digits, bits/dim
  (``likelihood.nll_bits_per_dim(..., num_inference_steps=K)``); "-" for the rows with no bound: sigma = 0
  has no density (``ddim``, ``diffusers_ddim``), and ``ddim_analytic`` while the bound takes no eta;
* the digits evaluator's figures of ``--num-images`` samples (``digits.quality.SampleQualityEvaluator``),
  image i drawn from a generator seeded seed + i (``sampling.seeded``): every row uses the same seeds;
* the time those samples took, scaled to 1,000 images (wall and CPU seconds of this process);
* "within noise": whether the row's Frechet distance is within one standard deviation of the FD of
  real-digit subsets of the same N (``reference_frechet_distance``) from the FD of 1000-step
  ``fixed_small`` (the baseline: K = T, the model as trained).

    ddpm-estimate-variance PATH --num-images 1000 --num-timesteps 100      # once, for the analytic rows
    OMP_NUM_THREADS=1 python -m benchmarks.sampling_tradeoff PATH --out-json tradeoff.json \\
        --plot docs/assets/sampling_tradeoff.png

Rows run cheapest first (K ascending) and ``--out-json`` is rewritten after each one, so an
interrupted run keeps what it measured; ``--resume`` skips the rows already in that file (same
model, N, bound images and seed). The plot (PIL; matplotlib is not a dependency) shows FD against
seconds per 1,000 images, log x, one line per method.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DDIMScheduler

from benchmarks.common import describe_device, markdown_table, software_versions

from ddpm_from_scratch.saving.atomic_io import write_json_atomic
from ddpm_from_scratch.digits.data import held_out_digits
from ddpm_from_scratch.digits.evaluation import sample_digits, unconditional_model_kwargs
from ddpm_from_scratch.saving.folder import load_any_pipeline
from ddpm_from_scratch.digits.quality import SampleQualityEvaluator
from ddpm_from_scratch.sampling.images import save_image_atomic, uint8_to_model_range
from ddpm_from_scratch.bound.likelihood import nll_bits_per_dim
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler



@dataclass(frozen=True)
class Method:
    """A sampler: ScratchDDPMScheduler with ``variance_type`` (None: diffusers' DDIMScheduler as it ships) and
    the pipeline call's ``eta`` (None: the scheduler's own step, DDPM for ours)."""

    variance_type: str | None
    eta: float | None
    has_bound: bool  # a Gaussian reverse step with sigma > 0, whose bound nll_bits_per_dim computes


METHODS = {
    "fixed_small": Method("fixed_small", None, True),
    "fixed_large": Method("fixed_large", None, True),
    "analytic": Method("analytic", None, True),
    "analytic_model_error": Method("analytic_model_error", None, True),
    "ddim": Method("fixed_small", 0.0, False),
    "ddim_analytic": Method("analytic", 0.0, True),
    "diffusers_ddim": Method(None, None, False),
}
# the config key each variance needs, named in the message of a skipped row
MODEL_ERROR_KEY = "analytic_eps_error_sq_mean"
DEFAULT_STEPS = (10, 25, 50, 100, 250, 1000)
BASELINE_METHOD = "fixed_small"  # at K = T: the chain the model was trained on
HEADERS = [
    "method", "K", "bits/dim (bound)", "FD", "classifier score", "coverage", "confident",
    "wall s / 1000 images", "CPU s / 1000 images", "load (1 min)", "within noise",
]


class ShippedDDIMScheduler(DDIMScheduler):
    """diffusers' DDIMScheduler stepped as diffusers' DDIMPipeline steps it by default: with
    ``use_clipped_model_output=False``. Its ``step`` does not take the switch, so ScratchDDPMPipeline (which
    passes True to a step that takes it) drives it as shipped."""

    def step(self, model_output, timestep, sample, eta=0.0, generator=None, variance_noise=None, return_dict=True):
        return super().step(model_output, timestep, sample, eta=eta, use_clipped_model_output=False,
                            generator=generator, variance_noise=variance_noise, return_dict=return_dict)


def scheduler_for(method: str, config: Any):
    """The sampler of one method, built from the saved scheduler's config."""
    variance_type = METHODS[method].variance_type
    if variance_type is None:
        # DDIM has no use for our analytic statistics; leaving them out spares diffusers' "unexpected key" warning
        return ShippedDDIMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("analytic_")})
    # "analytic" needs analytic_eps_sq_mean in the config; without it the scheduler names ddpm-estimate-variance
    return ScratchDDPMScheduler.from_config(config, variance_type=variance_type)


def missing_statistic(method: str, config: Any) -> str | None:
    """Why ``method``'s rows are skipped (its variance's statistic is not in the config), or None."""
    if METHODS[method].variance_type == "analytic_model_error" and config.get(MODEL_ERROR_KEY) is None:
        return (f"skipping {method}: the saved scheduler config has no {MODEL_ERROR_KEY} "
                "(ddpm-estimate-variance PATH writes it)")
    return None


def bound_takes(eta: float | None) -> bool:
    """Whether nll_bits_per_dim can compute the bound of a chain stepped with ``eta``."""
    return eta is None or "eta" in inspect.signature(nll_bits_per_dim).parameters


def measure_bound(pipeline: Any, scheduler: Any, steps: int, num_images: int, seed: int, batch_size: int,
                  eta: float | None = None) -> dict:
    """The K-step chain's bound on the first ``num_images`` held-out digits (x_t draws seeded ``seed``)."""
    unet = pipeline.unet
    x_start = uint8_to_model_range(held_out_digits()[:num_images]).unsqueeze(1).to(pipeline.device, unet.dtype)
    started = time.perf_counter()
    bound = nll_bits_per_dim(
        unet, scheduler, x_start, generator=torch.Generator("cpu").manual_seed(seed), batch_size=batch_size,
        model_kwargs=unconditional_model_kwargs(unet, num_images, pipeline.device), progress=False,
        num_inference_steps=steps, **({} if eta is None else {"eta": eta}),
    )
    return {
        "bits_per_dim": bound.bits_per_dim,
        "standard_error": bound.standard_error,
        "prior_bpd": float(bound.prior_bpd.mean()),
        "decoder_bpd": float(bound.decoder_bpd.mean()),
        "seconds": time.perf_counter() - started,
    }


def measure_samples(pipeline: Any, evaluator: SampleQualityEvaluator, steps: int, num_images: int, seed: int,
                    batch_size: int, eta: float | None = None) -> dict:
    """Sample ``num_images`` digits (image i seeded seed + i) with ``eta``, time it, and score them."""
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    images = sample_digits(pipeline, num_images, steps, batch_size, seed, eta=eta)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = evaluator.figures(images)
    return {
        "frechet_distance": figures.frechet_distance,
        "classifier_score": figures.classifier_score,
        "class_coverage": figures.class_coverage,
        "confident_fraction": figures.confident_fraction,
        "near_copy_fraction": figures.near_copy_fraction,
        "label_histogram": list(figures.label_histogram),
        "sampling_wall_s": wall,
        "sampling_cpu_s": cpu,
        "load_average_1min": load,
    }


def measure_cell(pipeline: Any, saved_config: Any, evaluator: SampleQualityEvaluator, method: str, steps: int,
                 args: argparse.Namespace) -> dict:
    """One table row: the bound (where the method has one) and the samples of ``method`` with ``steps`` steps;
    the sampler is built from the saved scheduler's config (not the previous row's, which may be DDIM's)."""
    spec = METHODS[method]
    pipeline.scheduler = scheduler_for(method, saved_config)
    cell: dict[str, Any] = {"method": method, "steps": steps, "eta": spec.eta, "bound": None}
    if spec.has_bound and bound_takes(spec.eta) and args.nll_images:
        cell["bound"] = measure_bound(pipeline, pipeline.scheduler, steps, args.nll_images, args.seed, args.batch_size,
                                      eta=spec.eta)
    cell["samples"] = measure_samples(pipeline, evaluator, steps, args.num_images, args.seed, args.batch_size,
                                      eta=spec.eta)
    return cell


def within_noise(cell: dict, baseline: dict | None, reference_sd: float) -> str:
    """"yes" if |FD - FD(baseline)| <= one real-subset standard deviation at the same N."""
    if baseline is None:
        return "n/a"
    if cell is baseline:
        return "baseline"
    difference = abs(cell["samples"]["frechet_distance"] - baseline["samples"]["frechet_distance"])
    return "yes" if difference <= reference_sd else "no"


def find_baseline(cells: Sequence[dict], num_train_timesteps: int) -> dict | None:
    return next((c for c in cells if c["method"] == BASELINE_METHOD and c["steps"] == num_train_timesteps), None)


def per_thousand(seconds: float, num_images: int) -> float:
    return seconds * 1000 / num_images


def table_rows(result: dict) -> list[list[str]]:
    cells, n = result["cells"], result["settings"]["num_images"]
    baseline = find_baseline(cells, result["settings"]["num_train_timesteps"])
    rows = []
    for cell in cells:
        bound, samples = cell["bound"], cell["samples"]
        rows.append([
            cell["method"], cell["steps"],
            "-" if bound is None else f"{bound['bits_per_dim']:.3f} +- {bound['standard_error']:.3f}",
            f"{samples['frechet_distance']:.2f}", f"{samples['classifier_score']:.2f}",
            f"{samples['class_coverage']:.2f}", f"{samples['confident_fraction']:.3f}",
            f"{per_thousand(samples['sampling_wall_s'], n):.1f}", f"{per_thousand(samples['sampling_cpu_s'], n):.1f}",
            f"{samples['load_average_1min']:.1f}",
            within_noise(cell, baseline, result["reference"]["frechet_distance_sd"]),
        ])
    return rows


def caption(result: dict) -> str:
    s, r = result["settings"], result["reference"]
    return (
        f"{s['path']}: T = {s['num_train_timesteps']}, N = {s['num_images']} samples per row (image i seeded "
        f"{s['seed']} + i, batch {s['batch_size']}), bound on {s['nll_images']} held-out digits; {s['device']}, "
        f"{s['software']}. Seconds per 1000 images: the N-image sampling time x 1000 / N. "
        f"Real digits at N = {r['num_images']}: FD {r['frechet_distance_mean']:.2f} +- {r['frechet_distance_sd']:.2f} "
        f"({r['draws']} subsets of the train split). Within noise: |FD - FD({BASELINE_METHOD}, "
        f"K = {s['num_train_timesteps']})| <= {r['frechet_distance_sd']:.2f}."
    )


# ----------------------------------------------------------------------------- plot (PIL)

WIDTH, HEIGHT = 900, 560
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 50
COLOURS = {"fixed_small": (31, 119, 180), "fixed_large": (255, 127, 14), "analytic": (44, 160, 44),
           "analytic_model_error": (23, 190, 207), "ddim": (214, 39, 40), "ddim_analytic": (148, 103, 189),
           "diffusers_ddim": (140, 86, 75)}


def render_plot(result: dict, target_seconds: float | None = None, time_key: str = "sampling_wall_s",
                band_label: str = "1000-step fixed_small +- real sd"):
    """FD (y) against seconds per 1000 images (x, log; ``time_key`` of each cell: wall or CPU), a line per
    method with its K at each point; grey band: the baseline's FD +- the sd in ``result["reference"]``;
    dashed line: ``target_seconds``."""
    import PIL.Image
    import PIL.ImageDraw
    import PIL.ImageFont

    from ddpm_from_scratch.training.plots import _nice_ticks

    n = result["settings"]["num_images"]
    cells = result["cells"]
    points = [(per_thousand(c["samples"][time_key], n), c["samples"]["frechet_distance"], c) for c in cells]
    image = PIL.Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = PIL.ImageDraw.Draw(image)
    font = PIL.ImageFont.load_default()
    left, right, top, bottom = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    draw.text((left, 12), f"Frechet distance (N = {n}) vs time to sample 1,000 digits", fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    if not points:
        return image
    sd = result["reference"]["frechet_distance_sd"]
    baseline = find_baseline(cells, result["settings"]["num_train_timesteps"])
    xs = [math.log10(p[0]) for p in points] + ([math.log10(target_seconds)] if target_seconds else [])
    ys = [p[1] for p in points] + ([baseline["samples"]["frechet_distance"] + s for s in (-sd, sd)] if baseline else [])
    x_low, x_high = min(xs) - 0.1, max(xs) + 0.15  # room for the K labels right of the points
    y_low, y_high = min(0.0, min(ys)), max(ys) * 1.05

    def to_pixel(seconds: float, fd: float) -> tuple[float, float]:
        return (left + (math.log10(seconds) - x_low) / (x_high - x_low) * (right - left),
                bottom - (fd - y_low) / (y_high - y_low) * (bottom - top))

    if baseline:
        fd = baseline["samples"]["frechet_distance"]
        _, band_top = to_pixel(10 ** x_low, fd + sd)
        _, band_bottom = to_pixel(10 ** x_low, max(y_low, fd - sd))
        draw.rectangle([left + 1, band_top, right - 1, band_bottom], fill=(225, 225, 225))
        draw.text((left + 6, band_top + 2), f"{band_label} ({sd:.2f})", fill="black", font=font)
    for tick in _nice_ticks(y_low, y_high):
        _, py = to_pixel(10 ** x_low, tick)
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((8, py - 6), f"{tick:g}", fill="black", font=font)
    for exponent in range(math.floor(x_low), math.ceil(x_high) + 1):
        for mantissa in (1, 2, 5):
            seconds = mantissa * 10.0**exponent
            if x_low <= math.log10(seconds) <= x_high:
                px, _ = to_pixel(seconds, y_low)
                draw.line([px, bottom, px, bottom + 4], fill="black")
                draw.text((px - 10, bottom + 8), f"{seconds:g}", fill="black", font=font)
    kind = "CPU" if time_key == "sampling_cpu_s" else "wall"
    draw.text(((left + right) // 2 - 120, HEIGHT - 20), f"{kind} seconds per 1,000 images (log scale)", fill="black",
              font=font)
    if target_seconds:
        px, _ = to_pixel(target_seconds, y_low)
        for y in range(top, bottom, 8):
            draw.line([px, y, px, min(y + 4, bottom)], fill=(90, 90, 90))
        draw.text((px + 4, top + 4), f"{target_seconds:g} s", fill="black", font=font)
    methods = list(dict.fromkeys(c["method"] for c in cells))
    for index, method in enumerate(methods):
        colour = COLOURS.get(method, (0, 0, 0))
        line = sorted((p for p in points if p[2]["method"] == method), key=lambda p: p[2]["steps"])
        pixels = [to_pixel(x, y) for x, y, _ in line]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for (px, py), (_, _, cell) in zip(pixels, line):
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            draw.text((px + 4, py - 12), str(cell["steps"]), fill=colour, font=font)
        legend_y = top + 10 + 18 * index
        draw.line([right + 12, legend_y + 6, right + 36, legend_y + 6], fill=colour, width=2)
        draw.text((right + 42, legend_y), method, fill="black", font=font)
    draw.text((right + 12, top + 20 + 18 * len(methods)), "labels: K steps", fill="black", font=font)
    return image


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a saved digits pipeline (folder or training checkpoint)")
    parser.add_argument("--num-images", type=int, default=360, help="samples per row, scored and timed (default 360)")
    parser.add_argument("--nll-images", type=int, default=64,
                        help="held-out digits in each bound (default 64; 0: no bound)")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS), help="values of K")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i; the bound's draws use seed")
    parser.add_argument("--batch-size", type=int, default=None, help="images per model call (default: --num-images)")
    parser.add_argument("--out-json", default=None, help="results, rewritten after every row")
    parser.add_argument("--resume", action="store_true", help="keep the rows --out-json already holds for these settings")
    parser.add_argument("--plot", default=None, help="write the FD vs time plot (PNG) here")
    parser.add_argument("--target-seconds", type=float, default=30.0,
                        help="a vertical line on the plot at this many seconds per 1000 images (0: none)")
    return parser


def check_args(args: argparse.Namespace, num_train_timesteps: int) -> None:
    if args.num_images < 2:
        raise ValueError(f"--num-images must be >= 2 (a covariance needs 2 images), got {args.num_images}")
    if not 0 <= args.nll_images <= len(held_out_digits()):
        raise ValueError(f"--nll-images must be in [0, {len(held_out_digits())}], got {args.nll_images}")
    bad = [k for k in args.steps if not 1 <= k <= num_train_timesteps]
    if bad:
        raise ValueError(f"--steps must be in [1, T = {num_train_timesteps}], got {bad}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")


def previous_cells(out_json: str | None, settings: dict) -> list[dict]:
    """The rows of an earlier run with the same settings (``--resume``)."""
    if out_json is None or not Path(out_json).is_file():
        return []
    earlier = json.loads(Path(out_json).read_text())
    keys = ("path", "num_images", "nll_images", "seed", "batch_size")
    if any(earlier["settings"].get(k) != settings[k] for k in keys):
        raise ValueError(f"--resume: {out_json} was written with other settings ({', '.join(keys)} must match)")
    return earlier["cells"]


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    pipeline = load_any_pipeline(args.path)
    pipeline.unet.eval()
    pipeline.set_progress_bar_config(disable=True)
    saved_config = pipeline.scheduler.config
    T = saved_config.num_train_timesteps
    check_args(args, T)
    args.batch_size = args.batch_size or args.num_images
    for method in list(args.methods):  # fail now, not after an hour of rows (e.g. analytic without its statistic)
        skipped = missing_statistic(method, saved_config)
        if skipped:
            print(skipped, flush=True)
            args.methods.remove(method)
            continue
        scheduler_for(method, saved_config)

    evaluator = SampleQualityEvaluator()
    mean, sd, reference_n = evaluator.reference_frechet_distance(args.num_images)
    settings = {
        "path": str(args.path), "num_train_timesteps": T, "num_images": args.num_images,
        "nll_images": args.nll_images, "seed": args.seed, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "device": describe_device(pipeline.device),
        "software": software_versions(), "saved_variance_type": saved_config.get("variance_type"),
    }
    result = {
        "settings": settings,
        "reference": {"num_images": reference_n, "frechet_distance_mean": mean, "frechet_distance_sd": sd,
                      "draws": evaluator.reference_draws},
        "cells": previous_cells(args.out_json, settings) if args.resume else [],
    }
    done = {(c["method"], c["steps"]) for c in result["cells"]}
    sample_digits(pipeline, 2, 2, 2, args.seed)  # lazy initialisation outside the timed rows
    for steps in sorted(set(args.steps)):
        for method in args.methods:
            if (method, steps) in done:
                continue
            cell = measure_cell(pipeline, saved_config, evaluator, method, steps, args)
            result["cells"].append(cell)
            samples = cell["samples"]
            print(f"{method:>20} K={steps:<5} FD {samples['frechet_distance']:7.2f}  "
                  f"{per_thousand(samples['sampling_wall_s'], args.num_images):8.1f} s/1000  "
                  f"load {samples['load_average_1min']:.1f}", flush=True)
            if args.out_json:
                write_json_atomic(result, args.out_json)
    order = {m: i for i, m in enumerate(args.methods)}
    result["cells"].sort(key=lambda c: (order.get(c["method"], len(order)), -c["steps"]))
    if args.out_json:
        write_json_atomic(result, args.out_json)
    print()
    print(caption(result))
    print()
    print(markdown_table(HEADERS, table_rows(result)))
    if args.plot:
        save_image_atomic(render_plot(result, args.target_seconds or None), args.plot)
    return result


if __name__ == "__main__":
    main()
