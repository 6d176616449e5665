"""Run a model over cached images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError

from .cache import Rows
from .console import log, progress
from .transforms import center_crop_batch, normalize, to_nchw


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` for passes with fixed weights, each BatchNorm that follows a
    convolution folded into it (torch.fx), in channels_last: the same logits within float rounding,
    faster (README: Speed). A model torch.fx cannot trace is used as it is."""
    model.eval()
    try:
        model = fuse(model)  # a copy: the caller's model keeps its BatchNorm layers
    except (TraceError, TypeError, RuntimeError) as exc:  # what torch.fx raises on what it cannot trace
        log.debug("BatchNorm not folded: torch.fx cannot trace the model (%s)", exc)
    return model.to(memory_format=torch.channels_last)


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
