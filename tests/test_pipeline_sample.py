"""The sampling command (ddpm-sample), make_image_grid and the pixel scalings of sampling/images.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _helpers import read_only_folder
from _pipeline_fixtures import (
    scratch_scheduler,
    tiny_diffusers_unet,
    tiny_scratch_unet,
)
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image

from ddpm_from_scratch.sampling.images import make_image_grid, save_image_atomic, uint8_to_model_range, unit_range_to_uint8
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.cli.args import resolve_device
from ddpm_from_scratch.cli.sample import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "pipe"
    ScratchDDPMPipeline(unet=tiny_diffusers_unet(), scheduler=scratch_scheduler()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved_conditional(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "cond"
    pipeline = ScratchDDPMPipeline(unet=tiny_scratch_unet(num_class_embeds=3), scheduler=scratch_scheduler())
    pipeline.save_pretrained(path)
    return path


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---- the command --------------------------------------------------------------------------------


def test_writes_a_padded_grid_with_a_progress_bar(saved, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = [str(saved), "--num-images", "5", "--out", str(out), "--num-inference-steps", "2", "--device", "cpu"]
    assert main([*args, "--batch-size", "2", "--scale", "1"]) == 0
    captured = capsys.readouterr()
    # one bar over all 5 images (not one per batch of 2), with the rate in images/s
    assert "5.0/5 images" in captured.err and "images/s" in captured.err and captured.err.count("\n") == 1
    assert f"wrote {out}" in captured.out
    grid = Image.open(out)
    assert grid.mode == "L" and grid.size == (3 * 8, 2 * 8)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert read(out)[8:, 16:].max() == 0  # the sixth cell is padding

    # image i is seeded seed + i, so the grid does not depend on the batch size
    out_one_batch = tmp_path / "one_batch.png"
    main([*args[:3], "--out", str(out_one_batch), *args[5:], "--batch-size", "8", "--scale", "1"])
    np.testing.assert_array_equal(read(out_one_batch), read(out))
    out_other_seed = tmp_path / "seed1.png"
    main([*args[:3], "--out", str(out_other_seed), *args[5:], "--seed", "1", "--scale", "1"])
    assert not np.array_equal(read(out_other_seed), read(out))


def test_default_scale_ddim_and_class_labels(saved_conditional, tmp_path):
    out = tmp_path / "digits.png"
    argv = [str(saved_conditional), "--num-images", "6", "--out", str(out), "--num-inference-steps", "2"]
    assert main([*argv, "--scheduler", "ddim", "--class-label", "all", "--guidance-scale", "2", "--cols", "3"]) == 0
    assert Image.open(out).size == (3 * 32, 2 * 32)  # 8x8 images enlarged 4x by default


def test_no_progress_hides_the_bar(saved, tmp_path, capsys):
    argv = [str(saved), "--num-images", "3", "--out", str(tmp_path / "g.png"), "--num-inference-steps", "2"]
    assert main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def _a_file(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path / "file"


MISTAKES = {
    "missing folder": (lambda saved, tmp: [str(tmp / "nowhere")], "folder '{tmp}/nowhere' does not exist"),
    "missing relative folder": (lambda saved, tmp: ["missing-folder"], "folder 'missing-folder' does not exist"),
    "not a model folder": (lambda saved, tmp: [str(tmp)], "model_index.json"),
    "unconditional model with a class": (lambda saved, tmp: [str(saved), "--class-label", "1"], "unconditional"),
    "too many steps": (lambda saved, tmp: [str(saved), "--num-inference-steps", "1000"], "num_inference_steps=1000"),
    "unknown image format": (lambda saved, tmp: [str(saved), "--out", "grid.unknownformat"],
                             "--out 'grid.unknownformat': the file name must end in one of"),
    "out is a folder": (lambda saved, tmp: [str(saved), "--out", str(tmp)], "--out '{tmp}' is a folder"),
    "out under a file": (lambda saved, tmp: [str(saved), "--out", str(_a_file(tmp) / "g.png")], "is a file, not a folder"),
    "unavailable device": (lambda saved, tmp: [str(saved), "--device", "cuda:7"], "--device 'cuda:7'"),
    "unknown device": (lambda saved, tmp: [str(saved), "--device", "gpu"], "--device 'gpu' is not a torch device"),
    "num images 0": (lambda saved, tmp: [str(saved), "--num-images", "0"], "--num-images: must be an integer >= 1"),
}
if os.geteuid() != 0:  # root may write anywhere
    MISTAKES["out in a read-only folder"] = (
        lambda saved, tmp: [str(saved), "--out", str(read_only_folder(tmp) / "g.png")], "permission denied"
    )


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistakes_are_one_error_line_and_exit_status_2_before_sampling(saved, tmp_path, capsys, monkeypatch, mistake):
    make_argv, message = MISTAKES[mistake]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ddpm_from_scratch.cli.sample.sample_with_image_seeds",
                        lambda *a, **k: pytest.fail("sampling started before the mistake was reported"))
    argv = make_argv(saved, tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--num-inference-steps", "1"] if "--num-inference-steps" not in argv else argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("ddpm-sample: error: ")]
    assert len(error_lines) == 1 and "Traceback" not in err, err
    assert message.format(tmp=tmp_path) in error_lines[0]
    assert not (tmp_path / "g.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="--device 'cuda': CUDA is not available here"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["bogus", "cuda:x", "cpu:-1", "", "gpu0"])
def test_a_bogus_device_string_names_the_argument_and_the_allowed_forms(name):
    with pytest.raises(ValueError) as error:
        resolve_device(name)
    assert str(error.value) == (
        f"--device {name!r} is not a torch device; allowed forms: auto, cpu, cuda, cuda:N (N a GPU index), mps, "
        "or another torch device type such as xpu"
    )


def test_a_write_error_names_the_path_the_user_gave(saved, tmp_path, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / ".g.png.abc123.tmp"))

    monkeypatch.setattr("ddpm_from_scratch.cli.sample.save_image_atomic", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        main([str(saved), "--num-images", "1", "--num-inference-steps", "1", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"could not write --out '{tmp_path / 'g.png'}': No space left on device" in err and ".tmp" not in err


def test_a_training_checkpoint_folder_is_sampled_from_its_ema_weights(tmp_path):
    raw, ema = tiny_scratch_unet(seed=1), tiny_scratch_unet(seed=2)
    checkpoint = tmp_path / "checkpoint-5"
    raw.save_pretrained(checkpoint / "unet")
    ema.save_pretrained(checkpoint / "unet_ema")
    scratch_scheduler().save_pretrained(checkpoint / "scheduler")
    (checkpoint / "training_state.json").write_text("{}")
    argv = ["--num-images", "3", "--num-inference-steps", "2", "--scale", "1", "--no-progress"]
    assert main([str(checkpoint), "--out", str(tmp_path / "ckpt.png"), *argv]) == 0
    pipeline_folder = tmp_path / "ema-pipeline"
    ScratchDDPMPipeline(unet=ema, scheduler=scratch_scheduler()).save_pretrained(pipeline_folder)
    assert main([str(pipeline_folder), "--out", str(tmp_path / "ema.png"), *argv]) == 0
    np.testing.assert_array_equal(read(tmp_path / "ckpt.png"), read(tmp_path / "ema.png"))


def test_a_stock_diffusers_pipeline_folder_is_sampled_with_its_own_pipeline(tmp_path, capsys):
    stock = DDPMPipeline(unet=tiny_diffusers_unet(), scheduler=DDPMScheduler(num_train_timesteps=50))
    stock.save_pretrained(tmp_path / "stock")
    argv = ["--num-images", "3", "--num-inference-steps", "2", "--seed", "4", "--cols", "3", "--scale", "1",
            "--no-progress"]
    assert main([str(tmp_path / "stock"), "--out", str(tmp_path / "stock.png"), *argv]) == 0
    stock.set_progress_bar_config(disable=True)
    expected = [
        stock(batch_size=1, generator=[torch.Generator().manual_seed(4 + i)], num_inference_steps=2,
              output_type="np").images[0, ..., 0]
        for i in range(3)
    ]
    from_cli = read(tmp_path / "stock.png").reshape(8, 3, 8).transpose(1, 0, 2)
    np.testing.assert_array_equal(from_cli, unit_range_to_uint8(np.stack(expected)))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "stock"), "--out", str(tmp_path / "x.png"), "--class-label", "1", *argv])
    assert "--class-label and --guidance-scale need a ScratchDDPMPipeline, not a DDPMPipeline" in capsys.readouterr().err


# ---- one sampling path: the pipeline with per-image generators, ddpm-sample, ddpm-evaluate ----------------


@pytest.mark.parametrize("variance_type", ["saved", "fixed_large"])
def test_pipeline_ddpm_sample_and_ddpm_evaluate_give_the_same_images(saved, tmp_path, variance_type):
    from ddpm_from_scratch.cli.args import override_variance_type
    from ddpm_from_scratch.digits.evaluation import sample_digits

    count, steps, seed = 5, 3, 11
    pipeline = ScratchDDPMPipeline.from_pretrained(saved)
    pipeline.set_progress_bar_config(disable=True)
    override_variance_type(pipeline, variance_type)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    direct = unit_range_to_uint8(
        pipeline(batch_size=count, generator=generators, num_inference_steps=steps, output_type="np").images[..., 0]
    )

    out = tmp_path / "row.png"
    assert main([str(saved), "--num-images", str(count), "--num-inference-steps", str(steps), "--seed", str(seed),
                 "--variance-type", variance_type, "--batch-size", "2", "--cols", str(count), "--scale", "1",
                 "--out", str(out), "--no-progress"]) == 0
    from_cli = read(out).reshape(8, count, 8).transpose(1, 0, 2)  # one row of 8x8 cells -> (count, 8, 8)
    from_evaluate = sample_digits(pipeline, count, num_inference_steps=steps, batch_size=3, seed=seed)

    np.testing.assert_array_equal(from_cli, direct)
    np.testing.assert_array_equal(from_evaluate, direct)


# ---- make_image_grid --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "count, cols, size", [(1, None, (4, 4)), (5, None, (12, 8)), (64, None, (32, 32)), (5, 2, (8, 12))]
)
def test_grid_shape_for_any_count(count, cols, size):
    images = [Image.new("L", (4, 4), color=10 + i) for i in range(count)]
    grid = make_image_grid(images, cols=cols)
    assert grid.size == size and grid.mode == "L"
    columns = size[0] // 4
    last_row, last_col = divmod(count - 1, columns)
    assert grid.getpixel((last_col * 4, last_row * 4)) == 10 + count - 1


def test_grid_accepts_arrays_and_tensors_and_pads_scales():
    batch = torch.rand(3, 3, 2, 2)
    from_tensor = make_image_grid(batch, cols=2, padding=1, scale=2)
    from_array = make_image_grid(batch.permute(0, 2, 3, 1).numpy(), cols=2, padding=1, scale=2)
    assert from_tensor.mode == "RGB" and from_tensor.size == (2 * 4 + 1, 2 * 4 + 1)
    np.testing.assert_array_equal(np.asarray(from_tensor), np.asarray(from_array))
    assert np.asarray(from_tensor)[4, :].max() == 0  # the padding row between the two rows of cells
    mixed = make_image_grid([Image.new("L", (2, 2), 255), Image.new("RGB", (2, 2), (255, 0, 0))])
    assert mixed.mode == "RGB" and mixed.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "images, kwargs, error",
    [
        ([], {}, ValueError),
        ([Image.new("L", (2, 2))], {"cols": 0}, ValueError),
        ([Image.new("L", (2, 2)), Image.new("L", (3, 2))], {}, ValueError),
        (torch.rand(2, 2, 2), {}, ValueError),
        (["not an image"], {}, TypeError),
    ],
)
def test_grid_rejects_bad_input(images, kwargs, error):
    with pytest.raises(error):
        make_image_grid(images, **kwargs)


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    save_image_atomic(Image.new("L", (2, 2)), tmp_path / "a.png")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    with pytest.raises(ValueError, match="suffix"):
        save_image_atomic(Image.new("L", (2, 2)), tmp_path / "a")


def test_pixel_scalings_round_trip_every_8_bit_value():
    pixels = np.arange(256, dtype=np.uint8)
    x = uint8_to_model_range(pixels)
    assert x.dtype == torch.float32 and x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_array_equal(unit_range_to_uint8((x.numpy() + 1) / 2), pixels)
    np.testing.assert_array_equal(unit_range_to_uint8(np.array([-0.5, 0.4 / 255, 0.6 / 255, 1.5])), [0, 0, 1, 255])
    assert uint8_to_model_range(pixels.reshape(16, 16)[::-1]).shape == (16, 16)  # negative strides
