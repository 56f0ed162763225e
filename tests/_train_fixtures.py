"""Shared by tests/test_train*.py: run training/train.py in a subprocess, tiny datasets, weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "training" / "train.py"
# ddpm_from_scratch.training.trainer's command line with test-side patches (a SIGKILL at a checkpoint, a smaller UNet preset)
TRAIN_LAUNCHER = Path(__file__).resolve().parent / "_train_launcher.py"

# A run of a few updates that still goes through every part of the trainer: sampling with 3
# denoising steps, logging every update, no tensorboard files.
TINY_RUN = [
    "--train_batch_size", "8",
    "--num_grid_images", "4",
    "--eval_batch_size", "4",
    "--grid_inference_steps", "3",
    "--save_images_steps", "0",
    "--logging_steps", "1",
    "--report_to", "none",
    "--lr_warmup_steps", "2",
]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # one thread per process: the machine is small and shared, and thread oversubscription is slow
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def launcher_command(args: list[str], patches: list[str]) -> list[str]:
    """The command running ddpm_from_scratch.training.trainer's cli on `args` through tests/_train_launcher.py with `patches`
    (e.g. ["--kill-after-checkpoint", "4"])."""
    return [sys.executable, str(TRAIN_LAUNCHER), *patches, "--", *args]


def run_train(args: list[str], *, launcher: list[str] | None = None, env: dict[str, str] | None = None,
              timeout: float = 240, patches: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run training/train.py (or `launcher + [script]`, or the test launcher with `patches`) and return the
    finished process (not checked)."""
    if patches:
        command = launcher_command(args, patches)
    else:
        command = (launcher or [sys.executable]) + [str(TRAIN_SCRIPT)] + args
    return subprocess.run(command, cwd=REPO_ROOT, env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_train(args: list[str], *, env: dict[str, str] | None = None,
                patches: list[str] | None = None) -> subprocess.Popen:
    """Start training/train.py (through the launcher with `patches`) without waiting (finish it with `finish`)."""
    command = launcher_command(args, patches) if patches else [sys.executable, str(TRAIN_SCRIPT)] + args
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env or subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def check_ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR:\n{result.stderr[-8000:]}"
    return result


def write_digit_folder(folder: Path, count: int, *, with_labels: bool = False, mode: str = "L", size: int = 8) -> Path:
    """`count` real digits as PNG files (in class sub-folders with `with_labels`)."""
    from PIL import Image

    from ddpm_from_scratch.digits.data import digits_as_uint8

    images, labels = digits_as_uint8()
    for index in range(count):
        subfolder = folder / f"class_{labels[index]}" if with_labels else folder
        subfolder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(images[index], mode="L").resize((size, size), Image.NEAREST).convert(mode)
        image.save(subfolder / f"digit_{index:04d}.png")
    return folder


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def flip_one_byte(path: Path, offset_fraction: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(data))
