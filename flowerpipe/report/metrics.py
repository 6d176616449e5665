"""Scores of predictions: numpy only, so what reads predictions needs no torch."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from flowerpipe.runtime.scores import softmax


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with actual classes as rows and predicted classes as columns."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(
    logits: np.ndarray, y_true: np.ndarray, classes: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Headline scores (accuracy, balanced accuracy: the mean recall of the classes present, top-2,
    mean loss, ECE, macro and per-class precision/recall/F1)
    and the per-class scores again as one row per class (the form DVC's bar plots read)."""
    probs = softmax(logits)
    y_pred = probs.argmax(axis=1)
    n = len(y_true)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros_like(tp), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros_like(tp), where=cm.sum(axis=1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    top2 = np.argsort(-probs, axis=1)[:, :2]
    log_probs = np.log(np.clip(probs[np.arange(n), y_true], 1e-12, None))
    headline: dict[str, Any] = {
        "images": n,
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(recall[cm.sum(axis=1) > 0].mean()),  # each class present counts the same
        "top2_accuracy": float((top2 == y_true[:, None]).any(axis=1).mean()),
        "loss": float(-log_probs.mean()),
        "ece": expected_calibration_error(probs, y_true),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
    per_class = [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, cm.sum(axis=1), strict=True)
    ]
    headline["per_class"] = {
        row["class"]: {k: v for k, v in row.items() if k != "class"} for row in per_class
    }
    return headline, per_class


def prediction_rows(
    paths: Sequence[str], logits: np.ndarray, y_true: np.ndarray, classes: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per image: path, actual and predicted class names, and each class's probability."""
    probs = softmax(logits)
    rows = []
    for path, p, t in zip(paths, probs, y_true, strict=True):
        row: dict[str, Any] = {"path": path, "actual": classes[t], "predicted": classes[int(p.argmax())]}
        row.update({f"p_{c}": round(float(v), 6) for c, v in zip(classes, p, strict=True)})
        rows.append(row)
    return rows
