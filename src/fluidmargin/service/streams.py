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

This module holds the two endpoints and the publisher; the hub (fan-out, catch-up, slow clients) is
:mod:`~fluidmargin.service.stream_hub`, and what goes on the wire (channels, records rendered per view,
close codes) :mod:`~fluidmargin.service.stream_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError as PydanticValidationError

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PRICE_DECIMALS
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service.auth import Principal
from fluidmargin.service.codec import FieldError, confidence_ppm, loads_json, to_quantums
from fluidmargin.service.deps import EngineRejected, Service, rejection_status, result_body, submit
from fluidmargin.service.errors import IdempotencyMismatch, WorkerUnavailable
from fluidmargin.service.roles import PUBLISHERS
from fluidmargin.service.schemas import PriceIn
from fluidmargin.service.stream_hub import StreamHub
from fluidmargin.service.stream_wire import CLOSE_FORBIDDEN, authenticate, is_disconnect

log = logging.getLogger("fluidmargin.service.streams")
router = APIRouter()


class Publisher:
    """``WS /v1/publish``: prices in, one JSON object a message, each answered in order once durable."""

    def __init__(self, svc: Service, max_inflight: int = 1024) -> None:
        self.svc = svc
        self.max_inflight = max_inflight
        self.published = 0

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        p, code, why = authenticate(self.svc, ws, PUBLISHERS)
        if p is None:
            await ws.close(code, why)
            return
        source = p.source
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
            if not is_disconnect(e):
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
                if not is_disconnect(e):
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
            conf = confidence_ppm(body.confidence)
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
            self.published += 1
            return {"id": ref, "ok": True, **result_body(self.svc, out, p)}

        return asyncio.ensure_future(run())


def _pydantic_detail(e: PydanticValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    """Durable log records as they commit, resumable with ``from_seq`` (see the module docstring)."""
    hub: StreamHub = websocket.app.state.hub
    await hub.serve_stream(websocket)


@router.websocket("/v1/publish")
async def publish(websocket: WebSocket) -> None:
    """Oracle prices in, one JSON object a message, each acknowledged with its seq once durable."""
    publisher: Publisher = websocket.app.state.publisher
    await publisher.serve(websocket)
