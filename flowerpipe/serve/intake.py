"""What the service reads from a request: its body or uploaded files, within the limits, decoded to
the model's crops; what it refuses, as an ApiError that names the image."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from flowerpipe.runtime.preprocess import TOO_MANY_PIXELS, image_failure

Upload = tuple[str, bytes]  # a name for errors ("body", "files[1] (rose.jpg)") and the bytes sent


@dataclass(frozen=True)
class Limits:
    """What one request may send."""

    max_bytes: int = 32 * 2**20  # a request body: one image, or all the images of a batch
    max_pixels: int = 40_000_000  # width x height an image declares, checked before it is decoded
    max_images: int = 32  # images in one /predict/batch request


DEFAULT_LIMITS = Limits()


class ApiError(Exception):
    """A request the service refuses: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Intake:
    """Reads the images of a request within `limits` and decodes them with `load` (file, max_pixels)."""

    def __init__(self, limits: Limits, load: Callable[[BinaryIO, int], np.ndarray]) -> None:
        self.limits, self.load = limits, load

    async def one(self, request: Request) -> list[Upload]:
        """The image sent to /predict: the body itself, or the multipart field `file`."""
        media = media_type(request)
        if media == "multipart/form-data":
            images = await self.uploads(request, "file")
            if len(images) > 1:
                raise ApiError(400, "one image per request: send several to /predict/batch")
            return images
        if media.startswith("image/") or media == "application/octet-stream":
            return [("body", await self.body(request))]
        raise ApiError(
            415,
            f"content type {media or 'missing'}: send the image as the body (image/* or "
            "application/octet-stream) or as the multipart/form-data field 'file'",
        )

    async def several(self, request: Request) -> list[Upload]:
        """The images sent to /predict/batch, in the multipart field `files`."""
        if media_type(request) != "multipart/form-data":
            raise ApiError(415, "send the images as the multipart/form-data field 'files'")
        return await self.uploads(request, "files")

    async def body(self, request: Request) -> bytes:
        """The request body, refused as soon as it is known to be over `max_bytes`."""
        most = self.limits.max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > most:
            raise ApiError(413, f"the body is {int(declared):,} bytes, over the limit of {most:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > most:  # a client may send more than it declared, or declare nothing
                raise ApiError(413, f"the body is over the limit of {most:,} bytes")
        return bytes(body)

    async def uploads(self, request: Request, field: str) -> list[Upload]:
        """The files of multipart field `field`, named by their file names."""
        body = await self.body(request)
        form = await replay(request, body).form(max_files=self.limits.max_images + 1)
        files = [v for k, v in form.multi_items() if k == field and isinstance(v, UploadFile)]
        if not files:
            raise ApiError(400, f"no file in the multipart field {field!r}")
        if len(files) > self.limits.max_images:
            raise ApiError(413, f"more than {self.limits.max_images} images in one request")
        return [(f"{field}[{i}] ({f.filename})", await f.read()) for i, f in enumerate(files)]

    def decode(self, name: str, data: bytes) -> np.ndarray:
        """The model's crop of one image; an ApiError (400, or 413 when too large) naming it otherwise."""
        if not data:
            raise ApiError(400, f"{name}: empty")
        try:
            return self.load(io.BytesIO(data), self.limits.max_pixels)
        except Exception as exc:  # Pillow raises many kinds for a truncated or corrupt file
            status = 413 if isinstance(exc, TOO_MANY_PIXELS) else 400
            raise ApiError(status, f"{name}: {image_failure(exc)}") from None

    def crops(self, images: list[Upload]) -> np.ndarray:
        """The decoded crops of `images` as one uint8 NHWC batch."""
        return np.stack([self.decode(name, data) for name, data in images])


def media_type(request: Request) -> str:
    """The request's content type without its parameters, in lower case ("" when missing)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def replay(request: Request, body: bytes) -> Request:
    """`request` again, with its body (already read within the limit) to be read once more."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)
