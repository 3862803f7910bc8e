"""Shared fixtures. Data in ../shared/data is read in place; a missing copy fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
VECTORS = SHARED / "vectors"
PRICES = SHARED / "prices"


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; fails (never skips) when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"shared data missing: {p} (tests read ../shared/data beside the repository)")
    return p


@pytest.fixture
def vectors_dir() -> Path:
    return shared_path("vectors")


@pytest.fixture
def prices_dir() -> Path:
    return shared_path("prices")
