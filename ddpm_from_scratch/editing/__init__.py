"""Editing with a trained unconditional DDPM, no training needed (docs/editing.md).

    base      what both pipelines share: from_pretrained / from_pipe, saving as a ScratchDDPMPipeline, a call's parts
    inputs    images and masks in (PIL, numpy, torch), checked and converted once; named masks; the strength check
    img2img   ScratchImg2ImgPipeline: SDEdit (Meng et al. 2022), noise to a level (F2) and denoise back
    inpaint   ScratchInpaintPipeline: RePaint (Lugmayr et al. 2022), known pixels by F2, unknown by the reverse step
"""

from .img2img import ScratchImg2ImgPipeline
from .inpaint import ScratchInpaintPipeline, repaint_schedule
from .inputs import NAMED_MASKS, named_mask

__all__ = ["NAMED_MASKS", "ScratchImg2ImgPipeline", "ScratchInpaintPipeline", "named_mask", "repaint_schedule"]
