"""Units, fixed-point helpers, errors and the seeded RNG factory. Knows nothing about markets."""

from fluidmargin.core.errors import FluidMarginError, InvariantViolation, ValidationError
from fluidmargin.core.units import (
    FUNDING_SCALE,
    MAX_QUANTUMS,
    PPM,
    PRICE_DECIMALS,
    PRICE_SCALE,
    QUOTE_DECIMALS,
    QUOTE_SCALE,
    Rounding,
    check_bounds,
    div_round,
    format_decimal,
    notional_quote_q,
    parse_decimal,
    ppm_of,
)

__all__ = [
    "FUNDING_SCALE",
    "MAX_QUANTUMS",
    "PPM",
    "PRICE_DECIMALS",
    "PRICE_SCALE",
    "QUOTE_DECIMALS",
    "QUOTE_SCALE",
    "FluidMarginError",
    "InvariantViolation",
    "Rounding",
    "ValidationError",
    "check_bounds",
    "div_round",
    "format_decimal",
    "notional_quote_q",
    "parse_decimal",
    "ppm_of",
]
