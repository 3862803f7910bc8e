"""Where the service keeps its state: the one place that opens the durable log and the tables beside it.

The store is named by ``--db``: a path or ``sqlite:///PATH`` (one SQLite file), or
``postgresql://user:pw@host:port/db?schema=NAME`` (one PostgreSQL schema). Beside the log's own tables
(``meta``, ``events``: :mod:`fluidmargin.store`) the same store holds the service's tables: the key
registry (``api_keys``, ``key_accounts``, ``sub_accounts``: :class:`~fluidmargin.service.auth.KeyRegistry`)
and the idempotency index (``idempotency``: :class:`IdempotencyIndex`). So a PostgreSQL deployment keeps
no local state but its snapshots (files; restored on start when they match the log, else the log is
replayed from the start).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim.venues import perp_venue, waterfall_venue
from fluidmargin.store.backend import LogTarget, open_log, scheme_of, sqlite_path
from fluidmargin.store.log import EventLog
from fluidmargin.store.runner import Runner

VENUES: dict[str, Callable[[], EngineConfig]] = {"perp": perp_venue, "waterfall": waterfall_venue}
GROUP_SIZE = 1 << 30  # the worker decides when to commit (once per batch), never the runner


def load_config(spec: str) -> EngineConfig:
    """A venue by name (``perp``, ``waterfall``) or an ``EngineConfig.to_dict()`` JSON file."""
    if spec in VENUES:
        return VENUES[spec]()
    path = Path(spec)
    if not path.is_file():
        raise ValidationError(f"--config {spec!r} is neither a venue ({', '.join(VENUES)}) nor a JSON file")
    try:
        return EngineConfig.from_dict(orjson.loads(path.read_bytes()))
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"{path}: not JSON ({e})") from None


def is_postgres(db: LogTarget) -> bool:
    return scheme_of(db) == "postgresql"


def open_runner(db: LogTarget, config: EngineConfig | None, snapshot_dir: str | Path | None) -> Runner:
    """Create the log (needs ``config``) or recover it: newest snapshot, then the tail replayed."""
    if snapshot_dir is not None:
        Path(snapshot_dir).mkdir(parents=True, exist_ok=True)
    if is_postgres(db):
        return Runner.open_or_create(str(db), config, snapshot_dir, group_size=GROUP_SIZE)
    path = sqlite_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    if config is not None:
        _graft_log(path, config)
    return Runner.open_or_create(path, config, snapshot_dir, group_size=GROUP_SIZE)


def key_registry_path(db: LogTarget) -> LogTarget:
    """Where the key registry lives: in the log's own store (the SQLite file, or the PostgreSQL schema)."""
    return str(db) if is_postgres(db) else sqlite_path(db)


def default_snapshot_dir(db: LogTarget) -> Path:
    """``<file>.snapshots`` beside a SQLite log; for PostgreSQL, a directory per server, database and schema
    under ``$XDG_STATE_HOME/fluidmargin/snapshots`` (default ``~/.local/state``)."""
    if not is_postgres(db):
        p = sqlite_path(db)
        return p.with_name(p.name + ".snapshots")
    from fluidmargin.store.pg import parse_url

    conninfo, schema = parse_url(str(db))
    parts = urlsplit(conninfo)
    name = f"{parts.hostname or 'local'}_{parts.port or 5432}_{parts.path.strip('/') or 'db'}_{schema}"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "fluidmargin" / "snapshots" / "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def log_config(db: LogTarget) -> EngineConfig | None:
    """The config an existing log was created with (None when there is no log there yet)."""
    if is_postgres(db):
        from fluidmargin.store.pg import PgEventLog

        if not PgEventLog.exists(str(db)):
            return None
    else:
        path = sqlite_path(db)
        if not path.exists() or not _sqlite_tables(path) & {"meta", "events"}:
            return None  # nothing, or only the service's tables (made before the log)
    log = open_log(db, readonly=True)
    try:
        return log.config
    finally:
        log.close()


# --- SQLite: the log's tables and the service's in one file ----------------------------------------------


def _sqlite_tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _graft_log(path: Path, config: EngineConfig) -> None:
    """Give a SQLite file that holds only the service's tables the tables of a new, empty event log.

    The key registry opens (and so creates) the file before the engine worker creates the log; the log
    is made by :class:`EventLog` in a file of its own and copied in whole, in one transaction.
    """
    if not path.exists():
        return
    tables = _sqlite_tables(path)
    if tables & {"meta", "events"} or not tables:
        return  # a log already (open it), or an empty file (the store refuses it)
    tmp = path.with_name(f"{path.name}.new-log-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    EventLog.create(tmp, config).close()
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=60)) as conn:
            conn.execute("ATTACH DATABASE ? AS fresh", (str(tmp),))
            conn.execute("BEGIN IMMEDIATE")
            try:
                have = {r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
                if not have & {"meta", "events"}:
                    ddl = conn.execute(
                        "SELECT name, sql FROM fresh.sqlite_master WHERE type IN ('table', 'index') AND sql IS NOT NULL"
                        " ORDER BY type DESC"
                    ).fetchall()
                    for _name, stmt in ddl:
                        conn.execute(stmt)  # unqualified: made in main
                    for name, stmt in ddl:
                        if stmt.upper().startswith("CREATE TABLE"):
                            conn.execute(f'INSERT INTO main."{name}" SELECT * FROM fresh."{name}"')
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("DETACH DATABASE fresh")
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)


# --- the service's own tables ------------------------------------------------------------------------------


class ServiceTables:
    """One connection to the service's tables in the log's store: SQLite file or PostgreSQL schema.

    SQL is written once with ``?`` placeholders and portable types (``BIGINT``, ``DOUBLE PRECISION``,
    ``ON CONFLICT DO NOTHING``); on PostgreSQL the placeholders become ``%s`` and the connection's
    ``search_path`` is the log's schema. Thread-safe: one statement or transaction at a time.
    ``durable=False``: commits need not reach the disk before returning (SQLite ``synchronous=NORMAL``,
    PostgreSQL ``synchronous_commit=off``): for data that can be rebuilt from the log.
    """

    def __init__(self, target: LogTarget, durable: bool = True) -> None:
        self.postgres = is_postgres(target)
        self._lock = threading.RLock()
        self._conn: Any
        if self.postgres:
            import psycopg
            from psycopg import sql

            from fluidmargin.store.pg import parse_url, redact

            conninfo, schema = parse_url(str(target))
            self.where = redact(str(target))
            try:
                conn = psycopg.connect(conninfo, autocommit=True)
            except psycopg.Error as e:
                raise ValidationError(f"{self.where}: cannot connect to PostgreSQL: {str(e).strip()}") from None
            try:
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                conn.execute("SET synchronous_commit = " + ("on" if durable else "off"))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        else:
            path = sqlite_path(target)
            self.where = str(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn3 = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
            try:
                conn3.execute("PRAGMA journal_mode=WAL")
                conn3.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
            except BaseException:
                conn3.close()
                raise
            self._conn = conn3

    def _sql(self, stmt: str) -> str:
        return stmt.replace("?", "%s") if self.postgres else stmt

    def execute(self, stmt: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cur = self._conn.execute(self._sql(stmt), params)
            return list(cur.fetchall()) if cur.description else []

    def executemany(self, stmt: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            if self.postgres:
                with self._conn.cursor() as cur:
                    cur.executemany(self._sql(stmt), list(rows))
            else:
                self._conn.executemany(stmt, rows)

    def script(self, ddl: str) -> None:
        """Run ``;``-separated DDL statements in one transaction."""
        with self.transaction():
            for stmt in ddl.split(";"):
                if stmt.strip():
                    self.execute(stmt)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self.postgres:
                with self._conn.transaction():
                    yield
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# --- the idempotency index ---------------------------------------------------------------------------------

_IDEM_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    event_id TEXT PRIMARY KEY,
    fingerprint TEXT,
    seq BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_seq ON idempotency (seq)
"""


def fingerprint_digest(fingerprint: Any) -> str | None:
    """A stable digest of a request's fingerprint (what an Idempotency-Key promises stays the same)."""
    if fingerprint is None:
        return None
    raw = orjson.dumps(fingerprint, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.sha256(raw).hexdigest()[:32]


class IdempotencyIndex:
    """``event_id -> (request fingerprint digest, seq of the input)`` for every keyed write, in the log's store.

    The log itself holds every event id (in its input's payload), so the index only makes a replay after a
    restart cheap (no log scan) and keeps the request's fingerprint, so a key reused for another request
    is refused after a restart too. It is written after each group commit, without waiting for the disk;
    rows a crash lost are rebuilt from the log on the next start (without a fingerprint).
    """

    def __init__(self, target: LogTarget) -> None:
        self.tables = ServiceTables(target, durable=False)
        self.tables.script(_IDEM_SCHEMA)

    @classmethod
    def for_runner(cls, runner: Runner) -> IdempotencyIndex | None:
        """The index in the store of ``runner``'s log (None for a log of another kind, or read-only)."""
        log: Any = runner.log
        if getattr(log, "readonly", True):
            return None
        if isinstance(log, EventLog):
            return cls(Path(log.path))
        url = getattr(log, "url", None)
        if isinstance(url, str) and is_postgres(url):
            return cls(url)
        return None

    def catch_up(self, runner: Runner) -> int:
        """Index the keyed inputs the log holds beyond the index (a crash between commit and index)."""
        rows = self.tables.execute("SELECT COALESCE(MAX(seq), 0) FROM idempotency")
        last = int(rows[0][0]) if rows else 0
        missing = []
        for seq, d in runner.log.read_dicts(last + 1):
            eid = d.get("event_id")
            if eid and isinstance(eid, str):
                missing.append((eid, None, seq))
        self.add(missing)
        return len(missing)

    def add(self, rows: Sequence[tuple[str, str | None, int]]) -> None:
        if rows:
            with self.tables.transaction():
                self.tables.executemany(
                    "INSERT INTO idempotency (event_id, fingerprint, seq) VALUES (?, ?, ?)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    rows,
                )

    def get(self, event_id: str) -> tuple[str | None, int] | None:
        rows = self.tables.execute("SELECT fingerprint, seq FROM idempotency WHERE event_id = ?", (event_id,))
        if not rows:
            return None
        fp, seq = rows[0]
        return (None if fp is None else str(fp)), int(seq)

    def close(self) -> None:
        self.tables.close()
