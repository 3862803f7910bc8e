"""The probability that a jump-diffusion price touches a barrier within a horizon, tabulated per market and
looked up per account.

An account is bankrupt when the price reaches its bankruptcy price; the engine needs the liquidation horizon
h to react. ``P(cross)`` is the probability that the price path *touches* the barrier within h: continuous
monitoring (the reflection principle with drift for the diffusion, :func:`gbm_hit_probability`), plus jumps,
which can cross the barrier directly. The drift ``nu`` of the log price defaults to the martingale drift
``-sigma**2/2 - lam*kappa`` (``kappa = E[e^Y] - 1``): the price has no trend, as under the risk-neutral
measure at zero rate. For GBM that is ``-sigma**2/2``: one day (1/365 y) at 80 % vol gives
``P(touch -10 %) = 0.0125044823`` (``z = ln(1/0.9)``).

The probability depends on an account only through its log distance to the barrier, so for one market the
engine tabulates it once per parameter change (:func:`crossing_table`: the no-jump part in closed form, the
jump part by a Strang-split backward induction on a grid, O(n log n) per step) and every account is then an
O(1) lookup without log or exp (:func:`crossing_probability`, numba; twin :func:`crossing_probability_py`).
:func:`gap_addon_fraction` inverts the table: the extra collateral, as a fraction of notional, that moves the
bankruptcy price far enough to keep ``P(cross)`` under a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, prange
from scipy import fft as sp_fft
from scipy.interpolate import CubicSpline
from scipy.special import log_ndtr, ndtr, ndtri
from scipy.stats import poisson

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.perp.kernels import available_cores
from fluidmargin.risk.stats.jump_models import (
    SQRT_2PI,
    FloatArray,
    Jumps,
    Params,
    as_floats,
    martingale_drift,
    poisson_terms,
)

LONG = 1  # loses when the price falls: the barrier is below
SHORT = -1  # loses when the price rises: the barrier is above
_GRID_PER_SD = 2.0  # solver grid nodes per standard deviation of the half-step diffusion


def gbm_hit_probability(
    log_distance: npt.ArrayLike, sigma_annual: float, horizon_years: float, drift_per_year: float
) -> FloatArray:
    """P(min over [0, h] of nu t + sigma W_t <= -z): the reflection principle with drift (z >= 0)."""
    z = as_floats(log_distance)
    if horizon_years <= 0.0:
        return as_floats(np.where(z <= 0.0, 1.0, 0.0))
    sd = sigma_annual * math.sqrt(horizon_years)
    nt = drift_per_year * horizon_years
    with np.errstate(over="ignore", under="ignore"):
        image = np.exp(-2.0 * drift_per_year * z / sigma_annual**2 + log_ndtr((-z + nt) / sd))
    p = ndtr((-z - nt) / sd) + image
    return as_floats(np.where(z <= 0.0, 1.0, np.minimum(p, 1.0)))


@dataclass(frozen=True, slots=True, eq=False)
class CrossingTable:
    """P(the price touches a barrier within the horizon), tabulated per direction.

    Canonical form: ``log_p_down[i]`` / ``log_p_up[i]`` = log P at log distance z = i * dz below / above.
    Lookup form, what accounts are priced with: rows ``(P, D1, D2)`` (P and the forward differences of
    log P) on a uniform grid of the barrier's distance as a fraction of the price, ``d = k / inv_dd``
    (``d = 1 - ratio`` for a long, ``ratio - 1`` for a short), fine enough that each log step is at most
    ``LOOKUP_MAX_LOG_STEP``. Between rows log P is the quadratic through three rows, so a lookup is a
    multiply, a gather and a short polynomial for e^x: no log, no exp. Beyond the last row the last
    value is returned: an upper bound, at most ``p_floor``.
    """

    dz: float
    log_p_down: FloatArray
    log_p_up: FloatArray
    lookup_long: FloatArray
    inv_dd_long: float
    lookup_short: FloatArray
    inv_dd_short: float
    horizon_years: float
    drift_per_year: float
    p_floor: float
    grid_dz: float  # the spacing of the solver's grid (dz is finer: the table interpolates it)
    steps: int  # time steps of the jump part (0: no jumps, closed form)


LOOKUP_MAX_LOG_STEP = 0.1  # |log P step| per lookup row: e^x by a degree-6 polynomial is within 2e-11
_LOOKUP_MAX_ROWS = 1 << 18
# a lookup row: P(cross) at the node, then the first and second differences of log P to the next nodes
ROW_P, ROW_DLOGP, ROW_D2LOGP = 0, 1, 2


def _lookup_rows(curves: _Curves, log_p: FloatArray, dz: float, long: bool) -> tuple[FloatArray, float]:
    """Rows (P, D1, D2) on a uniform grid of d = 1 - e^{-z} (long) or e^{z} - 1 (short), P evaluated afresh.

    The row count keeps every log step |D1| within LOOKUP_MAX_LOG_STEP (the slope bound comes from the
    z-table ``log_p``); D1, D2 are the forward differences of log P, so between rows log P is the
    quadratic through three rows (exact for a Gaussian tail).
    """
    z_end = dz * (log_p.size - 1)
    d_end = -math.expm1(-z_end) if long else math.expm1(z_end)
    z_nodes = np.arange(log_p.size) * dz
    # dz/dd = 1/(1 - d) = e^z for a long, 1/(1 + d) = e^{-z} for a short
    slope = np.abs(np.diff(log_p)) / dz * (np.exp(z_nodes[1:]) if long else np.exp(-z_nodes[:-1]))
    worst = float(slope.max()) if slope.size else 0.0
    rows = int(min(_LOOKUP_MAX_ROWS, max(3.0, math.ceil(1.25 * d_end * worst / LOOKUP_MAX_LOG_STEP) + 1)))
    dd = d_end / (rows - 1)
    d = np.arange(rows) * dd
    z = as_floats(-np.log1p(-np.minimum(d[1:], d_end)) if long else np.log1p(d[1:]))
    p = np.concatenate(([1.0], curves.p(z)[0 if long else 1]))
    lp = np.minimum.accumulate(np.log(np.clip(p, 1e-300, 1.0)))
    out = np.zeros((rows, 3))
    out[:, ROW_P] = np.exp(lp)
    out[:-1, ROW_DLOGP] = np.diff(lp)
    out[:-2, ROW_D2LOGP] = np.diff(lp, 2)
    out.setflags(write=False)
    return out, 1.0 / dd


def _hit2(z: FloatArray, sigma: float, t: float, nu: FloatArray) -> FloatArray:
    """:func:`gbm_hit_probability` for a column of drifts (one row per direction), z > 0.

    Only z within 40 sd (+ drift) are evaluated: beyond, the probability is below 1e-300 and the special
    functions would crawl through subnormal numbers.
    """
    sd = sigma * math.sqrt(t)
    out = np.zeros((nu.shape[0], z.shape[0]))
    near = z < float(np.max(np.abs(nu))) * t + 40.0 * sd
    zn = z[near]
    with np.errstate(over="ignore", under="ignore"):
        image = np.exp(-2.0 * nu * zn / sigma**2 + log_ndtr((-zn + nu * t) / sd))
        out[:, near] = np.minimum(ndtr((-zn - nu * t) / sd) + image, 1.0)
    return out


class _Diffusion:
    """The killed diffusion over ``t`` on the grid, one row per direction:
    omega -> int_0^inf q_t(z, x) omega(x) dx at every node z > 0.

    q_t(z, x) = phi(x - z - nu t)(1 - e^{-2 z x / (s^2 t)}): the second factor, the Brownian-bridge
    probability of not touching 0, differs from 1 only within ~20 sd of the barrier, so the killing is a
    small dense block and the rest a convolution (point-sampled kernel, i.e. the trapezoid rule: spectrally
    accurate for a Gaussian 2+ nodes wide), done by FFT. At the barrier the integrand q * omega starts with
    slope q_x(z, 0) omega(0+), so the trapezoid rule's Euler-Maclaurin term dz^2/12 * that slope is added.
    """

    def __init__(self, grid_dz: float, n: int, size: int, sigma: float, t: float, nu: FloatArray) -> None:
        sd = sigma * math.sqrt(t)
        reach = float(np.max(np.abs(nu))) * t + 10.0 * sd
        w = min(n, math.ceil(reach / grid_dz))
        k = np.arange(-w, w + 1) * grid_dz
        kern = np.exp(-0.5 * ((k - nu * t) / sd) ** 2) * (grid_dz / (sd * SQRT_2PI))  # (2, 2w+1)
        self.w, self.n, self.size = w, n, size
        self.spectrum = sp_fft.rfft(kern[:, ::-1], size, axis=-1)
        iw = min(n, math.ceil(2.0 * reach / grid_dz) + 1)
        i = np.arange(1, iw + 1)
        jj = np.arange(1, min(n, iw + w) + 1)[None, :]
        offs = jj - i[:, None]
        pick = kern[:, np.clip(offs + w, 0, 2 * w)] * (np.abs(offs) <= w)  # (2, iw, jw)
        self.block = pick * np.exp(-2.0 * (i[:, None] * grid_dz) * (jj * grid_dz) / (sd * sd))
        z = i * grid_dz
        slope = (2.0 * z / (sd * sd)) * np.exp(-0.5 * ((z + nu * t) / sd) ** 2) / (sd * SQRT_2PI)
        self.edge = grid_dz * grid_dz / 12.0 * slope

    def __call__(self, v: FloatArray) -> FloatArray:
        """out[:, i] for i = 1..n; v[:, 0] is omega's limit at the barrier (only the end correction uses it)."""
        n, w = self.n, self.w
        out = np.empty_like(v)
        out[:, 0] = 0.0
        full = sp_fft.irfft(sp_fft.rfft(v[:, 1:], self.size, axis=-1) * self.spectrum, self.size, axis=-1)
        out[:, 1:] = full[:, w : w + n]
        iw, jw = self.block.shape[1:]
        out[:, 1 : iw + 1] += self.edge * v[:, :1] - np.einsum("rij,rj->ri", self.block, v[:, 1 : jw + 1])
        return out


def _hat_weights(j: Jumps, c: FloatArray, d: float) -> FloatArray:
    """int f(c + e) hat(e / d) de: jump mass on the piecewise-linear basis function of a node at offset c."""
    r = j.integrated_cdf
    ramp = j.ramp
    w = (r(c + d) - 2.0 * r(c) + r(c - d)) / d + (ramp(c + d) - 2.0 * ramp(c) + ramp(c - d)) / d
    return np.maximum(w, 0.0)


def _half_hat_weights(j: Jumps, c: FloatArray, d: float) -> FloatArray:
    """int_0^d f(c + e) (1 - e/d) de: the half basis function of the barrier node."""
    f1 = j.integrated_cdf
    ramp = j.ramp
    w = -j.cdf(c) + (f1(c + d) + ramp(c + d) - f1(c) - ramp(c)) / d
    return np.maximum(w, 0.0)


class _JumpOperator:
    """v -> E[v(z + Y)] on the grid, one row per direction, with v = 1 at and below the barrier and 0 beyond
    the top. The sum over nodes is a correlation with the jump weights (hat functions), done by FFT."""

    def __init__(self, rows: tuple[Jumps, Jumps], grid_dz: float, n: int, tail: float) -> None:
        z = as_floats(np.arange(1, n + 1) * grid_dz)
        kd = min(n, max(math.ceil(j.down_reach(tail) / grid_dz) for j in rows) + 1)
        ku = min(n, max(math.ceil(j.mirrored().down_reach(tail) / grid_dz) for j in rows) + 1)
        self.ku, self.n = ku, n
        self.size = sp_fft.next_fast_len(n + kd + ku + 1, real=True)
        offsets = as_floats(np.arange(-kd, ku + 1) * grid_dz)
        kern_rev = np.stack([_hat_weights(j, offsets, grid_dz)[::-1] for j in rows])
        self.spectrum = sp_fft.rfft(kern_rev, self.size, axis=-1)
        self.below = np.stack([as_floats(j.cdf(-z)) for j in rows])
        self.edge = np.stack([_half_hat_weights(j, -z, grid_dz) for j in rows])

    def __call__(self, v: FloatArray) -> FloatArray:
        n, ku = self.n, self.ku
        out = np.empty_like(v)
        out[:, 0] = 1.0
        conv = sp_fft.irfft(sp_fft.rfft(v[:, 1:], self.size, axis=-1) * self.spectrum, self.size, axis=-1)
        out[:, 1:] = np.minimum(self.below + conv[:, ku : ku + n] + self.edge * v[:, :1], 1.0)
        return out


def _reach(sigma: float, nu: float, lam: float, jumps: Jumps, h: float, tail: float) -> float:
    """A log distance beyond which P(touch) < tail: the diffusion's minimum and the jumps' partial sums,
    each given half the tail (min X >= min of the diffusion + min of the jump partial sums)."""
    reach = abs(nu) * h + sigma * math.sqrt(h) * float(-ndtri(tail / 4.0))
    if lam == 0.0:
        return reach
    lam_h = lam * h
    big_k = max(1, poisson_terms(lam_h, tail=tail / 4.0))
    q = 0.0
    pk = math.exp(-lam_h)
    for k in range(1, big_k + 1):
        pk *= lam_h / k
        level = min(0.5, tail / (4.0 * big_k * big_k * pk))
        q = max(q, max(jumps.down_reach(level, j) for j in range(1, k + 1)))
    return reach + q


@dataclass(frozen=True, slots=True, eq=False)
class _Curves:
    """P(touch a barrier at log distance z within h), row 0 below, row 1 above, at any z: the closed-form
    parts exactly, the solver's smooth part (``ratio`` on ``grid_z``) by a cubic spline."""

    sigma: float
    h: float
    lam: float
    nus: FloatArray  # (2, 1) log drift per row
    half_dt: float
    grid_z: FloatArray
    ratio: FloatArray | None  # (2, n+1); None without jumps
    reach: float
    grid_dz: float

    def p(self, z: FloatArray) -> FloatArray:
        """(2, len(z)) probabilities for z > 0."""
        hit_h = _hit2(z, self.sigma, self.h, self.nus)
        if self.ratio is None:
            return hit_h
        e_h = math.exp(-self.lam * self.h)
        hit_half = _hit2(z, self.sigma, self.half_dt, self.nus)
        smooth = CubicSpline(self.grid_z, self.ratio, axis=1, extrapolate=False)(z)
        smooth = np.where(smooth > 0.0, smooth, 0.0)  # NaN beyond the grid: nothing left there
        return as_floats(np.minimum(e_h * hit_h + (1.0 - e_h) * hit_half + smooth * (1.0 - hit_half), 1.0))


def _crossing_curves(
    sigma: float, nu: float, lam: float, jumps: Jumps, h: float, tail: float, steps: int, max_nodes: int
) -> _Curves:
    """P(touch a barrier z below within h) (row 0) and above (row 1, the mirrored model).

    Writing P = e^{-lam h} hit(z, h) + omega, the first term (no jump) is exact; omega (paths with a jump)
    evolves backward in remaining time s by Strang splitting: diffusion over dt/2, jumps over dt (Poisson
    numbers of jumps), diffusion over dt/2. The no-jump part's exact semigroup is used inside each step,
    so only the smooth, jump-convolved part lives on the grid.
    """
    rows = (jumps, jumps.mirrored())
    nus = np.array([[nu], [-nu]])
    reach = max(_reach(sigma, d, lam, j, h, tail) for d, j in zip((nu, -nu), rows, strict=True))
    if lam == 0.0:
        grid_dz = min(sigma * math.sqrt(h) / 16.0, reach / 1024.0)
        return _Curves(sigma, h, lam, nus, 0.0, as_floats(np.zeros(1)), None, reach, grid_dz)
    dt = h / steps
    grid_dz = sigma * math.sqrt(dt / 2.0) / _GRID_PER_SD
    reach += 12.0 * sigma * math.sqrt(dt)
    n = math.ceil(reach / grid_dz)
    if n > max_nodes:  # a coarser grid than wanted: still consistent, less accurate near the barrier
        n = max_nodes
        grid_dz = reach / n
    z = as_floats(np.arange(n + 1) * grid_dz)
    zp = z[1:]
    jump_op = _JumpOperator(rows, grid_dz, n, tail)
    size = sp_fft.next_fast_len(n + 2 * math.ceil((abs(nu) * dt + 10.0 * sigma * math.sqrt(dt)) / grid_dz) + 2)
    diff_full = _Diffusion(grid_dz, n, size, sigma, dt, nus)
    diff_half = _Diffusion(grid_dz, n, size, sigma, dt / 2.0, nus)
    kmax = max(1, poisson_terms(lam * dt, tail=tail / steps))
    pk = poisson.pmf(np.arange(kmax + 1), lam * dt)
    p_rest = max(0.0, 1.0 - float(pk.sum()))  # more than kmax jumps in one step: counted as a crossing

    def hit(t: float) -> FloatArray:
        out = np.ones((2, n + 1))
        out[:, 1:] = _hit2(zp, sigma, t, nus)
        return out

    hit_half, hit_full = hit(dt / 2.0), hit(dt)
    omega = np.zeros((2, n + 1))
    for m in range(steps):
        s = m * dt
        e_s = math.exp(-lam * s)
        omega1 = omega if m == 0 else (1.0 - e_s) * hit_full + diff_full(omega)
        v1 = e_s * hit(s + dt / 2.0) + omega1
        v1[:, 0] = 1.0
        acc = np.full((2, n + 1), p_rest)
        y = v1
        for k in range(1, kmax + 1):
            y = jump_op(y)
            acc += pk[k] * y
        omega = pk[0] * omega1 + acc
    # the last half step, kept in closed form where it is sharp: Q omega ~ omega(0+) * survival(z, dt/2)
    # near the barrier, so the table interpolates Q omega / survival (smooth there), not Q omega
    smooth = diff_half(omega)
    ratio = np.empty_like(smooth)
    ratio[:, 0] = omega[:, 0]
    ratio[:, 1:] = smooth[:, 1:] / np.maximum(1.0 - hit_half[:, 1:], 1e-300)
    return _Curves(sigma, h, lam, nus, dt / 2.0, z, ratio, float(z[-1]), grid_dz)


def crossing_table(
    params: Params,
    horizon_years: float,
    *,
    drift_per_year: float | None = None,
    tail_prob: float = 1e-10,
    steps: int | None = None,
    max_nodes: int = 1 << 16,
) -> CrossingTable:
    """Tabulate P(touch a barrier at log distance z within the horizon), both directions.

    ``drift_per_year`` defaults to :func:`martingale_drift`. ``steps`` (time steps of the jump part)
    defaults to ``clip(600 lam h, 8, 64)``; the error falls like steps^-1.5 and like the grid spacing
    squared (the acceptance case, lam h = 0.055: 0.0290749 against 0.0290686 with 4x the steps and a 4x
    finer grid). Probabilities below ``tail_prob`` are not resolved: the table ends there.
    """
    if not (math.isfinite(horizon_years) and horizon_years > 0.0):
        raise ValidationError(f"horizon_years must be > 0, got {horizon_years}")
    if not (0.0 < tail_prob < 1e-3):
        raise ValidationError(f"tail_prob must be in (0, 1e-3), got {tail_prob}")
    if drift_per_year is not None and not math.isfinite(drift_per_year):
        raise ValidationError(f"drift_per_year must be finite, got {drift_per_year}")
    if steps is not None and steps < 1:
        raise ValidationError(f"steps must be >= 1, got {steps}")
    nu = martingale_drift(params) if drift_per_year is None else float(drift_per_year)
    lam, sigma, jumps = params.lam_per_year, params.sigma_annual, params.jumps
    if steps is None:
        steps = min(64, max(8, math.ceil(600.0 * lam * horizon_years)))
    curves = _crossing_curves(sigma, nu, lam, jumps, horizon_years, tail_prob, steps, max_nodes)
    dz = curves.grid_dz / 4.0
    z = as_floats(np.arange(1, math.floor(curves.reach / dz) + 1) * dz)
    p = np.concatenate([np.ones((2, 1)), curves.p(z)], axis=1)
    p = np.minimum.accumulate(np.clip(p, 1e-300, 1.0), axis=1)  # monotone: farther barriers are never likelier
    logs = []
    for row in p:
        end = int(np.searchsorted(-row, -tail_prob * 1e-2, side="right"))  # keep one node below tail/100
        lp = np.log(row[: min(end + 1, row.size)])
        lp.setflags(write=False)
        logs.append(lp)
    long_rows, inv_long = _lookup_rows(curves, logs[0], dz, long=True)
    short_rows, inv_short = _lookup_rows(curves, logs[1], dz, long=False)
    return CrossingTable(
        dz=dz,
        log_p_down=logs[0],
        log_p_up=logs[1],
        lookup_long=long_rows,
        inv_dd_long=inv_long,
        lookup_short=short_rows,
        inv_dd_short=inv_short,
        horizon_years=horizon_years,
        drift_per_year=nu,
        p_floor=float(max(math.exp(logs[0][-1]), math.exp(logs[1][-1]), tail_prob)),
        grid_dz=curves.grid_dz,
        steps=0 if lam == 0.0 else steps,
    )


def _validate_accounts(side: npt.ArrayLike, barrier_ratio: npt.ArrayLike) -> tuple[npt.NDArray[np.int8], FloatArray]:
    s = np.ascontiguousarray(side, dtype=np.int8).ravel()
    r = np.ascontiguousarray(barrier_ratio, dtype=np.float64).ravel()
    if s.shape != r.shape:
        raise ValidationError(f"side and barrier_ratio differ in length: {s.size} != {r.size}")
    if not np.all((s == LONG) | (s == SHORT)):
        raise ValidationError("side must be LONG (1) or SHORT (-1)")
    if np.isnan(r).any() or (r < 0.0).any() or np.isneginf(r).any():
        raise ValidationError("barrier_ratio must be >= 0 and not NaN (0: a long with no bankruptcy price)")
    return s, r


def _exp_small(x: float) -> float:
    """e^x for |x| <= LOOKUP_MAX_LOG_STEP: degree-6 Taylor (error < x^7/5040 < 2e-11 relative), else exp."""
    if -0.1 <= x <= 0.1:
        return 1.0 + x * (1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + x * 0.25 * (1.0 + x * 0.2 * (1.0 + x / 6.0)))))
    return math.exp(x)


_exp_small_nb = njit(cache=True, error_model="numpy", inline="always")(_exp_small)


def _crossing_body(
    side: Any, ratio: Any, rows_long: Any, inv_long: float, rows_short: Any, inv_short: float, out: Any
) -> None:
    for i in prange(side.shape[0]):
        r = ratio[i]
        if side[i] == 1:
            d = 1.0 - r
            if d <= 0.0 or r <= 0.0:  # at or past the barrier; or no bankruptcy price
                out[i] = 1.0 if d <= 0.0 else 0.0
                continue
            x = d * inv_long
            rows = rows_long
        else:
            d = r - 1.0
            if d <= 0.0 or r == math.inf:
                out[i] = 1.0 if d <= 0.0 else 0.0
                continue
            x = d * inv_short
            rows = rows_short
        last = rows.shape[0] - 1
        if x >= last:
            out[i] = rows[last, ROW_P]
            continue
        k = int(x)
        f = x - k
        out[i] = rows[k, ROW_P] * _exp_small_nb(f * (rows[k, ROW_DLOGP] + 0.5 * (f - 1.0) * rows[k, ROW_D2LOGP]))


_crossing_serial = njit(cache=True, error_model="numpy")(_crossing_body)
_crossing_parallel = njit(cache=True, parallel=True, error_model="numpy")(_crossing_body)
_PARALLEL_MIN_ACCOUNTS = 100_000


def crossing_probability(table: CrossingTable, side: npt.ArrayLike, barrier_ratio: npt.ArrayLike) -> FloatArray:
    """P(price touches each account's bankruptcy price within the table's horizon).

    ``side``: LONG (barrier below) or SHORT (above); ``barrier_ratio`` = bankruptcy price / current price
    (0 for a long that cannot go bankrupt, inf for such a short). At or past the barrier: 1. O(1) per
    account (see :class:`CrossingTable`); numba, in parallel from 100k accounts.
    """
    s, r = _validate_accounts(side, barrier_ratio)
    out = np.empty(s.shape[0])
    kern = _crossing_parallel if s.shape[0] >= _PARALLEL_MIN_ACCOUNTS and available_cores() > 1 else _crossing_serial
    kern(s, r, table.lookup_long, table.inv_dd_long, table.lookup_short, table.inv_dd_short, out)
    return out


def crossing_probability_py(table: CrossingTable, side: npt.ArrayLike, barrier_ratio: npt.ArrayLike) -> FloatArray:
    """Plain-Python twin of :func:`crossing_probability` (one account at a time, the same arithmetic)."""
    s, r = _validate_accounts(side, barrier_ratio)
    out = np.empty(s.shape[0])
    for i in range(s.shape[0]):
        ri = float(r[i])
        if s[i] == LONG:
            d = 1.0 - ri
            if d <= 0.0 or ri <= 0.0:
                out[i] = 1.0 if d <= 0.0 else 0.0
                continue
            x, rows = d * table.inv_dd_long, table.lookup_long
        else:
            d = ri - 1.0
            if d <= 0.0 or ri == math.inf:
                out[i] = 1.0 if d <= 0.0 else 0.0
                continue
            x, rows = d * table.inv_dd_short, table.lookup_short
        last = rows.shape[0] - 1
        if x >= last:
            out[i] = float(rows[last, ROW_P])
            continue
        k = int(x)
        f = x - k
        d1, d2 = float(rows[k, ROW_DLOGP]), float(rows[k, ROW_D2LOGP])
        out[i] = float(rows[k, ROW_P]) * _exp_small(f * (d1 + 0.5 * (f - 1.0) * d2))
    return out


def required_barrier_ratio(table: CrossingTable, side: int, target_prob: float) -> float:
    """The barrier ratio at which P(cross) falls to ``target_prob``: the exact inverse of the lookup's
    interpolation (to the polynomial's 2e-11). A long's bankruptcy price must be at most this times the
    price, a short's at least."""
    if not (math.isfinite(target_prob) and table.p_floor <= target_prob <= 1.0):
        raise ValidationError(f"target_prob must lie in [p_floor={table.p_floor:.3g}, 1], got {target_prob}")
    if side not in (LONG, SHORT):
        raise ValidationError("side must be LONG (1) or SHORT (-1)")
    rows, inv = (table.lookup_long, table.inv_dd_long) if side == LONG else (table.lookup_short, table.inv_dd_short)
    p = rows[:, ROW_P]
    k = int(np.searchsorted(-p, -target_prob, side="left"))  # first row with P <= target (P nonincreasing)
    if k == 0:
        return 1.0
    if k >= p.size:
        d = (p.size - 1) / inv
    else:
        # bisection on the lookup's own arithmetic within row k-1: the smallest d with lookup(d) <= target
        p_row, d1, d2 = float(p[k - 1]), float(rows[k - 1, ROW_DLOGP]), float(rows[k - 1, ROW_D2LOGP])
        lo, hi = 0.0, 1.0
        for _ in range(60):
            f = 0.5 * (lo + hi)
            if p_row * _exp_small(f * (d1 + 0.5 * (f - 1.0) * d2)) <= target_prob:
                hi = f
            else:
                lo = f
        d = (k - 1 + hi) / inv
    return 1.0 - d if side == LONG else 1.0 + d


def required_log_distance(table: CrossingTable, side: int, target_prob: float) -> float:
    """The log distance to the barrier at which P(cross) falls to ``target_prob``."""
    r = required_barrier_ratio(table, side, target_prob)
    return -math.log(r) if side == LONG else math.log(r)


def gap_addon_fraction(
    table: CrossingTable, side: npt.ArrayLike, barrier_ratio: npt.ArrayLike, target_prob: float
) -> FloatArray:
    """Extra collateral, as a fraction of notional, that keeps P(cross) <= ``target_prob`` (0 if it already is).

    Adding collateral C to a position of notional N moves its bankruptcy price by C/N of the price, so a
    long needs ``ratio - r*`` and a short ``r* - ratio``, r* from :func:`required_barrier_ratio` (one
    inversion per side, then vectorised). Floats for screening: a requirement built from it rounds up.
    """
    s, r = _validate_accounts(side, barrier_ratio)
    r_long = required_barrier_ratio(table, LONG, target_prob)
    r_short = required_barrier_ratio(table, SHORT, target_prob)
    with np.errstate(invalid="ignore"):
        need = np.where(s == LONG, r - r_long, r_short - r)
    return as_floats(np.where(need > 0.0, need, 0.0))  # r = inf (a short without bankruptcy price): -inf -> 0
