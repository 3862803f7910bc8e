"""The durable event log on PostgreSQL (psycopg 3): the same API and semantics as :class:`EventLog`.

One log lives in one schema, named by the URL's ``schema`` query parameter (default ``public``):
``postgresql://user:password@host:port/dbname?schema=fm_prod``. Its tables mirror the SQLite file:
``meta (key TEXT PRIMARY KEY, value BYTEA)`` and ``events (seq BIGINT PRIMARY KEY, ts_ns BIGINT,
type TEXT, is_input BOOLEAN, payload BYTEA)``; payloads are the same bytes (``encode_event``).

A batch is appended in one transaction that first locks ``events`` against other writers (the
single-writer rule that ``BEGIN IMMEDIATE`` gives on SQLite), checks the seqs continue the log and
stores the checkpoint in the same transaction. The session runs with ``synchronous_commit = on``,
so a COMMIT that returned is durable on the server: that is the acknowledgement point.
Reads page through the table by seq (keyset pagination), so a replay never holds the whole log.

URLs are read as libpq reads them (psycopg's own conninfo parser); ``schema`` is the one parameter that is
ours. A password is never shown: :func:`redact` hides it however the URL spells it.

A lost connection (the server restarted, a failover) is a :class:`StoreUnavailable`; the next call
connects again. Reads are retried once on a fresh connection. An append whose connection was lost may
have committed (the COMMIT reached the server, its answer did not): the next append first checks the
log for the batch and does not write it twice.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.events import EVENT_TYPES, Event, event_from_dict
from fluidmargin.store.log import (
    MAGIC,
    SCHEMA_VERSION,
    LogCorruptError,
    LogFormatError,
    Row,
    StoreUnavailable,
    check_continues,
    encode_rows,
)

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "public"
_COLUMNS = ["seq", "ts_ns", "type", "is_input", "payload"]
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.S)
_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&]*")
CONNECT_TIMEOUT_S = 10  # unless the URL sets connect_timeout: a server that does not answer is an error
T = TypeVar("T")


def parse_url(url: str) -> tuple[str, str]:
    """``(libpq connection URL without the schema parameter, schema name)`` for a postgresql:// URL.

    The URL is split as libpq splits it and checked with libpq's own parser; a user name or password
    with a ``/`` or ``@`` in it (which libpq would read as a host, port or database) must be
    percent-encoded, and is refused with a message that does not show it.
    """
    m = _URL.match(url)
    if m is None or m.group(1).lower() not in SCHEMES:
        raise ValidationError(f"{redact(url)} is not a postgresql:// URL")
    rest = m.group(2)
    # libpq: user info is what comes before an '@' met before any '/'
    cut = next((i for i, ch in enumerate(rest) if ch in "@/"), len(rest))
    userinfo, after = (rest[:cut], rest[cut + 1 :]) if cut < len(rest) and rest[cut] == "@" else (None, rest)
    body, _, query = after.partition("?")
    if "@" in body:
        raise ValidationError(
            f"{redact(url)}: a '/' or '@' in the user name or password must be percent-encoded"
            " (%2F, %40), or the password passed as ?password=..., in $PGPASSWORD or a .pgpass file"
        )
    kept, schemas = [], []
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        if unquote(key) == "schema":
            schemas.append(unquote(value))
        else:
            kept.append(part)
    if len(schemas) > 1:
        raise ValidationError(f"{redact(url)}: more than one schema parameter")
    schema = schemas[0] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.match(schema):
        raise ValidationError(f"{redact(url)}: schema {schema!r} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
    conninfo = f"{m.group(1)}://" + (f"{userinfo}@" if userinfo is not None else "") + body
    if kept:
        conninfo += "?" + "&".join(kept)
    try:
        conninfo_to_dict(conninfo)
    except psycopg.Error as e:
        raise ValidationError(f"{redact(url)}: not a valid PostgreSQL URL ({scrub(str(e).strip(), url)})") from None
    return conninfo, schema


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and ``.path``).

    Errs on the side of hiding: everything between ``://`` and the last ``@`` is taken for the user
    information (a password with a reserved character in it is still hidden), and so is every
    ``password=`` parameter.
    """
    m = _URL.match(url)
    if m is None:
        return _PASSWORD_PARAM.sub(r"\1***", url)
    head, rest = f"{m.group(1)}://", m.group(2)
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, _ = userinfo.partition(":")
        head += f"{user}:***@" if colon else f"{userinfo}@"
    return head + _PASSWORD_PARAM.sub(r"\1***", rest)


def _passwords(url: str) -> list[str]:
    """Every spelling of a password the URL may hold (raw and decoded), longest first."""
    out = set()
    m = _URL.match(url)
    rest = m.group(2) if m else url
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        out.add(rest[:at].split(":", 1)[1])
    out.update(v.group(0).split("=", 1)[1] for v in re.finditer(r"(?i)(?<=[?&])password=[^&]*", rest))
    out |= {unquote(p) for p in out}
    return sorted((p for p in out if p), key=len, reverse=True)


def scrub(message: str, url: str) -> str:
    """``message`` (a driver's error) with any spelling of the URL's password replaced by ``***``."""
    for secret in _passwords(url):
        message = message.replace(secret, "***")
    return message


def connect(
    conninfo: str, where: str, readonly: bool, error: type[Exception] = LogFormatError
) -> psycopg.Connection[Any]:
    """A session on the server (autocommit, ``synchronous_commit = on``); a failure is ``error`` (password hidden)."""
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in conninfo_to_dict(conninfo):
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
    except psycopg.Error as e:
        raise error(f"{where}: cannot connect to PostgreSQL: {scrub(str(e).strip(), conninfo)}") from None
    try:
        # a committed transaction must be durable when COMMIT returns, whatever the server's default
        conn.execute("SET synchronous_commit = on")
        if readonly:
            conn.execute("SET default_transaction_read_only = on")
    except psycopg.Error as e:
        conn.close()
        raise error(f"{where}: cannot set up the PostgreSQL session: {scrub(str(e).strip(), conninfo)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def connection_lost(conn: psycopg.Connection[Any], e: BaseException) -> bool:
    """Whether ``e`` means the connection is gone (a restart, a failover, a network cut), not a bad query."""
    if isinstance(e, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown | psycopg.errors.CannotConnectNow):
        return True
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError) and (conn.closed or conn.broken)


class PgEventLog:
    """Append-only event log in one PostgreSQL schema (single writer)."""

    _PAGE = 2000  # rows per page when reading

    def __init__(self, url: str, schema: str, conn: psycopg.Connection[Any], config: EngineConfig, readonly: bool):
        self.url = url
        self.path = redact(url)  # names the log in messages, as EventLog.path does
        self.schema = schema
        self._conn = conn
        self._conninfo = parse_url(url)[0]
        self.config = config
        self.readonly = readonly
        self._meta = sql.Identifier(schema, "meta")
        self._events = sql.Identifier(schema, "events")
        self._in_doubt = False  # an append lost its connection: its commit may or may not have happened

    # --- opening ----------------------------------------------------------------------------------

    @staticmethod
    def exists(url: str) -> bool:
        """Whether the URL's schema holds an ``events`` or ``meta`` table (a log, or something in its place)."""
        conninfo, schema = parse_url(url)
        with connect(conninfo, redact(url), readonly=True) as conn:
            return bool(_tables(conn, schema))

    @classmethod
    def create(cls, url: str, config: EngineConfig) -> PgEventLog:
        """Create a new, empty log for ``config`` (its checkpoint is the fresh engine's state hash)."""
        checkpoint_hash = Engine(config).state_hash()
        conninfo, schema = parse_url(url)
        where = redact(url)
        conn = connect(conninfo, where, readonly=False)
        meta, events = sql.Identifier(schema, "meta"), sql.Identifier(schema, "events")
        try:
            with conn.transaction():
                # two creators of one log serialise here; the loser sees the tables and refuses
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"fluidmargin-log:{schema}",))
                if _tables(conn, schema):
                    raise ValidationError(f"{where} already exists; open it instead of creating it")
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("CREATE TABLE {} (key TEXT PRIMARY KEY, value BYTEA NOT NULL)").format(meta))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} (seq BIGINT PRIMARY KEY, ts_ns BIGINT NOT NULL, type TEXT NOT NULL,"
                        " is_input BOOLEAN NOT NULL, payload BYTEA NOT NULL)"
                    ).format(events)
                )
                rows = {
                    "magic": MAGIC.encode(),
                    "schema_version": str(SCHEMA_VERSION).encode(),
                    "config": orjson.dumps(config.to_dict()),
                    "checkpoint_seq": b"0",
                    "checkpoint_hash": checkpoint_hash.encode(),
                }
                with conn.cursor() as cur:
                    cur.executemany(sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s)").format(meta), rows.items())
        except psycopg.Error as e:
            conn.close()
            raise LogFormatError(f"{where}: cannot create an event log: {scrub(str(e).strip(), url)}") from None
        except BaseException:
            conn.close()
            raise
        return cls(url, schema, conn, config, readonly=False)

    @classmethod
    def open(cls, url: str, readonly: bool = False) -> PgEventLog:
        """Open an existing log. A missing log or tables that are not a fluidmargin log are a LogFormatError."""
        conninfo, schema = parse_url(url)
        where = redact(url)
        conn = connect(conninfo, where, readonly)
        try:
            # only reads: a foreign schema must not be modified
            tables = _tables(conn, schema)
            if not tables:
                raise LogFormatError(f"{where}: no such event log (schema {schema!r} has no meta or events table)")
            if "meta" not in tables:
                raise LogFormatError(f"{where} is not a fluidmargin event log (no meta table)")
            meta = {
                str(k): v if isinstance(v, bytes) else str(v).encode()
                for k, v in conn.execute(sql.SQL("SELECT key, value FROM {}").format(sql.Identifier(schema, "meta")))
            }
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                    " AND table_name = 'events' ORDER BY ordinal_position",
                    (schema,),
                )
            ]
            if meta.get("magic", b"") != MAGIC.encode():
                raise LogFormatError(f"{where} is not a fluidmargin event log (no magic in its meta table)")
            version = int(meta["schema_version"])
            if version != SCHEMA_VERSION:
                raise LogFormatError(f"{where}: schema version {version}, this build reads {SCHEMA_VERSION}")
            if cols != _COLUMNS:
                raise LogFormatError(f"{where}: events table has columns {cols}")
            config = EngineConfig.from_dict(orjson.loads(meta["config"]))
            int(meta["checkpoint_seq"])
            meta["checkpoint_hash"].decode()
        except LogFormatError:
            conn.close()
            raise
        except psycopg.Error as e:
            conn.close()
            raise LogFormatError(f"{where} is not a fluidmargin event log ({scrub(str(e).strip(), url)})") from None
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as e:
            conn.close()
            raise LogFormatError(f"{where}: malformed event log header: {e}") from None
        except BaseException:
            conn.close()
            raise
        return cls(url, schema, conn, config, readonly)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the connection -----------------------------------------------------------------------------

    def _lost(self, e: BaseException) -> StoreUnavailable:
        with contextlib.suppress(Exception):
            self._conn.close()
        return StoreUnavailable(f"{self.path}: lost the connection to PostgreSQL: {scrub(str(e).strip(), self.url)}")

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, made again if it was lost (StoreUnavailable when the server cannot be reached)."""
        if self._conn.closed or self._conn.broken:
            self._conn.close()
            self._conn = connect(self._conninfo, self.path, self.readonly, error=StoreUnavailable)
        return self._conn

    def _query(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn(connection)`` for a read; after a lost connection, once more on a new one."""
        for attempt in (1, 2):
            conn = self._live()
            try:
                return fn(conn)
            except psycopg.Error as e:
                if not connection_lost(conn, e):
                    raise
                if attempt == 2:
                    raise self._lost(e) from None
                self._conn.close()
        raise AssertionError("unreachable")

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
        conn = self._live()
        try:
            with conn.transaction():
                # one writer at a time; readers are not blocked
                conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(self._events))
                last = _max_seq(conn, self._events)
                if self._in_doubt:
                    rows = self._not_yet_logged(conn, rows, last)
                check_continues(rows, last, checkpoint)
                if rows:
                    with (
                        conn.cursor() as cur,
                        cur.copy(
                            sql.SQL("COPY {} (seq, ts_ns, type, is_input, payload) FROM STDIN").format(self._events)
                        ) as copy,
                    ):
                        for row in rows:
                            copy.write_row(row)
                if checkpoint is not None:
                    cseq, chash = checkpoint
                    with conn.cursor() as cur:
                        cur.executemany(
                            sql.SQL("UPDATE {} SET value = %s WHERE key = %s").format(self._meta),
                            [(str(cseq).encode(), "checkpoint_seq"), (chash.encode(), "checkpoint_hash")],
                        )
        except psycopg.Error as e:
            if connection_lost(conn, e):
                self._in_doubt = True
                raise self._lost(e) from None
            raise
        self._in_doubt = False
        return last + len(rows)

    def _not_yet_logged(self, conn: psycopg.Connection[Any], rows: list[Row], last: int) -> list[Row]:
        """``rows`` less the leading ones the log already holds, byte for byte (an earlier commit's)."""
        if not rows or rows[0][0] > last:
            return rows
        k = min(last - rows[0][0] + 1, len(rows))
        held = conn.execute(
            sql.SQL("SELECT seq, payload FROM {} WHERE seq BETWEEN %s AND %s ORDER BY seq").format(self._events),
            (rows[0][0], rows[k - 1][0]),
        ).fetchall()
        if [(int(q), bytes(p)) for q, p in held] == [(r[0], r[4]) for r in rows[:k]]:
            return rows[k:]
        return rows

    # --- reading ----------------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The last committed seq (0 for an empty log)."""
        return self._query(lambda c: _max_seq(c, self._events))

    def count(self, inputs_only: bool = False) -> int:
        q = sql.SQL("SELECT COUNT(*) FROM {}" + (" WHERE is_input" if inputs_only else "")).format(self._events)
        return self._query(lambda c: _one(c.execute(q).fetchone()))

    def checkpoint(self) -> tuple[int, str]:
        """The stored (seq, state hash) checkpoint."""
        q = sql.SQL("SELECT key, value FROM {} WHERE key IN ('checkpoint_seq', 'checkpoint_hash')").format(self._meta)
        meta = {k: bytes(v) for k, v in self._query(lambda c: c.execute(q).fetchall())}
        return int(meta["checkpoint_seq"]), meta["checkpoint_hash"].decode()

    def read_dicts(self, from_seq: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(seq, event dict)`` for every record with ``seq >= from_seq``, in seq order.

        Checks each row's columns agree with its payload; a bad row is a LogCorruptError naming its seq.
        Reads one page of rows at a time (by seq), so memory does not grow with the log.
        """
        q = sql.SQL("SELECT seq, ts_ns, type, is_input, payload FROM {} WHERE seq >= %s ORDER BY seq LIMIT %s").format(
            self._events
        )
        nxt = from_seq
        while True:
            rows = self._query(functools.partial(_page, q, (nxt, self._PAGE)))
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
                    or bool(cls.is_input) != bool(is_input)
                ):
                    raise LogCorruptError(f"{self.path}: seq {seq}: columns disagree with the payload")
                yield seq, d
            if len(rows) < self._PAGE:
                return
            nxt = rows[-1][0] + 1

    def read(self, from_seq: int = 0) -> Iterator[tuple[int, Event]]:
        """Yield ``(seq, event)`` for every record with ``seq >= from_seq``, in seq order."""
        for seq, d in self.read_dicts(from_seq):
            try:
                yield seq, event_from_dict(d)
            except (ValidationError, TypeError) as e:
                raise LogCorruptError(f"{self.path}: seq {seq}: {e}") from None

    def payload_at(self, seq: int) -> bytes | None:
        q = sql.SQL("SELECT payload FROM {} WHERE seq = %s").format(self._events)
        row = self._query(lambda c: c.execute(q, (seq,)).fetchone())
        return None if row is None else bytes(row[0])

    def setting(self, name: str) -> str:
        """A server setting as this session sees it (``SHOW name``), e.g. ``synchronous_commit``."""
        q = sql.SQL("SHOW {}").format(sql.Identifier(name))
        return str(self._query(lambda c: c.execute(q).fetchone() or ("",))[0])

    def check_store(self) -> list[str]:
        """What is wrong with the log's own tables, beyond what a replay reads (empty: nothing found).

        PostgreSQL keeps its pages consistent itself; these are sanity queries: the meta keys, and the
        events table's primary key holding every seq from 1 to the last exactly once.
        """
        problems: list[str] = []
        q = sql.SQL("SELECT key FROM {}").format(self._meta)
        keys = {str(r[0]) for r in self._query(lambda c: c.execute(q).fetchall())}
        missing = {"magic", "schema_version", "config", "checkpoint_seq", "checkpoint_hash"} - keys
        if missing:
            problems.append(f"{self.path}: meta lacks {', '.join(sorted(missing))}")
        q = sql.SQL(
            "SELECT COUNT(*), COUNT(DISTINCT seq), COALESCE(MIN(seq), 1), COALESCE(MAX(seq), 0) FROM {}"
        ).format(self._events)
        n, distinct, lo, hi = self._query(lambda c: c.execute(q).fetchone() or (0, 0, 1, 0))
        if not (n == distinct == hi - lo + 1 and lo == 1) and n:
            problems.append(f"{self.path}: events hold {n} rows ({distinct} distinct seqs) for seqs {lo}..{hi}")
        return problems


def _page(q: sql.Composed, args: tuple[int, int], conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(q, args).fetchall()


def _max_seq(conn: psycopg.Connection[Any], events: sql.Identifier) -> int:
    return _one(conn.execute(sql.SQL("SELECT COALESCE(MAX(seq), 0) FROM {}").format(events)).fetchone())


def _one(row: tuple[Any, ...] | None) -> int:
    assert row is not None
    return int(row[0])


def _tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name IN ('meta', 'events')",
        (schema,),
    ).fetchall()
    return {str(r[0]) for r in rows}
