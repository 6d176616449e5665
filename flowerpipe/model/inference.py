"""Run a model over cached images."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError

from flowerpipe.core.console import log, progress
from flowerpipe.data.cache import Rows
from flowerpipe.model.engine import FixedWeights
from flowerpipe.model.transforms import center_crop_batch, normalize, to_nchw


def for_inference(model: nn.Module, onnx_runtime: bool = True) -> nn.Module:
    """An eval-mode copy of `model` for passes with fixed weights, each BatchNorm that follows a
    convolution folded into it (torch.fx), in channels_last, run by ONNX Runtime on the CPU in
    float32 (`FixedWeights`): the same logits within float rounding, faster (docs/training.md:
    Speed); `onnx_runtime=False` keeps it in PyTorch. A model torch.fx cannot trace (control flow
    on values) is used as it is, by PyTorch."""
    model.eval()
    try:
        folded = fuse(model)  # a copy: the caller's model keeps its BatchNorm layers
    except (TraceError, TypeError, RuntimeError) as exc:  # what torch.fx raises on what it cannot trace
        log.debug("BatchNorm not folded: torch.fx cannot trace the model (%s)", exc)
        return model.to(memory_format=torch.channels_last)
    folded = folded.to(memory_format=torch.channels_last)
    return FixedWeights(folded) if onnx_runtime else folded


def folded_where_fixed(model: nn.Module, fixed: list[str], onnx_runtime: bool = True) -> nn.Module:
    """What a training step runs while the modules named in `fixed` do not learn (frozen, in eval
    mode): a view of `model` in which each of them is a `for_inference` copy, its BatchNorm folded;
    a run of consecutive blocks of one nn.Sequential (features.0 to features.6) is one copy, one
    pass (ONNX Runtime's, on the CPU) with no hand-over between blocks. Every other module,
    parameter and buffer is the model's own, so what the steps learn lands in `model`, whose
    state_dict keeps its keys."""
    view, done = _shallow(model), []
    for name in sorted(fixed):  # a module before those inside it, which it already covers
        if not any(name.startswith(f"{d}.") for d in done):
            done.append(name)
    for run in _sequential_runs(model, done):
        *path, first = run[0].split(".")
        parent = view
        for part in path:
            child = _shallow(parent.get_submodule(part))
            parent.__dict__["_modules"][part] = child
            parent = child
        blocks = [model.get_submodule(name) for name in run]
        one = blocks[0] if len(run) == 1 else nn.Sequential(*blocks)
        parent.__dict__["_modules"][first] = for_inference(one, onnx_runtime)
        for name in run[1:]:
            parent.__dict__["_modules"][name.rsplit(".", 1)[1]] = nn.Identity()  # done in the first
    return view


def _sequential_runs(model: nn.Module, names: list[str]) -> list[list[str]]:
    """`names` in runs: consecutive children of one nn.Sequential together, any other alone."""
    runs: list[list[str]] = []
    for name in sorted(names, key=_position):
        if runs and _follows(model, runs[-1][-1], name):
            runs[-1].append(name)
        else:
            runs.append([name])
    return runs


def _position(name: str) -> tuple[str, int, str]:
    """A module name's parent, its index among the parent's children (-1 if named), its name."""
    parent, _, last = name.rpartition(".")
    return parent, int(last) if last.isdigit() else -1, last


def _follows(model: nn.Module, before: str, name: str) -> bool:
    """Whether `name` is the child of an nn.Sequential right after `before`."""
    (parent, index, _), (other, following, _) = _position(before), _position(name)
    same = parent == other and index >= 0 and following == index + 1
    return same and isinstance(model.get_submodule(parent), nn.Sequential)


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of `module` that shares its parameters, buffers and children, with a list of children
    of its own to change."""
    clone = copy.copy(module)
    clone.__dict__["_modules"] = dict(module.__dict__["_modules"])
    return clone


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: np.ndarray | Rows, image_size: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """Logits (N x classes, float32) of the centre `image_size` crops of uint8 NHWC `images`,
    read a batch at a time."""
    net = for_inference(model.to(device))
    out = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, "predict", len(starts), "batch"):
        batch = to_nchw(images[start : start + batch_size]).to(device)
        x = normalize(center_crop_batch(batch, image_size))
        out.append(net(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
