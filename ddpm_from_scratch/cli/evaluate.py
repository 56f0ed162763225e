"""ddpm-evaluate: the NLL bound and sample quality of a saved digits pipeline, in one table.

    ddpm-evaluate PATH --num-samples 360 --num-inference-steps 1000 --nll-images 360 --seed 0 --json eval.json

PATH is a folder written by ``save_pretrained`` (or a Hub repo id) of a ``ScratchDDPMPipeline``, a
training checkpoint folder (checkpoint-N/: its EMA weights if it has them), or a folder saved by a
stock diffusers pipeline (e.g. ``DDPMPipeline``). What is measured, and how the samples are seeded
(the images ``ddpm-sample`` draws for the same seed): :mod:`ddpm_from_scratch.digits.evaluation`.
Every mistake is one ``ddpm-evaluate: error: ...`` line and exit status 2, reported before the long
work starts (``--json``'s folder is checked first).

A class-conditional model is sampled with its null class (its unconditional p(x)), or with
``--class-labels balanced`` with class i mod K for image i (and ``--guidance-scale W``).

For a model of another dataset (RGB), ``--fid-weights W --reference-dir DIR`` measures FID and KID of
``--num-samples`` samples in the features of the FID Inception network (``W``: the published
pt_inception-2015-12-05 weights, refused if their SHA-256 differs) against the images in ``DIR``, whose
features are cached (:func:`ddpm_from_scratch.digits.quality.inception_fid`); the digits bound is not
computed then.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from ..sampling.seeded import CLASS_LABEL_CHOICES
from ..saving.atomic_io import write_json_atomic
from .args import (
    SCHEDULER_CHOICES,
    USER_ERRORS,
    VARIANCE_CHOICES,
    check_output_file,
    chosen_scheduler,
    exit_with_error,
    non_negative_int,
    override_variance_type,
    positive_int,
    resolve_device,
    write_output,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-evaluate",
        description="NLL bound (bits/dim) on the held-out digits and sample quality of a saved pipeline, in one table.",
    )
    parser.add_argument(
        "path",
        help="folder written by save_pretrained, a training checkpoint folder, a stock diffusers pipeline folder, "
        "or a Hub repo id",
    )
    parser.add_argument("--num-samples", type=non_negative_int, default=360,
                        help="generated digits for the sample-quality figures (default 360; 0 skips)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=None,
                        help="sampling steps (default: the pipeline's recorded default setting, else the "
                             "scheduler's num_train_timesteps, full DDPM sampling)")
    parser.add_argument("--nll-images", type=non_negative_int, default=None,
                        help="held-out digits in the bound (default: all 360; 0 skips); the bound uses all T steps")
    parser.add_argument("--batch-size", type=positive_int, default=360, help="images per model call (default 360)")
    parser.add_argument("--scheduler", choices=SCHEDULER_CHOICES, default="saved",
                        help="samples with the saved scheduler, or 'ddim': diffusers' DDIMScheduler with the same "
                             "betas, stepped with use_clipped_model_output=True (the bound uses the saved one)")
    parser.add_argument("--variance-type", choices=VARIANCE_CHOICES, default="saved",
                        help="reverse-process variance for the bound and the samples (default: the saved scheduler's)")
    parser.add_argument("--class-labels", choices=CLASS_LABEL_CHOICES, default="null",
                        help="the classes of a class-conditional model's samples: null (default: the null class, "
                             "the model's unconditional p(x)) or balanced (image i gets class i mod K)")
    parser.add_argument("--guidance-scale", type=float, default=None, metavar="W",
                        help="classifier-free guidance weight for --class-labels balanced (default: none, w = 1)")
    parser.add_argument("--device", default="auto", help="torch device, e.g. cpu, cuda (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0,
                        help="sample i uses seed + i; the bound's draws use seed (default 0)")
    parser.add_argument("--json", default=None,
                        help="also write the figures (and the bound per timestep) to this JSON file")
    parser.add_argument("--classifier-cache-dir", default=None,
                        help="cache folder of the digits classifier (default: see ddpm_from_scratch.digits.classifier)")
    parser.add_argument("--fid-weights", default=None, metavar="PATH",
                        help="RGB datasets: FID/KID in Inception features, from this local "
                             "pt_inception-2015-12-05-6726825d.pth (SHA-256 checked); needs --reference-dir "
                             "and torch-fidelity")
    parser.add_argument("--reference-dir", default=None, metavar="DIR",
                        help="folder of real images (png/jpg/...) that --fid-weights compares the samples with")
    parser.add_argument("--fid-cache-dir", default=None, metavar="DIR",
                        help="where the reference features are cached, keyed by the folder's content and the "
                             "weights' SHA-256 (default: the classifier's cache folder)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress bars (the bound's, and the one over all samples)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..digits.evaluation import SampleLabels, evaluate_pipeline
    from ..saving.folder import load_any_pipeline

    try:
        json_out = None if args.json is None else check_output_file(args.json, "--json", (".json",))
        if args.num_samples == 1:
            raise ValueError("--num-samples must be 0 (skip) or >= 2 (a covariance needs 2 images), got 1")
        if args.num_samples == 0 and args.nll_images == 0:
            raise ValueError("nothing to evaluate: --num-samples and --nll-images are both 0")
        if (args.fid_weights is None) != (args.reference_dir is None):
            raise ValueError("--fid-weights and --reference-dir go together (the Inception FID needs both)")
        if args.fid_weights is not None:
            return _inception_main(args, json_out)
        device = resolve_device(args.device)
        pipeline = load_any_pipeline(args.path)
        override_variance_type(pipeline, args.variance_type)
        pipeline.to(device)
        report = evaluate_pipeline(
            pipeline,
            sampling_scheduler=chosen_scheduler(args.scheduler, pipeline.scheduler),
            path=args.path,
            num_samples=args.num_samples,
            num_inference_steps=args.num_inference_steps,
            nll_images=args.nll_images,
            batch_size=args.batch_size,
            seed=args.seed,
            classifier_cache_dir=args.classifier_cache_dir,
            progress=not args.no_progress,
            labels=SampleLabels(args.class_labels, args.guidance_scale),
        )
        print(report.format_table())
        if json_out is not None:
            write_output(lambda path: write_json_atomic(report.to_dict(), path), json_out, "--json")
            print(f"wrote {args.json}")
    except USER_ERRORS as error:
        exit_with_error(parser, error)
    return 0


def _sample_images(pipeline: Any, args: argparse.Namespace) -> Any:
    """``--num-samples`` samples as float (N, H, W, C) in [0, 1], drawn as ``evaluate_pipeline`` draws them:
    sample i seeded ``--seed`` + i, the pipeline's recorded default setting unless a step count is given."""
    from ..digits.evaluation import SampleLabels, sample_images

    labels = SampleLabels(args.class_labels, args.guidance_scale)
    labels.check(pipeline)
    pipeline.scheduler = chosen_scheduler(args.scheduler, pipeline.scheduler)
    steps, eta = (pipeline.sampling_setting(args.num_inference_steps) if hasattr(pipeline, "sampling_setting")
                  else (args.num_inference_steps or pipeline.scheduler.config.num_train_timesteps, None))
    pipeline.set_progress_bar_config(disable=args.no_progress)
    return sample_images(pipeline, args.num_samples, steps, args.batch_size, args.seed, not args.no_progress, eta,
                         labels)


def _inception_main(args: argparse.Namespace, json_out: Any) -> int:
    """``--fid-weights``: FID / KID of the samples against ``--reference-dir``; the weights' hash and the
    folder are checked before the pipeline is loaded."""
    from ..digits import quality
    from ..digits.metrics import INCEPTION_SHA256, verified_weights_file
    from ..saving.folder import load_any_pipeline

    if args.num_samples < 2:
        raise ValueError(f"--fid-weights needs --num-samples >= 2, got {args.num_samples}")
    if args.nll_images:
        raise ValueError("--nll-images measures the held-out digits; leave it out with --fid-weights")
    verified_weights_file(args.fid_weights, INCEPTION_SHA256, "--fid-weights")
    quality.image_folder_files(args.reference_dir, "--reference-dir")
    device = resolve_device(args.device)
    pipeline = load_any_pipeline(args.path)
    override_variance_type(pipeline, args.variance_type)
    pipeline.to(device)
    images = _sample_images(pipeline, args)
    report = quality.inception_fid(args.fid_weights, images, args.reference_dir, cache_dir=args.fid_cache_dir,
                                   batch_size=args.batch_size, device=device, seed=args.seed)
    print(report.format_table())
    if json_out is not None:
        data = {"path": args.path, "seed": args.seed, "class_labels": args.class_labels,
                "guidance_scale": args.guidance_scale, "inception": report.to_dict()}
        write_output(lambda path: write_json_atomic(data, path), json_out, "--json")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
