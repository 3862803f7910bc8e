"""Black-76 option prices and Greeks, vectorised (numpy reference) with a numba hot-path twin.

Conventions (per unit of underlying, in the currency of ``forward`` and ``strike``):

- ``discount`` is the factor exp(-r * T), not a rate; ``t_years`` is ACT/365-style calendar years.
- ``delta`` = dV/dF and ``gamma`` = d2V/dF2 (forward Greeks; use :func:`spot_delta` for dV/dS).
- ``vega`` = dV/dvol per 1.00 of vol (divide by 100 for "per vol point").
- ``theta`` = dV/dt per year of calendar time passing (T shrinking, F and r held fixed); it
  includes the discount drift r*V with r = -ln(discount)/T. Divide by 365 for "per day".
- Degenerate cases (total vol vol*sqrt(t_years) < MIN_TOTAL_VOL = 1e-12, including t_years == 0
  or vol == 0): the discounted intrinsic value, delta the step D*1[F>K] (calls; -D*1[F<K] puts;
  half the step at F == K, the limit as vol -> 0), gamma and vega 0, theta r*V (0 when
  t_years == 0). No NaN, inf or warnings. Below 1e-12 total vol the exact premium differs from
  intrinsic by at most D*F*N'(0)*1e-12 < 4e-13 F.

Inputs must be finite with forward, strike, discount > 0 and t_years, vol >= 0; anything else
raises :class:`ValidationError` (use :func:`option_inputs_reason` to screen without raising).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from numba import njit
from scipy.special import ndtr as _scipy_ndtr

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import NS_PER_S

__all__ = [
    "Greeks",
    "black76_greeks",
    "black76_price",
    "black76_price_delta_gamma",
    "black76_price_delta_gamma_nb",
    "discount_factor",
    "forward_from_spot",
    "option_inputs_reason",
    "spot_delta",
    "year_fraction",
]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]

_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_INV_SQRT2 = 0.7071067811865476  # 1 / sqrt(2)
YEAR_NS = 365 * 86_400 * NS_PER_S  # ACT/365 calendar year
MIN_TOTAL_VOL = 1e-12  # vol * sqrt(T) below this prices as intrinsic (error < 4e-13 of F)


class Greeks(NamedTuple):
    """Black-76 price and Greeks, arrays broadcast from the inputs (units in the module docstring)."""

    price: FloatArray
    delta: FloatArray  # dV/dF
    gamma: FloatArray  # d2V/dF2
    vega: FloatArray  # dV/dvol, per 1.00 vol
    theta: FloatArray  # dV/dt, per calendar year, time passing


def _ndtr(x: FloatArray) -> FloatArray:
    """Standard normal CDF, accurate in both tails (scipy's erfc-based ndtr)."""
    return np.asarray(_scipy_ndtr(x), dtype=np.float64)


def _npdf(x: FloatArray) -> FloatArray:
    with np.errstate(over="ignore"):  # |x| > 1e154: x*x -> inf, the density -> 0 exactly
        return np.asarray(_INV_SQRT_2PI * np.exp(-0.5 * x * x), dtype=np.float64)


def option_inputs_reason(
    forward: float, strike: float, t_years: float, vol: float, discount: float = 1.0
) -> str | None:
    """Why one option's pricing inputs are unusable (a short reason code), or None if they are fine."""
    values = (("forward", forward), ("strike", strike), ("t_years", t_years), ("vol", vol), ("discount", discount))
    for name, v in values:
        if not math.isfinite(v):
            return f"{name}_not_finite"
    if forward <= 0.0:
        return "forward_not_positive"
    if strike <= 0.0:
        return "strike_not_positive"
    if t_years < 0.0:
        return "expired"
    if vol < 0.0:
        return "vol_negative"
    if discount <= 0.0:
        return "discount_not_positive"
    return None


def _prepare(
    forward: ArrayLike, strike: ArrayLike, t_years: ArrayLike, vol: ArrayLike, discount: ArrayLike, is_call: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    f, k, t, v, d, c = np.broadcast_arrays(
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(t_years, dtype=np.float64),
        np.asarray(vol, dtype=np.float64),
        np.asarray(discount, dtype=np.float64),
        np.asarray(is_call, dtype=np.bool_),
    )
    for name, a in (("forward", f), ("strike", k), ("t_years", t), ("vol", v), ("discount", d)):
        if not np.all(np.isfinite(a)):
            raise ValidationError(f"{name}_not_finite: Black-76 inputs must be finite")
    if np.any(f <= 0.0) or np.any(k <= 0.0) or np.any(d <= 0.0):
        raise ValidationError("not_positive: forward, strike and discount must be > 0")
    if np.any(t < 0.0) or np.any(v < 0.0):
        raise ValidationError("negative: t_years and vol must be >= 0")
    return f, k, t, v, d, c


def _core(
    f: FloatArray, k: FloatArray, t: FloatArray, v: FloatArray, d: FloatArray, c: npt.NDArray[np.bool_]
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Price, delta, d1, sigma*sqrt(T) (1 where degenerate), N'(d1), and the degenerate mask."""
    s = v * np.sqrt(t)
    degen = s < MIN_TOTAL_VOL
    s_safe = np.where(degen, 1.0, s)
    sign = np.where(c, 1.0, -1.0)
    d1 = np.log(f / k) / s_safe + 0.5 * s_safe  # |d1| < 1e16: s_safe >= 1e-12
    d2 = d1 - s_safe
    n1 = _ndtr(sign * d1)
    n2 = _ndtr(sign * d2)
    # Calls D(F N(d1) - K N(d2)); puts D(K N(-d2) - F N(-d1)): each computed directly, no parity.
    price = sign * d * (f * n1 - k * n2)
    delta = sign * d * n1
    step = np.where(f > k, 1.0, np.where(f < k, 0.0, 0.5))
    step = np.where(c, step, step - 1.0)
    price = np.where(degen, d * np.maximum(sign * (f - k), 0.0), price)
    delta = np.where(degen, d * step, delta)
    return price, delta, d1, s_safe, _npdf(d1), degen


def black76_price(
    forward: ArrayLike, strike: ArrayLike, t_years: ArrayLike, vol: ArrayLike, discount: ArrayLike, is_call: ArrayLike
) -> FloatArray:
    """Black-76 premium per unit of underlying: D * (F N(d1) - K N(d2)) for calls, parity-free puts."""
    return np.asarray(_core(*_prepare(forward, strike, t_years, vol, discount, is_call))[0], dtype=np.float64)


def black76_greeks(
    forward: ArrayLike, strike: ArrayLike, t_years: ArrayLike, vol: ArrayLike, discount: ArrayLike, is_call: ArrayLike
) -> Greeks:
    """Black-76 price, delta, gamma, vega (per 1.00 vol) and theta (per year, time passing)."""
    f, k, t, v, d, c = _prepare(forward, strike, t_years, vol, discount, is_call)
    price, delta, _d1, s, pdf1, degen = _core(f, k, t, v, d, c)
    t_safe = np.where(t > 0.0, t, 1.0)
    gamma = np.where(degen, 0.0, d * pdf1 / (f * s))
    vega = np.where(degen, 0.0, d * f * pdf1 * np.sqrt(t))
    rate = np.where(t > 0.0, -np.log(d) / t_safe, 0.0)
    # theta = -dV/dT = r V - D F N'(d1) vol / (2 sqrt T), and vol / (2 sqrt T) = s / (2 T).
    t_live = np.where(degen, 1.0, t)  # T >= (1e-12 / vol)**2 > 0 where not degenerate
    theta = rate * price - np.where(degen, 0.0, d * f * pdf1 * s / (2.0 * t_live))
    return Greeks(*(np.asarray(a, dtype=np.float64) for a in (price, delta, gamma, vega, theta)))


def year_fraction(from_ns: int, to_ns: int) -> float:
    """ACT/365 calendar years from ``from_ns`` to ``to_ns`` (negative if ``to_ns`` is earlier)."""
    return (to_ns - from_ns) / YEAR_NS  # int / int: one correctly rounded division


def discount_factor(rate: ArrayLike, t_years: ArrayLike) -> FloatArray:
    """Discount factor exp(-rate * t_years) for a continuously compounded annual rate."""
    return np.asarray(np.exp(-np.asarray(rate, dtype=np.float64) * np.asarray(t_years, dtype=np.float64)))


def forward_from_spot(spot: ArrayLike, rate: ArrayLike, t_years: ArrayLike, carry_yield: ArrayLike = 0.0) -> FloatArray:
    """Forward S * exp((rate - carry_yield) * T); carry_yield is a dividend/staking/borrow yield."""
    s = np.asarray(spot, dtype=np.float64)
    r = np.asarray(rate, dtype=np.float64)
    q = np.asarray(carry_yield, dtype=np.float64)
    return np.asarray(s * np.exp((r - q) * np.asarray(t_years, dtype=np.float64)))


def spot_delta(forward_delta: ArrayLike, forward: ArrayLike, spot: ArrayLike) -> FloatArray:
    """dV/dS from dV/dF when F = S * exp((r - q) T): dF/dS = F / S (gamma scales by (F/S)**2)."""
    f = np.asarray(forward, dtype=np.float64)
    return np.asarray(np.asarray(forward_delta, dtype=np.float64) * f / np.asarray(spot, dtype=np.float64))


# --- numba hot path ------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def _ndtr_nb(x: float) -> float:
    return 0.5 * math.erfc(-x * _INV_SQRT2)


# the kernel's output columns
OUT_PRICE, OUT_DELTA, OUT_GAMMA = 0, 1, 2


@njit(cache=True, error_model="numpy")
def black76_price_delta_gamma_nb(
    forward: Any, strike: Any, t_years: Any, vol: Any, discount: Any, is_call: Any, out: Any
) -> None:
    """Kernel: fill ``out[i] = (price, delta, gamma)`` for 1-D, equal-length, pre-validated inputs.

    Same formulas and degenerate-case rules as :func:`black76_greeks` (its reference twin).
    """
    for i in range(forward.shape[0]):
        f = forward[i]
        k = strike[i]
        d = discount[i]
        sign = 1.0 if is_call[i] else -1.0
        s = vol[i] * math.sqrt(t_years[i])
        if s < MIN_TOTAL_VOL:
            step = 1.0 if f > k else (0.0 if f < k else 0.5)
            if not is_call[i]:
                step -= 1.0
            out[i, OUT_PRICE] = d * max(sign * (f - k), 0.0)
            out[i, OUT_DELTA] = d * step
            out[i, OUT_GAMMA] = 0.0
            continue
        d1 = math.log(f / k) / s + 0.5 * s
        d2 = d1 - s
        n1 = _ndtr_nb(sign * d1)
        n2 = _ndtr_nb(sign * d2)
        out[i, OUT_PRICE] = sign * d * (f * n1 - k * n2)
        out[i, OUT_DELTA] = sign * d * n1
        out[i, OUT_GAMMA] = d * (_INV_SQRT_2PI * math.exp(-0.5 * d1 * d1)) / (f * s)


def black76_price_delta_gamma(
    forward: ArrayLike, strike: ArrayLike, t_years: ArrayLike, vol: ArrayLike, discount: ArrayLike, is_call: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Price, delta and gamma by the numba kernel (validated, broadcast); the hot-path entry point."""
    f, k, t, v, d, c = _prepare(forward, strike, t_years, vol, discount, is_call)
    shape = f.shape
    out = np.empty((f.size, 3), dtype=np.float64)
    black76_price_delta_gamma_nb(
        np.ascontiguousarray(f).ravel(),
        np.ascontiguousarray(k).ravel(),
        np.ascontiguousarray(t).ravel(),
        np.ascontiguousarray(v).ravel(),
        np.ascontiguousarray(d).ravel(),
        np.ascontiguousarray(c).ravel(),
        out,
    )
    return out[:, OUT_PRICE].reshape(shape), out[:, OUT_DELTA].reshape(shape), out[:, OUT_GAMMA].reshape(shape)
