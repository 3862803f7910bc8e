"""Oracle validity, index aggregation and mark price. Pure functions over plain values.

Validity is ordered by severity (as Drift orders it); each action names the worst validity it
tolerates in :class:`~fluidmargin.model.instruments.OraclePolicy`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import (
    NS_PER_S,
    PPM,
    PRICE_DECIMALS,
    Rounding,
    div_round,
    format_decimal,
    parse_decimal,
)
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
    window_q: Sequence[int] = (),
) -> Classified:
    """Classify one raw source price. Anything but VALID is rejected and keeps the last price.

    The jump limit holds against the last index and every index in ``window_q`` (those within the
    policy's ``jump_window_ns``): a walk of small steps cannot go further than one jump could.
    """
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
    refs = [*window_q, last_index_q] if last_index_q is not None else list(window_q)
    if refs:
        # the largest move from a reference: from the highest or the lowest of them
        jump_ppm = max(div_round(abs(price_q - r) * PPM, r, Rounding.CEIL) for r in (min(refs), max(refs)))
        if jump_ppm > policy.max_jump_ppm:
            what = "vs last valid" if len(set(refs)) == 1 else f"vs the index within {policy.jump_window_ns} ns"
            return Classified(
                Validity.TOO_VOLATILE, f"jump {jump_ppm} ppm {what} exceeds {policy.max_jump_ppm}", price_q
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
    kept = _agree(prices, policy)
    if kept is None:
        return Validity.DIVERGENT, None, f"sources diverge: no majority of {len(prices)} within band"
    return Validity.VALID, _index_of(kept, policy), ""


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The index from named source prices: ``validity`` VALID when a majority agrees; DIVERGENT when it
    does not, with the index (if any) from the sources left once the ``outliers`` are set aside."""

    validity: Validity
    index_q: int | None
    n_sources: int  # sources the index agrees with
    outliers: tuple[str, ...]  # sources set aside, by name
    reason: str


def _agree(prices: Sequence[int], policy: OraclePolicy) -> list[int] | None:
    """The prices within the band of the median, when they are enough and a majority; else None."""
    med = median_q(prices)
    kept = [p for p in prices if abs(p - med) * PPM <= policy.max_divergence_ppm * med]
    if len(kept) < policy.min_sources or 2 * len(kept) <= len(prices) - (len(prices) % 2 == 0):
        return None
    return kept


def _index_of(kept: Sequence[int], policy: OraclePolicy) -> int:
    return sum(kept) // len(kept) if policy.aggregation == "mean" else median_q(kept)


def aggregate_sources(prices: Mapping[str, int], reference_q: int | None, policy: OraclePolicy) -> Aggregate:
    """Index from the sources' latest valid prices, by name.

    A majority within the band of the median makes the index (the rest are outliers, outvoted). Without
    one (two sources apart, an even split), the source farthest from ``reference_q`` (the last index;
    ties by name) is set aside, one at a time, until the rest agree: the result is DIVERGENT, names the
    sources set aside, and its index (from fewer sources) marks but makes no quorum by itself.
    """
    if len(prices) < policy.min_sources:
        return Aggregate(Validity.STALE, None, 0, (), f"{len(prices)} fresh sources, need {policy.min_sources}")
    names = sorted(prices)
    kept = _agree([prices[n] for n in names], policy)
    if kept is not None:
        med = median_q([prices[n] for n in names])
        out = tuple(n for n in names if abs(prices[n] - med) * PPM > policy.max_divergence_ppm * med)
        return Aggregate(Validity.VALID, _index_of(kept, policy), len(kept), out, "")
    why = f"no majority of {len(names)} sources within {policy.max_divergence_ppm} ppm of their median"
    if reference_q is None:
        return Aggregate(Validity.DIVERGENT, None, 0, tuple(names), why)
    ref = reference_q
    rest = sorted(names, key=lambda n: (abs(prices[n] - ref), n))
    while len(rest) > policy.min_sources:
        rest.pop()  # the farthest from the reference
        kept = _agree([prices[n] for n in rest], policy)
        if kept is not None:
            out = tuple(sorted(set(names) - set(rest)))
            aside = ", ".join(f"source {n} at {format_decimal(prices[n], PRICE_DECIMALS)}" for n in out)
            reason = f"{aside} set aside (farthest from the index {format_decimal(ref, PRICE_DECIMALS)}): {why}"
            return Aggregate(Validity.DIVERGENT, _index_of(kept, policy), len(kept), out, reason)
    return Aggregate(Validity.DIVERGENT, None, 0, tuple(names), why)


@dataclass(frozen=True, slots=True)
class Pending:
    """A level the sources keep printing although each print was refused as a jump."""

    first_ts_ns: int
    last_q: int  # the latest print: each must be within the tolerance of the one before
    count: int
    sources: tuple[tuple[str, int, int], ...]  # each source's latest print (source, price_q, ts_ns)


def reanchor_step(pending: Pending | None, source: str, price_q: int, ts_ns: int, policy: OraclePolicy) -> Pending:
    """Add a print refused as a jump to the pending level (or start a new one if it is not consistent)."""
    if pending is None or abs(price_q - pending.last_q) * PPM > policy.reanchor_tolerance_ppm * pending.last_q:
        return Pending(ts_ns, price_q, 1, ((source, price_q, ts_ns),))
    srcs = tuple(sorted([*(x for x in pending.sources if x[0] != source), (source, price_q, ts_ns)]))
    return Pending(pending.first_ts_ns, price_q, pending.count + 1, srcs)


def reanchor_ready(pending: Pending, now_ns: int, policy: OraclePolicy) -> bool:
    """Whether a pending level is adopted: enough consistent prints over enough time (a burst is not)."""
    return (
        policy.reanchor_prints > 0
        and pending.count >= policy.reanchor_prints
        and now_ns - pending.first_ts_ns >= policy.reanchor_after_ns
    )


def liquidation_grade(n_sources: int, policy: OraclePolicy) -> bool:
    """Whether an index agreed by ``n_sources`` may liquidate: a quorum, or one source where opted in."""
    return n_sources >= (1 if policy.single_source_liquidation else policy.min_sources_liquidation)


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
