"""Funding: rate from premium and interest, continuous accrual into a cumulative index.

Rates are per funding interval at 1e9 (``*_e9``). The cumulative index ``fidx`` is quote per
whole base unit at FUNDING_SCALE; a position owes ``size * (fidx_now - fidx_at_last_settle)``.
Settling walks no accounts: each position settles itself when it is touched.
"""

from __future__ import annotations

from fluidmargin.core.units import FUNDING_SCALE, NS_PER_S, PRICE_SCALE, QUOTE_SCALE, Rounding, div_round
from fluidmargin.model.instruments import FundingParams

RATE_SCALE = 10**9


def clamp(x: int, lo: int, hi: int) -> int:
    return lo if x < lo else hi if x > hi else x


def premium_e9(mark_q: int, index_q: int) -> int:
    """(mark - index) / index at 1e9, rounded toward zero."""
    return div_round((mark_q - index_q) * RATE_SCALE, index_q, Rounding.DOWN)


def funding_rate_e9(premium: int, params: FundingParams) -> int:
    """Binance's rule: premium + clamp(interest - premium, ±damper), then clamp to ±cap."""
    rate = premium + clamp(params.interest_e9 - premium, -params.damper_e9, params.damper_e9)
    return clamp(rate, -params.cap_e9, params.cap_e9)


def accrue_fidx(rate_e9: int, price_q: int, dt_ns: int, interval_s: int) -> int:
    """Index increment over ``dt_ns``: rate * price * dt / interval, rounded toward -inf.

    Flooring the shared index is symmetric for longs and shorts; the per-position settlement
    below is what rounds in the system's favour.
    """
    num = rate_e9 * price_q * dt_ns * FUNDING_SCALE
    den = RATE_SCALE * PRICE_SCALE * interval_s * NS_PER_S
    return div_round(num, den, Rounding.FLOOR)


def accrue_fidx_carry(rate_e9: int, price_q: int, dt_ns: int, interval_s: int, rem: int) -> tuple[int, int]:
    """Like :func:`accrue_fidx`, carrying the remainder so that many small steps lose nothing.

    ``rem`` is the previous remainder (in units of 1/den of the index); returns (increment, remainder)
    with 0 <= remainder < den, so the index after n steps equals one step over the whole period.
    """
    num = rate_e9 * price_q * dt_ns * FUNDING_SCALE + rem
    den = RATE_SCALE * PRICE_SCALE * interval_s * NS_PER_S
    inc, rem = divmod(num, den)
    return inc, rem


def funding_owed_quote_q(size_base_q: int, fidx_now: int, fidx_last: int, size_decimals: int) -> int:
    """What a position owes (+) or is owed (-) since its last settlement; rounded up (CEIL).

    CEIL makes a payer pay the part-quantum and a receiver forgo it: the remainder stays with
    the system.
    """
    return div_round(
        size_base_q * (fidx_now - fidx_last) * QUOTE_SCALE, 10**size_decimals * FUNDING_SCALE, Rounding.CEIL
    )


def funding_payment_quote_q(size_base_q: int, mark_q: int, rate_e9: int, size_decimals: int) -> int:
    """One discrete funding payment size * mark * rate (what a long pays; negative = receives), CEIL."""
    return div_round(
        size_base_q * mark_q * rate_e9 * QUOTE_SCALE, 10**size_decimals * PRICE_SCALE * RATE_SCALE, Rounding.CEIL
    )
