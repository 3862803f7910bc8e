"""The evaluation harness: one seeded population, one or more datasets, several margin configurations.

Each configuration replays every dataset on a fresh engine (the same stream as ``fluidmargin replay``:
:class:`~fluidmargin.sim.scenarios.Scenario` through :func:`fluidmargin.sim.report.run`) and is
scored by :class:`Figures`: bad debt, insurance-fund draws, ADL events, liquidations, and the
requirement it charged while doing so (capital efficiency). Money is exact, in quote quanta.

Configurations are the static presets (:data:`STATIC`) and dynamic ones (:data:`DYNAMIC`,
:mod:`fluidmargin.sim.dynamic`): a :class:`DynamicMargin` is fed every candle once it has closed and may
answer with parameter changes, which enter the engine's input stream as logged
``ParameterChangeRequested`` events, so the engine's response to volatility is in the log with
everything else. Each dataset is replayed on :func:`~fluidmargin.sim.venues.replay_venue`.

A dataset is the candle files of one directory (one market per asset, replayed together, as
``replay`` does with several files); files in different directories are separate datasets.
Totals are summed over datasets; requirement samples are pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.core.units import QUOTE_DECIMALS, Rounding, div_round, format_decimal, parse_decimal
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim import report
from fluidmargin.sim.candles import Candles, asset_from_path, load_candles
from fluidmargin.sim.dynamic import (
    DYNAMIC,
    INITIAL_PARAMETER,
    MAINTENANCE_PARAMETER,
    ClosedCandle,
    DynamicMargin,
    ParameterChange,
)
from fluidmargin.sim.scenarios import LIQUIDATIONS, NS_PER_MS, PATHS, PopulationSpec, Scenario
from fluidmargin.sim.venues import PRESETS, replay_venue

__all__ = [  # the harness, and the dynamic slot it drives (sim.dynamic)
    "DYNAMIC",
    "INITIAL_PARAMETER",
    "MAINTENANCE_PARAMETER",
    "MAX_SAMPLES",
    "STATIC",
    "ClosedCandle",
    "Dataset",
    "DynamicMargin",
    "Figures",
    "Options",
    "ParameterChange",
    "closed_candles",
    "config_names",
    "evaluate",
    "load_datasets",
    "p95_nearest_rank",
    "requirement_quote_q",
    "run_configuration",
    "step_ns",
    "with_parameter_changes",
    "write_frontier",
]

STATIC = PRESETS  # the static configurations: the venue presets
MAX_SAMPLES = 500  # requirement samples per dataset at most (each costs one exact pass over positions)

Records = list[tuple[int, ev.Event]]


# --- datasets ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dataset:
    """Candles replayed together: one series per asset, named after their directory."""

    name: str
    candles: Mapping[str, Candles]


def load_datasets(paths: Sequence[str | Path], start_ms: int | None = None, limit: int | None = None) -> list[Dataset]:
    """Group candle files by directory into datasets (in the order first named), each file cut to the
    candles opening at or after ``start_ms``, at most ``limit`` of them. The asset comes from the file
    name. Raises ValidationError (InputFileError for a malformed file) before anything is replayed."""
    groups: dict[Path, dict[str, Candles]] = {}
    for raw in paths:
        path = Path(raw)
        asset = asset_from_path(path)
        if asset is None:
            raise ValidationError(f"{path}: cannot tell the asset from the name {path.name!r} (e.g. BTC_USDT-1m.json)")
        group = groups.setdefault(path.resolve().parent, {})
        if asset in group:
            raise ValidationError(f"{path}: a second {asset} file in {path.parent}: one file per asset and directory")
        c = load_candles(path).window(start_ms, limit)
        if len(c) == 0:
            raise ValidationError(f"{path}: no candles at or after the start")
        group[asset] = c
    return [Dataset(d.name, g) for d, g in groups.items()]


# --- dynamic configurations in the stream ----------------------------------------------------------


def config_names(dynamic: Mapping[str, Callable[[], DynamicMargin]] | None = None) -> tuple[str, ...]:
    return STATIC + tuple(DYNAMIC if dynamic is None else dynamic)


def closed_candles(config: EngineConfig, candles: Mapping[str, Candles]) -> list[ClosedCandle]:
    """Every candle of every asset, ordered by close time (then by the order of ``candles``)."""
    market = {m.base_asset: m.symbol for m in config.markets}
    out: list[tuple[int, int, int, ClosedCandle]] = []
    for k, (a, c) in enumerate(candles.items()):
        step_ns = c.interval_ms() * NS_PER_MS
        for i, t in enumerate(c.ts_ms.tolist()):
            close_ns = t * NS_PER_MS + step_ns
            cc = ClosedCandle(
                a, market[a], t, close_ns, float(c.open[i]), float(c.high[i]), float(c.low[i]), float(c.close[i])
            )
            out.append((close_ns, k, i, cc))
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    return [x[3] for x in out]


def with_parameter_changes(
    events: Iterator[ev.Event],
    closed: Sequence[ClosedCandle],
    strategy: DynamicMargin,
    tag: str,
    audit: list[tuple[int, ParameterChange]],
) -> Iterator[ev.Event]:
    """``events`` with the strategy's changes merged in: each candle is shown to it before the first
    input at or after its close, and its changes follow at that close time. Changes asked for before
    the population exists wait for it (the latest per parameter, at the population's time)."""
    j = 0
    seeded = False
    held: dict[tuple[str, str], ParameterChange] = {}

    def request(ts_ns: int, c: ParameterChange) -> ev.ParameterChangeRequested:
        audit.append((ts_ns, c))
        inputs = ";".join(f"{k}={v}" for k, v in c.inputs)  # logged with the change: auditable
        return ev.ParameterChangeRequested(
            ts_ns, c.market, c.name, c.value, f"{tag}:{c.market}:{c.name}:{ts_ns}", inputs=inputs
        )

    for e in events:
        while j < len(closed) and closed[j].close_ns <= e.ts_ns:
            cc = closed[j]
            j += 1
            for c in strategy.on_candle(cc):
                if seeded:
                    yield request(cc.close_ns, c)
                else:
                    held[(c.market, c.name)] = c
        yield e
        if isinstance(e, ev.AccountsSeeded):
            seeded = True
            for key in sorted(held):
                yield request(e.ts_ns, held[key])
            held.clear()


# --- figures ----------------------------------------------------------------------------------------


def requirement_quote_q(engine: Engine) -> int:
    """The maintenance requirement now: every open position's exact maintenance margin at the mark
    (``Engine.position_risk``: the market's tier model, rounded up per position), summed over all
    accounts, cross and isolated alike, in quote quanta."""
    k = engine.n_pos
    return sum(engine.position_risk(p).mm_quote_q for p in np.flatnonzero(engine.pos_size[:k]).tolist())


@dataclass(frozen=True, slots=True)
class Figures:
    """What one configuration did over the datasets (money in quote quanta, exact).

    - ``bad_debt_q``: losses nobody covered (``BadDebtSocialized``), the waterfall's last resort;
    - ``insurance_fund_draws_q``: everything the insurance funds paid out (``InsuranceFundChanged``
      below zero: shortfalls, slippage, backstop);
    - ``adl_events``: ``AutoDeleveraged`` events;
    - ``liquidations`` / ``liquidated_notional_q``: ``PositionLiquidated`` events (each row of a
      columnar ``PositionsLiquidated`` counts) and their |size| × price, rounded up per event;
    - ``avg_requirement_q`` / ``p95_requirement_q``: capital efficiency. The requirement
      (:func:`requirement_quote_q`) is sampled at the end of every step of ``step_ns`` in which an
      input arrived, from the population's arrival on, plus once at the end of each dataset; all
      datasets use one step (the data's interval, coarsened so no dataset gives more than
      :data:`MAX_SAMPLES`), so each sample stands for the same length of time and samples pool.
      ``avg`` is their mean rounded up; ``p95`` the nearest-rank 95th percentile (the
      ⌈0.95·n⌉-th smallest sample). Liquidated positions stop counting once closed.
    - ``parameter_changes``: ``ParameterChanged`` events (dynamic configurations).
    """

    bad_debt_q: int
    insurance_fund_draws_q: int
    adl_events: int
    liquidations: int
    liquidated_notional_q: int
    avg_requirement_q: int
    p95_requirement_q: int
    samples: tuple[int, ...] = field(repr=False)
    parameter_changes: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: money as exact decimal strings in the quote asset, counts as integers."""

        def usd(q: int) -> str:
            return format_decimal(q, QUOTE_DECIMALS)

        return {
            "bad_debt": usd(self.bad_debt_q),
            "insurance_fund_draws": usd(self.insurance_fund_draws_q),
            "adl_events": self.adl_events,
            "liquidations": self.liquidations,
            "liquidated_notional": usd(self.liquidated_notional_q),
            "avg_requirement": usd(self.avg_requirement_q),
            "p95_requirement": usd(self.p95_requirement_q),
        }


def p95_nearest_rank(samples: Sequence[int]) -> int:
    """The ⌈0.95·n⌉-th smallest sample (0 when there are none)."""
    if not samples:
        return 0
    s = sorted(samples)
    return s[-(-95 * len(s) // 100) - 1]


class _Sampler:
    """A report Target: applies events on the engine, samples the requirement when a step ends, and
    stops on a parameter change the engine refuses."""

    def __init__(self, engine: Engine, step_ns: int, tap: Callable[[Records], None] | None) -> None:
        self.engine = engine
        self.step_ns = step_ns
        self.tap = tap
        self.bucket: int | None = None
        self.samples: list[int] = []
        self.changes = 0

    def submit(self, event: ev.Event) -> Records:
        b = event.ts_ns // self.step_ns
        if self.bucket is not None and b != self.bucket:
            self.sample()
        self.bucket = b
        records = self.engine.apply(event)
        if isinstance(event, ev.ParameterChangeRequested):
            for _seq, out in records:
                if isinstance(out, ev.InputRejected):
                    raise FluidMarginError(
                        f"the engine refused {event.name}={event.value} on {event.market}: {out.reason}"
                    )
                self.changes += isinstance(out, ev.ParameterChanged)
        if self.tap is not None:
            self.tap(records)
        return records

    def sample(self) -> None:
        if self.engine.n_acc:
            self.samples.append(requirement_quote_q(self.engine))


@dataclass(frozen=True, slots=True)
class Options:
    """How every configuration is run (the same for all, so that they compare)."""

    accounts: int = 2_000
    seed: int = 7
    liquidation: str = "waterfall"
    insurance_usd: int = 1_000_000
    path: str = "ohlc"
    max_samples: int = MAX_SAMPLES

    def __post_init__(self) -> None:
        if self.accounts < 1 or self.insurance_usd < 0 or self.max_samples < 1:
            raise ValidationError("need accounts >= 1, insurance_usd >= 0, max_samples >= 1")
        if self.liquidation not in LIQUIDATIONS:
            raise ValidationError(f"liquidation must be one of {', '.join(LIQUIDATIONS)}")
        if self.path not in PATHS:
            raise ValidationError(f"path must be one of {', '.join(PATHS)}")


def step_ns(datasets: Sequence[Dataset], max_samples: int) -> int:
    """One sampling step for all datasets: the finest candle interval, coarsened for the longest."""
    steps = []
    for d in datasets:
        base = min(c.interval_ms() for c in d.candles.values()) * NS_PER_MS
        lo = min(int(c.ts_ms[0]) for c in d.candles.values()) * NS_PER_MS
        hi = max(int(c.ts_ms[-1]) for c in d.candles.values()) * NS_PER_MS
        steps.append(report.sample_step_ns((lo, hi), base, max_samples))
    return max(steps)


def _check_dynamic(name: str, strategy: DynamicMargin) -> None:
    missing = [p for p in strategy.parameters if not (Engine.is_market_parameter(p) or p in Engine.PARAMETERS)]
    if missing:
        raise FluidMarginError(
            f"configuration {name!r} changes {', '.join(missing)}, which the engine does not accept "
            "(Engine.MARKET_PARAMETERS)"
        )


def run_configuration(
    name: str,
    datasets: Sequence[Dataset],
    options: Options,
    dynamic: Mapping[str, Callable[[], DynamicMargin]] | None = None,
    tap: Callable[[str, Records], None] | None = None,
    audit: list[tuple[int, ParameterChange]] | None = None,
) -> Figures:
    """Replay every dataset under configuration ``name`` (a static preset or a key of ``dynamic``,
    :data:`DYNAMIC` by default). ``tap(dataset name, records)`` sees every record the engine emits;
    ``audit`` collects the dynamic configuration's changes with their inputs."""
    dyn = DYNAMIC if dynamic is None else dynamic
    if name not in STATIC and name not in dyn:
        raise ValidationError(f"unknown configuration {name!r}: choose from {', '.join(config_names(dyn))}")
    if not datasets:
        raise ValidationError("no datasets to replay")
    step = step_ns(datasets, options.max_samples)
    totals = dict.fromkeys(("bad", "draws", "adl", "liq", "notional"), 0)
    samples: list[int] = []
    changes = 0
    for d in datasets:
        strategy = dyn[name]() if name in dyn else None
        if strategy is not None:
            _check_dynamic(name, strategy)
        preset = name if strategy is None else strategy.base_preset
        config = replay_venue(d.candles, options.liquidation, preset=preset, insurance_usd=options.insurance_usd)
        if strategy is not None:
            config = strategy.configure(config)
        scenario = Scenario(config, d.candles, None, PopulationSpec(options.accounts, options.seed), path=options.path)
        events: Iterator[ev.Event] = scenario.events()
        if strategy is not None:
            log: list[tuple[int, ParameterChange]] = [] if audit is None else audit
            events = with_parameter_changes(events, closed_candles(config, d.candles), strategy, name, log)
        target = _Sampler(Engine(config), step, None if tap is None else _tap_for(tap, d.name))
        try:
            result = report.run(target, events, step, waterfall=True)
        except FluidMarginError as e:
            raise FluidMarginError(f"{name} on {d.name}: {e}") from None
        target.sample()
        w = result.summary["liquidation_waterfall"]
        totals["bad"] += _quanta(w["bad_debt_usd"])
        totals["draws"] += _quanta(w["fund_draws_total_usd"])
        totals["adl"] += int(w["adl_events"])
        totals["liq"] += int(result.summary["liquidations"])
        totals["notional"] += _quanta(result.summary["liquidated_notional_usd"])
        samples.extend(target.samples)
        changes += target.changes
    avg = div_round(sum(samples), len(samples), Rounding.CEIL) if samples else 0
    return Figures(
        totals["bad"],
        totals["draws"],
        totals["adl"],
        totals["liq"],
        totals["notional"],
        avg,
        p95_nearest_rank(samples),
        tuple(samples),
        changes,
    )


def _tap_for(tap: Callable[[str, Records], None], dataset: str) -> Callable[[Records], None]:
    return lambda records: tap(dataset, records)


def _quanta(usd: str) -> int:
    """The report's exact decimal text back to quote quanta (lossless: it was formatted from them)."""
    return parse_decimal(usd, QUOTE_DECIMALS, Rounding.FLOOR, "usd")


def evaluate(
    datasets: Sequence[Dataset],
    configs: Sequence[str],
    options: Options,
    dynamic: Mapping[str, Callable[[], DynamicMargin]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Figures]:
    """:func:`run_configuration` for each name in ``configs``, in that order."""
    if len(set(configs)) != len(configs) or not configs:
        raise ValidationError("name each configuration once")
    dyn = DYNAMIC if dynamic is None else dynamic
    for name in configs:  # all checks before the first (long) replay
        if name not in STATIC and name not in dyn:
            raise ValidationError(f"unknown configuration {name!r}: choose from {', '.join(config_names(dyn))}")
        if name in dyn:
            _check_dynamic(name, dyn[name]())
    out: dict[str, Figures] = {}
    for name in configs:
        if progress is not None:
            progress(name)
        out[name] = run_configuration(name, datasets, options, dyn)
    return out


# --- the frontier chart ------------------------------------------------------------------------------


def write_frontier(results: Mapping[str, Figures], path: str | Path, title: str = "") -> Path:
    """Bad debt against average requirement, one point per configuration (filled), with bad debt plus
    insurance-fund draws above it (hollow) and a bar from the average to the p95 requirement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, f) in enumerate(results.items()):
        x = f.avg_requirement_q / 10**QUOTE_DECIMALS
        x95 = f.p95_requirement_q / 10**QUOTE_DECIMALS
        y = f.bad_debt_q / 10**QUOTE_DECIMALS
        y2 = (f.bad_debt_q + f.insurance_fund_draws_q) / 10**QUOTE_DECIMALS
        col = colors[i % len(colors)]
        ax.plot([x, x95], [y, y], color=col, lw=1, alpha=0.5)
        ax.plot([x, x], [y, y2], color=col, lw=0.8, ls=":")
        ax.scatter([x], [y], color=col, s=50, zorder=3, label=name)
        ax.scatter([x], [y2], facecolors="none", edgecolors=col, s=50, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("average maintenance requirement (USD; bar to p95)")
    ax.set_ylabel("bad debt (USD; hollow: + insurance-fund draws)")
    ax.set_title(title or "bad debt against requirement", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
