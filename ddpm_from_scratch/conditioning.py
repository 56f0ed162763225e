"""Class-conditional sampling: which classes a UNet knows, the checks of ``class_labels``, and
classifier-free guidance (Ho & Salimans 2022).

Remote-code rule: this module ships with every saved pipeline, so it imports only the standard
library and torch.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch


def is_int(value: Any) -> bool:
    """An integer argument: a numbers.Integral that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def classifier_free_guidance(
    noise_uncond: torch.Tensor, noise_cond: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Ho & Salimans (2022), eq. 6 in diffusers' parametrisation: eps = eps(x, null) + w (eps(x, y) - eps(x, null)).

    w = 1 is the conditional model, w = 0 the unconditional one, w > 1 sharpens towards class y.
    """
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def class_conditioning(unet: Any) -> tuple[int, int] | None:
    """(number of classes, null class label) of a class-conditional UNet; None if it is unconditional.

    ScratchUNet2DModel says it itself (``null_class_label`` = num_class_embeds = number of classes).
    For diffusers' UNet2DModel, whose embedding table has ``num_class_embeds`` rows, the convention
    here is that the last row is the null class, leaving num_class_embeds - 1 real classes.
    """
    if hasattr(unet, "null_class_label"):
        null = unet.null_class_label
        return None if null is None else (int(null), int(null))
    num_class_embeds = getattr(unet.config, "num_class_embeds", None)
    if num_class_embeds is None:
        return None
    return num_class_embeds - 1, num_class_embeds - 1


def guided_model_output(
    cond: torch.Tensor, uncond: torch.Tensor, channels: int, guidance_scale: float
) -> torch.Tensor:
    """Guide the noise prediction (the first ``channels`` channels, `classifier_free_guidance`).

    A learned variance (output = [eps | v]) is not guided: the conditional branch's v is kept.
    """
    guided = classifier_free_guidance(uncond[:, :channels], cond[:, :channels], guidance_scale)
    return torch.cat([guided, cond[:, channels:]], dim=1)


def class_label_tensors(
    unet: Any, class_labels: Any, guidance_scale: float | None, batch_size: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(labels, null labels) as (B,) long tensors; (None, None) for an unconditional UNet.

    No labels on a class-conditional UNet means unconditional samples: every label is the null class.
    """
    conditioning = class_conditioning(unet)
    if conditioning is None:
        if class_labels is not None:
            raise ValueError("class_labels were given but the UNet is unconditional (its num_class_embeds is None)")
        if guidance_scale is not None:
            raise ValueError("guidance_scale needs a class-conditional UNet; this UNet is unconditional")
        return None, None
    num_classes, null_label = conditioning
    null_labels = torch.full((batch_size,), null_label, dtype=torch.long, device=device)
    if class_labels is None:
        if guidance_scale is not None:
            raise ValueError("guidance_scale needs class_labels (classifier-free guidance steers towards a class)")
        return null_labels, null_labels
    if is_int(class_labels):
        labels = torch.full((batch_size,), class_labels, dtype=torch.long)
    else:
        labels = torch.as_tensor(class_labels)
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"class_labels must be integers, got dtype {labels.dtype}")
        if labels.ndim != 1 or labels.shape[0] != batch_size:
            raise ValueError(
                f"class_labels must be an int or a sequence of batch_size={batch_size} ints, "
                f"got shape {tuple(labels.shape)}"
            )
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            f"class_labels must be in [0, {num_classes}) for this UNet, got {labels.tolist()} "
            f"({null_label} is the null class: leave class_labels=None for unconditional samples)"
        )
    return labels.to(device=device, dtype=torch.long), null_labels
