"""The one device decision, made once and passed down."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; asking for a missing device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda was asked for but no CUDA GPU is visible (use auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device", "mps was asked for but is not available (use auto or cpu)")
    return torch.device(name)
