"""The console commands, one module each (every module has a ``main(argv) -> int``):

    ddpm-sample        sample.py    sample a saved pipeline into a PNG grid
    ddpm-evaluate      evaluate.py  NLL bound and sample quality of a digits pipeline (``train`` extra)
    ddpm-convert-unet  convert.py   diffusers UNet2DModel -> ScratchUNet2DModel
    ddpm-train         train.py     ddpm_from_scratch.training.trainer (``train`` extra)

``python -m ddpm_from_scratch.cli.digits_reference`` prints the real-digit reference tables of the
sample-quality figures. Shared argument types live in args.py.
"""
