"""Train a DDPM and save it as a ScratchDDPMPipeline.

    accelerate launch training/train.py --preset digits          # any accelerate setup
    python training/train.py --preset digits                     # one process
    ddpm-train --preset digits                                   # one process, the installed command

What one optimizer update does (every process, in lock step):
    for each of the gradient_accumulation_steps micro-batches:
        take the next micro-batch of this process's share of the data (data.ShardedEpochOrder)
        draw flips, t and the noise from a generator seeded by (seed, update, micro-batch, process)
        loss = L_simple or the hybrid loss (objective.diffusion_loss); backward (gradients all-reduced on the last one)
    clip the gradient norm, step Adam and the LR schedule, update the EMA

Because the data order and the per-update randomness are functions of the update counter, and the
checkpoint restores weights, optimizer, LR schedule, EMA, counters and the global RNG (dropout), a
run resumed from a checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ddpm_from_scratch.training.checkpoint_state import write_process_files, write_shared_files
from ddpm_from_scratch.training.checkpoints import checkpoints_root, list_checkpoints, prune_checkpoints, save_checkpoint
from ddpm_from_scratch.training.config import BUILTIN_DIGITS, TrainingOptions, parse_options
from ddpm_from_scratch.training.data import (
    PreloadedImages,
    ShardedEpochOrder,
    TrainingData,
    fits_in_memory,
    iterate_micro_batches,
    prepare_training_data,
)
from ddpm_from_scratch.training.divergence import DivergenceMonitor, TrainingDiverged, check_finite_weights
from ddpm_from_scratch.training.ema import ExponentialMovingAverage
from ddpm_from_scratch.training.objective import diffusion_loss, drop_class_labels, random_horizontal_flip
from ddpm_from_scratch.training.resume import agree_on_checkpoint, restore_checkpoint

logger = logging.getLogger("training")


class SetupError(ValueError):
    """Bad input found before training started (printed without a traceback)."""


def update_generator(seed: int, update: int, micro_batch: int, process_index: int, device: torch.device) -> torch.Generator:
    """The generator for one micro-batch: a pure function of where the run is, so resuming repeats it."""
    state = np.random.SeedSequence([seed, update, micro_batch, process_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def _tracker_config(opts: TrainingOptions) -> dict[str, Any]:
    """Options as tensorboard hparams accept them (numbers, strings, bools)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in opts.for_model_card().items()}


class Trainer:
    """Sets up everything (raising SetupError for bad input), then `train()` runs the loop."""

    def __init__(self, opts: TrainingOptions):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        self.opts = opts
        self.start_time = time.time()
        log_with = None if opts.report_to == "none" else opts.report_to
        _check_tracker_available(log_with)
        try:
            self.accelerator = Accelerator(
                cpu=_cpu_only_multiprocess(),
                mixed_precision=opts.mixed_precision,
                gradient_accumulation_steps=opts.gradient_accumulation_steps,
                log_with=log_with,
                project_config=ProjectConfiguration(project_dir=str(opts.output_path), logging_dir=str(opts.logging_path)),
            )
        except ValueError as error:  # e.g. fp16 without a GPU
            raise SetupError(f"accelerate cannot run this setup: {error}") from error
        accelerator = self.accelerator
        _configure_logging(accelerator)
        self.accumulation = self._reconcile_accumulation()
        set_seed(opts.seed)  # the model init is the same on every process and in every run with this seed

        from ddpm_from_scratch.training.components import build_noise_scheduler, build_unet, check_resolution

        check_resolution(opts.unet_preset, opts.resolution)
        self.checkpoint_dir = checkpoints_root(opts.output_path)
        self.resume_path = agree_on_checkpoint(accelerator, opts, self.checkpoint_dir)

        with accelerator.main_process_first():
            self.data: TrainingData = prepare_training_data(opts)
        self.order = ShardedEpochOrder(len(self.data), opts.train_batch_size, accelerator.num_processes,
                                       accelerator.process_index, opts.seed)
        global_batch = opts.train_batch_size * accelerator.num_processes
        if self.order.batches_per_epoch == 0:
            raise SetupError(
                f"the dataset has {len(self.data)} images, fewer than one global batch of {global_batch} "
                f"(--train_batch_size {opts.train_batch_size} x {accelerator.num_processes} processes); lower --train_batch_size"
            )
        self.updates_per_epoch = self.order.batches_per_epoch / self.accumulation
        self.max_train_steps = (math.ceil(opts.num_epochs * self.updates_per_epoch) if "num_epochs" in opts.explicit
                                else opts.max_train_steps)

        self.noise_scheduler = build_noise_scheduler(opts)
        unet = build_unet(opts, self.data.num_channels, self.data.num_classes)
        if opts.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self.ema = (ExponentialMovingAverage(unet, opts.ema_max_decay, opts.ema_min_decay, opts.ema_inv_gamma,
                                             opts.ema_power).to(accelerator.device) if opts.use_ema else None)
        # the fused kernel: one pass over all weights instead of a Python loop (7x faster on CPU for the digits UNet)
        fused = {"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}
        optimizer = torch.optim.AdamW(unet.parameters(), lr=opts.learning_rate, betas=(opts.adam_beta1, opts.adam_beta2),
                                      weight_decay=opts.adam_weight_decay, eps=opts.adam_epsilon, **fused)
        from diffusers.optimization import get_scheduler

        # counted in optimizer updates and stepped once per update, so neither the number of processes
        # nor gradient accumulation changes its length (not prepared by accelerate for that reason)
        self.lr_scheduler = get_scheduler(opts.lr_scheduler, optimizer, num_warmup_steps=opts.lr_warmup_steps,
                                          num_training_steps=self.max_train_steps)
        self.unet, self.optimizer = accelerator.prepare(unet, optimizer)

        self.global_step = 0
        self.micro_batches_done = 0  # per process
        self.samples_seen = 0  # all processes
        self.loss_history: list[tuple[int, float]] = []
        self.elapsed_before_resume = 0.0
        if self.resume_path is not None:
            self._resume()
        # fp16's loss scaler skips the updates whose gradients overflow: only the loss is watched there
        self.monitor = DivergenceMonitor(accelerator.device, self.global_step, watch_gradients=accelerator.scaler is None)
        self._log_summary(global_batch)

    # ---- setup helpers ----------------------------------------------------------------------

    def _reconcile_accumulation(self) -> int:
        """The accelerate config may set gradient accumulation too; a clash is an error, not a guess."""
        configured = self.accelerator.gradient_accumulation_steps
        if configured != self.opts.gradient_accumulation_steps:
            if "gradient_accumulation_steps" in self.opts.explicit:
                raise SetupError(
                    f"--gradient_accumulation_steps {self.opts.gradient_accumulation_steps} conflicts with the accelerate "
                    f"config's gradient_accumulation_steps={configured}; set it in one place"
                )
            logger.info("using gradient_accumulation_steps=%d from the accelerate config", configured)
        return configured

    def _resume(self) -> None:
        """Check the checkpoint against this run (SetupError before any weight is loaded), then restore it."""
        accelerator, opts = self.accelerator, self.opts
        state = restore_checkpoint(self.resume_path, opts, accelerator, self.unet, self.optimizer, self.lr_scheduler,
                                   self.ema, num_channels=self.data.num_channels, max_train_steps=self.max_train_steps)
        self.global_step = state["global_step"]
        self.samples_seen = state["samples_seen"]
        self.loss_history = [tuple(item) for item in state["loss_history"]]
        self.elapsed_before_resume = state.get("elapsed_seconds", 0.0)
        layout = self._data_layout()
        if state["data_layout"] == layout:
            self.micro_batches_done = state["micro_batches_per_process"]
        else:
            # another batch size / process count / dataset: continue after the same number of images
            self.micro_batches_done = self.samples_seen // (opts.train_batch_size * accelerator.num_processes)
            logger.warning(
                "the checkpoint was written with data layout %s, this run has %s: resuming after the same number of "
                "images (%d), but the data order will differ from an uninterrupted run", state["data_layout"], layout,
                self.samples_seen,
            )
        logger.info("resumed from %s at update %d", self.resume_path, self.global_step)

    def _data_layout(self) -> dict[str, int]:
        return {"num_processes": self.accelerator.num_processes, "train_batch_size": self.opts.train_batch_size,
                "gradient_accumulation_steps": self.accumulation, "seed": self.opts.seed,
                "dataset_size": len(self.data)}

    def _log_summary(self, global_batch: int) -> None:
        opts, accelerator = self.opts, self.accelerator
        parameters = sum(p.numel() for p in accelerator.unwrap_model(self.unet).parameters())
        logger.info("***** training %s UNet (%.2fM parameters) *****", opts.unet_preset, parameters / 1e6)
        logger.info("  data: %s, %d images (%d undecodable skipped), %d channel(s), %s", self.data.description,
                    len(self.data), self.data.num_skipped, self.data.num_channels,
                    f"{self.data.num_classes} classes" if self.data.num_classes else "unconditional")
        logger.info("  %d process(es) on %s, mixed precision %s", accelerator.num_processes, accelerator.device,
                    accelerator.mixed_precision)
        logger.info("  batch %d per process x %d processes x %d accumulation = %d images per update",
                    opts.train_batch_size, accelerator.num_processes, self.accumulation, global_batch * self.accumulation)
        logger.info("  %d updates (%.1f per epoch), starting at %d", self.max_train_steps, self.updates_per_epoch,
                    self.global_step)

    # ---- the loop -------------------------------------------------------------------------------

    def train(self) -> Path:
        from tqdm.auto import tqdm

        opts, accelerator = self.opts, self.accelerator
        accelerator.init_trackers("ddpm_from_scratch", config=_tracker_config(opts))
        preloaded = None
        if fits_in_memory(self.data, opts.resolution):
            started = time.time()
            preloaded = PreloadedImages(self.data, opts.resolution, opts.center_crop)
            logger.info("decoded all %d images into memory in %.1fs", len(self.data), time.time() - started)
        stream = iterate_micro_batches(self.data, self.order, self.micro_batches_done, opts.resolution,
                                       opts.center_crop, opts.dataloader_num_workers, preloaded)
        progress = tqdm(total=self.max_train_steps, initial=self.global_step, desc="training", unit="step",
                        disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        window_loss, window_updates = torch.zeros((), device=accelerator.device), 0
        last_checkpoint = self.global_step if self.resume_path is not None else None
        while self.global_step < self.max_train_steps:
            window_loss += self._update(stream)
            window_updates += 1
            self.global_step += 1
            progress.update(1)
            finished = self.global_step == self.max_train_steps
            if self.global_step % opts.logging_steps == 0 or finished:
                mean_loss = accelerator.reduce(window_loss / window_updates, reduction="mean").item()
                self._check_diverged()
                window_loss.zero_()
                window_updates = 0
                self.loss_history.append((self.global_step, mean_loss))
                logs = {"loss": mean_loss, "lr": self.lr_scheduler.get_last_lr()[0]}
                if self.ema is not None:
                    logs["ema_decay"] = self.ema.decay(self.ema.num_updates)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{logs['lr']:.2e}")
                accelerator.log(logs, step=self.global_step)
            if opts.checkpointing_steps and self.global_step % opts.checkpointing_steps == 0:
                self._checkpoint()
                last_checkpoint = self.global_step
            if self._grid_due() and not finished:
                self._save_samples(f"step-{self.global_step:07d}.png")
        progress.close()
        if opts.checkpointing_steps and last_checkpoint != self.global_step:
            self._checkpoint()  # the final state too, so the run can be extended with a larger --max_train_steps
        self._check_diverged(weights=True)
        return self._finish()

    def _update(self, stream) -> torch.Tensor:
        """One optimizer update over `accumulation` micro-batches; returns the mean micro-batch loss (detached)."""
        opts, accelerator = self.opts, self.accelerator
        total = torch.zeros((), device=accelerator.device)
        for micro in range(self.accumulation):
            batch = next(stream)
            self.micro_batches_done += 1
            generator = update_generator(opts.seed, self.global_step, micro, accelerator.process_index, accelerator.device)
            images = batch["pixel_values"].to(accelerator.device, non_blocking=True)
            if opts.random_flip:
                images = random_horizontal_flip(images, generator)
            labels = batch.get("class_labels")
            if labels is not None:
                labels = drop_class_labels(labels.to(accelerator.device), opts.class_dropout_prob,
                                           self.data.num_classes, generator)
            # gradients are all-reduced only on the last micro-batch of the update
            last = micro == self.accumulation - 1
            with nullcontext() if last else accelerator.no_sync(self.unet):
                output = diffusion_loss(self.unet, self.noise_scheduler, images, generator, labels,
                                        loss_type=opts.loss_type, lambda_vlb=opts.lambda_vlb)
                accelerator.backward(output.loss)  # divided by the accumulation steps inside
            total += output.loss.detach()
        grad_norm = accelerator.clip_grad_norm_(self.unet.parameters(), opts.max_grad_norm)
        self.monitor.record(total, grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(accelerator.unwrap_model(self.unet))
        self.samples_seen += opts.train_batch_size * accelerator.num_processes * self.accumulation
        return total / self.accumulation

    # ---- outputs --------------------------------------------------------------------------------

    def _training_state(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "max_train_steps": self.max_train_steps,
            "micro_batches_per_process": self.micro_batches_done,
            "samples_seen": self.samples_seen,
            "epoch": self.micro_batches_done / self.order.batches_per_epoch,
            "data_layout": self._data_layout(),
            "learning_rate": self.lr_scheduler.get_last_lr()[0],
            "elapsed_seconds": self._elapsed(),
            "loss_history": self.loss_history,
        }

    def _elapsed(self) -> float:
        return self.elapsed_before_resume + time.time() - self.start_time

    def _check_diverged(self, weights: bool = False) -> None:
        """Raise TrainingDiverged (on every process) once a loss, gradient norm or, with `weights`, a weight
        to be saved is not finite. A collective: call it at the same point on every process."""
        good = list_checkpoints(self.checkpoint_dir)
        last_good = good[-1][1] if good else None
        self.monitor.check(self.accelerator, last_good)
        if weights:
            modules = [("raw", self.accelerator.unwrap_model(self.unet))]
            check_finite_weights(modules + ([("EMA", self.ema.averaged_model)] if self.ema else []), last_good)

    def _write_checkpoint_files(self, folder: Path) -> None:
        """Every process its RNG state; the main one the model, optimizer and schedules. With DDP every
        process holds the same weights, so the main process's unwrapped model is the whole model."""
        accelerator = self.accelerator
        write_process_files(folder, accelerator.process_index)
        if accelerator.is_main_process:
            write_shared_files(folder, unet=accelerator.unwrap_model(self.unet), optimizer=self.optimizer,
                               lr_scheduler=self.lr_scheduler, ema=self.ema, noise_scheduler=self.noise_scheduler,
                               grad_scaler=accelerator.scaler, options=self.opts.for_model_card())

    def _checkpoint(self) -> None:
        accelerator = self.accelerator
        self._check_diverged(weights=True)
        path = save_checkpoint(accelerator, self.checkpoint_dir, self.global_step, self._write_checkpoint_files,
                               self._training_state())
        if accelerator.is_main_process:
            logger.info("saved checkpoint %s", path)
            for removed in prune_checkpoints(self.checkpoint_dir, self.opts.checkpoints_total_limit):
                logger.info("deleted %s (--checkpoints_total_limit %s)", removed.name, self.opts.checkpoints_total_limit)
            self._save_loss_curve()
        accelerator.wait_for_everyone()

    def _sampling_unet(self) -> torch.nn.Module:
        return self.ema.averaged_model if self.ema is not None else self.accelerator.unwrap_model(self.unet)

    def _grid_due(self) -> bool:
        """After this update: --save_images_steps divides the update count, or an epoch that
        --save_images_epochs divides was completed (epochs counted in micro-batches, as the data order is)."""
        opts = self.opts
        if opts.save_images_epochs:
            per_epoch, every = self.order.batches_per_epoch, opts.save_images_epochs
            epochs_done = self.micro_batches_done // per_epoch
            epochs_before = (self.micro_batches_done - self.accumulation) // per_epoch
            return epochs_done // every > epochs_before // every
        return bool(opts.save_images_steps) and self.global_step % opts.save_images_steps == 0

    def _save_samples(self, name: str):
        """Sample a grid from the EMA weights (main process) into output_dir/samples/<name>."""
        from ddpm_from_scratch.sampling.images import save_image_atomic

        from ddpm_from_scratch.training.components import grid_of, sample_images

        accelerator, opts = self.accelerator, self.opts
        self._check_diverged()
        images = None
        if accelerator.is_main_process:
            started = time.time()
            images = sample_images(self._sampling_unet(), self.noise_scheduler, opts.num_grid_images,
                                   opts.grid_inference_steps, opts.eval_batch_size, seed=opts.seed,
                                   num_classes=self.data.num_classes)
            grid = grid_of(images, self.data.num_classes)
            path = save_image_atomic(grid, opts.output_path / "samples" / name)
            logger.info("sampled %d images (%d steps) in %.1fs: %s", opts.num_grid_images, opts.grid_inference_steps,
                        time.time() - started, path)
            log_sample_grid(accelerator.trackers, grid, path, self.global_step)
        accelerator.wait_for_everyone()
        return images

    def _is_builtin_digits(self) -> bool:
        return (self.opts.dataset_name == BUILTIN_DIGITS and self.opts.resolution == 8
                and self.data.num_channels == 1)

    def _save_loss_curve(self) -> None:
        from ddpm_from_scratch.training.plots import save_loss_curve

        if self.loss_history:
            steps, losses = zip(*self.loss_history)
            save_loss_curve(self.opts.output_path / "loss_curve.png", steps, losses,
                            title=f"training loss ({self.opts.prediction_type} prediction, L_{self.opts.loss_type})")

    def _finish(self) -> Path:
        """Sample the final grid, save the EMA pipeline with its model card, push if asked."""
        from ddpm_from_scratch.saving.atomic_io import write_json_atomic

        from ddpm_from_scratch.training.components import (build_pipeline, digits_sample_quality, grid_of, make_model_card,
                                         push_pipeline, save_pipeline)

        accelerator, opts = self.accelerator, self.opts
        training_minutes = round(self._elapsed() / 60, 2)  # sampling the final grid not included
        images = self._save_samples("final.png")
        if accelerator.is_main_process:
            self._save_loss_curve()
            pipeline = build_pipeline(self._sampling_unet(), self.noise_scheduler)
            final_loss = self.loss_history[-1][1] if self.loss_history else None
            metrics = {"final_loss": final_loss, "train_steps": self.global_step, "images_seen": self.samples_seen,
                       "training_minutes": training_minutes, "undecodable_images_skipped": self.data.num_skipped}
            if self._is_builtin_digits() and len(images) >= 2:
                metrics.update(digits_sample_quality(images))
                metrics["digits_quality_num_images"] = len(images)
            write_json_atomic(metrics, opts.output_path / "metrics.json", indent=1)
            grid = grid_of(images, self.data.num_classes)
            training_config = {**opts.for_model_card(), "data": self.data.description,
                               "max_train_steps": self.max_train_steps,
                               "gradient_accumulation_steps": self.accumulation,
                               "mixed_precision": accelerator.mixed_precision,
                               "num_processes": accelerator.num_processes,
                               "images_per_update": opts.train_batch_size * accelerator.num_processes * self.accumulation}
            hub_dataset = opts.dataset_name if opts.dataset_name not in (None, BUILTIN_DIGITS) else None
            card = make_model_card(hub_dataset, training_config, metrics, grid,
                                   tags=[f"preset-{opts.preset}"] + (["class-conditional"] if self.data.num_classes else []))
            save_pipeline(pipeline, str(opts.output_path), card)
            logger.info("saved the %s pipeline to %s (final loss %.4f, %.1f min)",
                        "EMA" if self.ema is not None else "final", opts.output_path, final_loss or float("nan"),
                        self._elapsed() / 60)
            if opts.push_to_hub:
                message = f"DDPM {opts.preset} preset, {self.global_step} steps, final loss {final_loss:.4f}"
                try:
                    push_pipeline(pipeline, opts, card, message)
                except Exception:
                    logger.error("the pipeline is saved in %s but pushing it to %s failed; retry with "
                                 "ScratchDDPMPipeline.from_pretrained(%r).push_to_hub(%r)", opts.output_path,
                                 opts.hub_model_id, str(opts.output_path), opts.hub_model_id)
                    raise
                logger.info("pushed the pipeline to https://huggingface.co/%s", opts.hub_model_id)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return opts.output_path


def _cpu_only_multiprocess() -> bool:
    """True when a launcher (torchrun, `accelerate launch --multi_gpu`) started several processes on a
    machine without an accelerator. accelerate would then run each as a separate one-process job
    writing the same files; asking it for CPU processes makes them one job joined by gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return not has_accelerator


def _check_tracker_available(log_with: str | None) -> None:
    from ddpm_from_scratch.training.config import check_report_to

    try:
        check_report_to(log_with or "none")
    except ValueError as error:
        raise SetupError(str(error)) from error


SAMPLE_GRID_TAG = "samples"


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


def _configure_logging(accelerator) -> None:
    import datasets
    import diffusers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING, force=True)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    diffusers.utils.logging.set_verbosity_warning()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse, set up (every input error is raised here, as SetupError), train; returns the output folder."""
    from ddpm_from_scratch.training.config import prepare_output_dir

    try:
        opts = parse_options(argv)
        prepare_output_dir(opts)
        trainer = Trainer(opts)
    except SetupError:
        raise
    except ValueError as error:  # option, data and model checks, all before the first update
        raise SetupError(str(error)) from error
    return trainer.train()


def cli(argv: Sequence[str] | None = None) -> int:
    try:
        main(argv)
    except SetupError as error:
        report_setup_error(f"train.py: error: {error}")
        return 2
    except TrainingDiverged as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    return 0


def report_setup_error(line: str) -> None:
    """Print the error once (process 0 of a launched job; every process raised the same error). Under
    torchrun (`accelerate launch --multi_gpu`) it also goes to the process's error file, so torchrun's
    failure report, printed after it, shows this line as the root cause instead of a pointer to its docs."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        from ddpm_from_scratch.saving.atomic_io import write_json_atomic

        write_json_atomic({"message": line, "timestamp": int(time.time())}, error_file)

