"""Replay a log into an engine, checking that it reproduces every logged seq and output exactly."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model.events import EVENT_TYPES, Event, event_from_dict
from fluidmargin.store.records import LogCorruptError, encode_event

if TYPE_CHECKING:
    from fluidmargin.store.backend import LogBackend


class ReplayMismatch(FluidMarginError):
    """Replaying the log did not reproduce what was logged; the message names the seq."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"replay mismatch at seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


@dataclass
class ReplayStats:
    records: int = 0  # records read (inputs and outputs)
    inputs: int = 0
    last_seq: int = 0
    hashes: dict[int, str] = field(default_factory=dict)  # state hash at each requested seq


def replay(log: LogBackend, engine: Engine, hash_at: Iterable[int] = ()) -> ReplayStats:
    """Apply every input after ``engine.seq`` in seq order, verifying outputs against the log.

    ``hash_at``: seqs (ends of an input's records) at which to record the engine's state hash.
    """
    want = set(hash_at)
    stats = ReplayStats(last_seq=engine.seq)
    if engine.seq in want:
        stats.hashes[engine.seq] = engine.state_hash()
    expected: deque[tuple[int, Event]] = deque()
    for seq, d in log.read_dicts(engine.seq + 1):
        stats.records += 1
        if EVENT_TYPES[d["type"]].is_input:  # read_dicts checked the type is known
            if expected:
                raise ReplayMismatch(
                    expected[0][0],
                    f"replay produced {type(expected[0][1]).__name__}, the log has the input {d['type']} there",
                )
            try:
                event = event_from_dict(d)
            except (ValidationError, TypeError) as e:
                raise LogCorruptError(f"{log.path}: seq {seq}: {e}") from None
            records = engine.apply(event)
            if not records:
                raise ReplayMismatch(seq, f"logged input {d['type']} is a duplicate (event_id {d.get('event_id')!r})")
            if records[0][0] != seq:
                raise ReplayMismatch(seq, f"replay numbered this input {records[0][0]}")
            stats.inputs += 1
            expected.extend(records[1:])
        else:
            if not expected:
                raise ReplayMismatch(seq, f"the log has {d['type']} but replay produced nothing more")
            eseq, eev = expected.popleft()
            got = orjson.loads(encode_event(eev))  # as the log stores it (tuples become lists)
            if eseq != seq or got != d:
                raise ReplayMismatch(seq, f"logged {d} but replay produced seq {eseq}: {got}")
        stats.last_seq = seq
        if not expected and seq in want:
            stats.hashes[seq] = engine.state_hash()
    if expected:
        raise ReplayMismatch(expected[0][0], f"the log ends before the replayed {type(expected[0][1]).__name__}")
    return stats
