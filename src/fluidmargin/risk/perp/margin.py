"""Margin maths for linear perpetuals: size tiers, initial and maintenance margin, liquidation price.

All functions are pure and exact (integers, or Fractions where a closed form needs them).
Requirements round up, values round down: rounding favours the system's solvency.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, div_round, notional_quote_q, pow10
from fluidmargin.model.instruments import Bracket, BracketModel

DRIFT_IMF_PRECISION = 1_000_000  # Drift SPOT_IMF_PRECISION
DRIFT_SIZE_DECIMALS = 9  # Drift AMM_RESERVE_PRECISION (base sizes are 1e9)


def bracket_for(model: BracketModel, notional_quote_q: int) -> Bracket:
    """The last bracket whose floor is <= notional (Binance's lookup rule)."""
    chosen = model.brackets[0]
    for b in model.brackets:
        if b.floor_quote_q <= notional_quote_q:
            chosen = b
        else:
            break
    return chosen


def drift_size_premium_ratio(size_1e9: int, imf_factor: int, ratio: int, precision: int) -> int:
    """Drift v2 ``calculate_size_premium_liability_weight``: margin ratio growing with sqrt(size).

    ``size_1e9`` is the base size at 1e9, ``imf_factor`` at 1e6, ``ratio`` at ``precision``.
    Integer divisions floor, exactly as Drift's u128 maths does.
    """
    if imf_factor == 0:
        return ratio
    size_sqrt = math.isqrt(size_1e9 * 10 + 1)
    numerator = ratio - ratio // 5
    premium = numerator + size_sqrt * imf_factor // (100_000 * DRIFT_IMF_PRECISION // precision)
    return max(ratio, premium)


def _drift_size_1e9(size_abs_base_q: int, size_decimals: int) -> int:
    shift = DRIFT_SIZE_DECIMALS - size_decimals
    return size_abs_base_q * pow10(shift) if shift >= 0 else size_abs_base_q // pow10(-shift)


def maintenance_ratio_ppm(model: BracketModel, notional_quote_q: int, size_abs_base_q: int, size_decimals: int) -> int:
    """Maintenance rate (ppm) that applies to this notional and size (before the cum deduction)."""
    mmr = bracket_for(model, notional_quote_q).mmr_ppm
    if model.sqrt_imf_factor_ppm:
        mmr = drift_size_premium_ratio(
            _drift_size_1e9(size_abs_base_q, size_decimals), model.sqrt_imf_factor_ppm, mmr, PPM
        )
    return mmr


def maintenance_quote_q(
    model: BracketModel,
    notional_quote_q: int,
    size_abs_base_q: int = 0,
    size_decimals: int = 0,
    entry_notional_quote_q: int | None = None,
) -> int:
    """Maintenance margin, rounded up: notional * mmr - cum (+ close fee), never below zero."""
    basis = entry_notional_quote_q if (model.mm_on_entry and entry_notional_quote_q is not None) else notional_quote_q
    b = bracket_for(model, basis)
    mm = div_round(basis * b.mmr_ppm, PPM, Rounding.CEIL) - b.cum_quote_q
    if model.sqrt_imf_factor_ppm:
        ratio = maintenance_ratio_ppm(model, basis, size_abs_base_q, size_decimals)
        mm = max(mm, div_round(basis * ratio, PPM, Rounding.CEIL))
    if model.close_fee_ppm:
        mm += div_round(notional_quote_q * model.close_fee_ppm, PPM, Rounding.CEIL)
    return max(mm, 0)


def initial_ratio(
    model: BracketModel,
    notional_quote_q: int,
    leverage: int,
    size_abs_base_q: int = 0,
    size_decimals: int = 0,
    open_interest_quote_q: int = 0,
) -> Fraction:
    """Initial-margin fraction: max(1/leverage, 1/bracket max leverage, floor), then size/OI scaling."""
    if leverage <= 0:
        raise ValidationError("leverage must be positive")
    b = bracket_for(model, notional_quote_q)
    if leverage > b.max_leverage:
        leverage = b.max_leverage
    imf = max(Fraction(1, leverage), Fraction(model.imr_floor_ppm, PPM))
    if model.sqrt_imf_factor_ppm:
        base_ppm = math.ceil(imf * PPM)
        imf = Fraction(
            drift_size_premium_ratio(
                _drift_size_1e9(size_abs_base_q, size_decimals), model.sqrt_imf_factor_ppm, base_ppm, PPM
            ),
            PPM,
        )
    if model.oi_lower_quote_q is not None and model.oi_upper_quote_q is not None:
        imf = dydx_adjusted_imf(imf, open_interest_quote_q, model.oi_lower_quote_q, model.oi_upper_quote_q)
    return imf


def dydx_adjusted_imf(base_imf: Fraction, open_interest_quote_q: int, lower_q: int, upper_q: int) -> Fraction:
    """dYdX v4: the IMF rises linearly from base to 100 % as open interest goes from lower to upper cap."""
    if upper_q == 0:
        return base_imf
    scaling = Fraction(open_interest_quote_q - lower_q, upper_q - lower_q)
    return min(base_imf + max(scaling * (1 - base_imf), Fraction(0)), Fraction(1))


def initial_quote_q(
    model: BracketModel,
    notional_quote_q: int,
    leverage: int,
    size_abs_base_q: int = 0,
    size_decimals: int = 0,
    open_interest_quote_q: int = 0,
) -> int:
    """Initial margin, rounded up, never above the notional (dYdX caps it there too)."""
    imf = initial_ratio(model, notional_quote_q, leverage, size_abs_base_q, size_decimals, open_interest_quote_q)
    im = imf * notional_quote_q
    return min(-((-im.numerator) // im.denominator), notional_quote_q)


# --- value of a position ----------------------------------------------------------------------------


def value_quote_q(size_base_q: int, price_q: int, size_decimals: int, rounding: Rounding) -> int:
    """Signed value size * price in quote quantums, rounded as asked."""
    return notional_quote_q(size_base_q, price_q, size_decimals, rounding)


@dataclass(frozen=True, slots=True)
class PositionRisk:
    """Exact risk figures of one position at one mark price."""

    value_quote_q: int  # signed, rounded down
    notional_quote_q: int  # |size| * mark, rounded up
    upnl_quote_q: int  # value - cost, minus funding owed
    mm_quote_q: int


def position_risk(
    model: BracketModel,
    size_base_q: int,
    cost_quote_q: int,
    funding_owed_quote_q: int,
    mark_q: int,
    size_decimals: int,
    entry_notional_quote_q: int | None = None,
) -> PositionRisk:
    """Exact value, notional, unrealised PnL (net of funding owed) and maintenance of a position."""
    value = value_quote_q(size_base_q, mark_q, size_decimals, Rounding.FLOOR)
    notional = value_quote_q(abs(size_base_q), mark_q, size_decimals, Rounding.CEIL)
    mm = (
        maintenance_quote_q(model, notional, abs(size_base_q), size_decimals, entry_notional_quote_q)
        if size_base_q
        else 0
    )
    return PositionRisk(value, notional, value - cost_quote_q - funding_owed_quote_q, mm)


# --- liquidation price -------------------------------------------------------------------------------


def liquidation_price_q(
    model: BracketModel,
    size_base_q: int,
    size_decimals: int,
    fixed_equity_quote_q: Fraction | int,
    other_mm_quote_q: Fraction | int = 0,
    entry_notional_quote_q: int | None = None,
) -> int | None:
    """Price (price quantums) at which the bucket's equity equals its maintenance margin.

    The bucket's equity is ``fixed_equity + size * p`` (``fixed_equity`` = collateral + other
    positions' PnL - this position's cost); its maintenance is this position's MM at ``p`` plus
    ``other_mm``. Piecewise-linear brackets are solved bracket by bracket. Rounded toward safety:
    up for a long (liquidated at or below), down for a short. None if no positive price exists.
    """
    if size_base_q == 0:
        return None
    # work in quote units per base unit: s = size in base units, p in quote per base
    s = Fraction(size_base_q, 10**size_decimals)
    q = Fraction(1, 10**QUOTE_DECIMALS)
    c = Fraction(fixed_equity_quote_q) * q - Fraction(other_mm_quote_q) * q
    candidates: list[Fraction] = []
    brackets = model.brackets
    fee = Fraction(model.close_fee_ppm, PPM)
    for i, b in enumerate(brackets):
        lo = Fraction(b.floor_quote_q) * q
        hi = Fraction(brackets[i + 1].floor_quote_q) * q if i + 1 < len(brackets) else None
        if model.sqrt_imf_factor_ppm:
            m = Fraction(maintenance_ratio_ppm(model, 0, abs(size_base_q), size_decimals), PPM)
            cum = Fraction(0)
        else:
            m = Fraction(b.mmr_ppm, PPM)
            cum = Fraction(b.cum_quote_q) * q
        if model.mm_on_entry and entry_notional_quote_q is not None:
            # maintenance fixed at entry notional: c + s p = MM_entry + fee |s| p
            # the close fee is charged below on the notional at p, not on the entry notional
            no_fee = dataclasses.replace(model, close_fee_ppm=0)
            mm_fixed = Fraction(maintenance_quote_q(no_fee, entry_notional_quote_q)) * q
            denom = s - fee * abs(s)
            if denom != 0:
                candidates.append((mm_fixed - c) / denom)
            break
        # c + s p = |s| p (m + fee) - cum   =>   p = (c + cum) / (|s| (m + fee) - s)
        denom = abs(s) * (m + fee) - s
        if denom == 0:
            continue
        p = (c + cum) / denom
        notional = abs(s) * p
        if p > 0 and notional >= lo and (hi is None or notional < hi):
            candidates.append(p)
    if not candidates:
        return None
    p = max(candidates) if size_base_q > 0 else min(candidates)
    if p <= 0:
        return None
    scaled = p * 10**PRICE_DECIMALS
    rounding = Rounding.CEIL if size_base_q > 0 else Rounding.FLOOR
    return div_round(scaled.numerator, scaled.denominator, rounding)


# --- withdrawals -------------------------------------------------------------------------------------


def withdrawal_headroom_quote_q(
    fixed_equity_quote_q: int,
    pnl_quote_q: Iterable[int],
    initial_quote_q: int,
    upnl_weight_ppm: int,
) -> int:
    """Equity that counts toward a withdrawal less the initial margin (negative: short by that much).

    Unrealised profit counts for margin but only ``upnl_weight_ppm`` of it (rounded down) for taking
    collateral out; losses count in full (dYdX, Drift and Hyperliquid do the same). ``fixed_equity``
    is the bucket's equity without its positions' price P&L: weighted collateral with realised P&L,
    less funding owed (in full: settling it must not change what may leave). ``pnl_quote_q`` is each
    position's price P&L (value at the mark less cost). A withdrawal of ``x`` quote is allowed when
    the headroom after it is >= 0, i.e. when ``x`` <= the headroom before it.
    """
    gains = losses = 0
    for x in pnl_quote_q:
        if x > 0:
            gains += x
        else:
            losses += x
    counted = div_round(gains * upnl_weight_ppm, PPM, Rounding.FLOOR)  # credit to the account: down
    return fixed_equity_quote_q + losses + counted - initial_quote_q
