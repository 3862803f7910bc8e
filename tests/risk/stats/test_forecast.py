"""HAR-RV forecasting (risk.forecast) and ``fluidmargin walk-forward``.

A simulated HAR process gives its coefficients back; the walk-forward never sees the future (a
perturbed future leaves every earlier forecast as it was, and each refit equals a fit on the prefix);
spikes, hits and lead times on a hand-built series; bad input: too little history, NaN, gaps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fluidmargin.cli.main import app
from fluidmargin.core.rng import make_rng
from fluidmargin.risk.stats import forecast as fc
from fluidmargin.risk.stats.vol import Floor, InsufficientHistory

SEED = 20_240_805
TRUE = (-0.9, 0.35, 0.3, 0.2)  # const, last period, last 5, last 22 (log HAR, horizon 1)
SPEC_SIM = fc.HarSpec(lags=(1, 5, 22), horizon=1, transform="log", min_obs=50, warmup=1)


def _simulate_har(n: int, seed: int = SEED, noise: float = 0.5) -> np.ndarray:
    """log rv[t+1] = c + b1 log rv[t] + b5 log mean(rv[t-4..t]) + b22 log mean(rv[t-21..t]) + e."""
    rng = make_rng(seed)
    rv = np.full(n, math.exp(-9.0))
    for t in range(22, n - 1):
        m1, m5, m22 = rv[t], rv[t - 4 : t + 1].mean(), rv[t - 21 : t + 1].mean()
        x = TRUE[0] + TRUE[1] * math.log(m1) + TRUE[2] * math.log(m5) + TRUE[3] * math.log(m22)
        rv[t + 1] = math.exp(x + noise * rng.standard_normal())
    return rv


def test_ols_recovers_the_coefficients_of_a_simulated_har_process() -> None:
    rv = _simulate_har(20_000)
    fit = fc.fit_har(rv[30:], SPEC_SIM)
    assert fit.names == ("const", "rv_1", "rv_5", "rv_22")
    # tolerances about 3 standard errors at n = 20_000 (seeds 1-3 land within a third of them); the
    # constant is the least precise: the log regressors sit near -9, far from zero
    for got, want, tol in zip(fit.coef, TRUE, (0.15, 0.04, 0.04, 0.04), strict=True):
        assert got == pytest.approx(want, abs=tol)
    assert fit.resid_var == pytest.approx(0.25, rel=0.05)  # the noise: 0.5²


def test_walk_forward_never_uses_the_future() -> None:
    rv = _simulate_har(3_000)
    spec = fc.HarSpec(lags=(1, 5, 22), horizon=3, transform="log", min_obs=200)
    base = fc.walk_forward(rv, spec, refit_every=100, score_from=400)
    cut = 1_700
    future = rv.copy()
    future[cut + 1 :] *= make_rng(1).lognormal(0.0, 2.0, size=future.size - cut - 1)  # another future
    other = fc.walk_forward(future, spec, refit_every=100, score_from=400)
    np.testing.assert_array_equal(base.forecast[: cut + 1], other.forecast[: cut + 1])
    assert not np.array_equal(base.forecast[cut + 1 :], other.forecast[cut + 1 :])
    # each refit is the fit on the prefix ending at its time (accumulated normal equations = direct OLS)
    t_last = 400 + 100 * ((rv.size - 1 - 400) // 100)
    direct = fc.fit_har(rv[: t_last + 1], spec)
    assert base.last_fit is not None and base.last_fit.n_obs == direct.n_obs
    np.testing.assert_allclose(base.last_fit.coef, direct.coef, rtol=1e-8, atol=1e-10)
    # and HAR beats the naive forecast out of sample on a HAR process
    assert base.qlike_har < base.qlike_naive and base.mse_har < base.mse_naive
    assert base.refits == math.ceil((rv.size - 400) / 100) and base.fallbacks == 0


def test_features_are_causal_and_the_target_looks_ahead() -> None:
    rv = np.arange(1.0, 11.0)
    spec = fc.HarSpec(lags=(1, 4), horizon=2, transform="level", min_obs=4, warmup=1)
    f = fc.har_features(rv, spec)
    assert f[5].tolist() == [1.0, 6.0, 4.5]  # rv[5] = 6; mean(rv[2..5]) = (3 + 4 + 5 + 6) / 4
    assert f[1].tolist() == [1.0, 2.0, 1.5]  # a short history averages what there is
    y = fc.har_target(rv, 2)
    assert y[5] == 7.5 and math.isnan(y[8]) and math.isnan(y[9])  # mean(rv[6], rv[7]); then it runs out
    assert fc.naive_forecast(rv, 2)[5] == 5.5


def test_spikes_hits_and_lead_time() -> None:
    n = 120
    v = 1.0 + 0.01 * (np.arange(n) % 7)
    v[80:84] = 50.0  # one spike, onset 80
    f = 1.0 + 0.01 * (np.arange(n) % 5)
    f[77:84] = 10.0  # the forecast is raised at 77's close
    spec = fc.SpikeSpec(quantile=0.95, alarm_quantile=0.9, trailing=40, merge=5, lookback=10)
    s = fc.spike_stats(v, f, 1, spec)
    assert (s.spikes, s.hits, s.lead_periods) == (1, 1, (4,))  # the window after 80 opens 4 periods after 77
    late = f.copy()
    late[77:81] = 1.0  # raised only after the onset: a miss
    assert fc.spike_stats(v, late, 1, spec).hits == 0
    assert fc.qlike([2.0, 3.0], [2.0, 3.0]) == 0.0


def test_trailing_quantile_matches_numpy_and_skips_the_unknown() -> None:
    x = make_rng(3).lognormal(size=500)
    x[100:120] = np.nan
    q = fc.trailing_quantile(x, 0.9, 50, 4)
    for t in (60, 130, 499):
        assert q[t] == pytest.approx(np.nanquantile(x[t - 4 - 49 : t - 4 + 1], 0.9))
    assert np.isnan(q[:53]).all()


# --- bad input -------------------------------------------------------------------------------------------


def test_too_little_history_is_a_clear_error_with_a_floor_fallback() -> None:
    rv = _simulate_har(60)
    with pytest.raises(InsufficientHistory) as e:
        fc.fit_har(rv, fc.HarSpec(lags=(1, 5, 22), horizon=1, min_obs=500))
    assert e.value.min_obs == 500 and e.value.n_obs < 60
    got = fc.har_or_floor(rv, fc.HarSpec(lags=(1, 5, 22), horizon=1, min_obs=500), 1e-8)
    assert isinstance(got, Floor) and got.var_per_step == 1e-8 and got.reason
    w = fc.walk_forward(rv, fc.HarSpec(lags=(1, 5, 22), horizon=1, min_obs=500), refit_every=10)
    assert w.refits == 0 and w.fallbacks == 6 and np.isnan(w.forecast).all() and w.scored == 0


def test_nan_periods_are_left_out_of_fits_and_forecasts() -> None:
    rv = _simulate_har(4_000)
    rv[1_000:1_010] = np.nan
    clean = fc.fit_har(_simulate_har(4_000), SPEC_SIM)
    fit = fc.fit_har(rv, SPEC_SIM)
    assert fit.n_obs < clean.n_obs and all(math.isfinite(c) for c in fit.coef)
    w = fc.walk_forward(rv, SPEC_SIM, refit_every=500, score_from=500)
    assert np.isnan(w.forecast[1_000:1_010]).all()  # the last period's own value is missing
    assert np.isfinite(w.forecast[1_100:1_200]).all()


def test_candles_with_gaps_and_bad_prices_are_reported() -> None:
    hour = fc.HOUR_MS
    ts = np.array([0, 60_000, 2 * hour, 2 * hour + 60_000, 5 * hour], dtype=np.int64)
    o = np.array([100.0, 101.0, 99.0, 98.0, 97.0])
    c = np.array([101.0, 100.0, 98.0, 99.0, 97.5])
    h, lo = np.maximum(o, c) + 0.5, np.minimum(o, c) - 0.5
    c_bad = c.copy()
    c_bad[3] = np.nan
    s = fc.rv_from_candles(ts, o, h, lo, c_bad)
    assert s.rv.size == 6 and (s.gaps, s.missing_periods, s.bad_candles) == (2, 3, 1)
    assert np.isnan(s.rv[[1, 3, 4]]).all() and np.isfinite(s.rv[[0, 2, 5]]).all()
    # hour 0: open 100, high 101.5, low 99.5, close 100 -> 0.5 ln(101.5/99.5)² (no open-close term)
    assert s.rv[0] == pytest.approx(0.5 * math.log(101.5 / 99.5) ** 2)
    # hour 2 (one candle left): its range plus the jump from hour 0's close (100) to its open (99)
    gk = 0.5 * math.log(99.5 / 97.5) ** 2 - (2 * math.log(2) - 1) * math.log(98 / 99) ** 2
    assert s.rv[2] == pytest.approx(gk + math.log(99 / 100) ** 2)


# --- the command ---------------------------------------------------------------------------------------


def _write(path: Path, ts: np.ndarray, close: np.ndarray, volume: bool = True) -> None:
    lines = ["timestamp_ms,open,high,low,close" + (",volume" if volume else "")]
    prev = close[0]
    for t, c in zip(ts.tolist(), close.tolist(), strict=True):
        hi, lo = max(prev, c) * 1.001, min(prev, c) * 0.999
        lines.append(f"{t},{prev:.4f},{hi:.4f},{lo:.4f},{c:.4f}" + (",10.0" if volume else ""))
        prev = c
    path.write_text("\n".join(lines) + "\n")


def test_walk_forward_command_on_a_small_slice(tmp_path: Path) -> None:
    rng = make_rng(SEED)
    hourly = tmp_path / "hourly"
    window = tmp_path / "window"
    hourly.mkdir()
    window.mkdir()
    t0 = 1_600_000_000_000 - 1_600_000_000_000 % fc.HOUR_MS
    n_h = 1_500
    ts_h = t0 + fc.HOUR_MS * np.arange(n_h, dtype=np.int64)
    sig = np.exp(np.convolve(rng.standard_normal(n_h), np.ones(24) / 6, "same")) * 0.004
    close_h = 10_000 * np.exp(np.cumsum(sig * rng.standard_normal(n_h)))
    _write(hourly / "BTC_USDT-1h.csv", ts_h, close_h)
    n_m = 3 * 24 * 60
    ts_m = ts_h[-1] + fc.HOUR_MS + 60_000 * np.arange(n_m, dtype=np.int64)
    close_m = close_h[-1] * np.exp(np.cumsum(0.0008 * rng.standard_normal(n_m)))
    _write(window / "BTC_USDT-1m.csv", ts_m, close_m)
    args = ["walk-forward", str(hourly / "BTC_USDT-1h.csv"), str(window / "BTC_USDT-1m.csv")]
    r = CliRunner().invoke(app, [*args, "--min-obs", "100", "--refit-every", "48", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    h, m = out[str(hourly / "BTC_USDT-1h.csv")], out[str(window / "BTC_USDT-1m.csv")]
    assert h["har"]["scored_periods"] > 500 and h["har"]["qlike"]["har"] > 0
    assert "volume_burst" in h["har_x"]["features"]  # no funding or spot/perp siblings: left out
    assert m["data"]["periods"] == 72 and m["har"]["scored_periods"] > 60  # trained on the hourly past
    assert m["trained_on"].startswith("BTC_USDT-1h.csv")
    r = CliRunner().invoke(app, [*args, "--min-obs", "100"])
    assert r.exit_code == 0 and "walk-forward" in r.stdout
    bad = tmp_path / "BTC_USDT-1h-bad.csv"
    bad.write_text("timestamp_ms,open,high,low,close\n0,1,1,1,nan\n")
    assert CliRunner().invoke(app, ["walk-forward", str(bad)]).exit_code == 2
