"""Stress overlays: pure transformations of an engine input stream (what ``replay_events`` yields).

Each overlay takes a stream of :mod:`~fluidmargin.model.events` inputs in time order and returns another
(lazily, in time order, every input's time at or after the one before), so overlays chain:
``oracle_outage(oracle_latency(scenario.events(), ...), ...)``. Arguments are checked when the overlay is
called (a ValidationError with the reason), before any event flows. Random choices are seeded
(:func:`fluidmargin.core.rng.make_rng`); the same inputs and seed give the same stream.

* :func:`oracle_latency`: the selected sources' prints arrive ``delay_ns`` (plus a seeded jitter) late;
  each source's prints keep their order (strictly later times). The engine sees the old price at the
  later time (a print carries one time). Prints before the population is seeded (the warm-up that
  prices it) are not delayed unless ``start_ns`` says otherwise.
* :func:`oracle_outage`: the selected sources print nothing within the windows; the engine's index
  goes stale after the asset's ``max_staleness_ns`` (opening risk and withdrawals are refused) and the
  move made in the dark arrives at once when the source returns. :func:`outage_windows` draws windows.
* :func:`liquidity_crunch`: as an asset's drawdown from its rolling peak deepens past each level, its
  markets' square-root impact coefficient (``liquidation.impact.coefficient_ppm``, a parameter the
  engine accepts) is multiplied by the level's factor through logged ``ParameterChangeRequested``
  inputs, and put back as the price recovers (with hysteresis); the markets must execute liquidations
  under impact.
* :func:`collateral_depeg`: collateral priced by its own oracle asset (a stablecoin, a liquid staking
  token) prints a price that falls with a driver asset's drawdown (``peg x (1 - beta x (drawdown -
  threshold))``, with seeded noise), one print per driver print, from its own source.
* :func:`funding_spike`: within a window the published funding rate of the selected markets is
  overridden by ``rate_e9`` (``FundingRatePublished`` at the start, the stream's own publications in
  the window replaced) and the last published rate restored at the end.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.core.units import PPM, PRICE_DECIMALS, Rounding, div_round, format_decimal, parse_decimal
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import ImpactSpec

Events = Iterable[ev.Event]
DAY_NS = 86_400 * 10**9
COEFFICIENT_PARAMETER = "liquidation.impact.coefficient_ppm"
MAX_COEFFICIENT_PPM = ImpactSpec.RANGES["coefficient_ppm"][1]


def _int(name: str, v: object, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValidationError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _names(name: str, v: Iterable[str] | None) -> frozenset[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        raise ValidationError(f"{name} must be a collection of names, not the string {v!r}")
    out = frozenset(v)
    if not out or not all(isinstance(x, str) and x for x in out):
        raise ValidationError(f"{name} must be non-empty names (None: all)")
    return out


def _selected(e: ev.Event, sources: frozenset[str] | None, assets: frozenset[str] | None) -> bool:
    return (
        isinstance(e, ev.PriceObserved)
        and (sources is None or e.source in sources)
        and (assets is None or e.asset in assets)
    )


def _price(text: str) -> float | None:
    """A print's price as a float for drawdowns (None: not a positive number; the engine refuses it)."""
    try:
        v = float(Decimal(text))
    except (InvalidOperation, ValueError, TypeError):
        return None
    return v if math.isfinite(v) and v > 0.0 else None


class _Peak:
    """Each asset's highest print over a trailing window (a monotonic deque), and its drawdown."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.q: dict[str, deque[tuple[int, float]]] = {}

    def drawdown(self, asset: str, ts_ns: int, price: float) -> float:
        q = self.q.setdefault(asset, deque())
        while q and q[-1][1] <= price:
            q.pop()
        q.append((ts_ns, price))
        while q[0][0] < ts_ns - self.window_ns:
            q.popleft()
        return 1.0 - price / q[0][1]


# --- oracle latency ----------------------------------------------------------------------------------


def oracle_latency(
    events: Events,
    delay_ns: int,
    jitter_ns: int = 0,
    seed: int = 0,
    sources: Iterable[str] | None = None,
    assets: Iterable[str] | None = None,
    start_ns: int | None = None,
) -> Iterator[ev.Event]:
    """Prints of ``sources`` on ``assets`` (None: all) arrive ``delay_ns`` + U{0..jitter_ns} late
    (seeded), from ``start_ns`` on (None: from the first ``AccountsSeeded``). A source's prints stay in
    order at strictly increasing times; the stream is re-merged by arrival (ties in input order)."""
    _int("delay_ns", delay_ns)
    _int("jitter_ns", jitter_ns)
    _int("seed", seed)
    if start_ns is not None:
        _int("start_ns", start_ns)
    return _latency(events, delay_ns, jitter_ns, seed, _names("sources", sources), _names("assets", assets), start_ns)


def _latency(
    events: Events,
    delay_ns: int,
    jitter_ns: int,
    seed: int,
    sources: frozenset[str] | None,
    assets: frozenset[str] | None,
    start_ns: int | None,
) -> Iterator[ev.Event]:
    rng = make_rng(seed)
    heap: list[tuple[int, int, ev.Event]] = []
    last: dict[tuple[str, str], int] = {}
    start = start_ns
    for n, e in enumerate(events):
        if start is None and isinstance(e, ev.AccountsSeeded):
            start = e.ts_ns
        item = e
        if isinstance(e, ev.PriceObserved):
            key = (e.asset, e.source)
            t = e.ts_ns
            if _selected(e, sources, assets) and start is not None and e.ts_ns >= start:
                t += delay_ns + (int(rng.integers(0, jitter_ns + 1)) if jitter_ns else 0)
            t = max(t, last.get(key, -1) + 1)
            last[key] = t
            if t != e.ts_ns:
                item = dataclasses.replace(e, ts_ns=t)
        heapq.heappush(heap, (item.ts_ns, n, item))
        while heap and heap[0][0] <= e.ts_ns:  # nothing still to come can arrive before e's time
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


# --- oracle outages ----------------------------------------------------------------------------------


def _windows(windows: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out = []
    for w in windows:
        if not (isinstance(w, tuple | list) and len(w) == 2):
            raise ValidationError(f"a window is (start_ns, end_ns), got {w!r}")
        a, b = _int("window start_ns", w[0]), _int("window end_ns", w[1])
        if b <= a:
            raise ValidationError(f"window ({a}, {b}) ends before it starts")
        out.append((a, b))
    return tuple(sorted(out))


def oracle_outage(
    events: Events,
    windows: Sequence[tuple[int, int]],
    sources: Iterable[str] | None = None,
    assets: Iterable[str] | None = None,
) -> Iterator[ev.Event]:
    """The prints of ``sources`` on ``assets`` (None: all) within any window [start_ns, end_ns) are
    dropped; everything else passes unchanged."""
    ws = _windows(windows)
    if not ws:
        raise ValidationError("no outage windows")
    src, ast = _names("sources", sources), _names("assets", assets)
    return (e for e in events if not (_selected(e, src, ast) and any(a <= e.ts_ns < b for a, b in ws)))


def outage_windows(seed: int, start_ns: int, end_ns: int, count: int, mean_ns: int) -> list[tuple[int, int]]:
    """``count`` seeded outage windows within [start_ns, end_ns): uniform starts, lengths uniform in
    [mean/2, 3 mean/2] (integers), cut at ``end_ns``, sorted (they may overlap)."""
    _int("seed", seed)
    _int("count", count, 1)
    _int("mean_ns", mean_ns, 2)
    if _int("end_ns", end_ns) <= _int("start_ns", start_ns):
        raise ValidationError(f"the span ({start_ns}, {end_ns}) ends before it starts")
    rng = make_rng(seed)
    starts = rng.integers(start_ns, end_ns, size=count, dtype="int64").tolist()
    lengths = rng.integers(mean_ns // 2, mean_ns * 3 // 2 + 1, size=count, dtype="int64").tolist()
    return sorted((s, min(s + max(n, 1), end_ns)) for s, n in zip(starts, lengths, strict=True))


# --- liquidity drying up -----------------------------------------------------------------------------


def _levels(levels: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    out = tuple((float(d), float(m)) for d, m in levels)
    if not out:
        raise ValidationError("no drawdown levels")
    for d, m in out:
        if not (math.isfinite(d) and math.isfinite(m)) or not 0.0 < d < 1.0 or m < 1.0:
            raise ValidationError(f"a level is (drawdown in (0, 1), multiplier >= 1), got ({d}, {m})")
    if any(b[0] <= a[0] or b[1] < a[1] for a, b in itertools.pairwise(out)):
        raise ValidationError("levels must deepen (increasing drawdowns) and worsen (non-decreasing multipliers)")
    return out


def liquidity_crunch(
    events: Events,
    config: EngineConfig,
    levels: Sequence[tuple[float, float]] = ((0.05, 2.0), (0.10, 4.0), (0.20, 8.0)),
    window_ns: int = DAY_NS,
    assets: Iterable[str] | None = None,
    hysteresis: float = 0.01,
    tag: str = "liquidity",
) -> Iterator[ev.Event]:
    """Impact that worsens with the move: ``levels`` are (drawdown, multiplier of the impact coefficient),
    the drawdown of each print from the asset's highest print within ``window_ns``. When an asset's
    level changes, a ``ParameterChangeRequested`` per market on it sets the coefficient to the
    configured one times the level's multiplier (x1 above the first level), just before that print.
    A level is reached at its drawdown and left once the drawdown is ``hysteresis`` below it (so the
    wiggles of a price at a level do not flap the parameter)."""
    lv = _levels(levels)
    _int("window_ns", window_ns, 1)
    if not (isinstance(hysteresis, int | float) and 0.0 <= hysteresis < lv[0][0]):
        raise ValidationError(f"hysteresis must be in [0, {lv[0][0]}) (the first level), got {hysteresis!r}")
    want = _names("assets", assets)
    base: dict[str, list[tuple[str, int]]] = {}
    for m in config.markets:
        if want is not None and m.base_asset not in want:
            continue
        if m.liquidation.execution != "impact":
            raise ValidationError(
                f"market {m.symbol} executes liquidations by {m.liquidation.execution!r}: impact parameters would "
                "change nothing (use an impact venue, e.g. replay_venue(..., liquidation='waterfall'))"
            )
        coeff = m.liquidation.impact.coefficient_ppm
        if coeff * lv[-1][1] > MAX_COEFFICIENT_PPM:
            raise ValidationError(f"market {m.symbol}: {coeff} ppm x {lv[-1][1]} exceeds {MAX_COEFFICIENT_PPM} ppm")
        base.setdefault(m.base_asset, []).append((m.symbol, coeff))
    if want is not None and want - set(base):
        raise ValidationError(f"no market on {', '.join(sorted(want - set(base)))}")
    return _crunch(events, lv, window_ns, base, float(hysteresis), tag)


def _crunch(
    events: Events,
    levels: tuple[tuple[float, float], ...],
    window_ns: int,
    base: Mapping[str, list[tuple[str, int]]],
    hysteresis: float,
    tag: str,
) -> Iterator[ev.Event]:
    peak = _Peak(window_ns)
    level: dict[str, int] = {}
    for e in events:
        if isinstance(e, ev.PriceObserved) and e.asset in base and (p := _price(e.price)) is not None:
            dd = peak.drawdown(e.asset, e.ts_ns, p)
            now = level.get(e.asset, 0)
            k = sum(1 for d, _m in levels if dd >= d)
            if k < now:
                k = min(now, sum(1 for d, _m in levels if dd >= d - hysteresis))
            if k != now:
                level[e.asset] = k
                mult = levels[k - 1][1] if k else 1.0
                why = f"drawdown_ppm={round(dd * PPM)};level={k};multiplier={mult}"
                for symbol, coeff in base[e.asset]:
                    yield ev.ParameterChangeRequested(
                        e.ts_ns,
                        symbol,
                        COEFFICIENT_PARAMETER,
                        round(coeff * mult),
                        f"{tag}:{symbol}:{e.ts_ns}:{k}",
                        inputs=why,
                    )
        yield e


# --- collateral de-pegs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Depeg:
    """A collateral's oracle ``asset`` printing ``peg x (1 - beta x max(0, drawdown - threshold))`` of the
    ``driver`` asset's drawdown, times 1 + U{-noise_ppm..noise_ppm} ppm, from ``source``."""

    asset: str
    driver: str
    peg: str = "1"
    beta: float = 0.5
    threshold: float = 0.0
    noise_ppm: int = 0
    source: str = "depeg"

    def __post_init__(self) -> None:
        if not (self.asset and self.driver and self.source) or self.asset == self.driver:
            raise ValidationError(f"a de-peg needs an asset, a different driver and a source, got {self!r}")
        if not (math.isfinite(self.beta) and 0.0 <= self.beta <= 1.0):
            raise ValidationError(f"{self.asset}: beta must be in [0, 1], got {self.beta}")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold < 1.0):
            raise ValidationError(f"{self.asset}: threshold must be in [0, 1), got {self.threshold}")
        _int(f"{self.asset}: noise_ppm", self.noise_ppm)
        if self.noise_ppm >= PPM // 2:
            raise ValidationError(f"{self.asset}: noise_ppm must be below 500000")
        if parse_decimal(self.peg, PRICE_DECIMALS, Rounding.FLOOR, "peg") <= 0:
            raise ValidationError(f"{self.asset}: peg {self.peg!r} must be positive")


def collateral_depeg(
    events: Events,
    depegs: Sequence[Depeg],
    config: EngineConfig | None = None,
    window_ns: int = DAY_NS,
    seed: int = 0,
) -> Iterator[ev.Event]:
    """After each print of a de-peg's driver (a later time than its last one), a print of the collateral
    asset (see :class:`Depeg`; drawdowns from the driver's highest print within ``window_ns``). With
    ``config``, each asset must price a collateral and each driver have a market."""
    if not depegs:
        raise ValidationError("no de-pegs")
    _int("window_ns", window_ns, 1)
    _int("seed", seed)
    if len({d.asset for d in depegs}) != len(depegs):
        raise ValidationError("one de-peg per collateral asset")
    if config is not None:
        priced = {c.price_asset for c in config.collateral if c.price_asset}
        markets = {m.base_asset for m in config.markets}
        for d in depegs:
            if d.asset not in priced:
                raise ValidationError(f"no collateral is priced by {d.asset!r} in the config")
            if d.driver not in markets:
                raise ValidationError(f"no market on the driver {d.driver!r} in the config")
    return _depeg(events, tuple(depegs), window_ns, seed)


def _depeg(events: Events, depegs: tuple[Depeg, ...], window_ns: int, seed: int) -> Iterator[ev.Event]:
    rng = make_rng(seed)
    peak = _Peak(window_ns)
    pegs = [parse_decimal(d.peg, PRICE_DECIMALS, Rounding.FLOOR, "peg") for d in depegs]
    last: dict[str, int] = {}
    for e in events:
        yield e
        if not isinstance(e, ev.PriceObserved) or (p := _price(e.price)) is None:
            continue
        if not any(d.driver == e.asset for d in depegs):
            continue
        dd = peak.drawdown(e.asset, e.ts_ns, p)
        for d, peg_q in zip(depegs, pegs, strict=True):
            if d.driver != e.asset or e.ts_ns <= last.get(d.asset, -1):
                continue
            last[d.asset] = e.ts_ns
            factor_ppm = PPM - round(d.beta * max(0.0, dd - d.threshold) * PPM)
            noise = int(rng.integers(-d.noise_ppm, d.noise_ppm + 1)) if d.noise_ppm else 0
            price_q = max(div_round(peg_q * factor_ppm * (PPM + noise), PPM * PPM, Rounding.FLOOR), 1)
            yield ev.PriceObserved(e.ts_ns, d.source, d.asset, format_decimal(price_q, PRICE_DECIMALS))


# --- funding spikes ----------------------------------------------------------------------------------


def funding_spike(
    events: Events,
    config: EngineConfig,
    markets: Iterable[str],
    start_ns: int,
    end_ns: int,
    rate_e9: int,
    tag: str = "funding-spike",
) -> Iterator[ev.Event]:
    """Within [start_ns, end_ns) the published funding rate of ``markets`` is ``rate_e9`` (per interval,
    1e-9): published at ``start_ns``, the stream's own publications in the window replaced by it, and the
    last rate the stream published (0 if none) published again at ``end_ns``. The markets must take
    published rates and ``rate_e9`` be within their cap (the engine would clamp it)."""
    names = _names("markets", markets)
    assert names is not None
    if _int("end_ns", end_ns) <= _int("start_ns", start_ns):
        raise ValidationError(f"the window ({start_ns}, {end_ns}) ends before it starts")
    if isinstance(rate_e9, bool) or not isinstance(rate_e9, int):
        raise ValidationError(f"rate_e9 must be an integer, got {rate_e9!r}")
    spec = {m.symbol: m for m in config.markets}
    for name in sorted(names):
        m = spec.get(name)
        if m is None:
            raise ValidationError(f"unknown market {name!r}")
        if m.funding.source != "published":
            raise ValidationError(f"market {name} computes its own funding: a published rate would be refused")
        if abs(rate_e9) > m.funding.cap_e9:
            raise ValidationError(f"market {name}: rate {rate_e9} e-9 is beyond its cap ±{m.funding.cap_e9} e-9")
    return _spike(events, tuple(sorted(names)), start_ns, end_ns, rate_e9, tag)


def _spike(
    events: Events, markets: tuple[str, ...], start_ns: int, end_ns: int, rate_e9: int, tag: str
) -> Iterator[ev.Event]:
    original = dict.fromkeys(markets, 0)
    phase = 0  # 0 before the window, 1 inside, 2 after

    def publish(ts: int, rates: Mapping[str, int], what: str) -> Iterator[ev.Event]:
        for m in markets:
            yield ev.FundingRatePublished(ts, m, rates[m], f"{tag}:{what}:{m}:{ts}")

    for e in events:
        if phase == 0 and e.ts_ns >= start_ns:
            phase = 1
            yield from publish(start_ns, dict.fromkeys(markets, rate_e9), "start")
        if phase == 1 and e.ts_ns >= end_ns:
            phase = 2
            yield from publish(end_ns, original, "end")
        if isinstance(e, ev.FundingRatePublished) and e.market in original:
            original[e.market] = e.rate_e9
            if phase == 1:
                continue
        yield e
