"""dvc.yaml lists, for every stage, each package module its script runs, imported directly or through
other modules (a subpackage's folder stands for all of its modules): a change to any of them re-runs
the stage, and to no other module does."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "flowerpipe"


def module_file(name: str) -> str | None:
    """The repository path of the package module or subpackage called `name`, if there is one."""
    path = REPO.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return str(path.with_suffix(".py").relative_to(REPO))
    if (path / "__init__.py").is_file():
        return str((path / "__init__.py").relative_to(REPO))
    return None


def exports(package: str) -> dict[str, str]:
    """A subpackage's lazy exports (its `__init__`'s EXPORTS): each public name's module."""
    init = module_file(package)
    if init is None or not init.endswith("__init__.py"):
        return {}
    for node in ast.walk(ast.parse((REPO / init).read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EXPORTS":
            table = ast.literal_eval(node.value)
            return {name: f"{package}.{module}" for module, names in table.items() for name in names}
    return {}


def executed(name: str, whole: bool = True) -> set[str]:
    """The files that importing `name` runs: each enclosing package's `__init__.py`, then the module
    itself; a name a subpackage exports lazily, its module; a whole subpackage imported as one
    name (`from flowerpipe import training`), every module it exports (`whole`)."""
    parts = name.split(".")
    found = {module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)}
    lazy = exports(".".join(parts[:-1]))
    if parts[-1] in lazy:
        found |= executed(lazy[parts[-1]])
    if whole:
        found |= {f for module in set(exports(name).values()) for f in executed(module)}
    return {f for f in found if f}


def imported_modules(path: Path) -> set[str]:
    """The package files (as repository paths) that the Python file at `path` imports anywhere in
    it, by absolute or relative import, with the `__init__.py` files they run first."""
    package = ".".join(path.relative_to(REPO).parent.parts) if path.is_relative_to(REPO) else ""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [(alias.name, True) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # the module, or the package and its modules
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module]).rstrip(".")
            names = [(module, False), *((f"{module}.{alias.name}", True) for alias in node.names)]
        else:
            continue
        for name, whole in names:
            if name.split(".")[0] == PACKAGE:
                found |= executed(name, whole)
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
        "from flowerpipe.model import build_model\n"  # a lazy export: its module
        "def later():\n"
        "    from flowerpipe.runtime.predictor import Predictor\n"
        "import json\n"
    )
    init = f"{PACKAGE}/{{}}/__init__.py"
    assert imported_modules(script) == {
        f"{PACKAGE}/__init__.py",
        *(init.format(sub) for sub in ("core", "report", "runtime", "model")),
        f"{PACKAGE}/model/build.py",
        *(f"{PACKAGE}/{m}.py" for m in ("core/atomic", "config", "core/console", "report/metrics")),
        f"{PACKAGE}/runtime/predictor.py",
    }
    relative = REPO / PACKAGE / "runtime" / "relative_probe.py"  # a relative import within the package
    relative.write_text("from .preprocess import load_rgb\nfrom ..core import errors\n")
    try:
        found = imported_modules(relative)
    finally:
        relative.unlink()
    assert {f"{PACKAGE}/runtime/preprocess.py", f"{PACKAGE}/core/errors.py"} <= found


SUBPACKAGES = sorted(p.name for p in (REPO / PACKAGE).iterdir() if (p / "__init__.py").is_file())


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_a_subpackage_exports_its_public_names_and_loads_none_of_its_modules_until_used(name: str) -> None:
    package = f"{PACKAGE}.{name}"
    code = (
        f"import importlib, sys; p = importlib.import_module({package!r}); "
        f"print(sorted(m for m in sys.modules if m.startswith({package + '.'!r}))); "
        "print(all(getattr(p, n) is not None for n in p.__all__), len(p.__all__))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    loaded, resolved = done.stdout.splitlines()
    assert loaded == ("['flowerpipe.core.exports']" if name == "core" else "[]")
    assert resolved.split()[0] == "True" and int(resolved.split()[1]) >= 1
    assert set(exports(package)) == set(importlib.import_module(package).__all__)


def test_editing_the_augmentation_or_model_code_leaves_prepare_up_to_date() -> None:
    """prepare reads params.yaml without torch: neither it nor its deps hold the model side."""
    prepare = stages()["prepare"]
    model_side = {str(p.relative_to(REPO)) for p in (REPO / PACKAGE / "model").rglob("*.py")}
    assert not model_side & module_closure(REPO / script_of(prepare))
    assert not model_side & expanded(prepare["deps"])
    assert f"{PACKAGE}/model/transforms.py" in expanded(stages()["train"]["deps"])
