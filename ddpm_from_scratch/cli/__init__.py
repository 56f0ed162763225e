"""The console commands, one module each (every command module has a ``main(argv) -> int``):

    ddpm-sample              sample.py             sample a saved pipeline into a PNG grid
    ddpm-evaluate            evaluate.py           NLL bound and sample quality of a digits pipeline (``train`` extra)
    ddpm-convert-unet        convert.py            diffusers UNet2DModel -> ScratchUNet2DModel
    ddpm-train               train.py              the trainer, ddpm_from_scratch.training (``train`` extra)
    ddpm-estimate-variance   estimate_variance.py  Analytic-DPM's statistic for variance_type="analytic"
    python -m ddpm_from_scratch.cli.digits_reference   digits_reference.py   the real-digit reference tables

    editing.py  ddpm-sample's --image / --mask / --strength: inpainting and image-to-image
    args.py     what the commands share: argument types, the device, output-path checks, one-line errors
"""
