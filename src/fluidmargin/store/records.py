"""What the event log stores, whatever the database: the row of a record, its payload bytes, the header
in the ``meta`` table, the checks on a batch and on a header, and the errors of a store.

Every backend stores the same: a row ``(seq, ts_ns, type, is_input, payload)`` per record, where the
payload is the orjson of :meth:`Event.to_dict`, and ``meta`` rows (``key``, bytes) for the magic, the
schema version, the engine config and the checkpoint (last seq, state hash).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.events import EVENT_TYPES, Event, event_from_dict

MAGIC = "fluidmargin-event-log"
SCHEMA_VERSION = 1
COLUMNS = ["seq", "ts_ns", "type", "is_input", "payload"]  # of the events table, in order
META_KEYS = ("magic", "schema_version", "config", "checkpoint_seq", "checkpoint_hash")


class LogFormatError(ValidationError):
    """The file is missing, not a fluidmargin event log, or a record in it cannot be decoded."""


class LogCorruptError(FluidMarginError):
    """A stored record is unreadable or inconsistent (names the seq), or the store itself is damaged."""


class StoreUnavailable(FluidMarginError):
    """The store cannot be reached now (a lost connection, a restarting server): retry later.

    The call that raised it changed nothing, except an append whose commit may have reached the server:
    the log's next append finds out (see :meth:`EventLog.append <fluidmargin.store.log.EventLog.append>`).
    """


Row = tuple[int, int, str, bool, bytes]  # seq, ts_ns, type, is_input, payload


def encode_event(event: Event) -> bytes:
    """The payload stored for ``event``: orjson of :meth:`Event.to_dict`."""
    return orjson.dumps(event.to_dict())


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


def new_header(config: EngineConfig) -> dict[str, bytes]:
    """The ``meta`` rows of a new, empty log for ``config`` (its checkpoint is the fresh engine's state hash)."""
    checkpoint_hash = Engine(config).state_hash()
    return {
        "magic": MAGIC.encode(),
        "schema_version": str(SCHEMA_VERSION).encode(),
        "config": orjson.dumps(config.to_dict()),
        "checkpoint_seq": b"0",
        "checkpoint_hash": checkpoint_hash.encode(),
    }


def read_header(where: object, meta: dict[str, Any], columns: list[str]) -> EngineConfig:
    """The config of the log whose ``meta`` rows and events columns these are; a LogFormatError naming
    ``where`` when they are not a fluidmargin event log this build reads."""
    try:
        if bytes(meta.get("magic", b"")) != MAGIC.encode():
            raise LogFormatError(f"{where} is not a fluidmargin event log (no magic in its meta table)")
        version = int(bytes(meta["schema_version"]))
        if version != SCHEMA_VERSION:
            raise LogFormatError(f"{where}: schema version {version}, this build reads {SCHEMA_VERSION}")
        if columns != COLUMNS:
            raise LogFormatError(f"{where}: events table has columns {columns}")
        config = EngineConfig.from_dict(orjson.loads(meta["config"]))
        int(bytes(meta["checkpoint_seq"]))
        bytes(meta["checkpoint_hash"]).decode()
    except LogFormatError:
        raise
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as e:
        raise LogFormatError(f"{where}: malformed event log header: {e}") from None
    return config
