"""Grad-CAM on any torchvision classifier, by the grad-cam library: which layer it reads for each
family, the maps for chosen classes, and their overlay on the photo at the photo's own size."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from flowerpipe.core.errors import FlowerpipeError
from flowerpipe.model.build import head_name, load_trained
from flowerpipe.runtime.preprocess import center_crop, fit_square, image_failure, load_rgb, to_model_input

Reshape = Callable[[torch.Tensor], torch.Tensor]
DIMMED = 0.4  # the brightness of the photo outside the square the model sees


class ExplainError(FlowerpipeError):
    """A model whose layers leave Grad-CAM nothing to read."""


def target_layer(model: nn.Module, side: int) -> tuple[nn.Module, Reshape | None]:
    """The layer Grad-CAM reads at an input of `side` pixels: the last one before the head whose
    output is a spatial map (NCHW, over 1 x 1). Where attention runs after the last map (a vision
    transformer, whose map is only its patch embedding), the last block's input norm, whose patch
    tokens that attention still mixes, laid back on their grid."""
    seen: list[tuple[nn.Module | None, tuple[int, ...]]] = []  # None: an attention layer starts
    at_head: list[bool] = []  # what runs from the head on is not looked at

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and not at_head:
            seen.append((module, tuple(output.shape)))

    head = model.get_submodule(head_name(model))
    hooks = [head.register_forward_pre_hook(lambda *_: at_head.append(True))]
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            hooks.append(module.register_forward_pre_hook(lambda *_: seen.append((None, ()))))
        elif module is not model:
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    maps = [i for i, (_, shape) in enumerate(seen) if len(shape) == 4 and min(shape[2:]) > 1]
    attention = [i for i, (m, _) in enumerate(seen) if m is None]
    if maps and not (attention and attention[-1] > maps[-1]):
        return seen[maps[-1]][0], None
    tokens = [m for m, shape in seen[: attention[-1]] if len(shape) == 3] if attention else []
    if not tokens:
        raise ExplainError(f"{type(model).__name__}: no layer before the head keeps a map at {side} px")
    return tokens[-1], patch_grid


def patch_grid(tokens: torch.Tensor) -> torch.Tensor:
    """A vision transformer's tokens (N, 1 + g * g, C), class token first, as an N x C x g x g map."""
    n, count, channels = tokens.shape
    side = math.isqrt(count - 1)
    return tokens[:, 1:, :].reshape(n, side, side, channels).permute(0, 3, 1, 2)


def grad_cams(model: nn.Module, images: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (N x S x S, each scaled to [0, 1]) of uint8 NHWC `images` of the model's
    input side S, each for its class in `classes`. The model is put in eval mode."""
    layer, reshape = target_layer(model.eval(), images.shape[1])
    x = torch.from_numpy(to_model_input(images)).to(next(model.parameters()).device)
    x.requires_grad_(True)  # gradients reach the layer even where the weights are frozen
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        return cam(x, [ClassifierOutputTarget(int(c)) for c in classes])


def overlay(photo: np.ndarray, cam: np.ndarray, seen: float) -> np.ndarray:
    """The map `cam` as a heat map over the centred square the model saw (the share `seen` of the
    photo's shorter side), the rest of the photo dimmed: uint8, the photo's size."""
    height, width = photo.shape[:2]
    side = max(1, round(seen * min(height, width)))
    top, left = (height - side) // 2, (width - side) // 2
    mask = np.asarray(Image.fromarray(cam.astype(np.float32), "F").resize((side, side), Image.BILINEAR))
    region = photo[top : top + side, left : left + side].astype(np.float32) / 255
    shown = (photo * DIMMED).astype(np.uint8)
    shown[top : top + side, left : left + side] = show_cam_on_image(region, mask.clip(0, 1), use_rgb=True)
    return shown


def overlays(model: nn.Module, photos: np.ndarray, classes: Sequence[int], size: int) -> list[np.ndarray]:
    """Where the model looks in each of the square uint8 NHWC `photos` (as prepare caches them, of
    which it sees the centre `size` crop) for its class in `classes`: overlays of the photos' size."""
    if not len(photos):
        return []
    cams = grad_cams(model, center_crop(photos, size), classes)
    return [overlay(photo, cam, size / photo.shape[0]) for photo, cam in zip(photos, cams, strict=True)]


def explain_file(
    model_path: str | os.PathLike[str], photo: str | os.PathLike[str], label: str | None = None
) -> tuple[np.ndarray, str]:
    """Where the trained model `model_path` (a models/best.pt) looks in `photo` for `label` (its own
    answer when None): the overlay at the photo's size, and the class."""
    model, meta = load_trained(model_path)
    classes, size, resize = meta["classes"], meta["image_size"], meta["resize_size"]
    if label is not None and label not in classes:
        raise ExplainError(f"--label {label!r}: not one of the model's classes {classes}")
    try:
        upright = load_rgb(photo)
    except OSError as exc:  # missing, unreadable, not an image
        why = "no such file" if isinstance(exc, FileNotFoundError) else image_failure(exc)
        raise ExplainError(f"{photo}: {why}") from None
    crop = center_crop(fit_square(upright, resize), size)[None]
    if label is None:
        with torch.no_grad():
            target = int(model(torch.from_numpy(to_model_input(crop))).argmax())
    else:
        target = classes.index(label)
    cam = grad_cams(model, crop, [target])[0]
    return overlay(np.asarray(upright), cam, size / resize), classes[target]
