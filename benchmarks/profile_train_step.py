"""Where one training step's time goes: a torch.profiler trace of bench_train's step, ours and diffusers'.

    python -m benchmarks.profile_train_step --device cuda                  # cifar10, batch 128
    python -m benchmarks.profile_train_step --preset digits --batch-size 64 # CPU

For each model and setting (fp32 and bf16 autocast, fused AdamW) it prints the wall time of a step,
the time the device spent in kernels during it (the profiler's self device time), the number of
kernels launched, the phases timed separately (forward + loss, backward, clip + AdamW, EMA; a
device sync between phases, so the phases add up to more than a step) and the operators that took
the most device time. Wall time far above kernel time means the step waits on the host (launch-bound).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_train import AUTOCAST_DTYPES, Settings, Trainee, make_batch, train_step
from benchmarks.common import describe_device, print_table, software_versions, synchronize
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.training.objective import diffusion_loss


def phase_times(trainee: Trainee, scheduler, images, generator, settings: Settings, iters: int) -> dict[str, float]:
    """Milliseconds per phase of the step, each phase timed alone between device syncs."""
    dtype = AUTOCAST_DTYPES[settings.mixed_precision]
    totals = {"forward + loss": 0.0, "backward": 0.0, "clip + AdamW": 0.0, "EMA": 0.0}

    def timed(name, fn):
        synchronize(settings.device)
        start = time.perf_counter()
        out = fn()
        synchronize(settings.device)
        totals[name] += (time.perf_counter() - start) * 1000 / iters
        return out

    for _ in range(iters):
        def forward():
            with torch.autocast(settings.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return diffusion_loss(trainee.model, scheduler, images, generator).loss

        loss = timed("forward + loss", forward)
        timed("backward", loss.backward)

        def update():
            torch.nn.utils.clip_grad_norm_(trainee.module.parameters(), 1.0)
            trainee.optimizer.step()
            trainee.optimizer.zero_grad(set_to_none=True)

        timed("clip + AdamW", update)
        timed("EMA", lambda: trainee.ema.step(trainee.module.parameters()))
    return totals


def profile_steps(trainee: Trainee, scheduler, images, generator, settings: Settings, steps: int, top: int):
    """(wall ms per step, kernel ms per step, kernels per step, top operators table rows).

    On a CPU "kernel ms" is the operators' own CPU time and no kernels are counted.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.device.type == "cuda" else [])
    synchronize(settings.device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            train_step(trainee, scheduler, images, generator, settings)
        synchronize(settings.device)
        wall_ms = (time.perf_counter() - start) * 1000 / steps
    events = prof.key_averages()
    on_device = settings.device.type == "cuda"
    # the kernels themselves (device-side events); an operator's own device time counts its kernels again
    kernel_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = (sum(e.device_time_total for e in kernel_events) if on_device
                 else sum(e.self_cpu_time_total for e in events))
    kernels = len(kernel_events)
    key = "self_device_time_total" if on_device else "self_cpu_time_total"
    rows = [[e.key[:60], e.count // steps, f"{getattr(e, key) / 1000 / steps:.2f}"]
            for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]]
    return wall_ms, kernel_us / 1000 / steps, kernels // steps, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="UNet preset (default: cifar10 on CUDA, digits on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 64 on CPU")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=12, help="operators listed per row")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    preset = args.preset or ("cifar10" if device.type == "cuda" else "digits")
    batch_size = args.batch_size or (128 if device.type == "cuda" else 64)
    scheduler = ScratchDDPMScheduler()
    print(f"Training step profile on {describe_device(device)}; {software_versions()}; {preset}, batch {batch_size}")
    summary = []
    for mixed_precision in ("no", "bf16"):
        settings = Settings(device, mixed_precision, channels_last=False, compile=False, fused_adam=device.type == "cuda")
        images = make_batch(preset, batch_size, settings)
        for which in ("ours", "diffusers"):
            trainee = Trainee(which, preset, settings)
            generator = torch.Generator(device).manual_seed(0)
            for _ in range(3):  # optimizer state, cuDNN algorithm choice
                train_step(trainee, scheduler, images, generator, settings)
            phases = phase_times(trainee, scheduler, images, generator, settings, iters=3)
            wall, kernel, launches, rows = profile_steps(trainee, scheduler, images, generator, settings, args.steps, args.top)
            label = f"{which}, {settings.describe()}"
            summary.append([label, f"{wall:.1f}", f"{kernel:.1f}", launches]
                           + [f"{phases[name]:.1f}" for name in phases])
            print(f"\n{label}: top operators by {'device' if device.type == 'cuda' else 'CPU'} time per step")
            print_table(["operator", "calls per step", "ms per step"], rows)
    print()
    print_table(["model, settings", "step wall ms (profiled)", "kernel ms", "kernels launched",
                 "forward + loss ms", "backward ms", "clip + AdamW ms", "EMA ms"], summary)


if __name__ == "__main__":
    main()
