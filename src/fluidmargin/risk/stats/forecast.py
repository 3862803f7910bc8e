"""HAR-RV forecasts of the next hours' variance, and their walk-forward evaluation (pure; floats).

Realised variance per period (:func:`rv_from_candles`): candles are aggregated to the period (an hour by
default: open of the first, highest high, lowest low, close of the last) and each period's variance is
Garman-Klass on that candle plus the squared jump from the previous period's close. The same measure
serves hourly candles and 1-minute candles, so a model fitted on the hourly history applies to a
1-minute replay.

HAR-RV (Corsi 2009) at the data's frequency (:class:`HarSpec`): the target is the mean variance over the
next ``horizon`` periods; the regressors are the mean variance over the last ``lags`` periods (default 1,
24, 168, 720: the last hour, day, week and month) and optional exogenous columns (funding-rate extremes,
basis, volume bursts...). ``transform='log'`` fits logs and forecasts exp(x·β + s²/2) (lognormal mean);
``'level'`` fits levels. OLS over the past only: :func:`fit_har` sees a prefix of the series, and only
rows whose whole target window lies inside it.

Walk-forward (:func:`walk_forward`): refit every ``refit_every`` periods on everything before, forecast
until the next refit, and score out of sample against the naive forecast (the mean variance of the last
``horizon`` periods): QLIKE and MSE, and, for volatility spikes (:class:`SpikeSpec`), the hit rate and
lead time of an alarm on the forecast.

Bad input. Periods without candles, or whose candles have non-finite or non-positive prices, are
missing (NaN) and counted (:class:`RvSeries`); a component averages what is present of its window (at
least half of it), a row with a missing component or target is not fitted and gets no forecast. Too few
rows to fit raises :class:`~fluidmargin.risk.stats.vol.InsufficientHistory` (a ``ValidationError`` with the
reason); :func:`har_or_floor` returns :class:`~fluidmargin.risk.stats.vol.Floor` instead, and the caller uses
its margin floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.stats.vol import Floor, InsufficientHistory

__all__ = [
    "HOUR_MS",
    "HarFit",
    "HarSpec",
    "RvSeries",
    "SpikeSpec",
    "SpikeStats",
    "WalkForward",
    "fit_har",
    "har_features",
    "har_or_floor",
    "har_target",
    "naive_forecast",
    "qlike",
    "rv_from_candles",
    "spike_stats",
    "trailing_quantile",
    "walk_forward",
]

FloatArray = npt.NDArray[np.float64]
HOUR_MS = 3_600_000
_GK_C = 2.0 * math.log(2.0) - 1.0
_TINY = 1e-12  # variance floor inside logs (a flat period has zero range)
TRANSFORMS = ("log", "level")


# --- realised variance per period -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RvSeries:
    """Variance per period on a regular grid from ``start_ms``; NaN where a period has no usable candle."""

    start_ms: int
    period_ms: int
    rv: FloatArray
    gaps: int = 0  # breaks in the candles' own spacing
    missing_periods: int = 0  # periods without a usable candle
    bad_candles: int = 0  # candles dropped: non-finite, non-positive or inconsistent prices

    @property
    def ts_ms(self) -> npt.NDArray[np.int64]:
        """Each period's open time."""
        return self.start_ms + self.period_ms * np.arange(self.rv.size, dtype=np.int64)

    def report(self) -> dict[str, int]:
        return {
            "periods": int(self.rv.size),
            "gaps": self.gaps,
            "missing_periods": self.missing_periods,
            "bad_candles": self.bad_candles,
        }


def rv_from_candles(
    ts_ms: npt.ArrayLike,
    open_: npt.ArrayLike,
    high: npt.ArrayLike,
    low: npt.ArrayLike,
    close: npt.ArrayLike,
    period_ms: int = HOUR_MS,
) -> RvSeries:
    """Per-period variance from candles (any interval up to ``period_ms``), see the module docstring."""
    if period_ms <= 0:
        raise ValidationError(f"period_ms must be > 0, got {period_ms}")
    t = np.asarray(ts_ms, dtype=np.int64).ravel()
    cols = [np.asarray(x, dtype=np.float64).ravel() for x in (open_, high, low, close)]
    if any(c.size != t.size for c in cols):
        raise ValidationError("candle columns differ in length")
    if t.size == 0:
        raise InsufficientHistory("rv", 0, 1)
    if (np.diff(t) <= 0).any():
        raise ValidationError("candle times must strictly increase")
    o, h, lo, c = cols
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(np.stack(cols)).all(axis=0) & (np.stack(cols) > 0).all(axis=0)
        ok &= (h >= np.maximum(o, c)) & (lo <= np.minimum(o, c))
    steps = np.diff(t)
    interval = int(np.median(steps)) if steps.size else period_ms
    gaps = int((steps > interval).sum())
    bad = int((~ok).sum())
    t, o, h, lo, c = t[ok], o[ok], h[ok], lo[ok], c[ok]
    start = int(t[0] // period_ms * period_ms) if t.size else int(np.asarray(ts_ms)[0])
    if t.size == 0:
        return RvSeries(start, period_ms, np.full(1, np.nan), gaps, 1, bad)
    b = (t - start) // period_ms
    n = int(b[-1]) + 1
    first = np.ones(b.size, dtype=bool)
    first[1:] = b[1:] != b[:-1]
    last = np.ones(b.size, dtype=bool)
    last[:-1] = b[1:] != b[:-1]
    idx = b[first]
    po = o[first]
    pc = c[last]
    ph = np.maximum.reduceat(h, np.flatnonzero(first))
    pl = np.minimum.reduceat(lo, np.flatnonzero(first))
    hl, co = np.log(ph / pl), np.log(pc / po)
    gk = np.maximum(0.5 * hl * hl - _GK_C * co * co, 0.0)
    jump = np.zeros(idx.size)
    jump[1:] = np.log(po[1:] / pc[:-1]) ** 2  # from the previous present period's close
    rv = np.full(n, np.nan)
    rv[idx] = gk + jump
    return RvSeries(start, period_ms, rv, gaps, int(n - idx.size), bad)


# --- HAR-RV -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HarSpec:
    """HAR-RV at the data's frequency: components over ``lags`` periods, target the next ``horizon``."""

    lags: tuple[int, ...] = (1, 24, 168, 720)
    horizon: int = 4
    transform: str = "log"
    min_obs: int = 500  # rows needed to fit
    warmup: int = 24  # periods of history before any row counts

    def __post_init__(self) -> None:
        if not self.lags or min(self.lags) < 1 or list(self.lags) != sorted(set(self.lags)):
            raise ValidationError(f"lags must be increasing and >= 1, got {self.lags}")
        if self.horizon < 1 or self.warmup < 1:
            raise ValidationError("horizon and warmup must be >= 1")
        if self.transform not in TRANSFORMS:
            raise ValidationError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.min_obs < len(self.lags) + 2:
            raise ValidationError(f"min_obs must be at least {len(self.lags) + 2}")

    def names(self, exog: tuple[str, ...] = ()) -> tuple[str, ...]:
        return ("const", *(f"rv_{k}" for k in self.lags), *exog)


def _window_mean(x: FloatArray, window: int, ahead: bool) -> FloatArray:
    """Mean of the present values of x over the last ``window`` periods up to t (or the next, after t),
    NaN when fewer than half of the window's periods (half of those elapsed, near the start) are present."""
    present = np.isfinite(x)
    s = np.concatenate(([0.0], np.cumsum(np.where(present, x, 0.0))))
    k = np.concatenate(([0], np.cumsum(present)))
    n = x.size
    t = np.arange(n)
    if ahead:  # t+1 .. t+window
        hi = np.minimum(t + 1 + window, n)
        lo = t + 1
        need = np.full(n, math.ceil(window / 2))
    else:  # t-window+1 .. t
        hi = t + 1
        lo = np.maximum(t + 1 - window, 0)
        need = np.ceil((hi - lo) / 2).astype(np.int64)
    cnt = k[hi] - k[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (s[hi] - s[lo]) / cnt
    return np.where((cnt >= np.maximum(need, 1)) & (hi > lo), out, np.nan)


def _fwd(x: FloatArray, spec: HarSpec) -> FloatArray:
    return np.log(np.maximum(x, _TINY)) if spec.transform == "log" else x


def har_features(rv: npt.ArrayLike, spec: HarSpec, exog: Mapping[str, npt.ArrayLike] | None = None) -> FloatArray:
    """The regressors at each period's close (a row uses periods up to and including its own only).

    Columns: 1, the ``lags`` means (logs for ``transform='log'``), then ``exog`` in sorted name order.
    Rows before ``warmup`` periods of history are NaN.
    """
    x = np.asarray(rv, dtype=np.float64).ravel()
    cols = [np.ones(x.size)]
    cols.extend(_fwd(_window_mean(x, k, ahead=False), spec) for k in spec.lags)
    for name in sorted(exog or {}):
        e = np.asarray((exog or {})[name], dtype=np.float64).ravel()
        if e.size != x.size:
            raise ValidationError(f"exogenous column {name!r} has {e.size} rows for {x.size} periods")
        cols.append(e)
    out = np.stack(cols, axis=1)
    out[: min(spec.warmup - 1, x.size)] = np.nan
    return out


def har_target(rv: npt.ArrayLike, horizon: int) -> FloatArray:
    """Mean variance over the next ``horizon`` periods (t+1 .. t+horizon): the realised value a forecast
    made at t is scored against; NaN where fewer than half of them are present or the window runs out."""
    x = np.asarray(rv, dtype=np.float64).ravel()
    out = _window_mean(x, horizon, ahead=True)
    out[max(x.size - horizon, 0) :] = np.nan
    return out


def naive_forecast(rv: npt.ArrayLike, horizon: int) -> FloatArray:
    """The random-walk forecast: the mean variance over the last ``horizon`` periods."""
    return _window_mean(np.asarray(rv, dtype=np.float64).ravel(), horizon, ahead=False)


@dataclass(frozen=True, slots=True)
class HarFit:
    """OLS coefficients (``names`` order), the residual variance, and what went in."""

    spec: HarSpec
    names: tuple[str, ...]
    coef: tuple[float, ...]
    resid_var: float
    n_obs: int
    r2: float
    min_forecast: float  # forecasts are kept at or above this (a level model can go negative)

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        """Variance forecasts per period (mean over the horizon) from rows of :func:`har_features`."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if f.shape[1] != len(self.coef):
            raise ValidationError(f"{f.shape[1]} feature columns, the fit has {len(self.coef)}")
        y = f @ np.asarray(self.coef)
        if self.spec.transform == "log":
            with np.errstate(over="ignore"):
                y = np.exp(y + 0.5 * self.resid_var)
        return np.where(np.isfinite(y), np.maximum(y, self.min_forecast), np.nan)

    def params(self) -> dict[str, float]:
        return dict(zip(self.names, self.coef, strict=True))


def _rows(x: FloatArray, spec: HarSpec, exog: Mapping[str, npt.ArrayLike] | None) -> tuple[FloatArray, FloatArray]:
    """Regressors and the transformed target of every row; a row not to fit has a NaN target."""
    feats = har_features(x, spec, exog)
    y = har_target(x, spec.horizon)
    ok = np.isfinite(feats).all(axis=1) & np.isfinite(y)
    if spec.transform == "log":  # a zero-range component or target is a flat market, not information
        lagged = np.stack([_window_mean(x, k, ahead=False) for k in spec.lags], axis=1)
        with np.errstate(invalid="ignore"):
            ok &= (y > 0) & (lagged > 0).all(axis=1)
    return feats, np.where(ok, _fwd(y, spec), np.nan)


def _solve(
    spec: HarSpec,
    names: tuple[str, ...],
    xtx: FloatArray,
    xty: FloatArray,
    yty: float,
    ysum: float,
    n: int,
    level_sum: float,
) -> HarFit:
    """OLS from the normal equations (and the sums that give the residual variance and R²)."""
    coef = np.linalg.lstsq(xtx, xty, rcond=None)[0]
    rss = max(float(yty - 2.0 * coef @ xty + coef @ xtx @ coef), 0.0)
    tss = yty - ysum * ysum / n
    r2 = 1.0 - rss / tss if tss > 0 else 0.0
    min_fc = max(0.01 * level_sum / n, _TINY)  # a level model can forecast below zero: 1 % of the mean
    return HarFit(spec, names, tuple(float(v) for v in coef), rss / max(n - len(coef), 1), n, r2, min_fc)


def fit_har(rv_past: npt.ArrayLike, spec: HarSpec, exog_past: Mapping[str, npt.ArrayLike] | None = None) -> HarFit:
    """OLS on the rows of ``rv_past`` whose regressors and whole target window lie inside it.

    Raises :class:`InsufficientHistory` with fewer than ``spec.min_obs`` such rows.
    """
    x = np.asarray(rv_past, dtype=np.float64).ravel()
    feats, y = _rows(x, spec, exog_past)
    ok = np.isfinite(y)
    n = int(ok.sum())
    if n < spec.min_obs:
        raise InsufficientHistory("har-rv", n, spec.min_obs)
    a, b = feats[ok], y[ok]
    level = har_target(x, spec.horizon)[ok]
    names = spec.names(tuple(sorted(exog_past or {})))
    return _solve(spec, names, a.T @ a, a.T @ b, float(b @ b), float(b.sum()), n, float(level.sum()))


def har_or_floor(
    rv_past: npt.ArrayLike,
    spec: HarSpec,
    floor_var: float,
    exog_past: Mapping[str, npt.ArrayLike] | None = None,
) -> HarFit | Floor:
    """:func:`fit_har`, or a :class:`Floor` (with the reason) when there is too little history."""
    try:
        return fit_har(rv_past, spec, exog_past)
    except InsufficientHistory as e:
        return Floor(floor_var, str(e))


# --- losses and spikes ----------------------------------------------------------------------------------


def qlike(realised: npt.ArrayLike, forecast: npt.ArrayLike) -> float:
    """Mean QLIKE loss r/f - ln(r/f) - 1 (0 for a perfect forecast; robust to noisy proxies)."""
    r = np.asarray(realised, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    q = r / f
    return float(np.mean(q - np.log(q) - 1.0))


def trailing_quantile(x: npt.ArrayLike, q: float, window: int, delay: int) -> FloatArray:
    """At each t, the q-quantile of x[t-delay-window+1 .. t-delay] (present values; NaN with fewer than
    half of the window). ``delay`` keeps values not yet known at t out (a target is known H periods on)."""
    v = np.asarray(x, dtype=np.float64).ravel()
    n = v.size
    out = np.full(n, np.nan)
    if n < window + delay:
        return out
    win = np.lib.stride_tricks.sliding_window_view(v, window)  # win[j] = v[j .. j+window-1]
    chunk = 2048
    for a in range(0, win.shape[0], chunk):
        w = np.sort(win[a : a + chunk], axis=1)  # NaN sorts last
        cnt = np.isfinite(w).sum(axis=1)
        pos = q * np.maximum(cnt - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(cnt - 1, 0))
        r = np.arange(w.shape[0])
        qs = w[r, lo] + (pos - lo) * (w[r, hi] - w[r, lo])  # numpy's default (linear) interpolation
        qs = np.where(cnt >= max(window // 2, 1), qs, np.nan)
        t = np.arange(a, a + w.shape[0]) + window - 1 + delay  # the window ends at t - delay
        keep = t < n
        out[t[keep]] = qs[keep]
    return out


@dataclass(frozen=True, slots=True)
class SpikeSpec:
    """A spike: the realised mean variance over the next H periods above the ``quantile`` of its trailing
    ``trailing`` periods (known values only); flags within ``merge`` periods are one spike, counted at its
    onset. The alarm: the forecast above the ``alarm_quantile`` of its own previous ``trailing`` values (so
    a smooth forecast and a jumpy one are in alarm about as often). A spike is hit when the alarm is on at
    its onset (the forecast for the spiky window was raised); the lead time runs from the close at which
    that alarm came on (within ``lookback`` periods) to the window's start."""

    quantile: float = 0.99
    alarm_quantile: float = 0.90
    trailing: int = 720
    merge: int = 24
    lookback: int = 48

    def __post_init__(self) -> None:
        if not (0 < self.alarm_quantile <= self.quantile < 1):
            raise ValidationError("need 0 < alarm_quantile <= quantile < 1")
        if min(self.trailing, self.merge, self.lookback) < 1:
            raise ValidationError("trailing, merge and lookback must be >= 1")


@dataclass(frozen=True, slots=True)
class SpikeStats:
    """Spike onsets, how many the alarm caught, their lead times (periods), and the time in alarm."""

    spikes: int
    hits: int
    lead_periods: tuple[int, ...]
    alarm_share: float

    @property
    def hit_rate(self) -> float:
        return self.hits / self.spikes if self.spikes else math.nan

    @property
    def median_lead(self) -> float:
        return float(np.median(self.lead_periods)) if self.lead_periods else math.nan

    def to_json(self, period_h: float) -> dict[str, float | int]:
        return {
            "spikes": self.spikes,
            "hits": self.hits,
            "hit_rate": _r(self.hit_rate),
            "median_lead_h": _r(self.median_lead * period_h),
            "mean_lead_h": _r(float(np.mean(self.lead_periods)) * period_h if self.lead_periods else math.nan),
            "alarm_share": _r(self.alarm_share),
        }


def _r(x: float) -> float:
    return round(x, 4) if math.isfinite(x) else math.nan


def spike_stats(
    realised: npt.ArrayLike,
    forecast: npt.ArrayLike,
    horizon: int,
    spec: SpikeSpec,
    scored: npt.ArrayLike | None = None,
) -> SpikeStats:
    """Hit rate and lead time of ``forecast`` for the spikes of ``realised`` (:class:`SpikeSpec`) with onsets
    where ``scored`` is true (default: where the forecast exists); thresholds use all earlier values."""
    v = np.asarray(realised, dtype=np.float64).ravel()
    f = np.asarray(forecast, dtype=np.float64).ravel()
    mask = np.isfinite(f) if scored is None else np.asarray(scored, dtype=bool).ravel() & np.isfinite(f)
    spike_thr = trailing_quantile(v, spec.quantile, spec.trailing, horizon)
    alarm_thr = trailing_quantile(f, spec.alarm_quantile, spec.trailing, 1)  # all earlier forecasts
    with np.errstate(invalid="ignore"):
        flag = mask & (v > spike_thr)
        alarm = mask & (f > alarm_thr)
    onsets: list[int] = []
    last = -(10**9)
    for t in np.flatnonzero(flag).tolist():
        if t - last > spec.merge:
            onsets.append(t)
        last = t
    leads: list[int] = []
    for t in onsets:
        if not alarm[t]:
            continue
        a = t
        while a > 0 and alarm[a - 1] and t - (a - 1) < spec.lookback:
            a -= 1
        leads.append(t + 1 - a)  # the alarm came on at a's close; the spiky window opens at t+1
    share = float(alarm[mask].mean()) if mask.any() else math.nan
    return SpikeStats(len(onsets), len(leads), tuple(leads), share)


# --- walk-forward ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalkForward:
    """Out-of-sample forecasts and their scores (losses over periods with a forecast, a naive forecast
    and a positive realised value)."""

    spec: HarSpec
    forecast: FloatArray = field(repr=False)
    naive: FloatArray = field(repr=False)
    realised: FloatArray = field(repr=False)
    refits: int
    fallbacks: int  # refit points with too little history: no forecast until the next (use the floor)
    scored: int
    qlike_har: float
    qlike_naive: float
    mse_har: float
    mse_naive: float
    spikes_har: SpikeStats
    spikes_naive: SpikeStats
    last_fit: HarFit | None

    def to_json(self, period_h: float = 1.0) -> dict[str, object]:
        return {
            "horizon_h": self.spec.horizon * period_h,
            "lags": list(self.spec.lags),
            "transform": self.spec.transform,
            "refits": self.refits,
            "fallbacks": self.fallbacks,
            "scored_periods": self.scored,
            "qlike": {"har": _r(self.qlike_har), "naive": _r(self.qlike_naive)},
            "mse_ratio_har_to_naive": _r(self.mse_har / self.mse_naive) if self.mse_naive > 0 else math.nan,
            "spikes": {"har": self.spikes_har.to_json(period_h), "naive": self.spikes_naive.to_json(period_h)},
            "coef": {k: round(v, 6) for k, v in (self.last_fit.params() if self.last_fit else {}).items()},
        }


def walk_forward(
    rv: npt.ArrayLike,
    spec: HarSpec,
    *,
    refit_every: int = 168,
    score_from: int = 0,
    exog: Mapping[str, npt.ArrayLike] | None = None,
    spikes: SpikeSpec | None = None,
) -> WalkForward:
    """Refit every ``refit_every`` periods (on a schedule through ``score_from``), forecast the periods up to
    the next refit from their own regressors, and score from ``score_from`` on (earlier forecasts only set
    the alarm level). ``refits`` and ``fallbacks`` count the refit points from ``score_from`` on.

    The fit at t0 is :func:`fit_har` on ``rv[: t0 + 1]`` (the same numbers, accumulated: the normal
    equations gain each row s once its target window ends, s + horizon <= t0); regressors of row t use
    periods up to t only. So no forecast depends on a period after the one it is made at.
    """
    if refit_every < 1 or score_from < 0:
        raise ValidationError("refit_every must be >= 1 and score_from >= 0")
    x = np.asarray(rv, dtype=np.float64).ravel()
    ex = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in (exog or {}).items()}
    n, h = x.size, spec.horizon
    feats, y = _rows(x, spec, ex)
    level = har_target(x, h)
    names = spec.names(tuple(sorted(ex)))
    k = feats.shape[1]
    xtx, xty = np.zeros((k, k)), np.zeros(k)
    yty = ysum = lsum = 0.0
    rows = 0
    added = 0  # rows s < added are in the sums
    fc = np.full(n, np.nan)
    refits = fallbacks = 0
    fit: HarFit | None = None
    for t0 in range(score_from % refit_every, n, refit_every):  # forecasts before score_from feed alarms
        upto = max(t0 - h + 1, 0)  # rows s <= t0 - h: their targets end by t0
        sel = np.arange(added, upto)
        sel = sel[np.isfinite(y[sel])]
        a, b = feats[sel], y[sel]
        xtx += a.T @ a
        xty += a.T @ b
        yty += float(b @ b)
        ysum += float(b.sum())
        lsum += float(level[sel].sum())
        rows += sel.size
        added = max(added, upto)
        if rows < spec.min_obs:
            fallbacks += t0 >= score_from  # a scored stretch without a forecast
            fit = None
            continue
        fit = _solve(spec, names, xtx, xty, yty, ysum, rows, lsum)
        refits += t0 >= score_from
        t1 = min(t0 + refit_every, n)
        fc[t0:t1] = fit.predict(feats[t0:t1])
    naive = naive_forecast(x, h)
    idx = np.arange(n)
    ok = (idx >= score_from) & np.isfinite(fc) & np.isfinite(naive) & np.isfinite(level) & (level > 0) & (naive > 0)
    ss = spikes or SpikeSpec()
    if ok.any():
        ql_h, ql_n = qlike(level[ok], fc[ok]), qlike(level[ok], naive[ok])
        mse_h = float(np.mean((level[ok] - fc[ok]) ** 2))
        mse_n = float(np.mean((level[ok] - naive[ok]) ** 2))
    else:
        ql_h = ql_n = mse_h = mse_n = math.nan
    return WalkForward(
        spec,
        fc,
        naive,
        level,
        refits,
        fallbacks,
        int(ok.sum()),
        ql_h,
        ql_n,
        mse_h,
        mse_n,
        spike_stats(level, fc, h, ss, ok),
        spike_stats(level, naive, h, ss, ok),
        fit,
    )
