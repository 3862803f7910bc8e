"""Per-expiry terms of the portfolio-margin model, shared by its two twins (the reference
:mod:`~fluidmargin.risk.options.portfolio` and the batch :mod:`~fluidmargin.risk.options.pm_batch`) so that they
agree term for term: time and discounting, static discounts, the vol and skew shocks' multipliers, the basis
factor, the low-confidence charge, and Black-76 with a forward shocked to 0 taken at its limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.black76 import black76_price
from fluidmargin.risk.options.pm_params import (
    DTE_MIN_S,
    K_STAR_MIN,
    SECONDS_PER_YEAR,
    VOL_SHOCK_REFERENCE_S,
    PortfolioMarginParams,
    VolShockParams,
)

FloatArray = npt.NDArray[np.float64]


def black76_premium(
    forward: npt.ArrayLike, strike: npt.ArrayLike, t_years: npt.ArrayLike, vol: npt.ArrayLike,
    discount: npt.ArrayLike, is_call: npt.ArrayLike,
) -> FloatArray:  # fmt: skip
    """Black-76 premiums, a forward shocked to 0 at its limit: calls 0, puts D K (lyra-utils' Black76 too)."""
    f = np.asarray(forward, dtype=np.float64)
    live = f > 0
    prices = black76_price(np.where(live, f, 1.0), strike, t_years, vol, discount, is_call)
    if bool(np.all(live)):
        return prices
    at_zero = np.where(is_call, 0.0, np.asarray(discount, dtype=np.float64) * np.asarray(strike, dtype=np.float64))
    return np.asarray(np.where(live, prices, at_zero), dtype=np.float64)


def confidence_charge(confidence: float, notional_quote: float, threshold: float, margin: float) -> float:
    """The IM charge of a feed whose confidence is below ``threshold``: ``(1 - confidence) * margin * notional``
    (plain arithmetic: the batch compiles it with numba)."""
    if confidence < threshold:
        return (1.0 - confidence) * margin * notional_quote
    return 0.0


def vol_shock_multipliers(sec_to_expiry_s: int, p: VolShockParams) -> tuple[float, float]:
    """The (up, down) vol multipliers of one expiry: ``1 + range_up m``, ``max(0, 1 - range_down m)``."""
    ratio = VOL_SHOCK_REFERENCE_S / max(float(sec_to_expiry_s), p.dte_floor_s, DTE_MIN_S)
    power = p.short_term_power if sec_to_expiry_s <= VOL_SHOCK_REFERENCE_S else p.long_term_power
    try:
        m = ratio**power
    except OverflowError:
        m = math.inf
    if not math.isfinite(m):
        raise ValidationError(f"vol shock (30 d / DTE)^{power} overflows at {sec_to_expiry_s} s to expiry")
    return 1.0 + p.range_up * m, max(0.0, 1.0 - p.range_down * m)


def skew_multipliers(k: FloatArray, cap: float | FloatArray, k_star: float | FloatArray) -> FloatArray:
    """``1 + min(cap, k cap / k*)`` for k >= 0, ``1 + max(-cap, k cap / k*)`` below (as Derive orders it);
    0 where k* is 0, i.e. at expiry (no skew shock: the vol no longer matters)."""
    ks = np.asarray(k_star, dtype=np.float64)
    live = ks > 0
    x = k * cap / np.where(live, ks, 1.0)
    mult = 1.0 + np.where(k >= 0, np.minimum(cap, x), np.maximum(-cap, x))
    return np.asarray(np.where(live, mult, 0.0), dtype=np.float64)


@dataclass(frozen=True)
class ExpiryTerms:
    """The per-expiry intermediates (one entry per expiry), shared with the batch so the twins agree."""

    t_years: FloatArray
    rate: FloatArray  # max(rate, 0)
    discount: FloatArray
    sd_long: FloatArray
    sd_short: FloatArray
    vol_up: FloatArray  # multipliers
    vol_down: FloatArray
    k_star: FloatArray  # 0 at expiry
    linear_cap: FloatArray
    abs_cap: FloatArray
    basis_factor: FloatArray


def expiry_terms(sec_to_expiry_s: npt.ArrayLike, rate: npt.ArrayLike, params: PortfolioMarginParams) -> ExpiryTerms:
    """Time, discounting, static discounts, vol and skew shocks and the basis factor of each expiry."""
    sec = np.asarray(sec_to_expiry_s, dtype=np.int64)
    live = sec > 0
    t = sec / SECONDS_PER_YEAR
    r = np.maximum(np.asarray(rate, dtype=np.float64), 0.0)
    disc = np.exp(-r * t)
    m = params.margin
    sd_long = np.where(live, m.long_static_discount * np.exp(-t * (r * m.long_rate_mult + m.long_rate_add)), 1.0)
    sd_short = np.minimum(1.0 / disc, m.short_static_discount / np.exp(-t * (r * m.short_rate_mult + m.short_rate_add)))
    mult = [vol_shock_multipliers(int(x), params.vol_shock) for x in sec]
    sk = params.skew_shock
    sqrt_t = np.sqrt(t)
    k_star = np.maximum(sk.min_k_star, sqrt_t * sk.width_scale * (sk.vol_param_static + sqrt_t * sk.vol_param_scale))
    return ExpiryTerms(
        t_years=t, rate=r, discount=disc, sd_long=sd_long, sd_short=sd_short,
        vol_up=np.array([u for u, _ in mult], dtype=np.float64),
        vol_down=np.array([d for _, d in mult], dtype=np.float64),
        k_star=np.where(live, np.maximum(k_star, K_STAR_MIN), 0.0),
        linear_cap=np.where(live, sk.linear_c_base * sqrt_t + sk.linear_base_cap, 0.0),
        abs_cap=np.where(live, sk.abs_c_base * sqrt_t + sk.abs_base_cap, 0.0),
        basis_factor=params.basis.add_factor + params.basis.mult_factor * t,
    )  # fmt: skip
