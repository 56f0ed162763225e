"""benchmarks/sampling_tradeoff.py runs end to end on a tiny pipeline (T = 50, a few images) and resumes."""

from __future__ import annotations

import json

import pytest
from _helpers import table_rows
from _pipeline_fixtures import NUM_TRAIN_TIMESTEPS, scratch_scheduler, tiny_scratch_unet

from benchmarks import sampling_tradeoff
from ddpm_from_scratch.cli.estimate_variance import main as estimate_variance
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline


@pytest.fixture(scope="module")
def script():
    return sampling_tradeoff


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "pipe"
    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).save_pretrained(path)
    return path


@pytest.mark.slow
def test_every_method_and_step_count_gets_a_row_and_a_rerun_resumes(script, saved, tmp_path, capsys):
    assert estimate_variance([str(saved), "--num-images", "8", "--num-timesteps", "10", "--no-progress"]) == 0
    out_json, plot = tmp_path / "tradeoff.json", tmp_path / "plot.png"
    args = [str(saved), "--num-images", "4", "--nll-images", "2", "--steps", "5", str(NUM_TRAIN_TIMESTEPS), "2",
            "--out-json", str(out_json), "--plot", str(plot)]
    capsys.readouterr()
    result = script.main(args)
    output = capsys.readouterr().out
    rows = {(row[0], int(row[1])): row for row in table_rows(output)}
    assert set(rows) == {(m, k) for m in script.METHODS for k in (2, 5, NUM_TRAIN_TIMESTEPS)}
    assert rows[("fixed_small", NUM_TRAIN_TIMESTEPS)][-1] == "baseline"
    assert all(row[-1] in ("yes", "no", "baseline") for row in rows.values())
    assert all(row[2] == "-" for (method, _), row in rows.items() if method == "ddim")  # DDIM has no bound
    assert all("+-" in row[2] for (method, _), row in rows.items() if method != "ddim")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cells = {(c["method"], c["steps"]): c for c in result["cells"]}
    assert cells[("ddim", 2)]["bound"] is None and cells[("analytic", 2)]["bound"]["bits_per_dim"] > 0
    assert result["reference"]["num_images"] == 4 and result["reference"]["frechet_distance_sd"] > 0

    saved_json = json.loads(out_json.read_text())
    resumed = script.main([*args, "--resume"])
    assert resumed["cells"] == saved_json["cells"]  # nothing was measured again
    with pytest.raises(ValueError, match="other settings"):
        script.main([*args[:2], "5", *args[3:], "--resume"])


def test_the_analytic_rows_need_the_statistic_before_anything_runs(script, saved):
    with pytest.raises(ValueError, match="ddpm-estimate-variance"):
        script.main([str(saved), "--num-images", "4", "--steps", "2", "--methods", "analytic"])
