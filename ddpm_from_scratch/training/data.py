"""Training data: load it through `datasets`, find its columns, and drop undecodable images before training.

Images are decoded by this project (the image column is cast to `Image(decode=False)`): first in a
validation pass before training, where undecodable files are counted and dropped, so a bad file can
never stop a run mid-epoch; then for training (batches.py). The validation pass reads every image,
so it also decides the channels from all of them: grayscale data stays one channel, and if any image
is colour the run is RGB (a warning names a grayscale and a colour file when the modes are mixed).
High-bit-depth images are read in the range their PIL mode holds (MODE_RANGES); values outside it,
or a 32-bit integer (mode I) image whose values fit in 8 bits, are refused with the file named.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .options import BUILTIN_DIGITS, TrainingOptions

logger = logging.getLogger(__name__)

# PIL modes with one channel of intensity; anything else is trained as RGB
GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# the value range each high-bit-depth mode is read in (mapped linearly onto 0..255)
MODE_RANGES = {"F": (0.0, 1.0), "I": (0, 65535), **{mode: (0, 65535) for mode in SIXTEEN_BIT_MODES}}
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


def load_hub_dataset(opts: TrainingOptions):
    """datasets.load_dataset for --dataset_name, with its network and not-found errors as one clear line."""
    import datasets

    try:
        return datasets.load_dataset(opts.dataset_name, opts.dataset_config_name, cache_dir=opts.cache_dir)
    except ConnectionError as error:
        raise ValueError(
            f"--dataset_name {opts.dataset_name!r}: the Hugging Face Hub cannot be reached ({error}) and the dataset "
            "is not in the datasets cache. Offline mode (HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1) or no network: "
            "download it once with a connection, or train on local images with --train_data_dir FOLDER, or on the "
            "built-in digits with --dataset_name builtin:digits"
        ) from error
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        raise ValueError(
            f"--dataset_name {opts.dataset_name!r} is neither a dataset on the Hub nor a local dataset folder ({error}); "
            "for a folder of images use --train_data_dir"
        ) from error


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
        dataset_dict = load_hub_dataset(opts)
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


def value_range_problem(image: PIL.Image.Image) -> str | None:
    """Why the pixels of a high-bit-depth image fall outside the range its mode is read in (MODE_RANGES), or None."""
    if image.mode not in MODE_RANGES or image.mode in SIXTEEN_BIT_MODES:
        return None
    low, high = MODE_RANGES[image.mode]
    array = np.asarray(image)
    if not np.isfinite(array).all():
        return f"mode {image.mode} image holds NaN or infinite values"
    found_low, found_high = array.min(), array.max()
    if found_low < low or found_high > high:
        meaning = "intensities in [0, 1]" if image.mode == "F" else "16-bit values in [0, 65535]"
        return (f"mode {image.mode} pixels are read as {meaning}, but this image holds values in "
                f"[{found_low:g}, {found_high:g}]; rescale it to that range (or save it as 8- or 16-bit)")
    if image.mode == "I" and 0 < found_high <= 255:
        # 8-bit data widened to 32 bits: read as 16-bit it would train as nearly black (at most 255/65535)
        return (f"mode I pixels are read as 16-bit values in [0, 65535], but this image holds values in "
                f"[{found_low:g}, {found_high:g}] only, the range of 8-bit data, which would train as nearly black; "
                "save 8-bit data as mode L (Image.convert('L')), or 16-bit data scaled to [0, 65535]")
    return None


def _inspect(value: dict) -> tuple[str | None, str | None]:
    """(mode, value-range problem) of one image; mode None if PIL cannot decode it."""
    try:
        image = open_image(value)
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return None, None
    return image.mode, value_range_problem(image)


@dataclass
class ImageSurvey:
    """What the validation pass found: the decodable rows, the dropped ones, and each row's PIL mode."""

    dataset: Any
    skipped: list[str]
    modes: list[str]  # of the rows kept, in order


def survey_images(dataset, image_column: str, num_proc: int | None = None) -> ImageSurvey:
    """Decode every image once: drop the ones PIL cannot decode, record the modes, and raise ValueError
    naming the file for an image whose values are outside its mode's range (MODE_RANGES)."""
    def inspect_batch(batch):
        found = [_inspect(value) for value in batch[image_column]]
        return {"_mode": [mode for mode, _ in found], "_problem": [problem for _, problem in found]}

    found = dataset.map(inspect_batch, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
                        desc="checking images")
    modes, problems = found["_mode"], found["_problem"]
    for index, problem in enumerate(problems):
        if problem is not None:
            raise ValueError(f"image {describe_image(dataset[index][image_column], index)}: {problem}")
    bad = [index for index, mode in enumerate(modes) if mode is None]
    if not bad:
        return ImageSurvey(dataset, [], modes)
    names = [describe_image(dataset[index][image_column], index) for index in bad]
    kept = [index for index, mode in enumerate(modes) if mode is not None]
    return ImageSurvey(dataset.select(kept), names, [modes[index] for index in kept])


def describe_image(value: dict, index: int) -> str:
    """The image's file path, or its row when it came from a dataset's bytes."""
    return value.get("path") or f"row {index}"


def channels_from_modes(modes: list[str], dataset, image_column: str) -> int:
    """1 if every image is grayscale, else 3; warns, naming one file of each kind, when they are mixed."""
    grey = [index for index, mode in enumerate(modes) if mode in GRAYSCALE_MODES]
    if len(grey) == len(modes):
        return 1
    if grey:
        colour = next(index for index, mode in enumerate(modes) if mode not in GRAYSCALE_MODES)
        logger.warning(
            "%d of %d images are grayscale (e.g. %s, mode %s) and %d are colour (e.g. %s, mode %s): training in RGB, "
            "with the grayscale images copied into all three channels", len(grey), len(modes),
            describe_image(dataset[grey[0]][image_column], grey[0]), modes[grey[0]], len(modes) - len(grey),
            describe_image(dataset[colour][image_column], colour), modes[colour],
        )
    return 3


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
    survey = survey_images(dataset, image_column, num_proc=opts.dataloader_num_workers or None)
    dataset, skipped = survey.dataset, survey.skipped
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        logger.warning("skipped %d of %d images that cannot be decoded: %s", len(skipped), total, shown)
    if len(dataset) == 0:
        raise ValueError(f"none of the {total} images in {source} can be decoded")
    if opts.unet_config is not None:  # the model config fixes the channels; images are converted to them
        num_channels = opts.unet_config["in_channels"]
    else:
        num_channels = channels_from_modes(survey.modes, dataset, image_column)
    return TrainingData(
        dataset=dataset,
        image_column=image_column,
        label_column=label_column,
        num_channels=num_channels,
        num_classes=num_classes,
        num_skipped=len(skipped),
        description=source,
    )
