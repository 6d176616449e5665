"""Find, validate and decode the photos once: the prepared dataset that `data.prepared` reads.

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
import shutil
import stat
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from flowerpipe.core.atomic import atomic_dir
from flowerpipe.core.console import log, progress
from flowerpipe.core.errors import DataError
from flowerpipe.core.files import Skipped, is_hidden, unreadable, walk_images
from flowerpipe.data.cache import ImageCache
from flowerpipe.data.prepared import MANIFEST_FIELDS
from flowerpipe.prepare.duplicates import dhash, duplicate_groups
from flowerpipe.prepare.exclude import exclude_rows, move_up
from flowerpipe.prepare.split import assign_splits, split_counts
from flowerpipe.runtime import preprocess

if TYPE_CHECKING:  # a type only: the config is built above this package
    from flowerpipe.config import SplitConfig

ORIENTATION_TAG = 0x0112
DISK_MARGIN = 1_000_000_000  # bytes left free beside the cache, for the manifest and everything else


def scan(root: Path) -> tuple[list[str], list[tuple[str, str]], list[Skipped]]:
    """Classes (sorted sub-folder names), candidate (relpath, label) files, and skipped files and
    folders. A folder that cannot be listed is skipped, and links to folders are not followed
    (a class folder may itself be a link)."""
    classes, files, skipped = [], [], []
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise DataError(f"{root}: {unreadable(root, exc)}") from None
    for entry in entries:
        rel = entry.name
        if is_hidden(entry.name):
            skipped.append(Skipped(rel + "/", "hidden folder") if entry.is_dir() else Skipped(rel, "hidden"))
        elif not entry.is_dir():
            skipped.append(Skipped(rel, "not inside a class folder"))
        else:
            try:
                os.listdir(entry)
            except OSError as exc:
                skipped.append(Skipped(rel + "/", f"folder {unreadable(entry, exc)}"))
                continue
            classes.append(entry.name)
            found, passed_over = walk_images(entry, root)
            files += [(relpath, entry.name) for relpath in found]
            skipped += passed_over
    return classes, files, skipped


def read_photo(path: Path, resize: int) -> tuple[str, np.ndarray, int, int, int]:
    """(sha256, uint8 square, width, height, difference hash) of one photo; raises ValueError with
    the reason. The file is read once, so it cannot change between its hash and its pixels."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block or never end
            raise ValueError("not a regular file")
        data = path.read_bytes()
    except OSError as exc:  # gone since the scan, a broken link or loop, permission denied
        raise ValueError(unreadable(path, exc)) from None
    if not data:
        raise ValueError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if probe.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8):  # stored sideways
                width, height = height, width
        square = preprocess.fit_square(preprocess.load_rgb(io.BytesIO(data), draft_size=resize), resize)
    except Exception as exc:  # Pillow raises many kinds for a broken or foreign file
        raise ValueError(preprocess.image_failure(exc)) from None
    return hashlib.sha256(data).hexdigest(), square, width, height, dhash(square)


def _read_or_reason(args: tuple[Path, int]) -> tuple[str, np.ndarray, int, int, int] | str:
    try:
        return read_photo(*args)
    except ValueError as exc:
        return str(exc)


Row = dict[str, Any]  # a manifest line: relpath, label, sha256, width, height, and split once assigned


@dataclass(frozen=True)
class Duplicates:
    """Each row's duplicate group, and the relpaths of each group of several photos: all of them
    (kept in one split), and those filed under more than one class (the label conflicts)."""

    groups: list[int]
    together: list[list[str]]
    conflicts: list[list[str]]


def prepare(
    root: Path,
    out_dir: Path,
    split: SplitConfig,
    *,
    resize: int,
    label_conflicts: str = "keep",
    exclude: Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Validate, decode and split (as `split` says) the photos under `root` into `out_dir`, each
    decoded to a `resize` square; returns the metrics.

    Photos with the same bytes, and those whose difference hashes differ in at most
    `split.near_duplicates` bits (None: exact duplicates only), form a group that the split keeps
    together. A group whose photos are filed under several classes is a label conflict, listed in
    the report; `label_conflicts` says whether its photos are kept ("keep") or left out ("drop").
    The photos the file `exclude` lists are left out once the split is drawn (see `exclude`)."""
    classes, files, skipped = find_photos(root)
    with atomic_dir(out_dir) as tmp:
        _check_free_disk(out_dir, len(files) * resize * resize * 3)
        # each square goes to disk as its worker returns it: no list of every decoded photo
        images = ImageCache.create(tmp / "images.npy", len(files), resize)
        rows, hashes, failed = decode_photos(root, files, images, resize, workers)
        skipped += failed
        duplicates = group_duplicates(rows, hashes, split.near_duplicates)
        if label_conflicts == "drop":
            rows, duplicates, left_out = drop_conflicts(rows, duplicates, images)
            skipped += left_out
        _check_every_class(root, classes, rows)
        rows = split_rows(rows, duplicates.groups, split)
        rows, excluded = exclude_rows(rows, images, exclude) if exclude else (rows, [])
        images.close()
        _check_every_class(root, classes, rows)
        _log_findings(skipped, duplicates.conflicts)
        write_prepared(tmp, rows, classes, skipped, duplicates, resize=resize, root=root, excluded=excluded)
    return dataset_metrics(rows, skipped) | {
        "duplicate_groups": len(duplicates.together),
        "label_conflicts": len(duplicates.conflicts),
        "excluded": len(excluded),
        "excluded_test": sum(row["split"] == "test" for row in excluded),
    }


def find_photos(root: Path) -> tuple[list[str], list[tuple[str, str]], list[Skipped]]:
    """What `scan` finds under `root`; raises DataError unless it holds two class folders or more."""
    classes, files, skipped = scan(root)
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s) {classes}; need at least two")
    return classes, files, skipped


def decode_photos(
    root: Path, files: list[tuple[str, str]], images: ImageCache, resize: int, workers: int | None = None
) -> tuple[list[Row], list[int], list[Skipped]]:
    """Decode `files` ((relpath, label) under `root`) in `workers` processes into the rows of
    `images`, in order; returns their manifest rows and difference hashes, and the files that failed."""
    workers = workers or os.cpu_count() or 1
    jobs = [(root / rel, resize) for rel, _ in files]
    rows: list[Row] = []
    hashes: list[int] = []
    failed: list[Skipped] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = progress(pool.map(_read_or_reason, jobs, chunksize=16), "decode", len(jobs), "img")
        for (relpath, label), result in zip(files, results, strict=True):
            if isinstance(result, str):
                failed.append(Skipped(relpath, result))
                continue
            sha, square, width, height, difference = result
            images[len(rows)] = square
            rows.append({"relpath": relpath, "label": label, "sha256": sha, "width": width, "height": height})
            hashes.append(difference)
    return rows, hashes, failed


def group_duplicates(rows: list[Row], hashes: list[int], near_duplicates: int | None) -> Duplicates:
    """The duplicate groups of `rows` (same bytes, or hashes at most `near_duplicates` bits apart)."""
    groups = duplicate_groups([row["sha256"] for row in rows], hashes, near_duplicates)
    several = _groups_of_several(groups)
    together = [[rows[i]["relpath"] for i in group] for group in several]
    conflicts = [paths for paths, group in zip(together, several, strict=True) if _labels(rows, group) > 1]
    return Duplicates(groups, together, conflicts)


def drop_conflicts(
    rows: list[Row], duplicates: Duplicates, images: ImageCache
) -> tuple[list[Row], Duplicates, list[Skipped]]:
    """`rows` and their groups without the photos of any label conflict, whose cache rows the rows
    after them move up over; and the photos left out. The report still lists their groups."""
    left_out = {p for paths in duplicates.conflicts for p in paths}
    skipped = [Skipped(p, "label conflict, left out (data.label_conflicts)") for p in sorted(left_out)]
    keep = [i for i, row in enumerate(rows) if row["relpath"] not in left_out]
    move_up(images, keep)
    groups = [duplicates.groups[i] for i in keep]
    return [rows[i] for i in keep], replace(duplicates, groups=groups), skipped


def _check_every_class(root: Path, classes: list[str], rows: list[Row]) -> None:
    """Raise DataError naming the first class that none of `rows` is filed under."""
    kept = {row["label"] for row in rows}
    empty = [c for c in classes if c not in kept]
    if empty:
        raise DataError(f"{root / empty[0]}: class {empty[0]!r} has no readable images")


def split_rows(rows: list[Row], groups: list[int], split: SplitConfig) -> list[Row]:
    """`rows`, each with its split (val, test and seed from `split`); a duplicate group shares one."""
    labels = [row["label"] for row in rows]
    splits = assign_splits([row["sha256"] for row in rows], labels, split.val, split.test, split.seed, groups)
    return [row | {"split": name} for row, name in zip(rows, splits, strict=True)]


def _log_findings(skipped: list[Skipped], conflicts: list[list[str]]) -> None:
    for s in skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    for paths in conflicts:
        log.warning("label conflict: %s are the same photo, or nearly", " and ".join(paths))


def write_prepared(
    folder: Path,
    rows: list[Row],
    classes: list[str],
    skipped: list[Skipped],
    duplicates: Duplicates,
    *,
    resize: int,
    root: Path,
    excluded: Sequence[Row] = (),
) -> None:
    """Cut `folder`'s images.npy to `rows`, and write manifest.csv, dataset.json and report.json
    (with the photos `excluded` by data.exclude: relpath, label, split)."""
    _keep_rows(folder / "images.npy", len(rows))
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"classes": classes, "resize_size": resize, "source_root": str(root)}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    report = {
        "source_root": str(root),
        "skipped": [s.__dict__ for s in skipped],
        "duplicate_groups": duplicates.together,  # kept in one split; exact or near duplicates
        "label_conflicts": duplicates.conflicts,
        "excluded": [{k: row[k] for k in ("relpath", "label", "split")} for row in excluded],
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _check_free_disk(out_dir: Path, needed: int) -> None:
    """Refuse to start a cache that the disk of `out_dir` cannot hold: a memory-mapped write to a
    full disk kills the process instead of raising an error."""
    free = shutil.disk_usage(out_dir.parent).free
    if needed + DISK_MARGIN > free:
        raise DataError(
            f"{out_dir}: the decoded cache needs {needed / 1e9:.1f} GB and "
            f"{DISK_MARGIN / 1e9:.1f} GB to spare; {free / 1e9:.1f} GB are free "
            "(free some space, or lower data.image_size)"
        )


def _keep_rows(path: Path, rows: int) -> None:
    """Cut the .npy array at `path` to its first `rows` rows in place: the header, rewritten as
    np.save writes it (its length unchanged: the shape only loses digits), and the data after them."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        data_start = f.tell()
        header = io.BytesIO()
        described = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order}
        np.lib.format.write_array_header_1_0(header, described | {"shape": (rows, *shape[1:])})
        if version != (1, 0) or len(header.getvalue()) != data_start:
            raise RuntimeError(f"{path}: unexpected .npy header")
        f.seek(0)
        f.write(header.getvalue())
        f.truncate(data_start + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def _groups_of_several(groups: list[int]) -> list[list[int]]:
    """The rows of each group of more than one photo, in manifest order."""
    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    return [rows for rows in members.values() if len(rows) > 1]


def _labels(rows: list[dict[str, Any]], group: list[int]) -> int:
    """How many classes the photos of `group` are filed under."""
    return len({rows[i]["label"] for i in group})


def dataset_metrics(rows: list[dict[str, Any]], skipped: list[Skipped]) -> dict[str, Any]:
    """Counts per split and class, skipped counts by reason, and image size statistics."""
    reasons: dict[str, int] = {}
    for s in skipped:
        key = s.reason.split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    widths = [int(r["width"]) for r in rows]
    heights = [int(r["height"]) for r in rows]
    return {
        "images": len(rows),
        "skipped": len(skipped),
        "skipped_by_reason": reasons,
        "counts": split_counts([r["label"] for r in rows], [r["split"] for r in rows]),
        "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
        "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
    }
