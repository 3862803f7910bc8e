"""The stream hub: fans committed log records out to ``WS /v1/stream`` subscribers, and catches a resuming
client up from the durable log before splicing it onto the live commits (the protocol:
:mod:`fluidmargin.service.streams`; what goes on the wire: :mod:`fluidmargin.service.stream_wire`).

The engine worker only hands each committed batch to the event loop (:meth:`StreamHub.on_commit`) and
never waits for a client; each client has a bounded queue, and a live client whose queue overflows is
dropped (4408). History is read on threads of their own (:class:`LogReaders`), never the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket

from fluidmargin.core.errors import ValidationError
from fluidmargin.model import events as ev
from fluidmargin.service.auth import Principal
from fluidmargin.service.deps import Service
from fluidmargin.service.roles import ACCOUNT, OWNERS
from fluidmargin.service.stream_wire import (
    CLOSE_BAD_REQUEST,
    CLOSE_INTERNAL,
    CLOSE_SLOW,
    CLOSE_TRY_LATER,
    CLOSE_UNAUTHORIZED,
    Chunk,
    StreamRecord,
    authenticate,
    close_reason,
    control,
    event_ids,
    is_disconnect,
    message,
    parse_channels,
    render_record,
    type_mask,
    until_disconnect,
    visible_frag,
)
from fluidmargin.store.backend import LogBackend, LogTarget, open_log

log = logging.getLogger("fluidmargin.service.streams")


# --- subscribers ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class Subscriber:
    principal: Principal
    mask: int
    channels: list[str]
    next_seq: int  # the next seq this client needs (while catching up)
    live: bool
    queue: deque[Chunk] = field(default_factory=deque)
    qbytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    dropped: tuple[int, str] | None = None
    sent_seq: int = 0
    quiet_seq: int = 0
    last_input: list[int] = field(default_factory=lambda: [-1])  # unknown: an InputRejected first is hidden
    task: asyncio.Future[Any] | None = None

    @property
    def view(self) -> tuple[int, str | None]:
        p = self.principal
        return self.mask, (p.key.key_id if p.role == ACCOUNT else None)


class LogReaders:
    """A few threads that read the durable log for catching-up clients, each on a read-only connection of
    its own (opened on first use): a replay never touches the engine worker or its connection."""

    def __init__(self, target: LogTarget, threads: int = 2) -> None:
        self.target = target
        self.n = threads
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.n):
            t = threading.Thread(target=self._main, name=f"fluidmargin-stream-reader-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join(10)
        self._threads.clear()

    def run(self, fn: Callable[[LogBackend], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put((fn, fut, loop))
        return fut

    def _main(self) -> None:
        lg: LogBackend | None = None
        try:
            while True:
                item = self._q.get()
                if item is None:
                    return
                fn, fut, loop = item
                try:
                    if lg is None:
                        lg = open_log(self.target, readonly=True)
                    res, err = fn(lg), None
                except BaseException as e:
                    res, err = None, e
                    if lg is not None:  # reopen next time: the connection may be what failed
                        with contextlib.suppress(Exception):
                            lg.close()
                        lg = None
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, fut, res, err)
        finally:
            if lg is not None:
                with contextlib.suppress(Exception):
                    lg.close()


def _settle(fut: asyncio.Future[Any], res: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(res)


class _RedactKeys(logging.Filter):
    """Keeps ``?key=`` secrets of WebSocket URLs out of uvicorn's log lines."""

    _KEY = re.compile(r"([?&]key=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(self._KEY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "key=" in record.msg:
            record.msg = self._KEY.sub(r"\1***", record.msg)
        return True


_REDACT = _RedactKeys()


# --- the hub -------------------------------------------------------------------------------------------


class StreamHub:
    """Fans committed log records out to WebSocket subscribers; see the module docstrings."""

    def __init__(
        self,
        svc: Service,
        target: LogTarget,
        max_queue: int = 4096,
        max_queue_bytes: int = 16 << 20,
        max_subscribers: int = 10_000,
        catch_up_records: int = 1000,
        max_frame_bytes: int = 1 << 20,
        progress_s: float = 1.0,
        close_timeout_s: float = 10.0,
        reader_threads: int = 2,
    ) -> None:
        self.svc = svc
        self.worker = svc.worker
        self.scales = svc.scales
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_subscribers = max_subscribers
        self.catch_up_records = catch_up_records
        self.max_frame_bytes = max_frame_bytes
        self.progress_s = progress_s
        self.close_timeout_s = close_timeout_s
        self.readers = LogReaders(target, reader_threads)
        self.subs: set[Subscriber] = set()
        self._union = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.stats = {"subscribed": 0, "dropped_slow": 0, "catch_up_rereads": 0}

    # --- lifecycle (the app's lifespan) -----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.readers.start()
        self._ticker = asyncio.ensure_future(self._tick())
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).addFilter(_REDACT)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for sub in list(self.subs):
            self._drop(sub, 1001, "the service is shutting down")
        self._loop = None
        await asyncio.to_thread(self.readers.stop)

    # --- the worker's side: called in the engine worker thread after each commit -------------------

    def on_commit(self, records: list[tuple[int, ev.Event]]) -> None:
        loop = self._loop
        if loop is None or not self.subs:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(self._dispatch, records)

    # --- the event loop's side -------------------------------------------------------------------------

    def _dispatch(self, records: list[tuple[int, ev.Event]]) -> None:
        if not self.subs or not records:
            return
        first, last = records[0][0], records[-1][0]
        union = self._union
        recs: list[StreamRecord] = []
        last_input: list[int] = [-1]  # a batch starts with an input; if not, its rejection stays hidden
        for seq, e in records:
            if e.is_input:
                last_input = event_ids(e)
            mask = type_mask(type(e).__name__)
            if mask & union:
                try:
                    recs.append(render_record(seq, e, self.scales, last_input))
                except Exception:  # never let one record stop the stream for everyone
                    log.exception("cannot render seq %d for the stream", seq)
        views: dict[tuple[int, str | None], Chunk] = {}
        for sub in list(self.subs):
            key = sub.view
            chunk = views.get(key)
            if chunk is None:
                p, mask = sub.principal, sub.mask
                frags = []
                for r in recs:
                    if r.mask & mask:
                        f = visible_frag(p, r)
                        if f is not None:
                            frags.append((r.seq, f))
                chunk = views[key] = Chunk(first, last, frags)
            self._offer(sub, chunk)

    def _offer(self, sub: Subscriber, chunk: Chunk) -> None:
        if sub.dropped is not None:
            return
        if sub.live and not chunk.frags and not sub.queue:
            sub.quiet_seq = chunk.last  # nothing for it: say so later, once a second at most
            return
        if sub.queue and (len(sub.queue) >= self.max_queue or sub.qbytes + chunk.nbytes > self.max_queue_bytes):
            if sub.live:
                self.stats["dropped_slow"] += 1
                self._drop(
                    sub,
                    CLOSE_SLOW,
                    f"slow consumer: {len(sub.queue)} messages queued; resume with from_seq=<last seq + 1>",
                )
                return
            # catching up: what is dropped here is in the log; the catch-up reads it from there
            sub.queue.clear()
            sub.qbytes = 0
            sub.overflowed = True
        sub.queue.append(chunk)
        sub.qbytes += chunk.nbytes
        if sub.live:
            sub.wake.set()

    def _add(self, sub: Subscriber) -> None:
        self.subs.add(sub)
        self._union |= sub.mask
        self.stats["subscribed"] += 1

    def _remove(self, sub: Subscriber) -> None:
        if sub in self.subs:
            self.subs.discard(sub)
            u = 0
            for s in self.subs:
                u |= s.mask
            self._union = u
        sub.queue.clear()
        sub.qbytes = 0

    def _drop(self, sub: Subscriber, code: int, reason: str) -> None:
        if sub.dropped is None:
            sub.dropped = (code, reason)
        self._remove(sub)
        if sub.task is not None and not sub.task.done():
            sub.task.cancel()

    async def _tick(self) -> None:
        """Once a second: tell quiet clients how far the log is read; drop clients of revoked keys."""
        while True:
            await asyncio.sleep(self.progress_s)
            for sub in list(self.subs):
                rec = self.svc.keys.get(sub.principal.key.key_id)
                if rec is None or rec.revoked:
                    self._drop(sub, CLOSE_UNAUTHORIZED, "the API key was revoked")
                elif sub.live and not sub.queue and sub.quiet_seq > sub.sent_seq:
                    sub.queue.append(Chunk(sub.sent_seq + 1, sub.quiet_seq, []))
                    sub.wake.set()

    # --- WS /v1/stream ----------------------------------------------------------------------------------

    async def serve_stream(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            raw = ws.query_params.get("from_seq")
            from_seq = None if raw in (None, "") else int(raw)
            if from_seq is not None and not 0 <= from_seq <= 2**62:
                raise ValueError("from_seq must be between 0 and 2**62")
            mask, channels = parse_channels(ws.query_params.get("channels"))
        except ValueError as e:
            await ws.close(CLOSE_BAD_REQUEST, close_reason(f"bad parameters: {e}"))
            return
        p, code, why = authenticate(self.svc, ws, OWNERS)
        if p is None:
            await ws.close(code, why)
            return
        if len(self.subs) >= self.max_subscribers or self._loop is None:
            await ws.close(CLOSE_TRY_LATER, "too many subscribers; retry later")
            return
        head = self.worker.durable_seq
        if from_seq is not None and from_seq > head + 1:
            await ws.close(CLOSE_BAD_REQUEST, close_reason(f"from_seq {from_seq} is beyond the log's end ({head})"))
            return
        start = max(from_seq or 1, 1)
        sub = Subscriber(
            p, mask, channels, next_seq=start, live=from_seq is None, sent_seq=head if from_seq is None else start - 1
        )
        self._add(sub)  # subscribed to live commits before anything is read from the log: no gap
        recv: asyncio.Future[Any] | None = None
        try:
            await ws.send_text(control("hello", role=p.role, channels=channels, from_seq=from_seq, head_seq=head))
            sub.task = asyncio.ensure_future(self._send(ws, sub))
            recv = asyncio.ensure_future(until_disconnect(ws))
            await asyncio.wait({sub.task, recv}, return_when=asyncio.FIRST_COMPLETED)
            if sub.task.done() and not sub.task.cancelled() and sub.task.exception() is not None:
                err = sub.task.exception()
                if not is_disconnect(err):
                    log.error("stream failed", exc_info=err)
                    sub.dropped = sub.dropped or (CLOSE_INTERNAL, close_reason(f"stream failed: {err!r}"))
        except Exception as e:
            if not is_disconnect(e):
                raise
        finally:
            self._remove(sub)
            for t in (sub.task, recv):
                if t is not None and not t.done():
                    t.cancel()
            if sub.dropped is not None and (recv is None or not recv.done()):
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    await asyncio.wait_for(ws.close(*sub.dropped), self.close_timeout_s)

    async def _send(self, ws: WebSocket, sub: Subscriber) -> None:
        if not sub.live:
            await self._catch_up(ws, sub)
            await ws.send_text(control("live", through_seq=sub.sent_seq))
        q = sub.queue
        while True:
            if not q:
                sub.wake.clear()
                await sub.wake.wait()
                continue
            chunk = q.popleft()
            sub.qbytes -= chunk.nbytes
            if not q or q[0].nbytes + chunk.nbytes > self.max_frame_bytes:
                text, last = chunk.text(), chunk.last
            else:  # merge what has queued up into one message
                frags = [f for _, f in chunk.frags]
                size = chunk.nbytes
                last = chunk.last
                while q and size + q[0].nbytes <= self.max_frame_bytes:
                    c = q.popleft()
                    sub.qbytes -= c.nbytes
                    size += c.nbytes
                    frags.extend(f for _, f in c.frags)
                    last = c.last
                text = message(last, frags)
            await ws.send_text(text)
            sub.sent_seq = last

    async def _catch_up(self, ws: WebSocket, sub: Subscriber) -> None:
        """Send durable history from ``sub.next_seq``, then splice on the live buffer (see the module doc)."""
        while True:
            sub.overflowed = False
            cap = self.worker.durable_seq
            while sub.next_seq <= cap:
                last, frags, sub.last_input = await self.readers.run(self._reader(sub, sub.next_seq, cap))
                await ws.send_text(message(last, frags))
                sub.next_seq = last + 1
                sub.sent_seq = last
            if sub.overflowed:
                self.stats["catch_up_rereads"] += 1
                continue
            q = sub.queue
            while q and q[0].last < sub.next_seq:
                sub.qbytes -= q.popleft().nbytes
            if q and q[0].first > sub.next_seq:  # cannot happen (see the module doc); read the log again
                log.warning("stream splice gap: %d..%d; reading the log again", sub.next_seq, q[0].first)
                q.clear()
                sub.qbytes = 0
                continue
            if q and q[0].first < sub.next_seq:
                head = q.popleft()
                trimmed = Chunk(sub.next_seq, head.last, [(s, f) for s, f in head.frags if s >= sub.next_seq])
                sub.qbytes += trimmed.nbytes - head.nbytes
                q.appendleft(trimmed)
            sub.live = True
            return

    def _reader(self, sub: Subscriber, from_seq: int, to_seq: int) -> Callable[[LogBackend], Any]:
        p, mask, scales, limit = sub.principal, sub.mask, self.scales, self.catch_up_records
        last_input = list(sub.last_input)

        def read(lg: LogBackend) -> tuple[int, list[str], list[int]]:
            nonlocal last_input
            frags: list[str] = []
            last = from_seq - 1
            it = lg.read(from_seq)
            try:
                for seq, e in it:
                    if seq > to_seq:
                        break
                    if e.is_input:
                        if seq - from_seq >= limit:
                            break  # chunks end where an input starts: a resume never splits an outcome
                        last_input = event_ids(e)
                    if type_mask(type(e).__name__) & mask:
                        f = visible_frag(p, render_record(seq, e, scales, last_input))
                        if f is not None:
                            frags.append(f)
                    last = seq
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            if last < from_seq:
                raise ValidationError(f"the log has no record {from_seq} (durable up to {to_seq})")
            return last, frags, last_input

        return read
