"""The service's own errors, below every module that raises them (the worker, the stores, the routes)."""

from __future__ import annotations

from fluidmargin.core.errors import FluidMarginError, ValidationError


class WorkerUnavailable(FluidMarginError):
    """The worker is stopped, failed, or has too much queued, or the store is away: answer 503."""


class IdempotencyMismatch(ValidationError):
    """An Idempotency-Key reused for a different request."""
