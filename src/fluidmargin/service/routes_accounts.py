"""Accounts and sub-accounts, collateral, fills, and the pre-trade what-if."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service import views
from fluidmargin.service.auth import Principal, require, require_account
from fluidmargin.service.codec import FieldError, to_quantums
from fluidmargin.service.deps import (
    AccountPath,
    IdempotencyKey,
    Service,
    Svc,
    errors,
    result_body,
    submit,
    write,
)
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

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])
OWNER_ROLES = ("admin", "venue", "account")
VENUE_ROLES = ("admin", "venue")
OPENERS = require(*VENUE_ROLES)
VENUE_ON = require_account(*VENUE_ROLES)  # on the path's account
OWNER_OF = require_account(*OWNER_ROLES)  # on the path's account, in the key's scope


def _next_id(svc: Service, eng: Engine, wanted: int | None) -> int:
    """The id to open: ``wanted``, or one past the largest id opened through the service or seen."""
    if svc.next_account_id is None:
        vault = eng.cfg.backstop.account_id if eng.cfg.backstop else -1
        svc.next_account_id = max((a for a in eng.row_of if a != vault), default=0) + 1
    if wanted is None:
        wanted = svc.next_account_id
        if eng.is_vault(wanted):
            wanted += 1
    svc.next_account_id = max(svc.next_account_id, wanted + 1)
    return wanted


async def _open(svc: Service, p: Principal, wanted: int | None, parent: int | None, idem: str | None) -> dict[str, Any]:
    if parent is not None:
        p.check_account(parent)

    def build(eng: Engine, ts: int) -> ev.Event:
        if parent is not None:
            views.row_of(eng, parent)  # 404 for an unknown parent
        return ev.AccountOpened(ts, _next_id(svc, eng, wanted))

    outcome = await submit(svc, p, build, idem, ("open", wanted, parent))
    event = outcome.event
    assert isinstance(event, ev.AccountOpened)
    aid = event.account_id
    if parent is not None:
        svc.keys.link(aid, parent)  # after the durable open (a replay links again: idempotent)
    return {**result_body(svc, outcome, p), "account_id": aid, "parent_id": svc.keys.parent_of(aid)}


@router.post(
    "",
    status_code=201,
    response_model=AccountCreated,
    responses=errors(403, 404, 409),
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
    responses=errors(403, 404, 409),
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
    adl: Annotated[bool, Query(description="rank each position in its ADL queue (costs a queue scan)")] = True,
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
    "/{account_id}/deposits", response_model=WriteResult, responses=errors(403, 404, 409), summary="Deposit collateral"
)
async def deposit(
    account_id: AccountPath, body: Transfer, svc: Svc, p: Annotated[Principal, OWNER_OF], idem: IdempotencyKey = None
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
