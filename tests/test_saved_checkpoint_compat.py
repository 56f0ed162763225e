"""A training checkpoint written by version 0.1.0 still resumes, and the resumed run saves a loadable pipeline.

The fixture (tests/fixtures/README.md) is checkpoint-2 of a run of 2 updates on the first 16 digits of
write_digit_folder (batch 8, lr 1e-3, 1 warmup step, seed 0), with the digits UNet preset shrunk to
tests/fixtures/training_v0_1_0/unet_config.json. The resumed run uses the same options and the same
shrunk preset (through tests/_train_launcher.py) for 2 more updates.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from _train_fixtures import TINY_RUN, check_ok, run_train, write_digit_folder
from ddpm_from_scratch.training import checkpoints as ckpt

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "training_v0_1_0"
SAVED_STEPS = 2
MORE_STEPS = 2


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("compat")
    folder = write_digit_folder(base / "digits", 16)
    out = base / "out"
    shutil.copytree(FIXTURE / "checkpoints", out / "checkpoints")
    args = TINY_RUN + [
        "--train_data_dir", str(folder), "--cache_dir", str(base / "cache"), "--output_dir", str(out),
        "--train_batch_size", "8", "--learning_rate", "1e-3", "--lr_warmup_steps", "1", "--seed", "0",
        "--max_train_steps", str(SAVED_STEPS + MORE_STEPS), "--resume_from_checkpoint", "latest",
    ]
    # --forbid-unsafe-loads: torch.load without weights_only=True, or any pickle.load, fails the run
    result = check_ok(run_train(args, patches=["--forbid-unsafe-loads", "--digits-unet-config",
                                               str(FIXTURE / "unet_config.json")]))
    return out, result


def test_the_fixture_verifies():
    assert ckpt.verify_checkpoint(FIXTURE / "checkpoints" / f"checkpoint-{SAVED_STEPS}") == []


def test_a_0_1_0_checkpoint_resumes_where_it_stopped(resumed):
    out, result = resumed
    assert f"checkpoint-{SAVED_STEPS} at update {SAVED_STEPS}" in result.stderr
    assert "WARNING" not in result.stderr  # the RNG states of its pickles were restored too
    assert "data layout" not in result.stderr  # same batch size, processes and dataset: the same data order
    final = out / "checkpoints" / f"checkpoint-{SAVED_STEPS + MORE_STEPS}"
    assert ckpt.verify_checkpoint(final) == []
    state = ckpt.read_training_state(final)
    saved = ckpt.read_training_state(FIXTURE / "checkpoints" / f"checkpoint-{SAVED_STEPS}")
    assert state["global_step"] == SAVED_STEPS + MORE_STEPS and state["samples_seen"] == 8 * (SAVED_STEPS + MORE_STEPS)
    assert [step for step, _ in state["loss_history"]] == list(range(1, SAVED_STEPS + MORE_STEPS + 1))
    assert state["loss_history"][:SAVED_STEPS] == saved["loss_history"]  # carried over, not recomputed
    assert all(math.isfinite(loss) for _, loss in state["loss_history"])


def test_the_resumed_run_ends_with_a_loadable_pipeline(resumed):
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    out, _ = resumed
    pipeline = ScratchDDPMPipeline.from_pretrained(out)
    assert list(pipeline.unet.config.block_out_channels) == [4, 8]  # the fixture's UNet, not the full preset
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
