"""WebSocket fan-out benchmark: how soon 1,000 stream subscribers see a liquidation after the tick that caused it.

``python benchmarks/bench_ws.py [--subscribers N] [--ticks K]`` prints ``name: value`` lines:

* ``ws_fanout_p99_ms`` (and p50, max): per subscriber and tick, the time from the moment the tick's price
  is sent (``POST /v1/prices``) to the moment that subscriber's socket has the message with the
  liquidation it caused: the HTTP request, the engine, the durable commit (SQLite, ``synchronous=FULL``)
  and the fan-out to every subscriber;
* ``ws_tick_ack_p50_ms``: the tick's own HTTP answer (acknowledged once durable), for reference;
* ``ws_missed``: subscriber-ticks that saw nothing within 5 s (should be 0).

The service is ``fluidmargin serve`` in a process of its own (SQLite, the waterfall venue). The
subscribers (``WS /v1/stream?channels=liquidations``, an admin key) are raw sockets in this process,
read with epoll and a minimal frame parser (answering pings), so the client adds microseconds, not
the milliseconds a full WebSocket client per connection would, on this 2-core machine. Each tick: a
new account takes a 10x long ETH position, then a price 10 % lower liquidates it; the price is then put back.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import select
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import ADMIN, HOST, Server, out

from fluidmargin.sim.venues import waterfall_venue


class Sub:
    """One subscriber: a raw socket after the WebSocket handshake, and what is buffered of its frames."""

    __slots__ = ("buf", "closed", "seen", "sock")

    def __init__(self, port: int, path: str) -> None:
        s = socket.create_connection((HOST, port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("the server closed the connection during the handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:200]!r}")
        s.setblocking(False)
        self.sock = s
        self.buf = bytearray(rest)
        self.seen = -1  # the last tick whose liquidation this subscriber has seen
        self.closed = False

    def messages(self) -> list[bytes]:
        """Complete text messages buffered (pings answered, other frames skipped)."""
        out = []
        b = self.buf
        while len(b) >= 2:
            op, ln, hdr = b[0] & 0x0F, b[1] & 0x7F, 2
            if ln == 126:
                if len(b) < 4:
                    break
                ln, hdr = struct.unpack_from("!H", b, 2)[0], 4
            elif ln == 127:
                if len(b) < 10:
                    break
                ln, hdr = struct.unpack_from("!Q", b, 2)[0], 10
            if len(b) < hdr + ln:
                break
            payload = bytes(b[hdr : hdr + ln])
            del b[: hdr + ln]
            if op == 1:
                out.append(payload)
            elif op == 9 and len(payload) < 126:  # ping: a masked pong (zero mask)
                self.sock.send(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif op == 8:
                self.closed = True
        return out


def setup_victim(c: httpx.Client) -> None:
    a = c.post("/v1/accounts", json={}).json()["account_id"]
    c.post(f"/v1/accounts/{a}/deposits", json={"amount": "3100"}).raise_for_status()
    r = c.post(f"/v1/accounts/{a}/fills", json={"market": "ETH-PERP", "size": "10", "price": "3000", "leverage": 10})
    r.raise_for_status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--ticks", type=int, default=30)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * a.subscribers + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the server inherits it too
    with tempfile.TemporaryDirectory(prefix="fm-bench-ws-") as tmp:
        work = Path(tmp)
        # one publisher feeds the crash: the venue opts in to single-source liquidation (quorum default: 2)
        cfg = work / "venue.json"
        cfg.write_bytes(orjson.dumps(waterfall_venue(single_source_liquidation=True).to_dict()))
        server = Server(str(work / "events.db"), work, ["--rate-limit", "0", "--snapshot-every", "0"], str(cfg))
        try:
            run(server, a.subscribers, a.ticks)
        finally:
            server.stop()


def run(server: Server, n: int, ticks: int) -> None:
    c = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    pub = c.post("/v1/keys", json={"role": "publisher", "source": "bench"}).json()["api_key"]
    as_pub = {"Authorization": f"Bearer {pub}"}
    for asset, price in (("BTC", "50000"), ("ETH", "3000")):
        c.post("/v1/prices", json={"asset": asset, "price": price}, headers=as_pub).raise_for_status()
    subs = [Sub(server.port, f"/v1/stream?channels=liquidations&key={ADMIN}") for _ in range(n)]
    ep = select.epoll()
    by_fd = {}
    for s in subs:
        ep.register(s.sock.fileno(), select.EPOLLIN)
        by_fd[s.sock.fileno()] = s
    lat: list[float] = []
    acks: list[float] = []
    missed = 0

    def pump(until: float, tick: int, t0: float) -> int:
        """Read whatever arrives until ``until`` or every subscriber has seen ``tick``; count who has."""
        done = sum(1 for s in subs if s.seen >= tick)
        while done < n and (now := time.perf_counter()) < until:
            for fd, _ev in ep.poll(max(0.0, until - now)):
                t = time.perf_counter()
                s = by_fd[fd]
                try:
                    data = s.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    s.closed = True
                    ep.unregister(fd)
                    continue
                s.buf += data
                for m in s.messages():
                    if tick >= 0 and s.seen < tick and b"Liquidated" in m:
                        s.seen = tick
                        lat.append(t - t0)
                        done += 1
        return done

    pump(time.perf_counter() + 1.0, -1, 0.0)  # hellos
    for k in range(ticks):
        setup_victim(c)
        pump(time.perf_counter() + 0.05, -1, 0.0)  # drain what the setup sent (nothing on this channel)
        box: dict[str, float] = {}

        def tick(box: dict[str, float] = box) -> None:
            box["t0"] = time.perf_counter()
            r = c.post("/v1/prices", json={"asset": "ETH", "price": "2700"}, headers=as_pub)
            box["ack"] = time.perf_counter() - box["t0"]
            r.raise_for_status()

        th = threading.Thread(target=tick)
        th.start()
        while "t0" not in box:
            time.sleep(0)
        done = pump(time.perf_counter() + 5.0, k, box["t0"])
        th.join()
        acks.append(box["ack"])
        missed += n - done
        c.post("/v1/prices", json={"asset": "ETH", "price": "3000"}, headers=as_pub).raise_for_status()
    closed = sum(s.closed for s in subs)
    for s in subs:
        s.sock.close()
    ms = np.array(lat) * 1e3
    out("ws_subscribers", n)
    out("ws_ticks", ticks)
    out("ws_fanout_p99_ms", round(float(np.percentile(ms, 99)), 2) if len(ms) else "nan")
    out("ws_fanout_p50_ms", round(float(np.percentile(ms, 50)), 2) if len(ms) else "nan")
    out("ws_fanout_max_ms", round(float(ms.max()), 2) if len(ms) else "nan")
    out("ws_tick_ack_p50_ms", round(float(np.percentile(np.array(acks) * 1e3, 50)), 2))
    out("ws_missed", missed)
    if closed:
        out("ws_closed_by_server", closed)


if __name__ == "__main__":
    main()
