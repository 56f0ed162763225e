"""Saving a pipeline folder (with its code, see remote_code.py) and loading one with the installed package.

``ScratchDDPMPipeline.save_pretrained`` / ``from_pretrained`` delegate here. Loading uses the
installed package's classes (`load_pipeline_components`), so no code from the folder runs, and
weights are read from safetensors only (loading never unpickles), each checked against the SHA-256
the save recorded beside it (weights_integrity.py). `resolve_pretrained_folder` is the one place that
decides whether a name is a local folder or a Hub repo id. A training checkpoint folder (unet/,
unet_ema/, scheduler/, no model_index.json; training/checkpoints.py) loads too
(`load_checkpoint_components`): the EMA weights if it has them, else the raw ones.

Not shipped with saved pipelines: the pipeline imports this module by name at call time.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import diffusers
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging

from .atomic_io import atomic_write
from .checksums import CHECKSUM_SUFFIX, manifest_checksums, verify_weights_files, write_checksum_files
from .model_card import MODEL_CARD_NAME, ModelCardInfo, write_model_card
from .shipped_code import (
    LIBRARY_COMPONENTS,
    CodeLayoutError,
    class_source_file,
    component_entry,
    copy_code,
    hub_loading_problems,
    top_level_package,
)

logger = logging.get_logger(__name__)

MODEL_INDEX_NAME = "model_index.json"
SAFETENSORS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# Hub files never loaded (pickles and other frameworks' weights): not downloaded either
_SKIPPED_HUB_FILES = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.msgpack", "*.onnx"]
_HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "endpoint")
# keywords of diffusers' ModelMixin.from_pretrained that apply to every model of the pipeline
MODEL_LOADING_KEYS = (
    "torch_dtype", "dtype", "variant", "device_map", "max_memory", "offload_folder", "offload_state_dict",
    "low_cpu_mem_usage", "ignore_mismatched_sizes", "quantization_config", "disable_mmap",
)
# keywords of diffusers' loaders that cannot apply here: name -> (values that are fine, why others are not)
_UNSUPPORTED_LOADING_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_safetensors": ((None, True), "weights are loaded from safetensors only (unpickling can run arbitrary code)"),
    "use_onnx": ((None, False), "the pipeline has no ONNX weights"),
    "use_flashpack": ((None, False), "weights are loaded from safetensors only"),
    "from_flax": ((None, False), "weights are loaded from safetensors only"),
    "output_loading_info": ((None, False), "from_pretrained returns the pipeline only"),
    "load_connected_pipeline": ((None, False), "the pipeline has no connected pipelines"),
    "custom_pipeline": ((None,), "this class is the pipeline; to run code shipped in the folder use "
                                 "DiffusionPipeline.from_pretrained(path, trust_remote_code=True)"),
    "custom_revision": ((None,), "no code from the folder runs"),
    "subfolder": ((None,), "a pipeline folder's components are found through its model_index.json"),
    "provider": ((None,), "ONNX Runtime options do not apply"),
    "sess_options": ((None,), "ONNX Runtime options do not apply"),
    "provider_options": ((None,), "ONNX Runtime options do not apply"),
    "proxies": ((None,), "huggingface_hub takes proxies from the HTTP_PROXY / HTTPS_PROXY environment variables"),
}
_HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


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


def weights_file_pattern(variant: str | None) -> re.Pattern:
    """diffusers' weight file names of one variant: single file, shards and shard index, safetensors or .bin."""
    tag = re.escape(f".{variant}") if variant else ""
    checksum = re.escape(CHECKSUM_SUFFIX)
    return re.compile(
        rf"^diffusion_pytorch_model{tag}(-\d+-of-\d+)?\.(safetensors|bin)({checksum})?$"
        rf"|^diffusion_pytorch_model\.(safetensors|bin)\.index{tag}\.json({checksum})?$"
    )


def _write_weights_checksums(component_dir: Path, variant: str | None) -> None:
    """``<file>.sha256`` beside every weights file (and shard index) the save just wrote (weights_integrity.py)."""
    pattern = weights_file_pattern(variant)
    write_checksum_files(
        sorted(
            path
            for path in component_dir.iterdir()
            if path.is_file() and pattern.match(path.name) and not path.name.endswith(CHECKSUM_SUFFIX)
        )
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
    stale_weights = weights_file_pattern(variant)
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
    """Write ``pipeline`` in the custom-code layout (remote_code.py) with a model card.

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
        shipped = copy_code(class_source_file(pipeline_cls), staging, top_level_package(pipeline_cls))
        code_files = [shipped[0].relative_to(staging).as_posix()]
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
            if isinstance(component, ModelMixin):
                _write_weights_checksums(staging / name, variant)
            if source_file is not None:
                shipped = copy_code(source_file, staging / name, top_level_package(type(component)))
                code_files.append(shipped[0].relative_to(staging).as_posix())
            index[name] = [library, class_name]
        with atomic_write(staging / MODEL_INDEX_NAME, "w") as handle:
            handle.write(json.dumps(index, indent=2, sort_keys=True) + "\n")

        existing_card = target / MODEL_CARD_NAME
        if model_card is not None or not existing_card.exists():
            write_model_card(
                model_card if model_card is not None else ModelCardInfo(),
                staging,
                repo_id=card_repo_id or target.name,
                components={k: v for k, v in components.items() if v is not None},
                code_files=code_files,
                num_classes=num_classes,
                existing_card=existing_card.read_text(encoding="utf-8") if existing_card.is_file() else None,
            )
        _move_into_place(staging, target, [name for name, c in components.items() if c is not None], variant)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---- which folder ------------------------------------------------------------------------------


def is_hub_repo_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` (not an existing path) reads as a Hub repo id ``"namespace/name"``.

    Anything else is meant as a local path: an absolute path or one starting with "." or "~", no or
    several "/", a Windows separator, or "a/b" where "a" is a local folder.
    """
    text = os.fspath(name)
    if not isinstance(text, str) or not _HUB_REPO_ID.fullmatch(text):
        return False
    return not Path(text.split("/")[0]).is_dir()


def download_snapshot(repo_id: str, **hub_kwargs: Any) -> Path:
    """Download a Hub repo's files except pickle checkpoints (never loaded anyway)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, ignore_patterns=_SKIPPED_HUB_FILES, **hub_kwargs))


def resolve_pretrained_folder(name: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """The local folder ``name`` stands for: the folder itself, or the downloaded snapshot of a Hub repo id.

    ``hub_kwargs`` (revision, token, cache_dir, ...) go to the download. A name that is neither an
    existing folder nor a Hub repo id (`is_hub_repo_id`) raises FileNotFoundError naming the path; so
    does a repo-id-like name that is no local folder and could not be downloaded (offline, no such repo).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    given = os.fspath(name)  # errors name the path as the user wrote it
    if path.exists():
        raise NotADirectoryError(f"{given!r} is a file, not a pipeline folder")
    if not is_hub_repo_id(name):
        raise FileNotFoundError(f"folder {given!r} does not exist (a Hub repo id is 'namespace/name')")
    try:
        return download_snapshot(os.fspath(name), **hub_kwargs)
    except Exception as error:  # huggingface_hub's errors: offline, repo not found, HTTP, cache misses
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"folder {given!r} does not exist, and it could not be downloaded as a Hub repo id "
            f"({type(error).__name__}: {cause})"
        ) from error


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


def declared_class_name(index: dict[str, Any]) -> Any:
    """The pipeline class a ``model_index.json`` names: its "_class_name" is "Name" in a plain diffusers
    save and ["module_stem", "Name"] in a custom-code one."""
    value = index.get("_class_name")
    return value[-1] if isinstance(value, (list, tuple)) and value else value


def _resolve_component_class(entry: Any, name: str, index_file: Path, package: str) -> type:
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise ValueError(f"{index_file}: the {name!r} entry must be [library or module, class name], got {entry!r}")
    library, class_name = entry
    if library in LIBRARY_COMPONENTS:
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


def safetensors_weights_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors files a model in ``folder`` loads from: the single file, or the shard index and
    its shards. A folder without them is a FileNotFoundError saying so (and naming pickles it has)."""
    single = folder / _add_variant(SAFETENSORS_WEIGHTS_NAME, variant)
    if single.is_file():
        return [single]
    index = folder / _add_variant(SAFETENSORS_INDEX_NAME, variant)
    if index.is_file():
        weight_map = _read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"shard index {str(index)!r} has no weight_map")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise FileNotFoundError(f"shards {missing} listed in {str(index)!r} are missing")
        return [index, *shards]
    pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = (
        f"; found {pickled}, but pickle checkpoints are never loaded (unpickling can run arbitrary code): "
        "convert them to safetensors"
        if pickled
        else ""
    )
    what = f"variant {variant!r} " if variant else ""
    raise FileNotFoundError(
        f"{str(folder)!r} has no {what}safetensors weights ({single.name} or {index.name}){hint}"
    )


def _check_weights(weights_files: list[Path], recorded: dict[Path, str] | None = None) -> None:
    """Verify the checksums (weights_integrity.py); warn once if some files have none recorded."""
    unverified = verify_weights_files(weights_files, recorded)
    if unverified:
        logger.warning(
            f"{', '.join(repr(str(path)) for path in unverified)}: no SHA-256 recorded (a folder saved without "
            "checksums, e.g. by ddpm-from-scratch 0.1.0 or stock diffusers), loaded without verifying the bytes"
        )


def _load_model(component_cls: type, component_dir: Path, name: str, model_kwargs: dict[str, Any],
                recorded: dict[Path, str] | None = None) -> Any:
    """Verify and load one model from safetensors; failures name the weights file."""
    weights = safetensors_weights_files(component_dir, model_kwargs.get("variant"))
    _check_weights(weights, recorded)
    try:
        return component_cls.from_pretrained(component_dir, use_safetensors=True, **model_kwargs)
    except Exception as error:
        raise OSError(f"could not load the {name!r} weights from {str(weights[0])!r}: {error}") from error


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
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load each component ``pipeline_cls.__init__`` expects from ``folder`` with the installed classes.

    No code from the folder runs, and weights are read from safetensors only, after checking their
    SHA-256 (``model_kwargs``: `MODEL_LOADING_KEYS` for every model). Each failure names the file at
    fault: a missing or corrupt ``model_index.json``, a pipeline of another class, a missing component
    folder, config or weights file, a config for a different class, weights that do not match their
    checksum or do not load.
    """
    model_kwargs = model_kwargs or {}
    folder = Path(folder)
    index_file = folder / MODEL_INDEX_NAME
    index = _read_json(index_file, "pipeline index")
    declared = declared_class_name(index)
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
            components[name] = _load_model(component_cls, component_dir, name, model_kwargs)
        else:
            components[name] = _load_scheduler(component_cls, component_dir, name, config_file)
    return components


def _load_scheduler(component_cls: type, component_dir: Path, name: str, config_file: Path) -> Any:
    try:
        return component_cls.from_pretrained(component_dir)
    except Exception as error:
        raise ValueError(f"could not build the {name!r} component from {str(config_file)!r}: {error}") from error


def verify_stock_pipeline_weights(folder: Path) -> None:
    """Before diffusers' own loader reads a stock pipeline folder (e.g. DDPMPipeline's): each model
    folder must have safetensors weights (a clear error, not diffusers' "missing .bin"), checked
    against their .sha256 if the folder has them."""
    index = _read_json(folder / MODEL_INDEX_NAME, "pipeline index")
    for name in sorted(key for key in index if not key.startswith("_")):
        if (folder / name / ModelMixin.config_name).is_file():
            _check_weights(safetensors_weights_files(folder / name, None))


# ---- training checkpoints -----------------------------------------------------------------------

CHECKPOINT_UNET_FOLDERS = ("unet_ema", "unet")  # preferred first: the EMA weights are the ones to sample
CHECKPOINT_SCHEDULER_FOLDER = "scheduler"
CHECKPOINT_MANIFEST_NAME = "manifest.json"
CHECKPOINT_STATE_NAME = "training_state.json"


def is_training_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a training checkpoint: unet/ or unet_ema/, scheduler/, its training state
    (training_state.json or manifest.json) and no model_index.json (so a pipeline folder that lost its
    model_index.json is reported as such, not loaded as a checkpoint)."""
    return (
        not (folder / MODEL_INDEX_NAME).exists()
        and (folder / CHECKPOINT_SCHEDULER_FOLDER).is_dir()
        and any((folder / name).is_dir() for name in CHECKPOINT_UNET_FOLDERS)
        and any((folder / name).is_file() for name in (CHECKPOINT_STATE_NAME, CHECKPOINT_MANIFEST_NAME))
    )


def _class_named_in(config_file: Path, base: type, package: str, modules: tuple[str, ...]) -> type:
    """The class a config's "_class_name" names, looked up in this package's ``modules`` and in diffusers."""
    config = _read_json(config_file, "config")
    class_name = config.get("_class_name")
    for module_name in (*(f"{package}.{module}" for module in modules), "diffusers"):
        candidate = getattr(importlib.import_module(module_name), str(class_name), None)
        if inspect.isclass(candidate) and issubclass(candidate, base):
            return candidate
    raise ValueError(
        f"{config_file} names {class_name!r}, which is not a {base.__name__} of {package} or diffusers"
    )


def load_checkpoint_components(
    pipeline_cls: type, folder: str | os.PathLike, *, skip: frozenset[str] = frozenset(),
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``unet`` (from unet_ema/ if present, else unet/) and ``scheduler`` of a training checkpoint folder.

    The weights are checked against the checkpoint's manifest.json (or .sha256 files) before loading.
    """
    folder = Path(folder)
    package = pipeline_cls.__module__.rpartition(".")[0]
    recorded = manifest_checksums(folder, CHECKPOINT_MANIFEST_NAME)
    components: dict[str, Any] = {}
    if "unet" not in skip:
        unet_dir = next(folder / name for name in CHECKPOINT_UNET_FOLDERS if (folder / name).is_dir())
        unet_cls = _class_named_in(unet_dir / ModelMixin.config_name, ModelMixin, package, ("unet",))
        logger.info(f"loading the {unet_dir.name} weights of training checkpoint {folder}")
        components["unet"] = _load_model(unet_cls, unet_dir, "unet", model_kwargs or {}, recorded)
    if "scheduler" not in skip:
        scheduler_dir = folder / CHECKPOINT_SCHEDULER_FOLDER
        config_file = scheduler_dir / SchedulerMixin.config_name
        scheduler_cls = _class_named_in(config_file, SchedulerMixin, package, ("scheduler",))
        components["scheduler"] = _load_scheduler(scheduler_cls, scheduler_dir, "scheduler", config_file)
    return components


def load_pipeline(pipeline_cls: type, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """``pipeline_cls.from_pretrained``: a local folder or Hub repo id, loaded with the installed classes.

    ``pretrained_model_name_or_path`` may also be a training checkpoint folder
    (`is_training_checkpoint`). Components passed as keyword arguments replace the saved ones;
    `MODEL_LOADING_KEYS` (torch_dtype, variant, device_map, low_cpu_mem_usage, ...) go to every
    model's ``from_pretrained``; trust_remote_code is ignored (no code from the folder runs); for Hub
    repos revision, token, cache_dir, local_files_only, force_download, endpoint go to the download.
    A keyword in `_UNSUPPORTED_LOADING_KEYS` with a value that cannot apply, or an unknown keyword,
    is a ValueError saying why / listing the allowed names.
    """
    kwargs.pop("trust_remote_code", None)
    for key, (fine, why) in _UNSUPPORTED_LOADING_KEYS.items():
        if key in kwargs:
            value = kwargs.pop(key)
            if not any(value is ok or value == ok for ok in fine):
                raise ValueError(f"{key}={value!r} is not supported by {pipeline_cls.__name__}.from_pretrained: {why}")
    model_kwargs = {key: kwargs.pop(key) for key in MODEL_LOADING_KEYS if key in kwargs}
    expected = [n for n in inspect.signature(pipeline_cls.__init__).parameters if n != "self"]
    passed = {name: kwargs.pop(name) for name in expected if name in kwargs}
    hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KEYS if key in kwargs}
    if kwargs:
        allowed = sorted([*expected, *_HUB_KEYS, *MODEL_LOADING_KEYS, "trust_remote_code"])
        raise ValueError(f"unexpected keyword arguments {sorted(kwargs)}; allowed: {allowed}")

    folder = resolve_pretrained_folder(pretrained_model_name_or_path, **hub_kwargs)
    if not (folder / MODEL_INDEX_NAME).is_file() and not is_training_checkpoint(folder):
        raise FileNotFoundError(
            f"{os.fspath(pretrained_model_name_or_path)!r} is not a saved pipeline (it has no {MODEL_INDEX_NAME}) "
            f"nor a training checkpoint ({' or '.join(CHECKPOINT_UNET_FOLDERS)}, {CHECKPOINT_SCHEDULER_FOLDER}/ "
            f"and {CHECKPOINT_STATE_NAME})"
        )
    load = load_checkpoint_components if is_training_checkpoint(folder) else load_pipeline_components
    components = load(pipeline_cls, folder, skip=frozenset(passed), model_kwargs=model_kwargs)
    pipeline = pipeline_cls(**components, **passed)
    pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
    return pipeline
