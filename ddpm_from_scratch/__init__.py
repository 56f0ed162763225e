"""DDPM (Ho et al. 2020) from first principles, as a Hugging Face diffusers plugin.

The public classes are imported lazily so that ``import ddpm_from_scratch`` stays cheap and
the command-line tools start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy_exports import lazy_exports

__version__ = "0.3.0"

# public name -> module that defines it
_EXPORTS = {
    "ScratchDDPMScheduler": "scheduler",
    "ScratchDDPMSchedulerOutput": "scheduler",
    "ScratchUNet2DModel": "unet",
    "UNET_PRESETS": "unet",
    "convert_diffusers_unet": "convert",
    "ModelCardInfo": "model_card",
    "nll_bits_per_dim": "likelihood",
    "ScratchDDPMPipeline": "pipeline",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .convert import convert_diffusers_unet
    from .model_card import ModelCardInfo
    from .likelihood import nll_bits_per_dim
    from .pipeline import ScratchDDPMPipeline
    from .scheduler import ScratchDDPMScheduler, ScratchDDPMSchedulerOutput
    from .unet import UNET_PRESETS, ScratchUNet2DModel


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
