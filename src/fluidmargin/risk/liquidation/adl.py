"""Auto-deleveraging (ADL): rank the bankrupt position's counterparties and close them in order.

Ranking as BitMEX publishes it (support article "What is Auto-Deleveraging", also bitmex.com/app/
autoDeleveraging; Binance and MEXC use the same formula)::

    Ranking = PNL Percentage * Effective Leverage   (if PNL percentage > 0)
            = PNL Percentage / Effective Leverage   (if PNL percentage < 0)
    Effective Leverage = abs(Mark Value) / (Mark Value - Bankrupt Value)
    PNL percentage     = (Mark Value - Avg Entry Value) / abs(Avg Entry Value)

Here PnL percentage is taken on the **entry notional** (not on margin), as BitMEX does:
``upnl / |entry notional|``. ``Mark Value - Bankrupt Value`` is the position's equity (what is
left before it is bankrupt), so effective leverage is ``|mark notional| / equity``. Scores are exact
Fractions; the queue is a total order: score descending, then larger mark notional, then smaller
account id.

The indicator lights follow BitMEX's worked example (autoDeleveragingExamples): the percentile of a
position is its *cumulative quantity* in the ranked queue over the total quantity, in 20 % steps;
the top 20 % shows five lights, the last 20 % one light (so a position holding more than 20 % of
the side's quantity never shows five lights, and a sole position shows one).

Deleveraging fills the bankrupt size from the head of the queue, the last one partially, all at
the bankruptcy price.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import Rounding, div_round

LIGHTS = 5  # quintiles shown by the indicator


@dataclass(frozen=True, slots=True)
class AdlCandidate:
    """One open position that could be deleveraged (quote figures in quote quantums)."""

    account_id: int
    size_base_q: int  # signed: > 0 long, < 0 short
    upnl_quote_q: int  # unrealised PnL at mark
    entry_notional_quote_q: int  # |size| * average entry price, > 0
    mark_notional_quote_q: int  # |size| * mark, > 0
    equity_quote_q: int  # mark value - bankrupt value, > 0


@dataclass(frozen=True, slots=True)
class RankedPosition:
    """A place in the ADL queue."""

    account_id: int
    size_base_q: int  # signed
    mark_notional_quote_q: int
    score: Fraction
    lights: int  # 1..5


@dataclass(frozen=True, slots=True)
class AdlFill:
    """A reduction forced on one counterparty at the bankruptcy price."""

    account_id: int
    reduction_base_q: int  # > 0, closed amount
    position_delta_base_q: int  # signed change to the counterparty's position
    price_q: int


def adl_score(
    upnl_quote_q: int, entry_notional_quote_q: int, mark_notional_quote_q: int, equity_quote_q: int
) -> Fraction:
    """BitMEX ranking: PnL% * effective leverage when in profit, PnL% / effective leverage in loss."""
    if entry_notional_quote_q <= 0 or mark_notional_quote_q <= 0:
        raise ValidationError("ADL score needs positive entry and mark notionals")
    if equity_quote_q <= 0:
        raise ValidationError("ADL score needs positive equity (a bankrupt position is liquidated, not ranked)")
    pnl_pct = Fraction(upnl_quote_q, entry_notional_quote_q)
    leverage = Fraction(mark_notional_quote_q, equity_quote_q)
    return pnl_pct * leverage if pnl_pct > 0 else pnl_pct / leverage


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def adl_queue(candidates: Sequence[AdlCandidate], bankrupt_size_base_q: int) -> tuple[RankedPosition, ...]:
    """Ranked queue of the positions opposite ``bankrupt_size_base_q`` (signed), head first."""
    side = _sign(bankrupt_size_base_q)
    if side == 0:
        raise ValidationError("the bankrupt position has no size")
    ids = [c.account_id for c in candidates]
    if len(set(ids)) != len(ids):
        raise ValidationError("ADL candidates must have distinct account ids")
    scored = [
        (adl_score(c.upnl_quote_q, c.entry_notional_quote_q, c.mark_notional_quote_q, c.equity_quote_q), c)
        for c in candidates
        if _sign(c.size_base_q) == -side
    ]
    scored.sort(key=lambda sc: (-sc[0], -sc[1].mark_notional_quote_q, sc[1].account_id))
    total = sum(abs(c.size_base_q) for _, c in scored)
    out: list[RankedPosition] = []
    cum = 0
    for score, c in scored:
        cum += abs(c.size_base_q)
        quintile = div_round(LIGHTS * cum, total, Rounding.CEIL)  # 1 = top 20 %
        out.append(RankedPosition(c.account_id, c.size_base_q, c.mark_notional_quote_q, score, LIGHTS + 1 - quintile))
    return tuple(out)


def adl_lights(queue: Sequence[RankedPosition], account_id: int) -> int:
    """Indicator lights (1..5, 5 = first to be deleveraged) of an account; 0 if it is not in the queue."""
    for r in queue:
        if r.account_id == account_id:
            return r.lights
    return 0


def deleverage(
    queue: Sequence[RankedPosition], size_needed_base_q: int, bankruptcy_price_q: int
) -> tuple[tuple[AdlFill, ...], int]:
    """Close ``size_needed`` against the queue in order (last one partial); returns fills and the unfilled rest."""
    if size_needed_base_q < 0:
        raise ValidationError("size needed must be >= 0")
    if bankruptcy_price_q <= 0:
        raise ValidationError("bankruptcy price must be positive")
    fills: list[AdlFill] = []
    rest = size_needed_base_q
    for r in queue:
        if rest == 0:
            break
        take = min(rest, abs(r.size_base_q))
        if take == 0:
            continue
        fills.append(AdlFill(r.account_id, take, -_sign(r.size_base_q) * take, bankruptcy_price_q))
        rest -= take
    return tuple(fills), rest
