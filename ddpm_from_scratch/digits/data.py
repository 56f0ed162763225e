"""The built-in dataset: scikit-learn's 8x8 handwritten digits as a `datasets.DatasetDict`, and digit images as uint8.

scikit-learn installs the 1,797 images with the package, so training and evaluation work with
no network. The split into ``train`` and ``test`` (held out) is stratified by label and fixed by
``seed`` so that the trainer and the evaluator always see the same held-out images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..sampling.images import unit_range_to_uint8

DIGITS_RESOLUTION = 8
DIGITS_NUM_CLASSES = 10
DEFAULT_HELD_OUT_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0


def digits_as_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 images (N, 8, 8) in 0..255, and their labels (N,).

    scikit-learn stores 17 grey levels (0..16); they are mapped linearly onto 0..255.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def split_indices(
    labels: np.ndarray, held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION, seed: int = DEFAULT_SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, held-out) index arrays, reproducible for a given ``seed``."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        indices, test_size=held_out_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train_idx), np.sort(test_idx)


def held_out_digits() -> np.ndarray:
    """The held-out (``test``) split as uint8 (360, 8, 8), split as the trainer splits it."""
    images, labels = digits_as_uint8()
    _, held_out = split_indices(labels)
    return images[held_out]


def load_digits_dataset(
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION, seed: int = DEFAULT_SPLIT_SEED
):
    """The digits as a ``DatasetDict`` with splits ``train`` and ``test``.

    Columns: ``image`` (grayscale ``PIL.Image``, mode ``L``, 8x8) and ``label`` (``ClassLabel``, 0..9).
    """
    import datasets
    from PIL import Image

    images, labels = digits_as_uint8()
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(d) for d in range(DIGITS_NUM_CLASSES)]),
        }
    )

    def build(idx: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(images[i], mode="L") for i in idx], "label": labels[idx].tolist()},
            features=features,
        )

    train_idx, test_idx = split_indices(labels, held_out_fraction, seed)
    return datasets.DatasetDict({"train": build(train_idx), "test": build(test_idx)})


def as_uint8_images(images: np.ndarray | torch.Tensor | Sequence, name: str = "images") -> np.ndarray:
    """Normalise a batch of 8x8 grey images to a uint8 array (N, 8, 8).

    Accepts numpy arrays or torch tensors shaped (N, 8, 8), (N, 1, 8, 8) or (N, 8, 8, 1) (the
    last is diffusers' ``output_type="np"`` layout), or a sequence of PIL images. Integer input
    must lie in 0..255; float input must lie in [0, 1] (diffusers' output convention) and is
    quantised with ``round(255 * x)``, the inverse of the pipeline's own conversion.
    """
    if isinstance(images, torch.Tensor):
        array = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        array = images
    elif isinstance(images, Sequence) and len(images) > 0 and hasattr(images[0], "convert"):
        array = np.stack([np.asarray(image.convert("L")) for image in images])
    else:
        raise ValueError(
            f"{name} must be a numpy array, a torch tensor or a list of PIL images, got {type(images).__name__}"
        )

    r = DIGITS_RESOLUTION
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3 or array.shape[1:] != (r, r):
        raise ValueError(
            f"{name} must have shape (N, {r}, {r}), (N, 1, {r}, {r}) or (N, {r}, {r}, 1), "
            f"got {tuple(np.shape(images))}"
        )
    if len(array) == 0:
        raise ValueError(f"{name} is empty; need at least one image")

    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"float {name} must be finite and in [0, 1] (diffusers' output range); "
                f"got min {np.nanmin(array):.3g}, max {np.nanmax(array):.3g}. Map [-1, 1] model output "
                "with (x + 1) / 2 first, or pass uint8."
            )
        return unit_range_to_uint8(array)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"integer {name} must be in 0..255, got min {array.min()}, max {array.max()}")
        return array.astype(np.uint8)
    raise ValueError(f"{name} must have an integer or float dtype, got {array.dtype}")
