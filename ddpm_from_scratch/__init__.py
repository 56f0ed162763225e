"""DDPM (Ho et al. 2020) from first principles, as a Hugging Face diffusers plugin.

The public classes are imported lazily so that ``import ddpm_from_scratch`` stays cheap and
the command-line tools start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public ``name`` lives in ``.exports[name]``.

    A loaded name is stored in ``namespace`` (the package's globals), so each module is imported once.
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


__version__ = "0.4.0"

# public name -> module that defines it
_EXPORTS = {
    "ScratchDDPMScheduler": "scheduler",
    "ScratchDDPMSchedulerOutput": "scheduler",
    "ScratchUNet2DModel": "unet",
    "UNET_PRESETS": "unet",
    "convert_diffusers_unet": "saving.convert_unet",
    "ModelCardInfo": "saving.model_card",
    "nll_bits_per_dim": "bound.likelihood",
    "ScratchDDPMPipeline": "pipeline",
    "ScratchImg2ImgPipeline": "editing.img2img",
    "ScratchInpaintPipeline": "editing.inpaint",
    "fit": "training",  # the `train` extra
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .saving.convert_unet import convert_diffusers_unet
    from .saving.model_card import ModelCardInfo
    from .bound.likelihood import nll_bits_per_dim
    from .editing.img2img import ScratchImg2ImgPipeline
    from .editing.inpaint import ScratchInpaintPipeline
    from .pipeline import ScratchDDPMPipeline
    from .training import fit
    from .scheduler import ScratchDDPMScheduler, ScratchDDPMSchedulerOutput
    from .unet import UNET_PRESETS, ScratchUNet2DModel


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
