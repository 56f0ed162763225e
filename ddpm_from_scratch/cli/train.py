"""ddpm-train: train a DDPM and save it as a ScratchDDPMPipeline (the ``train`` extra).

    ddpm-train --preset digits                                   # one process
    accelerate launch training/train.py --preset digits          # any accelerate setup

The same command line as ``training/train.py``; ``ddpm-train --help`` lists the options.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from ddpm_from_scratch.training.trainer import cli

    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
