"""The prepared dataset as the later stages read it.

The prepared folder holds `manifest.csv` (relpath, label, split, sha256, width, height),
`images.npy` (the decoded uint8 cache, one `resize` x `resize` RGB square per manifest row, in
the same order), `dataset.json` (classes and sizes) and `report.json` (skipped files and why).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowerpipe.data.cache import ImageCache

MANIFEST_FIELDS = ("relpath", "label", "split", "sha256", "width", "height")


@dataclass(frozen=True)
class Prepared:
    """The prepared dataset as the later stages read it."""

    classes: list[str]
    rows: list[dict[str, str]]
    images: ImageCache  # N x resize x resize x 3 uint8, read from images.npy when indexed
    labels: np.ndarray  # N int64 class indices
    splits: np.ndarray  # N str
    fingerprint: str  # sha256 of manifest.csv: which photos, with which labels, in which split

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)


def load_prepared(folder: str | os.PathLike[str]) -> Prepared:
    """Read the prepared dataset; the image cache is read a batch at a time, when indexed."""
    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    manifest = (folder / "manifest.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO(manifest.decode("utf-8"), newline="")))
    index = {c: i for i, c in enumerate(meta["classes"])}
    return Prepared(
        classes=meta["classes"],
        rows=rows,
        images=ImageCache(folder / "images.npy"),
        labels=np.array([index[r["label"]] for r in rows], dtype=np.int64),
        splits=np.array([r["split"] for r in rows]),
        fingerprint=hashlib.sha256(manifest).hexdigest(),
    )
