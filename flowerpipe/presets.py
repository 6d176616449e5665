"""Presets: YAML files in presets/ holding only the params that differ from params.yaml, applied as
`dvc exp run -S key=value` over it, so params.yaml stays the one place where defaults live."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flowerpipe.core.errors import ConfigError


def preset_path(name: str, folder: str | os.PathLike[str] = "presets") -> Path:
    """A preset by name (presets/NAME.yaml) or by its file's path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(folder) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(folder).glob("*.yaml"))
        raise ConfigError("", f"no such preset (presets here: {', '.join(known) or 'none'})", str(path))
    return path


def read_preset(path: str | os.PathLike[str], params: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's params, each key checked to be one of `params` (params.yaml's)."""
    preset = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(preset, dict):
        raise ConfigError("", "a preset maps params.yaml's sections to the keys it sets", str(path))
    for key in leaves(preset):
        section: Any = params
        for name in key.split("."):
            if not isinstance(section, dict) or name not in section:
                raise ConfigError(key, "not a key of params.yaml", str(path))
            section = section[name]
    return preset


def leaves(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys and their values (a list is one value)."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def set_flags(preset: Mapping[str, Any]) -> list[str]:
    """`dvc exp run` options that set each of the preset's keys: -S key=value, the value as YAML."""
    flags = []
    for key, value in leaves(preset).items():
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
        flags += ["-S", f"{key}={text.removesuffix('...').strip()}"]
    return flags
