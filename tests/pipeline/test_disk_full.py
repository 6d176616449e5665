"""A disk that fills during a write: one line naming the path and the space, the partial output
removed and the old one kept. Each case writes to a real tmpfs that is too small (mounted as root;
CI runs as root)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import REPO
from helpers.photos import make_photos
from helpers.recipes import SMALL
from helpers.repo import DvcRepo

from flowerpipe.core.atomic import atomic_path, write_csv, write_json
from flowerpipe.core.errors import DiskFull
from flowerpipe.prepare.sources import extract

MB = 10**6


@contextlib.contextmanager
def tmpfs(folder: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of `megabytes` mounted at `folder` while the block runs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # a failed writer may hold a file


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, holding a 1 MB file from an earlier run (`old.bin`)."""
    with tmpfs(tmp_path / "disk", 4) as disk:
        (disk / "old.bin").write_bytes(b"o" * MB)
        yield disk


def _free(disk: Path) -> int:
    return shutil.disk_usage(disk).free


def _onnx_of(megabytes: int) -> onnx.ModelProto:
    weights = onnx.numpy_helper.from_array(np.ones(megabytes * MB // 4, np.float32), "w")
    graph = onnx.helper.make_graph([], "big", [], [], [weights])
    return onnx.helper.make_model(graph)


def _tar_of(megabytes: int, folder: Path) -> Path:
    archive = folder / "photos.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("daisy/a.jpg", "rose/b.jpg"):
            data = np.random.default_rng(0).bytes(megabytes * MB // 2)
            info = tarfile.TarInfo(f"flower_photos/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


WRITES: dict[str, Callable[[Path], None]] = {
    "torch.save": lambda path: _atomic(path, lambda tmp: torch.save({"w": torch.ones(2 * MB)}, tmp)),
    "onnx.save_model": lambda path: _atomic(path, lambda tmp: onnx.save_model(_onnx_of(8), str(tmp))),
    "np.save": lambda path: _atomic(path, _np_save),
    "write_json": lambda path: write_json(path, ["x" * 1000] * 5000),
    "write_csv": lambda path: write_csv(path, [{"relpath": "x" * 1000}] * 5000),
}


def _np_save(path: Path) -> None:
    with open(path, "wb") as f:  # a path would get .npy added
        np.save(f, np.ones(MB))


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


@pytest.mark.parametrize("writer", list(WRITES))
def test_a_write_that_fills_the_disk_is_one_line_and_leaves_nothing(small_disk: Path, writer: str) -> None:
    target = small_disk / "old.bin"  # rewriting an output that exists
    free = _free(small_disk)
    with pytest.raises(DiskFull) as caught:
        WRITES[writer](target)
    message = str(caught.value)
    assert message.startswith(f"{target}: the disk is full (") and "\n" not in message
    assert "MB written, now removed): free some space and run again" in message
    assert target.read_bytes() == b"o" * MB  # the old output is kept
    assert sorted(p.name for p in small_disk.iterdir()) == ["old.bin"]  # the partial one is gone
    assert _free(small_disk) == free


def test_an_archive_that_fills_the_disk_is_one_line_and_leaves_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    archive = _tar_of(6, tmp_path)
    target = small_disk / "flower_photos"
    with pytest.raises(DiskFull, match=rf"^{target}: the disk is full \(.* MB written, now removed\)"):
        extract(archive, target)
    assert sorted(p.name for p in small_disk.iterdir()) == ["old.bin"]


def test_a_stage_whose_disk_fills_elsewhere_ends_in_one_line(small_disk: Path, tmp_path: Path) -> None:
    """A write outside flowerpipe's atomic outputs (a download's part file, a temporary folder)."""
    script = tmp_path / "fills.py"
    script.write_text(
        "from flowerpipe.core.console import run_main\n"
        "def main():\n"
        f"    with open({str(small_disk / 'part')!r}, 'wb') as f:\n"
        "        f.write(b'x' * 8_000_000)\n"
        "run_main(main)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {small_disk / 'part'}: the disk is full (0.0 MB free): free some space and run again"
    ]


def test_export_onto_a_full_disk_ends_in_one_line_and_keeps_no_model(tmp_path: Path) -> None:
    """The export stage itself, with models/ on a disk that holds best.pt and 1 MB more."""
    repo = DvcRepo(tmp_path / "repo")
    repo.set_params({**SMALL, "model": {"arch": "mobilenet_v3_small", "weights": None}})
    repo.set_params({"data": {**SMALL["data"], "source": str(make_photos(tmp_path / "photos"))}})
    repo.dvc("repro", "evaluate")  # export reads the model and the temperature evaluate fits
    best = (repo.path / "models/best.pt").read_bytes()
    with tmpfs(tmp_path / "disk", len(best) // MB + 2) as disk:
        (disk / "best.pt").write_bytes(best)
        (disk / "filler").write_bytes(b"f" * (_free(disk) - MB))
        shutil.rmtree(repo.path / "models")
        (repo.path / "models").symlink_to(disk)
        done = repo.run(sys.executable, "stages/export.py", check=False)
        assert done.returncode == 1
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: models/model.onnx: the disk is full (") and "now removed" in last
        assert sorted(p.name for p in disk.iterdir()) == ["best.pt", "filler"]


def test_once_space_is_freed_the_same_write_succeeds(small_disk: Path) -> None:
    """A disk filled by something else, emptied again: the next run writes the output whole."""
    (small_disk / "filler").write_bytes(b"f" * (_free(small_disk) - 10_000))
    rows = [{"relpath": f"daisy/{i}.jpg", "label": "daisy"} for i in range(1000)]
    with pytest.raises(DiskFull):
        write_csv(small_disk / "old.bin", rows)
    (small_disk / "filler").unlink()
    write_csv(small_disk / "old.bin", rows)
    assert len((small_disk / "old.bin").read_text().splitlines()) == 1001
    assert sorted(p.name for p in small_disk.iterdir()) == ["old.bin"]
