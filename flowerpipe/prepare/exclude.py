"""`data.exclude`: the photos a user has reviewed (say, from the audit stage's list of likely
mislabeled photos) and leaves out. The file holds one relpath per line, as the manifest names
the photo (`roses/123.jpg`); blank lines and lines starting with `#` are skipped. They are left
out after the split is drawn, so every other photo keeps its split; the report lists each with
its split, and leaving out test photos is said in the log (the test score is then on fewer photos
than the split drew)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowerpipe.core.console import log
from flowerpipe.core.errors import DataError
from flowerpipe.data.cache import ImageCache

Row = dict[str, Any]


def read_exclude(path: Path) -> dict[str, int]:
    """Each relpath `path` lists, with its line number."""
    if not path.is_file():
        raise DataError(f"{path}: data.exclude names no such file (an empty file excludes nothing)")
    listed: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        relpath = line.strip()
        if relpath and not relpath.startswith("#"):
            listed.setdefault(relpath, number)
    return listed


def exclude_rows(rows: list[Row], images: ImageCache, path: Path) -> tuple[list[Row], list[Row]]:
    """`rows` without the photos the file at `path` lists, whose cache rows the rows after them
    move up over, and the rows left out; a listed path that is not among `rows` raises DataError."""
    listed = read_exclude(path)
    known = {row["relpath"] for row in rows}
    unknown = [p for p in listed if p not in known]
    if unknown:
        first = unknown[0]
        raise DataError(f"{path}:{listed[first]}: {first} is not among the photos prepared from data.source")
    keep = [i for i, row in enumerate(rows) if row["relpath"] not in listed]
    move_up(images, keep)
    left_out = [row for row in rows if row["relpath"] in listed]
    tested = [row["relpath"] for row in left_out if row["split"] == "test"]
    if tested:
        log.warning("data.exclude leaves out %d test photos: the test score is on the rest only", len(tested))
    return [rows[i] for i in keep], left_out


def move_up(images: ImageCache, keep: list[int]) -> None:
    """Move the cache rows `keep` (ascending) to the front of `images`, in order."""
    for j, i in enumerate(keep):  # forward, so a row moves only onto one already moved
        images[j] = images[i]
