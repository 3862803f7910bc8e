"""Stress runs: many seeded price paths of a scenario, each through a fresh engine, scored per path.

A run is a :class:`StressSpec` (the price generator: a calibrated :class:`~fluidmargin.sim.paths.MonteCarlo`
or a :class:`Bootstrap` of real returns; the steps of a path; the population; the venue; stress
overlays), a number of paths and a base seed. Path ``i``:

1. its seed is :func:`path_seed` (base seed, i): a ``numpy.random.SeedSequence`` of the base seed with
   spawn key ``(i,)``, so it depends on nothing but the two numbers (not on the number of paths, the
   executor or the order paths finish in); each overlay gets its own seed the same way;
2. the generator draws one path of ``n_steps`` from that seed (:meth:`MonteCarlo.simulate` or
   :func:`~fluidmargin.sim.paths.bootstrap`), made into candles (:meth:`~fluidmargin.sim.paths.Paths.candles`,
   prices on the market's quantum) and replayed as the evaluation harness replays candles
   (:class:`~fluidmargin.sim.scenarios.Scenario` on the venue of :func:`~fluidmargin.sim.venues.replay_venue`;
   one print per step with ``path="close"``), with the population seeded at the first step;
3. the overlays (:mod:`fluidmargin.sim.overlays`) transform the stream, in the order given;
4. a fresh :class:`~fluidmargin.engine.Engine` applies it; :class:`~fluidmargin.sim.metrics.PathTally`
   folds its outputs into :class:`~fluidmargin.sim.metrics.PathMetrics`, sampling the requirement and
   open interest at ``samples`` instants evenly spread over the path (the last at its end).

:func:`run_stress` runs the paths on an executor (:mod:`fluidmargin.sim.executors`) and summarises them
in index order (:func:`~fluidmargin.sim.metrics.summarise`): the same spec, paths and seed give the same
numbers serially, on a process pool or on a Dask cluster (each path's engine state hash included).

The population is the same on every path by default (the book under stress; its own seed), priced at
each path's first step; ``vary_population`` draws it from the path's seed instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.core.units import QUOTE_SCALE
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.risk.stats.jump_models import MertonParams
from fluidmargin.sim import overlays as ov
from fluidmargin.sim.candles import Candles
from fluidmargin.sim.executors import Executor, Progress, SerialExecutor
from fluidmargin.sim.history import AlignedHistory
from fluidmargin.sim.metrics import PathMetrics, PathTally, StressSummary, level_fraction, summarise
from fluidmargin.sim.paths import MAX_CELLS, METHODS, AssetModel, GbmParams, MonteCarlo, Paths, Regime, RegimeChain
from fluidmargin.sim.paths import bootstrap as bootstrap_paths
from fluidmargin.sim.paths import calibrate as calibrate_mc
from fluidmargin.sim.population import PopulationParams
from fluidmargin.sim.scenarios import LIQUIDATIONS, PATHS, PopulationSpec, Scenario
from fluidmargin.sim.venues import PRESETS, replay_venue

MODELS = ("gbm", "merton", "kou", "bootstrap")
NS_PER_S = 10**9
MAX_PATHS = 1_000_000


def _int(name: str, v: object, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo or (hi is not None and v > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValidationError(f"{name} must be an integer {bound}, got {v!r}")
    return int(v)


def _float(name: str, v: object, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValidationError(f"{name} must be a finite number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        raise ValidationError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
    return float(v)


# --- seeds ---------------------------------------------------------------------------------------------


def seed_of(base: int, key: Sequence[int]) -> int:
    """A 64-bit seed from ``base`` and a spawn key (``numpy.random.SeedSequence``: a fixed hash, the same
    on any machine)."""
    s = np.random.SeedSequence(_int("seed", base), spawn_key=tuple(key)).generate_state(2, dtype=np.uint32)
    return int(s[0]) | (int(s[1]) << 32)


def path_seed(base: int, index: int) -> int:
    """The seed of path ``index`` of a run seeded ``base``."""
    return seed_of(base, (_int("path index", index),))


# --- generators ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Bootstrap:
    """Block bootstrap of ``history``'s returns (:func:`fluidmargin.sim.paths.bootstrap`) as a generator."""

    history: AlignedHistory
    mean_block: float = 60.0
    method: Literal["stationary", "circular"] = "stationary"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValidationError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        n = len(self.history.ratios())
        if n < 1:
            raise ValidationError("the history has no return over a whole interval")
        _float("mean_block", self.mean_block, 1.0, float(n))

    @property
    def assets(self) -> tuple[str, ...]:
        return self.history.assets

    def simulate(self, n_paths: int, n_steps: int, seed: int) -> Paths:
        return bootstrap_paths(self.history, n_paths, n_steps, seed, self.mean_block, self.method)


Generator = MonteCarlo | Bootstrap


def generator_from_history(
    history: AlignedHistory, model: str, mean_block: float = 60.0, regimes: RegimeChain | None = None
) -> Generator:
    """``model`` fitted to (or, for ``bootstrap``, resampling) ``history``: gbm, merton, kou or bootstrap."""
    if model not in MODELS:
        raise ValidationError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    if model == "bootstrap":
        return Bootstrap(history, mean_block)
    return calibrate_mc(history, model, regimes)  # type: ignore[arg-type]


# --- overlays ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """What an overlay knows of the path it transforms: its config, span and step (ns)."""

    config: EngineConfig
    start_ns: int
    end_ns: int
    step_ns: int


@dataclass(frozen=True, slots=True)
class Latency:
    """Every print arrives ``delay_ms`` (+ a seeded U{0..jitter_ms}) late
    (:func:`~fluidmargin.sim.overlays.oracle_latency`)."""

    name: ClassVar[str] = "latency"
    delay_ms: int = 5_000
    jitter_ms: int = 0

    def __post_init__(self) -> None:
        _int("latency delay_ms", self.delay_ms, 0, 86_400_000)
        _int("latency jitter_ms", self.jitter_ms, 0, 86_400_000)

    def apply(self, events: Iterable[ev.Event], w: Window, seed: int) -> Iterator[ev.Event]:
        return ov.oracle_latency(events, self.delay_ms * 1_000_000, self.jitter_ms * 1_000_000, seed)


@dataclass(frozen=True, slots=True)
class Outage:
    """``count`` seeded oracle outages of ``mean_s`` on average (:func:`~fluidmargin.sim.overlays.oracle_outage`),
    from the second step on (the first prices the population)."""

    name: ClassVar[str] = "outage"
    count: int = 2
    mean_s: int = 600

    def __post_init__(self) -> None:
        _int("outage count", self.count, 1, 10_000)
        _int("outage mean_s", self.mean_s, 1, 365 * 86_400)

    def apply(self, events: Iterable[ev.Event], w: Window, seed: int) -> Iterator[ev.Event]:
        start = w.start_ns + 2 * w.step_ns
        end = max(w.end_ns, start + 1)
        windows = ov.outage_windows(seed, start, end, self.count, self.mean_s * NS_PER_S)
        return ov.oracle_outage(events, windows)


@dataclass(frozen=True, slots=True)
class Crunch:
    """Liquidity drying up with the move (:func:`~fluidmargin.sim.overlays.liquidity_crunch`): ``levels``
    (drawdown, impact multiplier); needs liquidation by ``waterfall`` (impact execution)."""

    name: ClassVar[str] = "crunch"
    levels: tuple[tuple[float, float], ...] = ((0.05, 2.0), (0.10, 4.0), (0.20, 8.0))
    window_s: int = 86_400

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValidationError("crunch levels: at least one (drawdown, multiplier)")
        for lv in self.levels:
            if not (isinstance(lv, tuple) and len(lv) == 2):
                raise ValidationError(f"a crunch level is (drawdown, multiplier), got {lv!r}")
            _float("crunch drawdown", lv[0], 0.0, 1.0, lo_open=True)
            _float("crunch multiplier", lv[1], 1.0, 1_000.0)
        _int("crunch window_s", self.window_s, 1)

    def apply(self, events: Iterable[ev.Event], w: Window, seed: int) -> Iterator[ev.Event]:
        return ov.liquidity_crunch(events, w.config, self.levels, self.window_s * NS_PER_S)


@dataclass(frozen=True, slots=True)
class FundingSpike:
    """Every market's funding rate set to ``rate_e9`` per interval for ``hours``, from ``at`` of the path
    (a fraction of its span) (:func:`~fluidmargin.sim.overlays.funding_spike`); the venue then takes
    published rates."""

    name: ClassVar[str] = "funding"
    rate_e9: int = 3_000_000
    at: float = 0.5
    hours: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.rate_e9, bool) or not isinstance(self.rate_e9, int):
            raise ValidationError(f"funding rate_e9 must be an integer, got {self.rate_e9!r}")
        _float("funding at", self.at, 0.0, 1.0)
        _float("funding hours", self.hours, 0.0, 24.0 * 365, lo_open=True)

    def apply(self, events: Iterable[ev.Event], w: Window, seed: int) -> Iterator[ev.Event]:
        start = w.start_ns + int((w.end_ns - w.start_ns) * self.at)
        end = start + max(1, int(self.hours * 3600 * NS_PER_S))
        markets = [m.symbol for m in w.config.markets]
        return ov.funding_spike(events, w.config, markets, start, end, self.rate_e9)


Overlay = Latency | Outage | Crunch | FundingSpike
OVERLAYS: dict[str, type[Latency] | type[Outage] | type[Crunch] | type[FundingSpike]] = {
    c.name: c for c in (Latency, Outage, Crunch, FundingSpike)
}


def parse_overlay(text: str) -> Overlay:
    """``NAME`` or ``NAME:key=value,key=value`` (e.g. ``latency:delay_ms=5000,jitter_ms=1000``,
    ``crunch:levels=0.05x2+0.1x4``): one of :data:`OVERLAYS`, its fields as keys."""
    name, _, rest = text.strip().partition(":")
    cls = OVERLAYS.get(name.strip().lower())
    if cls is None:
        raise ValidationError(f"unknown overlay {name!r}: choose from {', '.join(OVERLAYS)}")
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    args: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in kinds:
            raise ValidationError(f"overlay {cls.name}: {item!r} is not one of {', '.join(f'{k}=...' for k in kinds)}")
        args[key] = _parse_value(f"{cls.name} {key}", kinds[key], value)
    return cls(**args)


def _parse_value(what: str, kind: object, text: str) -> Any:
    """An int, a float or crunch levels (``0.05x2+0.1x4``) from text; non-finite floats are refused
    by the overlay's own checks."""
    try:
        if kind == "int":
            return int(text.replace("_", ""))
        if kind == "float":
            return float(text)
        pairs = [p.split("x") for p in text.split("+")]
        return tuple((float(d), float(m)) for d, m in pairs)
    except ValueError:
        raise ValidationError(f"{what}: cannot read {text!r}") from None


# --- the spec ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VenueSpec:
    """The venue every path runs on: :func:`~fluidmargin.sim.venues.replay_venue` of the path's candles."""

    preset: str = "binance"
    liquidation: str = "waterfall"
    insurance_usd: int = 1_000_000
    max_jump_ppm: int = 250_000

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValidationError(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        if self.liquidation not in LIQUIDATIONS:
            raise ValidationError(f"liquidation must be one of {', '.join(LIQUIDATIONS)}, not {self.liquidation!r}")
        _int("insurance_usd", self.insurance_usd, 0, 10**12)
        _int("max_jump_ppm", self.max_jump_ppm, 1, 10**6)

    def config(self, candles: Mapping[str, Candles], published_funding: bool) -> EngineConfig:
        return replay_venue(
            candles,
            self.liquidation,
            self.preset,
            self.insurance_usd,
            "published" if published_funding else "computed",
            self.max_jump_ppm,
        )


@dataclass(frozen=True, slots=True, eq=False)
class StressSpec:
    """A scenario to stress (see the module docstring). ``venue``: a :class:`VenueSpec`, or an
    ``EngineConfig`` with a market on every generated asset. ``samples``: requirement samples per path."""

    generator: Generator
    n_steps: int = 1_440
    population: PopulationSpec = field(default_factory=lambda: PopulationSpec(1_000, 7))
    venue: VenueSpec | EngineConfig = field(default_factory=VenueSpec)
    overlays: tuple[Overlay, ...] = ()
    path: str = "close"
    samples: int = 24
    vary_population: bool = False
    state_hash: bool = True
    name: str = "stress"

    def __post_init__(self) -> None:
        if not isinstance(self.generator, MonteCarlo | Bootstrap):
            raise ValidationError("generator must be a MonteCarlo or a Bootstrap")
        _int("n_steps", self.n_steps, 1, MAX_CELLS // len(self.generator.assets))
        _int("samples", self.samples, 1, 100_000)
        _int("accounts", self.population.n_accounts, 1, 10_000_000)
        _int("population seed", self.population.seed)
        if self.path not in PATHS:
            raise ValidationError(f"path must be one of {', '.join(PATHS)}, not {self.path!r}")
        if not isinstance(self.venue, VenueSpec | EngineConfig):
            raise ValidationError("venue must be a VenueSpec or an EngineConfig")
        for o in self.overlays:
            if not isinstance(o, Latency | Outage | Crunch | FundingSpike):
                raise ValidationError(f"unknown overlay {o!r}: choose from {', '.join(OVERLAYS)}")

    @property
    def assets(self) -> tuple[str, ...]:
        return self.generator.assets

    def config(self, candles: Mapping[str, Candles]) -> EngineConfig:
        if isinstance(self.venue, EngineConfig):
            return self.venue
        return self.venue.config(candles, any(isinstance(o, FundingSpike) for o in self.overlays))

    def scenario(self, base_seed: int, index: int) -> tuple[Scenario, Iterator[ev.Event], int]:
        """Path ``index``'s scenario, its input stream (overlays applied) and its seed."""
        seed = path_seed(base_seed, index)
        paths = self.generator.simulate(1, self.n_steps, seed)
        config = self.config(paths.candles(0))
        candles = paths.candles(0, config)
        pop = self.population
        if self.vary_population:
            pop = dataclasses.replace(pop, seed=seed_of(base_seed, (index, 2)))
        sc = Scenario(config, candles, None, pop, path=self.path, name=f"{self.name} path {index}")
        lo, hi = sc.span_ns
        w = Window(config, lo, hi + sc.step_ns, sc.step_ns)
        events: Iterator[ev.Event] = sc.events()
        for k, o in enumerate(self.overlays):
            events = o.apply(events, w, seed_of(base_seed, (index, 1, k)))
        return sc, events, seed

    def check(self) -> None:
        """Everything a path would refuse, refused now (before any path runs): the venue against the
        assets, the scenario, each overlay's arguments (on a one-step probe path)."""
        probe = dataclasses.replace(self, n_steps=1)
        _sc, events, _seed = probe.scenario(0, 0)
        del events  # the overlays checked their arguments when applied


def sample_times(start_ns: int, end_ns: int, samples: int) -> list[int]:
    """``samples`` instants evenly spread over (start, end], the last at ``end_ns``."""
    span = end_ns - start_ns
    return [start_ns + -(-k * span // samples) for k in range(1, samples + 1)]


def run_path(spec: StressSpec, base_seed: int, index: int) -> PathMetrics:
    """Path ``index`` of a run seeded ``base_seed``, on a fresh engine (see the module docstring)."""
    sc, events, seed = spec.scenario(base_seed, index)
    engine = Engine(sc.config)
    tally = PathTally(engine)
    lo, hi = sc.span_ns
    times = sample_times(lo, hi + sc.step_ns, spec.samples)
    j = 0
    try:
        for e in events:
            due = 0
            while j < len(times) and e.ts_ns >= times[j]:
                due += 1
                j += 1
            if due and engine.n_acc:
                tally.sample(due)
            tally.add(engine.apply(e))
    except FluidMarginError as e:
        raise FluidMarginError(f"path {index} (seed {seed}): {e}") from None
    if j < len(times):
        tally.sample(len(times) - j)
    return tally.result(index, seed, engine.state_hash() if spec.state_hash else "")


# --- a run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StressResult:
    """Every path's metrics (in index order) and their summary."""

    name: str
    seed: int
    executor: str
    paths: tuple[PathMetrics, ...]
    summary: StressSummary

    def to_json(self, per_path: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "seed": self.seed,
            "executor": self.executor,
            "summary": self.summary.to_json(),
        }
        if per_path:
            out["paths"] = [p.to_json() for p in self.paths]
        return out


def check_run(spec: StressSpec, n_paths: int, seed: int, level: float | str | Fraction) -> Fraction:
    """Refuse a run :func:`run_stress` would refuse, before any path; the level as a fraction."""
    _int("n_paths", n_paths, 1, MAX_PATHS)
    _int("seed", seed)
    lv = level_fraction(level)
    spec.check()
    return lv


def run_stress(
    spec: StressSpec,
    n_paths: int,
    seed: int,
    executor: Executor | None = None,
    progress: Progress | None = None,
    level: float | str | Fraction = "0.99",
) -> StressResult:
    """``n_paths`` paths of ``spec`` from base seed ``seed`` on ``executor`` (default serial);
    ``progress(done, total)`` after each path; the summary's VaR, ES and liquidations-at-risk at ``level``."""
    lv = check_run(spec, n_paths, seed, level)
    ex = executor if executor is not None else SerialExecutor()
    task: Callable[[int], PathMetrics] = functools.partial(run_path, spec, seed)
    results = ex.map(task, range(n_paths), progress)
    return StressResult(spec.name, seed, ex.name, tuple(results), summarise(results, lv))


# --- shipped scenarios ---------------------------------------------------------------------------------

SCENARIOS = ("calm", "crash")


def shipped(
    name: str,
    accounts: int = 1_000,
    n_steps: int = 1_440,
    venue: VenueSpec | None = None,
    overlays: tuple[Overlay, ...] | None = None,
) -> StressSpec:
    """A scenario that needs no data, 1-minute steps on BTC and ETH (correlation 0.8):

    * ``calm``: GBM at 45 % / 60 % a year;
    * ``crash``: Merton jumps (about 5 an hour, -0.2 % +- 0.6 % each) with a regime chain that starts in
      a selling ``stress`` regime (drift -300 a year, volatility x3, jumps x3, about an hour long)
      before ``calm`` (about 8 hours); an insurance fund of 1 USD per account (about 0.1 % of the open
      interest), the liquidity crunch and a 2 s oracle latency on top. Its small fund and fast fall
      exercise drawdowns, ruin, ADL and bad debt.
    """
    corr = ((1.0, 0.8), (0.8, 1.0))
    default_overlays: tuple[Overlay, ...]
    if name == "calm":
        models = (AssetModel("BTC", 60_000.0, GbmParams(0.0, 0.45)), AssetModel("ETH", 3_000.0, GbmParams(0.0, 0.6)))
        mc = MonteCarlo(models, corr)
        default_venue, default_overlays = VenueSpec(), ()
    elif name == "crash":
        models = (
            AssetModel("BTC", 60_000.0, MertonParams(0.0, 0.7, 40_000.0, -0.002, 0.006)),
            AssetModel("ETH", 3_000.0, MertonParams(0.0, 0.9, 40_000.0, -0.003, 0.008)),
        )
        chain = RegimeChain.persistent((Regime("calm"), Regime("stress", -300.0, 3.0, 3.0)), (480.0, 60.0), start=1)
        mc = MonteCarlo(models, corr, chain)
        default_venue = VenueSpec(insurance_usd=accounts)
        default_overlays = (Crunch(), Latency(2_000))
    else:
        raise ValidationError(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
    params = PopulationParams()
    return StressSpec(
        mc,
        n_steps,
        PopulationSpec(accounts, 7, params),
        venue or default_venue,
        default_overlays if overlays is None else overlays,
        name=name,
    )


# --- the loss chart ------------------------------------------------------------------------------------


def write_loss_chart(result: StressResult, path: str | Path, title: str = "") -> Path:
    """Histograms over paths of the protocol loss (VaR and ES marked) and of the liquidated notional
    (liquidations-at-risk marked), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary
    pct = f"{float(s.level) * 100:g} %"
    loss = np.array([p.protocol_loss_q for p in result.paths], dtype=np.float64) / QUOTE_SCALE
    liq = np.array([p.liquidated_notional_q for p in result.paths], dtype=np.float64) / QUOTE_SCALE
    fig, ax = plt.subplots(2, 1, figsize=(8, 7), constrained_layout=True)
    bins = min(50, max(5, len(result.paths) // 4))
    ax[0].hist(loss, bins=bins, color="tab:red", alpha=0.7)
    ax[0].axvline(s.var_q / QUOTE_SCALE, color="black", ls="--", lw=1, label=f"VaR {pct}")
    ax[0].axvline(s.es_q / QUOTE_SCALE, color="tab:purple", ls=":", lw=1.2, label=f"ES {pct}")
    ax[0].set_xlabel("protocol loss per path (USD: net fund loss + bad debt)")
    ax[0].set_title(
        title or f"{result.name}: {s.paths} paths, ruin {s.probability_of_ruin:.1%} ({s.ruined_paths} paths)",
        fontsize=10,
    )
    ax[1].hist(liq, bins=bins, color="tab:blue", alpha=0.7)
    ax[1].axvline(s.liquidations_at_risk_q / QUOTE_SCALE, color="black", ls="--", lw=1, label=f"LaR {pct}")
    ax[1].set_xlabel("liquidated notional per path (USD)")
    for a in ax:
        a.set_ylabel("paths")
        a.grid(alpha=0.3)
        a.legend(loc="best", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
