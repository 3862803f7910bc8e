"""Batch portfolio margin (:mod:`fluidmargin.risk.options.pm_batch`) against its twin, the reference
:func:`~fluidmargin.risk.options.portfolio.portfolio_margin`, and the delta-gamma screen against full revaluation.

Twin tolerance: 1e-9 relative to max(|reference|, the account's gross scale), the scale being cash, perp
and option notionals (sums that cancel cannot be compared relative to their result). Screen: on random
books and random spot / time paths (within and across the bounds), every account whose full revaluation
says it is breached was flagged, and every certified lower bound is below the exact margin.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.adapters.derive import parse_derive_case_text
from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.pm_batch import (
    REASON_MOVE,
    REASON_NEAR,
    REASON_OK,
    REASON_TIME,
    WORST_BASIS,
    PmBatchResult,
    PmBook,
    PmMarket,
    ScreenParams,
    SeriesTable,
    account_portfolio,
    batch_from_portfolio,
    move_market,
    pm_delta_gamma_tick,
    pm_full_reval,
    pm_screen_reval,
)
from fluidmargin.risk.options.portfolio import (
    DERIVE_PM2,
    Portfolio,
    PortfolioMarginParams,
    PortfolioMarginResult,
    Scenario,
    VolShock,
    portfolio_margin,
)
from support.data import ROOT, shared_path

NS = 10**9
T0_NS = 1_700_000_000 * NS
DAY = 86_400
SPOT = 3000.0

# a configurable grid: 9 spot shocks x 3 vol shocks = 27 scenarios, no tails, no skews
GRID_27 = dataclasses.replace(
    DERIVE_PM2,
    scenarios=tuple(
        Scenario(1.0 + k * 0.0225, v) for k in range(-4, 5) for v in (VolShock.DOWN, VolShock.NONE, VolShock.UP)
    ),
)
PARAMS = {"derive_pm2": DERIVE_PM2, "grid_27": GRID_27}


# --- builders -----------------------------------------------------------------------------------------------


@st.composite
def markets_and_books(draw: Any, max_accounts: int = 10) -> tuple[PmMarket, PmBook]:
    """1-3 expiries (expired to a year, some fixed forward), 1-4 strikes each, calls and puts, vols from 0 to
    250 %, low confidences and a de-pegged stablecoin sometimes; accounts of 0-6 positions (duplicates and
    zero amounts included), perps, cash and unrealised perp P&L."""
    n_exp = draw(st.integers(1, 3))
    secs = draw(
        st.lists(
            st.sampled_from([0, 3_000, 3 * 3600, DAY, 5 * DAY, 29 * DAY, 31 * DAY, 90 * DAY, 365 * DAY]),
            min_size=n_exp,
            max_size=n_exp,
            unique=True,
        )
    )
    forward = [SPOT * draw(st.floats(0.97, 1.05)) for _ in secs]
    fixed = [f * draw(st.sampled_from([0.0, 0.0, 0.4])) for f in forward]
    rate = [draw(st.floats(-0.02, 0.12)) for _ in secs]
    e_idx, strikes, calls = [], [], []
    for e in range(n_exp):
        for k in draw(st.lists(st.integers(20, 45), min_size=1, max_size=4, unique=True)):
            for is_call in (True, False):
                e_idx.append(e)
                strikes.append(100.0 * k)
                calls.append(is_call)
    series = SeriesTable(np.array(e_idx), np.array(strikes), np.array(calls), n_exp)
    ns = series.n_series
    vol_choices = st.sampled_from([0.0, 0.02, 0.3, 0.6, 0.9, 1.5, 2.5])
    vol = [draw(vol_choices) * draw(st.floats(0.9, 1.1)) for _ in range(ns)]
    low_conf = draw(st.booleans())
    conf = st.sampled_from([1.0, 1.0, 0.5]) if low_conf else st.just(1.0)
    market = PmMarket(
        series=series,
        spot_price=SPOT,
        perp_price=SPOT * draw(st.floats(0.995, 1.005)),
        sec_to_expiry_s=np.array(secs, dtype=np.int64),
        forward=np.array(forward),
        rate=np.array(rate),
        vol=np.array(vol),
        forward_fixed=np.array(fixed),
        forward_confidence=np.array([draw(conf) for _ in secs]),
        rate_confidence=np.array([draw(conf) for _ in secs]),
        vol_confidence=np.array([draw(conf) for _ in range(ns)]),
        spot_confidence=draw(conf),
        perp_confidence=draw(conf),
        stable_price=draw(st.sampled_from([1.0, 1.0, 0.96])),
    )
    n = draw(st.integers(1, max_accounts))
    sizes = [draw(st.integers(0, 6)) for _ in range(n)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    m = int(offsets[-1])
    sid = [draw(st.integers(0, ns - 1)) for _ in range(m)]
    amount = [draw(st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0])) * draw(st.floats(0.5, 1.5)) for _ in sid]
    perp = [draw(st.sampled_from([0.0, 0.0, -2.0, -0.3, 0.7, 1.5])) for _ in range(n)]
    cash = [draw(st.floats(-2000.0, 5000.0)) for _ in range(n)]
    pu = [draw(st.floats(-50.0, 50.0)) for _ in range(n)]
    return market, PmBook.build(series, cash, perp, offsets, sid, amount, pu)


def _scale(p: Portfolio) -> float:
    """Gross size of an account, the yardstick of float rounding: cash, perp and option notionals."""
    gross = abs(p.perp_amount) * p.perp_price * 4.0
    for e in p.expiries:
        gross += sum(abs(o.amount) * (e.forward * 4.0 + o.strike) for o in e.options)
    return 1.0 + abs(p.cash_quote) + abs(p.perp_unrealised_quote) + gross


def _assert_twin(res: PmBatchResult, t: int, ref: PortfolioMarginResult, scale: float) -> None:
    tol = 1e-9 * max(scale, abs(ref.initial_margin_quote))
    pairs = {
        "initial_margin": (res.initial_margin_quote[t], ref.initial_margin_quote),
        "maintenance_margin": (res.maintenance_margin_quote[t], ref.maintenance_margin_quote),
        "initial_requirement": (res.initial_requirement_quote[t], ref.initial_requirement_quote),
        "maintenance_requirement": (res.maintenance_requirement_quote[t], ref.maintenance_requirement_quote),
        "mark_to_market": (res.mark_to_market_quote[t], ref.mark_to_market_quote),
        "option_mtm": (res.option_mtm_quote[t], ref.option_mtm_quote),
        "worst_pnl": (res.worst_pnl_quote[t], ref.worst.pnl_quote),
        "basis": (res.basis_contingency_quote[t], ref.basis_contingency_quote),
    }
    for name, (got, want) in pairs.items():
        assert abs(got - want) <= tol, (name, got, want)
    assert res.scenario_pnls_quote is not None
    np.testing.assert_allclose(res.scenario_pnls_quote[t], ref.scenario_pnls_quote, rtol=0, atol=tol)
    want_idx = WORST_BASIS if ref.worst.index is None else ref.worst.index
    if res.worst_index[t] != want_idx:  # only a near-tie may pick another scenario
        got_idx = int(res.worst_index[t])
        got_pnl = ref.basis_contingency_quote if got_idx == WORST_BASIS else ref.scenario_pnls_quote[got_idx]
        assert abs(got_pnl - ref.worst.pnl_quote) <= tol, (res.worst_index[t], ref.worst)


# --- the twin: batch = reference ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(mb=markets_and_books(), which=st.sampled_from(sorted(PARAMS)))
def test_batch_equals_reference_on_random_books(mb: tuple[PmMarket, PmBook], which: str) -> None:
    market, book = mb
    params = PARAMS[which]
    res = pm_full_reval(market, book, params, with_scenarios=True)
    for i in range(book.n_accounts):
        p = account_portfolio(market, book, i)
        _assert_twin(res, i, portfolio_margin(p, params), _scale(p))


def _derive_stems() -> list[str]:
    return sorted(p.stem for p in shared_path("vectors", "derive_pmrm2").glob("test_*.json"))


@pytest.mark.parametrize("stem", _derive_stems())
def test_batch_equals_reference_on_derive_cases(stem: str) -> None:
    """Each of Derive's 70 cases (its parameter block, its options and perp; collaterals left out, the
    batch holds none) through the batch and the reference."""
    case = parse_derive_case_text((shared_path("vectors", "derive_pmrm2") / f"{stem}.json").read_text())
    p = dataclasses.replace(case.portfolio, collaterals=())
    market, book = batch_from_portfolio(p)
    res = pm_full_reval(market, book, case.params, with_scenarios=True)
    _assert_twin(res, 0, portfolio_margin(p, case.params), _scale(p))


def test_parallel_kernels_match_serial_to_the_bit() -> None:
    market, book = _population(400, seed=3)
    one = pm_full_reval(market, book, DERIVE_PM2, with_scenarios=True)
    many = pm_full_reval(market, book, DERIVE_PM2, with_scenarios=True, parallel=True)
    assert np.array_equal(one.maintenance_margin_quote, many.maintenance_margin_quote)
    assert np.array_equal(one.scenario_pnls_quote, many.scenario_pnls_quote)
    _, s1 = pm_screen_reval(market, book, DERIVE_PM2, ScreenParams(), T0_NS)
    _, s2 = pm_screen_reval(market, book, DERIVE_PM2, ScreenParams(), T0_NS, parallel=True)
    assert np.array_equal(s1.curv_up, s2.curv_up) and np.array_equal(s1.theta_bound_per_s, s2.theta_bound_per_s)
    a = pm_delta_gamma_tick(s1, SPOT * 1.01, T0_NS + 5 * NS)
    b = pm_delta_gamma_tick(s1, SPOT * 1.01, T0_NS + 5 * NS, parallel=True)
    assert np.array_equal(a.mm_lower_quote, b.mm_lower_quote) and np.array_equal(a.reason, b.reason)


def test_a_subset_revalues_like_the_whole_book() -> None:
    market, book = _population(50, seed=4)
    whole = pm_full_reval(market, book, DERIVE_PM2)
    rows = np.array([7, 3, 41])
    part = pm_full_reval(market, book, DERIVE_PM2, accounts=rows)
    assert np.array_equal(part.rows, rows)
    assert np.array_equal(part.maintenance_margin_quote, whole.maintenance_margin_quote[rows])


# --- the screen ---------------------------------------------------------------------------------------------


def _population(n: int, seed: int, health: tuple[float, float] = (0.02, 1.0)) -> tuple[PmMarket, PmBook]:
    """A seeded book on ETH: 3 expiries (2, 28, 90 days) x 6 strikes x call/put, 0-6 options and a perp per
    account, cash putting MM at ``health`` x its requirement (uniform)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    strikes = np.array([2400.0, 2700.0, 2900.0, 3000.0, 3200.0, 3600.0])
    e_idx = np.repeat(np.arange(3), 12)
    k = np.tile(np.repeat(strikes, 2), 3)
    call = np.tile([True, False], 18)
    series = SeriesTable(e_idx, k, call, 3)
    market = PmMarket(
        series, SPOT, SPOT, np.array([2 * DAY, 28 * DAY, 90 * DAY]), np.array([3001.0, 3010.0, 3040.0]),
        np.array([0.05, 0.05, 0.05]), rng.uniform(0.4, 0.9, series.n_series),
    )  # fmt: skip
    sizes = rng.integers(0, 7, n)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    sid = rng.integers(0, series.n_series, offsets[-1])
    amount = rng.choice([-1.0, 1.0], offsets[-1]) * rng.uniform(0.1, 3.0, offsets[-1])
    perp = rng.uniform(-2, 2, n) * (rng.random(n) < 0.7)
    zero = PmBook.build(series, np.zeros(n), perp, offsets, sid, amount)
    r = pm_full_reval(market, zero, DERIVE_PM2)
    cash = -r.maintenance_margin_quote + r.maintenance_requirement_quote * rng.uniform(*health, n)
    return market, PmBook.build(series, cash, perp, offsets, sid, amount)


@st.composite
def screened_paths(draw: Any) -> tuple[PmMarket, PmBook, ScreenParams, list[tuple[float, int]], list[float]]:
    """A random book, screen bounds, a path of (relative spot move from the start, seconds since the
    previous tick) reaching 1.5x the bounds, and per-account health (MM / requirement) to set cash."""
    market, book = draw(markets_and_books(max_accounts=12))
    screen = ScreenParams(
        move_bound=draw(st.sampled_from([0.005, 0.02, 0.05])),
        time_bound_s=draw(st.sampled_from([0, 20, 300])),
        threshold_quote=draw(st.sampled_from([0.0, 0.0, 25.0])),
    )
    b, tau = screen.move_bound, screen.time_bound_s
    steps = draw(st.integers(1, 6))
    path = [
        (draw(st.floats(-1.5 * b, 1.5 * b) | st.sampled_from([-b, b, 0.0])), draw(st.integers(0, int(tau * 1.5) + 1)))
        for _ in range(steps)
    ]
    health = [draw(st.floats(-0.05, 0.3)) for _ in range(book.n_accounts)]
    return market, book, screen, path, health


@settings(max_examples=150, deadline=None)
@given(case=screened_paths(), which=st.sampled_from(sorted(PARAMS)))
def test_screen_never_misses_a_breach(case: Any, which: str) -> None:
    """Engine loop: tick -> flagged accounts fully revalued (their screen state replaced) -> next tick.
    Zero misses: exact MM below the threshold (0 or 25) implies flagged; and the certified bound never
    exceeds the exact MM."""
    market, book, screen, path, health = case
    params = PARAMS[which]
    r0 = pm_full_reval(market, book, params)
    cash = book.cash_quote - r0.maintenance_margin_quote + np.array(health) * r0.maintenance_requirement_quote
    book = PmBook(
        book.series, cash, book.perp_amount, book.perp_unrealised_quote, book.pos_offsets, book.pos_series,
        book.pos_amount,
    )  # fmt: skip
    _, state = pm_screen_reval(market, book, params, screen, T0_NS)
    elapsed = 0
    for x, dt in path:
        elapsed += dt
        spot = SPOT * (1.0 + x)
        now_ns = T0_NS + elapsed * NS
        mk, bk = move_market(market, book, spot, elapsed)
        exact = pm_full_reval(mk, bk, params).maintenance_margin_quote
        tick = pm_delta_gamma_tick(state, spot, now_ns)
        missed = np.flatnonzero((exact < screen.threshold_quote) & ~tick.needs_reval)
        assert missed.size == 0, (missed, exact[missed], tick.mm_lower_quote[missed])
        screened = tick.reason <= REASON_NEAR
        assert np.all(tick.mm_lower_quote[screened] <= exact[screened])
        rows = np.flatnonzero(tick.needs_reval)
        if rows.size:
            _, part = pm_screen_reval(mk, bk, params, screen, now_ns, accounts=rows)
            state = state.merged(rows, part)


def test_the_bound_is_what_catches_breaches_the_estimate_alone_misses() -> None:
    """On a seeded population near its limits, the delta-gamma estimate alone would pass some breached
    accounts (it is a quadratic fit, not a bound); the certified bound flags every one."""
    market, book = _population(3000, seed=11, health=(-0.02, 0.15))
    screen = ScreenParams(move_bound=0.02, time_bound_s=60)
    _, state = pm_screen_reval(market, book, DERIVE_PM2, screen, T0_NS)
    estimate_misses = bound_misses = breaches = 0
    for x in (-0.02, -0.013, -0.007, 0.004, 0.011, 0.019):
        mk, bk = move_market(market, book, SPOT * (1 + x), 30)
        exact = pm_full_reval(mk, bk, DERIVE_PM2).maintenance_margin_quote
        tick = pm_delta_gamma_tick(state, SPOT * (1 + x), T0_NS + 30 * NS)
        breached = exact < 0
        breaches += int(breached.sum())
        estimate_misses += int(np.sum(breached & (tick.screened_mm_quote >= 0)))
        bound_misses += int(np.sum(breached & ~tick.needs_reval))
    assert breaches > 100
    assert estimate_misses > 0
    assert bound_misses == 0


def _single(p: Portfolio) -> tuple[PmMarket, PmBook]:
    return batch_from_portfolio(p)


def test_perp_only_account_screens_exactly() -> None:
    """State: Alice, 1 ETH perp long at 3000, cash 600 (no options). Parameters: DERIVE_PM2, bound 2 %.
    MM = 600 - (0.18 x 3000 x 0.8 + 3000 x 1.5 %) = 600 - 477 = 123; MM is linear in spot, so the screen
    is exact: d MM / dS = 1 - 0.18 x 0.8 - 0.015 = 0.841, and a 1 % drop (-30) gives
    123 - 30 x 0.841 = 97.77 (full revaluation: 570 - (0.18 x 2970 x 0.8 + 2970 x 1.5 %) = 570 - 472.23)."""
    market, book = _single(Portfolio(spot_price=SPOT, cash_quote=600.0, perp_amount=1.0, perp_price=SPOT))
    res, state = pm_screen_reval(market, book, DERIVE_PM2, ScreenParams(), T0_NS)
    assert res.maintenance_margin_quote[0] == pytest.approx(123.0, rel=1e-12)
    assert state.margin_delta[0] == pytest.approx(0.841, rel=1e-9)
    assert state.margin_gamma[0] == pytest.approx(0.0, abs=1e-12)
    assert (state.delta[0], state.gamma[0]) == (1.0, 0.0)  # the portfolio: one unit of spot
    tick = pm_delta_gamma_tick(state, 2970.0, T0_NS + 10 * NS)
    mk, bk = move_market(market, book, 2970.0, 10)
    exact = pm_full_reval(mk, bk, DERIVE_PM2).maintenance_margin_quote[0]
    assert exact == pytest.approx(97.77, rel=1e-12)
    assert tick.screened_mm_quote[0] == pytest.approx(97.77, rel=1e-9)
    # the bound is the estimate less the rounding slack: 1e-9 x (cash 600 + perp 3000 x largest shock 4)
    assert tick.mm_lower_quote[0] == pytest.approx(exact - 1e-9 * (600 + 3000 * 4), abs=1e-9)
    assert tick.reason[0] == REASON_OK


@pytest.mark.parametrize(
    ("spot", "elapsed_s", "reason"),
    [
        # State: a 28-day short straddle healthy by ~30 % of its requirement; bounds 2 %, 60 s.
        (SPOT * 1.005, 10, REASON_OK),  # inside both bounds, far from the limit
        (SPOT * 1.021, 10, REASON_MOVE),  # 2.1 % > 2 %
        (SPOT * 0.979, 10, REASON_MOVE),
        (SPOT * 1.005, 61, REASON_TIME),  # 61 s > 60 s
        (SPOT * 1.005, -1, REASON_TIME),  # the clock went backwards
    ],
)
def test_bounds_force_a_full_revaluation(spot: float, elapsed_s: int, reason: int) -> None:
    market, book = _straddle(health=0.3)
    _, state = pm_screen_reval(market, book, DERIVE_PM2, ScreenParams(move_bound=0.02, time_bound_s=60), T0_NS)
    tick = pm_delta_gamma_tick(state, spot, T0_NS + elapsed_s * NS)
    assert tick.reason[0] == reason


def _straddle(health: float, sec: int = 28 * DAY) -> tuple[PmMarket, PmBook]:
    series = SeriesTable(np.array([0, 0]), np.array([3000.0, 3000.0]), np.array([True, False]), 1)
    market = PmMarket(series, SPOT, SPOT, np.array([sec]), np.array([3010.0]), np.array([0.05]), np.array([0.6, 0.6]))
    zero = PmBook.build(series, [0.0], [0.0], [0, 2], [0, 1], [-1.0, -1.0])
    r = pm_full_reval(market, zero, DERIVE_PM2)
    cash = -r.maintenance_margin_quote + health * r.maintenance_requirement_quote
    return market, PmBook.build(series, cash, [0.0], [0, 2], [0, 1], [-1.0, -1.0])


def test_an_expiry_inside_the_time_window_is_always_flagged_once_time_passes() -> None:
    """A straddle expiring in 30 s, time bound 60 s: no bound on time decay across expiry, so any tick
    after the revaluation's instant is flagged; at the same instant and spot the margin itself is used."""
    market, book = _straddle(health=0.5, sec=30)
    _, state = pm_screen_reval(market, book, DERIVE_PM2, ScreenParams(move_bound=0.02, time_bound_s=60), T0_NS)
    assert math.isinf(state.theta_bound_per_s[0])
    assert pm_delta_gamma_tick(state, SPOT, T0_NS).reason[0] == REASON_OK
    assert pm_delta_gamma_tick(state, SPOT, T0_NS + NS).reason[0] == REASON_NEAR


def test_screen_state_reports_portfolio_greeks() -> None:
    """The stored delta / gamma are d(mark to market)/dS and d2/dS2 (central differences agree)."""
    market, book = _population(20, seed=5)
    _, state = pm_screen_reval(market, book, DERIVE_PM2, ScreenParams(), T0_NS)
    h = 0.5
    up = pm_full_reval(*move_market(market, book, SPOT + h), DERIVE_PM2).mark_to_market_quote
    mid = pm_full_reval(market, book, DERIVE_PM2).mark_to_market_quote
    dn = pm_full_reval(*move_market(market, book, SPOT - h), DERIVE_PM2).mark_to_market_quote
    np.testing.assert_allclose(state.delta, (up - dn) / (2 * h), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.gamma, (up - 2 * mid + dn) / (h * h), rtol=1e-3, atol=1e-6)


def test_merged_state_replaces_only_the_given_rows() -> None:
    market, book = _population(10, seed=6)
    _, state = pm_screen_reval(market, book, DERIVE_PM2, ScreenParams(), T0_NS)
    mk, bk = move_market(market, book, SPOT * 1.01, 5)
    _, part = pm_screen_reval(mk, bk, DERIVE_PM2, ScreenParams(), T0_NS + 5 * NS, accounts=[2, 8])
    merged = state.merged([2, 8], part)
    assert merged.spot_ref[2] == merged.spot_ref[8] == SPOT * 1.01
    assert np.array_equal(np.delete(merged.mm_quote, [2, 8]), np.delete(state.mm_quote, [2, 8]))
    with pytest.raises(ValidationError, match="other screen bounds"):
        state.merged([2, 8], pm_screen_reval(mk, bk, DERIVE_PM2, ScreenParams(0.01), 0, accounts=[2, 8])[1])


# --- bad input ----------------------------------------------------------------------------------------------


SERIES = SeriesTable(np.array([0, 0]), np.array([3000.0, 3200.0]), np.array([True, False]), 1)
OTHER_SERIES = SeriesTable(np.array([0, 0]), np.array([3000.0, 3200.0]), np.array([True, False]), 1)


def _market(**kw: Any) -> PmMarket:
    base: dict[str, Any] = dict(
        series=SERIES, spot_price=SPOT, perp_price=SPOT, sec_to_expiry_s=np.array([DAY]),
        forward=np.array([3000.0]), rate=np.array([0.0]), vol=np.array([0.5, 0.5]),
    )  # fmt: skip
    base.update(kw)
    return PmMarket(**base)


def _book(series: SeriesTable = SERIES, perp: float = 0.0) -> PmBook:
    return PmBook.build(series, [0.0], [perp], [0, 1], [0], [1.0])


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: SeriesTable(np.array([0]), np.array([0.0]), np.array([True]), 1), "strike must be > 0"),
        (lambda: SeriesTable(np.array([1]), np.array([10.0]), np.array([True]), 1), "expiry_index out of range"),
        (lambda: SeriesTable(np.array([0.5]), np.array([10.0]), np.array([True]), 1), "must hold integers"),
        (lambda: _market(vol=np.array([0.5, -0.1])), "vol must be >= 0"),
        (lambda: _market(vol=np.array([0.5, math.inf])), "vol must be finite"),
        (lambda: _market(vol=np.array([0.5])), "vol must be 1-D of length 2"),
        (lambda: _market(sec_to_expiry_s=np.array([-1])), "sec_to_expiry_s must be >= 0"),
        (lambda: _market(forward=np.array([0.0])), "forward must be > 0"),
        (lambda: _market(forward_fixed=np.array([3000.0])), "forward_fixed must be in"),
        (lambda: _market(spot_price=0.0), "spot_price and stable_price must be > 0"),
        (lambda: _market(vol_confidence=np.array([1.0, 1.5])), "vol_confidence must be in"),
        (lambda: PmBook(SERIES, [0.0], [0.0], [0.0], [0, 2], [1, 0], [1.0, 1.0]), "ordered by"),
        (lambda: PmBook.build(SERIES, [0.0], [0.0], [0, 1], [2], [1.0]), "do not fit together"),
        (lambda: PmBook.build(SERIES, [0.0], [0.0], [0, 2], [0], [1.0]), "end at the number of positions"),
        (lambda: PmBook.build(SERIES, [0.0], [0.0], [0, 1], [0], [math.nan]), "pos_amount must be finite"),
        (lambda: PmBook(SERIES, [0.0], [0.0], [0.0], [1, 1], [], []), "start at 0"),
        (lambda: ScreenParams(move_bound=0.0), "move_bound"),
        (lambda: ScreenParams(time_bound_s=-1), "time_bound_s"),
        (lambda: pm_full_reval(_market(), _book(), DERIVE_PM2, accounts=[1]), "accounts out of range"),
        (lambda: pm_full_reval(_market(), _book(OTHER_SERIES), DERIVE_PM2), "share one SeriesTable"),
        (lambda: pm_full_reval(_market(perp_price=0.0), _book(perp=1.0), DERIVE_PM2), "perp price > 0"),
        (lambda: batch_from_portfolio(_with_collateral()), "no collaterals"),
        (lambda: move_market(_market(), _book(), -1.0), "spot_price"),
        (lambda: move_market(_market(), _book(), SPOT, -5), "elapsed_s"),
    ],
)
def test_bad_input_is_rejected(build: Any, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        build()


def _with_collateral() -> Portfolio:
    from fluidmargin.risk.options.portfolio import CollateralHolding

    return Portfolio(spot_price=SPOT, collaterals=(CollateralHolding("ETH", 1.0, SPOT),))


def test_risk_stays_pure() -> None:
    """The batch modules import nothing from the engine, the service or the store."""
    paths = sorted(ROOT.joinpath("src/fluidmargin/risk/options").glob("pm_*.py"))
    assert ROOT.joinpath("src/fluidmargin/risk/options/pm_batch.py") in paths
    for path in paths:
        text = path.read_text()
        for layer in ("engine", "service", "store"):
            assert f"fluidmargin.{layer}" not in text, path.name


def test_params_are_the_models() -> None:
    assert isinstance(GRID_27, PortfolioMarginParams) and len(GRID_27.scenarios) == 27
