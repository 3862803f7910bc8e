"""The live dashboard: static files served by the service at ``/`` (no CDN; uPlot is vendored)."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
