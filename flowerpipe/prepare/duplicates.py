"""Near-duplicate photos: a 64-bit difference hash (dHash) of each decoded photo, and the groups of
photos that are the same bytes or whose hashes differ in few bits, which the split keeps together."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations, pairwise

import numpy as np
from PIL import Image

BITS = 64


def dhash(square: np.ndarray) -> int:
    """The difference hash of a uint8 RGB image: its grey 9 x 8 thumbnail, one bit per pair of
    horizontal neighbours, set where the right one is brighter. Resizing, recompression and small
    edits of a photo change few bits."""
    grey = Image.fromarray(square).convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, np.int16)
    return int.from_bytes(np.packbits(pixels[:, 1:] > pixels[:, :-1]).tobytes(), "big")


def near_pairs(hashes: Sequence[int], distance: int) -> set[tuple[int, int]]:
    """The index pairs (i < j) whose hashes differ in at most `distance` bits. Cut into
    `distance + 1` bands, two such hashes agree on a whole band at least, so only hashes that share
    a band are compared: about linear in the number of photos when most differ."""
    ints = [int(h) for h in hashes]
    values = np.array(ints, dtype=np.uint64)
    edges = np.linspace(0, BITS, distance + 2).astype(int)
    pairs = set()
    for low, high in pairwise(edges):
        band = (values >> np.uint64(low)) & np.uint64((1 << int(high - low)) - 1)
        buckets: dict[int, list[int]] = {}
        for i, key in enumerate(band.tolist()):
            buckets.setdefault(key, []).append(i)
        for members in buckets.values():
            for i, j in combinations(members, 2):
                if (ints[i] ^ ints[j]).bit_count() <= distance:
                    pairs.add((i, j))
    return pairs


def duplicate_groups(sha256s: Sequence[str], hashes: Sequence[int], distance: int | None) -> list[int]:
    """Each photo's group, named by its first photo's index: photos with the same sha256, and, unless
    `distance` is None, photos whose hashes differ in at most `distance` bits, transitively."""
    parent = list(range(len(sha256s)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, sha in enumerate(sha256s):
        join(first.setdefault(sha, i), i)
    if distance is not None:
        for i, j in near_pairs(hashes, distance):
            join(i, j)
    return [root(i) for i in range(len(sha256s))]
