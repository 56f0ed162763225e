"""Everything a short loan of one NVIDIA GPU should check, in one run that writes one report.

    python -m benchmarks.gpu_check --out gpu_check            # one CUDA GPU, at most ~9 minutes
    benchmarks/gpu_check.sh --out gpu_check                   # the same, installing .whl/*.whl first
    python -m benchmarks.gpu_check --smoke --out /tmp/smoke   # CPU, tiny configs, a minute or two

Parts (each in a subprocess of its own with its own time limit, so a part that fails, hangs or
runs long is reported and the others still run):

    environment            device, driver, CUDA, torch / diffusers / accelerate versions
    cuda_tests             `pytest -m cuda`: the tests that need a GPU, with their pass/fail lines
    training_run           `accelerate launch training/train.py --preset digits --mixed_precision bf16`,
                           a few hundred updates, then the saved pipeline is loaded and sampled
    train_bench            training step of the cifar10 UNet, ours vs diffusers' UNet2DModel
                           (bench_train.measure): fp32, + fused AdamW, + bf16 autocast, + channels_last
    sampling_bench         sampling, ours vs diffusers' DDPMPipeline on the same converted weights
                           (bench_sampling.measure): eager, bf16, CUDA graph; CUDA-graph images = eager ones?
    train_bench_compile    the training step again with torch.compile on top of everything
    sampling_bench_compile sampling with torch.compile (diffusers' and ours), CUDA graph + bf16
    projection             wall time of the paper's CIFAR-10 recipe (800k updates of 128 images) on
                           this GPU and on 8, from train_bench's rates (computed here, no subprocess)

environment, cuda_tests and training_run time nothing and run at the same time; the benchmarks then
run one at a time, the compiled ones last (compilation takes minutes), each given at most the time
left of --budget. --smoke runs the same parts on the CPU with tiny configs (digits UNet, a few
steps); parts that need CUDA report "skipped". The report: --out/gpu_check.md and
--out/gpu_check.json. Exit status 1 when a part failed or ran out of time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import describe_device, markdown_table, software_versions

REPO_ROOT = Path(__file__).resolve().parent.parent
PAPER_UPDATES, PAPER_BATCH, GPUS = 800_000, 128, 8  # Ho et al. 2020, appendix B; training/configs/multi_gpu.yaml
GRAPH_TOLERANCE = 1e-4  # as tests/test_performance.py: CUDA-graph samples vs eager ones
STATUSES = ("ok", "skipped", "failed", "timeout")


@dataclass(frozen=True)
class Config:
    """Sizes of one mode (GPU or --smoke)."""

    device: str
    train_preset: str
    train_batch: int
    train_batch_per_gpu: int  # --train_batch_size on each of GPUS GPUs for the paper's global batch
    train_iters: int
    train_rounds: int
    sampling_preset: str
    sampling_batch: int
    sampling_steps: int
    sampling_rounds: int
    run_updates: int
    run_batch: int
    run_grid_images: int
    run_grid_steps: int
    limits_s: dict[str, int]
    budget_s: int


GPU = Config("cuda", "cifar10", PAPER_BATCH, PAPER_BATCH // GPUS, 10, 3, "cifar10", 256, 100, 1,
             300, 64, 16, 1000,
             {"environment": 30, "cuda_tests": 100, "training_run": 120, "train_bench": 80, "sampling_bench": 80,
              "train_bench_compile": 240, "sampling_bench_compile": 130},
             540)  # measured on an H200: all parts in about 470 s (compiling the training step: about 200 s)
SMOKE = Config("cpu", "digits", 8, 2, 1, 1, "digits", 2, 3, 1,
               4, 8, 4, 3,
               {"environment": 90, "cuda_tests": 240, "training_run": 240, "train_bench": 180, "sampling_bench": 150,
                "train_bench_compile": 60, "sampling_bench_compile": 60},
               480)  # a minute or two on 2 idle cores; the limits leave room for a busy machine


class Skip(Exception):
    """Raised by a part that cannot run here; its message says why."""


class Failed(Exception):
    """Raised by a part whose check failed, with what it measured (still reported)."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


# ---- the parts (each runs in its own subprocess: `gpu_check.py --part NAME`) ----------------------


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def part_environment(config: Config, work: Path) -> dict[str, Any]:
    import platform

    import torch

    device = torch.device(config.device)
    result: dict[str, Any] = {
        "device": describe_device(device),
        "software": software_versions(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in ("diffusers", "accelerate", "datasets", "transformers",
                                                       "huggingface-hub", "safetensors")},
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        result.update(gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                      compute_capability=f"{properties.major}.{properties.minor}",
                      cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported(),
                      driver=_nvidia_driver())
    return result


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvidia_driver() -> str | None:
    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return answer.stdout.strip().splitlines()[0] if answer.returncode == 0 and answer.stdout.strip() else None


PYTEST_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b.*")
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b")


def part_cuda_tests(config: Config, work: Path) -> dict[str, Any]:
    """`pytest -m cuda`; without CUDA the same selection runs and every test skips itself."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider", "tests"]
    answer = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    lines = answer.stdout.splitlines()
    counts: dict[str, int] = {}
    for line in reversed(lines):  # the last "N passed, M deselected in Xs" line
        found = PYTEST_COUNT.findall(line)
        if found:
            counts = {("errors" if kind == "error" else kind): int(n) for n, kind in found}
            break
    result = {"command": "python " + " ".join(command[1:]), "returncode": answer.returncode, "counts": counts,
              "outcomes": [line for line in lines if PYTEST_OUTCOME.match(line)],
              "output_tail": "\n".join(lines[-40:]) + ("\n" + answer.stderr[-2000:] if answer.stderr else "")}
    if answer.returncode == 5 or not set(counts) - {"deselected"}:
        raise Failed("pytest -m cuda selected no test: the CUDA tests must carry @pytest.mark.cuda", result)
    if answer.returncode != 0:
        raise Failed(f"pytest -m cuda exited {answer.returncode}: {counts}", result)
    ran = counts.get("passed", 0) + counts.get("xfailed", 0)
    if not ran and config.device != "cuda":
        raise Skip(f"no CUDA: the {counts.get('skipped', 0)} tests marked cuda all skip themselves here")
    return result


def part_training_run(config: Config, work: Path) -> dict[str, Any]:
    """A real run through `accelerate launch training/train.py`, then the saved pipeline loads and samples."""
    import torch

    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    out = work / "training_run"
    on_gpu = config.device == "cuda"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "bf16", "--dynamo_backend", "no"] + ([] if on_gpu else ["--cpu"])
    train = ["training/train.py", "--preset", "digits", "--mixed_precision", "bf16",
             "--max_train_steps", str(config.run_updates), "--train_batch_size", str(config.run_batch),
             "--checkpointing_steps", str(config.run_updates), "--logging_steps", str(max(1, config.run_updates // 10)),
             "--num_grid_images", str(config.run_grid_images), "--eval_batch_size", str(config.run_grid_images),
             "--grid_inference_steps", str(config.run_grid_steps), "--report_to", "none",
             "--lr_warmup_steps", str(min(100, config.run_updates // 2)), "--output_dir", str(out)]
    started = time.perf_counter()
    answer = subprocess.run(launch + train, cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    launch_s = time.perf_counter() - started
    if answer.returncode != 0:
        raise RuntimeError(f"accelerate launch exited {answer.returncode}\n{answer.stderr[-6000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    device = torch.device(config.device)
    pipeline = ScratchDDPMPipeline.from_pretrained(out).to(device)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.as_tensor(pipeline(batch_size=4, num_inference_steps=min(20, config.run_grid_steps),
                                      generator=generator, output_type="pt").images)
    if images.shape != (4, 1, 8, 8) or not torch.isfinite(images).all():
        raise RuntimeError(f"the saved pipeline sampled {tuple(images.shape)} images, finite: {bool(torch.isfinite(images).all())}")
    minutes = metrics.get("training_minutes") or 0  # rounded to 0.01 min: 0 for a smoke run
    return {"command": "accelerate launch " + " ".join(launch[3:] + train), "launch_seconds": round(launch_s, 1),
            "metrics": metrics, "updates_per_second": round(metrics["train_steps"] / (minutes * 60), 1) if minutes else None,
            "reloaded_sample_shape": list(images.shape), "mixed_precision_in_log": "mixed precision bf16" in answer.stderr}


def _bench_settings(config: Config):
    import torch
    from benchmarks.bench_train import Settings, ladder

    return ladder(Settings(torch.device(config.device), "no", channels_last=False, compile=False, fused_adam=False))


def _train_rows(config: Config, preset: str, batch: int, variants: list, iters: int) -> list[dict[str, Any]]:
    from benchmarks.bench_train import measure

    warmup = 3 if any(v.compile for v in variants) else 2
    results = measure(preset, batch, variants, warmup, iters, config.train_rounds, memory=True)
    rows = []
    for variant, result in zip(variants, results):
        ours, theirs = result["ours"], result["diffusers"]
        rows.append({"preset": preset, "batch": batch, "settings": variant.describe(),
                     "options": {f.name: getattr(variant, f.name) for f in dataclasses.fields(variant) if f.name != "device"},
                     "ours_images_per_s": ours["rate"], "diffusers_images_per_s": theirs["rate"],
                     "speed_ratio": ours["rate"] / theirs["rate"], "ours_peak_mib": ours["peak"],
                     "diffusers_peak_mib": theirs["peak"], "memory_ratio": ours["peak"] / theirs["peak"]})
    return rows


def _trainer_settings(variants: list):
    """The ladder's row that is what training/train.py runs (fused AdamW, bf16 autocast, nothing else)."""
    return next(v for v in variants if v.fused_adam and v.mixed_precision == "bf16" and not v.channels_last
                and not v.compile)


def part_train_bench(config: Config, work: Path) -> dict[str, Any]:
    variants = [v for v in _bench_settings(config) if not v.compile]
    rows = _train_rows(config, config.train_preset, config.train_batch, variants, config.train_iters)
    # the per-GPU batch of an 8-GPU run with the paper's global batch, with the trainer's settings
    rows += _train_rows(config, config.train_preset, config.train_batch_per_gpu, [_trainer_settings(variants)],
                        2 * config.train_iters)
    return {"rows": rows}


def part_train_bench_compile(config: Config, work: Path) -> dict[str, Any]:
    if config.device != "cuda":
        raise Skip("--smoke: torch.compile takes minutes on a small CPU (the same code runs on the GPU)")
    variants = [v for v in _bench_settings(config) if v.compile]
    return {"rows": _train_rows(config, config.train_preset, config.train_batch, variants, config.train_iters)}


COMPILED_SAMPLING_ROWS = ("diffusers DDPMPipeline, torch.compile(unet)", "ours, compile",
                          "ours, compile + CUDA graph + bf16 autocast")


def _sampling(config: Config, rows: list) -> dict[str, Any]:
    import torch
    from benchmarks.bench_sampling import build_pipelines, measure

    device = torch.device(config.device)
    generator = "device" if device.type == "cuda" else "cpu"  # no host-drawn noise on the GPU
    pipelines = build_pipelines(config.sampling_preset, rows, device)
    images, seconds = measure(pipelines, rows, config.sampling_batch, config.sampling_steps, config.sampling_rounds,
                              device, generator)
    reference = rows[0].name
    table = []
    for row in rows:
        evals = config.sampling_batch * config.sampling_steps / seconds[row.name]
        table.append({"pipeline": row.name, "unet_evals_per_s": evals, "images_per_s_1000_steps": evals / 1000,
                      "speed_vs_first": seconds[reference] / seconds[row.name],
                      "max_pixel_difference_vs_first": (images[row.name] - images[reference]).abs().max().item()})
    return {"preset": config.sampling_preset, "batch": config.sampling_batch, "steps": config.sampling_steps,
            "generator": generator, "rows": table, "images": images}


def part_sampling_bench(config: Config, work: Path) -> dict[str, Any]:
    from benchmarks.bench_sampling import ROWS

    rows = [row for row in ROWS if not row.fast.get("compile") and (config.device == "cuda" or not row.cuda_only)]
    result = _sampling(config, rows)
    images = result.pop("images")
    checks = []
    for row in rows:  # each CUDA-graph row against the eager row with the same other options
        if row.fast.get("cuda_graph"):
            eager = next(r for r in rows if r.ours and r.fast == {k: v for k, v in row.fast.items() if k != "cuda_graph"})
            difference = (images[row.name] - images[eager.name]).abs().max().item()
            checks.append({"graph": row.name, "eager": eager.name, "max_pixel_difference": difference,
                           "equal": difference <= GRAPH_TOLERANCE})
    result["cuda_graph_checks"] = checks
    result["cuda_graph_check"] = ("skipped: no CUDA" if not checks else
                                  "ok" if all(c["equal"] for c in checks) else "failed")
    if result["cuda_graph_check"] == "failed":
        raise Failed(f"CUDA-graph samples differ from eager ones by more than {GRAPH_TOLERANCE}", result)
    return result


def part_sampling_bench_compile(config: Config, work: Path) -> dict[str, Any]:
    if config.device != "cuda":
        raise Skip("--smoke: torch.compile takes minutes on a small CPU (the same code runs on the GPU)")
    from benchmarks.bench_sampling import ROWS

    by_name = {row.name: row for row in ROWS}
    missing = [name for name in COMPILED_SAMPLING_ROWS if name not in by_name]
    if missing:
        raise RuntimeError(f"bench_sampling.ROWS has no rows named {missing}; update COMPILED_SAMPLING_ROWS")
    result = _sampling(config, [ROWS[0]] + [by_name[name] for name in COMPILED_SAMPLING_ROWS])
    result.pop("images")
    return result


PARTS: dict[str, Callable[[Config, Path], dict[str, Any]]] = {
    "environment": part_environment,
    "cuda_tests": part_cuda_tests,
    "training_run": part_training_run,
    "train_bench": part_train_bench,
    "sampling_bench": part_sampling_bench,
    "train_bench_compile": part_train_bench_compile,
    "sampling_bench_compile": part_sampling_bench_compile,
}
# parts that time nothing run together first; then each benchmark alone, the compiled ones last
SCHEDULE = [["environment", "cuda_tests", "training_run"], ["train_bench"], ["sampling_bench"],
            ["train_bench_compile"], ["sampling_bench_compile"]]
TITLES = {
    "environment": "Environment",
    "cuda_tests": "CUDA tests (pytest -m cuda)",
    "training_run": "Training run (accelerate launch training/train.py --preset digits, bf16)",
    "train_bench": "Training step, ours vs diffusers' UNet2DModel",
    "sampling_bench": "Sampling, ours vs diffusers' DDPMPipeline (same weights)",
    "train_bench_compile": "Training step with torch.compile",
    "sampling_bench_compile": "Sampling with torch.compile",
    "projection": "Projected wall time of the paper's CIFAR-10 recipe",
}


def run_part_here(name: str, config: Config, work: Path, result_path: Path) -> int:
    """The child's side: run one part and write {status, message, result} to result_path."""
    from ddpm_from_scratch.saving.atomic_io import write_json_atomic

    try:
        record = {"status": "ok", "message": "", "result": PARTS[name](config, work)}
    except Skip as skip:
        record = {"status": "skipped", "message": str(skip), "result": {}}
    except Failed as failure:
        record = {"status": "failed", "message": str(failure), "result": failure.result}
    except Exception as error:  # noqa: BLE001 - reported in the report, the other parts still run
        traceback.print_exc()
        record = {"status": "failed", "message": f"{type(error).__name__}: {error}", "result": {}}
    write_json_atomic(record, result_path)
    return 0 if record["status"] != "failed" else 1


# ---- the parent: schedule, time limits, report -----------------------------------------------------


@dataclass
class Running:
    name: str
    process: subprocess.Popen
    started: float
    limit_s: float
    log: Path
    result: Path


def _start(name: str, smoke: bool, work: Path, limit_s: float) -> Running:
    log, result = work / f"{name}.log", work / f"{name}.json"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--part", name, "--work", str(work),
               "--result", str(result)] + (["--smoke"] if smoke else [])
    # the checkout first on the path: the check tests this tree, also where another copy is installed
    path = os.pathsep.join([str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:  # a file, not a pipe: a chatty part cannot block on a full pipe
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own group: a timeout ends its children too
    return Running(name, process, time.monotonic(), limit_s, log, result)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _collect(run: Running, timed_out: bool) -> dict[str, Any]:
    seconds = round(time.monotonic() - run.started, 1)
    record: dict[str, Any] = {"status": "failed", "message": "", "result": {}}
    if timed_out:
        record["status"], record["message"] = "timeout", f"stopped after its limit of {run.limit_s:.0f}s"
    elif run.result.is_file():
        record.update(json.loads(run.result.read_text()))
    else:
        record["message"] = f"exited {run.process.returncode} without a result"
    record.update(seconds=seconds, limit_s=round(run.limit_s))
    if record["status"] in ("failed", "timeout"):
        record["log_tail"] = _tail(run.log)
    return record


def _kill(process: subprocess.Popen, grace_s: float = 5) -> None:
    """SIGTERM to the part's process group (launchers pass it on to workers in sessions of their own), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def run_parts(names: list[str], smoke: bool, work: Path, budget_s: float, limits: dict[str, int],
              log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Run the SCHEDULE's parts that are in ``names``, each within its limit and the budget left."""
    deadline = time.monotonic() + budget_s
    records: dict[str, dict[str, Any]] = {}
    for group in SCHEDULE:
        group = [name for name in group if name in names]
        if not group:
            continue
        left = deadline - time.monotonic()
        if left < 5:
            records.update({name: {"status": "skipped", "message": f"no time left of --budget {budget_s:.0f}s",
                                   "result": {}, "seconds": 0, "limit_s": 0} for name in group})
            continue
        running = [_start(name, smoke, work, min(limits[name], left)) for name in group]
        log("started " + ", ".join(f"{r.name} (limit {r.limit_s:.0f}s)" for r in running))
        while running:
            time.sleep(0.2)
            for run in list(running):
                timed_out = run.process.poll() is None and time.monotonic() - run.started > run.limit_s
                if timed_out:
                    _kill(run.process)
                if run.process.poll() is not None:
                    records[run.name] = _collect(run, timed_out)
                    running.remove(run)
                    log(f"{run.name}: {records[run.name]['status']} ({records[run.name]['seconds']}s)"
                        + (f" {records[run.name]['message'].splitlines()[0]}" if records[run.name]["message"] else ""))
    return records


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days ({hours:.0f} h)" if hours >= 48 else f"{hours:.1f} h"


def projection(train_bench: dict[str, Any], train_bench_compile: dict[str, Any] | None = None,
               updates: int = PAPER_UPDATES, batch: int = PAPER_BATCH, gpus: int = GPUS) -> dict[str, Any]:
    """Wall time of ``updates`` updates of ``batch`` images from the measured training-step rates.

    One GPU: updates * batch / (ours images/s at batch, trainer's settings). ``gpus`` GPUs with
    --multi_gpu and batch / gpus images per GPU, two ways: (a) linear scaling, the one-GPU time / gpus;
    (b) each update takes one step of batch / gpus images on one GPU, with the gradient all-reduce
    free (hidden behind the backward pass). None counts data loading, logging, checkpoints or sample grids.
    """
    rows = train_bench["rows"]
    per_gpu_batch = batch // gpus
    full = next(r for r in rows if r["batch"] == batch and r["options"]["fused_adam"]
                and r["options"]["mixed_precision"] == "bf16" and not r["options"]["channels_last"]
                and not r["options"]["compile"])
    small = next((r for r in rows if r["batch"] == per_gpu_batch), None)
    one_gpu_s = updates * batch / full["ours_images_per_s"]
    result: dict[str, Any] = {
        "recipe": f"{updates} updates x {batch} images (cifar10 preset)",
        "settings": full["settings"] + " (what training/train.py --mixed_precision bf16 runs)",
        "images_per_s_one_gpu": full["ours_images_per_s"],
        "one_gpu_seconds": one_gpu_s,
        "multi_gpu_linear_seconds": one_gpu_s / gpus,
        "assumptions": [
            f"{gpus} GPUs, linear scaling: {gpus}x the one-GPU images/s at batch {batch}, i.e. the gradient "
            f"all-reduce costs nothing and a GPU is as busy with {per_gpu_batch} images as with {batch}; "
            "the most optimistic figure",
            f"{gpus} GPUs, per-GPU step: every update costs one step of {per_gpu_batch} images on one GPU "
            "(measured), with the gradient all-reduce (35.7M float32 = 143 MB) hidden behind the backward pass; "
            "still a lower bound",
            "every figure excludes data loading, logging, checkpoints and the sample grids (80 grids of "
            "64 images x 1000 steps in the cifar10 preset)",
        ],
    }
    if small is not None:
        result["images_per_s_per_gpu_batch"] = small["ours_images_per_s"]
        result["multi_gpu_per_step_seconds"] = updates * per_gpu_batch / small["ours_images_per_s"]
    fastest = max(rows + ((train_bench_compile or {}).get("rows") or []), key=lambda r: r["ours_images_per_s"])
    if fastest["batch"] == batch and fastest is not full:
        result["fastest_settings"] = fastest["settings"]
        result["fastest_one_gpu_seconds"] = updates * batch / fastest["ours_images_per_s"]
    return result


def projection_record(records: dict[str, dict[str, Any]], smoke: bool) -> dict[str, Any]:
    bench = records.get("train_bench", {})
    if smoke:
        return {"status": "skipped", "message": "no CUDA: the projection needs the cifar10 UNet's rate on a GPU",
                "result": {}, "seconds": 0, "limit_s": 0}
    if bench.get("status") != "ok":
        return {"status": "skipped", "message": "train_bench did not finish", "result": {}, "seconds": 0, "limit_s": 0}
    try:
        compiled = records.get("train_bench_compile", {})
        result = projection(bench["result"], compiled.get("result") if compiled.get("status") == "ok" else None)
    except Exception as error:  # noqa: BLE001
        return {"status": "failed", "message": f"{type(error).__name__}: {error}", "result": {}, "seconds": 0,
                "limit_s": 0}
    return {"status": "ok", "message": "", "result": result, "seconds": 0, "limit_s": 0}


# ---- markdown ---------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    return markdown_table(headers, rows).splitlines()


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.2g}"


def _render_environment(result: dict[str, Any]) -> list[str]:
    rows = [[key, value] for key, value in result.items() if key != "packages"]
    rows += [[name, version] for name, version in result.get("packages", {}).items()]
    return _table(["", ""], rows)


def _render_cuda_tests(result: dict[str, Any]) -> list[str]:
    lines = [f"`{result['command']}`: exit {result['returncode']}, {result['counts']}", "", "```"]
    lines += (result["outcomes"] or ["(no per-test lines)"]) + ["```"]
    return lines + (["", "Output:", "", "```", result["output_tail"], "```"] if result["returncode"] != 0 else [])


def _render_training_run(result: dict[str, Any]) -> list[str]:
    metrics = result["metrics"]
    rows = [["command", f"`{result['command']}`"], ["updates", metrics.get("train_steps")],
            ["images seen", metrics.get("images_seen")], ["training minutes", metrics.get("training_minutes")],
            ["updates/s (over training minutes: set-up and loop)", result["updates_per_second"]],
            ["final loss", _number(metrics["final_loss"]) if metrics.get("final_loss") is not None else None],
            ["launch wall s (all of it)", result["launch_seconds"]],
            ["saved pipeline reloaded and sampled", f"images {result['reloaded_sample_shape']}"]]
    rows += [[key, value] for key, value in metrics.items() if key.startswith("digits")]
    return _table(["", ""], rows)


def _render_train_bench(records: dict[str, dict[str, Any]]) -> list[str]:
    rows = [row for name in ("train_bench", "train_bench_compile")
            for row in records.get(name, {}).get("result", {}).get("rows", [])]
    if not rows:
        return []
    main_batch = rows[0]["batch"]
    rows.sort(key=lambda r: r["batch"] != main_batch)  # the per-GPU batch size last (a stable sort)
    first = rows[0]["ours_images_per_s"]
    return ["Forward, backward, clip, AdamW, EMA on a fixed batch (benchmarks/bench_train.py); peak = tensor memory "
            "of one step beyond weights and optimizer state.", ""] + _table(
        ["preset", "batch", "settings", "ours img/s", "diffusers img/s", "speed ratio (ours / diffusers)",
         "ours peak MiB", "diffusers peak MiB", "memory ratio", "ours vs first row"],
        [[r["preset"], r["batch"], r["settings"], _number(r["ours_images_per_s"]), _number(r["diffusers_images_per_s"]),
          f"{r['speed_ratio']:.2f}x", _number(r["ours_peak_mib"]), _number(r["diffusers_peak_mib"]),
          f"{r['memory_ratio']:.2f}", f"{r['ours_images_per_s'] / first:.2f}x" if r["batch"] == main_batch else "-"]
         for r in rows])


def _render_sampling(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['preset']} UNet, batch {result['batch']}, {result['steps']} steps per timed call, "
             f"{result['generator']} generator (benchmarks/bench_sampling.py).", ""]
    first = result["rows"][0]["pipeline"]
    lines += _table(["pipeline", "UNet evals/s", "images/s (1000-step chain)", f"speed vs {first}",
                     f"largest pixel difference from {first}"],
                    [[r["pipeline"], _number(r["unet_evals_per_s"]), _number(r["images_per_s_1000_steps"]),
                      f"{r['speed_vs_first']:.2f}x", f"{r['max_pixel_difference_vs_first']:.1e}"] for r in result["rows"]])
    if "cuda_graph_check" in result:
        lines += ["", f"CUDA-graph samples equal eager ones (same noise, tolerance {GRAPH_TOLERANCE}): "
                  f"**{result['cuda_graph_check']}**"]
        lines += [f"- {c['graph']} vs {c['eager']}: {c['max_pixel_difference']:.1e}" for c in result["cuda_graph_checks"]]
    return lines


def _render_projection(result: dict[str, Any]) -> list[str]:
    rows = [["1 GPU", _duration(result["one_gpu_seconds"]), f"{_number(result['images_per_s_one_gpu'])} img/s measured"],
            [f"{GPUS} GPUs, linear scaling", _duration(result["multi_gpu_linear_seconds"]), "assumed"]]
    if "multi_gpu_per_step_seconds" in result:
        rows.append([f"{GPUS} GPUs, per-GPU step of {PAPER_BATCH // GPUS}", _duration(result["multi_gpu_per_step_seconds"]),
                     f"{_number(result['images_per_s_per_gpu_batch'])} img/s per GPU measured"])
    if "fastest_one_gpu_seconds" in result:
        rows.append([f"1 GPU with {result['fastest_settings']} (not what train.py runs)",
                     _duration(result["fastest_one_gpu_seconds"]), ""])
    return ([f"{result['recipe']}, {result['settings']}.", ""] + _table(["", "wall time", "from"], rows)
            + [""] + [f"- Assumption: {a}" for a in result["assumptions"]])


def render_markdown(report: dict[str, Any]) -> str:
    records = report["parts"]
    env = records.get("environment", {}).get("result", {})
    lines = [f"# GPU check ({'smoke: CPU, tiny configs' if report['smoke'] else 'one GPU'})", "",
             f"Run {report['started_utc']}, {report['wall_s']:.0f}s in all (budget {report['budget_s']:.0f}s) on "
             f"{env.get('device', 'an unknown device')}; {env.get('software', '')}."]
    if report["smoke"]:
        lines += ["", "Smoke mode: tiny configs on the CPU to keep the script working; no figure here says anything "
                  "about speed on a GPU."]
    lines += ["", "## Summary", ""] + _table(
        ["part", "status", "seconds (limit)", "note"],
        [[name, r["status"], f"{r['seconds']} ({r['limit_s']})" if r["limit_s"] else "-",
          r["message"].splitlines()[0] if r["message"] else ""] for name, r in records.items()])
    renderers: dict[str, Callable[[], list[str]]] = {
        "environment": lambda: _render_environment(records["environment"]["result"]),
        "cuda_tests": lambda: _render_cuda_tests(records["cuda_tests"]["result"]),
        "training_run": lambda: _render_training_run(records["training_run"]["result"]),
        "train_bench": lambda: _render_train_bench(records),
        "sampling_bench": lambda: _render_sampling(records["sampling_bench"]["result"]),
        "sampling_bench_compile": lambda: _render_sampling(records["sampling_bench_compile"]["result"]),
        "projection": lambda: _render_projection(records["projection"]["result"]),
    }
    for name, record in records.items():
        if name == "train_bench_compile" and record["status"] == "ok":
            continue  # its row is in train_bench's table
        lines += ["", f"## {TITLES[name]}", ""]
        if name in renderers and (record["result"] or name == "train_bench"):
            try:
                lines += renderers[name]()
            except Exception as error:  # noqa: BLE001 - the numbers are in the JSON file still
                lines += [f"(this section could not be rendered: {type(error).__name__}: {error}; see gpu_check.json)"]
        if record["status"] != "ok":
            lines += ["", f"**{record['status']}**: {record['message']}"]
        if record.get("log_tail"):
            lines += ["", "```", record["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for gpu_check.md and gpu_check.json (required)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny configs (keeps the script working)")
    parser.add_argument("--parts", default=None, help=f"comma-separated subset of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all parts (default: GPU 540, smoke 480)")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = SMOKE if args.smoke else GPU
    if args.part:
        return run_part_here(args.part, config, Path(args.work), Path(args.result))
    if not args.out:
        parser.error("--out is required")

    names = list(PARTS) if args.parts is None else [name.strip() for name in args.parts.split(",")]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; allowed values: {', '.join(PARTS)}")
    if not args.smoke and not _cuda_available():
        parser.error("no CUDA GPU here; --smoke runs the CPU mode")
    from ddpm_from_scratch.saving.atomic_io import atomic_write, write_json_atomic

    budget = args.budget if args.budget is not None else config.budget_s
    started, started_utc = time.monotonic(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def log(message: str) -> None:
        print(f"[gpu_check {time.monotonic() - started:5.0f}s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        records = run_parts(names, args.smoke, Path(work), budget, config.limits_s, log)
    ordered = {name: records[name] for group in SCHEDULE for name in group if name in records}
    if "train_bench" in names:
        ordered["projection"] = projection_record(records, args.smoke)
    report = {"smoke": args.smoke, "started_utc": started_utc, "wall_s": time.monotonic() - started,
              "budget_s": budget, "config": dataclasses.asdict(config), "parts": ordered}
    out = Path(args.out)
    write_json_atomic(report, out / "gpu_check.json")
    with atomic_write(out / "gpu_check.md", "w") as handle:
        handle.write(render_markdown(report))
    log(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    bad = [name for name, record in ordered.items() if record["status"] in ("failed", "timeout")]
    if bad:
        log(f"not ok: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
