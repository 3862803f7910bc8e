"""`fluidmargin demo`: the built-in crash, end to end, on the default venue, logged durably when it can."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fluidmargin.cli.app import app
from fluidmargin.cli.common import execute, one_of, print_summary
from fluidmargin.core.errors import FluidMarginError
from fluidmargin.sim import report
from fluidmargin.sim.scenarios import LIQUIDATIONS, CrashParams, PopulationSpec, Scenario, crash_candles
from fluidmargin.sim.venues import replay_venue


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="directory for chart.png, summary.json and the event log")] = Path(
        "out/demo"
    ),
    accounts: Annotated[int, typer.Option(min=1, help="accounts in the population")] = 20_000,
    seed: Annotated[int, typer.Option(help="seed of prices and population")] = 42,
    days: Annotated[float, typer.Option(min=1.0, max=30.0, help="days of 1-minute prices")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    liquidation: Annotated[
        str, typer.Option(help="close_at_mark, partial or waterfall (as `fluidmargin replay --liquidation`)")
    ] = "close_at_mark",
) -> None:
    """A seeded BTC/ETH crash (-35 %/-42 % over four hours, partial rebound) against 20k accounts."""
    one_of("liquidation", liquidation, LIQUIDATIONS)
    candles = crash_candles(seed, CrashParams(days=days))
    config = replay_venue(candles, liquidation)  # close_at_mark: perp_venue(("BTC", "ETH")), the default venue
    scenario = Scenario(config, candles, None, PopulationSpec(accounts, seed), path="close", name="crash demo")
    try:
        result = execute(scenario, out / "events.sqlite", quiet=as_json, fresh_log=True)
    except FluidMarginError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    chart = report.write_chart(result, out / "chart.png", f"crash demo (seed {seed}, {accounts} accounts)")
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, sort_keys=True) + "\n")
    print_summary(result, "fluidmargin demo: crash", as_json, chart)
