"""ONNX Runtime for the passes with fixed weights on the CPU: the same numbers as PyTorch's folded
eager copy, 2-3x faster (docs/training.md: Speed)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from flowerpipe.core.console import log

# ONNX Runtime's output of a shape's first batch must match PyTorch's as the export gate's logits
# must (|a - b| <= ATOL + RTOL * |b|); intermediate activations, which can be larger than logits,
# get ten times the gate's atol.
RTOL, ATOL = 1e-3, 1e-4


class FixedWeights(nn.Module):
    """`folded` (an eval-mode copy, its BatchNorm folded) run by ONNX Runtime where that gives its
    numbers: on the CPU, in float32, with no gradient to carry back to the input. Each input shape
    is exported once, in memory, and checked against `folded` on its first batch; where the export
    or the check fails, and everywhere else (GPU, autocast, a gradient to carry), `folded` runs."""

    def __init__(self, folded: nn.Module) -> None:
        super().__init__()
        self.folded = folded
        self.sessions: dict[tuple[int, ...], ort.InferenceSession | None] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _runs_on_ort(x):
            return self.folded(x)
        shape = tuple(x.shape)
        if shape not in self.sessions:
            self.sessions[shape] = _checked_session(self.folded, x)
        session = self.sessions[shape]
        if session is None:
            return self.folded(x)
        out = torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])
        if out.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return out.contiguous(memory_format=torch.channels_last)  # as the folded copy hands it on
        return out


def _runs_on_ort(x: torch.Tensor) -> bool:
    """Whether ONNX Runtime can give what the folded copy would on `x`: a float32 CPU tensor, no
    autocast, and no gradient wanted through it (a frozen module between layers that learn)."""
    wants_grad = torch.is_grad_enabled() and x.requires_grad
    autocast = torch.is_autocast_enabled("cpu")
    return x.device.type == "cpu" and x.dtype == torch.float32 and not wants_grad and not autocast


def _checked_session(folded: nn.Module, x: torch.Tensor) -> ort.InferenceSession | None:
    """A session of `folded` for inputs of `x`'s shape whose outputs on `x` match the folded copy's;
    None where the module cannot be exported or does not match (then the folded copy runs)."""
    try:
        session = _session(folded, tuple(x.shape))
        got = session.run(None, {"x": x.contiguous().numpy()})[0]
    except Exception as exc:  # any failure to export or run leaves the folded copy
        log.debug("ONNX Runtime not used for %s: %s", type(folded).__name__, exc)
        return None
    with torch.inference_mode():
        want = folded(x)
    if not isinstance(want, torch.Tensor) or not np.allclose(got, want.float().numpy(), RTOL, ATOL):
        log.info("ONNX Runtime not used for %s: its outputs differ from PyTorch's", type(folded).__name__)
        return None
    return session


def _session(module: nn.Module, shape: tuple[int, ...]) -> ort.InferenceSession:
    """An ONNX Runtime session of `module` for float32 inputs of `shape`, exported in memory by
    PyTorch's TorchScript-based exporter: a fraction of a second, where the torch.export-based one
    that the export stage uses takes 5-10 s for MobileNetV2 (too long to pay each epoch)."""
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter's notice
        warnings.simplefilter("ignore", UserWarning)  # e.g. an in-place ReLU on the input, not kept
        warnings.simplefilter("error", torch.jit.TracerWarning)  # a value read in Python: not traced
        example = torch.zeros(shape)
        torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=["x"], opset_version=18)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    # Its threads sleep when done rather than spin: PyTorch's next operations need the cores (a
    # training step ran at 78 img/s with spinning, 89 without; docs/training.md: Speed).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def fixed_weights_engine(device: torch.device, dtype: torch.dtype | None) -> str:
    """What runs the fixed-weight passes of a run on `device` with autocast `dtype` (None: float32):
    `onnxruntime` where `FixedWeights` hands them to it, else `pytorch` (the folded eager copy)."""
    return "onnxruntime" if device.type == "cpu" and dtype is None else "pytorch"
