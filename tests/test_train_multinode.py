"""Two machines without GPUs: `accelerate launch --num_machines 2`, one launcher per machine rank.

Both "machines" are processes on this host, joined over loopback (127.0.0.1, gloo bound to the
loopback interface) with the static rendezvous that training/configs/multi_node.yaml uses; each
launcher starts one training process, so every process is its machine's local main process, as on
real machines with one GPU each. They share --output_dir, as real machines must (multi_node.yaml).

Only the main process saves weights, so the test launches tests/_rank_weights_train.py (train.py
with accelerate's prepare and end_training wrapped) to have every rank write the weights it holds
before and after training. The ranks train on different shards of the data, so identical weights
after the updates mean the gradients were all-reduced across the two machines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _helpers import free_loopback_port
from _train_fixtures import REPO_ROOT, TINY_RUN, check_ok, finish, load_safetensors, max_abs_difference, subprocess_env
from ddpm_from_scratch.training import checkpoints as ckpt

WRAPPER = Path(__file__).resolve().parent / "_rank_weights_train.py"
MACHINES = 2
UPDATES = 3
TIMEOUT_S = 300


def _loopback_interface() -> str:
    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


def _launch_machine(rank: int, port: int, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_machines", str(MACHINES), "--num_processes", str(MACHINES), "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--same_network",
               "--rdzv_backend", "static", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(WRAPPER)] + args
    # a session of its own, so that a timeout can end the launcher and the training process it started
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _run_two_machines(out: Path, ranks: Path) -> list[subprocess.CompletedProcess]:
    args = TINY_RUN + ["--output_dir", str(out), "--max_train_steps", str(UPDATES), "--checkpointing_steps", "2",
                       "--no-use_ema", "--learning_rate", "1e-3", "--lr_warmup_steps", "1"]
    env = subprocess_env(RANK_WEIGHTS_DIR=str(ranks), GLOO_SOCKET_IFNAME=_loopback_interface())
    port = free_loopback_port()
    machines = [_launch_machine(rank, port, args, env) for rank in range(MACHINES)]
    try:
        return [finish(machine, timeout=TIMEOUT_S) for machine in machines]
    finally:
        for machine in machines:
            if machine.poll() is None:
                os.killpg(machine.pid, signal.SIGKILL)
                machine.wait()


@pytest.mark.slow
def test_two_machines_end_with_identical_weights_and_save_a_loadable_pipeline(tmp_path):
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    out, ranks = tmp_path / "run", tmp_path / "ranks"
    first, _ = [check_ok(result) for result in _run_two_machines(out, ranks)]
    assert "2 process(es) on cpu" in first.stderr
    assert "batch 8 per process x 2 processes x 1 accumulation = 16 images per update" in first.stderr

    processes = [json.loads((ranks / f"rank{rank}" / "process.json").read_text()) for rank in range(MACHINES)]
    for rank, process in enumerate(processes):
        assert process["process_index"] == rank and process["GROUP_RANK"] == str(rank)  # machine rank = process rank
        assert process["local_process_index"] == 0 and process["is_local_main_process"]
        assert process["num_processes"] == MACHINES and process["backend"] == "gloo"
        assert process["MASTER_ADDR"] == "127.0.0.1"

    final = out / "checkpoints" / f"checkpoint-{UPDATES}"
    assert ckpt.verify_checkpoint(final) == []
    state = ckpt.read_training_state(final)
    assert state["samples_seen"] == UPDATES * 16 and state["data_layout"]["num_processes"] == MACHINES

    held = {(rank, when): load_safetensors(ranks / f"rank{rank}" / f"{when}.safetensors")
            for rank in range(MACHINES) for when in ("prepared", "final")}
    assert max_abs_difference(held[0, "prepared"], held[1, "prepared"]) == 0.0  # the same seeded initialisation
    assert max_abs_difference(held[0, "final"], held[1, "final"]) == 0.0, "the machines ended with different weights"
    assert max_abs_difference(held[1, "prepared"], held[1, "final"]) > 0  # and training changed them

    # --no-use_ema: the saved pipeline holds the final weights, i.e. what machine 1 ended with
    pipeline = ScratchDDPMPipeline.from_pretrained(out)
    assert max_abs_difference(dict(pipeline.unet.state_dict()), held[1, "final"]) == 0.0
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="pt").images
    assert tuple(images.shape) == (2, 1, 8, 8) and torch.isfinite(torch.as_tensor(images)).all()
