"""`fluidmargin replay DATA...`: replay candle files against a seeded population; summary and chart."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fluidmargin.cli.main import app
from fluidmargin.core.errors import FluidMarginError
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim import report
from fluidmargin.sim.candles import Candles, Funding, asset_from_path, load_candles, load_funding
from fluidmargin.sim.evaluate import replay_venue as venue_of_replay
from fluidmargin.sim.scenarios import LIQUIDATIONS, PATHS, PopulationSpec, Scenario

PRESETS = ("binance", "hyperliquid", "dydx", "drift")
err = Console(stderr=True)


def _store_runner() -> Any:
    """The durable Runner class, or None while fluidmargin.store is unavailable."""
    try:
        from fluidmargin.store import Runner
    except ImportError:
        return None
    return Runner


def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch from digits or an ISO date/time (UTC unless it says otherwise)."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither milliseconds nor an ISO date/time") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp() * 1000)


def _same_stream(runner: Any, events: Iterator[ev.Event], n: int = 2) -> None:
    """Resuming: the log's first inputs must be this stream's first inputs (same data and options)."""
    logged = []
    for _seq, e in runner.log.read():
        if e.is_input:
            logged.append(e)
            if len(logged) == n:
                break
    for e_log, e_new in zip(logged, events, strict=False):
        if e_log.to_dict() != e_new.to_dict():
            raise FluidMarginError(
                f"{runner.log.path} holds another replay ({type(e_log).__name__} at {e_log.ts_ns} differs): "
                "resume with the same data and options, or use a new --log"
            )


class _Acking:
    """Wraps the Runner: prints ``ACK <seq>`` on stdout each time a group commit makes records durable."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.engine = runner.engine
        self.acked = runner.durable_seq

    def submit(self, event: Any) -> Any:
        recs = self.runner.submit(event)
        if self.runner.durable_seq != self.acked:
            self.acked = self.runner.durable_seq
            print(f"ACK {self.acked}", flush=True)
        return recs


def execute(
    scenario: Scenario, log: Path | None, quiet: bool, fresh_log: bool = False, ack: bool = False
) -> report.RunResult:
    """Run a scenario on a bare engine, or durably through the store's Runner when ``log`` is given."""
    step = report.sample_step_ns(scenario.span_ns, scenario.step_ns)
    total = scenario.count()
    runner = None
    skip = 0
    if log is not None:
        runner_cls = _store_runner()
        if runner_cls is None:
            raise FluidMarginError("--log needs fluidmargin.store (the durable event log), which is not installed")
        if fresh_log:
            for suffix in ("", "-wal", "-shm"):
                Path(str(log) + suffix).unlink(missing_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        runner = runner_cls.open_or_create(log, scenario.config)
        skip = runner.inputs_applied
        try:
            if skip > total:
                raise FluidMarginError(f"{log} holds {skip} inputs, this replay only {total}: use a new log")
            if skip:
                _same_stream(runner, scenario.events())
        except BaseException:
            runner.close()
            raise
        target: report.Target = _Acking(runner) if ack else runner
    else:
        target = report.EngineTarget(Engine(scenario.config))
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=quiet,
            transient=True,
        ) as bar:
            task = bar.add_task(scenario.name, total=total)
            adv: Callable[[int], None] = lambda k: bar.advance(task, k)  # noqa: E731
            result = report.run(target, scenario.events(), step, skip=skip, progress=adv)
    finally:
        if runner is not None:
            runner.close()
    if runner is not None:
        result.summary["log"] = str(log)
    return result


def replay_venue(
    candles: dict[str, Candles],
    liquidation: str = "close_at_mark",
    preset: str = "binance",
    insurance_usd: int = 1_000_000,
    funding_source: str = "computed",
    max_jump_ppm: int = 250_000,
) -> EngineConfig:
    """The replay's venue (:func:`fluidmargin.sim.evaluate.replay_venue`); a bad ``liquidation`` is a
    bad option."""
    if liquidation not in LIQUIDATIONS:
        raise typer.BadParameter(f"--liquidation must be one of {', '.join(LIQUIDATIONS)}")
    return venue_of_replay(candles, liquidation, preset, insurance_usd, funding_source, max_jump_ppm)


def _join(d: dict[str, Any]) -> str:
    return "; ".join(f"{a}: {b}" for a, b in d.items())


def waterfall_rows(w: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``liquidation_waterfall`` section as (what, value) rows, per mechanism."""
    total = "liquidated_notional_total_usd"
    rows = [
        ("venue", f"{w['sizing']} closes; " + _join(w["execution"])),
        ("liquidations", _join(w["liquidations"])),
        ("liquidated notional usd", _join({**w["liquidated_notional_usd"], "total": w[total]})),
        ("penalties usd", _join({**w["penalties_usd"], "total": w["penalties_total_usd"]})),
        ("netted in batches usd", f"{w['batch_crossed_notional_usd']} ({w['batches']} batches)"),
        ("sent to market usd", f"{w['impact_executed_notional_usd']} ({w['impact_executions']} orders)"),
        ("slippage usd", w["slippage_usd"]),
    ]
    if w["auctions_started"] or "auction" in w["liquidations"]:
        rows.append(
            (
                "auctions",
                f"{w['auctions_started']} started, {w['auction_fills']} fills "
                f"({w['auction_filled_notional_usd']} usd), {w['auction_resets']} resets",
            )
        )
    if w["backstop_takeovers"] or any("backstop" in x for x in w["execution"].values()):
        rows.append(("backstop takeovers", f"{w['backstop_takeovers']} ({w['backstop_notional_usd']} usd)"))
    rows += [
        ("adl events", f"{w['adl_events']} ({w['adl_notional_usd']} usd)"),
        ("fund draws usd", _join({**w["fund_draws_usd"], "total": w["fund_draws_total_usd"]})),
        ("fund inflows usd", _join(w["fund_inflows_usd"]) or "0"),
        ("bad debt usd", f"{w['bad_debt_usd']} ({w['bad_debt_events']} events)"),
    ]
    return rows


def print_summary(result: report.RunResult, title: str, as_json: bool, chart: Path | None) -> None:
    if as_json:
        out = dict(result.summary)
        if chart is not None:
            out["chart"] = str(chart)
        typer.echo(json.dumps(out, sort_keys=True))
        return
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", justify="right", overflow="fold")
    for k, v in result.summary.items():
        if k == "liquidation_waterfall":
            continue
        if isinstance(v, dict):
            v = "; ".join(f"{a}: {b}" for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        t.add_row(k.replace("_", " "), str(v))
    if chart is not None:
        t.add_row("chart", str(chart))
    w = result.summary.get("liquidation_waterfall")
    if w is not None:
        t.add_section()
        t.add_row("liquidation waterfall", "", style="bold cyan")
        for what, value in waterfall_rows(w):
            t.add_row(what, value)
    Console().print(t)


def _load(
    data: list[Path],
    assets: list[str] | None,
    funding: list[Path] | None,
    start: str | None,
    limit: int | None,
) -> tuple[dict[str, Candles], dict[str, Funding] | None]:
    if assets and len(assets) != len(data):
        raise typer.BadParameter(f"give one --asset per DATA file ({len(data)}), not {len(assets)}")
    start_ms = parse_time_ms(start) if start else None
    candles: dict[str, Candles] = {}
    for i, path in enumerate(data):
        asset = assets[i].upper() if assets else asset_from_path(path)
        if asset is None:
            raise typer.BadParameter(f"cannot tell the asset from the name {path.name!r}: pass --asset")
        if asset in candles:
            raise typer.BadParameter(f"two DATA files for {asset}")
        c = load_candles(path).window(start_ms, limit)
        if len(c) == 0:
            raise typer.BadParameter(f"{path}: no candles at or after the start")
        candles[asset] = c
    fund: dict[str, Funding] | None = None
    if funding:
        fund = {}
        for path in funding:
            asset = asset_from_path(path)
            if asset is None or asset not in candles:
                raise typer.BadParameter(f"funding file {path.name!r} names no replayed asset ({', '.join(candles)})")
            fund[asset] = load_funding(path)
    return candles, fund


@app.command()
def replay(
    data: Annotated[list[Path], typer.Argument(help="candle files (CSV, Binance kline CSV/zip, freqtrade JSON)")],
    asset: Annotated[list[str] | None, typer.Option("--asset", help="asset of each DATA file, in order")] = None,
    accounts: Annotated[int, typer.Option(min=1, help="accounts in the seeded population")] = 10_000,
    seed: Annotated[int, typer.Option(help="population seed")] = 7,
    preset: Annotated[str, typer.Option(help="margin tiers: binance, hyperliquid, dydx or drift")] = "binance",
    funding: Annotated[list[Path] | None, typer.Option("--funding", help="timestamp_ms,funding_rate CSV")] = None,
    out: Annotated[Path, typer.Option(help="directory for chart.png and summary.json")] = Path("out/replay"),
    log: Annotated[Path | None, typer.Option(help="durable SQLite event log (resumes if it exists)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    path: Annotated[str, typer.Option(help="price points per candle: ohlc or close")] = "ohlc",
    start: Annotated[str | None, typer.Option(help="first candle: ms or ISO time (UTC)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many candles per file")] = None,
    max_jump_ppm: Annotated[int, typer.Option(help="oracle: largest accepted move vs the last price")] = 250_000,
    insurance_usd: Annotated[int, typer.Option(min=0, help="insurance fund seed")] = 1_000_000,
    liquidation: Annotated[
        str,
        typer.Option(
            help="close_at_mark; partial (close to the target health); or waterfall: partial closes netted "
            "per tick, the net sold under square-root impact, ADL behind the insurance fund"
        ),
    ] = "close_at_mark",
    ack: Annotated[bool, typer.Option("--ack", help="with --log: print ACK <seq> after each durable commit")] = False,
) -> None:
    """Replay candles against a seeded population: liquidations, insurance fund, margin over time."""
    if preset not in PRESETS:
        raise typer.BadParameter(f"--preset must be one of {', '.join(PRESETS)}")
    if path not in PATHS:
        raise typer.BadParameter(f"--path must be one of {', '.join(PATHS)}")
    if liquidation not in LIQUIDATIONS:
        raise typer.BadParameter(f"--liquidation must be one of {', '.join(LIQUIDATIONS)}")
    try:
        candles, fund = _load(data, asset, funding, start, limit)
        config = replay_venue(
            candles,
            liquidation,
            preset=preset,
            insurance_usd=insurance_usd,
            funding_source="published" if fund else "computed",
            max_jump_ppm=max_jump_ppm,
        )
        scenario = Scenario(
            config,
            candles,
            fund,
            PopulationSpec(accounts, seed),
            path=path,
            name="replay " + ",".join(candles),
        )
        result = execute(scenario, log, quiet=as_json or ack, ack=ack)
        result.summary.update(report.candle_summary(candles))
    except FluidMarginError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    chart = report.write_chart(result, out / "chart.png", "replay: " + ", ".join(p.name for p in data))
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, sort_keys=True) + "\n")
    print_summary(result, "fluidmargin replay", as_json, chart)
