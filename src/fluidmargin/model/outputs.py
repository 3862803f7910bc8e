"""Output events: what the engine concludes from an input (rejections, prices, statuses, liquidations, the
waterfall's steps, halts, parameter changes, governance). Each goes to the log after its input."""

from __future__ import annotations

from dataclasses import dataclass

from fluidmargin.model.event_base import Event


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
