"""Finding the photos in a folder: the one walk that prepare and predict share, and the words for
why a file or folder was passed over (no torch, no numpy: the deploy side uses it too)."""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CHUNK = 1 << 20  # bytes read at a time
QUIET = ("hidden", "hidden folder", "not an image file name")  # passed over without complaint


@dataclass(frozen=True)
class Skipped:
    path: str  # relative to the folder scanned; a folder's ends in "/"
    reason: str


def is_hidden(name: str) -> bool:
    """Hidden files and folders, and the resource folder that macOS adds to zip archives."""
    return name.startswith(".") or name == "__MACOSX"


def unreadable(path: Path, exc: OSError) -> str:
    """Why `path` could not be opened, in words: a broken link, a link loop, permission denied..."""
    if path.is_symlink() and not path.exists() and exc.errno == errno.ENOENT:
        return "broken link"
    return f"cannot be read ({exc.strerror or exc})"


def walk_images(folder: Path, root: Path) -> tuple[list[str], list[Skipped]]:
    """The files under `folder` with an image's name (paths relative to `root`, sorted, folder by
    folder), and what was passed over and why: hidden files and folders, other names, folders that
    cannot be listed, and links to folders, which are not followed. A link that goes nowhere keeps
    its place among the files: reading it says why it fails."""
    files: list[str] = []
    skipped: list[Skipped] = []

    def unlisted(exc: OSError) -> None:
        where = Path(exc.filename)
        skipped.append(Skipped(where.relative_to(root).as_posix() + "/", f"folder {unreadable(where, exc)}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted):
        here = Path(dirpath).relative_to(root)
        for d in sorted(dirnames):
            if is_hidden(d):
                skipped.append(Skipped((here / d).as_posix() + "/", "hidden folder"))
            elif (Path(dirpath) / d).is_symlink():
                skipped.append(Skipped((here / d).as_posix() + "/", "link to a folder, not followed"))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            relpath = (here / name).as_posix()
            if is_hidden(name):
                skipped.append(Skipped(relpath, "hidden"))
            elif Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(Skipped(relpath, "not an image file name"))
            else:
                files.append(relpath)
    return files, skipped


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (md5 is what DVC records for an output)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
