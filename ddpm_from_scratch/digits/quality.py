"""Sample quality of generated digits, each figure printed beside the same figure for real digits.

The figures (:mod:`.metrics`) are computed in the features and predictions of the small classifier of
:mod:`.classifier` (trained on the ``train`` split only), the digits' stand-in for Inception:

* Frechet distance (FID analogue) and KID from the samples to the held-out split (torchmetrics).
* k-NN precision, recall, density and coverage against the held-out split.
* Classifier score (Inception Score analogue).
* Class coverage and the entropy of the predicted-label histogram.
* Near-copy fraction: share of samples closer (pixel L2) to some training image than almost all
  training images are to their nearest *other* training image (memorisation check).

Entry points: :func:`evaluate_samples` (samples + real reference side by side),
:func:`reference_report` (the real-digit figures alone), and :class:`SampleQualityEvaluator`
to keep the classifier and the held-out features between calls. For RGB datasets,
:func:`inception_fid` gives FID and KID in the features of the FID Inception network against a
folder of reference images (``ddpm-evaluate --fid-weights``).

The feature-space figures depend on the number of images N (the Frechet distance is biased upwards
by a term of order 1/N; recall and coverage grow with N), so the reference row ("real vs real")
scores N real *train* digits against the same held-out digits, as the mean and spread over draws;
compare models only at equal N.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..sampling.images import unit_range_to_uint8
from ..saving.atomic_io import atomic_path
from .classifier import TrainedDigitsClassifier, default_cache_dir, load_digits_classifier, train_and_held_out_arrays
from .data import as_uint8_images
from .metrics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_KID_SUBSETS,
    DEFAULT_NEAR_COPY_QUANTILE,
    DEFAULT_NEAREST_NEIGHBOURS,
    INCEPTION_SHA256,
    class_coverage,
    classifier_score,
    file_sha256,
    frechet_distance,
    histogram_entropy_bits,
    kernel_inception_distance,
    knn_coverage,
    knn_density,
    knn_precision,
    knn_recall,
    label_histogram,
    load_feature_network,
    near_copy_threshold,
    nearest_neighbour_distances,
)


@dataclasses.dataclass(frozen=True)
class FeatureFigures:
    """The feature-space figures of one image set against the held-out split.

    For generated samples: one set, so every ``_std`` is 0 except ``kid_std`` (the spread over KID's
    subsets). For the real-vs-real reference: the mean and standard deviation over ``draws`` draws of
    ``num_images`` real train digits.
    """

    num_images: int
    draws: int
    frechet_distance: float
    frechet_distance_std: float
    kid: float
    kid_std: float
    kid_subset_size: int
    precision: float
    precision_std: float
    recall: float
    recall_std: float
    density: float
    density_std: float
    coverage: float
    coverage_std: float


_FEATURE_FIGURES = ("frechet_distance", "kid", "precision", "recall", "density", "coverage")


@dataclasses.dataclass(frozen=True)
class QualityFigures:
    """The figures for one set of images (generated, or real for the reference row).

    The feature-space figures (``frechet_distance`` to ``coverage_std``: a :class:`FeatureFigures`) are,
    for the reference row, the real-vs-real mean and spread over ``draws`` draws of ``fd_num_images``
    real train digits; the other figures of the reference row are those of the 360 held-out digits.
    """

    num_images: int
    frechet_distance: float  # to the held-out split, in classifier features; lower is better
    frechet_distance_std: float  # reference: spread over draws of real digits; samples: 0 (one set)
    fd_num_images: int  # images entering the feature-space figures (reference: real train digits)
    draws: int  # reference: draws of real train digits; samples: 1
    kid: float  # KID to the held-out split; lower is better; compare with the real-vs-real row
    kid_std: float  # samples: std over KID's subsets; reference: std over draws
    kid_subset_size: int
    precision: float  # k-NN precision (0..1): share of images on the held-out manifold
    precision_std: float
    recall: float  # k-NN recall (0..1): share of held-out digits on the images' manifold
    recall_std: float
    density: float  # k-NN density, ~1 for real digits
    density_std: float
    coverage: float  # k-NN coverage (0..1): share of held-out digits with an image among their k-NN
    coverage_std: float
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
    nearest_neighbours: int = DEFAULT_NEAREST_NEIGHBOURS  # k of precision / recall / density / coverage
    kid_subsets: int = DEFAULT_KID_SUBSETS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        """A plain-text table: one row per figure, columns samples | real digits."""
        title = f"Sample quality (digits classifier, held-out accuracy {100 * self.classifier_held_out_accuracy:.1f}%)"
        images = ("images", f"{self.samples.num_images}", f"{self.reference.num_images} held-out")
        return format_figure_table(title, "samples", "real digits", [images, *figure_rows(self)])

    def __str__(self) -> str:
        return self.format_table()


def _spread(value: float, std: float, digits: int) -> str:
    return f"{value:.{digits}f} +- {std:.{digits}f}"


def figure_rows(report: SampleQualityReport) -> list[tuple[str, str, str]]:
    """The rows (figure, samples, real digits) of every quality table, from the Frechet distance on.

    The real column of the feature-space rows is real-vs-real: N real train digits against the same
    held-out digits, mean +- std over draws."""
    s, r, conf, k = report.samples, report.reference, report.confidence, report.nearest_neighbours
    num_classes = len(s.label_histogram)
    return [
        (
            "Frechet distance to held-out (lower better)",
            f"{s.frechet_distance:.3f}",
            f"{_spread(r.frechet_distance, r.frechet_distance_std, 3)} ({r.fd_num_images} train digits vs held-out, "
            f"{r.draws} draws)",
        ),
        (
            f"KID to held-out (lower better; samples +- std over {report.kid_subsets} subsets of {s.kid_subset_size})",
            _spread(s.kid, s.kid_std, 1),
            _spread(r.kid, r.kid_std, 1),
        ),
        (f"precision (k = {k}, higher better)", f"{s.precision:.3f}", _spread(r.precision, r.precision_std, 3)),
        (f"recall (k = {k}, higher better)", f"{s.recall:.3f}", _spread(r.recall, r.recall_std, 3)),
        (f"density (k = {k}, ~1 for real data)", f"{s.density:.3f}", _spread(r.density, r.density_std, 3)),
        (f"coverage (k = {k}, higher better)", f"{s.coverage:.3f}", _spread(r.coverage, r.coverage_std, 3)),
        (
            f"classifier score (1..{num_classes}, higher better)",
            f"{s.classifier_score:.3f}",
            f"{r.classifier_score:.3f}",
        ),
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
    """Holds the classifier, the train and held-out features and the near-copy threshold between calls.

    The held-out (``test``) split is the target of the feature-space figures and the source of the
    other reference figures; the ``train`` split is what near-copies are measured against and where
    the real-vs-real reference draws its N digits.
    """

    def __init__(
        self,
        classifier: TrainedDigitsClassifier | None = None,
        cache_dir: str | os.PathLike | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
        near_copy_quantile: float = DEFAULT_NEAR_COPY_QUANTILE,
        reference_seed: int = 0,
        reference_draws: int = 10,
        nearest_neighbours: int = DEFAULT_NEAREST_NEIGHBOURS,
        kid_subsets: int = DEFAULT_KID_SUBSETS,
    ) -> None:
        if not 0.0 < confidence <= 1.0:
            raise ValueError(f"confidence must be in (0, 1], got {confidence}")
        if reference_draws < 1:
            raise ValueError(f"reference_draws must be >= 1, got {reference_draws}")
        if nearest_neighbours < 1:
            raise ValueError(f"nearest_neighbours must be >= 1, got {nearest_neighbours}")
        if kid_subsets < 1:
            raise ValueError(f"kid_subsets must be >= 1, got {kid_subsets}")
        self.classifier = classifier if classifier is not None else load_digits_classifier(cache_dir=cache_dir)
        self.confidence = confidence
        self.near_copy_quantile = near_copy_quantile
        self.reference_seed = reference_seed
        self.reference_draws = reference_draws
        self.nearest_neighbours = nearest_neighbours
        self.kid_subsets = kid_subsets
        (self.train_images, _), (self.held_out_images, _) = train_and_held_out_arrays(self.classifier.config)
        self.train_features = self.classifier.features(self.train_images)
        self.held_out_features = self.classifier.features(self.held_out_images)
        self.near_copy_threshold = near_copy_threshold(self.train_images, near_copy_quantile)
        self._reference_cache: dict[int, FeatureFigures] = {}

    def frechet_distance(self, images) -> float:
        """Frechet distance from ``images`` to the held-out split in classifier features."""
        return frechet_distance(self.held_out_features, self.classifier.features(images))

    def neighbours_for(self, num_images: int) -> int:
        """The k of the k-NN figures for ``num_images`` images: ``nearest_neighbours``, at most N - 1 (a
        k-NN ball needs k other images)."""
        return max(1, min(self.nearest_neighbours, num_images - 1))

    def _feature_values(self, features: np.ndarray) -> dict[str, float]:
        """The feature-space figures of one feature set against the held-out features, by name."""
        real, k = self.held_out_features, self.neighbours_for(len(features))
        kid, kid_std, subset_size = kernel_inception_distance(
            real, features, self.kid_subsets, seed=self.reference_seed
        )
        return {
            "frechet_distance": frechet_distance(real, features),
            "kid": kid,
            "kid_std": kid_std,
            "kid_subset_size": subset_size,
            "precision": knn_precision(real, features, k),
            "recall": knn_recall(real, features, k),
            "density": knn_density(real, features, k),
            "coverage": knn_coverage(real, features, k),
        }

    def feature_figures(self, features: np.ndarray) -> FeatureFigures:
        """FD, KID (+- std over subsets), precision, recall, density, coverage of one feature set (N, D)."""
        values = self._feature_values(features)
        spreads = {f"{name}_std": 0.0 for name in _FEATURE_FIGURES if name != "kid"}
        return FeatureFigures(num_images=len(features), draws=1, **values, **spreads)

    def reference_feature_figures(self, num_images: int) -> FeatureFigures:
        """Real vs real: ``num_images`` real train digits (capped at the train size) against the held-out split.

        What a model that samples the data distribution exactly would score at this N. One draw of
        360 digits can give a Frechet distance anywhere from ~5 to ~13, so every figure is the mean
        and standard deviation over ``reference_draws`` draws (fixed by ``reference_seed``); all
        1437 train digits are one draw. Cached per N.
        """
        n = min(num_images, len(self.train_images))
        if n < 2:
            raise ValueError(f"num_images must be >= 2 for a covariance, got {num_images}")
        if n not in self._reference_cache:
            rng = np.random.default_rng(self.reference_seed)
            draws = 1 if n == len(self.train_images) else self.reference_draws
            rows = [
                self._feature_values(self.train_features[np.sort(rng.choice(len(self.train_images), n, replace=False))])
                for _ in range(draws)
            ]
            stats = {}
            for name in _FEATURE_FIGURES:
                values = np.array([row[name] for row in rows])
                stats[name], stats[f"{name}_std"] = float(values.mean()), float(values.std())
            self._reference_cache[n] = FeatureFigures(
                num_images=n, draws=draws, kid_subset_size=rows[0]["kid_subset_size"], **stats
            )
        return self._reference_cache[n]

    def reference_frechet_distance(self, num_images: int) -> tuple[float, float, int]:
        """(mean, std over draws, N) of the real-vs-real Frechet distance (:meth:`reference_feature_figures`)."""
        figures = self.reference_feature_figures(num_images)
        return figures.frechet_distance, figures.frechet_distance_std, figures.num_images

    def figures(self, images, features: FeatureFigures | None = None) -> QualityFigures:
        """All figures for one image set; ``features`` replaces its feature-space figures (the reference)."""
        images = as_uint8_images(images)
        if len(images) < 2:
            raise ValueError(f"images must hold at least 2 images (a covariance needs 2), got {len(images)}")
        probabilities = self.classifier.probabilities(images)
        histogram = label_histogram(probabilities)
        distances = nearest_neighbour_distances(images, self.train_images)
        if features is None:
            features = self.feature_figures(self.classifier.features(images))
        feature_values = dataclasses.asdict(features)
        return QualityFigures(
            num_images=len(images),
            fd_num_images=feature_values.pop("num_images"),
            **feature_values,
            classifier_score=classifier_score(probabilities),
            class_coverage=class_coverage(probabilities, self.confidence),
            label_entropy_bits=histogram_entropy_bits(histogram),
            confident_fraction=float((probabilities.max(axis=1) >= self.confidence).mean()),
            near_copy_fraction=float((distances < self.near_copy_threshold).mean()),
            median_train_distance=float(np.median(distances)),
            label_histogram=tuple(int(c) for c in histogram),
        )

    def reference_report(self, num_images: int | None = None) -> QualityFigures:
        """Figures for the real held-out digits; the feature-space rows are real vs real: ``num_images``
        real training digits (default: as many as the held-out split) against the held-out split."""
        n = len(self.held_out_images) if num_images is None else num_images
        return self.figures(self.held_out_images, features=self.reference_feature_figures(n))

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
            nearest_neighbours=self.neighbours_for(samples.num_images),
            kid_subsets=self.kid_subsets,
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
    """Markdown tables: the real-vs-real feature-space figures against N, and every figure for the
    calibration sets."""
    k = evaluator.nearest_neighbours
    lines = [
        f"classifier held-out accuracy: {evaluator.classifier.held_out_accuracy:.4f}",
        f"near-copy threshold (pixel L2, {evaluator.near_copy_quantile:g} quantile of train leave-one-out "
        f"nearest-neighbour distances): {evaluator.near_copy_threshold:.3f}",
        "",
        f"Real train digits vs the held-out digits, mean +- std over {evaluator.reference_draws} draws "
        f"(one draw at N = {len(evaluator.train_images)}); KID on {evaluator.kid_subsets} subsets of "
        f"N / 2 (at most 180: half the held-out split); k = {k}",
        "",
        "| N | FD | KID | precision | recall | density | coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        f = evaluator.reference_feature_figures(n)
        lines.append(
            f"| {f.num_images} | {_spread(f.frechet_distance, f.frechet_distance_std, 2)} | "
            f"{_spread(f.kid, f.kid_std, 1)} | {_spread(f.precision, f.precision_std, 3)} | "
            f"{_spread(f.recall, f.recall_std, 3)} | {_spread(f.density, f.density_std, 3)} | "
            f"{_spread(f.coverage, f.coverage_std, 3)} |"
        )
    lines += [
        "",
        "| images | N | FD | KID | precision | recall | density | coverage | classifier score | class coverage "
        "| entropy | confident | near-copy | median L2 to train |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, images in calibration_images(evaluator).items():
        f = evaluator.figures(images)
        lines.append(
            f"| {name} | {f.num_images} | {f.frechet_distance:.2f} | {f.kid:.1f} | {f.precision:.3f} | "
            f"{f.recall:.3f} | {f.density:.3f} | {f.coverage:.3f} | {f.classifier_score:.2f} | "
            f"{f.class_coverage:.2f} | {f.label_entropy_bits:.2f} | {f.confident_fraction:.3f} | "
            f"{f.near_copy_fraction:.3f} | {f.median_train_distance:.3f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Inception FID / KID (RGB datasets)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_folder_files(folder: str | os.PathLike, option: str = "--reference-dir") -> list[Path]:
    """The image files (``IMAGE_SUFFIXES``) under ``folder``, recursively, in sorted order; at least 2."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{option} '{folder}' is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(
            f"{option} '{folder}' holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); need at least 2"
        )
    return files


def folder_content_sha256(folder: str | os.PathLike, files: list[Path]) -> str:
    """SHA-256 over each file's path relative to ``folder`` and its bytes' SHA-256: the reference cache key."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def rgb_uint8_images(images, name: str = "images") -> torch.Tensor:
    """uint8 (N, 3, H, W) from (N, H, W, C) or (N, C, H, W) arrays or tensors (C = 1 or 3; floats in [0, 1]
    as ``sample_with_image_seeds`` returns them, or 0..255 integers) or a list of PIL images; grey is repeated."""
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    else:
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or len(array) == 0:
        raise ValueError(f"{name} must be a batch (N, H, W, C) or (N, C, H, W), got shape {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[3] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    if array.shape[3] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"float {name} must be finite and in [0, 1] (diffusers' output range)")
        array = unit_range_to_uint8(array)
    elif array.min() < 0 or array.max() > 255:
        raise ValueError(f"integer {name} must be in 0..255")
    tensor = torch.from_numpy(np.ascontiguousarray(array.astype(np.uint8))).permute(0, 3, 1, 2)
    return tensor.expand(-1, 3, -1, -1).contiguous() if tensor.shape[1] == 1 else tensor


def read_rgb_folder(files: list[Path], option: str = "--reference-dir") -> torch.Tensor:
    """The images as uint8 (N, 3, H, W); they must share one size."""
    from PIL import Image

    arrays = []
    for path in files:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB")))
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(
                f"{option}: '{path}' is {arrays[-1].shape[1]}x{arrays[-1].shape[0]}, but '{files[0]}' is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; all images must have one size"
            )
    return rgb_uint8_images(np.stack(arrays), option)


@torch.no_grad()
def network_features(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 50,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """float64 features (N, D) of uint8 images (N, 3, H, W), ``batch_size`` at a time on ``device``.

    ``network`` is used in the mode it comes in (:func:`.metrics.load_feature_network` gives inference mode)."""
    network = network.to(device)
    chunks = [network(batch.to(device)).reshape(len(batch), -1).double().cpu() for batch in images.split(batch_size)]
    return torch.cat(chunks).numpy()


def cached_reference_features(
    network: torch.nn.Module, weights_sha256: str, reference_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None, batch_size: int = 50, device: str | torch.device = "cpu",
) -> tuple[np.ndarray, str, Path, bool]:
    """(features, folder SHA-256, cache file, whether it was read from the cache) of the reference folder.

    The cache file ``fid-reference-<folder hash>-<weights hash>.safetensors`` (in ``cache_dir``, default
    the classifier's cache folder) is keyed by the folder's content and the network's weights, so a
    changed image or other weights never reuse it; it holds the features (KID needs them all, not
    only the mean and covariance), written atomically.
    """
    from safetensors.numpy import load_file, save_file

    files = image_folder_files(reference_dir)
    folder_sha256 = folder_content_sha256(reference_dir, files)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"fid-reference-{folder_sha256[:20]}-{weights_sha256[:20]}.safetensors"
    if path.exists():
        return load_file(str(path))["features"], folder_sha256, path, True
    features = network_features(network, read_rgb_folder(files), batch_size, device)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": features}, str(tmp), metadata={
            "reference_sha256": folder_sha256, "weights_sha256": weights_sha256, "num_images": str(len(files))})
    return features, folder_sha256, path, False


@dataclasses.dataclass(frozen=True)
class InceptionReport:
    """FID and KID of generated images against a reference folder, in the features of a checked network."""

    num_images: int
    num_reference_images: int
    frechet_distance: float
    kid: float
    kid_std: float  # std over KID's subsets
    kid_subset_size: int
    kid_subsets: int
    weights_sha256: str
    reference_dir: str
    reference_sha256: str
    reference_cache: str
    reference_cache_hit: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        rows = [
            ("images (generated | reference folder)", f"{self.num_images}", f"{self.num_reference_images}"),
            ("FID to the reference folder (lower better)", f"{self.frechet_distance:.3f}", ""),
            (f"KID (+- std over {self.kid_subsets} subsets of {self.kid_subset_size})",
             _spread(self.kid, self.kid_std, 5), ""),
        ]
        source = "cached" if self.reference_cache_hit else "computed"
        title = (f"Inception features (weights SHA-256 {self.weights_sha256[:12]}...), reference {self.reference_dir} "
                 f"(content SHA-256 {self.reference_sha256[:12]}..., features {source})")
        return format_figure_table(title, "model", "", rows)


def inception_fid(
    weights_path: str | os.PathLike, images, reference_dir: str | os.PathLike, *,
    cache_dir: str | os.PathLike | None = None, expected_sha256: str = INCEPTION_SHA256, batch_size: int = 50,
    device: str | torch.device = "cpu", kid_subsets: int = DEFAULT_KID_SUBSETS, seed: int = 0,
) -> InceptionReport:
    """FID and KID of ``images`` (see :func:`rgb_uint8_images`) against the images in ``reference_dir``.

    The features come from the network in ``weights_path`` (:func:`.metrics.load_feature_network`), loaded
    only if the file's SHA-256 is ``expected_sha256`` (the published FID Inception weights; ``ddpm-evaluate
    --fid-weights`` always uses that one). The reference features are cached by folder content and
    weights hash (:func:`cached_reference_features`).
    """
    weights_sha256 = expected_sha256.lower()
    network = load_feature_network(weights_path, expected_sha256)
    fake = network_features(network, rgb_uint8_images(images), batch_size, device)
    real, reference_sha256, cache, hit = cached_reference_features(
        network, weights_sha256, reference_dir, cache_dir, batch_size, device)
    kid, kid_std, subset_size = kernel_inception_distance(real, fake, kid_subsets, seed=seed)
    return InceptionReport(
        num_images=len(fake), num_reference_images=len(real), frechet_distance=frechet_distance(real, fake),
        kid=kid, kid_std=kid_std, kid_subset_size=subset_size, kid_subsets=kid_subsets,
        weights_sha256=weights_sha256, reference_dir=str(reference_dir), reference_sha256=reference_sha256,
        reference_cache=str(cache), reference_cache_hit=hit,
    )
