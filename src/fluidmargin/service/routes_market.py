"""Markets, the oracle and price ingestion, insurance funds, risk parameters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from fluidmargin.core.units import PRICE_DECIMALS
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service import views
from fluidmargin.service.auth import ADMINS, ANYONE, PUBLISHING, Principal
from fluidmargin.service.codec import FieldError, confidence_ppm, to_quantums
from fluidmargin.service.deps import IdempotencyKey, StrictJSONRoute, Svc, errors, publisher_source, write
from fluidmargin.service.schemas import (
    FundsView,
    HaltIn,
    MarketView,
    OracleView,
    ParameterChangeIn,
    PriceIn,
    ReanchorIn,
    RiskParameters,
    WriteResult,
)

router = APIRouter(prefix="/v1", tags=["markets"], route_class=StrictJSONRoute)


@router.get("/markets", response_model=list[MarketView], responses=errors(403), summary="Every market")
async def markets(svc: Svc, p: Annotated[Principal, ANYONE]) -> list[dict[str, Any]]:
    return await svc.worker.read(views.markets_view)


@router.get(
    "/markets/{symbol}",
    response_model=MarketView,
    responses=errors(403, 404),
    summary="Mark, index, funding rate, open interest, halted",
)
async def market(
    symbol: Annotated[str, Path(max_length=64)], svc: Svc, p: Annotated[Principal, ANYONE]
) -> dict[str, Any]:
    return await svc.worker.read(lambda eng: views.market_view(eng, symbol))


@router.get(
    "/oracle",
    response_model=OracleView,
    responses=errors(403),
    summary="Index prices, sources, validity (judged at the service's clock now)",
)
async def oracle(svc: Svc, p: Annotated[Principal, ANYONE]) -> dict[str, Any]:
    return await svc.worker.read(lambda eng: views.oracle_view(eng, svc.worker.clock_ns()))


@router.post(
    "/oracle/{asset}/reanchor",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Re-anchor an asset's oracle at a new level (admin): a logged event",
    description="After a genuine gap every print is refused as a jump: this moves the index to `price` (or, "
    "without one, to the level the refused prints are pending at) and judges later prints from it. The "
    "accounts are re-margined at once; liquidations wait for a quorum of sources printing near it.",
)
async def reanchor_oracle(
    asset: Annotated[str, Path(max_length=64)],
    body: ReanchorIn,
    svc: Svc,
    p: Annotated[Principal, ADMINS],
    idem: IdempotencyKey = None,
) -> dict[str, Any]:
    if body.price is not None:
        to_quantums(body.price, PRICE_DECIMALS, "price", positive=True)  # exact or 422 (the engine parses the text)

    def build(eng: Engine, ts: int) -> ev.Event:
        if asset not in eng.markets_of_asset:
            raise FieldError("asset", f"unknown asset {asset!r}")
        return ev.OracleReanchorRequested(ts, asset, body.price or "", body.reason)

    return await write(svc, p, build, idem, ("reanchor", asset, body.model_dump()))


@router.post(
    "/prices",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Publish a price (the source is the publisher key's, never the body's)",
)
async def publish_price(
    body: PriceIn, svc: Svc, p: Annotated[Principal, PUBLISHING], idem: IdempotencyKey = None
) -> dict[str, Any]:
    source = publisher_source(p)
    to_quantums(body.price, PRICE_DECIMALS, "price", positive=True)  # exact or 422 (the engine parses the text)
    conf = confidence_ppm(body.confidence)

    def build(eng: Engine, ts: int) -> ev.Event:
        if body.asset not in eng.markets_of_asset:
            raise FieldError("asset", f"unknown asset {body.asset!r}")
        return ev.PriceObserved(ts, source, body.asset, body.price, conf)

    return await write(svc, p, build, idem, ("price", source, body.model_dump()))


@router.get("/insurance-funds", response_model=FundsView, responses=errors(403), summary="Insurance fund balances")
async def insurance_funds(svc: Svc, p: Annotated[Principal, ANYONE]) -> dict[str, Any]:
    return await svc.worker.read(views.funds_view)


@router.get("/risk-parameters", response_model=RiskParameters, responses=errors(403), summary="The engine config")
async def risk_parameters(svc: Svc, p: Annotated[Principal, ANYONE]) -> dict[str, Any]:
    return await svc.worker.read(views.risk_parameters)


@router.put(
    "/risk-parameters",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Change one risk parameter (admin): a logged engine event",
    description="Engine-wide (`market` empty) or per market; the names one may change are in the 409 answer to an "
    "unknown name. The change is validated by the engine config's own checks, logged, and every account is "
    "re-screened under the new value.",
)
async def change_risk_parameters(
    body: ParameterChangeIn, svc: Svc, p: Annotated[Principal, ADMINS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    value = int(body.value)

    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.ParameterChangeRequested(ts, body.market, body.name, value)

    return await write(svc, p, build, idem, ("parameter", body.model_dump()))


@router.post(
    "/markets/{symbol}/halt",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Halt new risk on a market (admin); liquidations go on",
)
async def halt_market(
    symbol: Annotated[str, Path(max_length=64)],
    body: HaltIn,
    svc: Svc,
    p: Annotated[Principal, ADMINS],
    idem: IdempotencyKey = None,
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.MarketHaltRequested(ts, symbol, body.reason)

    return await write(svc, p, build, idem, ("halt", symbol, body.model_dump()))


@router.post(
    "/markets/{symbol}/resume",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Lift an operator's halt (admin)",
)
async def resume_market(
    symbol: Annotated[str, Path(max_length=64)], svc: Svc, p: Annotated[Principal, ADMINS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.MarketResumeRequested(ts, symbol)

    return await write(svc, p, build, idem, ("resume", symbol))
