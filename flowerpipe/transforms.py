"""The torch side of preprocessing: random training augmentation and normalisation of batches.

Augmentations are `torchvision.transforms.v2` classes named in params, applied per image to the
uint8 squares of the decoded cache; the deterministic part lives in `preprocess`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from .errors import ConfigError
from .preprocess import MEAN, STD

Transform = Callable[[torch.Tensor], torch.Tensor]


def build_augment(spec: list[dict[str, dict[str, Any]]], image_size: int) -> Transform:
    """A v2.Compose from `[{Name: {args}}, ...]`; transforms that need a `size` get
    `image_size`, and a final centre crop guarantees `image_size` x `image_size` output."""
    steps = []
    for i, step in enumerate(spec):
        ((name, args),) = step.items()
        cls = getattr(v2, name, None)
        if not (inspect.isclass(cls) and issubclass(cls, v2.Transform)):
            raise ConfigError(f"train.augment[{i}]", f"{name!r} is not a torchvision.transforms.v2 transform")
        kwargs = dict(args or {})
        size = inspect.signature(cls).parameters.get("size")
        if size is not None and size.default is inspect.Parameter.empty:
            kwargs.setdefault("size", image_size)
        try:
            steps.append(cls(**kwargs))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train.augment[{i}].{name}", str(exc)) from None
    steps.append(v2.CenterCrop(image_size))
    return v2.Compose(steps)


def augment_batch(images: torch.Tensor, augment: Transform) -> torch.Tensor:
    """Augment each uint8 NCHW image independently (v2 draws one set of parameters per call)."""
    return torch.stack([augment(img) for img in images])


def center_crop_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` crop of uint8 NCHW images."""
    return v2.functional.center_crop(images, [size, size])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (any device) -> float32 normalised with ImageNet mean/std."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def to_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    """A uint8 NHWC numpy array (e.g. a slice of the memory-mapped cache) as an NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)
