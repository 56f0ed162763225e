"""Scheduler step overhead: ScratchDDPMScheduler.step vs diffusers' DDPMScheduler.step.

Times one `step` (model output given, so only the scheduler's own work counts) and a whole
1000-step loop of steps, on the same tensors and generator, in the same run.

    python benchmarks/bench_scheduler.py                  # CPU, batch 256 of 3x32x32
    python benchmarks/bench_scheduler.py --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from diffusers import DDPMScheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import describe_device, print_table, time_per_call  # noqa: E402

from ddpm_from_scratch import ScratchDDPMScheduler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--variance-type", default="fixed_small")
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)

    shape = (args.batch_size, 3, args.resolution, args.resolution)
    sample = torch.randn(shape, device=device)
    model_output = torch.randn(shape, device=device)
    rows = []
    results = {}
    for name, cls in (("diffusers DDPMScheduler", DDPMScheduler), ("ScratchDDPMScheduler", ScratchDDPMScheduler)):
        sched = cls(variance_type=args.variance_type)
        sched.set_timesteps(1000, device=device)
        generator = torch.Generator(device).manual_seed(0)
        t_mid = sched.timesteps[500]

        def one_step():
            sched.step(model_output, t_mid, sample, generator=generator)

        def full_loop():
            x = sample
            for t in sched.timesteps:
                x = sched.step(model_output, t, x, generator=generator).prev_sample

        step_s = time_per_call(one_step, device, warmup=5, iters=args.iters)
        loop_s = time_per_call(full_loop, device, warmup=1, iters=3)
        results[name] = (step_s, loop_s)
        rows.append([name, f"{step_s * 1e3:.3f}", f"{loop_s:.2f}"])
    base, ours = results["diffusers DDPMScheduler"], results["ScratchDDPMScheduler"]
    rows.append(["ratio (diffusers / ours, >1: ours faster)", f"{base[0] / ours[0]:.2f}x", f"{base[1] / ours[1]:.2f}x"])
    print(f"Scheduler step overhead on {describe_device(device)}; batch {shape}, variance_type={args.variance_type}")
    print_table(["scheduler", "one step (ms)", "1000-step loop (s)"], rows)


if __name__ == "__main__":
    main()
