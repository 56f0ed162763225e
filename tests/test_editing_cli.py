"""ddpm-sample's editing options (--image, --mask, --strength): they run, and bad combinations fail first."""

from __future__ import annotations

import re

import numpy as np
import PIL.Image
import pytest
from _pipeline_fixtures import scratch_scheduler, tiny_scratch_unet

from ddpm_from_scratch.cli import sample as sample_cli
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("editing_cli")
    ScratchDDPMPipeline(unet=tiny_scratch_unet(), scheduler=scratch_scheduler()).save_pretrained(folder / "model")
    digit = np.random.default_rng(0).integers(0, 256, size=(8, 8), dtype=np.uint8)
    PIL.Image.fromarray(digit).save(folder / "digit.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :3] = 255
    PIL.Image.fromarray(mask).save(folder / "mask.png")
    return folder


def run(saved, *options):
    return sample_cli.main([str(saved / "model"), "--num-images", "3", "--num-inference-steps", "6", "--no-progress",
                            "--cols", "3", "--out", str(saved / "out.png"), *options])


def grid_cells(saved, count=3):
    grid = np.asarray(PIL.Image.open(saved / "out.png"))
    scale = grid.shape[0] // 8
    return [grid[:, i * 8 * scale:(i + 1) * 8 * scale:scale][::scale] for i in range(count)]


def test_inpainting_with_a_named_mask_keeps_the_rest(saved):
    assert run(saved, "--image", str(saved / "digit.png"), "--mask", "lower-half", "--jump-length", "2",
               "--jump-n-sample", "2") == 0
    digit = np.asarray(PIL.Image.open(saved / "digit.png"))
    cells = grid_cells(saved)
    for cell in cells:
        np.testing.assert_array_equal(cell[:4], digit[:4])
    assert not np.array_equal(cells[0][4:], cells[1][4:])  # edit i has its own seed


def test_inpainting_with_a_mask_file_and_image_to_image(saved):
    assert run(saved, "--image", str(saved / "digit.png"), "--mask", str(saved / "mask.png"), "--jump-length", "3") == 0
    digit = np.asarray(PIL.Image.open(saved / "digit.png"))
    np.testing.assert_array_equal(grid_cells(saved)[0][:, 3:], digit[:, 3:])
    assert run(saved, "--image", str(saved / "digit.png"), "--strength", "0.5") == 0
    assert run(saved, "--image", str(saved / "digit.png")) == 0  # the default strength


@pytest.mark.parametrize(
    "options, message",
    [
        (["--mask", "centre"], "--mask needs --image"),
        (["--strength", "0.5"], "--strength needs --image"),
        (["--jump-n-sample", "3"], "--jump-length/--jump-n-sample needs --image"),
        (["--image", "{digit}", "--mask", "centre", "--strength", "0.3"], "give --mask .* or --strength .*, not both"),
        (["--image", "{digit}", "--strength", "0.5", "--jump-length", "3"], "need --mask"),
        (["--image", "{digit}", "--strength", "1.5"], r"--strength must be in \(0, 1\]"),
        (["--image", "{digit}", "--mask", "middle"], "is not a file nor one of the named masks"),
        (["--image", "missing.png", "--mask", "centre"], "--image 'missing.png' is not a file"),
        (["--image", "{digit}", "--mask", "centre", "--scheduler", "ddim"], "leave --scheduler saved"),
        (["--image", "{model}/model_index.json", "--strength", "0.5"], "is not an image PIL can read"),
        (["--image", "{digit}", "--mask", "centre", "--jump-length", "6", "--jump-n-sample", "2"],
         "jump_length=6 is longer than the chain"),
    ],
)
def test_bad_combinations_are_one_error_line(saved, capsys, options, message):
    options = [o.format(digit=saved / "digit.png", model=saved / "model") for o in options]
    (saved / "out.png").unlink(missing_ok=True)
    with pytest.raises(SystemExit) as exit_info:
        run(saved, *options)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ddpm-sample: error: ")
    assert re.search(message, error), error
    assert not (saved / "out.png").exists()


def test_inpaint_digits_benchmark_writes_the_grid_and_the_table(saved, capsys):
    from benchmarks.inpaint_digits import main as benchmark

    grid = saved / "digits_inpainting.png"
    assert benchmark([str(saved / "model"), "--num-digits", "6", "--num-inference-steps", "4", "--jump-length", "2",
                      "--jump-n-sample", "2", "--grid", str(grid), "--grid-digits", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["completion", "masked alone", "original"]
    assert rows[-1].split("|")[2].strip().endswith("/6)")
    image = PIL.Image.open(grid)
    assert image.size == (5 * 8 * 4 + 4, 3 * 8 * 4 + 2)  # 5 digits x 3 rows, scale 4, 1-px padding
