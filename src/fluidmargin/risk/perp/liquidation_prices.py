"""dYdX v4 bankruptcy quote and fillable price of a liquidation, exact.

Follows dydxprotocol/v4-chain ``x/clob/keeper/liquidations.go`` (``GetBankruptcyPriceInQuoteQuantums``,
``GetFillablePrice``) for a cross account: USDC collateral plus perpetual positions marked at oracle.

* TNC  total net collateral = USDC + sum(size * oracle)
* TMMR total maintenance    = sum(|size| * oracle * MMF)
* bankruptcy_quote(delta)   = -DNNV - TNC * |DMMR| / TMMR   (DNNV = delta * oracle, DMMR = |delta| * oracle * MMF)
* ABR                       = clamp(BA * (1 - TNC / TMMR), 0, 1)
* fillable_price            = (PNNV - ABR * SMMR * PMMR) / PS   (of the whole position being liquidated)

Every intermediate is an exact Fraction; each public integer result is rounded once, in a named
direction. (dYdX rounds TNC, TMMR, DNNV and DMMR to quote quantums first; for inputs whose notionals
are whole quote quantums, as in all of dYdX's own test cases, both give the same result.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding


@dataclass(frozen=True)
class PerpPosition:
    """One perpetual position: signed size (base quantums), its scale, oracle price and MMF."""

    size_base_q: int
    size_decimals: int
    oracle_price_q: int
    mmf_ppm: int


def _round(x: Fraction, rounding: Rounding) -> int:
    if rounding is Rounding.FLOOR:
        return math.floor(x)
    if rounding is Rounding.CEIL:
        return math.ceil(x)
    if rounding is Rounding.DOWN:
        return math.trunc(x)
    return math.ceil(x) if x >= 0 else math.floor(x)  # UP: away from zero


def _check_position(perpetual_id: int, p: PerpPosition) -> None:
    if p.size_decimals < 0:
        raise ValidationError(f"perpetual {perpetual_id}: size_decimals must be >= 0, got {p.size_decimals}")
    if p.oracle_price_q <= 0:
        raise ValidationError(f"perpetual {perpetual_id}: oracle price must be positive, got {p.oracle_price_q}")
    if not 0 <= p.mmf_ppm <= PPM:
        raise ValidationError(f"perpetual {perpetual_id}: mmf_ppm must be in [0, {PPM}], got {p.mmf_ppm}")


def net_notional_quote(size_base_q: int, size_decimals: int, oracle_price_q: int) -> Fraction:
    """Signed value of ``size`` at ``oracle`` in quote quantums, exact."""
    return Fraction(size_base_q * oracle_price_q * 10**QUOTE_DECIMALS, 10 ** (size_decimals + PRICE_DECIMALS))


def maintenance_quote(size_base_q: int, size_decimals: int, oracle_price_q: int, mmf_ppm: int) -> Fraction:
    """Maintenance requirement |size| * oracle * MMF in quote quantums, exact."""
    return abs(net_notional_quote(size_base_q, size_decimals, oracle_price_q)) * Fraction(mmf_ppm, PPM)


def account_totals(usdc_quote_q: int, positions: Mapping[int, PerpPosition]) -> tuple[Fraction, Fraction]:
    """(TNC, TMMR) of the account in quote quantums, exact."""
    tnc = Fraction(usdc_quote_q)
    tmmr = Fraction(0)
    for pid, p in positions.items():
        _check_position(pid, p)
        tnc += net_notional_quote(p.size_base_q, p.size_decimals, p.oracle_price_q)
        tmmr += maintenance_quote(p.size_base_q, p.size_decimals, p.oracle_price_q, p.mmf_ppm)
    return tnc, tmmr


def _closing_position(positions: Mapping[int, PerpPosition], perpetual_id: int, delta_base_q: int) -> PerpPosition:
    """The position that ``delta`` reduces; dYdX's ErrInvalidPerpetualPositionSizeDelta otherwise."""
    pos = positions.get(perpetual_id)
    size = 0 if pos is None else pos.size_base_q
    if delta_base_q == 0:
        raise ValidationError(f"invalid position size delta for perpetual {perpetual_id}: delta is zero")
    if pos is None or size == 0:
        raise ValidationError(f"invalid position size delta: no open position for perpetual {perpetual_id}")
    if (size > 0) == (delta_base_q > 0):
        raise ValidationError(
            f"invalid position size delta for perpetual {perpetual_id}: delta {delta_base_q} has the same sign "
            f"as the position {size} (it must reduce it)"
        )
    if abs(delta_base_q) > abs(size):
        raise ValidationError(
            f"invalid position size delta for perpetual {perpetual_id}: |delta| {abs(delta_base_q)} is larger "
            f"than the position {abs(size)}"
        )
    return pos


def bankruptcy_quote_exact(
    usdc_quote_q: int, positions: Mapping[int, PerpPosition], perpetual_id: int, delta_base_q: int
) -> Fraction:
    """``-DNNV - TNC * |DMMR| / TMMR`` in quote quantums, unrounded (see :func:`bankruptcy_quote_q`)."""
    pos = _closing_position(positions, perpetual_id, delta_base_q)
    tnc, tmmr = account_totals(usdc_quote_q, positions)
    if tmmr == 0:
        raise ValidationError("total maintenance margin is zero: the bankruptcy price is undefined")
    dnnv = net_notional_quote(delta_base_q, pos.size_decimals, pos.oracle_price_q)
    dmmr = maintenance_quote(delta_base_q, pos.size_decimals, pos.oracle_price_q, pos.mmf_ppm)
    return -dnnv - tnc * dmmr / tmmr


def bankruptcy_quote_q(
    usdc_quote_q: int,
    positions: Mapping[int, PerpPosition],
    perpetual_id: int,
    delta_base_q: int,
    rounding: Rounding = Rounding.CEIL,
) -> int:
    """Quote quantums the account receives (negative: pays) for closing ``delta`` at zero equity.

    ``positions`` maps perpetual id to position; ``delta_base_q`` must reduce the position of
    ``perpetual_id`` (opposite sign, not larger). After the close at this quote the account's TNC is
    ``TNC * TMMR_after / TMMR``: the closed part leaves with exactly its share of the equity (zero
    after a full close of the last position).

    Rounding: dYdX rounds toward +inf (CEIL) for both sides, the default here (its test cases pin it).
    That is at most one quantum in the liquidated account's favour, and it guarantees the account is
    never left with negative equity by rounding, so rounding never creates a deficit for the insurance
    fund or socialised loss to absorb later. ``Rounding.FLOOR`` gives the opposite (the account never
    gains by rounding, but may keep a sub-quantum deficit).
    """
    return _round(bankruptcy_quote_exact(usdc_quote_q, positions, perpetual_id, delta_base_q), rounding)


def fillable_price_exact(
    usdc_quote_q: int,
    positions: Mapping[int, PerpPosition],
    perpetual_id: int,
    delta_base_q: int,
    bankruptcy_adjustment_ppm: int = PPM,
    spread_to_mmr_ppm: int = 100_000,
) -> Fraction:
    """Fillable price in price quantums (1e-8 quote per whole base unit), unrounded."""
    pos = _closing_position(positions, perpetual_id, delta_base_q)
    if bankruptcy_adjustment_ppm < 0 or spread_to_mmr_ppm < 0:
        raise ValidationError(
            f"liquidation config must be non-negative: bankruptcy_adjustment_ppm={bankruptcy_adjustment_ppm}, "
            f"spread_to_mmr_ppm={spread_to_mmr_ppm}"
        )
    tnc, tmmr = account_totals(usdc_quote_q, positions)
    if tmmr == 0:
        raise ValidationError("total maintenance margin is zero: the fillable price is undefined")
    abr = Fraction(bankruptcy_adjustment_ppm, PPM) * (1 - tnc / tmmr)
    abr = min(max(abr, Fraction(0)), Fraction(1))
    pnnv = net_notional_quote(pos.size_base_q, pos.size_decimals, pos.oracle_price_q)
    pmmr = maintenance_quote(pos.size_base_q, pos.size_decimals, pos.oracle_price_q, pos.mmf_ppm)
    smmr = Fraction(spread_to_mmr_ppm, PPM)
    quote_per_base_q = (pnnv - abr * smmr * pmmr) / pos.size_base_q  # quote quantums per base quantum
    return quote_per_base_q * Fraction(10 ** (pos.size_decimals + PRICE_DECIMALS), 10**QUOTE_DECIMALS)


def fillable_price_q(
    usdc_quote_q: int,
    positions: Mapping[int, PerpPosition],
    perpetual_id: int,
    delta_base_q: int,
    bankruptcy_adjustment_ppm: int = PPM,
    spread_to_mmr_ppm: int = 100_000,
) -> int:
    """Worst price (price quantums) at which the liquidation of ``delta`` may fill.

    ABR = clamp(BA * (1 - TNC/TMMR), 0, 1); price = (PNNV - ABR * SMMR * PMMR) / PS, with PNNV, PMMR, PS
    those of the whole position (``delta`` only picks the side and is validated). Defaults are dYdX's
    ``LiquidationsConfig_Default`` (BA = 100 %, SMMR = 10 %).
    """
    exact = fillable_price_exact(
        usdc_quote_q, positions, perpetual_id, delta_base_q, bankruptcy_adjustment_ppm, spread_to_mmr_ppm
    )
    # Round toward the oracle: a long is liquidated by a sell, whose limit rounds up (CEIL); a short by
    # a buy, whose limit rounds down (FLOOR). The order then never fills beyond the exact fillable
    # price, so rounding never adds to the loss that the account or the insurance fund takes, and the
    # result stays within [exact fillable, oracle] because the oracle is itself a whole price quantum.
    return _round(exact, Rounding.CEIL if delta_base_q < 0 else Rounding.FLOOR)
