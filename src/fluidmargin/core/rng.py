"""Seeded random generators: seeds are injected, never global."""

from __future__ import annotations

import numpy as np


def make_rng(seed: int) -> np.random.Generator:
    """A numpy Generator from an explicit seed (PCG64)."""
    return np.random.Generator(np.random.PCG64(seed))
