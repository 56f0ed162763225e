"""Sample quality of generated digits, each figure printed beside the same figure for real digits.

Inception weights cannot be downloaded here, so the usual figures are computed with the small
classifier of :mod:`ddpm_from_scratch.digits_classifier` (trained on the ``train`` split only):

* Frechet distance (FID analogue): distance between Gaussians fitted to penultimate-layer
  features of the samples and of the held-out split (Heusel et al. 2017, eq. 6).
* Classifier score (Inception Score analogue): exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016).
* Class coverage: share of the 10 classes among confident predictions, and the entropy of the
  predicted-label histogram.
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

from .digits import DIGITS_NUM_CLASSES
from .digits_classifier import (
    TrainedDigitsClassifier,
    train_and_held_out_arrays,
    as_uint8_images,
    load_digits_classifier,
)

DEFAULT_CONFIDENCE = 0.9
DEFAULT_NEAR_COPY_QUANTILE = 0.01

# ----------------------------------------------------------------------------- the formulas


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by eigendecomposition (negative round-off clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr((cov1 cov2)^(1/2)) for symmetric PSD cov1, cov2.

    cov1 cov2 is not symmetric, and a general matrix square root of it (scipy's ``sqrtm``)
    can return complex round-off or fail on singular covariances. Its eigenvalues equal those
    of the symmetric PSD matrix cov1^(1/2) cov2 cov1^(1/2), so the trace is the sum of the square
    roots of that matrix's (real, clipped at 0) eigenvalues.
    """
    sqrt_cov1 = _psd_sqrt(cov1)
    middle = sqrt_cov1 @ cov2 @ sqrt_cov1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mean1, cov1) and N(mean2, cov2).

    d^2 = ||mean1 - mean2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))
    (Dowson and Landau 1982; the FID formula, Heusel et al. 2017, eq. 6). The true value is
    >= 0; round-off below zero is clipped.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mean1.shape[0]
    if mean1.shape != (d,) or mean2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            "frechet_distance: means must be (D,) and covariances (D, D) with the same D; got "
            f"{mean1.shape}, {cov1.shape}, {mean2.shape}, {cov2.shape}"
        )
    squared_mean_distance = float(np.sum((mean1 - mean2) ** 2))
    value = squared_mean_distance + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2)
    return max(float(value), 0.0)


def frechet_distance_of_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


def classifier_score(probabilities: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))), p(y) = E_x p(y|x): the Inception Score formula (Salimans et al. 2016).

    Ranges from 1 (every sample gets the same prediction, or every prediction is uniform) to the
    number of classes (confident predictions spread evenly over all classes). Computed on the
    whole set (no 10-split average), in float64.
    """
    p_y_given_x = _check_probabilities(probabilities)
    p_y = p_y_given_x.mean(axis=0, keepdims=True)
    # xlogy-style: 0 * log(0 / q) = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p_y_given_x > 0, p_y_given_x * (np.log(p_y_given_x) - np.log(p_y)), 0.0)
    return float(np.exp(terms.sum(axis=1).mean()))


def label_histogram(probabilities: np.ndarray) -> np.ndarray:
    """Counts (10,) of the predicted (argmax) labels."""
    p = _check_probabilities(probabilities)
    return np.bincount(p.argmax(axis=1), minlength=p.shape[1])


def class_coverage(probabilities: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """Fraction of the classes predicted, with max probability >= ``confidence``, for at least one sample."""
    if not 0.0 < confidence <= 1.0:
        raise ValueError(f"confidence must be in (0, 1], got {confidence}")
    p = _check_probabilities(probabilities)
    confident = p.max(axis=1) >= confidence
    return float(np.unique(p.argmax(axis=1)[confident]).size / p.shape[1])


def histogram_entropy_bits(counts: np.ndarray) -> float:
    """Entropy in bits of a histogram (log2(10) = 3.32 for ten equally filled classes, 0 for one)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError("counts must be a non-empty 1-d array of non-negative counts with a positive sum")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum() + 0.0)  # + 0.0 turns -0.0 (one class) into 0.0


def nearest_neighbour_distances(
    queries: np.ndarray, references: np.ndarray, exclude_self: bool = False, chunk_size: int = 2048
) -> np.ndarray:
    """Pixel-space L2 distance (pixels scaled to [0, 1]) from each query image to its nearest reference.

    ``exclude_self=True`` requires ``queries is references`` in content and skips the i == i
    pair (leave-one-out). Chunked: memory is chunk_size x len(references) floats.
    """
    q = _flatten_unit(queries, "queries")
    r = _flatten_unit(references, "references")
    if exclude_self and q.shape != r.shape:
        raise ValueError("exclude_self=True needs queries and references to be the same images")
    r_sq = (r * r).sum(axis=1)
    out = np.empty(len(q))
    for start in range(0, len(q), chunk_size):
        chunk = q[start : start + chunk_size]
        # ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b, one matrix product per chunk
        d2 = (chunk * chunk).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * chunk @ r.T
        if exclude_self:
            rows = np.arange(len(chunk))
            d2[rows, start + rows] = np.inf
        out[start : start + len(chunk)] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def near_copy_threshold(train_images: np.ndarray, quantile: float = DEFAULT_NEAR_COPY_QUANTILE) -> float:
    """The ``quantile`` of leave-one-out nearest-neighbour distances within the training set.

    A sample closer than this to a training image is nearer to it than (1 - quantile) of the
    real training digits are to any other training digit: closer than independent handwriting
    of the same digit usually gets, so most likely a (noisy) copy.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"near_copy quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(nearest_neighbour_distances(train_images, train_images, exclude_self=True), quantile))


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must have shape (N, classes) with N >= 1, got {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probabilities must be non-negative with rows summing to 1")
    return p


def _flatten_unit(images, name: str) -> np.ndarray:
    array = as_uint8_images(images, name)
    return array.reshape(len(array), -1).astype(np.float64) / 255.0


# ----------------------------------------------------------------------------- reports


@dataclasses.dataclass(frozen=True)
class QualityFigures:
    """The figures for one set of images (generated, or real for the reference row)."""

    num_images: int
    frechet_distance: float  # to the held-out split, in classifier features; lower is better
    frechet_distance_std: float  # reference: spread over draws of real digits; samples: 0 (one set)
    fd_num_images: int  # images entering the Frechet distance (reference: real train digits)
    classifier_score: float  # 1..10, higher is better
    class_coverage: float  # 0..1
    label_entropy_bits: float  # 0..log2(10) = 3.32
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
        s, r = self.samples, self.reference
        rows = [
            ("images", f"{s.num_images}", f"{r.num_images} held-out"),
            (
                "Frechet distance to held-out (lower better)",
                f"{s.frechet_distance:.3f}",
                f"{r.frechet_distance:.3f} +- {r.frechet_distance_std:.3f} ({r.fd_num_images} train digits)",
            ),
            ("classifier score (1..10, higher better)", f"{s.classifier_score:.3f}", f"{r.classifier_score:.3f}"),
            (f"class coverage (p >= {self.confidence:g})", f"{s.class_coverage:.2f}", f"{r.class_coverage:.2f}"),
            (
                f"label entropy (bits, max {np.log2(DIGITS_NUM_CLASSES):.2f})",
                f"{s.label_entropy_bits:.3f}",
                f"{r.label_entropy_bits:.3f}",
            ),
            (
                f"confident fraction (p >= {self.confidence:g})",
                f"{s.confident_fraction:.3f}",
                f"{r.confident_fraction:.3f}",
            ),
            (
                f"near-copy fraction (L2 < {self.near_copy_threshold:.3f})",
                f"{s.near_copy_fraction:.3f}",
                f"{r.near_copy_fraction:.3f}",
            ),
            ("median L2 to nearest train image", f"{s.median_train_distance:.3f}", f"{r.median_train_distance:.3f}"),
        ]
        width = max(len(row[0]) for row in rows)
        col = max(len(row[1]) for row in rows + [("", "samples", "")])
        lines = [
            f"Sample quality (digits classifier, held-out accuracy {100 * self.classifier_held_out_accuracy:.1f}%)",
            f"{'figure':<{width}}  {'samples':>{col}}  real digits",
        ]
        lines += [f"{name:<{width}}  {sample:>{col}}  {real}" for name, sample, real in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


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


def main(argv: list[str] | None = None) -> None:
    """``python -m ddpm_from_scratch.sample_quality``: print the real-digit reference tables."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cache_dir", default=None, help="classifier cache folder (default: see digits_classifier)")
    args = parser.parse_args(argv)
    evaluator = SampleQualityEvaluator(load_digits_classifier(cache_dir=args.cache_dir, progress=True))
    print(reference_tables(evaluator))


if __name__ == "__main__":
    main()
