"""`preprocess.image_failure`: one wording for each kind of bad image, the same in prepare,
predict and serve."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from flowerpipe.core.errors import ImageTooLarge
from flowerpipe.prepare.scan import read_photo
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import TOO_MANY_PIXELS, image_failure, load_rgb
from flowerpipe.serve.app import Limits, create_app


def png(width: int = 8, height: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(out, "PNG")
    return out.getvalue()


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims `width` x `height`, as a decompression bomb's does."""
    data = bytearray(png(1, 1))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def png_with(chunk_type: bytes, data: bytes, crc: int | None = None) -> bytes:
    """`png()` with a chunk put in after its pixels (IDAT), or in their place when it is an IDAT."""
    good = png()
    pixels = good.find(b"IDAT") - 4
    end = good.find(b"IEND") - 4
    crc = zlib.crc32(chunk_type + data) if crc is None else crc
    chunk = struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", crc)
    return good[:pixels] + chunk + good[end:] if chunk_type == b"IDAT" else good[:end] + chunk + good[end:]


BOMB = 2 * Image.MAX_IMAGE_PIXELS + 1  # Pillow's own limit: above it, open() refuses
BAD_FILES = {
    "text": (b"just some words", "not a readable image"),
    "empty": (b"", "not a readable image"),
    "truncated jpeg": (jpeg()[:2000], "truncated or corrupt image (image file is truncated"),
    "png with broken pixel data": (png_with(b"IDAT", bytes(20)), "truncated or corrupt image (broken data"),
    "png with a broken chunk": (png_with(b"zTXt", b"a\0b"), "truncated or corrupt image (Unknown compr"),
    "decompression bomb": (declaring(BOMB, 1), "too many pixels (Image size ("),
}


def failure(data: bytes, max_pixels: int | None = None) -> Exception:
    with pytest.raises(Exception) as raised:
        load_rgb(io.BytesIO(data), max_pixels=max_pixels)
    return raised.value


@pytest.mark.parametrize("kind", BAD_FILES)
def test_each_kind_of_bad_file_has_its_reason(kind: str) -> None:
    data, reason = BAD_FILES[kind]
    assert image_failure(failure(data)).startswith(reason)


def test_only_the_size_failures_are_about_size() -> None:
    over = failure(declaring(2000, 1000), max_pixels=1_000_000)
    assert isinstance(over, ImageTooLarge)
    assert image_failure(over) == "2000x1000 pixels is over the limit of 1,000,000"
    assert isinstance(failure(declaring(BOMB, 1)), TOO_MANY_PIXELS)
    others = [k for k in BAD_FILES if k != "decompression bomb"]
    assert not any(isinstance(failure(BAD_FILES[k][0]), TOO_MANY_PIXELS) for k in others)


def test_an_unexpected_error_is_named_when_it_says_nothing() -> None:
    assert image_failure(IndexError()) == "truncated or corrupt image (IndexError)"
    assert image_failure(ValueError("tile out of range")) == "truncated or corrupt image (tile out of range)"


def test_prepare_predict_and_serve_give_the_same_reasons(onnx_model: Path, tmp_path: Path) -> None:
    client = TestClient(create_app(onnx_model, Limits(max_pixels=BOMB + 1)))
    files = {}
    for kind, (data, _) in BAD_FILES.items():
        if data:  # an empty file: prepare says "empty file" and serve "empty", before Pillow sees it
            files[kind] = tmp_path / f"{kind.replace(' ', '_')}.png"
            files[kind].write_bytes(data)
    answers = {a["path"]: a["error"] for a in Predictor(onnx_model).predict_paths(map(str, files.values()))}
    for kind, path in files.items():
        with pytest.raises(ValueError) as skipped:
            read_photo(path, 16)
        served = client.post("/predict", content=path.read_bytes(), headers={"Content-Type": "image/png"})
        assert skipped.value.args[0] == answers[str(path)], kind
        assert served.json() == {"error": f"body: {answers[str(path)]}"}, kind
        assert served.status_code == (413 if kind == "decompression bomb" else 400), kind
        assert answers[str(path)].startswith(BAD_FILES[kind][1]), kind
