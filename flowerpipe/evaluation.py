"""Run a model over cached images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .cache import Rows
from .console import progress
from .transforms import center_crop_batch, normalize, to_nchw


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: np.ndarray | Rows, image_size: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """Logits (N x classes, float32) of the centre `image_size` crops of uint8 NHWC `images`,
    read a batch at a time."""
    model.eval().to(device)
    out = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, "predict", len(starts), "batch"):
        batch = to_nchw(images[start : start + batch_size]).to(device)
        x = normalize(center_crop_batch(batch, image_size))
        out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
