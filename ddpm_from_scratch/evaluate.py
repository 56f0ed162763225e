"""Command line: the NLL bound and sample quality of a saved digits pipeline, in one table.

    python -m ddpm_from_scratch.evaluate PATH
    ddpm-evaluate PATH --num-samples 360 --num-inference-steps 1000 --nll-images 360 --seed 0 --json eval.json

PATH is a folder written by ``save_pretrained`` (or a Hub repo id) of a ``ScratchDDPMPipeline``; a
folder saved by a stock diffusers pipeline (e.g. ``DDPMPipeline``) is loaded with diffusers' own
loader, so both sides of a comparison are evaluated by the same code. Printed:

* the variational bound on -log p(x_0) of the held-out digits in bits/dim (``likelihood``: all T
  terms, exact per-timestep loop; the test split of ``load_digits_dataset``, uint8 -> [-1, 1]);
* the sample-quality figures (``sample_quality``) of ``--num-samples`` generated digits beside the
  same figures for real held-out digits, with the number of samples and sampling steps.

Sample i is drawn with its own generator seeded ``seed + i`` (as ``ddpm-sample`` does), the bound's
x_t draws with one generator seeded ``seed``: the figures do not depend on ``--batch-size``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .cli_utils import non_negative_int, positive_int, resolve_device
from .digits import DIGITS_RESOLUTION, digits_as_uint8, split_indices
from .likelihood import VariationalBound, nll_bits_per_dim

VARIANCE_CHOICES = ("saved", "fixed_small", "fixed_large", "learned_range")


# ----------------------------------------------------------------------------- data and model


def held_out_digits() -> np.ndarray:
    """The held-out (``test``) split of the built-in digits as uint8 (360, 8, 8), as the trainer splits them."""
    images, labels = digits_as_uint8()
    _, held_out = split_indices(labels)
    return images[held_out]


def uint8_to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1, 1]: k / 127.5 - 1, the grid the decoder's bins sit on."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)


def load_pipeline(path: str | os.PathLike):
    """A ``ScratchDDPMPipeline`` folder or Hub repo, or a stock diffusers pipeline folder (e.g. ``DDPMPipeline``)."""
    from .pipeline import ScratchDDPMPipeline

    text = str(path)
    looks_local = text.startswith(("/", ".", "~")) or text.count("/") != 1 or os.sep != "/" and os.sep in text
    if looks_local and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"no pipeline folder at {text!r} (a Hub repo id looks like 'owner/name')")
    path = Path(path).expanduser() if looks_local else text
    index_file = Path(path) / "model_index.json"
    if index_file.is_file():
        declared = json.loads(index_file.read_text()).get("_class_name")
        declared = declared[-1] if isinstance(declared, list) else declared
        if declared != ScratchDDPMPipeline.__name__:
            from diffusers import DiffusionPipeline

            return DiffusionPipeline.from_pretrained(path)
    return ScratchDDPMPipeline.from_pretrained(path)


def _check_digits_model(unet: Any) -> None:
    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else tuple(config.sample_size)
    if config.in_channels != 1 or size not in (DIGITS_RESOLUTION, (DIGITS_RESOLUTION, DIGITS_RESOLUTION)):
        raise ValueError(
            f"ddpm-evaluate measures models of the built-in 1x{DIGITS_RESOLUTION}x{DIGITS_RESOLUTION} digits; "
            f"this UNet takes {config.in_channels}x{size} images"
        )


def _unconditional_kwargs(unet: Any, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A class-conditional UNet is evaluated as the unconditional model p(x): every label is the null class."""
    from .pipeline import class_conditioning

    conditioning = class_conditioning(unet)
    if conditioning is None:
        return {}
    return {"class_labels": torch.full((batch,), conditioning[1], dtype=torch.long, device=device)}


def sample_digits(pipeline: Any, num_samples: int, num_inference_steps: int, batch_size: int, seed: int) -> np.ndarray:
    """``num_samples`` generated digits as uint8 (N, H, W); sample i uses a CPU generator seeded ``seed + i``."""
    batches = []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        generators = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(count)]
        images = pipeline(
            batch_size=count, generator=generators, num_inference_steps=num_inference_steps, output_type="np"
        ).images
        batches.append(np.rint(np.clip(images[..., 0], 0.0, 1.0) * 255.0).astype(np.uint8))
    return np.concatenate(batches)


# ----------------------------------------------------------------------------- the evaluation


@dataclass
class EvaluationReport:
    """What ``ddpm-evaluate`` prints: the bound on held-out digits and the sample-quality report."""

    path: str
    num_train_timesteps: int
    prediction_type: str
    variance_type: str
    num_inference_steps: int | None
    seed: int
    device: str
    bound: VariationalBound | None
    quality: Any | None  # sample_quality.SampleQualityReport
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
            "variance_type": self.variance_type,
            "num_inference_steps": self.num_inference_steps,
            "seed": self.seed,
            "device": self.device,
            "nll": None if self.bound is None else self.bound.to_dict(),
            "sample_quality": None if self.quality is None else self.quality.to_dict(),
            "seconds": dict(self.seconds),
        }

    def format_table(self) -> str:
        """One plain-text table: figure | model | real held-out digits."""
        rows: list[tuple[str, str, str]] = []
        if self.bound is not None:
            b = self.bound
            n = b.total_bpd.numel()
            rows += [
                (f"NLL bound on {n} held-out digits, bits/dim (lower better)",
                 f"{b.bits_per_dim:.3f} +- {b.standard_error:.3f}", ""),
                ("  prior L_T + decoder L_0, bits/dim",
                 f"{float(b.prior_bpd.mean()):.4f} + {float(b.decoder_bpd.mean()):.3f}", ""),
            ]
        if self.quality is not None:
            s, r = self.quality.samples, self.quality.reference
            conf = self.quality.confidence
            rows += [
                ("images (generated | held-out)", f"{s.num_images}", f"{r.num_images}"),
                ("sampling steps", f"{self.num_inference_steps}", ""),
                ("Frechet distance to held-out (lower better)", f"{s.frechet_distance:.3f}",
                 f"{r.frechet_distance:.3f} +- {r.frechet_distance_std:.3f} ({r.fd_num_images} train digits)"),
                ("classifier score (1..10, higher better)", f"{s.classifier_score:.3f}", f"{r.classifier_score:.3f}"),
                (f"class coverage (p >= {conf:g})", f"{s.class_coverage:.2f}", f"{r.class_coverage:.2f}"),
                ("label entropy (bits, max 3.32)", f"{s.label_entropy_bits:.3f}", f"{r.label_entropy_bits:.3f}"),
                (f"confident fraction (p >= {conf:g})", f"{s.confident_fraction:.3f}", f"{r.confident_fraction:.3f}"),
                (f"near-copy fraction (L2 < {self.quality.near_copy_threshold:.3f})", f"{s.near_copy_fraction:.3f}",
                 f"{r.near_copy_fraction:.3f}"),
                ("median L2 to nearest train image", f"{s.median_train_distance:.3f}",
                 f"{r.median_train_distance:.3f}"),
            ]
        width = max(len(row[0]) for row in rows)
        col = max(len("model"), *(len(row[1]) for row in rows))
        title = (
            f"{self.path}: T = {self.num_train_timesteps} training steps, prediction {self.prediction_type}, "
            f"variance {self.variance_type}, seed {self.seed}, device {self.device}"
        )
        if self.quality is not None:
            title += f"; digits classifier held-out accuracy {100 * self.quality.classifier_held_out_accuracy:.1f}%"
        lines = [title, f"{'figure':<{width}}  {'model':>{col}}  real held-out digits"]
        lines += [f"{name:<{width}}  {model:>{col}}  {real}".rstrip() for name, model, real in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


def evaluate_pipeline(
    pipeline: Any,
    *,
    path: str = "",
    num_samples: int = 360,
    num_inference_steps: int | None = None,
    nll_images: int | None = None,
    batch_size: int = 360,
    seed: int = 0,
    classifier_cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Bound on the first ``nll_images`` held-out digits (None: all 360; 0: skip) and the sample quality of
    ``num_samples`` samples (0: skip) drawn with ``num_inference_steps`` (None: the scheduler's T)."""
    from .sample_quality import evaluate_samples

    unet, scheduler = pipeline.unet, pipeline.scheduler
    _check_digits_model(unet)
    held_out = held_out_digits()
    nll_images = len(held_out) if nll_images is None else nll_images
    if not 0 <= nll_images <= len(held_out):
        raise ValueError(f"nll_images must be in [0, {len(held_out)}] (the held-out split), got {nll_images}")
    if num_samples == 1 or num_samples < 0:
        raise ValueError(f"num_samples must be 0 (skip) or >= 2 (a covariance needs 2 images), got {num_samples}")
    if nll_images == 0 and num_samples == 0:
        raise ValueError("nothing to evaluate: nll_images and num_samples are both 0")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    T = scheduler.config.num_train_timesteps
    steps = T if num_inference_steps is None else num_inference_steps
    device = pipeline.device
    unet.eval()
    pipeline.set_progress_bar_config(disable=not progress)

    report = EvaluationReport(
        path=str(path), num_train_timesteps=T, prediction_type=scheduler.config.get("prediction_type", "epsilon"),
        variance_type=scheduler.config.get("variance_type", "fixed_small"),
        num_inference_steps=steps if num_samples else None, seed=seed, device=str(device), bound=None, quality=None,
    )
    if nll_images:
        x_start = uint8_to_model_range(held_out[:nll_images]).to(device=device, dtype=unet.dtype)
        started = time.perf_counter()
        report.bound = nll_bits_per_dim(
            unet, scheduler, x_start,
            generator=torch.Generator("cpu").manual_seed(seed),
            batch_size=batch_size,
            model_kwargs=_unconditional_kwargs(unet, nll_images, device),
            progress=progress,
        )
        report.seconds["nll"] = time.perf_counter() - started
    if num_samples:
        started = time.perf_counter()
        samples = sample_digits(pipeline, num_samples, steps, batch_size, seed)
        report.seconds["sampling"] = time.perf_counter() - started
        report.quality = evaluate_samples(samples, cache_dir=classifier_cache_dir)
    return report


# ----------------------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-evaluate",
        description="NLL bound (bits/dim) on the held-out digits and sample quality of a saved pipeline, in one table.",
    )
    parser.add_argument(
        "path", help="folder written by save_pretrained (or a stock diffusers pipeline folder), or a Hub repo id"
    )
    parser.add_argument("--num-samples", type=non_negative_int, default=360,
                        help="generated digits for the sample-quality figures (default 360; 0 skips)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=None,
                        help="sampling steps (default: the scheduler's num_train_timesteps, full DDPM sampling)")
    parser.add_argument("--nll-images", type=non_negative_int, default=None,
                        help="held-out digits in the bound (default: all 360; 0 skips); the bound uses all T steps")
    parser.add_argument("--batch-size", type=positive_int, default=360, help="images per model call (default 360)")
    parser.add_argument("--variance-type", choices=VARIANCE_CHOICES, default="saved",
                        help="reverse-process variance for the bound and the samples (default: the saved scheduler's)")
    parser.add_argument("--device", default="auto", help="torch device, e.g. cpu, cuda (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0,
                        help="sample i uses seed + i; the bound's draws use seed (default 0)")
    parser.add_argument("--json", default=None,
                        help="also write the figures (and the bound per timestep) to this JSON file")
    parser.add_argument("--classifier-cache-dir", default=None,
                        help="cache folder of the digits classifier (default: see digits_classifier)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON via a temporary file in the same folder and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        pipeline = load_pipeline(args.path)
        if args.variance_type != "saved":
            scheduler_cls = type(pipeline.scheduler)
            pipeline.scheduler = scheduler_cls.from_config(pipeline.scheduler.config, variance_type=args.variance_type)
        pipeline.to(device)
        report = evaluate_pipeline(
            pipeline,
            path=args.path,
            num_samples=args.num_samples,
            num_inference_steps=args.num_inference_steps,
            nll_images=args.nll_images,
            batch_size=args.batch_size,
            seed=args.seed,
            classifier_cache_dir=args.classifier_cache_dir,
            progress=not args.no_progress,
        )
        print(report.format_table())
        if args.json:
            print(f"wrote {write_json_atomic(report.to_dict(), args.json)}")
    except (ValueError, OSError) as error:
        parser.exit(1, f"ddpm-evaluate: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
