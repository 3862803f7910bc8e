"""`fluidmargin evaluate DATA...`: one seeded population, several margin configurations, one table.

The work is :mod:`fluidmargin.sim.evaluate`; this module parses options and prints.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fluidmargin.cli.app import app
from fluidmargin.cli.common import err, one_of, parse_time_ms
from fluidmargin.core.errors import FluidMarginError
from fluidmargin.core.units import QUOTE_DECIMALS
from fluidmargin.sim import evaluate as evl
from fluidmargin.sim import report
from fluidmargin.sim.scenarios import LIQUIDATIONS, PATHS


def _usd(q: int) -> str:
    """Dollars and cents for the table (display only: --json keeps every quantum)."""
    return f"{q / 10**QUOTE_DECIMALS:,.2f}"


def _table(results: dict[str, evl.Figures], caption: str) -> Table:
    t = Table(title="fluidmargin evaluate (USD)", caption=caption, title_justify="left", caption_justify="left")
    t.add_column("configuration", style="bold")
    for col in ("bad debt", "fund draws", "ADL", "liquidations", "liquidated", "avg requirement", "p95 requirement"):
        t.add_column(col, justify="right")
    for name, f in results.items():
        t.add_row(
            name,
            _usd(f.bad_debt_q),
            _usd(f.insurance_fund_draws_q),
            str(f.adl_events),
            str(f.liquidations),
            _usd(f.liquidated_notional_q),
            _usd(f.avg_requirement_q),
            _usd(f.p95_requirement_q),
        )
    return t


@app.command("evaluate")
def evaluate_cmd(
    data: Annotated[
        list[Path],
        typer.Argument(help="candle files (CSV, Binance kline, freqtrade JSON); one directory = one dataset"),
    ],
    configs: Annotated[
        str,
        typer.Option(help=f"comma-separated configurations: {', '.join(evl.config_names())}"),
    ] = ",".join(evl.STATIC),
    accounts: Annotated[int, typer.Option(min=1, help="accounts in the seeded population")] = 2_000,
    seed: Annotated[int, typer.Option(help="population seed")] = 7,
    start: Annotated[str | None, typer.Option(help="first candle of every file: ms or ISO time (UTC)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many candles per file")] = None,
    plot: Annotated[Path, typer.Option(help="PNG of bad debt against average requirement")] = Path(
        "out/evaluate/frontier.png"
    ),
    insurance_usd: Annotated[int, typer.Option(min=0, help="insurance fund seed")] = 1_000_000,
    liquidation: Annotated[
        str, typer.Option(help="close_at_mark, partial, or waterfall (partial, netted, impact, ADL)")
    ] = "waterfall",
    path: Annotated[str, typer.Option(help="price points per candle: ohlc or close")] = "ohlc",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object keyed by configuration")] = False,
) -> None:
    """Replay DATA under each margin configuration: bad debt, fund draws, ADL, liquidations, requirement."""
    names = [c.strip() for c in configs.split(",") if c.strip()]
    one_of("liquidation", liquidation, LIQUIDATIONS)
    one_of("path", path, PATHS)
    try:
        start_ms = parse_time_ms(start) if start else None
        datasets = evl.load_datasets(data, start_ms, limit)
        options = evl.Options(accounts, seed, liquidation, insurance_usd, path)
        with err.status("evaluating") if not as_json else contextlib.nullcontext() as status:

            def progress(name: str) -> None:
                if status is not None:
                    status.update(f"evaluating {name}")

            results = evl.evaluate(datasets, names, options, progress=progress)
    except FluidMarginError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    title = "frontier: " + ", ".join(d.name for d in datasets)
    chart = evl.write_frontier(results, plot, title)
    notes = report.candle_notes(c for d in datasets for c in d.candles.values())  # repeats dropped, gaps
    if as_json:
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(json.dumps({name: f.to_json() for name, f in results.items()}))
        return
    caption = (
        f"datasets: {', '.join(d.name + ' (' + ','.join(d.candles) + ')' for d in datasets)}; "
        f"{accounts} accounts, seed {seed}, {liquidation}, insurance {insurance_usd:,} USD; "
        f"requirement: exact maintenance summed over accounts, {len(next(iter(results.values())).samples)} "
        f"samples; chart {chart}"
    )
    if notes:
        caption += "\ndata: " + "\ndata: ".join(notes)
    Console().print(_table(results, caption))
