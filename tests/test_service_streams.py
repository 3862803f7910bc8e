"""WebSocket streams through a real server: resume exactly once, slow clients dropped, visibility per role,
the publisher socket, and the dashboard's summary and page."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.streams import CHANNELS
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue

ADMIN = "fm_stream-test-admin"
ETH = "ETH-PERP"


class World:
    def __init__(self, app: Any, url: str, c: httpx.Client) -> None:
        self.app = app
        self.hub = app.state.hub
        self.url = url
        self.ws_url = "ws" + url.removeprefix("http")
        self.c = c
        self.pub = self.key("publisher", source="stream-test")

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.c.request(method, path, **kw)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def key(self, role: str, **kw: Any) -> str:
        return str(self.ok("POST", "/v1/keys", 201, json={"role": role, **kw})["api_key"])

    def price(self, asset: str, price: str) -> Any:
        return self.ok(
            "POST", "/v1/prices", json={"asset": asset, "price": price}, headers={"Authorization": f"Bearer {self.pub}"}
        )

    def account(self, deposit: str = "10000") -> int:
        a = int(self.ok("POST", "/v1/accounts", 201, json={})["account_id"])
        self.ok("POST", f"/v1/accounts/{a}/deposits", json={"amount": deposit})
        return a

    def head(self) -> int:
        return int(self.ok("GET", "/healthz")["durable_seq"])

    def log(self) -> dict[int, list[dict[str, Any]]]:
        """Every record of the durable log, as GET /v1/events renders it, by seq."""
        out: dict[int, list[dict[str, Any]]] = {}
        after = 0
        while True:
            page = self.ok("GET", "/v1/events", params={"after": after, "limit": 1000})
            for e in page["events"]:
                out.setdefault(e["seq"], []).append(e)
            if page["next_seq"] - 1 == after:
                return out
            after = page["next_seq"] - 1

    @contextmanager
    def stream(self, key: str = ADMIN, **params: Any) -> Iterator[ClientConnection]:
        q = "&".join(f"{k}={v}" for k, v in {**params, "key": key}.items())
        with connect(f"{self.ws_url}/v1/stream?{q}", max_size=None, open_timeout=30) as ws:
            yield ws


@contextmanager
def running(tmp: Path, sndbuf: int | None = None, db: str | None = None, **hub: Any) -> Iterator[World]:
    """A server; ``hub``: StreamHub settings; ``sndbuf``: the server sockets' send buffer (accepted sockets
    inherit the listening socket's; a small one makes a client that stops reading block the server soon);
    ``db``: the store (default: a SQLite file in ``tmp``)."""
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    target = db if db is not None else tmp / "log.db"
    app = create_app(
        ServiceSettings(
            db=target,  # type: ignore[arg-type]  # a path or a URL, as `fluidmargin serve --db`
            config=cfg,
            admin_key=ADMIN,
            rate_per_s=0,
            snapshot_dir=tmp / "snapshots",
        )
    )
    for k, v in hub.items():
        setattr(app.state.hub, k, v)
    server = ServerThread(app)
    if sndbuf is not None:
        server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    with (
        server as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c,
    ):
        w = World(app, url, c)
        w.price("BTC", "50000")
        w.price("ETH", "3000")
        yield w


def recv_json(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    msg = json.loads(ws.recv(timeout=timeout))
    assert isinstance(msg, dict)
    return msg


def read_until(ws: ClientConnection, seq: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Messages until a data message covers ``seq``."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        msg = recv_json(ws, max(0.1, deadline - time.monotonic()))
        out.append(msg)
        if "records" in msg and msg["seq"] >= seq:
            return out


def records(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for m in msgs if "records" in m for r in m["records"]]


def check_messages(msgs: list[dict[str, Any]]) -> None:
    """Data messages: increasing seq; each record's seq within its message's span, in order."""
    prev = 0
    for m in msgs:
        if "records" not in m:
            continue
        seqs = [r["seq"] for r in m["records"]]
        assert seqs == sorted(seqs) and all(prev < s <= m["seq"] for s in seqs), (prev, m["seq"], seqs)
        prev = m["seq"]


def busy(w: World, a: int, b: int, n: int = 5) -> None:
    """Varied traffic: prices, fills, a deposit, a refused withdrawal."""
    for i in range(n):
        w.price("BTC", str(50000 + 10 * i))
        w.ok("POST", f"/v1/accounts/{a}/fills", json={"market": ETH, "size": "0.1", "price": "3000"})
        w.ok("POST", f"/v1/accounts/{b}/deposits", json={"amount": "1"})
    r = w.c.post(f"/v1/accounts/{b}/withdrawals", json={"amount": "99999999"})
    assert r.status_code == 409, r.text


# --- resume -------------------------------------------------------------------------------------------


def test_resume_receives_every_record_exactly_once(log_url: str, tmp_path: Path) -> None:
    with running(tmp_path, db=log_url) as w:
        a, b = w.account(), w.account()
        busy(w, a, b)
        first_head = w.head()
        with w.stream(from_seq=1) as ws:
            hello = recv_json(ws)
            assert hello["op"] == "hello" and hello["from_seq"] == 1 and hello["head_seq"] >= first_head
            msgs = read_until(ws, first_head)
            busy(w, a, b, 3)  # live, while connected
            msgs += read_until(ws, w.head())
        assert any(m.get("op") == "live" for m in msgs)
        last = msgs[-1]["seq"]
        busy(w, a, b, 4)  # while disconnected
        liq = w.account("3100")
        w.ok("POST", f"/v1/accounts/{liq}/fills", json={"market": ETH, "size": "10", "price": "3000", "leverage": 10})
        w.price("ETH", "2700")  # a liquidation
        with w.stream(from_seq=last + 1) as ws:
            assert recv_json(ws)["from_seq"] == last + 1
            more = read_until(ws, w.head())
            busy(w, a, b, 2)
            more += read_until(ws, w.head())
        check_messages(msgs)
        check_messages(more)
        got = records(msgs) + records(more)
        log = w.log()
        assert [r["seq"] for r in got] == sorted(log) == list(range(1, max(log) + 1))
        for r in got:  # the same events as the log holds, in the API's rendering
            assert r["events"] == log[r["seq"]], r["seq"]
            assert all(e["type"] == r["type"] for e in r["events"]) or r["type"] == "PositionsLiquidated"
        assert "PositionLiquidated" in {e["type"] for r in got for e in r["events"]}


def test_resume_while_writes_race(log_url: str, tmp_path: Path) -> None:
    """Reconnect again and again while writes go on: small catch-up chunks and a tiny live buffer force
    the splice and the re-read-after-overflow paths; the union is still every seq once, in order."""
    with running(tmp_path, db=log_url, catch_up_records=5, max_queue=3) as w:
        a = w.account()
        stop = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                i = 0
                while not stop.is_set():
                    w.price("BTC", str(50000 + i % 50))
                    if i % 3 == 0:
                        w.ok("POST", f"/v1/accounts/{a}/fills", json={"market": ETH, "size": "0.01", "price": "3000"})
                    i += 1
            except BaseException as e:
                errors.append(e)

        writers = [threading.Thread(target=write) for _ in range(2)]
        for t in writers:
            t.start()
        got: list[dict[str, Any]] = []
        nxt = 1
        try:
            for round_ in range(8):
                time.sleep(0.15)
                with w.stream(from_seq=nxt) as ws:
                    assert recv_json(ws)["op"] == "hello"
                    msgs = read_until(ws, w.head())
                    if round_ % 2:  # stay live a little
                        msgs += read_until(ws, w.head())
                check_messages(msgs)
                got += records(msgs)
                nxt = msgs[-1]["seq"] + 1
        finally:
            stop.set()
            for t in writers:
                t.join(60)
        assert not errors, errors
        with w.stream(from_seq=nxt) as ws:
            msgs = read_until(ws, w.head())
        got += records(msgs)
        seqs = [r["seq"] for r in got]
        assert seqs == list(range(1, w.head() + 1))
        assert w.hub.stats["catch_up_rereads"] >= 1  # the overflow path was taken
        assert not w.hub.subs


def test_live_stream_starts_at_the_head_and_progress_messages(tmp_path: Path) -> None:
    with running(tmp_path, progress_s=0.2) as w:
        head = w.head()
        with w.stream(channels="liquidations") as ws:
            hello = recv_json(ws)
            assert hello["from_seq"] is None and hello["head_seq"] == head and hello["channels"] == ["liquidations"]
            w.price("BTC", "50001")  # nothing for this channel: a progress message says how far it has read
            msg = recv_json(ws, 10)
            assert msg == {"seq": w.head(), "records": []}


# --- slow clients -------------------------------------------------------------------------------------


def test_slow_client_is_dropped_and_writes_keep_their_pace(tmp_path: Path) -> None:
    with running(tmp_path, sndbuf=32768, max_queue=16, close_timeout_s=30.0) as w:

        def timed_writes(n: int) -> list[float]:
            out = []
            for i in range(n):
                t0 = time.perf_counter()
                w.price("BTC", str(50000 + i % 100))
                out.append(time.perf_counter() - t0)
            return out

        baseline = timed_writes(200)
        # a client that never reads: a tiny receive buffer, and its library stops reading at once
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.connect(("127.0.0.1", int(w.url.rsplit(":", 1)[1])))
        slow = connect(
            f"{w.ws_url}/v1/stream?key={ADMIN}",
            sock=sock,
            max_queue=1,
            max_size=None,
            ping_interval=None,
            open_timeout=30,
        )
        with slow:
            with w.stream() as fast:
                recv_json(fast)
                start = w.head()
                fast_msgs: list[dict[str, Any]] = []
                done = threading.Event()

                def read_fast() -> None:  # a client that keeps up
                    while not (done.is_set() and fast_msgs and fast_msgs[-1]["seq"] >= w.head()):
                        fast_msgs.append(recv_json(fast))

                reader = threading.Thread(target=read_fast)
                reader.start()
                lat: list[float] = []
                deadline = time.monotonic() + 60
                while not w.hub.stats["dropped_slow"]:
                    assert time.monotonic() < deadline, "the slow client was never dropped"
                    lat += timed_writes(20)
                n_writes = len(lat)
                lat += timed_writes(50)  # after the drop too
                done.set()
                reader.join(60)
                assert len(w.hub.subs) == 1  # only the fast one is left
                got = records(fast_msgs)  # the fast client missed nothing
                assert [r["seq"] for r in got] == list(range(start + 1, w.head() + 1))
            lat.sort()
            base = sorted(baseline)
            p99, base_p50 = lat[int(len(lat) * 0.99)], base[len(base) // 2]
            assert p99 < max(0.5, 50 * base_p50), (p99, base_p50)
            assert sum(lat) / len(lat) < 5 * sum(base) / len(base) + 0.02  # (a stall would be seconds)
            # when it reads at last: what was in flight, then the close with its reason
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    slow.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408, closed.value
            assert "slow consumer" in closed.value.rcvd.reason
            print(f"slow client dropped after {n_writes} writes; write p99 {p99 * 1e3:.1f} ms, baseline p50 "
                  f"{base_p50 * 1e3:.1f} ms")  # fmt: skip


# --- visibility, channels, errors ---------------------------------------------------------------------


def _ids(e: dict[str, Any]) -> set[int]:
    out: set[int] = set()
    for f in ("account_id", "account_ids", "bankrupt_account_id"):
        v = e.get(f)
        if isinstance(v, list):
            out.update(v)
        elif isinstance(v, int):
            out.add(v)
    return {i for i in out if i >= 0}


def test_visibility_per_role_and_channels(tmp_path: Path) -> None:
    with running(tmp_path) as w:
        a, b = w.account(), w.account()
        sub = int(w.ok("POST", "/v1/accounts", 201, json={"parent_id": a})["account_id"])
        keys = {
            "own": w.key("account", account_ids=[a]),
            "other": w.key("account", account_ids=[b]),
            "venue": w.key("venue"),
        }
        start = w.head() + 1
        busy(w, a, b, 2)
        w.ok("POST", f"/v1/accounts/{sub}/deposits", json={"amount": "5"})
        r = w.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "99999999"})
        assert r.status_code == 409
        head = w.head()
        log = w.log()
        seen: dict[str, list[dict[str, Any]]] = {}
        for role, key in [("admin", ADMIN), *keys.items()]:
            with w.stream(key, from_seq=start) as ws:
                assert recv_json(ws)["role"] == ("account" if role in ("own", "other") else role)
                seen[role] = records(read_until(ws, head))
        everything = [s for s in log if s >= start]
        assert [r["seq"] for r in seen["admin"]] == everything == [r["seq"] for r in seen["venue"]]
        own_ids = {i for r in seen["own"] for e in r["events"] for i in _ids(e)}
        other_ids = {i for r in seen["other"] for e in r["events"] for i in _ids(e)}
        assert own_ids == {a, sub} and other_ids == {b}
        for role, mine in (("own", a), ("other", b)):
            rejected = [r for r in seen[role] if r["type"] == "InputRejected"]
            assert len(rejected) == 1, (role, rejected)  # its own refused withdrawal, not the other's
            before = [r for r in seen[role] if r["seq"] == rejected[0]["seq"] - 1]
            assert before and _ids(before[0]["events"][0]) == {mine}
            market_wide = [r["seq"] for r in seen[role] if r["type"] in ("PriceObserved", "MarkPriceUpdated")]
            assert market_wide == [s for s in everything if log[s][0]["type"] in ("PriceObserved", "MarkPriceUpdated")]
        # channels
        with w.stream(from_seq=start, channels="prices,funds") as ws:
            assert recv_json(ws)["channels"] == ["funds", "prices"]
            got = records(read_until(ws, head))
        allowed = set(CHANNELS["prices"]) | set(CHANNELS["funds"])
        assert got and {r["type"] for r in got} <= allowed
        assert [r["seq"] for r in got] == [s for s in everything if log[s][0]["type"] in allowed]


@pytest.mark.parametrize(
    ("params", "key", "code"),
    [
        ({}, "fm_not-a-key", 4401),
        ({}, "", 4401),
        ({}, "publisher", 4403),
        ({"channels": "nonsense"}, ADMIN, 4400),
        ({"from_seq": "x"}, ADMIN, 4400),
        ({"from_seq": "999999"}, ADMIN, 4400),
    ],
    ids=["invalid-key", "no-key", "publisher", "bad-channel", "bad-from-seq", "from-seq-beyond-end"],
)
def test_refused_streams_close_with_a_reason(tmp_path: Path, params: dict[str, str], key: str, code: int) -> None:
    with running(tmp_path) as w:
        key = w.pub if key == "publisher" else key
        q = "&".join(f"{k}={v}" for k, v in params.items())
        url = f"{w.ws_url}/v1/stream?{q}" + (f"&key={key}" if key else "")
        with connect(url, open_timeout=30) as ws, pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code and closed.value.rcvd.reason


def test_stream_accepts_an_authorization_header_and_drops_revoked_keys(tmp_path: Path) -> None:
    with running(tmp_path, progress_s=0.1) as w:
        created = w.ok("POST", "/v1/keys", 201, json={"role": "venue"})
        with connect(
            f"{w.ws_url}/v1/stream", additional_headers={"Authorization": f"Bearer {created['api_key']}"}
        ) as ws:
            assert recv_json(ws)["role"] == "venue"
            w.ok("DELETE", f"/v1/keys/{created['key_id']}")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


# --- the publisher socket -----------------------------------------------------------------------------


def test_publisher_websocket(tmp_path: Path) -> None:
    with running(tmp_path) as w:
        with connect(f"{w.ws_url}/v1/publish?key={w.pub}", open_timeout=30) as ws:
            n = 60
            for i in range(n):  # pipelined: sent before any answer is read
                ws.send(json.dumps({"id": i, "asset": "BTC" if i % 2 else "ETH", "price": str(3000 + i)}))
            ws.send(json.dumps({"id": "bad-asset", "asset": "DOGE", "price": "1"}))
            ws.send(json.dumps({"id": "bad-price", "asset": "BTC", "price": "1.000000001"}))
            ws.send(json.dumps({"id": "float", "asset": "BTC", "price": 50000.5}))
            ws.send("not json")
            ws.send(json.dumps({"id": "k1", "asset": "BTC", "price": "51000", "idempotency_key": "k1"}))
            ws.send(json.dumps({"id": "k1 again", "asset": "BTC", "price": "51000", "idempotency_key": "k1"}))
            acks = [recv_json(ws) for _ in range(n + 6)]
        assert [a["id"] for a in acks[:n]] == list(range(n)) and all(a["ok"] for a in acks[:n])
        seqs = [a["seq"] for a in acks[:n]]
        assert seqs == sorted(seqs) and all(a["durable_seq"] >= a["seq"] for a in acks[:n])
        assert [(a["id"], a["ok"], a["status"]) for a in acks[n : n + 4]] == [
            ("bad-asset", False, 422),
            ("bad-price", False, 422),
            ("float", False, 422),
            (None, False, 422),
        ]
        first, again = acks[n + 4], acks[n + 5]
        assert first["ok"] and again["ok"] and again["replayed"] and again["seq"] == first["seq"]
        log = w.log()
        for a in acks[:n]:
            (e,) = [e for e in log[a["seq"]] if e["type"] == "PriceObserved"]
            assert e["source"] == "stream-test" and e["price"] == str(3000 + a["id"])
            assert a["events"][0] == e
        venue = w.key("venue")
        with (
            connect(f"{w.ws_url}/v1/publish?key={venue}", open_timeout=30) as ws,
            pytest.raises(ConnectionClosed) as closed,
        ):
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


# --- the dashboard's summary and page -----------------------------------------------------------------


def test_dashboard_summary_and_page(tmp_path: Path) -> None:
    with running(tmp_path) as w:
        safe, risky = w.account("100000"), w.account("3300")
        w.ok("POST", f"/v1/accounts/{safe}/fills", json={"market": ETH, "size": "1", "price": "3000"})
        w.ok("POST", f"/v1/accounts/{risky}/fills", json={"market": ETH, "size": "10", "price": "3000", "leverage": 10})
        s = w.ok("GET", "/v1/dashboard/summary")
        assert s["seq"] == w.head() and s["accounts"] >= 2
        eth = next(m for m in s["markets"] if m["symbol"] == ETH)
        assert (eth["index"], eth["mark"], eth["open_interest_long"], eth["halted"]) == ("3000", "3000", "11", False)
        h = s["health"]
        assert len(h["counts"]) == len(h["edges"]) + 1 == len(h["labels"]) and sum(h["counts"]) == h["buckets"] == 2
        worst = s["worst"]
        assert [x["account_id"] for x in worst] == [risky, safe]
        assert float(worst[0]["health_ratio"]) < float(worst[1]["health_ratio"])
        for account in (safe, risky):  # the float screen agrees with the exact figures
            v = w.ok("GET", f"/v1/accounts/{account}")
            exact = float(v["equity"]) / float(v["maintenance_margin"])
            got = float(next(x["health_ratio"] for x in worst if x["account_id"] == account))
            assert abs(got - exact) < 1e-3 * exact + 1e-3
        assert s["statuses"]["healthy"] >= 2 and set(s["funds"]) >= {"main"} and s["vault"] is not None
        for role, status in (("publisher", 403), ("none", 401)):
            hdr = {"Authorization": f"Bearer {w.pub}"} if role == "publisher" else {}
            r = httpx.get(f"{w.url}/v1/dashboard/summary", headers=hdr)
            assert r.status_code == status, r.text
        own = w.key("account", account_ids=[safe])
        assert httpx.get(f"{w.url}/v1/dashboard/summary", headers={"Authorization": f"Bearer {own}"}).status_code == 200
        # the page and its assets, served by the app itself (no CDN), without a key
        page = httpx.get(f"{w.url}/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for asset in (
            "static/dashboard.js",
            "static/dashboard.css",
            "static/uPlot.iife.min.js",
            "static/uPlot.min.css",
        ):
            assert f'"{asset}"' in page.text
            r = httpx.get(f"{w.url}/{asset}")
            assert r.status_code == 200 and len(r.content) > 100
        assert "//" not in page.text.replace("://", "") or "http" not in page.text  # nothing fetched from elsewhere
        assert httpx.get(f"{w.url}/static/nope.js").status_code == 404
