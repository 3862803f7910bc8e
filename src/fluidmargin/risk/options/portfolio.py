"""Portfolio margin by scenario revaluation: the whole account is repriced under stress, so hedges net.

Method: Derive's v2 portfolio risk manager "PMRM_2" (derivexyz/v2-core, ``src/risk-managers/PMRM_2.sol``
and ``PMRMLib_2.sol``, Business Source License 1.1), read for its method only and written afresh here.
Per underlying:

- every option expiry is revalued with Black-76 under each scenario: spot (and so the forward) times
  ``spot_shock``; each vol times ``1 + range_up * (30 d / max(DTE, floor))^power`` (up, floored at
  ``min_vol_up``), ``max(0, 1 - range_down * ...)`` (down) or left alone; ``power`` is the short-term one
  up to 30 days to expiry, else the long-term one;
- a shocked expiry value takes a static discount (``long`` when the value is >= 0, ``short`` when < 0,
  each with a rate-dependent term), then scenario P&L = (discounted shocked value - current value) x
  dampening; perps and risk-cancelling collateral move linearly with spot;
- two skew scenarios raise the wings of each expiry's smile (linear in log-moneyness, or in its absolute
  value), capped at ``k*``; each expiry counts with minus its absolute P&L (the skew may rotate either way);
- the worst P&L, never above the basis (forward) contingency, is scaled by the IM or MM loss factor (IM's
  grows when the stablecoin de-pegs) and the contingencies are charged on top: perp notional, naked
  short options, collateral haircuts and low oracle confidence.

Expiry (Derive: ``PMRM_2._initialiseExpiries``, ``LyraForwardFeed``): an expired, unsettled expiry has 0
seconds to expiry and is worth its intrinsic value on its forward (Black-76 at T = 0); what part of that
forward is already fixed (a settlement average under way, all of it once settled) is the caller's
``forward_fixed``. At T = 0 nothing is left to shock: static discounts are 1 (no time value to dampen; the
contract's formula would leave ``long_static_discount`` on a long expiry, its published post-expiry case
lists 1) and no skew shock applies (k* and caps 0). Degenerate parameters the reference accepts are taken
at their limit: the DTE of the vol shock is at least 1 s, k* at least 1e-18 (one unit of the contract's
18-decimal fixed point: at exactly 0 it divides by zero) and a forward shocked to 0 prices calls at 0,
puts at D K.

Money is in the quote stablecoin (``_quote``), as floats: this is a statistical valuation, like Derive's.
The engine converts a requirement to integer quote quanta rounding up. ``initial_margin`` and
``maintenance_margin`` follow Derive: mark-to-market minus requirement, healthy while >= 0.

An account on several underlyings is margined by :func:`cross_portfolio_margin`: each underlying alone,
then netted by configurable correlation offsets, never below a floor. Many accounts of one underlying are
margined at once by :mod:`fluidmargin.risk.options.pm_batch`, whose twin this module is.

Layout: the parameters and the PM2 preset live in :mod:`~fluidmargin.risk.options.pm_params`, the holdings
and results in :mod:`~fluidmargin.risk.options.pm_types`, the per-expiry terms both twins share in
:mod:`~fluidmargin.risk.options.pm_terms`. This module revalues and nets, and re-exports the parameters, holdings and
results, so that callers import the model from one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.pm_params import (
    DERIVE_PM2,
    SECONDS_PER_YEAR,
    BasisContingencyParams,
    ContingencyParams,
    CrossAssetParams,
    MarginParams,
    PortfolioMarginParams,
    Scenario,
    SkewShockParams,
    VolShock,
    VolShockParams,
)
from fluidmargin.risk.options.pm_terms import black76_premium, confidence_charge, expiry_terms, skew_multipliers
from fluidmargin.risk.options.pm_types import (
    CollateralHolding,
    Contingencies,
    CrossPortfolioMarginResult,
    ExpiryHolding,
    ExpiryReport,
    OptionHolding,
    Portfolio,
    PortfolioMarginResult,
    WorstScenario,
)

__all__ = [
    "DERIVE_PM2",
    "SECONDS_PER_YEAR",
    "BasisContingencyParams",
    "CollateralHolding",
    "Contingencies",
    "ContingencyParams",
    "CrossAssetParams",
    "CrossPortfolioMarginResult",
    "ExpiryHolding",
    "ExpiryReport",
    "MarginParams",
    "OptionHolding",
    "Portfolio",
    "PortfolioMarginParams",
    "PortfolioMarginResult",
    "Scenario",
    "SkewShockParams",
    "VolShock",
    "VolShockParams",
    "WorstScenario",
    "cross_portfolio_margin",
    "portfolio_margin",
]

FloatArray = npt.NDArray[np.float64]


# --- Black-76 -------------------------------------------------------------------------------------------


def _values(
    forwards: FloatArray, strikes: FloatArray, is_call: npt.NDArray[np.bool_], amounts: FloatArray,
    vols: FloatArray, t_years: float, discount: float,
) -> FloatArray:  # fmt: skip
    """Expiry value per row: forwards (rows, 1), vols (rows, options) -> (rows,).

    Prices with the project's :func:`~fluidmargin.risk.options.black76.black76_price` (exact normal CDF). Derive's
    contract uses lyra-utils' fixed-point Black-76 (a CDF approximation, puts by parity floored at 0, the
    total vol capped at 24), but its cases come from an exact-CDF generator: this pricer reproduces every
    scenario P&L to ~1e-11 and IM / MM to ~1e-14, so no Derive-specific variant is needed.
    """
    prices = black76_premium(forwards, strikes, t_years, vols, discount, is_call)
    return np.asarray(prices @ amounts, dtype=np.float64)


# --- the model ------------------------------------------------------------------------------------------


def _naked_shorts(options: Sequence[OptionHolding]) -> float:
    """Short contracts not covered by a long at the same strike (call or put alike), summed by strike."""
    net: dict[float, float] = {}
    for o in options:
        net[o.strike] = net.get(o.strike, 0.0) + o.amount
    return sum(max(0.0, -a) for _, a in sorted(net.items()))


def _expiry_pnls(e: ExpiryHolding, params: PortfolioMarginParams) -> tuple[FloatArray, ExpiryReport]:
    """Scenario P&L of one expiry (aligned with params.scenarios) and its intermediate values."""
    terms = expiry_terms([e.sec_to_expiry_s], [e.rate], params)
    t = float(terms.t_years[0])
    disc = float(terms.discount[0])
    strikes = np.array([o.strike for o in e.options], dtype=np.float64)
    amounts = np.array([o.amount for o in e.options], dtype=np.float64)
    is_call = np.array([o.is_call for o in e.options], dtype=np.bool_)
    vols = np.array([o.vol for o in e.options], dtype=np.float64)
    moving = e.forward - e.forward_fixed
    # value in a canonical option order, so the sum (to the last bit) never depends on the input's order
    order = sorted(range(len(e.options)), key=lambda i: (strikes[i], is_call[i], amounts[i], vols[i]))

    def value_at(spot_shocks: FloatArray, vol_rows: FloatArray) -> FloatArray:
        fwd = (moving * spot_shocks + e.forward_fixed)[:, None]
        return _values(fwd, strikes[order], is_call[order], amounts[order], vol_rows[:, order], t, disc)

    base = value_at(np.array([1.0, params.basis.spot_up, params.basis.spot_down]), np.tile(vols, (3, 1)))
    mtm, basis_up, basis_down = float(base[0]), float(base[1]), float(base[2])
    basis = min(basis_up - mtm, basis_down - mtm, 0.0) * float(terms.basis_factor[0])

    up, down = float(terms.vol_up[0]), float(terms.vol_down[0])
    vols_up = np.maximum(params.vol_shock.min_vol_up, vols * up)
    vols_down = vols * down

    k_star = float(terms.k_star[0])
    linear_cap, abs_cap = float(terms.linear_cap[0]), float(terms.abs_cap[0])
    log_m = np.log(strikes / e.forward)
    linear_mult = skew_multipliers(log_m, linear_cap, k_star)
    abs_mult = skew_multipliers(np.abs(log_m), abs_cap, k_star)

    shocks = np.array([s.spot_shock for s in params.scenarios], dtype=np.float64)
    vols_by_shock = {
        VolShock.UP: vols_up,
        VolShock.NONE: vols,
        VolShock.DOWN: vols_down,
        VolShock.SKEW_LINEAR: vols * np.maximum(linear_mult, 0.0),  # a negative multiplier means vol 0
        VolShock.SKEW_ABS: vols * np.maximum(abs_mult, 0.0),
    }
    vol_rows = np.stack([vols_by_shock[s.vol_shock] for s in params.scenarios])
    shocked = value_at(shocks, vol_rows)  # skew scenarios have spot_shock 1: today's forward

    sd_long, sd_short = float(terms.sd_long[0]), float(terms.sd_short[0])
    shocked = shocked * np.where(shocked >= 0, sd_long, sd_short)
    damp = np.array([s.dampening for s in params.scenarios], dtype=np.float64)
    pnl = (shocked - mtm) * damp
    skew = np.array([s.vol_shock.is_skew for s in params.scenarios], dtype=np.bool_)
    pnl = np.where(skew, -np.abs(pnl), pnl)

    report = ExpiryReport(
        sec_to_expiry_s=e.sec_to_expiry_s,
        discount=disc,
        mtm_quote=mtm,
        static_discount_long=sd_long,
        static_discount_short=sd_short,
        vol_shock_up=up,
        vol_shock_down=down,
        basis_contingency_quote=basis,
        naked_short_amount=_naked_shorts(e.options),
        confidence=min([e.forward_confidence, e.rate_confidence] + [o.vol_confidence for o in e.options]),
        vols_up=tuple(float(v) for v in vols_up),
        vols_down=tuple(float(v) for v in vols_down),
        log_moneyness=tuple(float(v) for v in log_m),
        k_star=k_star,
        linear_cap=linear_cap,
        abs_cap=abs_cap,
        linear_multipliers=tuple(float(v) for v in linear_mult),
        abs_multipliers=tuple(float(v) for v in abs_mult),
    )
    return np.asarray(pnl, dtype=np.float64), report


def portfolio_margin(portfolio: Portfolio, params: PortfolioMarginParams) -> PortfolioMarginResult:
    """Initial and maintenance margin of one account on one underlying, by scenario revaluation."""
    c = params.contingency
    pf = portfolio
    scenarios = params.scenarios
    shocks = np.array([s.spot_shock for s in scenarios], dtype=np.float64)
    damp = np.array([s.dampening for s in scenarios], dtype=np.float64)

    min_confidence = pf.spot_confidence
    if pf.perp_amount != 0:
        min_confidence = min(min_confidence, pf.perp_confidence)

    pnls = pf.perp_amount * (shocks - 1.0) * pf.perp_price * damp
    perp_notional = abs(pf.perp_amount) * pf.spot_price
    confidence_im = confidence_charge(min_confidence, perp_notional, c.confidence_threshold, c.confidence_margin)

    reports: list[ExpiryReport] = []
    option_mm = option_im_extra = 0.0
    basis = 0.0
    for e in sorted(pf.expiries, key=lambda x: x.sec_to_expiry_s):
        pnl, rep = _expiry_pnls(e, params)
        pnls = pnls + pnl
        basis += rep.basis_contingency_quote
        naked_notional = rep.naked_short_amount * pf.spot_price
        option_mm += naked_notional * c.option_mm
        option_im_extra += naked_notional * c.option_im_extra
        gross_notional = sum(abs(o.amount) for o in e.options) * pf.spot_price
        confidence_im += confidence_charge(
            min(rep.confidence, min_confidence), gross_notional, c.confidence_threshold, c.confidence_margin
        )
        reports.append(rep)

    collateral_mtm = collateral_mm = collateral_im_extra = 0.0
    for col in sorted(pf.collaterals, key=lambda x: (x.name, x.amount, x.price)):  # a fixed order to sum in
        value = col.amount * col.price / pf.stable_price
        collateral_mtm += value
        collateral_mm += value * col.mm_haircut
        collateral_im_extra += value * col.im_extra_haircut
        # Derive takes the collateral's confidence against spot's alone (the perp's joins later)
        confidence_im += confidence_charge(
            min(col.confidence, pf.spot_confidence), value, c.confidence_threshold, c.confidence_margin
        )
        if col.risk_cancelling:
            pnls = pnls + value * (shocks - 1.0) * damp

    worst = WorstScenario("basis", None, basis)
    for i, s in enumerate(scenarios):
        if pnls[i] < worst.pnl_quote:  # strict: the basis contingency, then the earliest, wins a tie
            worst = WorstScenario(s.kind, i, float(pnls[i]))

    mm_factor = params.margin.mm_loss_factor
    im_factor = params.margin.im_loss_factor
    if pf.stable_price < c.peg_loss_threshold:
        im_factor += (c.peg_loss_threshold - pf.stable_price) * c.peg_loss_factor

    conts = Contingencies(
        perp_mm_quote=perp_notional * c.perp_mm,
        perp_im_extra_quote=perp_notional * c.perp_im_extra,
        option_mm_quote=option_mm,
        option_im_extra_quote=option_im_extra,
        collateral_mm_quote=collateral_mm,
        collateral_im_extra_quote=collateral_im_extra,
        confidence_im_quote=confidence_im,
    )
    option_mtm = sum(r.mtm_quote for r in reports)
    mtm = pf.cash_quote + pf.perp_unrealised_quote + option_mtm + collateral_mtm
    mm_req = -worst.pnl_quote * mm_factor + conts.mm_quote
    im_req = -worst.pnl_quote * im_factor + conts.im_quote
    return PortfolioMarginResult(
        initial_margin_quote=mtm - im_req,
        maintenance_margin_quote=mtm - mm_req,
        initial_requirement_quote=im_req,
        maintenance_requirement_quote=mm_req,
        mark_to_market_quote=mtm,
        worst=worst,
        scenario_pnls_quote=tuple(float(x) for x in pnls),
        basis_contingency_quote=basis,
        contingencies=conts,
        im_loss_factor=im_factor,
        mm_loss_factor=mm_factor,
        option_mtm_quote=option_mtm,
        collateral_mtm_quote=collateral_mtm,
        perp_mtm_quote=pf.perp_unrealised_quote,
        expiries=tuple(reports),
    )


# --- cross-asset netting ---------------------------------------------------------------------------------


def _comoving_loss(results: Sequence[PortfolioMarginResult]) -> float:
    """Worst loss (>= 0) when every underlying moves along the same scenario of the shared grid."""
    pnls = np.sum([r.scenario_pnls_quote for r in results], axis=0)
    basis = sum(r.basis_contingency_quote for r in results)
    return -min(basis, float(np.min(pnls)))


def cross_portfolio_margin(
    portfolios: Mapping[str, Portfolio],
    params: PortfolioMarginParams | Mapping[str, PortfolioMarginParams],
    offsets: CrossAssetParams,
) -> CrossPortfolioMarginResult:
    """Margin of one account holding several underlyings: each stressed alone, then netted by correlation.

    With L_i the worst loss of underlying i alone (>= 0) and L_co(S) the worst loss of the set S moving
    along the same scenarios (same index of the shared grid: spot shocks and vol shocks in step):

    - pair credit c_ij = rate_ij x (L_i + L_j - L_co({i, j})) >= 0: the netting perfect co-movement
      would give the pair, scaled by its offset rate;
    - credit = min(sum of c_ij, sum L_i - L_co(all)): never more than all of them moving together nets;
    - requirement = sum_i (factor_i x L_i + contingencies_i) - min_i factor_i x credit, and at least the
      floor: floor_fraction x max_i (factor_i x L_i) + sum_i contingencies_i (IM and MM alike, each
      with its own loss factors and contingencies).

    Cash and every other holding count once, in the portfolio that holds them. All grids must be aligned
    (the same spot and vol shocks in the same order).
    """
    if not portfolios:
        raise ValidationError("at least one underlying is needed")
    names = sorted(portfolios)
    by_name = {n: params for n in names} if isinstance(params, PortfolioMarginParams) else dict(params)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValidationError(f"no parameters for {', '.join(missing)}")
    grids = {tuple((s.spot_shock, s.vol_shock) for s in by_name[n].scenarios) for n in names}
    if len(grids) != 1:
        raise ValidationError("cross-asset netting needs the same scenario grid for every underlying")
    for a, b, _ in offsets.offset_rates:
        for x in (a, b):
            if x not in portfolios:
                raise ValidationError(f"offset names {x!r}, which the account does not hold")
    results = [portfolio_margin(portfolios[n], by_name[n]) for n in names]
    losses = [-r.worst.pnl_quote for r in results]
    pair_credit = 0.0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            rate = offsets.rate(names[i], names[j])
            if rate > 0:
                pair_credit += rate * (losses[i] + losses[j] - _comoving_loss([results[i], results[j]]))
    comoving = _comoving_loss(results)
    standalone = sum(losses)
    credit = max(0.0, min(pair_credit, standalone - comoving))

    def requirement(initial: bool) -> tuple[float, float]:
        factors = [r.im_loss_factor if initial else r.mm_loss_factor for r in results]
        charges = sum(r.contingencies.im_quote if initial else r.contingencies.mm_quote for r in results)
        scaled = [f * loss for f, loss in zip(factors, losses, strict=True)]
        floor = offsets.floor_fraction * max(scaled) + charges
        return max(sum(scaled) + charges - min(factors) * credit, floor), floor

    im_req, im_floor = requirement(True)
    mm_req, mm_floor = requirement(False)
    mtm = sum(r.mark_to_market_quote for r in results)
    return CrossPortfolioMarginResult(
        by_underlying=tuple(zip(names, results, strict=True)),
        standalone_loss_quote=standalone,
        comoving_loss_quote=comoving,
        offset_credit_quote=credit,
        initial_requirement_quote=im_req,
        maintenance_requirement_quote=mm_req,
        floor_initial_quote=im_floor,
        floor_maintenance_quote=mm_floor,
        mark_to_market_quote=mtm,
        initial_margin_quote=mtm - im_req,
        maintenance_margin_quote=mtm - mm_req,
    )
