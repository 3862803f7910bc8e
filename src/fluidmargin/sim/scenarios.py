"""Input streams for the engine: a candle replay and a built-in crash, both pure functions of their inputs.

The stream never looks at engine state, so a resumed run regenerates it and skips what the log holds.

Price path inside a candle (``path``):

* ``close``: one observation per candle, the close, at the candle's open time;
* ``ohlc``: four observations at 0, 1/4, 1/2 and 3/4 of the candle: open, then the extreme on the
  side the candle did not close (low first in a green candle, high first in a red one), the other
  extreme, then the close. Liquidations then see the wicks, in the adverse order the candle allows.

Liquidation (``LIQUIDATIONS``): ``close_at_mark`` (the default venue), ``partial`` (close only what
restores the target health) or ``waterfall``: partial closes, netted per market and tick, the net sent
to the market under square-root impact (a price replay has no auction bidders), auto-deleveraging
when the insurance fund runs dry. See :func:`replay_policies`.

Funding (when given): Binance settles at T_k the rate of the interval (T_{k-1}, T_k]; the replay
publishes that rate at T_{k-1}, the start of the interval it covers, so continuous accrual charges
each interval what Binance charged. Markets must then use ``funding_source='published'``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.core.units import PRICE_DECIMALS, Rounding, parse_decimal
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import ImpactSpec, LiquidationPolicy
from fluidmargin.sim.candles import Candles, Funding
from fluidmargin.sim.population import PopulationParams, build_population

NS_PER_MS = 1_000_000
SOURCE = "replay"
PATHS = ("ohlc", "close")
LIQUIDATIONS = ("close_at_mark", "partial", "waterfall")

# the impact model's liquidity in a replay: daily volume (USD) and daily volatility (ppm) per asset
IMPACT_DAILY_VOLUME_USD = {"BTC": 20_000_000_000, "ETH": 10_000_000_000}
IMPACT_SIGMA_PPM = {"BTC": 40_000, "ETH": 50_000}
IMPACT_DEFAULT_VOLUME_USD = 1_000_000_000
IMPACT_DEFAULT_SIGMA_PPM = 80_000


@dataclass(frozen=True, slots=True)
class PopulationSpec:
    """Who trades: built at the first instant every market has a price."""

    n_accounts: int = 10_000
    seed: int = 7
    params: PopulationParams = field(default_factory=PopulationParams)
    market_weights: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A deterministic input stream with its size and natural sampling step."""

    config: EngineConfig
    candles: Mapping[str, Candles]
    funding: Mapping[str, Funding] | None
    population: PopulationSpec
    path: str = "ohlc"
    clock_every_s: int = 3600
    name: str = "replay"

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValidationError(f"path must be one of {PATHS}, not {self.path!r}")
        if not self.candles:
            raise ValidationError("no candles to replay")
        markets = {m.base_asset: m for m in self.config.markets}
        for a in self.candles:
            if a not in markets:
                raise ValidationError(f"no market on {a} in the engine config")
            if len(self.candles[a]) == 0:
                raise ValidationError(f"no candles for {a}")
        for a in self.funding or {}:
            if a not in markets:
                raise ValidationError(f"funding for {a}, which has no market")
            if markets[a].funding.source != "published":
                raise ValidationError(f"funding data for {a} needs a market with funding_source='published'")

    @property
    def step_ns(self) -> int:
        return min(c.interval_ms() for c in self.candles.values()) * NS_PER_MS

    @property
    def span_ns(self) -> tuple[int, int]:
        return (
            min(int(c.ts_ms[0]) for c in self.candles.values()) * NS_PER_MS,
            max(int(c.ts_ms[-1]) for c in self.candles.values()) * NS_PER_MS,
        )

    def events(self) -> Iterator[ev.Event]:
        return replay_events(self.config, self.candles, self.funding, self.population, self.path, self.clock_every_s)

    def count(self) -> int:
        """How many inputs :meth:`events` yields (for progress bars)."""
        return count_events(self.config, self.candles, self.funding, self.path, self.clock_every_s)


def replay_policies(
    candles: Mapping[str, Candles], size_decimals: int = 8, adl: bool = True
) -> dict[str, LiquidationPolicy]:
    """The ``waterfall`` liquidation policy of each replayed asset (for ``perp_venue(policies=...)``).

    A price replay has no auction bidders, so each market batches a tick's closes (longs netted
    against shorts) and sends the net to the market under square-root impact, with ADL behind the
    insurance fund. The impact model's daily volume is :data:`IMPACT_DAILY_VOLUME_USD` converted to
    base units at the first replayed open (exactly, from its decimal text), so the venue is a pure
    function of the data and the options, and a resumed replay rebuilds the same config.
    """
    out: dict[str, LiquidationPolicy] = {}
    for a, c in candles.items():
        usd = IMPACT_DAILY_VOLUME_USD.get(a, IMPACT_DEFAULT_VOLUME_USD)
        price = Decimal(str(c.text["open"][0]))
        if price <= 0:
            raise ValidationError(f"{a}: the first price {price} must be positive for the impact model")
        volume = max(int(Decimal(usd) * 10**size_decimals / price), 1)
        sigma = IMPACT_SIGMA_PPM.get(a, IMPACT_DEFAULT_SIGMA_PPM)
        out[a] = LiquidationPolicy(execution="impact", batch=True, impact=ImpactSpec("sqrt", volume, sigma), adl=adl)
    return out


def _market_of(config: EngineConfig, asset: str) -> str:
    return next(m.symbol for m in config.markets if m.base_asset == asset)


def price_points(c: Candles, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Observation times (ns) and decimal texts of a candle series along ``path``."""
    t0 = c.ts_ms.astype(np.int64) * NS_PER_MS
    if path == "close":
        return t0, c.text["close"]
    span = np.empty(len(t0), dtype=np.int64)
    span[:-1] = np.diff(t0)
    span[-1] = c.interval_ms() * NS_PER_MS
    span = np.minimum(span, c.interval_ms() * NS_PER_MS)
    ts = np.stack([t0 + span * k // 4 for k in range(4)], axis=1).reshape(-1)
    green = c.close >= c.open
    first = np.where(green, c.text["low"], c.text["high"])
    second = np.where(green, c.text["high"], c.text["low"])
    texts = np.stack([c.text["open"], first, second, c.text["close"]], axis=1).reshape(-1)
    return ts, texts


def _funding_schedule(f: Funding, t_start_ns: int, t_end_ns: int) -> list[tuple[int, int]]:
    """(publish time ns, rate_e9): each settled rate published at the start of its interval."""
    ts = f.ts_ms.astype(np.int64) * NS_PER_MS
    out: list[tuple[int, int]] = []
    k = int(np.searchsorted(ts, t_start_ns, side="right"))  # first settlement after the start
    if k < len(ts):
        out.append((t_start_ns, int(f.rate_e9[k])))
    for j in range(k, len(ts) - 1):
        if ts[j] > t_end_ns:
            break
        out.append((int(ts[j]), int(f.rate_e9[j + 1])))
    return out


@dataclass(frozen=True, slots=True)
class _Plan:
    assets: list[str]
    ts: np.ndarray  # price observation times, merged
    asset: np.ndarray  # index into assets
    text: np.ndarray  # decimal text
    side: list[tuple[int, int, ev.Event]]  # (ts, rank, event): funding and clock events
    t_seed: int


def _plan(
    config: EngineConfig,
    candles: Mapping[str, Candles],
    funding: Mapping[str, Funding] | None,
    path: str,
    clock_every_s: int,
) -> _Plan:
    assets = list(candles)
    pts = [price_points(candles[a], path) for a in assets]
    ts_all = np.concatenate([p[0] for p in pts])
    asset_all = np.concatenate([np.full(len(p[0]), i, dtype=np.int64) for i, p in enumerate(pts)])
    text_all = np.concatenate([p[1] for p in pts])
    order = np.lexsort((asset_all, ts_all))
    t_seed = max(int(p[0][0]) for p in pts)
    t_end = int(ts_all[order[-1]])
    # rank orders same-time side events before that instant's prices: funding, then the clock
    side: list[tuple[int, int, ev.Event]] = []
    for a, f in (funding or {}).items():
        if a in candles:
            mkt = _market_of(config, a)
            side.extend((t, 0, ev.FundingRatePublished(t, mkt, r)) for t, r in _funding_schedule(f, t_seed, t_end))
    if clock_every_s > 0:
        step = clock_every_s * 10**9
        t = (t_seed // step + 1) * step
        while t <= t_end:
            side.append((t, 1, ev.ClockAdvanced(t)))
            t += step
    side.sort(key=lambda x: (x[0], x[1]))
    return _Plan(assets, ts_all[order], asset_all[order], text_all[order], side, t_seed)


def count_events(
    config: EngineConfig,
    candles: Mapping[str, Candles],
    funding: Mapping[str, Funding] | None,
    path: str = "ohlc",
    clock_every_s: int = 3600,
) -> int:
    """How many inputs :func:`replay_events` yields (without building the population)."""
    plan = _plan(config, candles, funding, path, clock_every_s)
    return len(plan.ts) + len(plan.side) + 1


def replay_events(
    config: EngineConfig,
    candles: Mapping[str, Candles],
    funding: Mapping[str, Funding] | None,
    population: PopulationSpec,
    path: str = "ohlc",
    clock_every_s: int = 3600,
) -> Iterator[ev.Event]:
    """Prices of every asset merged in time; the population once every market has a price; funding
    rates and a ClockAdvanced every ``clock_every_s`` of event time. Time never decreases."""
    plan = _plan(config, candles, funding, path, clock_every_s)
    side = plan.side
    last_text: dict[int, str] = {}
    seeded = False
    j = 0
    for t, a, text in zip(plan.ts.tolist(), plan.asset.tolist(), plan.text.tolist(), strict=True):
        if not seeded and t > plan.t_seed:
            yield _seed_event(config, plan.assets, last_text, population, plan.t_seed)
            seeded = True
        while seeded and j < len(side) and side[j][0] <= t:
            yield side[j][2]
            j += 1
        last_text[a] = text
        yield ev.PriceObserved(t, SOURCE, plan.assets[a], text)
    if not seeded:
        yield _seed_event(config, plan.assets, last_text, population, plan.t_seed)
    for _t, _r, e in side[j:]:
        yield e


def _seed_event(
    config: EngineConfig,
    assets: Sequence[str],
    last_text: Mapping[int, str],
    population: PopulationSpec,
    ts_ns: int,
) -> ev.AccountsSeeded:
    prices = {
        _market_of(config, a): parse_decimal(last_text[i], PRICE_DECIMALS, Rounding.FLOOR, "price")
        for i, a in enumerate(assets)
    }
    return build_population(
        config,
        prices,
        population.n_accounts,
        population.seed,
        ts_ns,
        population.params,
        population.market_weights,
        event_id=f"population-{population.seed}",
    )


# --- the built-in crash ------------------------------------------------------------------------------

CRASH_START_MS = 1_704_067_200_000  # 2024-01-01T00:00Z


@dataclass(frozen=True, slots=True)
class CrashParams:
    """A seeded GBM with a crash: the drop is spread over ``crash_hours`` then partly recovered."""

    days: float = 3.0
    step_s: int = 60
    start_prices: tuple[tuple[str, float], ...] = (("BTC", 60_000.0), ("ETH", 3_000.0))
    drops: tuple[tuple[str, float], ...] = (("BTC", 0.35), ("ETH", 0.42))
    crash_at_day: float | None = None  # None: half-way
    crash_hours: float = 4.0
    rebound: float = 0.4  # share of the drop recovered
    rebound_hours: float = 8.0
    annual_vol: float = 0.6
    crash_vol_mult: float = 3.0
    correlation: float = 0.85


def _decimal2(x: np.ndarray) -> np.ndarray:
    return np.array([f"{v:.2f}" for v in x.tolist()], dtype=object)


def crash_candles(seed: int, p: CrashParams | None = None) -> dict[str, Candles]:
    """1-minute OHLC candles per asset: random walk + a crash shaped by a smooth step in log price."""
    p = p or CrashParams()
    rng = make_rng(seed)
    n = int(p.days * 86_400 // p.step_s)
    t_min = np.arange(n, dtype=np.float64) * p.step_s / 60.0
    at = p.days / 2 if p.crash_at_day is None else p.crash_at_day
    c0, c1 = at * 1440.0, at * 1440.0 + p.crash_hours * 60.0
    r1 = c1 + p.rebound_hours * 60.0
    down = np.clip((t_min - c0) / (c1 - c0), 0.0, 1.0)
    down = down * down * (3 - 2 * down)  # smoothstep: accelerating, then exhausting
    up = np.clip((t_min - c1) / (r1 - c1), 0.0, 1.0)
    up = up * up * (3 - 2 * up)
    in_crash = (t_min >= c0) & (t_min <= r1)
    sigma = p.annual_vol * math.sqrt(p.step_s / (365 * 86_400)) * np.where(in_crash, p.crash_vol_mult, 1.0)
    common = rng.standard_normal(n)
    drops = dict(p.drops)
    out: dict[str, Candles] = {}
    ts_ms = CRASH_START_MS + (np.arange(n, dtype=np.int64) * p.step_s * 1000)
    for asset, s0 in p.start_prices:
        own = rng.standard_normal(n)
        z = p.correlation * common + math.sqrt(1 - p.correlation**2) * own
        drop = drops.get(asset, 0.0)
        shape = math.log(1 - drop) * down - math.log(1 - drop) * p.rebound * up
        logp = math.log(s0) + np.cumsum(sigma * z - 0.5 * sigma**2) + shape
        close = np.exp(logp)
        open_ = np.concatenate([[s0], close[:-1]])
        wick = np.abs(rng.standard_normal((2, n))) * sigma * 0.6
        high = np.maximum(open_, close) * (1 + wick[0])
        low = np.minimum(open_, close) * (1 - wick[1])
        text = {
            "open": _decimal2(open_),
            "high": _decimal2(high),
            "low": _decimal2(low),
            "close": _decimal2(close),
        }
        # the text is what is published: keep the floats consistent with it
        fl = {k: v.astype(np.float64) for k, v in text.items()}
        fl["high"] = np.maximum.reduce([fl["high"], fl["open"], fl["close"]])
        fl["low"] = np.minimum.reduce([fl["low"], fl["open"], fl["close"]])
        text["high"], text["low"] = _decimal2(fl["high"]), _decimal2(fl["low"])
        out[asset] = Candles(
            f"<crash seed={seed} {asset}>", ts_ms.copy(), fl["open"], fl["high"], fl["low"], fl["close"], text
        )
    return out
