"""Run training.train's command line with test-side patches, in a fresh process.

    python tests/_train_launcher.py [--kill-after-checkpoint STEP] [--kill-while-checkpointing STEP]
                                    [--digits-unet-config CONFIG_JSON] -- TRAIN OPTIONS...

--kill-after-checkpoint STEP      SIGKILL once checkpoint-STEP is committed (renamed into place)
--kill-while-checkpointing STEP   SIGKILL while checkpoint-STEP is being saved: its training state is
                                  written, its manifest is not, and it is still in the staging folder
--digits-unet-config PATH         build the "digits" UNet preset from this config.json instead
                                  (e.g. the small UNet of a saved fixture)

The patches replace functions of training.checkpoints / training.train before the command line
runs, so production code carries no test hooks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_patches(args: argparse.Namespace) -> None:
    import training.checkpoints as checkpoints
    import training.train as train

    if args.kill_while_checkpointing is not None:
        staging_name = f"{checkpoints.STAGING_PREFIX}checkpoint-{args.kill_while_checkpointing}"
        write_manifest = checkpoints.write_manifest

        def write_manifest_or_die(folder):
            if folder.name == staging_name:
                _kill_self()
            return write_manifest(folder)

        checkpoints.write_manifest = write_manifest_or_die  # save_checkpoint looks it up in its module

    if args.kill_after_checkpoint is not None:
        save_checkpoint = train.save_checkpoint

        def save_checkpoint_then_die(accelerator, root, step, training_state):
            path = save_checkpoint(accelerator, root, step, training_state)
            if step == args.kill_after_checkpoint and accelerator.is_main_process:
                _kill_self()
            return path

        train.save_checkpoint = save_checkpoint_then_die  # the trainer imported it by name

    if args.digits_unet_config is not None:
        from ddpm_from_scratch.unet import UNET_PRESETS

        with open(args.digits_unet_config) as handle:
            config = {key: value for key, value in json.load(handle).items() if not key.startswith("_")}
        UNET_PRESETS["digits"] = config  # the same dict object training.components reads


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        own, train_argv = argv[:split], argv[split + 1 :]
    else:
        own, train_argv = [], argv
    parser = argparse.ArgumentParser(prog="_train_launcher.py")
    parser.add_argument("--kill-after-checkpoint", type=int, default=None)
    parser.add_argument("--kill-while-checkpointing", type=int, default=None)
    parser.add_argument("--digits-unet-config", default=None)
    install_patches(parser.parse_args(own))

    from training.train import cli

    return cli(train_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
