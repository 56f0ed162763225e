"""ddpm-convert-unet: a diffusers UNet2DModel in the DDPM layout -> a saved ScratchUNet2DModel.

    ddpm-convert-unet google/ddpm-cifar10-32 ./ddpm-cifar10-32-scratch

SOURCE is a local diffusers model folder, a pipeline folder with a ``unet/`` subfolder, or a Hub id.
The conversion itself: :func:`ddpm_from_scratch.convert.convert_diffusers_unet`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ddpm-convert-unet", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="diffusers UNet2DModel folder, pipeline folder with unet/, or Hub id")
    parser.add_argument("output", help="folder to write the ScratchUNet2DModel to (save_pretrained)")
    parser.add_argument("--subfolder", default=None, help="subfolder of source holding the UNet (default: auto)")
    args = parser.parse_args(argv)

    from diffusers import UNet2DModel

    from ..convert import convert_diffusers_unet

    if args.subfolder is not None:
        source = UNet2DModel.from_pretrained(args.source, subfolder=args.subfolder)
    elif os.path.isdir(args.source):
        has_unet_folder = os.path.isdir(os.path.join(args.source, "unet"))
        source = UNet2DModel.from_pretrained(args.source, subfolder="unet" if has_unet_folder else None)
    else:  # a Hub id: pipelines keep the model in unet/, model repos at the root
        try:
            source = UNet2DModel.from_pretrained(args.source, subfolder="unet")
        except OSError:
            source = UNet2DModel.from_pretrained(args.source)
    model = convert_diffusers_unet(source)
    model.save_pretrained(args.output)
    print(f"wrote {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
