"""Circuit breakers on the index price: a range band over a time window, and source divergence.

Pure functions returning ``(halted, reason)``; the comparisons are exact integer cross-products.
A band is exceeded strictly: a move of exactly ``band_ppm`` does not halt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM
from fluidmargin.risk.perp.oracle import median_q


def range_halt(window: Sequence[tuple[int, int]], band_ppm: int, window_ns: int) -> tuple[bool, str]:
    """Halt when ``max / min - 1 > band`` over the prices within ``window_ns`` of the latest sample.

    Samples are ``(ts_ns, index_price_q)``; those with ``ts_ns >= latest - window_ns`` count.
    """
    if band_ppm < 0 or window_ns < 0:
        raise ValidationError("band and window must be >= 0")
    if not window:
        return False, "no prices"
    for _, p in window:
        if p <= 0:
            raise ValidationError(f"index price must be positive, got {p}")
    latest = max(ts for ts, _ in window)
    prices = [p for ts, p in window if ts >= latest - window_ns]
    hi, lo = max(prices), min(prices)
    if (hi - lo) * PPM > band_ppm * lo:
        return True, f"price range {lo}..{hi} exceeds {band_ppm} ppm within {window_ns} ns"
    return False, "within band"


def divergence_halt(source_prices: Mapping[str, int], band_ppm: int) -> tuple[bool, str]:
    """Halt when any source deviates from the median of all sources by more than ``band_ppm``.

    The median is :func:`fluidmargin.risk.perp.oracle.median_q` (mean of the two middle ones rounded down).
    """
    if band_ppm < 0:
        raise ValidationError("band must be >= 0")
    if not source_prices:
        return False, "no sources"
    for name, p in source_prices.items():
        if p <= 0:
            raise ValidationError(f"source {name} price must be positive, got {p}")
    med = median_q(list(source_prices.values()))
    worst = max(sorted(source_prices), key=lambda n: abs(source_prices[n] - med))
    dev = abs(source_prices[worst] - med)
    if dev * PPM > band_ppm * med:
        return True, f"source {worst} at {source_prices[worst]} deviates from median {med} by more than {band_ppm} ppm"
    return False, "sources agree"
