"""The torch side of preprocessing: random training augmentation and normalisation of batches.

Augmentations are `torchvision.transforms.v2` classes named in params, applied per image to the
uint8 squares of the decoded cache; the deterministic part lives in `preprocess`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from flowerpipe.core.errors import ConfigError
from flowerpipe.runtime.preprocess import MEAN, STD

Transform = Callable[[torch.Tensor], torch.Tensor]
CHECKED_IMAGES = 8  # dummy images each train.augment step is tried on before training (model.checks)


class CropFlip:
    """v2's RandomResizedCrop, optionally followed by RandomHorizontalFlip, for a whole batch at
    once: crops and flips are drawn per image as v2 draws them, then one bilinear `grid_sample`
    resizes, and mirrors, every crop: a few kernels per batch instead of a few per image, which
    on a GPU would cap training speed (docs/training.md: Speed). Unlike v2 it does not antialias
    when shrinking; a crop of the cached square shrinks by at most 1 / crop_ratio (1.14x by
    default)."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.0,
    ) -> None:
        self.size, self.scale, self.ratio, self.flip = size, tuple(scale), tuple(ratio), flip

    def boxes(self, n: int, height: int, width: int) -> torch.Tensor:
        """n crop boxes (x1, y1, x2, y2) drawn as v2.RandomResizedCrop does (10 tries per image,
        then the largest centred crop within `ratio`)."""
        tries = 10
        area = height * width * torch.empty(n, tries).uniform_(*self.scale)
        log_ratio = torch.log(torch.tensor(self.ratio))
        aspect = torch.exp(torch.empty(n, tries).uniform_(float(log_ratio[0]), float(log_ratio[1])))
        w = torch.sqrt(area * aspect).round()
        h = torch.sqrt(area / aspect).round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.int().argmax(1)
        w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
        found = ok.any(1)
        in_ratio = width / height
        fw = width if in_ratio <= self.ratio[1] else round(height * self.ratio[1])
        fh = height if in_ratio >= self.ratio[0] else round(width / self.ratio[0])
        w, h = torch.where(found, w, float(fw)), torch.where(found, h, float(fh))
        top = torch.where(found, (torch.rand(n) * (height - h + 1)).floor(), ((height - h) / 2).floor())
        left = torch.where(found, (torch.rand(n) * (width - w + 1)).floor(), ((width - w) / 2).floor())
        return torch.stack([left, top, left + w, top + h], 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (or one CHW image) -> uint8 crops of `size`, on the images' device."""
        single = images.dim() == 3
        batch = images[None] if single else images
        n, _, height, width = batch.shape
        x1, y1, x2, y2 = self.boxes(n, height, width).unbind(1)
        mirror = torch.where(torch.rand(n) < self.flip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)  # output [-1, 1] -> the box, in the input's [-1, 1] coordinates
        theta[:, 0, 0], theta[:, 0, 2] = mirror * (x2 - x1) / width, (x1 + x2) / width - 1
        theta[:, 1, 1], theta[:, 1, 2] = (y2 - y1) / height, (y1 + y2) / height - 1
        # non_blocking: a blocking copy to a GPU would wait for every queued kernel, each batch
        theta = theta.to(batch.device, non_blocking=True)
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        out = F.grid_sample(batch.float(), grid, mode="bilinear", align_corners=False)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
        return out[0] if single else out


def _crop_flip(spec: list[dict[str, dict[str, Any]]], image_size: int) -> CropFlip | None:
    """The batched form of `[RandomResizedCrop, RandomHorizontalFlip]` specs; None for others."""
    names = [next(iter(step)) for step in spec]
    if names not in (["RandomResizedCrop"], ["RandomResizedCrop", "RandomHorizontalFlip"]):
        return None
    crop = dict(spec[0]["RandomResizedCrop"] or {})
    flip = dict(spec[1]["RandomHorizontalFlip"] or {}) if len(spec) == 2 else {"p": 0.0}
    if (
        set(crop) - {"scale", "ratio", "size"}
        or set(flip) - {"p"}
        or crop.get("size", image_size) != image_size
    ):
        return None
    return CropFlip(
        image_size, crop.get("scale", (0.08, 1.0)), crop.get("ratio", (3 / 4, 4 / 3)), flip.get("p", 0.5)
    )


def build_augment(spec: list[dict[str, dict[str, Any]]], image_size: int) -> Transform:
    """A v2.Compose from `[{Name: {args}}, ...]`; transforms that need a `size` get
    `image_size`, and a final centre crop guarantees `image_size` x `image_size` output.
    A random resized crop with an optional flip (the default) is the batched `CropFlip`; its
    arguments are still checked by building the v2 steps."""
    steps = [_build_step(i, step, image_size) for i, step in enumerate(spec)]
    steps.append(v2.CenterCrop(image_size))
    return _crop_flip(spec, image_size) or v2.Compose(steps)


def check_augment(spec: list[dict[str, dict[str, Any]]], image_size: int, square: int) -> None:
    """Build `spec` and apply it, a step at a time and then whole, to dummy uint8 images of the
    cached squares' side (`square`), as training will: an argument that only fails on an image (a
    reversed range, a crop larger than the square) raises ConfigError naming the step. Random steps
    draw anew for each of the CHECKED_IMAGES."""
    with torch.random.fork_rng(devices=[]):  # the draws here leave training's seeded ones alone
        dummy = images = torch.randint(0, 256, (CHECKED_IMAGES, 3, square, square), dtype=torch.uint8)
        for i, step in enumerate(spec):
            key = f"train.augment[{i}].{next(iter(step))}"
            images = _applied(key, _build_step(i, step, image_size), images)
        out = _applied("train.augment", build_augment(spec, image_size), dummy)
    shape = (3, image_size, image_size)
    ok = isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape[1:] == shape
    if not ok:
        got = f"{out.dtype} {tuple(out.shape[1:])}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError("train.augment", f"must turn uint8 images into uint8 RGB images, got {got}")


def _applied(key: str, transform: Transform, images: torch.Tensor) -> torch.Tensor:
    try:
        return augment_batch(images, transform)
    except Exception as exc:  # v2 raises what torch's ops raise: TypeError, ValueError, RuntimeError...
        size = "x".join(map(str, images.shape[-2:]))
        raise ConfigError(key, f"fails on a {size} training image: {exc}".replace("\n", " ")) from None


def _build_step(i: int, step: dict[str, dict[str, Any]], image_size: int) -> v2.Transform:
    ((name, args),) = step.items()
    cls = getattr(v2, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, v2.Transform)):
        raise ConfigError(f"train.augment[{i}]", f"{name!r} is not a torchvision.transforms.v2 transform")
    kwargs = dict(args or {})
    size = inspect.signature(cls).parameters.get("size")
    if size is not None and size.default is inspect.Parameter.empty:
        kwargs.setdefault("size", image_size)
    try:
        return cls(**kwargs)
    except Exception as exc:  # whatever the constructor raises for a bad argument
        raise ConfigError(f"train.augment[{i}].{name}", str(exc).replace("\n", " ")) from None


def augment_batch(images: torch.Tensor, augment: Transform) -> torch.Tensor:
    """Augment each uint8 NCHW image independently (v2 draws one set of parameters per call)."""
    if isinstance(augment, CropFlip):
        return augment(images)
    return torch.stack([augment(img) for img in images])


def center_crop_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` crop of uint8 NCHW images."""
    return v2.functional.center_crop(images, [size, size])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (any device) -> float32 normalised with ImageNet mean/std."""
    mean, std = _mean_std(images.device)
    return (images.float() / 255.0 - mean) / std


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as 1x3x1x1 tensors on `device`, made once (a copy to a GPU waits
    for its queue)."""
    return tuple(torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (MEAN, STD))


def to_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    """A uint8 NHWC numpy array (e.g. a slice of the memory-mapped cache) as an NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)
