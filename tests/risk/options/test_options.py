"""Black-76 prices and Greeks against QuantLib, vollib, textbook values, parity and finite differences.

Tolerance convention ("normalised absolute"): errors are divided by the natural scale of each
quantity with F the forward: price/F, delta, gamma*F, vega/F, theta*T/F (value change over the
remaining life). Bound: 1e-9 against both references (achieved: ~1e-13 or better).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import QuantLib as ql
from hypothesis import given, settings
from hypothesis import strategies as st
from vollib.black import black as vl_black
from vollib.black.greeks import analytical as vl

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.black76 import (
    Greeks,
    black76_greeks,
    black76_price,
    black76_price_delta_gamma,
    discount_factor,
    forward_from_spot,
    option_inputs_reason,
    spot_delta,
)

# --- the reference grid: deep ITM to deep OTM, 1 hour to 2 years, 5% to 300% vol, -1% to 10% rates

FORWARD = 100.0
MONEYNESS = (0.2, 0.5, 0.8, 0.95, 1.0, 1.05, 1.25, 2.0, 5.0)  # K / F
EXPIRIES_Y = (1 / 8760, 1 / 365, 7 / 365, 30 / 365, 0.25, 1.0, 2.0)
VOLS = (0.05, 0.2, 0.5, 1.0, 2.0, 3.0)
RATES = (-0.01, 0.0, 0.03, 0.10)
ROWS = list(itertools.product(MONEYNESS, EXPIRIES_Y, VOLS, RATES, (True, False)))
K = np.array([FORWARD * r[0] for r in ROWS])
T = np.array([r[1] for r in ROWS])
V = np.array([r[2] for r in ROWS])
R = np.array([r[3] for r in ROWS])
CALL = np.array([r[4] for r in ROWS])
D = np.exp(-R * T)
TOL_NORM = 1e-9
ONE = np.ones_like(T)
NORM = np.stack([ONE / FORWARD, ONE, ONE * FORWARD, ONE / FORWARD, T / FORWARD], axis=1)  # multipliers


def _ours() -> np.ndarray:
    return np.stack(black76_greeks(FORWARD, K, T, V, D, CALL), axis=1)


def _normalised_error(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Max error per column (price, delta, gamma, vega, theta) on the normalised scales."""
    err = np.abs(ours - ref)
    return np.asarray((err * NORM).max(axis=0))


def test_matches_quantlib_black_calculator() -> None:
    ref = []
    for k, t, v, d, c in zip(K, T, V, D, CALL, strict=True):
        payoff = ql.PlainVanillaPayoff(ql.Option.Call if c else ql.Option.Put, float(k))
        bc = ql.BlackCalculator(payoff, FORWARD, float(v * math.sqrt(t)), float(d))
        # QuantLib: vega(T) is per 1.00 vol; theta(spot, T) is per year; spot = F makes the carry
        # r - q zero, i.e. Black-76 on the forward: theta = r V - D F N'(d1) vol / (2 sqrt T).
        ref.append((bc.value(), bc.deltaForward(), bc.gammaForward(), bc.vega(float(t)), bc.theta(FORWARD, float(t))))
    err = _normalised_error(_ours(), np.array(ref))
    assert (err < TOL_NORM).all(), err


def test_matches_vollib() -> None:
    ref = []
    for k, t, v, r, c in zip(K, T, V, R, CALL, strict=True):
        f = "c" if c else "p"
        args = (f, FORWARD, float(k), float(t), float(r), float(v))
        # vollib conventions: vega is per 1% vol (x100 -> per 1.00), theta is per day (x365 -> per year).
        ref.append((vl_black(*args), vl.delta(*args), vl.gamma(*args), vl.vega(*args) * 100, vl.theta(*args) * 365))
    ref_a = np.array(ref)
    ours = _ours()
    err = _normalised_error(ours, ref_a)
    assert (err < TOL_NORM).all(), err
    # vollib's CDF (Jaeckel's) is accurate in the tails: relative agreement too, where not negligible.
    big = np.abs(ref_a) * NORM > 1e-8
    rel = np.abs(ours - ref_a)[big] / np.abs(ref_a)[big]
    assert rel.max() < 1e-9


# --- textbook values -----------------------------------------------------------------------------


def test_hull_black76_futures_put() -> None:
    # Hull, "Options, Futures, and Other Derivatives", chapter Futures Options, Black's model example:
    # European put on a futures, F0 = K = 20, r = 9%, T = 4 months, vol = 25%.
    # d1 = vol sqrt(T) / 2 = 0.25 * sqrt(1/3) / 2 = 0.0721688, d2 = -d1;
    # p = e^-0.03 * 20 * (N(d1) - N(-d1)) = e^-0.03 * 20 * erf(d1 / sqrt 2) = 1.1166 (Hull: 1.12).
    d1 = 0.25 * math.sqrt(1 / 3) / 2
    expected = math.exp(-0.03) * 20 * math.erf(d1 / math.sqrt(2))
    p = float(black76_price(20.0, 20.0, 4 / 12, 0.25, math.exp(-0.09 * 4 / 12), False))
    assert p == pytest.approx(expected, rel=1e-14)
    assert round(p, 2) == 1.12


def test_hull_black_scholes_equivalent() -> None:
    # Hull, same book, Black-Scholes-Merton example: S0 = 42, K = 40, r = 10%, vol = 20%, T = 0.5:
    # d1 = 0.7693, d2 = 0.6278, c = 4.76, p = 0.81. Black-76 with F = S e^{rT}, D = e^{-rT} is the same.
    fwd = forward_from_spot(42.0, 0.10, 0.5)
    disc = discount_factor(0.10, 0.5)
    assert float(fwd) == pytest.approx(42 * math.exp(0.05), rel=1e-15)
    d1 = (math.log(42 / 40) + (0.10 + 0.02) * 0.5) / (0.2 * math.sqrt(0.5))
    d2 = d1 - 0.2 * math.sqrt(0.5)
    n = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    c_bs = 42 * n(d1) - 40 * math.exp(-0.05) * n(d2)
    p_bs = 40 * math.exp(-0.05) * n(-d2) - 42 * n(-d1)
    c, p = black76_price(fwd, 40.0, 0.5, 0.2, disc, [True, False])
    assert (round(d1, 4), round(d2, 4)) == (0.7693, 0.6278)
    assert c == pytest.approx(c_bs, rel=1e-13)
    assert p == pytest.approx(p_bs, rel=1e-13)
    assert (round(float(c), 2), round(float(p), 2)) == (4.76, 0.81)


# --- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "f", "k", "t", "vol", "call", "price", "delta"),
    [
        ("expiry_now_call_itm", 120.0, 100.0, 0.0, 0.5, True, 0.9 * 20.0, 0.9),
        ("expiry_now_put_itm", 80.0, 100.0, 0.0, 0.5, False, 0.9 * 20.0, -0.9),
        ("expiry_now_call_otm", 80.0, 100.0, 0.0, 0.5, True, 0.0, 0.0),
        ("zero_vol_put_otm", 120.0, 100.0, 1.0, 0.0, False, 0.0, 0.0),
        ("zero_vol_call_itm", 120.0, 100.0, 1.0, 0.0, True, 0.9 * 20.0, 0.9),
        ("zero_vol_at_the_money_call", 100.0, 100.0, 1.0, 0.0, True, 0.0, 0.45),  # half step: vol -> 0 limit
        ("zero_vol_at_the_money_put", 100.0, 100.0, 1.0, 0.0, False, 0.0, -0.45),
    ],
)
def test_degenerate_gives_discounted_intrinsic(name, f, k, t, vol, call, price, delta) -> None:
    g = black76_greeks(f, k, t, vol, 0.9, call)
    assert float(g.price) == pytest.approx(price, abs=1e-15), name
    assert float(g.delta) == pytest.approx(delta, abs=1e-15), name
    assert float(g.gamma) == 0.0
    assert float(g.vega) == 0.0
    assert np.isfinite(g.theta)
    assert black76_price_delta_gamma(f, k, t, vol, 0.9, call) == (g.price, g.delta, g.gamma)


def test_theta_at_zero_vol_is_discount_drift() -> None:
    # V = D (F - K) with D = e^{-rT}: theta = -dV/dT = r V; r = 5%, T = 1: 0.05 * e^-0.05 * 20.
    g = black76_greeks(120.0, 100.0, 1.0, 0.0, math.exp(-0.05), True)
    assert float(g.theta) == pytest.approx(0.05 * math.exp(-0.05) * 20, rel=1e-14)


def test_tiny_total_vol_limits_without_warnings() -> None:
    g = black76_greeks(100.0, [99.0, 101.0], 1e-12, 1e-3, 1.0, True)
    np.testing.assert_allclose(g.price, [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(g.delta, [1.0, 0.0], atol=1e-15)


def test_broadcasting_and_shape() -> None:
    g = black76_greeks(100.0, np.array([[90.0], [110.0]]), np.array([0.5, 1.0, 2.0]), 0.6, 1.0, True)
    assert all(a.shape == (2, 3) for a in g)
    assert isinstance(g, Greeks)
    assert black76_price(100.0, 100.0, 1.0, 0.5, 1.0, True).shape == ()


@pytest.mark.parametrize(
    ("field", "args", "reason"),
    [
        ("forward", (0.0, 100.0, 1.0, 0.5, 1.0), "forward_not_positive"),
        ("strike", (100.0, -1.0, 1.0, 0.5, 1.0), "strike_not_positive"),
        ("t_years", (100.0, 100.0, -1e-9, 0.5, 1.0), "expired"),
        ("vol", (100.0, 100.0, 1.0, -0.1, 1.0), "vol_negative"),
        ("vol", (100.0, 100.0, 1.0, math.nan, 1.0), "vol_not_finite"),
        ("discount", (100.0, 100.0, 1.0, 0.5, 0.0), "discount_not_positive"),
        ("forward", (math.inf, 100.0, 1.0, 0.5, 1.0), "forward_not_finite"),
    ],
)
def test_bad_inputs_rejected(field, args, reason) -> None:
    assert option_inputs_reason(*args) == reason
    with pytest.raises(ValidationError):
        black76_greeks(*args, True)
    with pytest.raises(ValidationError):
        black76_price_delta_gamma(*args, True)


def test_good_inputs_have_no_reason() -> None:
    assert option_inputs_reason(100.0, 100.0, 0.0, 0.0, 1.0) is None


# --- properties ----------------------------------------------------------------------------------

forwards = st.floats(1e-2, 1e6)
moneyness = st.floats(0.05, 20.0)
expiries = st.floats(0.0, 3.0)
vols = st.floats(0.0, 4.0)
rates = st.floats(-0.02, 0.2)


@settings(max_examples=300, deadline=None)
@given(forwards, moneyness, expiries, vols, rates)
def test_put_call_parity(f, m, t, vol, r) -> None:
    k = f * m
    d = math.exp(-r * t)
    c, p = black76_price(f, k, t, vol, d, [True, False])
    # each premium is a difference of terms of size <= D (F + K): a few ulps of that.
    assert abs((c - p) - d * (f - k)) <= 16 * np.finfo(float).eps * d * (f + k)


def _d1(fn, x: float, h: float) -> float:
    """First derivative, 5-point stencil (truncation O(h**4))."""
    return (-fn(x + 2 * h) + 8 * fn(x + h) - 8 * fn(x - h) + fn(x - 2 * h)) / (12 * h)


def _d2(fn, x: float, h: float) -> float:
    """Second derivative, 5-point stencil (truncation O(h**4))."""
    return (-fn(x + 2 * h) + 16 * fn(x + h) - 30 * fn(x) + 16 * fn(x - h) - fn(x - 2 * h)) / (12 * h * h)


@settings(max_examples=200, deadline=None)
@given(forwards, st.floats(0.5, 2.0), st.floats(0.05, 2.0), st.floats(0.1, 2.0), rates, st.booleans())
def test_greeks_match_finite_differences(f, m, t, vol, r, call) -> None:
    k = f * m

    def by_f(x: float) -> float:
        return float(black76_price(x, k, t, vol, math.exp(-r * t), call))

    def by_t(x: float) -> float:
        return float(black76_price(f, k, x, vol, math.exp(-r * x), call))  # r fixed, D moves with T

    def by_vol(x: float) -> float:
        return float(black76_price(f, k, t, x, math.exp(-r * t), call))

    g = black76_greeks(f, k, t, vol, math.exp(-r * t), call)
    # normalised scales as above; total vol >= 0.022 here, so the stencils' truncation stays < 1e-7.
    assert _d1(by_f, f, 1e-3 * f) == pytest.approx(float(g.delta), abs=1e-7)
    assert _d2(by_f, f, 1e-3 * f) * f == pytest.approx(float(g.gamma) * f, abs=1e-5, rel=1e-6)
    assert _d1(by_vol, vol, 1e-4) / f == pytest.approx(float(g.vega) / f, abs=1e-7)
    assert -_d1(by_t, t, 1e-4 * t) * t / f == pytest.approx(float(g.theta) * t / f, abs=1e-7)  # time passing: -d/dT


def test_spot_delta_matches_finite_difference_in_spot() -> None:
    # F = S e^{(r - q) T}: dV/dS = dV/dF * F / S.
    s, r, q, t, k, vol = 100.0, 0.05, 0.02, 0.75, 105.0, 0.4
    d = float(discount_factor(r, t))

    def v(spot: float) -> float:
        return float(black76_price(forward_from_spot(spot, r, t, q), k, t, vol, d, True))

    f = forward_from_spot(s, r, t, q)
    g = black76_greeks(f, k, t, vol, d, True)
    fd = (v(s + 1e-3) - v(s - 1e-3)) / 2e-3
    assert float(spot_delta(g.delta, f, s)) == pytest.approx(fd, abs=1e-8)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(forwards, moneyness, expiries, vols, rates, st.booleans()), min_size=1, max_size=50),
)
def test_numba_kernel_equals_numpy_reference(rows) -> None:
    f, m, t, vol, r, c = (np.array(col) for col in zip(*rows, strict=True))
    k = f * m
    d = np.exp(-r * t)
    ref = black76_greeks(f, k, t, vol, d, c)
    price, delta, gamma = black76_price_delta_gamma(f, k, t, vol, d, c)
    # same formulas; only the CDF differs (math.erfc vs scipy's ndtr), by an ulp or so.
    np.testing.assert_allclose(price, ref.price, rtol=1e-12, atol=1e-14 * f.max())
    np.testing.assert_allclose(delta, ref.delta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gamma, ref.gamma, rtol=1e-12, atol=0)


def test_numba_kernel_equals_reference_on_the_grid() -> None:
    price, delta, gamma = black76_price_delta_gamma(FORWARD, K, T, V, D, CALL)
    ref = black76_greeks(FORWARD, K, T, V, D, CALL)
    # deep-tail premiums (< 1e-100) differ relatively by more: there the CDFs' own tails differ.
    np.testing.assert_allclose(price, ref.price, rtol=1e-12, atol=1e-15 * FORWARD)
    np.testing.assert_allclose(delta, ref.delta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gamma, ref.gamma, rtol=1e-12, atol=1e-15 / FORWARD)
