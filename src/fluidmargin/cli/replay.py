"""`fluidmargin replay DATA...`: replay candle files against a seeded population; summary and chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fluidmargin.cli.app import app
from fluidmargin.cli.common import execute, one_of, parse_time_ms, print_summary
from fluidmargin.core.errors import FluidMarginError
from fluidmargin.sim import report
from fluidmargin.sim.candles import Candles, Funding, asset_from_path, load_candles, load_funding
from fluidmargin.sim.scenarios import LIQUIDATIONS, PATHS, PopulationSpec, Scenario
from fluidmargin.sim.venues import PRESETS, replay_venue


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
    one_of("preset", preset, PRESETS)
    one_of("path", path, PATHS)
    one_of("liquidation", liquidation, LIQUIDATIONS)
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
