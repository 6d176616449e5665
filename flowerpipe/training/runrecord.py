"""What a training run was made of, for tracing a metric or a deployed model back to it."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch

from flowerpipe.model.devices import autocast_dtype
from flowerpipe.model.engine import fixed_weights_engine

if TYPE_CHECKING:  # a type only: the config is built above this package
    from flowerpipe.config import Config

PACKAGES = ("torchvision", "numpy", "pillow", "onnx", "onnxruntime", "dvc", "dvclive")


def versions() -> dict[str, str]:
    """Python's and the main libraries' versions (`missing` for one that is not installed); torch's
    with its build (`2.9.1+cu128`) and the CUDA it was built for."""
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
    }
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def device_name(device: torch.device) -> str:
    """`cuda: NVIDIA H100 ...`, or `cpu: <processor>`."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {platform.processor() or platform.machine()}"


def run_record(
    cfg: Config, device: torch.device, data_sha256: str, recipe_key: str, processes: int = 1
) -> dict[str, Any]:
    """The trace of a run as flat values, short enough for `dvc exp show` columns; `device` is
    rank 0's when `processes` trained together under torchrun."""
    dtype = autocast_dtype(device, cfg.train.precision)
    return {
        "data_sha256": data_sha256,
        "recipe_key": recipe_key,
        "device": device_name(device),
        "processes": processes,
        "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
        "fixed_weights": fixed_weights_engine(device, dtype),  # the frozen blocks and features pass
        **versions(),
    }
