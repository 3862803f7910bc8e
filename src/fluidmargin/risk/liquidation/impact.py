"""Execution of a liquidation against liquidity: square-root impact and an order-book walk.

Everything rounds against the taker (the liquidated side): a sell gets a price rounded down, a
buy a price rounded up. Sells never fill above the mark and buys never below it: price improvement
beyond the mark is not credited (conservative for the insurance fund's estimate).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, Rounding, div_round


class Side(enum.IntEnum):
    """The taker's side."""

    BUY = 1
    SELL = -1


def isqrt_ceil_ratio(num: int, den: int) -> int:
    """``ceil(sqrt(num / den))`` exactly, for ``num >= 0``, ``den > 0``."""
    if num < 0 or den <= 0:
        raise ValidationError("isqrt_ceil_ratio needs num >= 0 and den > 0")
    t = div_round(num, den, Rounding.CEIL)  # x*x >= num/den  <=>  x*x >= ceil(num/den)
    return 0 if t == 0 else math.isqrt(t - 1) + 1


def sqrt_impact_price_q(
    mark_price_q: int,
    side: Side,
    size_base_q: int,
    daily_volume_base_q: int,
    sigma_ppm: int,
    coefficient_ppm: int,
) -> int:
    """Fill price under square-root impact: ``mark * (1 ± coefficient * sigma * sqrt(size / volume))``.

    ``sigma_ppm`` is the daily volatility and ``coefficient_ppm`` the impact coefficient (1e6 = 1.0).
    The price move is computed exactly as one integer square root, rounded up (against the taker);
    a sell never goes below zero.
    """
    if mark_price_q <= 0 or daily_volume_base_q <= 0:
        raise ValidationError("mark price and daily volume must be positive")
    if size_base_q < 0 or sigma_ppm < 0 or coefficient_ppm < 0:
        raise ValidationError("size, sigma and coefficient must be >= 0")
    # delta = mark * c/1e6 * sigma/1e6 * sqrt(size/vol) = sqrt(mark² c² sigma² size / (vol * 1e24))
    num = (mark_price_q * coefficient_ppm * sigma_ppm) ** 2 * size_base_q
    delta = isqrt_ceil_ratio(num, daily_volume_base_q * PPM**4)
    if side is Side.BUY:
        return mark_price_q + delta
    return max(mark_price_q - delta, 0)


@dataclass(frozen=True, slots=True)
class BookFill:
    """Result of walking the book: average price (None when nothing filled), filled and unfilled size."""

    avg_price_q: int | None
    filled_base_q: int
    unfilled_base_q: int


def walk_book(levels: Sequence[tuple[int, int]], side: Side, size_base_q: int, mark_price_q: int) -> BookFill:
    """Fill ``size`` against ``levels`` ``[(price_q, size_base_q), ...]`` (bids for a sell, asks for a buy).

    Levels are taken best price first (stable for equal prices); each level's price is capped at the
    mark (a sell fills at ``min(level, mark)``, a buy at ``max(level, mark)``). The average price is
    the exact size-weighted mean rounded against the taker.
    """
    if size_base_q < 0:
        raise ValidationError("size must be >= 0")
    if mark_price_q <= 0:
        raise ValidationError("mark price must be positive")
    for price, qty in levels:
        if price <= 0 or qty < 0:
            raise ValidationError(f"bad book level ({price}, {qty})")
    ordered = sorted(levels, key=lambda lv: side * lv[0])  # best for the taker first, stable
    rest = size_base_q
    value = 0  # sum of price_q * base_q
    for price, qty in ordered:
        if rest == 0:
            break
        take = min(rest, qty)
        fill_price = min(price, mark_price_q) if side is Side.SELL else max(price, mark_price_q)
        value += fill_price * take
        rest -= take
    filled = size_base_q - rest
    if filled == 0:
        return BookFill(None, 0, rest)
    avg = div_round(value, filled, Rounding.FLOOR if side is Side.SELL else Rounding.CEIL)
    return BookFill(avg, filled, rest)
