"""What the trainer asks of accelerate and the launchers: the Accelerator for this launch, logging per
process, the trackers' config and sample-grid images, and torchrun's error file."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_from_scratch.saving.atomic_io import write_json_atomic

from .config import check_report_to
from .options import TrainingOptions

logger = logging.getLogger(__name__)

SAMPLE_GRID_TAG = "samples"


def make_accelerator(opts: TrainingOptions):
    """The Accelerator for this launch, with logging configured; ValueError for a setup it cannot run."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None if opts.report_to == "none" else opts.report_to
    check_report_to(opts.report_to)  # the tracker's package is installed
    try:
        accelerator = Accelerator(
            cpu=cpu_only_multiprocess(),
            mixed_precision=opts.mixed_precision,
            gradient_accumulation_steps=opts.gradient_accumulation_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(opts.output_path), logging_dir=str(opts.logging_path)),
        )
    except ValueError as error:  # e.g. fp16 without a GPU
        raise ValueError(f"accelerate cannot run this setup: {error}") from error
    configure_logging(accelerator)
    threads = set_cpu_threads(opts, accelerator)
    if threads is not None:
        logger.info("training on the CPU with %d torch threads per process (OMP_NUM_THREADS=%s)", threads,
                    os.environ.get("OMP_NUM_THREADS", "unset"))
    return accelerator


# set by `accelerate launch` in the environment of the processes it starts
ACCELERATE_LAUNCH_VARIABLE = "ACCELERATE_DYNAMO_BACKEND"


def set_cpu_threads(opts: TrainingOptions, accelerator) -> int | None:
    """On a CPU, give each process ``--num_threads`` torch threads, or under `accelerate launch` its share.

    `accelerate launch` without a GPU exports OMP_NUM_THREADS=1 (unless given
    --num_cpu_threads_per_process), which would pin a single training process to one core. Under
    it the default is the cores this process may run on (its affinity) divided by the processes on
    this machine (LOCAL_WORLD_SIZE). Returns the count set; None where nothing is set: on an
    accelerator, or started without accelerate's launcher and without --num_threads (torch's own
    default then stands: every core, or OMP_NUM_THREADS if you set it).
    """
    if accelerator.device.type != "cpu":
        return None
    threads = opts.num_threads
    if threads is None:
        if ACCELERATE_LAUNCH_VARIABLE not in os.environ:
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        threads = max(1, cores // max(1, local_processes))
    torch.set_num_threads(threads)
    return threads


def cpu_only_multiprocess() -> bool:
    """True when a launcher (torchrun, `accelerate launch --multi_gpu`) started several processes on a
    machine without an accelerator. accelerate would then run each as a separate one-process job
    writing the same files; asking it for CPU processes makes them one job joined by gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return not has_accelerator


def configure_logging(accelerator) -> None:
    """INFO lines from the local main process, warnings from the others (every line names its module)."""
    import datasets
    import diffusers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING, force=True)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    diffusers.utils.logging.set_verbosity_warning()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise


def tracker_config(opts: TrainingOptions) -> dict[str, Any]:
    """Options as tensorboard hparams accept them (numbers, strings, bools)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in opts.for_model_card().items()}


def log_sample_grid(trackers, grid, path: Path, step: int) -> None:
    """Send a sample grid to every active tracker through the image call accelerate (or the tracker's own
    client) offers for it; a tracker with none gets a log line pointing at the PNG file."""
    rgb = np.asarray(grid.convert("RGB"))
    for tracker in trackers:
        name = tracker.name
        if name == "tensorboard":
            tracker.log_images({SAMPLE_GRID_TAG: rgb[None]}, step=step, dataformats="NHWC")
        elif name in ("wandb", "swanlab"):
            tracker.log_images({SAMPLE_GRID_TAG: [grid]}, step=step)
        elif name in ("aim", "clearml"):
            tracker.log_images({SAMPLE_GRID_TAG: rgb}, step=step)
        elif name == "comet_ml":
            tracker.tracker.log_image(rgb, name=f"{SAMPLE_GRID_TAG}-{step:07d}", step=step)
        elif name == "mlflow":
            tracker.log_artifact(str(path), artifact_path=SAMPLE_GRID_TAG)
        elif name == "dvclive":
            tracker.tracker.log_image(path.name, grid)
        else:
            logger.info("the %s tracker takes no images through accelerate; the grid is %s", name, path)


def report_setup_error(line: str) -> None:
    """Print the error once (process 0 of a launched job; every process raised the same error). Under
    torchrun (`accelerate launch --multi_gpu`) it also goes to the process's error file, so torchrun's
    failure report, printed after it, shows this line as the root cause instead of a pointer to its docs."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        write_json_atomic({"message": line, "timestamp": int(time.time())}, error_file)
