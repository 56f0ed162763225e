"""`accelerate launch` with 2 CPU processes (gloo), and the shipped accelerate configs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from _train_fixtures import REPO_ROOT, TINY_RUN, check_ok, run_train
from training import checkpoints as ckpt

CONFIGS = REPO_ROOT / "training" / "configs"


@pytest.mark.parametrize("name, kind, processes", [
    ("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 8), ("multi_node", "MULTI_GPU", 16), ("cpu_2proc", "MULTI_GPU", 2),
])
def test_shipped_accelerate_configs_load(name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == processes


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate_launcher() -> list[str]:
    executable = Path(sys.executable).with_name("accelerate")
    return [str(executable)] if executable.exists() else [shutil.which("accelerate") or "accelerate"]


def test_two_cpu_processes_train_checkpoint_and_save(tmp_path):
    out = tmp_path / "run"
    launcher = _accelerate_launcher() + ["launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
                                         "--main_process_port", str(_free_port())]
    result = check_ok(run_train(TINY_RUN + ["--output_dir", str(out), "--max_train_steps", "3",
                                            "--checkpointing_steps", "2", "--gradient_accumulation_steps", "2",
                                            "--lr_scheduler", "linear", "--lr_warmup_steps", "1",
                                            "--learning_rate", "1e-3"], launcher=launcher))
    assert "2 process(es) on cpu" in result.stderr
    assert "batch 8 per process x 2 processes x 2 accumulation = 32 images per update" in result.stderr
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert ckpt.verify_checkpoint(checkpoint) == []
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    # the LR schedule counts optimizer updates: linear decay reaches 0 exactly at the last of the 3
    # updates, whatever the number of processes and micro-batches per update
    assert ckpt.read_training_state(checkpoint)["learning_rate"] == pytest.approx(1e-3 * (3 - 2) / (3 - 1))
    state = ckpt.read_training_state(out / "checkpoints" / "checkpoint-3")
    assert state["learning_rate"] == 0.0 and state["micro_batches_per_process"] == 6
    assert state["samples_seen"] == 3 * 32 and state["data_layout"]["num_processes"] == 2
    assert (out / "model_index.json").is_file() and (out / "samples" / "final.png").is_file()
