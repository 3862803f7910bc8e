"""WebSocket streams through a real server: resume exactly once, slow clients dropped, visibility per role,
the publisher socket, and the dashboard's summary and page."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.stream_wire import CHANNELS
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
def running(
    tmp: Path, sndbuf: int | None = None, db: str | None = None, ping: bool = True, **hub: Any
) -> Iterator[World]:
    """A server; ``hub``: StreamHub settings; ``sndbuf``: the server sockets' send buffer (accepted sockets
    inherit the listening socket's; a small one makes a client that stops reading block the server soon);
    ``db``: the store (default: a SQLite file in ``tmp``); ``ping=False``: no keepalive pings (uvicorn would
    otherwise close a client that has not read for 40 s with 1011, a clock of its own)."""
    # one publisher drives these scenarios: the venue opts in to single-source liquidation
    # (the quorum default is tested in test_service_oracle.py)
    venue = waterfall_venue(single_source_liquidation=True)
    cfg = dataclasses.replace(venue, backstop=BackstopSpec(withdrawal_delay_ns=1))
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
    if not ping:
        server.server.config.ws_ping_interval = None
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


class Commits:
    """Counts the server's commits (a listener after the stream hub's: a counted commit has already been
    handed to the subscribers), so a test can wait for writes to have happened instead of sleeping."""

    def __init__(self, w: World) -> None:
        self.n = 0
        self._cond = threading.Condition()
        w.hub.worker.add_commit_listener(self._on_commit)

    def _on_commit(self, records: list[Any]) -> None:
        with self._cond:
            self.n += 1
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.n >= n, timeout), f"{self.n} commits, waited for {n}"


def eventually(pred: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for ``pred`` (a state the server reaches on its own, with no event to wait on), bounded."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


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
        commits = Commits(w)
        # the first history read of each connection waits until more commits than the live buffer holds
        # have gone to it: the overflow (and the re-read) happens every round, whatever the machine's pace
        held: list[Any] = []  # the subscribers held once (kept alive: no id is reused)
        reader = w.hub._reader

        def held_reader(sub: Any, from_seq: int, to_seq: int) -> Any:
            read = reader(sub, from_seq, to_seq)
            if stop.is_set() or any(h is sub for h in held):
                return read
            held.append(sub)
            target = commits.n + w.hub.max_queue + 1

            def read_later(lg: Any) -> Any:
                commits.wait(target)
                return read(lg)

            return read_later

        w.hub._reader = held_reader  # type: ignore[method-assign]

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
                commits.wait(commits.n + 10)  # some history to catch up on
                rereads = w.hub.stats["catch_up_rereads"]
                with w.stream(from_seq=nxt) as ws:
                    assert recv_json(ws)["op"] == "hello"
                    msgs = read_until(ws, w.head())
                    if round_ % 2:  # stay live a little
                        msgs += read_until(ws, w.head())
                assert w.hub.stats["catch_up_rereads"] > rereads  # the overflow path was taken
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
        eventually(lambda: not w.hub.subs)  # each closed stream leaves the hub


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


class StalledClient:
    """A stream client that reads nothing after the handshake until told to: a raw socket with a small
    receive buffer and websockets' sans-I/O protocol (a client library would keep reading into buffers
    of its own), so the server's sends to it block after a bounded number of bytes."""

    def __init__(self, w: World, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", int(w.url.rsplit(":", 1)[1])), timeout=60)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.proto = ClientProtocol(parse_uri(w.ws_url + path), max_size=None)
        self.proto.send_request(self.proto.connect())
        self._flush()
        self.texts: list[str] = []
        while not self.texts:  # a byte at a time: nothing beyond the hello is read
            self._feed(self.sock.recv(1))
        self.hello = json.loads(self.texts.pop(0))

    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                self.sock.sendall(chunk)
            else:
                self.sock.shutdown(socket.SHUT_WR)

    def _feed(self, data: bytes) -> None:
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        for e in self.proto.events_received():
            if isinstance(e, Response):
                assert e.status_code == 101, e
            elif isinstance(e, Frame) and e.opcode == Opcode.TEXT:
                self.texts.append(e.data.decode())
        self._flush()

    def read_to_close(self) -> tuple[list[dict[str, Any]], Close | None]:
        """Read everything the server sent, to the end: its messages and its close frame (None: no close)."""
        while self.proto.close_rcvd is None:
            data = self.sock.recv(65536)
            self._feed(data)
            if not data:
                break
        return [json.loads(t) for t in self.texts], self.proto.close_rcvd


def test_slow_client_is_dropped_and_writes_keep_their_pace(tmp_path: Path) -> None:
    """A client that stops reading is dropped (4408) once its queue overflows, while writes go on being
    answered and a client that keeps up misses nothing. No timing is compared: had a write waited on the
    stalled client (its send, or its close), it would hang until the HTTP client's timeout, because the
    slow client reads only after every write here has been answered."""
    # close_timeout_s far above the HTTP timeout: the close frame waits for the slow client to read
    with running(tmp_path, sndbuf=32768, ping=False, max_queue=16, close_timeout_s=300.0) as w:

        def timed_writes(n: int) -> list[float]:
            out = []
            for i in range(n):
                t0 = time.perf_counter()
                w.price("BTC", str(50000 + i % 100))
                out.append(time.perf_counter() - t0)
            return out

        slow = StalledClient(w, f"/v1/stream?key={ADMIN}")
        with contextlib.closing(slow.sock):
            slow_start = slow.hello["head_seq"]
            with w.stream() as fast:
                start = recv_json(fast)["head_seq"]
                fast_msgs: list[dict[str, Any]] = []
                arrived = threading.Condition()
                errors: list[BaseException] = []

                def read_fast() -> None:  # a client that keeps up, until the test closes it
                    try:
                        for raw in fast:
                            with arrived:
                                fast_msgs.append(json.loads(raw))
                                arrived.notify_all()
                    except BaseException as e:
                        errors.append(e)

                reader = threading.Thread(target=read_fast)
                reader.start()
                try:
                    lat: list[float] = []
                    deadline = time.monotonic() + 120
                    while not w.hub.stats["dropped_slow"]:
                        assert time.monotonic() < deadline, "the slow client was never dropped"
                        lat += timed_writes(20)
                    n_writes = len(lat)
                    lat += timed_writes(50)  # after the drop: its close is still waiting for it to read
                    assert len(w.hub.subs) == 1  # only the fast one is left
                    head = w.head()
                    # when it reads at last: what was in flight, in order, then the close with its reason
                    slow_msgs, close = slow.read_to_close()
                    assert close is not None and close.code == 4408, close
                    assert "slow consumer" in close.reason
                    check_messages(slow_msgs)
                    slow_seqs = [r["seq"] for r in records(slow_msgs)]
                    assert slow_seqs == list(range(slow_start + 1, slow_start + 1 + len(slow_seqs)))
                    assert slow_seqs and slow_seqs[-1] < head - 16  # it fell behind by more than its queue
                    with arrived:  # the fast client gets everything up to the head
                        assert arrived.wait_for(lambda: bool(fast_msgs) and fast_msgs[-1]["seq"] >= head, 120)
                finally:
                    fast.close()
                    reader.join(60)
                assert not reader.is_alive() and not errors, errors
                got = records(fast_msgs)  # the fast client missed nothing
                assert [r["seq"] for r in got] == list(range(start + 1, head + 1))
            lat.sort()
            print(f"slow client dropped after {n_writes} writes; write p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
                  f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms")  # fmt: skip


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
            ws.send('{"id": "dup", "asset": "BTC", "price": "NaN", "price": "51000"}')  # which price? refused
            ws.send(json.dumps({"id": "k1", "asset": "BTC", "price": "51000", "idempotency_key": "k1"}))
            ws.send(json.dumps({"id": "k1 again", "asset": "BTC", "price": "51000", "idempotency_key": "k1"}))
            acks = [recv_json(ws) for _ in range(n + 7)]
        assert [a["id"] for a in acks[:n]] == list(range(n)) and all(a["ok"] for a in acks[:n])
        seqs = [a["seq"] for a in acks[:n]]
        assert seqs == sorted(seqs) and all(a["durable_seq"] >= a["seq"] for a in acks[:n])
        assert [(a["id"], a["ok"], a["status"]) for a in acks[n : n + 5]] == [
            ("bad-asset", False, 422),
            ("bad-price", False, 422),
            ("float", False, 422),
            (None, False, 422),
            (None, False, 422),
        ]
        assert "price" in acks[n + 4]["detail"]
        first, again = acks[n + 5], acks[n + 6]
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
        r = httpx.get(f"{w.url}/v1/dashboard/summary", headers={"Authorization": f"Bearer {own}"})
        assert r.status_code == 200
        # the venue's aggregates, but not who else is at risk: among the worst, only its own account
        assert [x["account_id"] for x in r.json()["worst"]] == [safe] and r.json()["accounts"] == s["accounts"]
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


def test_every_oracle_event_streams_on_the_prices_channel() -> None:
    """A price subscriber sees everything that moves or refuses the index, re-anchors included."""
    from fluidmargin.model import events as ev

    oracle = {
        c.__name__
        for c in vars(ev).values()
        if isinstance(c, type) and issubclass(c, ev.Event) and c.__name__.startswith(("Oracle", "Index", "Price"))
    }
    assert oracle >= {"OracleReanchored", "OracleReanchorRequested", "PriceObserved", "IndexPriceUpdated"}
    assert oracle <= set(CHANNELS["prices"])
