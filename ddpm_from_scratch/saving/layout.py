"""The names of what this project writes on disk, defined once for the trainer and the loaders.

A training checkpoint, ``<output_dir>/checkpoints/checkpoint-<step>/``::

    unet/, unet_ema/        the raw and EMA UNets (diffusers model folders); unet_ema/ absent with --no-use_ema
    scheduler/              the noise scheduler (diffusers scheduler folder)
    optimizer.pt, lr_scheduler.json, ema.json, grad_scaler.json, random_states_<rank>.{safetensors,json}
    training_options.json   the options the run was started with
    training_state.json     step counters and the loss history
    manifest.json           size and SHA-256 of every other file, written last (checksums.py)

A checkpoint is staged in ``.tmp-checkpoint-<step>/`` and a pipeline save in a folder whose name
starts with ``.`` and holds ``.saving-``; both are renamed into place when complete.
"""

from __future__ import annotations

import re

MODEL_INDEX_NAME = "model_index.json"
MANIFEST_NAME = "manifest.json"

# ---- training checkpoints ----
CHECKPOINTS_SUBDIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
UNET_DIR = "unet"
EMA_UNET_DIR = "unet_ema"
SCHEDULER_DIR = "scheduler"
STATE_NAME = "training_state.json"
OPTIONS_NAME = "training_options.json"
OPTIMIZER_NAME = "optimizer.pt"
LR_SCHEDULE_NAME = "lr_scheduler.json"
EMA_STATE_NAME = "ema.json"
GRAD_SCALER_NAME = "grad_scaler.json"
CHECKPOINT_STAGING_PREFIX = ".tmp-"


def rng_state_names(rank: int) -> tuple[str, str]:
    """Process ``rank``'s generator states: torch's (safetensors), numpy's and Python's (JSON)."""
    return f"random_states_{rank}.safetensors", f"random_states_{rank}.json"


# ---- pipeline saves ----
PIPELINE_STAGING_MARKER = ".saving-"  # in the name of the hidden staging folder of a pipeline save
