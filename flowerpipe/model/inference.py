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
from flowerpipe.model.transforms import center_crop_batch, normalize, to_nchw


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` for passes with fixed weights, each BatchNorm that follows a
    convolution folded into it (torch.fx), in channels_last: the same logits within float rounding,
    faster (docs/training.md: Speed). A model torch.fx cannot trace is used as it is."""
    model.eval()
    try:
        model = fuse(model)  # a copy: the caller's model keeps its BatchNorm layers
    except (TraceError, TypeError, RuntimeError) as exc:  # what torch.fx raises on what it cannot trace
        log.debug("BatchNorm not folded: torch.fx cannot trace the model (%s)", exc)
    return model.to(memory_format=torch.channels_last)


def folded_where_fixed(model: nn.Module, fixed: list[str]) -> nn.Module:
    """What a training step runs while the modules named in `fixed` do not learn (frozen, in eval
    mode): a view of `model` in which each of them is a `for_inference` copy, its BatchNorm folded.
    Every other module, parameter and buffer is the model's own, so what the steps learn lands in
    `model`, whose state_dict keeps its keys."""
    view, done = _shallow(model), []
    for name in sorted(fixed):  # a module before those inside it, which it already covers
        if any(name.startswith(f"{d}.") for d in done):
            continue
        *path, last = name.split(".")
        parent = view
        for part in path:
            child = _shallow(parent.get_submodule(part))
            parent.__dict__["_modules"][part] = child
            parent = child
        parent.__dict__["_modules"][last] = for_inference(model.get_submodule(name))
        done.append(name)
    return view


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
