"""The model card (README.md) of a saved pipeline: what it is, how to load it, how it was trained.

Written by `pipeline_folder.save_pipeline_folder`; not shipped with saved pipelines.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from diffusers.models.modeling_utils import ModelMixin
from PIL import Image

from .atomic_io import atomic_write, write_bytes_atomic

MODEL_CARD_NAME = "README.md"
SAMPLE_GRID_NAME = "sample_grid.png"
_SECRET_KEY = re.compile(r"token|secret|passw(or)?d|api[_-]?key|credential", flags=re.IGNORECASE)


@dataclasses.dataclass
class ModelCardInfo:
    """What the model card says about a trained pipeline (the training code fills it in).

    dataset: Hub id or name of the training data (YAML ``datasets``), None if unknown.
    training_config: hyper-parameters, shown as JSON; keys that look like secrets are redacted.
    metrics: name -> value (e.g. {"fid": 12.3, "bits_per_dim": 3.75}), shown as a table.
    sample_grid: a PIL image of samples, saved as sample_grid.png and shown in the card.
    license / tags: YAML metadata (tags are added to the defaults).
    title / description: the card's heading and first paragraph (defaults describe a DDPM).
    """

    dataset: str | None = None
    training_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    sample_grid: Image.Image | None = None
    license: str = "apache-2.0"
    tags: list[str] = dataclasses.field(default_factory=list)
    title: str | None = None
    description: str | None = None


DEFAULT_TAGS = ("diffusers", "ddpm", "ddpm-from-scratch", "unconditional-image-generation")


def redact_secrets(value: Any) -> Any:
    """Copy of ``value`` with every mapping entry whose key looks like a secret replaced by "<redacted>"."""
    if isinstance(value, dict):
        return {
            key: "<redacted>" if _SECRET_KEY.search(str(key)) else redact_secrets(item) for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_model_card(
    info: ModelCardInfo,
    *,
    repo_id: str,
    components: dict[str, Any],
    code_files: list[str],
    num_classes: int | None,
) -> str:
    """The README.md text: YAML metadata, then usage, model, training configuration and metrics."""
    from huggingface_hub import ModelCardData

    tags = list(dict.fromkeys([*DEFAULT_TAGS, *info.tags]))
    card_data = ModelCardData(
        library_name="diffusers",
        license=info.license,
        tags=tags,
        pipeline_tag="unconditional-image-generation",
        datasets=[info.dataset] if info.dataset else None,
    )
    title = info.title or f"DDPM: {repo_id}"
    description = info.description or (
        "A denoising diffusion probabilistic model (Ho et al. 2020) trained with `ddpm-from-scratch`, "
        "a diffusers plugin that implements DDPM from first principles"
        + (f" on `{info.dataset}`." if info.dataset else ".")
    )
    if num_classes is not None:
        description += (
            f" The UNet is class-conditional ({num_classes} classes, plus a null class for classifier-free guidance)."
        )
    call = "batch_size=16, num_inference_steps=1000, generator=torch.Generator().manual_seed(0)"
    if num_classes is not None:
        call += ", class_labels=[0] * 16, guidance_scale=2.0"
    lines = [
        "---",
        card_data.to_yaml().strip(),
        "---",
        "",
        f"# {title}",
        "",
        description,
        "",
    ]
    if info.sample_grid is not None:
        lines += [f"![Samples from this model]({SAMPLE_GRID_NAME})", ""]
    lines += [
        "## Usage",
        "",
        "The repository ships the code it needs ("
        + ", ".join(f"`{name}`" for name in code_files)
        + "), so diffusers alone loads it; `trust_remote_code=True` lets it run that code, so read it first.",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)',
        f"images = pipe({call}).images",
        'images[0].save("sample.png")',
        "```",
        "",
        "With `ddpm-from-scratch` installed, `ScratchDDPMPipeline.from_pretrained(...)` loads it with the "
        "installed code instead, and the command line writes a grid of samples:",
        "",
        "```bash",
        f"ddpm-sample {repo_id} --num-images 64 --out grid.png",
        "```",
        "",
        "## Model",
        "",
    ]
    for name, component in components.items():
        details = [type(component).__name__]
        if isinstance(component, ModelMixin):
            details.append(f"{sum(p.numel() for p in component.parameters()):,} parameters")
        config = getattr(component, "config", {})
        for key in (
            "sample_size",
            "in_channels",
            "num_class_embeds",
            "num_train_timesteps",
            "beta_schedule",
            "variance_type",
            "prediction_type",
        ):
            if key in config and config[key] is not None:
                details.append(f"{key}={config[key]}")
        lines.append(f"- `{name}`: " + ", ".join(details))
    lines += ["", "## Training configuration", ""]
    if info.training_config:
        config_json = json.dumps(redact_secrets(info.training_config), indent=2, sort_keys=True, default=str)
        lines += ["```json", config_json, "```"]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Metrics", ""]
    if info.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_format_metric(value)} |" for name, value in info.metrics.items()]
    else:
        lines.append("Not measured.")
    return "\n".join(lines) + "\n"


def write_model_card(
    info: ModelCardInfo,
    folder: Path,
    *,
    repo_id: str,
    components: dict[str, Any],
    code_files: list[str],
    num_classes: int | None,
) -> None:
    """Write README.md (`render_model_card`) into ``folder``, and sample_grid.png when the card has one."""
    card = render_model_card(
        info, repo_id=repo_id, components=components, code_files=code_files, num_classes=num_classes
    )
    write_bytes_atomic(card.encode("utf-8"), folder / MODEL_CARD_NAME)
    if info.sample_grid is not None:
        with atomic_write(folder / SAMPLE_GRID_NAME) as handle:
            info.sample_grid.save(handle, format="PNG")
