"""ScratchInpaintPipeline: inpainting with an unconditional DDPM (Lugmayr et al. 2022, RePaint).

Over the K-step sampling chain t -> s (``diffusion_chain``), each step down builds x_s from two parts:

    known pixels:    x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s) z      (F2; x_0 itself on the last step)
    unknown pixels:  x_s ~ p_theta(x_s | x_t)                          (the scheduler's step: P2 mean, p_mean_variance)

and "resampling" jumps back up the chain so the two parts agree: after every ``jump_length`` steps
down, x goes ``jump_length`` steps up again through the forward process,

    x_t = sqrt(alpha_{t|s}) x_s + sqrt(1 - alpha_{t|s}) z             (F1 of the merged step, ``q_step``)

``jump_n_sample - 1`` times per block (``jump_n_sample=1``: no resampling, one pass down). The
schedule is RePaint's (``repaint_schedule``; diffusers' RePaintScheduler builds the same one). One
noise draw z serves both parts of a step: they cover disjoint pixels, so they stay independent.

Schedulers: ScratchDDPMScheduler, or diffusers' DDPMScheduler (the same config, stepped through
ScratchDDPMScheduler.from_config): RePaint needs the forward step F1 of the very chain the reverse
step walks, which ``diffusion_chain`` gives. Any other scheduler is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..conditioning import is_int
from ..diffusion_math import DiffusionChain
from ..scheduler import ScratchDDPMScheduler
from .base import EditingCall, EditingPipeline, StepEndCallbackArg
from .inputs import mask_to_tensor


def repaint_schedule(num_inference_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's walk over the chain positions K-1 .. 0 (K = ``num_inference_steps``; position k is the
    k-th timestep from the end of the chain), Lugmayr et al. 2022, sec. 4.2 and their code.

    An entry below its predecessor is a step down from position k (x at k -> x at k - 1, the clean
    image after k = 0); an entry above it is a step up, after which x is at position entry - 1.
    Blocks of ``jump_length`` positions starting at 0, jump_length, ... (below K - jump_length)
    are walked down ``jump_n_sample`` times, going back up in between.
    """
    for name, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if jump_n_sample > 1 and jump_length >= num_inference_steps:
        raise ValueError(
            f"jump_length={jump_length} is longer than the chain: with num_inference_steps={num_inference_steps} "
            f"a jump back up must stay inside it (jump_length <= {num_inference_steps - 1}), or use jump_n_sample=1"
        )
    jumps = {j: jump_n_sample - 1 for j in range(0, num_inference_steps - jump_length, jump_length)}
    schedule, position = [], num_inference_steps
    while position >= 1:
        position -= 1
        schedule.append(position)
        if jumps.get(position, 0) > 0:
            jumps[position] -= 1
            for _ in range(jump_length):
                position += 1
                schedule.append(position)
    return schedule


class ScratchInpaintPipeline(EditingPipeline):
    """RePaint: fill the pixels ``mask_image`` marks, keeping the others (module doc)."""

    def _repaint_scheduler(self) -> ScratchDDPMScheduler:
        scheduler = self.scheduler
        if isinstance(scheduler, ScratchDDPMScheduler):
            return scheduler
        if type(scheduler) is DDPMScheduler:
            return ScratchDDPMScheduler.from_config(scheduler.config)
        raise ValueError(
            f"{type(self).__name__} needs a ScratchDDPMScheduler or diffusers' DDPMScheduler (RePaint walks the "
            f"DDPM chain down and up again), got {type(scheduler).__name__}"
        )

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        mask_image: Any,
        num_inference_steps: int = 250,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallbackArg = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Fill the masked pixels of ``image``: one output per input image; the other pixels come back as given.

        Args:
            image: as ``ScratchImg2ImgPipeline``'s (the pipeline's own range, [0, 1] or 8-bit).
            mask_image: 1 (white) where pixels are filled, 0 (black) where they are kept; binarised at
                0.5. PIL image(s), numpy (H, W[, C]) / (B, H, W, C) or tensor (H, W) / (C, H, W) /
                (B, C, H, W), values in [0, 1] (or 8-bit); 1 channel or the image's, 1 mask or one per image.
            num_inference_steps: K, the steps of the sampling chain (1..T); RePaint's default 250.
            jump_length: steps per resampling jump (RePaint's j, default 10); at most K - 1.
            jump_n_sample: times each block of ``jump_length`` steps is walked down (RePaint's r,
                default 10); 1 turns resampling off. The UNet runs about K * jump_n_sample times.
            generator, class_labels, guidance_scale, output_type, return_dict: as in ``ScratchDDPMPipeline``.
            callback_on_step_end: called after every entry of the walk (steps down and up), with the
                entry's index and timestep; "latents" is x there.
            callback_on_step_end_tensor_inputs: as in ``ScratchDDPMPipeline``.
        """
        call = self._prepare(image, generator, num_inference_steps, class_labels, guidance_scale, output_type,
                             callback_on_step_end, callback_on_step_end_tensor_inputs)
        x_start = call.x_start
        channels, (height, width) = x_start.shape[1], x_start.shape[2:]
        fill = mask_to_tensor(mask_image, x_start.shape[0], channels, height, width).to(x_start.device)
        scheduler = self._repaint_scheduler()
        schedule = repaint_schedule(num_inference_steps, jump_length, jump_n_sample)
        scheduler.set_timesteps(num_inference_steps, device=x_start.device)
        chain = scheduler.diffusion_chain(num_inference_steps, device=x_start.device)
        host_timesteps = scheduler.chain_timesteps(num_inference_steps)  # descending; position k is [K - 1 - k]

        sample = self._noise(x_start, generator) * scheduler.init_noise_sigma  # x_T ~ N(0, I)
        last_entry = schedule[0] + 1
        for i, entry in enumerate(self.progress_bar(schedule)):
            if entry < last_entry:  # down: x_t -> x_s
                t = scheduler.timesteps[num_inference_steps - 1 - entry]
                sample = self._repaint_step(call, scheduler, chain, sample, t, host_timesteps, entry,
                                            fill, generator, guidance_scale)
            else:  # up: x_s -> x_t, F1 of the step t -> s
                t = scheduler.timesteps[num_inference_steps - entry]
                sample = chain.q_step(sample, self._noise(sample, generator), t)
            last_entry = entry
            if call.step_end is not None:
                sample = call.step_end(i, t, sample)
        return self._finish(sample, output_type, return_dict)

    def _repaint_step(
        self,
        call: EditingCall,
        scheduler: ScratchDDPMScheduler,
        chain: DiffusionChain,
        sample: torch.Tensor,
        t: torch.Tensor,
        host_timesteps: list[int],
        position: int,
        fill: torch.Tensor,
        generator: Any,
        guidance_scale: float | None,
    ) -> torch.Tensor:
        """One step down at chain ``position`` (timestep t): unknown pixels from p_theta(x_s | x_t), known from F2."""
        model_output = self._predict(call, sample, t, guidance_scale)
        noise = self._noise(sample, generator)
        unknown = scheduler.step(model_output, t, sample, variance_noise=noise).prev_sample
        if position == 0:  # the last step: the known pixels are x_0 itself
            known = call.x_start
        else:
            s = host_timesteps[len(host_timesteps) - position]
            known = chain.q_sample(call.x_start, noise, s)
        return torch.where(fill, unknown, known)
