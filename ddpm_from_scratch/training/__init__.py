"""Training for ddpm-from-scratch: `accelerate launch training/train.py ...`, `python training/train.py ...`,
the installed command `ddpm-train ...` (the `train` extra: pip install "ddpm-from-scratch[train]"), or
from Python (a notebook):

    from ddpm_from_scratch.training import fit
    out = fit(preset="digits", output_dir="digits-ddpm", max_train_steps=200)
    pipe = ScratchDDPMPipeline.from_pretrained(out)

(`fit`, not `train`: `ddpm_from_scratch.training.trainer` is the trainer's module.)

Modules, one job each:
    config       command line, presets, checks that need no data, the output folder checks
    data         datasets loading, image column detection, preprocessing, the per-process batch order
    objective    the training loss (L_simple) from the forward process
    ema          exponential moving average of the weights, with warmup
    checkpoints  atomic checkpoint folders, manifests, corruption checks, rotation
    components   the UNet, scheduler and pipeline this project trains and saves
    plots        the loss curve PNG (PIL only)
    train        the loop that ties them together
configs/ holds example accelerate configs; assets/ the samples and loss curve of the default digits run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fit(preset: str = "digits", **options: Any) -> Path:
    """Train in this process with the command line's options given as keywords; returns the output folder.

    ``fit(preset="digits", output_dir="digits-ddpm", max_train_steps=200)`` runs what
    ``ddpm-train --preset digits --output_dir digits-ddpm --max_train_steps 200`` runs: True sets a flag,
    False gives its ``--no-`` form, None leaves an option to the preset. Every input error is a
    ValueError raised before training starts. Load the result with
    ``ScratchDDPMPipeline.from_pretrained(fit(...))``.
    """
    from ddpm_from_scratch.training.config import options_as_argv
    from ddpm_from_scratch.training.trainer import main

    return main(options_as_argv(preset=preset, **options))


__all__ = ["fit"]
