"""A stratified train/val/test split that is deterministic and stable.

Each photo's split is a pure function of its content hash and the seed, drawn per class from the
same fractions (TensorFlow's image-retraining recipe): adding photos never moves existing ones,
and duplicate photos (same bytes under two names) always land in the same split.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from .errors import DataError

SPLITS = ("train", "val", "test")


def split_of(content_sha256: str, val: float, test: float, seed: int) -> str:
    """The split of one photo: a uniform draw from its hash, cut at the fractions."""
    digest = hashlib.sha256(f"{seed}:{content_sha256}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def assign_splits(
    hashes: Sequence[str], labels: Sequence[str], val: float, test: float, seed: int
) -> list[str]:
    """Splits for all photos; a class missing from any split is an error naming the class."""
    splits = [split_of(h, val, test, seed) for h in hashes]
    counts = Counter(zip(labels, splits, strict=True))
    for label in sorted(set(labels)):
        missing = [s for s in SPLITS if counts[label, s] == 0]
        if missing:
            n = sum(counts[label, s] for s in SPLITS)
            raise DataError(
                f"class {label!r} has {n} images, too few to appear in every split "
                f"(none in {', '.join(missing)}): add photos or raise split.val/split.test"
            )
    return splits


def split_counts(labels: Sequence[str], splits: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per-split, per-class image counts."""
    counts = Counter(zip(splits, labels, strict=True))
    classes = sorted(set(labels))
    return {s: {c: counts[s, c] for c in classes} for s in SPLITS}
