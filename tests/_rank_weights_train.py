"""ddpm_from_scratch.training.trainer's command line, with every process also writing the weights it holds.

Only the main process saves weights (checkpoints, the pipeline), so the weights the other processes
hold never reach the disk. Launched instead of train.py
(`accelerate launch tests/_rank_weights_train.py <train.py arguments>`), this script wraps two
public accelerate calls the trainer makes on every process, then runs ddpm_from_scratch.training.trainer.cli unchanged:

    Accelerator.prepare       -> $RANK_WEIGHTS_DIR/rank<process_index>/prepared.safetensors  (weights before training)
    Accelerator.end_training  -> $RANK_WEIGHTS_DIR/rank<process_index>/final.safetensors     (weights after it)

and $RANK_WEIGHTS_DIR/rank<process_index>/process.json says where the process ran.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import accelerate
import torch
from safetensors.torch import save_file

_prepare, _end_training = accelerate.Accelerator.prepare, accelerate.Accelerator.end_training
_models: list[torch.nn.Module] = []


def _rank_folder(accelerator: accelerate.Accelerator) -> Path:
    folder = Path(os.environ["RANK_WEIGHTS_DIR"]) / f"rank{accelerator.process_index}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _save_weights(accelerator: accelerate.Accelerator, name: str) -> None:
    for index, model in enumerate(_models):
        state = accelerator.unwrap_model(model).state_dict()
        tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
        save_file(tensors, str(_rank_folder(accelerator) / f"{name}{index or ''}.safetensors"))


def _describe_process(accelerator: accelerate.Accelerator) -> dict[str, object]:
    return {
        "process_index": accelerator.process_index,
        "local_process_index": accelerator.local_process_index,
        "num_processes": accelerator.num_processes,
        "is_main_process": accelerator.is_main_process,
        "is_local_main_process": accelerator.is_local_main_process,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "device": str(accelerator.device),
        **{name: os.environ.get(name) for name in ("GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")},
    }


def prepare(self, *args, **kwargs):
    prepared = _prepare(self, *args, **kwargs)
    _models.extend(item for item in (prepared if isinstance(prepared, tuple) else (prepared,))
                   if isinstance(item, torch.nn.Module))
    _save_weights(self, "prepared")
    (_rank_folder(self) / "process.json").write_text(json.dumps(_describe_process(self), indent=1))
    return prepared


def end_training(self) -> None:
    _save_weights(self, "final")
    _end_training(self)


accelerate.Accelerator.prepare, accelerate.Accelerator.end_training = prepare, end_training

if __name__ == "__main__":
    from ddpm_from_scratch.training.trainer import cli

    sys.exit(cli(sys.argv[1:]))
