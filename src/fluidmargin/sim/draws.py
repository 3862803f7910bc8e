"""Machine-independent draws and elementary functions for the scenario generators.

The same seed must give the same path, bit for bit, on any machine. numpy's own ``exp``/``log`` dispatch
to CPU-specific SIMD code (AVX512F and AVX2 builds can differ in the last bit), ``Generator.normal`` and
``Generator.poisson`` call the platform's libm inside their rejection tests, and a matrix product goes
through a multithreaded BLAS. None of those is used on a path. What is used:

* the bit generator's integers (:func:`uniforms`: 52 random bits per draw, PCG64 through
  :func:`fluidmargin.core.rng.make_rng`), which are integer arithmetic;
* IEEE-754 basic operations only (``+ - * /``, ``sqrt``, ``rint``, ``frexp``/``ldexp``, comparisons),
  each correctly rounded, applied element by element by numpy ufuncs (no fused multiply-add: every
  operation is its own ufunc call) or by Python floats;
* sequential accumulations (``cumsum``/``cumprod`` along an axis, ``math.fsum``), never a pairwise or
  threaded reduction.

:func:`exp` and :func:`log` are Cody-Waite range reductions with fixed polynomials (within 1 ulp of
the true values), :func:`normal` is Wichura's AS241 inverse normal CDF (relative error about 1e-16)
applied to the uniforms, and :func:`poisson` inverts the Poisson CDF built with :func:`exp`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

UNIFORM_BITS = 52
_SCALE = 2.0**-UNIFORM_BITS
MAX_POISSON_MEAN = 20.0  # per draw: a larger jump count per step is a diffusion, not jumps
_POISSON_TAIL = 1e-17

# fdlibm's split of ln 2: LN2_HI has its low 32 bits zero, so k * LN2_HI is exact for |k| < 2^20
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
EXP_MAX = 709.0  # exp(709.78) overflows
EXP_MIN = -745.0
_EXP_TERMS = 14  # Taylor terms for |r| <= ln2 / 2: the first omitted is below 4e-18
# fdlibm's log polynomial: log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f), |s| <= 0.1716
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_CHUNK = 1 << 15  # elements per pass: the temporaries of a pass stay in cache


def uniforms(rng: np.random.Generator, shape: int | tuple[int, ...]) -> FloatArray:
    """Uniforms strictly inside (0, 1): ``(k + 1/2) / 2^52`` for 52 random bits ``k`` (exact, symmetric
    about 1/2, so ``1 - u`` is another such uniform)."""
    k = rng.integers(0, 1 << UNIFORM_BITS, size=shape, dtype=np.int64)
    return (k.astype(np.float64) + 0.5) * _SCALE


def exp(x: npt.ArrayLike) -> FloatArray:
    """e**x from basic operations only: ``x = k ln2 + r``, a Taylor polynomial in ``r``, scaled by 2**k.

    Inputs beyond [-745, 709] are clamped (0 and about 8e307); NaN stays NaN. Within 1 ulp of the true
    value outside the subnormal range.
    """
    a = np.clip(np.asarray(x, dtype=np.float64), EXP_MIN, EXP_MAX)
    out = np.empty_like(a)
    flat_a, flat_out = a.reshape(-1), out.reshape(-1)
    for i in range(0, flat_a.size, _CHUNK):  # elementwise: the chunking only keeps the work in cache
        _exp_chunk(flat_a[i : i + _CHUNK], flat_out[i : i + _CHUNK])
    return out


_EXP_COEFFS = tuple(1.0 / math.factorial(n) for n in range(_EXP_TERMS))


def _exp_chunk(a: FloatArray, out: FloatArray) -> None:
    k = np.rint(a * INV_LN2)
    r = a - k * LN2_HI
    r -= k * LN2_LO
    p = np.full_like(r, _EXP_COEFFS[-1])
    for c in _EXP_COEFFS[-2::-1]:
        p *= r
        p += c
    np.ldexp(p, np.nan_to_num(k).astype(np.int32), out=out)


def log(x: npt.ArrayLike) -> FloatArray:
    """Natural log of positive finite ``x`` from basic operations (fdlibm's ``__ieee754_log``):
    ``x = m 2**e`` with m in [sqrt(1/2), sqrt(2)), ``log m`` from ``s = (m - 1) / (m + 1)`` and a fixed
    polynomial in ``s**2``. Within 1 ulp. Refuses x <= 0 or non-finite."""
    a = np.asarray(x, dtype=np.float64)
    bad = ~(np.isfinite(a) & (a > 0.0))
    if np.any(bad):
        raise ValidationError(f"log of a value that is not positive and finite: {a[bad].ravel()[0]!r}")
    m, e = np.frexp(a)
    low = m < math.sqrt(0.5)
    m = np.where(low, m * 2.0, m)
    k = e.astype(np.float64) - low
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = np.full_like(z, _LG[-1])
    for c in _LG[-2::-1]:
        r *= z
        r += c
    r *= z
    hfsq = 0.5 * f * f
    return k * LN2_HI - ((hfsq - (s * (hfsq + r) + k * LN2_LO)) - f)


# Wichura (1988), algorithm AS241 PPND16: coefficients in ascending powers
_A = (
    3.3871328727963666080e0,
    1.3314166789178437745e2,
    1.9715909503065514427e3,
    1.3731693765509461125e4,
    4.5921953931549871457e4,
    6.7265770927008700853e4,
    3.3430575583588128105e4,
    2.5090809287301226727e3,
)
_B = (
    1.0,
    4.2313330701600911252e1,
    6.8718700749205790830e2,
    5.3941960214247511077e3,
    2.1213794301586595867e4,
    3.9307895800092710610e4,
    2.8729085735721942674e4,
    5.2264952788528545610e3,
)
_C = (
    1.42343711074968357734e0,
    4.63033784615654529590e0,
    5.76949722146069140550e0,
    3.64784832476320460504e0,
    1.27045825245236838258e0,
    2.41780725177450611770e-1,
    2.27238449892691845833e-2,
    7.74545014278341407640e-4,
)
_D = (
    1.0,
    2.05319162663775882187e0,
    1.67638483018380384940e0,
    6.89767334985100004550e-1,
    1.48103976427480074590e-1,
    1.51986665636164571966e-2,
    5.47593808499534494600e-4,
    1.05075007164441684324e-9,
)
_E = (
    6.65790464350110377720e0,
    5.46378491116411436990e0,
    1.78482653991729133580e0,
    2.96560571828504891230e-1,
    2.65321895265761230930e-2,
    1.24266094738807843860e-3,
    2.71155556874348757815e-5,
    2.01033439929228813265e-7,
)
_F = (
    1.0,
    5.99832206555887937690e-1,
    1.36929880922735805310e-1,
    1.48753612908506148525e-2,
    7.86869131145613259100e-4,
    1.84631831751005468180e-5,
    1.42151175831644588870e-7,
    2.04426310338993978564e-15,
)


def _poly(c: tuple[float, ...], x: FloatArray) -> FloatArray:
    p = np.full_like(x, c[-1])
    for v in c[-2::-1]:
        p *= x
        p += v
    return p


def inverse_normal(u: npt.ArrayLike) -> FloatArray:
    """The standard normal quantile of ``u`` in (0, 1) (AS241; basic operations and :func:`log`)."""
    p = np.asarray(u, dtype=np.float64)
    if np.any(~((p > 0.0) & (p < 1.0))):
        raise ValidationError("inverse_normal needs probabilities strictly between 0 and 1")
    out = np.empty_like(p)
    flat_p, flat_out = p.reshape(-1), out.reshape(-1)
    for i in range(0, flat_p.size, _CHUNK):  # elementwise: the chunking only keeps the work in cache
        _inverse_normal_chunk(flat_p[i : i + _CHUNK], flat_out[i : i + _CHUNK])
    return out


def _inverse_normal_chunk(p: FloatArray, out: FloatArray) -> None:
    q = p - 0.5
    r = q * q
    np.subtract(0.180625, r, out=r)
    num = _poly(_A, r)
    num *= q
    np.divide(num, _poly(_B, r), out=out)
    tail = np.flatnonzero(np.abs(q) > 0.425)
    if tail.size:
        pt = p[tail]
        rt = np.sqrt(-log(np.minimum(pt, 1.0 - pt)))
        near = rt <= 5.0
        x = np.empty_like(rt)
        rn = rt[near] - 1.6
        x[near] = _poly(_C, rn) / _poly(_D, rn)
        rf = rt[~near] - 5.0
        x[~near] = _poly(_E, rf) / _poly(_F, rf)
        out[tail] = np.where(q[tail] < 0.0, -x, x)


def normal(rng: np.random.Generator, shape: int | tuple[int, ...]) -> FloatArray:
    """Standard normal draws: :func:`inverse_normal` of :func:`uniforms` (|z| < 8.2)."""
    return inverse_normal(uniforms(rng, shape))


def poisson_cdf(mean: float) -> FloatArray:
    """P(N <= k) for k = 0, 1, ... until the tail is below 1e-17 (N ~ Poisson(mean)), with :func:`exp`."""
    if not (math.isfinite(mean) and 0.0 <= mean <= MAX_POISSON_MEAN):
        raise ValidationError(
            f"a Poisson mean per draw must be in [0, {MAX_POISSON_MEAN}], got {mean} (use a shorter step)"
        )
    pk = float(exp(-mean))
    cdf = [pk]
    k = 0
    # past k = 2 mean + 1 the terms at least halve each step, so the tail is below the last term
    while k < 2.0 * mean + 1.0 or pk >= _POISSON_TAIL:
        k += 1
        pk = pk * mean / k
        cdf.append(cdf[-1] + pk)
    return np.array(cdf, dtype=np.float64)


def poisson(u: FloatArray, means: FloatArray, which: IntArray) -> IntArray:
    """Poisson counts by inverting the CDF: ``u`` uniforms, ``which`` the index into ``means`` of each
    draw's mean (same shape as ``u``)."""
    out = np.zeros(u.shape, dtype=np.int64)
    for i, mean in enumerate(means.tolist()):
        if mean == 0.0:
            continue
        sel = which == i
        out[sel] = np.searchsorted(poisson_cdf(mean), u[sel], side="right")
    return out
