"""A small digits classifier: the "Inception network" of the sample-quality evaluator.

Inception features mean little on 8x8 grey digits, so FID and Inception Score are replaced by their
analogues in the features of a tiny CNN trained on the built-in digits (``train`` split only;
the ``test`` split stays held out for the evaluator). Training is deterministic and takes seconds
on one CPU core; the weights are cached as safetensors under a key that hashes the
hyper-parameters, the architecture version and the training data, so a cached file can never
be reused for a different classifier.

Cache folder: ``$DDPM_FROM_SCRATCH_CACHE`` if set, else ``$XDG_CACHE_HOME/ddpm_from_scratch``,
else ``~/.cache/ddpm_from_scratch``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..saving.atomic_io import atomic_path
from ..sampling.images import uint8_to_model_range
from .data import (
    DEFAULT_HELD_OUT_FRACTION,
    DEFAULT_SPLIT_SEED,
    DIGITS_NUM_CLASSES,
    DIGITS_RESOLUTION,
    as_uint8_images,
    digits_as_uint8,
    split_indices,
)

logger = logging.getLogger(__name__)

# Bump when the architecture or the training loop changes meaning, so old cache files are ignored.
CLASSIFIER_FORMAT_VERSION = 1
CACHE_ENV_VAR = "DDPM_FROM_SCRATCH_CACHE"


@dataclasses.dataclass(frozen=True)
class DigitsClassifierConfig:
    """Hyper-parameters of the classifier and of its training run (all part of the cache key)."""

    channels: int = 32
    feature_dim: int = 64
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1  # random translation of up to this many pixels, per image, each step
    seed: int = 0
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION
    split_seed: int = DEFAULT_SPLIT_SEED

    def __post_init__(self) -> None:
        for name in ("channels", "feature_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.max_shift < DIGITS_RESOLUTION // 2:
            raise ValueError(f"max_shift must be in 0..{DIGITS_RESOLUTION // 2 - 1}, got {self.max_shift}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


class DigitsClassifier(nn.Module):
    """conv-conv-pool-conv-pool, then a ``feature_dim`` penultimate layer and 10 logits.

    Input: (B, 1, 8, 8) floats in [-1, 1] (the diffusion model's pixel range).
    """

    def __init__(self, channels: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        # 8x8 -> pool -> 4x4 -> pool -> 2x2
        self.fc_features = nn.Linear(2 * channels * 4, feature_dim)
        self.fc_logits = nn.Linear(feature_dim, DIGITS_NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (B, feature_dim): the analogue of Inception's pool3."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc_features(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_logits(self.features(x))


# ----------------------------------------------------------------------------- training


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image independently by up to ``max_shift`` pixels (zero fill = background -1)."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


@contextmanager
def _single_thread() -> Iterator[None]:
    # Float reductions split over threads are summed in a thread-count dependent order; one
    # thread makes the trained weights independent of the machine's core count.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_digits_classifier(
    config: DigitsClassifierConfig | None = None, progress: bool = False, train_subset: np.ndarray | None = None
) -> DigitsClassifier:
    """Train a fresh classifier on the ``train`` split (or on its rows ``train_subset``); same config ->
    bit-identical weights.

    Uses its own ``torch.Generator`` for initialisation, shuffling and augmentation, so the
    caller's global RNG state is left untouched.
    """
    from tqdm.auto import tqdm

    config = config or DigitsClassifierConfig()
    (train_images, train_labels), _ = train_and_held_out_arrays(config)
    if train_subset is not None:
        train_images, train_labels = train_images[train_subset], train_labels[train_subset]
    x_all = uint8_to_model_range(train_images).unsqueeze(1)
    y_all = torch.from_numpy(train_labels)

    generator = torch.Generator().manual_seed(config.seed)
    with _single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # nn.Module init draws from the global RNG
        model = DigitsClassifier(config.channels, config.feature_dim)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        steps_per_epoch = -(-len(x_all) // config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
        )
        model.train()
        for _ in tqdm(range(config.epochs), desc="digits classifier", disable=not progress):
            order = torch.randperm(len(x_all), generator=generator)
            for batch in order.split(config.batch_size):
                x = random_shift(x_all[batch], config.max_shift, generator)
                loss = F.cross_entropy(model(x), y_all[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


# ----------------------------------------------------------------------------- trained bundle


@dataclasses.dataclass
class TrainedDigitsClassifier:
    """A trained classifier with its config, held-out accuracy and the file it was cached in."""

    model: DigitsClassifier
    config: DigitsClassifierConfig
    held_out_accuracy: float
    cache_path: Path | None = None

    @torch.no_grad()
    def _run(self, images, head: str, batch_size: int = 1024) -> np.ndarray:
        x = uint8_to_model_range(as_uint8_images(images)).unsqueeze(1)
        self.model.eval()
        fn = self.model.features if head == "features" else self.model
        out = torch.cat([fn(chunk) for chunk in x.split(batch_size)])
        if head == "probabilities":
            out = out.double().softmax(dim=1)
        return out.double().numpy()

    def features(self, images) -> np.ndarray:
        """Penultimate-layer features (N, feature_dim), float64."""
        return self._run(images, "features")

    def probabilities(self, images) -> np.ndarray:
        """Class probabilities p(y | x) (N, 10), float64, rows sum to 1."""
        return self._run(images, "probabilities")

    def predict(self, images) -> np.ndarray:
        """Predicted labels (N,)."""
        return self.probabilities(images).argmax(axis=1)


def train_and_held_out_arrays(config: DigitsClassifierConfig):
    """((train_images, train_labels), (held_out_images, held_out_labels)) for the config's split."""
    images, labels = digits_as_uint8()
    train_idx, test_idx = split_indices(labels, config.held_out_fraction, config.split_seed)
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


def default_cache_dir() -> Path:
    """``$DDPM_FROM_SCRATCH_CACHE``, else ``$XDG_CACHE_HOME/ddpm_from_scratch``, else ``~/.cache/...``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ddpm_from_scratch"


def classifier_cache_key(config: DigitsClassifierConfig) -> str:
    """sha256 over the format version, the config and the exact training pixels and labels."""
    (train_images, train_labels), _ = train_and_held_out_arrays(config)
    digest = hashlib.sha256()
    digest.update(f"digits-classifier-v{CLASSIFIER_FORMAT_VERSION}".encode())
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    digest.update(np.ascontiguousarray(train_images).tobytes())
    digest.update(np.ascontiguousarray(train_labels).tobytes())
    return digest.hexdigest()[:20]


def held_out_accuracy(model: DigitsClassifier, config: DigitsClassifierConfig) -> float:
    """Top-1 accuracy on the held-out (``test``) split the classifier never trained on."""
    _, (test_images, test_labels) = train_and_held_out_arrays(config)
    with torch.no_grad():
        predictions = model.eval()(uint8_to_model_range(test_images).unsqueeze(1)).argmax(dim=1).numpy()
    return float((predictions == test_labels).mean())


def _save_atomically(model: DigitsClassifier, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # two processes training at once both end with a complete (identical) file
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def _load(path: Path, config: DigitsClassifierConfig) -> DigitsClassifier:
    from safetensors.torch import load_file

    model = DigitsClassifier(config.channels, config.feature_dim)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def load_digits_classifier(
    config: DigitsClassifierConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> TrainedDigitsClassifier:
    """The trained classifier: loaded from the cache, or trained (seconds) and cached.

    ``use_cache=False`` trains in memory and writes nothing. An unreadable cache file is
    retrained and replaced, with a warning.
    """
    config = config or DigitsClassifierConfig()
    path = None
    model = None
    if use_cache:
        path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = path / f"digits_classifier-{classifier_cache_key(config)}.safetensors"
        if path.exists():
            try:
                model = _load(path, config)
            except Exception as error:  # a truncated or foreign file: retrain rather than fail
                logger.warning("Ignoring unreadable classifier cache %s (%s); retraining.", path, error)
    if model is None:
        model = train_digits_classifier(config, progress=progress)
        accuracy = held_out_accuracy(model, config)
        if path is not None:
            metadata = {
                "config": json.dumps(dataclasses.asdict(config), sort_keys=True),
                "format_version": str(CLASSIFIER_FORMAT_VERSION),
                "held_out_accuracy": repr(accuracy),
            }
            _save_atomically(model, path, metadata)
    else:
        accuracy = held_out_accuracy(model, config)
    return TrainedDigitsClassifier(model=model, config=config, held_out_accuracy=accuracy, cache_path=path)
