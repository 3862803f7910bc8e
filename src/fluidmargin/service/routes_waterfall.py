"""Liquidation auctions and the backstop vault."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service import views
from fluidmargin.service.auth import ANYONE, Principal, require
from fluidmargin.service.codec import SHARE_DECIMALS, market_of_auction, to_quantums
from fluidmargin.service.deps import IdempotencyKey, Service, StrictJSONRoute, Svc, errors, write
from fluidmargin.service.roles import LIQUIDITY_PROVIDERS, SEE_ALL
from fluidmargin.service.schemas import (
    AuctionView,
    Bid,
    VaultClaimIn,
    VaultDepositIn,
    VaultView,
    VaultWithdrawIn,
    WriteResult,
)
from fluidmargin.service.worker import Build

router = APIRouter(prefix="/v1", tags=["waterfall"], route_class=StrictJSONRoute)
LPS = require(*LIQUIDITY_PROVIDERS)
AuctionPath = Annotated[str, Path(min_length=1, max_length=80)]


def _redacted(view: dict[str, Any], p: Principal) -> dict[str, Any]:
    """An auction as ``p`` may see it: admin and venue keys see whose positions it sells; others only
    the accounts they may touch (a publisher: none)."""
    if p.role in SEE_ALL:
        return view
    return {**view, "accounts": [a for a in view["accounts"] if p.may_touch(a)]}


async def _lp_write(
    svc: Service, p: Principal, account_id: int, make: Build, idem: str | None, fingerprint: Any
) -> dict[str, Any]:
    """A write for an LP's account: the key must be allowed to touch it (403) and the engine know it (404)
    before ``make`` builds the input."""
    p.check_account(account_id)

    def build(eng: Engine, ts: int) -> ev.Event:
        views.row_of(eng, account_id)
        return make(eng, ts)

    return await write(svc, p, build, idem, fingerprint)


@router.get("/auctions", response_model=list[AuctionView], responses=errors(403), summary="Open auctions")
async def auctions(svc: Svc, p: Annotated[Principal, ANYONE]) -> list[dict[str, Any]]:
    return [_redacted(a, p) for a in await svc.worker.read(views.auctions_view)]


@router.get("/auctions/{auction_id}", response_model=AuctionView, responses=errors(403, 404), summary="One auction")
async def auction(auction_id: AuctionPath, svc: Svc, p: Annotated[Principal, ANYONE]) -> dict[str, Any]:
    return _redacted(await svc.worker.read(lambda eng: views.one_auction(eng, auction_id)), p)


@router.post(
    "/auctions/{auction_id}/bids",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Take up to size of the auction at its current price, bounded by limit_price",
)
async def bid(
    auction_id: AuctionPath, body: Bid, svc: Svc, p: Annotated[Principal, LPS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        if auction_id not in eng.wf.auctions:
            raise views.NotFound(f"auction {auction_id!r} is unknown or finished")
        sd = eng.market_idx[market_of_auction(auction_id)].spec.size_decimals
        size = to_quantums(body.size, sd, "size", positive=True)
        limit = to_quantums(body.limit_price, PRICE_DECIMALS, "limit_price", positive=True)
        return ev.AuctionBid(ts, auction_id, body.account_id, size, limit)

    return await _lp_write(svc, p, body.account_id, build, idem, ("bid", auction_id, body.model_dump()))


@router.get("/vault", response_model=VaultView, responses=errors(403), summary="The backstop vault")
async def vault(svc: Svc, p: Annotated[Principal, ANYONE]) -> dict[str, Any]:
    return await svc.worker.read(views.vault_view)


@router.post(
    "/vault/deposits",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Move quote collateral from an account into the vault, for shares",
)
async def vault_deposit(
    body: VaultDepositIn, svc: Svc, p: Annotated[Principal, LPS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.VaultDeposit(ts, body.account_id, to_quantums(body.amount, QUOTE_DECIMALS, "amount", positive=True))

    return await _lp_write(svc, p, body.account_id, build, idem, ("vault_deposit", body.model_dump()))


@router.post(
    "/vault/withdrawals",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Ask to redeem shares (claimable after the vault's withdrawal delay)",
)
async def vault_withdraw(
    body: VaultWithdrawIn, svc: Svc, p: Annotated[Principal, LPS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        shares = to_quantums(body.shares, SHARE_DECIMALS, "shares", positive=True)
        return ev.VaultWithdrawalRequested(ts, body.account_id, shares)

    return await _lp_write(svc, p, body.account_id, build, idem, ("vault_withdraw", body.model_dump()))


@router.post(
    "/vault/claims",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Redeem a matured withdrawal request at the share price of now",
)
async def vault_claim(
    body: VaultClaimIn, svc: Svc, p: Annotated[Principal, LPS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.VaultWithdrawalClaimed(ts, body.account_id)

    return await _lp_write(svc, p, body.account_id, build, idem, ("vault_claim", body.model_dump()))
