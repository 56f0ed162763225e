"""ScratchImg2ImgPipeline: image-to-image with an unconditional DDPM (Meng et al. 2022, SDEdit).

    x_{t0} = sqrt(abar_{t0}) x_0 + sqrt(1 - abar_{t0}) z    (F2, the closed-form forward process)
    for t in the last int(strength * K) timesteps of the K-step chain:  x_s = scheduler.step(eps(x_t, t), t, x_t)

``strength`` in (0, 1] picks t0: the image is noised to the level where the last
int(strength * num_inference_steps) steps of the sampling chain begin, and those steps are run,
each the scheduler's own reverse step (``p_mean_variance`` for ScratchDDPMScheduler). At
``strength=1`` the start is x_T ~ N(0, I), drawn as the sampling pipeline draws it, so the call is
ordinary sampling (the image only sets the batch size); a small strength changes the image little.
Any diffusers scheduler with ``add_noise`` works (DDPMScheduler, DDIMScheduler, ...), as in
diffusers' img2img pipelines, whose argument names these are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from .base import EditingPipeline, StepEndCallbackArg
from .inputs import check_strength


class ScratchImg2ImgPipeline(EditingPipeline):
    """SDEdit: noise ``image`` to the level ``strength`` and denoise it back (module doc)."""

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        strength: float = 0.8,
        num_inference_steps: int = 1000,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        eta: float | None = None,
        callback_on_step_end: StepEndCallbackArg = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Edit ``image``: one output per input image.

        Args:
            image: the images to edit, in the pipeline's own range: PIL image(s), a float numpy array
                (H, W, C) or (B, H, W, C) in [0, 1] (or uint8), or a float tensor (C, H, W) or
                (B, C, H, W) in [0, 1]; the model's size and channels (PIL images are converted to
                its mode).
            strength: in (0, 1], the fraction of the ``num_inference_steps``-step chain that is run:
                1 is ordinary sampling, small values stay close to ``image``.
            num_inference_steps: the length of the full chain (1..T for DDPM); int(strength *
                num_inference_steps) of its steps are run and must be >= 1.
            generator, class_labels, guidance_scale, output_type, return_dict, eta,
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in ``ScratchDDPMPipeline``
                (one generator or class label per image).
        """
        call = self._prepare(image, generator, num_inference_steps, class_labels, guidance_scale, output_type,
                             callback_on_step_end, callback_on_step_end_tensor_inputs)
        steps = check_strength(strength, num_inference_steps)
        step_kwargs = self._step_kwargs(generator, eta)
        device = call.x_start.device
        self._set_timesteps(num_inference_steps, device)
        timesteps = self.scheduler.timesteps[len(self.scheduler.timesteps) - steps:]

        noise = self._noise(call.x_start, generator)
        if steps == len(self.scheduler.timesteps):  # strength 1: x_T ~ N(0, I), as the sampling pipeline starts
            sample = noise * getattr(self.scheduler, "init_noise_sigma", 1.0)
        else:  # F2 at the first timestep that is run
            t_start = timesteps[:1].repeat(call.x_start.shape[0])
            sample = self.scheduler.add_noise(call.x_start, noise, t_start)

        for i, t in enumerate(self.progress_bar(timesteps)):
            model_output = self._predict(call, sample, t, guidance_scale)
            sample = self.scheduler.step(model_output, t, sample, **step_kwargs).prev_sample
            if call.step_end is not None:
                sample = call.step_end(i, t, sample)
        return self._finish(sample, output_type, return_dict)
