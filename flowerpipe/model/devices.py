"""The one device decision, made once and passed down."""

from __future__ import annotations

import torch

from flowerpipe.core.errors import ConfigError


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


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The mixed-precision dtype for `precision` on `device`, or None for fp32.

    `auto` takes bf16 on CUDA GPUs that have it (fp16 on older ones) and on CPUs with native bf16
    (AVX512-BF16 or AMX), where it is about twice as fast; fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        caps = torch.cpu.get_capabilities() if device.type == "cpu" else {}
        return torch.bfloat16 if caps.get("avx512_bf16") or caps.get("amx_bf16") else None
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision", "fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16
