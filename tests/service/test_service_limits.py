"""The service under hostile clients, through ``fluidmargin serve`` on loopback (raw sockets, so the test
controls every byte and when it is sent).

* A request without a valid key is answered (401) on its head alone: its body is never read, so large
  bodies cannot grow the server's memory. A declared body over ``--max-body-bytes`` is a 413 on the
  head; a chunked one is cut at the cap.
* A body that does not arrive within ``--read-timeout`` is a 408; connections that never complete a
  request head (idle, or dripping it) are closed after ``--read-timeout``, so they cannot hold the
  ``--max-connections`` places and real requests get through.

Memory is the server's peak resident set (``VmHWM``, reset through ``/proc/PID/clear_refs`` before each
check), so a peak between two samples cannot hide.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from support.server import ADMIN, Server

READ_TIMEOUT_S = 1.0
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 256
MB = 1024 * 1024
CHUNK = b" " * MB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("limits")
    s = Server(f"sqlite://{work / 'log.db'}", work)
    s.cmd += ["--read-timeout", str(READ_TIMEOUT_S), "--max-body-bytes", str(MAX_BODY)]
    s.cmd += ["--max-connections", str(MAX_CONNECTIONS), "--snapshot-every", "0"]
    s.start()
    r = httpx.post(s.url + "/v1/accounts", json={}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text
    try:
        yield s
    finally:
        s.stop()


def head(path: str, key: str | None, length: int | None = None, chunked: bool = False) -> bytes:
    h = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    if key is not None:
        h += f"Authorization: Bearer {key}\r\n"
    if length is not None:
        h += f"Content-Length: {length}\r\n"
    if chunked:
        h += "Transfer-Encoding: chunked\r\n"
    return (h + "\r\n").encode()


def answer(sock: socket.socket, timeout: float) -> tuple[int, bytes] | None:
    """The status and body of an answer that starts within ``timeout`` s (None: none did)."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            got = sock.recv(65536)
            if not got:
                break
            buf += got
    except TimeoutError:
        pass
    except ConnectionError:
        return None
    if b"\r\n\r\n" not in buf:
        return None
    top, _, body = buf.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    n = next((int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"content-length"), 0)
    sock.settimeout(10)
    while len(body) < n:
        got = sock.recv(65536)
        if not got:
            break
        body += got
    return int(lines[0].split()[1]), body


def peak_rss_reset(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set (VmHWM) to the current one


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@dataclass
class Sent:
    status: int = 0
    before_body: bool = False  # answered on the head, before any of the body was sent
    seconds: float = 0.0


def send_large(port: int, key: str | None, body_mb: int, chunked: bool, out: Sent) -> None:
    """Send a head for a ``body_mb`` MiB body; if no answer comes within 3 s, send the body and wait."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head("/v1/accounts/1/deposits", key, None if chunked else body_mb * MB, chunked))
        got = answer(sock, 3.0)
        out.before_body = got is not None
        if got is None:
            try:
                for _ in range(body_mb):
                    sock.sendall(b"%x\r\n%s\r\n" % (MB, CHUNK) if chunked else CHUNK)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except ConnectionError:
                pass
            got = answer(sock, 120.0)
    out.status = got[0] if got is not None else -1
    out.seconds = time.perf_counter() - t0


def test_bodies_without_a_valid_key_are_never_read(server: Server) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    peak_rss_reset(pid)
    before = peak_rss(pid)
    sent = [Sent() for _ in range(4)]
    keys = ["fm_not-a-key", "fm_not-a-key", None, "fm_not-a-key"]
    threads = [
        threading.Thread(target=send_large, args=(server.port, keys[i], 64, i % 2 == 1, sent[i])) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    grown = peak_rss(pid) - before
    assert grown < 32 * MB, f"the server's peak memory grew by {grown / MB:.0f} MiB"  # 4 x 64 MiB were offered
    assert [s.status for s in sent] == [401] * 4, sent
    assert all(s.before_body for s in sent), sent  # answered on the head alone
    assert psutil.Process(pid).memory_info().rss < before + 32 * MB


def test_a_body_over_the_cap_is_413_and_never_held(server: Server) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    peak_rss_reset(pid)
    before = peak_rss(pid)
    declared = Sent()
    send_large(server.port, ADMIN, 64, False, declared)  # Content-Length over the cap: refused on the head
    assert (declared.status, declared.before_body) == (413, True), declared
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # one byte over, declared: same
        sock.sendall(head("/v1/accounts/1/deposits", ADMIN, MAX_BODY + 1))
        got = answer(sock, 3.0)  # answered on the head alone (no body sent; read timeout 10 s is far off)
        assert got is not None and got[0] == 413, got

    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # chunked: cut at the cap
        sock.sendall(head("/v1/accounts/1/deposits", ADMIN, chunked=True))
        got = None
        for _ in range(64):
            sock.sendall(b"%x\r\n%s\r\n" % (MB, CHUNK))
            got = answer(sock, 0.2)
            if got is not None:
                break
        assert got is not None and got[0] == 413, got
        assert b"at most 65536 bytes" in got[1]
    assert peak_rss(pid) - before < 32 * MB

    body = b'{"amount":"1"}'
    at_cap = body + b" " * (MAX_BODY - len(body))  # exactly the cap: served
    r = httpx.post(
        server.url + "/v1/accounts/1/deposits",
        content=at_cap,
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text


def test_a_request_without_a_key_gets_the_apps_401(server: Server) -> None:
    r = httpx.post(server.url + "/v1/accounts/1/deposits", json={"amount": "1"}, headers={"Authorization": "Bearer x"})
    assert (r.status_code, r.json(), r.headers["www-authenticate"]) == (
        401,
        {"detail": "invalid or revoked API key"},
        "Bearer",
    )
    assert httpx.post(server.url + "/v1/accounts", json={}).status_code == 401
    for path in ("/healthz", "/", "/docs", "/openapi.json"):  # what needs no key still answers
        assert httpx.get(server.url + path).status_code == 200, path


def test_a_slow_body_is_408(server: Server) -> None:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head("/v1/accounts/1/deposits", ADMIN, length=100) + b'{"amount":')
        got = answer(sock, READ_TIMEOUT_S + 20)
        assert got is not None and got[0] == 408, got
        sock.settimeout(10)
        assert sock.recv(1) == b""  # and the connection is closed
    assert time.perf_counter() - t0 < READ_TIMEOUT_S + 20


def test_an_oversize_head_is_431(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(80))  # 80 kB, unfinished
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + filler)
        got = answer(sock, 20)
        assert got is not None and got[0] == 431, got


def test_idle_and_slow_drip_connections_do_not_lock_out_real_requests(server: Server) -> None:
    """300 connections that never finish a request head (more than --max-connections): each is closed
    after --read-timeout, and a real request is then served."""
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
    try:
        for sock in idle[:100]:  # slow drip: a head begun, never finished
            sock.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: test\r\n")
        deadline = time.monotonic() + READ_TIMEOUT_S + 20
        with selectors.DefaultSelector() as sel:
            for sock in idle:
                sel.register(sock, selectors.EVENT_READ)
            waiting = len(idle)
            while waiting and time.monotonic() < deadline:
                for k, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    sock = k.fileobj
                    assert isinstance(sock, socket.socket)
                    with contextlib.suppress(ConnectionError):
                        assert sock.recv(1) == b"", "an idle connection was sent something"
                    sel.unregister(sock)
                    waiting -= 1
        assert not waiting, f"{waiting} idle connections still open after {READ_TIMEOUT_S + 20} s"
        served = None
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10) as c:
            while served is None and time.monotonic() < deadline:
                r = c.get("/v1/accounts/1")
                served = r if r.status_code == 200 else None
        assert served is not None, "no real request was served"
    finally:
        for sock in idle:
            sock.close()
