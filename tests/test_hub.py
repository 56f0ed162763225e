"""push_to_hub through huggingface_hub's real client against a loopback Hub (no internet), the model card,
and that the access token never lands in a file or a log."""

from __future__ import annotations

import importlib
import io
import json
import logging
import sys
import textwrap

import huggingface_hub
import numpy as np
import pytest
import torch
from _pipeline_fixtures import (
    FakeHub,
    run_without_package,
    scratch_scheduler,
    seeded,
    tiny_diffusers_unet,
    tiny_scratch_unet,
)
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load as load_safetensors

from ddpm_from_scratch.saving.hub import uploadable_files
from ddpm_from_scratch.saving.model_card import GENERATED_END, GENERATED_START, ModelCardInfo, redact_secrets
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.saving.shipped_code import CodeLayoutError

TOKEN = "hf_loopbackTestTokenDoNotLeak0123456789"
CALL = {"batch_size": 2, "class_labels": [1, 2], "guidance_scale": 2.0, "num_inference_steps": 3, "output_type": "np"}
EXPECTED_FILES = {
    "README.md",
    "model_index.json",
    "pipeline.py",
    "conditioning.py",
    "fast_sampling.py",
    "sample_grid.png",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "manifest.json",
    "unet/unet.py",
    "scheduler/scheduler_config.json",
    "scheduler/scheduler.py",
    "scheduler/beta_schedules.py",
    "scheduler/diffusion_math.py",
    "scheduler/tensor_utils.py",
}


@pytest.fixture
def hub(monkeypatch):
    # the client must talk to 127.0.0.1 even where CI sets HF_HUB_OFFLINE=1 or a proxy
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    huggingface_hub.close_session()  # a client made before picks up the environment again
    with FakeHub() as fake_hub:
        yield fake_hub
    huggingface_hub.close_session()


@pytest.fixture(scope="module")
def pipeline() -> ScratchDDPMPipeline:
    pipe = ScratchDDPMPipeline(unet=tiny_scratch_unet(num_class_embeds=3), scheduler=scratch_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def card_info() -> ModelCardInfo:
    return ModelCardInfo(
        dataset="sklearn-digits",
        training_config={"learning_rate": 2e-4, "train_steps": 3000, "hub": {"hub_token": TOKEN}},
        metrics={"fid": 12.3456, "bits_per_dim": 3.7},
        sample_grid=Image.new("L", (16, 16), color=128),
        tags=["digits"],
    )


def test_push_uploads_the_saved_pipeline_and_a_model_card(pipeline, hub, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    info = pipeline.push_to_hub(
        "tiny-ddpm",
        private=True,
        token=TOKEN,
        commit_message="first model",
        model_card=card_info(),
        endpoint=hub.endpoint,
    )
    repo = "test-user/tiny-ddpm"
    assert info.oid == hub.commit_oid(repo)
    # create, list the repo's files (a README and manifest to keep?), upload_folder lists them (stale weights to
    # delete?), then one commit
    assert [name for _, name, _ in hub.calls] == ["create_repo", "tree", "tree", "validate_yaml", "preupload", "commit"]
    assert hub.unexpected == []
    assert hub.repo_payloads == [{"name": "tiny-ddpm", "organization": None, "visibility": "private"}]
    assert hub.commit_headers[0]["summary"] == "first model"
    assert set(hub.authorization) == {f"Bearer {TOKEN}"}  # the token was used, for the Hub only

    uploaded = hub.files[repo]
    assert set(uploaded) == EXPECTED_FILES  # code, configs, weights, card: nothing else (no checkpoints)
    weights = load_safetensors(uploaded["unet/diffusion_pytorch_model.safetensors"])
    for key, value in pipeline.unet.state_dict().items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    assert Image.open(io.BytesIO(uploaded["sample_grid.png"])).size == (16, 16)

    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["sklearn-digits"]
    assert {"diffusers", "ddpm", "digits"} <= set(card.data.tags)
    assert f'DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)' in card.text
    assert "class_labels=[0] * 16, guidance_scale=2.0" in card.text  # the model is class-conditional
    assert '"learning_rate": 0.0002' in card.text and '"hub_token": "<redacted>"' in card.text
    assert "| fid | 12.35 |" in card.text and "| bits_per_dim | 3.7 |" in card.text
    # the metrics reach the Hub's model index as evaluation results
    assert card.data.model_name == repo
    assert [(r.metric_type, r.metric_value, r.dataset_type, r.task_type) for r in card.data.eval_results] == [
        ("fid", 12.3456, "sklearn-digits", "unconditional-image-generation"),
        ("bits_per_dim", 3.7, "sklearn-digits", "unconditional-image-generation"),
    ]
    assert "![Samples from this model](sample_grid.png)" in card.text

    for path, content in uploaded.items():
        assert TOKEN.encode() not in content, path
    out, err = capfd.readouterr()
    assert TOKEN not in caplog.text + out + err


@pytest.mark.slow
def test_the_pushed_repo_loads_from_the_hub_with_diffusers_alone_and_with_the_package(pipeline, hub, tmp_path):
    pipeline.push_to_hub("my-org/tiny", token=TOKEN, endpoint=hub.endpoint)
    assert hub.repo_payloads[-1] == {"name": "tiny", "organization": "my-org", "visibility": "public"}
    expected = pipeline(generator=seeded(0), **CALL).images

    loaded = ScratchDDPMPipeline.from_pretrained("my-org/tiny", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(loaded(generator=seeded(0), **CALL).images, expected)

    # a Hub user with diffusers only (diffusers' download and remote-code loader, in a fresh interpreter) loads
    # it, sets another scheduler config and pushes it again (diffusers' save with the code, huggingface_hub's upload)
    change = (
        "pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, variance_type='fixed_large'); "
        f"pipe.push_to_hub('no-package', token={TOKEN!r}, endpoint={hub.endpoint!r})"
    )
    report, outputs = run_without_package("my-org/tiny", tmp_path, CALL, then=change, HF_ENDPOINT=hub.endpoint)
    assert report["package_modules"] == [] and report["classes"][0].startswith("diffusers_modules.")
    np.testing.assert_allclose(outputs["first"], expected, atol=1e-6)
    assert report["save_error"] is None
    assert hub.unexpected == []

    assert EXPECTED_FILES - {"README.md", "sample_grid.png", "manifest.json"} <= set(hub.files["test-user/no-package"])
    changed = ScratchDDPMPipeline(
        unet=pipeline.unet,
        scheduler=type(pipeline.scheduler).from_config(pipeline.scheduler.config, variance_type="fixed_large"),
    )
    expected_changed = changed(generator=seeded(0), **CALL).images
    assert not np.allclose(expected_changed, expected)
    np.testing.assert_allclose(outputs["second"], expected_changed, atol=1e-6)  # the local re-save
    pushed = ScratchDDPMPipeline.from_pretrained("test-user/no-package", endpoint=hub.endpoint,
                                                 cache_dir=tmp_path / "cache")
    pushed.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(pushed(generator=seeded(0), **CALL).images, expected_changed)
    (tmp_path / "again").mkdir()
    report, outputs = run_without_package("test-user/no-package", tmp_path / "again", CALL, HF_ENDPOINT=hub.endpoint)
    np.testing.assert_allclose(outputs["first"], expected_changed, atol=1e-6)


def test_upload_is_refused_when_a_file_would_contain_the_token(pipeline, hub):
    leaky = ModelCardInfo(description=f"trained by me, token {TOKEN}")
    with pytest.raises(ValueError, match="contains the Hub access token") as error:
        pipeline.push_to_hub("leaky", token=TOKEN, model_card=leaky, endpoint=hub.endpoint)
    assert TOKEN not in str(error.value)
    assert "commit" not in [name for _, name, _ in hub.calls]


def test_save_pretrained_can_push_and_a_default_card_says_what_is_unknown(hub, tmp_path):
    pipe = ScratchDDPMPipeline(unet=tiny_diffusers_unet(), scheduler=scratch_scheduler())
    pipe.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="plain", token=TOKEN, endpoint=hub.endpoint)
    card = ModelCard(hub.files["test-user/plain"]["README.md"].decode())
    assert card.data.datasets is None and card.data.library_name == "diffusers"
    assert "Not recorded." in card.text and "Not measured." in card.text and "sample_grid" not in card.text
    assert "class_labels" not in card.text  # unconditional model: plain usage snippet
    assert "sample_grid.png" not in hub.files["test-user/plain"]
    assert (tmp_path / "local" / "README.md").is_file()


def test_a_unet_pushed_by_its_own_save_pretrained_carries_its_manifest(hub, tmp_path, monkeypatch):
    # diffusers' ModelMixin push takes no endpoint: it uses huggingface_hub's module-level client
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")  # the model card's download
    tiny_scratch_unet().save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="unet-only", token=TOKEN)
    pushed = hub.files["test-user/unet-only"]
    assert {"config.json", "diffusion_pytorch_model.safetensors", "manifest.json"} <= set(pushed)
    assert pushed["manifest.json"] == (tmp_path / "local" / "manifest.json").read_bytes()


def test_redact_secrets_is_recursive_and_keeps_everything_else():
    config = {"lr": 1e-3, "HF_TOKEN": "x", "nested": [{"api_key": "y", "steps": 5}], "password": "z"}
    assert redact_secrets(config) == {
        "lr": 1e-3,
        "HF_TOKEN": "<redacted>",
        "nested": [{"api_key": "<redacted>", "steps": 5}],
        "password": "<redacted>",
    }


MODEL_WITH_A_HELPER = """
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
import torch

from .helper import WIDTH


class HelperUNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, sample_size: int = 8, in_channels: int = 1):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(WIDTH))

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        return (sample * self.scale.sum(),)
"""


@pytest.fixture
def model_with_a_helper(tmp_path, monkeypatch):
    """A model class in a package of its own whose module imports a sibling (helperpkg/model.py -> helper.py)."""
    package = tmp_path / "helperpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("WIDTH = 2\n")
    (package / "model.py").write_text(textwrap.dedent(MODEL_WITH_A_HELPER))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("helperpkg.model").HelperUNet()
    for name in ("helperpkg", "helperpkg.model", "helperpkg.helper"):
        sys.modules.pop(name, None)


def test_a_model_whose_module_imports_siblings_is_refused_before_creating_the_repo(
    hub, tmp_path, model_with_a_helper, caplog
):
    # diffusers 0.42 downloads only unet/<module>.py of a weights folder from the Hub, not its siblings
    pipe = ScratchDDPMPipeline(unet=model_with_a_helper, scheduler=scratch_scheduler())
    with pytest.raises(CodeLayoutError, match=r"unet/model\.py imports sibling modules \['helper\.py'\]"):
        pipe.push_to_hub("helper", token=TOKEN, endpoint=hub.endpoint)
    assert hub.calls == []

    # a local folder is fine (diffusers copies siblings from disk), with a warning about the Hub
    with caplog.at_level(logging.WARNING, logger="ddpm_from_scratch.saving.folder"):
        pipe.save_pretrained(tmp_path / "local")
    assert (tmp_path / "local" / "unet" / "helper.py").is_file()
    assert "imports sibling modules ['helper.py']" in caplog.text


# ---- pushing again to an existing repo ----------------------------------------------------------------


def edit_card(text: str) -> str:
    """What a user does on the Hub: a paragraph above the generated section, one below, a license and language."""
    text = text.replace("license: apache-2.0", "license: mit\nlanguage:\n- en")
    text = text.replace(GENERATED_START, "# My digits model\n\nTrained on my laptop.\n\n" + GENERATED_START)
    return text.replace(GENERATED_END, GENERATED_END + "\n\n## Citation\n\nPlease cite me.")


@pytest.mark.parametrize("second_card", ["new metrics", "no card"])
def test_a_second_push_keeps_the_text_and_metadata_the_user_wrote(pipeline, hub, second_card):
    pipeline.push_to_hub("kept", token=TOKEN, model_card=card_info(), endpoint=hub.endpoint)
    repo = "test-user/kept"
    edited = edit_card(hub.files[repo]["README.md"].decode())
    hub.files[repo]["README.md"] = edited.encode()

    info = ModelCardInfo(dataset="sklearn-digits", metrics={"fid": 5.0}, tags=["retrained"])
    pipeline.push_to_hub("kept", token=TOKEN, model_card=info if second_card == "new metrics" else None,
                         endpoint=hub.endpoint)
    text = hub.files[repo]["README.md"].decode()
    if second_card == "no card":
        assert text == edited  # no card given: the repo's card is left as it is
        return
    card = ModelCard(text)
    assert card.text.startswith("\n# My digits model\n\nTrained on my laptop.\n\n" + GENERATED_START)
    assert card.text.rstrip().endswith(GENERATED_END + "\n\n## Citation\n\nPlease cite me.")
    assert "| fid | 5 |" in card.text and "12.35" not in card.text  # the generated section is new
    assert card.data.license == "mit" and card.data.language == ["en"]  # the user's metadata stays
    assert {"digits", "retrained", "ddpm"} <= set(card.data.tags)  # tags are merged
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("fid", 5.0)]


def test_a_variant_is_pushed_beside_the_weights_and_stale_shards_are_deleted(pipeline, hub):
    pipeline.push_to_hub("variants", token=TOKEN, endpoint=hub.endpoint, max_shard_size="20KB")
    repo = "test-user/variants"
    shards = sorted(name for name in hub.files[repo] if name.startswith("unet/diffusion_pytorch_model-"))
    assert len(shards) > 1

    pipeline.push_to_hub("variants", token=TOKEN, endpoint=hub.endpoint, variant="fp16")
    assert {"unet/diffusion_pytorch_model.fp16.safetensors", *shards} <= set(hub.files[repo])  # other variants' stay
    assert hub.deleted == []

    pipeline.push_to_hub("variants", token=TOKEN, endpoint=hub.endpoint)  # unsharded main weights again
    assert sorted(hub.deleted) == sorted([*shards, "unet/diffusion_pytorch_model.safetensors.index.json"])
    weights = {name for name in hub.files[repo] if name.startswith("unet/diffusion_pytorch_model")}
    assert weights == {"unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"}
    # the manifest of the last push still records the fp16 weights of the one before
    assert set(json.loads(hub.files[repo]["manifest.json"])["files"]) == weights
    loaded = ScratchDDPMPipeline.from_pretrained(repo, endpoint=hub.endpoint, variant="fp16")
    for key, value in pipeline.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[key], value, rtol=0, atol=0)


def test_only_the_pipeline_files_are_chosen_for_upload(tmp_path):
    for name in ["model_index.json", "README.md", "pipeline.py", "unet/config.json", "unet/unet.py",
                 "unet/diffusion_pytorch_model.safetensors", "manifest.json",
                 "scheduler/scheduler_config.json",
                 # not part of a saved pipeline
                 ".saving-x/model_index.json", "unet/.cache/huggingface/x.lock", "__pycache__/pipeline.cpython-311.pyc",
                 "checkpoints/checkpoint-1/optimizer.bin", "unet/diffusion_pytorch_model.bin", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in uploadable_files(tmp_path)] == [
        "README.md", "manifest.json", "model_index.json", "pipeline.py", "scheduler/scheduler_config.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/unet.py",
    ]
