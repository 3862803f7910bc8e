"""Service benchmark: authenticated API writes per second and their p99 latency, on SQLite and PostgreSQL.

``python benchmarks/bench_service.py [--seconds S] [--connections C] [--stores sqlite,postgres]`` prints
``name: value`` lines:

* ``api_writes_per_s_{store}``: acknowledged (durable, 200) write requests per second, sustained for
  ``--seconds`` after a warm-up, against ``fluidmargin serve`` started as its own process on loopback
  (real TCP, HTTP/1.1 keep-alive, ``Authorization: Bearer`` venue keys, rate limiter on, snapshots off);
* ``api_write_p99_ms_{store}`` (and p50, max): request latency from the first byte sent to the last byte
  of the answer read, measured by the client;
* ``engine_applies_per_s``: the same inputs applied to a bare in-process Engine (no HTTP, no log): the
  reference, and ``api_vs_engine_ratio_{store}``: the first figure over it.

The load generator runs in ``--client-procs`` processes of its own, each a uvloop (when installed) event
loop with ``--connections`` / procs raw-socket HTTP/1.1 connections, each sending one request, reading
the whole answer, then sending the next (closed loop): a request costs the client a few microseconds, so
on a 2-core machine the server (one event loop thread and the engine worker) has most of a core.
The writes alternate a deposit and a fill (each connection its own account; fills of +/-0.001 BTC, so
positions stay small), every one with a fresh ``Idempotency-Key``.

PostgreSQL: ``$FLUIDMARGIN_BENCH_PG_URL``, else ``$FLUIDMARGIN_TEST_PG_URL``, else what
``scripts/postgres.sh`` prints (it starts a private server on loopback); a fresh schema, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "fm_bench-admin-key"
HOST = "127.0.0.1"


def out(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- the server ------------------------------------------------------------------------------------


class Server:
    """``fluidmargin serve`` in a subprocess."""

    def __init__(self, db: str, workdir: Path, extra: list[str] | None = None, config: str = "perp") -> None:
        self.port = free_port()
        keyfile = workdir / "admin.key"
        keyfile.write_text(ADMIN + "\n")
        cmd = [
            sys.executable,
            "-m",
            "fluidmargin",
            "serve",
            "--db",
            db,
            "--config",
            config,
            "--admin-key-file",
            str(keyfile),
            "--port",
            str(self.port),
            "--rate-limit",
            "1000000",
            "--burst",
            "1000000",
            "--snapshot-dir",
            str(workdir / "snapshots"),
            "--snapshot-every",
            "0",
            "--log-level",
            "warning",
            *(extra or []),
        ]
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        self.url = f"http://{HOST}:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {(workdir / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def setup(url: str, n_accounts: int, n_keys: int) -> tuple[list[int], list[str]]:
    """Accounts with collateral, prices, and venue keys (the load's credentials)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        accounts = []
        for _ in range(n_accounts):
            r = c.post("/v1/accounts", json={})
            r.raise_for_status()
            aid = int(r.json()["account_id"])
            c.post(f"/v1/accounts/{aid}/deposits", json={"amount": "1000000"}).raise_for_status()
            accounts.append(aid)
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            c.post("/v1/prices", json={"asset": asset, "price": price}).raise_for_status()
        keys = []
        for i in range(n_keys):
            r = c.post("/v1/keys", json={"role": "venue", "name": f"bench-{i}"})
            r.raise_for_status()
            keys.append(str(r.json()["api_key"]))
    return accounts, keys


# --- the load generator ----------------------------------------------------------------------------


def _request(path: str, body: bytes, key: str, idem: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nIdempotency-Key: {idem}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    port: int, account: int, key: str, tag: str, t_start: float, t_end: float, lat: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    deposit = f"/v1/accounts/{account}/deposits"
    fills = f"/v1/accounts/{account}/fills"
    bodies = [
        (deposit, b'{"amount":"1"}'),
        (fills, b'{"market":"BTC-PERP","size":"0.001","price":"50000"}'),
        (deposit, b'{"amount":"1"}'),
        (fills, b'{"market":"BTC-PERP","size":"-0.001","price":"50000"}'),
    ]
    clock = time.perf_counter
    i = 0
    try:
        while True:
            t0 = clock()
            if t0 >= t_end:
                break
            path, body = bodies[i & 3]
            writer.write(_request(path, body, key, f"{tag}-{i}"))
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
                    break
            body_bytes = await reader.readexactly(n) if n else b""
            t1 = clock()
            if head[9:12] != b"200":
                if len(errors) < 5:
                    errors.append((head.split(b"\r\n", 1)[0] + b" " + body_bytes[:300]).decode(errors="replace"))
                continue
            if t0 >= t_start:
                lat.append(t1 - t0)
    finally:
        writer.close()


def _client(port: int, accounts: list[int], keys: list[str], warmup: float, seconds: float, q: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    lat: list[float] = []
    errors: list[str] = []

    async def main() -> None:
        t_start = time.perf_counter() + warmup
        t_end = t_start + seconds
        tag = uuid.uuid4().hex[:8]
        await asyncio.gather(
            *(
                _connection(port, a, keys[i % len(keys)], f"{tag}{i}", t_start, t_end, lat, errors)
                for i, a in enumerate(accounts)
            )
        )

    asyncio.run(main())
    q.put((np.asarray(lat), errors))


def drive(port: int, accounts: list[int], keys: list[str], procs: int, warmup: float, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = []
    for p in range(procs):
        ps.append(
            ctx.Process(
                target=_client, args=(port, accounts[p::procs], keys[p::procs] or keys, warmup, seconds, q), daemon=True
            )
        )
    for p in ps:
        p.start()
    results = [q.get(timeout=warmup + seconds + 120) for _ in ps]
    for p in ps:
        p.join(30)
    lat = np.concatenate([r[0] for r in results]) if results else np.zeros(0)
    errors = [e for r in results for e in r[1]]
    return {
        "n": len(lat),
        "per_s": len(lat) / seconds,
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan"),
        "max_ms": float(lat.max() * 1e3) if len(lat) else float("nan"),
        "errors": errors,
    }


# --- the reference: the bare engine ------------------------------------------------------------------


def engine_rate(n: int = 50_000) -> float:
    """Inputs/s of the same deposit/fill mix applied to an in-process Engine (no HTTP, no log)."""
    from fluidmargin.engine import Engine
    from fluidmargin.model import events as ev
    from fluidmargin.sim.venues import perp_venue

    eng = Engine(perp_venue(single_source_liquidation=True))
    ts = 1_700_000_000 * 10**9
    accounts = list(range(1, 65))
    for a in accounts:
        ts += 1
        eng.apply(ev.AccountOpened(ts, a))
        eng.apply(ev.Deposited(ts, a, "USD", 1_000_000 * 10**6))
    for asset, price in (("BTC", "50000"), ("ETH", "3000")):
        ts += 1
        eng.apply(ev.PriceObserved(ts, "bench", asset, price, 0))
    inputs = []
    for i in range(n):
        a = accounts[(i // 4) % len(accounts)]
        ts += 1
        k = i & 3
        if k in (0, 2):
            inputs.append(ev.Deposited(ts, a, "USD", 10**6, event_id=f"e{i}"))
        else:
            inputs.append(
                ev.TradeFilled(ts, a, "BTC-PERP", 100_000 if k == 1 else -100_000, 50_000 * 10**8, event_id=f"e{i}")
            )
    t0 = time.perf_counter()
    for e in inputs:
        eng.apply(e)
    return n / (time.perf_counter() - t0)


# --- main --------------------------------------------------------------------------------------------


def pg_url() -> str:
    url = os.environ.get("FLUIDMARGIN_BENCH_PG_URL") or os.environ.get("FLUIDMARGIN_TEST_PG_URL")
    if url:
        return url
    p = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh")], capture_output=True, text=True, check=True)
    return p.stdout.strip().splitlines()[-1]


def with_schema(url: str, schema: str) -> str:
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def run_store(store: str, a: argparse.Namespace, ref: float) -> None:
    with tempfile.TemporaryDirectory(prefix=f"fm-bench-{store}-") as tmp:
        work = Path(tmp)
        server_url = ""
        schema = ""
        if store == "sqlite":
            db = f"sqlite:///{work / 'events.db'}"
        else:
            server_url = pg_url()
            schema = f"fm_bench_{uuid.uuid4().hex[:12]}"
            db = with_schema(server_url, schema)
        server = Server(db, work)
        try:
            accounts, keys = setup(server.url, a.connections, max(1, a.client_procs) * 4)
            r = drive(server.port, accounts, keys, a.client_procs, a.warmup, a.seconds)
        finally:
            server.stop()
            if schema:
                import psycopg
                from psycopg import sql

                with psycopg.connect(server_url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    out(f"api_writes_per_s_{store}", round(r["per_s"]))
    out(f"api_write_p99_ms_{store}", round(r["p99_ms"], 2))
    out(f"api_write_p50_ms_{store}", round(r["p50_ms"], 2))
    out(f"api_write_max_ms_{store}", round(r["max_ms"], 2))
    out(f"api_vs_engine_ratio_{store}", round(r["per_s"] / ref, 4))
    if r["errors"]:
        out(f"api_write_errors_{store}", " | ".join(r["errors"][:3]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured duration per store")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32, help="concurrent client connections (one account each)")
    p.add_argument("--client-procs", type=int, default=1, help="load generator processes")
    p.add_argument("--stores", default="sqlite,postgres")
    a = p.parse_args()
    ref = engine_rate()
    out("engine_applies_per_s", round(ref))
    out("bench_config", f"{a.connections} connections, {a.client_procs} client process(es), {a.seconds:g} s, loopback")
    for store in a.stores.split(","):
        run_store(store.strip(), a, ref)


if __name__ == "__main__":
    main()
