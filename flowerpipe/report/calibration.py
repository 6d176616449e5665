"""Temperature scaling: one scalar T > 0 that divides the logits so that softmax(logits / T) is
calibrated (Guo et al., 2017), fitted on the val split, and the scores that show its effect; and
the threshold below which a photo is answered "unknown" (open-set rejection by the maximum
calibrated softmax probability, Hendrycks & Gimpel, 2017, or by the knn similarity that
flowerpipe.model.knn computes), also chosen on val.
numpy only; it never changes which class is predicted, only how sure the answer says it is."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from flowerpipe.core.errors import DataError
from flowerpipe.report.metrics import expected_calibration_error
from flowerpipe.runtime.metadata import REJECT_SCORES, SCORE_RANGES
from flowerpipe.runtime.scores import log_softmax, softmax

# T is searched in [1/20, 20]: wider than any temperature a trained classifier needs, narrow enough
# that a val split the model separates perfectly (NLL falling towards T = 0) still gets a number.
LOG_T_BOUNDS = (-math.log(20.0), math.log(20.0))
GOLDEN = (math.sqrt(5) - 1) / 2


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / temperature)[label], in nats."""
    logp = log_softmax(np.asarray(logits, np.float64), temperature)
    return -float(np.mean(logp[np.arange(len(labels)), labels]))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot label
    (0 is perfect, 2 the worst)."""
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The T that minimises the mean NLL of softmax(logits / T), by golden-section search on log T
    (the NLL is convex in 1/T, so it has one minimum); 1.0 where no T does better than none."""
    if len(labels) == 0:
        raise DataError("cannot fit a temperature on no images: the val split is empty")
    lo, hi = LOG_T_BOUNDS

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + GOLDEN * (hi - lo)
            fb = loss(b)
    best = math.exp((lo + hi) / 2)
    return best if loss(math.log(best)) < loss(0.0) else 1.0


def calibration_scores(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE, NLL and Brier score of softmax(logits) and of softmax(logits / temperature)."""
    scores = {}
    for when, t in (("before", 1.0), ("after", temperature)):
        probs = softmax(np.asarray(logits, np.float64), t)
        scores[f"ece_{when}"] = expected_calibration_error(probs, labels)
        scores[f"nll_{when}"] = negative_log_likelihood(logits, labels, t)
        scores[f"brier_{when}"] = brier_score(probs, labels)
    return scores


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per equal-width confidence bin (the bins ECE uses): its edges, how many images fall in it,
    their mean confidence and their accuracy (both 0 for an empty bin)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    rows = []
    for lo, hi in itertools.pairwise(np.linspace(0, 1, bins + 1)):
        in_bin = (confidence > lo) & (confidence <= hi)
        rows.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "images": int(in_bin.sum()),
                "confidence": float(confidence[in_bin].mean()) if in_bin.any() else 0.0,
                "accuracy": float(correct[in_bin].mean()) if in_bin.any() else 0.0,
            }
        )
    return rows


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The calibration file's mapping ({} when it holds another JSON value); a DataError naming the
    file when it cannot be read."""
    try:
        found: Any = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the calibration ({exc}); run `dvc repro evaluate`") from exc
    return found if isinstance(found, dict) else {}


def read_temperature(path: str | os.PathLike[str]) -> float:
    """The `temperature` in the calibration file that evaluate writes; a DataError naming the file
    and the key when it is missing or not a positive finite number."""
    value = _read(path).get("temperature")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise DataError(f"{path}: temperature must be a positive number, not {value!r}")
    return float(value)


def max_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Each image's rejection score: its largest calibrated probability, max softmax(logits / T)."""
    return softmax(np.asarray(logits, np.float64), temperature).max(axis=1)


def reject_threshold(scores: np.ndarray, keep: float) -> float:
    """The largest threshold t such that at least the share `keep` of `scores` is >= t: the
    ceil(keep * n)-th highest score (photos tied with it are all kept, so ties keep more, never
    fewer). `keep` is in (0, 1]; keep = 1 gives the lowest score, so every photo is kept."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], not {keep!r}")
    ranked = np.sort(np.asarray(scores, np.float64))[::-1]
    if len(ranked) == 0:
        raise DataError("cannot choose a rejection threshold on no images: the val split is empty")
    count = max(1, math.ceil(round(keep * len(ranked), 9)))  # round: 0.95 * 20 is 19.000000000000004
    return float(ranked[count - 1])


def rejection_scores(
    scores: np.ndarray, logits: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float | None]:
    """Of the images whose rejection score is >= `threshold`: their share, and the accuracy of
    `logits` on them (None where none is kept)."""
    kept = np.asarray(scores) >= threshold
    right = np.asarray(logits).argmax(axis=1) == np.asarray(labels)
    return {
        "kept": float(kept.mean()) if len(kept) else 0.0,
        "accuracy_kept": float(right[kept].mean()) if kept.any() else None,
    }


def read_rejection(path: str | os.PathLike[str]) -> tuple[str, float] | None:
    """The (`reject_score`, `reject_threshold`) in the calibration file that evaluate writes, or
    None where rejection is off (both null or absent); a DataError naming the file and the key when
    they are not a known rule and a number in its score's range."""
    found = _read(path)
    rule, threshold = (found.get(key) for key in ("reject_score", "reject_threshold"))
    if rule is None and threshold is None:
        return None
    if rule not in SCORE_RANGES:
        raise DataError(f"{path}: reject_score must be one of {', '.join(REJECT_SCORES)}, not {rule!r}")
    lo, hi = SCORE_RANGES[rule]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not lo <= threshold <= hi:
        raise DataError(f"{path}: reject_threshold must be a number in [{lo:g}, {hi:g}], not {threshold!r}")
    return rule, float(threshold)
