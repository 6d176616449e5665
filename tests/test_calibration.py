"""Temperature scaling: the fit, the scores before and after it, the reliability bins and the
calibration file export reads (numpy only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from flowerpipe.core.errors import DataError
from flowerpipe.deploy.predict import softmax
from flowerpipe.report.calibration import (
    brier_score,
    calibration_scores,
    fit_temperature,
    negative_log_likelihood,
    read_temperature,
    reliability_bins,
)
from flowerpipe.report.metrics import classification_metrics, expected_calibration_error


def drawn(t0: float, count: int = 20000, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random logits z and labels drawn from softmax(z / t0): data whose true temperature is t0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, (count, classes))
    p = softmax(z, t0)
    labels = (rng.random((count, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z.astype(np.float32), labels


@pytest.mark.parametrize("t0", [0.5, 1.0, 2.5, 6.0])
def test_fit_recovers_the_temperature_the_labels_were_drawn_with(t0: float) -> None:
    assert fit_temperature(*drawn(t0)) == pytest.approx(t0, rel=0.05)


def test_the_fit_is_the_minimum_of_the_nll() -> None:
    logits, labels = drawn(2.0, count=3000)
    t = fit_temperature(logits, labels)
    best = negative_log_likelihood(logits, labels, t)
    assert all(best <= negative_log_likelihood(logits, labels, t * f) for f in (0.97, 1.03, 0.5, 2.0))


def test_calibration_lowers_the_nll_on_val_and_on_unseen_photos() -> None:
    val, test = drawn(3.0, count=2000, seed=1), drawn(3.0, count=2000, seed=2)  # overconfident logits
    t = fit_temperature(*val)
    for split in (val, test):
        scores = calibration_scores(*split, t)
        assert scores["nll_after"] < scores["nll_before"]
        assert scores["ece_after"] < scores["ece_before"]
        assert scores["brier_after"] < scores["brier_before"]


def test_scores_before_are_those_of_plain_softmax_and_accuracy_does_not_move() -> None:
    logits, labels = drawn(2.0, count=500)
    t = fit_temperature(logits, labels)
    scores = calibration_scores(logits, labels, t)
    assert set(scores) == {f"{m}_{w}" for m in ("ece", "nll", "brier") for w in ("before", "after")}
    headline, _ = classification_metrics(logits, labels, list("abcde"))
    assert scores["ece_before"] == pytest.approx(headline["ece"])
    assert scores["nll_before"] == pytest.approx(headline["loss"], rel=1e-5)
    np.testing.assert_array_equal(softmax(logits, t).argmax(1), logits.argmax(1))


def test_brier_score_of_known_answers() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert brier_score(probs, np.array([0, 0, 0])) == pytest.approx((0 + 0.5 + 2) / 3)


def test_a_perfectly_separated_val_split_gets_a_bounded_temperature() -> None:
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    t = fit_temperature(logits, np.array([0, 1] * 10))
    assert 0 < t < 1 and math.isfinite(t)


def test_no_temperature_helps_logits_already_calibrated_at_one_exactly() -> None:
    logits = np.zeros((10, 3))  # every temperature gives the same answer
    assert fit_temperature(logits, np.arange(10) % 3) == 1.0


def test_an_empty_val_split_is_refused_in_one_line() -> None:
    with pytest.raises(DataError, match="val split is empty"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64))


def test_reliability_bins_hold_every_image_and_give_the_ece() -> None:
    logits, labels = drawn(2.0, count=1000)
    probs = softmax(logits)
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15 and sum(b["images"] for b in bins) == len(labels)
    ece = sum(b["images"] / len(labels) * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(expected_calibration_error(probs, labels))
    assert all(b["lo"] < b["confidence"] <= b["hi"] for b in bins if b["images"])
    sure = reliability_bins(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), np.array([0, 0, 0]))
    assert [b["images"] for b in sure] == [0] * 7 + [1] + [0] * 6 + [2]  # a bin holds its upper edge
    assert (sure[-1]["confidence"], sure[-1]["accuracy"], sure[7]["accuracy"]) == (1.0, 0.5, 1.0)


def test_the_calibration_file_gives_its_temperature(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"temperature": 1.7, "fitted_on": "val"}))
    assert read_temperature(path) == 1.7


@pytest.mark.parametrize(
    "content", ['{"fitted_on": "val"}', '{"temperature": -1}', '{"temperature": "2"}', "[1", "3"]
)
def test_a_bad_calibration_file_is_refused_in_one_line_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(DataError, match=f"^{path}: ") as caught:
        read_temperature(path)
    assert "\n" not in str(caught.value)


def test_a_missing_calibration_file_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `dvc repro evaluate`"):
        read_temperature(tmp_path / "calibration.json")
