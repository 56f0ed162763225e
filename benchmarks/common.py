"""Shared pieces of the benchmark scripts: device description, timing, table printing."""

from __future__ import annotations

import platform
import time
from typing import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile


def describe_device(device: torch.device) -> str:
    """A one-line name of where a benchmark ran, for the tables in docs/performance.md."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of ``fn`` over ``iters`` timed calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table, as text (no final newline)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A GitHub-markdown table on stdout."""
    print(markdown_table(headers, rows))


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Most tensor memory alive at once during one call of ``fn``, beyond what was alive before it (MiB).

    CUDA: torch.cuda.max_memory_allocated. CPU: the running sum of the allocation/free events that
    torch.profiler(profile_memory=True) records (exact tensor bytes; allocator overhead not included).
    Call ``fn`` once before measuring, so that lazy state (optimizer moments, compiled code) exists.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # "[memory]" events carry +bytes for each allocation and -bytes for each free
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def software_versions() -> str:
    """diffusers and Python versions, for the tables' captions (describe_device names torch's)."""
    import diffusers

    return f"diffusers {diffusers.__version__}, Python {platform.python_version()}"
