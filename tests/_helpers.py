"""Plain helpers the tests call with arguments: a perturbed model, a read-only folder, a free port,
the rows of a printed markdown table."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

# the paper's CIFAR-10 model in diffusers' DDPM layout (google/ddpm-cifar10-32's config)
DIFFUSERS_CIFAR10_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=None,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    dropout=0.1,
)


def perturb_(model: torch.nn.Module, scale: float, seed: int | None = None) -> torch.nn.Module:
    """Add ``scale`` * N(0, 1) noise to every parameter (GroupNorm affine ones included), in place.

    The paper's zero-initialised output layer makes an untrained UNet predict 0 everywhere, so a
    comparison on it could not fail. The noise comes from torch's global generator (seed None, as
    left by the caller's ``torch.manual_seed``) or from a fresh ``torch.Generator`` seeded with ``seed``."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model


def read_only_folder(tmp_path: Path) -> Path:
    """An empty folder under ``tmp_path`` that the test process cannot write into (skips as root)."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torch.distributed's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the markdown table(s) in ``output`` (lines starting "| "), as stripped cells; the
    first such line, the header, is left out."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
