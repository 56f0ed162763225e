"""ddpm-convert-unet: a diffusers UNet2DModel of the DDPM family -> a saved ScratchUNet2DModel.

    ddpm-convert-unet google/ddpm-cifar10-32 ./ddpm-cifar10-32-scratch

SOURCE is a local diffusers model folder, a pipeline folder with a ``unet/`` subfolder, or a Hub id
(safetensors weights, else a .bin read with ``torch.load(weights_only=True)``). OUTPUT must not exist
yet, or be an empty folder: nothing is overwritten. The model is written to a staging folder next to
OUTPUT and renamed into place, so a failed run leaves no half-written model. Every bad argument ends
the command with one ``ddpm-convert-unet: error: ...`` line and exit status 2.
The conversion itself: :func:`ddpm_from_scratch.saving.convert_unet.convert_diffusers_unet`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .args import check_new_folder

# what UNet2DModel.from_pretrained reads, safetensors first (a .bin is read with torch.load(weights_only=True))
WEIGHTS_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)


class ArgumentProblem(Exception):
    """A bad command-line argument; the message names it."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _check_output(output: str) -> Path:
    try:
        return check_new_folder(output, "output")
    except ValueError as error:
        raise ArgumentProblem(_one_line(error)) from None


def _check_model_folder(folder: Path, argument: str) -> None:
    """A diffusers UNet2DModel folder: config.json of a UNet2DModel and a weights file."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ArgumentProblem(
            f"{argument}: {str(folder)!r} has no config.json, so it is not a diffusers model folder "
            "(a pipeline folder needs a unet/ subfolder, or pass --subfolder)"
        )
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name", "UNet2DModel")
    except (OSError, ValueError, AttributeError) as error:
        raise ArgumentProblem(f"{argument}: {str(config_file)!r} is not readable JSON: {_one_line(error)}") from None
    if class_name == "ScratchUNet2DModel":
        raise ArgumentProblem(
            f"{argument}: {str(folder)!r} already holds a ScratchUNet2DModel, so there is nothing to convert "
            "(load it with ScratchUNet2DModel.from_pretrained, or its pipeline or checkpoint with "
            "ScratchDDPMPipeline.from_pretrained)"
        )
    if class_name != "UNet2DModel":
        raise ArgumentProblem(f"{argument}: {str(folder)!r} holds a {class_name}, not a diffusers UNet2DModel")
    if not any((folder / name).is_file() for name in WEIGHTS_NAMES):
        found = sorted(p.name for p in folder.iterdir())
        raise ArgumentProblem(
            f"{argument}: {str(folder)!r} has no weights file: neither {WEIGHTS_NAMES[0]} nor "
            f"{WEIGHTS_NAMES[2]} (found {found})"
        )


def _is_hub_id(source: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def _load_source(source: str, subfolder: str | None) -> Any:
    from diffusers import UNet2DModel

    if os.path.exists(source):
        root = Path(source)
        if not root.is_dir():
            raise ArgumentProblem(f"source {source!r} is a file; give a model folder, a pipeline folder or a Hub id")
        if subfolder is None:
            subfolder = "unet" if (root / "unet").is_dir() else None
            argument = f"source {source!r}"
        else:
            argument = f"--subfolder {subfolder!r}"
            if not (root / subfolder).is_dir():
                raise ArgumentProblem(f"{argument}: {str(root / subfolder)!r} is not a folder")
        _check_model_folder(root / subfolder if subfolder else root, argument)
        try:
            return UNet2DModel.from_pretrained(source, subfolder=subfolder)
        except (OSError, ValueError) as error:
            raise ArgumentProblem(f"{argument}: the model cannot be loaded: {_one_line(error)}") from None

    if not _is_hub_id(source):
        raise ArgumentProblem(f"source {source!r} does not exist (and is not a Hub model id)")
    # a Hub id: pipelines keep the model in unet/, model repos at the root
    attempts = [subfolder] if subfolder is not None else ["unet", None]
    for attempt in attempts:
        try:
            return UNet2DModel.from_pretrained(source, subfolder=attempt)
        except (OSError, ValueError) as error:
            last_error = error
    where = f"--subfolder {subfolder!r}" if subfolder is not None else "unet/ or the repository root"
    raise ArgumentProblem(
        f"source {source!r} is not a local folder and cannot be loaded from the Hub ({where}): {_one_line(last_error)}"
    )


def _save_atomically(model: Any, output: Path) -> None:
    """save_pretrained into a staging folder next to `output`, flush it to disk, then rename it into place."""
    # mkdir, not mkdtemp: the folder gets the usual permissions (mkdtemp's 0700 would hide the model)
    staging = output.parent / f".{output.name}.{secrets.token_hex(6)}.staging"
    try:
        staging.mkdir()
    except OSError as error:
        raise ArgumentProblem(f"output {str(output)!r} cannot be written: {_one_line(error)}") from None
    try:
        model.save_pretrained(staging)
        for file in staging.iterdir():  # the bytes reach the disk before the rename makes them visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(staging, output)  # replaces only a missing or empty folder: nothing is overwritten
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise ArgumentProblem(f"output {str(output)!r} cannot be written: {_one_line(error)}") from None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ddpm-convert-unet", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="diffusers UNet2DModel folder, pipeline folder with unet/, or Hub id")
    parser.add_argument("output", help="new folder to write the ScratchUNet2DModel to (save_pretrained)")
    parser.add_argument("--subfolder", default=None, help="subfolder of source holding the UNet (default: auto)")
    args = parser.parse_args(argv)

    from ..saving.convert_unet import convert_diffusers_unet

    try:
        output = _check_output(args.output)
        source = _load_source(args.source, args.subfolder)
        try:
            model = convert_diffusers_unet(source)
        except ValueError as error:
            raise ArgumentProblem(f"source {args.source!r} does not convert: {_one_line(error)}") from None
        _save_atomically(model, output)
    except ArgumentProblem as problem:
        parser.exit(2, f"ddpm-convert-unet: error: {problem}\n")
    print(f"wrote {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
