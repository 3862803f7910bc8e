"""Noisy neighbours, through ``fluidmargin serve``: one key hammering a heavy read must not starve another
key's writes.

The log holds a seeded population (1,000 accounts), so an account's view (``GET /v1/accounts/{id}``,
with its ADL ranks: a scan of the whole queue) costs the engine tens of milliseconds. One key reads it
over 16 connections, in a closed loop, from a process of its own; another key's deposits are timed,
one at a time, without that load and then under it. Writes go before reads in the engine worker and
each key's reads get a bounded share of the engine's time (``worker.ReadFairness``), so the writes'
median latency may rise a little, not by the 5-100x it did when reads and writes were served in
arrival order. The reader is still served.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluidmargin.model import events as ev
from fluidmargin.service import storage
from fluidmargin.sim.population import build_population
from fluidmargin.sim.venues import waterfall_venue
from support.server import ADMIN, Server

ACCOUNTS = 1000
READERS = 16  # the noisy key's connections
WRITES = 200  # timed deposits per phase
MAX_RATIO = 4.0  # median write latency under the read load / without it (it was 5-100x)


def seeded_log(path: Path) -> str:
    """A log holding prices and a seeded population (written directly, before the server opens it)."""
    cfg = waterfall_venue()
    runner = storage.open_runner(path, cfg, None)
    ts = 1_700_000_000 * 10**9
    runner.submit(ev.PriceObserved(ts, "seed", "BTC", "50000"))
    runner.submit(ev.PriceObserved(ts + 1, "seed", "ETH", "3000"))
    runner.submit(build_population(cfg, {"BTC-PERP": 50_000 * 10**8, "ETH-PERP": 3_000 * 10**8}, ACCOUNTS, 7, ts + 2))
    runner.flush()
    runner.close()
    return f"sqlite://{path}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("fairness")
    s = Server(seeded_log(work / "log.db"), work)
    s.cmd += ["--snapshot-every", "0"]
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def _read_loop(port: int, key: str, done: Any, going: Any, stop: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /v1/accounts/1 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    try:
        while not stop.is_set():
            writer.write(request)
            top = await reader.readuntil(b"\r\n\r\n")
            assert top.startswith(b"HTTP/1.1 200"), top
            n = next(int(line[15:]) for line in top.split(b"\r\n") if line[:15].lower() == b"content-length:")
            await reader.readexactly(n)
            with done.get_lock():
                done.value += 1
                if done.value == 2 * READERS:  # the load is on, and past its first burst of credit
                    going.set()
    finally:
        writer.close()


def noisy_reader(port: int, key: str, done: Any, going: Any, stop: Any) -> None:
    """The noisy neighbour (in a process of its own): READERS connections reading in a closed loop."""

    async def main() -> None:
        loops = [asyncio.ensure_future(_read_loop(port, key, done, going, stop)) for _ in range(READERS)]
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await asyncio.gather(*loops)

    asyncio.run(main())


def timed_deposits(port: int, key: str, n: int) -> list[float]:
    """``n`` deposits, one at a time on one keep-alive connection: each one's latency in seconds."""
    body = b'{"amount":"1"}'
    request = (
        f"POST /v1/accounts/2/deposits HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(120)
        stream = sock.makefile("rb")
        for _ in range(n):
            t0 = time.perf_counter()
            sock.sendall(request)
            status = stream.readline()
            length = 0
            while (line := stream.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line[15:])
            stream.read(length)
            out.append(time.perf_counter() - t0)
            assert status.startswith(b"HTTP/1.1 200"), status
    return out


def test_one_keys_reads_do_not_starve_another_keys_writes(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        reader, writer = (c.post("/v1/keys", json={"role": "venue"}).json()["api_key"] for _ in range(2))
        assert c.get("/v1/accounts/1").status_code == 200  # warm the read path
    timed_deposits(server.port, writer, 20)  # warm the write path
    alone = statistics.median(timed_deposits(server.port, writer, WRITES))

    ctx = mp.get_context("spawn")
    done, going, stop = ctx.Value("l", 0), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=noisy_reader, args=(server.port, reader, done, going, stop), daemon=True)
    proc.start()
    try:
        assert going.wait(120), "the noisy reader did not get going"
        reads_before = done.value
        loaded = statistics.median(timed_deposits(server.port, writer, WRITES))
        reads_during = done.value - reads_before
    finally:
        stop.set()
        proc.join(60)
    assert proc.exitcode == 0
    alone_after = statistics.median(timed_deposits(server.port, writer, WRITES))
    base = max(alone, alone_after)  # the machine's own load drifts: the slower of the two quiet phases
    ratio = loaded / base
    print(f"write median: alone {alone * 1e3:.2f} / {alone_after * 1e3:.2f} ms, under reads {loaded * 1e3:.2f} ms")
    assert ratio < MAX_RATIO, f"writes were {ratio:.1f}x slower under one key's reads ({reads_during} reads)"
    assert reads_during > 0  # and the reader was served too
