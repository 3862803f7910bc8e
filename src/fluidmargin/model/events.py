"""Events (past tense) and input commands (imperative at the edge, logged once accepted).

Every input the engine accepts is an *input event*; what the engine concludes from it is an
*output event*. Both go to the log with a sequence number. Each carries ``ts_ns`` (event time,
integer nanoseconds); inputs may carry an ``event_id`` for idempotency.

Inputs are defined here, outputs in :mod:`fluidmargin.model.outputs` and the base in
:mod:`fluidmargin.model.event_base`; this module is where callers import all of them from, with the
registry (:data:`EVENT_TYPES`) and the dict round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.event_base import Event, field_specs, field_type_error
from fluidmargin.model.outputs import (
    AccountStatusChanged,
    AuctionBidFilled,
    AuctionFinished,
    AuctionReset,
    AuctionStarted,
    AutoDeleveraged,
    BackstopTakeover,
    BadDebtSocialized,
    BatchNetted,
    FundingSettled,
    IndexPriceUpdated,
    InputRejected,
    InsuranceFundChanged,
    LiquidationExecuted,
    MarketHalted,
    MarketResumed,
    MarkPriceUpdated,
    OptionsSettled,
    OraclePriceRejected,
    OracleReanchored,
    ParameterChanged,
    PortfolioHedged,
    PositionLiquidated,
    PositionsLiquidated,
    ProposalActivated,
    ProposalOverridden,
    ProposalQueued,
    ProposalRefused,
    ProposalRolledBack,
    ProposalSettled,
    ValuationChanged,
    VaultSharesChanged,
    expand,
)

# outputs are defined in fluidmargin.model.outputs; ``events`` is the one place callers import them from
__all__ = [
    "EVENT_TYPES",
    "AccountStatusChanged",
    "AuctionBidFilled",
    "AuctionFinished",
    "AuctionReset",
    "AuctionStarted",
    "AutoDeleveraged",
    "BackstopTakeover",
    "BadDebtSocialized",
    "BatchNetted",
    "Event",
    "FundingSettled",
    "IndexPriceUpdated",
    "InputRejected",
    "InsuranceFundChanged",
    "LiquidationExecuted",
    "MarkPriceUpdated",
    "MarketHalted",
    "MarketResumed",
    "OptionsSettled",
    "OraclePriceRejected",
    "OracleReanchored",
    "ParameterChanged",
    "PortfolioHedged",
    "PositionLiquidated",
    "PositionsLiquidated",
    "ProposalActivated",
    "ProposalOverridden",
    "ProposalQueued",
    "ProposalRefused",
    "ProposalRolledBack",
    "ProposalSettled",
    "ValuationChanged",
    "VaultSharesChanged",
    "event_from_dict",
    "expand",
    "field_specs",
    "field_type_error",
]


# --- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountOpened(Event):
    account_id: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Deposited(Event):
    account_id: int
    asset: str
    amount_q: int  # quantums of the collateral asset
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class WithdrawalRequested(Event):
    account_id: int
    asset: str
    amount_q: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class PriceObserved(Event):
    """A raw price from one oracle source, as published (decimal text: may be 'NaN')."""

    source: str
    asset: str
    price: str
    confidence_ppm: int = 1_000_000
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class LastTradeObserved(Event):
    """The venue's last traded price of a market (an input to the mark price)."""

    market: str
    price_q: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class FundingRatePublished(Event):
    """A venue-published funding rate for the current interval (markets with source=published)."""

    market: str
    rate_e9: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class TradeFilled(Event):
    """A fill from the venue's matching engine for one account.

    ``size_delta_base_q`` is signed (+ buys). ``isolated_margin_quote_q`` moves quote collateral
    from the cross balance into the position's isolated margin (isolated mode only).
    """

    account_id: int
    market: str
    size_delta_base_q: int
    price_q: int
    fee_quote_q: int = 0
    margin_mode: str = "cross"
    leverage: int = 10
    isolated_margin_quote_q: int = 0
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class AccountsSeeded(Event):
    """Open many accounts at once with collateral and positions (a population, a migration).

    Columns are parallel lists. Accounts: ``account_ids`` with ``deposits_quote_q``. Positions:
    ``pos_account`` (index into account_ids), ``pos_market`` (symbol), signed ``pos_size_base_q``,
    entry ``pos_price_q``, ``pos_isolated`` (0/1), ``pos_iso_margin_quote_q`` (moved from the
    account's deposit) and ``pos_leverage``. Each position must pass the same initial-margin check
    as a fill, or the whole event is rejected.
    """

    account_ids: list[int]
    deposits_quote_q: list[int]
    pos_account: list[int]
    pos_market: list[str]
    pos_size_base_q: list[int]
    pos_price_q: list[int]
    pos_isolated: list[int]
    pos_iso_margin_quote_q: list[int]
    pos_leverage: list[int]
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ClockAdvanced(Event):
    """Event time passed: accrue funding on every market and re-margin."""

    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class FundingSettleRequested(Event):
    account_id: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class AuctionBid(Event):
    """A liquidator takes up to ``size_base_q`` (> 0) of an auction's position at its current price.

    ``limit_price_q`` bounds the price: the most it pays for a long, the least it sells a short at.
    """

    auction_id: str
    account_id: int
    size_base_q: int
    limit_price_q: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class VaultDeposit(Event):
    """An LP moves quote collateral from its account into the backstop vault, for shares."""

    account_id: int
    amount_q: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class VaultWithdrawalRequested(Event):
    """An LP asks to redeem ``shares``; claimable after the vault's withdrawal delay."""

    account_id: int
    shares: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class VaultWithdrawalClaimed(Event):
    """An LP redeems its matured withdrawal request at the share price of now."""

    account_id: int
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class MarketHaltRequested(Event):
    """An operator halts new risk on a market (liquidations go on); it stays halted until resumed."""

    market: str
    reason: str
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class MarketResumeRequested(Event):
    """An operator lifts a halt (an automatic circuit breaker may still hold the market)."""

    market: str
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class OracleReanchorRequested(Event):
    """An operator sets a new reference level for an asset's oracle after a genuine gap.

    ``price`` is decimal text; empty adopts the level the sources' refused prints are pending at. The
    index moves to it (accounts are re-margined) but liquidations still need a quorum of sources.
    """

    asset: str
    price: str = ""
    reason: str = ""
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ParameterChangeRequested(Event):
    """An operator changes one risk parameter, by dotted name (see ``Engine.PARAMETERS``).

    ``market`` is empty for an engine-wide parameter. Integers only (ppm, quantums, ns, 0/1 flags).
    """

    market: str
    name: str
    value: int
    event_id: str = ""
    inputs: str = ""  # why, for the audit trail (a dynamic model's figures: "sigma=0.012;z=3.1;..."); not state
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class VolObserved(Event):
    """A mark implied vol for one listed option series (``underlying``, expiry, strike), from one source.

    ``vol`` is annualised decimal text as published ("0.65" = 65 %; may be 'NaN': refused with a reason).
    """

    source: str
    underlying: str
    expiry_ns: int
    strike_price_q: int
    vol: str
    confidence_ppm: int = 1_000_000
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class MarginModeChanged(Event):
    """An account chooses its margin mode: ``standard`` (tiered cross, isolated allowed), ``isolated``
    (isolated positions only) or ``portfolio`` (scenario-based over perps and options)."""

    account_id: int
    mode: str
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ProposalSubmitted(Event):
    """A proposal (``engine/governance.py``): parameter ``names[i]`` (as :class:`ParameterChangeRequested`
    names them; ``markets[i]`` empty engine-wide) to ``values[i]``; ``mode`` ``manual`` (waits for an admin)
    or ``auto``; evidence: ``evidence`` (a JSON object as text) and/or a report's SHA-256 and URI."""

    proposal_id: str
    markets: list[str]
    names: list[str]
    values: list[int]
    mode: str = "manual"
    evidence: str = ""
    evidence_digest: str = ""
    evidence_uri: str = ""
    by: str = ""  # who submitted it (the service: the API key's id)
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ProposalApproved(Event):
    """An admin approves a manual proposal: queued behind the timelock."""

    proposal_id: str
    by: str = ""
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ProposalRejected(Event):
    """An admin rejects a proposal that has not activated yet."""

    proposal_id: str
    reason: str = ""
    by: str = ""
    event_id: str = ""
    is_input: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ProposalCancelled(Event):
    """A proposal that has not activated yet is withdrawn."""

    proposal_id: str
    reason: str = ""
    by: str = ""
    event_id: str = ""
    is_input: ClassVar[bool] = True


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        AccountOpened,
        Deposited,
        WithdrawalRequested,
        PriceObserved,
        LastTradeObserved,
        FundingRatePublished,
        TradeFilled,
        AccountsSeeded,
        ClockAdvanced,
        FundingSettleRequested,
        AuctionBid,
        VaultDeposit,
        VaultWithdrawalRequested,
        VaultWithdrawalClaimed,
        MarketHaltRequested,
        MarketResumeRequested,
        OracleReanchorRequested,
        ParameterChangeRequested,
        VolObserved,
        MarginModeChanged,
        InputRejected,
        OraclePriceRejected,
        IndexPriceUpdated,
        MarkPriceUpdated,
        FundingSettled,
        AccountStatusChanged,
        PositionLiquidated,
        InsuranceFundChanged,
        BadDebtSocialized,
        MarketHalted,
        MarketResumed,
        OracleReanchored,
        ParameterChanged,
        PositionsLiquidated,
        BatchNetted,
        LiquidationExecuted,
        AuctionStarted,
        AuctionBidFilled,
        AuctionReset,
        AuctionFinished,
        BackstopTakeover,
        AutoDeleveraged,
        VaultSharesChanged,
        OptionsSettled,
        ValuationChanged,
        PortfolioHedged,
        ProposalSubmitted,
        ProposalApproved,
        ProposalRejected,
        ProposalCancelled,
        ProposalQueued,
        ProposalActivated,
        ProposalRefused,
        ProposalRolledBack,
        ProposalOverridden,
        ProposalSettled,
    )
}


def event_from_dict(d: dict[str, Any]) -> Event:
    """Rebuild an event from its dict; unknown types and fields are a ValidationError."""
    d = dict(d)
    name = d.pop("type", None)
    cls = EVENT_TYPES.get(str(name))
    if cls is None:
        raise ValidationError(f"unknown event type {name!r}")
    specs = field_specs(cls)
    extra = set(d).difference(n for n, _w, _r in specs)
    if extra:
        raise ValidationError(f"{name}: unknown fields {sorted(extra)}")
    for key, _want, required in specs:
        if required and key not in d:
            raise ValidationError(f"{name}: missing field {key!r}")
    event = cls(**d)
    bad = field_type_error(event)
    if bad:
        raise ValidationError(bad)
    return event
