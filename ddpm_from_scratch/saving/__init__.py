"""Saving, loading and publishing: what a saved pipeline does not ship.

    atomic_io      atomic file writes
    checksums      SHA-256 of saved weights, verified on load
    shipped_code   which code a saved pipeline carries (its import closure)
    folder         writing a pipeline folder; loading one with the installed package
    model_card     ModelCardInfo and the model card
    hub            push to the Hub
    convert_unet   diffusers UNet2DModel -> ScratchUNet2DModel
"""
