"""The package layout states its rules: the top level of ddpm_from_scratch is exactly the code a saved
pipeline ships, and every other module lives in a subpackage named by its job."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from diffusers.utils.dynamic_modules_utils import get_relative_import_files

import ddpm_from_scratch
from ddpm_from_scratch.pipeline import ScratchDDPMPipeline
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import ScratchUNet2DModel

PACKAGE = Path(ddpm_from_scratch.__file__).parent
SHIPPED_CLASSES = (ScratchDDPMPipeline, ScratchUNet2DModel, ScratchDDPMScheduler)
SUBPACKAGES = {"bound", "cli", "digits", "editing", "sampling", "saving", "training"}


def shipped_closure(cls: type) -> set[str]:
    """The files diffusers' remote-code loader copies for ``cls``: its module and its relative imports."""
    module_file = Path(__import__(cls.__module__, fromlist=["_"]).__file__)
    return {module_file.name, *(Path(path).name for path in get_relative_import_files(str(module_file)))}


def test_top_level_modules_are_exactly_the_shipped_code():
    top_level = {path.name for path in PACKAGE.glob("*.py")} - {"__init__.py"}
    shipped = set().union(*(shipped_closure(cls) for cls in SHIPPED_CLASSES))
    assert top_level == shipped, (
        f"top-level modules that no saved pipeline ships: {sorted(top_level - shipped)}; "
        f"shipped modules missing from the top level: {sorted(shipped - top_level)}"
    )


def test_every_other_module_is_in_a_named_subpackage():
    folders = {path.parent.name for path in PACKAGE.rglob("*.py") if path.parent != PACKAGE}
    assert folders == SUBPACKAGES
    for name in SUBPACKAGES:
        assert (PACKAGE / name / "__init__.py").is_file()


def test_shipped_modules_import_nothing_of_the_package_by_absolute_name():
    """A Hub user may not have the package: shipped code reaches its siblings through single-dot imports only."""
    for path in PACKAGE.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{path.name}:{node.lineno} imports from a parent package"
                assert node.level == 1 or not (node.module or "").startswith("ddpm_from_scratch"), (
                    f"{path.name}:{node.lineno} imports the package by absolute name"
                )
                if node.level == 1:
                    assert node.module and "." not in node.module, f"{path.name}:{node.lineno}: not a sibling module"
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("ddpm_from_scratch") for alias in node.names), path.name


def test_no_importable_top_level_training_package(tmp_path):
    """The trainer is ddpm_from_scratch.training; installing the project adds no top-level `training`,
    a name any other project could shadow (checked outside the repository, whose folder training/ holds scripts)."""
    import subprocess
    import sys

    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('training') is not None)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=tmp_path).returncode == 0


REPOSITORY = PACKAGE.parent
# where a user or a reader meets dotted names of the package: the docs, and the code's docstrings
DOTTED_NAME_SOURCES = ("README.md", "docs/*.md", "ddpm_from_scratch/**/*.py", "benchmarks/*.py", "training/*.py")
DOTTED_NAME = re.compile(r"\bddpm_from_scratch(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from (ddpm_from_scratch(?:\.\w+)*) import \(?([\w, ]+)", re.MULTILINE)


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package or an attribute of its longest importable prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_dotted_name_in_docs_and_docstrings_resolves():
    """A name a reader copies (``from ddpm_from_scratch.saving.convert_unet import ...``) exists: module
    moves leave no stale paths behind in the docs or the docstrings."""
    stale = []
    for pattern in DOTTED_NAME_SOURCES:
        for path in sorted(REPOSITORY.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            names = set(DOTTED_NAME.findall(text))
            names |= {f"{module}.{name.strip()}" for module, names_ in FROM_IMPORT.findall(text)
                      for name in names_.split(",") if name.strip()}
            stale += [f"{path.relative_to(REPOSITORY)}: {name}" for name in sorted(names) if not resolves(name)]
    assert not stale, "names that do not resolve:\n" + "\n".join(stale)
