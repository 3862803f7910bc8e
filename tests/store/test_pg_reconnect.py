"""The service rides out a PostgreSQL restart: it connects again, loses no acknowledged write, applies
nothing it answered 503, and takes writes (and new keys) again within a bounded time once the server is back.

Each test runs its own throwaway PostgreSQL cluster (initdb in a temporary directory, a free loopback port,
the same binaries scripts/postgres.sh finds), so restarting it disturbs no other test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluidmargin.engine import Engine
from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app, storage
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue
from fluidmargin.store.backend import open_log
from fluidmargin.store.replay import replay

ADMIN = "fm_reconnect-admin"
THREADS = 4
ACCOUNTS = 4
BACK_WITHIN_S = 30.0  # after the server is back, a write succeeds within this (retry window + recovery)


# --- a private PostgreSQL cluster -------------------------------------------------------------------------


def _bindir() -> Path:
    """The server binaries, found as scripts/postgres.sh finds them (fails, never skips, without them)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: [int(x) for x in Path(d).parent.name.split(".") if x.isdigit()],
    )
    for d in reversed(found):
        if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK):
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and os.access(Path(initdb).resolve().with_name("pg_ctl"), os.X_OK):
        return Path(initdb).resolve().parent
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/postgres.sh once to install them")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway cluster: ``initdb`` in a fresh directory, trust auth on loopback, its own port.

    As root, initdb and pg_ctl run as the ``postgres`` user (they refuse root), so the directory is made
    outside pytest's private tmp tree and handed to that user.
    """

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="fm-pg-reconnect-"))
        self.data, self.sock, self.logfile = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sock.mkdir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
        self.port = _free_port()
        self.url = f"postgresql://fm@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "fm", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd="/")
        if p.returncode != 0:
            log = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {p.stderr[-2000:]}\n{log}")

    def _opts(self) -> str:
        return f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} -c max_connections=50"

    def start(self) -> None:
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "120", "-o", self._opts()
        )

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "120")

    def restart(self) -> None:
        self._run("pg_ctl", "restart", "-D", str(self.data), "-l", str(self.logfile), "-m", "fast", "-w", "-t", "120",
                  "-o", self._opts())  # fmt: skip

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.remove()


# --- the service and its load -------------------------------------------------------------------------------


@contextlib.contextmanager
def service(url: str, work: Path) -> Iterator[str]:
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    s = ServiceSettings(db=url, config=cfg, snapshot_dir=work / "snapshots", admin_key=ADMIN, rate_per_s=0)  # type: ignore[arg-type]
    with ServerThread(create_app(s)) as base:
        yield base


def admin(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)


@dataclass
class Write:
    idem: str
    account: int
    amount: str
    status: int = 0
    answer: dict[str, Any] = field(default_factory=dict)


class Load:
    """Threads sending keyed deposits; every request and its answer is recorded."""

    def __init__(self, base: str, venue_key: str, accounts: list[int]) -> None:
        self.base, self.venue_key, self.accounts = base, venue_key, accounts
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent: list[Write] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(THREADS)]

    def send(self, c: httpx.Client, w: Write) -> None:
        r = c.post(
            f"/v1/accounts/{w.account}/deposits",
            json={"amount": w.amount},
            headers={"Authorization": f"Bearer {self.venue_key}", "Idempotency-Key": w.idem},
        )
        w.status, w.answer = r.status_code, r.json()

    def _run(self, t: int) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as c:
            i = 0
            while not self.stop.is_set():
                w = Write(f"t{t}-{i}", self.accounts[(t + i) % len(self.accounts)], f"{1 + i % 7}.25")
                i += 1
                with self.lock:
                    self.sent.append(w)
                try:
                    self.send(c, w)
                except httpx.HTTPError as e:  # no answer at all: the service must always answer
                    self.errors.append(repr(e))
                    return
                if w.status not in (200, 503):
                    self.errors.append(f"{w.status} {w.answer}")
                    return

    def count(self, status: int) -> int:
        with self.lock:
            return sum(1 for w in self.sent if w.status == status)

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def join(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(180)
            assert not th.is_alive()


def wait_for(cond: Any, within_s: float, what: str) -> float:
    """Wait (polling, bounded) until ``cond()``; returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < within_s, f"{what}: not within {within_s} s"
        time.sleep(0.01)
    return time.monotonic() - t0


def setup(base: str) -> tuple[list[int], str]:
    with admin(base) as c:
        accounts = [c.post("/v1/accounts", json={}).json()["account_id"] for _ in range(ACCOUNTS)]
        venue = c.post("/v1/keys", json={"role": "venue"}).json()["api_key"]
    return accounts, venue


def logged_inputs(url: str) -> dict[str, list[int]]:
    """event_id -> seqs of the inputs that carry it."""
    out: dict[str, list[int]] = {}
    with open_log(url, readonly=True) as log:
        for seq, d in log.read_dicts():
            if d.get("event_id"):
                out.setdefault(d["event_id"], []).append(seq)
    return out


def assert_live_state_is_the_logs(url: str) -> None:
    """After a clean stop the checkpoint is the live engine's (seq, state hash): it must be the log's replay."""
    with open_log(url, readonly=True) as log:
        cseq, chash = log.checkpoint()
        engine = Engine(log.config)
        replay(log, engine)
        assert cseq == log.last_seq()
    assert (engine.seq, engine.state_hash()) == (cseq, chash)


# --- the tests ----------------------------------------------------------------------------------------------


def test_a_restart_under_load_loses_nothing_and_writes_resume(cluster: Cluster, tmp_path: Path) -> None:
    url = cluster.url + "?schema=fm_reconnect"
    with service(url, tmp_path) as base:
        accounts, venue = setup(base)
        load = Load(base, venue, accounts)
        load.start()
        try:
            wait_for(lambda: load.count(200) >= 100 or bool(load.errors), 120, "100 writes before the restart")
            cluster.restart()  # fast shutdown: every session of the service is cut
            before = load.count(200)
            took = wait_for(
                lambda: load.count(200) >= before + 100 or bool(load.errors), BACK_WITHIN_S, "writes after the restart"
            )
        finally:
            load.join()
        assert not load.errors, load.errors[:5]
        with admin(base) as c:
            r = c.post("/v1/keys", json={"role": "venue"})  # the key registry's own connection was cut too
            assert r.status_code == 201, r.text
            assert c.get("/healthz").json()["status"] == "ok"
    logged = logged_inputs(url)
    acked = [w for w in load.sent if w.status == 200]
    print(f"\nrestart: {len(acked)} acknowledged, {load.count(503)} answered 503, writes resumed in {took:.2f} s")
    assert all(len(seqs) == 1 for seqs in logged.values())  # nothing twice
    seq_of = {eid.split(":", 1)[1]: seqs[0] for eid, seqs in logged.items()}
    for w in acked:  # each acknowledged write is in the log at the seq its answer gave
        assert seq_of.get(w.idem) == w.answer["seq"], w
    assert_live_state_is_the_logs(url)


def test_an_outage_past_the_retry_window_is_503_then_recovers(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "COMMIT_RETRY_S", 1.0)
    url = cluster.url + "?schema=fm_outage"
    with service(url, tmp_path) as base:
        accounts, venue = setup(base)
        load = Load(base, venue, accounts)
        with httpx.Client(base_url=base, timeout=120) as c:
            first = [Write(f"before-{i}", accounts[0], "10") for i in range(3)]
            for w in first:
                load.send(c, w)
                assert w.status == 200, w.answer
            cluster.stop()
            refused = [Write(f"during-{i}", accounts[0], "1000") for i in range(3)]
            for w in refused:  # answered, quickly, and not applied
                t0 = time.monotonic()
                load.send(c, w)
                assert w.status == 503 and time.monotonic() - t0 < 30, w.answer
            with admin(base) as a:
                assert a.post("/v1/keys", json={"role": "venue"}).status_code == 503
            cluster.start()
            back = Write("after", accounts[0], "5")

            def accepted() -> bool:
                load.send(c, back)
                assert back.status in (200, 503), back.answer
                return back.status == 200

            took = wait_for(accepted, BACK_WITHIN_S, "a write after the server came back")
            with admin(base) as a:
                assert a.post("/v1/keys", json={"role": "venue"}).status_code == 201
                # the engine holds exactly the acknowledged deposits: 3 x 10 + 5
                assert Decimal(a.get(f"/v1/accounts/{accounts[0]}").json()["equity"]) == 35, "503 writes were applied"
            logged = {eid.split(":", 1)[1] for eid in logged_inputs(url)}
            assert not logged & {w.idem for w in refused}
            for w in refused:  # sent again with their keys: applied now, once
                load.send(c, w)
                assert w.status == 200 and not w.answer["replayed"], w.answer
    print(f"\noutage: writes accepted again {took:.2f} s after the server was back")
    assert_live_state_is_the_logs(url)


def test_a_commit_whose_answer_is_lost_is_not_written_twice(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT reached the server but the connection broke before its answer came back: the runner
    cannot know, retries, and the log must then hold the batch once (not twice, not refused)."""
    import itertools

    import psycopg

    from fluidmargin.sim import ingest
    from fluidmargin.sim.venues import perp_venue
    from fluidmargin.store import Runner
    from support.data import drop_schema, with_schema

    url = with_schema(pg_server_url, "fm_lost_answer_" + os.urandom(6).hex())
    events = list(itertools.islice(ingest.synthetic_stream(5), 40))
    real_exit = psycopg.Transaction.__exit__
    cut = {"armed": False, "cuts": 0}

    def commit_then_cut(self: Any, *exc: Any) -> bool:
        out: bool = real_exit(self, *exc)
        if cut["armed"] and exc[0] is None:  # committed: now the answer is "lost"
            cut["armed"], cut["cuts"] = False, cut["cuts"] + 1
            self._conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return out

    monkeypatch.setattr(psycopg.Transaction, "__exit__", commit_then_cut)
    try:
        runner = Runner.open_or_create(url, perp_venue(), group_size=10**9, retry_s=30.0)
        for e in events[:20]:
            runner.submit(e)
        first = runner.flush()
        for e in events[20:]:
            runner.submit(e)
        cut["armed"] = True
        second = runner.flush()  # the first try commits and "loses" the answer; the retry finds the rows
        assert cut["cuts"] == 1 and not runner.stale
        assert second == runner.engine.seq > first
        state = runner.engine.state_hash()
        runner.close()
        with open_log(url, readonly=True) as log:
            assert [s for s, _ in log.read_dicts()] == list(range(1, second + 1))
            engine = Engine(log.config)
            replay(log, engine)
        assert engine.state_hash() == state
    finally:
        drop_schema(pg_server_url, url)
