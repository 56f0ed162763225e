"""Train a DDPM and save it as a ScratchDDPMPipeline.

    accelerate launch training/train.py --preset digits          # any accelerate setup
    python training/train.py --preset digits                     # one process
    ddpm-train --preset digits                                   # one process, the installed command

What one optimizer update does (every process, in lock step):
    for each of the gradient_accumulation_steps micro-batches:
        take the next micro-batch of this process's share of the data (batches.ShardedEpochOrder)
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
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch

from ddpm_from_scratch.sampling.images import save_image_atomic
from ddpm_from_scratch.saving.atomic_io import write_json_atomic

from .accelerate_setup import log_sample_grid, make_accelerator, report_setup_error, tracker_config
from .batches import PreloadedImages, ShardedEpochOrder, fits_in_memory, iterate_micro_batches
from .checkpoints import (checkpoints_root, list_checkpoints, prune_checkpoints, save_checkpoint, write_process_files,
                          write_shared_files)
from .components import build_pipeline, digits_sample_quality, grid_of, push_pipeline, run_model_card, sample_images
from .config import parse_options
from .data import TrainingData, prepare_training_data
from .divergence import DivergenceMonitor, TrainingDiverged, check_finite_weights
from .ema import ema_weights, make_ema
from .model import build_noise_scheduler, build_unet, check_resolution
from .objective import diffusion_loss, drop_class_labels, random_horizontal_flip, update_generator
from .options import BUILTIN_DIGITS, TrainingOptions
from .output_dir import prepare_output_dir
from .plots import save_loss_curve
from .resume import agree_on_checkpoint, restore_checkpoint, resume_position

logger = logging.getLogger(__name__)


class SetupError(ValueError):
    """Bad input found before training started (printed without a traceback)."""


class Trainer:
    """Sets up everything (raising SetupError for bad input), then `train()` runs the loop."""

    def __init__(self, opts: TrainingOptions):
        from accelerate.utils import set_seed

        self.opts = opts
        self.start_time = time.time()
        self.accelerator = make_accelerator(opts)
        accelerator = self.accelerator
        self.accumulation = self._reconcile_accumulation()
        set_seed(opts.seed)  # the model init is the same on every process and in every run with this seed
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
        self.ema, self.ema_unet = make_ema(unet, opts, accelerator.device) if opts.use_ema else (None, None)
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
                                   self.ema, self.ema_unet, num_channels=self.data.num_channels, max_train_steps=self.max_train_steps)
        self.global_step = state["global_step"]
        self.samples_seen = state["samples_seen"]
        self.loss_history = [tuple(item) for item in state["loss_history"]]
        self.elapsed_before_resume = state.get("elapsed_seconds", 0.0)
        self.micro_batches_done = resume_position(state, self._data_layout(),
                                                  opts.train_batch_size * accelerator.num_processes)
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
        accelerator.init_trackers("ddpm_from_scratch", config=tracker_config(opts))
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
                    logs["ema_decay"] = self.ema.cur_decay_value
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
                                        loss_type=opts.loss_type, lambda_vlb=opts.lambda_vlb,
                                        snr_gamma=opts.snr_gamma)
                accelerator.backward(output.loss)  # divided by the accumulation steps inside
            total += output.loss.detach()
        grad_norm = accelerator.clip_grad_norm_(self.unet.parameters(), opts.max_grad_norm)
        self.monitor.record(total, grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(accelerator.unwrap_model(self.unet).parameters())
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
            check_finite_weights(modules + ([("EMA", self._sampling_unet())] if self.ema else []), last_good)

    def _write_checkpoint_files(self, folder: Path) -> None:
        """Every process its RNG state; the main one the model, optimizer and schedules. With DDP every
        process holds the same weights, so the main process's unwrapped model is the whole model."""
        accelerator = self.accelerator
        write_process_files(folder, accelerator.process_index)
        if accelerator.is_main_process:
            write_shared_files(folder, unet=accelerator.unwrap_model(self.unet), optimizer=self.optimizer,
                               lr_scheduler=self.lr_scheduler, ema=self.ema, ema_unet=self._sampling_unet(),
                               noise_scheduler=self.noise_scheduler,
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
        """The EMA weights (copied into ema_unet), or the trained ones with --no-use_ema."""
        if self.ema is None:
            return self.accelerator.unwrap_model(self.unet)
        return ema_weights(self.ema, self.ema_unet)

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
        if self.loss_history:
            steps, losses = zip(*self.loss_history)
            save_loss_curve(self.opts.output_path / "loss_curve.png", steps, losses,
                            title=f"training loss ({self.opts.prediction_type} prediction, L_{self.opts.loss_type})")

    def _finish(self) -> Path:
        """Sample the final grid, save the EMA pipeline with its model card, push if asked."""
        accelerator, opts = self.accelerator, self.opts
        training_minutes = round(self._elapsed() / 60, 2)  # sampling the final grid not included
        images = self._save_samples("final.png")
        if accelerator.is_main_process:
            self._save_loss_curve()
            final_loss = self.loss_history[-1][1] if self.loss_history else None
            metrics = {"final_loss": final_loss, "train_steps": self.global_step, "images_seen": self.samples_seen,
                       "training_minutes": training_minutes, "undecodable_images_skipped": self.data.num_skipped}
            if self._is_builtin_digits() and len(images) >= 2:
                metrics.update(digits_sample_quality(images), digits_quality_num_images=len(images))
            write_json_atomic(metrics, opts.output_path / "metrics.json", indent=1)
            card = run_model_card(opts, self.data.description, self.data.num_classes, metrics,
                                  grid_of(images, self.data.num_classes), {
                                      "max_train_steps": self.max_train_steps,
                                      "gradient_accumulation_steps": self.accumulation,
                                      "mixed_precision": accelerator.mixed_precision,
                                      "num_processes": accelerator.num_processes,
                                      "images_per_update": opts.train_batch_size * accelerator.num_processes
                                      * self.accumulation})
            pipeline = build_pipeline(self._sampling_unet(), self.noise_scheduler, opts.default_inference_steps,
                                      opts.default_eta)
            pipeline.save_pretrained(opts.output_path, model_card=card)  # checkpoints, samples and logs stay
            logger.info("saved the %s pipeline to %s (final loss %.4f, %.1f min)",
                        "EMA" if self.ema is not None else "final", opts.output_path, final_loss or float("nan"),
                        self._elapsed() / 60)
            if opts.push_to_hub:
                push_pipeline(pipeline, opts, card, f"DDPM {opts.preset} preset, {self.global_step} steps, final "
                                                    f"loss {final_loss:.4f}")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return opts.output_path


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse, set up (every input error is raised here, as SetupError), train; returns the output folder."""
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
