"""Where the service keeps its state: the one place that opens the durable log and the tables beside it.

The store is named by ``--db``: a path or ``sqlite:///PATH`` (one SQLite file), or
``postgresql://user:pw@host:port/db?schema=NAME`` (one PostgreSQL schema). Beside the log's own tables
(``meta``, ``events``: :mod:`fluidmargin.store`) the same store holds the service's tables: the key
registry (``api_keys``, ``key_accounts``, ``sub_accounts``: :class:`~fluidmargin.service.auth.KeyRegistry`)
and the idempotency index (``idempotency``: :class:`IdempotencyIndex`). So a PostgreSQL deployment keeps
no local state but its snapshots (files; restored on start when they match the log, else the log is
replayed from the start).

A PostgreSQL store may restart under the service: the connections here are made again when lost (see
:class:`ServiceTables`; the log's own, :class:`~fluidmargin.store.pg.PgDatabase`; both hold a
:class:`~fluidmargin.store.pg.Session`), and a group commit is retried for :data:`COMMIT_RETRY_S` seconds
before its writes are answered 503 (then the engine is rebuilt from the log once the store is back:
:meth:`Runner.reload`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.config import EngineConfig
from fluidmargin.service.errors import WorkerUnavailable
from fluidmargin.sim.venues import perp_venue, waterfall_venue
from fluidmargin.store.backend import LogTarget, log_exists, open_log, scheme_of, sqlite_path
from fluidmargin.store.log import EventLog
from fluidmargin.store.records import LogCorruptError, StoreUnavailable
from fluidmargin.store.runner import Runner
from fluidmargin.store.sqlite import damaged_file

if TYPE_CHECKING:
    from fluidmargin.store.backend import LogBackend
    from fluidmargin.store.pg import Session

VENUES: dict[str, Callable[[], EngineConfig]] = {"perp": perp_venue, "waterfall": waterfall_venue}
GROUP_SIZE = 1 << 30  # the worker decides when to commit (once per batch), never the runner
COMMIT_RETRY_S = 10.0  # a commit the store cannot take (a restart) is retried this long, writes held


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
        return Runner.open_or_create(str(db), config, snapshot_dir, group_size=GROUP_SIZE, retry_s=COMMIT_RETRY_S)
    path = sqlite_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    if config is not None:
        with damaged_file(path):
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
    from psycopg.conninfo import conninfo_to_dict  # psycopg: only for a PostgreSQL store

    from fluidmargin.store.pg import parse_url  # lazy: psycopg only for a PostgreSQL store

    conninfo, schema = parse_url(str(db))
    d = conninfo_to_dict(conninfo)
    name = f"{d.get('host') or 'local'}_{d.get('port') or 5432}_{d.get('dbname') or 'db'}_{schema}"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "fluidmargin" / "snapshots" / "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def log_config(db: LogTarget) -> EngineConfig | None:
    """The config an existing log was created with (None when there is no log there yet)."""
    if is_postgres(db):
        if not log_exists(db):
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
    with (
        damaged_file(path),
        contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn,
    ):
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
    PostgreSQL ``synchronous_commit=off``): for data that can be rebuilt from the log. ``readonly``:
    nothing is created or changed (for checks).

    A lost PostgreSQL connection (a server restart) is made again at the next call; a statement run
    outside a transaction is then run once more on the new connection (so such statements must be
    idempotent, as every one here is). A transaction that loses its connection is not retried. While the
    server cannot be reached, calls raise :class:`~fluidmargin.service.errors.WorkerUnavailable` (503).
    A damaged SQLite file is a :class:`~fluidmargin.store.records.LogCorruptError` naming it.
    """

    def __init__(self, target: LogTarget, durable: bool = True, readonly: bool = False) -> None:
        self.postgres = is_postgres(target)
        self.durable, self.readonly = durable, readonly
        self._lock = threading.RLock()
        self._in_txn = False
        self._pg: Session | None = None
        self._sqlite: sqlite3.Connection | None = None
        if self.postgres:
            from fluidmargin.store.pg import Session  # psycopg: only for a PostgreSQL store

            self._pg = Session(str(target), readonly, error=ValidationError, setup=self._pg_setup)
            self.where = self._pg.where
        else:
            path = sqlite_path(target)
            self.where = str(path)
            if readonly:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                conn3 = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=60)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn3 = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
            try:
                with damaged_file(path):
                    if not readonly:
                        conn3.execute("PRAGMA journal_mode=WAL")
                        conn3.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
            except BaseException:
                conn3.close()
                raise
            self._sqlite = conn3

    @property
    def _conn(self) -> Any:
        """The connection now (PostgreSQL: the one made after the last loss)."""
        return self._pg.conn if self._pg is not None else self._sqlite

    def _pg_setup(self, conn: Any, schema: str) -> None:
        """A new PostgreSQL connection: the log's schema (made if missing) is its search path."""
        from psycopg import sql

        if not self.readonly and (
            conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
        ):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("SET synchronous_commit = " + ("on" if self.durable else "off"))

    def _unavailable(self, why: object) -> Exception:
        return WorkerUnavailable(f"{self.where}: the store is unavailable ({why}); retry later")

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(connection)``; on PostgreSQL, after a lost connection outside a transaction, once more."""
        if self._pg is None:
            with damaged_file(self.where):
                return fn(self._sqlite)
        try:
            return self._pg.run(fn, self._unavailable, in_transaction=self._in_txn)
        except StoreUnavailable as e:  # the connection could not be made again
            raise self._unavailable(e) from None

    def _sql(self, stmt: str) -> str:
        return stmt.replace("?", "%s") if self.postgres else stmt

    def execute(self, stmt: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run(conn: Any) -> list[tuple[Any, ...]]:
            cur = conn.execute(self._sql(stmt), params)
            return list(cur.fetchall()) if cur.description else []

        with self._lock:
            out: list[tuple[Any, ...]] = self._run(run)
            return out

    def executemany(self, stmt: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)

        def run(conn: Any) -> None:
            if self.postgres:
                with conn.cursor() as cur:
                    cur.executemany(self._sql(stmt), batch)
            else:
                conn.executemany(stmt, batch)

        with self._lock:
            self._run(run)

    def script(self, ddl: str) -> None:
        """Run ``;``-separated DDL statements in one transaction."""
        with self.transaction():
            for stmt in ddl.split(";"):
                if stmt.strip():
                    self.execute(stmt)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._run(lambda c: c.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE"))
            self._in_txn = True
            try:
                try:
                    yield
                except BaseException:
                    with contextlib.suppress(Exception):
                        self._conn.execute("ROLLBACK")
                    raise
                self._run(lambda c: c.execute("COMMIT"))  # a lost connection here: 503, never retried
            finally:
                self._in_txn = False

    def idempotent_transaction(self, fn: Callable[[], None]) -> None:
        """``fn()`` (statements through this object) in one transaction; if the connection is lost on the
        way, once more on a new one. Only for work that may safely be done twice (inserts that ignore
        conflicts)."""
        with self._lock:
            lost = self._pg.lost if self._pg is not None else 0
            try:
                with self.transaction():
                    fn()
                return
            except Exception:
                if self._pg is None or self._pg.lost == lost:
                    raise
            with self.transaction():
                fn()

    def tables(self) -> set[str]:
        """The names of the tables in the store (the file, or the schema)."""
        if self.postgres:
            q = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        else:
            q = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {str(r[0]) for r in self.execute(q)}

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
        log = runner.log
        if not isinstance(log, EventLog) or log.readonly:
            return None
        return cls(log.db.target)

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
            self.tables.idempotent_transaction(
                lambda: self.tables.executemany(
                    "INSERT INTO idempotency (event_id, fingerprint, seq) VALUES (?, ?, ?)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    rows,
                )
            )

    def get(self, event_id: str) -> tuple[str | None, int] | None:
        rows = self.tables.execute("SELECT fingerprint, seq FROM idempotency WHERE event_id = ?", (event_id,))
        if not rows:
            return None
        fp, seq = rows[0]
        return (None if fp is None else str(fp)), int(seq)

    def close(self) -> None:
        self.tables.close()


# --- checking the service's tables (verify-log) ------------------------------------------------------------

KEY_TABLES = ("api_keys", "key_accounts", "sub_accounts")
_PAGE = 5000


def check_service_tables(db: LogTarget, log: LogBackend) -> tuple[dict[str, int], list[str]]:
    """Row counts of the service's tables in the store ``db`` (whose log is ``log``) and what is wrong with
    them (empty: nothing found). A log written without the service has none of them: nothing to check.

    The key registry must be whole (all its tables, no key's accounts without the key, no key hash
    twice); every idempotency row must name the input the log holds at its seq (a wrong one would answer
    a replayed request with another request's records). Reads only.
    """
    counts: dict[str, int] = {}
    problems: list[str] = []
    try:
        t = ServiceTables(db, readonly=True)
    except (LogCorruptError, ValidationError) as e:
        return counts, [str(e)]
    try:
        have = t.tables()
        keys = [n for n in KEY_TABLES if n in have]
        if keys and len(keys) < len(KEY_TABLES):
            missing = ", ".join(n for n in KEY_TABLES if n not in have)
            problems.append(f"{t.where}: the key registry has no {missing} table")
        for name in keys:
            counts[name] = int(t.execute(f"SELECT COUNT(*) FROM {name}")[0][0])
        if "api_keys" in have:
            dup = int(t.execute("SELECT COUNT(*) - COUNT(DISTINCT key_hash) FROM api_keys")[0][0])
            if dup:
                problems.append(f"{t.where}: api_keys holds {dup} key hash(es) twice")
            if "key_accounts" in have:
                orphans = t.execute(
                    "SELECT COUNT(*) FROM key_accounts WHERE key_id NOT IN (SELECT key_id FROM api_keys)"
                )[0][0]
                if orphans:
                    problems.append(f"{t.where}: key_accounts has {orphans} row(s) of keys api_keys does not hold")
        if "idempotency" in have:
            counts["idempotency_keys"] = int(t.execute("SELECT COUNT(*) FROM idempotency")[0][0])
            problems += _check_idempotency(t, log)
    except LogCorruptError as e:
        problems.append(str(e))
    except Exception as e:  # a driver error on a damaged or foreign table: one line, not a traceback
        if isinstance(e, StoreUnavailable | ValidationError) or type(e).__module__.startswith(("psycopg", "sqlite3")):
            problems.append(f"{t.where}: {type(e).__name__}: {' '.join(str(e).split())}")
        else:
            raise
    finally:
        t.close()
    return counts, problems


def _check_idempotency(t: ServiceTables, log: LogBackend) -> list[str]:
    """Every (event_id, seq) row against the log, both read in seq order (memory does not grow with either)."""
    wrong, first = 0, ""
    after = -1
    records = log.read_dicts(1)
    rec = next(records, None)
    while True:
        rows = t.execute(
            "SELECT event_id, seq FROM idempotency WHERE seq > ? ORDER BY seq, event_id LIMIT ?", (after, _PAGE)
        )
        if not rows:
            break
        for eid, seq in rows:
            while rec is not None and rec[0] < seq:
                rec = next(records, None)
            if rec is None or rec[0] != seq or rec[1].get("event_id") != eid:
                wrong += 1
                first = first or f"key {eid!r} points at seq {seq}, which " + (
                    "the log does not hold" if rec is None or rec[0] != seq else "holds another input"
                )
        after = int(rows[-1][1])
        if len(rows) < _PAGE:
            break
    if not wrong:
        return []
    return [f"{t.where}: {wrong} idempotency row(s) disagree with the log ({first})"]
