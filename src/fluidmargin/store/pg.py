"""The event log's PostgreSQL dialect (psycopg 3): the same log as SQLite's, in one schema of a server.

One log lives in one schema, named by the URL's ``schema`` query parameter (default ``public``):
``postgresql://user:password@host:port/dbname?schema=fm_prod``. Its tables mirror the SQLite file:
``meta (key TEXT PRIMARY KEY, value BYTEA)`` and ``events (seq BIGINT PRIMARY KEY, ts_ns BIGINT,
type TEXT, is_input BOOLEAN, payload BYTEA)``; payloads are the same bytes (``encode_event``).

An append's transaction first locks ``events`` against other writers (the single-writer rule that
``BEGIN IMMEDIATE`` gives on SQLite) and writes its rows with ``COPY``. The session runs with
``synchronous_commit = on``, so a COMMIT that returned is durable on the server: that is the
acknowledgement point. Reads page through the table by seq (keyset pagination), so a replay never holds
the whole log and a page can be read again on a new connection.

URLs are read as libpq reads them (psycopg's own conninfo parser); ``schema`` is the one parameter that is
ours. A password is never shown: :func:`redact` hides it however the URL spells it.

A lost connection (the server restarted, a failover) is a :class:`StoreUnavailable`; the next call
connects again. Reads are retried once on a fresh connection. An append whose connection was lost may
have committed (the COMMIT reached the server, its answer did not): the log is then *in doubt*, and its
next append first checks for the batch and does not write it twice (:meth:`EventLog.append`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from fluidmargin.core.errors import ValidationError
from fluidmargin.store.log import EventLog
from fluidmargin.store.records import META_KEYS, LogFormatError, Row, StoreUnavailable

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "public"
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
    with closed_on_failure(conn, conninfo, lambda why: error(f"{where}: cannot set up the PostgreSQL session: {why}")):
        # a committed transaction must be durable when COMMIT returns, whatever the server's default
        conn.execute("SET synchronous_commit = on")
        if readonly:
            conn.execute("SET default_transaction_read_only = on")
    return conn


@contextlib.contextmanager
def closed_on_failure(conn: psycopg.Connection[Any], url: str, fail: Callable[[str], Exception]) -> Iterator[None]:
    """Close ``conn`` when the block fails; a driver's error becomes ``fail(its message, password hidden)``."""
    try:
        yield
    except psycopg.Error as e:
        conn.close()
        raise fail(scrub(str(e).strip(), url)) from None
    except BaseException:
        conn.close()
        raise


def connection_lost(conn: psycopg.Connection[Any], e: BaseException) -> bool:
    """Whether ``e`` means the connection is gone (a restart, a failover, a network cut), not a bad query."""
    if isinstance(e, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown | psycopg.errors.CannotConnectNow):
        return True
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError) and (conn.closed or conn.broken)


class Session:
    """A session on a PostgreSQL server that is made again when it was lost (a restart, a failover).

    ``setup(connection, schema)`` runs on every new connection, after :func:`connect`'s own settings.
    The first connection failing is ``error``; a later one, StoreUnavailable.
    """

    def __init__(
        self,
        url: str,
        readonly: bool,
        error: type[Exception] = LogFormatError,
        setup: Callable[[psycopg.Connection[Any], str], None] | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> None:
        self.url = url
        self.conninfo, self.schema = parse_url(url)
        self.where = redact(url)  # names the server in messages
        self.readonly = readonly
        self.lost = 0  # connections lost so far
        self._setup = setup
        self.conn = conn if conn is not None else self._connect(error)

    def _connect(self, error: type[Exception]) -> psycopg.Connection[Any]:
        conn = connect(self.conninfo, self.where, self.readonly, error=error)
        if self._setup is not None:
            try:
                self._setup(conn, self.schema)
            except BaseException:
                conn.close()
                raise
        return conn

    def live(self) -> psycopg.Connection[Any]:
        """The connection, made again if it was lost (StoreUnavailable when the server cannot be reached)."""
        if self.conn.closed or self.conn.broken:
            self.conn.close()
            self.conn = self._connect(StoreUnavailable)
        return self.conn

    def why(self, e: BaseException) -> str:
        """A driver's error as a message (the password hidden)."""
        return scrub(str(e).strip(), self.url)

    def run(
        self,
        fn: Callable[[psycopg.Connection[Any]], T],
        unavailable: Callable[[str], Exception],
        in_transaction: bool = False,
    ) -> T:
        """``fn(connection)``. A lost connection is ``unavailable(why)``; outside a transaction ``fn`` is
        first run once more on a new connection (so it must be idempotent), inside one never."""
        for attempt in (1, 2):
            if in_transaction and (self.conn.closed or self.conn.broken):
                raise unavailable("the connection was lost in a transaction")
            conn = self.live()
            try:
                return fn(conn)
            except psycopg.Error as e:
                if not connection_lost(conn, e):
                    raise
                conn.close()
                self.lost += 1
                if in_transaction or attempt == 2:
                    raise unavailable(self.why(e)) from None
        raise AssertionError("unreachable")


class PgDatabase:
    """The store of one log: the ``meta`` and ``events`` tables of one schema (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.url = self.target = session.url
        self.path = session.where  # names the log in messages
        self.schema = session.schema
        self.in_doubt = False  # an append lost its connection: its commit may or may not have happened
        self._events = sql.Identifier(self.schema, "events")
        self._meta = sql.Identifier(self.schema, "meta")
        self._sql: dict[str, sql.Composed] = {}

    @staticmethod
    def exists(url: str) -> bool:
        """Whether the URL's schema holds an ``events`` or ``meta`` table (a log, or something in its place)."""
        conninfo, schema = parse_url(url)
        with connect(conninfo, redact(url), readonly=True) as conn:
            return bool(_tables(conn, schema))

    @classmethod
    def create(cls, target: str | Path, header: dict[str, bytes]) -> PgDatabase:
        """The tables of an empty log with ``header`` in its meta table; a schema holding either is refused."""
        url = str(target)
        conninfo, schema = parse_url(url)
        where = redact(url)
        conn = connect(conninfo, where, readonly=False)
        meta, events = sql.Identifier(schema, "meta"), sql.Identifier(schema, "events")
        with (
            closed_on_failure(conn, url, lambda why: LogFormatError(f"{where}: cannot create an event log: {why}")),
            conn.transaction(),
        ):
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
            with conn.cursor() as cur:
                cur.executemany(sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s)").format(meta), header.items())
        return cls(Session(url, readonly=False, conn=conn))

    @classmethod
    def open(cls, target: str | Path, readonly: bool) -> PgDatabase:
        """A session on the URL's server for the log in its schema (read-only when ``readonly``)."""
        return cls(Session(str(target), readonly))

    def read_header(self) -> tuple[dict[str, Any], list[str]]:
        conn, where = self.session.conn, self.path
        try:
            tables = _tables(conn, self.schema)
            if not tables:
                raise LogFormatError(f"{where}: no such event log (schema {self.schema!r} has no meta or events table)")
            if "meta" not in tables:
                raise LogFormatError(f"{where} is not a fluidmargin event log (no meta table)")
            meta = {
                str(k): v if isinstance(v, bytes) else str(v).encode()
                for k, v in conn.execute(sql.SQL("SELECT key, value FROM {}").format(self._meta))
            }
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                    " AND table_name = 'events' ORDER BY ordinal_position",
                    (self.schema,),
                )
            ]
        except psycopg.Error as e:
            raise LogFormatError(f"{where} is not a fluidmargin event log ({self.session.why(e)})") from None
        return meta, cols

    def prepare_writes(self) -> None:
        pass  # the session was set up when it connected

    def close(self) -> None:
        self.session.conn.close()

    # --- statements ---------------------------------------------------------------------------------

    def _lost(self, why: str) -> StoreUnavailable:
        return StoreUnavailable(f"{self.path}: lost the connection to PostgreSQL: {why}")

    def _render(self, query: str) -> sql.Composed:
        """The log's SQL (``?`` placeholders, ``{events}``, ``{meta}``) for this schema."""
        q = self._sql.get(query)
        if q is None:
            q = self._sql[query] = sql.SQL(query.replace("?", "%s")).format(events=self._events, meta=self._meta)
        return q

    def fetch(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read; after a lost connection, once more on a new one."""
        q = self._render(query)
        return self.session.run(lambda c: c.execute(q, args).fetchall(), self._lost)

    @contextlib.contextmanager
    def writing(self) -> Iterator[PgTransaction]:
        """One transaction that first locks ``events`` against other writers (readers are not blocked).

        A lost connection is a StoreUnavailable and leaves the log in doubt until a write commits."""
        conn = self.session.live()
        try:
            with conn.transaction():
                conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(self._events))
                yield PgTransaction(conn, self._render, self._events)
        except psycopg.Error as e:
            if connection_lost(conn, e):
                self.in_doubt = True
                with contextlib.suppress(Exception):
                    conn.close()
                raise self._lost(self.session.why(e)) from None
            raise
        self.in_doubt = False

    def pages(self, from_seq: int, size: int) -> Iterator[list[tuple[Any, ...]]]:
        """Keyset pagination by seq: each page is one query (read again on a new connection if need be)."""
        nxt = from_seq
        while True:
            rows = self.fetch(
                "SELECT seq, ts_ns, type, is_input, payload FROM {events} WHERE seq >= ? ORDER BY seq LIMIT ?",
                (nxt, size),
            )
            if not rows:
                return
            yield rows
            if len(rows) < size:
                return
            nxt = rows[-1][0] + 1

    def setting(self, name: str) -> str:
        """A server setting as this session sees it (``SHOW name``), e.g. ``synchronous_commit``."""
        q = sql.SQL("SHOW {}").format(sql.Identifier(name))
        return str(self.session.run(lambda c: c.execute(q).fetchone() or ("",), self._lost)[0])

    def check_store(self) -> list[str]:
        """PostgreSQL keeps its pages consistent itself; these are sanity queries: the meta keys, and the
        events table's primary key holding every seq from 1 to the last exactly once."""
        problems: list[str] = []
        keys = {str(r[0]) for r in self.fetch("SELECT key FROM {meta}")}
        missing = set(META_KEYS) - keys
        if missing:
            problems.append(f"{self.path}: meta lacks {', '.join(sorted(missing))}")
        q = "SELECT COUNT(*), COUNT(DISTINCT seq), COALESCE(MIN(seq), 1), COALESCE(MAX(seq), 0) FROM {events}"
        n, distinct, lo, hi = (self.fetch(q) or [(0, 0, 1, 0)])[0]
        if not (n == distinct == hi - lo + 1 and lo == 1) and n:
            problems.append(f"{self.path}: events hold {n} rows ({distinct} distinct seqs) for seqs {lo}..{hi}")
        return problems


class PgTransaction:
    """The statements of one write transaction on PostgreSQL (on its connection, never retried)."""

    def __init__(
        self, conn: psycopg.Connection[Any], render: Callable[[str], sql.Composed], events: sql.Identifier
    ) -> None:
        self._conn, self._render, self._events = conn, render, events

    def fetch(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(self._render(query), args).fetchall()

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(self._render(query), rows)

    def insert_events(self, rows: list[Row]) -> None:
        if not rows:
            return
        with (
            self._conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} (seq, ts_ns, type, is_input, payload) FROM STDIN").format(self._events)) as copy,
        ):
            for row in rows:
                copy.write_row(row)


class PgEventLog(EventLog):
    """The event log in one PostgreSQL schema: :class:`EventLog` over a :class:`PgDatabase`; its
    :meth:`create` and :meth:`open` take a ``postgresql://`` URL."""

    dialect = PgDatabase
    exists = staticmethod(PgDatabase.exists)


def _tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name IN ('meta', 'events')",
        (schema,),
    ).fetchall()
    return {str(r[0]) for r in rows}
