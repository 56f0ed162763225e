"""What a user gets from a saved pipeline with no step count, timed against the full 1000-step chain.

    python -m benchmarks.bench_default_sampling digits-ddpm                 # 1,000 images, the CPU's threads
    python -m benchmarks.bench_default_sampling digits-ddpm --threads 2 --reference-images 100

The pipeline is loaded the way a user without this package loads it,
``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)``, and called as
``pipe(batch_size=N)`` with no step count: it samples with the setting the trainer recorded
(``default_num_inference_steps``, ``default_eta``; docs/pipeline.md). The same loaded pipeline with
``num_inference_steps=T`` is what a call gave before a default was recorded (diffusers' DDPMPipeline
default: T = 1000 DDPM steps); it is timed on ``--reference-images`` images and scaled to N, which
is exact up to batching effects (the cost is linear in the images at these batch sizes).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.common import describe_device, markdown_table, software_versions


def timed_call(pipeline, **kwargs) -> float:
    start = time.perf_counter()
    pipeline(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a pipeline folder saved by the trainer (with its code)")
    parser.add_argument("--num-images", type=int, default=1000, help="images sampled with the default setting")
    parser.add_argument("--reference-images", type=int, default=100,
                        help="images sampled with all T steps, scaled to --num-images (default 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(args.path, trust_remote_code=True)
    pipeline.set_progress_bar_config(disable=True)
    steps, eta = pipeline.sampling_setting()
    full = pipeline.scheduler.config.num_train_timesteps
    seconds = timed_call(pipeline, batch_size=args.num_images)
    reference = timed_call(pipeline, batch_size=args.reference_images, num_inference_steps=full)
    scaled = reference * args.num_images / args.reference_images
    rows = [
        [f"no step count (recorded default: {steps} steps, eta {eta})", str(args.num_images), f"{seconds:.3g}",
         f"{seconds * 1000 / args.num_images:.3g}", f"{scaled / seconds:.1f}x"],
        [f"num_inference_steps={full} (DDPM, diffusers' DDPMPipeline default)", f"{args.reference_images} (scaled)",
         f"{scaled:.3g}", f"{scaled * 1000 / args.num_images:.3g}", "1.0x"],
    ]
    print(f"Sampling through DiffusionPipeline.from_pretrained(trust_remote_code=True) on {describe_device(torch.device('cpu'))}; "
          f"{software_versions()}; load average {os.getloadavg()[0]:.1f}")
    print(markdown_table(["call", "images", "wall s", "wall s / 1000 images", "speed-up"], rows))
    return rows


if __name__ == "__main__":
    main()
