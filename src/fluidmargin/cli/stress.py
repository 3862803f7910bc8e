"""`fluidmargin stress [DATA...]`: many seeded paths of a scenario through the engine; ruin, VaR, ES, LaR.

The price model is fitted to the candle files given (``--model gbm|merton|kou``, or ``bootstrap`` of
their returns), or a shipped scenario is run (``--scenario calm|crash``, no files). The work is
:mod:`fluidmargin.sim.stress`; this module parses options, shows progress and prints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fluidmargin.cli.app import app
from fluidmargin.cli.common import err, one_of, parse_time_ms, progress_bar
from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.core.units import QUOTE_DECIMALS
from fluidmargin.sim import stress as st
from fluidmargin.sim.candles import Candles, asset_from_path, load_candles
from fluidmargin.sim.executors import Executor, SerialExecutor, make_executor
from fluidmargin.sim.history import POLICIES, align
from fluidmargin.sim.scenarios import LIQUIDATIONS, PATHS, PopulationSpec
from fluidmargin.sim.venues import PRESETS

ROWS = (  # (per-path figure, label) in the distribution table
    ("protocol_loss", "protocol loss"),
    ("bad_debt", "bad debt"),
    ("fund_drawdown", "fund drawdown"),
    ("adl_notional", "ADL notional"),
    ("liquidated_notional", "liquidated"),
    ("slippage", "slippage"),
    ("avg_requirement", "avg requirement"),
    ("p95_requirement", "p95 requirement"),
)


def _usd(q: int) -> str:
    """Dollars and cents for the table (display only: --json and summary.json keep every quantum)."""
    return f"{q / 10**QUOTE_DECIMALS:,.2f}"


def _load(data: list[Path], start: str | None, limit: int | None) -> dict[str, Candles]:
    start_ms = parse_time_ms(start) if start else None
    candles: dict[str, Candles] = {}
    for path in data:
        asset = asset_from_path(path)
        if asset is None:
            raise ValidationError(f"{path}: cannot tell the asset from the name {path.name!r} (e.g. BTC_USDT-1m.csv)")
        if asset in candles:
            raise ValidationError(f"{path}: a second {asset} file")
        c = load_candles(path).window(start_ms, limit)
        if len(c) == 0:
            raise ValidationError(f"{path}: no candles at or after the start")
        candles[asset] = c
    return candles


def _tables(result: st.StressResult, caption: str) -> tuple[Table, Table]:
    s = result.summary
    pct = f"{float(s.level) * 100:g} %"
    t = Table(title=f"fluidmargin stress: {result.name}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", justify="right", overflow="fold")
    t.add_row("paths", f"{s.paths} (seed {result.seed}, {result.executor})")
    t.add_row("probability of ruin", f"{s.probability_of_ruin:.2%} ({s.ruined_paths} paths)")
    t.add_row(f"VaR {pct} (USD)", _usd(s.var_q))
    t.add_row(f"ES {pct} (USD)", _usd(s.es_q))
    t.add_row(f"liquidations at risk {pct}", _usd(s.liquidations_at_risk_q))
    t.add_row("paths with bad debt / ADL", f"{s.paths_with_bad_debt} / {s.paths_with_adl}")
    liq = s.figure("liquidations")
    t.add_row("liquidations per path", f"mean {liq.mean}, p95 {liq.p95}, max {liq.max}")
    t.add_row("capital efficiency", f"{s.capital_efficiency_mean:,.1f} (open interest / requirement)")
    d = Table(title="per path (USD)", caption=caption, title_justify="left", caption_justify="left")
    d.add_column("figure", style="bold")
    for col in ("mean", "p50", "p95", "max"):
        d.add_column(col, justify="right")
    for key, label in ROWS:
        f = s.figure(key)
        d.add_row(label, _usd(f.mean), _usd(f.p50), _usd(f.p95), _usd(f.max))
    return t, d


@app.command("stress")
def stress_cmd(
    data: Annotated[
        list[Path] | None,
        typer.Argument(help="candle files to calibrate from, one per asset (CSV, Binance kline, freqtrade JSON)"),
    ] = None,
    scenario: Annotated[
        str | None, typer.Option(help=f"a shipped scenario instead of DATA: {', '.join(st.SCENARIOS)}")
    ] = None,
    model: Annotated[str, typer.Option(help=f"price model fitted to DATA: {', '.join(st.MODELS)}")] = "gbm",
    paths: Annotated[int, typer.Option(help="paths to run")] = 100,
    steps: Annotated[int, typer.Option(help="steps per path (of the data's candle interval)")] = 1_440,
    accounts: Annotated[int, typer.Option(help="accounts in the seeded population")] = 1_000,
    seed: Annotated[int, typer.Option(help="base seed: path i's seed is derived from (seed, i)")] = 1,
    population_seed: Annotated[int, typer.Option(help="population seed (the same book on every path)")] = 7,
    overlay: Annotated[
        list[str] | None,
        typer.Option(
            "--overlay",
            help="stress overlay, repeatable: NAME[:key=value,...] with NAME one of "
            f"{', '.join(st.OVERLAYS)} (e.g. latency:delay_ms=5000, crunch:levels=0.05x2+0.1x4)",
        ),
    ] = None,
    preset: Annotated[str, typer.Option(help=f"margin tiers: {', '.join(PRESETS)}")] = "binance",
    liquidation: Annotated[str, typer.Option(help=f"liquidation: {', '.join(LIQUIDATIONS)}")] = "waterfall",
    insurance_usd: Annotated[
        int | None, typer.Option(help="insurance fund seed (default: 1,000,000; a scenario's own)")
    ] = None,
    level: Annotated[str, typer.Option(help="VaR / ES / liquidations-at-risk level")] = "0.99",
    samples: Annotated[int, typer.Option(help="requirement samples per path")] = 24,
    path: Annotated[str, typer.Option(help="price points per step: close or ohlc")] = "close",
    block: Annotated[float, typer.Option(help="bootstrap: mean block length in candles")] = 60.0,
    gaps: Annotated[str, typer.Option(help="gaps in DATA: refuse, or intersect (keep common times)")] = "refuse",
    start: Annotated[str | None, typer.Option(help="first candle of every file: ms or ISO time (UTC)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many candles per file")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address (tcp://host:8786)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes (default: cores; 1: in this process)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (summary and every path)")] = False,
    out: Annotated[Path | None, typer.Option(help="directory for summary.json and loss.png")] = None,
) -> None:
    """Run many seeded paths of a scenario through the engine: ruin, VaR, ES, liquidations-at-risk."""
    one_of("model", model, st.MODELS)
    one_of("preset", preset, PRESETS)
    one_of("liquidation", liquidation, LIQUIDATIONS)
    one_of("path", path, PATHS)
    one_of("gaps", gaps, POLICIES)
    if scenario is not None:
        one_of("scenario", scenario, st.SCENARIOS)
    try:
        spec, what = _spec(
            data, scenario, model, steps, accounts, population_seed, overlay, preset, liquidation,
            insurance_usd, samples, path, block, gaps, start, limit,
        )  # fmt: skip
        executor: Executor = (
            SerialExecutor() if workers == 1 and scheduler is None else make_executor(None, workers, scheduler)
        )
        st.check_run(spec, paths, seed, level)  # before the bar: a refusal is one clean line
        t0 = time.perf_counter()
        with progress_bar(err, disable=as_json) as bar:
            task = bar.add_task(f"stress {spec.name}", total=paths)
            result = st.run_stress(
                spec, paths, seed, executor, progress=lambda done, _n: bar.update(task, completed=done), level=level
            )
        wall = time.perf_counter() - t0
    except FluidMarginError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    report: dict[str, Any] = {**result.to_json(), "scenario": what, "wall_s": round(wall, 3)}
    chart = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        chart = st.write_loss_chart(result, out / "loss.png")
        report["chart"] = str(chart)
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    caption = (
        f"{what['model']} on {','.join(what['assets'])}, {spec.n_steps} steps x {paths} paths, "
        f"{spec.population.n_accounts} accounts, {what['venue']}; "
        f"{wall:.1f} s" + (f"; files in {out}" if out is not None else "")
    )
    console = Console()
    for table in _tables(result, caption):
        console.print(table)


def _spec(
    data: list[Path] | None,
    scenario: str | None,
    model: str,
    steps: int,
    accounts: int,
    population_seed: int,
    overlay: list[str] | None,
    preset: str,
    liquidation: str,
    insurance_usd: int | None,
    samples: int,
    path: str,
    block: float,
    gaps: str,
    start: str | None,
    limit: int | None,
) -> tuple[st.StressSpec, dict[str, Any]]:
    """The spec the options describe, and what to print about it (refusing bad options with a reason)."""
    overlays = tuple(st.parse_overlay(t) for t in overlay) if overlay else None
    if bool(data) == (scenario is not None):
        raise ValidationError("give candle files to calibrate from (DATA), or --scenario, not both")
    if data:
        history = align(_load(data, start, limit), gaps)  # type: ignore[arg-type]
        gen = st.generator_from_history(history, model, block)
        venue = st.VenueSpec(preset, liquidation, 1_000_000 if insurance_usd is None else insurance_usd)
        pop = PopulationSpec(accounts, population_seed)
        spec = st.StressSpec(gen, steps, pop, venue, overlays or (), path, samples, name=model)
        label = model
    else:
        assert scenario is not None
        base = st.shipped(scenario, accounts, steps, overlays=overlays)
        assert isinstance(base.venue, st.VenueSpec)
        insurance = base.venue.insurance_usd if insurance_usd is None else insurance_usd
        venue = st.VenueSpec(preset, liquidation, insurance)
        pop = PopulationSpec(accounts, population_seed, base.population.params)
        spec = st.StressSpec(base.generator, steps, pop, venue, base.overlays, path, samples, name=scenario)
        label = f"shipped {scenario}"
    what = {
        "model": label,
        "assets": list(spec.assets),
        "steps": steps,
        "accounts": accounts,
        "venue": f"{preset} {liquidation}, insurance {spec.venue.insurance_usd:,} USD",  # type: ignore[union-attr]
        "overlays": [type(o).__name__ for o in spec.overlays],
    }
    return spec, what
