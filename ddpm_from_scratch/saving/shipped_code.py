"""Which code a saved pipeline ships: the remote-code layout diffusers' loader reads, and its rules.

diffusers 0.42 looks a pipeline's class up inside diffusers unless ``model_index.json`` says where its
code is, so a saved ``ScratchDDPMPipeline`` carries its own code (the layout the custom-code loader
reads, checked against ``pipeline_utils.py``, ``pipeline_loading_utils.py`` and
``utils/dynamic_modules_utils.py``)::

    model_index.json            "_class_name": ["pipeline", "ScratchDDPMPipeline"]  <- [module file stem, class]
                                "unet": ["unet", "ScratchUNet2DModel"]              <- unet/unet.py defines it
                                "scheduler": ["scheduler", "ScratchDDPMScheduler"]  (diffusers class: ["diffusers", name])
    pipeline.py, fast_sampling.py   the pipeline's module and every sibling it imports with a single-dot import
    unet/                       config.json, diffusion_pytorch_model.safetensors, unet.py (+ its siblings)
    scheduler/                  scheduler_config.json, scheduler.py (+ beta_schedules.py, ... it imports)
    README.md                   model card; sample_grid.png when the card has one

``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` then imports those files (and
needs nothing else installed). A module's shipped code is its single-dot import closure
(`code_closure`), so what only saving, loading with the package or publishing needs
(pipeline_folder.py, model_card.py, hub_upload.py, this module) is imported by name at call time
and never shipped.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

from diffusers.models.modeling_utils import ModelMixin

from .atomic_io import write_bytes_atomic

# diffusers' own import scan (dynamic_modules_utils.get_relative_imports): whatever these match is
# what its loader will copy, so the saver must ship at least that.
_DIFFUSERS_RELATIVE_IMPORT_PATTERNS = (
    re.compile(r"^\s*import\s+\.(\S+)\s*$", flags=re.MULTILINE),
    re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE),
)
# The libraries diffusers' loader imports component classes from by name (LOADABLE_CLASSES).
LIBRARY_COMPONENTS = ("diffusers",)


class CodeLayoutError(ValueError):
    """A module cannot be shipped as remote code (an import diffusers' loader cannot follow)."""


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


def top_level_package(cls: type) -> str:
    """The top-level package of ``cls``'s module: the name its shipped code must not import absolutely."""
    return cls.__module__.split(".")[0]


def component_entry(component: Any) -> tuple[str, str, Path | None]:
    """(library or module stem, class name, source file to ship or None) for ``model_index.json``."""
    cls = type(component)
    if top_level_package(cls) in LIBRARY_COMPONENTS:
        return top_level_package(cls), cls.__name__, None
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
        siblings = [path.name for path in code_closure(source_file, top_level_package(type(component)))[1:]]
        if siblings:
            problems.append(
                f"{name}/{source_file.name} imports sibling modules {siblings}, which diffusers 0.42 does not "
                f"download from a Hub repo for a component folder with weights; DiffusionPipeline.from_pretrained"
                f"(repo_id, trust_remote_code=True) would fail. Make {source_file.name} self-contained."
            )
    return problems


def copy_code(module_file: Path, destination: Path, package_root: str | None) -> list[Path]:
    """Copy ``module_file`` and its `code_closure` into ``destination``; returns the copies, module first."""
    copied = []
    for source in code_closure(module_file, package_root):
        copied.append(write_bytes_atomic(source.read_bytes(), destination / source.name))
    return copied
