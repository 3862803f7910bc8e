"""risk.vol: published values, arch's own filter on real hourly BTC, bad input, gaps, online == batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from arch import arch_model
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.risk.stats import vol
from support.data import shared_path

HOURLY = ("prices", "binance_1h_spot_perp_mark_funding_2018_2026", "BTC_USDT-1h.csv.gz")
HOUR_NS = 3_600 * 10**9


@pytest.fixture(scope="module")
def btc_hourly() -> tuple[np.ndarray, np.ndarray]:
    """Open times (ms) and closes of Binance BTC/USDT spot, 1h, 2018-2026 (three months missing on purpose)."""
    data = np.loadtxt(shared_path(*HOURLY), delimiter=",", skiprows=1, usecols=(0, 4))
    return data[:, 0].astype(np.int64), data[:, 1]


# --- published values ---------------------------------------------------------------------------


def test_ewma_riskmetrics_value():
    # lam = 0.94, sigma = 3 %, r = -10 %: sqrt(0.94 * 0.03^2 + 0.06 * 0.1^2) = sqrt(0.001446) = 3.802631 %
    s = vol.EwmaVol(0.94, 0.03**2).update(-0.10)
    assert isinstance(s, vol.EwmaVol)
    assert s.sigma_per_step == pytest.approx(0.03802631, abs=5e-9)
    assert s.n_obs == 1


def test_garch_one_step_value():
    # omega 2e-6, alpha 0.13, beta 0.86, sigma 1.6 %, r = 1 %:
    # sqrt(2e-6 + 0.13 * 0.01^2 + 0.86 * 0.016^2) = sqrt(2e-6 + 1.3e-5 + 2.2016e-4) = sqrt(2.3516e-4) = 1.533493 %
    s = vol.GarchVol(vol.GarchParams(2e-6, 0.13, 0.86), 0.016**2).update(0.01)
    assert isinstance(s, vol.GarchVol)
    assert s.sigma_per_step == pytest.approx(0.01533493, abs=5e-9)


def test_garch_filter_matches_arch_fixed_params_on_real_btc(btc_hourly):
    """arch_model(...).fix(params): its conditional variances equal the online filter's, step by step."""
    _ts, close = btc_hourly
    r = np.diff(np.log(close))[-6000:]  # the last 6000 hourly returns (no gap in 2025-2026)
    params = vol.GarchParams(omega=3.6e-7, alpha=0.10, beta=0.89)
    fixed = arch_model(r, mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fix(
        [params.omega, params.alpha, params.beta]
    )
    arch_var = np.asarray(fixed.conditional_volatility) ** 2  # arch_var[t] is the variance of r[t]
    state = vol.GarchVol.start(params, vol.arch_backcast(r))
    assert state.var_per_step == pytest.approx(arch_var[0], rel=1e-14)
    online = []
    for x in r:
        nxt = state.update(float(x))
        assert isinstance(nxt, vol.GarchVol)
        state = nxt
        online.append(state.var_per_step)
    np.testing.assert_allclose(online[:-1], arch_var[1:], rtol=1e-12)
    batch = vol.garch_variance(r, params, vol.GarchVol.start(params, vol.arch_backcast(r)).var_per_step)
    assert batch.tolist() == online


def test_fit_garch_on_real_btc(btc_hourly):
    _ts, close = btc_hourly
    r = np.diff(np.log(close))[-6000:]
    fit = vol.fit_garch(r)
    p = fit.params
    assert fit.converged, fit.message
    assert 0.0 < p.alpha < 0.5 and 0.5 < p.beta < 1.0 and p.alpha + p.beta < 1.0
    # the unconditional hourly vol of BTC in 2025-26 lies between 0.2 % and 1.5 %
    assert 0.002 < math.sqrt(p.unconditional_var) < 0.015
    fixed = arch_model(r * 100, mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fix([p.omega * 1e4, p.alpha, p.beta])
    assert fit.filter_start().var_per_step == pytest.approx(np.asarray(fixed.conditional_volatility)[0] ** 2 / 1e4)


# --- bad input ----------------------------------------------------------------------------------


def test_too_little_history_raises_with_reason_and_floor_fallback():
    r = make_rng(1).normal(0.0, 0.01, 100)
    with pytest.raises(vol.InsufficientHistory) as e:
        vol.fit_garch(r)
    assert (e.value.model, e.value.n_obs, e.value.min_obs) == ("garch", 100, vol.MIN_OBS_GARCH)
    assert isinstance(e.value, ValidationError)
    fallback = vol.garch_or_floor(r, floor_var_per_step=0.02**2)
    assert isinstance(fallback, vol.Floor)
    assert fallback.var_per_step == 0.02**2 and "100 observations" in fallback.reason


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_return_is_rejected_and_state_unchanged(bad):
    ewma = vol.EwmaVol(0.94, 1e-4, n_obs=5)
    garch = vol.GarchVol(vol.GarchParams(2e-6, 0.13, 0.86), 1e-4, n_obs=5)
    for state in (ewma, garch):
        out = state.update(bad)
        assert isinstance(out, vol.Rejected) and "return is" in out.reason
        assert state.var_per_step == 1e-4 and state.n_obs == 5  # frozen: nothing to corrupt
    with pytest.raises(ValidationError, match="index 2"):
        vol.ewma_variance([0.01, 0.02, bad, 0.0], 0.94, 1e-4)
    with pytest.raises(ValidationError, match="non-finite"):
        vol.fit_garch(np.r_[make_rng(2).normal(0, 0.01, 400), bad])


def test_bad_candles_and_ticks_are_rejected():
    roll = vol.RollingRangeVol(3)
    assert roll.update(100, 110, 95, 105) is None
    before = (roll.n_obs, roll._sums.copy())
    assert isinstance(roll.update(100, 99, 95, 105), vol.Rejected)  # high below the close
    assert isinstance(roll.update(100, 110, math.nan, 105), vol.Rejected)
    assert roll.n_obs == before[0] and (roll._sums == before[1]).all()
    with pytest.raises(ValidationError, match="index 1"):
        vol.parkinson_var([110, 90], [95, 95])
    rv = vol.RealisedVariance().update(100.0)
    assert isinstance(rv, vol.RealisedVariance)
    assert isinstance(rv.update(0.0), vol.Rejected) and isinstance(rv.update(math.nan), vol.Rejected)


# --- gaps ---------------------------------------------------------------------------------------


def test_gap_spreads_the_return_over_the_missing_steps():
    # a 3-step return of 3 %: EWMA as three steps of r^2/3 each: 0.94^3 var + (1 - 0.94^3) * 0.03^2 / 3
    s = vol.EwmaVol(0.94, 1e-4).update(0.03, steps=3)
    assert isinstance(s, vol.EwmaVol)
    assert s.var_per_step == pytest.approx(0.94**3 * 1e-4 + (1 - 0.94**3) * 0.03**2 / 3, rel=1e-15)
    assert (s.gaps, s.missing_steps) == (1, 2)
    p = vol.GarchParams(2e-6, 0.13, 0.86)
    g = vol.GarchVol(p, 1e-4)
    stepped = g
    for _ in range(3):  # three recursions with r^2/3 each equal the closed form
        nxt = stepped.update(0.03 / math.sqrt(3))
        assert isinstance(nxt, vol.GarchVol)
        stepped = nxt
    jumped = g.update(0.03, steps=3)
    assert isinstance(jumped, vol.GarchVol)
    assert jumped.var_per_step == pytest.approx(stepped.var_per_step, rel=1e-13)


def test_gaps_in_real_hourly_data_are_handled_and_reported(btc_hourly):
    """The 2018-2026 hourly file misses three months on purpose (and a few hours): time-aware updates."""
    ts_ms, close = btc_hourly
    r = np.diff(np.log(close))
    steps = np.diff(ts_ms) // 3_600_000
    state: vol.EwmaVol = vol.EwmaVol(0.94, float(r[:24].var()), last_ts_ns=int(ts_ms[0]) * 10**6)
    worst_after_gap = 0.0
    for x, t_ms, k in zip(r.tolist(), ts_ms[1:].tolist(), steps.tolist(), strict=True):
        nxt = state.update_at(x, t_ms * 10**6, HOUR_NS)
        assert isinstance(nxt, vol.EwmaVol)
        state = nxt
        if k > 700:
            worst_after_gap = max(worst_after_gap, state.sigma_per_step)
    assert state.n_obs == r.size
    assert state.gaps == int((steps > 1).sum()) and state.missing_steps == int((steps - 1).sum())
    assert state.missing_steps > 3 * 700  # the three missing months
    assert 0.0 < worst_after_gap < 0.05  # a month's move spread over its hours: no blow-up
    # the batch twin with the same steps agrees
    batch = vol.ewma_variance(r, 0.94, float(r[:24].var()), steps)
    assert batch[-1] == state.var_per_step
    # time going backwards is rejected, state unchanged
    late = state.update_at(0.01, int(ts_ms[-1]) * 10**6 - HOUR_NS, HOUR_NS)
    assert isinstance(late, vol.Rejected) and "out of order" in late.reason


# --- online == batch ----------------------------------------------------------------------------

returns = st.lists(st.floats(-0.3, 0.3, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(returns, st.lists(st.integers(1, 5), min_size=60, max_size=60), st.floats(0.5, 0.999), st.floats(1e-8, 1e-2))
def test_ewma_and_garch_online_equal_batch(rs, ks, lam, var0):
    steps = ks[: len(rs)]
    e: vol.EwmaVol = vol.EwmaVol(lam, var0)
    p = vol.GarchParams(1e-6, 0.1, 0.85)
    g: vol.GarchVol = vol.GarchVol(p, var0)
    e_seq, g_seq = [], []
    for x, k in zip(rs, steps, strict=True):
        e2, g2 = e.update(x, k), g.update(x, k)
        assert isinstance(e2, vol.EwmaVol) and isinstance(g2, vol.GarchVol)
        e, g = e2, g2
        e_seq.append(e.var_per_step)
        g_seq.append(g.var_per_step)
    assert vol.ewma_variance(rs, lam, var0, steps).tolist() == e_seq
    assert vol.garch_variance(rs, p, var0, steps).tolist() == g_seq


def _candles(draw_moves: list[tuple[float, float, float, float]]) -> np.ndarray:
    rows, prev = [], 100.0
    for g, r, u, d in draw_moves:
        o = prev * math.exp(g)
        c = o * math.exp(r)
        rows.append((o, max(o, c) * math.exp(u), min(o, c) * math.exp(-d), c))
        prev = c
    return np.array(rows)


moves = st.lists(
    st.tuples(st.floats(-0.02, 0.02), st.floats(-0.05, 0.05), st.floats(0, 0.03), st.floats(0, 0.03)),
    min_size=2,
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(moves, st.integers(2, 6))
def test_rolling_range_online_equals_batch(mv, window):
    c = _candles(mv)
    roll = vol.RollingRangeVol(window)
    online = []
    for o, h, lo, cl in c.tolist():
        assert roll.update(o, h, lo, cl) is None
        est = roll.estimates()
        if est is not None:
            online.append(est)
    if len(c) <= window:
        assert online == []
        return
    batch = vol.rolling_range_var(c[:, 0], c[:, 1], c[:, 2], c[:, 3], window)
    for key in ("parkinson", "garman_klass", "rogers_satchell", "yang_zhang"):
        np.testing.assert_allclose([e[key] for e in online], batch[key], rtol=1e-9, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1e-3, 1e6), min_size=1, max_size=50))
def test_realised_variance_online_equals_batch(prices):
    s = vol.RealisedVariance()
    for p in prices:
        nxt = s.update(p)
        assert isinstance(nxt, vol.RealisedVariance)
        s = nxt
    assert vol.realised_variance(prices)[-1] == s.sum_sq
    assert s.n_returns == len(prices) - 1


# --- range estimators ---------------------------------------------------------------------------


def test_range_estimators_on_one_candle():
    # O 100, H 110, L 95, C 105
    hl, co = math.log(110 / 95), math.log(105 / 100)
    assert vol.parkinson_var([110], [95])[0] == pytest.approx(hl**2 / (4 * math.log(2)))
    assert vol.garman_klass_var([100], [110], [95], [105])[0] == pytest.approx(
        0.5 * hl**2 - (2 * math.log(2) - 1) * co**2
    )
    rs = math.log(110 / 105) * math.log(110 / 100) + math.log(95 / 105) * math.log(95 / 100)
    assert vol.rogers_satchell_var([100], [110], [95], [105])[0] == pytest.approx(rs)


def test_range_estimators_recover_diffusion_variance():
    """Candles of a simulated driftless diffusion (2000 sub-steps each): every estimator ~ sigma^2 per candle."""
    rng = make_rng(42)
    sigma, gap_sd, n, sub = 0.01, 0.002, 1500, 2000
    intraday = np.cumsum(rng.normal(0.0, sigma / math.sqrt(sub), (n, sub)), axis=1)
    gaps = rng.normal(0.0, gap_sd, n)  # open of candle i = close of candle i-1 + gap
    opens = np.cumsum(gaps) + np.r_[0.0, np.cumsum(intraday[:-1, -1])]
    logp = opens[:, None] + np.concatenate([np.zeros((n, 1)), intraday], axis=1)
    o, h, lo, c = np.exp(logp[:, 0]), np.exp(logp.max(1)), np.exp(logp.min(1)), np.exp(logp[:, -1])
    # a discretely sampled range is a little short of the true one: a 3 % low bias at 2000 sub-steps
    for est in (vol.parkinson_var(h, lo), vol.garman_klass_var(o, h, lo, c), vol.rogers_satchell_var(o, h, lo, c)):
        assert est.mean() == pytest.approx(sigma**2, rel=0.08)
    yz = vol.yang_zhang_var(o, h, lo, c, window=n - 1)[0]
    assert yz == pytest.approx(sigma**2 + gap_sd**2, rel=0.1)  # Yang-Zhang counts the overnight part too
