"""The sample-quality formulas: Frechet distance, classifier score, class coverage, near-copies.

Each works on classifier outputs (features, probabilities) or on 8-bit images, in float64:

* Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6).
* Classifier score, the Inception Score formula exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016).
* Class coverage and the entropy of the predicted-label histogram.
* Pixel-space nearest-neighbour distances, and the near-copy threshold they are compared with.
"""

from __future__ import annotations

import numpy as np

from .data import as_uint8_images

DEFAULT_CONFIDENCE = 0.9
DEFAULT_NEAR_COPY_QUANTILE = 0.01


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
    """Counts (classes,) of the predicted (argmax) labels."""
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
    """Entropy in bits of a histogram (log2(K) for K equally filled classes, 0 for one)."""
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
