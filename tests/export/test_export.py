"""export_onnx writes one self-describing ONNX file; check_parity verifies it and can fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers.photos import CLASSES, IMAGE_SIZE, RESIZE, noisy_squares

from flowerpipe.config import ExportConfig
from flowerpipe.core.errors import ParityError
from flowerpipe.export import onnx as export
from flowerpipe.runtime.preprocess import MEAN, STD, center_crop, to_model_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = ExportConfig()  # the tolerances params.yaml ships with


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return noisy_squares(9)


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([export.OUTPUT_NAME], {export.INPUT_NAME: x})[0]


def test_file_is_a_valid_single_onnx_model(onnx_model: Path) -> None:
    onnx.checker.check_model(str(onnx_model), full_check=True)
    proto = onnx.load(str(onnx_model))
    assert [i.name for i in proto.graph.input] == [export.INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [export.OUTPUT_NAME]
    assert any(o.domain in ("", "ai.onnx") and o.version == TOL.opset for o in proto.opset_import)
    assert not list(onnx_model.parent.glob("*.data"))  # weights inside, no external data file
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, IMAGE_SIZE, IMAGE_SIZE]


def test_metadata_describes_the_preprocessing(onnx_model: Path) -> None:
    sess = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["mean"]) == pytest.approx(list(MEAN))
    assert json.loads(meta["std"]) == pytest.approx(list(STD))
    assert int(meta["image_size"]) == IMAGE_SIZE
    assert int(meta["resize_size"]) == RESIZE
    assert "centre-crop" in meta["preprocessing"]
    assert meta["arch"] == "resnet18"
    assert meta["git_commit"] == "abc123"


@pytest.mark.parametrize("batch", [1, 5])
def test_batch_axis_is_dynamic(
    onnx_model: Path, classifier: torch.nn.Module, images: np.ndarray, batch: int
) -> None:
    x = to_model_input(center_crop(images[:batch], IMAGE_SIZE))
    assert x.shape == (batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    actual = run_ort(onnx_model, x)
    assert actual.shape == (batch, len(CLASSES))
    with torch.inference_mode():
        expected = classifier(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=TOL.rtol, atol=TOL.atol)


def test_parity_holds_for_the_exported_model(
    onnx_model: Path, classifier: torch.nn.Module, images: np.ndarray
) -> None:
    result = export.check_parity(classifier, onnx_model, images, IMAGE_SIZE, TOL, batch_size=4)
    assert result["within_tolerance"] is True
    assert result["top1_agreement"] == 1.0
    assert result["images"] == len(images)
    assert 0 <= result["max_abs_diff"] < 1e-3


def test_parity_fails_when_the_model_changed(
    onnx_model: Path, classifier: torch.nn.Module, images: np.ndarray
) -> None:
    changed = copy.deepcopy(classifier)
    with torch.no_grad():
        changed.fc.bias += 0.1
    with pytest.raises(ParityError, match="differs from PyTorch") as info:
        export.check_parity(changed, onnx_model, images, IMAGE_SIZE, TOL)
    assert str(onnx_model) in str(info.value)
    assert "max abs diff 0.1" in str(info.value)


def test_parity_fails_on_top1_disagreement(
    onnx_model: Path, classifier: torch.nn.Module, images: np.ndarray
) -> None:
    changed = copy.deepcopy(classifier)
    with torch.no_grad():
        changed.fc.bias[0] += 1000.0  # PyTorch now always says daisy
    onnx_top1 = run_ort(onnx_model, to_model_input(center_crop(images, IMAGE_SIZE))).argmax(1)
    assert (onnx_top1 != 0).any()  # so top-1 must disagree somewhere
    agreement = float((onnx_top1 == 0).mean())
    with pytest.raises(ParityError, match=f"top-1 agreement {agreement:.2%}"):
        export.check_parity(changed, onnx_model, images, IMAGE_SIZE, TOL)


def test_parity_names_broken_weights_before_comparing(
    onnx_model: Path, classifier: torch.nn.Module, images: np.ndarray
) -> None:
    """NaN logits compare as equal to nothing: the error says the weights are broken."""
    changed = copy.deepcopy(classifier)
    with torch.no_grad():
        changed.fc.bias[1] = float("nan")
    with pytest.raises(ParityError, match="PyTorch's own logits are not finite"):
        export.check_parity(changed, onnx_model, images, IMAGE_SIZE, TOL)


def test_parity_names_an_onnx_file_that_gives_nan(
    classifier: torch.nn.Module, images: np.ndarray, tmp_path: Path
) -> None:
    """NaN from ONNX Runtime where PyTorch's logits are finite is a failure said as such, not a
    "max abs diff 0" (NaN is never larger than a number)."""
    broken = copy.deepcopy(classifier)
    with torch.no_grad():
        broken.fc.bias[1] = float("nan")
    path = tmp_path / "model.onnx"
    export.export_onnx(
        broken, path, IMAGE_SIZE, export.onnx_metadata(list(CLASSES), "resnet18", IMAGE_SIZE, RESIZE)
    )
    with pytest.raises(ParityError, match="ONNX Runtime's logits are not finite where PyTorch's are"):
        export.check_parity(classifier, path, images, IMAGE_SIZE, TOL)


def test_top1_classes_tied_within_the_tolerance_agree() -> None:
    expected = np.array([[1.0, 1.0 + 1e-7, 0.0], [2.0, 0.0, 1.0], [0.0, 1.0, 0.9]])
    actual = np.array([[1.0 + 2e-7, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.9, 1.0]])
    assert export.top1_agreements(expected, expected, rtol=0.0, atol=0.0) == 3
    assert export.top1_agreements(actual, expected, rtol=1e-3, atol=1e-5) == 1  # the first row's tie
    assert export.top1_agreements(actual, expected, rtol=0.0, atol=0.2) == 2  # 0.9 is within 0.2 of 1


def test_metadata_without_provenance() -> None:
    meta = export.onnx_metadata(list(CLASSES), "vgg11", 224, 256)
    assert "git_commit" not in meta
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert meta["temperature"] == "1.0"  # uncalibrated unless evaluate's temperature is given


def test_metadata_carries_the_temperature() -> None:
    meta = export.onnx_metadata(list(CLASSES), "vgg11", 224, 256, temperature=1.7)
    assert float(meta["temperature"]) == 1.7


def test_metadata_carries_the_rejection_threshold_only_when_there_is_one() -> None:
    meta = export.onnx_metadata(list(CLASSES), "vgg11", 224, 256, reject=("max_softmax", 0.625))
    assert meta["reject_score"] == "max_softmax" and float(meta["reject_threshold"]) == 0.625
    off = export.onnx_metadata(list(CLASSES), "vgg11", 224, 256)
    assert "reject_score" not in off and "reject_threshold" not in off  # keep_known: null


def test_parity_inputs_are_the_photos_a_batch_at_a_time_then_seeded_noise(images: np.ndarray) -> None:
    found = list(export.parity_inputs(images, IMAGE_SIZE, batch_size=4, seed=3))
    sizes = [min(4, len(images) - i) for i in range(0, len(images), 4)]
    assert [(real, len(x)) for real, x in found] == [(True, n) for n in sizes] + [(False, 1), (False, 7)]
    photos = np.concatenate([x for real, x in found if real])
    np.testing.assert_array_equal(photos, to_model_input(center_crop(images, IMAGE_SIZE)))
    rng = np.random.default_rng(3)
    for (_, x), n in zip(found[-2:], (1, 7), strict=True):
        noise = rng.standard_normal((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        np.testing.assert_array_equal(x, noise)
