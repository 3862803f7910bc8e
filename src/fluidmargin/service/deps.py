"""What every route shares: the service object, the write path, and the documented error answers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from fastapi.routing import APIRoute
from pydantic import BeforeValidator
from starlette.responses import Response

from fluidmargin.model.config import EngineConfig
from fluidmargin.service.auth import AccountPath as AccountPath  # (auth's: require_account reads it too)
from fluidmargin.service.auth import KeyRegistry, Principal, RateLimiter
from fluidmargin.service.codec import DuplicateKey, Scales, canonical_int, loads_json, render_records, strict_bool
from fluidmargin.service.metrics import Metrics
from fluidmargin.service.schemas import ErrorOut, RejectedOut
from fluidmargin.service.worker import Build, EngineWorker, Outcome


@dataclass
class Service:
    """Everything a request handler needs (``app.state.svc``)."""

    worker: EngineWorker
    keys: KeyRegistry
    limiter: RateLimiter
    metrics: Metrics
    config: EngineConfig
    max_sub_accounts: int = 100  # under one top-level account, at any depth
    scales: Scales = field(init=False)
    next_account_id: int | None = None  # every id below it is taken (touched only in the worker thread)
    sub_account_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one sub-account open at a time

    def __post_init__(self) -> None:
        self.scales = Scales(self.config)


async def get_svc(request: Request) -> Service:
    svc: Service = request.app.state.svc
    return svc


Svc = Annotated[Service, Depends(get_svc)]  # a route's service parameter


def publisher_source(p: Principal) -> str:
    """The source name the key publishes under (:attr:`Principal.source`); 403 when it has none."""
    if not p.source:
        raise HTTPException(403, "this publisher key has no source name")
    return p.source


StrictInt = BeforeValidator(canonical_int)  # for a query integer: Annotated[int, Query(...), StrictInt]
StrictBool = BeforeValidator(strict_bool)  # for a query flag: true or false


class StrictJSONRequest(Request):
    """A request whose JSON body may not name a key twice (422 ``duplicate_key``, before anything else
    reads the body's values)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_json(await self.body())
            except DuplicateKey as e:
                detail = [{"loc": ["body", e.key], "msg": str(e), "type": "duplicate_key"}]
                raise HTTPException(422, detail) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Every router's route class: bodies are read with :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


class EngineRejected(Exception):
    """The engine refused an input (logged with its InputRejected): 409, or 422 for a malformed one."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


_MALFORMED = re.compile(
    r"must be|must not|^unknown (collateral|market|asset)|too large|too small|overflow|given for a cross"
)
_NOT_FOUND = re.compile(r"^unknown account|is unknown or finished")


def rejection_status(reason: str) -> int:
    """The HTTP status of an engine rejection: 404 unknown id, 422 malformed input, 409 conflict."""
    if _NOT_FOUND.search(reason):
        return 404
    if _MALFORMED.search(reason):
        return 422
    return 409


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="makes the write idempotent: a replay returns the first outcome and applies nothing",
    ),
]


async def submit(svc: Service, p: Principal, build: Build, idem: str | None, fingerprint: Any) -> Outcome:
    """Apply one input through the worker; its outcome once durable, or raise its rejection."""
    eid = f"{p.key.key_id}:{idem}" if idem else ""  # keys never share idempotency ids
    outcome = await svc.worker.write(build, eid, fingerprint)
    reason = outcome.rejection
    if reason is not None:
        raise EngineRejected(outcome, reason)
    return outcome


async def write(svc: Service, p: Principal, build: Build, idem: str | None, fingerprint: Any) -> dict[str, Any]:
    """:func:`submit`, answered as a WriteResult."""
    return result_body(svc, await submit(svc, p, build, idem, fingerprint), p)


def visible_events(svc: Service, outcome: Outcome, p: Principal | None) -> list[dict[str, Any]]:
    """The outcome's events this caller may see (others' accounts' events are left out)."""
    events = render_records(outcome.records, svc.scales)
    return events if p is None else [e for e in events if p.sees(e)]


def result_body(svc: Service, outcome: Outcome, p: Principal | None) -> dict[str, Any]:
    event = outcome.event
    return {
        "seq": outcome.seq,
        "ts_ns": event.ts_ns if event is not None else 0,
        "durable_seq": outcome.durable_seq,
        "replayed": outcome.replayed,
        "events": visible_events(svc, outcome, p),
    }


_DESCRIPTIONS = {
    401: ("missing, invalid or revoked API key", ErrorOut),
    403: ("this key may not use this endpoint or touch this account", ErrorOut),
    404: ("unknown id", ErrorOut),
    409: ("the engine refused the input (logged with its reason)", RejectedOut),
    429: ("rate limit exceeded for this key (see Retry-After)", ErrorOut),
    501: ("not implemented yet", ErrorOut),
    503: ("the engine worker is unavailable or overloaded", ErrorOut),
}


def errors(*codes: int, refusal: str | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes (422 is FastAPI's own validation error schema).
    ``refusal``: a 409 the service itself may answer (a plain ErrorOut, nothing logged), described so."""
    out: dict[int | str, dict[str, Any]] = {}
    for c in (401, 429, 503, *codes):
        desc, model = _DESCRIPTIONS[c]
        out[c] = {"description": desc, "model": model}
    if refusal is not None:
        engine = out[409]["model"] if 409 in out else None
        out[409] = {"description": refusal, "model": ErrorOut if engine is None else engine | ErrorOut}
    return out
