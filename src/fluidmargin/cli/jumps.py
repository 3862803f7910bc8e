"""`fluidmargin fit-jumps DATA...`: Merton or Kou jump-diffusion parameters fitted to candle closes.

Each file is fitted on its own by maximum likelihood (:func:`fluidmargin.risk.stats.jumps.fit_merton`,
:func:`~fluidmargin.risk.stats.jumps.fit_kou`) over close-to-close log returns at the file's candle interval;
a return across a gap in the data (a step other than the usual interval) is dropped and counted. The
result is printed as a table, or with ``--json`` as one object keyed by file: ``params`` (the fit) and
``gap_risk``, a :class:`~fluidmargin.model.config.GapRiskSpec` ready for an engine config (``horizon_s``
and ``target`` are the venue's choices, from the options), or null with ``gap_risk_error`` saying why
when the fit lies outside the range a spec accepts. Numbers are decimal strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from fluidmargin.cli.app import app
from fluidmargin.core.errors import FluidMarginError, InputFileError, ValidationError
from fluidmargin.model.config import GapRiskSpec
from fluidmargin.risk.stats import jumps
from fluidmargin.sim.candles import Candles, load_candles

MODELS = ("merton", "kou")
MS_PER_YEAR = 365 * 86_400 * 1000  # risk.jumps annualises with a 365-day year
SIGNIFICANT = 6


def sig(x: float, digits: int = SIGNIFICANT) -> str:
    """A float statistic as a plain decimal string with ``digits`` significant digits (no exponent)."""
    if not math.isfinite(x):
        raise ValidationError(f"not a finite number: {x!r}")
    s = format(Decimal(f"{x:.{digits}g}"), "f")
    s = s.rstrip("0").rstrip(".") if "." in s else s
    return "0" if s in ("", "-0") else s


def parse_start(text: str | None) -> int | None:
    """``--start``: milliseconds since the epoch, or an ISO date/time (UTC when no zone is given)."""
    if text is None:
        return None
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValidationError(f"--start: {text!r} is neither milliseconds nor an ISO date/time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def log_returns(c: Candles) -> tuple[np.ndarray, int, int]:
    """(log returns of consecutive closes one interval apart, the interval in ms, returns dropped at gaps)."""
    if len(c) < 2:
        raise ValidationError(f"{len(c)} candle(s): no returns to fit")  # the caller names the file
    interval = c.interval_ms()
    regular = np.diff(c.ts_ms) == interval
    returns = np.diff(np.log(c.close))[regular]
    return returns, interval, int(np.count_nonzero(~regular))


def fit_file(
    path: Path, model: str, start_ms: int | None, limit: int | None, horizon_s: str, target: str, min_obs: int
) -> dict[str, Any]:
    """Fit one file; the result as JSON-ready values (decimal strings for every number)."""
    c = load_candles(path)
    if start_ms is not None or limit is not None:
        c = c.window(start_ms, limit)
    returns, interval, gaps = log_returns(c)
    dt_years = interval / MS_PER_YEAR
    fit = (jumps.fit_merton if model == "merton" else jumps.fit_kou)(returns, dt_years, min_obs=min_obs)
    p = fit.params
    first = datetime.fromtimestamp(int(c.ts_ms[0]) / 1000, UTC).strftime("%Y-%m-%dT%H:%M")
    last = datetime.fromtimestamp(int(c.ts_ms[-1]) / 1000, UTC).strftime("%Y-%m-%dT%H:%M")
    source = (
        f"fluidmargin fit-jumps {path.name} --model {model}: MLE on {fit.n_obs} close log returns "
        f"every {interval // 1000} s, {first}..{last} UTC, {gaps} gap(s) dropped"
    )
    kw: dict[str, str] = {"sigma": sig(p.sigma_annual), "lam": sig(p.lam_per_year)}
    if isinstance(p, jumps.MertonParams):
        kw |= {"mu_j": sig(p.jump_mean), "sigma_j": sig(p.jump_std)}
    else:
        kw |= {"p_up": sig(p.p_up), "eta_up": sig(p.eta_up), "eta_down": sig(p.eta_down)}
    gap_risk: dict[str, str] | None = None
    why = None
    try:
        spec = GapRiskSpec(model=model, horizon_s=horizon_s, target=target, source=source, **kw)
        gap_risk = {k: v for k, v in dataclasses.asdict(spec).items() if v != "0"}
    except ValidationError as e:  # a fit outside the range a gap model accepts: shown, with the reason
        why = f"the fit is outside a gap-risk spec's range: {e}"
    return {
        "model": model,
        "n_obs": fit.n_obs,
        "interval_s": sig(interval / 1000),
        "gaps_dropped": gaps,
        "repeats_dropped": len(c.repeats),
        "first_ts_ms": int(c.ts_ms[0]),
        "last_ts_ms": int(c.ts_ms[-1]),
        "mu_annual": sig(p.mu_annual),
        "log_likelihood": sig(fit.log_likelihood, 12),
        "converged": fit.converged,
        "params": {"model": model, **kw},
        "gap_risk": gap_risk,
        "gap_risk_error": why,
    }


@app.command("fit-jumps")
def fit_jumps_cmd(
    data: Annotated[list[Path], typer.Argument(help="candle files (CSV, Binance klines or freqtrade JSON)")],
    model: Annotated[str, typer.Option("--model", help="merton or kou")] = "merton",
    start: Annotated[str | None, typer.Option(help="first candle: ms since the epoch or an ISO date (UTC)")] = None,
    limit: Annotated[int | None, typer.Option(min=2, help="at most this many candles from --start")] = None,
    horizon_s: Annotated[str, typer.Option(help="liquidation horizon (s) written into the spec")] = "10",
    target: Annotated[str, typer.Option(help="target crossing probability written into the spec")] = "0.001",
    min_obs: Annotated[int, typer.Option(min=50, help="returns needed to fit (fewer: an error)")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object keyed by file")] = False,
) -> None:
    """Fit jump-diffusion parameters by maximum likelihood and print them as a gap-risk spec."""
    results: dict[str, dict[str, Any]] = {}
    try:
        if model not in MODELS:
            raise ValidationError(f"--model: {model!r} is not one of {', '.join(MODELS)}")
        GapRiskSpec(model="gbm", sigma="1", horizon_s=horizon_s, target=target)  # the venue's choices, checked now
        start_ms = parse_start(start)
        for path in data:
            try:
                results[str(path)] = fit_file(path, model, start_ms, limit, horizon_s, target, min_obs)
            except InputFileError:
                raise  # names the file and line already
            except ValidationError as e:
                raise ValidationError(f"{path}: {e}") from None
    except (FluidMarginError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(results))
        return
    from rich.console import Console
    from rich.table import Table

    names = ("mu_j", "sigma_j") if model == "merton" else ("p_up", "eta_up", "eta_down")
    table = Table(title=f"{model} jump-diffusion, maximum likelihood (annualised, 365-day year)")
    for col in ("file", "returns", "gaps", "sigma", "lam /yr", *names, "log-lik", "converged"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for name, r in results.items():
        g = r["params"]
        table.add_row(Path(name).name, str(r["n_obs"]), str(r["gaps_dropped"]), g["sigma"], g["lam"],
                      *(g.get(n, "0") for n in names), r["log_likelihood"], str(r["converged"]))  # fmt: skip
    console = Console(width=max(Console().width, 140))
    console.print(table)
    for name, r in results.items():
        if r["gap_risk_error"]:
            console.print(f"{Path(name).name}: {r['gap_risk_error']}")
    console.print("--json prints each file's gap_risk spec, ready for an engine config's gap_risk.")
