"""The sample-quality formulas: feature-space distances, classifier score, class coverage, near-copies.

Each works on feature rows (N, D), on classifier probabilities, or on 8-bit images, in float64:

* Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6) and the
  unbiased kernel distance KID (Binkowski et al. 2018): torchmetrics' ``FrechetInceptionDistance`` and
  ``KernelInceptionDistance``, fed the feature rows through a pass-through feature module.
* k-nearest-neighbour precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem
  et al. 2020): torchmetrics has none of them, so each is one function here.
* Classifier score, the Inception Score formula exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016).
* Class coverage and the entropy of the predicted-label histogram.
* Pixel-space nearest-neighbour distances, and the near-copy threshold they are compared with.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .data import as_uint8_images

DEFAULT_CONFIDENCE = 0.9
DEFAULT_NEAR_COPY_QUANTILE = 0.01
DEFAULT_NEAREST_NEIGHBOURS = 5  # k of precision / recall / density / coverage (Naeem et al. 2020 use 5)
DEFAULT_KID_SUBSETS = 100  # torchmetrics' default


class FeatureRows(torch.nn.Module):
    """Pass-through "feature network" for torchmetrics: the rows given to ``update`` are the features.

    The features are computed once by the caller (the digits classifier, or Inception) and shared by
    every figure; ``num_features`` spares torchmetrics its probe call with a dummy 299x299 image.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


def _feature_tensor(features, name: str, min_rows: int = 2) -> torch.Tensor:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < min_rows or array.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, D) with N >= {min_rows}, got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _feature_pair(real_features, fake_features, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    real = _feature_tensor(real_features, "real_features", min_rows)
    fake = _feature_tensor(fake_features, "fake_features", min_rows)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real_features and fake_features must have the same D, got {real.shape[1]} and {fake.shape[1]}"
        )
    return real, fake


def frechet_distance(real_features, fake_features) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N1, D), (N2, D), N >= 2.

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson and Landau 1982; the FID formula,
    Heusel et al. 2017, eq. 6), with unbiased covariances, by torchmetrics' ``FrechetInceptionDistance``
    in float64. The true value is >= 0; its round-off below zero (about 1e-6 for singular covariances,
    which dead ReLU features give) is clipped.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _feature_pair(real_features, fake_features)
    # sync_on_compute=False: one process scores its own features; in a multi-process training run only the
    # main process evaluates, and torchmetrics' default would wait for the others to gather
    metric = FrechetInceptionDistance(feature=FeatureRows(real.shape[1]), sync_on_compute=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return max(float(metric.compute()), 0.0)


def default_kid_subset_size(num_real: int, num_fake: int) -> int:
    """Half the smaller set (at least 2, at most torchmetrics' default 1000).

    A subset as large as both sets would be the same images every time (a spread of 0); half of them
    gives subsets that differ, so the spread over subsets shows the estimate's noise at that size.
    """
    return int(min(1000, max(2, min(num_real, num_fake) // 2)))


def kernel_inception_distance(
    real_features, fake_features, subsets: int = 100, subset_size: int | None = None, seed: int = 0
) -> tuple[float, float, int]:
    """KID: the unbiased estimate of MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018).

    torchmetrics' ``KernelInceptionDistance``: the estimate on ``subsets`` random subsets of
    ``subset_size`` rows of each set (default :func:`default_kid_subset_size`). Returns the mean and
    the standard deviation over subsets, and the subset size. The subsets are drawn from a torch
    generator seeded ``seed`` inside ``fork_rng``, so the figure is reproducible and the caller's RNG
    is left alone. Being unbiased, the mean does not grow at small N as the Frechet distance does; it
    can be slightly negative when the sets are alike.
    """
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _feature_pair(real_features, fake_features)
    subset_size = default_kid_subset_size(len(real), len(fake)) if subset_size is None else subset_size
    if not 2 <= subset_size <= min(len(real), len(fake)):
        raise ValueError(
            f"subset_size must be in [2, {min(len(real), len(fake))}] (the smaller set), got {subset_size}"
        )
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=FeatureRows(real.shape[1]), subsets=subsets, subset_size=subset_size,
                                         sync_on_compute=False)  # as for the FD above
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics draws the subsets with torch.randperm on the global RNG
        mean, std = metric.compute()
    return float(mean), float(std), subset_size


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) between feature rows, float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(d2, 0.0, None))


def nearest_neighbour_radii(features, k: int) -> np.ndarray:
    """Distance (N,) from each row to its k-th nearest *other* row: the radius of its k-NN ball."""
    if k < 1:
        raise ValueError(f"k (nearest neighbours) must be >= 1, got {k}")
    x = _feature_tensor(features, "features", min_rows=k + 1).numpy()
    # column 0 of the sorted row is the point itself (distance 0), so column k is the k-th neighbour
    return np.partition(pairwise_distances(x, x), k, axis=1)[:, k]


def _inside_balls(points, centres, k: int) -> np.ndarray:
    """(len(points), len(centres)) booleans: point j lies in the closed k-NN ball of centre i."""
    centres, points = (t.numpy() for t in _feature_pair(centres, points, min_rows=1))
    return pairwise_distances(points, centres) <= nearest_neighbour_radii(centres, k)[None, :]


def knn_precision(real_features, fake_features, k: int = 5) -> float:
    """Share of fake rows inside at least one real row's k-NN ball (Kynkaanniemi et al. 2019, eq. 1-2)."""
    return float(_inside_balls(fake_features, real_features, k).any(axis=1).mean())


def knn_recall(real_features, fake_features, k: int = 5) -> float:
    """Share of real rows inside at least one fake row's k-NN ball (Kynkaanniemi et al. 2019, eq. 3)."""
    return float(_inside_balls(real_features, fake_features, k).any(axis=1).mean())


def knn_density(real_features, fake_features, k: int = 5) -> float:
    """(1 / kM) sum_j sum_i 1[fake_j in B(real_i, NND_k(real_i))] (Naeem et al. 2020, eq. 3).

    About 1 when the fake rows follow the real distribution; unbounded above (fakes crowding dense
    real regions), so it is not a share like precision."""
    return float(_inside_balls(fake_features, real_features, k).sum(axis=1).mean() / k)


def knn_coverage(real_features, fake_features, k: int = 5) -> float:
    """Share of real rows whose k-NN ball holds at least one fake row (Naeem et al. 2020, eq. 4)."""
    return float(_inside_balls(fake_features, real_features, k).any(axis=0).mean())


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


# ----------------------------------------------------------------------------- the FID Inception weights

INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
# The FID Inception weights: torch-fidelity's weights-inception-2015-12-05-6726825d.pth (URL_INCEPTION_V3 in
# torch_fidelity/feature_extractor_inceptionv3.py; torchmetrics' FrechetInceptionDistance loads through it),
# also served by pytorch-fid as pt_inception-2015-12-05-6726825d.pth. Both publish only torch.hub's 8-hex
# prefix of the SHA-256 in the file name; the full digest below is the one several independent public
# evaluation records give for that 95,628,359-byte file, and it starts with that prefix.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_weights_file(path: str | os.PathLike, expected_sha256: str, option: str = "--fid-weights") -> Path:
    """``path`` if its SHA-256 is ``expected_sha256``; else a ValueError naming ``option`` and both hashes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option} '{path}' is not a file")
    actual = file_sha256(path)
    if actual != expected_sha256.lower():
        raise ValueError(
            f"{option} '{path}' has SHA-256 {actual}, not {expected_sha256.lower()} "
            f"(the FID Inception weights {INCEPTION_WEIGHTS_NAME}); refusing to load it"
        )
    return path


def load_feature_network(
    weights_path: str | os.PathLike, expected_sha256: str = INCEPTION_SHA256, option: str = "--fid-weights"
) -> torch.nn.Module:
    """The feature network in ``weights_path`` once its SHA-256 is checked: uint8 (B, 3, H, W) -> (B, D).

    The FID Inception state dict (:data:`INCEPTION_WEIGHTS_NAME`) becomes torchmetrics' ``NoTrainInceptionV3``
    (torch-fidelity's port of the 2015 TF graph: resizes to 299 x 299, 2048-d pool features), which needs
    ``pip install torch-fidelity``. A ``torch.export.save`` archive (.pt2, graph and weights, no pickle)
    is loaded as it is: any other feature network with the same input contract. torch-fidelity unpickles
    the state dict; the hash check before it means only the published file gets that far.
    """
    path = verified_weights_file(weights_path, expected_sha256, option)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_exported_program = any(name.endswith("/archive_format") for name in archive.namelist())
        if is_exported_program:
            return torch.export.load(str(path)).module()
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=str(path))
    except ModuleNotFoundError as error:
        raise ValueError(
            f"{option} needs torch-fidelity for the Inception network: pip install torch-fidelity"
        ) from error
