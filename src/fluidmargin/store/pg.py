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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.events import EVENT_TYPES, Event, event_from_dict
from fluidmargin.store.log import (
    MAGIC,
    SCHEMA_VERSION,
    LogCorruptError,
    LogFormatError,
    check_continues,
    encode_rows,
)

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "public"
_COLUMNS = ["seq", "ts_ns", "type", "is_input", "payload"]
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def parse_url(url: str) -> tuple[str, str]:
    """``(libpq connection URL without the schema parameter, schema name)`` for a postgresql:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValidationError(f"{redact(url)} is not a postgresql:// URL")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    if len(schemas) > 1:
        raise ValidationError(f"{redact(url)}: more than one schema parameter")
    schema = schemas[0] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.match(schema):
        raise ValidationError(f"{redact(url)}: schema {schema!r} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and ``.path``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def _connect(conninfo: str, where: str, readonly: bool) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as e:
        raise LogFormatError(f"{where}: cannot connect to PostgreSQL: {str(e).strip()}") from None
    try:
        # a committed transaction must be durable when COMMIT returns, whatever the server's default
        conn.execute("SET synchronous_commit = on")
        if readonly:
            conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        conn.close()
        raise
    return conn


class PgEventLog:
    """Append-only event log in one PostgreSQL schema (single writer)."""

    _PAGE = 2000  # rows per page when reading

    def __init__(self, url: str, schema: str, conn: psycopg.Connection[Any], config: EngineConfig, readonly: bool):
        self.url = url
        self.path = redact(url)  # names the log in messages, as EventLog.path does
        self.schema = schema
        self._conn = conn
        self.config = config
        self.readonly = readonly
        self._meta = sql.Identifier(schema, "meta")
        self._events = sql.Identifier(schema, "events")

    # --- opening ----------------------------------------------------------------------------------

    @staticmethod
    def exists(url: str) -> bool:
        """Whether the URL's schema holds an ``events`` or ``meta`` table (a log, or something in its place)."""
        conninfo, schema = parse_url(url)
        with _connect(conninfo, redact(url), readonly=True) as conn:
            return bool(_tables(conn, schema))

    @classmethod
    def create(cls, url: str, config: EngineConfig) -> PgEventLog:
        """Create a new, empty log for ``config`` (its checkpoint is the fresh engine's state hash)."""
        checkpoint_hash = Engine(config).state_hash()
        conninfo, schema = parse_url(url)
        where = redact(url)
        conn = _connect(conninfo, where, readonly=False)
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
            raise LogFormatError(f"{where}: cannot create an event log: {str(e).strip()}") from None
        except BaseException:
            conn.close()
            raise
        return cls(url, schema, conn, config, readonly=False)

    @classmethod
    def open(cls, url: str, readonly: bool = False) -> PgEventLog:
        """Open an existing log. A missing log or tables that are not a fluidmargin log are a LogFormatError."""
        conninfo, schema = parse_url(url)
        where = redact(url)
        conn = _connect(conninfo, where, readonly)
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
            raise LogFormatError(f"{where} is not a fluidmargin event log ({str(e).strip()})") from None
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
        with conn.transaction():
            # one writer at a time; readers are not blocked
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(self._events))
            last = self._max_seq()
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
        return last + len(rows)

    # --- reading ----------------------------------------------------------------------------------

    def _max_seq(self) -> int:
        row = self._conn.execute(sql.SQL("SELECT COALESCE(MAX(seq), 0) FROM {}").format(self._events)).fetchone()
        assert row is not None
        return int(row[0])

    def last_seq(self) -> int:
        """The last committed seq (0 for an empty log)."""
        return self._max_seq()

    def count(self, inputs_only: bool = False) -> int:
        q = sql.SQL("SELECT COUNT(*) FROM {}" + (" WHERE is_input" if inputs_only else "")).format(self._events)
        row = self._conn.execute(q).fetchone()
        assert row is not None
        return int(row[0])

    def checkpoint(self) -> tuple[int, str]:
        """The stored (seq, state hash) checkpoint."""
        meta = {
            k: bytes(v)
            for k, v in self._conn.execute(
                sql.SQL("SELECT key, value FROM {} WHERE key IN ('checkpoint_seq', 'checkpoint_hash')").format(
                    self._meta
                )
            )
        }
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
            rows = self._conn.execute(q, (nxt, self._PAGE)).fetchall()
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
        row = self._conn.execute(
            sql.SQL("SELECT payload FROM {} WHERE seq = %s").format(self._events), (seq,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def setting(self, name: str) -> str:
        """A server setting as this session sees it (``SHOW name``), e.g. ``synchronous_commit``."""
        row = self._conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
        assert row is not None
        return str(row[0])


def _tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name IN ('meta', 'events')",
        (schema,),
    ).fetchall()
    return {str(r[0]) for r in rows}
