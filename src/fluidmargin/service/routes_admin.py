"""Admin: API keys, the event log, and the clock tick."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service.auth import ADMINS, KeyRecord, LastAdminKey, Principal
from fluidmargin.service.codec import FieldError, render_event
from fluidmargin.service.deps import IdempotencyKey, StrictInt, StrictJSONRoute, Svc, errors, write
from fluidmargin.service.roles import ACCOUNT, PUBLISHER
from fluidmargin.service.schemas import EventsPage, KeyCreate, KeyCreated, KeyOut, WriteResult

router = APIRouter(prefix="/v1", tags=["admin"], route_class=StrictJSONRoute)


def key_out(rec: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": rec.key_id,
        "role": rec.role,
        "name": rec.name,
        "account_ids": sorted(rec.account_ids),
        "source": rec.source,
        "created_ns": rec.created_ns,
        "revoked": rec.revoked,
        "rate_per_s": rec.rate_per_s,
        "burst": rec.burst,
    }


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    responses=errors(403),
    summary="Create an API key (the key is in this answer only)",
)
async def create_key(body: KeyCreate, svc: Svc, p: Annotated[Principal, ADMINS]) -> dict[str, Any]:
    if body.role == PUBLISHER and not body.source:
        raise FieldError("source", "a publisher key needs a source name")
    if body.role == ACCOUNT and not body.account_ids:
        raise FieldError("account_ids", "an account key needs account_ids")
    if body.role != ACCOUNT and body.account_ids:
        raise FieldError("account_ids", "only account keys are scoped to account_ids")
    rec, secret = svc.keys.create(body.role, body.name, body.account_ids, body.source, body.rate_per_s, body.burst)
    return {**key_out(rec), "api_key": secret}


@router.get("/keys", response_model=list[KeyOut], responses=errors(403), summary="Every key (never the secrets)")
async def list_keys(svc: Svc, p: Annotated[Principal, ADMINS]) -> list[dict[str, Any]]:
    return [key_out(r) for r in svc.keys.all_keys()]


@router.delete(
    "/keys/{key_id}",
    response_model=KeyOut,
    responses=errors(403, 404, refusal="the last active admin key cannot be revoked (create another first)"),
    summary="Revoke a key (never the last active admin key)",
)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=64)], svc: Svc, p: Annotated[Principal, ADMINS]
) -> dict[str, Any]:
    try:
        rec = svc.keys.revoke(key_id)
    except LastAdminKey as e:
        raise HTTPException(409, str(e)) from None
    if rec is None:
        raise HTTPException(404, f"unknown key {key_id!r}")
    return key_out(rec)


@router.get("/events", response_model=EventsPage, responses=errors(403), summary="Durable log records after a seq")
async def events(
    svc: Svc,
    p: Annotated[Principal, ADMINS],
    after: Annotated[int, Query(ge=0, le=2**62), StrictInt] = 0,
    limit: Annotated[int, Query(ge=1, le=1000), StrictInt] = 100,
) -> dict[str, Any]:
    def read(eng: Engine) -> dict[str, Any]:
        runner = svc.worker.runner
        assert runner is not None
        out: list[dict[str, Any]] = []
        last = after
        for n, (seq, e) in enumerate(runner.log.read(after + 1)):
            if n >= limit:
                break
            out.extend(render_event(seq, e, svc.scales))
            last = seq
        return {"events": out, "next_seq": last + 1}

    return await svc.worker.read(read)


@router.post(
    "/clock",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Advance event time to now: accrue funding, poll auctions, re-margin",
)
async def tick(svc: Svc, p: Annotated[Principal, ADMINS], idem: IdempotencyKey = None) -> dict[str, Any]:
    return await write(svc, p, lambda eng, ts: ev.ClockAdvanced(ts), idem, ("clock",))
