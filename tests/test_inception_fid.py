"""Inception FID / KID against a folder of reference images: the weights' hash check, the cached reference
features, and the figures, with a tiny stand-in feature network (the real Inception weights are a download).

The stand-in is a network saved here with ``torch.export.save``; ``inception_fid(..., expected_sha256=...)``
accepts it by its own hash, which ``ddpm-evaluate --fid-weights`` never lets a user change.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_from_scratch.digits.metrics import (
    INCEPTION_SHA256,
    INCEPTION_WEIGHTS_NAME,
    file_sha256,
    frechet_distance,
    kernel_inception_distance,
    load_feature_network,
)
from ddpm_from_scratch.digits.quality import inception_fid, rgb_uint8_images


class StandInFeatures(torch.nn.Module):
    """uint8 (B, 3, H, W) -> (B, 9): per-channel mean, standard deviation and maximum, times ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        return self.scale * torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def save_stand_in(path, scale: float = 1.0):
    """The stand-in as a torch.export archive (any batch size and image size), and its SHA-256."""
    example = torch.zeros(2, 3, 12, 12, dtype=torch.uint8)
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=2),
            3: torch.export.Dim("width", min=2)}
    torch.export.save(torch.export.export(StandInFeatures(scale), (example,), dynamic_shapes={"x": dims}), str(path))
    return path, file_sha256(path)


def write_folder(folder, images: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def random_rgb(seed: int, n: int = 40, size: int = 12, brightness: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 256, size=(n, size, size, 3)) * brightness, 0, 255).astype(np.uint8)


@pytest.fixture
def stand_in(tmp_path):
    return save_stand_in(tmp_path / "stand_in.pt2")


def test_the_published_digest_matches_the_hash_prefix_in_the_file_name():
    # torch.hub's convention: the 8 hex digits before ".pth" start the file's SHA-256
    assert INCEPTION_SHA256.startswith(INCEPTION_WEIGHTS_NAME.rsplit("-", 1)[1].removesuffix(".pth"))
    assert len(INCEPTION_SHA256) == 64 and int(INCEPTION_SHA256, 16) >= 0


def test_weights_with_another_hash_are_refused_naming_the_option_and_both_hashes(stand_in, tmp_path):
    path, sha = stand_in
    reference = write_folder(tmp_path / "reference", random_rgb(0))
    with pytest.raises(ValueError) as error:
        inception_fid(path, random_rgb(1), reference, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert "--fid-weights" in message and sha in message and INCEPTION_SHA256 in message
    assert not (tmp_path / "cache").exists()  # refused before any feature was computed
    with pytest.raises(ValueError, match="is not a file"):
        load_feature_network(tmp_path / "missing.pth")


def test_figures_equal_the_metrics_on_the_stand_in_features(stand_in, tmp_path):
    path, sha = stand_in
    real, fake = random_rgb(0), random_rgb(1, brightness=0.6)
    reference = write_folder(tmp_path / "reference", real)
    report = inception_fid(path, fake, reference, cache_dir=tmp_path / "cache", expected_sha256=sha, kid_subsets=20)
    network = StandInFeatures()
    real_features = network(torch.from_numpy(real).permute(0, 3, 1, 2)).double().numpy()
    fake_features = network(torch.from_numpy(fake).permute(0, 3, 1, 2)).double().numpy()
    assert report.frechet_distance == pytest.approx(frechet_distance(real_features, fake_features), rel=1e-6)
    kid = kernel_inception_distance(real_features, fake_features, subsets=20)
    assert (report.kid, report.kid_std, report.kid_subset_size) == pytest.approx(kid, rel=1e-6)
    assert report.num_images == report.num_reference_images == 40 and report.weights_sha256 == sha
    same = inception_fid(path, real, reference, cache_dir=tmp_path / "cache", expected_sha256=sha, kid_subsets=20)
    assert same.frechet_distance < 1e-6 < report.frechet_distance
    assert "FID to the reference folder" in report.format_table()


def test_reference_features_are_cached_by_folder_content_and_weights(stand_in, tmp_path):
    path, sha = stand_in
    reference = write_folder(tmp_path / "reference", random_rgb(0))
    cache = tmp_path / "cache"
    kwargs = dict(cache_dir=cache, expected_sha256=sha, kid_subsets=5)
    first = inception_fid(path, random_rgb(1), reference, **kwargs)
    again = inception_fid(path, random_rgb(1), reference, **kwargs)
    assert not first.reference_cache_hit and again.reference_cache_hit
    assert first.reference_cache == again.reference_cache
    assert first.frechet_distance == again.frechet_distance
    assert first.reference_sha256[:20] in first.reference_cache and sha[:20] in first.reference_cache
    # one changed pixel: another folder hash, so the features are computed afresh
    image = np.asarray(Image.open(reference / "000.png")).copy()
    image[0, 0, 0] ^= 1
    Image.fromarray(image).save(reference / "000.png")
    changed = inception_fid(path, random_rgb(1), reference, **kwargs)
    assert not changed.reference_cache_hit and changed.reference_sha256 != first.reference_sha256
    # other weights: another cache file, other features
    other_path, other_sha = save_stand_in(tmp_path / "other.pt2", scale=2.0)
    other = inception_fid(other_path, random_rgb(1), reference, **{**kwargs, "expected_sha256": other_sha})
    assert not other.reference_cache_hit and other.reference_cache != changed.reference_cache
    assert other.frechet_distance == pytest.approx(4.0 * changed.frechet_distance, rel=1e-6)  # FD scales as scale^2
    assert len(list(cache.glob("fid-reference-*.safetensors"))) == 3


def test_reference_folder_mistakes_are_named(stand_in, tmp_path):
    path, sha = stand_in
    with pytest.raises(ValueError, match="--reference-dir .* is not a folder"):
        inception_fid(path, random_rgb(1), tmp_path / "missing", expected_sha256=sha, cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds 0 images"):
        inception_fid(path, random_rgb(1), tmp_path / "empty", expected_sha256=sha, cache_dir=tmp_path)
    mixed = write_folder(tmp_path / "mixed", random_rgb(0, n=3))
    Image.fromarray(random_rgb(0, n=1, size=16)[0]).save(mixed / "999.png")
    with pytest.raises(ValueError, match="all images must have one size"):
        inception_fid(path, random_rgb(1), mixed, expected_sha256=sha, cache_dir=tmp_path)


def test_rgb_images_are_accepted_in_the_usual_layouts():
    images = random_rgb(3, n=4)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2)
    for variant in (images, images.transpose(0, 3, 1, 2), images.astype(np.float32) / 255.0,
                    [Image.fromarray(im) for im in images]):
        assert torch.equal(rgb_uint8_images(variant), expected)
    grey = images[..., :1]
    assert torch.equal(rgb_uint8_images(grey), torch.from_numpy(np.repeat(grey, 3, axis=3)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        rgb_uint8_images(np.full((2, 4, 4, 3), 1.5))


# ----------------------------------------------------------------------------- ddpm-evaluate --fid-weights


@pytest.fixture(scope="module")
def rgb_pipeline(tmp_path_factory):
    """A tiny RGB 16x16 pipeline (T = 10), saved."""
    from _helpers import perturb_

    from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
    from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
    from ddpm_from_scratch.unet import ScratchUNet2DModel

    torch.manual_seed(0)
    unet = ScratchUNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                              layers_per_block=1, attention_resolutions=(), dropout=0.0, norm_num_groups=4)
    folder = tmp_path_factory.mktemp("rgb") / "tiny-rgb"
    ScratchDDPMPipeline(unet=perturb_(unet, 0.1).eval(), scheduler=ScratchDDPMScheduler(num_train_timesteps=10)
                        ).save_pretrained(folder)
    return folder


def run_evaluate(argv, capsys):
    from ddpm_from_scratch.cli.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ddpm-evaluate: error: ")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_refuses_other_weights_and_unpaired_options_before_sampling(rgb_pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ddpm_from_scratch.sampling.seeded.sample_with_image_seeds",
                        lambda *a, **k: pytest.fail("sampling started before the mistake was reported"))
    weights = tmp_path / INCEPTION_WEIGHTS_NAME
    weights.write_bytes(b"not the Inception weights")
    reference = write_folder(tmp_path / "reference", random_rgb(0, size=16))
    line = run_evaluate([str(rgb_pipeline), "--fid-weights", str(weights), "--reference-dir", str(reference)], capsys)
    assert "--fid-weights" in line and file_sha256(weights) in line and INCEPTION_SHA256 in line
    line = run_evaluate([str(rgb_pipeline), "--fid-weights", str(weights)], capsys)
    assert "--fid-weights and --reference-dir go together" in line
    line = run_evaluate([str(rgb_pipeline), "--fid-weights", str(weights), "--reference-dir", str(reference),
                         "--nll-images", "3"], capsys)
    assert "--nll-images measures the held-out digits" in line


def test_cli_prints_and_writes_the_inception_figures(rgb_pipeline, stand_in, tmp_path, capsys, monkeypatch):
    # The CLI offers no way to change the expected hash: the test swaps the published one for the stand-in's.
    from ddpm_from_scratch.cli.evaluate import main
    from ddpm_from_scratch.digits import metrics, quality

    path, sha = stand_in
    monkeypatch.setattr(metrics, "INCEPTION_SHA256", sha)
    monkeypatch.setattr(quality, "inception_fid", functools.partial(quality.inception_fid, expected_sha256=sha))
    reference = write_folder(tmp_path / "reference", random_rgb(0, n=12, size=16))
    out = tmp_path / "fid.json"
    argv = [str(rgb_pipeline), "--fid-weights", str(path), "--reference-dir", str(reference), "--num-samples", "8",
            "--num-inference-steps", "2", "--batch-size", "4", "--fid-cache-dir", str(tmp_path / "cache"),
            "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())["inception"]
    assert data["num_images"] == 8 and data["num_reference_images"] == 12 and data["weights_sha256"] == sha
    assert np.isfinite(data["frechet_distance"]) and f"{data['frechet_distance']:.3f}" in printed
    assert not data["reference_cache_hit"]
    assert main(argv) == 0 and json.loads(out.read_text())["inception"]["reference_cache_hit"]
