"""Cover-2 insurance-fund sizing of a live engine, with extreme but plausible moves taken from history.

:func:`engine_book` reads an :class:`~fluidmargin.engine.Engine`'s public state into the columns of
:func:`fluidmargin.risk.liquidation.cover2.cover2` (whose module docstring defines the figures):

* one account per engine account (the backstop vault left out: its losses are its shareholders');
* its cross bucket with the engine's exact cross equity (``Engine.cross_risk``: collateral at its weighted
  value, plus the cross positions' PnL less funding owed; a portfolio account's includes its option
  values), holding its open cross perpetuals;
* one bucket per open isolated position, with its exact isolated equity (``Engine.iso_risk``).

What the move does not re-price here: non-quote collateral and options are held at today's values, and
closes happen at the moved mark (no slippage, no penalty). :func:`engine_cover2` sizes the fund;
:func:`with_cover2_fund` gives a configuration whose main insurance fund is that figure.

:func:`history_scenarios` builds the moves from candles. For each market, over every start candle with a
whole liquidation horizon ahead (``horizon_s``, in time, so short gaps do no harm), the adverse moves
seen within it: the lowest low and the highest high of the candles after the start, against the start's
close. The shock is the worst of them (``quantile=None``) or their ``quantile`` by nearest rank on the
tail side (e.g. 0.999). Joint scenarios are whole cross-sections at one timestamp: every market's close
to close move over the horizon, at the timestamps common to all the files where the equal-weighted
move is the worst (``crash``) and the best (``rally``), and where each market's own move is (``<market>
down``/``up``), by the same rule; the name says when. A gap in the candles longer than the horizon (an
exchange outage) counts as one step: the move across it is the first candle after it, since nothing
could be liquidated within it either; ``max_gap_s`` refuses gaps longer than it instead. NaN or
non-positive prices and a file shorter than the horizon are refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numba import njit

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM
from fluidmargin.engine import Engine
from fluidmargin.model.config import EngineConfig
from fluidmargin.risk.liquidation.cover2 import (
    MAX_MOVE_PPM,
    Cover2Book,
    Cover2Result,
    Scenarios,
    cover2,
    make_book,
    make_scenarios,
    market_shocks,
)
from fluidmargin.sim.candles import Candles

# --- the engine's book ----------------------------------------------------------------------------------


def engine_book(eng: Engine) -> Cover2Book:
    """The engine's accounts, buckets and open perpetual positions as Cover-2 columns (see above)."""
    ids: list[int] = []
    owner: list[int] = []
    equity: list[int] = []
    pos_bucket: list[int] = []
    pos_market: list[int] = []
    pos_size: list[int] = []
    for r in range(eng.n_acc):
        account_id = int(eng.acct_id[r])
        if eng.is_vault(account_id):
            continue
        a = len(ids)
        ids.append(account_id)
        for b in eng.buckets_of(r):
            k = len(owner)
            owner.append(a)
            equity.append(eng.bucket_risk(b).equity_quote_q)
            held = [b.pos] if b.pos >= 0 else [p for p in eng.positions_of(r) if not eng.pos_iso[p]]
            for p in held:
                size = int(eng.pos_size[p])
                if size == 0:
                    continue
                m = int(eng.pos_mkt[p])
                if eng.markets[m].mark_q is None:
                    raise ValidationError(f"market {eng.markets[m].spec.symbol} holds positions but has no mark")
                pos_bucket.append(k)
                pos_market.append(m)
                pos_size.append(size)
    return make_book(
        ids,
        owner,
        equity,
        pos_bucket,
        pos_market,
        pos_size,
        [m.spec.symbol for m in eng.markets],
        [m.mark_q if m.mark_q is not None else 1 for m in eng.markets],  # no mark: no position (checked)
        [m.spec.size_decimals for m in eng.markets],
    )


def engine_cover2(eng: Engine, scenarios: Scenarios, top: int = 5, parallel: bool | None = None) -> Cover2Result:
    """The engine's Cover-2 figures under ``scenarios`` (over the engine's markets, in their order)."""
    return cover2(engine_book(eng), scenarios, top=top, parallel=parallel)


def with_cover2_fund(config: EngineConfig, result: Cover2Result, extra_ppm: int = 0) -> EngineConfig:
    """``config`` with its main insurance fund set to the venue's Cover-2 figure plus ``extra_ppm`` of it
    (rounded up). Markets' own funds are left as configured."""
    if isinstance(extra_ppm, bool) or not isinstance(extra_ppm, int) or not 0 <= extra_ppm <= 10 * PPM:
        raise ValidationError("extra_ppm must be an integer within [0, 10_000_000]")
    fund = result.venue.fund_quote_q
    return dataclasses.replace(config, insurance_fund_quote_q=fund + -(-fund * extra_ppm // PPM))


# --- scenarios from history ------------------------------------------------------------------------------


@njit(cache=True)
def _window_extremes(ts: Any, low: Any, high: Any, horizon: Any) -> Any:
    """For each start i with ts[i] + horizon <= ts[-1]: the lowest low and the highest high of the candles
    after i up to ts[i] + horizon, or of the next candle when a gap leaves none (monotone deques: O(n)).
    Returns (lows, highs, number of starts)."""
    n = ts.shape[0]
    lows = np.empty(n)
    highs = np.empty(n)
    dq_lo = np.empty(n, dtype=np.int64)
    dq_hi = np.empty(n, dtype=np.int64)
    h_lo = t_lo = h_hi = t_hi = 0
    j = 0
    m = 0
    for i in range(n):
        end = ts[i] + horizon
        if end > ts[n - 1]:
            break
        while j < n and (ts[j] <= end or j <= i + 1):  # at least the next candle, across a gap
            while t_lo > h_lo and low[dq_lo[t_lo - 1]] >= low[j]:
                t_lo -= 1
            dq_lo[t_lo] = j
            t_lo += 1
            while t_hi > h_hi and high[dq_hi[t_hi - 1]] <= high[j]:
                t_hi -= 1
            dq_hi[t_hi] = j
            t_hi += 1
            j += 1
        while h_lo < t_lo and dq_lo[h_lo] <= i:
            h_lo += 1
        while h_hi < t_hi and dq_hi[h_hi] <= i:
            h_hi += 1
        lows[i] = low[dq_lo[h_lo]] if h_lo < t_lo else np.nan
        highs[i] = high[dq_hi[h_hi]] if h_hi < t_hi else np.nan
        m = i + 1
    return lows, highs, m


def _tail(values: np.ndarray, quantile: float | None, worst_low: bool) -> int:
    """Index of the worst value (lowest if ``worst_low``), or of its ``quantile`` by nearest rank on the tail
    side."""
    order = np.argsort(values, kind="stable")
    n = len(order)
    if quantile is None:
        return int(order[0] if worst_low else order[-1])
    rank = math.floor((1.0 - quantile) * (n - 1)) if worst_low else math.ceil(quantile * (n - 1))
    return int(order[rank])


def _ppm(ratio: float) -> int:
    """A relative move as ppm, rounded away from zero (more severe), within the scenarios' bounds."""
    v = ratio * PPM
    out = math.ceil(v) if v > 0 else math.floor(v)
    return max(-PPM, min(out, MAX_MOVE_PPM))


def _checked(name: str, c: Candles, horizon_ms: int, max_gap_ms: int | None) -> None:
    if not isinstance(c, Candles):
        raise ValidationError(f"{name}: candles expected, got {type(c).__name__}")
    if len(c) < 2:
        raise ValidationError(f"{name}: at least two candles are needed")
    for col in ("low", "high", "close"):
        v = getattr(c, col)
        if not np.isfinite(v).all() or (v <= 0).any():
            raise ValidationError(f"{name}: NaN, infinite or non-positive {col} price in {c.path}")
    steps = np.diff(c.ts_ms)
    if (steps <= 0).any():
        raise ValidationError(f"{name}: candle times not strictly increasing in {c.path}")
    if max_gap_ms is not None and int(steps.max()) > max_gap_ms:
        i = int(np.argmax(steps))
        raise ValidationError(
            f"{name}: a gap of {int(steps[i]) // 1000} s after {_when(int(c.ts_ms[i]))} in {c.path}, longer "
            f"than max_gap_s ({max_gap_ms // 1000} s)"
        )
    if int(c.ts_ms[-1] - c.ts_ms[0]) < horizon_ms:
        raise ValidationError(f"{name}: {c.path} covers less than the liquidation horizon")


def _when(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def history_scenarios(
    candles: Mapping[str, Candles],
    markets: Sequence[str] | None = None,
    horizon_s: int = 3600,
    quantile: float | None = None,
    joint: bool = True,
    max_gap_s: int | None = None,
) -> Scenarios:
    """Each market's up and down shock and the joint scenarios, from candles keyed by market (see above).

    ``markets``: the scenarios' markets, in the book's order (default: the keys of ``candles``).
    """
    markets = tuple(candles) if markets is None else tuple(markets)
    if not markets:
        raise ValidationError("no markets to build scenarios for")
    missing = [m for m in markets if m not in candles]
    if missing:
        raise ValidationError(f"no candles for market {missing[0]!r}")
    if isinstance(horizon_s, bool) or not isinstance(horizon_s, int) or horizon_s <= 0:
        raise ValidationError("horizon_s must be a positive whole number of seconds")
    if quantile is not None and not (isinstance(quantile, float) and 0.5 <= quantile < 1.0):
        raise ValidationError("quantile must be None (the worst move) or a float within [0.5, 1)")
    if max_gap_s is not None and (isinstance(max_gap_s, bool) or not isinstance(max_gap_s, int) or max_gap_s <= 0):
        raise ValidationError("max_gap_s must be None or a positive whole number of seconds")
    horizon_ms = horizon_s * 1000
    max_gap_ms = None if max_gap_s is None else max_gap_s * 1000
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    for m in markets:
        c = candles[m]
        _checked(m, c, horizon_ms, max_gap_ms)
        lows, highs, n = _window_extremes(c.ts_ms.astype(np.int64), c.low, c.high, horizon_ms)
        if n == 0:
            raise ValidationError(f"{m}: no start candle with a whole horizon ahead in {c.path}")
        close = c.close[:n]
        dn = lows[:n] / close - 1.0
        upm = highs[:n] / close - 1.0
        down[m] = max(0, -_ppm(float(dn[_tail(dn, quantile, True)])))
        up[m] = max(0, _ppm(float(upm[_tail(upm, quantile, False)])))
    single = market_shocks(markets, up, down)
    return single + _joint(candles, markets, horizon_ms, quantile) if joint else single


def _joint(candles: Mapping[str, Candles], markets: tuple[str, ...], horizon_ms: int, q: float | None) -> Scenarios:
    common = candles[markets[0]].ts_ms.astype(np.int64)
    for m in markets[1:]:
        common = np.intersect1d(common, candles[m].ts_ms.astype(np.int64))
    starts = common[np.isin(common + horizon_ms, common)]
    if not len(starts):
        raise ValidationError("no common timestamps a horizon apart across the markets: no joint scenario")
    moves = np.empty((len(starts), len(markets)))
    for j, m in enumerate(markets):
        c = candles[m]
        i0 = np.searchsorted(c.ts_ms, starts)
        i1 = np.searchsorted(c.ts_ms, starts + horizon_ms)
        moves[:, j] = c.close[i1] / c.close[i0] - 1.0
    picks: dict[int, str] = {}  # row -> name (the first criterion that picks it)
    mean = moves.mean(axis=1)
    for name, values, low in [
        ("crash", mean, True),
        ("rally", mean, False),
        *[(f"{m} down", moves[:, j], True) for j, m in enumerate(markets)],
        *[(f"{m} up", moves[:, j], False) for j, m in enumerate(markets)],
    ]:
        row = _tail(values, q, low)
        picks.setdefault(row, f"{name}@{_when(int(starts[row]))}")
    rows = list(picks)
    table = [[_ppm(float(moves[r, j])) for j in range(len(markets))] for r in rows]
    return make_scenarios(markets, [picks[r] for r in rows], table, [-1] * len(rows))


def engine_history_scenarios(
    eng: Engine,
    candles: Mapping[str, Candles],
    horizon_s: int = 3600,
    quantile: float | None = None,
    joint: bool = True,
    max_gap_s: int | None = None,
) -> Scenarios:
    """:func:`history_scenarios` over the engine's markets, from candles keyed by base asset (``BTC``):
    every market moves as its base asset's candles did."""
    by_market: dict[str, Candles] = {}
    for m in eng.markets:
        asset = m.spec.base_asset
        if asset not in candles:
            raise ValidationError(f"no candles for asset {asset!r} (market {m.spec.symbol})")
        by_market[m.spec.symbol] = candles[asset]
    symbols = [m.spec.symbol for m in eng.markets]
    return history_scenarios(by_market, symbols, horizon_s, quantile, joint, max_gap_s)
