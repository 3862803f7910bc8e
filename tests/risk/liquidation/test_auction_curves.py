"""Dutch-auction maths against dss: abaci.sol's curves, ray rounding, Clipper status and keeper incentive.

Sources: makerdao/dss src/abaci.sol, src/clip.sol, src/test/abaci.t.sol (test_linear_decrease).
"""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PRICE_SCALE, QUOTE_SCALE, Rounding
from fluidmargin.risk.liquidation.auction import (
    RAY,
    AuctionParams,
    Curve,
    auction_status,
    curve_price,
    exponential_decrease,
    keeper_incentive,
    linear_decrease,
    needs_reset,
    price_q_from_ray,
    ray_from_price_q,
    rdiv,
    rmul,
    rpow,
    stairstep_exponential_decrease,
    start_price,
)

# --- published dss vector ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(11))
def test_linear_decrease_dss_vector(k: int) -> None:
    # dss src/test/abaci.t.sol test_linear_decrease: tau 3600, top 1000 RAY, 1/10 of top lost per 360 s
    assert linear_decrease(1000 * RAY, 3600, 360 * k) == (1000 - 100 * k) * RAY


def test_linear_decrease_is_zero_at_and_after_tau() -> None:
    assert linear_decrease(1000 * RAY, 3600, 3600) == 0
    assert linear_decrease(1000 * RAY, 3600, 10**9) == 0
    # 1 s in: the ray factor (3599 * RAY) // 3600 is floored, then rmul floors again
    assert linear_decrease(1000 * RAY, 3600, 1) == 1000 * ((3599 * RAY) // 3600)


# --- curve formulas at given times -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dur", "expected"),
    [
        pytest.param(0, 1000 * RAY, id="start"),
        pytest.param(89, 1000 * RAY, id="before-first-step"),
        pytest.param(90, 990 * RAY, id="one-step"),
        pytest.param(179, 990 * RAY, id="still-one-step"),
        pytest.param(180, 980 * RAY + RAY // 10, id="two-steps-980.1"),
    ],
)
def test_stairstep_exponential_decrease(dur: int, expected: int) -> None:
    # cut 0.99 RAY per 90 s step: 1000 * 0.99**2 = 980.1, exact in rays (0.9801 RAY has no rounding)
    assert stairstep_exponential_decrease(1000 * RAY, 99 * RAY // 100, 90, dur) == expected


def test_exponential_decrease_against_decimal() -> None:
    top, cut, dur = 1000 * RAY, 999 * RAY // 1000, 10
    with localcontext() as ctx:
        ctx.prec = 120  # far beyond the 31 digits of the result: the reference is exact to < 1e-80 wei
        exact = Decimal(top) * (Decimal(cut) / Decimal(RAY)) ** dur
    got = exponential_decrease(top, cut, dur)
    # Tolerance: rpow(cut, n) is within (n - 1) / 2 wei of cut**n / RAY**(n - 1) (half-up rounding at
    # each multiply, see rpow's docstring); rmul by top scales that by top / RAY and floors (< 1 more).
    bound = Decimal(top) / Decimal(RAY) * Decimal(dur - 1) / 2 + 1
    assert abs(Decimal(got) - exact) <= bound
    # and the value itself: 1000 * 0.999**10 = 990.04498...
    assert str(exact)[:10] == "9900448802"
    assert got // 10**22 == int(exact) // 10**22


@settings(max_examples=150, deadline=None)
@given(x=st.integers(0, RAY), n=st.integers(0, 300))
def test_rpow_error_bound(x: int, n: int) -> None:
    # |rpow(x, n) - x**n / RAY**(n-1)| <= (n - 1) / 2, compared exactly in integers
    got = rpow(x, n)
    if n == 0:
        assert got == RAY
        return
    scale = RAY ** (n - 1)
    assert 2 * abs(got * scale - x**n) <= (n - 1) * scale


def test_rpow_rounds_half_up_like_the_assembly() -> None:
    # base 10: 15 * 15 = 225 -> (225 + 5) // 10 = 23 (half up), a floor would give 22
    assert rpow(15, 2, 10) == 23
    assert rpow(15, 3, 10) == 35  # z = 15, x = 23: (15 * 23 + 5) // 10 = 35
    assert rpow(0, 0) == RAY  # n == 0 wins over x == 0, as in dss
    assert rpow(0, 5) == 0
    assert rpow(RAY, 10**6) == RAY
    with pytest.raises(ValidationError):
        rpow(2**128, 2, RAY)  # dss reverts: shr(128, x)


def test_rmul_rdiv_floor() -> None:
    assert rmul(3 * RAY, RAY // 2) == 3 * RAY // 2
    assert rmul(1, RAY - 1) == 0
    assert rdiv(1, 3) == RAY // 3
    assert rdiv(2 * RAY, 4 * RAY) == RAY // 2
    with pytest.raises(ValidationError):
        rdiv(1, 0)
    with pytest.raises(ValidationError):
        rmul(-1, RAY)
    with pytest.raises(ValidationError):
        rmul(2**200, 2**100)  # uint256 overflow: dss reverts


def test_cut_above_ray_and_zero_step_are_rejected() -> None:
    with pytest.raises(ValidationError):
        exponential_decrease(RAY, RAY + 1, 1)
    with pytest.raises(ValidationError):
        stairstep_exponential_decrease(RAY, RAY, 0, 1)


# --- monotone in time --------------------------------------------------------------------------------

_TOPS = st.integers(1, 10**12 * RAY)
_CUTS = st.one_of(st.integers(0, RAY), st.integers(RAY - 10**6, RAY))
_TIMES = st.integers(0, 20_000)


@settings(max_examples=200, deadline=None)
@given(top=_TOPS, tau=st.integers(1, 20_000), cut=_CUTS, step=st.integers(1, 600), t1=_TIMES, t2=_TIMES)
def test_prices_non_increasing_in_time(top: int, tau: int, cut: int, step: int, t1: int, t2: int) -> None:
    a, b = min(t1, t2), max(t1, t2)
    assert linear_decrease(top, tau, a) >= linear_decrease(top, tau, b)
    assert stairstep_exponential_decrease(top, cut, step, a) >= stairstep_exponential_decrease(top, cut, step, b)
    assert exponential_decrease(top, cut, a) >= exponential_decrease(top, cut, b)
    # every curve starts at top
    assert linear_decrease(top, tau, 0) == top
    assert stairstep_exponential_decrease(top, cut, step, 0) == top
    assert exponential_decrease(top, cut, 0) == top


# --- Clipper: start price, reset -------------------------------------------------------------------------


def test_start_price_and_price_conversions() -> None:
    oracle = ray_from_price_q(2_000 * PRICE_SCALE)  # 2000 quote per base unit
    assert oracle == 2_000 * RAY
    assert start_price(oracle, 12 * RAY // 10) == 2_400 * RAY  # buf 1.2
    assert price_q_from_ray(RAY + 1, Rounding.FLOOR) == PRICE_SCALE
    assert price_q_from_ray(RAY + 1, Rounding.CEIL) == PRICE_SCALE + 1
    with pytest.raises(ValidationError):
        start_price(1, RAY - 1)  # rmul floors to 0: Clipper/zero-top-price


TOP = 1000 * RAY
TAIL = 3600
CUSP = 4 * RAY // 10  # reset once the price is below 40 % of top


@pytest.mark.parametrize(
    ("price", "started_s", "now_s", "done"),
    [
        # State: price, start and now  |  Parameters: tail 3600 s, cusp 0.4  |  Expectation: reset?
        pytest.param(TOP, 100, 100, False, id="fresh"),
        pytest.param(500 * RAY, 100, 100 + TAIL, False, id="exactly-tail-old-is-live"),
        pytest.param(500 * RAY, 100, 101 + TAIL, True, id="one-second-past-tail"),
        pytest.param(400 * RAY, 100, 200, False, id="exactly-at-cusp-is-live"),
        pytest.param(400 * RAY - 1, 100, 200, True, id="one-wei-below-cusp"),
        pytest.param(0, 100, 200, True, id="price-zero"),
        pytest.param(100 * RAY, 100, 10 * TAIL, True, id="both"),
    ],
)
def test_needs_reset_table(price: int, started_s: int, now_s: int, done: bool) -> None:
    assert needs_reset(TOP, price, started_s, now_s, TAIL, CUSP) is done


def test_needs_reset_rejects_time_before_start() -> None:
    with pytest.raises(ValidationError):
        needs_reset(TOP, TOP, 200, 199, TAIL, CUSP)


# linear over 3600 s, cusp 0.5: the ratio is exactly 0.5 at 1800 s, below it from 1801 s
LINEAR = AuctionParams(RAY, 10_000, RAY // 2, 0, 0, Curve.LINEAR, tau_s=3600)
# stairstep 0.99 per 90 s, cusp 0.9801: still live after two steps (ratio exactly 0.9801)
STAIRSTEP = AuctionParams(
    RAY, 10_000, 9801 * RAY // 10_000, 0, 0, Curve.STAIRSTEP_EXPONENTIAL, cut_ray=99 * RAY // 100, step_s=90
)
# exponential 0.999 per second with a tiny cusp: the tail (600 s) decides
EXPONENTIAL = AuctionParams(RAY, 600, 1, 0, 0, Curve.EXPONENTIAL, cut_ray=999 * RAY // 1000)


@pytest.mark.parametrize(
    ("params", "elapsed", "done"),
    [
        pytest.param(LINEAR, 1800, False, id="linear-at-cusp"),
        pytest.param(LINEAR, 1801, True, id="linear-past-cusp"),
        pytest.param(STAIRSTEP, 269, False, id="stairstep-at-cusp"),
        pytest.param(STAIRSTEP, 270, True, id="stairstep-third-step"),
        pytest.param(EXPONENTIAL, 600, False, id="exp-at-tail"),
        pytest.param(EXPONENTIAL, 601, True, id="exp-past-tail"),
    ],
)
def test_auction_status(params: AuctionParams, elapsed: int, done: bool) -> None:
    started = 1_700_000_000
    got_done, price = auction_status(params, TOP, started, started + elapsed)
    assert got_done is done
    assert price == curve_price(params, TOP, elapsed)


def test_auction_params_validation() -> None:
    with pytest.raises(ValidationError):
        AuctionParams(RAY, 600, RAY, 0, 0, Curve.LINEAR)  # no tau
    with pytest.raises(ValidationError):
        AuctionParams(0, 600, RAY, 0, 0, Curve.EXPONENTIAL)  # buf 0
    with pytest.raises(ValidationError):
        AuctionParams(RAY, 600, RAY + 1, 0, 0, Curve.EXPONENTIAL)  # cusp > 1
    with pytest.raises(ValidationError):
        AuctionParams(RAY, -1, RAY, 0, 0, Curve.EXPONENTIAL)  # negative tail


# --- keeper incentive ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tab_quote_q", "chip_ppm", "tip_quote_q", "expected"),
    [
        # tab 10,000 USD, chip 0.1 %, tip 300 USD -> 10 + 300 USD
        pytest.param(10_000 * QUOTE_SCALE, 1_000, 300 * QUOTE_SCALE, 310 * QUOTE_SCALE, id="chip-and-tip"),
        pytest.param(10_000 * QUOTE_SCALE, 0, 300 * QUOTE_SCALE, 300 * QUOTE_SCALE, id="tip-only"),
        pytest.param(10_000 * QUOTE_SCALE, 1_000, 0, 10 * QUOTE_SCALE, id="chip-only"),
        pytest.param(1_999, 1_000, 0, 1, id="share-rounds-down"),
        pytest.param(0, 0, 0, 0, id="none"),
    ],
)
def test_keeper_incentive(tab_quote_q: int, chip_ppm: int, tip_quote_q: int, expected: int) -> None:
    assert keeper_incentive(tab_quote_q, chip_ppm, tip_quote_q) == expected


def test_keeper_incentive_rejects_negative() -> None:
    with pytest.raises(ValidationError):
        keeper_incentive(-1, 1_000, 0)
