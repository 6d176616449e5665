"""`flowerpipe serve`: the HTTP endpoints, bad input, the OpenAPI description, and the page."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from helpers import REPO
from helpers.browser import CHROMIUM_FLAGS
from helpers.onnx_files import rejecting
from helpers.photos import CLASSES, draw_photo
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import positive_data_acceptance

from flowerpipe.runtime.predictor import Predictor
from flowerpipe.serve.app import Limits, create_app
from flowerpipe.serve.openapi import BatchResponse, PredictResponse


def jpeg(seed: int = 0, label: str = "roses") -> bytes:
    out = io.BytesIO()
    draw_photo(label, np.random.default_rng(seed)).save(out, "JPEG", quality=90)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header says it is `width` x `height`: what a decompression bomb shows
    before it is decoded."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, "PNG")
    data = bytearray(out.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR's width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # and its checksum
    return bytes(data)


@pytest.fixture(scope="module")
def client(onnx_model: Path) -> TestClient:
    return TestClient(create_app(onnx_model, Limits(max_bytes=200_000, max_pixels=1_000_000, max_images=4)))


@pytest.fixture(scope="module")
def predictor(onnx_model: Path) -> Predictor:
    return Predictor(onnx_model)


def test_predict_answers_as_flowerpipe_predict_does(
    client: TestClient, predictor: Predictor, onnx_model: Path
) -> None:
    photo = jpeg()
    expected = predictor.predict([io.BytesIO(photo)], top_k=2)[0]
    revision = hashlib.sha256(onnx_model.read_bytes()).hexdigest()[:12]
    raw = client.post("/predict?top_k=2", content=photo, headers={"Content-Type": "image/jpeg"})
    upload = client.post("/predict?top_k=2", files={"file": ("rose.jpg", photo, "image/jpeg")})
    for response in (raw, upload):
        assert response.status_code == 200, response.text
        assert response.json() == {**expected, "model_revision": revision}
    assert expected["label"] in CLASSES and len(expected["top_k"]) == 2


def test_batch_is_one_model_call_with_the_single_answers(
    client: TestClient, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = [jpeg(seed, label) for seed, label in enumerate(CLASSES)]
    single = [
        client.post("/predict", content=p, headers={"Content-Type": "image/jpeg"}).json() for p in photos
    ]
    calls: list[int] = []
    real = Predictor.scored
    monkeypatch.setattr(
        Predictor, "scored", lambda self, crops: calls.append(len(crops)) or real(self, crops)
    )
    files = [("files", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    assert calls == [3]
    answers = response.json()["predictions"]
    assert [a["label"] for a in answers] == [s["label"] for s in single]
    assert [a["score"] for a in answers] == pytest.approx([s["score"] for s in single], abs=1e-5)


@pytest.mark.parametrize("score", ["max_softmax", "knn"])
def test_a_photo_below_the_threshold_is_answered_unknown(
    score: str, onnx_model: Path, knn_model: Path, tmp_path: Path
) -> None:
    source = knn_model if score == "knn" else onnx_model
    photos = [jpeg(seed, label) for seed, label in enumerate(CLASSES * 2)]
    keeps_all = Predictor(rejecting(source, tmp_path / "all.onnx", -1.0 if score == "knn" else 0.0, score))
    scores = sorted(keeps_all.scored(np.stack([keeps_all.load(io.BytesIO(p)) for p in photos]))[1])
    threshold = float(scores[2] + scores[3]) / 2  # three of the six below
    model = rejecting(source, tmp_path / "strict.onnx", threshold, score)
    expected = Predictor(model).predict(list(map(io.BytesIO, photos)), top_k=2)
    client = TestClient(create_app(model))
    single = [
        client.post("/predict?top_k=2", content=p, headers={"Content-Type": "image/jpeg"}).json()
        for p in photos
    ]
    revision = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    assert single == [{**e, "model_revision": revision} for e in expected]
    assert [a["unknown"] for a in single].count(True) == 3
    for answer in single:
        PredictResponse.model_validate(answer)  # the schema the OpenAPI description gives
        assert answer["threshold"] == threshold
        by = answer["knn_similarity"] if score == "knn" else answer["score"]
        assert (answer["label"] is None) == answer["unknown"] == (by < threshold)
    files = [("files", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)]
    batch = client.post("/predict/batch?top_k=2", files=files).json()
    BatchResponse.model_validate(batch)
    assert batch["predictions"] == expected


def test_a_model_without_a_threshold_answers_as_before(client: TestClient) -> None:
    answer = client.post("/predict", content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    assert set(answer) == {"label", "score", "top_k", "model_revision"}  # no unknown, no threshold
    batch = client.post("/predict/batch", files=[("files", ("a.jpg", jpeg(), "image/jpeg"))]).json()
    assert set(batch["predictions"][0]) == {"label", "score", "top_k"}


def test_health_model_page_and_openapi(client: TestClient, onnx_model: Path) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    model = client.get("/model").json()
    assert model["classes"] == list(CLASSES)
    assert model["sha256"] == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    assert model["metadata"]["git_commit"] == "abc123"
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "<script src" not in page.text and "https://" not in page.text  # nothing from a CDN
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/predict", "/predict/batch", "/healthz", "/model", "/"}
    assert "image/jpeg" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


BAD_REQUESTS = {
    "empty body": (400, "/predict", {"content": b"", "headers": {"Content-Type": "image/jpeg"}}),
    "not an image": (400, "/predict", {"content": b"hello", "headers": {"Content-Type": "image/jpeg"}}),
    "truncated JPEG": (400, "/predict", {"content": jpeg()[:600], "headers": {"Content-Type": "image/jpeg"}}),
    "over the byte limit": (
        413,
        "/predict",
        {"content": b"x" * 200_001, "headers": {"Content-Type": "image/png"}},
    ),
    "over the pixel limit": (
        413,
        "/predict",
        {"content": png_declaring(2000, 1000), "headers": {"Content-Type": "image/png"}},
    ),
    "a decompression bomb": (
        413,
        "/predict",
        {"content": png_declaring(30000, 30000), "headers": {"Content-Type": "image/png"}},
    ),
    "text content type": (415, "/predict", {"content": jpeg(), "headers": {"Content-Type": "text/plain"}}),
    "no content type": (415, "/predict", {"content": jpeg()}),
    "JSON": (415, "/predict", {"json": {"image": "rose.jpg"}}),
    "a multipart form without the file": (
        400,
        "/predict",
        {"files": {"photo": ("a.jpg", jpeg(), "image/jpeg")}},
    ),
    "two files to /predict": (
        400,
        "/predict",
        {"files": [("file", ("a.jpg", jpeg(), "image/jpeg")), ("file", ("b.jpg", jpeg(1), "image/jpeg"))]},
    ),
    "a bad top_k": (422, "/predict?top_k=0", {"content": jpeg(), "headers": {"Content-Type": "image/jpeg"}}),
    "a raw body to /predict/batch": (
        415,
        "/predict/batch",
        {"content": jpeg(), "headers": {"Content-Type": "image/jpeg"}},
    ),
    "too many images": (
        413,
        "/predict/batch",
        {"files": [("files", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(5)]},
    ),
    "one bad image in a batch": (
        400,
        "/predict/batch",
        {
            "files": [
                ("files", ("good.jpg", jpeg(), "image/jpeg")),
                ("files", ("bad.jpg", b"??", "image/jpeg")),
            ]
        },
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_gets_a_4xx_json_error_and_the_service_goes_on(client: TestClient, case: str) -> None:
    status, path, request = BAD_REQUESTS[case]
    response = client.post(path, **request)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    good = client.post("/predict", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert good.status_code == 200


def test_errors_name_the_image(client: TestClient) -> None:
    files = [("files", ("good.jpg", jpeg(), "image/jpeg")), ("files", ("bad.jpg", b"??", "image/jpeg"))]
    assert (
        client.post("/predict/batch", files=files)
        .json()["error"]
        .startswith("files[1] (bad.jpg): not a readable image")
    )
    bomb = client.post("/predict", content=png_declaring(2000, 1000), headers={"Content-Type": "image/png"})
    assert bomb.json()["error"] == "body: 2000x1000 pixels is over the limit of 1,000,000"


def test_api_conforms_to_its_openapi_description(onnx_model: Path) -> None:
    """Schemathesis sends what the description allows, and what it does not, to every operation:
    no 5xx, and every answer has a documented status, content type and schema. (Its check that
    schema-valid requests succeed is left out: random bytes fit "binary" but are not an image.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(onnx_model))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    for operation in operations:
        # the GET operations take no input, so there is nothing to send them that breaks the rules
        modes = list(schemathesis.GenerationMode)[: 2 if operation.method.upper() == "POST" else 1]
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            check()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_over_http_without_torch(onnx_model: Path) -> None:
    port = free_port()
    code = (
        "import sys, json\nfrom flowerpipe.cli import main\ntry:\n"
        f"    main(['serve', {str(onnx_model)!r}, '--port', '{port}'])\n"
        "except SystemExit:\n    pass\n"
        "print(json.dumps([m for m in sys.modules if 'torch' in m]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{url}/healthz") as r:
                    assert json.load(r)["status"] == "ok"
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        request = urllib.request.Request(
            f"{url}/predict", data=jpeg(), headers={"Content-Type": "image/jpeg"}
        )
        with urllib.request.urlopen(request) as r:
            assert json.load(r)["label"] in CLASSES
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down and the process reports its modules
        out, err = proc.communicate(timeout=30)
    assert json.loads(out.splitlines()[-1]) == [], err


def test_serve_extra_installs_no_torch() -> None:
    """What `pip install flowerpipe[serve]` brings, by the lock file: nothing of torch's."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    todo = [d["name"] for d in packages["flowerpipe"]["dependencies"]]
    todo += [d["name"] for d in packages["flowerpipe"]["optional-dependencies"]["serve"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [d["name"] for d in packages[name].get("dependencies", [])]
    assert {"fastapi", "uvicorn", "onnxruntime", "pillow"} <= seen
    assert not {n for n in seen if n.startswith(("torch", "nvidia", "triton", "dvc"))}


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("needs chromium on PATH (.ci/run installs it)")
    return path


@pytest.mark.browser
@pytest.mark.parametrize("score", [None, "max_softmax", "knn"])
def test_page_classifies_a_real_photo_in_a_browser(
    onnx_model: Path, knn_model: Path, chromium: str, real_photos: Path, tmp_path: Path, score: str | None
) -> None:
    """Headless Chromium opens the page, picks a real flower photo in its file input, and shows
    the service's answer: the label, and one bar per class; with a model whose threshold the photo
    is below (1.0: every photo), "unknown" in place of the label, why in the rule's terms, and the
    bars still."""
    from playwright.sync_api import sync_playwright

    photo = sorted((real_photos / "roses").glob("*.jpg"))[0]
    threshold = None if score is None else 1.0
    if score is not None:
        onnx_model = rejecting(
            knn_model if score == "knn" else onnx_model, tmp_path / "strict.onnx", 1.0, score
        )
    expected = Predictor(onnx_model).predict([photo], top_k=len(CLASSES))[0]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flowerpipe.cli", "serve", str(onnx_model), "--port", str(port)],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_FLAGS[1:]))
            page = browser.new_page()
            for _ in range(200):
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    assert server.poll() is None
                    time.sleep(0.05)
            page.wait_for_selector("body[data-state=ready]")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            label = page.text_content("#label")
            why = page.text_content("#why")
            bars = page.eval_on_selector_all(
                "#bars .row", "rows => rows.map(r => [r.dataset.label, Number(r.dataset.score)])"
            )
            widths = page.eval_on_selector_all("#bars .bar span", "spans => spans.map(s => s.offsetWidth)")
            track = page.eval_on_selector("#bars .bar", "bar => bar.offsetWidth")
            assert page.eval_on_selector("#preview", "img => img.naturalWidth") > 0
            name = "serve_page.png" if score is None else f"serve_page_{score}.png"
            shot = Path(os.environ.get("FLOWERPIPE_ARTIFACTS", tmp_path)) / name
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    if threshold is None:
        assert label == expected["label"] and why == ""
    else:
        assert expected["unknown"] and label == f"unknown: not one of the {len(CLASSES)} classes"
    if score == "max_softmax":
        assert why == f"not sure enough: {100 * expected['score']:.1f} %, below the threshold 100.0 %"
    if score == "knn":
        similarity = f"{expected['knn_similarity']:.2f}"
        assert why == f"unlike the training photos: similarity {similarity}, below the threshold 1.00"
    assert [name for name, _ in bars] == list(CLASSES)
    scores = dict(bars)
    assert scores == pytest.approx({c["label"]: c["score"] for c in expected["top_k"]}, abs=1e-6)
    assert track > 100  # the bars are drawn, each as long as its probability
    assert [w / track for w in widths] == pytest.approx([s for _, s in bars], abs=0.02)
