"""`fluidmargin walk-forward DATA...`: HAR-RV forecasts of the next hours' variance, scored out of sample.

Every file becomes an hourly variance series (:func:`fluidmargin.risk.stats.forecast.rv_from_candles`). A file
with candles of an hour or more is evaluated on its own, walk-forward from its start. A file with finer
candles (a 1-minute window) is scored on its own hours, with the model trained on what came before: the
first hourly file of the same asset among DATA, up to the window's start, then the window's own past.
Where an hourly file has siblings (spot and USD-M perp candles, the funding-rate history), HAR-X adds
funding-rate extremes, the perp-spot basis and volume bursts, and is scored beside HAR-RV.
The work is :mod:`fluidmargin.risk.stats.forecast`; this module loads, aligns and prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from fluidmargin.cli.app import app
from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.risk.stats import forecast as fc
from fluidmargin.sim.candles import Candles, asset_from_path, load_candles, load_funding

HOUR_MS = fc.HOUR_MS


def _series(c: Candles) -> fc.RvSeries:
    return fc.rv_from_candles(c.ts_ms, c.open, c.high, c.low, c.close, HOUR_MS)


def _on_grid(ts_ms: np.ndarray, values: np.ndarray, grid_ms: np.ndarray) -> np.ndarray:
    """``values`` at each grid period's close: the latest one stamped at or before it (NaN before any)."""
    k = np.searchsorted(ts_ms, grid_ms + HOUR_MS, side="right") - 1
    return np.where(k >= 0, values[np.maximum(k, 0)], np.nan)


def _exog(path: Path, asset: str, s: fc.RvSeries, c: Candles) -> dict[str, np.ndarray]:
    """HAR-X columns from an hourly file's siblings: |funding| (bp), |perp/spot basis| (bp), volume burst."""
    grid = s.ts_ms
    d = path.parent
    out: dict[str, np.ndarray] = {}
    funding = d / f"{asset}_USDT_USDT-1h-funding_rate.csv"
    if funding.is_file():
        f = load_funding(funding)
        out["abs_funding_bp"] = np.abs(_on_grid(f.ts_ms, f.rate_e9 / 1e5, grid))  # 1e-9 -> basis points
    spot, perp = d / f"{asset}_USDT-1h.csv.gz", d / f"{asset}_USDT_USDT-1h-futures.csv.gz"
    if spot.is_file() and perp.is_file():
        cs, cp = load_candles(spot), load_candles(perp)
        b = np.log(_on_grid(cp.ts_ms, cp.close, grid - HOUR_MS) / _on_grid(cs.ts_ms, cs.close, grid - HOUR_MS))
        out["abs_basis_bp"] = np.abs(b) * 1e4
    if c.volume is not None:  # the loader's volume: the same times, checked like the prices
        vol = _on_grid(c.ts_ms, c.volume, grid - HOUR_MS)
        mean = fc.naive_forecast(vol, 168)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["volume_burst"] = np.log1p(vol / mean)
    n = grid.size
    keep = {}
    for k, col in out.items():
        if np.isfinite(col).sum() > n // 2:  # a column missing over most of the history is left out
            keep[k] = np.where(np.isfinite(col), col, np.nan)
    return keep


def _period_h(c: Candles) -> float:
    return c.interval_ms() / HOUR_MS


def evaluate_files(
    paths: list[Path], spec: fc.HarSpec, refit_every: int, spikes: fc.SpikeSpec, features: bool
) -> dict[str, Any]:
    """The walk-forward figures of every file, keyed by its path (see the module docstring)."""
    loaded = [(p, asset_from_path(p), load_candles(p)) for p in paths]
    history: dict[str, tuple[Path, Candles]] = {}
    for p, a, c in loaded:
        if a is not None and _period_h(c) >= 1.0 and a not in history:
            history[a] = (p, c)
    out: dict[str, Any] = {}
    for p, a, c in loaded:
        s = _series(c)
        entry: dict[str, Any] = {"asset": a, "data": s.report(), "repeats_dropped": len(c.repeats)}
        if _period_h(c) >= 1.0:
            w = fc.walk_forward(s.rv, spec, refit_every=refit_every, spikes=spikes)
            entry["trained_on"] = "its own past"
            entry["har"] = w.to_json()
            ex = _exog(p, a, s, c) if features and a else {}
            if ex:
                wx = fc.walk_forward(s.rv, spec, refit_every=refit_every, spikes=spikes, exog=ex)
                both = np.isfinite(wx.forecast) & np.isfinite(w.forecast) & (w.realised > 0)
                if both.any():  # none in a file too short to fit
                    entry["har_x"] = {
                        "features": sorted(ex),
                        "qlike_har_x": round(fc.qlike(w.realised[both], wx.forecast[both]), 4),
                        "qlike_har_same_rows": round(fc.qlike(w.realised[both], w.forecast[both]), 4),
                        "coef": {k: round(v, 6) for k, v in (wx.last_fit.params() if wx.last_fit else {}).items()},
                    }
        else:
            start = int(s.start_ms)
            past = history.get(a or "")
            if past is not None:
                hs = _series(past[1].window(None, int(np.searchsorted(past[1].ts_ms, start))))
                hist = hs.rv
                pad = (start - (hs.start_ms + hs.period_ms * hist.size)) // HOUR_MS
                rv = np.concatenate((hist, np.full(int(pad), np.nan), s.rv))
                score_from = int(hist.size + pad)
                entry["trained_on"] = f"{past[0].name} before the window, then the window's own past"
            else:
                rv, score_from = s.rv, 0
                entry["trained_on"] = "the window's own past"
            w = fc.walk_forward(rv, spec, refit_every=refit_every, score_from=score_from, spikes=spikes)
            entry["har"] = w.to_json()
        out[str(p)] = entry
    return out


def _fmt(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def _table(results: dict[str, Any], spec: fc.HarSpec) -> Table:
    t = Table(
        title=f"fluidmargin walk-forward: HAR-RV, next {spec.horizon} h variance (out of sample)",
        title_justify="left",
    )
    for col in (
        "data",
        "scored h",
        "QLIKE har",
        "QLIKE naive",
        "MSE har/naive",
        "spikes",
        "hit har",
        "hit naive",
        "lead har h",
        "lead naive h",
        "HAR-X QLIKE",
    ):
        t.add_column(col, justify="right" if col != "data" else "left")
    for path, e in results.items():
        h = e["har"]
        sh, sn = h["spikes"]["har"], h["spikes"]["naive"]
        hx = e.get("har_x")
        t.add_row(
            Path(path).parent.name[:28] + "/" + Path(path).name,
            str(h["scored_periods"]),
            _fmt(h["qlike"]["har"]),
            _fmt(h["qlike"]["naive"]),
            _fmt(h["mse_ratio_har_to_naive"]),
            str(sh["spikes"]),
            f"{_fmt(sh['hit_rate'])} ({sh['hits']})",
            f"{_fmt(sn['hit_rate'])} ({sn['hits']})",
            _fmt(sh["median_lead_h"]),
            _fmt(sn["median_lead_h"]),
            "-" if hx is None else f"{hx['qlike_har_x']} vs {hx['qlike_har_same_rows']}",
        )
    return t


@app.command("walk-forward")
def walk_forward_cmd(
    data: Annotated[list[Path], typer.Argument(help="candle files: hourly history and/or 1-minute windows")],
    horizon: Annotated[int, typer.Option(min=1, help="forecast the mean variance of the next N hours")] = 4,
    refit_every: Annotated[int, typer.Option(min=1, help="refit every N hours (on the past only)")] = 168,
    min_obs: Annotated[int, typer.Option(min=8, help="rows needed to fit; fewer: no forecast (floor)")] = 500,
    spike_quantile: Annotated[float, typer.Option(help="spike: next-H variance above this trailing quantile")] = 0.99,
    alarm_quantile: Annotated[float, typer.Option(help="alarm: forecast above this trailing quantile")] = 0.90,
    features: Annotated[bool, typer.Option(help="score HAR-X (funding, basis, volume) where data exists")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object keyed by file")] = False,
) -> None:
    """Walk-forward HAR-RV: QLIKE and MSE against the naive forecast, spike hit rate and lead time."""
    try:
        spec = fc.HarSpec(horizon=horizon, min_obs=min_obs)
        spikes = fc.SpikeSpec(quantile=spike_quantile, alarm_quantile=alarm_quantile)
        results = evaluate_files(list(data), spec, refit_every, spikes, features)
    except (FluidMarginError, ValidationError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(_nan_to_none(results)))  # NaN (nothing to score) as null
        return
    console = Console(width=max(Console().width, 150))
    console.print(_table(results, spec))
    console.print(
        "spike: the realised mean variance of the next H hours above its trailing 720 h "
        f"{spike_quantile:.0%} quantile (merged within 24 h); hit: the forecast above its own trailing "
        f"{alarm_quantile:.0%} quantile at the spike's onset; lead: hours from the alarm (at most 48 h "
        "back) to the spiky window's start (median). naive: the last H hours' mean."
    )


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x
