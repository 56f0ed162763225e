"""Training: options, data, objective, EMA, checkpoint files, bad input; and one short end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import read_only_folder
from _train_fixtures import (
    TINY_RUN,
    check_ok,
    flip_one_byte,
    run_train,
    write_digit_folder,
)
from ddpm_from_scratch.saving.atomic_io import write_json_atomic
from ddpm_from_scratch.sampling.images import uint8_to_model_range
from ddpm_from_scratch.saving import layout
from ddpm_from_scratch.training import checkpoints as ckpt
from ddpm_from_scratch.training.config import parse_options
from ddpm_from_scratch.training.batches import PreloadedImages, ShardedEpochOrder, make_collate_fn, to_uint8_array
from ddpm_from_scratch.training.data import find_image_column, prepare_training_data
from ddpm_from_scratch.training.ema import ema_state, ema_weights, load_ema, make_ema
from ddpm_from_scratch.training.objective import diffusion_loss, drop_class_labels, random_horizontal_flip


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


# ---- options -------------------------------------------------------------------------------


def test_preset_fills_only_what_the_user_left_unset():
    opts = parse_options(["--preset", "cifar10", "--learning_rate", "1e-4"])
    assert opts.learning_rate == 1e-4 and "learning_rate" in opts.explicit
    assert opts.train_batch_size == 128 and opts.lr_warmup_steps == 5000 and opts.ema_max_decay == 0.9999
    assert opts.dropout == 0.1 and opts.random_flip is True and opts.max_train_steps == 800_000
    assert opts.dataset_name == "uoft-cs/cifar10" and opts.output_dir == "cifar10-ddpm"
    digits = parse_options([])
    assert digits.preset == "digits" and digits.dataset_name == "builtin:digits" and digits.random_flip is False
    assert digits.max_grad_norm == 1.0 and digits.prediction_type == "epsilon"
    assert parse_options(["--train_data_dir", "."]).dataset_name is None
    assert "hub_token" not in parse_options(["--hub_token", "hf_secret"]).for_model_card()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset_name", "x/y", "--train_data_dir", "."], "--dataset_name and --train_data_dir"),
        (["--num_epochs", "2", "--max_train_steps", "5"], "--num_epochs and --max_train_steps"),
        (["--push_to_hub"], "--hub_model_id"),
        (["--resume_from_checkpoint", "latest", "--overwrite_output_dir"], "pass only one"),
        (["--variance_type", "learned_range"], "--loss_type hybrid"),
        (["--loss_type", "hybrid"], "--variance_type learned_range"),
        (["--loss_type", "hybrid", "--variance_type", "learned_range", "--lambda_vlb", "-1"], "--lambda_vlb"),
        (["--loss_type", "hybrid", "--variance_type", "learned_range", "--lambda_vlb", "inf"],
         "--lambda_vlb must be a finite number >= 0"),
        (["--adam_weight_decay", "nan"], "--adam_weight_decay must be a finite number >= 0"),
        (["--label_column", "label"], "--class_conditional"),
        (["--train_batch_size", "0"], "--train_batch_size must be a positive integer"),
        (["--learning_rate", "-1"], "--learning_rate must be a positive number"),
        (["--ema_max_decay", "1.0"], "--ema_max_decay must be in [0, 1)"),
        (["--grid_inference_steps", "2000"], "--grid_inference_steps 2000 exceeds"),
        (["--train_data_dir", "/does/not/exist"], "is not a folder"),
        # the scheduler's rule (beta_schedules.check_beta_range), so trainer and scheduler agree
        (["--beta_start", "0.03", "--beta_end", "0.02"], "--beta_start/--beta_end: beta_start and beta_end must satisfy"),
        (["--beta_start", "nan"], "--beta_start/--beta_end: beta_start must be a finite real number"),
        (["--beta_end", "1.0"], "0 < beta_start <= beta_end < 1"),
        (["--num_threads", "0"], "--num_threads must be an int >= 1"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_options(argv)


# ---- data ----------------------------------------------------------------------------------


def test_digits_are_kept_grayscale_and_scaled_to_the_model_range():
    data = prepare_training_data(parse_options([]))
    assert (len(data), data.num_channels, data.num_skipped, data.image_column) == (1437, 1, 0, "image")
    assert data.label_column is None
    conditional = prepare_training_data(parse_options(["--class_conditional"]))
    assert (conditional.label_column, conditional.num_classes) == ("label", 10)


def test_preprocessing_center_crops_and_maps_to_minus_one_one():
    from PIL import Image

    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, 6:34] = 255  # white around the central 20x20 square (margin for the resampling filter), black sides
    out = uint8_to_model_range(to_uint8_array(Image.fromarray(wide), 10, 3, center_crop=True))
    assert out.shape == (3, 10, 10) and out.dtype == torch.float32
    assert torch.equal(out, torch.ones_like(out))  # only the white centre survives the crop
    squashed = uint8_to_model_range(to_uint8_array(Image.fromarray(wide), 10, 3, center_crop=False))
    assert squashed.min() == -1.0 and squashed.max() == 1.0
    assert to_uint8_array(Image.fromarray(wide[:, :, 0]), 8, 1, center_crop=True).shape == (1, 8, 8)
    assert to_uint8_array(Image.fromarray(wide), 8, 1, center_crop=True).shape == (1, 8, 8)  # RGB -> L


def test_preloaded_batches_equal_decoded_batches():
    data = prepare_training_data(parse_options(["--class_conditional"]))
    preloaded = PreloadedImages(data, 8, center_crop=True)
    indices = [5, 0, 1400, 77]
    lazy = make_collate_fn(data, 8, center_crop=True)([data.dataset[i] for i in indices])
    fast = preloaded.batch(indices)
    assert torch.equal(lazy["pixel_values"], fast["pixel_values"]) and torch.equal(lazy["class_labels"], fast["class_labels"])
    assert fast["pixel_values"].min() == -1.0 and fast["pixel_values"].max() == 1.0


def test_image_folder_with_a_broken_file_skips_it_and_counts_it(tmp_path):
    folder = write_digit_folder(tmp_path / "digits", 6, with_labels=True, mode="RGB")
    (folder / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    opts = parse_options(["--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache"),
                          "--class_conditional"])
    data = prepare_training_data(opts)
    assert (len(data), data.num_skipped, data.num_channels) == (6, 1, 3)
    assert data.num_classes == 6 and data.label_column == "label"


def test_image_column_errors_name_the_columns():
    import datasets

    ds = datasets.Dataset.from_dict({"picture": [np.zeros((2, 2), np.uint8)], "caption": ["a"]},
                                    features=datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")}))
    assert find_image_column(ds, None) == "picture"
    with pytest.raises(ValueError, match=r"--image_column 'img' is not a column.*'picture', 'caption'"):
        find_image_column(ds, "img")
    with pytest.raises(ValueError, match="holds .* not images"):
        find_image_column(ds, "caption")


def test_epoch_order_shards_without_overlap_and_repeats_per_epoch():
    orders = [ShardedEpochOrder(50, 4, 3, rank, seed=7) for rank in range(3)]
    assert orders[0].batches_per_epoch == 4  # 50 // 12, the incomplete tail is dropped
    epoch0 = [sum(order.epoch_batches(0), []) for order in orders]
    flat = sum(epoch0, [])
    assert len(flat) == len(set(flat)) == 48
    assert orders[1].epoch_batches(0) == orders[1].epoch_batches(0)
    assert orders[1].epoch_batches(0) != orders[1].epoch_batches(1)
    assert orders[0].position(9) == (2, 1)


# ---- objective -----------------------------------------------------------------------------


class _RecordingModel(torch.nn.Module):
    """Stands in for the UNet: records its input dtype and timesteps, returns a bf16 output like an autocast model."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen_dtypes = []
        self.seen_timesteps = []

    def forward(self, sample, timestep, class_labels=None):
        from types import SimpleNamespace

        self.seen_dtypes.append(sample.dtype)
        self.seen_timesteps.append(timestep)
        return SimpleNamespace(sample=(sample * self.weight).to(torch.bfloat16))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_is_float32_mse_against_the_scheduler_target(prediction_type):
    from ddpm_from_scratch.scheduler import ScratchDDPMScheduler

    scheduler = ScratchDDPMScheduler(prediction_type=prediction_type)
    model = _RecordingModel()
    clean = torch.rand(4, 1, 8, 8, dtype=torch.bfloat16) * 2 - 1  # even bf16 data is lifted to float32
    out = diffusion_loss(model, scheduler, clean, torch.Generator().manual_seed(0))
    assert model.seen_dtypes == [torch.float32] and out.loss.dtype == torch.float32
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=generator)
    t = torch.randint(0, 1000, (4,), generator=generator)
    x_t = scheduler.add_noise(clean.float(), noise, t)
    target = {"epsilon": noise, "sample": clean.float(), "v_prediction": scheduler.get_velocity(clean.float(), noise, t)}
    expected = torch.mean((x_t.to(torch.bfloat16).float() - target[prediction_type]) ** 2)
    assert torch.equal(model.seen_timesteps[0], t)
    assert torch.allclose(out.loss, expected, rtol=1e-6)


def test_flip_and_label_dropout_follow_the_generator():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3).repeat(50, 1, 1, 1)
    flipped = random_horizontal_flip(images, torch.Generator().manual_seed(0))
    is_flipped = (flipped == images.flip(-1)).flatten(1).all(1)
    assert ((flipped == images).flatten(1).all(1) | is_flipped).all() and 20 < int(is_flipped.sum()) < 80
    labels = torch.arange(1000) % 10
    dropped = drop_class_labels(labels, 0.1, 10, torch.Generator().manual_seed(0))
    assert 50 < int((dropped == 10).sum()) < 150 and torch.equal(dropped[dropped != 10], labels[dropped != 10])


# ---- EMA -----------------------------------------------------------------------------------


def test_ema_warmup_decay_and_update_rule():
    model = torch.nn.Linear(3, 2)
    opts = parse_options(["--ema_max_decay", "0.999", "--ema_power", "0.75"])
    ema, ema_unet = make_ema(model, opts, torch.device("cpu"))
    assert ema.get_decay(1) == 0.0  # the first update copies the weights
    assert math.isclose(ema.get_decay(11), 1 - 11**-0.75)
    assert ema.get_decay(10**7) == 0.999
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.step(model.parameters())  # decay 0: a copy, up to one rounding (EMAModel computes ema - (ema - theta))
    assert torch.allclose(ema_weights(ema, ema_unet).weight, model.weight, rtol=1e-7, atol=0)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.step(model.parameters())
    decay = ema.cur_decay_value
    assert decay == 1 - 2**-0.75
    assert torch.allclose(ema_weights(ema, ema_unet).weight, torch.full((2, 3), decay * 1.0 + (1 - decay) * 3.0))
    # what a checkpoint keeps (unet_ema/ and ema.json) continues the same average
    clone, clone_unet = make_ema(torch.nn.Linear(3, 2), opts, torch.device("cpu"))
    load_ema(clone, clone_unet, ema_unet.state_dict(), ema_state(ema)["num_updates"])
    assert clone.optimization_step == 2 and torch.equal(ema_weights(clone, clone_unet).weight, ema_unet.weight)
    for average in (ema, clone):
        average.step(model.parameters())
    assert torch.equal(ema_weights(clone, clone_unet).weight, ema_weights(ema, ema_unet).weight)


# ---- checkpoint files ----------------------------------------------------------------------


def _fake_checkpoint(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    write_json_atomic({"global_step": step}, folder / layout.STATE_NAME)
    ckpt.write_manifest(folder)
    return folder


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest", "bad_manifest"])
def test_damaged_checkpoints_are_detected(tmp_path, damage):
    folder = _fake_checkpoint(tmp_path, 5)
    assert ckpt.verify_checkpoint(folder) == []
    model = folder / "model.safetensors"
    if damage == "flip":
        flip_one_byte(model)
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "delete":
        model.unlink()
    elif damage == "no_manifest":
        (folder / layout.MANIFEST_NAME).unlink()
    else:
        (folder / layout.MANIFEST_NAME).write_text("{not json")
    problems = ckpt.verify_checkpoint(folder)
    assert problems and any(word in " ".join(problems) for word in ("model.safetensors", "manifest.json"))


def test_latest_skips_damaged_and_unfinished_checkpoints(tmp_path):
    root = ckpt.checkpoints_root(tmp_path)
    for step in (10, 20, 30):
        _fake_checkpoint(root, step)
    flip_one_byte(root / "checkpoint-30" / "model.safetensors")
    (root / ".tmp-checkpoint-40").mkdir()  # a save that was killed
    plan = ckpt.plan_resume(tmp_path, "latest")
    assert plan.path == root / "checkpoint-20" and [p.name for p, _ in plan.rejected] == ["checkpoint-30"]
    assert "SHA-256" in plan.rejected[0][1][0]
    with pytest.raises(ValueError, match=r"not a usable checkpoint.*SHA-256.*checkpoint-10', 'checkpoint-20'"):
        ckpt.plan_resume(tmp_path, "checkpoint-30")
    with pytest.raises(ValueError, match=r"does not exist.*checkpoint-10"):
        ckpt.plan_resume(tmp_path, "checkpoint-99")
    assert ckpt.plan_resume(tmp_path / "elsewhere", "latest").path is None  # nothing yet: a fresh start
    assert [p.name for p in ckpt.prune_checkpoints(root, 2)] == ["checkpoint-10"]
    assert ckpt.set_aside(root / "checkpoint-30").name == "checkpoint-30.corrupt"
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [20]


# ---- bad input stops the run before training ------------------------------------------------


def _main_error(argv: list[str]) -> str:
    from ddpm_from_scratch.training.trainer import SetupError, main

    with pytest.raises(SetupError) as error:
        main(argv + ["--report_to", "none"])
    return str(error.value)


def test_bad_input_is_reported_before_training(tmp_path):
    out = ["--output_dir", str(tmp_path / "out")]
    assert "--image_column 'pixels' is not a column" in _main_error(out + ["--image_column", "pixels"])
    assert "must be a multiple of 4" in _main_error(out + ["--resolution", "10"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert "holds no image files" in _main_error(out + ["--train_data_dir", str(tmp_path / "empty")])
    assert "does not exist" in _main_error(out + ["--resume_from_checkpoint", str(tmp_path / "nowhere")])
    _fake_checkpoint(ckpt.checkpoints_root(tmp_path / "out"), 3)
    assert "already holds checkpoints" in _main_error(out)
    assert "fewer than one global batch" in _main_error(
        ["--output_dir", str(tmp_path / "o2"), "--train_batch_size", "5000"])


@pytest.mark.slow
def test_command_line_error_exits_with_code_2_and_no_traceback(tmp_path):
    result = run_train(["--output_dir", str(tmp_path), "--num_epochs", "2", "--max_train_steps", "5"])
    assert result.returncode == 2
    assert "train.py: error: --num_epochs and --max_train_steps both given" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_script_and_ddpm_train_run_from_any_folder(tmp_path):
    import subprocess
    import sys

    from _train_fixtures import TRAIN_SCRIPT, subprocess_env

    ddpm_train = Path(sys.executable).with_name("ddpm-train")
    for command in ([sys.executable, str(TRAIN_SCRIPT)], [str(ddpm_train)]):
        result = subprocess.run(command + ["--num_epochs", "2", "--max_train_steps", "5"], cwd=tmp_path,
                                env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "--num_epochs and --max_train_steps both given" in result.stderr and "Traceback" not in result.stderr


# ---- one short run, end to end --------------------------------------------------------------


@pytest.mark.slow
def test_short_run_saves_a_loadable_pipeline_grid_and_loss_curve(tmp_path):
    from PIL import Image

    out = tmp_path / "run"
    result = check_ok(run_train(TINY_RUN + ["--output_dir", str(out), "--max_train_steps", "3",
                                            "--checkpointing_steps", "2", "--save_images_steps", "2"]))
    assert "sampling the grid (3 steps): 100%" in result.stderr and "image/s" in result.stderr  # a progress bar
    assert [s for s, _ in ckpt.list_checkpoints(ckpt.checkpoints_root(out))] == [2, 3]
    for _, folder in ckpt.list_checkpoints(ckpt.checkpoints_root(out)):
        assert ckpt.verify_checkpoint(folder) == []
    state = ckpt.read_training_state(out / "checkpoints" / "checkpoint-3")
    assert state["global_step"] == 3 and len(state["loss_history"]) == 3
    grid = Image.open(out / "samples" / "final.png")
    assert grid.mode == "L" and grid.width >= 512  # 4 digits 2x2, enlarged to be visible
    assert (out / "samples" / "step-0000002.png").is_file()
    assert Image.open(out / "loss_curve.png").size == (800, 480)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and math.isfinite(metrics["final_loss"])
    assert "digits_classifier_score" in metrics

    from diffusers import DiffusionPipeline

    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    card = (out / "README.md").read_text()
    assert "final_loss" in card and "sample_grid.png" in card and (out / "sample_grid.png").is_file()
    for pipeline in (ScratchDDPMPipeline.from_pretrained(out), DiffusionPipeline.from_pretrained(out, trust_remote_code=True)):
        pipeline.set_progress_bar_config(disable=True)
        images = pipeline(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
        assert len(images) == 2 and images[0].size == (8, 8) and images[0].mode == "L"


# ---- in-process runs: options that change the data path, the model or the upload ------------


def _tiny(tmp_path, *extra: str) -> list[str]:
    return TINY_RUN + ["--output_dir", str(tmp_path / "run"), *extra]


def test_class_conditional_rgb_folder_with_bf16_checkpointing_and_epochs(tmp_path):
    from ddpm_from_scratch.training.trainer import main

    folder = write_digit_folder(tmp_path / "digits", 40, with_labels=True, mode="RGB", size=12)
    out = main(_tiny(tmp_path, "--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache"),
                     "--class_conditional", "--resolution", "8", "--mixed_precision", "bf16",
                     "--gradient_checkpointing", "--num_epochs", "1", "--gradient_accumulation_steps", "2",
                     "--report_to", "tensorboard"))
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # tensorboard logs by default
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 3  # 40 images / batch 8 = 5 micro-batches = 2.5 updates, rounded up
    assert math.isfinite(metrics["final_loss"]) and "digits_classifier_score" not in metrics  # not the built-in set
    config = json.loads((out / "unet" / "config.json").read_text())
    assert (config["in_channels"], config["num_class_embeds"], config["sample_size"]) == (3, 10, 8)  # sub-folders class_0 .. class_9


def test_hybrid_loss_trains_a_learned_range_model_that_samples(tmp_path):
    from ddpm_from_scratch.training.trainer import main

    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline

    out = main(_tiny(tmp_path, "--loss_type", "hybrid", "--variance_type", "learned_range", "--max_train_steps", "2"))
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["final_loss"])
    pipe = ScratchDDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.out_channels == 2 * pipe.unet.config.in_channels == 2
    assert pipe.scheduler.config.variance_type == "learned_range"
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_push_to_hub_uploads_the_pipeline_with_its_card_and_never_the_checkpoints(tmp_path, monkeypatch):
    import huggingface_hub

    from _pipeline_fixtures import FakeHub
    from ddpm_from_scratch.training.trainer import main

    # the client must talk to 127.0.0.1 even where CI sets HF_HUB_OFFLINE=1 or a proxy
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    huggingface_hub.close_session()
    with FakeHub(user="someone") as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)  # what HfApi() talks to
        out = main(_tiny(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "1", "--push_to_hub",
                         "--hub_model_id", "someone/ddpm-digits", "--hub_private_repo", "--hub_token", "hf_test"))
    huggingface_hub.close_session()
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert hub.unexpected == []
    assert hub.repo_payloads == [{"name": "ddpm-digits", "organization": "someone", "visibility": "private"}]
    assert set(hub.authorization) == {"Bearer hf_test"}
    files = hub.files["someone/ddpm-digits"]
    assert "model_index.json" in files and "sample_grid.png" in files
    # the uploaded weights are the saved pipeline's (the EMA UNet), byte for byte
    assert files["unet/diffusion_pytorch_model.safetensors"] == (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert not any(name.startswith(("checkpoints", "samples", "logs")) for name in files)
    card = files["README.md"].decode()
    assert "final_loss" in card and "hf_test" not in card and "2 steps" in hub.commit_headers[0]["summary"]


# ---- trainer inputs: the output folder, the data source, pixel formats ------------------------


def _foreign_readme(tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "README.md").write_text("# my project\n")
    return tmp_path / "project"


def _foreign_model(tmp_path: Path) -> Path:
    folder = tmp_path / "someone-else"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    return folder


@pytest.mark.parametrize("make_output_dir, message", [
    (lambda tmp: "", "--output_dir is empty"),
    (lambda tmp: (tmp / "a-file").write_text("x") and tmp / "a-file", r"--output_dir '.*a-file' is a file"),
    (lambda tmp: "/proc/ddpm-run", r"--output_dir '/proc/ddpm-run' cannot be written"),
    (lambda tmp: read_only_folder(tmp) / "run", r"--output_dir '.*run' cannot be written"),
    (_foreign_readme, r"holds files this trainer did not write and would overwrite: README.md; .*--overwrite_output_dir"),
    (_foreign_model, r"would overwrite: model_index.json, unet/"),
])
def test_unusable_output_dir_is_refused_before_training(tmp_path, make_output_dir, message):
    import re

    assert re.search(message, _main_error(["--output_dir", str(make_output_dir(tmp_path))]))


def test_output_dir_rule_accepts_our_own_outputs_and_overwrite(tmp_path):
    from ddpm_from_scratch.training.output_dir import foreign_outputs, prepare_output_dir

    def opts(folder, *extra):
        return parse_options(["--output_dir", str(folder), *extra])

    ours = tmp_path / "previous-run"
    ours.mkdir()
    (ours / "model_index.json").write_text('{"_class_name": ["pipeline", "ScratchDDPMPipeline"]}')
    (ours / "README.md").write_text("---\nlibrary_name: diffusers\ntags:\n- diffusers\n- ddpm-from-scratch\n---\n# DDPM\n")
    (ours / "notes.txt").write_text("files the run does not write are never in the way")
    for name in ("unet", "samples", "logs"):
        (ours / name).mkdir()
    assert foreign_outputs(opts(ours)) == []
    (ours / "README.md").write_text("# my own card, edited by hand\n")
    assert foreign_outputs(opts(ours)) == ["README.md"]
    prepare_output_dir(opts(ours, "--overwrite_output_dir"))  # allowed, and the folder is writable
    assert foreign_outputs(opts(tmp_path / "new")) == [] and not (tmp_path / "new").exists()
    prepare_output_dir(opts(tmp_path / "new" / "run"))
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())  # probe removed


@pytest.mark.parametrize("offline_env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}])
def test_hub_dataset_without_network_is_one_clear_error(tmp_path, offline_env):
    import os

    from _train_fixtures import subprocess_env

    env = subprocess_env(HF_DATASETS_CACHE=str(tmp_path / "cache"))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name, None)
    env.update(offline_env)
    result = run_train(["--dataset_name", "someone/a-dataset-not-in-the-cache", "--output_dir", str(tmp_path / "out"),
                        "--report_to", "none"], env=env, timeout=180)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("train.py: error: --dataset_name 'someone/a-dataset-not-in-the-cache': the Hugging Face Hub")
    for hint in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "--train_data_dir", "builtin:digits"):
        assert hint in error
    assert "Traceback" not in result.stderr and os.environ.get("HF_TOKEN", "hf_") not in error


def _gradient(dtype, high) -> np.ndarray:
    return (np.linspace(0, 1, 64).reshape(8, 8) * high).astype(dtype)


@pytest.mark.parametrize("image, expected", [
    (lambda: _gradient(np.float32, 1.0), lambda: _gradient(np.float32, 255.0).round()),          # F in [0, 1]
    (lambda: _gradient(np.uint16, 65535), lambda: (_gradient(np.uint16, 65535) / 257).round()),  # I;16
    (lambda: _gradient(np.int32, 65535), lambda: (_gradient(np.int32, 65535) / 257).round()),    # I (16-bit data)
    (lambda: _gradient(np.uint8, 255), lambda: _gradient(np.uint8, 255)),                        # L
])
def test_high_bit_depth_images_are_scaled_by_their_range(image, expected):
    from PIL import Image

    pixels = image()
    pil = Image.fromarray(pixels)
    assert pil.mode == {np.float32: "F", np.uint16: "I;16", np.int32: "I", np.uint8: "L"}[pixels.dtype.type]
    out = to_uint8_array(pil, 8, 1, center_crop=True)[0]
    assert np.abs(out.astype(int) - expected().astype(int)).max() <= 1 and out.max() >= 254
    rgb = to_uint8_array(pil, 8, 3, center_crop=True)
    assert rgb.shape == (3, 8, 8) and np.array_equal(rgb[0], out)


@pytest.mark.parametrize("pixels, message", [
    (np.full((8, 8), 200.0, np.float32), r"mode F pixels are read as intensities in \[0, 1\].*\[200, 200\]"),
    (np.full((8, 8), -0.5, np.float32), r"mode F pixels .*\[-0.5, -0.5\]"),
    (np.full((8, 8), np.nan, np.float32), "mode F image holds NaN or infinite values"),
    (np.full((8, 8), 70000, np.int32), r"mode I pixels are read as 16-bit values in \[0, 65535\]"),
])
def test_images_outside_their_modes_range_are_refused_with_the_file_named(tmp_path, pixels, message):
    from PIL import Image

    folder = write_digit_folder(tmp_path / "data", 4)
    Image.fromarray(pixels).save(folder / "odd.tiff")
    opts = parse_options(["--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache")])
    with pytest.raises(ValueError, match=r"image .*odd\.tiff: " + message):
        prepare_training_data(opts)


def test_colour_images_after_many_grayscale_ones_make_the_run_rgb_with_a_warning(tmp_path, caplog):
    from PIL import Image

    folder = write_digit_folder(tmp_path / "data", 70)  # more grayscale files than any probe of the first few
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "zz_red.png")
    opts = parse_options(["--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache")])
    with caplog.at_level("WARNING", logger="ddpm_from_scratch.training.data"):
        data = prepare_training_data(opts)
    assert data.num_channels == 3
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert "70 of 71 images are grayscale" in warning and "digit_0000.png" in warning and "zz_red.png" in warning
    assert "training in RGB" in warning


# ---- diffusers' train_unconditional.py option names ------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--save_model_epochs", "10"], "--save_model_epochs is an option of diffusers' .* use --checkpointing_steps"),
    (["--enable_xformers_memory_efficient_attention"], "scaled_dot_product_attention"),
    (["--save_images_epochs", "1", "--save_images_steps", "5"], "pass only one"),
    (["--save_images_epochs", "0"], "--save_images_epochs must be a positive integer"),
    (["--report_to", "neptune"], "not a tracker accelerate knows; use one of tensorboard, wandb"),
    (["--lr_scheduler", "warmup_stable_decay"], r"invalid choice.*cosine_with_restarts"),
    (["--output_dir", ""], "--output_dir is empty"),
])
def test_diffusers_options_this_trainer_refuses_name_the_equivalent(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_options(argv)


def test_diffusers_option_meanings():
    alone = parse_options(["--eval_batch_size", "16"])
    assert (alone.num_grid_images, alone.eval_batch_size) == (16, 16)  # diffusers: the grid has eval_batch_size images
    both = parse_options(["--eval_batch_size", "16", "--num_grid_images", "100"])
    assert (both.num_grid_images, both.eval_batch_size) == (100, 16)  # 100 images, 16 at a time
    assert parse_options(["--local_rank", "3"]).local_rank == 3  # accepted, not used
    assert parse_options(["--logging_dir", "tb"]).logging_path == Path("digits-ddpm") / "tb"  # under output_dir
    assert parse_options(["--save_images_epochs", "2"]).save_images_steps == 0
    aliases = parse_options(["--ddpm_num_steps", "500", "--ddpm_beta_schedule", "squaredcos_cap_v2",
                             "--ddpm_num_inference_steps", "50", "--logger", "none", "--lr_scheduler", "polynomial"])
    assert (aliases.num_train_timesteps, aliases.beta_schedule, aliases.grid_inference_steps) == (500, "squaredcos_cap_v2", 50)


TINY_UNET = dict(block_out_channels=[16, 32], layers_per_block=1, attention_resolutions=[4], norm_num_groups=8)


def _model_config(tmp_path: Path, kind: str) -> Path:
    from ddpm_from_scratch.saving.convert_unet import diffusers_config_from_scratch

    scratch = {"_class_name": "ScratchUNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
               "dropout": 0.0, **TINY_UNET}
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "scratch_file":
        (folder / "config.json").write_text(json.dumps(scratch))
        return folder / "config.json"
    if kind == "diffusers_folder":
        diffusers = {"_class_name": "UNet2DModel", **diffusers_config_from_scratch(scratch)}
        (folder / "config.json").write_text(json.dumps(diffusers))
        return folder
    (folder / "unet").mkdir()  # a saved pipeline: the config is in unet/
    (folder / "unet" / "config.json").write_text(json.dumps(scratch))
    return folder


@pytest.mark.parametrize("kind", ["scratch_file", "diffusers_folder", "pipeline_folder"])
def test_model_config_name_or_path_builds_the_unet(tmp_path, kind):
    from ddpm_from_scratch.training.trainer import main

    out = main(_tiny(tmp_path, "--model_config_name_or_path", str(_model_config(tmp_path, kind)),
                     "--max_train_steps", "1", "--num_grid_images", "2", "--no-use_ema"))
    config = json.loads((out / "unet" / "config.json").read_text())
    assert (config["block_out_channels"], config["layers_per_block"], config["sample_size"]) == ([16, 32], 1, 8)
    assert config["attention_resolutions"] == [4] and config["in_channels"] == 1
    assert "model_config_name_or_path" not in (out / "README.md").read_text()  # a local path means nothing elsewhere


@pytest.mark.parametrize("change, extra, message", [
    ({"out_channels": 2}, [], r"out_channels=2 .* --variance_type fixed_small needs out_channels=1.*learned_range"),
    ({"num_class_embeds": 10}, [], "is class-conditional .* add --class_conditional"),
    ({"in_channels": 4, "out_channels": 4}, [], "in_channels=4; training images have 1"),
    ({"block_out_channels": [16, 32, 32]}, ["--resolution", "6"], "--resolution 6 cannot be used with the UNet of"),
    ({"_class_name": "AutoencoderKL"}, [], "it is a AutoencoderKL config"),
    ({"attention_head_dim": "many"}, [], "--model_config_name_or_path"),
])
def test_bad_model_configs_are_refused_with_the_reason(tmp_path, change, extra, message):
    path = _model_config(tmp_path, "scratch_file")
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=message):
        parse_options(["--model_config_name_or_path", str(path), *extra])


def test_missing_model_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a folder without config.json"):
        parse_options(["--model_config_name_or_path", str(tmp_path)])


def test_save_images_epochs_samples_after_every_nth_epoch(tmp_path):
    from ddpm_from_scratch.training.trainer import main

    folder = write_digit_folder(tmp_path / "digits", 24)  # batch 8: 3 updates per epoch
    out = main(_tiny(tmp_path, "--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache"),
                     "--max_train_steps", "7", "--save_images_epochs", "1", "--checkpointing_steps", "100"))
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["final.png", "step-0000003.png", "step-0000006.png"]


# ---- the trainer's grid is ddpm-sample's, and goes to the trackers ----------------------------


@pytest.mark.parametrize("conditional", [False, True])
def test_final_grid_holds_the_images_sample_with_image_seeds_gives_for_the_saved_model(tmp_path, conditional):
    from PIL import Image

    from ddpm_from_scratch.sampling.images import to_pil_images
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
    from ddpm_from_scratch.sampling.seeded import class_labels_in_turn, sample_with_image_seeds
    from ddpm_from_scratch.training.components import grid_of
    from ddpm_from_scratch.training.trainer import main

    extra = ["--max_train_steps", "2", "--num_grid_images", "5", "--eval_batch_size", "2", "--seed", "7"]
    if conditional:
        folder = write_digit_folder(tmp_path / "digits", 16, with_labels=True)
        extra += ["--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache"), "--class_conditional"]
    out = main(_tiny(tmp_path, *extra))
    pipe = ScratchDDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    num_classes = pipe.unet.config.num_class_embeds
    images = sample_with_image_seeds(pipe, 5, num_inference_steps=3, batch_size=2, seed=7,
                                     class_labels_for=class_labels_in_turn(num_classes) if conditional else None)
    expected = grid_of(to_pil_images(images), num_classes)
    assert np.array_equal(np.asarray(Image.open(out / "samples" / "final.png")), np.asarray(expected))


def test_sample_grids_go_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ddpm_from_scratch.training.trainer import main

    out = main(_tiny(tmp_path, "--max_train_steps", "2", "--save_images_steps", "1", "--report_to", "tensorboard"))
    run_folder = out / "logs" / "ddpm_from_scratch"  # its sub-folders hold the hparams
    accumulator = EventAccumulator(str(run_folder), size_guidance={"images": 0})
    accumulator.Reload()
    assert "samples" in accumulator.Tags()["images"]
    logged = accumulator.Images("samples")
    assert [event.step for event in logged] == [1, 2]  # the grid after update 1, and the final one
    from io import BytesIO

    from PIL import Image

    final = Image.open(BytesIO(logged[-1].encoded_image_string))
    assert np.array_equal(np.asarray(final), np.asarray(Image.open(out / "samples" / "final.png").convert("RGB")))


def test_sample_grids_go_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from ddpm_from_scratch.training.trainer import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    main(_tiny(tmp_path, "--max_train_steps", "1", "--report_to", "wandb"))
    logged = list((tmp_path / "wandb").rglob("media/images/samples_*.png"))
    assert logged, sorted(str(p) for p in (tmp_path / "wandb").rglob("*"))[:30]


# ---- the Python API ---------------------------------------------------------------------------


def test_fit_trains_from_python_and_returns_the_output_folder(tmp_path):
    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
    from ddpm_from_scratch.training import fit

    out = fit(preset="digits", output_dir=str(tmp_path / "digits-ddpm"), max_train_steps=1, train_batch_size=8,
              num_grid_images=2, grid_inference_steps=2, report_to="none", use_ema=False, checkpointing_steps=None)
    assert out == tmp_path / "digits-ddpm" and ScratchDDPMPipeline.from_pretrained(out).unet.config.in_channels == 1
    with pytest.raises(ValueError, match="unknown training option 'learning_rat'.*learning_rate"):
        fit(learning_rat=1e-3)
    with pytest.raises(ValueError, match="--max_train_steps must be a positive integer"):
        fit(output_dir=str(tmp_path / "x"), max_train_steps=0)


# ---- a run killed while its first checkpoint was staged --------------------------------------------


def test_a_folder_holding_only_checkpoint_staging_folders_is_a_previous_run(tmp_path):
    from ddpm_from_scratch.training.output_dir import foreign_outputs

    out = tmp_path / "killed-at-first-checkpoint"
    staging = out / "checkpoints" / f"{layout.CHECKPOINT_STAGING_PREFIX}checkpoint-5"
    staging.mkdir(parents=True)
    (staging / "random_states_0.json").write_text("{}")
    assert foreign_outputs(parse_options(["--output_dir", str(out), "--resume_from_checkpoint", "latest"])) == []
    # anything else in checkpoints/ (a user's file, a look-alike name) keeps the folder foreign
    for other in ("notes.txt", f"{layout.CHECKPOINT_STAGING_PREFIX}checkpoint-five"):
        (out / "checkpoints" / other).mkdir()
        assert foreign_outputs(parse_options(["--output_dir", str(out)])) == ["checkpoints/"]
        (out / "checkpoints" / other).rmdir()


# ---- 8-bit data in a 32-bit integer (mode I) image ---------------------------------------------------


def test_a_mode_i_image_holding_8_bit_values_is_refused_with_the_file_named(tmp_path):
    from PIL import Image

    folder = write_digit_folder(tmp_path / "data", 4)
    widened = Image.fromarray(_gradient(np.uint8, 255)).convert("I")  # 0..255 in 32 bits: nearly black as 16-bit
    assert widened.mode == "I"
    widened.save(folder / "widened.tiff")
    opts = parse_options(["--train_data_dir", str(folder), "--cache_dir", str(tmp_path / "cache")])
    with pytest.raises(ValueError, match=r"image .*widened\.tiff: mode I pixels are read as 16-bit values in "
                                         r"\[0, 65535\], but this image holds values in \[0, 255\] only, the range "
                                         r"of 8-bit data, which would train as nearly black; save 8-bit data as mode L"):
        prepare_training_data(opts)
    Image.fromarray(np.zeros((8, 8), np.int32)).save(folder / "widened.tiff")  # black reads the same at any depth
    assert prepare_training_data(opts).num_channels == 1


@pytest.mark.parametrize("argv, launched, local_world_size, expected", [
    ([], True, None, 2), ([], True, "2", 1), (["--num_threads", "3"], True, None, 3),
    ([], False, None, None), (["--num_threads", "3"], False, None, 3),
])
def test_a_cpu_run_takes_its_share_of_the_cores(monkeypatch, argv, launched, local_world_size, expected):
    """accelerate launch exports OMP_NUM_THREADS=1 on a CPU; under it the trainer gives each process its share
    of the cores it may run on (here 2, faked), or --num_threads; without it only --num_threads is applied."""
    from accelerate import Accelerator

    from ddpm_from_scratch.training import accelerate_setup

    monkeypatch.setattr(accelerate_setup.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    if launched:
        monkeypatch.setenv(accelerate_setup.ACCELERATE_LAUNCH_VARIABLE, "no")
    else:
        monkeypatch.delenv(accelerate_setup.ACCELERATE_LAUNCH_VARIABLE, raising=False)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    before = torch.get_num_threads()
    try:
        assert accelerate_setup.set_cpu_threads(parse_options(argv), Accelerator(cpu=True)) == expected
        assert torch.get_num_threads() == (before if expected is None else expected)
    finally:
        torch.set_num_threads(before)
