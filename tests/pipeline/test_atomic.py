"""Outputs appear whole or not at all, with the mode any new file would get."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flowerpipe.core.atomic import atomic_dir, atomic_path

REPO = Path(__file__).resolve().parents[2]


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("parity failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left


def test_outputs_get_the_umask_mode_not_a_private_one(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_text("weights")
        with atomic_dir(tmp_path / "prepared") as tmp:
            (tmp / "images.npy").write_text("pixels")
    finally:
        os.umask(before)
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o644  # readable where it is deployed
    assert (tmp_path / "prepared").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_what_a_killed_write_leaves_is_ignored_by_git_and_removed_by_the_next_write(
    tmp_path: Path, kind: str
) -> None:
    """SIGKILL runs no cleanup: the temporary file or folder stays until the next write of the
    same output, and git never sees it meanwhile."""
    target = tmp_path / ("model.onnx" if kind == "file" else "prepared")
    writer = "atomic_path" if kind == "file" else "atomic_dir"
    code = (
        f"import os, signal\nfrom flowerpipe.core.atomic import {writer}\n"
        f"with {writer}({str(target)!r}) as tmp:\n    print(tmp, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == -signal.SIGKILL
    left = Path(done.stdout.strip())
    assert left.exists() and left.parent == tmp_path
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", left.name], cwd=tmp_path)
    assert ignored.returncode == 0  # `git add -A` leaves it out
    with (atomic_path if kind == "file" else atomic_dir)(target) as tmp:
        (tmp.write_text("weights") if kind == "file" else (tmp / "images.npy").write_text("pixels"))
    assert not left.exists() and target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".git", ".gitignore", target.name])
