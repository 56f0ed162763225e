"""ScratchDDPMPipeline: ancestral sampling (Ho et al. 2020, algorithm 2) as a diffusers pipeline.

    x_T ~ N(0, I);  for t in scheduler.timesteps:  eps = unet(x_t, t[, y]);  x_{t-1} = scheduler.step(eps, t, x_t)

With diffusers' UNet2DModel + DDPMScheduler and the same generator it returns the same images as
diffusers' DDPMPipeline (same noise draws, same calls). It adds class-conditional sampling with
classifier-free guidance, works with any diffusers scheduler (it passes a scheduler only the step
arguments its ``step`` accepts; diffusers' DDIMScheduler gets ``use_clipped_model_output=True``,
`_step_kwargs`), and saves itself with its code so that
``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` works without this package.

A saved pipeline may record its default sampling setting (``default_num_inference_steps``,
``default_eta``: values in ``model_index.json``, passed back by every loader); a call that gives no
step count samples with it (`sampling_setting`).

Speed (docs/performance.md, benchmarks/bench_sampling.py). With a scheduler that declares
``sync_free_device_timesteps`` (ScratchDDPMScheduler), the timesteps live on the sample's device and
the loop draws each step's noise itself (same generator stream, passed as ``variance_noise``), so
no step reads anything back to the host: on a GPU the host queues steps ahead of the device instead
of waiting for it several times per step. ``enable_fast_sampling`` adds what is off by default
(fast_sampling.py): ``torch.compile`` of the UNet, bf16/fp16 autocast of the UNet, and on CUDA one
CUDA graph per step.

Remote-code rule: this module and its single-dot imports are the code a saved pipeline ships, so it
imports only the standard library, torch, diffusers and such siblings. Saving with checksums and a
model card, loading with the package and publishing (saving/folder.py, saving/hub.py) are imported
by name when called (`_unshipped_module`), so they stay out of saved repositories. Where the package
is not installed (the pipeline was loaded from its shipped code), saving and pushing fall back to
diffusers' own save plus the shipped code (`save_with_code`) and huggingface_hub's upload.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from .conditioning import class_conditioning, class_label_tensors, guided_model_output, is_int
from .fast_sampling import CompiledUNet, CudaGraphStep, FastSamplingOptions, step_noise

OUTPUT_TYPES = ("pil", "np", "pt")
# the scheduler whose step a recorded default sampling setting is for (the DDIM family's eta); named, not
# imported, because a pipeline loaded from its shipped code has its own copy of the class
DEFAULT_SAMPLING_SCHEDULER = "ScratchDDPMScheduler"
StepEndCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
# the installed package, whose saving and publishing modules a saved pipeline does not ship
PACKAGE = "ddpm_from_scratch"

logger = logging.get_logger(__name__)


def _unshipped_module(name: str) -> ModuleType | None:
    """The installed package's module ``name`` (saving.folder, saving.hub), imported by name at call time;
    None where the package is not installed (this code was loaded from a saved folder by diffusers).

    A by-name import is not a single-dot import, so the module stays out of the code a saved pipeline
    ships (diffusers' ``get_relative_import_files``) and out of diffusers' import check of that code.
    """
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except ModuleNotFoundError as error:
        if error.name not in (PACKAGE, f"{PACKAGE}.{name}"):
            raise
        return None


def save_with_code(pipeline: DiffusionPipeline, save_directory: str | os.PathLike, **save_kwargs: Any) -> None:
    """diffusers' own ``save_pretrained`` (safetensors), then the custom-code layout its loader reads.

    ``model_index.json`` names each class that is not diffusers' by its module's file stem, and that
    module with the siblings it imports (diffusers' ``get_relative_import_files``) is copied beside
    it: to the folder for the pipeline, to the component's folder for a component. So
    ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it with diffusers alone.
    """
    from diffusers.utils.dynamic_modules_utils import get_relative_import_files

    folder = Path(save_directory)
    DiffusionPipeline.save_pretrained(pipeline, folder, safe_serialization=True, **save_kwargs)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index.pop("_name_or_path", None)  # a local path of the machine that saved it
    for name, obj in [("_class_name", pipeline), *pipeline.components.items()]:
        if obj is None or type(obj).__module__.split(".")[0] == "diffusers":
            continue
        source = Path(inspect.getsourcefile(type(obj)))
        index[name] = [source.stem, type(obj).__name__]
        for code_file in dict.fromkeys([source, *map(Path, get_relative_import_files(source))]):
            shutil.copyfile(code_file, (folder if name == "_class_name" else folder / name) / code_file.name)
    staged = folder / ".model_index.json.tmp"
    staged.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staged, folder / "model_index.json")


def _warn_about_non_finite_images(sample: torch.Tensor) -> None:
    """Warn, naming how many and which, if images of the final x_0 hold NaN or inf (one host read, at the end).

    Clamping to [0, 1] would turn inf into a white or black image and leave NaN to become black
    pixels, so a diverged model would otherwise pass for a poor one.
    """
    if sample.device.type == "meta":  # shapes only, no values to check
        return
    bad = (~torch.isfinite(sample)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(str(index) for index in bad[:10]) + (", ..." if len(bad) > 10 else "")
        logger.warning(
            f"{len(bad)} of {sample.shape[0]} sampled images contain NaN or inf values (images {shown}); "
            "they are not valid samples (a diverged model, or a step count or scheduler the model does not support)"
        )


class ScratchDDPMPipeline(DiffusionPipeline):
    """Sample images from a DDPM: a UNet that predicts the noise and a scheduler that steps x_t -> x_{t-1}.

    Components: ``unet`` (ScratchUNet2DModel or diffusers' UNet2DModel) and ``scheduler``
    (ScratchDDPMScheduler or any diffusers scheduler, e.g. DDPMScheduler, DDIMScheduler).
    """

    model_cpu_offload_seq = "unet"
    # what callback_on_step_end may read and replace (diffusers' pipeline convention)
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int | None = None,
        default_eta: float | None = None,
    ):
        """``default_num_inference_steps`` / ``default_eta``: the sampling setting a call without a step count
        uses (`sampling_setting`), recorded in ``model_index.json`` when saved; None: none recorded."""
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.set_default_sampling(default_num_inference_steps, default_eta)
        self.fast_sampling = FastSamplingOptions()
        self._compiled_unet = CompiledUNet()
        self._warned_no_cuda_graph = False

    # ---- speed-ups -------------------------------------------------------------------------------

    def enable_fast_sampling(
        self,
        compile: bool | dict[str, Any] = False,
        cuda_graph: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        """Turn on the sampling speed-ups that are off by default (measured in benchmarks/bench_sampling.py).

        Args:
            compile: ``torch.compile`` the UNet: True, or a dict of torch.compile arguments (e.g.
                ``{"mode": "max-autotune-no-cudagraphs"}``). Compiled on the first call, reused after.
                Same images up to float rounding.
            cuda_graph: on CUDA, record one denoising step (UNet and scheduler step) as a CUDA graph at
                the start of each call and replay it for every step. Needs a scheduler with
                ``sync_free_device_timesteps`` (ScratchDDPMScheduler). Off CUDA the step runs as usual
                (with a warning).
            autocast_dtype: ``torch.bfloat16`` or ``torch.float16``: the UNet runs under
                ``torch.autocast`` in that dtype; the sample and the scheduler's arithmetic stay in the
                pipeline's dtype (float32), so only the network's rounding changes.
        """
        options = FastSamplingOptions.from_arguments(compile, cuda_graph, autocast_dtype)
        if options.cuda_graph:
            self._check_sync_free_scheduler("cuda_graph=True")
        self.fast_sampling = options
        self._compiled_unet.clear()

    def disable_fast_sampling(self) -> None:
        """Back to the defaults: eager UNet in the pipeline's dtype, no CUDA graph."""
        self.fast_sampling = FastSamplingOptions()
        self._compiled_unet.clear()

    def _has_sync_free_scheduler(self) -> bool:
        return bool(getattr(self.scheduler, "sync_free_device_timesteps", False))

    def _check_sync_free_scheduler(self, what: str) -> None:
        if not self._has_sync_free_scheduler():
            raise ValueError(
                f"{what} needs a scheduler whose step runs on device timesteps without host syncs and takes "
                f"variance_noise (sync_free_device_timesteps = True, e.g. ScratchDDPMScheduler); "
                f"{type(self.scheduler).__name__} is not one"
            )

    def _sampling_unet(self) -> torch.nn.Module:
        """The UNet the loop calls: the compiled one if compile is on (compiled once per UNet)."""
        return self._compiled_unet(self.unet, self.fast_sampling.compile_kwargs)

    # ---- the default sampling setting -------------------------------------------------------------

    def set_default_sampling(self, num_inference_steps: int | None, eta: float | None = None) -> None:
        """Record the sampling setting of a call that gives no step count (saved in ``model_index.json``).

        ``num_inference_steps``: an int in [1, num_train_timesteps], or None (no default: such a call runs
        all num_train_timesteps DDPM steps). ``eta``: the DDIM family's eta (a number in [0, 1]; 0 is
        DDIM, 1 with fixed_small is DDPM), or None (ScratchDDPMScheduler's DDPM step); it needs a step count.
        The setting applies only while the scheduler is a ScratchDDPMScheduler, whose step takes eta.
        """
        if num_inference_steps is not None:
            num_train_timesteps = self.scheduler.config.get("num_train_timesteps")
            if not is_int(num_inference_steps) or num_inference_steps < 1 or (
                num_train_timesteps is not None and num_inference_steps > num_train_timesteps
            ):
                raise ValueError(
                    f"default_num_inference_steps must be None or an int in [1, num_train_timesteps = "
                    f"{num_train_timesteps}], got {num_inference_steps!r}"
                )
        if eta is not None:
            if num_inference_steps is None:
                raise ValueError(
                    f"default_eta={eta!r} needs default_num_inference_steps: the eta is part of the setting a call "
                    "without a step count uses"
                )
            if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
                raise ValueError(f"default_eta must be None or a number in [0, 1] (0: DDIM, 1: DDPM's posterior), got {eta!r}")
            eta = float(eta)
        self.register_to_config(default_num_inference_steps=num_inference_steps, default_eta=eta)

    def sampling_setting(
        self, num_inference_steps: int | None = None, eta: float | None = None
    ) -> tuple[int, float | None]:
        """The (step count, eta) a call with these arguments samples with.

        A given step count is used as it is, with the given eta. Without one: the recorded default and,
        unless eta is given, its eta, when one is recorded and the scheduler is a ScratchDDPMScheduler;
        otherwise all num_train_timesteps steps (full DDPM sampling) with the given eta.
        """
        if num_inference_steps is not None:
            return num_inference_steps, eta
        default_steps = self.config.get("default_num_inference_steps")
        is_default_scheduler = any(cls.__name__ == DEFAULT_SAMPLING_SCHEDULER for cls in type(self.scheduler).__mro__)
        if default_steps is not None and is_default_scheduler:
            return default_steps, self.config.get("default_eta") if eta is None else eta
        return self.scheduler.config.num_train_timesteps, eta

    # ---- sampling ------------------------------------------------------------------------------

    def _check_arguments(
        self,
        batch_size: Any,
        generator: Any,
        num_inference_steps: Any,
        guidance_scale: Any,
        output_type: Any,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: Any = ("latents",),
    ) -> None:
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but batch_size is {batch_size}; "
                "pass one generator per image, or a single generator"
            )
        if not is_int(num_inference_steps) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if guidance_scale is not None and (
            isinstance(guidance_scale, bool)
            or not isinstance(guidance_scale, (int, float))
            or not math.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise ValueError(f"guidance_scale must be None or a finite number >= 0, got {guidance_scale!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(
                "callback_on_step_end must be None or a callable callback(pipeline, step_index, timestep, "
                f"callback_kwargs) -> dict, got {callback_on_step_end!r}"
            )
        if isinstance(callback_on_step_end_tensor_inputs, str) or not all(
            name in self._callback_tensor_inputs for name in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be a list of names in {self._callback_tensor_inputs}, "
                f"got {callback_on_step_end_tensor_inputs!r}"
            )

    def _step_kwargs(self, generator: Any, eta: float | None) -> dict[str, Any]:
        """The optional arguments of ``scheduler.step`` that this scheduler accepts."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if "generator" in accepted:
            kwargs["generator"] = generator
        if "use_clipped_model_output" in accepted:
            # Always True (diffusers' DDIMScheduler): the noise is re-derived from the clipped x_0, as in our own
            # step. diffusers' default (False) mixes the clipped x_0 with the model's unclipped noise, an error of
            # the size of the clipping at every step whatever the step size, so it grows with the step count.
            kwargs["use_clipped_model_output"] = True
        if eta is not None:
            if "eta" not in accepted:
                raise ValueError(f"eta is not an argument of {type(self.scheduler).__name__}.step; leave eta=None")
            kwargs["eta"] = eta
        return kwargs

    def _set_timesteps(self, num_inference_steps: int, device: torch.device) -> None:
        # On the sample's device for a sync-free scheduler (no copy per step); otherwise on the CPU, as in
        # diffusers' DDPMPipeline/DDIMPipeline (their steps index CPU tables with them; the UNet moves them)
        kwargs = {"device": device} if self._has_sync_free_scheduler() else {}
        try:
            self.scheduler.set_timesteps(num_inference_steps, **kwargs)
        except (ValueError, ZeroDivisionError) as error:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is not accepted by {type(self.scheduler).__name__} "
                f"(num_train_timesteps={self.scheduler.config.get('num_train_timesteps')}): {error}"
            ) from error

    def _predict_noise(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None,
        null_labels: torch.Tensor | None,
        guidance_scale: float | None,
    ) -> torch.Tensor:
        """The model output for ``scheduler.step``, in the sample's dtype; with guidance, one UNet call on
        [cond | uncond]."""
        model_input = sample
        if hasattr(self.scheduler, "scale_model_input"):
            model_input = self.scheduler.scale_model_input(sample, t)
        unet = self._sampling_unet()
        with self.fast_sampling.unet_autocast(sample.device):
            if labels is None:
                return unet(model_input, t).sample.to(sample.dtype)
            if guidance_scale is None or guidance_scale == 1.0:  # w = 1 is the conditional model itself
                return unet(model_input, t, class_labels=labels).sample.to(sample.dtype)
            both = unet(torch.cat([model_input, model_input]), t, class_labels=torch.cat([labels, null_labels])).sample
        cond, uncond = both.to(sample.dtype).chunk(2)
        return guided_model_output(cond, uncond, sample.shape[1], guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        eta: float | None = None,
        callback_on_step_end: StepEndCallback | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images.

        Args:
            batch_size: number of images (>= 1).
            generator: a torch.Generator, or a list of batch_size generators (one per image), for
                reproducible samples; image i then depends only on generator i.
            num_inference_steps: number of denoising steps; the scheduler must accept it (1..T for DDPM).
                None: the recorded default setting (steps and eta) with a ScratchDDPMScheduler, else all
                T = num_train_timesteps steps (`sampling_setting`).
            class_labels: for a class-conditional UNet, an int or batch_size ints in [0, number of
                classes); None samples unconditionally (the null class). Must be None for an
                unconditional UNet.
            guidance_scale: classifier-free guidance weight w (>= 0) with class_labels:
                eps = eps(x, null) + w (eps(x, y) - eps(x, null)); None or 1 = no guidance.
            output_type: "pil" (list of PIL images, mode 'L' for one channel), "np" ((B, H, W, C)
                float32 in [0, 1]) or "pt" ((B, C, H, W) tensor in [0, 1]).
            return_dict: return an ImagePipelineOutput (else a 1-tuple).
            eta: the DDIM family's eta, passed to schedulers whose ``step`` takes it (ScratchDDPMScheduler:
                None is the DDPM step; DDIMScheduler: None is its default 0).
            callback_on_step_end: called after every denoising step as diffusers' pipelines call it,
                ``callback(pipeline, step_index, timestep, callback_kwargs) -> dict``; ``callback_kwargs``
                holds the tensors named in ``callback_on_step_end_tensor_inputs`` (x_{t-1} as
                "latents"), and a "latents" entry in the returned dict replaces x_{t-1} (same shape).
                A diffusers ``PipelineCallback`` / ``MultiPipelineCallbacks`` brings its own
                ``tensor_inputs``. Works with every speed-up of ``enable_fast_sampling``.
            callback_on_step_end_tensor_inputs: names out of ``_callback_tensor_inputs`` (["latents"]).

        The progress bar is diffusers' own: ``pipe.set_progress_bar_config(disable=True)`` turns it off.
        Images with NaN or inf values (a diverged model) are reported in a warning naming how many.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        num_inference_steps, eta = self.sampling_setting(num_inference_steps, eta)
        self._check_arguments(
            batch_size, generator, num_inference_steps, guidance_scale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        if self.fast_sampling.cuda_graph:  # the scheduler may have been replaced since enable_fast_sampling
            self._check_sync_free_scheduler("enable_fast_sampling(cuda_graph=True)")
        device = self._execution_device
        labels, null_labels = class_label_tensors(self.unet, class_labels, guidance_scale, batch_size, device)
        step_kwargs = self._step_kwargs(generator, eta)
        self._set_timesteps(num_inference_steps, device)

        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, config.in_channels, height, width)
        # x_T ~ N(0, I), drawn exactly as diffusers' pipelines draw it (CPU generators draw on the CPU;
        # on mps, randn is not reproducible, so draw on the CPU there too)
        noise_device = torch.device("cpu") if device.type == "mps" else device
        sample = randn_tensor(shape, generator=generator, device=noise_device, dtype=self.unet.dtype).to(device)
        sample = sample * getattr(self.scheduler, "init_noise_sigma", 1.0)

        step = functools.partial(self._denoising_step, labels=labels, null_labels=null_labels,
                                 guidance_scale=guidance_scale, step_kwargs=step_kwargs)
        step_end = None
        if callback_on_step_end is not None:
            step_end = functools.partial(self._call_step_end_callback, callback_on_step_end,
                                         list(callback_on_step_end_tensor_inputs))
        if self._has_sync_free_scheduler():
            sample = self._sync_free_loop(step, sample, generator, step_end)
        else:
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                sample = step(sample, t)
                if step_end is not None:
                    sample = step_end(i, t, sample)

        return self._finish(sample, output_type, return_dict)

    def _finish(self, sample: torch.Tensor, output_type: str, return_dict: bool) -> Any:
        """x_0 (B, C, H, W) in [-1, 1] -> images of ``output_type`` in [0, 1], warning about non-finite ones."""
        _warn_about_non_finite_images(sample)
        image = (sample / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _denoising_step(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None,
        null_labels: torch.Tensor | None,
        guidance_scale: float | None,
        step_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """x_t -> x_{t-1}: the noise prediction, then ``scheduler.step`` (with ``noise`` as its z if given)."""
        model_output = self._predict_noise(sample, t, labels, null_labels, guidance_scale)
        if noise is not None:
            step_kwargs = {**step_kwargs, "variance_noise": noise}
        return self.scheduler.step(model_output, t, sample, **step_kwargs).prev_sample

    def _call_step_end_callback(
        self, callback: Callable, tensor_inputs: list[str], i: int, t: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        """Run ``callback_on_step_end`` after step ``i``; its "latents" (if returned) replace x_{t-1}."""
        outputs = callback(self, i, t, {name: latents for name in tensor_inputs})
        if not isinstance(outputs, dict):
            raise ValueError(
                f"callback_on_step_end must return a dict (e.g. the callback_kwargs it got), got {type(outputs).__name__}"
            )
        replaced = outputs.get("latents", latents)
        if not isinstance(replaced, torch.Tensor) or replaced.shape != latents.shape:
            raise ValueError(
                f"callback_on_step_end returned 'latents' of shape {getattr(replaced, 'shape', type(replaced))}; "
                f"it must be a tensor of the sample's shape {tuple(latents.shape)}"
            )
        return replaced.to(device=latents.device, dtype=latents.dtype)

    def _host_timesteps(self) -> list[int]:
        """The scheduler's timesteps read back once, before the loop (the loop itself reads nothing)."""
        return self.scheduler.timesteps.cpu().tolist()

    def _sync_free_loop(
        self,
        step: Callable[..., torch.Tensor],
        sample: torch.Tensor,
        generator: Any,
        step_end: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The sampling loop for a sync-free scheduler: timesteps on the device, noise drawn here.

        Nothing in the loop reads the device: the only host-side decision, whether a step draws noise,
        is made from a CPU copy of the timesteps taken once. Noise is drawn where diffusers draws it
        (t > 0), from the same generator stream, so images and the generator's final state are those
        of the plain loop (and of diffusers' DDPMPipeline). Steps with t = 0 get zeros (no noise is
        added there: on a device the scheduler masks it, on the CPU it skips it).

        ``step_end(i, t, sample)`` (callback_on_step_end) runs between steps, outside any CUDA graph;
        with a graph it gets a copy of the graph's output buffer, which the next replay overwrites,
        so a callback that keeps the tensor keeps that step's values, as in the eager loop.
        """
        timesteps = self.scheduler.timesteps
        host_timesteps = self._host_timesteps()
        zeros = torch.zeros_like(sample)
        use_graph = self.fast_sampling.cuda_graph and sample.device.type == "cuda"
        if self.fast_sampling.cuda_graph and not use_graph and not self._warned_no_cuda_graph:
            logger.warning(f"cuda_graph=True has no effect on {sample.device.type}: sampling without a CUDA graph")
            self._warned_no_cuda_graph = True
        graph = None
        for i in self.progress_bar(range(len(host_timesteps))):
            t = timesteps[i]
            noise = step_noise(sample.shape, generator, sample.device, sample.dtype) if host_timesteps[i] > 0 else zeros
            if use_graph:
                if graph is None:  # recorded per call: the scheduler's tables for this call are in it
                    graph = CudaGraphStep(step, sample, t, noise)
                sample = graph(sample, t, noise)
                if step_end is not None:
                    sample = step_end(i, t, sample.clone())
            else:
                sample = step(sample, t, noise)
                if step_end is not None:
                    sample = step_end(i, t, sample)
        # a copy: the graph's output buffer belongs to the graph's private memory pool
        return sample.clone() if graph is not None and step_end is None else sample

    # ---- saving, loading, publishing (saving/folder.py, saving/hub.py) -------------------------------

    def _num_classes(self) -> int | None:
        conditioning = class_conditioning(self.unet)
        return None if conditioning is None else conditioning[0]

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        model_card: Any = None,
        *,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **push_kwargs: Any,
    ) -> None:
        """Save the pipeline with its code (`save_with_code`), so that
        ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` loads it without this package.

        With the package installed (saving/folder.py) the save is staged and moved into place, records
        the weights' SHA-256 in ``manifest.json`` (checked by ``ScratchDDPMPipeline.from_pretrained``),
        and writes README.md from ``model_card`` (a ``ModelCardInfo``; a default card if None and the
        folder has none; a user's text outside the card's generated section is kept). Without it
        (code loaded from a saved folder) it is diffusers' own save plus the code, with no card.
        Weights are safetensors only. ``push_to_hub=True`` then uploads it (``push_kwargs``: repo_id,
        private, token, commit_message, create_pr, endpoint; ``variant`` and ``max_shard_size`` carry over).
        """
        if not safe_serialization:
            raise ValueError("safe_serialization must be True: this pipeline saves weights as safetensors only")
        saving = _unshipped_module("saving.folder")
        if saving is None:
            save_with_code(self, save_directory, variant=variant, max_shard_size=max_shard_size)
        else:
            saving.save_pipeline_folder(
                self, save_directory, model_card=model_card, card_repo_id=None, num_classes=self._num_classes(),
                variant=variant, max_shard_size=max_shard_size, token=push_kwargs.get("token"),
            )
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", Path(save_directory).resolve().name)
            self.push_to_hub(
                repo_id, model_card=model_card, variant=variant, max_shard_size=max_shard_size, **push_kwargs
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> ScratchDDPMPipeline:
        """Load a saved pipeline (a folder, a training checkpoint or a Hub repo id) with this package's classes.

        No code from the folder runs (``trust_remote_code`` is ignored); weights are read from
        safetensors only, after checking them against the folder's ``manifest.json`` (a folder without
        one loads with a warning). Components passed as keyword arguments (e.g.
        ``scheduler=DDIMScheduler(...)``) replace the saved ones; diffusers' model loading keywords
        (torch_dtype, variant, device_map, low_cpu_mem_usage, ...) go to each model's
        ``from_pretrained``; for Hub repos revision, token, cache_dir, local_files_only,
        force_download, endpoint go to the download. Keywords that cannot apply here
        (use_safetensors=False, custom_pipeline, ...) are a ValueError saying why.
        """
        saving = _unshipped_module("saving.folder")
        if saving is None:
            raise ModuleNotFoundError(
                f"{cls.__name__}.from_pretrained loads with the installed ddpm-from-scratch package (pip install "
                "ddpm-from-scratch); without it use DiffusionPipeline.from_pretrained(path, trust_remote_code=True)",
                name=PACKAGE,
            )
        return saving.load_pipeline(cls, pretrained_model_name_or_path, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload ScratchDDPMPipeline (DDPM) with its code and model card",
        model_card: Any = None,
        *,
        create_pr: bool = False,
        endpoint: str | None = None,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
    ) -> Any:
        """Create the Hub repo ``repo_id`` (if needed) and upload a fresh save of the pipeline in one commit.

        With the package installed (saving/hub.py) the upload is refused if any file holds ``token``,
        the repo's README.md keeps its owner's text (``model_card``: a ``ModelCardInfo``), and the
        repo's stale weights of the same variant are deleted. ``token`` is sent to the Hub only;
        ``endpoint`` points the client at another Hub (default: HF_ENDPOINT or huggingface.co).
        Returns huggingface_hub's CommitInfo.
        """
        hub = _unshipped_module("saving.hub")
        if hub is not None:
            return hub.push_pipeline(
                self, repo_id, private=private, token=token, commit_message=commit_message, model_card=model_card,
                num_classes=self._num_classes(), create_pr=create_pr, endpoint=endpoint, variant=variant,
                max_shard_size=max_shard_size,
            )
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            save_with_code(self, folder, variant=variant, max_shard_size=max_shard_size)
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, create_pr=create_pr
            )
