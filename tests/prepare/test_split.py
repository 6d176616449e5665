"""The split: a deterministic, stable, per-class function of each photo's content hash."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import pytest

from flowerpipe.config import SplitConfig
from flowerpipe.core.errors import DataError
from flowerpipe.prepare import scan
from flowerpipe.prepare.split import SPLITS, assign_splits, split_counts


def fake_hashes(n: int, tag: str) -> list[str]:
    return [hashlib.sha256(f"{tag}-{i}".encode()).hexdigest() for i in range(n)]


def three_classes(per_class: int = 400) -> tuple[list[str], list[str]]:
    hashes, labels = [], []
    for label in ("daisy", "roses", "tulips"):
        hashes += fake_hashes(per_class, label)
        labels += [label] * per_class
    return hashes, labels


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
    # independent rankings: a photo keeps its split with chance 0.6^2 + 0.2^2 + 0.2^2 = 44 %
    assert 0.45 * len(a) < changed < 0.65 * len(a)


@pytest.mark.parametrize("per_class", [3, 4, 7, 15, 16, 115, 400])
@pytest.mark.parametrize(("val", "test"), [(0.2, 0.2), (0.15, 0.15), (0.1, 0.3), (0.01, 0.01), (0.45, 0.45)])
def test_every_class_gets_each_split_as_close_to_the_fractions_as_whole_photos_allow(
    per_class: int, val: float, test: float
) -> None:
    hashes, labels = three_classes(per_class)
    for seed in range(5):
        counts = split_counts(labels, assign_splits(hashes, labels, val, test, seed))
        for label in ("daisy", "roses", "tulips"):
            n_test, n_val = counts["test"][label], counts["val"][label]
            assert n_test + n_val + counts["train"][label] == per_class
            # the cuts round test * n and (test + val) * n, moved only to leave one photo each
            assert n_test == min(max(1, round(test * per_class)), per_class - 2), counts
            cut = min(max(n_test + 1, round((test + val) * per_class)), per_class - 1)
            assert n_test + n_val == cut, counts


@pytest.mark.parametrize("added", [1, 2, 5, 40])
def test_adding_photos_moves_few_existing_ones_and_only_next_door(added: int) -> None:
    """Adding k photos to a class moves at most k of its photos across each cut, into the
    neighbouring split, and none of another class."""
    for trial in range(20):
        hashes, labels = three_classes(20 + 7 * trial)
        before = assign_splits(hashes, labels, 0.15, 0.15, seed=trial)
        new = fake_hashes(added, f"new-{trial}")
        after = assign_splits(hashes + new, labels + ["roses"] * added, 0.15, 0.15, seed=trial)
        pairs = zip(before, after[: len(before)], labels, strict=True)
        moved = [(b, a, label) for b, a, label in pairs if b != a]
        assert len(moved) <= 2 * added
        assert {label for _, _, label in moved} <= {"roses"}
        assert all({b, a} in ({"test", "val"}, {"val", "train"}) for b, a, _ in moved)
        assert sum((b, a) in (("test", "val"), ("val", "test")) for b, a, _ in moved) <= added


def test_groups_are_never_divided_and_follow_their_main_class() -> None:
    hashes, labels = three_classes(60)
    rng = random.Random(0)
    groups = [rng.randrange(90) for _ in hashes]  # 90 groups of about 2, across classes
    splits = assign_splits(hashes, labels, 0.2, 0.2, seed=3, groups=groups)
    by_group: dict[int, set[str]] = {}
    for group, split in zip(groups, splits, strict=True):
        by_group.setdefault(group, set()).add(split)
    assert all(len(found) == 1 for found in by_group.values())
    assert set(splits) == set(SPLITS)


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


def test_tiny_class_is_an_error_naming_the_class() -> None:
    hashes, labels = three_classes(100)
    hashes += fake_hashes(2, "tiny")
    labels += ["sunflowers"] * 2
    with pytest.raises(DataError, match="sunflowers") as info:
        assign_splits(hashes, labels, 0.2, 0.2, seed=0)
    assert "2 images" in str(info.value)
    hashes += [hashes[-1]] * 3  # five photos, but two different ones
    labels += ["sunflowers"] * 3
    with pytest.raises(DataError, match=r"'sunflowers' has 5 images \(2 after grouping duplicates\)"):
        assign_splits(hashes, labels, 0.2, 0.2, seed=0)


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
    split = SplitConfig(val=0.2, test=0.2, seed=42)
    scan.prepare(photos, first, split, resize=36, workers=2)
    scan.prepare(photos, second, split, resize=36, workers=1)
    manifest = (first / "manifest.csv").read_bytes()
    assert manifest == (second / "manifest.csv").read_bytes()
    assert (first / "images.npy").read_bytes() == (second / "images.npy").read_bytes()
    lines = manifest.decode().splitlines()
    assert lines[0] == "relpath,label,split,sha256,width,height"
    assert len(lines) == 1 + 3 * 24
    splits = Counter(line.split(",")[2] for line in lines[1:])
    assert set(splits) == set(SPLITS)
