"""The event log's SQLite dialect: one file in WAL mode, ``synchronous=FULL``.

A committed transaction survives a crash, so a commit is the acknowledgement point; ``BEGIN IMMEDIATE``
takes the file's write lock for the whole append (one writer at a time, readers not blocked). Reads of the
events stream from one cursor (one read snapshot). A damaged file is a LogCorruptError naming it
(:func:`damaged_file`).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.store.records import LogCorruptError, LogFormatError, Row

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
_INSERT = "INSERT INTO events (seq, ts_ns, type, is_input, payload) VALUES (?, ?, ?, ?, ?)"
_READ = "SELECT seq, ts_ns, type, is_input, payload FROM events WHERE seq >= ? ORDER BY seq"


@functools.cache
def _sql(query: str) -> str:
    """The log's SQL (see :class:`~fluidmargin.store.log.Database`) for SQLite: its placeholders are ``?``."""
    return query.format(events="events", meta="meta")


class SqliteDatabase:
    """The store of one log: a SQLite file (see the module docstring)."""

    in_doubt = False  # a local commit is never in doubt

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.target = path
        self.conn = conn

    @classmethod
    def create(cls, target: str | Path, header: dict[str, bytes]) -> SqliteDatabase:
        """A new file holding an empty log with ``header`` in its meta table; an existing file is refused."""
        path = Path(target)
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
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", header.items())
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            raise
        return cls(path, conn)

    @classmethod
    def open(cls, target: str | Path, readonly: bool) -> SqliteDatabase:
        """The file at ``target``, unchanged (read-only when ``readonly``); a missing one is a LogFormatError."""
        path = Path(target)
        if not path.is_file():
            raise LogFormatError(f"{path}: no such event log file")
        mode = "ro" if readonly else "rw"
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None)
        except sqlite3.Error as e:
            raise LogFormatError(f"{path}: cannot open as an event log: {e}") from None
        return cls(path, conn)

    def read_header(self) -> tuple[dict[str, Any], list[str]]:
        try:
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            cols = [r[1] for r in self.conn.execute("PRAGMA table_info(events)").fetchall()]
        except sqlite3.Error as e:
            raise LogFormatError(f"{self.path} is not a fluidmargin event log ({e})") from None
        return meta, cols

    def prepare_writes(self) -> None:
        try:
            _pragmas(self.conn)
        except sqlite3.Error as e:
            raise LogFormatError(f"{self.path}: malformed event log header: {e}") from None

    def close(self) -> None:
        self.conn.close()

    # --- statements ---------------------------------------------------------------------------------

    def fetch(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with damaged_file(self.path):
            return self.conn.execute(_sql(query), args).fetchall()

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(_sql(query), rows)

    def insert_events(self, rows: list[Row]) -> None:
        self.conn.executemany(_INSERT, rows)

    @contextlib.contextmanager
    def writing(self) -> Iterator[SqliteDatabase]:
        """One ``BEGIN IMMEDIATE`` transaction (the file's write lock), rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def pages(self, from_seq: int, size: int) -> Iterator[list[tuple[Any, ...]]]:
        with damaged_file(self.path):
            cur = self.conn.execute(_READ, (from_seq,))
        while True:
            with damaged_file(self.path):
                rows = cur.fetchmany(size)
            if not rows:
                return
            yield rows

    def check_store(self) -> list[str]:
        """What SQLite's ``PRAGMA integrity_check`` finds wrong in the whole file (every table and index,
        the service's included); empty when nothing."""
        with damaged_file(self.path):
            rows = [str(r[0]) for r in self.conn.execute("PRAGMA integrity_check(20)").fetchall()]
        if rows == ["ok"]:
            return []
        detail = "; ".join(" ".join(r.split()) for r in rows[:5]) + ("; ..." if len(rows) > 5 else "")
        return [f"{self.path}: the SQLite file is malformed (integrity_check: {detail})"]

    def setting(self, name: str) -> Any:
        return self.conn.execute(f"PRAGMA {name}").fetchone()[0]


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
