"""dvc.yaml lists, for every stage, each package module its script runs, imported directly or through
other modules: a change to any of them re-runs the stage, and to no other module does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "flowerpipe"


def imported_modules(path: Path) -> set[str]:
    """The package modules (as repository paths) that the Python file at `path` imports anywhere
    in it, by absolute or relative import, with the package's `__init__.py` they run first."""
    inside = path.parent.name == PACKAGE
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # the module, or the package and its modules
            module = node.module or ""
            if node.level and inside:
                module = f"{PACKAGE}.{module}".rstrip(".")
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE:
                found.add(f"{PACKAGE}/__init__.py")
                if len(parts) > 1 and (REPO / PACKAGE / f"{parts[1]}.py").exists():
                    found.add(f"{PACKAGE}/{parts[1]}.py")
    return found


def module_closure(script: Path) -> set[str]:
    """Every package module that running `script` imports, through any chain of imports."""
    seen: set[str] = set()
    todo = imported_modules(script)
    while todo:
        module = todo.pop()
        seen.add(module)
        todo |= imported_modules(REPO / module) - seen
    return seen


def stages() -> dict[str, dict]:
    found = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in found.items()}  # foreach: its template


@pytest.mark.parametrize("name", list(stages()))
def test_a_stage_depends_on_every_module_its_script_imports(name: str) -> None:
    stage = stages()[name]
    script = next(part for part in stage["cmd"].split() if part.startswith("stages/"))
    assert script in stage["deps"]
    listed = {dep for dep in stage["deps"] if dep.startswith(f"{PACKAGE}/")}
    imported = module_closure(REPO / script)
    assert sorted(imported - listed) == [], "missing from dvc.yaml"
    assert sorted(listed - imported) == [], "listed in dvc.yaml but not imported"


def test_imports_are_found_in_every_form(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import flowerpipe.atomic\n"
        "from flowerpipe import config\n"
        "from flowerpipe.console import log\n"
        "def later():\n"
        "    from flowerpipe.predict import Predictor\n"
        "import json\n"
    )
    assert imported_modules(script) == {
        f"{PACKAGE}/{m}.py" for m in ("__init__", "atomic", "config", "console", "predict")
    }
    inside = imported_modules(REPO / PACKAGE / "predict.py")  # relative imports within the package
    assert f"{PACKAGE}/preprocess.py" in inside
