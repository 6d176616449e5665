"""The audit: out-of-fold scoring never lets a head score a photo it was fitted on, and cleanlab's
ranking finds labels flipped on purpose, on features and on photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import make_photos

from flowerpipe.audit.labels import audit_labels, label_issues, linear_head, out_of_fold
from flowerpipe.config import SplitConfig
from flowerpipe.data.prepared import load_prepared
from flowerpipe.model.build import build_model
from flowerpipe.prepare import scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clusters(per_class: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features in one well-separated Gaussian cluster per class, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, 16))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), 16)), labels


FITTED: list[set[bytes]] = []  # the rows each RecordingHead was fitted on


class RecordingHead:
    """The linear head, remembering the rows it was fitted on and refusing to score any of them."""

    def __init__(self) -> None:
        self.head = linear_head()

    def fit(self, x: np.ndarray, y: np.ndarray) -> RecordingHead:
        self.seen = {row.tobytes() for row in x}
        FITTED.append(self.seen)
        self.head.fit(x, y)
        self.classes_ = self.head.classes_
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        assert not self.seen & {row.tobytes() for row in x}, "a head scored a photo it was fitted on"
        return self.head.predict_proba(x)


def test_no_photo_is_scored_by_a_head_that_saw_it() -> None:
    feats, labels = clusters(20, 3)
    FITTED.clear()
    oof = out_of_fold(feats, labels, 3, folds=5, seed=0, make_head=RecordingHead)
    assert len(FITTED) == 5 and sorted(np.bincount(oof.folds)) == [12] * 5
    for fold, seen in enumerate(FITTED):  # each head saw every other fold, whole
        assert seen == {row.tobytes() for row in feats[oof.folds != fold]}
    assert np.allclose(oof.probabilities.sum(1), 1)
    # a class smaller than the folds: as many folds as it has photos
    assert out_of_fold(feats[:43], labels[:43], 3, folds=5, seed=0).folds.max() + 1 == 3


def test_the_ranking_finds_planted_label_flips() -> None:
    feats, labels = clusters(30, 3, seed=1)
    flipped = np.array([3, 17, 41, 55, 70, 88])
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % 3
    oof = out_of_fold(feats, noisy, 3, folds=5, seed=0)
    relpaths = [f"photo_{i:03d}.jpg" for i in range(len(labels))]
    issues = label_issues(noisy, oof.probabilities, relpaths, ["a", "b", "c"])
    assert [i["relpath"] for i in issues] != [] and len(issues) <= 2 * len(flipped)
    top = {int(i["relpath"][6:9]) for i in issues[: len(flipped)]}
    assert top == set(flipped.tolist())  # the flips rank first
    for issue in issues[: len(flipped)]:
        index = int(issue["relpath"][6:9])
        assert issue["given"] == "abc"[noisy[index]] and issue["suggested"] == "abc"[labels[index]]
    assert [i["score"] for i in issues] == sorted(i["score"] for i in issues)


def test_audit_of_prepared_photos_flags_the_moved_ones(tmp_path: Path) -> None:
    # the synthetic classes differ in colour, which even random features show; three photos are
    # filed under another class
    root = make_photos(tmp_path / "photos", per_class=20)
    moved = ["daisy/daisy_003.jpg", "dandelion/dandelion_007.jpg", "roses/roses_011.jpg"]
    for relpath, to in zip(moved, ["roses", "daisy", "dandelion"], strict=True):
        (root / relpath).rename(root / to / Path(relpath).name)
    scan.prepare(root, tmp_path / "prepared", SplitConfig(val=0.2, test=0.2), resize=40, workers=2)
    data = load_prepared(tmp_path / "prepared")
    model = build_model("resnet18", None, 3, seed=0).eval()
    issues, metrics = audit_labels(model, data, 32, 16, torch.device("cpu"), folds=5)
    in_scored = [
        f"{to}/{Path(p).name}"
        for p, to in zip(moved, ["roses", "daisy", "dandelion"], strict=True)
        if data.splits[[r["relpath"] for r in data.rows].index(f"{to}/{Path(p).name}")] != "test"
    ]
    assert in_scored  # at least one moved photo is in train or val
    assert {i["relpath"] for i in issues[: len(in_scored)]} == set(in_scored)
    assert metrics["scored"] == int((data.splits != "test").sum()) and metrics["flagged"] == len(issues)
    assert not {i["relpath"] for i in issues} & {r["relpath"] for r in data.rows if r["split"] == "test"}
