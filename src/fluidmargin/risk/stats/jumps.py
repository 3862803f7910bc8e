"""Jump-diffusion gap risk: Merton and Kou models, their fits, and the probability of crossing a barrier.

Model (log price, time in years of 365 days)::

    X_t = X_0 + mu t + sigma W_t + sum_{i <= N_t} Y_i,   N a Poisson process of ``lam_per_year``

Merton: ``Y ~ Normal(jump_mean, jump_std)``. Kou: ``Y = +Exp(eta_up)`` with probability ``p_up``, else
``-Exp(eta_down)`` (means ``1/eta``). Returns are log returns over ``dt_years``.

Barrier crossing. An account is bankrupt when the price reaches its bankruptcy price; the engine needs
the liquidation horizon h to react. ``P(cross)`` is the probability that the price path *touches* the
barrier within h: continuous monitoring (the reflection principle with drift for the diffusion), plus
jumps, which can cross the barrier directly. The drift ``nu`` of the log price defaults to the
martingale drift ``-sigma**2/2 - lam*kappa`` (``kappa = E[e^Y] - 1``): the price has no trend, as under
the risk-neutral measure at zero rate. For GBM that is ``-sigma**2/2``: one day (1/365 y) at 80 % vol
gives ``P(touch -10 %) = 0.0125044823`` (``z = ln(1/0.9)``).

The probability depends on an account only through its log distance to the barrier, so for one market
the engine tabulates it once per parameter change (:func:`crossing_table`: the no-jump part in closed
form, the jump part by a Strang-split backward induction on a grid, O(n log n) per step) and every
account is then an O(1) lookup without log or exp (:func:`crossing_probability`, numba; twin
:func:`crossing_probability_py`). :func:`gap_addon_fraction` inverts the table: the extra collateral,
as a fraction of notional, that moves the bankruptcy price far enough to keep ``P(cross)`` under a
target.

Fits. :func:`fit_merton` and :func:`fit_kou` maximise the exact log-likelihood (Poisson mixture of
normals; for Kou the normal convolved with Gamma sums, via parabolic cylinder functions) with scipy.
Too little history raises :class:`~fluidmargin.risk.stats.vol.InsufficientHistory`; the caller then uses its
margin floor (see :mod:`fluidmargin.risk.stats.vol`). Non-finite returns raise ``ValidationError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, prange
from scipy import fft as sp_fft
from scipy import optimize
from scipy.interpolate import CubicSpline
from scipy.special import erfcx, gammainccinv, gammaln, log_ndtr, ndtr, ndtri, pbdv
from scipy.stats import poisson

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.stats.vol import InsufficientHistory

__all__ = [
    "LONG",
    "MIN_OBS_JUMP_FIT",
    "SHORT",
    "CrossingTable",
    "DoubleExponentialJumps",
    "JumpFit",
    "KouParams",
    "MertonParams",
    "NormalJumps",
    "crossing_probability",
    "crossing_probability_py",
    "crossing_table",
    "fit_kou",
    "fit_merton",
    "gap_addon_fraction",
    "gbm_hit_probability",
    "kou_logpdf",
    "martingale_drift",
    "merton_call_price",
    "merton_logpdf",
    "required_barrier_ratio",
    "required_log_distance",
    "simulate_log_returns",
]

FloatArray = npt.NDArray[np.float64]
LONG = 1  # loses when the price falls: the barrier is below
SHORT = -1  # loses when the price rises: the barrier is above
MIN_OBS_JUMP_FIT = 500  # fewer returns cannot separate jumps from diffusion
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_PI_2 = math.sqrt(0.5 * math.pi)
_GRID_PER_SD = 2.0  # solver grid nodes per standard deviation of the half-step diffusion


def _f64(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


# --- jump-size distributions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NormalJumps:
    """Merton jumps: log jump size ~ Normal(mean, std)."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0.0):
            raise ValidationError(f"normal jumps need a finite mean and std > 0, got {self.mean}, {self.std}")

    def cdf(self, x: FloatArray) -> FloatArray:
        return _f64(ndtr((x - self.mean) / self.std))

    def _integrated_cdf(self, x: FloatArray) -> FloatArray:
        """F1(x) = int_{-inf}^x F, minus the ramp max(x - mean, 0) (so no cancellation far right)."""
        z = (x - self.mean) / self.std
        return self.std * _psi(-np.abs(z))

    def _ramp(self, x: FloatArray) -> FloatArray:
        return np.maximum(x - self.mean, 0.0)

    def kappa(self) -> float:
        """E[e^Y] - 1."""
        return math.expm1(self.mean + 0.5 * self.std * self.std)

    def down_reach(self, tail: float, k: int = 1) -> float:
        """q >= 0 with P(Y_1 + ... + Y_k < -q) <= tail (the sum of k normals is normal)."""
        return max(0.0, -(k * self.mean + math.sqrt(k) * self.std * float(ndtri(tail))))

    def mirrored(self) -> NormalJumps:
        return NormalJumps(-self.mean, self.std)

    def sample(self, counts: npt.NDArray[np.int64], rng: np.random.Generator) -> FloatArray:
        """Sum of ``counts[i]`` jumps for each i."""
        return counts * self.mean + np.sqrt(counts) * self.std * rng.standard_normal(counts.shape[0])


@dataclass(frozen=True, slots=True)
class DoubleExponentialJumps:
    """Kou jumps: +Exp(eta_up) with probability p_up, else -Exp(eta_down); eta_up > 1 so E[e^Y] is finite."""

    p_up: float
    eta_up: float
    eta_down: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.p_up <= 1.0):
            raise ValidationError(f"p_up must be in [0, 1], got {self.p_up}")
        if (
            not (math.isfinite(self.eta_up) and math.isfinite(self.eta_down))
            or self.eta_up <= 1.0
            or self.eta_down <= 0
        ):
            raise ValidationError(f"Kou jumps need eta_up > 1 and eta_down > 0, got {self.eta_up}, {self.eta_down}")

    def cdf(self, x: FloatArray) -> FloatArray:
        q = 1.0 - self.p_up
        neg = q * np.exp(self.eta_down * np.minimum(x, 0.0))
        pos = 1.0 - self.p_up * np.exp(-self.eta_up * np.maximum(x, 0.0))
        return np.where(x < 0.0, neg, pos)

    def _integrated_cdf(self, x: FloatArray) -> FloatArray:
        q = 1.0 - self.p_up
        neg = (q / self.eta_down) * np.exp(self.eta_down * np.minimum(x, 0.0))
        pos = q / self.eta_down - self.p_up / self.eta_up * (1.0 - np.exp(-self.eta_up * np.maximum(x, 0.0)))
        return np.where(x < 0.0, neg, pos)

    def _ramp(self, x: FloatArray) -> FloatArray:
        return np.maximum(x, 0.0)

    def kappa(self) -> float:
        q = 1.0 - self.p_up
        return self.p_up * self.eta_up / (self.eta_up - 1.0) + q * self.eta_down / (self.eta_down + 1.0) - 1.0

    def down_reach(self, tail: float, k: int = 1) -> float:
        """q >= 0 with P(Y_1 + ... + Y_k < -q) <= tail: the sum is above -(k down jumps), a Gamma(k, eta_down)."""
        q = 1.0 - self.p_up
        if q**k <= tail:
            return 0.0
        return float(gammainccinv(k, tail)) / self.eta_down

    def mirrored(self) -> DoubleExponentialJumps:
        return DoubleExponentialJumps(1.0 - self.p_up, self.eta_down, self.eta_up)

    def sample(self, counts: npt.NDArray[np.int64], rng: np.random.Generator) -> FloatArray:
        total = int(counts.sum())
        up = rng.random(total) < self.p_up
        size = np.where(up, rng.exponential(1.0 / self.eta_up, total), -rng.exponential(1.0 / self.eta_down, total))
        out = np.zeros(counts.shape[0])
        owner = np.repeat(np.arange(counts.shape[0]), counts)
        np.add.at(out, owner, size)
        return out


Jumps = NormalJumps | DoubleExponentialJumps


def _logsumexp_last(t: FloatArray) -> FloatArray:
    """log sum exp over the last axis (all -inf gives -inf)."""
    top = np.max(t, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return _f64(np.log(np.sum(np.exp(t - top), axis=-1)) + top[..., 0])


def _psi(y: FloatArray) -> FloatArray:
    """y Phi(y) + phi(y): the integral of Phi up to y."""
    return _f64(y * ndtr(y) + np.exp(-0.5 * y * y) / _SQRT_2PI)


def _hat_weights(j: Jumps, c: FloatArray, d: float) -> FloatArray:
    """int f(c + e) hat(e / d) de: jump mass on the piecewise-linear basis function of a node at offset c."""
    r = j._integrated_cdf
    ramp = j._ramp
    w = (r(c + d) - 2.0 * r(c) + r(c - d)) / d + (ramp(c + d) - 2.0 * ramp(c) + ramp(c - d)) / d
    return np.maximum(w, 0.0)


def _half_hat_weights(j: Jumps, c: FloatArray, d: float) -> FloatArray:
    """int_0^d f(c + e) (1 - e/d) de: the half basis function of the barrier node."""
    f1 = j._integrated_cdf
    ramp = j._ramp
    w = -j.cdf(c) + (f1(c + d) + ramp(c + d) - f1(c) - ramp(c)) / d
    return np.maximum(w, 0.0)


# --- model parameters ---------------------------------------------------------------------------


def _check_diffusion(mu_annual: float, sigma_annual: float, lam_per_year: float) -> None:
    if not all(math.isfinite(v) for v in (mu_annual, sigma_annual, lam_per_year)):
        raise ValidationError("model parameters must be finite")
    if sigma_annual <= 0.0:
        raise ValidationError(f"sigma_annual must be > 0, got {sigma_annual}")
    if lam_per_year < 0.0:
        raise ValidationError(f"lam_per_year must be >= 0, got {lam_per_year}")


@dataclass(frozen=True, slots=True)
class MertonParams:
    """Merton jump-diffusion: log drift and vol per year, jump rate per year, normal log jumps."""

    mu_annual: float
    sigma_annual: float
    lam_per_year: float
    jump_mean: float
    jump_std: float

    def __post_init__(self) -> None:
        _check_diffusion(self.mu_annual, self.sigma_annual, self.lam_per_year)
        NormalJumps(self.jump_mean, self.jump_std)

    @property
    def jumps(self) -> NormalJumps:
        return NormalJumps(self.jump_mean, self.jump_std)


@dataclass(frozen=True, slots=True)
class KouParams:
    """Kou double-exponential jump-diffusion (Kou 2002)."""

    mu_annual: float
    sigma_annual: float
    lam_per_year: float
    p_up: float
    eta_up: float
    eta_down: float

    def __post_init__(self) -> None:
        _check_diffusion(self.mu_annual, self.sigma_annual, self.lam_per_year)
        DoubleExponentialJumps(self.p_up, self.eta_up, self.eta_down)

    @property
    def jumps(self) -> DoubleExponentialJumps:
        return DoubleExponentialJumps(self.p_up, self.eta_up, self.eta_down)


Params = MertonParams | KouParams


def martingale_drift(params: Params, rate: float = 0.0) -> float:
    """Log drift per year under which the price earns ``rate``: rate - sigma^2/2 - lam * kappa."""
    return rate - 0.5 * params.sigma_annual**2 - params.lam_per_year * params.jumps.kappa()


def simulate_log_returns(params: Params, n: int, dt_years: float, rng: np.random.Generator) -> FloatArray:
    """``n`` exact log returns over ``dt_years`` each (diffusion plus compound Poisson jumps)."""
    counts = rng.poisson(params.lam_per_year * dt_years, n).astype(np.int64)
    diff = params.mu_annual * dt_years + params.sigma_annual * math.sqrt(dt_years) * rng.standard_normal(n)
    return _f64(diff + params.jumps.sample(counts, rng))


# --- densities ----------------------------------------------------------------------------------


def _poisson_terms(mean: float, tail: float = 1e-13, cap: int = 60) -> int:
    """Smallest K with P(N > K) < tail for N ~ Poisson(mean), at most ``cap``."""
    if mean <= 0.0:
        return 0
    pmf = math.exp(-mean)
    cdf = pmf
    k = 0
    while k < cap and 1.0 - cdf >= tail:
        k += 1
        pmf *= mean / k
        cdf += pmf
    return k


def merton_logpdf(x: npt.ArrayLike, dt_years: float, params: MertonParams) -> FloatArray:
    """Log density of Merton log returns over ``dt_years``: a Poisson mixture of normals (log-sum-exp)."""
    x = _f64(x)
    lam_dt = params.lam_per_year * dt_years
    k = np.arange(_poisson_terms(lam_dt) + 1, dtype=np.float64)
    log_pk = k * math.log(lam_dt) - lam_dt - gammaln(k + 1.0) if lam_dt > 0 else np.where(k == 0, 0.0, -np.inf)
    mean = params.mu_annual * dt_years + k * params.jump_mean
    var = params.sigma_annual**2 * dt_years + k * params.jump_std**2
    z = x[..., None] - mean
    terms = log_pk - 0.5 * z * z / var - 0.5 * np.log(var) - _LOG_SQRT_2PI
    return _logsumexp_last(terms)


def _kou_pq(n: int, p: float, eta1: float, eta2: float) -> tuple[FloatArray, FloatArray]:
    """Kou (2002) Prop. B.1: the sum of n jumps is +Gamma(k, eta1) with prob P[k], -Gamma(k, eta2) with Q[k]."""
    q = 1.0 - p
    a, b = eta1 / (eta1 + eta2), eta2 / (eta1 + eta2)
    big_p, big_q = np.zeros(n + 1), np.zeros(n + 1)
    for k in range(1, n):
        for i in range(k, n):
            c = math.comb(n - k - 1, i - k) * math.comb(n, i)
            big_p[k] += c * a ** (i - k) * b ** (n - i) * p**i * q ** (n - i)
            big_q[k] += c * a ** (n - i) * b ** (i - k) * p ** (n - i) * q**i
    big_p[n], big_q[n] = p**n, q**n
    return big_p, big_q


def _log_truncated_moments(a: FloatArray, jmax: int) -> FloatArray:
    """log I_j(a) for j = 0..jmax, I_j(a) = int_0^inf t^j phi(t - a) dt (shape a.shape + (jmax+1,)).

    I_0 = Phi(a), I_1 = a Phi(a) + phi(a), I_j = a I_{j-1} + (j-1) I_{j-2}: run forward where a >= -1 (no
    cancellation) and, on J_j = I_j / phi(a) from J_0 = Phi(a)/phi(a) (erfcx), where -7 <= a < -1. Below
    -7 the recursion runs backward (stable there) from two seeds
    J_j = j! e^{a^2/4} D_{-j-1}(-a) (parabolic cylinder functions, scipy ``pbdv``); below a = -30 pbdv
    underflows and the asymptotic series J_j ~ sum_m (-1/2)^m (j+2m)! / (m! |a|^(j+2m+1)) is used.
    """
    out = np.empty((*a.shape, jmax + 1))
    fwd = a >= -1.0
    near_lo = -7.0 if jmax <= 5 else -1.0
    near = (a < -1.0) & (a >= near_lo)
    mid = (a < near_lo) & (a >= -30.0)
    far = a < -30.0
    if np.any(fwd):
        af = a[fwd]
        i_prev = ndtr(af)
        vals = [i_prev]
        if jmax >= 1:
            i_cur = af * i_prev + np.exp(-0.5 * af * af) / _SQRT_2PI
            vals.append(i_cur)
            for j in range(2, jmax + 1):
                i_prev, i_cur = i_cur, af * i_cur + (j - 1) * i_prev
                vals.append(i_cur)
        out[fwd] = np.log(np.stack(vals, axis=-1))
    if np.any(near):
        # forward on J = I / phi(a): the error grows like a^(2j) / j!, below 1e-9 relative for |a| <= 7, j <= 5
        an = a[near]
        log_phi = -0.5 * an * an - _LOG_SQRT_2PI
        j_prev = _SQRT_PI_2 * erfcx(-an / math.sqrt(2.0))  # Phi(a) / phi(a)
        vals = [j_prev]
        if jmax >= 1:
            j_cur = an * j_prev + 1.0
            vals.append(j_cur)
            for j in range(2, jmax + 1):
                j_prev, j_cur = j_cur, an * j_cur + (j - 1) * j_prev
                vals.append(j_cur)
        out[near] = np.log(np.maximum(np.stack(vals, axis=-1), 1e-300)) + log_phi[..., None]
    if np.any(mid):
        am = a[mid]
        log_phi = -0.5 * am * am - _LOG_SQRT_2PI
        if jmax == 0:
            out[mid] = (log_ndtr(am))[..., None]
        else:
            seeds: list[FloatArray] = []
            for j in (jmax, jmax - 1):
                d, _ = pbdv(-(j + 1.0), -am)
                seeds.append(np.exp(gammaln(j + 1.0) + 0.25 * am * am + np.log(d)))
            j_hi, j_lo = seeds
            back: dict[int, FloatArray] = {jmax: j_hi, jmax - 1: j_lo}
            for j in range(jmax, 1, -1):  # J_{j-2} = (J_j - a J_{j-1}) / (j - 1): both terms positive for a < 0
                j_hi, j_lo = j_lo, (j_hi - am * j_lo) / (j - 1)
                back[j - 2] = j_lo
            out[mid] = np.log(np.stack([back[j] for j in range(jmax + 1)], axis=-1)) + log_phi[..., None]
    if np.any(far):
        x = -a[far]
        log_phi = -0.5 * x * x - _LOG_SQRT_2PI
        cols = []
        for j in range(jmax + 1):
            s = np.zeros_like(x)
            for m in range(8):
                s += (-0.5) ** m / math.factorial(m) * math.factorial(j + 2 * m) / x ** (j + 2 * m + 1)
            cols.append(np.log(s) + log_phi)
        out[far] = np.stack(cols, axis=-1)
    return out


def _kou_weights(lam_dt: float, p: float, eta1: float, eta2: float, kmax: int) -> tuple[FloatArray, FloatArray]:
    """W+[k] = sum_n Pois(n) P[n, k], W-[k] likewise: the weight of +Gamma(k, eta1) and -Gamma(k, eta2)."""
    w_up, w_dn = np.zeros(kmax + 1), np.zeros(kmax + 1)
    pn = math.exp(-lam_dt)
    for n in range(1, kmax + 1):
        pn *= lam_dt / n
        big_p, big_q = _kou_pq(n, p, eta1, eta2)
        w_up[: n + 1] += pn * big_p
        w_dn[: n + 1] += pn * big_q
    return w_up, w_dn


def _kou_terms(x: FloatArray, dt: float, params: KouParams, grad: bool) -> tuple[FloatArray, FloatArray | None]:
    """The log mixture terms of the Kou density (n, T) and, with ``grad``, their derivatives (n, T, 6) in
    (mu, sigma, lam, p_up, eta_up, eta_down).

    ``sum_n Pois(n) [normal * (sum of n double exponentials)]``, the sums regrouped as Gamma(k) mixtures
    (Kou 2002, Prop. B.1); a normal convolved with Gamma(k, eta) has density
    ``eta^k / (k-1)! exp(-eta u + eta^2 s^2 / 2) s^(k-1) I_{k-1}(a)``, ``u = x - m``, ``a = u/s - eta s``,
    all in logs so that no term overflows or underflows before the final log-sum-exp; the down side is
    the up side of -u. d log I_j / da = j I_{j-1} / I_j (phi / Phi for j = 0).
    """
    lam_dt = params.lam_per_year * dt
    m = params.mu_annual * dt
    sqdt = math.sqrt(dt)
    s = params.sigma_annual * sqdt
    z = (x - m) / s
    kmax = max(_poisson_terms(lam_dt, tail=1e-12), 1) if lam_dt > 0.0 else 0
    terms = np.empty((x.size, 1 + 2 * kmax))
    d = np.zeros((x.size, 1 + 2 * kmax, 6)) if grad else None
    terms[:, 0] = -lam_dt - 0.5 * z * z - math.log(s) - _LOG_SQRT_2PI
    if d is not None:
        d[:, 0, 0] = z * dt / s
        d[:, 0, 1] = (z * z - 1.0) / params.sigma_annual
        d[:, 0, 2] = -dt
    if kmax == 0:
        return terms, d
    nat = (params.lam_per_year, params.p_up, params.eta_up, params.eta_down)
    w_up, w_dn = _kou_weights(lam_dt, params.p_up, params.eta_up, params.eta_down, kmax)
    dlogw = np.zeros((2, kmax + 1, 4))
    if d is not None:  # d log W / d (lam, p, eta_up, eta_down): central differences of the small weight vectors
        for i in range(4):
            step = 1e-6 * max(abs(nat[i]), 1e-3)
            hi = list(nat)
            lo = list(nat)
            hi[i] += step
            lo[i] -= step
            wu_hi, wd_hi = _kou_weights(hi[0] * dt, hi[1], hi[2], hi[3], kmax)
            wu_lo, wd_lo = _kou_weights(lo[0] * dt, lo[1], lo[2], lo[3], kmax)
            for side, (w_hi, w_lo, w) in enumerate(((wu_hi, wu_lo, w_up), (wd_hi, wd_lo, w_dn))):
                ok = w > 0.0
                dlogw[side, ok, i] = (w_hi[ok] - w_lo[ok]) / (2 * step * w[ok])
    col = 1
    for side, (sign, eta, w) in enumerate(((1.0, params.eta_up, w_up), (-1.0, params.eta_down, w_dn))):
        u = sign * (x - m)
        a = u / s - eta * s
        log_i = _log_truncated_moments(a, kmax - 1)
        base = -eta * u + 0.5 * (eta * s) ** 2
        for k in range(1, kmax + 1):
            if w[k] <= 0.0:
                continue
            lk = k * math.log(eta) - math.lgamma(k) + (k - 1) * math.log(s) + math.log(w[k])
            terms[:, col] = lk + base + log_i[..., k - 1]
            if d is not None:
                j = k - 1
                if j == 0:
                    dd = np.exp(-0.5 * a * a - _LOG_SQRT_2PI - log_i[..., 0])
                else:
                    dd = j * np.exp(log_i[..., j - 1] - log_i[..., j])
                d[:, col, 0] = -sign * dt * (-eta + dd / s)
                d[:, col, 1] = sqdt * ((k - 1) / s + eta * eta * s - dd * (u / (s * s) + eta))
                d[:, col, 2:] = dlogw[side, k]
                d[:, col, 4 + side] += k / eta - u + eta * s * s - dd * s
            col += 1
    return terms[:, :col], (d[:, :col] if d is not None else None)


def kou_logpdf(x: npt.ArrayLike, dt_years: float, params: KouParams) -> FloatArray:
    """Log density of Kou log returns over ``dt_years`` (see :func:`_kou_terms` for the series)."""
    terms, _ = _kou_terms(_f64(x), dt_years, params, grad=False)
    return _logsumexp_last(terms)


# --- maximum likelihood -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JumpFit:
    """A maximum-likelihood fit: the parameters, the log-likelihood at them, and what went in."""

    params: MertonParams | KouParams
    log_likelihood: float
    n_obs: int
    converged: bool
    message: str


def _clean_returns(returns: npt.ArrayLike, min_obs: int, model: str) -> FloatArray:
    x = _f64(returns).ravel()
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValidationError(f"{model} fit: {bad.size} non-finite returns (first at index {int(bad[0])})")
    if x.size < min_obs:
        raise InsufficientHistory(model, int(x.size), min_obs)
    return x


def _robust_start(x: FloatArray, dt: float) -> tuple[float, float, FloatArray, float]:
    """Median drift, MAD vol, the outliers (|x - med| > 4 MAD-sigma) and their rate per year."""
    med = float(np.median(x))
    s = max(1.4826 * float(np.median(np.abs(x - med))), 1e-12)
    out = x[np.abs(x - med) > 4.0 * s] - med
    lam = max(out.size, 2) / (x.size * dt)
    return med / dt, s / math.sqrt(dt), out, lam


def _minimise(
    nll: Callable[[FloatArray], Any], starts: list[FloatArray], jac: bool = False
) -> tuple[FloatArray, float, bool, str]:
    best: Any = None
    for th0 in starts:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = optimize.minimize(nll, th0, method="L-BFGS-B", jac=jac)
        if best is None or res.fun < best.fun:
            best = res
    return _f64(best.x), float(best.fun), bool(best.success), str(best.message)


def _safe(f: Callable[[FloatArray], float]) -> Callable[[FloatArray], float]:
    def g(th: FloatArray) -> float:
        try:
            v = f(th)
        except (ValidationError, FloatingPointError, OverflowError, ValueError):
            return 1e300
        return v if math.isfinite(v) else 1e300

    return g


def _merton_nll(th: FloatArray, x: FloatArray, dt: float) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood and its gradient in (mu, log sigma, log lam, jump_mean, log jump_std).

    The gradient is the responsibility-weighted sum of each Poisson component's score.
    """
    mu, sig, lam, jm, js = th[0], math.exp(th[1]), math.exp(th[2]), th[3], math.exp(th[4])
    lam_dt = lam * dt
    k = np.arange(_poisson_terms(lam_dt) + 1, dtype=np.float64)
    log_w = k * math.log(lam_dt) - lam_dt - gammaln(k + 1.0)
    mean = mu * dt + k * jm
    var = sig * sig * dt + k * js * js
    dev = x[:, None] - mean
    zd = dev / var
    ll_k = log_w - 0.5 * dev * zd - 0.5 * np.log(var) - _LOG_SQRT_2PI
    top = ll_k.max(axis=1, keepdims=True)
    e = np.exp(ll_k - top)
    tot = e.sum(axis=1, keepdims=True)
    r = e / tot  # responsibilities
    ll = float(np.sum(top[:, 0] + np.log(tot[:, 0])))
    d_var = 0.5 * (zd * zd) - 0.5 / var
    g = np.array(
        [
            float(np.sum(r * zd)) * dt,
            float(np.sum(r * d_var * (2.0 * sig * sig * dt))),
            float(np.sum(r * (k - lam_dt))),
            float(np.sum(r * zd * k)),
            float(np.sum(r * d_var * (2.0 * k * js * js))),
        ]
    )
    n = x.size
    return -ll / n, -g / n


def fit_merton(returns: npt.ArrayLike, dt_years: float, *, min_obs: int = MIN_OBS_JUMP_FIT) -> JumpFit:
    """Merton MLE over log returns sampled every ``dt_years`` (L-BFGS-B, analytic gradient, three starts).

    Raises ``InsufficientHistory`` below ``min_obs`` returns and ``ValidationError`` on non-finite ones.
    """
    x = _clean_returns(returns, min_obs, "merton")
    mu0, sig0, out, lam0 = _robust_start(x, dt_years)
    jm0 = float(np.mean(out)) if out.size else 0.0
    js0 = max(float(np.std(out)) if out.size > 1 else 0.0, 3.0 * sig0 * math.sqrt(dt_years))

    def unpack(th: FloatArray) -> MertonParams:
        return MertonParams(float(th[0]), math.exp(th[1]), math.exp(th[2]), float(th[3]), math.exp(th[4]))

    def nll(th: FloatArray) -> tuple[float, FloatArray]:
        try:
            v, g = _merton_nll(th, x, dt_years)
        except (FloatingPointError, OverflowError, ValueError):
            return 1e300, np.zeros(5)
        if not (math.isfinite(v) and np.all(np.isfinite(g))):
            return 1e300, np.zeros(5)
        return v, g

    starts = [np.array([mu0, math.log(sig0), math.log(lam0 * f), jm0, math.log(js0)]) for f in (0.5, 1.0, 2.0)]
    th, fun, ok, msg = _minimise(nll, starts, jac=True)
    return JumpFit(unpack(th), -fun * x.size, int(x.size), ok, msg)


def fit_kou(returns: npt.ArrayLike, dt_years: float, *, min_obs: int = MIN_OBS_JUMP_FIT) -> JumpFit:
    """Kou MLE over log returns sampled every ``dt_years`` (same errors as :func:`fit_merton`)."""
    x = _clean_returns(returns, min_obs, "kou")
    mu0, sig0, out, lam0 = _robust_start(x, dt_years)
    ups, dns = out[out > 0], -out[out < 0]
    p0 = min(max(ups.size / max(out.size, 1), 0.1), 0.9)
    e1 = 1.0 / max(float(np.mean(ups)) if ups.size else 0.0, 1e-3)
    e2 = 1.0 / max(float(np.mean(dns)) if dns.size else 0.0, 1e-3)

    def unpack(th: FloatArray) -> KouParams:
        p = 1.0 / (1.0 + math.exp(-th[3]))
        return KouParams(float(th[0]), math.exp(th[1]), math.exp(th[2]), p, 1.0 + math.exp(th[4]), math.exp(th[5]))

    def nll(th: FloatArray) -> tuple[float, FloatArray]:
        try:
            prm = unpack(th)
            terms, d = _kou_terms(x, dt_years, prm, grad=True)
        except (ValidationError, FloatingPointError, OverflowError, ValueError):
            return 1e300, np.zeros(6)
        assert d is not None
        lse = _logsumexp_last(terms)
        r = np.exp(terms - lse[:, None])
        g_nat = np.einsum("nt,ntp->p", r, d)
        chain = np.array(
            [1.0, prm.sigma_annual, prm.lam_per_year, prm.p_up * (1 - prm.p_up), prm.eta_up - 1.0, prm.eta_down]
        )
        v = -float(np.sum(lse)) / x.size
        g = -g_nat * chain / x.size
        if not (math.isfinite(v) and np.all(np.isfinite(g))):
            return 1e300, np.zeros(6)
        return v, g

    starts = [
        np.array(
            [mu0, math.log(sig0), math.log(lam0 * f), math.log(p0 / (1 - p0)), math.log(max(e1 - 1, 1.0)), math.log(e2)]
        )
        for f in (0.5, 1.0, 2.0)
    ]
    th, fun, ok, msg = _minimise(nll, starts, jac=True)
    return JumpFit(unpack(th), -fun * x.size, int(x.size), ok, msg)


# --- option price -------------------------------------------------------------------------------


def merton_call_price(
    spot: float,
    strike: float,
    t_years: float,
    rate: float,
    sigma_annual: float,
    lam_per_year: float,
    jump_mean: float,
    jump_std: float,
) -> float:
    """Merton (1976) European call: a Poisson-weighted sum of Black-Scholes prices.

    ``C = sum_k e^{-lam' T} (lam' T)^k / k! BS(S, K, T, r_k, sigma_k)`` with ``lam' = lam (1 + kappa)``,
    ``r_k = r - lam kappa + k ln(1 + kappa) / T``, ``sigma_k^2 = sigma^2 + k jump_std^2 / T``.
    """
    if min(spot, strike, t_years, sigma_annual) <= 0.0 or lam_per_year < 0.0:
        raise ValidationError("spot, strike, t_years and sigma must be > 0, lam >= 0")
    kappa = NormalJumps(jump_mean, jump_std).kappa()
    lam1 = lam_per_year * (1.0 + kappa) * t_years
    total = 0.0
    for k in range(_poisson_terms(lam1, tail=1e-17, cap=200) + 1):
        weight = math.exp(-lam1 + k * math.log(lam1) - math.lgamma(k + 1)) if lam1 > 0 else float(k == 0)
        sig = math.sqrt(sigma_annual**2 + k * jump_std**2 / t_years)
        r_k = rate - lam_per_year * kappa + k * math.log1p(kappa) / t_years
        sd = sig * math.sqrt(t_years)
        d1 = (math.log(spot / strike) + (r_k + 0.5 * sig * sig) * t_years) / sd
        bs = spot * float(ndtr(d1)) - strike * math.exp(-r_k * t_years) * float(ndtr(d1 - sd))
        total += weight * bs
    return total


# --- barrier crossing ---------------------------------------------------------------------------


def gbm_hit_probability(
    log_distance: npt.ArrayLike, sigma_annual: float, horizon_years: float, drift_per_year: float
) -> FloatArray:
    """P(min over [0, h] of nu t + sigma W_t <= -z): the reflection principle with drift (z >= 0)."""
    z = _f64(log_distance)
    if horizon_years <= 0.0:
        return _f64(np.where(z <= 0.0, 1.0, 0.0))
    sd = sigma_annual * math.sqrt(horizon_years)
    nt = drift_per_year * horizon_years
    with np.errstate(over="ignore", under="ignore"):
        image = np.exp(-2.0 * drift_per_year * z / sigma_annual**2 + log_ndtr((-z + nt) / sd))
    p = ndtr((-z - nt) / sd) + image
    return _f64(np.where(z <= 0.0, 1.0, np.minimum(p, 1.0)))


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
    z = _f64(-np.log1p(-np.minimum(d[1:], d_end)) if long else np.log1p(d[1:]))
    p = np.concatenate(([1.0], curves.p(z)[0 if long else 1]))
    lp = np.minimum.accumulate(np.log(np.clip(p, 1e-300, 1.0)))
    out = np.zeros((rows, 3))
    out[:, 0] = np.exp(lp)
    out[:-1, 1] = np.diff(lp)
    out[:-2, 2] = np.diff(lp, 2)
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
        kern = np.exp(-0.5 * ((k - nu * t) / sd) ** 2) * (grid_dz / (sd * _SQRT_2PI))  # (2, 2w+1)
        self.w, self.n, self.size = w, n, size
        self.spectrum = sp_fft.rfft(kern[:, ::-1], size, axis=-1)
        iw = min(n, math.ceil(2.0 * reach / grid_dz) + 1)
        i = np.arange(1, iw + 1)
        jj = np.arange(1, min(n, iw + w) + 1)[None, :]
        offs = jj - i[:, None]
        pick = kern[:, np.clip(offs + w, 0, 2 * w)] * (np.abs(offs) <= w)  # (2, iw, jw)
        self.block = pick * np.exp(-2.0 * (i[:, None] * grid_dz) * (jj * grid_dz) / (sd * sd))
        z = i * grid_dz
        slope = (2.0 * z / (sd * sd)) * np.exp(-0.5 * ((z + nu * t) / sd) ** 2) / (sd * _SQRT_2PI)
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


class _JumpOperator:
    """v -> E[v(z + Y)] on the grid, one row per direction, with v = 1 at and below the barrier and 0 beyond
    the top. The sum over nodes is a correlation with the jump weights (hat functions), done by FFT."""

    def __init__(self, rows: tuple[Jumps, Jumps], grid_dz: float, n: int, tail: float) -> None:
        z = _f64(np.arange(1, n + 1) * grid_dz)
        kd = min(n, max(math.ceil(j.down_reach(tail) / grid_dz) for j in rows) + 1)
        ku = min(n, max(math.ceil(j.mirrored().down_reach(tail) / grid_dz) for j in rows) + 1)
        self.ku, self.n = ku, n
        self.size = sp_fft.next_fast_len(n + kd + ku + 1, real=True)
        offsets = _f64(np.arange(-kd, ku + 1) * grid_dz)
        kern_rev = np.stack([_hat_weights(j, offsets, grid_dz)[::-1] for j in rows])
        self.spectrum = sp_fft.rfft(kern_rev, self.size, axis=-1)
        self.below = np.stack([_f64(j.cdf(-z)) for j in rows])
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
    big_k = max(1, _poisson_terms(lam_h, tail=tail / 4.0))
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
        return _f64(np.minimum(e_h * hit_h + (1.0 - e_h) * hit_half + smooth * (1.0 - hit_half), 1.0))


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
        return _Curves(sigma, h, lam, nus, 0.0, _f64(np.zeros(1)), None, reach, grid_dz)
    dt = h / steps
    grid_dz = sigma * math.sqrt(dt / 2.0) / _GRID_PER_SD
    reach += 12.0 * sigma * math.sqrt(dt)
    n = math.ceil(reach / grid_dz)
    if n > max_nodes:  # a coarser grid than wanted: still consistent, less accurate near the barrier
        n = max_nodes
        grid_dz = reach / n
    z = _f64(np.arange(n + 1) * grid_dz)
    zp = z[1:]
    jump_op = _JumpOperator(rows, grid_dz, n, tail)
    size = sp_fft.next_fast_len(n + 2 * math.ceil((abs(nu) * dt + 10.0 * sigma * math.sqrt(dt)) / grid_dz) + 2)
    diff_full = _Diffusion(grid_dz, n, size, sigma, dt, nus)
    diff_half = _Diffusion(grid_dz, n, size, sigma, dt / 2.0, nus)
    kmax = max(1, _poisson_terms(lam * dt, tail=tail / steps))
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
    z = _f64(np.arange(1, math.floor(curves.reach / dz) + 1) * dz)
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
            out[i] = rows[last, 0]
            continue
        k = int(x)
        f = x - k
        out[i] = rows[k, 0] * _exp_small_nb(f * (rows[k, 1] + 0.5 * (f - 1.0) * rows[k, 2]))


_crossing_serial = njit(cache=True, error_model="numpy")(_crossing_body)
_crossing_parallel = njit(cache=True, parallel=True, error_model="numpy")(_crossing_body)
_PARALLEL_MIN_ACCOUNTS = 100_000


def crossing_probability(table: CrossingTable, side: npt.ArrayLike, barrier_ratio: npt.ArrayLike) -> FloatArray:
    """P(price touches each account's bankruptcy price within the table's horizon).

    ``side``: LONG (barrier below) or SHORT (above); ``barrier_ratio`` = bankruptcy price / current price
    (0 for a long that cannot go bankrupt, inf for such a short). At or past the barrier: 1. O(1) per
    account (see :class:`CrossingTable`); numba, in parallel from 100k accounts.
    """
    from fluidmargin.risk.perp.kernels import available_cores

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
            out[i] = float(rows[last, 0])
            continue
        k = int(x)
        f = x - k
        out[i] = float(rows[k, 0]) * _exp_small(f * (float(rows[k, 1]) + 0.5 * (f - 1.0) * float(rows[k, 2])))
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
    p = rows[:, 0]
    k = int(np.searchsorted(-p, -target_prob, side="left"))  # first row with P <= target (P nonincreasing)
    if k == 0:
        return 1.0
    if k >= p.size:
        d = (p.size - 1) / inv
    else:
        # bisection on the lookup's own arithmetic within row k-1: the smallest d with lookup(d) <= target
        p_row, d1, d2 = float(p[k - 1]), float(rows[k - 1, 1]), float(rows[k - 1, 2])
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
    return _f64(np.where(need > 0.0, need, 0.0))  # r = inf (a short without bankruptcy price): -inf -> 0
