"""A stratified train/val/test split that is deterministic, exact per class and nearly stable.

Photos come in groups (one photo; or the same bytes, or near-duplicates, under several names), and
a group is never divided. Per class, its groups are ranked by a draw from their smallest content
hash and the seed; the first go to test and the next to val until each holds its fraction of the
class's photos, rounded to whole photos, and the rest to train. Every split gets at least one group
of a class that has three. Adding k photos to a class (none a near-duplicate of a photo there
already) moves at most k of its existing groups across each of the two cuts, so at most 2k, each
into the neighbouring split; other classes do not move.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence

from flowerpipe.core.errors import DataError
from flowerpipe.prepare.duplicates import duplicate_groups

SPLITS = ("train", "val", "test")


def _draw(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from a group's key and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    hashes: Sequence[str],
    labels: Sequence[str],
    val: float,
    test: float,
    seed: int,
    groups: Sequence[int] | None = None,
) -> list[str]:
    """Splits for all photos, given their content hashes and labels, and the group of each
    (default: photos with the same hash). A group whose photos carry several labels is ranked with
    the class most of them carry (the first by name if tied). A class with fewer than three groups
    is an error naming it."""
    if groups is None:
        groups = duplicate_groups(hashes, [], None)  # the same bytes only: no difference hashes
    members: dict[int, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    ranked: dict[str, list[tuple[float, str, int]]] = defaultdict(list)
    for group, photos in members.items():
        key = min(hashes[i] for i in photos)
        counts = Counter(labels[i] for i in photos)
        home = min(counts, key=lambda label: (-counts[label], label))
        ranked[home].append((_draw(key, seed), key, group))
    split_of_group = {}
    for label in sorted(set(labels)):
        entries = sorted(ranked[label])
        total = sum(len(members[group]) for _, _, group in entries)
        if len(entries) < 3:
            grouped = f" ({len(entries)} after grouping duplicates)" if len(entries) < total else ""
            raise DataError(
                f"class {label!r} has {total} images{grouped}, too few for one in each of train, "
                "val and test: add photos to it or remove its folder"
            )
        test_end, val_end = round(test * total), round((test + val) * total)
        placed = 0  # photos of the class ranked before this group
        for rank, (_, _, group) in enumerate(entries):
            left = len(entries) - rank  # this group and those after it
            if rank == 0 or (placed < test_end and left > 2):
                split = "test"
            elif split == "test" or (placed < val_end and left > 1):  # val: at least the group after test
                split = "val"
            else:
                split = "train"
            split_of_group[group] = split
            placed += len(members[group])
    return [split_of_group[group] for group in groups]


def split_counts(labels: Sequence[str], splits: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per-split, per-class image counts."""
    counts = Counter(zip(splits, labels, strict=True))
    classes = sorted(set(labels))
    return {s: {c: counts[s, c] for c in classes} for s in SPLITS}
