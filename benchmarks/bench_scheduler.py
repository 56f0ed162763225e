"""Scheduler overhead: ScratchDDPMScheduler.step vs diffusers' DDPMScheduler.step, same run.

The "model" is the identity (model_output = sample), so only the schedulers' own work is timed:
one `step` at t = 500 for each shape, and a whole 1000-step loop at the first shape. Both schedulers
get the same tensors and a generator seeded the same way; they alternate in rounds and each
reports its median, so load from other processes hits both alike.

    python -m benchmarks.bench_scheduler                  # CPU, 1x3x32x32 and 16x3x64x64
    python -m benchmarks.bench_scheduler --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse

import torch
from diffusers import DDPMScheduler

from benchmarks.common import describe_device, print_table, time_per_call

from ddpm_from_scratch import ScratchDDPMScheduler

SCHEDULERS = {"diffusers DDPMScheduler": DDPMScheduler, "ScratchDDPMScheduler": ScratchDDPMScheduler}


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[(1, 3, 32, 32), (16, 3, 64, 64)])
    parser.add_argument("--variance-type", default="fixed_small")
    parser.add_argument("--iters", type=int, default=300, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    schedulers = {name: cls(variance_type=args.variance_type) for name, cls in SCHEDULERS.items()}

    def one_step(sched, sample, generator):
        return lambda: sched.step(sample, 500, sample, generator=generator)

    def full_loop(sched, sample, generator):
        def run():
            x = sample
            for t in sched.timesteps:  # identity model: the output is the sample itself
                x = sched.step(x, t, x, generator=generator).prev_sample
        return run

    columns = []
    for shape in args.shapes:
        sample = torch.randn(shape, device=device)
        columns.append((f"one step {'x'.join(map(str, shape))} (us)", 1e6,
                        {name: one_step(s, sample, torch.Generator(device).manual_seed(0)) for name, s in schedulers.items()},
                        args.iters))
    first = torch.randn(args.shapes[0], device=device)
    columns.append((f"1000-step loop {'x'.join(map(str, args.shapes[0]))} (ms)", 1e3,
                    {name: full_loop(s, first, torch.Generator(device).manual_seed(0)) for name, s in schedulers.items()}, 1))

    results = {name: [] for name in SCHEDULERS}
    for _, unit, fns, iters in columns:
        rounds = {name: [] for name in SCHEDULERS}
        for _ in range(args.rounds):  # alternate, so that background load hits both alike
            for name, fn in fns.items():
                rounds[name].append(time_per_call(lambda: [fn() for _ in range(iters)], device, 1, 1) / iters)
        for name in SCHEDULERS:
            results[name].append(sorted(rounds[name])[len(rounds[name]) // 2] * unit)

    ours, base = results["ScratchDDPMScheduler"], results["diffusers DDPMScheduler"]
    rows = [[name] + [f"{v:.1f}" for v in values] for name, values in results.items()]
    rows.append(["time ratio ours / diffusers (<1: ours faster)"] + [f"{o / b:.2f}" for o, b in zip(ours, base)])
    print(f"Scheduler overhead on {describe_device(device)}; variance_type={args.variance_type}, identity model")
    print_table(["scheduler"] + [c[0] for c in columns], rows)


if __name__ == "__main__":
    main()
