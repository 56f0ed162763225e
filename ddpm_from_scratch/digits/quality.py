"""Sample quality of generated digits, each figure printed beside the same figure for real digits.

The figures (:mod:`.metrics`) are computed in the features and predictions of the small classifier of
:mod:`.classifier` (trained on the ``train`` split only), the digits' stand-in for Inception:

* Frechet distance (FID analogue) from the samples to the held-out split.
* Classifier score (Inception Score analogue).
* Class coverage and the entropy of the predicted-label histogram.
* Near-copy fraction: share of samples closer (pixel L2) to some training image than almost all
  training images are to their nearest *other* training image (memorisation check).

Entry points: :func:`evaluate_samples` (samples + real reference side by side),
:func:`reference_report` (the real-digit figures alone), and :class:`SampleQualityEvaluator`
to keep the classifier and the precomputed held-out statistics between calls.

Frechet distance is biased upwards by small sample counts (the covariance estimate's noise adds
a positive term of order 1/N), so the reference row always uses as many real images as there
are samples; compare models only at equal N.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from .classifier import TrainedDigitsClassifier, load_digits_classifier, train_and_held_out_arrays
from .data import as_uint8_images
from .metrics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_NEAR_COPY_QUANTILE,
    class_coverage,
    classifier_score,
    frechet_distance,
    gaussian_statistics,
    histogram_entropy_bits,
    label_histogram,
    near_copy_threshold,
    nearest_neighbour_distances,
)


@dataclasses.dataclass(frozen=True)
class QualityFigures:
    """The figures for one set of images (generated, or real for the reference row)."""

    num_images: int
    frechet_distance: float  # to the held-out split, in classifier features; lower is better
    frechet_distance_std: float  # reference: spread over draws of real digits; samples: 0 (one set)
    fd_num_images: int  # images entering the Frechet distance (reference: real train digits)
    classifier_score: float  # 1..number of classes, higher is better
    class_coverage: float  # 0..1
    label_entropy_bits: float  # 0..log2(number of classes)
    confident_fraction: float  # share of images with max p(y|x) >= confidence
    near_copy_fraction: float  # share of images that are near-copies of a training image
    median_train_distance: float  # median pixel L2 distance to the nearest training image
    label_histogram: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SampleQualityReport:
    """Generated-sample figures beside the same figures for real digits."""

    samples: QualityFigures
    reference: QualityFigures
    classifier_held_out_accuracy: float
    confidence: float
    near_copy_threshold: float
    near_copy_quantile: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        """A plain-text table: one row per figure, columns samples | real digits."""
        title = f"Sample quality (digits classifier, held-out accuracy {100 * self.classifier_held_out_accuracy:.1f}%)"
        images = ("images", f"{self.samples.num_images}", f"{self.reference.num_images} held-out")
        return format_figure_table(title, "samples", "real digits", [images, *figure_rows(self)])

    def __str__(self) -> str:
        return self.format_table()


def figure_rows(report: SampleQualityReport) -> list[tuple[str, str, str]]:
    """The rows (figure, samples, real digits) of every quality table, from the Frechet distance on."""
    s, r, conf = report.samples, report.reference, report.confidence
    num_classes = len(s.label_histogram)
    return [
        (
            "Frechet distance to held-out (lower better)",
            f"{s.frechet_distance:.3f}",
            f"{r.frechet_distance:.3f} +- {r.frechet_distance_std:.3f} ({r.fd_num_images} train digits)",
        ),
        (f"classifier score (1..{num_classes}, higher better)", f"{s.classifier_score:.3f}", f"{r.classifier_score:.3f}"),
        (f"class coverage (p >= {conf:g})", f"{s.class_coverage:.2f}", f"{r.class_coverage:.2f}"),
        (
            f"label entropy (bits, max {np.log2(num_classes):.2f})",
            f"{s.label_entropy_bits:.3f}",
            f"{r.label_entropy_bits:.3f}",
        ),
        (f"confident fraction (p >= {conf:g})", f"{s.confident_fraction:.3f}", f"{r.confident_fraction:.3f}"),
        (
            f"near-copy fraction (L2 < {report.near_copy_threshold:.3f})",
            f"{s.near_copy_fraction:.3f}",
            f"{r.near_copy_fraction:.3f}",
        ),
        ("median L2 to nearest train image", f"{s.median_train_distance:.3f}", f"{r.median_train_distance:.3f}"),
    ]


def format_figure_table(title: str, model_column: str, real_column: str, rows: list[tuple[str, str, str]]) -> str:
    """``title``, a header line and one line per (figure, model, real) row, in aligned columns."""
    width = max(len(row[0]) for row in rows)
    col = max(len(model_column), *(len(row[1]) for row in rows))
    lines = [title, f"{'figure':<{width}}  {model_column:>{col}}  {real_column}"]
    lines += [f"{name:<{width}}  {model:>{col}}  {real}".rstrip() for name, model, real in rows]
    return "\n".join(lines)


class SampleQualityEvaluator:
    """Holds the classifier, the held-out statistics and the near-copy threshold between calls.

    The held-out (``test``) split is the target of the Frechet distance and the source of the
    reference figures; the ``train`` split is what near-copies are measured against.
    """

    def __init__(
        self,
        classifier: TrainedDigitsClassifier | None = None,
        cache_dir: str | os.PathLike | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
        near_copy_quantile: float = DEFAULT_NEAR_COPY_QUANTILE,
        reference_seed: int = 0,
        reference_draws: int = 10,
    ) -> None:
        if not 0.0 < confidence <= 1.0:
            raise ValueError(f"confidence must be in (0, 1], got {confidence}")
        self.classifier = classifier if classifier is not None else load_digits_classifier(cache_dir=cache_dir)
        self.confidence = confidence
        self.near_copy_quantile = near_copy_quantile
        self.reference_seed = reference_seed
        if reference_draws < 1:
            raise ValueError(f"reference_draws must be >= 1, got {reference_draws}")
        self.reference_draws = reference_draws
        (self.train_images, _), (self.held_out_images, _) = train_and_held_out_arrays(self.classifier.config)
        self.train_features = self.classifier.features(self.train_images)
        self.held_out_features = self.classifier.features(self.held_out_images)
        self.held_out_statistics = gaussian_statistics(self.held_out_features)
        self.near_copy_threshold = near_copy_threshold(self.train_images, near_copy_quantile)

    def frechet_distance(self, images) -> float:
        """Frechet distance from ``images`` to the held-out split in classifier features."""
        return frechet_distance(*gaussian_statistics(self.classifier.features(images)), *self.held_out_statistics)

    def reference_frechet_distance(self, num_images: int) -> tuple[float, float, int]:
        """FD of ``num_images`` real training digits (capped at the train size) to the held-out split.

        What a model that samples the data distribution exactly would score at this N. At N=360
        one draw of 360 digits can land anywhere from ~5 to ~13, so this returns the mean and
        standard deviation over ``reference_draws`` draws (fixed by ``reference_seed``), and the N.
        """
        n = min(num_images, len(self.train_images))
        if n < 2:
            raise ValueError(f"num_images must be >= 2 for a Frechet distance, got {num_images}")
        rng = np.random.default_rng(self.reference_seed)
        draws = 1 if n == len(self.train_images) else self.reference_draws
        values = []
        for _ in range(draws):
            chosen = np.sort(rng.choice(len(self.train_images), n, replace=False))
            statistics = gaussian_statistics(self.train_features[chosen])
            values.append(frechet_distance(*statistics, *self.held_out_statistics))
        return float(np.mean(values)), float(np.std(values)), n

    def figures(self, images, fd: tuple[float, float, int] | None = None) -> QualityFigures:
        """All figures for one image set; ``fd`` overrides the (value, std, N) of the Frechet distance."""
        images = as_uint8_images(images)
        if len(images) < 2:
            raise ValueError(f"images must hold at least 2 images (a covariance needs 2), got {len(images)}")
        probabilities = self.classifier.probabilities(images)
        histogram = label_histogram(probabilities)
        distances = nearest_neighbour_distances(images, self.train_images)
        if fd is None:
            fd = (self.frechet_distance(images), 0.0, len(images))
        return QualityFigures(
            num_images=len(images),
            frechet_distance=fd[0],
            frechet_distance_std=fd[1],
            fd_num_images=fd[2],
            classifier_score=classifier_score(probabilities),
            class_coverage=class_coverage(probabilities, self.confidence),
            label_entropy_bits=histogram_entropy_bits(histogram),
            confident_fraction=float((probabilities.max(axis=1) >= self.confidence).mean()),
            near_copy_fraction=float((distances < self.near_copy_threshold).mean()),
            median_train_distance=float(np.median(distances)),
            label_histogram=tuple(int(c) for c in histogram),
        )

    def reference_report(self, num_images: int | None = None) -> QualityFigures:
        """Figures for the real held-out digits; the FD row uses ``num_images`` real training digits
        (default: as many as the held-out split) against the held-out split."""
        n = len(self.held_out_images) if num_images is None else num_images
        return self.figures(self.held_out_images, fd=self.reference_frechet_distance(n))

    def evaluate(self, images) -> SampleQualityReport:
        """Figures for generated ``images`` beside the reference at the same N (see module docstring)."""
        samples = self.figures(images)
        return SampleQualityReport(
            samples=samples,
            reference=self.reference_report(samples.num_images),
            classifier_held_out_accuracy=self.classifier.held_out_accuracy,
            confidence=self.confidence,
            near_copy_threshold=self.near_copy_threshold,
            near_copy_quantile=self.near_copy_quantile,
        )


@functools.lru_cache(maxsize=4)
def _default_evaluator(cache_dir: str | None) -> SampleQualityEvaluator:
    return SampleQualityEvaluator(cache_dir=cache_dir)


def evaluate_samples(images, cache_dir: str | os.PathLike | None = None) -> SampleQualityReport:
    """Sample-quality figures for generated digits beside real held-out digits.

    ``images``: uint8 (N, 8, 8) / (N, 1, 8, 8) / (N, 8, 8, 1) arrays or tensors in 0..255, floats
    in [0, 1], or a list of PIL images; N >= 2. The classifier is trained on first use (seconds)
    and cached. ``print(report)`` shows the table; ``report.to_dict()`` gives JSON-ready values.
    """
    key = None if cache_dir is None else str(cache_dir)
    return _default_evaluator(key).evaluate(images)


def reference_report(num_images: int | None = None, cache_dir: str | os.PathLike | None = None) -> QualityFigures:
    """The figures for real held-out digits alone (FD: ``num_images`` train digits vs held-out)."""
    key = None if cache_dir is None else str(cache_dir)
    return _default_evaluator(key).reference_report(num_images)


# ----------------------------------------------------------------------------- reference tables


def calibration_images(evaluator: SampleQualityEvaluator, seed: int = 0) -> dict[str, np.ndarray]:
    """Real and deliberately damaged image sets that show what each figure reacts to."""
    held_out = evaluator.held_out_images
    noise = np.random.default_rng(seed).integers(0, 256, size=held_out.shape, dtype=np.uint8)
    predicted = evaluator.classifier.predict(held_out)
    return {
        "real held-out": held_out,
        "360 training images (copies)": evaluator.train_images[: len(held_out)],
        "held-out shifted 1 px": np.roll(held_out, 1, axis=2),
        "held-out + 30% uniform noise": np.rint(0.7 * held_out + 0.3 * noise).astype(np.uint8),
        "only the held-out 3s and 8s (mode collapse)": held_out[np.isin(predicted, [3, 8])],
        "uniform noise": noise,
    }


def reference_tables(evaluator: SampleQualityEvaluator, sizes: tuple[int, ...] = (100, 360, 1000, 1437)) -> str:
    """Markdown tables: FD of real digits against N, and the figures for the calibration sets."""
    lines = [
        f"classifier held-out accuracy: {evaluator.classifier.held_out_accuracy:.4f}",
        f"near-copy threshold (pixel L2, {evaluator.near_copy_quantile:g} quantile of train leave-one-out "
        f"nearest-neighbour distances): {evaluator.near_copy_threshold:.3f}",
        "",
        f"| N | FD of real train digits vs held-out (mean +- std over {evaluator.reference_draws} draws) |",
        "|---|---|",
    ]
    for n in sizes:
        mean, std, used = evaluator.reference_frechet_distance(n)
        lines.append(f"| {used} | {mean:.2f} +- {std:.2f} |")
    lines += [
        "",
        "| images | N | FD | classifier score | coverage | entropy | confident | near-copy | median L2 to train |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, images in calibration_images(evaluator).items():
        f = evaluator.figures(images)
        lines.append(
            f"| {name} | {f.num_images} | {f.frechet_distance:.2f} | {f.classifier_score:.2f} | "
            f"{f.class_coverage:.2f} | {f.label_entropy_bits:.2f} | {f.confident_fraction:.3f} | "
            f"{f.near_copy_fraction:.3f} | {f.median_train_distance:.3f} |"
        )
    return "\n".join(lines)
