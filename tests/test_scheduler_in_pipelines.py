"""Swapping ScratchDDPMScheduler into diffusers' own pipelines gives the same images.

Pipelines that pass ``eta`` to every scheduler whose ``step`` takes it (Stable Diffusion: default
0.0, "DDIM") get the DDIM family's step at that eta: eta=1.0 is DDPM's step (DDPMScheduler's
images), the default 0.0 is DDIM (DDIMScheduler's images).

Every component is a tiny random-weight model built from a config (no Hub downloads); the CLIP
tokenizer has a byte-level vocabulary written here (no merges), which tokenizes any prompt.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ddpm_from_scratch import ScratchDDPMScheduler

MAX_TOKENS = 16
# |a - b| on outputs in [0, 1] after a few steps of float32 sampling through random networks: the
# schedulers agree to ~1e-6 per step (test_scheduler_parity.py); networks amplify that a little
# (measured: 1.4e-6 for DDPMPipeline's 20 steps). A wrong variance changes pixels by ~0.4.
IMAGE_ATOL = 1e-4


def byte_level_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    symbols = byte_level_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


@pytest.fixture(scope="module")
def sd_components(tokenizer):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=MAX_TOKENS, projection_dim=8,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    # Stable Diffusion's own scheduler settings (leading spacing, steps_offset=1, scaled_linear)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, steps_offset=1)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def images_with_both_schedulers(pipe, **call_kwargs):
    reference = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **call_kwargs).images
    pipe.scheduler = ScratchDDPMScheduler.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, ScratchDDPMScheduler)
    ours = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **call_kwargs).images
    return reference, ours


def test_ddpm_pipeline():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    reference, ours = images_with_both_schedulers(pipe, batch_size=2, num_inference_steps=20)
    assert reference.shape == ours.shape == (2, 8, 8, 3)
    assert np.abs(reference - ours).max() < IMAGE_ATOL
    assert reference.std() > 0.01  # not a degenerate all-clipped image


def test_stable_diffusion_pipeline(sd_components):
    pipe = StableDiffusionPipeline(**sd_components)
    pipe.set_progress_bar_config(disable=True)
    reference, ours = images_with_both_schedulers(
        pipe, prompt=["a red cube", "a blue sphere"], num_inference_steps=4, height=16, width=16, guidance_scale=3.0,
        eta=1.0,
    )
    assert reference.shape == ours.shape == (2, 16, 16, 3)
    assert np.abs(reference - ours).max() < IMAGE_ATOL
    assert reference.std() > 0.01 and np.abs(reference[0] - reference[1]).max() > 0.01  # not blank, not one image twice


def test_stable_diffusions_default_eta_gives_ddims_images(sd_components):
    pipe = StableDiffusionPipeline(**{**sd_components, "scheduler": DDIMScheduler.from_config(sd_components["scheduler"].config)})
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red cube", num_inference_steps=4, height=16, width=16, guidance_scale=3.0)
    ddim, ours = images_with_both_schedulers(pipe, **kwargs)  # SD's eta=0.0
    assert np.abs(ddim - ours).max() < IMAGE_ATOL
    ddpm = StableDiffusionPipeline(**sd_components)
    ddpm.set_progress_bar_config(disable=True)
    assert np.abs(ddpm(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images - ours).max() > 0.01


def test_stable_diffusion_img2img_pipeline_uses_add_noise(sd_components):
    pipe = StableDiffusionImg2ImgPipeline(**sd_components)
    pipe.set_progress_bar_config(disable=True)
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reference, ours = images_with_both_schedulers(
        pipe, prompt="a green cone", image=init, strength=0.6, num_inference_steps=5, guidance_scale=3.0, eta=1.0
    )
    assert reference.shape == ours.shape == (1, 16, 16, 3)
    assert np.abs(reference - ours).max() < IMAGE_ATOL
    assert reference.std() > 0.01
