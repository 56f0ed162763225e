"""Training batches: each image as (C, R, R) uint8 at the training resolution, and each process's
share of every epoch in an order that a resumed run can reproduce.

Pixel values become 8 bits by the range their PIL mode holds, so no kind of image ends up near-black:
    1, L, P, RGB, RGBA, ...   8 bits already (transparency composited on black)
    I;16, I;16L, I;16B        16-bit grayscale: 0..65535 -> 0..255 (divided by 257)
    I                         32-bit integers, taken as 16-bit data (how PIL opens many 16-bit PNG/TIFF
                              files): 0..65535 -> 0..255; values outside 0..65535 are refused (data.py)
    F                         32-bit floats, taken as intensities in [0, 1] (float TIFFs): x 255;
                              values outside [0, 1] are refused (data.py)
Images are decoded either once into memory (`PreloadedImages`, when the decoded set fits in
PRELOAD_BUDGET_BYTES) or per batch by a DataLoader.

Batch order: epoch e is the permutation `randperm(N, seed + e)`, cut into global batches of
batch_size x num_processes images; process p takes slice p of each global batch; the incomplete
tail is dropped so every process sees the same number of batches. The position in this stream is
a single integer (micro-batches consumed per process), so resuming is arithmetic, not state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from ddpm_from_scratch.sampling.images import uint8_to_model_range

from .data import MODE_RANGES, TrainingData, describe_image, open_image


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


def to_8_bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """A high-bit-depth grayscale image (mode F, I, I;16*) as mode L, its MODE_RANGES mapped onto 0..255.
    PIL's own convert("L") clips these at 255 instead of scaling them."""
    low, high = MODE_RANGES[image.mode]
    array = np.asarray(image, dtype=np.float64)
    scaled = (array - low) * (255.0 / (high - low))
    return PIL.Image.fromarray(np.clip(scaled, 0, 255).round().astype(np.uint8), mode="L")


def _to_mode(image: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    if image.mode == mode:
        return image
    if image.mode in MODE_RANGES:
        image = to_8_bit(image)
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
        raise RuntimeError(f"image {describe_image(value, -1)} could be decoded before training but not now: {error}") from error


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
