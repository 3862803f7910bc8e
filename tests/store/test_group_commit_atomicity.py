"""A group commit is all or nothing, even when it fails half-way through.

The gap/overlap checks in test_store*.py refuse a batch before its first row is written, so they cannot tell
a ROLLBACK from a COMMIT on the error path. Here a batch fails after some of it was sent: a trigger fails its
*third* row (the server's error), or the checkpoint written after the rows fails on this side. A fresh
connection must then see none of the batch (rows or checkpoint), and the writer must carry on.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator

import numba
import psycopg
import pytest
from psycopg import sql

from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim import ingest
from fluidmargin.sim.venues import perp_venue
from fluidmargin.store import create_log, open_log
from fluidmargin.store.backend import scheme_of, sqlite_path
from fluidmargin.store.pg import parse_url

FIRST = 5  # records committed before the failing batch
FAIL_AT = FIRST + 3  # the batch's third row


@pytest.fixture(autouse=True)
def one_numba_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    old = numba.get_num_threads()
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    yield
    numba.set_num_threads(old)


def records(n: int) -> list[tuple[int, ev.Event]]:
    eng = Engine(perp_venue())
    return [r for e in itertools.islice(ingest.synthetic_stream(3), n) for r in eng.apply(e)]


def failing_trigger(url: str, seq: int) -> contextlib.AbstractContextManager[None]:
    """A trigger that makes inserting the events row ``seq`` fail, dropped when the block ends."""
    if scheme_of(url) == "postgresql":
        return _pg_trigger(url, seq)
    return _sqlite_trigger(url, seq)


@contextlib.contextmanager
def _sqlite_trigger(url: str, seq: int) -> Iterator[None]:
    with contextlib.closing(sqlite3.connect(sqlite_path(url), isolation_level=None)) as conn:
        conn.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.seq = {int(seq)}"
            " BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        yield
        conn.execute("DROP TRIGGER boom")


@contextlib.contextmanager
def _pg_trigger(url: str, seq: int) -> Iterator[None]:
    conninfo, schema = parse_url(url)
    fn, events = sql.Identifier(schema, "boom"), sql.Identifier(schema, "events")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.seq = {} THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$"
            ).format(fn, sql.Literal(seq))
        )
        conn.execute(
            sql.SQL("CREATE TRIGGER boom BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(events, fn)
        )
        yield
        conn.execute(sql.SQL("DROP TRIGGER boom ON {}").format(events))
        conn.execute(sql.SQL("DROP FUNCTION {}()").format(fn))


def test_a_batch_that_fails_midway_leaves_nothing_durable(log_url: str) -> None:
    recs = records(20)
    batch = recs[FIRST : FIRST + 6]  # seqs 6..11; the trigger fails seq 8
    assert [s for s, _ in batch] == list(range(FIRST + 1, FIRST + 7))
    with create_log(log_url, perp_venue()) as log:
        log.append(recs[:FIRST])
        before = log.checkpoint()
        with failing_trigger(log_url, FAIL_AT):
            with pytest.raises(Exception, match="boom"):
                log.append(batch, checkpoint=(batch[-1][0], "a-checkpoint-of-the-failed-batch"))
            # what another connection sees: the batch's first two rows must not be there
            with open_log(log_url, readonly=True) as other:
                assert (other.last_seq(), other.count(), other.checkpoint()) == (FIRST, FIRST, before)
                assert other.payload_at(FIRST + 1) is None and other.payload_at(FIRST + 2) is None
            # and the writer itself carries on from the last good commit
            assert log.last_seq() == FIRST
        assert log.append(batch, checkpoint=(batch[-1][0], "h")) == FIRST + 6
        assert log.checkpoint() == (FIRST + 6, "h")
    with open_log(log_url, readonly=True) as log:
        assert [s for s, _ in log.read_dicts()] == list(range(1, FIRST + 7))


def test_a_batch_that_fails_in_the_client_after_its_rows_leaves_nothing_durable(log_url: str) -> None:
    """A failure on this side once the rows are sent (here a checkpoint hash that is not text, found when
    the checkpoint is written after the rows): PostgreSQL would refuse to COMMIT a transaction its own
    error aborted, but not this one, so only a ROLLBACK keeps the rows out."""
    recs = records(20)
    batch = recs[FIRST : FIRST + 6]
    with create_log(log_url, perp_venue()) as log:
        log.append(recs[:FIRST])
        before = log.checkpoint()
        with pytest.raises(AttributeError):
            log.append(batch, checkpoint=(batch[-1][0], None))  # type: ignore[arg-type]
        with open_log(log_url, readonly=True) as other:
            assert (other.last_seq(), other.count(), other.checkpoint()) == (FIRST, FIRST, before)
        assert log.append(batch) == FIRST + 6
