"""Events (past tense) and input commands (imperative at the edge, logged once accepted).

Every input the engine accepts is an *input event*; what the engine concludes from it is an
*output event*. Both go to the log with a sequence number. Each carries ``ts_ns`` (event time,
integer nanoseconds); inputs may carry an ``event_id`` for idempotency.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from fluidmargin.core.errors import ValidationError


@dataclass(frozen=True, slots=True)
class Event:
    ts_ns: int
    is_input: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name, _want, _required in field_specs(type(self))}
        d["type"] = type(self).__name__
        return d


_SPECS: dict[type, tuple[tuple[str, str, bool], ...]] = {}


def field_specs(cls: type) -> tuple[tuple[str, str, bool], ...]:
    """``(name, declared type, required)`` of each field of an event class, in order (cached: the hot
    path asks for every input)."""
    specs = _SPECS.get(cls)
    if specs is None:
        specs = _SPECS[cls] = tuple(
            (
                f.name,
                f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
    return specs


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


# --- outputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputRejected(Event):
    input_type: str
    reason: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class OraclePriceRejected(Event):
    source: str
    asset: str
    price: str
    reason: str


@dataclass(frozen=True, slots=True)
class IndexPriceUpdated(Event):
    asset: str
    price_q: int


@dataclass(frozen=True, slots=True)
class MarkPriceUpdated(Event):
    market: str
    price_q: int
    funding_rate_e9: int
    funding_index_fidx: int


@dataclass(frozen=True, slots=True)
class FundingSettled(Event):
    account_id: int
    market: str
    amount_quote_q: int  # + received, - paid


@dataclass(frozen=True, slots=True)
class AccountStatusChanged(Event):
    account_id: int
    bucket: str  # "cross" or the market of an isolated position
    old: str
    new: str
    health_quote_q: int


@dataclass(frozen=True, slots=True)
class PositionLiquidated(Event):
    account_id: int
    market: str
    size_base_q: int  # size closed (signed, as held)
    price_q: int
    realized_pnl_quote_q: int
    fee_quote_q: int


@dataclass(frozen=True, slots=True)
class InsuranceFundChanged(Event):
    delta_quote_q: int
    balance_quote_q: int
    reason: str  # liquidation_fee, shortfall, auction, slippage, backstop, adl, keeper
    account_id: int
    fund: str = "main"  # or the market of an isolated fund


@dataclass(frozen=True, slots=True)
class PositionsLiquidated(Event):
    """Many simple buckets of one market (isolated, or single-position cross) liquidated at once, as columns.

    Per account ``i`` it stands for: status ``old_status[i]`` -> liquidating (health
    ``health_before[i]``), funding settled ``funding[i]`` (+ received), ``sizes[i]`` (signed, as held)
    closed at ``price_q`` realising ``realized[i]`` with penalty ``fees[i]``, then liquidating ->
    ``new_status[i]`` (health ``health_after[i]``). :meth:`expand` gives those events one by one.
    """

    market: str
    bucket: str  # "cross", or "isolated:<market>"
    price_q: int
    account_ids: list[int]
    old_status: list[str]
    health_before: list[int]
    funding: list[int]
    sizes: list[int]
    realized: list[int]
    fees: list[int]
    shortfalls: list[int]  # what the insurance fund put back (one fund event covers them all)
    new_status: list[str]  # healthy, or bankrupt when nothing was left
    health_after: list[int]

    def expand(self) -> list[Event]:
        out: list[Event] = []
        t, m = self.ts_ns, self.market
        for i, aid in enumerate(self.account_ids):
            out.append(
                AccountStatusChanged(t, aid, self.bucket, self.old_status[i], "liquidating", self.health_before[i])
            )
            if self.funding[i]:
                out.append(FundingSettled(t, aid, m, self.funding[i]))
            out.append(PositionLiquidated(t, aid, m, self.sizes[i], self.price_q, self.realized[i], self.fees[i]))
            out.append(
                AccountStatusChanged(t, aid, self.bucket, "liquidating", self.new_status[i], self.health_after[i])
            )
        return out


def expand(events: list[Event]) -> list[Event]:
    """``events`` with every columnar :class:`PositionsLiquidated` replaced by its per-account events."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, PositionsLiquidated):
            out.extend(e.expand())
        else:
            out.append(e)
    return out


@dataclass(frozen=True, slots=True)
class BatchNetted(Event):
    """One tick's liquidation closes of a market, netted: only ``net_base_q`` goes on to execution."""

    market: str
    sold_base_q: int  # closed longs (the protocol took them: it must sell)
    bought_base_q: int  # closed shorts
    net_base_q: int  # signed protocol inventory left to execute
    price_q: int  # the mark the crossed part settled at
    fund_pnl_quote_q: int = 0  # the crossed parts' rounding residue (only when nothing is left)


@dataclass(frozen=True, slots=True)
class LiquidationExecuted(Event):
    """A liquidation order sent to the market under the impact model (slippage borne by the fund)."""

    market: str
    size_base_q: int  # signed protocol inventory executed (+ sold a long)
    price_q: int
    mark_q: int
    slippage_quote_q: int
    fund_pnl_quote_q: int


@dataclass(frozen=True, slots=True)
class AuctionStarted(Event):
    auction_id: str
    market: str
    size_base_q: int  # signed inventory on offer (+ a long for sale)
    ref_price_q: int  # mark at the start
    start_price_q: int
    account_ids: list[int]


@dataclass(frozen=True, slots=True)
class AuctionBidFilled(Event):
    auction_id: str
    account_id: int
    size_base_q: int  # signed change to the bidder's position
    price_q: int
    fund_pnl_quote_q: int  # what the insurance fund made (+) or lost on this part
    keeper_reward_quote_q: int


@dataclass(frozen=True, slots=True)
class AuctionReset(Event):
    auction_id: str
    reason: str  # tail or cusp
    ref_price_q: int
    start_price_q: int


@dataclass(frozen=True, slots=True)
class AuctionFinished(Event):
    auction_id: str
    how: str  # cleared or backstop


@dataclass(frozen=True, slots=True)
class BackstopTakeover(Event):
    auction_id: str
    market: str
    size_base_q: int  # signed change to the vault's position
    price_q: int
    fund_pnl_quote_q: int


@dataclass(frozen=True, slots=True)
class AutoDeleveraged(Event):
    """A counterparty's position reduced at the bankruptcy price to absorb a bankrupt account's loss."""

    account_id: int
    market: str
    size_base_q: int  # signed change to the counterparty's position
    price_q: int
    rank: int  # 1 = head of the queue
    bankrupt_account_id: int
    fund_pnl_quote_q: int  # what the fund recovered from this reduction


@dataclass(frozen=True, slots=True)
class VaultSharesChanged(Event):
    account_id: int
    shares_delta: int
    amount_quote_q: int  # quote moved (+ into the vault)
    total_shares: int
    vault_equity_quote_q: int


@dataclass(frozen=True, slots=True)
class MarketHalted(Event):
    """A circuit breaker stopped new risk on a market (liquidations keep their own policy)."""

    market: str
    reason: str


@dataclass(frozen=True, slots=True)
class MarketResumed(Event):
    market: str


@dataclass(frozen=True, slots=True)
class OracleReanchored(Event):
    """An asset's oracle took a new reference level: the jump limit is judged from it from now on.

    ``reason`` says why: ``operator: ...`` (an :class:`OracleReanchorRequested`) or the sources' consistent
    prints that were refused as a jump (automatic re-anchoring, see ``OraclePolicy.reanchor_prints``).
    """

    asset: str
    old_price_q: int  # the index before (0: none)
    price_q: int
    reason: str


@dataclass(frozen=True, slots=True)
class ParameterChanged(Event):
    market: str
    name: str
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class BadDebtSocialized(Event):
    """The insurance fund could not cover a shortfall: an explicit, last-resort loss."""

    account_id: int
    amount_quote_q: int
    fund: str = "main"  # the fund that ran dry


@dataclass(frozen=True, slots=True)
class OptionsSettled(Event):
    """A series expired: every position settled at the underlying's index (``price_q``), as columns.

    ``amounts_quote_q[i]`` is what account ``account_ids[i]`` received (+) or paid (-) for its
    ``sizes_base_q[i]`` contracts: a holder receives floor(intrinsic), a writer pays ceil.
    """

    market: str
    price_q: int  # the settlement (index) price
    payoff_price_q: int  # intrinsic value per contract
    account_ids: list[int]
    sizes_base_q: list[int]
    amounts_quote_q: list[int]


@dataclass(frozen=True, slots=True)
class ValuationChanged(Event):
    """A portfolio account's valuation became blocked (``reason``: why it cannot be valued) or valid again
    (empty ``reason``). A blocked account opens no risk, withdraws nothing and is not liquidated."""

    account_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PortfolioHedged(Event):
    """A portfolio liquidation hedged the account's remaining delta with the perpetual at the mark."""

    account_id: int
    market: str
    size_base_q: int  # signed change to the account's perp position
    price_q: int
    delta_before: str  # the portfolio's delta in the underlying before the hedge (decimal text)


@dataclass(frozen=True, slots=True)
class ProposalQueued(Event):
    """A proposal passed its approval (or was submitted in auto mode): it activates at ``activates_ns``."""

    proposal_id: str
    activates_ns: int


@dataclass(frozen=True, slots=True)
class ProposalActivated(Event):
    """A proposal's changes applied (``ParameterChanged`` follow), watched until ``watch_until_ns``."""

    proposal_id: str
    markets: list[str]
    names: list[str]
    olds: list[int]
    values: list[int]
    watch_until_ns: int


@dataclass(frozen=True, slots=True)
class ProposalRefused(Event):
    """A queued proposal could not activate (the epoch cap or the config's checks refused it): nothing applied."""

    proposal_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProposalRolledBack(Event):
    """A live metric since activation (``bad_debt_quote_q``, ``fund_drawdown_quote_q``, ``liquidations``)
    reached its threshold within the watch window: the values before restored (``ParameterChanged`` follow),
    but not those set since by others nor those the config's checks refuse now (``skipped``, why)."""

    proposal_id: str
    metric: str
    value: int
    threshold: int
    markets: list[str]
    names: list[str]
    values: list[int]
    skipped: list[str]


@dataclass(frozen=True, slots=True)
class ProposalOverridden(Event):
    """A proposal's parameter was set by ``by`` (``operator``, ``proposal:<id>``): ``effect`` ``cancelled`` (not
    active yet: it never will be) or ``released`` (active: a rollback leaves that parameter alone)."""

    proposal_id: str
    market: str
    name: str
    effect: str
    by: str


@dataclass(frozen=True, slots=True)
class ProposalSettled(Event):
    """A proposal's watch window passed without a rollback: its changes stand."""

    proposal_id: str


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


def _type_error(name: str, want: str, v: Any) -> str:
    if want == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{name}: expected an integer, got {v!r}"
    elif want == "str":
        if not isinstance(v, str):
            return f"{name}: expected a string, got {v!r}"
    elif want.startswith("list[") and want.endswith("]"):
        if not isinstance(v, list):
            return f"{name}: expected a list, got {type(v).__name__}"
        inner = want[5:-1]
        for i, x in enumerate(v):
            bad = _type_error(f"{name}[{i}]", inner, x)
            if bad:
                return bad
    return ""


def field_type_error(event: Event) -> str:
    """Empty if every field of ``event`` has its declared type (ints are never bools), else why not."""
    for name, want, _required in field_specs(type(event)):
        v = getattr(event, name)
        if (want == "int" and type(v) is int) or (want == "str" and type(v) is str):
            continue  # the common case, without building a field label
        bad = _type_error(f"{type(event).__name__}.{name}", want, v)
        if bad:
            return bad
    return ""
