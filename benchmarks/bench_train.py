"""Training-step throughput and peak memory: ScratchUNet2DModel vs diffusers' UNet2DModel, same run.

One step is what training/train.py does per optimizer update (one micro-batch): draw t and the
noise on the device, the forward process in float32 and L_simple (ddpm_from_scratch.training.objective.diffusion_loss),
backward, clip the gradient norm to 1, AdamW step, zero the gradients, EMA update (diffusers'
EMAModel as ddpm_from_scratch.training.ema.make_ema sets it up for the preset). Both models get the
same config (convert.diffusers_config_from_scratch), the same batch, dtype, settings and step function; the
step never reads a tensor back to the host (no .item()). Not included: data loading (the batch
is a fixed tensor already on the device), the LR schedule, logging and checkpoints.

    python -m benchmarks.bench_train                       # CPU: digits batch 64, cifar10 batch 4
    python -m benchmarks.bench_train --device cuda         # cifar10 batch 128, bf16, fused AdamW
    python -m benchmarks.bench_train --device cuda --channels-last --compile
    python -m benchmarks.bench_train --preset digits --batch-size 64 --mixed-precision bf16 --threads 1
    python -m benchmarks.bench_train --preset digits --no-fused-adam --sweep --threads 1

--sweep measures, in the same run, the given settings and then each tool turned on alone on top of
them (fused AdamW, bf16 autocast, channels_last, torch.compile), then all of them together; the
last column is the speed-up of our model over the first row (before/after for each tool).

Throughput: all (settings, model) pairs alternate (rounds of --iters steps each: ours, diffusers,
ours, ...) and each reports its median round, so load from other processes on a shared machine
slows every row alike.
Peak memory: the most tensor memory alive during one step beyond what was alive before it
(activations, gradients, temporaries; weights, optimizer state and EMA excluded), see
common.peak_memory_mib.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from benchmarks.common import describe_device, peak_memory_mib, print_table, software_versions, synchronize

from ddpm_from_scratch.saving.convert_unet import diffusers_config_from_scratch
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import UNET_PRESETS, ScratchUNet2DModel
from ddpm_from_scratch.training.config import parse_options
from ddpm_from_scratch.training.ema import make_ema
from ddpm_from_scratch.training.objective import diffusion_loss

# diffusers' up/down-sampling blocks call an lru_cache'd version check that dynamo warns about (harmless)
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")

DEFAULTS = {  # device type -> (presets, batch size per preset, mixed precision, iters per round)
    "cpu": ("digits,cifar10", {"digits": 64, "cifar10": 4}, "no", {"digits": 5, "cifar10": 1}),
    "cuda": ("cifar10", {"digits": 1024, "cifar10": 128}, "bf16", {"digits": 20, "cifar10": 20}),
}
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# the speed-ups --sweep and ladder() turn on: Settings field -> value when on
TOOLS = {"fused_adam": True, "mixed_precision": "bf16", "channels_last": True, "compile": True}


@dataclass
class Settings:
    device: torch.device
    mixed_precision: str
    channels_last: bool
    compile: bool
    fused_adam: bool

    def describe(self) -> str:
        parts = ["fp32" if self.mixed_precision == "no" else f"{self.mixed_precision} autocast"]
        parts.append("fused AdamW" if self.fused_adam else "foreach AdamW")
        parts += ["channels_last"] * self.channels_last + ["torch.compile"] * self.compile
        return ", ".join(parts)


class Trainee:
    """A model with its optimizer, EMA and grad scaler: everything one training step touches."""

    def __init__(self, which: str, preset: str, settings: Settings):
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        config = UNET_PRESETS[preset]
        model = ScratchUNet2DModel(**config) if which == "ours" else UNet2DModel(**diffusers_config_from_scratch(config))
        model = model.to(settings.device).train()
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.module = model
        self.ema, _ = make_ema(model, parse_options(["--preset", preset]), settings.device)
        # ours has no graph breaks (tested in test_unet.py); diffusers' model is compiled as it comes
        self.model = torch.compile(model, fullgraph=(which == "ours")) if settings.compile else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=settings.fused_adam,
                                           foreach=None if settings.fused_adam else True)
        self.scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.mixed_precision == "fp16")


def train_step(trainee: Trainee, scheduler: ScratchDDPMScheduler, images: torch.Tensor, generator: torch.Generator,
               settings: Settings) -> torch.Tensor:
    """One optimizer update, as in training/train.py; returns the loss, detached (never read here)."""
    dtype = AUTOCAST_DTYPES[settings.mixed_precision]
    with torch.autocast(settings.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = diffusion_loss(trainee.model, scheduler, images, generator).loss
    trainee.scaler.scale(loss).backward()
    trainee.scaler.unscale_(trainee.optimizer)
    torch.nn.utils.clip_grad_norm_(trainee.module.parameters(), 1.0)
    trainee.scaler.step(trainee.optimizer)
    trainee.scaler.update()
    trainee.optimizer.zero_grad(set_to_none=True)
    trainee.ema.step(trainee.module.parameters())
    return loss.detach()


def make_batch(preset: str, batch_size: int, settings: Settings) -> torch.Tensor:
    config = UNET_PRESETS[preset]
    size = config["sample_size"]
    images = torch.rand(batch_size, config["in_channels"], size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = images.to(settings.device)
    return images.contiguous(memory_format=torch.channels_last) if settings.channels_last else images


def sweep(settings: Settings) -> list[Settings]:
    """``settings``, then each tool it lacks turned on alone, then all of them together."""
    missing = {key: value for key, value in TOOLS.items() if getattr(settings, key) != value}
    variants = [settings] + [dataclasses.replace(settings, **{key: value}) for key, value in missing.items()]
    return variants + [dataclasses.replace(settings, **missing)] if len(missing) > 1 else variants


def ladder(settings: Settings) -> list[Settings]:
    """``settings``, then the tools it lacks turned on one after another, each row keeping the ones before.

    Order: fused AdamW, bf16 autocast (with both, the row is what training/train.py runs with
    --mixed_precision bf16), channels_last, torch.compile.
    """
    variants = [settings]
    for key, value in TOOLS.items():
        if getattr(variants[-1], key) != value:
            variants.append(dataclasses.replace(variants[-1], **{key: value}))
    return variants


def measure(preset: str, batch_size: int, variants: list[Settings], warmup: int, iters: int, rounds: int,
            memory: bool) -> list[dict[str, dict[str, float]]]:
    """For each settings variant, images/s (median round) and peak MiB of each model."""
    scheduler = ScratchDDPMScheduler()
    runs = []  # (variant index, model name, step function)
    for index, settings in enumerate(variants):
        images = make_batch(preset, batch_size, settings)
        generator = torch.Generator(settings.device).manual_seed(0)
        for which in ("ours", "diffusers"):
            trainee = Trainee(which, preset, settings)

            def run(steps: int, trainee=trainee, images=images, generator=generator, settings=settings) -> None:
                for _ in range(steps):
                    train_step(trainee, scheduler, images, generator, settings)

            run(warmup)  # compilation, autotuning, optimizer state, lazy init
            runs.append((index, which, run))
    rates: dict[tuple[int, str], list[float]] = {(index, which): [] for index, which, _ in runs}
    device = variants[0].device
    for _ in range(rounds):
        for index, which, run in runs:
            synchronize(device)
            start = time.perf_counter()
            run(iters)
            synchronize(device)
            rates[index, which].append(batch_size * iters / (time.perf_counter() - start))
    results: list[dict[str, dict[str, float]]] = [{} for _ in variants]
    for index, which, run in runs:
        peak = peak_memory_mib(lambda: run(1), device) if memory else float("nan")
        results[index][which] = {"rate": statistics.median(rates[index, which]), "peak": peak}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--preset", default=None, help="comma-separated UNET_PRESETS names (default: CPU digits,cifar10; CUDA cifar10)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: CPU digits 64 / cifar10 4; CUDA cifar10 128")
    parser.add_argument("--mixed-precision", choices=sorted(AUTOCAST_DTYPES), default=None, help="default: CPU no, CUDA bf16")
    parser.add_argument("--channels-last", action="store_true", help="model and batch in channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    parser.add_argument("--fused-adam", action=argparse.BooleanOptionalAction, default=True,
                        help="AdamW(fused=True), as training/train.py (default); --no-fused-adam: the foreach kernel")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per round (default: CPU digits 5 / cifar10 1, CUDA 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default 2, 3 when a row compiles)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per model (median reported)")
    parser.add_argument("--sweep", action="store_true",
                        help="also measure each tool (fused AdamW, bf16, channels_last, compile) turned on alone, and all")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    presets, batch_sizes, mixed_precision, iters = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    settings = Settings(device, args.mixed_precision or mixed_precision, args.channels_last, args.compile, args.fused_adam)
    variants = sweep(settings) if args.sweep else [settings]
    warmup = args.warmup if args.warmup is not None else (3 if any(v.compile for v in variants) else 2)
    rows = []
    for preset in (args.preset or presets).split(","):
        batch_size = args.batch_size or batch_sizes[preset]
        results = measure(preset, batch_size, variants, warmup, args.iters or iters[preset], args.rounds, not args.no_memory)
        first = results[0]["ours"]["rate"]
        for variant, result in zip(variants, results):
            ours, theirs = result["ours"], result["diffusers"]
            rows.append([preset, batch_size, variant.describe(), f"{ours['rate']:.1f}", f"{theirs['rate']:.1f}",
                         f"{ours['rate'] / theirs['rate']:.2f}x", f"{ours['peak']:.0f}", f"{theirs['peak']:.0f}",
                         f"{ours['peak'] / theirs['peak']:.2f}"] + ([f"{ours['rate'] / first:.2f}x"] if args.sweep else []))
        torch._dynamo.reset()
    print(f"Training step (forward, backward, clip, AdamW, EMA) on {describe_device(device)}; {software_versions()}")
    print_table(["preset", "batch", "settings", "ours img/s", "diffusers img/s", "speed ratio (ours / diffusers)",
                 "ours peak MiB", "diffusers peak MiB", "memory ratio"] + (["ours vs first row"] if args.sweep else []), rows)


if __name__ == "__main__":
    main()
