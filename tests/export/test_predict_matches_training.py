"""predict reads and answers as training and evaluation do: its crops are the prepared cache's, its
answers PyTorch's (the rest of predict's tests are torch-free, in tests/deploy/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import CLASSES, IMAGE_SIZE, RESIZE, make_photos

from flowerpipe.config import SplitConfig
from flowerpipe.data.prepared import load_prepared
from flowerpipe.prepare import scan
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import center_crop, to_model_input


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"), per_class=10)


def test_preprocessing_equals_the_prepared_cache(onnx_model: Path, photos: Path, tmp_path: Path) -> None:
    """predict reads a photo exactly as evaluate sees it: the centre crop of the prepared square."""
    split = SplitConfig(val=0.3, test=0.3, seed=42)
    scan.prepare(photos, tmp_path / "prepared", split, resize=RESIZE, workers=1)
    prepared = load_prepared(tmp_path / "prepared")
    crops = center_crop(np.asarray(prepared.images), IMAGE_SIZE)
    predictor = Predictor(onnx_model)  # its metadata says IMAGE_SIZE from RESIZE
    for row, crop in zip(prepared.rows, crops, strict=True):
        assert np.array_equal(predictor.load(photos / row["relpath"]), crop), row["relpath"]


def test_api_answers_as_pytorch_does(onnx_model: Path, classifier: torch.nn.Module, photos: Path) -> None:
    files = sorted(photos.rglob("*.jpg"))
    predictor = Predictor(onnx_model)
    answers = predictor.predict(files, top_k=2)
    crops = np.stack([predictor.load(f) for f in files])
    with torch.inference_mode():
        probs = torch.softmax(classifier(torch.from_numpy(to_model_input(crops))), 1).numpy()
    assert [a["label"] for a in answers] == [CLASSES[i] for i in probs.argmax(1)]
    for answer, p in zip(answers, probs, strict=True):
        assert answer["score"] == pytest.approx(p.max(), abs=1e-5)
        assert [t["label"] for t in answer["top_k"]] == [CLASSES[i] for i in np.argsort(-p)[:2]]
