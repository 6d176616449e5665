"""Write files and folders atomically, so a failed run never leaves a half-written output."""

from __future__ import annotations

import csv
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flowerpipe.core.errors import DiskFull

# Free bytes under which a write that failed is taken to have filled its disk: torch.save says only
# "unexpected pos" (a RuntimeError), np.save "requested and written" (an OSError without errno).
NEARLY_FULL = 2**20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clear_leftovers(path: Path) -> None:
    """Remove the temporary files and folders that a killed write of `path` left beside it (a
    SIGKILL runs no cleanup); .gitignore ignores them meanwhile."""
    for left in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    with _removed_after(path, tmp_path, lambda: tmp_path.unlink(missing_ok=True)):
        yield tmp_path
        tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes it private; give it a new file's mode
        os.replace(tmp_path, path)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    with _removed_after(path, tmp, lambda: shutil.rmtree(tmp, ignore_errors=True)):
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


@contextmanager
def _removed_after(path: Path, tmp: Path, remove: Callable[[], None]) -> Iterator[None]:
    """Run the write of `path` into `tmp`, then `remove` what is left of `tmp` whatever happened;
    a write that filled the disk raises DiskFull, once the space it took is free again."""
    written = None
    try:
        yield
    except Exception as exc:
        if not out_of_space(exc, path.parent):
            raise
        written = _size(tmp)
        _empty(tmp)  # a writer that still holds a file open (torch.save's) would keep its space
    finally:
        remove()
    if written is not None:
        raise disk_full(path, written)


def out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether `exc`, raised by a write in `folder`, means that its disk is full."""
    raised = (exc, exc.__cause__, exc.__context__)
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in raised):
        return True
    return isinstance(exc, RuntimeError | OSError) and free_bytes(folder) < NEARLY_FULL


def free_bytes(folder: Path) -> int:
    """The bytes free on the disk of `folder`, or of its nearest folder that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_full(path: str | os.PathLike[str], written: int | None = None) -> DiskFull:
    """The one-line error for a write of `path` that filled its disk after `written` bytes."""
    path = Path(path)
    needs = "" if written is None else f"; it needs more than the {written / 1e6:.1f} MB written, now removed"
    free = free_bytes(path.parent) / 1e6
    return DiskFull(f"{path}: the disk is full ({free:.1f} MB free{needs}): free some space and run again")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [f for f in path.rglob("*") if f.is_file() and not f.is_symlink()]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def _empty(path: Path) -> None:
    for f in _files(path):
        os.truncate(f, 0)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_csv(
    path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None
) -> None:
    """Write dict rows as CSV, atomically, with the header `fields` (by default the first row's
    keys: none when there are no rows)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or (rows[0] if rows else [])))
        writer.writeheader()
        writer.writerows(rows)
