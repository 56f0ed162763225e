"""`accelerate launch` with 2 CPU processes (gloo), and the shipped accelerate configs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from _helpers import free_loopback_port
from _train_fixtures import REPO_ROOT, TINY_RUN, check_ok, run_train
from ddpm_from_scratch.training import checkpoints as ckpt

CONFIGS = REPO_ROOT / "training" / "configs"


@pytest.mark.parametrize("name, kind, processes", [
    ("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 8), ("multi_node", "MULTI_GPU", 16), ("cpu_2proc", "MULTI_GPU", 2),
])
def test_shipped_accelerate_configs_load(name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == processes


def _accelerate_launcher() -> list[str]:
    executable = Path(sys.executable).with_name("accelerate")
    return [str(executable)] if executable.exists() else [shutil.which("accelerate") or "accelerate"]


@pytest.mark.slow
def test_two_cpu_processes_train_checkpoint_and_save(tmp_path):
    out = tmp_path / "run"
    launcher = _accelerate_launcher() + ["launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
                                         "--main_process_port", str(free_loopback_port())]
    result = check_ok(run_train(TINY_RUN + ["--output_dir", str(out), "--max_train_steps", "3",
                                            "--checkpointing_steps", "2", "--gradient_accumulation_steps", "2",
                                            "--lr_scheduler", "linear", "--lr_warmup_steps", "1",
                                            "--learning_rate", "1e-3"], launcher=launcher))
    assert "2 process(es) on cpu" in result.stderr
    assert "batch 8 per process x 2 processes x 2 accumulation = 32 images per update" in result.stderr
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert ckpt.verify_checkpoint(checkpoint) == []
    assert {p.name for p in checkpoint.glob("random_states_*.safetensors")} == {"random_states_0.safetensors",
                                                                                "random_states_1.safetensors"}
    # the LR schedule counts optimizer updates: linear decay reaches 0 exactly at the last of the 3
    # updates, whatever the number of processes and micro-batches per update
    assert ckpt.read_training_state(checkpoint)["learning_rate"] == pytest.approx(1e-3 * (3 - 2) / (3 - 1))
    state = ckpt.read_training_state(out / "checkpoints" / "checkpoint-3")
    assert state["learning_rate"] == 0.0 and state["micro_batches_per_process"] == 6
    assert state["samples_seen"] == 3 * 32 and state["data_layout"]["num_processes"] == 2
    assert (out / "model_index.json").is_file() and (out / "samples" / "final.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_bad_option_under_accelerate_launch_prints_one_clear_line(tmp_path, processes):
    """What a launched run can and cannot control when an option is bad.

    The error line is printed once (by process 0) and the run exits with status 2 before any work.
    With one process, `accelerate launch -q` then exits without a traceback of its own. With several,
    accelerate hands the processes to torchrun, whose failure report is always a Python traceback
    (ChildFailedError) whatever the exit status, -q or not: the trainer writes its error line into
    torchrun's error file, so the report names it as the root cause instead of pointing at torch's docs.
    """
    launcher = _accelerate_launcher() + ["launch", "-q"]
    if processes == 1:
        launcher += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        launcher += ["--config_file", str(CONFIGS / "cpu_2proc.yaml"), "--main_process_port", str(free_loopback_port())]
    result = run_train(["--output_dir", str(tmp_path / "out"), "--num_epochs", "2", "--max_train_steps", "5"],
                       launcher=launcher, timeout=180)
    line = "train.py: error: --num_epochs and --max_train_steps both given; pass only one"
    assert result.returncode != 0
    printed = [row for row in result.stderr.splitlines() if row.startswith("train.py: error:")]
    assert len(printed) == 1 and printed[0].startswith(line), result.stderr[-3000:]
    if processes == 1:
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    else:
        root_cause = result.stderr.split("Root Cause")[-1]
        assert f"traceback : {line}" in root_cause and "exitcode  : 2" in root_cause
    assert not (tmp_path / "out").exists()  # refused before anything was written
