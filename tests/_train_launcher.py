"""Run ddpm_from_scratch.training.trainer's command line with test-side patches, in a fresh process.

    python tests/_train_launcher.py [--kill-after-checkpoint STEP] [--kill-while-checkpointing STEP]
                                    [--kill-after-staged-files STEP K] [--kill-during-update N]
                                    [--kill-while-saving-pipeline] [--nan-loss-at-update N]
                                    [--forbid-unsafe-loads] [--digits-unet-config CONFIG_JSON] -- TRAIN OPTIONS...

--kill-after-checkpoint STEP      SIGKILL once checkpoint-STEP is committed (renamed into place)
--kill-while-checkpointing STEP   SIGKILL while checkpoint-STEP is being saved: its training state is
                                  written, its manifest is not, and it is still in the staging folder
--kill-after-staged-files STEP K  SIGKILL while checkpoint-STEP is staged, once its staging folder holds K
                                  complete files (0: right after it was created), before the next file is
                                  begun or the folder renamed; K = all its files kills just before the rename
--kill-during-update N            SIGKILL during optimizer update N (1-based), at its first forward pass
--kill-while-saving-pipeline      SIGKILL during the final pipeline save, once its staging folder holds the
                                  pipeline code and the UNet (nothing has been moved into output_dir yet)
--nan-loss-at-update N            make the loss of optimizer update N (1-based) NaN
--forbid-unsafe-loads             fail on torch.load without weights_only=True, on pickle.load/loads and
                                  pickle.Unpickler, and on accelerate's load_state, anywhere in the process
--digits-unet-config PATH         build the "digits" UNet preset from this config.json instead
                                  (e.g. the small UNet of a saved fixture)

The patches replace functions of ddpm_from_scratch.training.checkpoints / ddpm_from_scratch.training.trainer before the command line
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
    import ddpm_from_scratch.training.checkpoints as checkpoints
    import ddpm_from_scratch.training.trainer as train

    if args.kill_while_checkpointing is not None:
        from ddpm_from_scratch.saving.layout import CHECKPOINT_STAGING_PREFIX

        staging_name = f"{CHECKPOINT_STAGING_PREFIX}checkpoint-{args.kill_while_checkpointing}"
        write_manifest = checkpoints.write_manifest

        def write_manifest_or_die(folder, *manifest_args, **manifest_kwargs):
            if folder.name == staging_name:
                _kill_self()
            return write_manifest(folder, *manifest_args, **manifest_kwargs)

        checkpoints.write_manifest = write_manifest_or_die  # save_checkpoint looks it up in its module

    if args.kill_after_staged_files is not None:
        _kill_after_staged_files(*args.kill_after_staged_files)

    if args.kill_during_update is not None:
        update, loss_of = train.Trainer._update, train.diffusion_loss
        current = {"update": 0}

        def update_counted(self, stream):
            current["update"] = self.global_step + 1
            return update(self, stream)

        def diffusion_loss_or_die(*loss_args, **loss_kwargs):
            if current["update"] == args.kill_during_update:
                _kill_self()
            return loss_of(*loss_args, **loss_kwargs)

        train.Trainer._update = update_counted
        train.diffusion_loss = diffusion_loss_or_die

    if args.kill_after_checkpoint is not None:
        save_checkpoint = train.save_checkpoint

        def save_checkpoint_then_die(accelerator, root, step, write_files, training_state):
            path = save_checkpoint(accelerator, root, step, write_files, training_state)
            if step == args.kill_after_checkpoint and accelerator.is_main_process:
                _kill_self()
            return path

        train.save_checkpoint = save_checkpoint_then_die  # the trainer imported it by name

    if args.kill_while_saving_pipeline:
        import ddpm_from_scratch.saving.folder as pipeline_folder

        move_into_place = pipeline_folder._move_into_place

        def move_into_place_or_die(staging, *rest, **kwargs):
            _kill_self()
            return move_into_place(staging, *rest, **kwargs)

        pipeline_folder._move_into_place = move_into_place_or_die

    if args.nan_loss_at_update is not None:
        poisoned = {"now": False}
        update, diffusion_loss = train.Trainer._update, train.diffusion_loss

        def update_maybe_poisoned(self, stream):
            poisoned["now"] = self.global_step + 1 == args.nan_loss_at_update
            return update(self, stream)

        def diffusion_loss_maybe_nan(*loss_args, **loss_kwargs):
            output = diffusion_loss(*loss_args, **loss_kwargs)
            if poisoned["now"]:
                output.loss = output.loss * float("nan")
            return output

        train.Trainer._update = update_maybe_poisoned
        train.diffusion_loss = diffusion_loss_maybe_nan

    if args.forbid_unsafe_loads:
        _forbid_unsafe_loads()

    if args.digits_unet_config is not None:
        from ddpm_from_scratch.unet import UNET_PRESETS

        with open(args.digits_unet_config) as handle:
            config = {key: value for key, value in json.load(handle).items() if not key.startswith("_")}
        UNET_PRESETS["digits"] = config  # the same dict object ddpm_from_scratch.training.model reads


def _kill_after_staged_files(step: int, count: int) -> None:
    """SIGKILL once .tmp-checkpoint-<step> holds `count` complete files, checked whenever a file is about to be
    opened, renamed or written by safetensors or torch.save (the writers that open no file through Python):
    the moment before the next file is begun, or before the folder is renamed into place."""
    import safetensors.torch
    import torch

    import ddpm_from_scratch.training.checkpoints as checkpoints
    from ddpm_from_scratch.saving.layout import CHECKPOINT_STAGING_PREFIX

    staging_name = f"{CHECKPOINT_STAGING_PREFIX}checkpoint-{step}"

    def check() -> None:
        for root in (os.path.join(directory, "checkpoints", staging_name) for directory in output_dirs):
            if os.path.isdir(root):
                complete = [name for _, _, names in os.walk(root) for name in names
                            if not (name.startswith(".") and name.endswith(".tmp"))]  # atomic_io's temporaries
                if len(complete) >= count:
                    _kill_self()

    def audit(event: str, _args) -> None:
        if event in ("open", "os.rename", "os.replace"):
            check()

    def checked(write):
        def write_after_check(*write_args, **write_kwargs):
            check()
            return write(*write_args, **write_kwargs)
        return write_after_check

    output_dirs = [sys.argv[sys.argv.index("--output_dir") + 1]] if "--output_dir" in sys.argv else []
    safetensors.torch.save_file = checked(safetensors.torch.save_file)  # diffusers' save_pretrained
    checkpoints.save_file = checked(checkpoints.save_file)  # imported by name
    torch.save = checked(torch.save)
    sys.addaudithook(audit)


class UnsafeLoadAttempted(AssertionError):
    pass


def _forbid_unsafe_loads() -> None:
    import pickle

    import accelerate
    import torch

    torch_load = torch.load

    def weights_only_load(*load_args, **load_kwargs):
        if load_kwargs.get("weights_only") is not True:
            raise UnsafeLoadAttempted(f"torch.load without weights_only=True: {load_args[:1]} {load_kwargs}")
        return torch_load(*load_args, **load_kwargs)

    def refuse(what):
        def refused(*_args, **_kwargs):
            raise UnsafeLoadAttempted(f"{what} was called")
        return refused

    torch.load = weights_only_load
    pickle.load, pickle.loads, pickle.Unpickler = refuse("pickle.load"), refuse("pickle.loads"), refuse("pickle.Unpickler")
    accelerate.Accelerator.load_state = refuse("Accelerator.load_state")


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        own, train_argv = argv[:split], argv[split + 1 :]
    else:
        own, train_argv = [], argv
    parser = argparse.ArgumentParser(prog="_train_launcher.py")
    parser.add_argument("--kill-after-checkpoint", type=int, default=None)
    parser.add_argument("--kill-while-checkpointing", type=int, default=None)
    parser.add_argument("--kill-after-staged-files", type=int, nargs=2, default=None, metavar=("STEP", "K"))
    parser.add_argument("--kill-during-update", type=int, default=None)
    parser.add_argument("--kill-while-saving-pipeline", action="store_true")
    parser.add_argument("--nan-loss-at-update", type=int, default=None)
    parser.add_argument("--forbid-unsafe-loads", action="store_true")
    parser.add_argument("--digits-unet-config", default=None)
    install_patches(parser.parse_args(own))

    from ddpm_from_scratch.training.trainer import cli

    return cli(train_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
