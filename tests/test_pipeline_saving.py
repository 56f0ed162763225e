"""Saving and loading: diffusers' custom-code layout, loading with and without the package, round trips,
safetensors only, and clear errors for broken folders."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _pipeline_fixtures import (
    ddpm_scheduler,
    isolated_remote_code_cache,
    run_without_package,
    scratch_scheduler,
    seeded,
    tiny_diffusers_unet,
    tiny_scratch_unet,
)
from diffusers import DDIMScheduler, DDPMPipeline, DiffusionPipeline
from safetensors.torch import load_file

import ddpm_from_scratch
from ddpm_from_scratch.saving.model_card import GENERATED_START, ModelCardInfo
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.saving.folder import is_hub_repo_id
from ddpm_from_scratch.saving.shipped_code import CodeLayoutError, code_closure, relative_imports
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import ScratchUNet2DModel
from ddpm_from_scratch.saving.checksums import WeightsChecksumError

PACKAGE_DIR = Path(ddpm_from_scratch.__file__).parent
STEPS = 3
CALL = dict(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=STEPS, output_type="np")
# what a saved pipeline ships: the code that loading and sampling need, nothing for saving or publishing
CODE_FILES = {
    "pipeline.py": "pipeline.py",
    "conditioning.py": "conditioning.py",
    "fast_sampling.py": "fast_sampling.py",
    "unet/unet.py": "unet.py",
    "scheduler/scheduler.py": "scheduler.py",
    "scheduler/beta_schedules.py": "beta_schedules.py",
    "scheduler/diffusion_math.py": "diffusion_math.py",
    "scheduler/tensor_utils.py": "tensor_utils.py",
}


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def sample(pipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(generator=seeded(0), **CALL).images


@pytest.fixture(scope="module")
def original() -> ScratchDDPMPipeline:
    pipeline = ScratchDDPMPipeline(unet=tiny_scratch_unet(num_class_embeds=3), scheduler=scratch_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def expected_images(original) -> np.ndarray:
    return sample(original)


@pytest.fixture(scope="module")
def saved(original, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "tiny-ddpm"
    original.save_pretrained(path)
    return path


@pytest.fixture
def saved_copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


@pytest.fixture(scope="module")
def remote_code_cache(tmp_path_factory):
    with isolated_remote_code_cache(tmp_path_factory.mktemp("hf_modules")):
        yield


# ---- layout -----------------------------------------------------------------------------------------


def test_layout_is_diffusers_custom_code_layout(saved):
    assert files_in(saved) == set(CODE_FILES) | {
        "model_index.json",
        "README.md",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "manifest.json",
        "scheduler/scheduler_config.json",
    }
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ScratchDDPMPipeline"]
    assert index["unet"] == ["unet", "ScratchUNet2DModel"]
    assert index["scheduler"] == ["scheduler", "ScratchDDPMScheduler"]
    for saved_name, package_name in CODE_FILES.items():
        assert (saved / saved_name).read_bytes() == (PACKAGE_DIR / package_name).read_bytes(), saved_name
    assert load_file(saved / "unet/diffusion_pytorch_model.safetensors")  # a real safetensors file


def test_diffusers_components_are_recorded_as_diffusers_classes(tmp_path):
    pipeline = ScratchDDPMPipeline(
        unet=tiny_diffusers_unet(), scheduler=DDIMScheduler.from_config(ddpm_scheduler().config)
    )
    pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert not list((tmp_path / "unet").glob("*.py")) and not list((tmp_path / "scheduler").glob("*.py"))
    loaded = ScratchDDPMPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is DDIMScheduler


# ---- loading ------------------------------------------------------------------------------------------


def test_scratch_from_pretrained_uses_the_package_and_gives_the_same_images(saved, expected_images):
    loaded = ScratchDDPMPipeline.from_pretrained(saved)
    assert type(loaded.unet) is ScratchUNet2DModel and type(loaded.scheduler) is ScratchDDPMScheduler
    np.testing.assert_array_equal(sample(loaded), expected_images)
    assert loaded.name_or_path == str(saved)


def test_diffusion_pipeline_loads_the_shipped_code_and_round_trips(saved, expected_images, tmp_path, remote_code_cache):
    loaded = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert type(loaded).__name__ == "ScratchDDPMPipeline"
    for component in (loaded, loaded.unet, loaded.scheduler):
        assert type(component).__module__.startswith("diffusers_modules."), type(component)
    np.testing.assert_array_equal(sample(loaded), expected_images)

    # a pipeline built from the shipped code saves its code again (diffusers' own save would drop it)
    loaded.save_pretrained(tmp_path / "again")
    for saved_name in CODE_FILES:
        assert (tmp_path / "again" / saved_name).read_bytes() == (saved / saved_name).read_bytes(), saved_name
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "again", trust_remote_code=True)
    np.testing.assert_array_equal(sample(reloaded), expected_images)
    np.testing.assert_array_equal(sample(ScratchDDPMPipeline.from_pretrained(tmp_path / "again")), expected_images)


def test_diffusion_pipeline_with_diffusers_components_loads(tmp_path, remote_code_cache):
    pipeline = ScratchDDPMPipeline(unet=tiny_diffusers_unet(), scheduler=ddpm_scheduler())
    pipeline.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__module__.startswith("diffusers_modules.")
    kwargs = dict(batch_size=2, num_inference_steps=STEPS, output_type="np")
    pipeline.set_progress_bar_config(disable=True)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(
        loaded(generator=seeded(1), **kwargs).images, pipeline(generator=seeded(1), **kwargs).images
    )


def test_diffusion_pipeline_without_trust_remote_code_is_refused(saved):
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(saved)


def test_package_round_trips_keep_code_and_images(saved, expected_images, tmp_path):
    folder = saved
    for round_trip in range(2):
        loaded = ScratchDDPMPipeline.from_pretrained(folder)
        folder = tmp_path / f"round{round_trip}"
        loaded.save_pretrained(folder)
        assert set(CODE_FILES) <= files_in(folder)
    np.testing.assert_array_equal(sample(ScratchDDPMPipeline.from_pretrained(folder)), expected_images)


@pytest.mark.slow
def test_loads_samples_and_saves_where_the_package_is_not_importable(original, saved, expected_images, tmp_path):
    # diffusers alone: load, change the scheduler's config, save (diffusers' save plus the shipped code), load again
    change = "pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, variance_type='fixed_large')"
    report, outputs = run_without_package(str(saved), tmp_path, CALL, then=change)
    assert all(module.startswith("diffusers_modules.") for module in report["classes"]), report
    assert report["package_modules"] == [] and report["save_error"] is None
    np.testing.assert_allclose(outputs["first"], expected_images, atol=1e-6)

    resaved = tmp_path / "resaved"
    assert set(CODE_FILES) <= files_in(resaved)
    index = json.loads((resaved / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ScratchDDPMPipeline"] and index["unet"] == ["unet", "ScratchUNet2DModel"]
    assert index["scheduler"] == ["scheduler", "ScratchDDPMScheduler"] and "_name_or_path" not in index
    changed = ScratchDDPMPipeline(
        unet=original.unet, scheduler=ScratchDDPMScheduler.from_config(original.scheduler.config, variance_type="fixed_large")
    )
    expected_changed = sample(changed)
    assert not np.allclose(expected_changed, expected_images)
    np.testing.assert_allclose(outputs["second"], expected_changed, atol=1e-6)  # diffusers alone, again
    np.testing.assert_array_equal(sample(ScratchDDPMPipeline.from_pretrained(resaved)), expected_changed)


def test_passed_components_replace_saved_ones_and_unknown_kwargs_are_refused(saved):
    loaded = ScratchDDPMPipeline.from_pretrained(saved, scheduler=DDIMScheduler(num_train_timesteps=50))
    assert type(loaded.scheduler) is DDIMScheduler and type(loaded.unet) is ScratchUNet2DModel
    with pytest.raises(ValueError, match="unexpected keyword arguments.*not_an_option"):
        ScratchDDPMPipeline.from_pretrained(saved, not_an_option=1)


@pytest.mark.parametrize(
    "name, is_repo",
    [
        ("google/ddpm-cifar10-32", True),
        ("my-org/tiny.v2", True),
        ("tiny-ddpm", False),  # no namespace: a local folder
        ("outputs/run/pipeline", False),
        ("/abs/path", False),
        ("./rel/path", False),
        ("~/models/ddpm", False),
        ("org\\name", False),
        ("", False),
    ],
)
def test_hub_repo_ids_are_namespace_slash_name(name, is_repo):
    assert is_hub_repo_id(name) is is_repo


@pytest.mark.parametrize(
    "name", ["{tmp}/nowhere", "nowhere", "outputs/nowhere", "./outputs/nowhere", "runs/nowhere"]
)
def test_a_missing_local_folder_is_a_file_not_found_error_naming_it(name, tmp_path, monkeypatch):
    # "runs/nowhere" reads as a Hub repo id; offline its download fails, and the error still says the
    # folder does not exist (not only a Hub cache message)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    name = name.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError, match=f"folder '{re.escape(name)}' does not exist"):
        ScratchDDPMPipeline.from_pretrained(name)


def test_a_file_is_not_a_pipeline_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="'a_file' is a file, not a pipeline folder"):
        ScratchDDPMPipeline.from_pretrained("a_file")


def test_a_folder_given_with_tilde_is_found(saved, monkeypatch):
    monkeypatch.setenv("HOME", str(saved.parent))
    assert type(ScratchDDPMPipeline.from_pretrained(f"~/{saved.name}").unet) is ScratchUNet2DModel


# ---- saving over an existing folder -------------------------------------------------------------------------


def test_saving_into_a_used_folder_keeps_other_files_and_drops_stale_weights(original, tmp_path):
    target = tmp_path / "run"
    (target / "checkpoints").mkdir(parents=True)
    (target / "checkpoints" / "step-100.txt").write_text("training state")
    (target / "README.md").write_text("my own notes")
    (target / "unet").mkdir()
    for stale in (
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
    ):
        (target / "unet" / stale).write_bytes(b"old")

    original.save_pretrained(target)
    assert (target / "checkpoints" / "step-100.txt").read_text() == "training state"
    assert (target / "README.md").read_text() == "my own notes"  # no card given: keep the user's
    assert {p.name for p in (target / "unet").iterdir()} == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "unet.py",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind
    ScratchDDPMPipeline.from_pretrained(target)

    original.save_pretrained(target, model_card=ModelCardInfo(dataset="digits"))
    card = (target / "README.md").read_text()
    assert "- digits" in card  # the generated section and metadata are added after the user's text
    assert card.index("my own notes") < card.index(GENERATED_START)


def test_a_variant_is_saved_next_to_the_main_weights_and_loaded_by_name(original, saved_copy):
    original.save_pretrained(saved_copy, variant="fp16")
    assert {p.name for p in (saved_copy / "unet").glob("*.safetensors")} == {
        "diffusion_pytorch_model.safetensors",  # another variant's weights are kept
        "diffusion_pytorch_model.fp16.safetensors",
    }
    assert type(ScratchDDPMPipeline.from_pretrained(saved_copy, variant="fp16").unet) is ScratchUNet2DModel
    (saved_copy / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.fp16\.safetensors"):
        ScratchDDPMPipeline.from_pretrained(saved_copy, variant="fp16")


# ---- safetensors only -------------------------------------------------------------------------------------------


def test_weights_are_safetensors_only_and_loading_never_unpickles(original, saved, saved_copy, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="safe_serialization"):
        original.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ValueError, match="use_safetensors"):
        ScratchDDPMPipeline.from_pretrained(saved, use_safetensors=False)

    unpickled = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or real_load(*a, **k))
    ScratchDDPMPipeline.from_pretrained(saved)

    # a folder with only a pickle checkpoint is refused, and the pickle is not opened
    weights = saved_copy / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), saved_copy / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors.*diffusion_pytorch_model\.bin"):
        ScratchDDPMPipeline.from_pretrained(saved_copy)
    assert unpickled == []


# ---- broken folders ---------------------------------------------------------------------------------------------


def _write_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _flip_last_byte(path: Path) -> None:
    """Change the last byte of the file: inside the last tensor's data, which safetensors never checks."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _drop_key(path: Path, key: str) -> None:
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))


BREAKAGES = {
    "no model_index": (lambda f: (f / "model_index.json").unlink(), FileNotFoundError, r"model_index\.json"),
    "corrupt model_index": (
        lambda f: (f / "model_index.json").write_text("{not json"),
        ValueError,
        r"model_index\.json.*not valid JSON",
    ),
    "other pipeline class": (
        lambda f: _write_json(f / "model_index.json", _class_name="DDPMPipeline"),
        ValueError,
        r"model_index\.json.*'DDPMPipeline'",
    ),
    "no unet entry": (lambda f: _drop_key(f / "model_index.json", "unet"), ValueError, r"model_index\.json.*'unet'"),
    "module outside the package": (
        lambda f: _write_json(f / "model_index.json", unet=["evil", "Evil"]),
        ValueError,
        r"model_index\.json.*'evil' is not part of",
    ),
    "no scheduler folder": (lambda f: shutil.rmtree(f / "scheduler"), FileNotFoundError, r"scheduler.*is missing"),
    "no unet config": (lambda f: (f / "unet" / "config.json").unlink(), FileNotFoundError, r"unet/config\.json"),
    "no weights": (
        lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
        FileNotFoundError,
        r"unet' has no safetensors weights \(diffusion_pytorch_model\.safetensors",
    ),
    "a byte of a tensor changed": (
        lambda f: _flip_last_byte(f / "unet" / "diffusion_pytorch_model.safetensors"),
        WeightsChecksumError,
        r"unet/diffusion_pytorch_model\.safetensors' is corrupted: .* does not match its SHA-256",
    ),
    "malformed manifest": (
        lambda f: _write_json(f / "manifest.json", files={"unet/x.safetensors": {"size": 1, "sha256": "not a digest"}}),
        ValueError,
        r"manifest\.json' is malformed",
    ),
    "garbage weights": (
        lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10),
        OSError,
        r"unet/diffusion_pytorch_model\.safetensors",
    ),
    "truncated weights": (
        lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
            (f / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()[:200]
        ),
        OSError,
        r"unet/diffusion_pytorch_model\.safetensors",
    ),
    "unet config of another class": (
        lambda f: _write_json(f / "unet" / "config.json", _class_name="UNet2DModel"),
        ValueError,
        r"unet/config\.json.*'UNet2DModel'",
    ),
    "scheduler config of another class": (
        lambda f: _write_json(f / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler"),
        ValueError,
        r"scheduler/scheduler_config\.json.*'DDIMScheduler'",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_folders_give_errors_naming_the_file(saved_copy, breakage):
    break_folder, error, match = BREAKAGES[breakage]
    break_folder(saved_copy)
    with pytest.raises(error, match=match):
        ScratchDDPMPipeline.from_pretrained(saved_copy)


def test_a_plain_diffusers_pipeline_folder_is_refused_by_name(tmp_path):
    DDPMPipeline(unet=tiny_diffusers_unet(), scheduler=ddpm_scheduler()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_index\.json describes a 'DDPMPipeline' pipeline"):
        ScratchDDPMPipeline.from_pretrained(tmp_path)


# ---- what may be shipped as remote code ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, match",
    [
        ("from . import tensor_utils\n", "single-dot"),
        ("from ..tensor_utils import append_dims\n", "single-dot"),
        ("from .sub.module import x\n", "single-dot"),
        ("import ddpm_from_scratch.unet\n", "absolute import of 'ddpm_from_scratch'"),
        ("from ddpm_from_scratch.unet import ScratchUNet2DModel\n", "absolute import"),
        ("def f():\n    from ddpm_from_scratch import unet\n", "absolute import"),
    ],
)
def test_imports_diffusers_cannot_follow_are_refused(source, match):
    with pytest.raises(CodeLayoutError, match=match):
        relative_imports(source, "module.py", "ddpm_from_scratch")


def test_the_pipeline_ships_only_what_loading_and_sampling_need():
    closure = [p.name for p in code_closure(PACKAGE_DIR / "pipeline.py", "ddpm_from_scratch")]
    assert sorted(closure) == ["conditioning.py", "fast_sampling.py", "pipeline.py"]
    # saving, loading with the package and publishing are imported by name, so none of them is followed
    for name in ("folder.py", "shipped_code.py", "model_card.py", "hub.py", "atomic_io.py", "checksums.py"):
        assert name not in closure


def test_closure_follows_single_dot_imports_and_what_diffusers_reads_in_text(tmp_path):
    assert relative_imports("import torch\nfrom .a import b\nif True:\n    from .c import d\n", "m.py", "pkg") == [
        "a",
        "c",
    ]
    closure = code_closure(PACKAGE_DIR / "scheduler.py", "ddpm_from_scratch")
    assert sorted(p.name for p in closure) == [
        "beta_schedules.py",
        "diffusion_math.py",
        "scheduler.py",
        "tensor_utils.py",
    ]
    assert [p.name for p in code_closure(PACKAGE_DIR / "unet.py", "ddpm_from_scratch")] == ["unet.py"]
    # diffusers' loader scans text, so an import-looking docstring line needs its file too
    (tmp_path / "m.py").write_text('"""Example:\nfrom .ghost import thing\n"""\n')
    with pytest.raises(CodeLayoutError, match="ghost"):
        code_closure(tmp_path / "m.py", "pkg")


# ---- checksums of the weights ----------------------------------------------------------------------------------


def test_the_manifest_records_size_and_sha256_of_every_weights_file(saved):
    weights = saved / "unet" / "diffusion_pytorch_model.safetensors"
    assert json.loads((saved / "manifest.json").read_text()) == {
        "format": 1,  # the training checkpoints' format; the scheduler has no weights
        "files": {"unet/diffusion_pytorch_model.safetensors": {
            "size": weights.stat().st_size, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}},
    }
    assert not list(saved.rglob("*.sha256"))


def test_a_variant_and_shards_get_their_own_checksums_and_verify(original, saved_copy, caplog):
    original.save_pretrained(saved_copy, variant="fp16", max_shard_size="20KB")
    unet = saved_copy / "unet"
    shards = sorted(p.name for p in unet.glob("diffusion_pytorch_model.fp16-*.safetensors"))
    assert len(shards) > 1
    recorded = json.loads((saved_copy / "manifest.json").read_text())["files"]
    # the other variant's weights are kept, and stay recorded
    assert set(recorded) == {f"unet/{name}" for name in [
        *shards, "diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_pytorch_model.safetensors"]}
    with caplog.at_level(logging.WARNING):
        ScratchDDPMPipeline.from_pretrained(saved_copy, variant="fp16")
    assert "no SHA-256 recorded" not in caplog.text
    _flip_last_byte(unet / shards[-1])
    with pytest.raises(WeightsChecksumError, match=re.escape(shards[-1]) + "' is corrupted"):
        ScratchDDPMPipeline.from_pretrained(saved_copy, variant="fp16")


def test_a_folder_without_checksums_loads_with_a_warning(saved_copy, expected_images, caplog):
    (saved_copy / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="ddpm_from_scratch.saving.checksums"):
        loaded = ScratchDDPMPipeline.from_pretrained(saved_copy)
    assert "diffusion_pytorch_model.safetensors': no SHA-256 recorded" in caplog.text
    assert "loaded without verifying" in caplog.text
    np.testing.assert_array_equal(sample(loaded), expected_images)


# ---- loading keywords ------------------------------------------------------------------------------------------


@pytest.fixture
def model_loading_kwargs(monkeypatch):
    """Record what ScratchUNet2DModel.from_pretrained receives."""
    received = []
    real = ScratchUNet2DModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        received.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(ScratchUNet2DModel, "from_pretrained", classmethod(spy))
    return received


@pytest.mark.parametrize(
    "kwargs",
    [
        {"torch_dtype": torch.float64},
        {"dtype": torch.float64},
        {"device_map": "cpu"},
        {"low_cpu_mem_usage": False},
        {"low_cpu_mem_usage": True, "device_map": "cpu", "disable_mmap": True},
        {"ignore_mismatched_sizes": False, "max_memory": None},
    ],
    ids=lambda kwargs: ",".join(kwargs),
)
def test_model_loading_keywords_are_passed_to_the_models(saved, model_loading_kwargs, kwargs):
    loaded = ScratchDDPMPipeline.from_pretrained(saved, trust_remote_code=True, **kwargs)
    assert model_loading_kwargs == [{"use_safetensors": True, **kwargs}]
    expected_dtype = kwargs.get("torch_dtype", kwargs.get("dtype", torch.float32))
    assert loaded.unet.dtype == expected_dtype and loaded.device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"use_safetensors": False}, "use_safetensors=False is not supported.*safetensors only"),
        ({"use_onnx": True}, "use_onnx=True is not supported.*no ONNX weights"),
        ({"custom_pipeline": "my_pipe"}, "custom_pipeline='my_pipe'.*trust_remote_code=True"),
        ({"proxies": {"https": "http://proxy"}}, "proxies=.*HTTPS_PROXY"),
        ({"output_loading_info": True}, "output_loading_info=True.*returns the pipeline only"),
        ({"not_an_option": 1}, r"unexpected keyword arguments \['not_an_option'\]; allowed: .*device_map"),
    ],
)
def test_loading_keywords_that_cannot_apply_are_refused_saying_why(saved, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScratchDDPMPipeline.from_pretrained(saved, **kwargs)


def test_harmless_defaults_of_refused_keywords_are_accepted(saved):
    ScratchDDPMPipeline.from_pretrained(saved, use_safetensors=True, use_onnx=False, custom_pipeline=None, proxies=None)


# ---- training checkpoint folders --------------------------------------------------------------------------------


def make_checkpoint(folder: Path, raw: ScratchUNet2DModel, ema: ScratchUNet2DModel | None, manifest: bool) -> Path:
    """A checkpoint-N folder as the trainer writes it (docs/training.md): unet/, unet_ema/, scheduler/, state."""
    raw.save_pretrained(folder / "unet")
    if ema is not None:
        ema.save_pretrained(folder / "unet_ema")
    scratch_scheduler().save_pretrained(folder / "scheduler")
    (folder / "training_state.json").write_text(json.dumps({"step": 7}))
    if manifest:
        files = {
            p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(folder.rglob("*")) if p.is_file()
        }
        (folder / "manifest.json").write_text(json.dumps({"format": 1, "files": files}))
    return folder


@pytest.mark.parametrize("with_ema", [True, False], ids=["ema", "no-ema"])
def test_a_training_checkpoint_loads_its_ema_weights_else_the_raw_ones(tmp_path, with_ema, caplog):
    raw, ema = tiny_scratch_unet(num_class_embeds=3, seed=1), tiny_scratch_unet(num_class_embeds=3, seed=2)
    folder = make_checkpoint(tmp_path / "checkpoint-7", raw, ema if with_ema else None, manifest=True)
    with caplog.at_level(logging.WARNING):
        loaded = ScratchDDPMPipeline.from_pretrained(folder)
    assert "no SHA-256 recorded" not in caplog.text  # verified against manifest.json
    assert type(loaded.scheduler) is ScratchDDPMScheduler
    expected = (ema if with_ema else raw).state_dict()
    for key, value in loaded.unet.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    np.testing.assert_array_equal(
        sample(loaded), sample(ScratchDDPMPipeline(unet=ema if with_ema else raw, scheduler=scratch_scheduler()))
    )


def test_a_damaged_checkpoint_is_refused_and_one_without_manifest_warns(tmp_path, caplog):
    folder = make_checkpoint(tmp_path / "checkpoint-7", tiny_scratch_unet(), tiny_scratch_unet(seed=3), manifest=True)
    _flip_last_byte(folder / "unet_ema" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsChecksumError, match=r"unet_ema/diffusion_pytorch_model\.safetensors' is corrupted"):
        ScratchDDPMPipeline.from_pretrained(folder)
    (folder / "manifest.json").unlink()
    # the model folder's own manifest (ScratchUNet2DModel.save_pretrained) still catches it
    with pytest.raises(OSError, match=r"unet_ema/diffusion_pytorch_model\.safetensors' is corrupted"):
        ScratchDDPMPipeline.from_pretrained(folder)
    for nested in folder.glob("*/manifest.json"):  # a checkpoint saved without any checksum (0.1.0)
        nested.unlink()
    with caplog.at_level(logging.WARNING, logger="ddpm_from_scratch.saving.checksums"):
        ScratchDDPMPipeline.from_pretrained(folder)
    assert "unet_ema/diffusion_pytorch_model.safetensors': no SHA-256 recorded" in caplog.text


# ---- the access token never reaches a local save -----------------------------------------------------------------


@pytest.mark.parametrize("given", ["env", "argument"])
def test_a_card_holding_the_access_token_is_refused_before_the_folder_is_written(original, tmp_path, monkeypatch, given):
    token = "hf_" + "Secret" * 6
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token of the user's
    leaky = ModelCardInfo(description=f"trained on my laptop, token {token}")
    if given == "env":
        monkeypatch.setenv("HF_TOKEN", token)
    target = tmp_path / "out"
    with pytest.raises(ValueError, match=r"refusing to save: README\.md .* contains the Hub access token") as error:
        original.save_pretrained(target, model_card=leaky, **({"token": token} if given == "argument" else {}))
    assert token not in str(error.value)
    assert not list(target.rglob("*")) and [p.name for p in tmp_path.iterdir() if p.name != "hf_home"] == ["out"]
    original.save_pretrained(target, model_card=ModelCardInfo(description="trained on my laptop"))  # no token: saved
    assert token not in (target / "README.md").read_text()
