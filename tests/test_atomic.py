"""Outputs appear whole or not at all, with the mode any new file would get."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowerpipe.atomic import atomic_dir, atomic_path


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
