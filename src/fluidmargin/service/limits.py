"""What keeps the service up under hostile or greedy clients: the request guard and the HTTP protocol's
timeouts.

:class:`RequestGuard` (pure ASGI, in front of the fast path and the app) judges a request on its head
alone before a byte of its body is read:

* under ``/v1/``, a request without a valid API key never has its body read: the app is handed an
  empty body and answers its own 401 (so the answer has one source, ``auth.authenticate``);
* a declared ``Content-Length`` over ``max_body_bytes`` is a 413 at once; a chunked body is counted as
  it arrives and cut (413) at the cap;
* a body must arrive within ``read_timeout_s`` (408, and the connection is closed);
* a key's GET requests take a turn in its :class:`~fluidmargin.service.worker.ReadFairness` (at most
  a few at once), and the key is recorded (``worker.read_owner``) so its reads' engine time is charged.

What the app does not read is discarded by the server as it arrives (never held); the connection is
closed once the next request's head is late. :func:`http_protocol` is uvicorn's httptools protocol with
a deadline on every request head (idle and slow-drip connections are closed after ``read_timeout_s``)
and a cap on its size (431). The number of connections is uvicorn's ``limit_concurrency`` (503 beyond
it); ``fluidmargin serve`` sets all of these (``--max-body-bytes``, ``--read-timeout``,
``--max-connections``, ``--keep-alive-timeout``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from fluidmargin.service.fastpath import replaying
from fluidmargin.service.worker import ReadFairness, read_owner

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

MAX_HEAD_BYTES = 64 * 1024  # a request line and headers larger than this are refused (431)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1024 * 1024  # a larger request body is refused (413)
    read_timeout_s: float = 10.0  # for a request's head, and again for its body (408)


class RequestGuard:
    """Pure ASGI middleware; see the module docstring. ``lookup(secret)`` is the key registry's (a record
    with ``key_id``, or None); ``fairness`` the engine worker's."""

    def __init__(self, app: App, lookup: Callable[[str], Any], limits: Limits, fairness: ReadFairness | None) -> None:
        self.app = app
        self.lookup = lookup
        self.limits = limits
        self.fairness = fairness

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = None
        length = -1  # no Content-Length
        chunked = False
        for name, value in scope["headers"]:
            if name == b"authorization" and auth is None:
                auth = value
            elif name == b"content-length" and length < 0:
                length = int(value) if value.isdigit() else 0  # the HTTP parser has refused a bad one
            elif name == b"transfer-encoding":
                chunked = True
        has_body = length > 0 or (chunked and length < 0)
        key_id = None
        if auth is not None:
            scheme, _, secret = auth.decode("latin-1").partition(" ")
            rec = self.lookup(secret) if scheme.lower() == "bearer" and secret else None
            key_id = rec.key_id if rec is not None else None
        if key_id is None and scope["path"].startswith("/v1/"):
            # no valid key: the body is never read (the server discards it); the app answers the 401
            await self.app(scope, _withheld() if has_body else receive, send)
            return
        cap = self.limits.max_body_bytes
        if length > cap:
            await _error(send, 413, f"request body too large: at most {cap} bytes")
            return
        if has_body:
            read = await self._read_body(receive, send, cap)
            if read is None:
                return
            receive = replaying(read, receive)
        if key_id is None:
            await self.app(scope, receive, send)
            return
        token = read_owner.set(key_id)
        try:
            if self.fairness is not None and scope["method"] in ("GET", "HEAD"):
                async with self.fairness.turn(key_id):
                    await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            read_owner.reset(token)

    async def _read_body(self, receive: Receive, send: Send, cap: int) -> list[Message] | None:
        """The body's messages (None: answered here, or the client went away)."""
        read: list[Message] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.read_timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        return None  # disconnected
                    read.append(msg)
                    size += len(msg.get("body", b""))
                    if size > cap:
                        await _error(send, 413, f"request body too large: at most {cap} bytes")
                        return None
                    if not msg.get("more_body", False):
                        return read
        except TimeoutError:
            await _error(send, 408, "request body not received in time", close=True)
            return None


def _withheld() -> Receive:
    """A ``receive`` for a request whose body is not to be read: an empty body, then a disconnect."""
    given = False

    async def receive() -> Message:
        nonlocal given
        if given:
            return {"type": "http.disconnect"}
        given = True
        return {"type": "http.request", "body": b"", "more_body": False}

    return receive


async def _error(send: Send, status: int, detail: str, close: bool = False) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_protocol(read_timeout_s: float, max_head_bytes: int = MAX_HEAD_BYTES) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline on each request head: a connection is closed when no
    request head is complete ``read_timeout_s`` after it opened or after its last answer (an idle or
    slow-drip connection), and a head larger than ``max_head_bytes`` is refused (431)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _in_head = True
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(read_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if not busy and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > max_head_bytes and not self.transport.is_closing():
                msg = b"Request header fields too large"
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg)
                )
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True  # what follows is the next request's head
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return GuardedHttpProtocol
