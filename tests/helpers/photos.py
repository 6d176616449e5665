"""Synthetic flower photos: each class a shape of its own colour on noise (learnable in one epoch),
and the noisy squares the small models are built and scored on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("daisy", "dandelion", "roses")
IMAGE_SIZE, RESIZE = 32, 40  # the small model's input, and the square it is cropped from

# Each class is a shape of its own colour on a noisy background: learnable in one epoch.
_STYLE = {
    "daisy": ((240, 240, 240), "ellipse"),
    "dandelion": ((250, 210, 20), "rectangle"),
    "roses": ((200, 20, 40), "polygon"),
}


def draw_photo(label: str, rng: np.random.Generator, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small RGB 'photo': background noise with the class's coloured shape at a random place."""
    w, h = size
    img = Image.fromarray(rng.integers(40, 120, (h, w, 3), dtype=np.uint8))
    color, shape = _STYLE[label]
    x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
    box = (x0, y0, x0 + w // 2, y0 + h // 2)
    draw = ImageDraw.Draw(img)
    if shape == "polygon":
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=color)
    else:
        getattr(draw, shape)(box, fill=color)
    return img


def make_photos(root: Path, per_class: int = 24, seed: int = 0, classes=CLASSES) -> Path:
    """Write `per_class` synthetic JPEGs into root/<class>/ and return root."""
    rng = np.random.default_rng(seed)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_photo(label, rng).save(root / label / f"{label}_{i:03d}.jpg", quality=90)
    return root


def noisy_squares(count: int, seed: int = 0) -> np.ndarray:
    """uint8 NHWC RESIZE squares as in the prepared cache: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, RESIZE)[None, :, None]
    base = (ramp * rng.uniform(0.2, 1.0, (count, 1, 1, 3))).astype(np.int64)
    noise = rng.integers(-30, 30, (count, RESIZE, RESIZE, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)
