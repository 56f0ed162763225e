"""Our digits preset vs stock diffusers trained on the same digits for the same minutes.

Stock side: diffusers' ``UNet2DModel`` + ``DDPMScheduler`` trained with the recipe of diffusers'
``examples/unconditional_image_generation/train_unconditional.py`` (AdamW lr 1e-4, betas (0.95, 0.999),
weight decay 1e-6, cosine LR with 500 warmup updates, batch 16, grad-norm clip 1.0, L2 on epsilon,
``EMAModel`` with warmup inv_gamma 1.0, power 3/4, max decay 0.9999), with that script's UNet
layout shrunk to 8x8 single-channel images (``STOCK_UNET_CONFIG``). It trains on the same built-in
digits ``train`` split (uint8 / 127.5 - 1, as our trainer) for ``--minutes`` of CPU time of this
process (``--wall``: wall-clock), then is saved as a ``DDPMPipeline`` (EMA weights). Give it the CPU
minutes our preset's training took (run both with ``OMP_NUM_THREADS=1`` on a shared machine).

Both models are then measured the same way: the wall and CPU time to draw ``--num-samples`` samples (each
with its own default sampling, or ``--ours-steps`` / ``--ours-variance`` for ours) and the
sample-quality figures of those samples against the held-out digits (``ddpm_from_scratch.digits.evaluation``
sampling, ``ddpm_from_scratch.digits.quality`` figures), so N is equal for both rows.

    python -m benchmarks.compare_stock_diffusers --ours digits-ddpm --minutes 3.9 --output_dir stock-ddpm \
        --num-samples 100 --batch-size 100 --ours-steps 1000 100
    python -m benchmarks.compare_stock_diffusers --ours digits-ddpm --stock stock-ddpm   # skip training
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from benchmarks.common import describe_device, print_table

from ddpm_from_scratch.digits.data import load_digits_dataset
from ddpm_from_scratch.digits.evaluation import sample_digits
from ddpm_from_scratch.saving.folder import load_any_pipeline
from ddpm_from_scratch.digits.quality import SampleQualityEvaluator
from ddpm_from_scratch.sampling.images import uint8_to_model_range

# train_unconditional.py's UNet (layers_per_block 2, one attention level second from the bottom, here
# the only middle level) with 3 levels instead of 6, since 8x8 halves only twice to 2x2.
STOCK_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=2,
    block_out_channels=(64, 128, 128),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)
BATCH_SIZE = 16
LEARNING_RATE = 1e-4
WARMUP_STEPS = 500


def digits_train_tensor() -> torch.Tensor:
    """The ``train`` split as float32 (1437, 1, 8, 8) in [-1, 1], the scaling our trainer uses."""
    images = np.stack([np.asarray(image, dtype=np.uint8) for image in load_digits_dataset()["train"]["image"]])
    return uint8_to_model_range(images).unsqueeze(1)


def train_stock(minutes: float, output_dir: str, seed: int, wall: bool = False) -> dict[str, float]:
    """train_unconditional.py's loop for ``minutes`` of CPU (or wall) time; saves the EMA ``DDPMPipeline``."""
    torch.manual_seed(seed)
    cpu_started = time.process_time()
    data = digits_train_tensor()
    unet = UNet2DModel(**STOCK_UNET_CONFIG)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE, betas=(0.95, 0.999), weight_decay=1e-6,
                                  eps=1e-8)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=UNet2DModel, model_config=unet.config)
    generator = torch.Generator().manual_seed(seed)

    def update(batch: torch.Tensor) -> float:
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(batch, noise, timesteps), timesteps).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.step(unet.parameters())
        return loss.item()

    # A time budget is the one change to the recipe (which counts epochs), so the cosine schedule's length
    # is estimated from the first 50 updates and the cosine is held at its end if more updates fit.
    total = 10**9

    def warmup_then_cosine(step: int) -> float:
        if step < WARMUP_STEPS:
            return step / WARMUP_STEPS
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS))))

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine)
    # The budget is CPU time of this process by default: on a shared machine wall time depends on the
    # other jobs, CPU time much less (--wall switches to wall-clock).
    clock = time.perf_counter if wall else time.process_time
    unet.train()
    budget, started, wall_started = 60.0 * minutes, clock(), time.perf_counter()
    step, losses, epoch = 0, [], 0
    while clock() - started < budget:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):  # drop_last, as a shuffled DataLoader
            losses.append(update(data[order[start:start + BATCH_SIZE]]))
            step += 1
            if step == 50:
                per_step = (clock() - started) / step
                total = max(WARMUP_STEPS + 1, int(budget / per_step))
                print(f"stock: {per_step * 1e3:.0f} ms/update, cosine schedule over {total} updates", flush=True)
            if clock() - started >= budget:
                break
        epoch += 1
    cpu_seconds = time.process_time() - cpu_started
    seconds = time.perf_counter() - wall_started
    ema.copy_to(unet.parameters())
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(output_dir)
    final_loss = float(np.mean(losses[-100:]))
    print(f"stock: {step} updates ({epoch} epochs) in {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU; "
          f"final loss (mean of last 100) {final_loss:.4f}; saved {output_dir}")
    return {"updates": step, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds, "final_loss": final_loss}


def measure(pipeline, num_samples: int, steps: int, batch_size: int, seed: int, evaluator: SampleQualityEvaluator):
    """Wall and CPU seconds to draw ``num_samples`` samples, and their sample-quality figures."""
    pipeline.set_progress_bar_config(disable=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    samples = sample_digits(pipeline, num_samples, steps, batch_size, seed)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return seconds, cpu_seconds, evaluator.figures(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", required=True, help="folder of our trained digits pipeline (training/train.py)")
    parser.add_argument("--ours-train-seconds", type=float, default=None,
                        help="our training time for the table (default: metrics.json of --ours if it has one)")
    parser.add_argument("--ours-steps", type=int, nargs="+", default=[1000],
                        help="sampling steps for our model, one row each (default 1000)")
    parser.add_argument("--ours-variance", default="saved", help="variance_type for our sampler (default: saved)")
    parser.add_argument("--stock-steps", type=int, default=None,
                        help="sampling steps for the stock model (default: its T, as DDPMPipeline does)")
    parser.add_argument("--stock", default=None, help="a trained stock DDPMPipeline folder: skip training")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget of the stock model in CPU minutes of this process")
    parser.add_argument("--wall", action="store_true", help="--minutes counts wall-clock time instead")
    parser.add_argument("--output_dir", default="stock-ddpm", help="where the stock DDPMPipeline is saved")
    parser.add_argument("--num-samples", type=int, default=360, help="samples per model, timed and scored")
    parser.add_argument("--batch-size", type=int, default=1000, help="images per pipeline call")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.stock is None) == (args.minutes is None):
        parser.error("give exactly one of --minutes (train the stock model) and --stock (use a trained one)")

    stock_info: dict[str, float] = {}
    if args.stock is None:
        stock_info = train_stock(args.minutes, args.output_dir, args.seed, args.wall)
        args.stock = args.output_dir
    evaluator = SampleQualityEvaluator()
    stock = load_any_pipeline(args.stock)
    ours = load_any_pipeline(args.ours)
    if args.ours_variance != "saved":
        ours.scheduler = type(ours.scheduler).from_config(ours.scheduler.config, variance_type=args.ours_variance)

    n = args.num_samples
    rows = []

    def add_row(name: str, pipeline, steps: int, train_seconds: float | None) -> None:
        seconds, cpu_seconds, q = measure(pipeline, n, steps, args.batch_size, args.seed, evaluator)
        params = sum(p.numel() for p in pipeline.unet.parameters()) / 1e6
        rows.append([
            name, f"{params:.1f}M", "?" if train_seconds is None else f"{train_seconds / 60:.1f}",
            steps, f"{seconds:.1f}", f"{cpu_seconds:.1f}", f"{seconds * 1000 / n:.0f}", f"{q.frechet_distance:.2f}",
            f"{q.classifier_score:.2f}", f"{q.class_coverage:.2f}", f"{q.confident_fraction:.3f}",
            f"{q.near_copy_fraction:.3f}",
        ])
        print(rows[-1], flush=True)

    add_row("stock diffusers UNet2DModel + DDPMScheduler", stock,
            args.stock_steps or stock.scheduler.config.num_train_timesteps,
            stock_info.get("train_seconds"))
    ours_train = args.ours_train_seconds
    metrics_file = os.path.join(args.ours, "metrics.json")
    if ours_train is None and os.path.isfile(metrics_file):
        with open(metrics_file) as handle:
            minutes = json.load(handle).get("training_minutes")  # training alone, final grid excluded
        ours_train = None if minutes is None else 60.0 * minutes
    variance = ours.scheduler.config.variance_type
    for steps in args.ours_steps:
        add_row(f"ours, digits preset ({variance})", ours, steps, ours_train)

    fd_real, fd_real_std, fd_real_n = evaluator.reference_frechet_distance(n)
    print(f"\nDevice: {describe_device(torch.device('cpu'))}. N = {n} samples per row, scored against the 360 "
          f"held-out digits; seconds/1000 = seconds for N x 1000 / N (linear extrapolation unless N = 1000).")
    if stock_info:
        print(f"Stock training: {stock_info['updates']} updates, {stock_info['train_cpu_seconds']:.0f} CPU s, "
              f"{stock_info['train_seconds']:.0f} s wall, final loss {stock_info['final_loss']:.4f}.")
    print(f"Real train digits at N = {fd_real_n}: FD {fd_real:.2f} +- {fd_real_std:.2f} (10 draws).")
    print_table(
        ["model", "params", "train min (wall)", "sampling steps", f"s for {n} (wall)", f"CPU s for {n}",
         "wall s / 1000 images", "FD (lower better)",
         "classifier score", "coverage", "confident", "near-copy"],
        rows,
    )


if __name__ == "__main__":
    main()
