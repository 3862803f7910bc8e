"""Durable event log (SQLite WAL, group commit), atomic snapshots, verified replay and recovery."""

from fluidmargin.store.log import EventLog, LogCorruptError, LogFormatError
from fluidmargin.store.replay import ReplayMismatch, ReplayStats, replay
from fluidmargin.store.runner import Runner
from fluidmargin.store.snapshot import SnapshotError, list_snapshots, load_latest, load_snapshot, write_snapshot

__all__ = [
    "EventLog",
    "LogCorruptError",
    "LogFormatError",
    "ReplayMismatch",
    "ReplayStats",
    "Runner",
    "SnapshotError",
    "list_snapshots",
    "load_latest",
    "load_snapshot",
    "replay",
    "write_snapshot",
]
