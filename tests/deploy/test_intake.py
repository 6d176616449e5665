"""`serve.intake.Intake`: what one request may send, and the errors that name the image."""

from __future__ import annotations

import asyncio
import io
from typing import Any, BinaryIO

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from flowerpipe.runtime.preprocess import preprocess_file
from flowerpipe.serve.intake import ApiError, Intake, Limits, Upload

LIMITS = Limits(max_bytes=1000, max_pixels=10_000, max_images=2)


def load(source: BinaryIO, max_pixels: int) -> np.ndarray:
    return preprocess_file(source, 8, 10, max_pixels)


def png(width: int = 12, height: int = 12) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


def request(*chunks: bytes, content_type: str | None = "image/png", declare: bool = True) -> Request:
    """A Starlette request as the server gets it: a body sent in `chunks`, its length declared
    only when `declare`."""
    headers = [(b"content-type", content_type.encode())] if content_type else []
    if declare:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    last = len(chunks) - 1
    messages = [{"type": "http.request", "body": c, "more_body": i < last} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def uploads(field: str, count: int) -> Request:
    """A multipart/form-data request with `count` PNG files in `field`."""
    parts = [
        f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + png()
        + b"\r\n"
        for i in range(count)
    ]
    return request(b"".join(parts) + b"--b--\r\n", content_type="multipart/form-data; boundary=b")


def refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiError) as refused:
        asyncio.run(call)
    return refused.value.status, refused.value.message


@pytest.fixture
def intake() -> Intake:
    return Intake(LIMITS, load)


def test_a_body_at_the_limit_is_read(intake: Intake) -> None:
    body = bytes(LIMITS.max_bytes)
    assert asyncio.run(intake.body(request(body))) == body


def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(intake: Intake) -> None:
    big = request(bytes(LIMITS.max_bytes + 1))
    assert refusal(intake.body(big)) == (413, "the body is 1,001 bytes, over the limit of 1,000")


def test_a_body_streamed_over_the_limit_is_refused(intake: Intake) -> None:
    undeclared = request(bytes(600), bytes(600), declare=False)
    assert refusal(intake.body(undeclared)) == (413, "the body is over the limit of 1,000 bytes")


def test_a_batch_at_the_image_limit_is_read_and_named() -> None:
    roomy = Intake(Limits(max_bytes=100_000, max_images=2), load)
    images = asyncio.run(roomy.several(uploads("files", 2)))
    assert [name for name, _ in images] == ["files[0] (0.png)", "files[1] (1.png)"]
    assert roomy.crops(images).shape == (2, 8, 8, 3)


def test_a_batch_over_the_image_limit_is_refused() -> None:
    roomy = Intake(Limits(max_bytes=100_000, max_images=2), load)
    assert refusal(roomy.several(uploads("files", 3))) == (413, "more than 2 images in one request")


def test_uploads_in_another_field_are_not_images() -> None:
    roomy = Intake(Limits(max_bytes=100_000), load)
    assert refusal(roomy.several(uploads("file", 1))) == (
        400,
        "no file in the multipart field 'files'",
    )
    assert refusal(roomy.one(uploads("files", 1))) == (400, "no file in the multipart field 'file'")
    status, message = refusal(roomy.one(uploads("file", 2)))
    assert (status, message) == (400, "one image per request: send several to /predict/batch")


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_other_content_types_are_refused(intake: Intake, content_type: str | None) -> None:
    status, message = refusal(intake.one(request(png(), content_type=content_type)))
    assert status == 415 and message.startswith(f"content type {content_type or 'missing'}: send the image")
    status, message = refusal(intake.several(request(png(), content_type=content_type)))
    assert (status, message) == (415, "send the images as the multipart/form-data field 'files'")


def test_a_raw_body_is_the_image(intake: Intake) -> None:
    for media in ("image/png", "application/octet-stream", "IMAGE/WEBP; q=1"):
        assert asyncio.run(intake.one(request(png(), content_type=media))) == [("body", png())]


@pytest.mark.parametrize(
    ("image", "status", "message"),
    [
        (("body", b""), 400, "body: empty"),
        (("files[1] (a.png)", b"words"), 400, "files[1] (a.png): not a readable image"),
        (("body", png(101, 100)), 413, "body: 101x100 pixels is over the limit of 10,000"),
    ],
)
def test_decoding_errors_name_the_image(intake: Intake, image: Upload, status: int, message: str) -> None:
    assert refusal(asyncio.to_thread(intake.crops, [("files[0] (ok.png)", png()), image])) == (
        status,
        message,
    )


def test_an_image_at_the_pixel_limit_is_decoded(intake: Intake) -> None:
    assert intake.decode("body", png(100, 100)).shape == (8, 8, 3)


def test_all_the_images_of_a_batch_count_towards_the_byte_limit(intake: Intake) -> None:
    status, message = refusal(intake.several(uploads("files", 2 * LIMITS.max_bytes // len(png()))))
    assert status == 413 and message.endswith("over the limit of 1,000")
