"""Funding: Binance's rate clamp, the premium, and continuous accrual vs one discrete payment."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.units import FUNDING_SCALE, NS_PER_S, PRICE_SCALE, QUOTE_SCALE
from fluidmargin.model import events as ev
from fluidmargin.model.instruments import FundingParams
from fluidmargin.risk.perp.funding import (
    RATE_SCALE,
    accrue_fidx,
    accrue_fidx_carry,
    funding_owed_quote_q,
    funding_payment_quote_q,
    funding_rate_e9,
    premium_e9,
)
from fluidmargin.sim.venues import perp_venue
from support.desk import Desk, state_diff

INTERVAL_S = 8 * 3600
BINANCE = FundingParams(interval_s=INTERVAL_S, interest_e9=100_000, damper_e9=500_000, cap_e9=3_000_000)


@pytest.mark.parametrize(
    ("premium", "expected_rate"),
    [
        # Binance, "Introduction to Binance Futures Funding Rates": interest 0.01 %, damper +-0.05 %:
        # F = P + clamp(I - P, -0.05 %, 0.05 %)
        # P = 0.0429 %: I - P = -0.0329 % is inside the band, so F = I = 0.01 %
        pytest.param(429_000, 100_000, id="premium-0.0429%"),
        # P = 0.08 %: I - P = -0.07 % clamps to -0.05 %, F = 0.03 %
        pytest.param(800_000, 300_000, id="premium-0.08%"),
        # P = -0.10 %: I - P = 0.11 % clamps to 0.05 %, F = -0.05 %
        pytest.param(-1_000_000, -500_000, id="premium-minus-0.10%"),
        # P = 1 %: F = 1 % - 0.05 % = 0.95 %, capped at the 0.3 % BTCUSDT cap
        pytest.param(10_000_000, 3_000_000, id="capped-up"),
        pytest.param(-10_000_000, -3_000_000, id="capped-down"),
    ],
)
def test_binance_funding_clamp(premium: int, expected_rate: int) -> None:
    assert funding_rate_e9(premium, BINANCE) == expected_rate


@pytest.mark.parametrize(
    ("mark_q", "index_q", "expected"),
    [
        # (mark - index) / index at 1e9, rounded toward zero
        pytest.param(100_042_900_000, 100_000_000_000, 429_000, id="0.0429%"),
        pytest.param(99_900_000_000, 100_000_000_000, -1_000_000, id="minus-0.1%"),
        # 1/3 of a 1e-9 unit either way rounds to 0 (toward zero)
        pytest.param(3 * 10**9 + 1, 3 * 10**9, 0, id="tiny-up"),
        pytest.param(3 * 10**9 - 1, 3 * 10**9, 0, id="tiny-down"),
    ],
)
def test_premium_e9(mark_q: int, index_q: int, expected: int) -> None:
    assert premium_e9(mark_q, index_q) == expected


ACCRUAL_CASES = [
    # rate (1e-9 per interval), price (1e-8), size (base quantums), size decimals, steps over 8 h
    pytest.param(100_000, 6_000_000_000_000, 150_000_000, 8, 1, id="btc-long-one-step"),
    pytest.param(100_000, 6_000_000_000_000, 150_000_000, 8, 8, id="btc-long-hourly"),
    pytest.param(100_000, 6_000_000_000_000, 150_000_000, 8, 28_800, id="btc-long-per-second"),
    pytest.param(-370_000, 300_012_345_678, -2_500_000, 4, 28_800, id="eth-short-negative-rate"),
    pytest.param(3_000_000, 11_586_000, 437, 0, 480, id="doge-cap-rate-per-minute"),
    pytest.param(-8_000, 277_000_000, -30, 0, 28_800, id="ada-short"),
]


@pytest.mark.parametrize(("rate_e9", "price_q", "size", "sd", "steps"), ACCRUAL_CASES)
def test_continuous_accrual_equals_one_discrete_payment(
    rate_e9: int, price_q: int, size: int, sd: int, steps: int
) -> None:
    dt_ns = INTERVAL_S * NS_PER_S // steps
    assert dt_ns * steps == INTERVAL_S * NS_PER_S
    fidx = 0
    for _ in range(steps):
        fidx += accrue_fidx(rate_e9, price_q, dt_ns, INTERVAL_S)
    # the shared index only loses the part-unit of each step (floored): less than one 1e-12 per step
    exact_index = Fraction(rate_e9 * price_q * FUNDING_SCALE, RATE_SCALE * PRICE_SCALE)
    assert exact_index - steps < fidx <= exact_index
    owed = funding_owed_quote_q(size, fidx, 0, sd)
    discrete = funding_payment_quote_q(size, price_q, rate_e9, sd)
    # within one quantum, plus what the floored index steps lost on this size: steps * |size| * 1e-12
    # quote (zero-sum across longs and shorts, as they share the index). Here it is < 1 quantum
    # except for 250 ETH updated every second (7.2e-6 quote over 8 h).
    drift = Fraction(steps * abs(size) * QUOTE_SCALE, 10**sd * FUNDING_SCALE)
    assert abs(owed - discrete) <= 1 + drift
    # the discrete payment is the exact amount rounded up (payer pays the part-quantum)
    exact_q = Fraction(size * rate_e9 * price_q * QUOTE_SCALE, 10**sd * RATE_SCALE * PRICE_SCALE)
    assert exact_q <= discrete < exact_q + 1


@pytest.mark.parametrize("size", [7, -7], ids=["long", "short"])
def test_funding_settlement_favours_the_system(size: int) -> None:
    # owed rounds up: a long (payer at a positive index move) pays the part-quantum, a short forgoes it
    fidx = 1_234_567  # quote per base unit at 1e-12
    owed = funding_owed_quote_q(size, fidx, 0, 0)
    exact = Fraction(size * fidx * QUOTE_SCALE, FUNDING_SCALE)
    assert exact.denominator != 1
    assert owed == -((-exact.numerator) // exact.denominator)  # ceil
    assert owed + funding_owed_quote_q(-size, fidx, 0, 0) == 1  # the two sides leave one quantum behind


# --- the carried remainder: n small steps equal one big step, exactly ------------------------------


def _den(interval_s: int) -> int:
    """The index's remainder unit: 1/den of a 1e-12 quote per base unit (as accrue_fidx_carry divides)."""
    return RATE_SCALE * PRICE_SCALE * interval_s * NS_PER_S


@settings(max_examples=300, deadline=None)
@given(
    rate_e9=st.integers(-RATE_SCALE, RATE_SCALE),
    price_q=st.integers(1, 10**16),
    interval_s=st.sampled_from([3600, INTERVAL_S]),
    steps=st.lists(st.integers(1, 10**13), min_size=1, max_size=40),
    rem_frac=st.fractions(0, 1).filter(lambda f: f < 1),
)
def test_carry_many_small_steps_equal_one_big_step(
    rate_e9: int, price_q: int, interval_s: int, steps: list[int], rem_frac: Fraction
) -> None:
    den = _den(interval_s)
    rem0 = int(rem_frac * den)  # any carried remainder in [0, den)
    fidx, rem = 0, rem0
    for dt_ns in steps:
        inc, rem = accrue_fidx_carry(rate_e9, price_q, dt_ns, interval_s, rem)
        assert 0 <= rem < den
        fidx += inc
    one = accrue_fidx_carry(rate_e9, price_q, sum(steps), interval_s, rem0)
    assert (fidx, rem) == one
    # and both are the exact accrual, split into whole index units and the carried part
    exact = Fraction(rem0, den) + Fraction(rate_e9 * price_q * sum(steps) * FUNDING_SCALE, den)
    assert fidx + Fraction(rem, den) == exact
    # from no remainder, the increment is accrue_fidx's floor
    if rem0 == 0:
        assert fidx == accrue_fidx(rate_e9, price_q, sum(steps), interval_s)


def test_carry_engine_many_clock_steps_equal_one() -> None:
    """Two engines on the same prices: one advances the clock 480 times by 0.1 s, the other once by 48 s;
    each market's funding index and carried remainder are the same in the engine state."""
    small, big = Desk(perp_venue()), Desk(perp_venue())
    for d in (small, big):
        d.price("BTC", "50000.12345678")
        d.price("ETH", "3000.87654321")
    t0 = small.t
    assert big.t == t0
    step_ns = 100_000_001  # 0.1 s and 1 ns: each step's accrual leaves a remainder (checked below)
    n = 480
    for _ in range(n):
        out = small.clock(step_ns)
        assert not any(isinstance(e, ev.InputRejected) for e in out), out
    out = big.clock_to(t0 + n * step_ns)
    assert not any(isinstance(e, ev.InputRejected) for e in out), out
    assert small.t == big.t
    for ms, mb in zip(small.eng.markets, big.eng.markets, strict=True):
        assert ms.rate_e9 == mb.rate_e9 != 0 and ms.mark_q == mb.mark_q
        # one step's remainder is not zero, so dropping it would lose index units over the 480 steps
        assert accrue_fidx_carry(ms.rate_e9, ms.mark_q, step_ns, ms.spec.funding.interval_s, 0)[1] != 0
        assert (ms.fidx, ms.fidx_rem, ms.fidx_ts_ns) == (mb.fidx, mb.fidx_rem, mb.fidx_ts_ns)
        assert mb.fidx != 0
    assert state_diff(small.eng.state_dict()["markets"], big.eng.state_dict()["markets"]) == []
