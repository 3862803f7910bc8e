"""The durable event log, snapshots, verified replay and `fluidmargin verify-log`, on real SQLite files."""

from __future__ import annotations

import io
import itertools
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numba
import orjson
import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim import ingest
from fluidmargin.sim.venues import perp_venue
from fluidmargin.store import (
    EventLog,
    LogCorruptError,
    LogFormatError,
    ReplayMismatch,
    Runner,
    list_snapshots,
    load_latest,
    replay,
)
from fluidmargin.store.snapshot import snapshot_name, write_snapshot
from fluidmargin.store.verify import verify_log

# the installed console script, as users run it
CLI = [str(Path(sys.executable).with_name("fluidmargin"))]
SUBPROCESS_ENV = {**os.environ, "NUMBA_NUM_THREADS": "1"}  # many short runs: skip parallel-kernel start-up


@pytest.fixture(autouse=True)
def one_numba_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Engines built here use one numba thread (as NUMBA_NUM_THREADS=1 would; the engine reads it when it
    sizes its pool). Results do not depend on it, and on a small loaded machine every parallel launch for
    a handful of positions waits for a second core (milliseconds per price tick)."""
    old = numba.get_num_threads()
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    yield
    numba.set_num_threads(old)


def stream(n: int, seed: int = 3) -> list[ev.Event]:
    return list(itertools.islice(ingest.synthetic_stream(seed), n))


def feed(runner: Runner, events: list[ev.Event]) -> None:
    for e in events:
        runner.submit(e)


def full_replay_hash(path: Path) -> str:
    with EventLog.open(path, readonly=True) as log:
        eng = Engine(log.config)
        replay(log, eng)
        return eng.state_hash()


def tamper(path: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, args)
    conn.close()


# --- the log --------------------------------------------------------------------------------------


def test_append_read_roundtrip_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    eng = Engine(perp_venue())
    records = [r for e in stream(300) for r in eng.apply(e)]
    assert any(not e.is_input for _, e in records)  # outputs are logged too
    with EventLog.create(path, perp_venue()) as log:
        assert log.last_seq() == 0
        assert log.append(records[:100]) == 100
        assert log.append(records[100:]) == len(records)
        back = list(log.read())
        assert [(s, e.to_dict()) for s, e in back] == [(s, e.to_dict()) for s, e in records]
        assert [s for s, _ in log.read(from_seq=250)] == list(range(250, len(records) + 1))
    with EventLog.open(path) as log:
        assert log.last_seq() == len(records)
        assert log.count(inputs_only=True) == 300
        assert log.config == perp_venue()


def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    with EventLog.create(path, perp_venue()) as log:
        assert log.pragma("journal_mode") == "wal"
        assert log.pragma("synchronous") == 2  # FULL
        eng = Engine(perp_venue())
        log.append(eng.apply(stream(1)[0]))
        assert Path(str(path) + "-wal").exists()
    with EventLog.open(path) as log:
        assert log.pragma("journal_mode") == "wal"
        assert log.pragma("synchronous") == 2


def test_group_commit_writes_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    runner = Runner.open_or_create(path, perp_venue(), group_size=50)
    reader = sqlite3.connect(path)  # an independent connection sees only committed transactions
    visible = [0]
    input_ends = set()
    for e in stream(400):
        recs = runner.submit(e)
        input_ends.add(recs[-1][0])
        n = reader.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        assert n == runner.durable_seq
        if n != visible[-1]:
            visible.append(n)
    # each commit holds >= group_size records and ends where one input's records end
    steps = [b - a for a, b in itertools.pairwise(visible)]
    assert steps and all(s >= 50 for s in steps)
    assert all(v in input_ends for v in visible[1:])
    assert runner.flush() == runner.engine.seq
    assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == runner.engine.seq
    reader.close()
    # the state hash is checkpointed at close (and every checkpoint_every records), not per commit
    assert runner.log.checkpoint()[0] == 0
    runner.close()
    with EventLog.open(path) as log:
        assert log.checkpoint() == (runner.engine.seq, runner.engine.state_hash())


def test_checkpoint_every_records(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    runner = Runner.open_or_create(path, perp_venue(), group_size=10, checkpoint_every=100)
    seen: dict[int, str] = {}
    for e in stream(300):
        runner.submit(e)
        seq, h = runner.log.checkpoint()
        assert seq <= runner.durable_seq and runner.durable_seq - seq < 100 + 20
        seen[seq] = h
    assert len(seen) > 3
    runner.close()
    with EventLog.open(path, readonly=True) as log:
        stats = replay(log, Engine(log.config), hash_at=seen)
        assert verify_log(log)["ok"] is True
    assert stats.hashes == seen  # each mid-run checkpoint is the state hash at its seq
    assert stats.inputs == 300


def test_append_is_atomic_and_rejects_gaps(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    eng = Engine(perp_venue())
    records = [r for e in stream(20) for r in eng.apply(e)]
    with EventLog.create(path, perp_venue()) as log:
        log.append(records[:5])
        bad = records[5:8] + records[9:12]  # a gap at seq 9
        with pytest.raises(ValidationError, match="seq 10 does not continue the log"):
            log.append(bad)
        assert log.last_seq() == 5  # nothing of the bad batch was written
        with pytest.raises(ValidationError, match="checkpoint seq"):
            log.append(records[5:8], checkpoint=(99, "x"))
        assert log.last_seq() == 5
        log.append(records[5:])
        assert log.last_seq() == len(records)


def test_opening_a_non_log_is_a_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n")
    with pytest.raises(LogFormatError, match="is not a fluidmargin event log"):
        EventLog.open(text)
    assert text.read_text() == "hello, not a database\n"
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT, value BLOB)")
    conn.execute("INSERT INTO meta VALUES ('x', 'y')")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(LogFormatError, match="no magic"):
        EventLog.open(other)
    assert other.read_bytes() == before  # a foreign database is never modified (not even to WAL)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(LogFormatError, match="not a fluidmargin event log"):
        EventLog.open(empty)
    with pytest.raises(LogFormatError, match="no such event log"):
        EventLog.open(tmp_path / "missing.fmlog")
    assert not (tmp_path / "missing.fmlog").exists()
    with pytest.raises(LogFormatError):
        Runner.open_or_create(text, perp_venue())


def test_create_refuses_an_existing_file_and_a_missing_config(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    EventLog.create(path, perp_venue()).close()
    with pytest.raises(ValidationError, match="already exists"):
        EventLog.create(path, perp_venue())
    with pytest.raises(ValidationError, match="no engine config"):
        Runner.open_or_create(tmp_path / "new.fmlog")
    with pytest.raises(ValidationError, match="different engine config"):
        Runner.open_or_create(path, perp_venue(assets=("BTC",)))
    with pytest.raises(ValidationError, match="group_size"):
        Runner.open_or_create(path, group_size=0)


def test_unloggable_inputs_are_refused_before_the_engine_sees_them(tmp_path: Path) -> None:
    runner = Runner.open_or_create(tmp_path / "a.fmlog", perp_venue(), group_size=1)
    feed(runner, stream(10))
    seq, h = runner.engine.seq, runner.engine.state_hash()
    bad = [
        ev.PriceObserved(runner.engine.now_ns + 1, "feed", "BTC", 61000.5),  # type: ignore[arg-type]
        ev.Deposited(runner.engine.now_ns + 1, 1000, "USD", 10**30),  # beyond 64 bits
        ev.IndexPriceUpdated(runner.engine.now_ns + 1, "BTC", 1),  # an output
    ]
    for e in bad:
        with pytest.raises(ValidationError):
            runner.submit(e)
    assert (runner.engine.seq, runner.engine.state_hash()) == (seq, h)
    assert runner.flush() == seq and runner.log.last_seq() == seq
    runner.close()
    assert Runner.open_or_create(tmp_path / "a.fmlog").engine.state_hash() == h


def test_duplicate_event_ids_are_logged_once(tmp_path: Path) -> None:
    path, sdir = tmp_path / "a.fmlog", tmp_path / "snaps"
    events = stream(60)
    runner = Runner.open_or_create(path, perp_venue(), snapshot_dir=sdir, group_size=7)
    feed(runner, events[:40])
    assert runner.submit(events[10]) == []
    assert runner.submit(events[39]) == []
    runner.snapshot()
    feed(runner, events[40:50])
    runner.close()
    with EventLog.open(path) as log:
        ids = [
            d["event_id"]
            for _, d in log.read_dicts()
            if d["type"] in ev.EVENT_TYPES and ev.EVENT_TYPES[d["type"]].is_input
        ]
    assert ids == [e.event_id for e in events[:50]]
    # the seen ids survive recovery, by snapshot + tail and by full replay
    for n, snapshots in ((50, sdir), (51, None)):
        runner = Runner.open_or_create(path, snapshot_dir=snapshots)
        assert runner.inputs_applied == n
        assert runner.submit(events[5]) == [] and runner.submit(events[45]) == []
        assert runner.submit(events[n])[0][1] == events[n]
        runner.close()


# --- replay and snapshots ---------------------------------------------------------------------------


def test_live_replay_and_snapshot_hashes_agree(tmp_path: Path) -> None:
    path, sdir = tmp_path / "a.fmlog", tmp_path / "snaps"
    events = stream(3000)
    # the synthetic stream has one price feed: the venue opts in to liquidating on it
    runner = Runner.open_or_create(path, perp_venue(single_source_liquidation=True), snapshot_dir=sdir, group_size=100)
    for i, e in enumerate(events, 1):
        runner.submit(e)
        if i % 900 == 0:
            runner.snapshot()
        if i == 2500:
            mid_hash, mid_seq = runner.engine.state_hash(), runner.engine.seq
    runner.close()
    live = runner.engine.state_hash()
    with EventLog.open(path) as log:
        kinds = {d["type"] for _, d in log.read_dicts()}
        assert log.checkpoint() == (log.last_seq(), live)
    assert {"PositionLiquidated", "InputRejected", "MarkPriceUpdated"} <= kinds  # a varied stream
    assert full_replay_hash(path) == live
    # the incremental screen and the reference twin log exactly the same records
    with EventLog.open(path, readonly=True) as log:
        twin = Engine(log.config, screen="reference")
        replay(log, twin)
        assert twin.state_hash() == live
    snaps = list_snapshots(sdir)
    assert [s for s, _ in snaps] == sorted((s for s, _ in snaps), reverse=True) and len(snaps) == 3
    resumed = Runner.open_or_create(path, snapshot_dir=sdir)
    assert resumed.restored_seq == snaps[0][0] < resumed.engine.seq
    assert resumed.engine.state_hash() == live
    assert resumed.inputs_applied == 3000
    resumed.close()
    # a replay stopped at an input boundary hashes like the live engine did there
    with EventLog.open(path, readonly=True) as log:
        stats = replay(log, Engine(log.config), hash_at=[mid_seq])
        assert stats.hashes[mid_seq] == mid_hash
        assert stats.inputs == 3000 and stats.last_seq == log.last_seq()


def test_corrupt_or_foreign_snapshots_are_skipped(tmp_path: Path) -> None:
    path, sdir = tmp_path / "a.fmlog", tmp_path / "snaps"
    events = stream(900)
    runner = Runner.open_or_create(path, perp_venue(), snapshot_dir=sdir, group_size=50)
    feed(runner, events[:300])
    old = runner.snapshot()
    feed(runner, events[300:600])
    new = runner.snapshot()
    feed(runner, events[600:])
    runner.close()
    live = runner.engine.state_hash()
    (sdir / ".snap-00000000000000000001.fmsnap.123.tmp").write_bytes(b"half a snapsh")  # crash mid-write

    new.write_bytes(new.read_bytes()[:-1000])  # truncated
    r = Runner.open_or_create(path, snapshot_dir=sdir)
    assert r.restored_seq == int(old.name[5:25]) and r.engine.state_hash() == live
    assert len(r.skipped_snapshots) == 1 and "truncated" in r.skipped_snapshots[0]
    r.close()

    data = bytearray(old.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the body
    old.write_bytes(bytes(data))
    (sdir / snapshot_name(10**9)).write_bytes(b"garbage")  # newest by name, not a snapshot at all
    r = Runner.open_or_create(path, snapshot_dir=sdir)
    assert r.restored_seq is None and r.engine.state_hash() == live
    assert any("checksum mismatch" in s for s in r.skipped_snapshots)
    r.close()

    # a well-formed snapshot of another log (same config, other history) does not match this one
    other, odir = tmp_path / "b.fmlog", tmp_path / "osnaps"
    ro = Runner.open_or_create(other, perp_venue(), snapshot_dir=odir)
    feed(ro, stream(400, seed=4))
    foreign = ro.snapshot()
    ro.close()
    for p in sdir.iterdir():
        p.unlink()
    (sdir / foreign.name).write_bytes(foreign.read_bytes())
    with EventLog.open(path, readonly=True) as log:
        restored, skipped = load_latest(sdir, log)
    assert restored is None and "another log" in skipped[0]
    assert Runner.open_or_create(path, snapshot_dir=sdir).engine.state_hash() == live


def test_snapshot_refuses_an_unflushed_engine(tmp_path: Path) -> None:
    runner = Runner.open_or_create(tmp_path / "a.fmlog", perp_venue(), group_size=1000)
    feed(runner, stream(20))
    with pytest.raises(Exception, match="flush first"):
        write_snapshot(tmp_path / "s", runner.engine, runner.log)
    runner.close()


def test_replay_names_the_seq_of_a_tampered_record(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    runner = Runner.open_or_create(path, perp_venue(), group_size=100)
    feed(runner, stream(500))
    runner.close()
    with EventLog.open(path) as log:
        seq, d = next((s, d) for s, d in log.read_dicts() if d["type"] == "MarkPriceUpdated")
    d["price_q"] += 1
    tamper(path, "UPDATE events SET payload = ? WHERE seq = ?", orjson.dumps(d), seq)
    with pytest.raises(ReplayMismatch, match=f"seq {seq}") as info:
        Runner.open_or_create(path)
    assert info.value.seq == seq
    tamper(path, "UPDATE events SET payload = ? WHERE seq = ?", b"{not json", seq)
    with pytest.raises(LogCorruptError, match=f"seq {seq}"):
        Runner.open_or_create(path)


def test_a_wrong_checkpoint_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    runner = Runner.open_or_create(path, perp_venue())
    feed(runner, stream(100))
    runner.close()
    tamper(path, "UPDATE meta SET value = ? WHERE key = 'checkpoint_hash'", b"0" * 64)
    with pytest.raises(ReplayMismatch, match="differs from the checkpoint"):
        Runner.open_or_create(path)


def test_ingest_stream_is_a_function_of_the_seed() -> None:
    a, b, c = stream(2000, 7), stream(2000, 7), stream(2000, 8)
    assert a == b and a != c
    assert all(x.ts_ns < y.ts_ns for x, y in itertools.pairwise(a))
    assert len({e.event_id for e in a}) == 2000
    assert {type(e).__name__ for e in a} >= {
        "AccountOpened",
        "Deposited",
        "TradeFilled",
        "PriceObserved",
        "ClockAdvanced",
    }


def test_ingest_resumes_where_the_log_ends(tmp_path: Path) -> None:
    one, two = tmp_path / "one.fmlog", tmp_path / "two.fmlog"
    out = io.StringIO()
    h1 = ingest.run(one, 800, 5, group_size=64, out=out)
    acks = [int(x) for x in out.getvalue().split()[1::2]]
    assert len(acks) > 5 and acks == sorted(acks)
    with EventLog.open(one) as log:
        assert acks[-1] == log.last_seq()
    ingest.run(two, 300, 5, group_size=64, out=io.StringIO())
    ingest.run(two, 300, 5, group_size=64, out=io.StringIO())  # nothing left to do
    assert ingest.run(two, 800, 5, group_size=9, out=io.StringIO()) == h1
    with pytest.raises(ValidationError, match="already holds 800 inputs"):
        ingest.run(two, 700, 5, out=io.StringIO())


# --- verify-log, through the real command ---------------------------------------------------------------


def verify_cmd(*args: object) -> tuple[int, dict | None, str]:
    p = subprocess.run(
        [*CLI, "verify-log", *map(str, args)], capture_output=True, text=True, timeout=60, env=SUBPROCESS_ENV
    )
    lines = p.stdout.strip().splitlines()
    return p.returncode, (orjson.loads(lines[-1]) if lines else None), p.stderr


def test_verify_log_of_an_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "a.fmlog"
    Runner.open_or_create(path, perp_venue()).close()
    with EventLog.open(path, readonly=True) as log:
        rep = verify_log(log, expect_hash=Engine(perp_venue()).state_hash())
    assert rep["ok"] is True and rep["events"] == rep["last_seq"] == rep["checkpoint_seq"] == 0


def test_verify_log_via_python_dash_m(tmp_path: Path) -> None:
    """`python -m fluidmargin.cli.main verify-log` must reach the same command as the console script."""
    p = subprocess.run(
        [sys.executable, "-m", "fluidmargin.cli.main", "verify-log", str(tmp_path / "missing.fmlog")],
        capture_output=True,
        text=True,
        timeout=60,
        env=SUBPROCESS_ENV,
    )
    assert p.returncode == 2 and "no such event log" in p.stderr, p.stderr[-800:]


def test_verify_log_command(tmp_path: Path) -> None:
    path, sdir = tmp_path / "a.fmlog", tmp_path / "snaps"
    runner = Runner.open_or_create(path, perp_venue(), snapshot_dir=sdir, group_size=100)
    feed(runner, stream(500))
    runner.snapshot()
    feed(runner, stream(700)[500:])
    runner.close()
    live = runner.engine.state_hash()
    rc, rep, _ = verify_cmd(path, "--snapshots", sdir, "--expect-hash", live)
    assert rc == 0 and rep is not None
    assert rep["ok"] is True and rep["state_hash"] == rep["checkpoint_hash"] == live
    assert rep["inputs"] == 700 and rep["events"] == rep["last_seq"] == runner.engine.seq
    assert rep["snapshot_seq"] is not None and rep["snapshot_seq"] < rep["last_seq"]

    rc, rep, _ = verify_cmd(path, "--expect-hash", "ab" * 32)
    assert rc == 1 and rep is not None and rep["ok"] is False and "expected" in rep["error"]

    rc, _, err = verify_cmd(tmp_path / "missing.fmlog")
    assert rc == 2 and "no such event log" in err
    (tmp_path / "x.txt").write_text("not a log")
    rc, _, err = verify_cmd(tmp_path / "x.txt")
    assert rc == 2 and "not a fluidmargin event log" in err

    # one changed input (a bigger deposit) replays without output mismatch but ends elsewhere
    with EventLog.open(path) as log:
        seq, d = next((s, d) for s, d in log.read_dicts() if d["type"] == "Deposited")
    d["amount_q"] += 1
    tamper(path, "UPDATE events SET payload = ? WHERE seq = ?", orjson.dumps(d), seq)
    rc, rep, _ = verify_cmd(path)
    assert rc == 1 and rep is not None and rep["ok"] is False
    assert rep["state_hash"] != rep["checkpoint_hash"] and "checkpoint" in rep["error"]

    # one changed output is named by its seq
    d["amount_q"] -= 1
    tamper(path, "UPDATE events SET payload = ? WHERE seq = ?", orjson.dumps(d), seq)
    with EventLog.open(path) as log:
        oseq, od = next((s, d) for s, d in log.read_dicts() if d["type"] == "IndexPriceUpdated")
    od["price_q"] -= 1
    tamper(path, "UPDATE events SET payload = ? WHERE seq = ?", orjson.dumps(od), oseq)
    rc, rep, _ = verify_cmd(path)
    assert rc == 1 and rep is not None and f"seq {oseq}" in rep["error"]
