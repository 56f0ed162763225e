"""Training-step throughput and peak memory: ScratchUNet2DModel vs diffusers' UNet2DModel.

Both models are the same network (same config through convert.diffusers_config_from_scratch, same
parameter count), run on the same batch, dtype and device in the same process. One step is
forward + backward of mean(output^2) with the preset's dropout active (train mode).

    python -m benchmarks.bench_unet                          # CPU, fp32: digits b128 + cifar10 b8
    python -m benchmarks.bench_unet --device cuda            # + bf16 autocast, channels_last, torch.compile
    python -m benchmarks.bench_unet --presets cifar10 --batch 64 --iters 20 --device cuda

Throughput: the two models alternate step by step (rounds of --iters steps: ours, diffusers, ours,
...) and each reports its median round, so a noisy, shared CPU slows both alike. Peak memory: the
most tensor memory alive at once during one training step, beyond the parameters and the inputs
(activations, gradients, temporaries): on CUDA torch.cuda.max_memory_allocated, on CPU the running
sum of the allocation/free events recorded by torch.profiler(profile_memory=True) (exact tensor
bytes; allocator overhead and caches not included). FLOPs: torch.utils.flop_counter
on one forward of a single image (convolutions, matmuls and attention; multiply-add = 2 FLOPs;
norms and activations not counted); a training step (forward + backward) costs about 3x that.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import describe_device, software_versions

from ddpm_from_scratch.saving.convert_unet import diffusers_config_from_scratch
from ddpm_from_scratch.unet import UNET_PRESETS, ScratchUNet2DModel

DEFAULT_BATCH = {"digits": 128, "cifar10": 8}
MODES_CPU = ["fp32"]
MODES_CUDA = ["fp32", "bf16", "bf16+channels_last", "bf16+compile"]


@dataclass
class Setup:
    preset: str
    batch: int
    mode: str
    device: str


def build(which: str, preset: str, device: str, mode: str) -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    config = UNET_PRESETS[preset]
    model = ScratchUNet2DModel(**config) if which == "ours" else UNet2DModel(**diffusers_config_from_scratch(config))
    model = model.to(device).train()
    if "channels_last" in mode:
        model = model.to(memory_format=torch.channels_last)
    if "compile" in mode:
        # fullgraph for ours (it has no graph breaks, tested); diffusers' model is compiled as-is
        model = torch.compile(model, fullgraph=(which == "ours"))
    return model


def make_inputs(setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    config = UNET_PRESETS[setup.preset]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(setup.batch, config["in_channels"], config["sample_size"], config["sample_size"], generator=gen)
    t = torch.randint(0, 1000, (setup.batch,), generator=gen)
    x = x.to(setup.device)
    if "channels_last" in setup.mode:
        x = x.to(memory_format=torch.channels_last)
    return x, t.to(setup.device)


def train_step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, mode: str) -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
        out = model(x, t).sample
    out.float().square().mean().backward()
    for p in model.parameters():
        p.grad = None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(setup: Setup, warmup: int, iters: int, rounds: int) -> dict[str, float]:
    """images/s of each model: median over `rounds` alternating rounds of `iters` steps."""
    x, t = make_inputs(setup)
    models = {which: build(which, setup.preset, setup.device, setup.mode) for which in ("ours", "diffusers")}
    for model in models.values():
        for _ in range(warmup):
            train_step(model, x, t, setup.mode)
    rates: dict[str, list[float]] = {which: [] for which in models}
    for _ in range(rounds):
        for which, model in models.items():
            synchronize(setup.device)
            start = time.perf_counter()
            for _ in range(iters):
                train_step(model, x, t, setup.mode)
            synchronize(setup.device)
            rates[which].append(setup.batch * iters / (time.perf_counter() - start))
    return {which: statistics.median(r) for which, r in rates.items()}


def peak_memory_mib(which: str, setup: Setup) -> float:
    """Peak tensor memory of one training step beyond params and inputs (see the module docstring)."""
    x, t = make_inputs(setup)
    model = build(which, setup.preset, setup.device, setup.mode)
    train_step(model, x, t, setup.mode)  # compile, autotuning and lazy init outside the measurement
    if setup.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, x, t, setup.mode)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, x, t, setup.mode)
    # "[memory]" events carry +bytes for each allocation and -bytes for each free
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def forward_gflops_per_image(preset: str) -> dict[str, float]:
    config = UNET_PRESETS[preset]
    x = torch.randn(1, config["in_channels"], config["sample_size"], config["sample_size"])
    flops = {}
    for which in ("ours", "diffusers"):
        model = build(which, preset, "cpu", "fp32").eval()
        counter = FlopCounterMode(display=False)
        # the math backend runs attention as matmuls the counter sees (it has no formula for the
        # fused CPU kernel, which would make attention count as 0)
        with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            model(x, torch.tensor([10]))
        flops[which] = counter.get_total_flops() / 1e9
    return flops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--presets", default="digits,cifar10", help="comma-separated UNET_PRESETS names")
    parser.add_argument("--batch", type=int, default=None, help="batch size for every preset (default: digits 128, cifar10 8)")
    parser.add_argument("--modes", default=None, help=f"comma-separated; default CPU {MODES_CPU}, CUDA {MODES_CUDA}")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model (compile happens here)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per round (default: CPU 1, CUDA 10)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per model (median reported)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    on_cuda = args.device.startswith("cuda")
    iters = args.iters or (10 if on_cuda else 1)
    modes = args.modes.split(",") if args.modes else (MODES_CUDA if args.device.startswith("cuda") else MODES_CPU)
    presets = args.presets.split(",")
    print(f"device: {describe_device(torch.device(args.device))}, {software_versions()}\n")

    print("| preset | params (ours / diffusers) | forward GFLOPs per image (ours / diffusers) |")
    print("|---|---|---|")
    for preset in presets:
        with torch.device("meta"):
            counts = [sum(p.numel() for p in build(w, preset, "meta", "fp32").parameters()) for w in ("ours", "diffusers")]
        gflops = forward_gflops_per_image(preset)
        print(f"| {preset} | {counts[0]:,} / {counts[1]:,} | {gflops['ours']:.3f} / {gflops['diffusers']:.3f} |")
    print()

    memory_label = "peak MiB"
    print(f"| preset | batch | mode | ours img/s | diffusers img/s | speed ratio | ours {memory_label} | diffusers {memory_label} | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in presets:
        for mode in modes:
            setup = Setup(preset, args.batch or DEFAULT_BATCH.get(preset, 8), mode, args.device)
            rate = throughput(setup, args.warmup, iters, args.rounds)
            if args.no_memory:
                mem = {"ours": float("nan"), "diffusers": float("nan")}
            else:
                mem = {w: peak_memory_mib(w, setup) for w in ("ours", "diffusers")}
            print(
                f"| {preset} | {setup.batch} | {mode} | {rate['ours']:.1f} | {rate['diffusers']:.1f} | "
                f"{rate['ours'] / rate['diffusers']:.2f} | {mem['ours']:.0f} | {mem['diffusers']:.0f} | "
                f"{mem['ours'] / mem['diffusers']:.2f} |",
                flush=True,
            )
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
