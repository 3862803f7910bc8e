"""Option series, mark-vol surfaces and publishing, portfolio views and margin modes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from fluidmargin.core.units import PRICE_DECIMALS
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service import views
from fluidmargin.service.auth import ANYONE, PUBLISHING, Principal
from fluidmargin.service.codec import FieldError, confidence_ppm, to_quantums
from fluidmargin.service.deps import AccountPath, IdempotencyKey, StrictJSONRoute, Svc, errors, publisher_source, write
from fluidmargin.service.routes_accounts import OWNER_OF
from fluidmargin.service.schemas import (
    MarginModeIn,
    OptionMarketView,
    PortfolioView,
    VolIn,
    VolSurfaceView,
    WriteResult,
)

router = APIRouter(prefix="/v1", tags=["options"], route_class=StrictJSONRoute)


@router.get("/options", response_model=list[OptionMarketView], responses=errors(403), summary="Every option series")
async def options(svc: Svc, p: Annotated[Principal, ANYONE]) -> list[dict[str, Any]]:
    return await svc.worker.read(views.option_markets_view)


@router.get(
    "/options/{symbol}",
    response_model=OptionMarketView,
    responses=errors(403, 404),
    summary="An option series: strike, expiry, mark vol, model price and Greeks, open interest, settlement",
)
async def option(
    symbol: Annotated[str, Path(max_length=64)], svc: Svc, p: Annotated[Principal, ANYONE]
) -> dict[str, Any]:
    return await svc.worker.read(lambda eng: views.option_market_view(eng, symbol))


@router.get(
    "/vol-surfaces/{underlying}",
    response_model=VolSurfaceView,
    responses=errors(403, 404),
    summary="The published mark vols of an underlying, one point per listed expiry and strike",
)
async def vol_surface(
    underlying: Annotated[str, Path(max_length=64)], svc: Svc, p: Annotated[Principal, ANYONE]
) -> dict[str, Any]:
    return await svc.worker.read(lambda eng: views.vol_surface_view(eng, underlying))


@router.post(
    "/vols",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Publish a mark vol for a listed (underlying, expiry, strike) (the source is the key's)",
    description="Validated like a price: a non-finite, non-positive or absurd (> 1000 %) vol, an expired "
    "expiry, a zero strike, an unlisted point or a low confidence is refused with the reason.",
)
async def publish_vol(
    body: VolIn, svc: Svc, p: Annotated[Principal, PUBLISHING], idem: IdempotencyKey = None
) -> dict[str, Any]:
    source = publisher_source(p)
    strike = to_quantums(body.strike, PRICE_DECIMALS, "strike")
    to_quantums(body.vol, 6, "vol", signed=True)  # exact or 422 (the engine judges the value)
    conf = confidence_ppm(body.confidence)

    def build(eng: Engine, ts: int) -> ev.Event:
        if body.underlying not in eng.markets_of_asset:
            raise FieldError("underlying", f"unknown underlying {body.underlying!r}")
        return ev.VolObserved(ts, source, body.underlying, body.expiry_ns, strike, body.vol, conf)

    return await write(svc, p, build, idem, ("vol", source, body.model_dump()))


@router.get(
    "/accounts/{account_id}/portfolio",
    response_model=PortfolioView,
    responses=errors(403, 404),
    summary="Portfolio risk: the scenario matrix per underlying (which is worst, by how much) and Greeks",
)
async def portfolio(account_id: AccountPath, svc: Svc, p: Annotated[Principal, OWNER_OF]) -> dict[str, Any]:
    return await svc.worker.read(lambda eng: views.portfolio_view(eng, account_id))


@router.put(
    "/accounts/{account_id}/margin-mode",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Choose the margin mode: standard (tiered), isolated or portfolio",
    description="Refused (409) if equity would fall below initial margin in the new mode; options need "
    "portfolio mode, portfolio mode holds no isolated positions, isolated mode no cross positions.",
)
async def margin_mode(
    account_id: AccountPath,
    body: MarginModeIn,
    svc: Svc,
    p: Annotated[Principal, OWNER_OF],
    idem: IdempotencyKey = None,
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        views.row_of(eng, account_id)
        return ev.MarginModeChanged(ts, account_id, body.mode)

    return await write(svc, p, build, idem, ("mode", account_id, body.model_dump()))
