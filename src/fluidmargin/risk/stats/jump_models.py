"""Jump-diffusion models of the log price: Merton (normal jumps) and Kou (double-exponential jumps), their
jump-size distributions, exact simulation, the exact densities of their returns, and Merton's call price.

Model (log price, time in years of 365 days)::

    X_t = X_0 + mu t + sigma W_t + sum_{i <= N_t} Y_i,   N a Poisson process of ``lam_per_year``

Merton: ``Y ~ Normal(jump_mean, jump_std)``. Kou: ``Y = +Exp(eta_up)`` with probability ``p_up``, else
``-Exp(eta_down)`` (means ``1/eta``). Returns are log returns over ``dt_years``. The fits are in
:mod:`~fluidmargin.risk.stats.jump_fit`, the barrier-crossing probability in
:mod:`~fluidmargin.risk.stats.jump_crossing`; :mod:`~fluidmargin.risk.stats.jumps` gathers all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import erfcx, gammainccinv, gammaln, log_ndtr, ndtr, ndtri, pbdv

from fluidmargin.core.errors import ValidationError

FloatArray = npt.NDArray[np.float64]
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_PI_2 = math.sqrt(0.5 * math.pi)


def as_floats(x: npt.ArrayLike) -> FloatArray:
    """``x`` as a float64 array."""
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
        return as_floats(ndtr((x - self.mean) / self.std))

    def integrated_cdf(self, x: FloatArray) -> FloatArray:
        """F1(x) = int_{-inf}^x F, minus the ramp max(x - mean, 0) (so no cancellation far right)."""
        z = (x - self.mean) / self.std
        return self.std * _psi(-np.abs(z))

    def ramp(self, x: FloatArray) -> FloatArray:
        """The ramp :meth:`integrated_cdf` leaves out: int F = integrated_cdf + ramp."""
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

    def integrated_cdf(self, x: FloatArray) -> FloatArray:
        """F1(x) = int_{-inf}^x F, minus the ramp max(x, 0)."""
        q = 1.0 - self.p_up
        neg = (q / self.eta_down) * np.exp(self.eta_down * np.minimum(x, 0.0))
        pos = q / self.eta_down - self.p_up / self.eta_up * (1.0 - np.exp(-self.eta_up * np.maximum(x, 0.0)))
        return np.where(x < 0.0, neg, pos)

    def ramp(self, x: FloatArray) -> FloatArray:
        """The ramp :meth:`integrated_cdf` leaves out: int F = integrated_cdf + ramp."""
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


def logsumexp_last(t: FloatArray) -> FloatArray:
    """log sum exp over the last axis (all -inf gives -inf)."""
    top = np.max(t, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return as_floats(np.log(np.sum(np.exp(t - top), axis=-1)) + top[..., 0])


def _psi(y: FloatArray) -> FloatArray:
    """y Phi(y) + phi(y): the integral of Phi up to y."""
    return as_floats(y * ndtr(y) + np.exp(-0.5 * y * y) / SQRT_2PI)


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
    return as_floats(diff + params.jumps.sample(counts, rng))


# --- densities ----------------------------------------------------------------------------------


def poisson_terms(mean: float, tail: float = 1e-13, cap: int = 60) -> int:
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
    x = as_floats(x)
    lam_dt = params.lam_per_year * dt_years
    k = np.arange(poisson_terms(lam_dt) + 1, dtype=np.float64)
    log_pk = k * math.log(lam_dt) - lam_dt - gammaln(k + 1.0) if lam_dt > 0 else np.where(k == 0, 0.0, -np.inf)
    mean = params.mu_annual * dt_years + k * params.jump_mean
    var = params.sigma_annual**2 * dt_years + k * params.jump_std**2
    z = x[..., None] - mean
    terms = log_pk - 0.5 * z * z / var - 0.5 * np.log(var) - LOG_SQRT_2PI
    return logsumexp_last(terms)


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
            i_cur = af * i_prev + np.exp(-0.5 * af * af) / SQRT_2PI
            vals.append(i_cur)
            for j in range(2, jmax + 1):
                i_prev, i_cur = i_cur, af * i_cur + (j - 1) * i_prev
                vals.append(i_cur)
        out[fwd] = np.log(np.stack(vals, axis=-1))
    if np.any(near):
        # forward on J = I / phi(a): the error grows like a^(2j) / j!, below 1e-9 relative for |a| <= 7, j <= 5
        an = a[near]
        log_phi = -0.5 * an * an - LOG_SQRT_2PI
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
        log_phi = -0.5 * am * am - LOG_SQRT_2PI
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
        log_phi = -0.5 * x * x - LOG_SQRT_2PI
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


def kou_terms(x: FloatArray, dt: float, params: KouParams, grad: bool) -> tuple[FloatArray, FloatArray | None]:
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
    kmax = max(poisson_terms(lam_dt, tail=1e-12), 1) if lam_dt > 0.0 else 0
    terms = np.empty((x.size, 1 + 2 * kmax))
    d = np.zeros((x.size, 1 + 2 * kmax, 6)) if grad else None
    terms[:, 0] = -lam_dt - 0.5 * z * z - math.log(s) - LOG_SQRT_2PI
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
                    dd = np.exp(-0.5 * a * a - LOG_SQRT_2PI - log_i[..., 0])
                else:
                    dd = j * np.exp(log_i[..., j - 1] - log_i[..., j])
                d[:, col, 0] = -sign * dt * (-eta + dd / s)
                d[:, col, 1] = sqdt * ((k - 1) / s + eta * eta * s - dd * (u / (s * s) + eta))
                d[:, col, 2:] = dlogw[side, k]
                d[:, col, 4 + side] += k / eta - u + eta * s * s - dd * s
            col += 1
    return terms[:, :col], (d[:, :col] if d is not None else None)


def kou_logpdf(x: npt.ArrayLike, dt_years: float, params: KouParams) -> FloatArray:
    """Log density of Kou log returns over ``dt_years`` (see :func:`kou_terms` for the series)."""
    terms, _ = kou_terms(as_floats(x), dt_years, params, grad=False)
    return logsumexp_last(terms)


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
    for k in range(poisson_terms(lam1, tail=1e-17, cap=200) + 1):
        weight = math.exp(-lam1 + k * math.log(lam1) - math.lgamma(k + 1)) if lam1 > 0 else float(k == 0)
        sig = math.sqrt(sigma_annual**2 + k * jump_std**2 / t_years)
        r_k = rate - lam_per_year * kappa + k * math.log1p(kappa) / t_years
        sd = sig * math.sqrt(t_years)
        d1 = (math.log(spot / strike) + (r_k + 0.5 * sig * sig) * t_years) / sd
        bs = spot * float(ndtr(d1)) - strike * math.exp(-r_k * t_years) * float(ndtr(d1 - sd))
        total += weight * bs
    return total
