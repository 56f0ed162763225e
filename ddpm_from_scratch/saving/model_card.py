"""The model card (README.md) of a saved pipeline: what it is, how to load it, how it was trained.

Rendered by huggingface_hub's ``ModelCard.from_template`` from `CARD_TEMPLATE` (Jinja) with a
``ModelCardData`` header; the metrics also go into the card's ``model-index`` as ``EvalResult``
entries, which the Hub shows as the model's evaluation results.

What a save or push may rewrite, so that a card a user edited survives re-saving and re-pushing:

* the body between `GENERATED_START` and `GENERATED_END` (title, description, usage, model,
  training configuration, metrics). Everything before and after the markers is the user's and is
  kept word for word. An existing card without the markers (written by hand, or by ddpm-from-scratch
  0.1.0) is kept whole, with the generated section appended after it.
* in the YAML metadata, the keys the generator sets (library_name, license, pipeline_tag, datasets,
  model-index; each only when it has a value); tags are the union of the card's and the generated
  ones; every other key (language, base_model, a user's own) is kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from diffusers.models.modeling_utils import ModelMixin
from PIL import Image

MODEL_CARD_NAME = "README.md"
SAMPLE_GRID_NAME = "sample_grid.png"
GENERATED_START = (
    "<!-- ddpm-from-scratch: generated section. Every save_pretrained / push_to_hub with a model card rewrites "
    "the text up to the end marker; write your own text above or below it. -->"
)
GENERATED_END = "<!-- ddpm-from-scratch: end of generated section -->"
METRICS_TASK = "unconditional-image-generation"
_SECRET_KEY = re.compile(r"token|secret|passw(or)?d|api[_-]?key|credential", flags=re.IGNORECASE)


@dataclasses.dataclass
class ModelCardInfo:
    """What the model card says about a trained pipeline (the training code fills it in).

    dataset: Hub id or name of the training data (YAML ``datasets``), None if unknown.
    training_config: hyper-parameters, shown as JSON; keys that look like secrets are redacted.
    metrics: name -> value (e.g. {"fid": 12.3, "bits_per_dim": 3.75}), shown as a table; the numeric
        ones also become the card's model-index evaluation results.
    metrics_dataset / metrics_split: the data the metrics were measured on, for the model-index
        (default: ``dataset``; the split is left out when None).
    sample_grid: a PIL image of samples, saved as sample_grid.png and shown in the card.
    license: YAML license; None keeps an existing card's license, and is DEFAULT_LICENSE on a new card.
    tags: YAML tags, added to the defaults (and to an existing card's).
    title / description: the card's heading and first paragraph (defaults describe a DDPM).
    """

    dataset: str | None = None
    training_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    sample_grid: Image.Image | None = None
    license: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    title: str | None = None
    description: str | None = None
    metrics_dataset: str | None = None
    metrics_split: str | None = None


DEFAULT_LICENSE = "apache-2.0"
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


def refuse_token_in_files(files: list[Path], token: str | None, action: str) -> None:
    """Raise a ValueError before ``action`` ("upload", "save") if the text of the Hub access token (``token``,
    and the one huggingface_hub has stored, which a push without ``token`` uses) occurs in any of ``files``;
    the token is not echoed."""
    from huggingface_hub import get_token

    tokens = [text.encode("utf-8") for text in {token, get_token()} if isinstance(text, str) and text]
    for path in files:
        if any(text in path.read_bytes() for text in tokens):
            raise ValueError(f"refusing to {action}: {path.name} ({path}) contains the Hub access token; "
                             "remove it from the model card's fields (or the folder's README.md)")


def card_metadata(info: ModelCardInfo, repo_id: str) -> Any:
    """The generated YAML metadata as a huggingface_hub ``ModelCardData``; the finite numeric metrics
    become its model-index ``EvalResult`` entries."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = info.metrics_dataset or info.dataset or "unknown"
    results = [
        EvalResult(task_type=METRICS_TASK, dataset_type=dataset, dataset_name=dataset, dataset_split=info.metrics_split,
                   metric_type=name, metric_name=name, metric_value=float(value))
        for name, value in info.metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]
    return ModelCardData(
        library_name="diffusers",
        license=info.license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *info.tags])),
        pipeline_tag=METRICS_TASK,
        datasets=[info.dataset] if info.dataset else None,
        model_name=repo_id if results else None,
        eval_results=results or None,
    )


def merge_metadata(existing: Any, generated: Any) -> Any:
    """``existing`` card data updated with the ``generated`` keys that have a value; tags are merged."""
    from huggingface_hub import ModelCardData

    merged = {**existing.to_dict(), **generated.to_dict()}
    merged["tags"] = list(dict.fromkeys([*(existing.tags or []), *(generated.tags or [])])) or None
    return ModelCardData(**merged)


def replace_generated_section(text: str, section: str) -> str:
    """``text`` with its generated section (between the markers) replaced by ``section``; without the
    markers, ``section`` is appended after ``text``."""
    start = text.find(GENERATED_START)
    end = text.find(GENERATED_END, start + 1) if start >= 0 else -1
    if start >= 0 and end >= 0:
        return text[:start] + section + text[end + len(GENERATED_END):]
    if not text.strip():
        return "\n" + section + "\n"
    return text.rstrip("\n") + "\n\n" + section + "\n"


CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")  # Jinja, for ModelCard.from_template
_MODEL_CONFIG_KEYS = ("sample_size", "in_channels", "num_class_embeds", "num_train_timesteps", "beta_schedule",
                      "variance_type", "prediction_type")


def _model_line(name: str, component: Any) -> str:
    details = [type(component).__name__]
    if isinstance(component, ModelMixin):
        details.append(f"{sum(p.numel() for p in component.parameters()):,} parameters")
    config = getattr(component, "config", {})
    details += [f"{key}={config[key]}" for key in _MODEL_CONFIG_KEYS if config.get(key) is not None]
    return f"`{name}`: " + ", ".join(details)


def render_model_card(
    info: ModelCardInfo,
    *,
    repo_id: str,
    components: dict[str, Any],
    code_files: list[str],
    num_classes: int | None,
    existing_card: str | None = None,
    default_sampling: tuple[int, float | None] | None = None,
) -> str:
    """The README.md text: YAML metadata, then the generated section (usage, model, training configuration,
    metrics); with ``existing_card`` (the current README.md), its own text and metadata are kept (module doc).
    ``default_sampling``: the (steps, eta) the pipeline records for a call without a step count, or None."""
    from huggingface_hub import ModelCard

    generated = ModelCard.from_template(
        card_metadata(info, repo_id),
        template_path=CARD_TEMPLATE,
        start=GENERATED_START,
        end=GENERATED_END,
        title=info.title or f"DDPM: {repo_id}",
        description=info.description,
        dataset=info.dataset,
        num_classes=num_classes,
        sample_grid=SAMPLE_GRID_NAME if info.sample_grid is not None else None,
        code_files=", ".join(f"`{name}`" for name in code_files),
        repo_id=repo_id,
        default_steps=None if default_sampling is None else default_sampling[0],
        default_eta=None if default_sampling is None else default_sampling[1],
        model_lines=[_model_line(name, component) for name, component in components.items()],
        training_config=info.training_config
        and json.dumps(redact_secrets(info.training_config), indent=2, sort_keys=True, default=str),
        metrics=[(name, f"{value:.4g}" if isinstance(value, float) else value) for name, value in info.metrics.items()],
    )
    metadata, text = generated.data, generated.text
    if existing_card is not None:
        existing = ModelCard(existing_card, ignore_metadata_errors=True)
        metadata = merge_metadata(existing.data, metadata)
        text = replace_generated_section(existing.text, text.strip("\n"))
    if metadata.license is None:
        metadata.license = DEFAULT_LICENSE
    return str(ModelCard(f"---\n{metadata.to_yaml().strip()}\n---\n{text}"))


def write_model_card(info: ModelCardInfo, folder: Path, **card: Any) -> None:
    """Write README.md (`render_model_card` with ``card``'s keywords) into ``folder``, a staging folder
    moved into place file by file, and sample_grid.png when the card has one."""
    (folder / MODEL_CARD_NAME).write_text(render_model_card(info, **card), encoding="utf-8")
    if info.sample_grid is not None:
        info.sample_grid.save(folder / SAMPLE_GRID_NAME, format="PNG")
