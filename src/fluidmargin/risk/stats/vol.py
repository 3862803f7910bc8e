"""Volatility estimators, online in O(1) per observation, each with a vectorised batch twin.

Units: a *return* is a log return over one step (a candle or sampling interval); variances are per
step (``var_per_step``); :func:`annualised_vol` converts with a 365-day year (``STEPS_PER_YEAR_1H`` ...).

- EWMA (RiskMetrics): ``var' = lam var + (1 - lam) r^2``.
- GARCH(1,1): ``var' = omega + alpha r^2 + beta var``, fitted off-line with the ``arch`` package
  (:func:`fit_garch`), filtered online (:class:`GarchVol`) with arch's own start value (backcast).
- Range estimators from candles: Parkinson, Garman-Klass, Rogers-Satchell per candle, and rolling
  means of them plus Yang-Zhang over a window (:class:`RollingRangeVol`, batch :func:`rolling_range_var`).
- Realised variance from ticks: the sum of squared log returns (:class:`RealisedVariance`).

Bad input. An online state never changes on bad input: ``update`` returns :class:`Rejected` with the
reason (NaN or infinite return, non-positive price, inconsistent candle, time going backwards) and the
caller keeps the old state. Batch functions raise ``ValidationError`` naming the first bad index.
Gaps: a return that spans ``steps > 1`` intervals (missing candles) is spread evenly over them
(``r^2 / steps`` per step, the forecast decaying over the missing steps); the state counts ``gaps`` and
``missing_steps`` so that callers can report them. ``update_at`` derives ``steps`` from timestamps.
Too little history to fit raises :class:`InsufficientHistory`; :func:`garch_or_floor` returns a
:class:`Floor` instead, telling the caller to use its configured floor variance.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from fluidmargin.core.errors import ValidationError

__all__ = [
    "MIN_OBS_GARCH",
    "STEPS_PER_YEAR_1D",
    "STEPS_PER_YEAR_1H",
    "STEPS_PER_YEAR_1M",
    "EwmaVol",
    "Floor",
    "GarchFit",
    "GarchParams",
    "GarchVol",
    "InsufficientHistory",
    "RealisedVariance",
    "Rejected",
    "RollingRangeVol",
    "annualised_vol",
    "arch_backcast",
    "ewma_variance",
    "fit_garch",
    "garch_or_floor",
    "garch_variance",
    "garman_klass_var",
    "parkinson_var",
    "realised_variance",
    "rogers_satchell_var",
    "rolling_range_var",
    "steps_between",
    "yang_zhang_var",
]

FloatArray = npt.NDArray[np.float64]
STEPS_PER_YEAR_1M = 365 * 24 * 60
STEPS_PER_YEAR_1H = 365 * 24
STEPS_PER_YEAR_1D = 365
MIN_OBS_GARCH = 250  # below this the GARCH likelihood is too flat to trust the fit
_FOUR_LN2 = 4.0 * math.log(2.0)
_GK_C = 2.0 * math.log(2.0) - 1.0


@dataclass(frozen=True, slots=True)
class Rejected:
    """An observation the estimator refused; the state it was offered to is unchanged."""

    reason: str


@dataclass(frozen=True, slots=True)
class Floor:
    """No fitted model (see ``reason``): the caller uses its configured floor variance."""

    var_per_step: float
    reason: str


class InsufficientHistory(ValidationError):
    """Too few observations to fit ``model``; fall back to the floor (:class:`Floor`)."""

    def __init__(self, model: str, n_obs: int, min_obs: int) -> None:
        super().__init__(f"{model}: {n_obs} observations, at least {min_obs} needed to fit; use the margin floor")
        self.model = model
        self.n_obs = n_obs
        self.min_obs = min_obs


def annualised_vol(var_per_step: float, steps_per_year: float) -> float:
    """sqrt(var_per_step * steps_per_year)."""
    return math.sqrt(var_per_step * steps_per_year)


def _return_reason(r: float, steps: int) -> str | None:
    if not math.isfinite(r):
        return f"return is {r}"
    if steps < 1:
        return f"steps must be >= 1, got {steps}"
    return None


def steps_between(prev_ts_ns: int | None, ts_ns: int, step_ns: int) -> int | Rejected:
    """Whole steps from ``prev_ts_ns`` to ``ts_ns`` (rounded; 1 when there is no previous time)."""
    if step_ns <= 0:
        raise ValidationError(f"step_ns must be > 0, got {step_ns}")
    if prev_ts_ns is None:
        return 1
    if ts_ns <= prev_ts_ns:
        return Rejected(f"out of order: ts {ts_ns} <= last {prev_ts_ns}")
    return max(1, (ts_ns - prev_ts_ns + step_ns // 2) // step_ns)


# --- EWMA ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EwmaVol:
    """RiskMetrics EWMA state: ``var_per_step`` is the forecast for the next return."""

    lam: float
    var_per_step: float
    n_obs: int = 0
    gaps: int = 0  # updates that spanned more than one step
    missing_steps: int = 0  # steps without an observation, in total
    last_ts_ns: int | None = None

    def __post_init__(self) -> None:
        if not (0.0 < self.lam < 1.0):
            raise ValidationError(f"EWMA lam must be in (0, 1), got {self.lam}")
        if not (math.isfinite(self.var_per_step) and self.var_per_step >= 0.0):
            raise ValidationError(f"variance must be finite and >= 0, got {self.var_per_step}")

    @property
    def sigma_per_step(self) -> float:
        return math.sqrt(self.var_per_step)

    def update(self, r: float, steps: int = 1) -> EwmaVol | Rejected:
        """Fold in the return ``r`` observed over ``steps`` intervals (``r^2 / steps`` per interval)."""
        why = _return_reason(r, steps)
        if why is not None:
            return Rejected(why)
        lam = self.lam
        if steps == 1:
            var = lam * self.var_per_step + (1.0 - lam) * r * r
            return EwmaVol(lam, var, self.n_obs + 1, self.gaps, self.missing_steps, self.last_ts_ns)
        decay = lam ** float(steps)
        var = decay * self.var_per_step + (1.0 - decay) * (r * r / steps)
        return EwmaVol(lam, var, self.n_obs + 1, self.gaps + 1, self.missing_steps + steps - 1, self.last_ts_ns)

    def update_at(self, r: float, ts_ns: int, step_ns: int) -> EwmaVol | Rejected:
        """:meth:`update` with the number of steps taken from the time since the last update."""
        steps = steps_between(self.last_ts_ns, ts_ns, step_ns)
        if isinstance(steps, Rejected):
            return steps
        nxt = self.update(r, steps)
        if isinstance(nxt, Rejected):
            return nxt
        return EwmaVol(nxt.lam, nxt.var_per_step, nxt.n_obs, nxt.gaps, nxt.missing_steps, ts_ns)


def _check_returns(returns: npt.ArrayLike, steps: npt.ArrayLike | None) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    x = np.ascontiguousarray(returns, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValidationError(f"{bad.size} non-finite returns (first at index {int(bad[0])}: {x[bad[0]]})")
    if steps is None:
        k = np.ones(x.size, dtype=np.int64)
    else:
        k = np.ascontiguousarray(steps, dtype=np.int64).ravel()
        if k.shape != x.shape:
            raise ValidationError(f"steps has {k.size} entries for {x.size} returns")
        if (k < 1).any():
            raise ValidationError(f"steps must be >= 1 (first bad at index {int(np.flatnonzero(k < 1)[0])})")
    return x, k


@njit(cache=True, error_model="numpy")
def _ewma_kernel(x, k, lam, var0, out):  # type: ignore[no-untyped-def]
    var = var0
    for t in range(x.shape[0]):
        r = x[t]
        if k[t] == 1:
            var = lam * var + (1.0 - lam) * r * r
        else:
            decay = lam ** float(k[t])
            var = decay * var + (1.0 - decay) * (r * r / k[t])
        out[t] = var


def ewma_variance(returns: npt.ArrayLike, lam: float, var0: float, steps: npt.ArrayLike | None = None) -> FloatArray:
    """The EWMA forecasts after each return (``out[t]`` forecasts ``r[t+1]``), as :class:`EwmaVol` would."""
    EwmaVol(lam, var0)
    x, k = _check_returns(returns, steps)
    out = np.empty(x.size)
    _ewma_kernel(x, k, float(lam), float(var0), out)
    return out


# --- GARCH(1,1) ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GarchParams:
    """GARCH(1,1) on per-step returns: omega (variance per step), alpha, beta, alpha + beta < 1."""

    omega: float
    alpha: float
    beta: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.omega, self.alpha, self.beta)):
            raise ValidationError("GARCH parameters must be finite")
        if self.omega <= 0.0 or self.alpha < 0.0 or self.beta < 0.0 or self.alpha + self.beta >= 1.0:
            raise ValidationError(
                "GARCH needs omega > 0, alpha, beta >= 0, alpha + beta < 1; "
                f"got {self.omega}, {self.alpha}, {self.beta}"
            )

    @property
    def unconditional_var(self) -> float:
        return self.omega / (1.0 - self.alpha - self.beta)


@dataclass(frozen=True, slots=True)
class GarchVol:
    """GARCH(1,1) filter state: ``var_per_step`` is the forecast for the next return."""

    params: GarchParams
    var_per_step: float
    n_obs: int = 0
    gaps: int = 0
    missing_steps: int = 0
    last_ts_ns: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.var_per_step) and self.var_per_step >= 0.0):
            raise ValidationError(f"variance must be finite and >= 0, got {self.var_per_step}")

    @classmethod
    def start(cls, params: GarchParams, backcast_var: float) -> GarchVol:
        """arch's start: the first forecast is omega + (alpha + beta) * backcast (see :func:`arch_backcast`)."""
        return cls(params, params.omega + (params.alpha + params.beta) * backcast_var)

    @property
    def sigma_per_step(self) -> float:
        return math.sqrt(self.var_per_step)

    def update(self, r: float, steps: int = 1) -> GarchVol | Rejected:
        """Fold in ``r`` observed over ``steps`` intervals: ``steps`` recursions, each with ``r^2 / steps``."""
        why = _return_reason(r, steps)
        if why is not None:
            return Rejected(why)
        p = self.params
        if steps == 1:
            var = p.omega + p.alpha * r * r + p.beta * self.var_per_step  # arch's order of operations
            return GarchVol(p, var, self.n_obs + 1, self.gaps, self.missing_steps, self.last_ts_ns)
        # constant input c = omega + alpha r^2 / k for k steps: var_k = c (1 - beta^k) / (1 - beta) + beta^k var
        c = p.omega + p.alpha * (r * r / steps)
        bk = p.beta ** float(steps)
        var = c * ((1.0 - bk) / (1.0 - p.beta)) + bk * self.var_per_step
        return GarchVol(p, var, self.n_obs + 1, self.gaps + 1, self.missing_steps + steps - 1, self.last_ts_ns)

    def update_at(self, r: float, ts_ns: int, step_ns: int) -> GarchVol | Rejected:
        """:meth:`update` with the number of steps taken from the time since the last update."""
        steps = steps_between(self.last_ts_ns, ts_ns, step_ns)
        if isinstance(steps, Rejected):
            return steps
        nxt = self.update(r, steps)
        if isinstance(nxt, Rejected):
            return nxt
        return GarchVol(nxt.params, nxt.var_per_step, nxt.n_obs, nxt.gaps, nxt.missing_steps, ts_ns)


@njit(cache=True, error_model="numpy")
def _garch_kernel(x, k, omega, alpha, beta, var0, out):  # type: ignore[no-untyped-def]
    var = var0
    for t in range(x.shape[0]):
        r = x[t]
        if k[t] == 1:
            var = omega + alpha * r * r + beta * var
        else:
            c = omega + alpha * (r * r / k[t])
            bk = beta ** float(k[t])
            var = c * ((1.0 - bk) / (1.0 - beta)) + bk * var
        out[t] = var


def garch_variance(
    returns: npt.ArrayLike, params: GarchParams, var0: float, steps: npt.ArrayLike | None = None
) -> FloatArray:
    """The GARCH forecasts after each return, as :class:`GarchVol` would (``var0``: the first forecast)."""
    x, k = _check_returns(returns, steps)
    out = np.empty(x.size)
    _garch_kernel(x, k, params.omega, params.alpha, params.beta, float(var0), out)
    return out


def arch_backcast(returns: npt.ArrayLike) -> float:
    """arch's backcast: the 0.94-weighted mean of the first (up to) 75 squared returns."""
    x = np.asarray(returns, dtype=np.float64)
    tau = min(75, x.shape[0])
    w = 0.94 ** np.arange(tau)
    w = w / sum(w)
    return float(np.sum((x[:tau] ** 2.0) * w))


@dataclass(frozen=True, slots=True)
class GarchFit:
    """A GARCH(1,1) fit by arch (zero mean, normal errors): parameters, fit quality, the start value."""

    params: GarchParams
    log_likelihood: float
    n_obs: int
    converged: bool
    message: str
    backcast_var: float

    def filter_start(self) -> GarchVol:
        return GarchVol.start(self.params, self.backcast_var)


def fit_garch(returns: npt.ArrayLike, *, min_obs: int = MIN_OBS_GARCH) -> GarchFit:
    """Fit GARCH(1,1) with arch (returns scaled to percent for its optimiser, parameters scaled back).

    Raises :class:`InsufficientHistory` below ``min_obs`` returns, ``ValidationError`` on non-finite ones
    or a fit outside the stationary region. Optimiser warnings are captured into ``converged``/``message``.
    """
    from arch import arch_model  # off-line only: keep the import out of the hot path

    x, _ = _check_returns(returns, None)
    if x.size < min_obs:
        raise InsufficientHistory("garch", int(x.size), min_obs)
    scale = 100.0
    model = arch_model(x * scale, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(disp="off")
    messages = [str(w.message) for w in caught]
    converged = res.convergence_flag == 0 and not caught
    omega, alpha, beta = (float(res.params[n]) for n in ("omega", "alpha[1]", "beta[1]"))
    if alpha + beta >= 1.0:
        raise ValidationError(f"garch fit is not stationary: alpha + beta = {alpha + beta:.6f}")
    params = GarchParams(omega / scale**2, alpha, beta)
    return GarchFit(
        params,
        float(res.loglikelihood) + x.size * math.log(scale),  # the likelihood of the unscaled returns
        int(x.size),
        bool(converged),
        "; ".join(messages) or "ok",
        arch_backcast(x),
    )


def garch_or_floor(
    returns: npt.ArrayLike, floor_var_per_step: float, *, min_obs: int = MIN_OBS_GARCH
) -> GarchFit | Floor:
    """:func:`fit_garch`, or a :class:`Floor` (with the reason) when there is too little history."""
    try:
        return fit_garch(returns, min_obs=min_obs)
    except InsufficientHistory as e:
        return Floor(floor_var_per_step, str(e))


# --- range estimators ---------------------------------------------------------------------------


def _candle_reason(o: float, h: float, lo: float, c: float) -> str | None:
    if not all(math.isfinite(v) and v > 0.0 for v in (o, h, lo, c)):
        return f"candle prices must be finite and > 0, got {(o, h, lo, c)}"
    if h < max(o, c, lo) or lo > min(o, c):
        return f"inconsistent candle: high {h} / low {lo} do not bound open {o} and close {c}"
    return None


def _check_candles(*cols: npt.ArrayLike) -> tuple[FloatArray, ...]:
    arrs = tuple(np.ascontiguousarray(c, dtype=np.float64).ravel() for c in cols)
    n = arrs[0].size
    if any(a.size != n for a in arrs):
        raise ValidationError("candle columns differ in length")
    stacked = np.stack(arrs)
    bad = ~(np.isfinite(stacked) & (stacked > 0.0)).all(axis=0)
    if len(arrs) == 4:
        o, h, lo, c = arrs
        bad |= (h < np.maximum(np.maximum(o, c), lo)) | (lo > np.minimum(o, c))
    else:
        bad |= arrs[0] < arrs[1]
    if bad.any():
        raise ValidationError(f"{int(bad.sum())} bad candles (first at index {int(np.flatnonzero(bad)[0])})")
    return arrs


def parkinson_var(high: npt.ArrayLike, low: npt.ArrayLike) -> FloatArray:
    """Parkinson (1980) per-candle variance: ln(H/L)^2 / (4 ln 2)."""
    h, lo = _check_candles(high, low)
    hl = np.log(h / lo)
    return hl * hl / _FOUR_LN2


def garman_klass_var(open_: npt.ArrayLike, high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike) -> FloatArray:
    """Garman-Klass (1980): 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2 per candle."""
    o, h, lo, c = _check_candles(open_, high, low, close)
    hl, co = np.log(h / lo), np.log(c / o)
    return 0.5 * hl * hl - _GK_C * co * co


def rogers_satchell_var(
    open_: npt.ArrayLike, high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike
) -> FloatArray:
    """Rogers-Satchell (1991), drift-independent: ln(H/C) ln(H/O) + ln(L/C) ln(L/O) per candle."""
    o, h, lo, c = _check_candles(open_, high, low, close)
    return np.asarray(np.log(h / c) * np.log(h / o) + np.log(lo / c) * np.log(lo / o), dtype=np.float64)


def _yz_k(window: int) -> float:
    return 0.34 / (1.34 + (window + 1) / (window - 1))


def yang_zhang_var(
    open_: npt.ArrayLike, high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike, window: int
) -> FloatArray:
    """Yang-Zhang (2000) over rolling windows: var_open + k var_close + (1 - k) mean RS.

    ``out[t]`` uses candles ``t+1 .. t+window`` (candle 0 only gives the first previous close), so there are
    ``n - window`` values; ``var_open`` is over ln(O_i / C_{i-1}), ``var_close`` over ln(C_i / O_i) (n - 1 divisor).
    """
    if window < 2:
        raise ValidationError(f"yang-zhang window must be >= 2, got {window}")
    o, h, lo, c = _check_candles(open_, high, low, close)
    if o.size <= window:
        raise InsufficientHistory("yang-zhang", int(o.size), window + 1)
    ov = np.log(o[1:] / c[:-1])
    cc = np.log(c[1:] / o[1:])
    rs = rogers_satchell_var(o[1:], h[1:], lo[1:], c[1:])
    return _yz_combine(_rolling_var(ov, window), _rolling_var(cc, window), _rolling_mean(rs, window), window)


def _yz_combine(v_open: FloatArray, v_close: FloatArray, m_rs: FloatArray, window: int) -> FloatArray:
    k = _yz_k(window)
    return v_open + k * v_close + (1.0 - k) * m_rs


def _rolling_mean(x: FloatArray, window: int) -> FloatArray:
    return np.asarray(np.lib.stride_tricks.sliding_window_view(x, window).mean(axis=-1), dtype=np.float64)


def _rolling_var(x: FloatArray, window: int) -> FloatArray:
    return np.asarray(np.lib.stride_tricks.sliding_window_view(x, window).var(axis=-1, ddof=1), dtype=np.float64)


def rolling_range_var(
    open_: npt.ArrayLike, high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike, window: int
) -> dict[str, FloatArray]:
    """All four range estimators over rolling windows, aligned like :func:`yang_zhang_var` (``n - window``).

    Keys: ``parkinson``, ``garman_klass``, ``rogers_satchell``, ``yang_zhang``.
    """
    o, h, lo, c = _check_candles(open_, high, low, close)
    yz = yang_zhang_var(o, h, lo, c, window)
    return {
        "parkinson": _rolling_mean(parkinson_var(h[1:], lo[1:]), window),
        "garman_klass": _rolling_mean(garman_klass_var(o[1:], h[1:], lo[1:], c[1:]), window),
        "rogers_satchell": _rolling_mean(rogers_satchell_var(o[1:], h[1:], lo[1:], c[1:]), window),
        "yang_zhang": yz,
    }


class RollingRangeVol:
    """Online rolling range estimators over the last ``window`` candles, O(1) per candle.

    Mutable (it owns a ring buffer); :meth:`update` validates before it touches anything, so a rejected
    candle leaves it as it was. Running sums are recomputed from the buffer once per ``window`` updates,
    which bounds rounding drift. The first candle only sets the previous close (as in the batch form).
    """

    _COLS = ("pk", "gk", "rs", "o", "o2", "c", "c2")

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValidationError(f"window must be >= 2, got {window}")
        self.window = window
        self._buf = np.zeros((window, len(self._COLS)))
        self._sums = np.zeros(len(self._COLS))
        self._count = 0  # candles in the buffer (<= window)
        self._pos = 0
        self._since_refresh = 0
        self._prev_close: float | None = None
        self.n_obs = 0

    def update(self, open_: float, high: float, low: float, close: float) -> Rejected | None:
        why = _candle_reason(open_, high, low, close)
        if why is not None:
            return Rejected(why)
        prev = self._prev_close
        self._prev_close = close
        self.n_obs += 1
        if prev is None:
            return None
        hl = math.log(high / low)
        co = math.log(close / open_)
        ov = math.log(open_ / prev)
        rs = math.log(high / close) * math.log(high / open_) + math.log(low / close) * math.log(low / open_)
        row = (hl * hl / _FOUR_LN2, 0.5 * hl * hl - _GK_C * co * co, rs, ov, ov * ov, co, co * co)
        old = self._buf[self._pos]
        if self._count == self.window:
            self._sums -= old
        else:
            self._count += 1
        old[:] = row
        self._sums += old
        self._pos = (self._pos + 1) % self.window
        self._since_refresh += 1
        if self._since_refresh >= self.window:
            self._sums = self._buf[: self._count].sum(axis=0)
            self._since_refresh = 0
        return None

    @property
    def ready(self) -> bool:
        return self._count == self.window

    def estimates(self) -> dict[str, float] | None:
        """The four variances per step over the current window, or None until it is full."""
        if not self.ready:
            return None
        n = float(self.window)
        pk, gk, rs, so, so2, sc, sc2 = (float(v) for v in self._sums)
        v_open = max((so2 - so * so / n) / (n - 1.0), 0.0)
        v_close = max((sc2 - sc * sc / n) / (n - 1.0), 0.0)
        k = _yz_k(self.window)
        return {
            "parkinson": pk / n,
            "garman_klass": gk / n,
            "rogers_satchell": rs / n,
            "yang_zhang": v_open + k * v_close + (1.0 - k) * rs / n,
        }


# --- realised variance --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RealisedVariance:
    """Running sum of squared tick log returns since the state was created (one window)."""

    sum_sq: float = 0.0
    n_returns: int = 0
    last_log_price: float | None = None

    def update(self, price: float) -> RealisedVariance | Rejected:
        if not (math.isfinite(price) and price > 0.0):
            return Rejected(f"tick price must be finite and > 0, got {price}")
        lp = math.log(price)
        if self.last_log_price is None:
            return RealisedVariance(self.sum_sq, 0, lp)
        d = lp - self.last_log_price
        return RealisedVariance(self.sum_sq + d * d, self.n_returns + 1, lp)


def realised_variance(prices: Sequence[float] | npt.ArrayLike) -> FloatArray:
    """Cumulative realised variance after each tick (``out[-1]`` is the window's total; ``out[0] = 0``)."""
    p = np.ascontiguousarray(prices, dtype=np.float64).ravel()
    bad = np.flatnonzero(~(np.isfinite(p) & (p > 0.0)))
    if bad.size:
        raise ValidationError(f"{bad.size} bad tick prices (first at index {int(bad[0])}: {p[bad[0]]})")
    lp = np.array([math.log(v) for v in p.tolist()])  # math.log: the same rounding as the online form
    d = np.diff(lp)
    return np.concatenate(([0.0], np.cumsum(d * d))) if p.size else np.zeros(0)
