"""Request and response models (pydantic): the OpenAPI document is generated from these.

Every quantum is a decimal string in natural units (``Dec``); JSON numbers are refused for them.
The event models are generated from the engine's event dataclasses with the wire rule of
:mod:`fluidmargin.service.codec`, one model per type, discriminated by ``type``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from fluidmargin.model import events as ev
from fluidmargin.service.codec import DECIMAL_PATTERN, event_fields, wire_name
from fluidmargin.service.roles import Role

Dec = Annotated[
    str,
    Field(
        pattern=DECIMAL_PATTERN,
        description="a decimal string in natural units (never a JSON number)",
        examples=["12.5"],
    ),
]
DecOut = Annotated[str, Field(description="a decimal string in natural units", examples=["12.5"])]
AccountId = Annotated[int, Field(ge=0, le=2**63 - 1, description="engine account id")]
CLIENT_ACCOUNT_IDS = 2**40  # an id a client chooses for a new account lies below it (never the vault's)
NewAccountId = Annotated[int, Field(ge=0, lt=CLIENT_ACCOUNT_IDS, description="an id below 2^40, not the vault's")]
MarginMode = Literal["cross", "isolated"]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Strict(BaseModel):
    """A request body: no unknown fields, no coercion (an int is a JSON integer, never "5", 5.0 or true)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- events -------------------------------------------------------------------------------------------

_PY = {"int": int, "str": str, "list[int]": list[int], "list[str]": list[str]}


def _event_model(cls: type[ev.Event]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "type": (Literal[cls.__name__], ...),
        "seq": (int, Field(description="the log record's sequence number")),
    }
    for name, typ, quantum in event_fields(cls):
        if quantum:
            fields[wire_name(name)] = (list[str] if typ.startswith("list") else str, ...)
        else:
            fields[name] = (_PY[typ], ...)
    model: type[BaseModel] = create_model(cls.__name__ + "Event", __doc__=cls.__doc__ or cls.__name__, **fields)
    return model


# a columnar PositionsLiquidated is always expanded into per-account events on the wire
EVENT_MODELS = tuple(_event_model(c) for n, c in ev.EVENT_TYPES.items() if n != "PositionsLiquidated")
Event = Annotated[Union[EVENT_MODELS], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007


class ErrorOut(BaseModel):
    detail: str = Field(description="why the request was refused")


class RejectedOut(ErrorOut):
    """The engine refused the input (it is logged, with its rejection)."""

    seq: int = Field(description="the refused input's sequence number")
    events: list[Event]


class WriteResult(BaseModel):
    """A write acknowledged: durable in the log at ``durable_seq`` or before."""

    seq: int = Field(description="the input's sequence number")
    ts_ns: int = Field(description="the event time the service stamped on the input")
    durable_seq: int
    replayed: bool = Field(description="true when an Idempotency-Key replay returned the first outcome")
    events: list[Event] = Field(
        description="the input, then every event it caused that this key may see "
        "(an account key: its own accounts' and market-wide events; a publisher: market-wide events)"
    )


class EventsPage(BaseModel):
    events: list[Event]
    next_seq: int = Field(description="ask for after=next_seq - 1 to continue")


# --- keys -----------------------------------------------------------------------------------------------


class KeyCreate(Strict):
    role: Role
    name: Annotated[str, Field(max_length=64)] = ""
    account_ids: Annotated[list[AccountId], Field(max_length=1000)] = []
    source: Name | None = Field(None, description="publisher: the oracle source name its prices carry")
    rate_per_s: Annotated[float, Field(gt=0, le=1e6)] | None = Field(None, description="default: the service's")
    burst: Annotated[int, Field(ge=1, le=10**7)] | None = None


class KeyOut(BaseModel):
    key_id: str
    role: Role
    name: str
    account_ids: list[int]
    source: str | None
    created_ns: int
    revoked: bool
    rate_per_s: float | None
    burst: int | None


class KeyCreated(KeyOut):
    api_key: str = Field(description="the key itself: shown once, stored only as its SHA-256")


# --- accounts -------------------------------------------------------------------------------------------


class AccountCreate(Strict):
    account_id: NewAccountId | None = Field(None, description="default: the lowest free id")
    parent_id: AccountId | None = Field(None, description="open it as a sub-account of this account")


class SubAccountCreate(Strict):
    account_id: NewAccountId | None = Field(None, description="default: the lowest free id")


class AccountCreated(WriteResult):
    account_id: int
    parent_id: int | None


class Balance(BaseModel):
    asset: str
    amount: DecOut
    value: DecOut = Field(description="weighted collateral value in the quote asset")


class AdlRank(BaseModel):
    rank: int = Field(description="1 = first to be deleveraged")
    of: int
    lights: int = Field(description="1..5, 5 = top 20 % of the queue")
    score: str = Field(description="exact ADL score (a fraction)")


class GapRiskView(BaseModel):
    """Gap risk of a position under its market's jump-diffusion model (floats nowhere: decimal strings)."""

    model: Literal["merton", "kou", "gbm"]
    probability: DecOut = Field(
        description="P(the mark touches the bankruptcy price within horizon_s): diffusion barrier crossing plus "
        "jumps, 12 decimals rounded up"
    )
    target: DecOut = Field(description="the probability the add-on keeps the position under")
    horizon_s: DecOut = Field(description="the liquidation horizon in seconds (oracle latency + detection + execution)")
    bankruptcy_price: DecOut | None = Field(
        description="mark at which the bucket's equity is zero, all else held, rounded toward the mark "
        "(null: a long no positive price bankrupts)"
    )
    addon_quote: DecOut = Field(
        description="extra collateral (quote asset) that brings the probability to the target or under, rounded up"
    )


class PositionView(BaseModel):
    market: str
    side: Literal["long", "short"]
    size: DecOut = Field(description="signed size in base units")
    entry_price: DecOut
    mark_price: DecOut | None
    margin_mode: MarginMode
    leverage: int
    isolated_margin: DecOut | None
    notional: DecOut
    value: DecOut
    unrealized_pnl: DecOut = Field(description="at the mark, net of funding owed")
    funding_owed: DecOut
    maintenance_margin: DecOut
    initial_margin: DecOut
    health: DecOut | None = Field(description="isolated: equity - maintenance of the position's bucket")
    status: str = Field(description="the status of the bucket holding it")
    liquidation_price: DecOut | None = Field(description="mark at which its bucket reaches maintenance")
    gap_risk: GapRiskView | None = Field(
        description="gap risk under the market's configured model (null: none configured, or no single-position "
        "bankruptcy price: a portfolio account's perpetual)"
    )
    adl: AdlRank | None = Field(description="place in the ADL queue (absent in what-if results)")


class AccountRisk(BaseModel):
    """The cross bucket's figures (isolated positions carry their own)."""

    equity: DecOut
    maintenance_margin: DecOut
    initial_margin: DecOut
    health: DecOut = Field(description="equity - maintenance margin")
    free_collateral: DecOut = Field(description="equity - initial margin")
    withdrawable: DecOut = Field(
        description="quote that may be withdrawn now: initial margin kept with unrealised profit counted at "
        "withdraw_upnl_weight_ppm (losses in full), at most the quote balance; 0 while withdrawals are blocked"
    )
    positions: list[PositionView]


class VaultStake(BaseModel):
    shares: DecOut
    pending_shares: DecOut | None
    claimable_at_ns: int | None


class AccountView(AccountRisk):
    margin_mode: Literal["standard", "isolated", "portfolio"]
    valuation_blocked: str | None = Field(description="portfolio accounts: why it cannot be valued now (null: it can)")
    account_id: int
    parent_id: int | None
    sub_accounts: list[int]
    status: str
    balances: list[Balance]
    vault: VaultStake | None
    now_ns: int = Field(description="engine time the figures are as of")


class SubAccountsOut(BaseModel):
    account_id: int
    sub_accounts: list[int]


class Transfer(Strict):
    asset: Name | None = Field(None, description="collateral asset (default: the quote asset)")
    amount: Dec


class Fill(Strict):
    market: Name
    size: Dec = Field(description="signed: + buys, - sells (base units)")
    price: Dec
    fee: Dec = "0"
    margin_mode: MarginMode = "cross"
    leverage: Annotated[int, Field(ge=1, le=1000)] = 10
    isolated_margin: Dec = Field("0", description="quote moved into the isolated position (isolated only)")


class WhatIfOut(BaseModel):
    accepted: bool = Field(description="whether the engine's pre-trade check would accept the fill now")
    reason: str | None
    before: AccountRisk
    after: AccountRisk | None = Field(description="the account after the fill (null if it could not be applied)")


# --- markets, oracle, prices ---------------------------------------------------------------------------------


class MarketView(BaseModel):
    symbol: str
    base_asset: str
    size_decimals: int
    mark_price: DecOut | None
    index_price: DecOut | None
    last_trade_price: DecOut | None
    funding_rate: DecOut = Field(description="per funding interval")
    funding_interval_s: int
    funding_index: DecOut
    open_interest: DecOut = Field(description="in base units (one side)")
    halted: bool
    halt_reason: str | None
    liquidation_execution: str
    insurance_fund: str


class SourcePrice(BaseModel):
    source: str
    price: DecOut
    ts_ns: int


class OraclePolicyOut(BaseModel):
    max_staleness_ns: int
    max_jump_ppm: int
    min_confidence_ppm: int
    max_divergence_ppm: int
    min_sources: int
    aggregation: str
    min_sources_liquidation: int
    single_source_liquidation: bool
    jump_window_ns: int
    reanchor_prints: int
    reanchor_after_ns: int
    reanchor_tolerance_ppm: int
    divergence_halt_ns: int


class OracleAsset(BaseModel):
    asset: str
    index_price: DecOut | None
    index_ts_ns: int | None
    validity: str = Field(description="the index's validity as the engine would judge it at now_ns")
    index_sources: int = Field(description="sources the index agrees with")
    liquidation_grade: bool = Field(description="whether a breach is liquidated at this index now")
    set_aside: list[str] = Field(description="sources set aside for divergence (their prices do not count)")
    pending_level: DecOut | None = Field(description="a level refused as a jump, pending re-anchoring")
    sources: list[SourcePrice]
    policy: OraclePolicyOut


class OracleView(BaseModel):
    now_ns: int
    assets: list[OracleAsset]


class PriceIn(Strict):
    asset: Name
    price: Dec
    confidence: Dec = Field("1", description="0..1")


class ParameterChangeIn(Strict):
    market: str = Field("", max_length=64, description="empty for an engine-wide parameter")
    name: str = Field(max_length=64, description="a parameter name from GET /v1/risk-parameters' `changeable`")
    value: str = Field(
        pattern=r"^-?[0-9]{1,19}$", description="an integer in the parameter's own unit (ppm, quantums, ns, 0/1)"
    )


class HaltIn(Strict):
    reason: str = Field("", max_length=200)


class ReanchorIn(Strict):
    price: Dec | None = Field(None, description="the new reference level; absent: the pending level")
    reason: str = Field("", max_length=200)


# --- waterfall -------------------------------------------------------------------------------------------------


class AuctionView(BaseModel):
    auction_id: str
    market: str
    size: DecOut = Field(description="signed inventory on offer (+ a long for sale)")
    price: DecOut = Field(description="the price as of engine time now_ns (it moves in the bidders' favour)")
    ref_price: DecOut
    started_ns: int
    accounts: list[int] = Field(description="the liquidated accounts behind it (an account key: only its own)")
    stale: str | None
    keeper_incentive: DecOut
    now_ns: int


class Bid(Strict):
    account_id: AccountId
    size: Dec
    limit_price: Dec


class VaultView(BaseModel):
    configured: bool
    account_id: int | None
    equity: DecOut
    cash: DecOut
    notional: DecOut
    total_shares: DecOut
    max_leverage: int | None
    max_notional: DecOut | None
    withdrawal_delay_ns: int | None


class VaultDepositIn(Strict):
    account_id: AccountId
    amount: Dec


class VaultWithdrawIn(Strict):
    account_id: AccountId
    shares: Dec


class VaultClaimIn(Strict):
    account_id: AccountId


class FundView(BaseModel):
    fund: str
    balance: DecOut


class FundsView(BaseModel):
    funds: list[FundView]
    socialized_loss: DecOut


class RiskParameters(BaseModel):
    config: dict[str, Any] = Field(
        description="the engine config: quantums as decimal strings, their unit suffix dropped from the key"
    )


class Healthz(BaseModel):
    status: Literal["ok", "failed"]
    seq: int
    durable_seq: int
    now_ns: int
    accounts: int
    queued: int


# --- options and portfolio margin ---------------------------------------------------------------------------


class OptionMarketView(BaseModel):
    symbol: str
    underlying: str
    right: Literal["call", "put"]
    strike: DecOut
    expiry_ns: int
    size_decimals: int
    index_price: DecOut | None
    mark_vol: DecOut | None = Field(description="the published mark vol (annualised, 0.65 = 65 %), null if none")
    mark_vol_ts_ns: int | None
    mark_price: DecOut | None = Field(description="Black-76 value per contract at the index and mark vol")
    delta: DecOut | None
    gamma: DecOut | None
    vega: DecOut | None = Field(description="per 1.00 of vol")
    theta: DecOut | None = Field(description="per day, time passing")
    open_interest: DecOut
    settled: bool
    settlement_price: DecOut | None


class VolPoint(BaseModel):
    expiry_ns: int
    strike: DecOut
    vol: DecOut
    ts_ns: int
    source: str
    stale: bool


class VolSurfaceView(BaseModel):
    underlying: str
    now_ns: int
    points: list[VolPoint]


class VolIn(Strict):
    underlying: Name
    expiry_ns: Annotated[int, Field(ge=0, le=2**62)]
    strike: Dec
    vol: Dec = Field(description="annualised implied vol, e.g. '0.65'")
    confidence: Dec = "1"


class MarginModeIn(Strict):
    mode: Literal["standard", "isolated", "portfolio"]


class Greeks(BaseModel):
    delta: DecOut
    gamma: DecOut
    vega: DecOut
    theta: DecOut = Field(description="per day, time passing")


class PortfolioPosition(Greeks):
    market: str
    kind: Literal["perpetual", "option"]
    size: DecOut
    value: DecOut | None = Field(description="options: mark value, rounded down (perps: null)")


class ScenarioRow(BaseModel):
    index: int
    kind: str
    spot_shock: DecOut
    vol_shock: str
    dampening: DecOut
    pnl: DecOut


class UnderlyingRisk(BaseModel):
    underlying: str
    spot: DecOut
    worst_kind: str
    worst_index: int | None
    worst_pnl: DecOut
    maintenance_requirement: DecOut
    initial_requirement: DecOut
    scenarios: list[ScenarioRow]


class PortfolioView(BaseModel):
    account_id: int
    margin_mode: Literal["standard", "isolated", "portfolio"]
    valuation_blocked: str | None
    equity: DecOut
    maintenance_margin: DecOut
    initial_margin: DecOut
    health: DecOut
    positions: list[PortfolioPosition]
    total: Greeks
    underlyings: list[UnderlyingRisk]
    now_ns: int


# --- governance -----------------------------------------------------------------------------------------------


class ChangeIn(Strict):
    market: str = Field("", max_length=64, description="empty for an engine-wide parameter")
    name: str = Field(max_length=64, description="a parameter PUT /v1/risk-parameters may change")
    value: str = Field(
        pattern=r"^-?[0-9]{1,19}$", description="an integer in the parameter's own unit (ppm, quantums, ns, 0/1)"
    )


class ProposalIn(Strict):
    proposal_id: Name | None = Field(None, description="the proposal's id (default: P<the event time in ns>)")
    changes: Annotated[list[ChangeIn], Field(min_length=1, max_length=32)]
    mode: Literal["manual", "auto"] = Field(
        "manual", description="manual: waits for an admin's approval; auto: queued at once (an auto governance only)"
    )
    evidence: dict[str, Any] | None = Field(
        None, description="a JSON object (metrics before and after, the runs): integers and strings, no JSON floats"
    )
    evidence_digest: str = Field("", pattern=r"^([0-9a-f]{64})?$", description="SHA-256 (hex) of a report")
    evidence_uri: str = Field("", max_length=512, description="where the report is")


class ReasonIn(Strict):
    reason: str = Field("", max_length=200)


class ProposalChange(BaseModel):
    market: str
    name: str
    value: str = Field(description="the proposed value (an integer, as text)")
    old: str | None = Field(description="the value before the proposal activated (null: not activated)")
    current: str = Field(description="the parameter's value now")
    held: bool = Field(
        description="whether a rollback would restore it (false once an operator or a later proposal set it)"
    )


class ProposalFigures(BaseModel):
    bad_debt: DecOut = Field(description="socialised since activation")
    fund_drawdown: DecOut = Field(description="the insurance funds' total fall since activation")
    liquidations: int = Field(description="positions liquidated since activation")


class ProposalView(BaseModel):
    proposal_id: str
    state: Literal[
        "submitted", "queued", "active", "settled", "rolled_back", "rejected", "cancelled", "refused", "overridden"
    ]
    mode: Literal["manual", "auto"]
    changes: list[ProposalChange]
    evidence: dict[str, Any] | None
    evidence_digest: str
    evidence_uri: str
    submitted_ns: int
    submitted_by: str
    decided_ns: int | None = Field(description="approved, rejected or cancelled at")
    decided_by: str
    activates_ns: int | None = Field(description="the end of its timelock (null: not queued)")
    activated_ns: int | None
    watch_until_ns: int | None = Field(description="rolled back until then if a figure reaches its threshold")
    ended_ns: int | None
    reason: str = Field(description="why it was rejected, cancelled, refused, overridden or rolled back")
    figures: ProposalFigures | None = Field(description="since activation (null: not activated)")


class GovernanceView(BaseModel):
    now_ns: int
    guardrails: dict[str, Any] | None = Field(description="the engine config's governance section (null: off)")
    proposals: list[ProposalView]
