#!/usr/bin/env python
"""Train a DDPM and save it as a ScratchDDPMPipeline: the script ``accelerate launch`` runs.

    accelerate launch training/train.py --preset digits --output_dir digits-ddpm
    python training/train.py --preset digits --output_dir digits-ddpm      # one process

The trainer is ``ddpm_from_scratch.training`` (the ``train`` extra); ``ddpm-train`` and
``ddpm_from_scratch.fit`` run the same code. ``training/configs/`` holds accelerate configs.
"""

import sys

from ddpm_from_scratch.training.trainer import cli

if __name__ == "__main__":
    sys.exit(cli())
