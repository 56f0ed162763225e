"""The built-in dataset: scikit-learn's 8x8 handwritten digits as a `datasets.DatasetDict`.

scikit-learn installs the 1,797 images with the package, so training and evaluation work with
no network. The split into ``train`` and ``test`` (held out) is stratified by label and fixed by
``seed`` so that the trainer and the evaluator always see the same held-out images.
"""

from __future__ import annotations

import numpy as np

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
