"""Training data: load it through `datasets`, find its columns, drop undecodable images, and
feed each process its share of every epoch in an order that a resumed run can reproduce.

Images are decoded by this module (the image column is cast to `Image(decode=False)`): first in a
validation pass before training, where undecodable files are counted and dropped, so a bad file can
never stop a run mid-epoch; then either once into memory (`PreloadedImages`, when the decoded set
fits in PRELOAD_BUDGET_BYTES) or per batch by a DataLoader.

Batch order: epoch e is the permutation `randperm(N, seed + e)`, cut into global batches of
batch_size x num_processes images; process p takes slice p of each global batch; the incomplete
tail is dropped so every process sees the same number of batches. The position in this stream is
a single integer (micro-batches consumed per process), so resuming is arithmetic, not state.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from ddpm_from_scratch.image_utils import uint8_to_model_range

from .config import BUILTIN_DIGITS, TrainingOptions

logger = logging.getLogger(__name__)

# PIL modes with one channel of intensity; anything else is trained as RGB
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# how many images decide between 1 and 3 channels (colour anywhere among them means RGB)
CHANNEL_PROBE_SIZE = 64
IMAGE_SUFFIXES = frozenset(ext for ext, fmt in PIL.Image.registered_extensions().items())


@dataclass
class TrainingData:
    """A dataset ready for training: raw (undecoded) images plus what the model needs to know about them."""

    dataset: Any  # datasets.Dataset with the image column cast to Image(decode=False)
    image_column: str
    label_column: str | None
    num_channels: int  # 1 (grayscale kept as one channel) or 3
    num_classes: int | None
    num_skipped: int  # undecodable images dropped
    description: str  # for logs and the model card

    def __len__(self) -> int:
        return len(self.dataset)


def load_raw_dataset(opts: TrainingOptions):
    """The split to train on, from --train_data_dir, --dataset_name or the built-in digits."""
    import datasets

    if opts.train_data_dir is not None:
        folder = Path(opts.train_data_dir)
        if not any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.rglob("*") if path.is_file()):
            raise ValueError(
                f"--train_data_dir {str(folder)!r} holds no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES)[:8])}, ...)"
            )
        dataset_dict = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=opts.cache_dir)
        source = f"imagefolder:{folder.resolve().name}"  # no full local path in logs and model cards
    elif opts.dataset_name == BUILTIN_DIGITS:
        from ddpm_from_scratch.digits import load_digits_dataset

        dataset_dict = load_digits_dataset()
        source = "scikit-learn digits (built in)"
    else:
        dataset_dict = datasets.load_dataset(opts.dataset_name, opts.dataset_config_name, cache_dir=opts.cache_dir)
        source = opts.dataset_name
    if opts.split not in dataset_dict:
        raise ValueError(f"--split {opts.split!r} is not in {source}; available splits: {sorted(dataset_dict)}")
    return dataset_dict[opts.split], source


def find_image_column(dataset, requested: str | None) -> str:
    """--image_column if given (checked), else the one column with an Image feature."""
    import datasets

    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"--image_column {requested!r} is not a column of the dataset; columns: {columns}")
        if not isinstance(dataset.features[requested], datasets.Image):
            raise ValueError(
                f"--image_column {requested!r} holds {dataset.features[requested]!r}, not images; columns: {columns}"
            )
        return requested
    image_columns = [name for name in columns if isinstance(dataset.features[name], datasets.Image)]
    if len(image_columns) == 1:
        return image_columns[0]
    if not image_columns:
        raise ValueError(f"the dataset has no image column; columns: {columns} (pass --image_column)")
    raise ValueError(f"the dataset has several image columns {image_columns}; choose one with --image_column")


def find_label_column(dataset, requested: str | None) -> tuple[str, int]:
    """The class-label column and its number of classes (ClassLabel's, else max label + 1)."""
    import datasets

    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"--label_column {requested!r} is not a column of the dataset; columns: {columns}")
        column = requested
    else:
        class_columns = [name for name in columns if isinstance(dataset.features[name], datasets.ClassLabel)]
        named = [name for name in ("label", "labels", "class", "fine_label") if name in columns]
        candidates = class_columns or named
        if len(candidates) != 1:
            raise ValueError(
                f"--class_conditional needs one label column, found {candidates or 'none'} among {columns}; "
                "pass --label_column"
            )
        column = candidates[0]
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return column, feature.num_classes
    labels = np.asarray(dataset[column])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise ValueError(f"--label_column {column!r} must hold non-negative integer class ids, got {feature!r}")
    return column, int(labels.max()) + 1


def open_image(value: dict) -> PIL.Image.Image:
    """Decode one undecoded `datasets.Image` value ({"bytes", "path"}) fully (load() reads every pixel)."""
    source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    image = PIL.Image.open(source)
    image.load()
    return image


def _is_decodable(value: dict) -> bool:
    try:
        open_image(value)
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return False
    return True


def drop_undecodable(dataset, image_column: str, num_proc: int | None = None):
    """Dataset without the images PIL cannot decode, and the names of the dropped ones."""
    flags = dataset.map(
        lambda batch: {"_decodable": [_is_decodable(value) for value in batch[image_column]]},
        batched=True,
        input_columns=None,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="checking images",
    )["_decodable"]
    bad = [index for index, ok in enumerate(flags) if not ok]
    if not bad:
        return dataset, []
    names = [_describe(dataset[index][image_column], index) for index in bad]
    return dataset.select([index for index, ok in enumerate(flags) if ok]), names


def _describe(value: dict, index: int) -> str:
    return value.get("path") or f"row {index}"


def infer_num_channels(dataset, image_column: str) -> int:
    """1 if the first CHANNEL_PROBE_SIZE images are all grayscale, else 3."""
    probe = dataset.select(range(min(CHANNEL_PROBE_SIZE, len(dataset))))[image_column]
    modes = {open_image(value).mode for value in probe}
    return 1 if modes <= set(GRAYSCALE_MODES) else 3


def prepare_training_data(opts: TrainingOptions) -> TrainingData:
    """Load, validate and describe the training data; every data error is raised here, before training."""
    import datasets

    dataset, source = load_raw_dataset(opts)
    image_column = find_image_column(dataset, opts.image_column)
    label_column, num_classes = find_label_column(dataset, opts.label_column) if opts.class_conditional else (None, None)
    keep = [image_column] + ([label_column] if label_column else [])
    dataset = dataset.select_columns(keep).cast_column(image_column, datasets.Image(decode=False))
    total = len(dataset)
    if total == 0:
        raise ValueError(f"the {opts.split!r} split of {source} is empty")
    dataset, skipped = drop_undecodable(dataset, image_column, num_proc=opts.dataloader_num_workers or None)
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        logger.warning("skipped %d of %d images that cannot be decoded: %s", len(skipped), total, shown)
    if len(dataset) == 0:
        raise ValueError(f"none of the {total} images in {source} can be decoded")
    return TrainingData(
        dataset=dataset,
        image_column=image_column,
        label_column=label_column,
        num_channels=infer_num_channels(dataset, image_column),
        num_classes=num_classes,
        num_skipped=len(skipped),
        description=source,
    )


# ---- per-image preprocessing ---------------------------------------------------------------


def to_uint8_array(image: PIL.Image.Image, resolution: int, num_channels: int, center_crop: bool) -> np.ndarray:
    """PIL image -> (C, R, R) uint8 at the training resolution.

    center_crop: scale the shorter side to R and crop the centre; otherwise scale to R x R.
    Downscaling uses PIL's antialiased bilinear filter; an image already R x R is left untouched.
    """
    image = _to_mode(image, "L" if num_channels == 1 else "RGB")
    if image.size != (resolution, resolution):
        if center_crop:
            image = PIL.ImageOps.fit(image, (resolution, resolution), method=PIL.Image.BILINEAR)
        else:
            image = image.resize((resolution, resolution), resample=PIL.Image.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy (torch warns on PIL's read-only buffer)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _to_mode(image: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    if image.mode == mode:
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grayscale: PIL's convert("L") clips at 255 instead of scaling
        array = np.asarray(image, dtype=np.float32)
        image = PIL.Image.fromarray(np.clip(array / 257.0, 0, 255).round().astype(np.uint8), mode="L")
        return image if mode == "L" else image.convert(mode)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # composite transparency on black (the -1 of the model range), not on whatever the RGB holds
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert(mode)


def _decode_row(data: TrainingData, row: dict, resolution: int, center_crop: bool) -> np.ndarray:
    value = row[data.image_column]
    try:
        return to_uint8_array(open_image(value), resolution, data.num_channels, center_crop)
    except Exception as error:  # it passed the validation pass, so the file changed since
        raise RuntimeError(f"image {_describe(value, -1)} could be decoded before training but not now: {error}") from error


class PreloadedImages:
    """Every training image decoded once into one uint8 tensor (N, C, R, R): no per-step decoding.

    Used when the images fit in PRELOAD_BUDGET_BYTES (the digits: 92 KB; CIFAR-10: 150 MB). The
    preprocessing is deterministic, so this gives exactly the batches the lazy path would.
    """

    def __init__(self, data: TrainingData, resolution: int, center_crop: bool):
        rows = data.dataset
        self.pixels = torch.from_numpy(np.stack([_decode_row(data, row, resolution, center_crop) for row in rows]))
        self.labels = (torch.tensor(rows[data.label_column], dtype=torch.long) if data.label_column else None)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.tensor(indices)
        batch = {"pixel_values": uint8_to_model_range(self.pixels[index])}
        if self.labels is not None:
            batch["class_labels"] = self.labels[index]
        return batch


PRELOAD_BUDGET_BYTES = 1 << 30


def fits_in_memory(data: TrainingData, resolution: int) -> bool:
    return len(data) * data.num_channels * resolution * resolution <= PRELOAD_BUDGET_BYTES


def make_collate_fn(data: TrainingData, resolution: int, center_crop: bool) -> Callable[[list[dict]], dict]:
    """Collate raw rows into {"pixel_values": (B, C, R, R)[, "class_labels": (B,)]} (the lazy path)."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        pixels = np.stack([_decode_row(data, row, resolution, center_crop) for row in rows])
        batch = {"pixel_values": uint8_to_model_range(pixels)}
        if data.label_column is not None:
            batch["class_labels"] = torch.tensor([row[data.label_column] for row in rows], dtype=torch.long)
        return batch

    return collate


# ---- batch order ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardedEpochOrder:
    """Which dataset rows process `process_index` reads in each micro-batch of each epoch.

    Every process draws the same permutation for an epoch (seeded by seed + epoch) and takes its
    own slice of each global batch, so the processes never share an image within an epoch.
    """

    num_samples: int
    batch_size: int
    num_processes: int
    process_index: int
    seed: int

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.num_processes)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        global_batch = self.batch_size * self.num_processes
        order = order[: self.batches_per_epoch * global_batch].view(self.batches_per_epoch, self.num_processes, self.batch_size)
        return order[:, self.process_index].tolist()

    def position(self, micro_batch: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of the `micro_batch`-th micro-batch of the run."""
        return divmod(micro_batch, self.batches_per_epoch)


def iterate_micro_batches(
    data: TrainingData, order: ShardedEpochOrder, start_micro_batch: int, resolution: int, center_crop: bool,
    num_workers: int, preloaded: PreloadedImages | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches for this process, starting at `start_micro_batch` (0 for a new run).

    From `preloaded` images when given, else decoded per batch by a DataLoader (with `num_workers`).
    The skipped batches of a resumed epoch are never read or decoded.
    """
    from torch.utils.data import DataLoader

    epoch, offset = order.position(start_micro_batch)
    collate_fn = make_collate_fn(data, resolution, center_crop)
    while True:
        batches = order.epoch_batches(epoch)[offset:]
        if preloaded is not None:
            yield from (preloaded.batch(indices) for indices in batches)
        else:
            # its own generator: creating a DataLoader iterator draws a worker seed, and that draw must not
            # come from the global RNG, which a resumed run restores (dropout uses it)
            yield from DataLoader(data.dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                                  generator=torch.Generator().manual_seed(order.seed + epoch))
        epoch, offset = epoch + 1, 0
