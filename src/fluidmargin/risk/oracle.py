"""Oracle validity, index aggregation and mark price. Pure functions over plain values.

Validity is ordered by severity (as Drift orders it); each action names the worst validity it
tolerates in :class:`~fluidmargin.model.instruments.OraclePolicy`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import NS_PER_S, PPM, PRICE_DECIMALS, Rounding, div_round, parse_decimal
from fluidmargin.model.instruments import OraclePolicy


class Validity(enum.IntEnum):
    VALID = 0
    STALE = 1
    LOW_CONFIDENCE = 2
    DIVERGENT = 3
    TOO_VOLATILE = 4
    INVALID = 5


class Action(enum.Enum):
    MARGIN = "margin"  # re-margin accounts on this price
    LIQUIDATE = "liquidate"
    OPEN = "open"  # increase risk or withdraw collateral


@dataclass(frozen=True, slots=True)
class Classified:
    validity: Validity
    reason: str
    price_q: int | None


def classify(
    raw_price: str,
    confidence_ppm: int,
    ts_ns: int,
    last_source_ts_ns: int | None,
    last_index_q: int | None,
    policy: OraclePolicy,
) -> Classified:
    """Classify one raw source price. Anything but VALID is rejected and keeps the last price."""
    try:
        price_q = parse_decimal(raw_price, PRICE_DECIMALS, Rounding.FLOOR, "price")
    except ValidationError as e:
        return Classified(Validity.INVALID, f"unparseable or non-finite: {e}", None)
    if price_q <= 0:
        return Classified(Validity.INVALID, "non-positive price", None)
    if last_source_ts_ns is not None and ts_ns <= last_source_ts_ns:
        return Classified(
            Validity.INVALID, f"out of order: ts {ts_ns} <= last {last_source_ts_ns} of this source", None
        )
    if confidence_ppm < policy.min_confidence_ppm:
        return Classified(
            Validity.LOW_CONFIDENCE, f"confidence {confidence_ppm} ppm below {policy.min_confidence_ppm}", price_q
        )
    if last_index_q is not None:
        jump_ppm = div_round(abs(price_q - last_index_q) * PPM, last_index_q, Rounding.CEIL)
        if jump_ppm > policy.max_jump_ppm:
            return Classified(
                Validity.TOO_VOLATILE, f"jump {jump_ppm} ppm vs last valid exceeds {policy.max_jump_ppm}", price_q
            )
    return Classified(Validity.VALID, "", price_q)


def median_q(prices: Sequence[int]) -> int:
    """Median of integer prices; the mean of the two middle ones rounds down."""
    s = sorted(prices)
    n = len(s)
    if n == 0:
        raise ValidationError("median of no prices")
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) // 2


def aggregate(prices: Sequence[int], policy: OraclePolicy) -> tuple[Validity, int | None, str]:
    """Index price from the sources' latest valid prices: drop outliers, check agreement, aggregate."""
    if len(prices) < policy.min_sources:
        return Validity.STALE, None, f"{len(prices)} fresh sources, need {policy.min_sources}"
    med = median_q(prices)
    kept = [p for p in prices if abs(p - med) * PPM <= policy.max_divergence_ppm * med]
    if len(kept) < policy.min_sources or 2 * len(kept) <= len(prices) - (len(prices) % 2 == 0):
        return Validity.DIVERGENT, None, f"sources diverge: {len(kept)} of {len(prices)} within band"
    if policy.aggregation == "mean":
        return Validity.VALID, sum(kept) // len(kept), ""
    return Validity.VALID, median_q(kept), ""


def staleness(now_ns: int, last_valid_ts_ns: int | None, policy: OraclePolicy) -> Validity:
    if last_valid_ts_ns is None or now_ns - last_valid_ts_ns > policy.max_staleness_ns:
        return Validity.STALE
    return Validity.VALID


def allowed(validity: Validity, action: Action, policy: OraclePolicy) -> bool:
    """Whether ``action`` may use a price of this validity under ``policy``."""
    limit = {
        Action.MARGIN: policy.allow_margin,
        Action.LIQUIDATE: policy.allow_liquidate,
        Action.OPEN: policy.allow_open,
    }[action]
    return int(validity) <= limit


def mark_price_q(
    rule: str,
    index_q: int,
    last_trade_q: int | None = None,
    funding_rate_e9: int = 0,
    time_to_funding_ns: int = 0,
    interval_s: int = 8 * 3600,
    basis_q: int = 0,
) -> int:
    """Mark price. ``index``: the index. ``median3`` (Binance): median of
    index * (1 + rate * time to funding / interval), index + moving basis, and last trade."""
    if rule == "index":
        return index_q
    if rule != "median3":
        raise ValidationError(f"unknown mark rule {rule!r}")
    p1 = index_q + div_round(
        index_q * funding_rate_e9 * time_to_funding_ns, 10**9 * interval_s * NS_PER_S, Rounding.FLOOR
    )
    parts = [p1, index_q + basis_q]
    if last_trade_q is not None:
        parts.append(last_trade_q)
    return median_q(parts)
