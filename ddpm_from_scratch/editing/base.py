"""What the two editing pipelines share: loading, saving, the checked inputs, the denoising loop's parts.

An editing pipeline is a ``ScratchDDPMPipeline`` with another ``__call__``: it inherits the UNet
call (class labels, classifier-free guidance, the ``enable_fast_sampling`` compile and autocast
options), the argument checks, the step-end callback and the progress bar. It holds the same two
components, so ``from_pipe`` builds it from any loaded pipeline without copying weights, and it
saves the model it edits with as a plain ``ScratchDDPMPipeline`` folder: the editing code is not
part of a saved pipeline and is never shipped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..conditioning import class_label_tensors
from ..fast_sampling import step_noise
from ..pipeline import ScratchDDPMPipeline
from ..unet import ScratchUNet2DModel
from .inputs import image_to_model_range

StepEndCallbackArg = Callable[..., dict[str, Any]] | PipelineCallback | MultiPipelineCallbacks | None


@dataclass
class EditingCall:
    """The checked inputs of one call: x_0 of the given images (B, C, H, W) in [-1, 1] on the device,
    the class labels (None for an unconditional UNet) and ``step_end(i, t, sample) -> sample``, the
    step-end callback (None without one)."""

    x_start: torch.Tensor
    labels: torch.Tensor | None
    null_labels: torch.Tensor | None
    step_end: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None


class EditingPipeline(ScratchDDPMPipeline):
    """Base of ``ScratchImg2ImgPipeline`` and ``ScratchInpaintPipeline`` (module doc)."""

    # the UNet classes from_pipe carries over (diffusers matches a model component against these hints); the
    # default sampling setting is carried too, for the saved model (`sampling_pipeline`), not used by the edits
    def __init__(
        self,
        unet: ScratchUNet2DModel | UNet2DModel,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int | None = None,
        default_eta: float | None = None,
    ):
        super().__init__(unet=unet, scheduler=scheduler, default_num_inference_steps=default_num_inference_steps,
                         default_eta=default_eta)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> EditingPipeline:
        """Load any saved pipeline of this package (a folder, a training checkpoint, a Hub repo id) or a
        diffusers DDPM pipeline folder, with the loader ``ddpm-sample`` uses, then ``from_pipe`` it.

        ``unet=`` / ``scheduler=`` replace the saved components; the other keywords go to the loader
        (``ScratchDDPMPipeline.from_pretrained``'s for a pipeline of this package).
        """
        from ..saving.folder import load_any_pipeline

        components = {name: kwargs.pop(name) for name in ("unet", "scheduler") if name in kwargs}
        pipeline = load_any_pipeline(pretrained_model_name_or_path, **kwargs)
        # from_pipe casts to its torch_dtype, float32 when none is given: keep the one the loader gave
        return cls.from_pipe(pipeline, torch_dtype=pipeline.dtype, **components)

    def sampling_pipeline(self) -> ScratchDDPMPipeline:
        """The plain sampling pipeline over the same components (no weights copied) and default sampling setting."""
        return ScratchDDPMPipeline(unet=self.unet, scheduler=self.scheduler,
                                   default_num_inference_steps=self.config.default_num_inference_steps,
                                   default_eta=self.config.default_eta)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save the model as a ``ScratchDDPMPipeline`` folder (``ScratchDDPMPipeline.save_pretrained``), which
        this class, the sampling pipeline and diffusers' remote-code loader all load."""
        self.sampling_pipeline().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        """Upload the model as a ``ScratchDDPMPipeline`` (``ScratchDDPMPipeline.push_to_hub``)."""
        return self.sampling_pipeline().push_to_hub(repo_id, *args, **kwargs)

    # ---- the parts of a call ------------------------------------------------------------------

    def _prepare(
        self,
        image: Any,
        generator: Any,
        num_inference_steps: Any,
        class_labels: Any,
        guidance_scale: Any,
        output_type: Any,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: Any,
    ) -> EditingCall:
        """Check every argument the two pipelines share and convert the image (before any step)."""
        if self.fast_sampling.cuda_graph:
            raise ValueError(
                f"{type(self).__name__} runs its steps eagerly; turn the CUDA graph off "
                "(enable_fast_sampling(cuda_graph=False)), compile and autocast still apply"
            )
        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        x_start = image_to_model_range(image, config.in_channels, height, width)
        batch_size = x_start.shape[0]
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self._check_arguments(
            batch_size, generator, num_inference_steps, guidance_scale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        device = self._execution_device
        labels, null_labels = class_label_tensors(self.unet, class_labels, guidance_scale, batch_size, device)
        step_end = None
        if callback_on_step_end is not None:
            step_end = functools.partial(
                self._call_step_end_callback, callback_on_step_end, list(callback_on_step_end_tensor_inputs)
            )
        return EditingCall(x_start.to(device=device, dtype=self.unet.dtype), labels, null_labels, step_end)

    def _predict(self, call: EditingCall, sample: torch.Tensor, t: torch.Tensor, guidance_scale: Any) -> torch.Tensor:
        """The model output at (x_t, t): the sampling pipeline's UNet call, guided if asked."""
        return self._predict_noise(sample, t, call.labels, call.null_labels, guidance_scale)

    def _noise(self, like: torch.Tensor, generator: Any) -> torch.Tensor:
        """Standard normal noise shaped like ``like``, the draws the sampling pipeline makes from ``generator``."""
        return step_noise(like.shape, generator, like.device, like.dtype)
