"""Accounts and sub-accounts, collateral, fills, and the pre-trade what-if.

Deposits and withdrawals are facts from the venue's custody: only admin and venue keys report them; an
account key may ask for a withdrawal (kept only above initial margin), never credit an account. Ids a
client chooses lie below ``CLIENT_ACCOUNT_IDS`` (schemas), never the vault's; without one an account gets
the lowest free id, whatever ids clients chose. A top-level account holds at most
``Service.max_sub_accounts`` sub-accounts, at any depth (sub-accounts of sub-accounts count too).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service import views
from fluidmargin.service.auth import Principal, require, require_account
from fluidmargin.service.codec import FieldError, to_quantums
from fluidmargin.service.deps import (
    AccountPath,
    IdempotencyKey,
    Service,
    StrictBool,
    StrictJSONRoute,
    Svc,
    errors,
    result_body,
    submit,
    write,
)
from fluidmargin.service.roles import OWNERS, SEE_ALL
from fluidmargin.service.schemas import (
    AccountCreate,
    AccountCreated,
    AccountView,
    Fill,
    SubAccountCreate,
    SubAccountsOut,
    Transfer,
    WhatIfOut,
    WriteResult,
)
from fluidmargin.service.worker import Build

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], route_class=StrictJSONRoute)
OPENERS = require(*SEE_ALL)
VENUE_ON = require_account(*SEE_ALL)  # on the path's account
OWNER_OF = require_account(*OWNERS)  # on the path's account, in the key's scope


def _next_id(svc: Service, eng: Engine, wanted: int | None) -> int:
    """The id to open: ``wanted`` (never the vault's), or the lowest free id from 1 up.

    The free id is found from the engine's accounts each time (``svc.next_account_id`` only remembers
    where the taken run ends), so no client's choice or refused request moves it, and a restart finds
    the same one."""
    if wanted is not None:
        if eng.is_vault(wanted):
            raise FieldError("account_id", f"{wanted} is reserved for the backstop vault")
        return wanted
    a = svc.next_account_id or 1
    while a in eng.row_of or eng.is_vault(a):
        a += 1
    svc.next_account_id = a
    return a


async def _open(svc: Service, p: Principal, wanted: int | None, parent: int | None, idem: str | None) -> dict[str, Any]:
    if parent is None:
        return _opened(svc, p, await submit(svc, p, _opening(svc, wanted, None), idem, ("open", wanted, None)))
    p.check_account(parent)
    async with svc.sub_account_lock:  # the count below holds until this open is linked
        outcome = await submit(svc, p, _opening(svc, wanted, parent), idem, ("open", wanted, parent))
        assert isinstance(outcome.event, ev.AccountOpened)
        svc.keys.link(outcome.event.account_id, parent)  # after the durable open (a replay links again: idempotent)
    return _opened(svc, p, outcome)


def _opening(svc: Service, wanted: int | None, parent: int | None) -> Build:
    def build(eng: Engine, ts: int) -> ev.Event:
        if parent is not None:
            views.row_of(eng, parent)  # 404 for an unknown parent
            cap = svc.max_sub_accounts  # under one top-level account, at any depth
            if svc.keys.tree_size(parent) >= cap:
                raise HTTPException(
                    409, f"account {parent}'s tree has the most sub-accounts allowed ({cap} sub-accounts)"
                )
        return ev.AccountOpened(ts, _next_id(svc, eng, wanted))

    return build


def _opened(svc: Service, p: Principal, outcome: Any) -> dict[str, Any]:
    event = outcome.event
    assert isinstance(event, ev.AccountOpened)
    aid = event.account_id
    return {**result_body(svc, outcome, p), "account_id": aid, "parent_id": svc.keys.parent_of(aid)}


SUB_ACCOUNT_CAP = "the parent already has the most sub-accounts the service allows (nothing is logged)"


@router.post(
    "",
    status_code=201,
    response_model=AccountCreated,
    responses=errors(403, 404, 409, refusal=SUB_ACCOUNT_CAP),
    summary="Open an account (optionally as a sub-account of parent_id)",
)
async def open_account(
    body: AccountCreate, svc: Svc, p: Annotated[Principal, OPENERS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    return await _open(svc, p, body.account_id, body.parent_id, idem)


@router.post(
    "/{account_id}/sub-accounts",
    status_code=201,
    response_model=AccountCreated,
    responses=errors(403, 404, 409, refusal=SUB_ACCOUNT_CAP),
    summary="Open a sub-account: its own engine account, linked to this one in the service's registry",
)
async def open_sub_account(
    account_id: AccountPath,
    body: SubAccountCreate,
    svc: Svc,
    p: Annotated[Principal, OWNER_OF],
    idem: IdempotencyKey = None,
) -> dict[str, Any]:
    return await _open(svc, p, body.account_id, account_id, idem)


@router.get(
    "/{account_id}/sub-accounts", response_model=SubAccountsOut, responses=errors(403, 404), summary="Sub-accounts"
)
async def list_sub_accounts(account_id: AccountPath, svc: Svc, p: Annotated[Principal, OWNER_OF]) -> dict[str, Any]:
    await svc.worker.read(lambda eng: views.row_of(eng, account_id))
    return {"account_id": account_id, "sub_accounts": svc.keys.children_of(account_id)}


@router.get(
    "/{account_id}",
    response_model=AccountView,
    responses=errors(403, 404),
    summary="Balances, health, equity, margins, and per position: margin, liquidation price, ADL rank",
)
async def get_account(
    account_id: AccountPath,
    svc: Svc,
    p: Annotated[Principal, OWNER_OF],
    adl: Annotated[
        bool, Query(description="rank each position in its ADL queue (costs a queue scan); true or false"), StrictBool
    ] = True,
) -> dict[str, Any]:
    view = await svc.worker.read(lambda eng: views.account_view(eng, account_id, adl))
    return {**view, "parent_id": svc.keys.parent_of(account_id), "sub_accounts": svc.keys.children_of(account_id)}


def _transfer(kind: type[ev.Deposited] | type[ev.WithdrawalRequested], account_id: int, body: Transfer) -> Build:
    def build(eng: Engine, ts: int) -> ev.Event:
        views.row_of(eng, account_id)
        asset = body.asset or eng.cfg.quote
        c = eng.coll_idx.get(asset)
        if c is None:
            raise FieldError("asset", f"unknown collateral asset {asset!r}")
        amount = to_quantums(body.amount, eng.coll[c].decimals, "amount", positive=True)
        return kind(ts, account_id, asset, amount)

    return build


# The hot writes: (input builder, idempotency fingerprint) from the path's account and the validated body.
# The routes below and the fast path (service/fastpath.py) both use these.


def deposit_input(account_id: int, body: Transfer) -> tuple[Build, Any]:
    return _transfer(ev.Deposited, account_id, body), ("deposit", account_id, body.model_dump())


def withdrawal_input(account_id: int, body: Transfer) -> tuple[Build, Any]:
    return _transfer(ev.WithdrawalRequested, account_id, body), ("withdraw", account_id, body.model_dump())


def fill_input(account_id: int, body: Fill) -> tuple[Build, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return views.fill_event(eng, account_id, body, ts)

    return build, ("fill", account_id, body.model_dump())


@router.post(
    "/{account_id}/deposits",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Report a deposit the venue's custody received (admin, venue)",
)
async def deposit(
    account_id: AccountPath, body: Transfer, svc: Svc, p: Annotated[Principal, VENUE_ON], idem: IdempotencyKey = None
) -> dict[str, Any]:
    build, fingerprint = deposit_input(account_id, body)
    return await write(svc, p, build, idem, fingerprint)


@router.post(
    "/{account_id}/withdrawals",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Withdraw collateral (must leave equity at or above initial margin)",
)
async def withdraw(
    account_id: AccountPath, body: Transfer, svc: Svc, p: Annotated[Principal, OWNER_OF], idem: IdempotencyKey = None
) -> dict[str, Any]:
    build, fingerprint = withdrawal_input(account_id, body)
    return await write(svc, p, build, idem, fingerprint)


@router.post(
    "/{account_id}/fills",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="A fill from the venue's matching engine for this account",
)
async def fill(
    account_id: AccountPath,
    body: Fill,
    svc: Svc,
    p: Annotated[Principal, VENUE_ON],
    idem: IdempotencyKey = None,
) -> dict[str, Any]:
    build, fingerprint = fill_input(account_id, body)
    return await write(svc, p, build, idem, fingerprint)


@router.post(
    "/{account_id}/what-if",
    response_model=WhatIfOut,
    responses=errors(403, 404),
    summary="Margin and liquidation prices after a hypothetical fill (nothing is applied or logged)",
)
async def what_if(account_id: AccountPath, body: Fill, svc: Svc, p: Annotated[Principal, OWNER_OF]) -> dict[str, Any]:
    return await svc.worker.read(lambda eng: views.what_if(eng, account_id, body))


@router.post(
    "/{account_id}/funding-settlements",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Settle the account's accrued funding now",
)
async def settle_funding(
    account_id: AccountPath, svc: Svc, p: Annotated[Principal, OWNER_OF], idem: IdempotencyKey = None
) -> dict[str, Any]:

    def build(eng: Engine, ts: int) -> ev.Event:
        views.row_of(eng, account_id)
        return ev.FundingSettleRequested(ts, account_id)

    return await write(svc, p, build, idem, ("settle", account_id))
