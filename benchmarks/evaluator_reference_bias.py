"""How much the evaluator's real row gains from its classifier having been trained on those digits.

    python -m benchmarks.evaluator_reference_bias
    python -m benchmarks.evaluator_reference_bias --pipeline digits-ddpm --sampling-seeds 0 1000 2000 3000

`ddpm-evaluate`'s real row scores real *train* digits against the held-out ones, in the features of
a classifier trained on those same train digits. A model's samples are new digits, which the
classifier has never seen. This script measures the difference with a classifier trained on half of
the train split (A; the same config otherwise) and scores, against the held-out digits:

- draws of N digits from A (seen by the classifier, like the evaluator's real row);
- draws of N digits from the other half B (unseen: what a model that samples the data exactly would
  score);
- with --pipeline, N samples of a saved digits pipeline (its default sampling setting) per sampling seed.

Each row is the mean +- sd over its draws (real) or sampling seeds (samples). Draws of N from a half
of ~719 digits overlap, so their sd understates that of independent sets.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.common import print_table

FIGURES = ("frechet_distance", "precision", "recall", "density", "coverage", "confident_fraction")


def summary_row(name: str, rows: list) -> list[str]:
    """One table row: mean +- sd of each figure over the image sets' ``QualityFigures``."""
    cells = [name, str(len(rows))]
    for figure in FIGURES:
        values = np.array([getattr(row, figure) for row in rows])
        cells.append(f"{values.mean():.4f} +- {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}")
    return cells


def main(argv: list[str] | None = None) -> None:
    from ddpm_from_scratch.digits.classifier import (DigitsClassifierConfig, TrainedDigitsClassifier, held_out_accuracy,
                                                     train_and_held_out_arrays, train_digits_classifier)
    from ddpm_from_scratch.digits.quality import SampleQualityEvaluator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=360, help="N of every draw and sample set (default 360)")
    parser.add_argument("--draws", type=int, default=10, help="draws of real digits per half")
    parser.add_argument("--split-seed", type=int, default=0, help="seeds the halving of the train split")
    parser.add_argument("--pipeline", default=None, help="a saved digits pipeline whose samples to score too")
    parser.add_argument("--sampling-seeds", type=int, nargs="+", default=[0, 1000, 2000, 3000],
                        help="sample i of a set is seeded seed + i (ddpm-evaluate's --seed)")
    args = parser.parse_args(argv)

    config = DigitsClassifierConfig()
    (train_images, _), (held_out_images, _) = train_and_held_out_arrays(config)
    order = np.random.default_rng(args.split_seed).permutation(len(train_images))
    seen, unseen = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    if not 2 <= args.num_images <= len(unseen):
        raise SystemExit(f"--num-images must be in [2, {len(unseen)}] (half the train split), got {args.num_images}")
    model = train_digits_classifier(config, train_subset=seen)
    classifier = TrainedDigitsClassifier(model, config, held_out_accuracy(model, config))
    evaluator = SampleQualityEvaluator(classifier)  # the evaluator's figures, in this classifier's features

    rng = np.random.default_rng(args.split_seed + 1)
    table = []
    for name, half in (("real, seen by the classifier (A)", seen), ("real, unseen (B)", unseen)):
        rows = [evaluator.figures(train_images[rng.choice(half, args.num_images, replace=False)])
                for _ in range(args.draws)]
        table.append(summary_row(name, rows))
    if args.pipeline:
        from ddpm_from_scratch.digits.evaluation import sample_digits
        from ddpm_from_scratch.saving.folder import load_any_pipeline

        pipeline = load_any_pipeline(args.pipeline)
        pipeline.set_progress_bar_config(disable=True)
        steps, eta = pipeline.sampling_setting(None) if hasattr(pipeline, "sampling_setting") else (None, None)
        rows = [evaluator.figures(sample_digits(pipeline, args.num_images, steps, args.num_images, seed, eta=eta))
                for seed in args.sampling_seeds]
        table.append(summary_row(f"samples of {os.path.basename(os.path.normpath(args.pipeline))} "
                                 f"({steps} steps)", rows))
    print(f"# classifier trained on {len(seen)} of the {len(train_images)} train digits; held-out accuracy "
          f"{classifier.held_out_accuracy:.3f}; N = {args.num_images} against the {len(held_out_images)} held-out digits")
    print_table(["images", "sets", "FD", "precision", "recall", "density", "coverage", "confident (p >= 0.9)"],
                table)


if __name__ == "__main__":
    main()
