"""Counter-based random streams.

Every random draw in tecosim comes from ``stream(seed, *keys)``: a generator seeded by
the study seed and by what the draw is for (purpose, participant, interval, step).
The numbers therefore do not depend on the order in which federates or the in-process
engine ask for them, which is what makes the federation equal to the engine.
"""

from __future__ import annotations

import zlib

import numpy as np


def _key_int(key: int | str) -> int:
    if isinstance(key, int | np.integer):
        if key < 0:
            raise ValueError("random stream keys must be non-negative")
        return int(key)
    return zlib.crc32(str(key).encode("utf-8"))


def stream(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy Generator fixed by ``seed`` and ``keys`` (ints or strings)."""
    entropy = [int(seed)] + [_key_int(k) for k in keys]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
