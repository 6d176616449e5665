"""The image cache: read a batch at a time, exactly as numpy would index the saved array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowerpipe.data.cache import ImageCache, Rows
from flowerpipe.runtime.preprocess import center_crop


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, np.ndarray]:
    array = np.random.default_rng(0).integers(0, 256, (23, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", array)
    return tmp_path / "images.npy", array


@pytest.mark.parametrize(
    "key",
    [
        0,
        22,
        -1,
        slice(None),
        slice(3, 9),
        slice(None, None, -2),
        np.array([5, 6, 7, 2, 2, 22, 0, 1]),
        [4, -3],
        np.array([], dtype=np.int64),
    ],
)
def test_indexing_reads_what_numpy_gives(saved: tuple[Path, np.ndarray], key: object) -> None:
    path, array = saved
    np.testing.assert_array_equal(ImageCache(path)[key], array[key])


def test_out_of_range_rows_are_refused(saved: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(IndexError, match=r"images\.npy"):
        ImageCache(saved[0])[np.array([3, 23])]


def test_selected_rows_are_read_batch_by_batch_and_cropped(saved: tuple[Path, np.ndarray]) -> None:
    path, array = saved
    rows = np.array([1, 2, 3, 10, 20])
    chosen = Rows(ImageCache(path), rows, crop=4)
    assert len(chosen) == 5
    np.testing.assert_array_equal(chosen[1:4], center_crop(array[rows[1:4]], 4))


def test_written_cache_is_what_np_save_writes(saved: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, array = saved
    cache = ImageCache.create(tmp_path / "new.npy", len(array), 6)
    for i in reversed(range(len(array))):
        cache[i] = array[i]
    cache.close()
    assert (tmp_path / "new.npy").read_bytes() == path.read_bytes()


def test_reading_maps_nothing_into_memory(saved: tuple[Path, np.ndarray]) -> None:
    """Pages of a memory-mapped file count as the process's own memory once touched; the cache is
    read with plain reads, so scoring a split larger than RAM holds one batch."""
    path, _ = saved
    cache = ImageCache(path)
    cache[:]
    assert str(path) not in Path("/proc/self/maps").read_text()
