"""No project command makes a training checkpoint fail its own verification.

One small real checkpoint (2 updates of a tiny digits run); every command that accepts a folder runs
on it: ddpm-sample, ddpm-evaluate, ddpm-estimate-variance (refused without --out, a new folder with
it), ddpm-convert-unet (refused: nothing to convert), ScratchDDPMPipeline.from_pretrained +
save_pretrained elsewhere (and into the checkpoint: refused). Afterwards every byte of the
checkpoint is as it was, it verifies as the trainer verifies it, and the run resumes from it.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from _train_fixtures import TINY_RUN, check_ok, run_train
from ddpm_from_scratch.saving import layout
from ddpm_from_scratch.saving.checksums import verify_manifest

pytestmark = pytest.mark.slow

RUN = TINY_RUN + ["--num_train_timesteps", "20", "--checkpointing_steps", "2"]


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_command_leaves_a_checkpoint_verifying_and_resumable(tmp_path, capsys):
    from ddpm_from_scratch.cli import convert, estimate_variance, evaluate, sample
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    out = tmp_path / "run"
    check_ok(run_train(RUN + ["--output_dir", str(out), "--max_train_steps", "2"]))
    checkpoint = out / layout.CHECKPOINTS_SUBDIR / "checkpoint-2"
    before = _digests(checkpoint)
    assert verify_manifest(checkpoint, required=(layout.STATE_NAME,)) == []

    grid = tmp_path / "grid.png"
    assert sample.main([str(checkpoint), "--num-images", "2", "--out", str(grid), "--num-inference-steps", "2",
                        "--device", "cpu"]) == 0
    assert grid.is_file()
    report = tmp_path / "eval.json"
    assert evaluate.main([str(checkpoint), "--num-samples", "0", "--nll-images", "2", "--device", "cpu",
                          "--json", str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["nll"] is not None

    estimate = [str(checkpoint), "--num-images", "4", "--num-timesteps", "4", "--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit) as refused:
        estimate_variance.main(estimate)
    assert refused.value.code == 1
    error = capsys.readouterr().err
    assert "is a training checkpoint, which this command does not modify" in error and "pass --out DIR" in error
    estimated = tmp_path / "estimated"
    assert estimate_variance.main(estimate + ["--out", str(estimated), "--set-default"]) == 0
    config = json.loads((estimated / "scheduler" / "scheduler_config.json").read_text())
    assert config["variance_type"] == "analytic" and len(config["analytic_eps_sq_mean"]) == 20
    assert ScratchDDPMPipeline.from_pretrained(estimated).scheduler.config.variance_type == "analytic"

    with pytest.raises(SystemExit) as refused:
        convert.main([str(checkpoint), str(tmp_path / "converted")])
    assert refused.value.code == 2
    assert "already holds a ScratchUNet2DModel, so there is nothing to convert" in capsys.readouterr().err

    pipeline = ScratchDDPMPipeline.from_pretrained(checkpoint)
    pipeline.save_pretrained(tmp_path / "copy")
    copied = ScratchDDPMPipeline.from_pretrained(tmp_path / "copy").unet.state_dict()
    assert all(torch.equal(copied[key], value) for key, value in pipeline.unet.state_dict().items())
    with pytest.raises(ValueError, match="is a training checkpoint: a pipeline saved into it would replace"):
        pipeline.save_pretrained(checkpoint)

    assert _digests(checkpoint) == before  # not a byte written into the checkpoint
    assert verify_manifest(checkpoint, required=(layout.STATE_NAME,)) == []
    resumed = check_ok(run_train(RUN + ["--output_dir", str(out), "--max_train_steps", "3",
                                        "--resume_from_checkpoint", "latest"]))
    log = resumed.stderr + resumed.stdout
    assert "resumed from" in log and "checkpoint-2 at update 2" in log
    assert not list((out / layout.CHECKPOINTS_SUBDIR).glob("*.corrupt*"))
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 3
