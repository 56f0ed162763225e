"""A run killed with SIGKILL and resumed ends with the weights of a run that never stopped; a damaged
latest checkpoint is reported and the previous one used; a kill during a save loses nothing.

Setting: 40 digit images in a folder, batch 8 x 2 accumulation, so an epoch is 2.5 updates and the
kill at update 4 lands mid-epoch; dropout and random flips are on, so the restored RNG and data
position both matter.
"""

from __future__ import annotations

import shutil
import signal

import pytest

from _train_fixtures import (
    TINY_RUN,
    check_ok,
    flip_one_byte,
    load_safetensors,
    max_abs_difference,
    finish,
    run_train,
    start_train,
    write_digit_folder,
)
from ddpm_from_scratch.training import checkpoints as ckpt

STEPS = 6
RAW_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
TOLERANCE = 1e-6  # the same float ops in the same order: equal up to rounding, in practice bit-equal

# every test here launches training runs in subprocesses
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    folder = write_digit_folder(base / "digits", 40)
    args = TINY_RUN + [
        "--train_data_dir", str(folder), "--cache_dir", str(base / "cache"),
        "--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--gradient_accumulation_steps", "2",
        "--dropout", "0.1", "--random_flip", "--lr_warmup_steps", "3",
    ]
    reference, killed, killed_while_saving = base / "reference", base / "killed", base / "killed_while_saving"
    # the three runs are independent: run them side by side
    runs = [
        start_train(args + ["--output_dir", str(reference)]),
        start_train(args + ["--output_dir", str(killed)], patches=["--kill-after-checkpoint", "4"]),
        start_train(args + ["--output_dir", str(killed_while_saving)], patches=["--kill-while-checkpointing", "4"]),
    ]
    reference_run, killed_run, killed_while_saving_run = [finish(run) for run in runs]
    check_ok(reference_run)
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-3000:]
    assert killed_while_saving_run.returncode == -signal.SIGKILL, killed_while_saving_run.stderr[-3000:]
    return {"base": base, "args": args, "reference": reference, "killed": killed,
            "killed_while_saving": killed_while_saving}


def _final_weights(output_dir):
    """(raw weights of the final checkpoint, EMA weights of the saved pipeline)."""
    return (load_safetensors(output_dir / "checkpoints" / f"checkpoint-{STEPS}" / RAW_WEIGHTS),
            load_safetensors(output_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def _assert_same_result(output_dir, reference):
    raw, ema = _final_weights(output_dir)
    raw_ref, ema_ref = _final_weights(reference)
    assert max_abs_difference(raw, raw_ref) <= TOLERANCE
    assert max_abs_difference(ema, ema_ref) <= TOLERANCE
    state = ckpt.read_training_state(output_dir / "checkpoints" / f"checkpoint-{STEPS}")
    state_ref = ckpt.read_training_state(reference / "checkpoints" / f"checkpoint-{STEPS}")
    assert state["micro_batches_per_process"] == state_ref["micro_batches_per_process"] == 2 * STEPS
    assert [step for step, _ in state["loss_history"]] == list(range(1, STEPS + 1))
    for (_, loss), (_, loss_ref) in zip(state["loss_history"], state_ref["loss_history"]):
        assert abs(loss - loss_ref) <= 1e-6 * max(1.0, abs(loss_ref))


def test_killed_run_left_its_checkpoints_and_no_pipeline(setting):
    killed = setting["killed"]
    assert [s for s, _ in ckpt.list_checkpoints(killed / "checkpoints")] == [2, 4]
    assert all(ckpt.verify_checkpoint(path) == [] for _, path in ckpt.list_checkpoints(killed / "checkpoints"))
    assert not (killed / "model_index.json").exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(setting):
    resumed = setting["base"] / "resumed"
    shutil.copytree(setting["killed"], resumed)
    result = check_ok(run_train(setting["args"] + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"]))
    assert "resumed from" in result.stderr and "checkpoint-4 at update 4" in result.stderr
    _assert_same_result(resumed, setting["reference"])


def test_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(setting):
    damaged = setting["base"] / "damaged"
    shutil.copytree(setting["killed"], damaged)
    flip_one_byte(damaged / "checkpoints" / "checkpoint-4" / RAW_WEIGHTS)
    result = check_ok(run_train(setting["args"] + ["--output_dir", str(damaged), "--resume_from_checkpoint", "latest"]))
    assert f"checkpoint-4 is damaged ({RAW_WEIGHTS} does not match its SHA-256" in result.stderr
    assert "moved it to checkpoint-4.corrupt" in result.stderr
    assert "checkpoint-2 at update 2" in result.stderr
    _assert_same_result(damaged, setting["reference"])
    # the set-aside folder counts towards the preset's --checkpoints_total_limit 2 and went once newer
    # good checkpoints existed
    assert sorted(p.name for p in (damaged / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]


def test_kill_while_saving_keeps_the_previous_checkpoint(setting):
    out = setting["killed_while_saving"]
    root = out / "checkpoints"
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2]
    assert ckpt.verify_checkpoint(root / "checkpoint-2") == []
    assert (root / ".tmp-checkpoint-4").is_dir()  # the unfinished save, never taken for a checkpoint
    assert ckpt.plan_resume(out, "latest").path == root / "checkpoint-2"


# ---- kills before the first checkpoint is committed ---------------------------------------------------


@pytest.fixture(scope="module")
def killed_early(setting):
    """Runs killed while the first checkpoint (checkpoint-2) was staged, after K of its N files for every K
    from 0 to N (N: all written, manifest included, not yet renamed), and during updates 1 and 3; each
    relaunched with the same command plus --resume_from_checkpoint latest."""
    files = [p for p in (setting["reference"] / "checkpoints" / f"checkpoint-{STEPS}").rglob("*") if p.is_file()]
    staged = list(range(len(files) + 1))
    kills = {f"staged-{k}": ["--kill-after-staged-files", "2", str(k)] for k in staged}
    kills.update({"update-1": ["--kill-during-update", "1"], "update-3": ["--kill-during-update", "3"]})
    outs = {name: setting["base"] / "killed_early" / name for name in kills}
    runs = {name: start_train(setting["args"] + ["--output_dir", str(outs[name])], patches=patches)
            for name, patches in kills.items()}
    killed = {name: finish(run) for name, run in runs.items()}
    left = {name: sorted(p.relative_to(outs[name]).as_posix() for p in outs[name].rglob("*") if p.is_file())
            for name in kills}
    relaunched = {name: start_train(setting["args"] + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"])
                  for name, out in outs.items()}
    return {"staged": staged, "outs": outs, "killed": killed, "left": left,
            "resumed": {name: finish(run) for name, run in relaunched.items()}}


def test_a_kill_while_the_first_checkpoint_is_staged_resumes_with_the_same_command(killed_early, setting):
    for k in killed_early["staged"]:
        name = f"staged-{k}"
        out, killed = killed_early["outs"][name], killed_early["killed"][name]
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        # the kill came after exactly k files of the staging folder, before anything was committed
        left = killed_early["left"][name]
        assert len(left) == k and all(path.startswith("checkpoints/.tmp-checkpoint-2/") for path in left), left
        resumed = check_ok(killed_early["resumed"][name])
        staging = out / "checkpoints" / ".tmp-checkpoint-2"
        assert f"removed {staging}, left by a save that was interrupted" in resumed.stderr
        assert "no checkpoint in" in resumed.stderr and "starting a new run" in resumed.stderr
        _assert_same_result(out, setting["reference"])


def test_a_kill_during_an_update_resumes_with_the_same_command(killed_early, setting):
    for name, resumed_at in (("update-1", None), ("update-3", 2)):
        out, killed = killed_early["outs"][name], killed_early["killed"][name]
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        resumed = check_ok(killed_early["resumed"][name])
        if resumed_at is None:
            assert killed_early["left"][name] == [] and "starting a new run" in resumed.stderr
        else:
            assert f"checkpoint-{resumed_at} at update {resumed_at}" in resumed.stderr
        _assert_same_result(out, setting["reference"])
