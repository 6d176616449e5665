"""A subpackage's public names, exported lazily (PEP 562): `from flowerpipe.runtime import
Predictor` works, while importing one module of a subpackage loads none of its siblings, so a
stage loads, and depends on in dvc.yaml, only the modules it uses (prepare never the predictor)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """`__getattr__` and `__all__` for the package `package` whose module M (a name in it)
    defines the names `exports[M]`; a name is imported from its module on first use."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__, sorted(where)
