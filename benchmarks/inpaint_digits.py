"""Inpainting held-out digits with a trained digits pipeline (RePaint, ScratchInpaintPipeline): a picture and a score.

    python -m benchmarks.inpaint_digits PATH --num-digits 200 --mask lower-half --num-inference-steps 100 \
        --jump-length 10 --jump-n-sample 5 --grid docs/assets/digits_inpainting.png

(a) writes a grid of the first --grid-digits digits, one column each: the masked input (the filled
region shown grey), the completion, the original; (b) prints how often the digits classifier
(ddpm_from_scratch.digits.classifier) gives the original's label to the completion, to the masked
image alone (the region set to 0, the background) and to the original.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time

import numpy as np
import torch


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    from ddpm_from_scratch.digits.classifier import load_digits_classifier, train_and_held_out_arrays
    from ddpm_from_scratch.editing import NAMED_MASKS, ScratchInpaintPipeline, named_mask
    from ddpm_from_scratch.sampling.images import make_image_grid, save_image_atomic, unit_range_to_uint8
    from ddpm_from_scratch.sampling.seeded import image_generators

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a trained digits pipeline folder (e.g. the trainer's --output_dir)")
    parser.add_argument("--num-digits", type=int, default=200, help="held-out digits to complete (default 200)")
    parser.add_argument("--mask", choices=NAMED_MASKS, default="lower-half")
    parser.add_argument("--num-inference-steps", type=int, default=100)
    parser.add_argument("--jump-length", type=int, default=10)
    parser.add_argument("--jump-n-sample", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="digit i is completed with a generator seeded seed + i")
    parser.add_argument("--grid", default=None, help="PNG for the grid (masked, completion, original)")
    parser.add_argument("--grid-digits", type=int, default=12)
    args = parser.parse_args(argv)

    classifier = load_digits_classifier()
    _, (held_out, labels) = train_and_held_out_arrays(classifier.config)
    pick = np.random.default_rng(args.seed).permutation(len(held_out))[: args.num_digits]
    originals, labels = held_out[pick], labels[pick]  # (N, 8, 8) uint8, (N,)
    mask = named_mask(args.mask, 8, 8)

    pipe = ScratchInpaintPipeline.from_pretrained(args.path)
    pipe.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    completions = []
    for start in range(0, len(originals), args.batch_size):
        batch = originals[start: start + args.batch_size]
        output = pipe(batch[..., None], mask, num_inference_steps=args.num_inference_steps,
                      jump_length=args.jump_length, jump_n_sample=args.jump_n_sample,
                      generator=image_generators(args.seed, start, len(batch)), output_type="np")
        completions.append(unit_range_to_uint8(output.images[..., 0]))
    completions = np.concatenate(completions)
    seconds = time.perf_counter() - started
    masked = np.where(mask > 0, 0, originals).astype(np.uint8)

    accuracy = {name: float((classifier.predict(images) == labels).mean())
                for name, images in (("completion", completions), ("masked alone", masked), ("original", originals))}
    print(f"command: python {' '.join(sys.argv)}")
    print(f"model: {args.path}; {len(originals)} held-out digits, mask {args.mask}, {args.num_inference_steps} steps, "
          f"jump_length {args.jump_length}, jump_n_sample {args.jump_n_sample}, seed {args.seed}")
    print(f"machine: {cpu_name()}, torch threads {torch.get_num_threads()}; inpainting took {seconds:.1f} s")
    print(f"classifier held-out accuracy (its own test): {classifier.held_out_accuracy:.3f}\n")
    print("| images | classifier gives the original's label |")
    print("|---|---|")
    for name, value in accuracy.items():
        print(f"| {name} | {value:.3f} ({round(value * len(labels))}/{len(labels)}) |")

    if args.grid:
        count = min(args.grid_digits, len(originals))
        shown = np.where(mask > 0, 128, originals[:count]).astype(np.uint8)
        rows = np.concatenate([shown, completions[:count], originals[:count]])
        save_image_atomic(make_image_grid(rows[..., None], cols=count, padding=1, scale=4), args.grid)
        print(f"\nwrote {args.grid}: rows masked input (grey = filled), completion, original")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
