"""Maximum-likelihood fits of the jump-diffusion models (:mod:`~fluidmargin.risk.stats.jump_models`) to log
returns: :func:`fit_merton` and :func:`fit_kou` maximise the exact log-likelihood (Poisson mixture of normals;
for Kou the normal convolved with Gamma sums, via parabolic cylinder functions) with scipy's L-BFGS-B from
three robust starts. Too little history raises :class:`~fluidmargin.risk.stats.vol.InsufficientHistory`; the
caller then uses its margin floor (see :mod:`fluidmargin.risk.stats.vol`). Non-finite returns raise
``ValidationError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize
from scipy.special import gammaln

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.stats.jump_models import (
    LOG_SQRT_2PI,
    FloatArray,
    KouParams,
    MertonParams,
    as_floats,
    kou_terms,
    logsumexp_last,
    poisson_terms,
)
from fluidmargin.risk.stats.vol import InsufficientHistory

MIN_OBS_JUMP_FIT = 500  # fewer returns cannot separate jumps from diffusion


@dataclass(frozen=True, slots=True)
class JumpFit:
    """A maximum-likelihood fit: the parameters, the log-likelihood at them, and what went in."""

    params: MertonParams | KouParams
    log_likelihood: float
    n_obs: int
    converged: bool
    message: str


def _clean_returns(returns: npt.ArrayLike, min_obs: int, model: str) -> FloatArray:
    x = as_floats(returns).ravel()
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
    return as_floats(best.x), float(best.fun), bool(best.success), str(best.message)


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
    k = np.arange(poisson_terms(lam_dt) + 1, dtype=np.float64)
    log_w = k * math.log(lam_dt) - lam_dt - gammaln(k + 1.0)
    mean = mu * dt + k * jm
    var = sig * sig * dt + k * js * js
    dev = x[:, None] - mean
    zd = dev / var
    ll_k = log_w - 0.5 * dev * zd - 0.5 * np.log(var) - LOG_SQRT_2PI
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
            terms, d = kou_terms(x, dt_years, prm, grad=True)
        except (ValidationError, FloatingPointError, OverflowError, ValueError):
            return 1e300, np.zeros(6)
        assert d is not None
        lse = logsumexp_last(terms)
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
