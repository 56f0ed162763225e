"""The benchmark scripts run end to end (tiny settings, CPU) and print the tables the docs quote.

No timing is asserted here (timings live in the scripts' output); what is checked is that both
models/pipelines ran, and that the sampling benchmark compares the same function (same images).
"""

from __future__ import annotations

from _helpers import table_rows

from benchmarks import bench_sampling, bench_train, profile_train_step


def test_bench_train_prints_both_models_with_ratios(capsys):
    bench_train.main(
        ["--preset", "digits", "--batch-size", "2", "--iters", "1", "--rounds", "1", "--warmup", "1",
         "--mixed-precision", "bf16", "--channels-last"]
    )
    output = capsys.readouterr().out
    assert "Training step (forward, backward, clip, AdamW, EMA) on CPU" in output
    [row] = table_rows(output)
    preset, batch, settings, ours, theirs, ratio, ours_mib, theirs_mib, memory_ratio = row
    assert (preset, batch, settings) == ("digits", "2", "bf16 autocast, fused AdamW, channels_last")
    assert float(ours) > 0 and float(theirs) > 0 and ratio.endswith("x")
    assert float(ours_mib) > 0 and float(theirs_mib) > 0


def test_bench_sampling_compares_the_same_function(capsys):
    # rows 0, 2, 4: diffusers' DDPMPipeline, ours, ours with bf16 autocast
    bench_sampling.main(
        ["--preset", "digits", "--batch-size", "2", "--steps", "3", "--rounds", "1", "--rows", "0,2,4"]
    )
    rows = {row[0]: row for row in table_rows(capsys.readouterr().out)}
    assert list(rows) == ["diffusers DDPMPipeline", "ours", "ours, bf16 autocast"]
    assert float(rows["ours"][-1]) < 1e-4  # converted weights + our scheduler: diffusers' images
    assert float(rows["ours, bf16 autocast"][-1]) > 0  # autocast really ran in bf16


def test_profile_train_step_times_each_phase_of_both_models(capsys):
    profile_train_step.main(["--preset", "digits", "--batch-size", "2", "--steps", "1", "--top", "3"])
    output = capsys.readouterr().out
    summary = table_rows(output)[-4:]  # the summary table comes last
    assert [row[0] for row in summary] == ["ours, fp32, foreach AdamW", "diffusers, fp32, foreach AdamW",
                                           "ours, bf16 autocast, foreach AdamW", "diffusers, bf16 autocast, foreach AdamW"]
    for row in summary:
        wall, phases = float(row[1]), [float(x) for x in row[4:]]
        assert wall > 0 and len(phases) == 4 and all(ms > 0 for ms in phases)
    assert "aten::convolution_backward" in output  # the operator tables list real operators


def test_bench_default_sampling_times_the_recorded_default_against_the_full_chain(tmp_path, capsys):
    from _pipeline_fixtures import NUM_TRAIN_TIMESTEPS, isolated_remote_code_cache, scratch_scheduler, tiny_scratch_unet

    from benchmarks import bench_default_sampling
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler(), default_num_inference_steps=3,
                        default_eta=0.0).save_pretrained(tmp_path / "pipe")
    with isolated_remote_code_cache(tmp_path / "modules"):
        rows = bench_default_sampling.main([str(tmp_path / "pipe"), "--num-images", "4", "--reference-images", "2"])
    output = capsys.readouterr().out
    assert "through DiffusionPipeline.from_pretrained(trust_remote_code=True)" in output
    assert [row[0] for row in rows] == ["no step count (recorded default: 3 steps, eta 0.0)",
                                        f"num_inference_steps={NUM_TRAIN_TIMESTEPS} (DDPM, diffusers' DDPMPipeline default)"]
    assert rows[0][1] == "4" and rows[1][1] == "2 (scaled)" and float(rows[0][2]) > 0 and rows[0][4].endswith("x")
