"""Writing a pipeline folder, and loading one with the installed package (no code from the folder runs).

Saving (`save_pipeline_folder`, behind ``ScratchDDPMPipeline.save_pretrained``): diffusers' own save
plus the shipped code (``pipeline.save_with_code``) into a hidden staging folder, the weights'
size and SHA-256 in ``manifest.json`` (checksums.py), the model card; then each file is renamed into
place, ``model_index.json`` last (`_move_into_place`), so an interrupted save never leaves a mix.

Loading (`load_pipeline`, behind ``ScratchDDPMPipeline.from_pretrained``): a local folder or a Hub
repo id (`resolve_pretrained_folder`); each component's class comes from the installed package or
diffusers, never from the folder; weights are checked against the manifest, then read by diffusers'
``ModelMixin.from_pretrained`` from safetensors only (loading never unpickles); every failure names
the file at fault. A training checkpoint folder (layout.py) loads too: its EMA weights if it has them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .atomic_io import read_json
from .checksums import read_manifest, verify_files, write_manifest
from .layout import (EMA_UNET_DIR, MANIFEST_NAME, MODEL_INDEX_NAME, PIPELINE_STAGING_MARKER, SCHEDULER_DIR, STATE_NAME,
                     UNET_DIR)
from .model_card import MODEL_CARD_NAME, ModelCardInfo, refuse_token_in_files, write_model_card
from .shipped_code import check_shipped_code

logger = logging.get_logger(__name__)

# Hub files never loaded (pickles and other frameworks' weights): not downloaded either
_SKIPPED_HUB_FILES = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.msgpack", "*.onnx"]
_HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "endpoint")
# keywords of diffusers' ModelMixin.from_pretrained that apply to every model of the pipeline
MODEL_LOADING_KEYS = (
    "torch_dtype", "dtype", "variant", "device_map", "max_memory", "offload_folder", "offload_state_dict",
    "low_cpu_mem_usage", "ignore_mismatched_sizes", "quantization_config", "disable_mmap",
)
# keywords of diffusers' DiffusionPipeline.from_pretrained that cannot apply here: name -> (values that are
# fine, why others are not); any other unknown keyword is refused with the list of allowed ones
_UNSUPPORTED_LOADING_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_safetensors": ((None, True), "weights are loaded from safetensors only (unpickling can run arbitrary code)"),
    "use_onnx": ((None, False), "the pipeline has no ONNX weights"),
    "output_loading_info": ((None, False), "from_pretrained returns the pipeline only"),
    "custom_pipeline": ((None,), "this class is the pipeline; to run code shipped in the folder use "
                                 "DiffusionPipeline.from_pretrained(path, trust_remote_code=True)"),
    "proxies": ((None,), "huggingface_hub takes proxies from the HTTP_PROXY / HTTPS_PROXY environment variables"),
}
CHECKPOINT_UNET_FOLDERS = (EMA_UNET_DIR, UNET_DIR)  # preferred first: the EMA weights are the ones to sample


# ---- saving ------------------------------------------------------------------------------------


def weights_file_pattern(variant: str | None) -> re.Pattern:
    """diffusers' weight file names of one variant: single file, shards and shard index, safetensors or .bin."""
    tag = re.escape(f".{variant}") if variant else ""
    return re.compile(
        rf"^diffusion_pytorch_model{tag}(-\d+-of-\d+)?\.(safetensors|bin)$"
        rf"|^diffusion_pytorch_model\.(safetensors|bin)\.index{tag}\.json$"
    )


def variant_weights(names: Iterable[str], components: Iterable[str], variant: str | None) -> list[str]:
    """Of ``names`` (relative posix paths: a folder's files, a manifest's, a Hub repo's), the weights of
    ``variant`` in the ``components``' folders: what a save of that variant writes anew or replaces."""
    pattern, components = weights_file_pattern(variant), set(components)
    return [name for name in names
            if name.count("/") == 1 and name.split("/")[0] in components and pattern.match(name.split("/")[1])]


def _files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def _move_into_place(staging: Path, target: Path, component_names: list[str], variant: str | None) -> None:
    """Move the staged files over ``target`` one rename at a time, ``model_index.json`` last.

    Files already in ``target`` that this save does not write (checkpoints, logs, an edited README,
    other variants' weights) are left alone, except same-variant weights in a replaced component
    folder (an old shard or .bin could shadow the new file), deleted once the new ones are in place.
    """
    staged = _files(staging)
    for relative in [name for name in staged if name != MODEL_INDEX_NAME]:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target / relative)
    present = [path.relative_to(target).as_posix() for name in component_names for path in (target / name).iterdir()
               if path.is_file()]
    for stale in set(variant_weights(present, component_names, variant)) - set(staged):
        (target / stale).unlink()
    os.replace(staging / MODEL_INDEX_NAME, target / MODEL_INDEX_NAME)


def _kept_manifest_entries(folder: Path, component_names: list[str], variant: str | None) -> dict[str, dict]:
    """The entries of ``folder``'s manifest that a save of ``variant`` keeps: all but the same-variant
    weights of the components it writes (other variants' weights stay, and stay verified)."""
    try:
        recorded = read_manifest(folder) or {}
    except ValueError as error:
        logger.warning(f"{error}; it is replaced by the new save's manifest")
        return {}
    replaced = set(variant_weights(recorded, component_names, variant))
    return {name: {"size": size, "sha256": digest} for name, (size, digest) in recorded.items() if name not in replaced}


def save_pipeline_folder(
    pipeline: Any,
    save_directory: str | os.PathLike,
    *,
    model_card: ModelCardInfo | None,
    card_repo_id: str | None,
    num_classes: int | None,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
    token: str | None = None,
) -> Path:
    """Write ``pipeline`` with its code, the weights' manifest and a model card (module doc); returns the folder.

    A README.md already in the folder is kept unless ``model_card`` is given. Code the Hub could not
    serve (`check_shipped_code`) is a warning here (hub.py refuses it before pushing). A card holding
    the Hub access token (``token``, or the one huggingface_hub has stored) is refused before anything
    is written to the folder. A training checkpoint is refused as a target.
    """
    from ..pipeline import save_with_code

    for problem in check_shipped_code(pipeline):
        logger.warning(problem)
    target = Path(save_directory).resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"save_directory {str(target)!r} exists and is not a directory")
    if target.is_dir() and is_training_checkpoint(target):
        raise ValueError(
            f"save_directory {str(target)!r} is a training checkpoint: a pipeline saved into it would replace its "
            "weights and break its manifest, so the run could not resume from it; save to another folder"
        )
    target.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{PIPELINE_STAGING_MARKER}", dir=target.parent))
    except OSError:  # a parent we may not write to: stage inside the folder itself (hidden, not uploaded)
        staging = Path(tempfile.mkdtemp(prefix=PIPELINE_STAGING_MARKER, dir=target))
    try:
        save_with_code(pipeline, staging, variant=variant, max_shard_size=max_shard_size)
        components = {name: c for name, c in pipeline.components.items() if c is not None}
        # a model's own manifest (unet.py): this folder's manifest records the same weights
        for nested in staging.glob(f"*/{MANIFEST_NAME}"):
            nested.unlink()
        weights = [staging / name for name in variant_weights(_files(staging), components, variant)]
        write_manifest(staging, weights, keep=_kept_manifest_entries(target, list(components), variant))
        existing_card = target / MODEL_CARD_NAME
        if model_card is not None or not existing_card.exists():
            write_model_card(
                model_card if model_card is not None else ModelCardInfo(),
                staging,
                repo_id=card_repo_id or target.name,
                components=components,
                code_files=sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*.py")),
                num_classes=num_classes,
                existing_card=existing_card.read_text(encoding="utf-8") if existing_card.is_file() else None,
                default_sampling=_default_sampling(pipeline),
            )
            refuse_token_in_files([staging / MODEL_CARD_NAME], token, "save")
        _move_into_place(staging, target, list(components), variant)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---- which folder ------------------------------------------------------------------------------


def is_hub_repo_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` (not an existing path) reads as a Hub repo id ``"namespace/name"`` (huggingface_hub's
    ``validate_repo_id``, with the namespace required); "a/b" where "a" is a local folder is a local path."""
    text = os.fspath(name)
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count("/") == 1 and not Path(text.split("/")[0]).is_dir()


def resolve_pretrained_folder(name: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """The local folder ``name`` stands for: the folder itself, or the downloaded snapshot of a Hub repo id
    (huggingface_hub's ``snapshot_download``, without pickle files; ``hub_kwargs``: revision, token, ...).

    A name that is neither an existing folder nor a Hub repo id, or a repo id that could not be
    downloaded (offline, no such repo), raises FileNotFoundError naming the path as the user wrote it.
    """
    from huggingface_hub import snapshot_download

    path, given = Path(name).expanduser(), os.fspath(name)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{given!r} is a file, not a pipeline folder")
    if not is_hub_repo_id(name):
        raise FileNotFoundError(f"folder {given!r} does not exist (a Hub repo id is 'namespace/name')")
    try:
        return Path(snapshot_download(given, ignore_patterns=_SKIPPED_HUB_FILES, **hub_kwargs))
    except Exception as error:  # huggingface_hub's errors: offline, repo not found, HTTP, cache misses
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"folder {given!r} does not exist, and it could not be downloaded as a Hub repo id "
            f"({type(error).__name__}: {cause})"
        ) from error


def is_training_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a training checkpoint: unet/ or unet_ema/, scheduler/, training_state.json
    and no model_index.json (so a pipeline folder that lost its model_index.json is reported as such)."""
    return (
        not (folder / MODEL_INDEX_NAME).exists()
        and (folder / SCHEDULER_DIR).is_dir()
        and (folder / STATE_NAME).is_file()
        and any((folder / name).is_dir() for name in CHECKPOINT_UNET_FOLDERS)
    )


# ---- loading with the installed package -------------------------------------------------------


def declared_class_name(index: dict[str, Any]) -> Any:
    """The pipeline class a ``model_index.json`` names: "Name" in a plain diffusers save,
    ["module_stem", "Name"] in a custom-code one."""
    value = index.get("_class_name")
    return value[-1] if isinstance(value, (list, tuple)) and value else value


def _installed_class(library: str, class_name: Any, package: str, where: str) -> type:
    """``class_name`` from diffusers (``library`` "diffusers") or from a module of the installed ``package``
    (``library`` its file stem, or its full name in a plain diffusers save), never from the folder."""
    if library != "diffusers":
        module = library if library.startswith(package + ".") else f"{package}.{library}"
        if not module[len(package) + 1:].isidentifier() or importlib.util.find_spec(module) is None:
            raise ValueError(
                f"{where}: the module {library!r} is not part of {package}; to use the code shipped in the "
                "folder, load it with DiffusionPipeline.from_pretrained(path, trust_remote_code=True)"
            )
        library = module
    cls = getattr(importlib.import_module(library), str(class_name), None)
    if not (inspect.isclass(cls) and issubclass(cls, (ModelMixin, SchedulerMixin))):
        raise ValueError(f"{where} names {library}.{class_name}, which is not a diffusers model or scheduler class")
    return cls


def safetensors_weights_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors weights of ``variant`` in ``folder`` (the single file, or the shard index and its
    shards); none is a FileNotFoundError saying so, naming pickles the folder has (never loaded)."""
    pattern = weights_file_pattern(variant)
    weights = sorted(path for path in folder.iterdir() if pattern.match(path.name) and ".safetensors" in path.name)
    if weights:
        return weights
    tag = f".{variant}" if variant else ""
    pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    raise FileNotFoundError(
        f"{str(folder)!r} has no {f'variant {variant!r} ' if variant else ''}safetensors weights "
        f"(diffusion_pytorch_model{tag}.safetensors or diffusion_pytorch_model.safetensors.index{tag}.json)"
        + (f"; found {pickled}, but pickle checkpoints are never loaded: convert them to safetensors" if pickled else "")
    )


def _load_component(cls: type, folder: Path, name: str, manifest_folder: Path, model_kwargs: dict[str, Any]) -> Any:
    """Load one component with diffusers' ``from_pretrained`` (a model: verified safetensors only)."""
    config_file = folder / cls.config_name
    config = read_json(config_file, f"{name} config")
    if config.get("_class_name") != cls.__name__:
        raise ValueError(f"{config_file} is a config for {config.get('_class_name')!r}, not a {cls.__name__}")
    if not issubclass(cls, ModelMixin):
        try:
            return cls.from_pretrained(folder)
        except Exception as error:
            raise ValueError(f"could not build the {name!r} component from {str(config_file)!r}: {error}") from error
    weights = safetensors_weights_files(folder, model_kwargs.get("variant"))
    verify_files(manifest_folder, weights)
    try:
        return cls.from_pretrained(folder, use_safetensors=True, **model_kwargs)
    except Exception as error:
        raise OSError(f"could not load the {name!r} weights from {str(weights[0])!r}: {error}") from error


def _default_sampling(pipeline: Any) -> tuple[int, float | None] | None:
    """The (steps, eta) a ScratchDDPMPipeline records for a call without a step count, for the model card."""
    steps = pipeline.config.get("default_num_inference_steps")
    return None if steps is None else (steps, pipeline.config.get("default_eta"))


def _component_names(pipeline_cls: type) -> list[str]:
    """The pipeline's components: the arguments of its ``__init__`` without a default (diffusers' rule); those
    with one (e.g. ``default_num_inference_steps``) are settings that ``model_index.json`` records as values."""
    parameters = inspect.signature(pipeline_cls.__init__).parameters
    return [name for name, p in parameters.items() if name != "self" and p.default is inspect.Parameter.empty]


def _recorded_settings(pipeline_cls: type, folder: Path) -> dict[str, Any]:
    """The ``__init__`` settings (arguments with a default) that the folder's ``model_index.json`` records; a
    folder saved before a setting existed, or a training checkpoint (no model_index.json), records none."""
    index_file = folder / MODEL_INDEX_NAME
    if not index_file.is_file():
        return {}
    index = read_json(index_file, "pipeline index")
    names = set(inspect.signature(pipeline_cls.__init__).parameters) - {"self", *_component_names(pipeline_cls)}
    return {name: index[name] for name in names if name in index}


def _components(pipeline_cls: type, folder: Path, skip: set[str], model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The components of a pipeline folder, or of a training checkpoint (unet from unet_ema/ if present)."""
    package = pipeline_cls.__module__.rpartition(".")[0]
    names = [name for name in _component_names(pipeline_cls) if name not in skip]
    if is_training_checkpoint(folder):  # no model_index.json: the package's classes, named in each config
        index_file = folder
        unet_dir = next(folder / name for name in CHECKPOINT_UNET_FOLDERS if (folder / name).is_dir())
        logger.info(f"loading the {unet_dir.name} weights of training checkpoint {folder}")
        dirs = {"unet": unet_dir, "scheduler": folder / SCHEDULER_DIR}
        index = {name: [name, read_json(dirs[name] / config_name, f"{name} config").get("_class_name")]
                 for name, config_name in (("unet", ModelMixin.config_name), ("scheduler", SchedulerMixin.config_name))}
    else:
        index_file = folder / MODEL_INDEX_NAME
        index, dirs = read_json(index_file, "pipeline index"), {name: folder / name for name in names}
        if declared_class_name(index) != pipeline_cls.__name__:
            raise ValueError(f"{index_file} describes a {declared_class_name(index)!r} pipeline, not a {pipeline_cls.__name__}")
    components = {}
    for name in names:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise ValueError(f"{index_file}: the {name!r} entry must be [library or module, class name], got {entry!r}")
        cls = _installed_class(entry[0], entry[1], package, f"{index_file}: the {name!r} component")
        if not dirs[name].is_dir():
            raise FileNotFoundError(f"component folder {str(dirs[name])!r} (listed in {index_file}) is missing")
        components[name] = _load_component(cls, dirs[name], name, folder, model_kwargs)
    return components


def load_pipeline(pipeline_cls: type, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """``pipeline_cls.from_pretrained``: a pipeline folder, training checkpoint or Hub repo id (module doc).

    Components passed as keyword arguments replace the saved ones; `MODEL_LOADING_KEYS` go to every
    model's ``from_pretrained``; `_HUB_KEYS` to the download; trust_remote_code is ignored (no code
    from the folder runs). A keyword in `_UNSUPPORTED_LOADING_KEYS` with a value that cannot apply,
    or an unknown keyword, is a ValueError saying why / listing the allowed names.
    """
    kwargs.pop("trust_remote_code", None)
    for key, (fine, why) in _UNSUPPORTED_LOADING_KEYS.items():
        value = kwargs.pop(key, None)
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
            f"nor a training checkpoint ({' or '.join(CHECKPOINT_UNET_FOLDERS)}, {SCHEDULER_DIR}/ and {STATE_NAME})"
        )
    settings = {**_recorded_settings(pipeline_cls, folder), **passed}
    pipeline = pipeline_cls(**_components(pipeline_cls, folder, set(passed), model_kwargs), **settings)
    pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
    return pipeline


def load_any_pipeline(path: str | os.PathLike, **kwargs: Any) -> Any:
    """The pipeline at ``path``, for the commands: a ScratchDDPMPipeline folder, training checkpoint or
    Hub repo id (`load_pipeline`, which takes every keyword of ``ScratchDDPMPipeline.from_pretrained``), or
    a stock diffusers pipeline such as ``DDPMPipeline`` (diffusers' own ``DiffusionPipeline.from_pretrained``,
    safetensors only, no remote code, weights verified first), which takes the download's keywords
    (`_HUB_KEYS`) and the models' (`MODEL_LOADING_KEYS`: ``torch_dtype``, ...), trust_remote_code ignored;
    any other is a ValueError."""
    from diffusers import DiffusionPipeline

    from ..pipeline import ScratchDDPMPipeline

    folder = resolve_pretrained_folder(path, **{key: kwargs[key] for key in _HUB_KEYS if key in kwargs})
    index_file = folder / MODEL_INDEX_NAME
    if index_file.is_file() and declared_class_name(read_json(index_file, "pipeline index")) != "ScratchDDPMPipeline":
        kwargs.pop("trust_remote_code", None)  # as in load_pipeline: no code from the folder runs
        unknown = sorted(set(kwargs) - {*_HUB_KEYS, *MODEL_LOADING_KEYS})
        if unknown:
            raise ValueError(f"unexpected keyword arguments {unknown} for the diffusers pipeline {os.fspath(path)!r}; "
                             f"allowed: {sorted([*_HUB_KEYS, *MODEL_LOADING_KEYS])}")
        for component_dir in sorted(p.parent for p in folder.glob(f"*/{ModelMixin.config_name}")):
            verify_files(folder, safetensors_weights_files(component_dir, None))
        model_kwargs = {key: kwargs[key] for key in MODEL_LOADING_KEYS if key in kwargs}
        return DiffusionPipeline.from_pretrained(folder, use_safetensors=True, **model_kwargs)
    return load_pipeline(ScratchDDPMPipeline, path, **kwargs)
