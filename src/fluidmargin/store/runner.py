"""An engine bound to its durable log: apply, buffer, group-commit, snapshot, and recover on open."""

from __future__ import annotations

import time
from pathlib import Path

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.events import Event
from fluidmargin.store.backend import LogBackend, create_log, describe, log_exists, open_log
from fluidmargin.store.records import StoreUnavailable, loggable_payload
from fluidmargin.store.replay import ReplayMismatch, replay
from fluidmargin.store.snapshot import load_latest, write_snapshot


class Runner:
    """Feeds inputs to an :class:`Engine` and makes its records durable in an event log.

    The log is any object with :class:`EventLog`'s API (:class:`~fluidmargin.store.backend.LogBackend`):
    a SQLite :class:`EventLog` or a PostgreSQL :class:`~fluidmargin.store.pg.PgEventLog`.

    Records are buffered and committed every ``group_size`` records (never splitting one input's
    records); :meth:`flush` commits now and returns the last durable seq: the acknowledgement point.
    The checkpoint (seq, state hash) is stored in the same transaction as the records it covers, at
    :meth:`close`, :meth:`snapshot` and once ``checkpoint_every`` records have passed since the last
    one (hashing the whole state costs time proportional to it, so not at every commit).

    A commit that fails because the store cannot be reached (:class:`StoreUnavailable`: a PostgreSQL
    restart) is retried with backoff for ``retry_s`` seconds (default 0: not retried), the records kept.
    If it still fails, the runner is *stale*: its engine holds inputs the log may not, so it refuses
    work until :meth:`reload` has rebuilt the engine from the log (snapshot, then the tail).
    """

    engine: Engine
    inputs_applied: int  # input events in the log plus those submitted since (to resume an input stream)

    def __init__(
        self,
        log: LogBackend,
        engine: Engine,
        snapshot_dir: Path | None,
        group_size: int,
        checkpoint_every: int = 100_000,
        retry_s: float = 0.0,
        screen: str = "incremental",
    ) -> None:
        self.log = log
        self.retry_s = retry_s
        self.screen = screen
        self.stale = False
        self.engine = engine
        self.snapshot_dir = snapshot_dir
        self.group_size = group_size
        self.inputs_applied = log.count(inputs_only=True)
        self.durable_seq = log.last_seq()
        self.checkpoint_every = checkpoint_every
        self._checkpoint_seq = log.checkpoint()[0]
        self.restored_seq: int | None = None  # seq of the snapshot recovery started from, if any
        self.skipped_snapshots: list[str] = []  # why newer snapshots were not used
        self._buffer: list[tuple[int, Event]] = []
        self._failed: BaseException | None = None
        self._closed = False

    @property
    def failed(self) -> BaseException | None:
        """The engine error that stopped this runner (None while it runs)."""
        return self._failed

    @classmethod
    def open_or_create(
        cls,
        path: str | Path | LogBackend,
        config: EngineConfig | None = None,
        snapshot_dir: str | Path | None = None,
        screen: str = "incremental",
        group_size: int = 1000,
        checkpoint_every: int = 100_000,
        retry_s: float = 0.0,
    ) -> Runner:
        """Create a new log (needs ``config``) or recover an existing one.

        ``path``: a file path, a URL (``sqlite:///PATH``, ``postgresql://...?schema=NAME``; see
        :mod:`fluidmargin.store.backend`) or an already open log object, which the runner then owns.
        Recovery restores the newest valid snapshot in ``snapshot_dir`` (if any), replays the rest of
        the log verifying every seq and output, and checks the stored checkpoint hash.
        """
        for name, v in (("group_size", group_size), ("checkpoint_every", checkpoint_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"{name} must be a positive integer, not {v!r}")
        sdir = Path(snapshot_dir) if snapshot_dir is not None else None
        log: LogBackend
        if isinstance(path, str | Path):
            where = describe(path)
            if not log_exists(path):
                if config is None:
                    raise ValidationError(f"{where} does not exist and no engine config was given to create it")
                log = create_log(path, config)
                return cls(log, Engine(config, screen=screen), sdir, group_size, checkpoint_every, retry_s, screen)
            log = open_log(path)
        else:
            log, where = path, str(path.path)
        try:
            if config is not None and config.to_dict() != log.config.to_dict():
                raise ValidationError(f"{where} was created with a different engine config")
            engine, restored_seq, skipped = _recover(log, sdir, screen)
            runner = cls(log, engine, sdir, group_size, checkpoint_every, retry_s, screen)
        except BaseException:
            log.close()
            raise
        runner.restored_seq = restored_seq
        runner.skipped_snapshots = skipped
        return runner

    def reload(self) -> list[tuple[int, Event]]:
        """Rebuild a stale runner's engine from the log (newest snapshot, then the tail), dropping what
        was never committed; returns the records the log holds beyond the last acknowledged commit (a
        commit whose answer was lost: it did reach the store). StoreUnavailable while the store is down."""
        if self._closed:
            raise ValidationError("the runner is closed")
        if not self.stale:
            return []
        acknowledged = self.durable_seq
        engine, restored_seq, skipped = _recover(self.log, self.snapshot_dir, self.screen)
        self.engine = engine
        self._buffer.clear()
        self._failed = None
        self.inputs_applied = self.log.count(inputs_only=True)
        self.durable_seq = engine.seq
        self._checkpoint_seq = self.log.checkpoint()[0]
        self.restored_seq, self.skipped_snapshots = restored_seq, skipped
        self.stale = False
        return list(self.log.read(acknowledged + 1))

    def _check_usable(self) -> None:
        if self._closed:
            raise ValidationError("the runner is closed")
        if self.stale:
            raise StoreUnavailable(f"{self.log.path}: a commit failed for want of the store; reload the runner")
        if self._failed is not None:
            raise FluidMarginError(f"the runner stopped after an engine error ({self._failed!r}); reopen the log")

    def submit(self, event: Event) -> list[tuple[int, Event]]:
        """Apply one input; buffer its records (none for a duplicate event id); commit every group_size.

        An input that cannot be logged faithfully is a ValidationError before the engine sees it.
        """
        self._check_usable()
        loggable_payload(event)
        try:
            records = self.engine.apply(event)
        except BaseException as e:
            # the engine may be half-way through an input: nothing after the last commit is trusted
            self._failed = e
            self._buffer.clear()
            raise
        if records:
            self._buffer.extend(records)
            self.inputs_applied += 1
            if len(self._buffer) >= self.group_size:
                self.flush()
        return records

    def flush(self) -> int:
        """Group-commit the buffered records now; returns the last durable seq.

        While the store cannot be reached, retries for ``retry_s`` seconds (backoff from 20 ms to 1 s);
        then raises StoreUnavailable and the runner is stale (see the class docstring).
        """
        self._check_usable()
        checkpoint = self.engine.seq - self._checkpoint_seq >= self.checkpoint_every
        deadline = time.monotonic() + self.retry_s
        pause = 0.02
        while True:
            try:
                return self._commit(checkpoint)
            except StoreUnavailable:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stale = True
                    raise
                time.sleep(min(pause, left))  # the store is away: wait for it, do not spin
                pause = min(pause * 2, 1.0)

    def _commit(self, checkpoint: bool) -> int:
        self._check_usable()
        checkpoint = checkpoint and self._checkpoint_seq != self.engine.seq
        if self._buffer or checkpoint:
            cp = (self.engine.seq, self.engine.state_hash()) if checkpoint else None
            # the buffer is kept until the commit succeeds, so a failed commit can be retried
            self.durable_seq = self.log.append(self._buffer, checkpoint=cp)
            self._buffer.clear()
            if cp:
                self._checkpoint_seq = cp[0]
        return self.durable_seq

    def snapshot(self) -> Path:
        """Flush, then write a snapshot of the engine at the durable seq (atomically)."""
        if self.snapshot_dir is None:
            raise ValidationError("no snapshot directory was given to this runner")
        self._commit(checkpoint=True)
        return write_snapshot(self.snapshot_dir, self.engine, self.log)

    def close(self) -> None:
        """Commit what is buffered with a checkpoint and close the log. Safe to call twice."""
        if self._closed:
            return
        try:
            if self._failed is None and not self.stale:
                self._commit(checkpoint=True)
        finally:
            self._closed = True
            self.log.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recover(log: LogBackend, sdir: Path | None, screen: str) -> tuple[Engine, int | None, list[str]]:
    """The engine at the log's end: the newest valid snapshot, then the tail replayed and the stored
    checkpoint's hash checked. Returns (engine, the snapshot's seq or None, why newer snapshots were skipped)."""
    restored, skipped = load_latest(sdir, log, screen)
    engine = restored.engine if restored else Engine(log.config, screen=screen)
    start = engine.seq
    cseq, chash = log.checkpoint()
    stats = replay(log, engine, hash_at=[cseq])
    if cseq >= start:
        if cseq not in stats.hashes:
            raise ReplayMismatch(cseq, "the stored checkpoint is not at the end of an input's records")
        if stats.hashes[cseq] != chash:
            raise ReplayMismatch(cseq, f"state hash {stats.hashes[cseq]} differs from the checkpoint {chash}")
    return engine, (restored.seq if restored else None), skipped
