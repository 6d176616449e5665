"""The HTTP service: an exported ONNX model behind FastAPI on uvicorn, with a page to try it.

It needs the base install and the `serve` extra (FastAPI, uvicorn, python-multipart), never torch.
Class names and preprocessing come from the model's metadata through `Predictor`, the code that
`flowerpipe predict` runs.

Concurrency: request bodies are read on the event loop; decoding and the model call run in the
thread pool, many requests at a time. One onnxruntime session serves them all (its `run` is
thread-safe) with intra-op threads on every core (`threads=0`): a lone request gets all the cores,
and under load the calls overlap, which beat one call at a time at every load measured
(benchmarks/speed/serve_load.py); one thread per call (`threads=1`) gives more requests/s under load but
a slower lone request.
"""

from __future__ import annotations

import hashlib
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from flowerpipe.runtime.predictor import Predictor
from flowerpipe.serve.intake import DEFAULT_LIMITS, ApiError, Intake, Limits, Upload
from flowerpipe.serve.openapi import (
    ERRORS,
    BatchResponse,
    Health,
    ModelInfo,
    PredictResponse,
    batch_body,
    predict_body,
)

__all__ = ["ApiError", "Limits", "Service", "create_app", "serve"]


class Service:
    """What the routes answer from: one model, its revision, and the intake that reads requests."""

    def __init__(self, model_path: str | Path, limits: Limits, threads: int = 0) -> None:
        self.predictor = Predictor(model_path, threads=threads)
        self.sha256 = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
        self.revision = self.sha256[:12]
        self.intake = Intake(limits, self.predictor.load)
        self.page = resources.files(__package__).joinpath("serve_page.html").read_text(encoding="utf-8")

    def classify(self, images: list[Upload], top_k: int) -> list[dict[str, Any]]:
        """Decode `images` and answer them in one model call (blocking: run it in the thread pool)."""
        return self.predictor.answer(self.intake.crops(images), top_k)

    async def predict(self, request: Request, top_k: int) -> dict[str, Any]:
        """Classify one image."""
        (answer,) = await run_in_threadpool(self.classify, await self.intake.one(request), top_k)
        return {**answer, "model_revision": self.revision}

    async def predict_batch(self, request: Request, top_k: int) -> dict[str, Any]:
        """Classify several images in one model call."""
        answers = await run_in_threadpool(self.classify, await self.intake.several(request), top_k)
        return {"predictions": answers, "model_revision": self.revision}

    async def healthz(self) -> dict[str, str]:
        """The service is up and its model loaded."""
        return {"status": "ok", "model_revision": self.revision}

    async def model(self) -> dict[str, Any]:
        """The model: its revision, classes, input size and metadata."""
        return {
            "revision": self.revision,
            "sha256": self.sha256,
            "classes": self.predictor.classes,
            "image_size": self.predictor.image_size,
            "resize_size": self.predictor.resize_size,
            "metadata": self.predictor.metadata,
        }

    async def index(self) -> str:
        """A page to drop a photo on and see the answer."""
        return self.page


async def refused(_: Request, exc: ApiError) -> JSONResponse:
    """An ApiError as its status and `{"error": message}`."""
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (404, 405...) in the same `{"error": ...}` shape."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A bad query parameter: 422, every problem in one line that names the parameter."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": problems}, status_code=422)


def create_app(model_path: str | Path, limits: Limits = DEFAULT_LIMITS, threads: int = 0) -> FastAPI:
    """The service for one exported model; `threads` are onnxruntime's intra-op threads (0: all cores)."""
    service = Service(model_path, limits, threads)
    classes = service.predictor.classes
    app = FastAPI(
        title="flowerpipe",
        summary=f"Classifies photos as one of: {', '.join(classes)}",
        version=metadata.version("flowerpipe"),
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; /openapi.json describes the API
        redoc_url=None,
    )
    app.add_exception_handler(ApiError, refused)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)

    # defined here, not as methods: FastAPI reads top_k's bound (the model's classes) from the signature
    top_k_query = Query(3, ge=1, le=len(classes), description="how many classes to list")

    # exclude_unset: a model without a reject_threshold answers without `unknown` and `threshold`
    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_unset=True,
        responses=ERRORS,
        openapi_extra=predict_body(),
    )
    async def predict(request: Request, top_k: int = top_k_query) -> dict[str, Any]:
        """Classify one image."""
        return await service.predict(request, top_k)

    batch = batch_body(limits.max_images)

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        response_model_exclude_unset=True,
        responses=ERRORS,
        openapi_extra=batch,
    )
    async def predict_batch(request: Request, top_k: int = top_k_query) -> dict[str, Any]:
        """Classify several images in one model call."""
        return await service.predict_batch(request, top_k)

    app.get("/healthz", response_model=Health)(service.healthz)
    app.get("/model", response_model=ModelInfo)(service.model)
    app.get("/", response_class=HTMLResponse)(service.index)
    return app


def serve(
    model_path: str | Path, host: str, port: int, limits: Limits = DEFAULT_LIMITS, threads: int = 0
) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model_path, limits, threads), host=host, port=port)
