"""Near-duplicates: the difference hash, the banded search for close hashes, and the groups."""

from __future__ import annotations

import io
import random
from itertools import combinations

import numpy as np
from PIL import Image

from flowerpipe.prepare.duplicates import dhash, duplicate_groups, near_pairs


def smooth_photo(rng: np.random.Generator) -> Image.Image:
    """Large shapes of light and colour, as photos have, not pixel noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    return coarse.resize((192, 144), Image.Resampling.BICUBIC)


def test_a_resized_recompressed_photo_is_near_and_another_photo_is_not() -> None:
    rng = np.random.default_rng(0)
    photo = smooth_photo(rng)
    buffer = io.BytesIO()
    photo.resize((120, 90)).save(buffer, "JPEG", quality=60)
    copy = Image.open(buffer).resize((192, 144))
    other = smooth_photo(rng)
    h = dhash(np.asarray(photo))
    assert (h ^ dhash(np.asarray(copy))).bit_count() <= 4
    assert (h ^ dhash(np.asarray(other))).bit_count() > 10
    assert 0 <= h < 2**64


def test_near_pairs_are_exactly_the_close_pairs() -> None:
    rng = random.Random(1)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    for i in range(0, 300, 10):  # plant copies 0 to 6 bits away
        flipped = hashes[i]
        for bit in rng.sample(range(64), i % 7):
            flipped ^= 1 << bit
        hashes.append(flipped)
    for distance in (0, 2, 4, 6):
        brute = {
            (i, j)
            for i, j in combinations(range(len(hashes)), 2)
            if (hashes[i] ^ hashes[j]).bit_count() <= distance
        }
        assert near_pairs(hashes, distance) == brute
        assert brute  # the planted pairs are found


def test_groups_join_same_bytes_and_close_hashes_transitively() -> None:
    shas = ["a", "b", "a", "c", "d", "e"]
    hashes = [0b0, 0b1111 << 40, 0b1 << 63, 0b111, 0b111111, 0b1111 << 40]
    #  a twice (0, 2); 3 and 4 three bits apart, 3 and 0 three bits apart; 1 and 5 equal
    assert duplicate_groups(shas, hashes, 3) == [0, 1, 0, 0, 0, 1]
    assert duplicate_groups(shas, hashes, None) == [0, 1, 0, 3, 4, 5]
