"""Crash recovery of the running service, on both stores: drive concurrent writes at ``fluidmargin serve``,
SIGKILL it mid-load, restart it, and check that nothing acknowledged was lost.

Acknowledged means answered 200 (applied) or 409 (refused by the engine, which logs the refusal): the
service answers only once the write's records are durable. After the restart:

* every acknowledged answer's events are in the log at their seqs, equal to what the answer showed, and
  the input carries the request's Idempotency-Key (``<key id>:<key>``);
* re-sending every request (acknowledged or cut off by the kill) with its Idempotency-Key applies nothing
  twice: an acknowledged one replays its first answer, and every key is in the log exactly once;
* the restarted service recovered from a snapshot taken before the kill (none skipped) plus the log's
  tail, accepts new writes, and its state hash (the checkpoint a clean stop writes) equals a replay of
  the whole log from empty.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fluidmargin.engine import Engine
from fluidmargin.service.codec import Scales, render_event
from fluidmargin.store.backend import open_log
from fluidmargin.store.replay import replay
from fluidmargin.store.snapshot import list_snapshots
from support.server import ADMIN, Server

THREADS = 6
MIN_ACKED = 800
ACCOUNTS = 8


@dataclass
class Req:
    key: str  # the API key (secret) it was sent with
    key_id: str
    method: str
    path: str
    body: dict[str, Any]
    idem: str
    status: int = 0  # 0: no answer (the server died with it in flight)
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        return f"{self.key_id}:{self.idem}"

    def send(self, c: httpx.Client) -> httpx.Response:
        return c.request(
            self.method,
            self.path,
            json=self.body,
            headers={"Authorization": f"Bearer {self.key}", "Idempotency-Key": self.idem},
        )


class Load:
    """Threads sending writes until told to stop or the server goes away; every request is recorded."""

    def __init__(self, url: str, accounts: list[int], venue: tuple[str, str], publisher: tuple[str, str]) -> None:
        self.url, self.accounts, self.venue, self.publisher = url, accounts, venue, publisher
        self.stop = threading.Event()
        self.sent: list[Req] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(THREADS)]

    def acked(self) -> list[Req]:
        with self.lock:
            return [r for r in self.sent if r.status in (200, 409)]

    def _make(self, t: int, i: int, rng: random.Random) -> Req:
        k = rng.random()
        a = rng.choice(self.accounts)
        idem = f"t{t}-{i}"
        if k < 0.1:
            px = f"{rng.randint(49_000, 51_000)}.{rng.randint(0, 99):02d}"
            return Req(*self.publisher, "POST", "/v1/prices", {"asset": "BTC", "price": px}, idem)
        if k < 0.5:
            return Req(*self.venue, "POST", f"/v1/accounts/{a}/deposits", {"amount": f"{rng.randint(1, 500)}.5"}, idem)
        if k < 0.6:  # some refused (insufficient collateral): a logged refusal is acknowledged too
            body = {"amount": str(rng.choice([1, 10**9]))}
            return Req(*self.venue, "POST", f"/v1/accounts/{a}/withdrawals", body, idem)
        size = f"{rng.choice(['', '-'])}0.00{rng.randint(1, 9)}"
        return Req(
            *self.venue, "POST", f"/v1/accounts/{a}/fills", {"market": "BTC-PERP", "size": size, "price": "50000"}, idem
        )

    def _run(self, t: int) -> None:
        rng = random.Random(t)
        with httpx.Client(base_url=self.url, timeout=30) as c:
            i = 0
            while not self.stop.is_set():
                req = self._make(t, i, rng)
                i += 1
                with self.lock:
                    self.sent.append(req)
                try:
                    r = req.send(c)
                except httpx.TransportError:
                    return  # the server is gone: this request's fate is unknown
                req.status, req.answer = r.status_code, r.json()
                assert r.status_code in (200, 409), r.text

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def join(self) -> None:
        for th in self.threads:
            th.join(60)
            assert not th.is_alive()


def _setup(url: str) -> tuple[list[int], tuple[str, str], tuple[str, str]]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
        accounts = []
        for _ in range(ACCOUNTS):
            a = c.post("/v1/accounts", json={}).json()["account_id"]
            c.post(f"/v1/accounts/{a}/deposits", json={"amount": "100000"}).raise_for_status()
            accounts.append(a)
        v = c.post("/v1/keys", json={"role": "venue"}).json()
        p = c.post("/v1/keys", json={"role": "publisher", "source": "crash-feed"}).json()
        for asset, px in (("BTC", "50000"), ("ETH", "3000")):
            r = c.post(
                "/v1/prices", json={"asset": asset, "price": px}, headers={"Authorization": f"Bearer {p['api_key']}"}
            )
            r.raise_for_status()
    return accounts, (v["api_key"], v["key_id"]), (p["api_key"], p["key_id"])


def _read_log(db: str) -> tuple[dict[int, Any], Any, tuple[int, str], int]:
    log = open_log(db, readonly=True)
    try:
        return dict(log.read()), log.config, log.checkpoint(), log.last_seq()
    finally:
        log.close()


def test_sigkill_under_load_loses_no_acknowledged_write(log_url: str, tmp_path: Path) -> None:
    server = Server(log_url, tmp_path)
    server.start()
    accounts, venue, publisher = _setup(server.url)
    load = Load(server.url, accounts, venue, publisher)
    load.start()
    deadline = time.monotonic() + 90
    while len(load.acked()) < MIN_ACKED or not list_snapshots(server.snapshots):
        assert time.monotonic() < deadline, f"only {len(load.acked())} writes acknowledged"
        assert all(th.is_alive() for th in load.threads), "a load thread failed"
        time.sleep(0.02)
    snapshot_seqs = [s for s, _ in list_snapshots(server.snapshots)]
    server.kill()  # mid-load: every thread has a request in flight or about to be
    killed_at = time.monotonic()
    load.stop.set()
    load.join()
    acked = load.acked()
    cut_off = [r for r in load.sent if r.status == 0]
    assert acked and cut_off

    server.start()
    events, config, _, last_seq = _read_log(log_url)
    scales = Scales(config)
    by_eid: dict[str, list[int]] = {}
    for seq, e in events.items():
        if e.is_input and getattr(e, "event_id", ""):
            by_eid.setdefault(e.event_id, []).append(seq)
    present = 0
    for req in acked:
        shown = req.answer["events"]
        seq = req.answer["seq"]
        assert by_eid.get(req.event_id) == [seq], (req, by_eid.get(req.event_id))
        for e in shown:  # the answer's events, as the log holds them
            assert e["seq"] <= last_seq
            assert e in render_event(e["seq"], events[e["seq"]], scales), (e, events[e["seq"]])
        assert shown[0]["seq"] == seq and shown[0]["type"] in (
            "Deposited",
            "WithdrawalRequested",
            "TradeFilled",
            "PriceObserved",
        )
        present += 1
    print(
        f"\n[{log_url.split(':')[0]}] acknowledged {len(acked)}, present after the restart {present}, "
        f"in flight at the kill {len(cut_off)} (of which durable: {sum(r.event_id in by_eid for r in cut_off)}), "
        f"log seq {last_seq}, snapshots before the kill at seqs {sorted(snapshot_seqs)}"
    )
    assert present == len(acked)
    assert max(snapshot_seqs) < last_seq  # recovery: the newest snapshot, then the log's tail replayed
    log_text = server.log_path.read_text()
    assert "snapshot skipped" not in log_text and "Traceback" not in log_text, log_text[-3000:]

    # every request again, with its Idempotency-Key: nothing applies twice
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for req in acked:
            r = req.send(c)
            assert r.status_code == req.status, r.text
            got = r.json()
            if req.status == 200:
                assert got["replayed"] and got["seq"] == req.answer["seq"] and got["events"] == req.answer["events"]
            else:
                assert got == req.answer
        for req in cut_off:
            r = req.send(c)
            assert r.status_code in (200, 409), r.text
            if r.status_code == 200:
                assert r.json()["replayed"] == (req.event_id in by_eid)
        # and new writes are accepted
        r = c.post(
            f"/v1/accounts/{accounts[0]}/deposits",
            json={"amount": "1"},
            headers={"Authorization": f"Bearer {venue[0]}", "Idempotency-Key": "after-the-crash"},
        )
        assert r.status_code == 200 and not r.json()["replayed"], r.text
        live_seq = c.get("/healthz").json()["durable_seq"]
    server.stop()  # a clean stop: checkpoint (seq, state hash of the live engine) and a snapshot

    events, config, (cseq, chash), last_seq = _read_log(log_url)
    assert cseq == last_seq == live_seq
    counts: dict[str, int] = {}
    for e in events.values():
        if e.is_input and getattr(e, "event_id", ""):
            counts[e.event_id] = counts.get(e.event_id, 0) + 1
    assert all(counts.get(r.event_id) == 1 for r in [*acked, *cut_off])  # exactly once each
    engine = Engine(config)
    log = open_log(log_url, readonly=True)
    try:
        replay(log, engine)
    finally:
        log.close()
    assert (engine.seq, engine.state_hash()) == (cseq, chash)  # the service's state is the log's replay
    assert max(s for s, _ in list_snapshots(server.snapshots)) == cseq
    assert time.monotonic() - killed_at < 120
