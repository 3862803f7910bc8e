"""risk.jumps: published values, exact simulations of barrier crossing, MLE recovery, the lookup kernel.

Convention for every crossing probability here (and in the module): continuous monitoring, time in
years of 365 days, the barrier at 0.9 x price for "-10 %" (log distance ln(1/0.9) = 0.1053605), and the
martingale log drift -sigma^2/2 - lam*kappa (kappa = E[e^Y] - 1): zero rate, the price has no trend.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.optimize import brentq
from scipy.stats import poisson

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.risk.stats import jump_models, jumps
from fluidmargin.risk.stats.vol import InsufficientHistory

DAY = 1.0 / 365.0
Z_10PCT = math.log(1.0 / 0.9)  # a long's bankruptcy price 10 % below the price
MERTON_ACCEPT = jumps.MertonParams(mu_annual=0.0, sigma_annual=0.8, lam_per_year=20.0, jump_mean=-0.05, jump_std=0.08)
KOU = jumps.KouParams(mu_annual=0.0, sigma_annual=0.6, lam_per_year=30.0, p_up=0.3, eta_up=20.0, eta_down=12.0)


@pytest.fixture(scope="module")
def merton_table() -> jumps.CrossingTable:
    return jumps.crossing_table(MERTON_ACCEPT, DAY)


@pytest.fixture(scope="module")
def kou_table() -> jumps.CrossingTable:
    return jumps.crossing_table(KOU, DAY)


# --- simulation references ----------------------------------------------------------------------


def _simulate_strata(params, h, z, counts, rng, nu):
    """Crossing estimate per path given its number of jumps: exact jump times (sorted uniforms) and sizes;
    between jumps the diffusion's end point is drawn exactly and the Brownian-bridge probability of having
    touched the barrier, exp(-2 a b / (sigma^2 dt)) for distances a, b > 0, replaces a coin flip."""
    s = params.sigma_annual
    est = np.empty(counts.size)
    for k in np.unique(counts):
        idx = np.flatnonzero(counts == k)
        m = idx.size
        t = np.concatenate([np.zeros((m, 1)), np.sort(rng.random((m, k)), axis=1) * h, np.full((m, 1), h)], axis=1)
        x = np.full(m, z)  # distance above the barrier (log)
        alive = np.ones(m)
        for seg in range(k + 1):
            dt = t[:, seg + 1] - t[:, seg]
            x1 = x + nu * dt + s * np.sqrt(dt) * rng.standard_normal(m)
            a, b = np.maximum(x, 0.0), np.maximum(x1, 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                touched = np.where(x1 > 0.0, np.exp(-2.0 * a * b / (s * s * dt)), 1.0)
            alive *= 1.0 - np.where(dt > 0.0, touched, x1 <= 0.0)
            x = x1
            if seg < k:
                x = x + params.jumps.sample(np.ones(m, dtype=np.int64), rng)
                alive *= x > 0.0  # a jump through the barrier crosses it
        est[idx] = 1.0 - alive
    return est


def simulate_crossing(params, h, z, n, rng, nu=None):
    """Exact simulation of P(touch within h): Poisson jump counts per path. Mean and standard error."""
    nu = jumps.martingale_drift(params) if nu is None else nu
    est = _simulate_strata(params, h, z, rng.poisson(params.lam_per_year * h, n), rng, nu)
    return float(est.mean()), float(est.std() / math.sqrt(n))


def stratified_crossing(params, h, z, n, rng, kmax=3, nu=None):
    """The same, stratified on the number of jumps: the no-jump stratum in closed form, the others simulated
    with n paths each, weighted by their Poisson probabilities. Mean, standard error, and the unsimulated tail."""
    nu = jumps.martingale_drift(params) if nu is None else nu
    lam_h = params.lam_per_year * h
    mean = math.exp(-lam_h) * float(jumps.gbm_hit_probability(z, params.sigma_annual, h, nu))
    var = 0.0
    for k in range(1, kmax + 1):
        w = float(poisson.pmf(k, lam_h))
        est = _simulate_strata(params, h, z, np.full(n, k), rng, nu)
        mean += w * est.mean()
        var += w * w * est.var() / n
    return mean, math.sqrt(var), float(poisson.sf(kmax, lam_h))


# --- published values ---------------------------------------------------------------------------


def test_merton_call_price():
    # Merton (1976) series: S = K = 100, T = 1, r = 5 %, sigma = 20 %, lam = 1, muJ = -0.10, sigmaJ = 0.15
    assert jumps.merton_call_price(100, 100, 1.0, 0.05, 0.20, 1.0, -0.10, 0.15) == pytest.approx(12.76128859, abs=1e-8)


def test_merton_call_without_jumps_is_black_scholes():
    # BS(100, 110, 0.5, 3 %, 40 %): d1 = (ln(100/110) + (0.03 + 0.08) 0.5) / (0.4 sqrt 0.5)
    d1 = (math.log(100 / 110) + (0.03 + 0.5 * 0.16) * 0.5) / (0.4 * math.sqrt(0.5))
    d2 = d1 - 0.4 * math.sqrt(0.5)
    nd = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    bs = 100 * nd(d1) - 110 * math.exp(-0.015) * nd(d2)
    assert jumps.merton_call_price(100, 110, 0.5, 0.03, 0.40, 0.0, -0.1, 0.15) == pytest.approx(bs, abs=1e-12)


def test_gbm_one_day_hit_probability(merton_table):
    # 80 % vol, one day = 1/365 y, barrier 0.9 x price, log drift -sigma^2/2 = -0.32 (martingale price):
    # Phi((-z + 0.32 h)/(0.8 sqrt h)) + e^{2 * 0.32 z / 0.64} Phi((-z - 0.32 h)/(0.8 sqrt h)) = 0.0125044823
    # (zero log drift would give 0.0118649, the 2 Phi(-z / (0.8 sqrt h)) of the plain reflection principle)
    assert float(jumps.gbm_hit_probability(Z_10PCT, 0.8, DAY, -0.32)) == pytest.approx(0.0125044823, abs=1e-10)
    gbm = jumps.MertonParams(0.0, 0.8, 0.0, -0.05, 0.08)
    assert jumps.martingale_drift(gbm) == pytest.approx(-0.32)
    table = jumps.crossing_table(gbm, DAY)
    p = jumps.crossing_probability(table, [jumps.LONG], [0.9])[0]
    assert p == pytest.approx(0.0125044823, rel=1e-7)  # the lookup table: rows of log P, quadratic between them


def test_merton_one_day_crossing_matches_exact_simulation(merton_table):
    """lam = 20/y, muJ = -5 %, sigmaJ = 8 %, 80 % vol, one day, -10 %: 0.02906 +- 0.0004."""
    mc, se = simulate_crossing(MERTON_ACCEPT, DAY, Z_10PCT, 4_000_000, make_rng(2024))
    analytic = float(jumps.crossing_probability(merton_table, [jumps.LONG], [0.9])[0])
    assert se < 1e-4
    assert mc == pytest.approx(0.02906, abs=4e-4)
    assert analytic == pytest.approx(0.02906, abs=4e-4)
    assert abs(analytic - mc) < 4 * se


@pytest.mark.parametrize(
    ("name", "params", "h", "z", "side"),
    [
        ("merton, near the barrier", MERTON_ACCEPT, DAY, 0.02, jumps.LONG),
        ("merton, -10 %", MERTON_ACCEPT, DAY, Z_10PCT, jumps.LONG),
        ("merton, short +10 %", MERTON_ACCEPT, DAY, Z_10PCT, jumps.SHORT),
        ("merton, 60 s horizon", jumps.MertonParams(0.0, 0.8, 50.0, -0.08, 0.1), 60 * DAY / 86_400, 0.01, jumps.LONG),
        ("kou, down", KOU, DAY, 0.1, jumps.LONG),
        ("kou, up", KOU, DAY, 0.1, jumps.SHORT),
    ],
)
def test_crossing_solver_matches_stratified_simulation(name, params, h, z, side):
    """Tighter than the acceptance check: the no-jump part exact, the jump strata simulated."""
    table = jumps.crossing_table(params, h)
    ratio = math.exp(-z) if side == jumps.LONG else math.exp(z)
    p = float(jumps.crossing_probability(table, [side], [ratio])[0])
    sim_params = params
    nu = jumps.martingale_drift(params)
    if side == jumps.SHORT:  # an upper barrier is a lower one for -X: drift and jumps mirrored
        j = params.jumps.mirrored()
        sim_params = (
            jumps.MertonParams(0.0, params.sigma_annual, params.lam_per_year, j.mean, j.std)
            if isinstance(j, jumps.NormalJumps)
            else jumps.KouParams(0.0, params.sigma_annual, params.lam_per_year, j.p_up, j.eta_up, j.eta_down)
        )
        nu = -nu
    mean, se, tail = stratified_crossing(sim_params, h, z, 300_000, make_rng(7), nu=nu)
    assert abs(p - mean) < 4 * se + tail + 2e-6 * p, name


# --- the table and the lookup kernel ------------------------------------------------------------


def test_table_is_a_valid_survival_curve(merton_table, kou_table):
    for table in (merton_table, kou_table):
        for lp in (table.log_p_down, table.log_p_up):
            assert lp[0] == 0.0  # at the barrier: certain
            assert (np.diff(lp) <= 0.0).all()  # farther is never likelier
            assert math.exp(lp[-1]) <= table.p_floor <= 1e-9
            assert not lp.flags.writeable


def test_symmetric_model_gives_symmetric_table():
    sym = jumps.MertonParams(0.0, 0.5, 10.0, 0.0, 0.05)
    t = jumps.crossing_table(sym, DAY, drift_per_year=0.0)
    np.testing.assert_array_equal(t.log_p_down, t.log_p_up)


ratios = st.floats(0.0, 3.0) | st.sampled_from([0.0, 1.0, math.inf, 1e-300])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([jumps.LONG, jumps.SHORT]), ratios), min_size=1, max_size=50))
def test_kernel_equals_python_twin(merton_table, accounts):
    side = [a for a, _ in accounts]
    ratio = [r for _, r in accounts]
    fast = jumps.crossing_probability(merton_table, side, ratio)
    assert fast.tolist() == jumps.crossing_probability_py(merton_table, side, ratio).tolist()
    for s, r, p in zip(side, ratio, fast.tolist(), strict=True):
        if (s == jumps.LONG and r >= 1.0) or (s == jumps.SHORT and r <= 1.0):
            assert p == 1.0  # at or past the bankruptcy price
        if (s == jumps.LONG and r == 0.0) or (s == jumps.SHORT and r == math.inf):
            assert p == 0.0  # no bankruptcy price


def test_parallel_kernel_equals_twin_on_many_accounts(merton_table):
    rng = make_rng(5)
    n = 200_000  # above the parallel threshold
    side = np.where(rng.random(n) < 0.5, jumps.LONG, jumps.SHORT)
    ratio = np.where(side == jumps.LONG, np.exp(-rng.exponential(0.1, n)), np.exp(rng.exponential(0.1, n)))
    fast = jumps.crossing_probability(merton_table, side, ratio)
    sub = slice(0, n, 97)
    assert fast[sub].tolist() == jumps.crossing_probability_py(merton_table, side[sub], ratio[sub]).tolist()


def test_gap_addon_brings_probability_to_target(merton_table):
    rng = make_rng(9)
    n = 2000
    side = np.where(rng.random(n) < 0.5, jumps.LONG, jumps.SHORT)
    dist = rng.uniform(0.005, 0.4, n)
    ratio = np.where(side == jumps.LONG, np.exp(-dist), np.exp(dist))
    target = 1e-3
    add = jumps.gap_addon_fraction(merton_table, side, ratio, target)
    before = jumps.crossing_probability(merton_table, side, ratio)
    assert ((add > 0) == (before > target * (1 + 1e-12))).all()
    moved = np.where(side == jumps.LONG, ratio - add, ratio + add)  # collateral moves the bankruptcy price
    after = jumps.crossing_probability(merton_table, side, moved)
    assert (after <= target * (1 + 1e-9)).all()
    # minimal: the reference root-find per account lands on the same barrier
    for i in np.flatnonzero(add > 0)[:25]:
        s = int(side[i])

        def excess(r, s=s):
            return float(jumps.crossing_probability(merton_table, [s], [r])[0]) - target

        lo, hi = (1e-9, float(ratio[i])) if s == jumps.LONG else (float(ratio[i]), 50.0)
        root = brentq(excess, lo, hi, xtol=1e-14)
        assert abs(moved[i] - root) < 1e-9


def test_gap_addon_grows_as_the_target_tightens(merton_table):
    side, ratio = [jumps.LONG, jumps.SHORT], [0.85, 1.15]
    adds = [jumps.gap_addon_fraction(merton_table, side, ratio, t) for t in (1e-2, 1e-3, 1e-4, 1e-6)]
    for a, b in itertools.pairwise(adds):
        assert (b > a).all()


# --- densities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params", [jumps.MertonParams(0.1, 0.5, 25, -0.04, 0.06), jumps.KouParams(0.1, 0.5, 30, 0.35, 25, 15)]
)
def test_densities_integrate_to_one_with_the_right_mean(params):
    dt = 1 / 1460
    logpdf = jumps.merton_logpdf if isinstance(params, jumps.MertonParams) else jumps.kou_logpdf
    f = lambda x: math.exp(float(logpdf([x], dt, params)[0]))  # noqa: E731
    mass = integrate.quad(f, -2, 2, points=[0.0], limit=400, epsabs=1e-13)[0]
    mean = integrate.quad(lambda x: x * f(x), -2, 2, points=[0.0], limit=400, epsabs=1e-13)[0]
    if isinstance(params, jumps.MertonParams):
        jump_mean = params.jump_mean
    else:
        jump_mean = params.p_up / params.eta_up - (1 - params.p_up) / params.eta_down
    assert mass == pytest.approx(1.0, abs=1e-8)
    assert mean == pytest.approx(params.mu_annual * dt + params.lam_per_year * dt * jump_mean, abs=1e-8)


@pytest.mark.parametrize("a", [-45.0, -20.0, -8.0, -5.0, -2.0, -0.5, 0.0, 3.0, 30.0])
@pytest.mark.parametrize("jmax", [4, 7])
def test_truncated_normal_moments_in_every_regime(a, jmax):
    """log int_0^inf t^j phi(t - a) dt: forward recursion, erfcx, pbdv + backward, asymptotic series."""
    got = jump_models._log_truncated_moments(np.array([a]), jmax)[0]
    for j in range(jmax + 1):
        # scaled by e^{a^2/2} so that quad sees O(1) values for every a
        ref = integrate.quad(
            lambda t, j=j: t**j * math.exp(-0.5 * t * t + a * t) / math.sqrt(2 * math.pi), 0, math.inf, epsrel=1e-12
        )[0]
        assert got[j] == pytest.approx(math.log(ref) - 0.5 * a * a, rel=1e-9, abs=1e-9)


def test_kou_density_without_jumps_is_normal():
    p = jumps.KouParams(0.2, 0.5, 0.0, 0.3, 20, 10)
    x = np.linspace(-0.05, 0.05, 11)
    s = 0.5 * math.sqrt(1 / 365)
    ref = -0.5 * ((x - 0.2 / 365) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(jumps.kou_logpdf(x, 1 / 365, p), ref, rtol=1e-12)


# --- maximum likelihood -------------------------------------------------------------------------

MERTON_TRUE = jumps.MertonParams(mu_annual=0.0, sigma_annual=0.5, lam_per_year=25.0, jump_mean=-0.04, jump_std=0.06)
SIX_HOURS = 1 / 1460


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merton_mle_recovers_simulated_parameters(seed):
    """10,000 six-hourly returns (6.8 years, ~170 jumps). Tolerances are ~3.5 sd of the estimator, measured
    over 12 seeds: sigma 0.8 %, lam 9 %, muJ 0.006, sigmaJ 6.5 %. The drift is not identifiable (sd 0.14/y)."""
    x = jumps.simulate_log_returns(MERTON_TRUE, 10_000, SIX_HOURS, make_rng(seed))
    fit = jumps.fit_merton(x, SIX_HOURS)
    p = fit.params
    assert isinstance(p, jumps.MertonParams) and fit.converged, fit.message
    assert p.sigma_annual == pytest.approx(0.5, rel=0.03)
    assert p.lam_per_year == pytest.approx(25.0, rel=0.30)
    assert p.jump_mean == pytest.approx(-0.04, abs=0.02)
    assert p.jump_std == pytest.approx(0.06, rel=0.25)
    assert fit.log_likelihood >= float(np.sum(jumps.merton_logpdf(x, SIX_HOURS, MERTON_TRUE)))


def test_kou_mle_recovers_simulated_parameters():
    """8,000 six-hourly returns of a Kou model (~160 jumps); tolerances ~3 sd (3 seeds measured)."""
    true = jumps.KouParams(mu_annual=0.0, sigma_annual=0.5, lam_per_year=30.0, p_up=0.35, eta_up=25.0, eta_down=15.0)
    x = jumps.simulate_log_returns(true, 8_000, SIX_HOURS, make_rng(101))
    fit = jumps.fit_kou(x, SIX_HOURS)
    p = fit.params
    assert isinstance(p, jumps.KouParams) and fit.converged, fit.message
    assert p.sigma_annual == pytest.approx(0.5, rel=0.05)
    assert p.lam_per_year == pytest.approx(30.0, rel=0.30)
    assert p.p_up == pytest.approx(0.35, abs=0.12)
    assert p.eta_up == pytest.approx(25.0, rel=0.40)
    assert p.eta_down == pytest.approx(15.0, rel=0.30)
    assert fit.log_likelihood >= float(np.sum(jumps.kou_logpdf(x, SIX_HOURS, true)))


# --- bad input ----------------------------------------------------------------------------------


def test_too_little_history_raises_with_reason():
    x = jumps.simulate_log_returns(MERTON_TRUE, 120, SIX_HOURS, make_rng(3))
    for fit in (jumps.fit_merton, jumps.fit_kou):
        with pytest.raises(InsufficientHistory) as e:
            fit(x, SIX_HOURS)
        assert e.value.n_obs == 120 and e.value.min_obs == jumps.MIN_OBS_JUMP_FIT
        assert "use the margin floor" in str(e.value)


def test_nan_returns_are_rejected():
    x = jumps.simulate_log_returns(MERTON_TRUE, 1000, SIX_HOURS, make_rng(3))
    x[17] = math.nan
    with pytest.raises(ValidationError, match="index 17"):
        jumps.fit_merton(x, SIX_HOURS)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jumps.MertonParams(0.0, 0.0, 1.0, 0.0, 0.1), "sigma_annual"),
        (lambda: jumps.MertonParams(0.0, 0.5, -1.0, 0.0, 0.1), "lam_per_year"),
        (lambda: jumps.KouParams(0.0, 0.5, 1.0, 0.5, 0.9, 10.0), "eta_up > 1"),
        (lambda: jumps.KouParams(0.0, 0.5, 1.0, 1.5, 20.0, 10.0), "p_up"),
        (lambda: jumps.crossing_table(MERTON_ACCEPT, 0.0), "horizon_years"),
        (lambda: jumps.crossing_table(MERTON_ACCEPT, math.nan), "horizon_years"),
    ],
)
def test_invalid_parameters_are_rejected(call, match):
    with pytest.raises(ValidationError, match=match):
        call()


def test_invalid_accounts_are_rejected(merton_table):
    with pytest.raises(ValidationError, match="barrier_ratio"):
        jumps.crossing_probability(merton_table, [jumps.LONG], [math.nan])
    with pytest.raises(ValidationError, match="side"):
        jumps.crossing_probability(merton_table, [0], [0.9])
    with pytest.raises(ValidationError, match="differ"):
        jumps.crossing_probability(merton_table, [1, 1], [0.9])
    with pytest.raises(ValidationError, match="target_prob"):
        jumps.gap_addon_fraction(merton_table, [1], [0.9], 1e-15)  # below the table's resolution
