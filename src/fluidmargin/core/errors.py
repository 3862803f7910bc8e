"""The exception tree.

FluidMarginError
├── ValidationError      bad input: a clear reason, nothing changed (caller's fault)
│   └── InputFileError   a malformed file, naming the file and line
└── InvariantViolation   a broken invariant inside the engine: stop, never continue

Business outcomes (a rejected order, a stale price) are *returned* values, not exceptions.
"""

from __future__ import annotations


class FluidMarginError(Exception):
    """Base of every error raised by fluidmargin."""


class ValidationError(FluidMarginError, ValueError):
    """Input that cannot be accepted; the message says why."""


class InputFileError(ValidationError):
    """A malformed input file; the message names the file and the line."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class InvariantViolation(FluidMarginError, AssertionError):
    """The engine reached a state that must be impossible; fail fast."""
