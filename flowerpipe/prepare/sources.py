"""Obtain the photos named by `data.source`: an http(s) URL, a local archive, or a local folder."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tqdm.auto import tqdm

from flowerpipe.core.atomic import atomic_dir, write_json
from flowerpipe.core.console import log
from flowerpipe.core.errors import DataError
from flowerpipe.core.files import file_digest, is_hidden

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
MAX_MEMBER_BYTES = 2**30  # one photo over 1 GiB is not a photo
MAX_ARCHIVE_BYTES = 64 * 2**30
CHUNK = 1 << 20


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def obtain(source: str, raw_dir: Path, sha256: str | None = None, retries: int = 3) -> Path:
    """Return the folder that holds the class sub-folders for `source`.

    A URL is downloaded into `raw_dir` (kept across runs: a second call does not download again)
    and extracted there; a local archive is extracted into `raw_dir`; a folder is read in place.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    if is_url(source):
        archive = download(source, raw_dir, sha256, retries)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data.source {source!r} does not exist (cwd: {Path.cwd()})")
        if path.is_dir():
            write_json(raw_dir / "source.json", {"source": source})
            return find_class_root(path)
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataError(f"data.source {source!r}: not a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive")
        if sha256:
            verify_sha256(path, sha256)
        archive = path
    target = raw_dir / _archive_stem(archive.name)
    extract(archive, target)
    write_json(raw_dir / "source.json", {"source": source, "archive": archive.name})
    return find_class_root(target)


def download(url: str, raw_dir: Path, sha256: str | None, retries: int = 3) -> Path:
    """Download `url` into `raw_dir` with a progress bar, resuming a partial file where possible."""
    name = PurePosixPath(urlparse(url).path).name or "data.tgz"
    dest = raw_dir / name
    record = raw_dir / "download.json"
    if dest.exists() and record.exists() and json.loads(record.read_text()).get("url") == url:
        if sha256:
            verify_sha256(dest, sha256)
        log.info("using %s downloaded earlier from %s", dest, url)
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch(url, part)
            break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if attempt == retries or _is_offline(reason):
                raise DataError(
                    f"cannot download data.source {url} ({reason}). Without network, point "
                    "data.source at a local copy: a folder of class sub-folders or a "
                    ".tgz/.zip archive, e.g. `dvc exp run -S data.source=/path/to/flower_photos`"
                ) from None
            log.warning("download failed (%s); retry %d of %d", reason, attempt, retries - 1)
            time.sleep(2**attempt)
    if sha256:
        try:
            verify_sha256(part, sha256)
        except DataError:
            part.unlink()
            raise
    os.replace(part, dest)
    write_json(record, {"url": url, "sha256": file_digest(dest)})
    return dest


def _fetch(url: str, part: Path) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        part.unlink()  # the partial file is already whole or stale: start over
        return _fetch(url, part)
    with response:
        resumed = response.status == 206
        total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
        mode = "ab" if resumed else "wb"
        with (
            open(part, mode) as out,
            tqdm(
                total=total or None,
                initial=have if resumed else 0,
                unit="B",
                unit_scale=True,
                desc=f"download {part.name[:-5]}",
                disable=None,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _is_offline(reason: object) -> bool:
    """Name resolution and refused connections will not heal by retrying."""
    text = str(reason).lower()
    return any(s in text for s in ("name or service", "resolution", "nodename", "refused", "unreachable"))


def verify_sha256(path: Path, expected: str) -> None:
    actual = file_digest(path)
    if actual != expected.lower():
        raise DataError(f"{path}: sha256 is {actual}, but data.sha256 expects {expected}")


def _archive_stem(name: str) -> str:
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract(archive: Path, target: Path) -> None:
    """Extract a tar or zip archive into `target`, refusing any member that could escape it.

    Extraction goes to a temporary folder that replaces `target` only when it succeeded.
    """
    with atomic_dir(target) as tmp:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{archive}: not a readable archive ({exc})") from None


def _refused(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"{archive}: member {member!r} {why}; refusing to extract")


def _safe_name(archive: Path, name: str) -> PurePosixPath:
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _refused(archive, name, "has an absolute path")
    if ".." in member.parts:
        raise _refused(archive, name, "leaves the target folder ('..')")
    return member


# tarfile's data filter (PEP 706) refuses links that leave the target, devices and fifos; the
# checks it lacks are flowerpipe's: absolute names (it strips their "/"), sizes, and all of zip.
FILTER_REASONS = {
    tarfile.AbsoluteLinkError: "links outside the target folder",
    tarfile.LinkOutsideDestinationError: "links outside the target folder",
    tarfile.OutsideDestinationError: "leaves the target folder",
    tarfile.AbsolutePathError: "has an absolute path",
    tarfile.SpecialFileError: "is a device or fifo",
}


def _extract_tar(archive: Path, target: Path) -> None:
    total = 0
    with tarfile.open(archive) as tar:
        for member in tar:
            _safe_name(archive, member.name)
            try:
                member = tarfile.data_filter(member, str(target))
            except tarfile.FilterError as exc:
                reason = FILTER_REASONS.get(type(exc), "is refused")
                raise _refused(archive, exc.tarinfo.name, f"{reason} ({exc})") from None
            if member.issym() or member.islnk():
                continue  # links inside the archive are not photos: skip them
            total += member.size
            if member.size > MAX_MEMBER_BYTES or total > MAX_ARCHIVE_BYTES:
                raise _refused(archive, member.name, f"is too large ({member.size} bytes)")
            tar.extract(member, target, filter="data")


def _extract_zip(archive: Path, target: Path) -> None:
    total = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _safe_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _refused(archive, info.filename, "is a symbolic link")
            total += info.file_size
            too_big = info.file_size > MAX_MEMBER_BYTES or total > MAX_ARCHIVE_BYTES
            if too_big or (info.compress_size and info.file_size / info.compress_size > 1000):
                raise _refused(archive, info.filename, f"is too large ({info.file_size} bytes)")
            dest = target / rel
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)


def find_class_root(folder: Path) -> Path:
    """The folder whose sub-folders are the classes: descends through single wrapper folders
    (flower_photos.tgz holds flower_photos/ with the classes and a LICENSE.txt)."""
    current = folder
    while True:
        subdirs = [p for p in current.iterdir() if p.is_dir() and not is_hidden(p.name)]
        if len(subdirs) != 1:
            return current
        only = subdirs[0]
        if not any(p.is_dir() and not is_hidden(p.name) for p in only.iterdir()):
            return current  # a single class: let validation say so
        current = only
