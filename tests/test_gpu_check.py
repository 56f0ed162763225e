"""`python -m benchmarks.gpu_check`: its CPU mode (--smoke) writes the report with every part, and the parts'
time limits hold. What it measures on a GPU is not checked here (CI has no GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ON_CPU = ("environment", "cuda_tests", "training_run", "train_bench", "sampling_bench")


@pytest.mark.slow
def test_smoke_writes_one_markdown_and_one_json_with_every_part(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert set(parts) == {*gpu_check.PARTS, "projection"}
    statuses = {name: record["status"] for name, record in parts.items()}
    assert set(statuses.values()) <= set(gpu_check.STATUSES)
    markdown = (out / "gpu_check.md").read_text()
    for name, status in statuses.items():
        assert f"| {name} | {status} |" in markdown
    # every part that can run on a CPU ran; the others say why not
    problems = {name: parts[name]["message"] for name in RUN_ON_CPU if statuses[name] not in ("ok", "skipped")}
    assert not problems, f"{problems}\n{result.stdout[-3000:]}"
    assert all(statuses[name] == "ok" for name in RUN_ON_CPU if name != "cuda_tests")
    assert statuses["cuda_tests"] == "skipped" and "no CUDA" in parts["cuda_tests"]["message"]
    for name in ("train_bench_compile", "sampling_bench_compile", "projection"):
        assert statuses[name] == "skipped" and parts[name]["message"]
    assert result.returncode == 0, result.stdout[-3000:]

    bench = parts["train_bench"]["result"]["rows"]
    assert [row["settings"] for row in bench[:4]] == ["fp32, foreach AdamW", "fp32, fused AdamW",
                                                     "bf16 autocast, fused AdamW",
                                                     "bf16 autocast, fused AdamW, channels_last"]
    assert all(row["ours_images_per_s"] > 0 and row["diffusers_images_per_s"] > 0 for row in bench)
    sampling = {row["pipeline"]: row for row in parts["sampling_bench"]["result"]["rows"]}
    assert sampling["ours"]["max_pixel_difference_vs_first"] < 1e-4  # the same function as diffusers'
    assert parts["sampling_bench"]["result"]["cuda_graph_check"] == "skipped: no CUDA"
    assert parts["training_run"]["result"]["reloaded_sample_shape"] == [4, 1, 8, 8]
    assert parts["training_run"]["result"]["mixed_precision_in_log"]


@pytest.mark.slow
def test_a_part_over_its_limit_is_stopped_and_the_others_still_report(tmp_path):
    limits = {**gpu_check.SMOKE.limits_s, "train_bench": 1}
    records = gpu_check.run_parts(["environment", "train_bench"], True, tmp_path, 300, limits, lambda message: None)
    assert records["environment"]["status"] == "ok"
    assert records["train_bench"]["status"] == "timeout" and records["train_bench"]["seconds"] < 30


def test_projection_arithmetic():
    def row(batch, rate, **options):
        options = {"fused_adam": True, "mixed_precision": "bf16", "channels_last": False, "compile": False, **options}
        return {"batch": batch, "ours_images_per_s": rate, "settings": str(options), "options": options}

    bench = {"rows": [row(128, 500.0, fused_adam=False, mixed_precision="no"), row(128, 1000.0),
                      row(128, 1200.0, channels_last=True), row(16, 400.0)]}
    compiled = {"rows": [row(128, 2000.0, channels_last=True, compile=True)]}
    result = gpu_check.projection(bench, compiled)
    assert result["one_gpu_seconds"] == pytest.approx(800_000 * 128 / 1000)
    assert result["multi_gpu_linear_seconds"] == pytest.approx(800_000 * 128 / 1000 / 8)
    assert result["multi_gpu_per_step_seconds"] == pytest.approx(800_000 * 16 / 400)
    assert result["fastest_one_gpu_seconds"] == pytest.approx(800_000 * 128 / 2000)
    assert any("linear" in line for line in result["assumptions"])


def test_a_gpu_report_renders_every_section():
    """The GPU-only sections (compiled rows, CUDA-graph check, projection) on made-up numbers."""

    def train_row(batch, rate, **options):
        options = {"fused_adam": True, "mixed_precision": "bf16", "channels_last": False, "compile": False, **options}
        return {"preset": "cifar10", "batch": batch, "settings": f"settings {options}", "options": options,
                "ours_images_per_s": rate, "diffusers_images_per_s": rate / 1.5, "speed_ratio": 1.5,
                "ours_peak_mib": 900.0, "diffusers_peak_mib": 1000.0, "memory_ratio": 0.9}

    def sampling(names):
        rows = [{"pipeline": name, "unet_evals_per_s": 5e4, "images_per_s_1000_steps": 50.0, "speed_vs_first": 2.0,
                 "max_pixel_difference_vs_first": 1e-6} for name in names]
        return {"preset": "cifar10", "batch": 256, "steps": 100, "generator": "device", "rows": rows}

    ok = {"status": "ok", "message": "", "seconds": 1.0, "limit_s": 10}
    bench = {"rows": [train_row(128, 1000.0, fused_adam=False, mixed_precision="no"), train_row(128, 3000.0),
                      train_row(16, 900.0)]}
    compiled = {"rows": [train_row(128, 6000.0, channels_last=True, compile=True)]}
    eager = {**sampling(["diffusers DDPMPipeline", "ours", "ours, CUDA graph"]), "cuda_graph_check": "ok",
             "cuda_graph_checks": [{"graph": "ours, CUDA graph", "eager": "ours", "max_pixel_difference": 0.0,
                                    "equal": True}]}
    parts = {
        "environment": {**ok, "result": {"device": "NVIDIA H200", "driver": "580.0", "packages": {"diffusers": "0.42.1"}}},
        "cuda_tests": {**ok, "result": {"command": "python -m pytest -m cuda", "returncode": 0,
                                        "counts": {"passed": 3}, "outcomes": ["PASSED tests/x.py::test_y"],
                                        "output_tail": ""}},
        "training_run": {**ok, "result": {"command": "accelerate launch ...", "launch_seconds": 40.0,
                                          "metrics": {"train_steps": 300, "final_loss": 0.05, "training_minutes": 0.5},
                                          "updates_per_second": 10.0, "reloaded_sample_shape": [4, 1, 8, 8],
                                          "mixed_precision_in_log": True}},
        "train_bench": {**ok, "result": bench},
        "sampling_bench": {**ok, "result": eager},
        "train_bench_compile": {**ok, "result": compiled},
        "sampling_bench_compile": {"status": "timeout", "message": "stopped after its limit of 170s", "seconds": 170,
                                   "limit_s": 170, "result": {}, "log_tail": "compiling..."},
    }
    parts["projection"] = {**ok, "result": gpu_check.projection(bench, compiled)}
    markdown = gpu_check.render_markdown({"smoke": False, "started_utc": "now", "wall_s": 400.0, "budget_s": 440,
                                          "parts": parts})
    assert "could not be rendered" not in markdown
    assert "| cifar10 | 128 | settings" in markdown and "6.00x" in markdown  # the compiled row, vs the first
    assert "CUDA-graph samples equal eager ones" in markdown and "**ok**" in markdown
    assert "**timeout**: stopped after its limit of 170s" in markdown
    assert "8 GPUs, linear scaling" in markdown and "Assumption:" in markdown
