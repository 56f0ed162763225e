"""The sampling command (ddpm-sample), make_image_grid and the pixel scalings of image_utils."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _pipeline_fixtures import (  # noqa: F401 (single_torch_thread: autouse fixture)
    scratch_scheduler,
    single_torch_thread,
    tiny_diffusers_unet,
    tiny_scratch_unet,
)
from PIL import Image

from ddpm_from_scratch.image_utils import make_image_grid, save_image_atomic, uint8_to_model_range, unit_range_to_uint8
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
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
    assert "batch 3/3" in captured.err and "2/2" in captured.err  # diffusers' progress bar, per batch
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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--class-label", "1"], "unconditional"),
        (["--num-inference-steps", "1000"], "num_inference_steps"),
        (["--out", "grid.unknownformat"], "image format"),
    ],
)
def test_bad_requests_exit_with_a_message(saved, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(saved), "--num-images", "1", "--num-inference-steps", "1", "--out", str(tmp_path / "g.png"), *extra])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


def test_missing_folder_and_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere" / "pipe"), "--out", str(tmp_path / "g.png")])
    assert exit_info.value.code == 1 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--num-images", "0"])
    assert exit_info.value.code == 2 and "--num-images" in capsys.readouterr().err


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
