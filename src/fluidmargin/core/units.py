"""Integer quantums with an explicit scale, ppm ratios, and rounding that names its direction.

Units used across the project (the unit is in every name):

* ``*_quote_q``  quote-asset quantums, 10**-QUOTE_DECIMALS of the quote asset (1e-6 USD).
* ``*_price_q``  price quantums: quote per whole base unit, scaled by PRICE_SCALE (1e-8).
* ``*_base_q``   base-asset quantums; scale is per instrument (``size_decimals``).
* ``*_ppm``      ratios in parts per million (1_000_000 == 100 %).
* ``*_fidx``     cumulative funding index: quote per base unit scaled by FUNDING_SCALE (1e-12),
                 finer than prices so that per-second accrual does not vanish in rounding.
* ``*_ns``       event time in integer nanoseconds.

Every division goes through :func:`div_round` with an explicit :class:`Rounding`; the direction
is chosen so the system stays solvent: requirements round up, collateral and credits down.
"""

from __future__ import annotations

import enum
import math
from decimal import Decimal, InvalidOperation

from fluidmargin.core.errors import ValidationError

QUOTE_DECIMALS = 6
QUOTE_SCALE = 10**QUOTE_DECIMALS
PRICE_DECIMALS = 8
PRICE_SCALE = 10**PRICE_DECIMALS
FUNDING_DECIMALS = 12
FUNDING_SCALE = 10**FUNDING_DECIMALS
PPM = 1_000_000
NS_PER_S = 1_000_000_000

# Every stored quantum fits a signed 64-bit integer with head-room for one addition, so the
# struct-of-arrays state can hold it in int64 columns. Larger inputs are rejected, not wrapped.
MAX_QUANTUMS = 2**62


class Rounding(enum.Enum):
    """Direction of a rounded division."""

    FLOOR = "floor"  # toward -inf
    CEIL = "ceil"  # toward +inf
    DOWN = "down"  # toward zero
    UP = "up"  # away from zero


def div_round(num: int, den: int, rounding: Rounding) -> int:
    """Exact integer division ``num / den`` rounded in the named direction."""
    if den == 0:
        raise ZeroDivisionError("div_round by zero")
    if den < 0:
        num, den = -num, -den
    q, r = divmod(num, den)  # floor division
    if r == 0:
        return q
    if rounding is Rounding.FLOOR:
        return q
    if rounding is Rounding.CEIL:
        return q + 1
    if rounding is Rounding.DOWN:
        return q if num >= 0 else q + 1
    return q + 1 if num >= 0 else q  # UP: away from zero


def ppm_of(amount: int, ratio_ppm: int, rounding: Rounding) -> int:
    """``amount * ratio_ppm / 1e6`` rounded in the named direction."""
    return div_round(amount * ratio_ppm, PPM, rounding)


def notional_quote_q(size_base_q: int, price_price_q: int, size_decimals: int, rounding: Rounding) -> int:
    """Quote quantums of ``size`` base quantums at ``price``: size * price, rescaled, rounded."""
    # size/10^sd * price/10^pd * 10^qd  ==  size*price / 10^(sd+pd-qd)
    shift = size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
    if shift >= 0:
        return div_round(size_base_q * price_price_q, pow10(shift), rounding)
    return size_base_q * price_price_q * pow10(-shift)


_POW10 = tuple(10**i for i in range(64))


def pow10(n: int) -> int:
    """10**n for n >= 0, typed as an int (a table lookup for the common exponents)."""
    return _POW10[n] if n < 64 else int(10**n)


def check_bounds(name: str, value: int, *, lo: int = -MAX_QUANTUMS, hi: int = MAX_QUANTUMS) -> int:
    """Return ``value`` if ``lo <= value <= hi`` else raise a ValidationError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer number of quantums, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValidationError(f"{name}={value} is outside [{lo}, {hi}] (would overflow)")
    return value


def parse_decimal(text: str | int | float | Decimal, decimals: int, rounding: Rounding, name: str = "value") -> int:
    """Parse a decimal string (or number) into integer quantums at ``10**-decimals``.

    Rejects NaN, infinities and oversize numbers with a ValidationError. Floats are accepted only
    for convenience at the edge and go through ``repr`` so ``0.1`` means the decimal 0.1.
    """
    if isinstance(text, bool):
        raise ValidationError(f"{name}: booleans are not numbers")
    if isinstance(text, float):
        if not math.isfinite(text):
            raise ValidationError(f"{name}: {text!r} is not a finite number")
        text = repr(text)
    try:
        d = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError(f"{name}: {text!r} is not a decimal number") from None
    if not d.is_finite():
        raise ValidationError(f"{name}: {text!r} is not a finite number")
    if d.adjusted() > 30:
        raise ValidationError(f"{name}: {text!r} is too large")
    if d.is_zero():
        return 0
    if d.adjusted() < -decimals - 1:
        # far below one quantum: only the sign matters for the rounding (and no huge 10**n below)
        return div_round(1 if d > 0 else -1, 2, rounding)
    num, den = d.as_integer_ratio()  # exact: no 28-digit context rounding on the way
    value = div_round(num * pow10(decimals), den, rounding)
    return check_bounds(name, value)


def format_decimal(quantums: int, decimals: int) -> str:
    """Render integer quantums as an exact decimal string (no float on the way)."""
    sign = "-" if quantums < 0 else ""
    q = abs(quantums)
    if decimals <= 0:
        return f"{sign}{q * 10 ** (-decimals)}"
    whole, frac = divmod(q, 10**decimals)
    frac_s = f"{frac:0{decimals}d}".rstrip("0")
    return f"{sign}{whole}.{frac_s}" if frac_s else f"{sign}{whole}"
