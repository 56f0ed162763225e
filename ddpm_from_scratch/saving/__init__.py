"""Saving, loading and publishing: what a saved pipeline does not ship.

    layout         the names of what the project writes on disk
    atomic_io      atomic file writes, and the one JSON reader (errors name the file)
    checksums      manifest.json: size and SHA-256 of saved files, verified on load
    shipped_code   which code a saved pipeline carries, checked against what diffusers' loader follows
    folder         writing a pipeline folder; loading any pipeline with installed code (load_any_pipeline)
    model_card     ModelCardInfo and the model card (model_card_template.md)
    hub            push to the Hub
    convert_unet   diffusers UNet2DModel -> ScratchUNet2DModel
"""
