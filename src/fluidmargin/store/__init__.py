"""Durable event log (SQLite WAL or PostgreSQL, group commit), atomic snapshots, verified replay and recovery."""

from typing import Any

from fluidmargin.store.backend import LogBackend, create_log, log_exists, open_log
from fluidmargin.store.log import EventLog
from fluidmargin.store.records import LogCorruptError, LogFormatError, StoreUnavailable
from fluidmargin.store.replay import ReplayMismatch, ReplayStats, replay
from fluidmargin.store.runner import Runner
from fluidmargin.store.snapshot import SnapshotError, list_snapshots, load_latest, load_snapshot, write_snapshot

__all__ = [
    "EventLog",
    "LogBackend",
    "LogCorruptError",
    "LogFormatError",
    "PgEventLog",
    "ReplayMismatch",
    "ReplayStats",
    "Runner",
    "SnapshotError",
    "StoreUnavailable",
    "create_log",
    "list_snapshots",
    "load_latest",
    "load_snapshot",
    "log_exists",
    "open_log",
    "replay",
    "write_snapshot",
]


def __getattr__(name: str) -> Any:
    # PgEventLog imports psycopg: only when asked for (the SQLite path does not need it)
    if name == "PgEventLog":
        from fluidmargin.store.pg import PgEventLog

        return PgEventLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
