"""Batch portfolio margin: :func:`~fluidmargin.risk.options.portfolio.portfolio_margin` over many accounts of one
underlying at once (numba), and a conservative delta-gamma screen to run between full revaluations.

Data. A :class:`SeriesTable` lists the underlying's option series (expiry, strike, call/put); a
:class:`PmMarket` prices them (spot, perp price, per expiry: time, forward, rate; per series: mark vol); a
:class:`PmBook` holds the accounts as columns (cash, perp, unrealised perp P&L) and their options as
ragged rows (CSR: ``pos_offsets``) of (series, signed contracts). Each series is priced once per column --
today, the two basis shocks and every scenario of the grid -- then each account's expiry values are
sparse sums over its positions: 100k accounts of 5 options cost 100k x 5 x (3 + scenarios) multiply-adds.
The model is the reference's, term for term (:func:`portfolio_margin` is the twin; the tests hold them to
1e-9). Collaterals other than cash are not in the batch: accounts holding them use the reference.

The screen (:mod:`~fluidmargin.risk.options.pm_screen`): :func:`pm_screen_reval` is a full revaluation that
also values every account at spot x (1 +- b) and bounds its curvature and time decay; between two of them,
:func:`~fluidmargin.risk.options.pm_screen.pm_delta_gamma_tick` flags the accounts that need one.

Layout: the inputs and the conversions to the reference live in :mod:`~fluidmargin.risk.options.pm_book`,
the per-series tables in :mod:`~fluidmargin.risk.options.pm_tables`, the screen's state and tick in
:mod:`~fluidmargin.risk.options.pm_screen`; this module holds the revaluation kernel and re-exports the public
names of the book and the screen, so that callers import the batch model from one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.black76 import black76_greeks
from fluidmargin.risk.options.pm_book import (
    FloatArray,
    IntArray,
    PmBook,
    PmMarket,
    SeriesTable,
    account_portfolio,
    batch_from_portfolio,
    int_column,
    market_at,
    move_market,
)
from fluidmargin.risk.options.pm_params import SECONDS_PER_YEAR, PortfolioMarginParams
from fluidmargin.risk.options.pm_screen import (
    REASON_MOVE,
    REASON_NEAR,
    REASON_OK,
    REASON_TIME,
    PmScreenState,
    PmTickResult,
    ScreenParams,
    pm_delta_gamma_tick,
)
from fluidmargin.risk.options.pm_tables import (
    COL_BASIS_DOWN,
    COL_BASIS_UP,
    COL_MARK,
    COL_SCENARIOS,
    Columns,
    curvature_tables,
    price_columns,
    time_tables,
)
from fluidmargin.risk.options.pm_terms import confidence_charge

__all__ = [
    "REASON_MOVE",
    "REASON_NEAR",
    "REASON_OK",
    "REASON_TIME",
    "WORST_BASIS",
    "PmBatchResult",
    "PmBook",
    "PmMarket",
    "PmScreenState",
    "PmTickResult",
    "ScreenParams",
    "SeriesTable",
    "account_portfolio",
    "batch_from_portfolio",
    "move_market",
    "pm_delta_gamma_tick",
    "pm_full_reval",
    "pm_screen_reval",
]


WORST_BASIS = -1  # worst_index when the basis (forward) contingency sets the margin
_SLACK_REL = 1e-9  # float rounding allowance, relative to the account's gross value


@dataclass(frozen=True, eq=False)
class PmBatchResult:
    """Per account (aligned with ``rows``, indices into the book): the reference's figures.

    ``worst_index`` is the scenario setting the margin, or :data:`WORST_BASIS`; ``scenario_pnls_quote``
    (accounts x scenarios) only when asked for.
    """

    rows: IntArray
    initial_margin_quote: FloatArray
    maintenance_margin_quote: FloatArray
    initial_requirement_quote: FloatArray
    maintenance_requirement_quote: FloatArray
    mark_to_market_quote: FloatArray
    option_mtm_quote: FloatArray
    worst_pnl_quote: FloatArray
    worst_index: IntArray
    basis_contingency_quote: FloatArray
    scenario_pnls_quote: FloatArray | None = None


# --- the numba kernel -------------------------------------------------------------------------------------

# the revaluation kernel's output columns, per account: figures (out_f) and the screen's (out_s)
# per-series greeks (the screen's table): delta, gamma, theta
G_DELTA, G_GAMMA, G_THETA = 0, 1, 2
F_MTM = 0
F_OPTION_MTM = 1
F_WORST = 2
F_BASIS = 3
F_MM = 4
F_IM = 5
_OUT_F = 6
S_M_LO = 0
S_M0 = 1
S_M_HI = 2
S_CURV_DOWN = 3
S_CURV_UP = 4
S_THETA_BOUND = 5
S_DELTA = 6
S_GAMMA = 7
S_THETA = 8
S_SCALE = 9
_OUT_S = 10

_charge_nb = njit(cache=True, error_model="numpy")(confidence_charge)


def _reval_body(
    rows: Any,
    offsets: Any,
    pos_series: Any,
    pos_amount: Any,
    cash: Any,
    perp_amt: Any,
    pu: Any,
    ser_exp: Any,
    ser_strike: Any,
    ser_volconf: Any,
    ser_scale: Any,
    px: Any,
    exp_sdl: Any,
    exp_sds: Any,
    exp_basis_f: Any,
    exp_conf: Any,
    exp_sdmax: Any,
    damp: Any,
    is_skew: Any,
    shock: Any,
    perp_px: Any,
    spot_px: Any,
    scal: Any,
    screen: Any,
    up: Any,
    dn: Any,
    tb: Any,
    greeks: Any,
    band: Any,
    out_f: Any,
    out_i: Any,
    out_pnl: Any,
    out_scr: Any,
    chunk: Any,
) -> None:
    """Revalue accounts ``rows`` at ``px.shape[0]`` spot points (1, or 3 for the screen: 0, -b, +b).

    Point 0 follows :func:`portfolio_margin` term for term. Points 1 and 2 (screen only) use the skew
    branch fixed at point 0 (the module docstring's M~) and feed the curvature / time bounds.
    """
    n = rows.shape[0]
    n_pt = px.shape[0]
    n_col = px.shape[2]
    n_sc = n_col - COL_SCENARIOS
    f_mm = scal[0]
    f_im = scal[1]
    perp_mm = scal[2]
    perp_imx = scal[3]
    opt_mm = scal[4]
    opt_imx = scal[5]
    c_thr = scal[6]
    c_margin = scal[7]
    spot_conf = scal[8]
    perp_conf = scal[9]
    shock_max = scal[10]
    keep_pnl = out_pnl.shape[0] > 0
    n_chunks = (n + chunk - 1) // chunk
    for ch in prange(n_chunks):
        val = np.empty((n_pt, n_col))
        pnl = np.empty((n_pt, n_sc))
        basis = np.empty(n_pt)
        omtm = np.empty(n_pt)
        uv = np.empty(n_col)
        un = np.empty(n_col)
        kc = np.empty(n_col)
        curv = np.empty(n_sc + 1)
        thw = np.empty(n_sc + 1)
        mt = np.empty(n_pt)
        wmin = np.empty(n_pt)
        lo = ch * chunk
        hi = min(n, lo + chunk)
        for t in range(lo, hi):
            r = rows[t]
            pa = perp_amt[r]
            for p in range(n_pt):
                basis[p] = 0.0
                omtm[p] = 0.0
                for s in range(n_sc):
                    pnl[p, s] = pa * (shock[s] - 1.0) * perp_px[p] * damp[s]
            for i in range(n_sc + 1):
                curv[i] = 0.0
                thw[i] = 0.0
            g_a = 0.0
            th_a = 0.0
            dl = pa * perp_px[0] / spot_px[0]
            gm = 0.0
            th = 0.0
            naked = 0.0
            min_conf = spot_conf
            if pa != 0.0:
                min_conf = min(min_conf, perp_conf)
            perp_notional = abs(pa) * spot_px[0]
            conf_im = _charge_nb(min_conf, perp_notional, c_thr, c_margin)
            scale = abs(cash[r]) + abs(pu[r]) + abs(pa) * perp_px[0] * shock_max
            j = offsets[r]
            end = offsets[r + 1]
            while j < end:
                e = ser_exp[pos_series[j]]
                for p in range(n_pt):
                    for c in range(n_col):
                        val[p, c] = 0.0
                if screen:
                    for c in range(n_col):
                        uv[c] = 0.0
                        un[c] = 0.0
                        kc[c] = 0.0
                gross = 0.0
                conf_e = exp_conf[e]
                k = j
                while k < end and ser_exp[pos_series[k]] == e:
                    sid = pos_series[k]
                    a = pos_amount[k]
                    for p in range(n_pt):
                        for c in range(n_col):
                            val[p, c] += a * px[p, sid, c]
                    aa = abs(a)
                    gross += aa
                    conf_e = min(conf_e, ser_volconf[sid])
                    scale += aa * ser_scale[sid]
                    if screen and a != 0.0:
                        for c in range(n_col):
                            if a > 0.0:
                                uv[c] += a * up[sid, c]
                                un[c] += a * dn[sid, c]
                            else:
                                uv[c] += aa * dn[sid, c]
                                un[c] += aa * up[sid, c]
                            kc[c] += aa * tb[sid, c]
                        dl += a * greeks[sid, G_DELTA]
                        gm += a * greeks[sid, G_GAMMA]
                        th += a * greeks[sid, G_THETA]
                    k += 1
                # naked shorts: net contracts per strike (the run is sorted by strike), shorts only
                q = j
                while q < k:
                    kk = ser_strike[pos_series[q]]
                    net = 0.0
                    while q < k and ser_strike[pos_series[q]] == kk:
                        net += pos_amount[q]
                        q += 1
                    if net < 0.0:
                        naked -= net
                cf = exp_basis_f[e]
                sdl = exp_sdl[e]
                sds = exp_sds[e]
                for p in range(n_pt):
                    m0 = val[p, COL_MARK]
                    omtm[p] += m0
                    basis[p] += min(val[p, COL_BASIS_UP] - m0, val[p, COL_BASIS_DOWN] - m0, 0.0) * cf
                    for s in range(n_sc):
                        v = val[p, COL_SCENARIOS + s]
                        if p > 0 and is_skew[s]:
                            sdt = sdl if val[0, COL_SCENARIOS + s] >= 0.0 else sds
                            d = min((sdl * v - m0) * damp[s], (sds * v - m0) * damp[s], (m0 - sdt * v) * damp[s])
                        else:
                            d = (v * (sdl if v >= 0.0 else sds) - m0) * damp[s]
                            if is_skew[s]:
                                d = -abs(d)
                        pnl[p, s] += d
                if screen:
                    g_a += uv[COL_MARK]
                    if sdl > sds:  # v -> v x (long if v >= 0 else short) is then convex at 0: no bound
                        g_a = np.inf
                    th_a += kc[COL_MARK]
                    sdm = exp_sdmax[e]
                    if cf > 0.0:
                        curv[0] += cf * max(uv[COL_BASIS_UP] + un[COL_MARK], uv[COL_BASIS_DOWN] + un[COL_MARK], 0.0)
                    thw[0] += kc[COL_BASIS_UP]
                    for s in range(n_sc):
                        if damp[s] == 0.0:
                            continue
                        if is_skew[s]:
                            sc = COL_SCENARIOS + s
                            cs = max(sdm * uv[sc] + un[COL_MARK], uv[COL_MARK] + sdm * un[sc])
                        else:
                            cs = sdm * uv[COL_SCENARIOS + s] + un[COL_MARK]
                        curv[1 + s] += damp[s] * cs
                        thw[1 + s] += damp[s] * (kc[COL_SCENARIOS + s] + kc[COL_MARK])
                conf_im += _charge_nb(min(conf_e, min_conf), gross * spot_px[0], c_thr, c_margin)
                j = k
            worst = basis[0]
            widx = -1
            for s in range(n_sc):
                if pnl[0, s] < worst:  # strict: the basis contingency, then the earliest, wins a tie
                    worst = pnl[0, s]
                    widx = s
            naked_notional = naked * spot_px[0]
            cont_mm = perp_notional * perp_mm + naked_notional * opt_mm
            cont_im = cont_mm + perp_notional * perp_imx + naked_notional * opt_imx + conf_im
            out_f[t, F_MTM] = cash[r] + pu[r] + omtm[0]
            out_f[t, F_OPTION_MTM] = omtm[0]
            out_f[t, F_WORST] = worst
            out_f[t, F_BASIS] = basis[0]
            out_f[t, F_MM] = -worst * f_mm + cont_mm
            out_f[t, F_IM] = -worst * f_im + cont_im
            out_i[t] = widx
            if keep_pnl:
                for s in range(n_sc):
                    out_pnl[t, s] = pnl[0, s]
            if not screen:
                continue
            # M~ at each point as A + f min(W); the pieces' gaps and curvatures give G* per side
            for p in range(n_pt):
                w = basis[p]
                for s in range(n_sc):
                    w = min(w, pnl[p, s])
                wmin[p] = w
                a_p = cash[r] + pu[r] + pa * (perp_px[p] - perp_px[0]) + omtm[p]
                a_p -= (abs(pa) * perp_mm + naked * opt_mm) * spot_px[p]
                mt[p] = a_p + f_mm * w
            theta_b = 0.0
            for i in range(n_sc + 1):
                theta_b = max(theta_b, th_a + f_mm * thw[i])
            out_scr[t, S_M_LO] = mt[1]
            out_scr[t, S_M0] = mt[0]
            out_scr[t, S_M_HI] = mt[2]
            for side in range(1, 3):
                gstar = -np.inf
                for i in range(n_sc + 1):
                    w0 = basis[0] if i == 0 else pnl[0, i - 1]
                    wq = basis[side] if i == 0 else pnl[side, i - 1]
                    g0 = max(f_mm * (w0 - wmin[0]), 0.0)
                    gq = max(f_mm * (wq - wmin[side]), 0.0)
                    gi = g_a + f_mm * curv[i]
                    root = math.sqrt(g0) + math.sqrt(gq)
                    gstar = max(gstar, gi - 2.0 * root * root / (band * band))
                out_scr[t, S_M_HI + side] = gstar
            out_scr[t, S_THETA_BOUND] = theta_b
            out_scr[t, S_DELTA] = dl
            out_scr[t, S_GAMMA] = gm
            out_scr[t, S_THETA] = th
            out_scr[t, S_SCALE] = scale


_reval_serial = njit(cache=True, error_model="numpy")(_reval_body)
_reval_parallel = njit(cache=True, parallel=True, error_model="numpy")(_reval_body)


def _run_reval(
    market: PmMarket,
    book: PmBook,
    params: PortfolioMarginParams,
    rows: IntArray,
    points: list[PmMarket],
    cols: list[Columns],
    screen: tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, float] | None,
    with_scenarios: bool,
    parallel: bool,
) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
    s = market.series
    n_sc = len(params.scenarios)
    c = params.contingency
    im_factor = params.margin.im_loss_factor
    if market.stable_price < c.peg_loss_threshold:
        im_factor += (c.peg_loss_threshold - market.stable_price) * c.peg_loss_factor
    shocks = np.array([sc.spot_shock for sc in params.scenarios], dtype=np.float64)
    scal = np.array(
        [
            params.margin.mm_loss_factor, im_factor, c.perp_mm, c.perp_im_extra, c.option_mm, c.option_im_extra,
            c.confidence_threshold, c.confidence_margin, market.spot_confidence, market.perp_confidence,
            max(1.0, float(shocks.max())),
        ],
        dtype=np.float64,
    )  # fmt: skip
    px = np.ascontiguousarray(np.stack([cl.prices for cl in cols]))
    c0 = cols[0]
    n = rows.shape[0]
    out_f = np.empty((n, _OUT_F))
    out_i = np.empty(n, dtype=np.int64)
    out_pnl = np.empty((n, n_sc) if with_scenarios else (0, n_sc))
    if screen is None:
        up = dn = tb = greeks = np.zeros((0, 0))
        sd_max = c0.sd_long
        band = 1.0
        out_s = np.empty((0, _OUT_S))
    else:
        up, dn, tb, greeks, sd_max, band = screen
        out_s = np.empty((n, _OUT_S))
    ser_scale = np.ascontiguousarray(np.abs(px).max(axis=(0, 2)) + s.strike)
    assert market.vol_confidence is not None
    kernel = _reval_parallel if parallel else _reval_serial
    kernel(
        rows, book.pos_offsets, book.pos_series, book.pos_amount, book.cash_quote, book.perp_amount,
        book.perp_unrealised_quote, s.expiry_index, s.strike, market.vol_confidence, ser_scale, px,
        c0.sd_long, c0.sd_short, c0.basis_factor, c0.confidence, sd_max,
        np.array([sc.dampening for sc in params.scenarios], dtype=np.float64),
        np.array([sc.vol_shock.is_skew for sc in params.scenarios], dtype=np.bool_), shocks,
        np.array([pt.perp_price for pt in points], dtype=np.float64),
        np.array([pt.spot_price for pt in points], dtype=np.float64), scal,
        screen is not None, up, dn, tb, greeks, band, out_f, out_i, out_pnl, out_s, 256,
    )  # fmt: skip
    return out_f, out_i, out_pnl, out_s


def _check(market: PmMarket, book: PmBook, accounts: Any) -> IntArray:
    if book.series is not market.series:
        raise ValidationError("the book and the market must share one SeriesTable")
    rows = np.arange(book.n_accounts, dtype=np.int64) if accounts is None else int_column("accounts", accounts)
    if rows.size and (rows.min() < 0 or rows.max() >= book.n_accounts):
        raise ValidationError("accounts out of range")
    if market.perp_price <= 0 and np.any(book.perp_amount[rows] != 0):
        raise ValidationError("a perp position needs a perp price > 0")
    return rows


def _result(rows: IntArray, out_f: FloatArray, out_i: IntArray, pnl: FloatArray, keep: bool) -> PmBatchResult:
    mtm = out_f[:, F_MTM].copy()
    mm_req = out_f[:, F_MM].copy()
    im_req = out_f[:, F_IM].copy()
    return PmBatchResult(
        rows=rows,
        initial_margin_quote=mtm - im_req,
        maintenance_margin_quote=mtm - mm_req,
        initial_requirement_quote=im_req,
        maintenance_requirement_quote=mm_req,
        mark_to_market_quote=mtm,
        option_mtm_quote=out_f[:, F_OPTION_MTM].copy(),
        worst_pnl_quote=out_f[:, F_WORST].copy(),
        worst_index=out_i,
        basis_contingency_quote=out_f[:, F_BASIS].copy(),
        scenario_pnls_quote=pnl if keep else None,
    )


def pm_full_reval(
    market: PmMarket,
    book: PmBook,
    params: PortfolioMarginParams,
    *,
    accounts: Any = None,
    with_scenarios: bool = False,
    parallel: bool = False,
) -> PmBatchResult:
    """Initial and maintenance margin of every account (or of ``accounts``), by full scenario revaluation.

    The same model as :func:`~fluidmargin.risk.options.portfolio.portfolio_margin`, account by account.
    ``parallel`` runs numba's thread pool (same results to the bit; one thread does 100k accounts in
    ~30 ms, and on a busy machine a spinning pool can be slower).
    """
    rows = _check(market, book, accounts)
    cols = price_columns(market, params)
    out_f, out_i, pnl, _ = _run_reval(market, book, params, rows, [market], [cols], None, with_scenarios, parallel)
    return _result(rows, out_f, out_i, pnl, with_scenarios)


def pm_screen_reval(
    market: PmMarket,
    book: PmBook,
    params: PortfolioMarginParams,
    screen: ScreenParams,
    now_ns: int,
    *,
    accounts: Any = None,
    parallel: bool = False,
) -> tuple[PmBatchResult, PmScreenState]:
    """:func:`pm_full_reval` plus the screen's state for the same accounts (rows aligned with ``accounts``).

    Also revalues at spot x (1 +- b) and bounds curvature and time decay (the module docstring); about
    three times the work of a plain revaluation.
    """
    rows = _check(market, book, accounts)
    if isinstance(now_ns, bool) or not isinstance(now_ns, int | np.integer):
        raise ValidationError(f"now_ns must be an integer, got {now_ns!r}")
    b = float(screen.move_bound)
    s0 = market.spot_price
    points = [market] + [market_at(market, s0 * (1.0 + x), 0) for x in (-b, b)]
    cols = [price_columns(pt, params) for pt in points]
    up, dn = curvature_tables(market, params, cols[0], b)
    tb, sd_max = time_tables(market, params, cols[0], b, screen.time_bound_s)
    s = market.series
    e = s.expiry_index
    g = black76_greeks(market.forward[e], s.strike, cols[0].t_years[e], market.vol, cols[0].discount[e], s.is_call)
    dfds = (market.forward - market.fixed)[e] / s0  # dF/dS: the moving part of the forward follows spot
    greeks = np.ascontiguousarray(np.stack([g.delta * dfds, g.gamma * dfds * dfds, g.theta], axis=1))  # G_* columns
    out_f, out_i, pnl, out_s = _run_reval(
        market, book, params, rows, points, cols, (up, dn, tb, greeks, sd_max, b), False, parallel
    )
    res = _result(rows, out_f, out_i, pnl, False)
    m_lo, m0, m_hi = out_s[:, S_M_LO], out_s[:, S_M0], out_s[:, S_M_HI]
    n = rows.shape[0]
    state = PmScreenState(
        spot_ref=np.full(n, s0),
        ts_ref_ns=np.full(n, int(now_ns), dtype=np.int64),
        mm_quote=m0.copy(),
        im_quote=res.initial_margin_quote.copy(),
        margin_delta=(m_hi - m_lo) / (2.0 * b * s0),
        margin_gamma=(m_hi - 2.0 * m0 + m_lo) / (b * b * s0 * s0),
        curv_down=out_s[:, S_CURV_DOWN] / (s0 * s0),
        curv_up=out_s[:, S_CURV_UP] / (s0 * s0),
        theta_bound_per_s=out_s[:, S_THETA_BOUND] / SECONDS_PER_YEAR,
        theta_est_per_s=out_s[:, S_THETA] / SECONDS_PER_YEAR,
        slack_quote=_SLACK_REL * out_s[:, S_SCALE],
        delta=out_s[:, S_DELTA].copy(),
        gamma=out_s[:, S_GAMMA].copy(),
        theta_per_s=out_s[:, S_THETA] / SECONDS_PER_YEAR,
        move_bound=b,
        time_bound_s=screen.time_bound_s,
        threshold_quote=float(screen.threshold_quote),
    )
    return res, state
