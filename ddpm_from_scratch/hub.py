"""Saving, loading and publishing a pipeline in diffusers' custom-code layout, and its model card.

diffusers 0.42 looks a pipeline's class up inside diffusers unless ``model_index.json`` says where its
code is, so a saved ``ScratchDDPMPipeline`` carries its own code (the layout the custom-code loader
reads, checked against ``pipeline_utils.py``, ``pipeline_loading_utils.py`` and
``utils/dynamic_modules_utils.py``)::

    model_index.json       "_class_name": ["pipeline", "ScratchDDPMPipeline"]   <- [module file stem, class]
                           "unet": ["unet", "ScratchUNet2DModel"]               <- unet/unet.py defines it
                           "scheduler": ["scheduler", "ScratchDDPMScheduler"]   (a diffusers class: ["diffusers", name])
    pipeline.py, hub.py    the pipeline's module and every sibling it imports with a single-dot import
    unet/                  config.json, diffusion_pytorch_model.safetensors, unet.py (+ its siblings)
    scheduler/             scheduler_config.json, scheduler.py (+ beta_schedules.py, ... it imports)
    README.md              model card; sample_grid.png when the card has one

``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` then imports those files (and
needs nothing else installed); ``ScratchDDPMPipeline.from_pretrained(path)`` ignores them and uses
the installed package (`load_pipeline_components`), so no code from the folder runs. Weights are
safetensors only, and loading never unpickles.

Remote-code rule: this module ships with every saved pipeline (the pipeline module imports it), so
it imports only the standard library, diffusers and what diffusers itself requires
(huggingface_hub, PIL), plus siblings through single-dot imports.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import diffusers
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from PIL import Image

logger = logging.get_logger(__name__)

MODEL_INDEX_NAME = "model_index.json"
MODEL_CARD_NAME = "README.md"
SAMPLE_GRID_NAME = "sample_grid.png"
SAFETENSORS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# diffusers' own import scan (dynamic_modules_utils.get_relative_imports): whatever these match is
# what its loader will copy, so the saver must ship at least that.
_DIFFUSERS_RELATIVE_IMPORT_PATTERNS = (
    re.compile(r"^\s*import\s+\.(\S+)\s*$", flags=re.MULTILINE),
    re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE),
)
# The libraries diffusers' loader imports component classes from by name (LOADABLE_CLASSES).
_LIBRARY_COMPONENTS = ("diffusers",)
_SECRET_KEY = re.compile(r"token|secret|passw(or)?d|api[_-]?key|credential", flags=re.IGNORECASE)


class CodeLayoutError(ValueError):
    """A module cannot be shipped as remote code (an import diffusers' loader cannot follow)."""


# ---- model card --------------------------------------------------------------------------------


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


# ---- code files --------------------------------------------------------------------------------


def relative_imports(source: str, filename: str, package_root: str | None) -> list[str]:
    """Sibling modules ``source`` imports, as diffusers' remote-code loader will look for them.

    Forms the loader cannot follow fail here, at save time, instead of on a user's machine:
    ``from . import x``, ``from ..x import y``, dotted ``from .a.b import y``, and absolute imports
    of the package itself (``package_root``), which a Hub user does not have.
    """
    names = set()
    for pattern in _DIFFUSERS_RELATIVE_IMPORT_PATTERNS:
        names.update(pattern.findall(source))
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute = [node.module or ""]
            elif node.level == 1 and node.module and "." not in node.module:
                names.add(node.module)
                continue
            else:
                raise CodeLayoutError(
                    f"{filename}:{node.lineno}: `from {'.' * node.level}{node.module or ''} import ...` cannot be "
                    "shipped as remote code; diffusers' loader follows only single-dot imports of a sibling "
                    "module, `from .module import name`"
                )
        elif isinstance(node, ast.Import):
            absolute = [alias.name for alias in node.names]
        else:
            continue
        if package_root and any(name.split(".")[0] == package_root for name in absolute):
            raise CodeLayoutError(
                f"{filename}:{node.lineno}: an absolute import of {package_root!r} cannot be shipped as remote "
                f"code (a Hub user may not have {package_root} installed); import the sibling module with a "
                "single-dot import instead"
            )
    for name in names:
        if not name.isidentifier():
            raise CodeLayoutError(
                f"{filename}: diffusers' loader reads `.{name}` as a relative import (a line starting with "
                "`from .` or `import .`), which is not a sibling module name"
            )
    return sorted(names)


def code_closure(module_file: str | os.PathLike, package_root: str | None) -> list[Path]:
    """``module_file`` and every sibling file it reaches through single-dot imports (transitively)."""
    module_file = Path(module_file)
    closure, queue = [module_file], [module_file]
    while queue:
        current = queue.pop()
        for name in relative_imports(current.read_text(encoding="utf-8"), str(current), package_root):
            dependency = module_file.parent / f"{name}.py"
            if not dependency.is_file():
                raise CodeLayoutError(f"{current} imports the sibling module {name!r}, but {dependency} does not exist")
            if dependency not in closure:
                closure.append(dependency)
                queue.append(dependency)
    return closure


def class_source_file(cls: type) -> Path:
    """The .py file that defines ``cls`` (a package module, or diffusers' cached remote-code copy)."""
    module = sys.modules.get(cls.__module__)
    filename = getattr(module, "__file__", None)
    if filename is None:
        try:
            filename = inspect.getsourcefile(cls)
        except (TypeError, OSError):
            filename = None
    if cls.__module__.rsplit(".", 1)[-1] == "__main__":
        raise CodeLayoutError(
            f"{cls.__qualname__} is defined in a script (__main__); put it in a module file so that it can be "
            "shipped and imported by name"
        )
    if not filename or not filename.endswith(".py") or not Path(filename).is_file():
        raise CodeLayoutError(
            f"cannot find the source file of {cls.__module__}.{cls.__qualname__} to ship with the pipeline"
        )
    return Path(filename)


def component_entry(component: Any) -> tuple[str, str, Path | None]:
    """(library or module stem, class name, source file to ship or None) for ``model_index.json``."""
    cls = type(component)
    if cls.__module__.split(".")[0] in _LIBRARY_COMPONENTS:
        return cls.__module__.split(".")[0], cls.__name__, None
    return cls.__module__.rsplit(".", 1)[-1], cls.__name__, class_source_file(cls)


def hub_loading_problems(components: dict[str, Any]) -> list[str]:
    """Why ``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` would fail from the Hub.

    For a component folder that holds weights, diffusers 0.42's download (``DiffusionPipeline.download``)
    fetches only the weights, the config and the module file named in ``model_index.json``, not the
    module's sibling files, which the remote-code loader then cannot find. A local folder is not
    affected. So a model's module must be self-contained; a scheduler's may import siblings.
    """
    problems = []
    for name, component in components.items():
        if not isinstance(component, ModelMixin):
            continue
        _, _, source_file = component_entry(component)
        if source_file is None:
            continue
        siblings = [path.name for path in code_closure(source_file, type(component).__module__.split(".")[0])[1:]]
        if siblings:
            problems.append(
                f"{name}/{source_file.name} imports sibling modules {siblings}, which diffusers 0.42 does not "
                f"download from a Hub repo for a component folder with weights; DiffusionPipeline.from_pretrained"
                f"(repo_id, trust_remote_code=True) would fail. Make {source_file.name} self-contained."
            )
    return problems


def _copy_code(module_file: Path, destination: Path, package_root: str | None) -> list[Path]:
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in code_closure(module_file, package_root):
        shutil.copyfile(source, destination / source.name)
        copied.append(destination / source.name)
    return copied


# ---- saving ------------------------------------------------------------------------------------


def _save_component(component: Any, folder: Path, variant: str | None, max_shard_size: int | str | None) -> None:
    if isinstance(component, ModelMixin):
        kwargs: dict[str, Any] = {"safe_serialization": True, "variant": variant}
        if max_shard_size is not None:
            kwargs["max_shard_size"] = max_shard_size
        component.save_pretrained(folder, **kwargs)
    elif isinstance(component, (SchedulerMixin, ConfigMixin)):
        component.save_pretrained(folder)
    else:
        raise TypeError(f"cannot save a {type(component).__name__}: expected a diffusers ModelMixin or SchedulerMixin")


def _weights_file_pattern(variant: str | None) -> re.Pattern:
    """diffusers' weight file names of one variant: single file, shards and shard index, safetensors or .bin."""
    tag = re.escape(f".{variant}") if variant else ""
    return re.compile(
        rf"^diffusion_pytorch_model{tag}(-\d+-of-\d+)?\.(safetensors|bin)$"
        rf"|^diffusion_pytorch_model\.(safetensors|bin)\.index{tag}\.json$"
    )


def _move_into_place(staging: Path, target: Path, component_names: list[str], variant: str | None) -> None:
    """Move the staged files over ``target`` one rename at a time, ``model_index.json`` last.

    Each file is either the old or the new version at any moment; files already in ``target`` that
    this save does not write (checkpoints, logs, an edited README, other variants' weights) are left
    alone, except same-variant weights in a replaced component folder (an old shard or .bin could
    shadow the new file), which are deleted after the new ones are in place.
    """
    staged = sorted(path.relative_to(staging) for path in staging.rglob("*") if path.is_file())
    index = Path(MODEL_INDEX_NAME)
    for relative in [path for path in staged if path != index]:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target / relative)
    stale_weights = _weights_file_pattern(variant)
    for name in component_names:
        for old in (target / name).iterdir():
            if old.is_file() and stale_weights.match(old.name) and Path(name, old.name) not in staged:
                old.unlink()
    os.replace(staging / index, target / index)


def save_pipeline_folder(
    pipeline: Any,
    save_directory: str | os.PathLike,
    *,
    model_card: ModelCardInfo | None,
    card_repo_id: str | None,
    num_classes: int | None,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
    for_hub: bool = False,
) -> Path:
    """Write ``pipeline`` in the custom-code layout described at the top of this module.

    Everything is written to a hidden staging folder next to ``save_directory`` first, then moved
    into place (see `_move_into_place`), so an interrupted save never leaves a half-written model.
    A README.md already in the folder is kept unless ``model_card`` is given. Code the Hub could not
    serve (`hub_loading_problems`) is an error when ``for_hub`` is True, a warning otherwise.
    """
    components = {name: component for name, component in pipeline.components.items()}
    for problem in hub_loading_problems(components):
        if for_hub:
            raise CodeLayoutError(problem)
        logger.warning(problem)
    target = Path(save_directory).resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"save_directory {str(target)!r} exists and is not a directory")
    target.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    except OSError:  # a parent we may not write to: stage inside the folder itself (hidden, not uploaded)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
    try:
        pipeline_cls = type(pipeline)
        package_root = pipeline_cls.__module__.split(".")[0]
        code_files = [
            path.relative_to(staging).as_posix()
            for path in _copy_code(class_source_file(pipeline_cls), staging, package_root)[:1]
        ]
        index: dict[str, Any] = {
            "_class_name": [pipeline_cls.__module__.rsplit(".", 1)[-1], pipeline_cls.__name__],
            "_diffusers_version": diffusers.__version__,
        }
        for name, component in components.items():
            if component is None:
                index[name] = [None, None]
                continue
            library, class_name, source_file = component_entry(component)
            _save_component(component, staging / name, variant, max_shard_size)
            if source_file is not None:
                copied = _copy_code(source_file, staging / name, type(component).__module__.split(".")[0])
                code_files += [path.relative_to(staging).as_posix() for path in copied[:1]]
            index[name] = [library, class_name]
        (staging / MODEL_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

        if model_card is not None or not (target / MODEL_CARD_NAME).exists():
            info = model_card if model_card is not None else ModelCardInfo()
            card = render_model_card(
                info,
                repo_id=card_repo_id or target.name,
                components={k: v for k, v in components.items() if v is not None},
                code_files=code_files,
                num_classes=num_classes,
            )
            (staging / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
            if info.sample_grid is not None:
                info.sample_grid.save(staging / SAMPLE_GRID_NAME, format="PNG")
        _move_into_place(staging, target, [name for name, c in components.items() if c is not None], variant)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---- loading with the installed package -------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _declared_class_name(value: Any) -> Any:
    # "_class_name" is "Name" in a plain diffusers save and ["module_stem", "Name"] in a custom-code one
    return value[-1] if isinstance(value, (list, tuple)) and value else value


def _resolve_component_class(entry: Any, name: str, index_file: Path, package: str) -> type:
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise ValueError(f"{index_file}: the {name!r} entry must be [library or module, class name], got {entry!r}")
    library, class_name = entry
    if library in _LIBRARY_COMPONENTS:
        component_cls = getattr(importlib.import_module(library), class_name, None)
    else:
        # ["unet", "ScratchUNet2DModel"] (custom-code layout) or ["ddpm_from_scratch.unet", ...] (a plain
        # diffusers save): a module of *this* package, never an arbitrary module the folder names
        module_name = library if library.startswith(package + ".") else f"{package}.{library}"
        stem = module_name[len(package) + 1 :]
        if not stem.isidentifier() or importlib.util.find_spec(module_name) is None:
            raise ValueError(
                f"{index_file}: the {name!r} component's module {library!r} is not part of {package}; to use "
                "the code shipped in the folder, load it with "
                "DiffusionPipeline.from_pretrained(path, trust_remote_code=True)"
            )
        component_cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (inspect.isclass(component_cls) and issubclass(component_cls, (ModelMixin, SchedulerMixin))):
        raise ValueError(
            f"{index_file}: the {name!r} component names {library}.{class_name}, which is not a diffusers model or "
            "scheduler class available here"
        )
    return component_cls


def _safetensors_weights(folder: Path, variant: str | None) -> Path:
    candidates = [
        folder / _add_variant(SAFETENSORS_WEIGHTS_NAME, variant),
        folder / _add_variant(SAFETENSORS_INDEX_NAME, variant),
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = (
        f"; found {pickled}, but pickle checkpoints are never loaded (unpickling can run arbitrary code): "
        "convert them to safetensors"
        if pickled
        else ""
    )
    raise FileNotFoundError(f"weights file {str(candidates[0])!r} is missing{hint}")


def _add_variant(weights_name: str, variant: str | None) -> str:
    if variant is None:
        return weights_name
    stem, extension = weights_name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


def load_pipeline_components(
    pipeline_cls: type,
    folder: str | os.PathLike,
    *,
    skip: frozenset[str] = frozenset(),
    torch_dtype: Any = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Load each component ``pipeline_cls.__init__`` expects from ``folder`` with the installed classes.

    No code from the folder runs, and weights are read from safetensors only. Each failure names the
    file at fault: a missing or corrupt ``model_index.json``, a pipeline of another class, a missing
    component folder, config or weights file, a config for a different class, corrupt weights.
    """
    folder = Path(folder)
    index_file = folder / MODEL_INDEX_NAME
    index = _read_json(index_file, "pipeline index")
    declared = _declared_class_name(index.get("_class_name"))
    if declared != pipeline_cls.__name__:
        raise ValueError(f"{index_file} describes a {declared!r} pipeline, not a {pipeline_cls.__name__}")
    package = pipeline_cls.__module__.rpartition(".")[0]
    expected = [n for n in inspect.signature(pipeline_cls.__init__).parameters if n != "self"]

    components: dict[str, Any] = {}
    for name in expected:
        if name in skip:
            continue
        if name not in index:
            raise ValueError(f"{index_file} has no entry for the {name!r} component")
        component_cls = _resolve_component_class(index[name], name, index_file, package)
        component_dir = folder / name
        if not component_dir.is_dir():
            raise FileNotFoundError(f"component folder {str(component_dir)!r} (listed in {index_file}) is missing")
        config_file = component_dir / component_cls.config_name
        config = _read_json(config_file, f"{name} config")
        if config.get("_class_name") != component_cls.__name__:
            raise ValueError(
                f"{config_file} is a config for {config.get('_class_name')!r}, but {index_file} says {name!r} "
                f"is a {component_cls.__name__}"
            )
        if issubclass(component_cls, ModelMixin):
            weights = _safetensors_weights(component_dir, variant)
            try:
                component = component_cls.from_pretrained(
                    component_dir, use_safetensors=True, torch_dtype=torch_dtype, variant=variant
                )
            except Exception as error:
                raise OSError(f"could not load the {name!r} weights from {str(weights)!r}: {error}") from error
        else:
            try:
                component = component_cls.from_pretrained(component_dir)
            except Exception as error:
                raise ValueError(
                    f"could not build the {name!r} component from {str(config_file)!r}: {error}"
                ) from error
        components[name] = component
    return components


# ---- publishing --------------------------------------------------------------------------------


def uploadable_files(folder: str | os.PathLike) -> list[Path]:
    """Files of ``folder`` to upload: everything but hidden files/folders and Python caches."""
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts)
    )


def refuse_token_in_files(files: list[Path], token: str | None) -> None:
    """Raise if the access token's text occurs in any file about to be uploaded (the token is not echoed)."""
    if not token or not isinstance(token, str):
        return
    needle = token.encode("utf-8")
    for path in files:
        if needle in path.read_bytes():
            raise ValueError(f"refusing to upload: {path} contains the Hub access token")


def commit_folder(
    api: Any,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    token: str | None = None,
    create_pr: bool = False,
) -> Any:
    """One commit adding every uploadable file of ``folder`` to ``repo_id`` (huggingface_hub's create_commit)."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    files = uploadable_files(folder)
    refuse_token_in_files(files, token)
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in files
    ]
    return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message, create_pr=create_pr)
