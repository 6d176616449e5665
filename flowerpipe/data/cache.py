"""The decoded photos on disk: `images.npy`, read and written a few rows at a time.

Rows go through plain file reads and writes, not a memory map: a mapped file's pages count in the
process's resident memory as they are touched, so scoring or training on a split larger than RAM
would look (and, to a memory limit, be) as large as the split. With reads, the operating system's
page cache holds what fits and gives it back under pressure; the process holds one batch.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from flowerpipe.runtime.preprocess import center_crop

Index = int | slice | np.ndarray | list[int]


class ImageCache:
    """The N x side x side x 3 uint8 array of an .npy file, indexed like a numpy array (an int, a
    slice or an array of row numbers) but read from the file only when indexed."""

    def __init__(self, path: str | os.PathLike[str], writable: bool = False) -> None:
        self.path, self.writable = Path(path), writable
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
            self.offset = f.tell()
        if fortran_order or dtype != np.uint8 or len(shape) != 4:
            raise ValueError(f"{self.path}: not an N x side x side x 3 uint8 array")
        self.shape: tuple[int, ...] = shape
        self.row_bytes = int(np.prod(shape[1:]))
        self._file: io.FileIO | None = None
        self._pid = -1

    @classmethod
    def create(cls, path: str | os.PathLike[str], rows: int, side: int) -> ImageCache:
        """A new file of `rows` squares, zero until written, with np.save's header."""
        open_memmap(path, "w+", np.uint8, (rows, side, side, 3))  # header and size; no page touched
        return cls(path, writable=True)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Index) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self[np.array([key])][0]
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < -len(self) or rows.max() >= len(self))):
            raise IndexError(f"{self.path}: rows out of range for {len(self)} images")
        rows = rows % max(len(self), 1)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(rows), self.row_bytes)
        # consecutive row numbers are read in one call: a split's rows, or a sorted sample
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        f = self._open()
        for begin, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            if end > begin:
                f.seek(self.offset + int(rows[begin]) * self.row_bytes)
                into = memoryview(flat[begin:end]).cast("B")
                while into:  # one read returns at most 2 GB on Linux
                    done = f.readinto(into)
                    if not done:
                        raise OSError(f"{self.path}: shorter than its header says")
                    into = into[done:]
        return out

    def __setitem__(self, row: int, square: np.ndarray) -> None:
        f = self._open()
        f.seek(self.offset + row * self.row_bytes)
        f.write(np.ascontiguousarray(square, dtype=np.uint8).tobytes())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._pid = None, -1

    def _open(self) -> io.FileIO:  # one file object per process: DataLoader workers inherit ours
        if self._pid != os.getpid():
            self._file = io.FileIO(self.path, "r+" if self.writable else "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, object]:  # workers started by spawn open the file anew
        return {**self.__dict__, "_file": None, "_pid": -1}


Images = np.ndarray | ImageCache  # uint8 NHWC squares, in memory or in the cache


class Rows:
    """Some rows of images (a split, a sample), read only when sliced or indexed by an array of
    positions, as centre crops of `crop` when given: of an `ImageCache`, no more than one batch is
    ever read into memory."""

    def __init__(self, cache: Images, rows: np.ndarray, crop: int | None = None) -> None:
        self.cache, self.rows, self.crop = cache, rows, crop

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        images = self.cache[self.rows[key]]
        return images if self.crop is None else np.ascontiguousarray(center_crop(images, self.crop))
