"""Per-series tables of the batch portfolio margin (numpy: a few hundred series, computed once per market):
every series priced once per column (:func:`price_columns`: today, the two basis shocks, each scenario), and
for the delta-gamma screen the per-position bounds on curvature (:func:`curvature_tables`) and on time decay
(:func:`time_tables`) that :mod:`~fluidmargin.risk.options.pm_screen`'s guarantee rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fluidmargin.risk.options.black76 import MIN_TOTAL_VOL
from fluidmargin.risk.options.pm_book import PmMarket
from fluidmargin.risk.options.pm_params import (
    DTE_MIN_S,
    K_STAR_MIN,
    SECONDS_PER_YEAR,
    VOL_SHOCK_REFERENCE_S,
    PortfolioMarginParams,
    VolShock,
)
from fluidmargin.risk.options.pm_terms import black76_premium, expiry_terms, skew_multipliers

FloatArray = npt.NDArray[np.float64]

COLS_FIXED = 3  # price columns before the scenarios: today, basis up, basis down
_N0 = 1.0 / math.sqrt(2.0 * math.pi)  # the normal density's peak


@dataclass(frozen=True, eq=False)
class Columns:
    """Per expiry and per (series, column) inputs of one market; columns = today, basis up/down, scenarios."""

    t_years: FloatArray  # per expiry
    rate: FloatArray  # max(rate, 0)
    discount: FloatArray
    sd_long: FloatArray
    sd_short: FloatArray
    basis_factor: FloatArray
    confidence: FloatArray  # min(forward, rate) confidence
    shocks: FloatArray  # per column
    vols: FloatArray  # (series, column)
    prices: FloatArray  # (series, column)
    k_star: FloatArray  # per expiry
    caps: tuple[FloatArray, FloatArray]  # linear, abs per expiry


# the price columns of a series (price_columns): the mark, the two basis shocks, then one per scenario
COL_MARK, COL_BASIS_UP, COL_BASIS_DOWN, COL_SCENARIOS = 0, 1, 2, 3


def price_columns(market: PmMarket, params: PortfolioMarginParams) -> Columns:
    """The reference's per-expiry intermediates, then every series priced once per column."""
    s = market.series
    e = s.expiry_index
    terms = expiry_terms(market.sec_to_expiry_s, market.rate, params)  # the reference's, term for term
    t, disc = terms.t_years, terms.discount
    assert market.forward_confidence is not None and market.rate_confidence is not None
    confidence = np.minimum(market.forward_confidence, market.rate_confidence)
    up, down = terms.vol_up, terms.vol_down
    k_star, linear_cap, abs_cap = terms.k_star, terms.linear_cap, terms.abs_cap
    vol = market.vol
    log_m = np.log(s.strike / market.forward[e])
    by_shock = {
        VolShock.UP: np.maximum(params.vol_shock.min_vol_up, vol * up[e]),
        VolShock.NONE: vol,
        VolShock.DOWN: vol * down[e],
        VolShock.SKEW_LINEAR: vol * np.maximum(skew_multipliers(log_m, linear_cap[e], k_star[e]), 0.0),
        VolShock.SKEW_ABS: vol * np.maximum(skew_multipliers(np.abs(log_m), abs_cap[e], k_star[e]), 0.0),
    }
    shocks = np.array(
        [1.0, params.basis.spot_up, params.basis.spot_down] + [sc.spot_shock for sc in params.scenarios],
        dtype=np.float64,
    )
    vols = np.stack([vol, vol, vol] + [by_shock[sc.vol_shock] for sc in params.scenarios], axis=1)
    moving = (market.forward - market.fixed)[e]
    fwd = moving[:, None] * shocks[None, :] + market.fixed[e][:, None]
    prices = black76_premium(fwd, s.strike[:, None], t[e][:, None], vols, disc[e][:, None], s.is_call[:, None])
    return Columns(
        t_years=t, rate=terms.rate, discount=disc, sd_long=terms.sd_long, sd_short=terms.sd_short,
        basis_factor=terms.basis_factor,
        confidence=confidence, shocks=shocks, vols=np.ascontiguousarray(vols), prices=np.ascontiguousarray(prices),
        k_star=k_star, caps=(linear_cap, abs_cap),
    )  # fmt: skip


def _mul(a: FloatArray | float, b: FloatArray | float) -> FloatArray:
    """a * b with 0 * inf = 0 (a position or factor of zero contributes nothing, however steep)."""
    a_, b_ = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    out = np.zeros(a_.shape)
    nz = (a_ != 0) & (b_ != 0)
    out[nz] = a_[nz] * b_[nz]
    return out


def _npdf(x: FloatArray) -> FloatArray:
    return np.asarray(_N0 * np.exp(-0.5 * np.minimum(x * x, 1e300)), dtype=np.float64)


def curvature_tables(
    market: PmMarket, params: PortfolioMarginParams, cols: Columns, b: float
) -> tuple[FloatArray, FloatArray]:
    """Per (series, column): bounds ``up`` >= sup d2P/dx2 and ``dn`` >= sup -d2P/dx2 over x in [-b, b]
    (x = dS / S0), convex (``up``) and concave (``dn``) kinks folded in as 2 J / b. May hold inf."""
    s = market.series
    e = s.expiry_index
    n_cols = cols.shocks.shape[0]
    t = cols.t_years[e][:, None]
    sqrt_t = np.sqrt(t)
    d = cols.discount[e][:, None]
    fixed = market.fixed[e][:, None]
    moving = (market.forward - market.fixed)[e][:, None]
    k = s.strike[:, None]
    slope = moving * cols.shocks[None, :]  # dF / dx
    f_lo = fixed + slope * (1.0 - b)
    f_hi = fixed + slope * (1.0 + b)
    kink_in = (f_lo <= k) & (k <= f_hi)
    up = np.zeros((s.n_series, n_cols))
    dn = np.zeros((s.n_series, n_cols))

    # vols fixed in x: gamma only, n(d1) at its largest over the band
    sig = cols.vols
    tot = sig * sqrt_t
    degen = tot < MIN_TOTAL_VOL
    tot_safe = np.where(degen, 1.0, tot)
    d1_lo = np.log(f_lo / k) / tot_safe + 0.5 * tot_safe
    d1_hi = np.log(f_hi / k) / tot_safe + 0.5 * tot_safe
    n_hat = np.where((d1_lo <= 0) & (d1_hi >= 0), _N0, _npdf(np.minimum(np.abs(d1_lo), np.abs(d1_hi))))
    gamma_x = d * n_hat / (f_lo * tot_safe) * slope * slope
    # an intrinsic payoff (no vol left) has a convex kink of slope jump D dF/dx where F crosses K
    kink = np.where(kink_in, 2.0 * d * slope / b, 0.0)
    up[:] = np.where(degen, kink, gamma_x)

    # skew columns: the vol moves with log-moneyness ln(K / F(x)), through a piecewise-linear multiplier
    sk_cols = [(c + COLS_FIXED, sc.vol_shock) for c, sc in enumerate(params.scenarios) if sc.vol_shock.is_skew]
    vol0 = market.vol
    for c, shape in sk_cols:
        cap = (cols.caps[0] if shape is VolShock.SKEW_LINEAR else cols.caps[1])[e]
        ks = cols.k_star[e]
        sq = sqrt_t[:, 0]
        fl, fh, kk, dd_, mv = f_lo[:, c], f_hi[:, c], s.strike, d[:, 0], moving[:, 0]
        sig_lo = vol0 * (1.0 - cap if shape is VolShock.SKEW_LINEAR else 1.0)
        sig_hi = vol0 * (1.0 + cap)
        flat = vol0 * (1.0 + np.abs(cap)) * sq < MIN_TOTAL_VOL  # intrinsic throughout the band
        ok = (cap >= 0) & (cap <= 1) & (sig_lo * sq >= MIN_TOTAL_VOL)
        with np.errstate(divide="ignore", invalid="ignore"):
            s_lo = np.where(ok, sig_lo * sq, 1.0)
            s_hi = sig_hi * sq
            du = mv / fl  # |d ln F / dx| <= moving / F_lo
            ds1 = vol0 * (cap / ks) * du  # |d sigma / dx|
            ds2 = vol0 * (cap / ks) * du * du  # |d2 sigma / dx2| (smooth part)
            gam = dd_ * _N0 / (fl * s_lo)
            vega = dd_ * fh * _N0 * sq
            lnm = np.maximum(np.abs(np.log(fl / kk)), np.abs(np.log(fh / kk)))
            dd = (lnm + 0.5 * s_hi * s_hi) / s_lo  # bounds |d1| and |d2|
            sig_lo_safe = np.where(ok, sig_lo, 1.0)
            vanna = dd_ * _N0 * dd / sig_lo_safe
            volga = vega * dd * dd / sig_lo_safe
            smooth = 2.0 * vanna * mv * ds1 + volga * ds1 * ds1 + vega * ds2
            jump = vega * ds1
            if shape is VolShock.SKEW_LINEAR:  # convex kink at F = K e^k*, concave at F = K e^-k*
                convex = np.where((fl <= kk * np.exp(ks)) & (kk * np.exp(ks) <= fh), jump, 0.0)
                concave = np.where((fl <= kk * np.exp(-ks)) & (kk * np.exp(-ks) <= fh), jump, 0.0)
            else:  # |ln(K/F)|: convex at the money (twice the slope), concave at F = K e^+-k*
                convex = np.where((fl <= kk) & (kk <= fh), 2.0 * jump, 0.0)
                concave = np.where((fl <= kk * np.exp(ks)) & (kk * np.exp(ks) <= fh), jump, 0.0)
                concave = concave + np.where((fl <= kk * np.exp(-ks)) & (kk * np.exp(-ks) <= fh), jump, 0.0)
            up_c = np.where(ok, gam * mv * mv + smooth + 2.0 * convex / b, np.inf)
            dn_c = np.where(ok, smooth + 2.0 * concave / b, np.inf)
        intrinsic_kink = np.where((fl <= kk) & (kk <= fh), 2.0 * dd_ * mv / b, 0.0)
        up[:, c] = np.where(flat, intrinsic_kink, up_c)
        dn[:, c] = np.where(flat, 0.0, dn_c)
    return up, dn


def time_tables(
    market: PmMarket, params: PortfolioMarginParams, cols: Columns, b: float, tau_s: int
) -> tuple[FloatArray, FloatArray]:
    """Per (series, column) ``TB`` (see the module docstring's step 3; per year of time passing) and the
    per-expiry ``sd_max`` bounding both static discounts over the window. May hold inf."""
    s = market.series
    e = s.expiry_index
    n_cols = cols.shocks.shape[0]
    vs, sk, mp = params.vol_shock, params.skew_shock, params.margin
    sec0 = market.sec_to_expiry_s.astype(np.float64)
    sec_min = sec0 - tau_s
    t0 = cols.t_years
    t_min = sec_min / SECONDS_PER_YEAR
    r = cols.rate
    expired = sec0 == 0
    lapses = (~expired) & (sec_min <= 0)  # an expiry inside the window: no bound
    t_min_safe = np.where(t_min > 0, t_min, 1.0)

    # term-structure multiplier m(T) = (30 d / max(T, floor))^p and |dm/dT| (per year) over the window
    dte_floor = max(vs.dte_floor_s, DTE_MIN_S)
    ratio_max = VOL_SHOCK_REFERENCE_S / np.maximum(np.maximum(sec_min, 0.0), dte_floor)
    ratio_min = VOL_SHOCK_REFERENCE_S / np.maximum(sec0, dte_floor)
    m_max = np.zeros_like(sec0)
    for p in (vs.short_term_power, vs.long_term_power):
        m_max = np.maximum(m_max, np.maximum(ratio_max**p, ratio_min**p))
    power_max = max(abs(vs.short_term_power), abs(vs.long_term_power))
    floor_y = dte_floor / SECONDS_PER_YEAR
    dm = np.where(sec0 <= dte_floor, 0.0, power_max * m_max / np.maximum(t_min_safe, floor_y))

    # skew: |d mult / dT| <= |cap'| + |cap| |k*'| / k*, over the window
    sq0, sqm = np.sqrt(t0), np.sqrt(t_min_safe)
    g0 = sk.width_scale * (sk.vol_param_static * sq0 + sk.vol_param_scale * t0)
    gm = sk.width_scale * (sk.vol_param_static * sqm + sk.vol_param_scale * t_min_safe)
    k_star_min = np.maximum(max(sk.min_k_star, K_STAR_MIN), np.minimum(g0, gm))
    dk_star = sk.width_scale * (sk.vol_param_static / (2.0 * sqm) + abs(sk.vol_param_scale))
    skew_dmult = {}
    skew_cap = {}
    for shape, c_base, base in (
        (VolShock.SKEW_LINEAR, sk.linear_c_base, sk.linear_base_cap),
        (VolShock.SKEW_ABS, sk.abs_c_base, sk.abs_base_cap),
    ):
        cap0, capm = c_base * sq0 + base, c_base * sqm + base
        cap_abs = np.maximum(np.abs(cap0), np.abs(capm))
        valid = (np.minimum(cap0, capm) >= 0) & (np.maximum(cap0, capm) <= 1)
        skew_dmult[shape] = np.where(valid, abs(c_base) / (2.0 * sqm) + cap_abs * dk_star / k_star_min, np.inf)
        skew_cap[shape] = cap_abs

    # static discounts and the basis factor over the window
    sd_long_max = np.full_like(t0, mp.long_static_discount)
    sd_short_max = cols.sd_short  # increasing in T: largest now
    sd_max = np.maximum(np.maximum(sd_long_max, sd_short_max), cols.sd_long)
    k_long = r * mp.long_rate_mult + mp.long_rate_add
    k_short = r * mp.short_rate_mult + mp.short_rate_add
    d_sd = np.maximum(
        k_long * mp.long_static_discount,
        np.maximum(r * np.exp(r * t0), k_short * mp.short_static_discount * np.exp(k_short * t0)),
    )
    basis_max = params.basis.add_factor + params.basis.mult_factor * t0

    # per (series, column): kappa >= sup |dP/dT| and P_max >= sup |P|
    moving = (market.forward - market.fixed)[e][:, None]
    f_hi = market.fixed[e][:, None] + moving * cols.shocks[None, :] * (1.0 + b)
    p_max = np.where(s.is_call[:, None], f_hi, s.strike[:, None])
    vol0 = market.vol[:, None]
    sig_max = np.repeat(vol0, n_cols, axis=1)
    dsig = np.zeros((s.n_series, n_cols))
    for c, sc in enumerate(params.scenarios):
        cc = c + COLS_FIXED
        if sc.vol_shock is VolShock.UP:
            sig_max[:, cc] = np.maximum(vs.min_vol_up, vol0[:, 0] * (1.0 + vs.range_up * m_max[e]))
            dsig[:, cc] = vol0[:, 0] * vs.range_up * dm[e]
        elif sc.vol_shock is VolShock.DOWN:
            dsig[:, cc] = vol0[:, 0] * vs.range_down * dm[e]
        elif sc.vol_shock.is_skew:
            sig_max[:, cc] = vol0[:, 0] * (1.0 + skew_cap[sc.vol_shock][e])
            dsig[:, cc] = _mul(vol0[:, 0], skew_dmult[sc.vol_shock][e])
    tm = t_min_safe[e][:, None]
    vega_max = f_hi * _N0 * np.sqrt(t0[e][:, None])
    kappa = f_hi * _N0 * sig_max / (2.0 * np.sqrt(tm)) + r[e][:, None] * p_max + _mul(vega_max, dsig)
    kappa = np.where(expired[e][:, None], 0.0, np.where(lapses[e][:, None], np.inf, kappa))
    p_max = np.where(expired[e][:, None], 0.0, p_max)  # an expired series never moves in time

    tb = np.zeros((s.n_series, n_cols))
    tb[:, 0] = kappa[:, 0]
    basis_kappa = np.maximum(kappa[:, 1], kappa[:, 2]) + kappa[:, 0]
    tb[:, 1] = _mul(basis_max[e], basis_kappa) + _mul(
        params.basis.mult_factor, np.maximum(p_max[:, 1], p_max[:, 2]) + p_max[:, 0]
    )
    tb[:, COLS_FIXED:] = _mul(sd_max[e][:, None], kappa[:, COLS_FIXED:]) + _mul(d_sd[e][:, None], p_max[:, COLS_FIXED:])
    return tb, sd_max
