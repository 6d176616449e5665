"""The HTTP service: an exported ONNX model behind FastAPI on uvicorn, with a page to try it.

It needs the base install and the `serve` extra (FastAPI, uvicorn, python-multipart), never torch.
Class names and preprocessing come from the model's metadata through `Predictor`, the code that
`flowerpipe predict` runs.

Concurrency: request bodies are read on the event loop; decoding and the model call run in the
thread pool, many requests at a time. One onnxruntime session serves them all (its `run` is
thread-safe) with intra-op threads on every core (`threads=0`): a lone request gets all the cores,
and under load the calls overlap. Measured on 2 cores (benchmarks/serve_load.py), this beat one
call at a time on every load level (7 ms at 1 client, 173 vs 145 requests/s at 8 clients); one
thread per call (`threads=1`) gives the most requests/s under load (196) but a lone request takes
longer (10 ms).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from flowerpipe.deploy.predict import Predictor
from flowerpipe.deploy.preprocess import TOO_MANY_PIXELS, image_failure


@dataclass(frozen=True)
class Limits:
    """What one request may send."""

    max_bytes: int = 32 * 2**20  # a request body: one image, or all the images of a batch
    max_pixels: int = 40_000_000  # width x height an image declares, checked before it is decoded
    max_images: int = 32  # images in one /predict/batch request


class ApiError(Exception):
    """A request the service refuses: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ClassScore(BaseModel):
    label: str
    score: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    label: str = Field(description="the most likely class")
    score: float = Field(ge=0, le=1, description="its probability")
    top_k: list[ClassScore] = Field(description="the top_k most likely classes, most likely first")


class PredictResponse(Prediction):
    model_revision: str = Field(description="the first 12 hex digits of the model file's sha256")


class BatchResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per image, in the order sent")
    model_revision: str


class ModelInfo(BaseModel):
    revision: str = Field(description="the first 12 hex digits of the model file's sha256")
    sha256: str
    classes: list[str]
    image_size: int
    resize_size: int
    metadata: dict[str, str] = Field(description="the ONNX file's metadata_props as flowerpipe wrote them")


class Health(BaseModel):
    status: str
    model_revision: str


class ErrorBody(BaseModel):
    error: str


BINARY = {"schema": {"type": "string", "format": "binary"}}
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "empty, unreadable, truncated or not an image",
        413: "over the size limits (bytes, pixels or images)",
        415: "a content type other than image/*, application/octet-stream or multipart/form-data",
        422: "a bad query parameter",
    }.items()
}


def create_app(model_path: str | Path, limits: Limits = Limits(), threads: int = 0) -> FastAPI:
    """The service for one exported model; `threads` are onnxruntime's intra-op threads (0: all cores)."""
    predictor = Predictor(model_path, threads=threads)
    sha256 = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    revision = sha256[:12]
    page = resources.files(__package__).joinpath("serve_page.html").read_text(encoding="utf-8")
    top_k_query = Query(3, ge=1, le=len(predictor.classes), description="how many classes to list")

    app = FastAPI(
        title="flowerpipe",
        summary=f"Classifies photos as one of: {', '.join(predictor.classes)}",
        version=metadata.version("flowerpipe"),
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; /openapi.json describes the API
        redoc_url=None,
    )

    @app.exception_handler(ApiError)
    async def refused(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=422)

    def decode(name: str, data: bytes) -> np.ndarray:
        if not data:
            raise ApiError(400, f"{name}: empty")
        try:
            return predictor.load(io.BytesIO(data), limits.max_pixels)
        except Exception as exc:  # Pillow raises many kinds for a truncated or corrupt file
            status = 413 if isinstance(exc, TOO_MANY_PIXELS) else 400
            raise ApiError(status, f"{name}: {image_failure(exc)}") from None

    def classify(images: list[tuple[str, bytes]], top_k: int) -> list[dict[str, Any]]:
        return predictor.answer(np.stack([decode(name, data) for name, data in images]), top_k)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise ApiError(
                413, f"the body is {int(declared):,} bytes, over the limit of {limits.max_bytes:,}"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                raise ApiError(413, f"the body is over the limit of {limits.max_bytes:,} bytes")
        return bytes(body)

    async def uploads(request: Request, field: str) -> list[tuple[str, bytes]]:
        """The files of multipart field `field`, named by their file names."""
        body = await read_body(request)
        form = await _replay(request, body).form(max_files=limits.max_images + 1)
        files = [v for k, v in form.multi_items() if k == field and isinstance(v, UploadFile)]
        if not files:
            raise ApiError(400, f"no file in the multipart field {field!r}")
        if len(files) > limits.max_images:
            raise ApiError(413, f"more than {limits.max_images} images in one request")
        return [(f"{field}[{i}] ({f.filename})", await f.read()) for i, f in enumerate(files)]

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "one image: the body itself, or the multipart field `file`",
                "content": {
                    **dict.fromkeys((*RAW_TYPES, "application/octet-stream"), BINARY),
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                },
            }
        },
    )
    async def predict(request: Request, top_k: int = top_k_query) -> dict[str, Any]:
        """Classify one image."""
        media = _media_type(request)
        if media == "multipart/form-data":
            images = await uploads(request, "file")
            if len(images) > 1:
                raise ApiError(400, "one image per request: send several to /predict/batch")
        elif media.startswith("image/") or media == "application/octet-stream":
            images = [("body", await read_body(request))]
        else:
            raise ApiError(
                415,
                f"content type {media or 'missing'}: send the image as the body (image/* or "
                "application/octet-stream) or as the multipart/form-data field 'file'",
            )
        (answer,) = await run_in_threadpool(classify, images, top_k)
        return {**answer, "model_revision": revision}

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        responses=ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": f"up to {limits.max_images} images in the multipart field `files`",
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["files"],
                            "properties": {
                                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                            },
                        }
                    }
                },
            }
        },
    )
    async def predict_batch(request: Request, top_k: int = top_k_query) -> dict[str, Any]:
        """Classify several images in one model call."""
        if _media_type(request) != "multipart/form-data":
            raise ApiError(415, "send the images as the multipart/form-data field 'files'")
        images = await uploads(request, "files")
        return {"predictions": await run_in_threadpool(classify, images, top_k), "model_revision": revision}

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, str]:
        """The service is up and its model loaded."""
        return {"status": "ok", "model_revision": revision}

    @app.get("/model", response_model=ModelInfo)
    async def model() -> dict[str, Any]:
        """The model: its revision, classes, input size and metadata."""
        return {
            "revision": revision,
            "sha256": sha256,
            "classes": predictor.classes,
            "image_size": predictor.image_size,
            "resize_size": predictor.resize_size,
            "metadata": predictor.metadata,
        }

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        """A page to drop a photo on and see the answer."""
        return page

    return app


def serve(model_path: str | Path, host: str, port: int, limits: Limits = Limits(), threads: int = 0) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model_path, limits, threads), host=host, port=port)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _replay(request: Request, body: bytes) -> Request:
    """`request` again, with its body (already read within the limit) to be read once more."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)
