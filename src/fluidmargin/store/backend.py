"""Choose the event log's storage from a URL: SQLite (embedded, the default) or PostgreSQL.

* ``sqlite:///abs/path/events.db`` (``sqlite:////abs/path`` also reads as absolute), ``sqlite:rel/path.db``,
  or a plain filesystem path (``str`` or ``Path``): :class:`~fluidmargin.store.log.EventLog`, one file.
* ``postgresql://user:password@host:port/dbname?schema=NAME`` (or ``postgres://``):
  :class:`~fluidmargin.store.pg.PgEventLog` (the same log over PostgreSQL), tables ``meta`` and ``events``
  in schema NAME (default ``public``); other query parameters go to libpq (e.g. ``sslmode``,
  ``connect_timeout``).

Both have the API described by :class:`LogBackend`; snapshots stay files in a directory for both. A new
kind of store is a dialect (:class:`~fluidmargin.store.log.Database`) and an EventLog subclass naming it.

A command line is visible to every user of the machine (``ps``): commands that take a store also read it
from a file (``--db-file PATH``, one line) or from ``$FLUIDMARGIN_DB`` (:func:`target_from`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.events import Event
from fluidmargin.store.log import EventLog

if TYPE_CHECKING:
    from fluidmargin.store.pg import PgEventLog

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
PG_SCHEMES = ("postgresql", "postgres")


class LogBackend(Protocol):
    """What the Runner, replay, snapshots and verify-log use of a log (EventLog's API)."""

    config: EngineConfig
    readonly: bool

    @property
    def path(self) -> Path | str: ...  # names the log in messages (a file path or a redacted URL)

    def append(self, records: Iterable[tuple[int, Event]], checkpoint: tuple[int, str] | None = None) -> int: ...
    def last_seq(self) -> int: ...
    def count(self, inputs_only: bool = False) -> int: ...
    def checkpoint(self) -> tuple[int, str]: ...
    def read_dicts(self, from_seq: int = 0) -> Iterator[tuple[int, dict[str, Any]]]: ...
    def read(self, from_seq: int = 0) -> Iterator[tuple[int, Event]]: ...
    def payload_at(self, seq: int) -> bytes | None: ...
    def check_store(self) -> list[str]: ...  # what is wrong with the store beyond what a replay reads
    def close(self) -> None: ...


LogTarget = str | Path
"""A log's location: a filesystem path or a URL (see the module docstring)."""


def scheme_of(target: LogTarget) -> str:
    """``"sqlite"`` or ``"postgresql"`` for a path or URL; anything else is a ValidationError."""
    if isinstance(target, Path):
        return "sqlite"
    m = _SCHEME.match(target)
    scheme = m.group(1).lower() if m else ""
    if scheme == "sqlite":
        return "sqlite"
    if scheme in PG_SCHEMES:
        return "postgresql"
    if m and target[m.end() : m.end() + 2] == "//":
        raise ValidationError(
            f"unknown event log URL scheme {scheme!r} (use a path, sqlite:///PATH or postgresql://...)"
        )
    return "sqlite"  # a plain path (even one with a colon in it)


def sqlite_path(target: LogTarget) -> Path:
    """The file a ``sqlite:`` URL or a plain path names."""
    if isinstance(target, Path):
        return target
    if not target.lower().startswith("sqlite:"):
        return Path(target)
    rest = target[len("sqlite:") :]
    if rest.startswith("//"):
        rest = rest[2:]  # sqlite://<authority>/path: only an empty authority (a local file) is meaningful
        if not rest.startswith("/"):
            raise ValidationError(f"{target}: use sqlite:///absolute/path or sqlite:relative/path")
        if rest.startswith("//"):
            rest = "/" + rest.lstrip("/")  # sqlite:////abs/path (SQLAlchemy's spelling of an absolute path)
    rest = unquote(rest.split("?", 1)[0])
    if not rest:
        raise ValidationError(f"{target}: no file path in the sqlite URL")
    return Path(rest)


def describe(target: LogTarget) -> str:
    """The location for messages (passwords redacted)."""
    if scheme_of(target) == "postgresql":
        from fluidmargin.store.pg import redact  # lazy: psycopg (~0.3 s to import) only for a PostgreSQL store

        return redact(str(target))
    return str(sqlite_path(target))


DB_ENV = "FLUIDMARGIN_DB"


def target_from(arg: str | None, file: Path | None, name: str = "--db") -> str:
    """The store's location: ``arg`` (the command line), else the one line of ``file``, else ``$FLUIDMARGIN_DB``.

    ``arg`` and ``file`` together are a ValidationError, as are an empty file and no location at all.
    """
    if arg and file is not None:
        raise ValidationError(f"give only one of {name} and --db-file")
    if file is not None:
        try:
            lines = [ln.strip() for ln in file.read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ValidationError(f"--db-file {file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        if not lines:
            raise ValidationError(f"--db-file {file} is empty (it should hold the path or URL of the store)")
        if len(lines) > 1:
            raise ValidationError(f"--db-file {file}: one line expected (the path or URL), found {len(lines)}")
        return lines[0]
    if arg:
        return arg
    env = os.environ.get(DB_ENV, "").strip()
    if env:
        return env
    raise ValidationError(f"no store given: pass {name}, --db-file FILE, or set ${DB_ENV}")


def shows_password(target: str | None) -> bool:
    """Whether ``target`` is a postgresql:// URL with a password in it (in the process list if on a command line)."""
    if not target or scheme_of(target) != "postgresql":
        return False
    from fluidmargin.store.pg import redact  # lazy: psycopg only for a PostgreSQL store

    return redact(target) != target


def _pg() -> type[PgEventLog]:
    try:
        from fluidmargin.store.pg import PgEventLog  # lazy: psycopg only for a PostgreSQL store
    except ImportError as e:  # pragma: no cover - psycopg is a dependency
        raise ValidationError(
            f"a postgresql:// event log needs psycopg 3 (pip install 'psycopg[binary]'): {e}"
        ) from None
    return PgEventLog


def _log_class(target: LogTarget) -> tuple[type[EventLog], LogTarget]:
    """The log class for a location, and the location as its constructors take it."""
    if scheme_of(target) == "postgresql":
        return _pg(), str(target)
    return EventLog, sqlite_path(target)


def log_exists(target: LogTarget) -> bool:
    """Whether something is already at the location (a file; a meta or events table in the schema)."""
    if scheme_of(target) == "postgresql":
        return _pg().exists(str(target))
    return sqlite_path(target).exists()


def create_log(target: LogTarget, config: EngineConfig) -> LogBackend:
    """Create a new, empty log for ``config`` at a path or URL; an existing one is a ValidationError."""
    cls, location = _log_class(target)
    return cls.create(location, config)


def open_log(target: LogTarget, config: EngineConfig | None = None, readonly: bool = False) -> LogBackend:
    """Open the log at a path or URL.

    With ``config``: a missing log is created for it (unless ``readonly``), and an existing one must
    have been created with the same config (ValidationError otherwise). Without: a missing log is a
    LogFormatError.
    """
    if config is not None and not readonly and not log_exists(target):
        return create_log(target, config)
    cls, location = _log_class(target)
    log = cls.open(location, readonly=readonly)
    if config is not None and config.to_dict() != log.config.to_dict():
        log.close()
        raise ValidationError(f"{describe(target)} was created with a different engine config")
    return log
