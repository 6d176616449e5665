"""sources.obtain: local folders, local archives, safe extraction, and downloads (from 127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import urllib.error
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.photos import draw_photo, make_photos

from flowerpipe.core.errors import DataError
from flowerpipe.prepare import sources

WRAPPER = "flower_photos"
CLASS_NAMES = ("daisy", "roses")


def jpeg_bytes(label: str, seed: int) -> bytes:
    buf = io.BytesIO()
    draw_photo(label, np.random.default_rng(seed), size=(24, 18)).save(buf, format="JPEG")
    return buf.getvalue()


def archive_members() -> dict[str, bytes]:
    """Like flower_photos.tgz: one wrapper folder with the class folders and a LICENSE.txt."""
    members = {f"{WRAPPER}/LICENSE.txt": b"All images are licensed CC-BY.\n"}
    for label in CLASS_NAMES:
        for i in range(3):
            members[f"{WRAPPER}/{label}/{label}_{i}.jpg"] = jpeg_bytes(
                "daisy" if label == "daisy" else "roses", i
            )
    return members


def _tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tar_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def write_tar(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    mode = "w:gz" if path.name.endswith((".tgz", ".gz")) else "w"
    with tarfile.open(path, mode) as tar:
        _tar_dir(tar, WRAPPER)
        for label in CLASS_NAMES:
            _tar_dir(tar, f"{WRAPPER}/{label}")
        for name, data in members.items():
            _tar_file(tar, name, data)
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{WRAPPER}/", b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_extracted(root: Path, raw: Path, stem: str) -> None:
    assert root == raw / stem / WRAPPER
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == list(CLASS_NAMES)
    for name, data in archive_members().items():
        assert (raw / stem / name).read_bytes() == data


# --- local folders ---------------------------------------------------------------------------------


def test_local_folder_is_read_in_place(photos: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*"))
    raw = tmp_path / "raw"
    assert sources.obtain(str(photos), raw) == photos
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*")) == before
    assert json.loads((raw / "source.json").read_text()) == {"source": str(photos)}
    assert [p.name for p in raw.iterdir()] == ["source.json"]  # nothing copied


def test_local_folder_with_wrapper_finds_class_root(tmp_path: Path) -> None:
    top = tmp_path / "download"
    make_photos(top / "flower_photos", per_class=1)
    (top / "flower_photos" / "LICENSE.txt").write_text("CC-BY")
    (top / ".git").mkdir()  # hidden folders are not a second child
    assert sources.obtain(str(top), tmp_path / "raw") == top / "flower_photos"


def test_find_class_root_stops_at_a_single_class(tmp_path: Path) -> None:
    make_photos(tmp_path / "top" / "only", per_class=1, classes=("daisy",))
    # top/only/daisy/*.jpg: `only` holds one class folder, so top/only is the root to report on
    assert sources.find_class_root(tmp_path / "top") == tmp_path / "top" / "only"


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.source .*does not exist"):
        sources.obtain(str(tmp_path / "nope"), tmp_path / "raw")


def test_file_that_is_not_an_archive_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "photos.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="not a folder or a"):
        sources.obtain(str(path), tmp_path / "raw")


def test_corrupt_archive_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "photos.tgz"
    path.write_bytes(b"\x1f\x8b\x08 this is not gzip data" * 10)
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="not a readable archive"):
        sources.obtain(str(path), raw)
    assert list(raw.iterdir()) == []


# --- local archives --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem"),
    [("flower_photos.tgz", "flower_photos"), ("photos.tar.gz", "photos"), ("photos.tar", "photos")],
)
def test_tar_archive_is_extracted(tmp_path: Path, name: str, stem: str) -> None:
    archive = write_tar(tmp_path / name, archive_members())
    raw = tmp_path / "raw"
    root = sources.obtain(str(archive), raw)
    check_extracted(root, raw, stem)
    assert json.loads((raw / "source.json").read_text())["archive"] == name
    assert archive.exists()


def test_zip_archive_is_extracted(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "flower_photos.zip", archive_members())
    raw = tmp_path / "raw"
    root = sources.obtain(str(archive), raw)
    check_extracted(root, raw, "flower_photos")


def test_extracting_again_replaces_the_old_folder(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "flower_photos.tgz", archive_members())
    raw = tmp_path / "raw"
    sources.obtain(str(archive), raw)
    stale = raw / "flower_photos" / WRAPPER / "daisy" / "stale.jpg"
    stale.write_bytes(b"old")
    root = sources.obtain(str(archive), raw)
    assert not stale.exists()
    check_extracted(root, raw, "flower_photos")


def test_sha256_of_local_archive_is_checked(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "flower_photos.tgz", archive_members())
    raw = tmp_path / "raw"
    good = sha256_of(archive)
    assert sources.obtain(str(archive), raw, sha256=good.upper()) == raw / "flower_photos" / WRAPPER

    bad_raw = tmp_path / "raw2"
    wrong = "0" * 64
    with pytest.raises(DataError, match=r"data\.sha256") as info:
        sources.obtain(str(archive), bad_raw, sha256=wrong)
    assert good in str(info.value) and wrong in str(info.value)
    assert list(bad_raw.iterdir()) == []


def _info(name: str, type_: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info


def _regular(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 4
    return info


BAD_TAR_MEMBERS = {
    "absolute path": (_regular("/tmp/flowerpipe-evil.jpg"), "absolute path"),
    "dot-dot": (_regular(f"{WRAPPER}/../../evil.jpg"), "'..'"),
    "dot-dot at start": (_regular("../evil.jpg"), "'..'"),
    "symlink outside": (
        _info(f"{WRAPPER}/daisy/evil.jpg", tarfile.SYMTYPE, "../../../etc/passwd"),  # 3 up from daisy/
        "links outside",
    ),
    "absolute symlink": (_info(f"{WRAPPER}/daisy/evil.jpg", tarfile.SYMTYPE, "/etc/passwd"), "links outside"),
    "hardlink outside": (_info(f"{WRAPPER}/daisy/evil.jpg", tarfile.LNKTYPE, "../evil.jpg"), "links outside"),
    "absolute hardlink": (
        _info(f"{WRAPPER}/daisy/evil.jpg", tarfile.LNKTYPE, "/etc/passwd"),
        "links outside",
    ),
    "char device": (_info(f"{WRAPPER}/daisy/evil.jpg", tarfile.CHRTYPE), "device or fifo"),
    "block device": (_info(f"{WRAPPER}/daisy/evil.jpg", tarfile.BLKTYPE), "device or fifo"),
    "fifo": (_info(f"{WRAPPER}/daisy/evil.jpg", tarfile.FIFOTYPE), "device or fifo"),
}


@pytest.mark.parametrize("case", sorted(BAD_TAR_MEMBERS))
def test_unsafe_tar_member_is_refused(tmp_path: Path, case: str) -> None:
    member, why = BAD_TAR_MEMBERS[case]
    (tmp_path / "archives").mkdir()
    archive = write_tar(tmp_path / "archives" / "flower_photos.tgz", archive_members(), extra=[member])
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="refusing to extract") as info:
        sources.obtain(str(archive), raw)
    message = str(info.value)
    assert repr(member.name) in message
    assert why in message
    assert list(raw.iterdir()) == []  # no target folder, no temporary folder, no source.json
    assert not [p for p in tmp_path.rglob("evil*")]  # nothing escaped either


def test_tar_links_that_stay_inside_are_skipped(tmp_path: Path) -> None:
    """'..' in a link is no escape while the target stays inside (tarfile's data filter decides)."""
    link = _info(f"{WRAPPER}/daisy/inner.jpg", tarfile.SYMTYPE, "../roses/roses_0.jpg")
    archive = write_tar(tmp_path / "flower_photos.tgz", archive_members(), extra=[link])
    root = sources.obtain(str(archive), tmp_path / "raw")
    assert sorted(p.name for p in (root / "daisy").iterdir()) == ["daisy_0.jpg", "daisy_1.jpg", "daisy_2.jpg"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (f"{WRAPPER}/../../evil.jpg", "'..'"),
        ("../evil.jpg", "'..'"),
        ("/tmp/flowerpipe-evil.jpg", "absolute path"),
        ("C:/evil.jpg", "absolute path"),
    ],
)
def test_unsafe_zip_member_is_refused(tmp_path: Path, name: str, why: str) -> None:
    members = archive_members()
    members[name] = b"evil"
    archive = tmp_path / "archives" / "flower_photos.zip"
    archive.parent.mkdir()
    write_zip(archive, members)
    with zipfile.ZipFile(archive) as zf:
        assert name in zf.namelist()  # the test really builds the hostile member
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="refusing to extract") as info:
        sources.obtain(str(archive), raw)
    assert repr(name) in str(info.value)
    assert why in str(info.value)
    assert list(raw.iterdir()) == []
    assert not [p for p in tmp_path.rglob("evil*")]
    assert not Path("/tmp/flowerpipe-evil.jpg").exists()


def test_absurdly_large_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 1000)
    members = archive_members()
    members[f"{WRAPPER}/daisy/huge.jpg"] = b"\0" * 5000
    raw = tmp_path / "raw"
    for archive in (tmp_path / "a.tgz", tmp_path / "a.zip"):
        (write_zip if archive.suffix == ".zip" else write_tar)(archive, members)
        with pytest.raises(DataError, match=r"'flower_photos/daisy/huge.jpg' is too large \(5000 bytes\)"):
            sources.obtain(str(archive), raw)
        assert list(raw.iterdir()) == []


def test_zip_bomb_ratio_is_refused(tmp_path: Path) -> None:
    members = archive_members()
    members[f"{WRAPPER}/daisy/bomb.jpg"] = b"\0" * 2_000_000  # deflates over 1000:1
    write_zip(tmp_path / "a.zip", members)
    with pytest.raises(DataError, match=r"bomb\.jpg' is too large"):
        sources.obtain(str(tmp_path / "a.zip"), tmp_path / "raw")


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "flower_photos.zip"
    write_zip(archive, archive_members())
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo(f"{WRAPPER}/daisy/link.jpg")
        info.external_attr = (0o120777 << 16) | 0x20
        zf.writestr(info, "../../etc/passwd")
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="symbolic link"):
        sources.obtain(str(archive), raw)
    assert list(raw.iterdir()) == []


def test_failed_extraction_keeps_the_earlier_good_one(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (tmp_path / "good").mkdir()
    good = write_tar(tmp_path / "good" / "flower_photos.tgz", archive_members())
    sources.obtain(str(good), raw)
    bad = write_tar(tmp_path / "flower_photos.tgz", archive_members(), extra=[_regular("../evil.jpg")])
    with pytest.raises(DataError):
        sources.obtain(str(bad), raw)
    check_extracted(raw / "flower_photos" / WRAPPER, raw, "flower_photos")
    assert sorted(p.name for p in raw.iterdir()) == ["flower_photos", "source.json"]


# --- URLs ------------------------------------------------------------------------------------------


def test_offline_url_says_to_use_a_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    monkeypatch.setattr(sources.time, "sleep", lambda s: pytest.fail("must not retry when offline"))
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as info:
        sources.obtain("https://example.invalid/flower_photos.tgz", raw)
    message = str(info.value)
    assert "data.source" in message
    assert "local copy" in message
    assert "Name or service not known" in message
    assert "\n" not in message
    assert len(calls) == 1
    assert list(raw.iterdir()) == []


class _Server:
    """Serves `files` on 127.0.0.1; records (path, Range header) of every GET."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ranges = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                wanted = self.headers.get("Range")
                server.requests.append((self.path, wanted))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if wanted and server.ranges:
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):  # as real servers answer a range past the end
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(5)


def test_url_is_downloaded_once(server: _Server, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "flower_photos.tgz", archive_members())
    server.files["/data/flower_photos.tgz"] = archive.read_bytes()
    url = server.url("/data/flower_photos.tgz")
    raw = tmp_path / "raw"

    root = sources.obtain(url, raw)
    check_extracted(root, raw, "flower_photos")
    assert len(server.requests) == 1
    assert (raw / "flower_photos.tgz").read_bytes() == archive.read_bytes()
    assert not (raw / "flower_photos.tgz.part").exists()
    record = json.loads((raw / "download.json").read_text())
    assert record == {"url": url, "sha256": sha256_of(archive)}
    assert json.loads((raw / "source.json").read_text())["source"] == url

    again = sources.obtain(url, raw, sha256=sha256_of(archive))
    assert again == root
    assert len(server.requests) == 1  # not downloaded again
    check_extracted(again, raw, "flower_photos")


def test_download_with_wrong_sha256_is_refused(server: _Server, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "flower_photos.tgz", archive_members())
    server.files["/flower_photos.tgz"] = archive.read_bytes()
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match=r"data\.sha256"):
        sources.obtain(server.url("/flower_photos.tgz"), raw, sha256="f" * 64)
    assert list(raw.iterdir()) == []  # neither the archive nor its .part stays
    root = sources.obtain(server.url("/flower_photos.tgz"), raw, sha256=sha256_of(archive))
    check_extracted(root, raw, "flower_photos")


def serve_with_leftover_part(
    server: _Server, tmp_path: Path, leftover: Callable[[bytes], bytes], ranges: bool
) -> tuple[bytes, Path]:
    """Serve flower_photos.tgz and leave `leftover(archive bytes)` as its .part in a raw folder."""
    data = write_tar(tmp_path / "flower_photos.tgz", archive_members()).read_bytes()
    server.files["/flower_photos.tgz"] = data
    server.ranges = ranges
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "flower_photos.tgz.part").write_bytes(leftover(data))
    return data, raw


def test_partial_download_is_resumed(server: _Server, tmp_path: Path) -> None:
    data, raw = serve_with_leftover_part(server, tmp_path, lambda d: d[: len(d) // 2], ranges=True)
    root = sources.obtain(server.url("/flower_photos.tgz"), raw, sha256=hashlib.sha256(data).hexdigest())
    assert server.requests == [("/flower_photos.tgz", f"bytes={len(data) // 2}-")]
    assert (raw / "flower_photos.tgz").read_bytes() == data
    check_extracted(root, raw, "flower_photos")


def test_server_ignoring_range_restarts_the_file(server: _Server, tmp_path: Path) -> None:
    data, raw = serve_with_leftover_part(server, tmp_path, lambda d: b"garbage from an older attempt", False)
    sources.obtain(server.url("/flower_photos.tgz"), raw)
    assert (raw / "flower_photos.tgz").read_bytes() == data


def test_missing_url_fails_after_retries(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(sources.time, "sleep", sleeps.append)
    with pytest.raises(DataError, match=r"cannot download data\.source"):
        sources.obtain(server.url("/nothing.tgz"), tmp_path / "raw", retries=3)
    assert len(server.requests) == 3
    assert len(sleeps) == 2


def test_complete_leftover_part_file_does_not_block_the_download(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    # a run killed after the last byte arrived but before the .part was renamed
    _, raw = serve_with_leftover_part(server, tmp_path, lambda d: d, ranges=True)
    root = sources.obtain(server.url("/flower_photos.tgz"), raw)
    check_extracted(root, raw, "flower_photos")
