"""Portfolio margin at, near and after expiry, and Derive-format parameters at the reference's bounds.

The reference is Derive's v2-core (``src/risk-managers/PMRMLib_2.sol``, ``PMRM_2.sol``,
``src/feeds/LyraForwardFeed.sol``): an expired option has ``secToExpiry = 0`` and is priced by Black-76 at
T = 0, i.e. at intrinsic value on its forward; in the last 30 minutes the forward is split into a fixed part
(the settlement TWAP already observed) and a part that still moves with spot, and at expiry it is all fixed.
Expected values are derived here independently: by hand (arithmetic in the comments) or by ``_ref_pm2``, a
small re-implementation of the PM2 formula for one expiry with the preset's numbers written out as literals.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.adapters.derive import DeriveCaseError, parse_derive_case
from fluidmargin.risk.options.black76 import black76_greeks
from fluidmargin.risk.options.pm_batch import batch_from_portfolio, pm_full_reval
from fluidmargin.risk.options.portfolio import (
    DERIVE_PM2,
    ExpiryHolding,
    OptionHolding,
    Portfolio,
    PortfolioMarginParams,
    PortfolioMarginResult,
    Scenario,
    VolShock,
    portfolio_margin,
)
from support.data import shared_path

YEAR_S = 365 * 86_400
DAY_S = 86_400

# --- an independent PM2 for one expiry (no perp, no collateral, full confidence) ------------------------------

_REGULAR = [(1.18, "up")] + [
    (s, v) for s in (1.135, 1.09, 1.045, 1.0, 0.955, 0.91, 0.865) for v in ("down", "none", "up")
]
_GRID = [(s, v, 1.0) for s, v in [*_REGULAR, (0.82, "up")]]
_GRID += [(s, "up", 0.036 / abs(s - 1.0)) for s in (0.34, 0.67, 1.5, 2.0, 3.0, 4.0)]
_GRID += [(1.0, "linear", 1.0), (1.0, "abs", 1.0)]


def _n(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _b76(f: float, k: float, t: float, vol: float, d: float, call: bool) -> float:
    s = vol * math.sqrt(t)
    if s == 0.0:
        return d * max(f - k, 0.0) if call else d * max(k - f, 0.0)
    d1 = math.log(f / k) / s + 0.5 * s
    d2 = d1 - s
    return d * (f * _n(d1) - k * _n(d2)) if call else d * (k * _n(-d2) - f * _n(-d1))


def _ref_pm2(
    spot: float, sec: int, fwd: float, rate: float, opts: list[tuple[float, bool, float, float]], fixed: float = 0.0
) -> tuple[float, float, float]:
    """(mark to market, MM, IM) of ``opts`` = [(strike, is_call, amount, vol)], PM2's numbers as literals:
    vol shock 1 + 0.5 m / 1 - 0.275 m, m = (30 d / max(DTE, 1 d))^(0.3 or 0.13), up vols >= 0.45; static
    discounts 0.95 exp(-t (r + 0.08)) (1 at expiry) and min(1 / D, 1.04 exp(t (r / 2 + 0.08))); basis
    x 0.5 + 2 t; skew caps 0.15 - 0.05 sqrt(t), k* = max(0.01, 4 sqrt(t) (0.6 - 0.1 sqrt(t))); MM 0.8 x
    worst - 0.3 % of naked-short notional, IM 1.0 x worst - 0.5 %."""
    t = sec / YEAR_S
    r = max(rate, 0.0)
    disc = math.exp(-r * t)
    m = (30 * DAY_S / max(sec, DAY_S)) ** (0.3 if sec <= 30 * DAY_S else 0.13)
    up, down = 1.0 + 0.5 * m, max(0.0, 1.0 - 0.275 * m)
    sqt = math.sqrt(t)
    k_star = max(0.01, sqt * 4.0 * (0.6 - 0.1 * sqt))
    cap = 0.15 - 0.05 * sqt

    def skew(k: float) -> float:
        x = k * cap / k_star
        return 1.0 + (min(cap, x) if k >= 0 else max(-cap, x))

    def value(shock: float, vol_of: Any) -> float:
        f = fixed + (fwd - fixed) * shock
        return sum(a * _b76(f, k, t, vol_of(k, v), disc, c) for k, c, a, v in opts)

    mtm = value(1.0, lambda k, v: v)
    basis = min(value(1.045, lambda k, v: v) - mtm, value(0.955, lambda k, v: v) - mtm, 0.0) * (0.5 + 2.0 * t)
    sd_long = 0.95 * math.exp(-t * (r + 0.08)) if sec > 0 else 1.0
    sd_short = min(1.0 / disc, 1.04 * math.exp(t * (0.5 * r + 0.08)))
    vol_fns = {
        "up": lambda k, v: max(0.45, v * up),
        "none": lambda k, v: v,
        "down": lambda k, v: v * down,
        "linear": lambda k, v: v * max(skew(math.log(k / fwd)), 0.0),
        "abs": lambda k, v: v * max(skew(abs(math.log(k / fwd))), 0.0),
    }
    worst = basis
    for shock, how, damp in _GRID:
        shocked = value(shock, vol_fns[how])
        pnl = (shocked * (sd_long if shocked >= 0 else sd_short) - mtm) * damp
        worst = min(worst, -abs(pnl) if how in ("linear", "abs") else pnl)
    net: dict[float, float] = {}
    for k, _c, a, _v in opts:
        net[k] = net.get(k, 0.0) + a
    naked = sum(max(0.0, -a) for a in net.values())
    return mtm, mtm + 0.8 * worst - 0.003 * naked * spot, mtm + worst - 0.005 * naked * spot


def _book(sec: int, fwd: float, opts: list[tuple[float, bool, float, float]], *, spot: float | None = None,
          rate: float = 0.0, fixed: float = 0.0) -> Portfolio:  # fmt: skip
    holdings = tuple(OptionHolding(k, c, a, v) for k, c, a, v in opts)
    return Portfolio(
        spot_price=fwd if spot is None else spot,
        expiries=(ExpiryHolding(sec, fwd, rate, holdings, forward_fixed=fixed),),
    )


def _finite(r: PortfolioMarginResult) -> bool:
    nums = [r.initial_margin_quote, r.maintenance_margin_quote, r.mark_to_market_quote, r.basis_contingency_quote]
    nums += list(r.scenario_pnls_quote)
    for e in r.expiries:
        nums += [e.static_discount_long, e.static_discount_short, e.vol_shock_up, e.vol_shock_down, e.k_star]
        nums += [*e.vols_up, *e.vols_down, *e.linear_multipliers, *e.abs_multipliers, e.linear_cap, e.abs_cap]
    return all(math.isfinite(x) for x in nums)


# --- Derive-format cases built from a published one -----------------------------------------------------------

S0 = 2681.6029850999994  # ETH spot of Derive's near-expiry cases
F0 = 2691.6029850999994  # the settlement forward of its post-expiry case


def _base() -> dict[str, Any]:
    text = shared_path("vectors", "derive_pmrm2", "test_13_risk_cancelling_btc_covered_call.json").read_text()
    return dict(json.loads(text))


def _single_option_case(feed_expiry: int, forward: float, strike: float, is_call: bool, amount: float,
                        vol: float = 0.6, rate: float = 0.15) -> dict[str, Any]:  # fmt: skip
    """One option and nothing else, with test_13's (the PM2 default) parameter block."""
    d = _base()
    d["Scenario"].update(
        Cash=0, Collaterals=[], SpotPrice=S0, NumPerps=0, PerpPrice=0, UnrealisedPerpPNL=0, UnrealisedFunding=0,
        StablePrice=1.0,
        Options=[{"Expiry": feed_expiry, "Strike": strike, "IsCall": int(is_call), "MarkVol": vol, "Amount": amount}],
        OptionFeeds=[{"FeedExpiry": feed_expiry, "Forward": forward, "ForwardConfidence": 1.0, "Rate": rate,
                      "RateConfidence": 1.0, "OptionVolConfidences": 1.0}],
    )  # fmt: skip
    return d


def _margins(d: dict[str, Any]) -> PortfolioMarginResult:
    case = parse_derive_case(d)
    return portfolio_margin(case.portfolio, case.params)


# --- at expiry: worth intrinsic, nothing left to shock ---------------------------------------------------------


def test_a_short_call_at_expiry_is_its_intrinsic_value_plus_the_naked_short_charge() -> None:
    # Derive's post-expiry book: short 1 ETH call 2500, expired (FeedExpiry 0), settlement forward 2691.60.
    r = _margins(_single_option_case(0, F0, 2500.0, True, -1.0))
    # MTM = -(2691.6029851 - 2500) = -191.6029851; the forward is all fixed, so no scenario moves it: every
    # P&L is 0 (the short discount min(1 / D, 1.04) = 1 at T = 0), the basis contingency too
    assert r.option_mtm_quote == pytest.approx(-191.6029850999994, rel=1e-12)
    assert max(abs(p) for p in r.scenario_pnls_quote) == 0.0 and r.basis_contingency_quote == 0.0
    # MM = -191.6029851 - 0.003 x 1 x 2681.6029851 = -199.6477941; IM = -191.6029851 - 0.005 x 2681.6029851
    assert r.maintenance_margin_quote == pytest.approx(-199.6477940553, rel=1e-12)
    assert r.initial_margin_quote == pytest.approx(-205.0110000255, rel=1e-12)


def test_a_long_call_at_expiry_is_worth_its_intrinsic_value_and_needs_nothing() -> None:
    r = _margins(_single_option_case(0, F0, 2500.0, True, 1.0))
    # MTM = 2691.6029851 - 2500 = 191.6029851, every scenario P&L 0 (static discounts 1 at expiry: no time
    # value left to dampen), no short: MM = IM = 191.6029851
    assert r.maintenance_margin_quote == pytest.approx(191.6029850999994, rel=1e-12)
    assert r.initial_margin_quote == pytest.approx(191.6029850999994, rel=1e-12)
    (e,) = r.expiries
    assert (e.static_discount_long, e.static_discount_short) == (1.0, 1.0)
    assert e.k_star == e.linear_cap == e.abs_cap == 0.0  # no skew shock at expiry (Derive's case reports 0)


def test_one_second_past_expiry_is_valued_as_at_expiry() -> None:
    at = _margins(_single_option_case(0, F0, 2500.0, True, -1.0))
    past = parse_derive_case(_single_option_case(-1, F0, 2500.0, True, -1.0))
    assert len(past.warnings) == 1 and "expired" in past.warnings[0]
    r = portfolio_margin(past.portfolio, past.params)
    assert past.portfolio.expiries[0].sec_to_expiry_s == 0  # Derive: secToExpiry = max(expiry - now, 0)
    assert (r.maintenance_margin_quote, r.initial_margin_quote) == (
        at.maintenance_margin_quote,
        at.initial_margin_quote,
    )


def test_one_second_before_expiry_the_forward_is_almost_all_fixed() -> None:
    # Derive's near-expiry book: short 1 ETH call 2700, 1 s to expiry, forward 2683.00, vol 0.636, rate 15 %.
    # The settlement TWAP runs over the last 30 minutes: 1799 / 1800 of the forward is fixed, so even the x4
    # tail moves it by 3 / 1800 (to 2687.47 < 2700), and with vol x sqrt(1 s) ~ 4e-4 the call stays worthless
    d = _single_option_case(1, 2682.9997436016715, 2700.0, True, -1.0, vol=0.6360190705815766, rate=0.15)
    d["Parameters"]["VolShock"]["MIN_VOL_EVAL_SHOCKED"] = 1.0
    case = parse_derive_case(d)
    (e,) = case.portfolio.expiries
    assert e.forward_fixed == pytest.approx(2682.9997436016715 * 1799 / 1800, rel=1e-15)
    r = portfolio_margin(case.portfolio, case.params)
    assert max(abs(p) for p in r.scenario_pnls_quote) < 1e-9 and abs(r.basis_contingency_quote) < 1e-9
    # MM = -0.003 x 2681.6029851 = -8.0448090 (the naked short), IM = -0.005 x 2681.6029851 = -13.4080149
    assert r.maintenance_margin_quote == pytest.approx(-8.0448089553, rel=1e-9)
    assert r.initial_margin_quote == pytest.approx(-13.4080149255, rel=1e-9)
    # the static discounts at t = 1 s: long 0.95 exp(-(0.15 + 0.08) / 31,536,000) = 0.94999999307,
    # short min(1 / D, 1.04 ...) = exp(0.15 / 31,536,000) = 1.0000000047565
    assert r.expiries[0].static_discount_long == pytest.approx(0.9499999930714105, rel=1e-13)
    assert r.expiries[0].static_discount_short == pytest.approx(1.0000000047564688, rel=1e-13)


def test_a_long_call_steps_up_to_its_full_value_at_expiry() -> None:
    # 1 s before expiry the long side still takes the 0.95 static discount, and 1 / 1800 of the forward still
    # moves: the worst scenario is spot x 0.82, forward 2691.603 x (1 - 0.18 / 1800) = 2691.334, value
    # 191.334 x 0.95 = 181.767, P&L 181.767 - 191.603 = -9.836, so MM = 191.603 - 0.8 x 9.836 = 183.734.
    # At expiry the discount is 1 and nothing moves: MM = 191.603
    before = _margins(_single_option_case(1, F0, 2500.0, True, 1.0))
    at = _margins(_single_option_case(0, F0, 2500.0, True, 1.0))
    value = F0 - 2500.0
    worst = (F0 * (1.0 - 0.18 / 1800) - 2500.0) * 0.95 - value
    assert before.worst.pnl_quote == pytest.approx(worst, rel=1e-6)
    assert before.maintenance_margin_quote == pytest.approx(value + 0.8 * worst, rel=1e-6)
    assert at.maintenance_margin_quote == pytest.approx(value, rel=1e-12)


def test_a_short_put_one_hour_before_expiry_matches_an_independent_pm2() -> None:
    # ETH 3000, short 2 puts 2950 at vol 0.8, 1 h to expiry, the forward still moving with spot (more than
    # 30 minutes out): DTE floored at 1 day, so the vol shock is 1 + 0.5 x 30^0.3 = 2.387
    opts = [(2950.0, False, -2.0, 0.8)]
    r = portfolio_margin(_book(3600, 3000.0, opts, rate=0.05), DERIVE_PM2)
    mtm, mm, im = _ref_pm2(3000.0, 3600, 3000.0, 0.05, opts)
    assert r.mark_to_market_quote == pytest.approx(mtm, rel=1e-12)
    assert r.maintenance_margin_quote == pytest.approx(mm, rel=1e-9)
    assert r.initial_margin_quote == pytest.approx(im, rel=1e-9)
    assert r.expiries[0].vol_shock_up == pytest.approx(1.0 + 0.5 * 30**0.3, rel=1e-12)


ENGINE_BOOKS = [
    # (id, seconds to expiry, [(strike, call, amount, vol)]): the forward is spot and moves with it (the
    # engine settles at the index of its first event at or after expiry, so nothing is fixed before)
    ("long call at expiry", 0, [(2900.0, True, 1.0, 0.6)]),
    ("short put at expiry", 0, [(3100.0, False, -1.0, 0.6)]),
    ("short straddle 1 s out", 1, [(3000.0, True, -1.0, 0.6), (3000.0, False, -1.0, 0.6)]),
    ("call spread 1 min out", 60, [(2950.0, True, 1.0, 0.5), (3050.0, True, -1.0, 0.7)]),
    ("risk reversal 23 h out", 23 * 3600, [(2800.0, False, -3.0, 0.9), (3300.0, True, 3.0, 0.7)]),
]


@pytest.mark.parametrize(("sec", "opts"), [b[1:] for b in ENGINE_BOOKS], ids=[b[0] for b in ENGINE_BOOKS])
def test_books_near_expiry_match_an_independent_pm2(sec: int, opts: list[tuple[float, bool, float, float]]) -> None:
    r = portfolio_margin(_book(sec, 3000.0, opts), DERIVE_PM2)
    mtm, mm, im = _ref_pm2(3000.0, sec, 3000.0, 0.0, opts)
    assert _finite(r)
    assert r.mark_to_market_quote == pytest.approx(mtm, rel=1e-12, abs=1e-9)
    assert r.maintenance_margin_quote == pytest.approx(mm, rel=1e-9, abs=1e-9)
    assert r.initial_margin_quote == pytest.approx(im, rel=1e-9, abs=1e-9)


def test_at_expiry_an_engine_style_book_is_worth_intrinsic_against_shocked_spot() -> None:
    # long 1 call 2900 at T = 0, forward = spot = 3000 moving with it: value 100; the worst regular scenario
    # is spot x 0.82 (call worthless: -100), the tails dampened (x 0.34: -100 x 0.036 / 0.66 = -5.45);
    # basis: spot x 0.955 = 2865 -> -100 x 0.5 = -50. Worst -100 -> MM = 100 - 0.8 x 100 = 20, IM = 0
    r = portfolio_margin(_book(0, 3000.0, [(2900.0, True, 1.0, 0.6)]), DERIVE_PM2)
    assert r.option_mtm_quote == pytest.approx(100.0, abs=1e-9)
    assert r.worst.pnl_quote == pytest.approx(-100.0, abs=1e-9)
    assert r.maintenance_margin_quote == pytest.approx(20.0, abs=1e-9)
    assert r.initial_margin_quote == pytest.approx(0.0, abs=1e-9)


def test_several_expired_expiries_stay_apart() -> None:
    # two series expired at different times (both secToExpiry 0 in Derive) keep their own settlement forward
    a = ExpiryHolding(0, 3010.0, 0.0, (OptionHolding(3000.0, True, 1.0, 0.5),), forward_fixed=3010.0)
    b = ExpiryHolding(0, 2990.0, 0.0, (OptionHolding(3000.0, False, 1.0, 0.5),), forward_fixed=2990.0)
    r = portfolio_margin(Portfolio(spot_price=3000.0, expiries=(a, b)), DERIVE_PM2)
    assert r.option_mtm_quote == pytest.approx(10.0 + 10.0)  # each its own intrinsic value
    assert r.maintenance_margin_quote == pytest.approx(20.0)


# --- continuity as T -> 0 --------------------------------------------------------------------------------------


@st.composite
def short_books(draw: Any) -> tuple[float, list[tuple[float, bool, float, float]]]:
    spot = draw(st.floats(500.0, 100_000.0))
    n = draw(st.integers(1, 3))
    opts = [
        (spot * draw(st.floats(0.7, 1.3)), draw(st.booleans()), -draw(st.floats(0.1, 5.0)), draw(st.floats(0.05, 3.0)))
        for _ in range(n)
    ]
    return spot, opts


@settings(max_examples=80, deadline=None)
@given(book=short_books(), sec=st.integers(1, 7200))
def test_short_books_converge_to_their_expiry_margin(book: Any, sec: int) -> None:
    """A short book's margins are continuous from the right at T = 0: within the Black-76 time value any
    shocked vol can add, sum |a| x F_max x vol_max x sqrt(t) / sqrt(2 pi), of the T = 0 margins."""
    spot, opts = book
    near = portfolio_margin(_book(sec, spot, opts), DERIVE_PM2)
    at = portfolio_margin(_book(0, spot, opts), DERIVE_PM2)
    assert _finite(near) and _finite(at)
    vol_max = max(0.45 + v * (1.0 + 0.5 * 30**0.3) for _, _, _, v in opts)
    gross = sum(abs(a) for _, _, a, _ in opts)
    # the option value, every shocked value (tails up to x 4) and the basis factor 0.5 + 2 t all move
    bound = 3.0 * gross * 4.0 * spot * vol_max * math.sqrt(sec / YEAR_S) * 0.4 + 2.0 * gross * spot * sec / YEAR_S
    assert abs(near.maintenance_margin_quote - at.maintenance_margin_quote) <= bound + 1e-9 * gross * spot
    assert abs(near.initial_margin_quote - at.initial_margin_quote) <= bound + 1e-9 * gross * spot


@settings(max_examples=80, deadline=None)
@given(
    f=st.floats(1.0, 1e6), k_ratio=st.floats(0.5, 2.0), vol=st.floats(0.0, 5.0), call=st.booleans(),
    t=st.sampled_from([0.0, 1e-30, 1e-20, 1e-12, 1 / YEAR_S]),
)  # fmt: skip
def test_black76_at_and_near_expiry_is_finite_and_tends_to_intrinsic(
    f: float, k_ratio: float, vol: float, call: bool, t: float
) -> None:
    k = f * k_ratio
    g = black76_greeks(f, k, t, vol, 1.0, call)
    assert all(np.isfinite(x) for x in g)
    intrinsic = max(f - k, 0.0) if call else max(k - f, 0.0)
    # premium - intrinsic <= F x vol sqrt(t) / sqrt(2 pi) (the at-the-money time value is the largest)
    assert 0.0 <= float(g.price) - intrinsic <= f * vol * math.sqrt(t) * 0.4 + 1e-12 * f
    if t == 0.0:
        assert float(g.gamma) == float(g.vega) == float(g.theta) == 0.0
        step = 1.0 if f > k else (0.0 if f < k else 0.5)
        assert float(g.delta) == (step if call else step - 1.0)


# --- parameters at the reference's bounds ----------------------------------------------------------------------

# Derive's setters (PMRMLib_2.sol: setVolShockParams, setMarginParams, setBasisContingencyParams,
# setOtherContingencyParams, setSkewShockParameters; PMRM_2.setScenarios): each parameter at its lower bound
AT_MINIMUM = [
    ("VolShock", "VOLRANGEUP", 0.0),
    ("VolShock", "VOLRANGEDOWN", 0.0),
    ("VolShock", "SHORTTERMPOWER", 0.0),
    ("VolShock", "LONGTERMPOWER", 0.0),
    ("VolShock", "SHORTTERMPOWER", -1.0),  # a signed integer in the contract
    ("VolShock", "DTE_FLOOR", 0.0),
    ("VolShock", "MIN_VOL_EVAL_SHOCKED", 0.0),
    ("Margin", "IM_LOSS_FACTOR", 0.5),
    ("Margin", "MM_LOSS_FACTOR", 0.1),
    ("Margin", "SHORT_RATE_MULTSCALE", 0.0),
    ("Margin", "LONG_RATE_MULTSCALE", 0.0),
    ("Margin", "SHORT_RATE_ADDSCALE", 0.0),
    ("Margin", "LONG_RATE_ADDSCALE", 0.0),
    ("Margin", "BASE_STATIC_DISCOUNT", 0.0),
    ("Margin", "BASE_STATIC_DISCOUNT_NEG", 0.0),
    ("BasisContingency", "SCENARIO_SPOT_UP", 1.000001),  # must be > 1
    ("BasisContingency", "SCENARIO_SPOT_DOWN", 0.0),
    ("BasisContingency", "BASIS_CONT_ADD_FACTOR", 0.0),
    ("BasisContingency", "BASIS_CONT_MULT_FACTOR", 0.0),
    ("OtherContingency", "PEG_LOSS_THRESHOLD", 0.0),
    ("OtherContingency", "PEG_LOSS_FACTOR", 0.0),
    ("OtherContingency", "CONF_THRESHOLD", 0.0),
    ("OtherContingency", "CONF_MARGIN", 0.0),
    ("OtherContingency", "MM_PERP_PERCENT", 0.0),
    ("OtherContingency", "IM_PERP_PERCENT", 0.0),
    ("OtherContingency", "MM_OPTION_PERCENT", 0.0),
    ("OtherContingency", "IM_OPTION_PERCENT", 0.0),
    ("SkewShock", "LINEAR_SCALE_CAP", 0.0),
    ("SkewShock", "ABS_SCALE_CAP", 0.0),
    ("SkewShock", "LINEAR_CBASE", -10.0),
    ("SkewShock", "ABS_CBASE", -10.0),
    ("SkewShock", "MIN_K_STAR", 0.0),
    ("SkewShock", "MIN_WIDTH_SCALE", 0.0),
    ("SkewShock", "VOL_PARAM_STATIC", 0.0),
    ("SkewShock", "VOL_PARAM_SCALE", -20.0),
]
AT_MAXIMUM = [
    ("VolShock", "VOLRANGEUP", 10.0),
    ("VolShock", "SHORTTERMPOWER", 10.0),
    ("VolShock", "DTE_FLOOR", 400.0),
    ("VolShock", "MIN_VOL_EVAL_SHOCKED", 20.0),
    ("Margin", "IM_LOSS_FACTOR", 10.0),
    ("Margin", "BASE_STATIC_DISCOUNT", 4.0),
    ("BasisContingency", "SCENARIO_SPOT_UP", 2.999999),  # must be < 3
    ("BasisContingency", "BASIS_CONT_MULT_FACTOR", 20.0),
    ("OtherContingency", "PEG_LOSS_THRESHOLD", 100.0),
    ("OtherContingency", "CONF_MARGIN", 20.0),
    ("OtherContingency", "MM_PERP_PERCENT", 3.0),
    ("OtherContingency", "IM_OPTION_PERCENT", 2.0),
    ("SkewShock", "LINEAR_CBASE", 10.0),
    ("SkewShock", "MIN_K_STAR", 10.0),
    ("SkewShock", "VOL_PARAM_SCALE", 20.0),
]


def _with(block: str, key: str, value: float, d: dict[str, Any] | None = None) -> dict[str, Any]:
    d = copy.deepcopy(_base() if d is None else d)
    d["Parameters"][block][key] = value
    return d


# expiries that make the zero parameters bite: a book at expiry (T = 0: DTE 0, k* 0) beside test_13's
def _with_expired_leg(d: dict[str, Any]) -> dict[str, Any]:
    d["Scenario"]["Options"].append({"Expiry": 0, "Strike": 60000.0, "IsCall": 0, "MarkVol": 0.7, "Amount": -1.0})
    d["Scenario"]["OptionFeeds"].append(
        {"FeedExpiry": 0, "Forward": 61000.0, "ForwardConfidence": 1.0, "Rate": 0.05, "RateConfidence": 1.0,
         "OptionVolConfidences": 1.0}
    )  # fmt: skip
    return d


@pytest.mark.parametrize(("block", "key", "value"), AT_MINIMUM + AT_MAXIMUM,
                         ids=[f"{k}={v}" for _, k, v in AT_MINIMUM + AT_MAXIMUM])  # fmt: skip
def test_parameters_at_the_references_bounds_are_accepted(block: str, key: str, value: float) -> None:
    for d in (_with(block, key, value), _with(block, key, value, _with_expired_leg(_base()))):
        case = parse_derive_case(d)
        r = portfolio_margin(case.portfolio, case.params)
        assert _finite(r)
        market, bk = batch_from_portfolio(dataclasses.replace(case.portfolio, collaterals=()))
        _twin(pm_full_reval(market, bk, case.params, with_scenarios=True),
              portfolio_margin(dataclasses.replace(case.portfolio, collaterals=()), case.params))  # fmt: skip


def test_zero_static_discounts_value_every_shocked_expiry_at_nothing() -> None:
    # BASE_STATIC_DISCOUNT = BASE_STATIC_DISCOUNT_NEG = 0 on test_13 (short 2 BTC calls, 1 BTC risk-cancelling
    # collateral): each shocked expiry value counts 0, so the options lose -(their MTM) x dampening in every
    # scenario (skews: -|.| of it) and the collateral moves with spot: value x (shock - 1) x dampening
    d = _with("Margin", "BASE_STATIC_DISCOUNT", 0.0, _with("Margin", "BASE_STATIC_DISCOUNT_NEG", 0.0))
    case = parse_derive_case(d)
    r = portfolio_margin(case.portfolio, case.params)
    coll = sum(c.amount * c.price for c in case.portfolio.collaterals) / case.portfolio.stable_price
    for s, pnl in zip(case.params.scenarios, r.scenario_pnls_quote, strict=True):
        opt = -abs(r.option_mtm_quote) if s.vol_shock.is_skew else -r.option_mtm_quote * s.dampening
        assert pnl == pytest.approx(opt + coll * (s.spot_shock - 1.0) * s.dampening, rel=1e-9)


def test_zero_floors_take_the_references_limit_instead_of_dividing_by_zero() -> None:
    # DTE_FLOOR 0 at expiry: Derive divides 30 d by max(0, 0); the DTE is taken at 1 s, so the up shock is
    # 1 + 0.5 x (2,592,000 s / 1 s)^0.3 = 1 + 0.5 x 84.37 = 43.19 (finite; at T = 0 the vol no longer matters)
    no_floor = dataclasses.replace(DERIVE_PM2, vol_shock=dataclasses.replace(DERIVE_PM2.vol_shock, dte_floor_s=0.0))
    r = portfolio_margin(_book(0, 3000.0, [(2900.0, True, 1.0, 0.6)]), no_floor)
    assert r.expiries[0].vol_shock_up == pytest.approx(1.0 + 0.5 * 2_592_000**0.3, rel=1e-12)
    assert _finite(r)
    # MIN_K_STAR 0 and MIN_WIDTH_SCALE 0 a day out: k* = max(0, 0) = 0 divides by zero in Derive; at its
    # limit (k* = 1e-18, one unit of its fixed point) the skew multiplier is a step: 1 - cap below the
    # forward, 1 + cap above, 1 at it, cap = 0.15 - 0.05 sqrt(1 / 365) = 0.147383
    flat = dataclasses.replace(
        DERIVE_PM2, skew_shock=dataclasses.replace(DERIVE_PM2.skew_shock, min_k_star=0.0, width_scale=0.0)
    )
    opts = [(2900.0, True, 1.0, 0.6), (3000.0, True, 1.0, 0.6), (3100.0, True, 1.0, 0.6)]
    (e,) = portfolio_margin(_book(DAY_S, 3000.0, opts), flat).expiries
    cap = 0.15 - 0.05 * math.sqrt(1 / 365)
    assert e.k_star == 1e-18 and e.linear_cap == pytest.approx(cap, rel=1e-12)
    assert e.linear_multipliers == pytest.approx((1.0 - cap, 1.0, 1.0 + cap), rel=1e-12)
    assert e.abs_multipliers == pytest.approx((1.0 + cap, 1.0, 1.0 + cap), rel=1e-12)


OUT_OF_BOUNDS = [
    # (block, key, value, fragment of the reason)
    ("VolShock", "VOLRANGEUP", 10.01, "VOLRANGEUP must be <= 10"),
    ("VolShock", "VOLRANGEDOWN", -0.01, "VOLRANGEDOWN must be >= 0"),
    ("VolShock", "LONGTERMPOWER", 10.5, "LONGTERMPOWER must be <= 10"),
    ("VolShock", "DTE_FLOOR", 400.01, "DTE_FLOOR must be <= 400"),
    ("VolShock", "DTE_FLOOR", -1.0, "DTE_FLOOR must be >= 0"),
    ("VolShock", "MIN_VOL_EVAL_SHOCKED", 20.5, "MIN_VOL_EVAL_SHOCKED must be <= 20"),
    ("Margin", "IM_LOSS_FACTOR", 0.49, "IM_LOSS_FACTOR must be >= 0.5"),
    ("Margin", "MM_LOSS_FACTOR", 0.09, "MM_LOSS_FACTOR must be >= 0.1"),
    ("Margin", "MM_LOSS_FACTOR", 10.5, "MM_LOSS_FACTOR must be <= 10"),
    ("Margin", "LONG_RATE_ADDSCALE", -0.1, "LONG_RATE_ADDSCALE must be >= 0"),
    ("Margin", "BASE_STATIC_DISCOUNT_NEG", 4.01, "BASE_STATIC_DISCOUNT_NEG must be <= 4"),
    ("BasisContingency", "SCENARIO_SPOT_UP", 1.0, "SCENARIO_SPOT_UP must be > 1"),
    ("BasisContingency", "SCENARIO_SPOT_UP", 3.0, "SCENARIO_SPOT_UP must be < 3"),
    ("BasisContingency", "SCENARIO_SPOT_DOWN", 1.0, "SCENARIO_SPOT_DOWN must be < 1"),
    ("BasisContingency", "SCENARIO_SPOT_DOWN", -0.1, "SCENARIO_SPOT_DOWN must be >= 0"),
    ("BasisContingency", "BASIS_CONT_ADD_FACTOR", 20.5, "BASIS_CONT_ADD_FACTOR must be <= 20"),
    ("OtherContingency", "PEG_LOSS_THRESHOLD", 100.5, "PEG_LOSS_THRESHOLD must be <= 100"),
    ("OtherContingency", "PEG_LOSS_FACTOR", 10.5, "PEG_LOSS_FACTOR must be <= 10"),
    ("OtherContingency", "CONF_THRESHOLD", 1.01, "CONF_THRESHOLD must be <= 1"),
    ("OtherContingency", "CONF_MARGIN", 20.5, "CONF_MARGIN must be <= 20"),
    ("OtherContingency", "IM_PERP_PERCENT", 3.01, "IM_PERP_PERCENT must be <= 3"),
    ("OtherContingency", "MM_OPTION_PERCENT", 2.01, "MM_OPTION_PERCENT must be <= 2"),
    ("SkewShock", "ABS_SCALE_CAP", 10.5, "ABS_SCALE_CAP must be <= 10"),
    ("SkewShock", "LINEAR_SCALE_CAP", -0.1, "LINEAR_SCALE_CAP must be >= 0"),
    ("SkewShock", "ABS_CBASE", -10.5, "ABS_CBASE must be >= -10"),
    ("SkewShock", "MIN_K_STAR", -0.01, "MIN_K_STAR must be >= 0"),
    ("SkewShock", "MIN_WIDTH_SCALE", 10.5, "MIN_WIDTH_SCALE must be <= 10"),
    ("SkewShock", "VOL_PARAM_STATIC", -0.5, "VOL_PARAM_STATIC must be >= 0"),
    ("SkewShock", "VOL_PARAM_SCALE", -20.5, "VOL_PARAM_SCALE must be >= -20"),
]


@pytest.mark.parametrize(("block", "key", "value", "reason"), OUT_OF_BOUNDS,
                         ids=[f"{k}={v}" for _, k, v, _ in OUT_OF_BOUNDS])  # fmt: skip
def test_parameters_outside_the_references_bounds_are_refused(block: str, key: str, value: float, reason: str) -> None:
    with pytest.raises(DeriveCaseError) as err:
        parse_derive_case(_with(block, key, value))
    assert f"Parameters.{block}.{key}" in err.value.reason and reason in err.value.reason
    assert "Derive" in err.value.reason  # says whose bound it is


def _scenarios_edit(fn: Any) -> dict[str, Any]:
    d = _base()
    fn(d["Parameters"]["Scenarios"])
    return d


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_scenarios_edit(lambda s: s.extend([dict(s[0])] * (41 - len(s)))), "at most 40 scenarios"),
        (_scenarios_edit(lambda s: s.__setitem__(0, dict(s[0], SpotShock=-0.1))), "SpotShock must be >= 0"),
        (_scenarios_edit(lambda s: s.append({"SpotShock": 1, "VolShockDirection": "ABS", "DampeningFactor": 1})),
         "at most one skew_abs"),
    ],
    ids=["41 scenarios", "negative spot shock", "two ABS"],
)  # fmt: skip
def test_scenario_grids_the_reference_refuses_are_refused(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(DeriveCaseError, match=reason):
        parse_derive_case(data)


def test_scenario_grid_bounds_are_accepted() -> None:
    # 40 scenarios, a spot shock of 0 (spot to nothing: calls 0, puts worth D x K) and a dampening of 0
    d = _scenarios_edit(lambda s: s.extend([{"SpotShock": 0, "VolShockDirection": "Up", "DampeningFactor": 0}]
                                           * (40 - len(s))))  # fmt: skip
    d["Parameters"]["Scenarios"][1] = {"SpotShock": 0, "VolShockDirection": "None", "DampeningFactor": 1}
    case = parse_derive_case(d)
    assert len(case.params.scenarios) == 40
    r = portfolio_margin(case.portfolio, case.params)
    assert _finite(r)
    # scenario 1, spot -> 0 with vols unmoved: the short calls are worth nothing (a gain of -MTM), the
    # risk-cancelling collateral loses all its value
    coll = sum(c.amount * c.price for c in case.portfolio.collaterals) / case.portfolio.stable_price
    assert r.scenario_pnls_quote[1] == pytest.approx(-r.option_mtm_quote - coll, rel=1e-9)


def test_collateral_haircuts_the_reference_refuses_are_refused() -> None:
    d = _base()
    d["Scenario"]["Collaterals"][0].update(MMHaircut=0.6, IMHaircut=0.5)
    with pytest.raises(DeriveCaseError, match=r"IMHaircut \+ MMHaircut must be <= 1"):
        parse_derive_case(d)


# --- the batch twin on the same books ----------------------------------------------------------------------------


def _twin(res: Any, ref: PortfolioMarginResult) -> None:
    scale = 1.0 + abs(ref.mark_to_market_quote) + abs(ref.initial_requirement_quote) + abs(ref.basis_contingency_quote)
    scale += max(abs(p) for p in ref.scenario_pnls_quote)
    tol = 1e-9 * scale
    assert abs(res.initial_margin_quote[0] - ref.initial_margin_quote) <= tol
    assert abs(res.maintenance_margin_quote[0] - ref.maintenance_margin_quote) <= tol
    assert abs(res.mark_to_market_quote[0] - ref.mark_to_market_quote) <= tol
    assert abs(res.basis_contingency_quote[0] - ref.basis_contingency_quote) <= tol
    np.testing.assert_allclose(res.scenario_pnls_quote[0], ref.scenario_pnls_quote, rtol=0, atol=tol)


def _zero_params() -> PortfolioMarginParams:
    """PM2 with a spot-to-zero scenario and zeros where the reference allows them (k* = 0 below expiry too)."""
    return dataclasses.replace(
        DERIVE_PM2,
        scenarios=(*DERIVE_PM2.scenarios, Scenario(0.0, VolShock.DOWN)),
        vol_shock=dataclasses.replace(DERIVE_PM2.vol_shock, dte_floor_s=0.0),
        skew_shock=dataclasses.replace(DERIVE_PM2.skew_shock, min_k_star=0.0, width_scale=0.0),
        margin=dataclasses.replace(DERIVE_PM2.margin, long_static_discount=0.0),
        basis=dataclasses.replace(DERIVE_PM2.basis, spot_down=0.0),
    )


BATCH_BOOKS = [
    ("engine style at expiry", lambda: _book(0, 3000.0, [(2900.0, True, 1.0, 0.6), (3100.0, False, -2.0, 0.6)])),
    ("fixed at expiry", lambda: _book(0, 3010.0, [(3000.0, True, -1.0, 0.6)], spot=3000.0, fixed=3010.0)),
    (
        "1 s out, mostly fixed",
        lambda: _book(1, 3010.0, [(3000.0, True, 1.0, 0.6)], spot=3000.0, fixed=3010.0 * 1799 / 1800),
    ),
    ("1 h out", lambda: _book(3600, 3000.0, [(2950.0, False, -2.0, 0.8), (3050.0, True, 1.0, 0.7)], rate=0.05)),
    (
        "two expired and a live one",
        lambda: Portfolio(
            spot_price=3000.0,
            expiries=(
                ExpiryHolding(0, 3010.0, 0.0, (OptionHolding(3000.0, True, 1.0, 0.5),), forward_fixed=3010.0),
                ExpiryHolding(0, 2990.0, 0.0, (OptionHolding(3000.0, False, -1.0, 0.5),), forward_fixed=2990.0),
                ExpiryHolding(DAY_S, 3001.0, 0.0, (OptionHolding(3000.0, True, -1.0, 0.5),)),
            ),
        ),
    ),
]


@pytest.mark.parametrize("params", [lambda: DERIVE_PM2, _zero_params], ids=["pm2", "zero parameters"])
@pytest.mark.parametrize("pf", [b[1] for b in BATCH_BOOKS], ids=[b[0] for b in BATCH_BOOKS])
def test_the_batch_agrees_with_the_reference_at_and_near_expiry(pf: Any, params: Any) -> None:
    pf, params = pf(), params()
    ref = portfolio_margin(pf, params)
    assert _finite(ref)
    market, bk = batch_from_portfolio(pf)
    _twin(pm_full_reval(market, bk, params, with_scenarios=True), ref)


# --- the engine: a series in its last second, then settled ---------------------------------------------------


def test_engine_margins_in_the_last_second_are_the_expiry_margins_then_settlement_pays_intrinsic() -> None:
    from test_options_engine import ALICE, BOB, C50, EXP, figures, make_desk, opt, pair

    from fluidmargin.model import events as ev
    from support.desk import NS, of_type

    d = make_desk(alice_usd=100_000)
    pair(d, ALICE, BOB, C50, opt(1), 100 * 10**8)  # alice long 1 BTC call 50,000, bob short
    d.clock_to(EXP - 60 * NS)
    d.price("BTC", "50500")
    d.clock_to(EXP - NS // 2)  # half a second left: the model counts 0 whole seconds (T = 0)
    a, b = figures(d, ALICE), figures(d, BOB)
    assert not a.blocked and not b.blocked
    # alice: value 500 (intrinsic); worst scenario spot x 0.82 (41,410: worthless) loses 500, so
    # MM = 0.8 x 500 = 400 and IM = 500 (no naked short); the quote quanta round up
    assert a.mm_quote_q == pytest.approx(400 * 10**6, abs=2) and a.im_quote_q == pytest.approx(500 * 10**6, abs=2)
    # bob: worst is spot x 1.18 (59,590): the short call loses 9,590 - 500 = 9,090 (the tails, dampened, at
    # most 25,250 x 0.072 = 1,818); naked short 1 x 50,500: MM = 0.8 x 9,090 + 0.3 % = 7,272 + 151.5 = 7,423.5,
    # IM = 9,090 + 0.5 % = 9,090 + 252.5 = 9,342.5
    assert b.mm_quote_q == pytest.approx(7_423_500_000, abs=2) and b.im_quote_q == pytest.approx(9_342_500_000, abs=2)
    out = d.clock_to(EXP)  # expiry reached: settled at the index, 500 a contract
    (settled,) = [o for o in of_type(out, ev.OptionsSettled) if o.market == C50]
    assert settled.amounts_quote_q == [500 * 10**6, -500 * 10**6]
    assert not figures(d, ALICE).blocked and figures(d, ALICE).mm_quote_q == 0
