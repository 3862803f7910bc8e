"""Live streams over WebSocket: ``WS /v1/stream`` (the durable log, resumable) and ``WS /v1/publish`` (prices in).

**``WS /v1/stream?from_seq=N&channels=C,...&key=K``** (the key may instead come in an
``Authorization: Bearer`` header; browsers cannot set one, hence ``?key=``). Roles admin, venue and
account; a publisher only publishes. Every durable log record the key may see, in seq order::

    {"op": "hello", "role": "admin", "channels": ["all"], "from_seq": 1, "head_seq": 1234}
    {"seq": 1240, "records": [{"seq": 1237, "type": "PriceObserved", "events": [...]}, ...]}
    {"op": "live", "through_seq": 1240}

A data message (the one with ``records``) covers every log record up to its ``seq``: the records in it
are those of that span this key may see on its channels, each with its own ``seq``, its log ``type``
and its wire events (exactly as write answers and ``GET /v1/events`` render them: quantums as decimal
strings; a columnar ``PositionsLiquidated`` becomes its per-account events; an ``AccountsSeeded``
is summarised as ``{accounts, positions, summary: true}``, the full record is in ``GET /v1/events``).
A message may hold no record: it then only says how far the log has been read for this client (sent
at most once a second while nothing it may see happens), so a resumed client starts from there.

*Resume*: reconnect with ``from_seq`` = the last message's ``seq`` + 1 and every record arrives exactly
once. The client is first subscribed to live commits (buffered), then durable records are replayed from
the log (read on a thread of its own, never the engine worker's) up to the durable seq, then the buffer
is spliced on at the first live seq not yet sent. If the buffer overflowed while the history was being
sent, the log is simply read further before switching. Without ``from_seq`` the stream starts live.
``op: live`` marks the switch.

*Visibility*: admin and venue keys see everything; an account key sees market-wide events and its own
accounts' (and their sub-accounts') events only, the rule write answers use
(:meth:`~fluidmargin.service.auth.Principal.sees`); a rejected input's ``InputRejected`` goes with the
input. *Channels* (``channels=``, comma separated, default ``all``): see :data:`CHANNELS`.

*Slow clients*: each client has a bounded queue (``max_queue`` commits, ``max_queue_bytes``; one commit
is always taken, however large); a live client whose queue overflows is dropped with close code 4408 and
its queue freed (a commit's rendering is shared by every client with the same view, so the bound is on
what one client holds back, not on copies). The close frame follows the messages already in flight (no
message is cut); a client that has not read them within ``close_timeout_s`` is disconnected without
it. The engine worker
only hands each committed batch to the event loop (``call_soon_threadsafe``) and never waits for a client.

Close codes: 4400 bad parameters, 4401 missing/invalid/revoked key, 4403 role not allowed, 4408 slow
consumer, 4429 rate limited, 1011 internal error, 1013 too many subscribers.

**``WS /v1/publish?key=K``** (admin or publisher): each message a JSON object ``{"asset": "BTC",
"price": "50000.5", "confidence": "1", "id": <echoed>, "idempotency_key": <optional>}``; each is answered,
in order, once durable: ``{"id", "ok": true, "seq", "durable_seq", "ts_ns", "replayed", "events"}``, or
``{"id", "ok": false, "status": 409/422/429/503, "detail", "seq"?}``. Messages may be pipelined (up to
``max_inflight`` unanswered); the source is the key's, as for ``POST /v1/prices``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError as PydanticValidationError

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, PRICE_DECIMALS
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service.auth import Principal
from fluidmargin.service.codec import FieldError, Scales, loads_json, render_event, to_quantums
from fluidmargin.service.deps import EngineRejected, Service, rejection_status, result_body, submit
from fluidmargin.service.schemas import PriceIn
from fluidmargin.service.worker import IdempotencyMismatch, WorkerUnavailable
from fluidmargin.store.backend import LogBackend, LogTarget, open_log

log = logging.getLogger("fluidmargin.service.streams")
router = APIRouter()

# --- channels ------------------------------------------------------------------------------------------

CHANNELS: dict[str, tuple[str, ...]] = {
    "prices": (
        "PriceObserved",
        "OraclePriceRejected",
        "IndexPriceUpdated",
        "MarkPriceUpdated",
        "LastTradeObserved",
        "FundingRatePublished",
        "OracleReanchorRequested",
        "OracleReanchored",
    ),
    "markets": (
        "MarketHaltRequested",
        "MarketResumeRequested",
        "MarketHalted",
        "MarketResumed",
        "ParameterChangeRequested",
        "ParameterChanged",
    ),
    "liquidations": (
        "PositionLiquidated",
        "PositionsLiquidated",
        "BatchNetted",
        "LiquidationExecuted",
        "AuctionStarted",
        "AuctionBid",
        "AuctionBidFilled",
        "AuctionReset",
        "AuctionFinished",
        "BackstopTakeover",
        "AutoDeleveraged",
        "BadDebtSocialized",
    ),
    "health": ("AccountStatusChanged", "PositionsLiquidated"),
    "accounts": (
        "AccountOpened",
        "AccountsSeeded",
        "Deposited",
        "WithdrawalRequested",
        "TradeFilled",
        "FundingSettleRequested",
        "FundingSettled",
        "AccountStatusChanged",
        "VaultDeposit",
        "VaultWithdrawalRequested",
        "VaultWithdrawalClaimed",
        "VaultSharesChanged",
    ),
    "funds": ("InsuranceFundChanged", "BadDebtSocialized", "VaultSharesChanged"),
    "system": ("ClockAdvanced", "InputRejected"),
}
_BIT = {name: 1 << i for i, name in enumerate(CHANNELS)}
ALL_CHANNELS = (1 << len(CHANNELS)) - 1
_TYPE_MASK: dict[str, int] = {}
for _name, _types in CHANNELS.items():
    for _t in _types:
        _TYPE_MASK[_t] = _TYPE_MASK.get(_t, 0) | _BIT[_name]


def type_mask(type_name: str) -> int:
    """The channels a log record of this type belongs to (an unknown type: ``system``)."""
    return _TYPE_MASK.get(type_name, _BIT["system"])


def parse_channels(text: str | None) -> tuple[int, list[str]]:
    """``channels=`` as a bit mask and the sorted names; ``all`` (the default) is every channel."""
    names = [c.strip() for c in (text or "all").split(",") if c.strip()]
    if not names:
        names = ["all"]
    mask = 0
    for n in names:
        if n == "all":
            mask = ALL_CHANNELS
        elif n in _BIT:
            mask |= _BIT[n]
        else:
            raise ValueError(f"unknown channel {n[:40]!r} (channels: all, {', '.join(CHANNELS)})")
    return mask, (["all"] if mask == ALL_CHANNELS else sorted(n for n in CHANNELS if mask & _BIT[n]))


CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SLOW = 4408
CLOSE_RATE_LIMITED = 4429
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
STREAM_ROLES = ("admin", "venue", "account")
PUBLISH_ROLES = ("admin", "publisher")

# --- records as the stream shows them ----------------------------------------------------------------

_ID_FIELDS = ("account_id", "account_ids", "bankrupt_account_id")


def _ids(d: dict[str, Any]) -> list[int]:
    out: list[int] = []
    for f in _ID_FIELDS:
        v = d.get(f)
        if isinstance(v, list):
            out.extend(i for i in v if isinstance(i, int) and i >= 0)
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            out.append(v)
    return out


@dataclass(slots=True)
class StreamRecord:
    """One log record rendered once for every subscriber: ``frag`` is its JSON as a full-view client gets it."""

    seq: int
    type: str
    mask: int
    frag: str
    events: list[dict[str, Any]]
    private: bool  # some event names an account: account keys get a filtered copy
    owner: list[int] | None = None  # the record goes as a whole to keys that may see these accounts


def event_ids(e: ev.Event) -> list[int]:
    """The accounts an input names (an AccountsSeeded's list as is: it may be long)."""
    ids = getattr(e, "account_ids", None)
    if isinstance(ids, list):
        return ids
    v = getattr(e, "account_id", None)
    return [v] if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else []


def render_record(seq: int, e: ev.Event, scales: Scales, input_ids: list[int] | None = None) -> StreamRecord:
    """A log record as the stream shows it. ``input_ids``: for an InputRejected, the accounts of the input
    it refuses (the rejection goes to whoever may see that input)."""
    name = type(e).__name__
    owner: list[int] | None = None
    if isinstance(e, ev.AccountsSeeded):
        events: list[dict[str, Any]] = [
            {
                "type": name,
                "seq": seq,
                "ts_ns": e.ts_ns,
                "event_id": e.event_id,
                "accounts": len(e.account_ids),
                "positions": len(e.pos_account),
                "summary": True,
            }
        ]
        owner, private = e.account_ids, True
    else:
        events = render_event(seq, e, scales)
        private = any(_ids(x) for x in events)
        if isinstance(e, ev.InputRejected):
            owner = input_ids or []
    frag = orjson.dumps({"seq": seq, "type": name, "events": events}).decode()
    return StreamRecord(seq, name, type_mask(name), frag, events, private, owner)


def _sees_ids(p: Principal, ids: Iterable[int]) -> bool:
    return p.role in ("admin", "venue") or (p.role == "account" and all(p.may_touch(i) for i in ids))


def visible_frag(p: Principal, rec: StreamRecord) -> str | None:
    """``rec`` as this key may see it (None: nothing of it)."""
    if p.role in ("admin", "venue"):
        return rec.frag
    if rec.owner is not None:
        return rec.frag if _sees_ids(p, rec.owner) else None
    if not rec.private:
        return rec.frag
    evs = [x for x in rec.events if p.sees(x)]
    if not evs:
        return None
    if len(evs) == len(rec.events):
        return rec.frag
    return orjson.dumps({"seq": rec.seq, "type": rec.type, "events": evs}).decode()


class Chunk:
    """What one commit (or one progress tick) gives one view of the stream: records ``first..last``."""

    __slots__ = ("_text", "first", "frags", "last", "nbytes")

    def __init__(self, first: int, last: int, frags: list[tuple[int, str]]) -> None:
        self.first = first
        self.last = last
        self.frags = frags
        self.nbytes = 32 + sum(len(f) for _, f in frags)
        self._text: str | None = None

    def text(self) -> str:
        if self._text is None:
            self._text = message(self.last, [f for _, f in self.frags])
        return self._text


def message(seq: int, frags: list[str]) -> str:
    return '{"seq":' + str(seq) + ',"records":[' + ",".join(frags) + "]}"


def _control(op: str, **kw: Any) -> str:
    return orjson.dumps({"op": op, **kw}).decode()


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
        return self.mask, (p.key.key_id if p.role == "account" else None)


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
    """Fans committed log records out to WebSocket subscribers; see the module docstring."""

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
        max_inflight: int = 1024,
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
        self.max_inflight = max_inflight
        self.close_timeout_s = close_timeout_s
        self.readers = LogReaders(target, reader_threads)
        self.subs: set[Subscriber] = set()
        self._union = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.stats = {"subscribed": 0, "dropped_slow": 0, "catch_up_rereads": 0, "published": 0}

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

    # --- authentication -------------------------------------------------------------------------------

    def authenticate(self, ws: WebSocket, roles: tuple[str, ...]) -> tuple[Principal | None, int, str]:
        secret = ws.query_params.get("key") or ""
        if not secret:
            scheme, _, cred = ws.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                secret = cred.strip()
        if not secret:
            return None, CLOSE_UNAUTHORIZED, "missing API key (?key=... or Authorization: Bearer ...)"
        keys = self.svc.keys
        rec = keys.lookup(secret)
        if rec is None:
            return None, CLOSE_UNAUTHORIZED, "invalid or revoked API key"
        if self.svc.limiter.take(rec.key_id, rec.rate_per_s, rec.burst):
            return None, CLOSE_RATE_LIMITED, "rate limit exceeded for this key"
        if rec.role not in roles:
            return None, CLOSE_FORBIDDEN, f"the {rec.role} role may not use this endpoint"
        return Principal(rec, keys), 0, ""

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
            await ws.close(CLOSE_BAD_REQUEST, _reason(f"bad parameters: {e}"))
            return
        p, code, why = self.authenticate(ws, STREAM_ROLES)
        if p is None:
            await ws.close(code, why)
            return
        if len(self.subs) >= self.max_subscribers or self._loop is None:
            await ws.close(CLOSE_TRY_LATER, "too many subscribers; retry later")
            return
        head = self.worker.durable_seq
        if from_seq is not None and from_seq > head + 1:
            await ws.close(CLOSE_BAD_REQUEST, _reason(f"from_seq {from_seq} is beyond the log's end ({head})"))
            return
        start = max(from_seq or 1, 1)
        sub = Subscriber(
            p, mask, channels, next_seq=start, live=from_seq is None, sent_seq=head if from_seq is None else start - 1
        )
        self._add(sub)  # subscribed to live commits before anything is read from the log: no gap
        recv: asyncio.Future[Any] | None = None
        try:
            await ws.send_text(_control("hello", role=p.role, channels=channels, from_seq=from_seq, head_seq=head))
            sub.task = asyncio.ensure_future(self._send(ws, sub))
            recv = asyncio.ensure_future(_until_disconnect(ws))
            await asyncio.wait({sub.task, recv}, return_when=asyncio.FIRST_COMPLETED)
            if sub.task.done() and not sub.task.cancelled() and sub.task.exception() is not None:
                err = sub.task.exception()
                if not _is_disconnect(err):
                    log.error("stream failed", exc_info=err)
                    sub.dropped = sub.dropped or (CLOSE_INTERNAL, _reason(f"stream failed: {err!r}"))
        except Exception as e:
            if not _is_disconnect(e):
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
            await ws.send_text(_control("live", through_seq=sub.sent_seq))
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

    # --- WS /v1/publish ----------------------------------------------------------------------------------

    async def serve_publish(self, ws: WebSocket) -> None:
        await ws.accept()
        p, code, why = self.authenticate(ws, PUBLISH_ROLES)
        if p is None:
            await ws.close(code, why)
            return
        source = p.key.source or (f"admin:{p.key.key_id}" if p.role == "admin" else "")
        if not source:
            await ws.close(CLOSE_FORBIDDEN, "this publisher key has no source name")
            return
        pending: asyncio.Queue[asyncio.Future[dict[str, Any]] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_inflight)
        acker = asyncio.ensure_future(self._ack(ws, pending, slots))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("text")
                if data is None:
                    data = (msg.get("bytes") or b"").decode("utf-8", "replace")
                await slots.acquire()
                pending.put_nowait(self._publish_one(p, source, data))
                if acker.done():
                    break
        except Exception as e:
            if not _is_disconnect(e):
                raise
        finally:
            pending.put_nowait(None)
            if not acker.done():
                with contextlib.suppress(Exception, asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(acker, 30)

    async def _ack(
        self,
        ws: WebSocket,
        pending: asyncio.Queue[asyncio.Future[dict[str, Any]] | None],
        slots: asyncio.Semaphore,
    ) -> None:
        broken = False
        while True:
            fut = await pending.get()
            if fut is None:
                return
            try:
                ack = await fut
            finally:
                slots.release()
            if broken:
                continue  # the client is gone: still wait for every write, so each slot comes back
            try:
                await ws.send_text(orjson.dumps(ack).decode())
            except Exception as e:
                if not _is_disconnect(e):
                    log.exception("publish ack failed")
                broken = True

    def _publish_one(self, p: Principal, source: str, data: str) -> asyncio.Future[dict[str, Any]]:
        """Start publishing one message (now, so writes keep their order); its answer when durable."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        ref: Any = None
        try:
            obj = loads_json(data)  # duplicate keys refused, as on every HTTP write
            if not isinstance(obj, dict):
                raise FieldError("body", "expected a JSON object")
            ref = obj.pop("id", None)
            idem = obj.pop("idempotency_key", None)
            if idem is not None and (
                not isinstance(idem, str) or not 1 <= len(idem) <= 128 or not idem.isascii() or not idem.isprintable()
            ):
                raise FieldError("idempotency_key", "1 to 128 printable ASCII characters")
            wait = self.svc.limiter.take(p.key.key_id, p.key.rate_per_s, p.key.burst)
            if wait:
                done.set_result({"id": ref, "ok": False, "status": 429, "detail": "rate limit exceeded for this key",
                                 "retry_after_s": round(wait, 3)})  # fmt: skip
                return done
            rec = self.svc.keys.get(p.key.key_id)
            if rec is None or rec.revoked:
                done.set_result({"id": ref, "ok": False, "status": 401, "detail": "the API key was revoked"})
                return done
            body = PriceIn.model_validate(obj)
            to_quantums(body.price, PRICE_DECIMALS, "price", positive=True)
            conf = to_quantums(body.confidence, 6, "confidence")
            if conf > PPM:
                raise FieldError("confidence", "must be between 0 and 1")
        except (ValueError, FieldError, PydanticValidationError, ValidationError) as e:
            detail = _pydantic_detail(e) if isinstance(e, PydanticValidationError) else str(e)
            done.set_result({"id": ref, "ok": False, "status": 422, "detail": detail})
            return done

        def build(eng: Engine, ts: int) -> ev.Event:
            if body.asset not in eng.markets_of_asset:
                raise FieldError("asset", f"unknown asset {body.asset!r}")
            return ev.PriceObserved(ts, source, body.asset, body.price, conf)

        async def run() -> dict[str, Any]:
            try:
                out = await submit(self.svc, p, build, idem, ("price", source, body.model_dump()))
            except EngineRejected as e:
                return {"id": ref, "ok": False, "status": rejection_status(e.reason), "detail": e.reason,
                        "seq": e.outcome.seq}  # fmt: skip
            except (FieldError, IdempotencyMismatch, ValidationError) as e:
                return {"id": ref, "ok": False, "status": 422, "detail": str(e)}
            except WorkerUnavailable as e:
                return {"id": ref, "ok": False, "status": 503, "detail": str(e)}
            self.stats["published"] += 1
            return {"id": ref, "ok": True, **result_body(self.svc, out, p)}

        return asyncio.ensure_future(run())


def _pydantic_detail(e: PydanticValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())


def _reason(text: str) -> str:
    """A close reason (at most 123 bytes of UTF-8)."""
    b = text.encode()[:123]
    return b.decode("utf-8", "ignore")


def _is_disconnect(e: BaseException | None) -> bool:
    from starlette.websockets import WebSocketDisconnect

    return isinstance(e, WebSocketDisconnect | ConnectionError | OSError) or type(e).__name__ == "ClientDisconnected"


async def _until_disconnect(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends until it goes away."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    """Durable log records as they commit, resumable with ``from_seq`` (see the module docstring)."""
    hub: StreamHub = websocket.app.state.hub
    await hub.serve_stream(websocket)


@router.websocket("/v1/publish")
async def publish(websocket: WebSocket) -> None:
    """Oracle prices in, one JSON object a message, each acknowledged with its seq once durable."""
    hub: StreamHub = websocket.app.state.hub
    await hub.serve_publish(websocket)
