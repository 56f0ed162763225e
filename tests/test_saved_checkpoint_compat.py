"""A training checkpoint written by version 0.1.0: resuming it is refused in one line (its training state
is pickled, and no pickle is read), and its weights still load.

The fixture (tests/fixtures/README.md) is checkpoint-2 of a run of 2 updates on the first 16 digits of
write_digit_folder (batch 8, lr 1e-3, 1 warmup step, seed 0), with the digits UNet preset shrunk to
tests/fixtures/training_v0_1_0/unet_config.json. The resume attempt uses the same options and the same
shrunk preset (through tests/_train_launcher.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_fixtures import TINY_RUN, run_train, write_digit_folder
from ddpm_from_scratch.training import checkpoints as ckpt

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "training_v0_1_0"
CHECKPOINT = FIXTURE / "checkpoints" / "checkpoint-2"


def test_the_fixture_verifies():
    assert ckpt.verify_checkpoint(CHECKPOINT) == []


@pytest.mark.slow
def test_resuming_a_0_1_0_checkpoint_is_refused_in_one_line_before_training(tmp_path):
    folder = write_digit_folder(tmp_path / "digits", 16)
    out = tmp_path / "out"
    shutil.copytree(FIXTURE / "checkpoints", out / "checkpoints")
    args = TINY_RUN + [
        "--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out),
        "--train_batch_size", "8", "--learning_rate", "1e-3", "--lr_warmup_steps", "1", "--seed", "0",
        "--max_train_steps", "4", "--resume_from_checkpoint", "latest",
    ]
    # --forbid-unsafe-loads: torch.load without weights_only=True, or any pickle.load, fails the run
    result = run_train(args, patches=["--forbid-unsafe-loads", "--digits-unet-config", str(FIXTURE / "unet_config.json")])
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("train.py: error: checkpoint checkpoint-2 was written by ddpm-from-scratch 0.1.0, whose training state "
            "(pickles) cannot be resumed by this version; start a new run") in result.stderr
    assert "Traceback" not in result.stderr and "UnsafeLoadAttempted" not in result.stderr
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["checkpoint-2"]  # left as it was
    assert not (out / "model_index.json").exists()


def test_the_0_1_0_weights_still_load_and_sample():
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
    from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
    from ddpm_from_scratch.unet import ScratchUNet2DModel

    config = {key: value for key, value in json.loads((FIXTURE / "unet_config.json").read_text()).items()
              if not key.startswith("_")}
    unet = ScratchUNet2DModel(**config)
    unet.load_state_dict(load_file(str(CHECKPOINT / "model.safetensors")))  # strict: every tensor fits
    pipeline = ScratchDDPMPipeline(unet=unet, scheduler=ScratchDDPMScheduler())
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
