"""Sampling throughput: ScratchDDPMPipeline vs diffusers' DDPMPipeline on the same weights, same run.

Both pipelines sample from the same function: a random-weight diffusers UNet2DModel (DDPM layout,
config from convert.diffusers_config_from_scratch) and its conversion to ScratchUNet2DModel
(convert.convert_diffusers_unet). diffusers' row is DDPMPipeline(UNet2DModel, DDPMScheduler); ours
is ScratchDDPMPipeline(ScratchUNet2DModel, ScratchDDPMScheduler), plain and with each option of
``enable_fast_sampling``. Every pipeline gets a generator seeded the same way, so the images can be
compared: the last column is the largest pixel difference (images in [0, 1]) from the first row's,
after min(--steps, 50) steps.

    python -m benchmarks.bench_sampling --threads 1                 # CPU: digits, batch 16, 50 steps
    python -m benchmarks.bench_sampling --preset cifar10 --batch-size 2 --steps 5 --threads 1
    python -m benchmarks.bench_sampling --device cuda               # cifar10, batch 256, 1000 steps

Throughput is UNet evaluations per second: images x steps / seconds of one whole pipeline call
(x_T, the loop, the output tensor), and steps per second. Rows run in alternating rounds (every
row once per round; default 3 on a CPU, 1 on a GPU) and each reports its median round. Every pipeline is called once first with 2
steps (compilation, CUDA-graph capture and lazy initialisation happen there, as in a long run).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import describe_device, print_table, software_versions, synchronize

from ddpm_from_scratch.saving.convert_unet import convert_diffusers_unet, diffusers_config_from_scratch
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import UNET_PRESETS

# diffusers' up/down-sampling blocks call an lru_cache'd version check that dynamo warns about (harmless)
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")

DEFAULTS = {  # device type -> (preset, batch size per preset, steps, rounds)
    "cpu": ("digits", {"digits": 16, "cifar10": 2}, 50, 3),
    "cuda": ("cifar10", {"digits": 256, "cifar10": 256}, 1000, 1),
}
COMPARED_STEPS = 50  # the image comparison needs no more steps than this


@dataclass
class Row:
    name: str
    ours: bool  # ScratchDDPMPipeline (else diffusers' DDPMPipeline)
    fast: dict[str, Any]  # enable_fast_sampling arguments (ours) / {"compile": True} (diffusers)
    cuda_only: bool = False


ROWS = [
    Row("diffusers DDPMPipeline", False, {}),
    Row("diffusers DDPMPipeline, torch.compile(unet)", False, {"compile": True}),
    Row("ours", True, {}),
    Row("ours, compile", True, {"compile": True}),
    Row("ours, bf16 autocast", True, {"autocast_dtype": torch.bfloat16}),
    Row("ours, compile + bf16 autocast", True, {"compile": True, "autocast_dtype": torch.bfloat16}),
    Row("ours, CUDA graph", True, {"cuda_graph": True}, cuda_only=True),
    Row("ours, CUDA graph + bf16 autocast", True, {"cuda_graph": True, "autocast_dtype": torch.bfloat16}, cuda_only=True),
    Row("ours, compile + CUDA graph + bf16 autocast", True,
        {"compile": True, "cuda_graph": True, "autocast_dtype": torch.bfloat16}, cuda_only=True),
]


def build_pipelines(preset: str, rows: list[Row], device: torch.device) -> dict[str, Any]:
    """One pipeline per row, all on the same weights."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)  # diffusers' default init: every layer random, so the output depends on the weights
    diffusers_unet = UNet2DModel(**diffusers_config_from_scratch(UNET_PRESETS[preset])).eval()
    scratch_unet = convert_diffusers_unet(diffusers_unet)
    pipelines = {}
    for row in rows:
        if row.ours:
            pipeline = ScratchDDPMPipeline(unet=scratch_unet, scheduler=ScratchDDPMScheduler.from_config(DDPMScheduler().config))
            pipeline.enable_fast_sampling(**row.fast)
        else:
            unet = torch.compile(diffusers_unet) if row.fast.get("compile") else diffusers_unet
            pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
        pipeline.set_progress_bar_config(disable=True)
        pipelines[row.name] = pipeline.to(device)
    return pipelines


def sample(pipeline: Any, batch_size: int, steps: int, device: torch.device, generator_device: str) -> torch.Tensor:
    generator = torch.Generator(device if generator_device == "device" else "cpu").manual_seed(0)
    images = pipeline(batch_size=batch_size, generator=generator, num_inference_steps=steps, output_type="pt").images
    synchronize(device)
    return torch.as_tensor(images)


def measure(pipelines: dict[str, Any], rows: list[Row], batch_size: int, steps: int, rounds: int, device: torch.device,
            generator_device: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Each row's images after min(steps, COMPARED_STEPS) steps (float32, on the CPU), and the median
    seconds of one ``steps``-step call over ``rounds`` alternating rounds.

    Every pipeline is called once with 2 steps first (compilation, CUDA-graph capture, lazy init).
    """
    images = {}
    for row in rows:
        sample(pipelines[row.name], batch_size, 2, device, generator_device)
        images[row.name] = sample(pipelines[row.name], batch_size, min(steps, COMPARED_STEPS), device,
                                  generator_device).float().cpu()
    seconds: dict[str, list[float]] = {row.name: [] for row in rows}
    for _ in range(rounds):
        for row in rows:
            start = time.perf_counter()
            sample(pipelines[row.name], batch_size, steps, device, generator_device)
            seconds[row.name].append(time.perf_counter() - start)
    return images, {name: statistics.median(times) for name, times in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--preset", default=None, help="UNET_PRESETS name (default: CPU digits, CUDA cifar10)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per call (default: CPU 16, CUDA 256)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per call (default: CPU 50, CUDA 1000)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds, median reported (default: CPU 3, CUDA 1)")
    parser.add_argument("--generator", choices=("cpu", "device"), default="cpu",
                        help="where the generator lives (cpu: diffusers' usual; device: no host-drawn noise)")
    parser.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: all for the device)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    preset, batch_sizes, steps, rounds = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    preset = args.preset or preset
    batch_size, steps, rounds = args.batch_size or batch_sizes[preset], args.steps or steps, args.rounds or rounds
    rows = [row for row in ROWS if device.type == "cuda" or not row.cuda_only]
    if args.rows:
        rows = [rows[int(i)] for i in args.rows.split(",")]
    pipelines = build_pipelines(preset, rows, device)
    images, seconds = measure(pipelines, rows, batch_size, steps, rounds, device, args.generator)
    reference = images[rows[0].name]
    differences = {name: (image - reference).abs().max().item() for name, image in images.items()}

    baseline = seconds[rows[0].name]
    table = []
    for row in rows:
        s = seconds[row.name]
        table.append([row.name, f"{steps / s:.2f}", f"{batch_size * steps / s:.{0 if batch_size * steps / s >= 100 else 1}f}", f"{baseline / s:.2f}x",
                      f"{differences[row.name]:.1e}"])
    print(f"Sampling, {preset} UNet, batch {batch_size}, {steps} steps, {args.generator} generator, on "
          f"{describe_device(device)}; {software_versions()}")
    print_table(["pipeline", "steps/s", "UNet evals/s (images x steps / s)", f"speed vs {rows[0].name}",
                 f"largest pixel difference from {rows[0].name} ({min(steps, COMPARED_STEPS)} steps)"], table)


if __name__ == "__main__":
    main()
