"""Training for ddpm-from-scratch: `accelerate launch training/train.py ...`, `python training/train.py ...`,
the installed command `ddpm-train ...` (the `train` extra: pip install "ddpm-from-scratch[train]"), or
from Python (a notebook):

    from ddpm_from_scratch.training import fit
    out = fit(preset="digits", output_dir="digits-ddpm", max_train_steps=200)
    pipe = ScratchDDPMPipeline.from_pretrained(out)

(`fit`, not `train`: `ddpm_from_scratch.training.trainer` is the trainer's module.)

Modules, one job each (imports go down this list's dependency order: options first, trainer last):
    options           TrainingOptions (one typed field per option) and the presets
    command_line      the argparse options and fit's keywords as a command line
    model             the UNet (preset or --model_config_name_or_path, with its checks) and the noise scheduler
    config            preset resolution and every option check that needs no data
    output_dir        the output folder checks (writable, nothing foreign overwritten)
    data              datasets loading, column detection, the validation pass over every image
    batches           per-image preprocessing and the per-process batch order a resume reproduces
    objective         the training loss (L_simple or hybrid) and the per-update random generator
    ema               the EMA of the weights: diffusers' EMAModel with warmup, and the model carrying it
    checkpoints       atomic checkpoint folders (written without pickles), manifests, corruption checks, rotation
    resume            whether a checkpoint fits this run, and restoring it without unpickling
    divergence        stopping a run whose loss, gradients or weights are not finite
    components        the pipeline, its sample grids, the model card and the upload
    plots             the loss curve PNG (PIL only)
    accelerate_setup  the Accelerator, logging, trackers, torchrun's error file
    trainer           the loop that ties them together, and the command line's entry point
The repository's training/train.py is the script `accelerate launch` runs; training/configs/ holds accelerate configs.
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
    from ddpm_from_scratch.training.command_line import options_as_argv
    from ddpm_from_scratch.training.trainer import main

    return main(options_as_argv(preset=preset, **options))


__all__ = ["fit"]
