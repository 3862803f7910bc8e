"""The durable event log: every engine record with its sequence number, in SQLite or PostgreSQL.

One class, :class:`EventLog`, holds the log's logic: group commit, checkpoints, reading ranges, the checks on
what it reads. What differs between databases is a small dialect, a :class:`Database`: the connection, the
SQL text (written here once, with ``?`` placeholders and ``{events}``/``{meta}`` for the tables), the schema,
the writer lock and what a lost connection means. :class:`~fluidmargin.store.sqlite.SqliteDatabase` is one
file in WAL mode with ``synchronous=FULL``; :class:`~fluidmargin.store.pg.PgDatabase` is one PostgreSQL
schema, connected again when lost. The stored rows are the same (:mod:`fluidmargin.store.records`).

A batch of records is appended in one transaction that holds the writer lock (group commit); a record is
*acknowledged* once its transaction commits (durable then). The ``meta`` table holds the engine config,
the schema version and a checkpoint (last seq, state hash) written in the same transaction as the records
it covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import orjson

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.events import EVENT_TYPES, Event, event_from_dict
from fluidmargin.store.records import (
    LogCorruptError,
    Row,
    check_continues,
    encode_rows,
    new_header,
    read_header,
)
from fluidmargin.store.sqlite import SqliteDatabase

# the log's own SQL, for every dialect
_MAX_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM {events}"
_COUNT = "SELECT COUNT(*) FROM {events}"
_COUNT_INPUTS = "SELECT COUNT(*) FROM {events} WHERE is_input = TRUE"
_CHECKPOINT = "SELECT key, value FROM {meta} WHERE key IN ('checkpoint_seq', 'checkpoint_hash')"
_SET_META = "UPDATE {meta} SET value = ? WHERE key = ?"
_PAYLOAD = "SELECT payload FROM {events} WHERE seq = ?"
_HELD = "SELECT seq, payload FROM {events} WHERE seq BETWEEN ? AND ? ORDER BY seq"


class Writer(Protocol):
    """The statements of one write transaction (see :meth:`Database.writing`)."""

    def fetch(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def insert_events(self, rows: list[Row]) -> None: ...


class Database(Protocol):
    """What a log needs of its database: the dialect of one kind of store.

    ``query`` arguments are the log's SQL: ``?`` placeholders, ``{events}`` and ``{meta}`` for its tables.
    A damaged store is a LogCorruptError; one that cannot be reached now, a StoreUnavailable.
    """

    @property
    def path(self) -> Path | str: ...  # names the store in messages (a file, or the URL without its password)

    @property
    def target(self) -> Path | str: ...  # where it is, as open_log takes it (a URL keeps its password)

    @property
    def in_doubt(self) -> bool: ...  # the last write lost its connection: its commit may have happened

    def fetch(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...  # a read
    def writing(self) -> AbstractContextManager[Writer]: ...  # one transaction, holding the writer lock
    def pages(self, from_seq: int, size: int) -> Iterator[list[tuple[Any, ...]]]: ...  # events rows by seq
    def read_header(self) -> tuple[dict[str, Any], list[str]]: ...  # meta rows, events columns (reads only)
    def prepare_writes(self) -> None: ...  # after the header checked out, before the first write
    def check_store(self) -> list[str]: ...  # what is wrong with the store itself; empty when nothing
    def setting(self, name: str) -> Any: ...  # a database setting (SQLite PRAGMA, PostgreSQL SHOW)
    def close(self) -> None: ...


class Dialect(Protocol):
    """A kind of database: how its :class:`Database` is made (the dialect's class)."""

    def create(self, target: str | Path, header: dict[str, bytes]) -> Database: ...  # refuses an existing one
    def open(self, target: str | Path, readonly: bool) -> Database: ...  # reads nothing yet


class EventLog:
    """Append-only event log over one :class:`Database` (single writer).

    :meth:`create` and :meth:`open` take a SQLite file here; :class:`~fluidmargin.store.pg.PgEventLog` is
    this log over PostgreSQL, whose take a ``postgresql://`` URL (:func:`~fluidmargin.store.backend.open_log`
    picks by the location).
    """

    dialect: ClassVar[Dialect] = SqliteDatabase
    _PAGE = 2000  # rows per page when reading

    def __init__(self, db: Database, config: EngineConfig, readonly: bool) -> None:
        self.db = db
        self.path = db.path
        self.config = config
        self.readonly = readonly

    # --- opening ----------------------------------------------------------------------------------

    @classmethod
    def create(cls, target: str | Path, config: EngineConfig) -> Self:
        """Create a new, empty log for ``config`` (its checkpoint is the fresh engine's state hash)."""
        return cls(cls.dialect.create(target, new_header(config)), config, readonly=False)

    @classmethod
    def open(cls, target: str | Path, readonly: bool = False) -> Self:
        """Open an existing log. A missing log or one that is not a fluidmargin log is a LogFormatError.

        The header is checked before anything is written (a foreign store must not be modified)."""
        db = cls.dialect.open(target, readonly)
        try:
            config = read_header(db.path, *db.read_header())
            if not readonly:
                db.prepare_writes()
        except BaseException:
            db.close()
            raise
        return cls(db, config, readonly)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------

    def append(self, records: Iterable[tuple[int, Event]], checkpoint: tuple[int, str] | None = None) -> int:
        """Append ``(seq, event)`` records in one transaction; returns the last durable seq.

        Seqs must continue the log without a gap. ``checkpoint`` (seq, state hash) is stored in the
        same transaction. On any error nothing of the batch is written. A lost connection is a
        StoreUnavailable; the batch may then have committed, so the next append skips the rows the
        log already holds with the same payloads (and only then: otherwise an overlap is refused).
        """
        if self.readonly:
            raise ValidationError(f"{self.path} is open read-only")
        rows = encode_rows(records)
        with self.db.writing() as w:
            last = int(w.fetch(_MAX_SEQ)[0][0])
            if self.db.in_doubt:
                rows = self._not_yet_logged(w, rows, last)
            check_continues(rows, last, checkpoint)
            w.insert_events(rows)
            if checkpoint is not None:
                cseq, chash = checkpoint
                w.executemany(_SET_META, [(str(cseq).encode(), "checkpoint_seq"), (chash.encode(), "checkpoint_hash")])
        return last + len(rows)

    @staticmethod
    def _not_yet_logged(w: Writer, rows: list[Row], last: int) -> list[Row]:
        """``rows`` less the leading ones the log already holds, byte for byte (an earlier commit's)."""
        if not rows or rows[0][0] > last:
            return rows
        k = min(last - rows[0][0] + 1, len(rows))
        held = w.fetch(_HELD, (rows[0][0], rows[k - 1][0]))
        if [(int(q), bytes(p)) for q, p in held] == [(r[0], r[4]) for r in rows[:k]]:
            return rows[k:]
        return rows

    # --- reading ----------------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The last committed seq (0 for an empty log)."""
        return int(self.db.fetch(_MAX_SEQ)[0][0])

    def count(self, inputs_only: bool = False) -> int:
        return int(self.db.fetch(_COUNT_INPUTS if inputs_only else _COUNT)[0][0])

    def checkpoint(self) -> tuple[int, str]:
        """The stored (seq, state hash) checkpoint."""
        meta = dict(self.db.fetch(_CHECKPOINT))
        return int(bytes(meta["checkpoint_seq"])), bytes(meta["checkpoint_hash"]).decode()

    def check_store(self) -> list[str]:
        """What is wrong with the store itself, beyond what a replay reads (empty when nothing): on SQLite
        ``PRAGMA integrity_check`` of the whole file (the service's tables included); on PostgreSQL, which
        keeps its pages consistent itself, sanity queries on the log's tables."""
        return self.db.check_store()

    def read_dicts(self, from_seq: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(seq, event dict)`` for every record with ``seq >= from_seq``, in seq order.

        Checks each row's columns agree with its payload; a bad row is a LogCorruptError naming its seq.
        Reads one page of rows at a time, so memory does not grow with the log.
        """
        for rows in self.db.pages(from_seq, self._PAGE):
            for seq, ts_ns, typ, is_input, payload in rows:
                try:
                    d = orjson.loads(payload)
                except (orjson.JSONDecodeError, TypeError) as e:
                    raise LogCorruptError(f"{self.path}: seq {seq}: payload is not valid JSON ({e})") from None
                cls = EVENT_TYPES.get(typ)
                if (
                    not isinstance(d, dict)
                    or d.get("type") != typ
                    or d.get("ts_ns") != ts_ns
                    or cls is None
                    or int(cls.is_input) != is_input  # SQLite's 0/1, PostgreSQL's bool
                ):
                    raise LogCorruptError(f"{self.path}: seq {seq}: columns disagree with the payload")
                yield seq, d

    def read(self, from_seq: int = 0) -> Iterator[tuple[int, Event]]:
        """Yield ``(seq, event)`` for every record with ``seq >= from_seq``, in seq order."""
        for seq, d in self.read_dicts(from_seq):
            try:
                yield seq, event_from_dict(d)
            except (ValidationError, TypeError) as e:
                raise LogCorruptError(f"{self.path}: seq {seq}: {e}") from None

    def payload_at(self, seq: int) -> bytes | None:
        rows = self.db.fetch(_PAYLOAD, (seq,))
        return bytes(rows[0][0]) if rows else None

    def setting(self, name: str) -> Any:
        """A database setting as this connection sees it: SQLite ``PRAGMA name``, PostgreSQL ``SHOW name``."""
        return self.db.setting(name)

    def pragma(self, name: str) -> Any:
        """:meth:`setting`, by its SQLite name."""
        return self.db.setting(name)
