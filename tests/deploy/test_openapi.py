"""`serve.openapi`: the schemas, error statuses and request bodies it holds are what the app serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from flowerpipe.serve import openapi
from flowerpipe.serve.app import Limits, create_app

RESPONSES = {
    ("post", "/predict"): openapi.PredictResponse,
    ("post", "/predict/batch"): openapi.BatchResponse,
    ("get", "/healthz"): openapi.Health,
    ("get", "/model"): openapi.ModelInfo,
}


@pytest.fixture(scope="module")
def served(onnx_model: Path) -> dict[str, Any]:
    return TestClient(create_app(onnx_model, Limits(max_images=5))).get("/openapi.json").json()


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def test_request_bodies_are_the_modules(served: dict[str, Any]) -> None:
    assert served["paths"]["/predict"]["post"]["requestBody"] == openapi.predict_body()["requestBody"]
    batch = served["paths"]["/predict/batch"]["post"]["requestBody"]
    assert batch == openapi.batch_body(5)["requestBody"]
    assert batch["description"] == "up to 5 images in the multipart field `files`"
    raw = set(served["paths"]["/predict"]["post"]["requestBody"]["content"])
    assert raw == {*openapi.RAW_TYPES, "application/octet-stream", "multipart/form-data"}


@pytest.mark.parametrize(("method", "path"), RESPONSES)
def test_each_answer_has_the_modules_schema(served: dict[str, Any], method: str, path: str) -> None:
    model = RESPONSES[method, path]
    answers = served["paths"][path][method]["responses"]
    assert answers["200"]["content"]["application/json"]["schema"] == ref(model)
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = schema.pop("$defs", {})
    assert served["components"]["schemas"][model.__name__] == schema
    for name, definition in nested.items():
        assert served["components"]["schemas"][name] == definition


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_the_error_statuses_are_the_modules(served: dict[str, Any], path: str) -> None:
    answers = served["paths"][path]["post"]["responses"]
    assert set(answers) == {"200", *map(str, openapi.ERROR_STATUSES)}
    for status, description in openapi.ERROR_STATUSES.items():
        assert answers[str(status)]["description"] == description
        assert answers[str(status)]["content"]["application/json"]["schema"] == ref(openapi.ErrorBody)
    assert served["components"]["schemas"]["ErrorBody"] == openapi.ErrorBody.model_json_schema()
