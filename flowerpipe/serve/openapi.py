"""What the service's OpenAPI description says: the response schemas, the error statuses and the
request bodies (FastAPI cannot infer these from routes that read the request themselves)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

REVISION = "the first 12 hex digits of the model file's sha256"
BINARY = {"schema": {"type": "string", "format": "binary"}}
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")


def _absent_by_default(schema: dict[str, Any]) -> None:
    """A field that is left out of the answer, not sent as null: no `default` in its schema."""
    schema.pop("default", None)


class ClassScore(BaseModel):
    label: str
    score: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    label: str | None = Field(description="the most likely class; null when the answer is unknown")
    score: float = Field(ge=0, le=1, description="its probability (calibrated)")
    top_k: list[ClassScore] = Field(description="the top_k most likely classes, most likely first")
    # present only for a model with a reject_threshold (serve leaves unset fields out of the answer)
    unknown: bool | SkipJsonSchema[None] = Field(
        None,
        description="only for a model with a reject_threshold: true when the photo's rejection score "
        "(knn_similarity in a knn model, else score) is below it: the photo is likely of none of the "
        "classes, and label is null",
        json_schema_extra=_absent_by_default,
    )
    threshold: float | SkipJsonSchema[None] = Field(
        None,
        ge=-1,
        le=1,
        description="only for a model with a reject_threshold: that threshold",
        json_schema_extra=_absent_by_default,
    )
    knn_similarity: float | SkipJsonSchema[None] = Field(
        None,
        ge=-1,
        le=1,
        description="only for a model whose reject_score is knn: the cosine similarity of the photo's "
        "features to those of its 10th nearest training photo (lower: less like every one of them)",
        json_schema_extra=_absent_by_default,
    )


class PredictResponse(Prediction):
    model_revision: str = Field(description=REVISION)


class BatchResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per image, in the order sent")
    model_revision: str


class ModelInfo(BaseModel):
    revision: str = Field(description=REVISION)
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


ERROR_STATUSES = {
    400: "empty, unreadable, truncated or not an image",
    413: "over the size limits (bytes, pixels or images)",
    415: "a content type other than image/*, application/octet-stream or multipart/form-data",
    422: "a bad query parameter",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in ERROR_STATUSES.items()
}


def predict_body() -> dict[str, Any]:
    """The OpenAPI `requestBody` of /predict: one image, raw or as the multipart field `file`."""
    upload = {"type": "object", "required": ["file"], "properties": {"file": BINARY["schema"]}}
    return {
        "requestBody": {
            "required": True,
            "description": "one image: the body itself, or the multipart field `file`",
            "content": {
                **dict.fromkeys((*RAW_TYPES, "application/octet-stream"), BINARY),
                "multipart/form-data": {"schema": upload},
            },
        }
    }


def batch_body(max_images: int) -> dict[str, Any]:
    """The OpenAPI `requestBody` of /predict/batch: up to `max_images` in the multipart field `files`."""
    uploads = {"type": "array", "items": BINARY["schema"]}
    return {
        "requestBody": {
            "required": True,
            "description": f"up to {max_images} images in the multipart field `files`",
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["files"], "properties": {"files": uploads}}
                }
            },
        }
    }
