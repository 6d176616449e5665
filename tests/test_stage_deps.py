"""dvc.yaml lists, for every stage, each package module its script runs, imported directly or through
other modules (a subpackage's folder stands for all of its modules): a change to any of them re-runs
the stage, and to no other module does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "flowerpipe"


def module_file(name: str) -> str | None:
    """The repository path of the package module or subpackage called `name`, if there is one."""
    path = REPO.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return str(path.with_suffix(".py").relative_to(REPO))
    if (path / "__init__.py").is_file():
        return str((path / "__init__.py").relative_to(REPO))
    return None


def executed(name: str) -> set[str]:
    """The files that importing module `name` runs first: each enclosing package's `__init__.py`,
    then the module itself (an imported name that is not a module adds nothing)."""
    parts = name.split(".")
    found = {module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)}
    return {f for f in found if f}


def imported_modules(path: Path) -> set[str]:
    """The package files (as repository paths) that the Python file at `path` imports anywhere in
    it, by absolute or relative import, with the `__init__.py` files they run first."""
    package = ".".join(path.relative_to(REPO).parent.parts) if path.is_relative_to(REPO) else ""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # the module, or the package and its modules
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module]).rstrip(".")
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                found |= executed(name)
    return found


def module_closure(script: Path) -> set[str]:
    """Every package file that running `script` imports, through any chain of imports."""
    seen: set[str] = set()
    todo = imported_modules(script)
    while todo:
        module = todo.pop()
        seen.add(module)
        todo |= imported_modules(REPO / module) - seen
    return seen


def expanded(deps: list[str]) -> set[str]:
    """The package's Python files that `deps` name, a folder standing for every file under it."""
    found = set()
    for dep in deps:
        if dep.startswith(f"{PACKAGE}/"):
            path = REPO / dep
            files = path.rglob("*.py") if path.is_dir() else [path]
            found |= {str(f.relative_to(REPO)) for f in files}
    return found


def stages() -> dict[str, dict]:
    found = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in found.items()}  # foreach: its template


def script_of(stage: dict) -> str:
    return next(part for part in stage["cmd"].split() if part.startswith("stages/"))


@pytest.mark.parametrize("name", list(stages()))
def test_a_stage_depends_on_every_module_its_script_imports(name: str) -> None:
    stage = stages()[name]
    assert script_of(stage) in stage["deps"]
    listed = expanded(stage["deps"])
    imported = module_closure(REPO / script_of(stage))
    assert sorted(imported - listed) == [], "missing from dvc.yaml"
    assert sorted(listed - imported) == [], "listed in dvc.yaml but not imported"


def test_prepare_only_code_is_no_dep_of_the_later_stages() -> None:
    """What only prepare runs (finding, checking and splitting photos) cannot retrain the model."""
    prepare_only = {str(p.relative_to(REPO)) for p in (REPO / PACKAGE / "prepare").rglob("*.py")}
    for name, stage in stages().items():
        if name != "prepare":
            assert not prepare_only & module_closure(REPO / script_of(stage)), name


def test_imports_are_found_in_every_form(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import flowerpipe.core.atomic\n"
        "from flowerpipe import config\n"
        "from flowerpipe.core.console import log\n"
        "from flowerpipe.report import metrics\n"
        "def later():\n"
        "    from flowerpipe.deploy.predict import Predictor\n"
        "import json\n"
    )
    init = f"{PACKAGE}/{{}}/__init__.py"
    assert imported_modules(script) == {
        f"{PACKAGE}/__init__.py",
        *(init.format(sub) for sub in ("core", "report", "deploy")),
        *(f"{PACKAGE}/{m}.py" for m in ("core/atomic", "config", "core/console", "report/metrics")),
        f"{PACKAGE}/deploy/predict.py",
    }
    relative = REPO / PACKAGE / "deploy" / "relative_probe.py"  # a relative import within the package
    relative.write_text("from .preprocess import load_rgb\nfrom ..core import errors\n")
    try:
        found = imported_modules(relative)
    finally:
        relative.unlink()
    assert {f"{PACKAGE}/deploy/preprocess.py", f"{PACKAGE}/core/errors.py"} <= found
