"""The durable event log: one SQLite file in WAL mode, every engine record with its sequence number.

A batch of records is appended in one transaction (group commit); with ``synchronous=FULL`` a
committed transaction survives a crash, so a record is *acknowledged* once its transaction commits.
The ``meta`` table holds the engine config, the schema version and a checkpoint (last seq, state
hash) written in the same transaction as the records it covers.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.events import EVENT_TYPES, Event, event_from_dict

MAGIC = "fluidmargin-event-log"
SCHEMA_VERSION = 1
_FETCH = 2000

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    type TEXT NOT NULL,
    is_input INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""


class LogFormatError(ValidationError):
    """The file is missing, not a fluidmargin event log, or a record in it cannot be decoded."""


class LogCorruptError(FluidMarginError):
    """A stored record is unreadable or inconsistent (names the seq), or the store itself is damaged."""


class StoreUnavailable(FluidMarginError):
    """The store cannot be reached now (a lost connection, a restarting server): retry later.

    The call that raised it changed nothing, except an append whose commit may have reached the server:
    the log's next append finds out (see :meth:`PgEventLog.append`).
    """


Row = tuple[int, int, str, bool, bytes]  # seq, ts_ns, type, is_input, payload


def encode_rows(records: Iterable[tuple[int, Event]]) -> list[Row]:
    """The stored rows of ``(seq, event)`` records (every backend stores the same)."""
    return [(seq, e.ts_ns, type(e).__name__, e.is_input, encode_event(e)) for seq, e in records]


def check_continues(rows: list[Row], last: int, checkpoint: tuple[int, str] | None) -> None:
    """Refuse rows that do not continue a log ending at ``last``, or a checkpoint not at their end."""
    for i, row in enumerate(rows):
        if row[0] != last + 1 + i:
            raise ValidationError(f"seq {row[0]} does not continue the log (expected {last + 1 + i})")
    if checkpoint is not None and checkpoint[0] != last + len(rows):
        raise ValidationError(f"checkpoint seq {checkpoint[0]} is not the end of the log ({last + len(rows)})")


def encode_event(event: Event) -> bytes:
    """The payload stored for ``event``: orjson of :meth:`Event.to_dict`."""
    return orjson.dumps(event.to_dict())


def loggable_payload(event: Event) -> bytes:
    """Encode an input and check it decodes back to the same event, so replay can reproduce it.

    Raises :class:`ValidationError` (before anything is applied or logged) when it cannot.
    """
    name = type(event).__name__
    if EVENT_TYPES.get(name) is not type(event):
        raise ValidationError(f"{name} is not a registered event type; it cannot be logged")
    if not event.is_input:
        raise ValidationError(f"{name} is an output event, not an input")
    try:
        payload = encode_event(event)
        back = event_from_dict(orjson.loads(payload))
    except (TypeError, orjson.JSONEncodeError, ValidationError) as e:
        raise ValidationError(f"{name} cannot be logged faithfully: {e}") from None
    if back != event:  # the same class (checked above): dataclass equality is field-by-field
        raise ValidationError(f"{name} does not survive the log round trip: {event!r}")
    return payload


class EventLog:
    """Append-only event log over one SQLite file (single writer)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, config: EngineConfig, readonly: bool) -> None:
        self.path = path
        self._conn = conn
        self.config = config
        self.readonly = readonly

    # --- opening ----------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: EngineConfig) -> EventLog:
        """Create a new, empty log for ``config`` (its checkpoint is the fresh engine's state hash)."""
        checkpoint_hash = Engine(config).state_hash()
        path = Path(path)
        if path.exists():
            raise ValidationError(f"{path} already exists; open it instead of creating it")
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise LogFormatError(f"{path}: cannot create an event log: {e}") from None
        try:
            _pragmas(conn)
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            rows = {
                "magic": MAGIC.encode(),
                "schema_version": str(SCHEMA_VERSION).encode(),
                "config": orjson.dumps(config.to_dict()),
                "checkpoint_seq": b"0",
                "checkpoint_hash": checkpoint_hash.encode(),
            }
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            raise
        return cls(path, conn, config, readonly=False)

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> EventLog:
        """Open an existing log. A missing file or one that is not a fluidmargin log is a LogFormatError."""
        path = Path(path)
        if not path.is_file():
            raise LogFormatError(f"{path}: no such event log file")
        mode = "ro" if readonly else "rw"
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None)
        except sqlite3.Error as e:
            raise LogFormatError(f"{path}: cannot open as an event log: {e}") from None
        try:
            # check before touching anything: a foreign file must not be modified
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            cols = [r[1] for r in conn.execute("PRAGMA table_info(events)").fetchall()]
        except sqlite3.Error as e:
            conn.close()
            raise LogFormatError(f"{path} is not a fluidmargin event log ({e})") from None
        try:
            if bytes(meta.get("magic", b"")) != MAGIC.encode():
                raise LogFormatError(f"{path} is not a fluidmargin event log (no magic in its meta table)")
            version = int(bytes(meta["schema_version"]))
            if version != SCHEMA_VERSION:
                raise LogFormatError(f"{path}: schema version {version}, this build reads {SCHEMA_VERSION}")
            if cols != ["seq", "ts_ns", "type", "is_input", "payload"]:
                raise LogFormatError(f"{path}: events table has columns {cols}")
            config = EngineConfig.from_dict(orjson.loads(meta["config"]))
            int(bytes(meta["checkpoint_seq"]))
            bytes(meta["checkpoint_hash"]).decode()
            if not readonly:
                _pragmas(conn)
        except LogFormatError:
            conn.close()
            raise
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError, sqlite3.Error) as e:
            conn.close()
            raise LogFormatError(f"{path}: malformed event log header: {e}") from None
        return cls(path, conn, config, readonly)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------

    def append(self, records: Iterable[tuple[int, Event]], checkpoint: tuple[int, str] | None = None) -> int:
        """Append ``(seq, event)`` records in one transaction; returns the last durable seq.

        Seqs must continue the log without a gap. ``checkpoint`` (seq, state hash) is stored in the
        same transaction. On any error nothing of the batch is written.
        """
        if self.readonly:
            raise ValidationError(f"{self.path} is open read-only")
        rows = encode_rows(records)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = self._max_seq()
            check_continues(rows, last, checkpoint)
            conn.executemany("INSERT INTO events (seq, ts_ns, type, is_input, payload) VALUES (?, ?, ?, ?, ?)", rows)
            if checkpoint is not None:
                cseq, chash = checkpoint
                conn.executemany(
                    "UPDATE meta SET value = ? WHERE key = ?",
                    [(str(cseq).encode(), "checkpoint_seq"), (chash.encode(), "checkpoint_hash")],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return last + len(rows)

    # --- reading ----------------------------------------------------------------------------------

    def _max_seq(self) -> int:
        with damaged_file(self.path):
            return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def last_seq(self) -> int:
        """The last committed seq (0 for an empty log)."""
        return self._max_seq()

    def count(self, inputs_only: bool = False) -> int:
        q = "SELECT COUNT(*) FROM events" + (" WHERE is_input = 1" if inputs_only else "")
        with damaged_file(self.path):
            return int(self._conn.execute(q).fetchone()[0])

    def checkpoint(self) -> tuple[int, str]:
        """The stored (seq, state hash) checkpoint."""
        with damaged_file(self.path):
            meta = dict(
                self._conn.execute(
                    "SELECT key, value FROM meta WHERE key IN ('checkpoint_seq', 'checkpoint_hash')"
                ).fetchall()
            )
        return int(bytes(meta["checkpoint_seq"])), bytes(meta["checkpoint_hash"]).decode()

    def check_store(self) -> list[str]:
        """What SQLite's ``PRAGMA integrity_check`` finds wrong in the whole file (every table and index,
        the service's included); empty when nothing."""
        with damaged_file(self.path):
            rows = [str(r[0]) for r in self._conn.execute("PRAGMA integrity_check(20)").fetchall()]
        if rows == ["ok"]:
            return []
        detail = "; ".join(" ".join(r.split()) for r in rows[:5]) + ("; ..." if len(rows) > 5 else "")
        return [f"{self.path}: the SQLite file is malformed (integrity_check: {detail})"]

    def read_dicts(self, from_seq: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(seq, event dict)`` for every record with ``seq >= from_seq``, in seq order.

        Checks each row's columns agree with its payload; a bad row is a LogCorruptError naming its seq.
        """
        with damaged_file(self.path):
            cur = self._conn.execute(
                "SELECT seq, ts_ns, type, is_input, payload FROM events WHERE seq >= ? ORDER BY seq", (from_seq,)
            )
        while True:
            with damaged_file(self.path):
                rows = cur.fetchmany(_FETCH)
            if not rows:
                return
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
                    or int(cls.is_input) != is_input
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
        with damaged_file(self.path):
            row = self._conn.execute("SELECT payload FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def pragma(self, name: str) -> Any:
        return self._conn.execute(f"PRAGMA {name}").fetchone()[0]


@contextlib.contextmanager
def damaged_file(path: object) -> Iterator[None]:
    """Turn SQLite's "database disk image is malformed" / "file is not a database" into a LogCorruptError
    naming the file (other SQLite errors, e.g. a constraint or a full disk, pass unchanged)."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        if type(e) is not sqlite3.DatabaseError:
            raise
        raise LogCorruptError(f"{path}: the SQLite file is damaged ({e})") from None


def _pragmas(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise LogFormatError(f"cannot switch the log to WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=FULL")
