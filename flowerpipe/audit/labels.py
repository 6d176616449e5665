"""Likely mislabeled photos. Every train and val photo gets out-of-fold class probabilities: the
photos are cut into k stratified folds, and a linear head fitted on the pretrained backbone's
features (computed once) of the other folds scores each fold, so no photo is scored by a head
that saw it. cleanlab finds the label issues in those probabilities (confident learning) and
ranks them by its label quality score: low is suspect."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from flowerpipe.core.errors import DataError
from flowerpipe.data.cache import Rows
from flowerpipe.data.prepared import Prepared
from flowerpipe.model.knn import features


class Head(Protocol):
    classes_: np.ndarray

    def fit(self, x: np.ndarray, y: np.ndarray) -> Any: ...
    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


def linear_head() -> Head:
    """Multinomial logistic regression on standardised features."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


@dataclass(frozen=True)
class OutOfFold:
    probabilities: np.ndarray  # N x classes: photo i's from the head fitted without its fold
    folds: np.ndarray  # N: the fold of each photo


def out_of_fold(
    feats: np.ndarray,
    labels: np.ndarray,
    classes: int,
    folds: int,
    seed: int,
    make_head: Callable[[], Head] = linear_head,
) -> OutOfFold:
    """Each photo's class probabilities from a head that `make_head` makes and fits on the other
    folds; `folds` stratified folds, fewer where the smallest class has fewer photos (2 at least)."""
    smallest = int(np.bincount(labels, minlength=classes)[np.unique(labels)].min())
    if smallest < 2:
        raise DataError("audit: a class has one photo in train and val: too few to score out of fold")
    split = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    probabilities = np.zeros((len(labels), classes))
    fold_of = np.empty(len(labels), dtype=np.int64)
    for fold, (fit_on, scored) in enumerate(split.split(feats, labels)):
        head = make_head()
        head.fit(feats[fit_on], labels[fit_on])
        probabilities[np.ix_(scored, head.classes_)] = head.predict_proba(feats[scored])
        fold_of[scored] = fold
    return OutOfFold(probabilities, fold_of)


def label_issues(
    labels: np.ndarray, probabilities: np.ndarray, relpaths: Sequence[str], classes: Sequence[str]
) -> list[dict[str, Any]]:
    """The photos cleanlab flags, most suspect first: relpath, given and suggested class and the
    label quality score (0 to 1; the probability of the given class, low is suspect)."""
    flagged = find_label_issues(labels, probabilities, n_jobs=1)
    quality = get_label_quality_scores(labels, probabilities)
    suggested = probabilities.argmax(axis=1)
    order = sorted(np.flatnonzero(flagged), key=lambda i: (quality[i], relpaths[i]))
    return [
        {
            "relpath": relpaths[i],
            "given": classes[labels[i]],
            "suggested": classes[suggested[i]],
            "score": round(float(quality[i]), 6),
        }
        for i in order
    ]


def audit_labels(
    model: nn.Module, data: Prepared, image_size: int, batch_size: int, device: torch.device, folds: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The label issues of `data`'s train and val photos, scored out of fold on `model`'s
    (pretrained, headless) features of their centre crops; and the counts (`scored`, `flagged`,
    `folds`) with the share flagged in each class."""
    scored = np.sort(np.concatenate([data.indices("train"), data.indices("val")]))
    feats = features(model, Rows(data.images, scored), image_size, batch_size, device)
    labels = data.labels[scored]
    oof = out_of_fold(feats, labels, len(data.classes), folds, seed=0)
    relpaths = [data.rows[i]["relpath"] for i in scored]
    issues = label_issues(labels, oof.probabilities, relpaths, data.classes)
    given = [issue["given"] for issue in issues]
    metrics = {
        "scored": len(scored),
        "flagged": len(issues),
        "folds": int(oof.folds.max()) + 1,
        "out_of_fold_accuracy": float((oof.probabilities.argmax(1) == labels).mean()),
        "flagged_by_class": {c: given.count(c) for c in data.classes},
    }
    return issues, metrics
