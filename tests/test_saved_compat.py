"""A pipeline saved by version 0.1.0 (tests/fixtures/pipeline_v0_1_0, see tests/fixtures/README.md) still
loads and gives the images it gave then: with the package's current classes, and with diffusers alone
running the 0.1.0 code the folder shipped. A fresh save by the current code loads both ways too."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _pipeline_fixtures import run_without_package
from safetensors.torch import load_file

from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import ScratchUNet2DModel

FIXTURES = Path(__file__).parent / "fixtures"
SAVED_V0_1_0 = FIXTURES / "pipeline_v0_1_0"
SEED = 1234
CALL = dict(batch_size=2, num_inference_steps=10, output_type="pt")
ATOL = 1e-5


@pytest.fixture(scope="module")
def expected() -> np.ndarray:
    """The (B, C, H, W) images version 0.1.0 gave for CALL with seed SEED."""
    return load_file(FIXTURES / "pipeline_v0_1_0_expected.safetensors")["images"].numpy()


@pytest.fixture
def saved_v0_1_0(tmp_path) -> Path:
    """A copy of the fixture folder, so that no test can write into the fixture."""
    return Path(shutil.copytree(SAVED_V0_1_0, tmp_path / "pipeline_v0_1_0"))


def sample(pipeline: ScratchDDPMPipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(generator=torch.Generator().manual_seed(SEED), **CALL).images.numpy()


def sample_without_package(folder: Path, tmp_path: Path) -> tuple[dict, dict]:
    """Load ``folder`` with diffusers alone (the package not importable) and sample CALL with SEED."""
    tmp_path.mkdir()
    report, outputs = run_without_package(str(folder), tmp_path, CALL, seed=SEED)
    assert report["package_modules"] == [], report
    assert all(module.startswith("diffusers_modules.") for module in report["classes"]), report
    return report, outputs


def test_the_v0_1_0_folder_loads_with_the_current_package_and_gives_its_images(saved_v0_1_0, expected):
    pipeline = ScratchDDPMPipeline.from_pretrained(saved_v0_1_0)
    assert type(pipeline.unet) is ScratchUNet2DModel and type(pipeline.scheduler) is ScratchDDPMScheduler
    np.testing.assert_allclose(sample(pipeline), expected, rtol=0, atol=ATOL)


@pytest.mark.slow
def test_the_v0_1_0_folder_loads_with_diffusers_alone_and_runs_its_own_code(saved_v0_1_0, expected, tmp_path):
    report, outputs = sample_without_package(saved_v0_1_0, tmp_path / "child")
    np.testing.assert_allclose(outputs["first"], expected, rtol=0, atol=ATOL)
    # the 0.1.0 code shipped its saving module, so it can re-save itself without the package
    assert report["save_error"] is None
    np.testing.assert_allclose(outputs["second"], expected, rtol=0, atol=ATOL)


@pytest.mark.slow
def test_a_fresh_save_of_the_v0_1_0_pipeline_loads_both_ways(saved_v0_1_0, expected, tmp_path):
    resaved = tmp_path / "resaved_by_current_code"
    ScratchDDPMPipeline.from_pretrained(saved_v0_1_0).save_pretrained(resaved)
    np.testing.assert_allclose(sample(ScratchDDPMPipeline.from_pretrained(resaved)), expected, rtol=0, atol=ATOL)

    report, outputs = sample_without_package(resaved, tmp_path / "child")
    np.testing.assert_allclose(outputs["first"], expected, rtol=0, atol=ATOL)
    # without the package the current code re-saves with diffusers' own save plus its shipped code
    assert report["save_error"] is None, report
    np.testing.assert_allclose(outputs["second"], expected, rtol=0, atol=ATOL)
