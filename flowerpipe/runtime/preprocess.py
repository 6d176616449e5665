"""The deterministic preprocessing shared by prepare, evaluate, export and predict.

Only Pillow and numpy: serving must not need torch. An image is decoded once, turned upright,
made RGB, resized on its short side and centre-cropped to a `resize_size` square; the model sees
the centre `image_size` crop of that square (ImageNet's resize-256/crop-224 when the ratio is 0.875).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flowerpipe.core.errors import ImageTooLarge

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOO_MANY_PIXELS = (ImageTooLarge, Image.DecompressionBombError)  # the failures that are about size


def resize_size(image_size: int, crop_ratio: float) -> int:
    """The side of the square an image is resized to before the centre crop of `image_size`."""
    return round(image_size / crop_ratio)


def load_rgb(
    source: str | os.PathLike[str] | BinaryIO, draft_size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode an image upright (EXIF orientation applied) as RGB; transparency becomes white.

    `draft_size` lets the JPEG decoder downscale by a power of two while staying >= that size.
    An image whose header declares more than `max_pixels` raises ImageTooLarge before decoding.
    """
    with Image.open(source) as img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} pixels is over the limit of {max_pixels:,}")
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: convert() would clip at 255
        img = Image.fromarray((np.asarray(img, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to `size` and centre-crop to `size` x `size`: uint8 HWC."""
    return np.asarray(ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR))


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` x `size` crop of HWC or NHWC images."""
    h, w = images.shape[-3:-1]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size, :]


def to_model_input(
    images: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, as the model and the ONNX file expect."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_file(
    source: str | os.PathLike[str] | BinaryIO, image_size: int, resize: int, max_pixels: int | None = None
) -> np.ndarray:
    """One image file -> the uint8 HWC `image_size` crop the model sees."""
    return center_crop(fit_square(load_rgb(source, resize, max_pixels), resize), image_size)


def image_failure(exc: Exception) -> str:
    """Why an image could not be decoded, in the words prepare, predict and serve show the user."""
    if isinstance(exc, ImageTooLarge):
        return str(exc)
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels ({exc})"
    if isinstance(exc, UnidentifiedImageError):
        return "not a readable image"
    # anything else: Pillow raises many kinds (OSError, SyntaxError, ValueError...) for a bad file
    return f"truncated or corrupt image ({str(exc) or type(exc).__name__})"
