"""The one clock protocol. The engine never reads a wall clock: time arrives inside events."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class WallClock:
    """Live clock for the edge only (stamping inputs as they arrive), never inside the engine."""

    def now_ns(self) -> int:
        return time.time_ns()


class FixedClock:
    """A clock that returns what it is told; for tests and replays."""

    def __init__(self, now_ns: int = 0) -> None:
        self._now = now_ns

    def now_ns(self) -> int:
        return self._now

    def set(self, now_ns: int) -> None:
        self._now = now_ns
