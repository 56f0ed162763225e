"""Which code a saved pipeline ships, checked at save time against what diffusers' loader can follow.

A saved ``ScratchDDPMPipeline`` is in diffusers' custom-code layout (``pipeline.save_with_code``
writes it)::

    model_index.json            "_class_name": ["pipeline", "ScratchDDPMPipeline"]  <- [module file stem, class]
                                "unet": ["unet", "ScratchUNet2DModel"]              <- unet/unet.py defines it
                                "scheduler": ["scheduler", "ScratchDDPMScheduler"]  (diffusers class: ["diffusers", name])
    pipeline.py, fast_sampling.py   the pipeline's module and every sibling it imports with a single-dot import
    unet/, scheduler/           weights and configs, each with its class's module and that module's siblings

A module's shipped code is diffusers' own ``get_relative_import_files`` closure, so what only saving,
loading with the package or publishing needs (this subpackage) is imported by name at call time and
never shipped. What diffusers' loader cannot follow is refused here, before anything is written.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.dynamic_modules_utils import get_relative_import_files


class CodeLayoutError(ValueError):
    """A module cannot be shipped as remote code (an import diffusers' loader cannot follow)."""


def relative_imports(source: str, filename: str, package_root: str | None) -> list[str]:
    """Sibling modules ``source`` imports with ``from .x import y`` (what diffusers' loader follows).

    Forms the loader cannot follow fail here, at save time, instead of on a user's machine:
    ``from . import x``, ``from ..x import y``, dotted ``from .a.b import y``, and absolute imports
    of the package itself (``package_root``), which a Hub user does not have.
    """
    names = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or not node.module or "." in node.module:
                raise CodeLayoutError(
                    f"{filename}:{node.lineno}: `from {'.' * node.level}{node.module or ''} import ...` cannot be "
                    "shipped as remote code; diffusers' loader follows only single-dot imports of a sibling "
                    "module, `from .module import name`"
                )
            names.add(node.module)
            continue
        absolute = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
        if package_root and any(name.split(".")[0] == package_root for name in absolute):
            raise CodeLayoutError(
                f"{filename}:{node.lineno}: an absolute import of {package_root!r} cannot be shipped as remote "
                f"code (a Hub user may not have {package_root} installed); import the sibling module with a "
                "single-dot import instead"
            )
    return sorted(names)


def code_closure(module_file: str | Path, package_root: str | None) -> list[Path]:
    """``module_file`` and the siblings diffusers' loader copies with it (its ``get_relative_import_files``,
    which also reads import-looking lines in docstrings), after refusing imports it cannot follow."""
    module_file = Path(module_file)
    relative_imports(module_file.read_text(encoding="utf-8"), str(module_file), package_root)
    try:
        closure = list(dict.fromkeys([module_file, *map(Path, get_relative_import_files(module_file))]))
    except FileNotFoundError as error:
        raise CodeLayoutError(
            f"{module_file} (or a sibling it imports) imports {Path(error.filename).stem!r}, but {error.filename} "
            "does not exist"
        ) from error
    for path in closure[1:]:
        relative_imports(path.read_text(encoding="utf-8"), str(path), package_root)
    return closure


def class_source_file(cls: type) -> Path:
    """The .py file that defines ``cls`` (a package module, or diffusers' cached remote-code copy)."""
    if cls.__module__.rsplit(".", 1)[-1] == "__main__":
        raise CodeLayoutError(
            f"{cls.__qualname__} is defined in a script (__main__); put it in a module file so that it can be "
            "shipped and imported by name"
        )
    filename = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if not filename or not filename.endswith(".py") or not Path(filename).is_file():
        raise CodeLayoutError(f"cannot find the source file of {cls.__module__}.{cls.__qualname__} to ship")
    return Path(filename)


def top_level_package(cls: type) -> str:
    """The top-level package of ``cls``'s module: the name its shipped code must not import absolutely."""
    return cls.__module__.split(".")[0]


def check_shipped_code(pipeline: Any) -> list[str]:
    """Refuse (CodeLayoutError) code of ``pipeline`` or its components that diffusers' loader cannot
    follow; return why ``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` would
    still fail from the Hub (empty: it would not).

    For a component folder that holds weights, diffusers 0.42's download fetches only the weights,
    the config and the module file named in ``model_index.json``, not that module's siblings. A local
    folder is not affected. So a model's module must be self-contained; a scheduler's may import siblings.
    """
    problems = []
    for name, obj in [("pipeline", pipeline), *pipeline.components.items()]:
        if obj is None or top_level_package(type(obj)) == "diffusers":
            continue
        source_file = class_source_file(type(obj))
        siblings = [path.name for path in code_closure(source_file, top_level_package(type(obj)))[1:]]
        if isinstance(obj, ModelMixin) and siblings:
            problems.append(
                f"{name}/{source_file.name} imports sibling modules {siblings}, which diffusers 0.42 does not "
                f"download from a Hub repo for a component folder with weights; DiffusionPipeline.from_pretrained"
                f"(repo_id, trust_remote_code=True) would fail. Make {source_file.name} self-contained."
            )
    return problems
