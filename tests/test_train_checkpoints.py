"""Checkpoints are models, resuming never runs code from a file, a changed run is refused or warned
about before training, and a diverged run stops loudly without saving NaN weights.

Setting: 24 digit images in a folder, batch 8, 4 updates, a checkpoint every 2 (the "base" run);
every other run starts from a copy of it.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME as WEIGHTS_NAME

from _train_fixtures import (
    TINY_RUN,
    check_ok,
    finish,
    load_safetensors,
    max_abs_difference,
    run_train,
    start_train,
    write_digit_folder,
)
from ddpm_from_scratch.saving import layout
from ddpm_from_scratch.saving.checksums import write_manifest
from ddpm_from_scratch.training import checkpoints as ckpt

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "training_v0_1_0"
STEPS = 4


class _RunsCodeWhenUnpickled:
    """Unpickling this writes `marker`: what a hostile checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the checkpoint ran code')",)


def _hostile_pickle(path: Path, marker: Path) -> None:
    torch.save({"numpy_random_seed": _RunsCodeWhenUnpickled(marker), "lr_scheduler": {}, "ema": None}, path)


def test_the_hostile_pickle_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    _hostile_pickle(tmp_path / "x.pkl", marker)
    torch.load(tmp_path / "x.pkl", weights_only=False)
    assert marker.read_text() == "the checkpoint ran code"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    folder = write_digit_folder(root / "digits", 24)
    args = TINY_RUN + ["--train_data_dir", str(folder), "--cache_dir", str(root / "cache"), "--learning_rate", "1e-3",
                       "--checkpointing_steps", "2", "--dropout", "0.1"]
    out = root / "base"
    check_ok(run_train(args + ["--output_dir", str(out), "--max_train_steps", str(STEPS)]))
    return {"root": root, "args": args, "out": out}


def _copy(base, name: str) -> Path:
    target = base["root"] / name
    shutil.copytree(base["out"], target)
    return target


def _resume_args(base, out: Path, steps: int = STEPS + 2) -> list[str]:
    return base["args"] + ["--output_dir", str(out), "--max_train_steps", str(steps), "--resume_from_checkpoint", "latest"]


# ---- the folder ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_checkpoint_folder_is_a_diffusers_model_with_safe_training_state(base):
    from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
    from ddpm_from_scratch.unet import ScratchUNet2DModel

    folder = base["out"] / "checkpoints" / f"checkpoint-{STEPS}"
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == {
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/manifest.json",
        "unet_ema/config.json", "unet_ema/diffusion_pytorch_model.safetensors", "unet_ema/manifest.json",
        "scheduler/scheduler_config.json", "optimizer.pt", "lr_scheduler.json", "ema.json",
        "random_states_0.safetensors", "random_states_0.json", "training_options.json", "training_state.json",
        "manifest.json",
    }
    ema = ScratchUNet2DModel.from_pretrained(folder, subfolder="unet_ema")
    raw = ScratchUNet2DModel.from_pretrained(folder, subfolder="unet")
    assert ema.config.in_channels == raw.config.in_channels == 1
    scheduler = ScratchDDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert scheduler.config.prediction_type == "epsilon"
    # the last checkpoint's EMA is the saved pipeline's UNet
    pipeline_weights = load_safetensors(base["out"] / "unet" / "diffusion_pytorch_model.safetensors")
    assert max_abs_difference(load_safetensors(folder / "unet_ema" / WEIGHTS_NAME), pipeline_weights) == 0.0
    torch.load(folder / "optimizer.pt", weights_only=True)  # tensors and numbers only


def test_set_aside_checkpoints_count_towards_the_limit_and_go_only_after_a_newer_good_one(tmp_path):
    root = ckpt.checkpoints_root(tmp_path)
    for name in ("checkpoint-2", "checkpoint-4.corrupt", "checkpoint-4", "checkpoint-6.corrupt"):
        (root / name).mkdir(parents=True)
    assert [p.name for p in ckpt.prune_checkpoints(root, 2)] == ["checkpoint-2", "checkpoint-4.corrupt"]
    # checkpoint-6.corrupt is newer than the newest good checkpoint, which is never deleted: both stay
    assert ckpt.prune_checkpoints(root, 1) == []
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-6.corrupt"]
    (root / "checkpoint-8").mkdir()
    assert sorted(p.name for p in ckpt.prune_checkpoints(root, 1)) == ["checkpoint-4", "checkpoint-6.corrupt"]
    assert ckpt.prune_checkpoints(root, None) == []


def test_only_our_pipeline_staging_leftovers_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ours = Path(tempfile.mkdtemp(prefix=".out.saving-", dir=tmp_path))
    (ours / "pipeline.py").write_text("# staged code")
    empty = Path(tempfile.mkdtemp(prefix=".saving-", dir=out))
    theirs = tmp_path / ".out.saving-userdata"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("not ours")
    assert sorted(ckpt.remove_pipeline_staging_leftovers(out)) == sorted([ours, empty])
    assert theirs.is_dir()


# ---- nothing runs from a checkpoint --------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_runs(base):
    """Resumes under --forbid-unsafe-loads: a clean copy, one with hostile pickles planted next to the
    real files, one whose optimizer.pt is hostile, and a 0.1.0 checkpoint whose pickles are hostile."""
    root = base["root"]
    marker = root / "code-ran"
    planted, bad_optimizer = _copy(base, "planted"), _copy(base, "bad_optimizer")
    folder = planted / "checkpoints" / f"checkpoint-{STEPS}"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scaler.pt"):
        _hostile_pickle(folder / name, marker)
    ckpt.write_manifest(folder)
    _hostile_pickle(bad_optimizer / "checkpoints" / f"checkpoint-{STEPS}" / layout.OPTIMIZER_NAME, marker)
    ckpt.write_manifest(bad_optimizer / "checkpoints" / f"checkpoint-{STEPS}")
    legacy = root / "legacy"
    shutil.copytree(FIXTURE / "checkpoints", legacy / "checkpoints")
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin"):
        _hostile_pickle(legacy / "checkpoints" / "checkpoint-2" / name, marker)
    ckpt.write_manifest(legacy / "checkpoints" / "checkpoint-2")
    forbid = ["--forbid-unsafe-loads"]
    runs = {"clean": start_train(_resume_args(base, _copy(base, "clean")), patches=forbid),
            "planted": start_train(_resume_args(base, planted), patches=forbid),
            "bad_optimizer": start_train(_resume_args(base, bad_optimizer), patches=forbid),
            "legacy": start_train(_resume_args(base, legacy, 4),
                                  patches=forbid + ["--digits-unet-config", str(FIXTURE / "unet_config.json")])}
    return {name: finish(run) for name, run in runs.items()}, marker


@pytest.mark.slow
def test_resume_loads_no_pickle(hostile_runs):
    runs, marker = hostile_runs
    result = check_ok(runs["clean"])
    assert f"checkpoint-{STEPS} at update {STEPS}" in result.stderr
    check_ok(runs["planted"])  # the planted .pkl/.bin/.pt files are never opened
    assert not marker.exists()


@pytest.mark.slow
def test_a_hostile_file_is_refused_and_not_run(hostile_runs):
    runs, marker = hostile_runs
    result = runs["bad_optimizer"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{layout.OPTIMIZER_NAME} holds objects other than tensors and plain data, so it was not loaded" in result.stderr
    assert "Traceback" not in result.stderr
    # a 0.1.0 checkpoint's pickles are never opened: the resume is refused in one line
    result = runs["legacy"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "checkpoint-2 was written by ddpm-from-scratch 0.1.0, whose training state" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


# ---- what a resume refuses and warns about --------------------------------------------------------


def _edit_json(folder: Path, name: str, key: str, value) -> None:
    """Set (None: delete) `key` of the JSON file folder/name and regenerate the folder's manifest, as a
    deliberate edit would: the checkpoint still verifies."""
    path = folder / name
    data = json.loads(path.read_text())
    if value is None:
        del data[key]
    else:
        data[key] = value
    path.write_text(json.dumps(data))
    write_manifest(folder)


@pytest.fixture(scope="module")
def changed_runs(base):
    root = base["root"]
    rgb = write_digit_folder(root / "rgb_digits", 24, mode="RGB")
    no_rng = _copy(base, "no_rng")
    for path in (no_rng / "checkpoints" / f"checkpoint-{STEPS}").glob("random_states_0.*"):
        path.unlink()
    ckpt.write_manifest(no_rng / "checkpoints" / f"checkpoint-{STEPS}")
    bad_rng = _copy(base, "bad_rng")
    _edit_json(bad_rng / "checkpoints" / f"checkpoint-{STEPS}", "random_states_0.json", "numpy", None)
    parts = _copy(base, "parts")  # its options say v_prediction, its scheduler (what it was trained for) epsilon
    _edit_json(parts / "checkpoints" / f"checkpoint-{STEPS}", layout.OPTIONS_NAME, "prediction_type", "v_prediction")
    commands = {
        "bad_rng": _resume_args(base, bad_rng),
        "parts": _resume_args(base, parts) + ["--prediction_type", "v_prediction"],
        "prediction_type": _resume_args(base, _copy(base, "v")) + ["--prediction_type", "v_prediction"],
        "shorter": _resume_args(base, _copy(base, "shorter"), STEPS - 1),
        "rgb": [arg if arg != base["args"][base["args"].index("--train_data_dir") + 1] else str(rgb)
                for arg in _resume_args(base, _copy(base, "rgb"))],
        "learning_rate": _resume_args(base, _copy(base, "lr")) + ["--learning_rate", "5e-4"],
        "no_rng": _resume_args(base, no_rng),
    }
    runs = {name: start_train(command) for name, command in commands.items()}
    return {name: finish(run) for name, run in runs.items()}


@pytest.mark.slow
def test_an_option_that_changes_the_model_is_refused(changed_runs):
    result = changed_runs["prediction_type"]
    assert result.returncode == 2
    assert (f"cannot resume from checkpoint-{STEPS}: --prediction_type: the checkpoint has 'epsilon', this run "
            "'v_prediction'") in result.stderr
    assert "resume with --prediction_type epsilon, or start a new run" in result.stderr


@pytest.mark.slow
def test_a_run_shorter_than_the_checkpoint_is_refused(changed_runs):
    result = changed_runs["shorter"]
    assert result.returncode == 2
    assert f"--max_train_steps {STEPS - 1} asks for {STEPS - 1} updates, but checkpoint-{STEPS} has already done {STEPS}" \
        in result.stderr


@pytest.mark.slow
def test_a_grey_checkpoint_on_rgb_data_is_refused_before_training(changed_runs):
    result = changed_runs["rgb"]
    assert result.returncode == 2
    assert "its UNet takes 1-channel images, the training data has 3 channel(s) (grey vs RGB)" in result.stderr
    assert "Traceback" not in result.stderr and "size mismatch" not in result.stderr


@pytest.mark.slow
def test_a_changed_learning_rate_is_warned_about_and_used(changed_runs, base):
    result = check_ok(changed_runs["learning_rate"])
    assert (f"WARNING ddpm_from_scratch.training.resume: --learning_rate changed since checkpoint-{STEPS}: it had "
            "0.001, this run uses 0.0005") in result.stderr
    saved = ckpt.read_training_state(base["root"] / "lr" / "checkpoints" / f"checkpoint-{STEPS + 2}")
    assert saved["learning_rate"] == 5e-4


@pytest.mark.slow
def test_a_missing_rng_state_is_a_warning(changed_runs):
    result = check_ok(changed_runs["no_rng"])
    assert ("WARNING ddpm_from_scratch.training.resume: the random number generators were not restored from "
            f"checkpoint-{STEPS}: it has no RNG state for process 0") in result.stderr
    assert "no longer bit-reproducible" in result.stderr


@pytest.mark.slow
def test_an_unreadable_rng_state_is_refused_naming_the_file(changed_runs, base):
    result = changed_runs["bad_rng"]
    assert result.returncode == 2, result.stderr[-3000:]
    path = base["root"] / "bad_rng" / "checkpoints" / f"checkpoint-{STEPS}" / "random_states_0.json"
    assert (f"cannot resume from checkpoint-{STEPS}: its RNG state {path} cannot be read (it lacks 'numpy'); "
            "resume from another checkpoint (--resume_from_checkpoint checkpoint-<step>), or start a new run") \
        in result.stderr
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr


@pytest.mark.slow
def test_a_checkpoint_whose_parts_disagree_is_refused(changed_runs, base):
    result = changed_runs["parts"]
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "its files disagree" in line]
    assert lines == [f"train.py: error: cannot resume from checkpoint-{STEPS}: its files disagree: prediction_type is "
                     "'v_prediction' in training_options.json but 'epsilon' in scheduler/scheduler_config.json; the "
                     "checkpoint was edited or mixed from different runs, so what its weights were trained for is "
                     "unknown: resume from another checkpoint (--resume_from_checkpoint checkpoint-<step>), or start "
                     "a new run in another --output_dir"], result.stderr[-3000:]
    assert not (base["root"] / "parts" / "checkpoints" / f"checkpoint-{STEPS + 2}").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, key, value, message", [
    (layout.OPTIONS_NAME, "variance_type", "fixed_large",
     "variance_type is 'fixed_large' in training_options.json but 'fixed_small' in scheduler/scheduler_config.json"),
    (layout.OPTIONS_NAME, "num_train_timesteps", 500,
     "num_train_timesteps is 500 in training_options.json but 1000 in scheduler/scheduler_config.json"),
    ("scheduler/scheduler_config.json", "beta_schedule", "linear",
     "beta_schedule is 'squaredcos_cap_v2' in training_options.json but 'linear' in scheduler/scheduler_config.json"),
    ("scheduler/scheduler_config.json", "beta_start", 0.001,
     "beta_start is 0.0001 in training_options.json but 0.001 in scheduler/scheduler_config.json"),
    ("scheduler/scheduler_config.json", "beta_end", 0.03,
     "beta_end is 0.02 in training_options.json but 0.03 in scheduler/scheduler_config.json"),
    (layout.OPTIONS_NAME, "resolution", 16,
     "resolution is 16 in training_options.json but sample_size=8 in unet/config.json"),
    ("unet/config.json", "num_class_embeds", 10,
     "class_conditional is False in training_options.json but num_class_embeds=10 in unet/config.json"),
    ("unet/config.json", "out_channels", 2, "variance_type is 'fixed_small' in training_options.json but "
     "out_channels=2 for in_channels=1 (it needs 1) in unet/config.json"),
    ("unet_ema/config.json", "in_channels", 3, "in_channels is 1 in unet/config.json but 3 in unet_ema/config.json"),
])
def test_each_disagreement_between_a_checkpoints_parts_is_named(base, tmp_path, name, key, value, message):
    from ddpm_from_scratch.training.resume import check_parts_agree

    def parts_agree(folder):
        options, unet_config = (json.loads((folder / part).read_text()) for part in (layout.OPTIONS_NAME,
                                                                                     "unet/config.json"))
        check_parts_agree(folder, options, unet_config)

    folder = tmp_path / f"checkpoint-{STEPS}"
    shutil.copytree(base["out"] / "checkpoints" / f"checkpoint-{STEPS}", folder)
    parts_agree(folder)  # as saved: they agree
    # a UNet config of another run changes both UNets' configs alike
    for part in [name] + (["unet_ema/config.json"] if name == "unet/config.json" else []):
        _edit_json(folder, part, key, value)
    with pytest.raises(ValueError, match=f"cannot resume from checkpoint-{STEPS}: its files disagree: ") as error:
        parts_agree(folder)
    assert message in str(error.value)
    assert str(error.value).count(" but ") == 1  # the one disagreement made, nothing else


# ---- divergence and interrupted pipeline saves ------------------------------------------------------


@pytest.fixture(scope="module")
def failing_runs(base):
    root = base["root"]
    args = base["args"] + ["--logging_steps", "10", "--max_train_steps", "6"]
    runs = {
        "nan": start_train(args + ["--output_dir", str(root / "nan")], patches=["--nan-loss-at-update", "3"]),
        "huge_lr": start_train(args + ["--output_dir", str(root / "huge_lr"), "--learning_rate", "1e6",
                                       "--lr_warmup_steps", "0"]),
        "killed_saving": start_train(base["args"] + ["--output_dir", str(root / "killed_saving"), "--max_train_steps",
                                                     "2"], patches=["--kill-while-saving-pipeline"]),
    }
    return {name: finish(run) for name, run in runs.items()}


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_at_that_update_and_saves_nothing_after_it(failing_runs, base):
    result, out = failing_runs["nan"], base["root"] / "nan"
    assert result.returncode == 1, result.stderr[-3000:]
    assert "training diverged: the loss was NaN or infinite at update 3" in result.stderr
    assert "the gradient norm was NaN or infinite at update 3" in result.stderr
    assert f"the last good checkpoint, {out / 'checkpoints' / 'checkpoint-2'}, is intact" in result.stderr
    assert [step for step, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2]
    assert ckpt.verify_checkpoint(out / "checkpoints" / "checkpoint-2") == []
    assert not (out / "model_index.json").exists() and not (out / "unet").exists()
    resumed = check_ok(run_train(base["args"] + ["--output_dir", str(out), "--logging_steps", "10",
                                                 "--max_train_steps", "6", "--resume_from_checkpoint", "latest"]))
    assert "checkpoint-2 at update 2" in resumed.stderr and (out / "model_index.json").is_file()


@pytest.mark.slow
def test_a_huge_learning_rate_fails_loudly(failing_runs, base):
    result, out = failing_runs["huge_lr"], base["root"] / "huge_lr"
    assert result.returncode == 1, result.stderr[-3000:]
    assert "training diverged" in result.stderr
    assert not (out / "model_index.json").exists()
    for _, folder in ckpt.list_checkpoints(out / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_safetensors(folder / "unet" / WEIGHTS_NAME).values())


@pytest.mark.slow
def test_a_kill_during_the_pipeline_save_leaves_a_leftover_the_next_run_removes(failing_runs, base):
    result, out = failing_runs["killed_saving"], base["root"] / "killed_saving"
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    leftovers = list(out.parent.glob(f".{out.name}.saving-*"))
    assert len(leftovers) == 1 and not (out / "model_index.json").exists()
    resumed = check_ok(run_train(base["args"] + ["--output_dir", str(out), "--max_train_steps", "2",
                                                 "--resume_from_checkpoint", "latest"]))
    assert f"removed {leftovers[0]}, left by a save that was interrupted" in resumed.stderr
    assert not leftovers[0].exists() and (out / "model_index.json").is_file()
