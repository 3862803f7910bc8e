"""The event-log contract, run against both backends: a SQLite file and a PostgreSQL schema (``log_url``).

The PostgreSQL server comes from $FLUIDMARGIN_TEST_PG_URL (``make test`` starts one with
scripts/postgres.sh); without a server these tests fail, they are never skipped.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numba
import psycopg
import pytest
from psycopg import sql

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim import ingest
from fluidmargin.sim.venues import perp_venue
from fluidmargin.store import (
    EventLog,
    LogFormatError,
    PgEventLog,
    Runner,
    create_log,
    list_snapshots,
    log_exists,
    open_log,
    replay,
)
from fluidmargin.store.backend import scheme_of, sqlite_path
from fluidmargin.store.pg import parse_url, redact
from fluidmargin.store.records import encode_event
from fluidmargin.store.verify import verify_log

ENV = {**os.environ, "NUMBA_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_numba_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One numba thread for the engines built here (results do not depend on it; see test_store.py)."""
    old = numba.get_num_threads()
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    yield
    numba.set_num_threads(old)


def stream(n: int, seed: int = 3) -> list[ev.Event]:
    return list(itertools.islice(ingest.synthetic_stream(seed), n))


def records_of(n: int, seed: int = 3) -> tuple[Engine, list[tuple[int, ev.Event]]]:
    eng = Engine(perp_venue())
    return eng, [r for e in stream(n, seed) for r in eng.apply(e)]


def dicts(records: list[tuple[int, ev.Event]]) -> list[tuple[int, dict[str, Any]]]:
    return [(s, e.to_dict()) for s, e in records]


def pg_parts(url: str) -> tuple[str, str]:
    return parse_url(url)


# --- URLs -------------------------------------------------------------------------------------------


def test_url_forms(tmp_path: Path) -> None:
    assert scheme_of(tmp_path / "a.db") == scheme_of(str(tmp_path / "a.db")) == "sqlite"
    assert scheme_of("data/run:1.db") == "sqlite"  # a plain path with a colon stays a path
    assert sqlite_path("sqlite:///tmp/x/events.db") == Path("/tmp/x/events.db")
    assert sqlite_path("sqlite:////tmp/x/events.db") == Path("/tmp/x/events.db")
    assert sqlite_path("sqlite:rel/events.db") == Path("rel/events.db")
    assert sqlite_path("sqlite:///tmp/a%20b.db") == Path("/tmp/a b.db")
    assert scheme_of("postgresql://u:p@127.0.0.1:5432/db?schema=fm_x") == "postgresql"
    assert scheme_of("postgres://u@h/db") == "postgresql"
    with pytest.raises(ValidationError, match="unknown event log URL scheme 'mysql'"):
        open_log("mysql://u@h/db")
    with pytest.raises(ValidationError, match="sqlite:///absolute/path"):
        sqlite_path("sqlite://host/x.db")
    conninfo, schema = parse_url("postgresql://u:secret@127.0.0.1:5432/db?schema=fm_x&connect_timeout=5")
    assert schema == "fm_x" and conninfo == "postgresql://u:secret@127.0.0.1:5432/db?connect_timeout=5"
    assert parse_url("postgresql://u@h/db")[1] == "public"
    assert redact("postgresql://u:secret@h:1/db?schema=s") == "postgresql://u:***@h:1/db?schema=s"
    for bad in ("x-y", "1abc", "a;drop", "a" * 64):
        with pytest.raises(ValidationError, match="not a plain identifier"):
            parse_url(f"postgresql://u@h/db?schema={bad}")


def test_a_path_and_a_sqlite_url_name_the_same_log(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    Runner.open_or_create(path, perp_venue()).close()
    with open_log(f"sqlite://{path}") as log:
        assert isinstance(log, EventLog) and log.path == path and log.config == perp_venue()
    with open_log(str(path), readonly=True) as log:
        assert isinstance(log, EventLog) and log.readonly


def test_a_server_that_is_not_there_is_a_clear_error() -> None:
    url = "postgresql://fm:fm@127.0.0.1:1/fm?schema=fm_nowhere&connect_timeout=3"
    with pytest.raises(LogFormatError, match=r"cannot connect to PostgreSQL") as info:
        open_log(url)
    assert "fm:***@" in str(info.value) and ":fm@" not in str(info.value)  # no password in messages


# --- the log contract, on both backends -------------------------------------------------------------


def test_create_open_and_config_round_trip(log_url: str) -> None:
    assert not log_exists(log_url)
    with pytest.raises(LogFormatError, match="no such event log"):
        open_log(log_url)
    assert not log_exists(log_url)  # opening a missing log creates nothing
    config = perp_venue(assets=("BTC",))
    with create_log(log_url, config) as log:
        assert log.config == config and not log.readonly
        assert log.last_seq() == 0 and log.count() == 0
        assert log.checkpoint() == (0, Engine(config).state_hash())
        assert list(log.read_dicts()) == [] and log.payload_at(1) is None
    assert log_exists(log_url)
    with pytest.raises(ValidationError, match="already exists"):
        create_log(log_url, config)
    with open_log(log_url) as log:
        assert log.config == config and log.config.to_dict() == config.to_dict()
    with open_log(log_url, config) as log:  # the same config: opened, not recreated
        assert log.config == config
    with pytest.raises(ValidationError, match="different engine config"):
        open_log(log_url, perp_venue())


def test_open_log_with_a_config_creates_a_missing_log(log_url: str) -> None:
    with pytest.raises(LogFormatError, match="no such event log"):
        open_log(log_url, perp_venue(), readonly=True)
    with open_log(log_url, perp_venue()) as log:
        assert log.last_seq() == 0 and log.config == perp_venue()
    assert log_exists(log_url)


def test_append_read_count_checkpoint_round_trip(log_url: str) -> None:
    eng, records = records_of(300)
    assert any(not e.is_input for _, e in records)  # outputs are logged too
    n = len(records)
    with create_log(log_url, perp_venue()) as log:
        assert log.append(records[:100]) == 100
        assert log.append([]) == 100  # an empty batch is a no-op
        assert log.append(records[100:], checkpoint=(n, eng.state_hash())) == n
        assert dicts(list(log.read())) == dicts(records)
        assert [s for s, _ in log.read(from_seq=250)] == list(range(250, n + 1))
        assert log.count() == n and log.count(inputs_only=True) == 300
        assert log.checkpoint() == (n, eng.state_hash())
        assert log.payload_at(7) == encode_event(records[6][1]) and log.payload_at(n + 1) is None
        assert log.append([], checkpoint=(n, "ab" * 32)) == n  # a checkpoint alone
        assert log.checkpoint() == (n, "ab" * 32)
    with open_log(log_url, readonly=True) as log:
        assert log.last_seq() == n and log.count(inputs_only=True) == 300
        assert [(s, d) for s, d in log.read_dicts()] == [(s, e.to_dict()) for s, e in records]
        stats = replay(log, Engine(log.config))
        assert stats.inputs == 300 and stats.last_seq == n


def test_durability_settings(log_url: str) -> None:
    with create_log(log_url, perp_venue()) as log:
        if isinstance(log, PgEventLog):
            assert log.setting("synchronous_commit") == "on"
            assert log.setting("fsync") == "on"
        else:
            assert isinstance(log, EventLog)
            assert log.pragma("journal_mode") == "wal" and log.pragma("synchronous") == 2


def test_append_is_atomic_and_rejects_gaps(log_url: str) -> None:
    _, records = records_of(20)
    with create_log(log_url, perp_venue()) as log:
        log.append(records[:5])
        with pytest.raises(ValidationError, match="seq 10 does not continue the log"):
            log.append(records[5:8] + records[9:12])  # a gap at seq 9
        assert log.last_seq() == 5 and log.count() == 5  # nothing of the bad batch was written
        with pytest.raises(ValidationError, match="seq 3 does not continue the log"):
            log.append(records[2:8])  # overlaps what is there
        with pytest.raises(ValidationError, match="checkpoint seq"):
            log.append(records[5:8], checkpoint=(99, "x"))
        assert log.last_seq() == 5 and log.checkpoint()[0] == 0
        assert log.append(records[5:]) == len(records)
        assert [s for s, _ in log.read_dicts()] == list(range(1, len(records) + 1))


def test_read_dicts_pages_from_a_seq(log_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both backends read in pages; results are the same across page boundaries and from any seq."""
    monkeypatch.setattr(EventLog, "_PAGE", 7)  # both backends: PgEventLog is an EventLog
    _, records = records_of(60)
    with create_log(log_url, perp_venue()) as log:
        log.append(records)
        n = len(records)
        for start in (0, 1, 7, 8, 14, 15, n - 1, n, n + 1, n + 50):
            got = list(log.read_dicts(start))
            assert got == [(s, e.to_dict()) for s, e in records[max(start, 1) - 1 :]], start
        it = log.read_dicts(3)  # lazy: rows are fetched as the iterator advances
        assert next(it)[0] == 3 and next(it)[0] == 4
        it.close()
        log.append([])  # the connection is still usable after an abandoned read


def test_readonly_refuses_writes(log_url: str) -> None:
    _, records = records_of(10)
    create_log(log_url, perp_venue()).close()
    with open_log(log_url, readonly=True) as log:
        assert log.readonly
        with pytest.raises(ValidationError, match="read-only"):
            log.append(records[:3])
        with pytest.raises(ValidationError, match="read-only"):
            log.append([], checkpoint=(0, "x"))
        assert log.last_seq() == 0
    with open_log(log_url) as log:
        assert log.append(records) == len(records)


def test_two_readers_see_only_committed_groups(log_url: str) -> None:
    runner = Runner.open_or_create(log_url, perp_venue(), group_size=40)
    with open_log(log_url, readonly=True) as reader:
        visible = {0}
        for e in stream(200):
            runner.submit(e)
            assert reader.last_seq() == runner.durable_seq == reader.count()
            visible.add(reader.last_seq())
        assert len(visible) > 3 and all(b - a >= 40 for a, b in itertools.pairwise(sorted(visible)))
        runner.close()
        assert reader.last_seq() == runner.engine.seq
        assert reader.checkpoint() == (runner.engine.seq, runner.engine.state_hash())


def _put_foreign_tables(url: str) -> None:
    if scheme_of(url) == "sqlite":
        conn = sqlite3.connect(sqlite_path(url))
        conn.execute("CREATE TABLE meta (key TEXT, value BLOB)")
        conn.execute("INSERT INTO meta VALUES ('x', 'y')")
        conn.commit()
        conn.close()
        return
    conninfo, schema = pg_parts(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {} (key TEXT, value BYTEA)").format(sql.Identifier(schema, "meta")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('x', 'y')").format(sql.Identifier(schema, "meta")))


def _snapshot_of_foreign(url: str) -> object:
    if scheme_of(url) == "sqlite":
        return sqlite_path(url).read_bytes()
    conninfo, schema = pg_parts(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", (schema,)
        ).fetchall()
        rows = conn.execute(sql.SQL("SELECT key, value FROM {}").format(sql.Identifier(schema, "meta"))).fetchall()
    return tables, rows


def test_foreign_tables_are_refused_and_left_untouched(log_url: str) -> None:
    _put_foreign_tables(log_url)
    before = _snapshot_of_foreign(log_url)
    assert log_exists(log_url)
    with pytest.raises(LogFormatError, match="no magic"):
        open_log(log_url)
    with pytest.raises(ValidationError, match="already exists"):
        create_log(log_url, perp_venue())
    with pytest.raises(LogFormatError):
        Runner.open_or_create(log_url, perp_venue())
    assert _snapshot_of_foreign(log_url) == before


# --- the Runner on both backends ---------------------------------------------------------------------


def test_runner_recovers_by_replay_and_by_snapshot(log_url: str, tmp_path: Path) -> None:
    sdir = tmp_path / "snaps"
    events = stream(900)
    runner = Runner.open_or_create(log_url, perp_venue(), snapshot_dir=sdir, group_size=64)
    for i, e in enumerate(events[:600], 1):
        runner.submit(e)
        if i == 400:
            snap = runner.snapshot()
    runner.close()
    live = runner.engine.state_hash()
    with open_log(log_url, readonly=True) as log:
        assert log.checkpoint() == (log.last_seq(), live) == (runner.engine.seq, live)

    # by full replay (no snapshots)
    r = Runner.open_or_create(log_url)
    assert r.restored_seq is None and r.engine.state_hash() == live and r.inputs_applied == 600
    r.close()
    # from the snapshot, replaying the tail
    r = Runner.open_or_create(log_url, perp_venue(), snapshot_dir=sdir, group_size=64)
    assert r.restored_seq == int(snap.name[5:25]) < r.engine.seq
    assert r.engine.state_hash() == live and r.inputs_applied == 600
    assert r.submit(events[10]) == []  # seen event ids survive recovery
    for e in events[600:]:
        r.submit(e)
    r.close()
    eng = Engine(perp_venue())
    for e in events:
        eng.apply(e)
    assert r.engine.state_hash() == eng.state_hash()
    with open_log(log_url, readonly=True) as log:
        rep = verify_log(log, sdir, expect_hash=eng.state_hash())
    assert rep["ok"] is True and rep["inputs"] == 900, rep
    with pytest.raises(ValidationError, match="different engine config"):
        Runner.open_or_create(log_url, perp_venue(assets=("BTC",)))
    # an already open log object is accepted too (the runner owns and closes it)
    r = Runner.open_or_create(open_log(log_url), snapshot_dir=sdir)
    assert r.engine.state_hash() == eng.state_hash()
    r.close()


def test_runner_needs_a_config_to_create(log_url: str) -> None:
    with pytest.raises(ValidationError, match="no engine config"):
        Runner.open_or_create(log_url)
    assert not log_exists(log_url)


# --- SIGKILL a writer mid-run ------------------------------------------------------------------------

EVENTS, SEED, GROUP, SNAP_EVERY = 2500, 11, 100, 500
KILL_AFTER_SEQ = 1500  # past at least one snapshot, well before the end (about 4000 records)

# the child: a Runner over the URL fed the seeded stream; ACK <seq> after each group commit, HASH at the end
CHILD = """
import itertools, sys
from pathlib import Path
from fluidmargin.sim.venues import perp_venue
from fluidmargin.store import Runner
from fluidmargin.sim.ingest import synthetic_stream
url, sdir = sys.argv[1], Path(sys.argv[2])
events, seed, group, snap_every = map(int, sys.argv[3:7])
r = Runner.open_or_create(url, perp_venue(), snapshot_dir=sdir, group_size=group)
print(f"RESUME inputs={r.inputs_applied} seq={r.durable_seq} snapshot={r.restored_seq}", file=sys.stderr, flush=True)
acked = r.durable_seq
start = r.inputs_applied
for k, e in enumerate(itertools.islice(synthetic_stream(seed), start, events), start=start + 1):
    r.submit(e)
    if k % snap_every == 0:
        r.snapshot()
    if r.durable_seq != acked:
        acked = r.durable_seq
        print("ACK", acked, flush=True)
r.close()
print("ACK", r.durable_seq, flush=True)
print("HASH", r.engine.state_hash(), flush=True)
"""


def child_cmd(url: str, sdir: Path, events: int) -> list[str]:
    return [sys.executable, "-c", CHILD, url, str(sdir), *map(str, (events, SEED, GROUP, SNAP_EVERY))]


def test_sigkill_mid_append_loses_no_acknowledged_record(log_url: str, tmp_path: Path) -> None:
    sdir = tmp_path / "snaps"
    # asked for a far longer stream than it will get to, so it is surely still running when killed
    victim = subprocess.Popen(
        child_cmd(log_url, sdir, 10**7), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    acked: list[int] = []
    try:
        assert victim.stdout is not None
        for line in victim.stdout:
            assert line.startswith("ACK "), f"the writer stopped before the kill: {line!r}"
            acked.append(int(line.split()[1]))
            if acked[-1] >= KILL_AFTER_SEQ:
                break
        os.kill(victim.pid, signal.SIGKILL)
        _, err = victim.communicate(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.communicate()
    assert victim.returncode == -signal.SIGKILL, err[-2000:]
    assert acked and acked == sorted(acked) and acked[-1] >= KILL_AFTER_SEQ, err[-2000:]

    # every acknowledged record is there, contiguous from seq 1; the log still verifies
    with open_log(log_url, readonly=True) as log:
        last = log.last_seq()
        assert last >= acked[-1] and log.count() == last
        assert [s for s, _ in log.read_dicts()] == list(range(1, last + 1))
        inputs_before = log.count(inputs_only=True)
        rep = verify_log(log)
    assert inputs_before < EVENTS
    assert rep["ok"] is True and rep["checkpoint_seq"] <= last, rep
    assert list_snapshots(sdir)

    # a restart recovers through a snapshot plus the tail, and completes the stream
    restart = subprocess.run(child_cmd(log_url, sdir, EVENTS), capture_output=True, text=True, timeout=120, env=ENV)
    assert restart.returncode == 0, restart.stderr[-2000:]
    resume = dict(kv.split("=") for kv in restart.stderr.split("RESUME ")[1].split())
    assert int(resume["inputs"]) == inputs_before and int(resume["seq"]) == last
    assert resume["snapshot"] != "None"
    out = restart.stdout.split()
    assert int(out[1]) > last  # it resumed after the crash point, nothing was re-logged
    assert out[-2] == "HASH"
    eng = Engine(perp_venue())
    for e in stream(EVENTS, SEED):
        eng.apply(e)
    assert out[-1] == eng.state_hash()  # the same state as an uninterrupted run
    r = Runner.open_or_create(log_url, snapshot_dir=sdir)
    try:
        assert r.restored_seq is not None and r.inputs_applied == EVENTS
        assert r.engine.state_hash() == eng.state_hash()
    finally:
        r.close()
