"""The split: a deterministic, stable, per-class function of each photo's content hash."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from flowerpipe import dataset
from flowerpipe.errors import DataError
from flowerpipe.split import SPLITS, assign_splits, split_counts, split_of


def fake_hashes(n: int, tag: str) -> list[str]:
    return [hashlib.sha256(f"{tag}-{i}".encode()).hexdigest() for i in range(n)]


def three_classes(per_class: int = 400) -> tuple[list[str], list[str]]:
    hashes, labels = [], []
    for label in ("daisy", "roses", "tulips"):
        hashes += fake_hashes(per_class, label)
        labels += [label] * per_class
    return hashes, labels


def test_split_of_returns_a_split_name() -> None:
    assert {split_of(h, 0.2, 0.2, 0) for h in fake_hashes(200, "x")} == set(SPLITS)


def test_same_hashes_and_seed_give_same_splits() -> None:
    hashes, labels = three_classes()
    first = assign_splits(hashes, labels, 0.2, 0.2, seed=42)
    second = assign_splits(list(hashes), list(labels), 0.2, 0.2, seed=42)
    assert first == second
    assert len(first) == len(hashes)


def test_order_of_input_does_not_matter() -> None:
    hashes, labels = three_classes(100)
    splits = dict(zip(hashes, assign_splits(hashes, labels, 0.2, 0.2, seed=1), strict=True))
    rev = assign_splits(hashes[::-1], labels[::-1], 0.2, 0.2, seed=1)
    assert dict(zip(hashes[::-1], rev, strict=True)) == splits


def test_different_seed_gives_different_assignment() -> None:
    hashes, labels = three_classes()
    a = assign_splits(hashes, labels, 0.2, 0.2, seed=1)
    b = assign_splits(hashes, labels, 0.2, 0.2, seed=2)
    changed = sum(x != y for x, y in zip(a, b, strict=True))
    # independent draws: about 2 * 0.4 * 0.6 = 48% of the photos move
    assert 0.3 * len(a) < changed < 0.7 * len(a)


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.2), (0.15, 0.15), (0.1, 0.3)])
def test_every_class_gets_the_target_fractions(val: float, test: float) -> None:
    hashes, labels = three_classes(400)
    splits = assign_splits(hashes, labels, val, test, seed=42)
    counts = split_counts(labels, splits)
    for label in ("daisy", "roses", "tulips"):
        total = sum(counts[s][label] for s in SPLITS)
        assert total == 400
        assert abs(counts["val"][label] / total - val) <= 0.06, (label, counts)
        assert abs(counts["test"][label] / total - test) <= 0.06, (label, counts)
        assert abs(counts["train"][label] / total - (1 - val - test)) <= 0.08, (label, counts)


def test_adding_photos_never_moves_existing_ones() -> None:
    hashes, labels = three_classes(200)
    before = assign_splits(hashes, labels, 0.2, 0.2, seed=3)
    more_hashes = hashes + fake_hashes(300, "new")
    more_labels = labels + ["daisy"] * 100 + ["roses"] * 100 + ["lilies"] * 100
    after = assign_splits(more_hashes, more_labels, 0.2, 0.2, seed=3)
    assert after[: len(before)] == before


def test_duplicates_always_share_a_split() -> None:
    hashes, labels = three_classes(100)
    dupes = hashes[:50]
    # the same bytes filed under another name, even another class
    all_hashes = hashes + dupes
    all_labels = labels + ["roses"] * 50
    splits = assign_splits(all_hashes, all_labels, 0.2, 0.2, seed=5)
    by_hash: dict[str, set[str]] = {}
    for h, s in zip(all_hashes, splits, strict=True):
        by_hash.setdefault(h, set()).add(s)
    assert all(len(s) == 1 for s in by_hash.values())
    for h in dupes:
        assert split_of(h, 0.2, 0.2, 5) == splits[hashes.index(h)]


def test_tiny_class_is_an_error_naming_the_class() -> None:
    hashes, labels = three_classes(100)
    hashes += fake_hashes(2, "tiny")
    labels += ["sunflowers"] * 2
    with pytest.raises(DataError, match="sunflowers") as info:
        assign_splits(hashes, labels, 0.2, 0.2, seed=0)
    assert "2 images" in str(info.value)


def test_split_counts_counts_per_split_and_class() -> None:
    labels = ["a", "a", "b", "b", "b"]
    splits = ["train", "val", "train", "test", "train"]
    assert split_counts(labels, splits) == {
        "train": {"a": 1, "b": 2},
        "val": {"a": 1, "b": 0},
        "test": {"a": 0, "b": 1},
    }


def test_prepare_twice_gives_identical_manifest(photos: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    dataset.prepare(photos, first, resize=36, val=0.2, test=0.2, seed=42, workers=2)
    dataset.prepare(photos, second, resize=36, val=0.2, test=0.2, seed=42, workers=1)
    manifest = (first / "manifest.csv").read_bytes()
    assert manifest == (second / "manifest.csv").read_bytes()
    assert (first / "images.npy").read_bytes() == (second / "images.npy").read_bytes()
    lines = manifest.decode().splitlines()
    assert lines[0] == "relpath,label,split,sha256,width,height"
    assert len(lines) == 1 + 3 * 24
    splits = Counter(line.split(",")[2] for line in lines[1:])
    assert set(splits) == set(SPLITS)
