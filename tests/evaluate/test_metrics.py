"""Scores computed on hand-made logits whose right answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flowerpipe.model.inference import folded_where_fixed, for_inference, predict_logits
from flowerpipe.report.metrics import (
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    prediction_rows,
)
from flowerpipe.runtime.scores import softmax

CLASSES = ["a", "b", "c"]
# true:      a  a  b  b  c  c
# predicted: a  b  b  b  c  a      second choice: b  a  c  a  b  b
LOGITS = np.array(
    [
        [3.0, 1.0, 0.0],
        [1.0, 3.0, 0.0],
        [0.0, 3.0, 1.0],
        [1.0, 2.0, 0.0],
        [0.0, 1.0, 4.0],
        [2.0, 1.0, 0.0],
    ],
    dtype=np.float32,
)
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_matrix_counts() -> None:
    cm = confusion_matrix(Y_TRUE, LOGITS.argmax(1), 3)
    # rows: actual a, b, c; columns: predicted a, b, c
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert cm.sum() == len(Y_TRUE)


def test_balanced_accuracy_weighs_each_class_present_the_same() -> None:
    # 1 photo of a, right, and 9 of b, of which 3 are right; no photo of c
    y_true = np.array([0] + [1] * 9)
    logits = np.zeros((10, 3))
    logits[[0, 1, 2, 3], [0, 1, 1, 1]] = 1.0
    logits[4:, 2] = 1.0
    headline, _ = classification_metrics(logits, y_true, CLASSES)
    assert headline["accuracy"] == pytest.approx(4 / 10)
    assert headline["balanced_accuracy"] == pytest.approx((1 + 3 / 9) / 2)  # c, absent, does not count
    assert headline["macro_recall"] == pytest.approx((1 + 3 / 9) / 3)


def test_headline_scores_by_hand() -> None:
    headline, _ = classification_metrics(LOGITS, Y_TRUE, CLASSES)
    assert headline["images"] == 6
    assert headline["accuracy"] == pytest.approx(4 / 6)
    assert headline["top2_accuracy"] == pytest.approx(5 / 6)  # only the last row misses its top two
    # precision a = 1/2, b = 2/3, c = 1/1; recall a = 1/2, b = 2/2, c = 1/2
    assert headline["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert headline["macro_recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert headline["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)  # every class is there
    # F1 a = 1/2, b = 2 * 2/3 * 1 / (5/3) = 4/5, c = 2 * 1 * 1/2 / (3/2) = 2/3
    assert headline["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    nll = [
        math.log(sum(math.exp(v) for v in row)) - row[t]
        for row, t in zip(LOGITS.tolist(), Y_TRUE, strict=True)
    ]
    assert headline["loss"] == pytest.approx(sum(nll) / 6, rel=1e-5)
    assert 0 <= headline["ece"] <= 1


def test_per_class_scores_by_hand() -> None:
    headline, per_class = classification_metrics(LOGITS, Y_TRUE, CLASSES)
    assert headline["per_class"] == {
        r["class"]: {k: v for k, v in r.items() if k != "class"} for r in per_class
    }
    assert [r["class"] for r in per_class] == CLASSES
    expected = {
        "a": (1 / 2, 1 / 2, 1 / 2, 2),
        "b": (2 / 3, 1.0, 4 / 5, 2),
        "c": (1.0, 1 / 2, 2 / 3, 2),
    }
    for row in per_class:
        precision, recall, f1, support = expected[row["class"]]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
        assert isinstance(row["support"], int)


def test_perfect_predictions() -> None:
    logits = np.eye(3) * 10
    headline, per_class = classification_metrics(logits, np.arange(3), CLASSES)
    assert headline["accuracy"] == headline["top2_accuracy"] == headline["macro_f1"] == 1.0
    assert headline["loss"] == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 2)), rel=1e-5)
    assert all(r["precision"] == r["recall"] == 1.0 for r in per_class)


def test_class_never_seen_nor_predicted_scores_zero_without_warnings() -> None:
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]], dtype=np.float32)
    with np.errstate(all="raise"):
        headline, per_class = classification_metrics(logits, np.array([0, 1]), CLASSES)
    assert headline["accuracy"] == 1.0
    assert per_class[2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert headline["macro_f1"] == pytest.approx(2 / 3)


def test_expected_calibration_error_by_hand() -> None:
    # every image predicted class 0 with confidence 0.75
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)  # 75% right
    assert expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.25)  # 50% right
    # two bins of two images: confidence 0.95 all right (gap 0.05), confidence 0.55 none right (gap 0.55)
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    assert expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.5 * 0.05 + 0.5 * 0.55)


def test_softmax_is_stable_for_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]])
    assert np.isfinite(probs).all()


def test_prediction_rows() -> None:
    paths = [f"{c}/{i}.jpg" for i, c in enumerate("aabbcc")]
    rows = prediction_rows(paths, LOGITS, Y_TRUE, CLASSES)
    assert len(rows) == 6
    assert all(list(r) == ["path", "actual", "predicted", "p_a", "p_b", "p_c"] for r in rows)
    assert [r["path"] for r in rows] == paths
    assert [r["actual"] for r in rows] == ["a", "a", "b", "b", "c", "c"]
    assert [r["predicted"] for r in rows] == ["a", "b", "b", "b", "c", "a"]
    for r, row_logits in zip(rows, LOGITS, strict=True):
        assert sum(r[f"p_{c}"] for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
        expected = np.exp(row_logits) / np.exp(row_logits).sum()
        assert [r[f"p_{c}"] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-6)
        assert all(isinstance(r[f"p_{c}"], float) for c in CLASSES)


def test_predict_logits_crops_and_batches() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    logits = predict_logits(model, images, 4, batch_size=2, device=torch.device("cpu"))
    assert logits.shape == (5, 2)
    assert logits.dtype == np.float32
    crop = images[:, 1:5, 1:5, :].astype(np.float32) / 255
    x = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def _conv_bn() -> nn.Sequential:
    """A convolution and a BatchNorm whose running statistics are not the identity."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2)
    )
    net.train()
    for _ in range(5):
        net(3 * torch.randn(16, 3, 8, 8) + 1)
    return net


def test_for_inference_folds_batchnorm_into_the_convolutions_with_the_same_logits() -> None:
    model = _conv_bn()
    folded = for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(model[1], nn.BatchNorm2d)  # a copy: the model that trains keeps its own
    x = torch.randn(4, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-5, atol=1e-5)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _conv_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return -y if y.mean() > 0 else y  # control flow on a value: torch.fx cannot trace it


def test_a_model_torch_fx_cannot_trace_is_used_as_it_is() -> None:
    model = _DataDependent()
    assert for_inference(model) is model and not model.training


def _two_stages() -> nn.Sequential:
    """A fixed first stage (conv + BatchNorm, held in eval mode, as a frozen block is) before a
    second that learns, BatchNorm in train mode."""
    torch.manual_seed(0)
    net = nn.Sequential(_conv_bn(), nn.Unflatten(1, (2, 1, 1)), nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4))
    net.train()[0].eval().requires_grad_(False)
    return net


def test_fixed_modules_run_folded_while_the_rest_learns_in_the_model_itself() -> None:
    model, x = _two_stages(), torch.randn(6, 3, 8, 8)
    keys, expected = list(model.state_dict()), model(x)
    grads = torch.autograd.grad(expected.square().sum(), [model[2].weight])
    view = folded_where_fixed(model, ["0"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in view[0].modules())
    assert isinstance(model[0][1], nn.BatchNorm2d) and list(model.state_dict()) == keys
    assert view[2] is model[2] and view[3] is model[3]  # what learns is the model's own
    out = view(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    torch.testing.assert_close(
        model[2].weight.grad, grads[0], rtol=1e-4, atol=1e-4
    )  # rounding, any thread count
    assert all(p.grad is None for p in view[0].parameters())  # no backward through the fixed stage


def test_a_fixed_module_inside_another_is_covered_by_it() -> None:
    model = _two_stages()
    view = folded_where_fixed(model, ["0.1", "0", "0.0"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in view[0].modules())
    assert view[3] is model[3]
