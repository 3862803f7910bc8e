"""Execution against the impact model: the price a market's liquidation inventory would fill at.

Owns the translation of a market's impact spec (a square-root model, or a book of levels around the
mark) into one price for a lot, rounded against the fund; the slippage it costs is the fund's.
"""

from __future__ import annotations

from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.engine.types import MarketRecord
from fluidmargin.risk.liquidation import impact


def impact_price(m: MarketRecord, size: int) -> int:
    """The price ``size`` (signed inventory: a long is sold) of market ``m`` fills at."""
    spec = m.spec.liquidation.impact
    mark = m.mark_q
    assert mark is not None
    side = impact.Side.SELL if size > 0 else impact.Side.BUY
    if spec.model == "sqrt":
        return impact.sqrt_impact_price_q(
            mark, side, abs(size), spec.daily_volume_base_q, spec.sigma_ppm, spec.coefficient_ppm
        )
    if side is impact.Side.SELL:
        levels = [(div_round(mark * (PPM - off), PPM, Rounding.FLOOR), qty) for off, qty in spec.book]
    else:
        levels = [(div_round(mark * (PPM + off), PPM, Rounding.CEIL), qty) for off, qty in spec.book]
    fill = impact.walk_book(levels, side, abs(size), mark)
    if fill.unfilled_base_q:
        worst = min(p for p, _ in levels) if side is impact.Side.SELL else max(p for p, _ in levels)
        value = (fill.avg_price_q or 0) * fill.filled_base_q + worst * fill.unfilled_base_q
        rounding = Rounding.FLOOR if side is impact.Side.SELL else Rounding.CEIL
        return max(div_round(value, abs(size), rounding), 1)
    assert fill.avg_price_q is not None
    return max(fill.avg_price_q, 1)
