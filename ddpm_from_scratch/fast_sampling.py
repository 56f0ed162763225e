"""The sampling speed-ups that are off by default: ``torch.compile`` of the UNet, bf16/fp16 autocast of
the UNet, and on CUDA one CUDA graph per denoising step (``ScratchDDPMPipeline.enable_fast_sampling``;
measured in benchmarks/bench_sampling.py, docs/performance.md).

Also the noise draw of the sync-free loop (`step_noise`), which a CUDA-graph step takes as an input.

Remote-code rule: this module ships with every saved pipeline, so it imports only the standard
library, torch and diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
# torch.compile modes that record CUDA graphs themselves; those cannot be nested in the step's graph
CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class FastSamplingOptions:
    """The sampling speed-ups that are off by default (``ScratchDDPMPipeline.enable_fast_sampling``)."""

    compile_kwargs: dict[str, Any] | None = None  # torch.compile arguments for the UNet; None: eager
    cuda_graph: bool = False  # on CUDA, replay each denoising step from one CUDA graph
    autocast_dtype: torch.dtype | None = None  # run the UNet under torch.autocast in this dtype

    @classmethod
    def from_arguments(
        cls, compile: bool | dict[str, Any], cuda_graph: bool, autocast_dtype: torch.dtype | None
    ) -> FastSamplingOptions:
        """Check ``enable_fast_sampling``'s arguments (ValueError naming the bad one) and build the options."""
        if isinstance(compile, bool):
            compile_kwargs = {} if compile else None
        elif isinstance(compile, dict):
            compile_kwargs = dict(compile)
        else:
            raise ValueError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"cuda_graph must be a bool, got {cuda_graph!r}")
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be None or one of {AUTOCAST_DTYPES}, got {autocast_dtype!r}")
        if cuda_graph and compile_kwargs and compile_kwargs.get("mode") in CUDA_GRAPH_COMPILE_MODES:
            raise ValueError(
                f"compile mode {compile_kwargs['mode']!r} records CUDA graphs itself, which cannot be nested in "
                "cuda_graph=True; use cuda_graph=False with it, or mode 'max-autotune-no-cudagraphs'"
            )
        return cls(compile_kwargs, cuda_graph, autocast_dtype)

    def unet_autocast(self, device: torch.device) -> AbstractContextManager:
        """The context the UNet runs in: ``torch.autocast`` in ``autocast_dtype``, or nothing."""
        if self.autocast_dtype is None:
            return nullcontext()
        # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA-graph capture
        return torch.autocast(device.type, dtype=self.autocast_dtype, cache_enabled=False)


class CompiledUNet:
    """``torch.compile`` of a UNet, compiled on first use and reused while the UNet and options stay the same."""

    def __init__(self) -> None:
        self._cached: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (unet, compiled unet)

    def clear(self) -> None:
        self._cached = None

    def __call__(self, unet: torch.nn.Module, compile_kwargs: dict[str, Any] | None) -> torch.nn.Module:
        """The UNet to call: ``unet`` itself if ``compile_kwargs`` is None, else its compiled module."""
        if compile_kwargs is None:
            return unet
        if self._cached is None or self._cached[0] is not unet:
            self._cached = (unet, torch.compile(unet, **compile_kwargs))
        return self._cached[1]


def step_noise(
    shape: tuple[int, ...], generator: Any, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The z of one sampling step, drawn exactly as ``scheduler.step`` / diffusers' ``randn_tensor`` would
    draw it from ``generator`` (same stream), on ``device`` without a host sync.

    Noise from a CPU generator for a CUDA sample goes through pinned memory with a non-blocking
    copy: a plain ``.to("cuda")`` of pageable memory waits for the GPU to finish all queued work
    (one sync per step). PyTorch's caching host allocator keeps each pinned buffer until its copy has
    run, so the host can draw the next step's noise while the GPU works.
    """
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    from_host = generators[0] is not None and generators[0].device.type == "cpu"
    if device.type != "cuda" or not from_host:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype)
    return noise.pin_memory().to(device, non_blocking=True)


class CudaGraphStep:
    """A denoising step ``step(sample, t, noise) -> next sample`` recorded once as a CUDA graph.

    Each call copies its inputs into the graph's fixed input buffers (device to device, queued, no
    sync) and replays the recorded kernels: one launch per step instead of one per operation, and no
    Python between the kernels. The returned tensor is the graph's output buffer, overwritten by the
    next call: clone it to keep it. The step must not read tensors back to the host (capture fails),
    must not draw random numbers (the noise is an input) and must allocate nothing it returns besides
    its output. ``t`` must be a device tensor: a host value would be recorded as a constant (the
    scheduler turns host timesteps into Python-float coefficients). Off CUDA the pipeline runs the
    step directly.
    """

    def __init__(self, step: Callable[..., torch.Tensor], sample: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 warmup_steps: int = 2):
        self.inputs = (sample.clone(), t.clone(), noise.clone())
        # warm up on a side stream (as torch.cuda.graphs documents): lazy initialisation, cuDNN/cuBLAS
        # autotuning and compilation happen here, not inside the capture
        side = torch.cuda.Stream(device=sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                step(*self.inputs)
        torch.cuda.current_stream(sample.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.output = step(*self.inputs)
        except RuntimeError as error:
            raise RuntimeError(
                "capturing the sampling step as a CUDA graph failed. A step that reads a tensor back to the "
                "host cannot be captured (e.g. ScratchDDPMPipeline with a class-conditional ScratchUNet2DModel "
                "checks its labels eagerly: add compile=True, which skips that check). Without CUDA graphs: "
                f"enable_fast_sampling(cuda_graph=False). Cause: {error}"
            ) from error

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, (sample, t, noise)):
            buffer.copy_(value)
        self.graph.replay()
        return self.output
