"""Temperature scaling: the fit, the scores before and after it, the reliability bins and the
calibration file export reads (numpy only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from flowerpipe.core.errors import DataError
from flowerpipe.report.calibration import (
    brier_score,
    calibration_scores,
    fit_temperature,
    max_softmax,
    negative_log_likelihood,
    read_rejection,
    read_temperature,
    reject_threshold,
    rejection_scores,
    reliability_bins,
)
from flowerpipe.report.metrics import classification_metrics, expected_calibration_error
from flowerpipe.runtime.scores import softmax


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


# --- the "unknown" threshold ----------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
@pytest.mark.parametrize("count", [1, 7, 20, 1000])
def test_the_threshold_keeps_the_requested_share_of_val(keep: float, count: int) -> None:
    scores = np.random.default_rng(count).uniform(0.2, 1.0, count)  # distinct scores
    threshold = reject_threshold(scores, keep)
    kept = np.mean(scores >= threshold)
    assert kept >= keep - 1e-12  # at least the share...
    assert kept - 1 / count < keep - 1e-12 or kept == 1 / count  # ...and one photo fewer is not enough
    assert threshold in scores  # a val photo's own score
    assert (scores > threshold).sum() < math.ceil(round(keep * count, 9)) <= (scores >= threshold).sum()


def test_the_threshold_on_exact_shares_and_ties() -> None:
    twenty = np.arange(1, 21) / 20  # 0.05 ... 1.0
    assert reject_threshold(twenty, 0.95) == 0.1  # 19 of 20 kept: 0.95 * 20 in floats is 19.000000000000004
    assert reject_threshold(twenty, 1.0) == 0.05  # everything kept
    assert reject_threshold(twenty, 0.01) == 1.0  # at least one photo is kept
    tied = np.array([0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.3, 0.3, 0.1])
    assert reject_threshold(tied, 0.2) == 0.9  # the 2nd highest is tied with two more: 4 of 10 kept
    assert reject_threshold(tied, 0.5) == 0.5  # 7 of 10 kept, never fewer than asked
    assert np.mean(tied >= reject_threshold(tied, 0.75)) == 0.9
    assert reject_threshold(np.full(5, 0.4), 0.5) == 0.4  # all tied: all kept


@pytest.mark.parametrize("keep", [0, -0.1, 1.5])
def test_the_threshold_refuses_a_share_outside_0_1(keep: float) -> None:
    with pytest.raises(ValueError, match="keep must be in"):
        reject_threshold(np.array([0.5]), keep)
    with pytest.raises(DataError, match="val split is empty"):
        reject_threshold(np.array([]), 0.9)


def test_the_score_is_the_calibrated_max_softmax_and_kept_accuracy_counts_kept_photos() -> None:
    logits = np.array([[4.0, 0.0, 0.0], [1.0, 0.9, 0.8], [0.0, 3.0, 0.0], [0.0, 0.0, 0.1]])
    labels = np.array([0, 1, 2, 2])
    np.testing.assert_allclose(max_softmax(logits, 2.0), softmax(logits, 2.0).max(axis=1))
    threshold = reject_threshold(max_softmax(logits, 2.0), 0.5)
    assert threshold == max_softmax(logits, 2.0)[2]  # photos 0 and 2 are the surest
    scores = max_softmax(logits, 2.0)
    assert rejection_scores(scores, logits, labels, threshold) == {"kept": 0.5, "accuracy_kept": 0.5}
    assert rejection_scores(scores, logits, labels, 1.0) == {"kept": 0.0, "accuracy_kept": None}


def test_the_calibration_file_gives_its_rejection(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"temperature": 1.7, "reject_score": "max_softmax", "reject_threshold": 0.6}))
    assert read_rejection(path) == ("max_softmax", 0.6)
    for off in ({"temperature": 1.7}, {"temperature": 1.7, "reject_score": None, "reject_threshold": None}):
        path.write_text(json.dumps(off))
        assert read_rejection(path) is None
    for bad in ({"reject_score": "entropy", "reject_threshold": 0.6}, {"reject_score": "max_softmax"}):
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=f"^{path}: reject_"):
            read_rejection(path)
