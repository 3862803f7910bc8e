"""Partial liquidation sizing (risk.partial): the smallest close at the mark that lifts the bucket's
health to ``equity_after >= (1 + target) * MM_after``, under the project's exact rounding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.model.instruments import Bracket, BracketModel
from fluidmargin.risk.liquidation.partial import (
    bisect_close_size,
    cap_close,
    close_size_to_target,
    pick_order,
    reaches_target,
)
from fluidmargin.risk.perp import presets
from fluidmargin.risk.perp.margin import value_quote_q
from support.desk import px, usd

BINANCE = presets.binance_btcusdt()
HL = presets.hyperliquid(((0, 40), (10_000, 25), (50_000, 10), (100_000, 5), (300_000, 3)))
DRIFT = presets.drift("0.1", "0.05", "0.0005")
SD = 3  # BTC sizes in 0.001


def fixed_for(equity_usd: str, size: int, mark_usd: str) -> int:
    """The fixed equity that makes the bucket's equity at the mark ``equity_usd``."""
    return usd(equity_usd) - value_quote_q(size, px(mark_usd), SD, Rounding.FLOOR)


# --- tables ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    # state
    size: int  # base quantums (0.001 BTC)
    mark: str  # USD per BTC
    equity: str  # USD, equity at the mark
    other_mm: str  # USD
    # parameters
    model: BracketModel
    target_ppm: int
    fee_ppm: int
    # expectations
    close: int
    reached: bool


CASES = {
    # 1 BTC at 50,000: bracket 2 (0.5 %, cum 50), MM = 250 - 50 = 200; 240 >= 1.1 * 200 = 220: nothing to do
    "healthy-enough": Case(1_000, "50000", "240", "0", BINANCE, 100_000, 0, 0, True),
    # equity 180 < 220: remaining notional x < 50,000 -> bracket 1 (0.4 %): 180 >= 1.1 * 0.004 x
    # x <= 40,909.09 -> r <= 0.818 BTC (r = 0.819: 1.1 * 163.8 = 180.18 > 180): close 0.182
    "long-binance": Case(1_000, "50000", "180", "0", BINANCE, 100_000, 0, 182, True),
    "short-binance": Case(-1_000, "50000", "180", "0", BINANCE, 100_000, 0, -182, True),
    # fee 5 bp: 180 - 25 (1 - r) >= 220 r -> r <= 155 / 195 = 0.79487: close 0.206
    # (r = 0.795: 180 - 5.125 = 174.875 < 1.1 * 159 = 174.9)
    "long-fee": Case(1_000, "50000", "180", "0", BINANCE, 100_000, 500, 206, True),
    # 100 BTC, 5,000,000: bracket 4 (1 %, cum 11,450), MM 38,550; equity 30,000 >= 1.1 (0.01 x - 11,450)
    # x <= 3,872,272.7 (still bracket 4) -> r <= 77.445 (77.446: 1.1 * 27,273 = 30,000.3): close 22.555
    "same-bracket": Case(100_000, "50000", "30000", "0", BINANCE, 100_000, 0, 22_555, True),
    # equity 20,000: bracket 4 would need x <= 2,963,181.8 < 3M, so bracket 3 (0.65 %, cum 950):
    # x <= (20,000 / 1.1 + 950) / 0.0065 = 2,943,356.6 -> r <= 58.867 (58.868: 1.1 * 18,182.1 = 20,000.31)
    "cross-bracket": Case(100_000, "50000", "20000", "0", BINANCE, 100_000, 0, 41_133, True),
    # other positions hold 100 of MM: 180 >= 1.1 (100 + 200 r) -> r <= 0.31818: close 0.682
    "other-mm": Case(1_000, "50000", "180", "100", BINANCE, 100_000, 0, 682, True),
    # target 0 (plain maintenance): 180 >= 200 r -> r <= 0.9: close 0.1
    "target-zero": Case(1_000, "50000", "180", "0", BINANCE, 0, 0, 100, True),
    # bankrupt: equity -10 even after closing everything: the whole position, target not reached
    "bankrupt": Case(1_000, "50000", "-10", "0", BINANCE, 100_000, 0, 1_000, False),
    # fee 1 % costs more than the 0.44 % of MM it frees: closing only hurts, the whole position comes back
    # (after a full close the equity 180 - 500 is negative)
    "fee-too-high": Case(1_000, "50000", "180", "0", BINANCE, 100_000, 10_000, 1_000, False),
    # Hyperliquid 1/(2*40) = 1.25 %: 1 BTC at 50,000 -> third tier (50k: 5 %, cum 10,000*(2%-1.25%)
    # + 50,000*(5%-2%) = 75 + 1,500): MM = 2,500 - 1,575 = 925; equity 500, target 10 %:
    # tier 2 (2 %, cum 75): 500 >= 1.1 (0.02 x - 75) -> x <= 26,477.27 -> r <= 0.529: close 0.471
    "hyperliquid": Case(1_000, "50000", "500", "0", HL, 100_000, 0, 471, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_close_size_table(name: str) -> None:
    c = CASES[name]
    fixed = fixed_for(c.equity, c.size, c.mark)
    args = (c.model, c.size, SD, px(c.mark), fixed, usd(c.other_mm), c.target_ppm)
    got = close_size_to_target(*args, fee_ppm=c.fee_ppm)
    assert got == c.close
    assert reaches_target(*args, close_base_q=got, fee_ppm=c.fee_ppm) is c.reached
    if c.reached and got:
        step = 1 if got > 0 else -1
        assert not reaches_target(*args, close_base_q=got - step, fee_ppm=c.fee_ppm)


def test_drift_uses_bisection() -> None:
    # Drift: MM rate max(5 %, 4 % + sqrt(10 * size_1e9) * 0.0005 / 1e5 ...): closed form n/a, bisection exact
    size, mark = 10_000, "50000"  # 10 BTC, 500,000 notional
    fixed = fixed_for("20000", size, mark)
    args = (DRIFT, size, SD, px(mark), fixed, 0, 100_000)
    got = close_size_to_target(*args)
    assert got == bisect_close_size(*args)
    assert 0 < got < size
    assert reaches_target(*args, close_base_q=got)
    assert not reaches_target(*args, close_base_q=got - 1)


@dataclass(frozen=True)
class CapCase:
    size: int
    cap: str  # USD
    mark: str
    expected: int


CAP_CASES = {
    # 100,000 USD at 50,000 -> 2 BTC
    "capped": CapCase(5_000, "100000", "50000", 2_000),
    "short-capped": CapCase(-5_000, "100000", "50000", -2_000),
    # 60,025 USD: 1.2005 BTC -> 1.200 (ceil notional 60,000 <= cap; 1.201 -> 60,050 > cap)
    "rounds-down": CapCase(5_000, "60025", "50000", 1_200),
    "under-cap": CapCase(1_000, "100000", "50000", 1_000),
    # 10 USD buys less than 0.001 BTC: still one quantum, so a liquidation always progresses
    "one-quantum": CapCase(1_000, "10", "50000", 1),
    "zero": CapCase(0, "10", "50000", 0),
}


@pytest.mark.parametrize("name", list(CAP_CASES))
def test_cap_close_table(name: str) -> None:
    c = CAP_CASES[name]
    assert cap_close(c.size, usd(c.cap), px(c.mark), SD) == c.expected


def test_pick_order() -> None:
    # largest maintenance first; ties by market index
    assert pick_order([(3, 100), (1, 500), (2, 100), (0, 50)]) == [(1, 500), (2, 100), (3, 100), (0, 50)]
    assert pick_order([]) == []


def test_bad_inputs() -> None:
    with pytest.raises(ValidationError):
        close_size_to_target(BINANCE, 1_000, SD, 0, 0, 0, 100_000)
    with pytest.raises(ValidationError):
        close_size_to_target(BINANCE, 1_000, SD, px("1"), 0, 0, -1)
    with pytest.raises(ValidationError):
        reaches_target(BINANCE, 1_000, SD, px("1"), 0, 0, 0, close_base_q=-1)
    with pytest.raises(ValidationError):
        cap_close(1, -1, px("1"), SD)


# --- properties ------------------------------------------------------------------------------------


@st.composite
def bracket_models(draw: st.DrawFn) -> BracketModel:
    """Continuous increasing brackets (cum as Hyperliquid/Binance build it), or a preset."""
    kind = draw(st.sampled_from(["random", "binance", "hyperliquid", "dydx", "drift"]))
    if kind == "binance":
        return BINANCE
    if kind == "hyperliquid":
        return HL
    if kind == "dydx":
        return presets.dydx("0.05", "0.6")
    if kind == "drift":
        return DRIFT
    n = draw(st.integers(1, 5))
    floors = sorted(draw(st.sets(st.integers(1, 5_000_000), min_size=n - 1, max_size=n - 1)))
    rates = sorted(draw(st.sets(st.integers(1_000, 200_000), min_size=n, max_size=n)))
    out, cum = [Bracket(0, rates[0], 0, 10)], 0
    for f, m, prev in zip(floors, rates[1:], rates[:-1], strict=True):
        cum += div_round(usd(f) * (m - prev), PPM, Rounding.FLOOR)
        out.append(Bracket(usd(f), m, cum, 10))
    close_fee = draw(st.sampled_from([0, 0, 500]))
    return BracketModel("random", tuple(out), close_fee_ppm=close_fee)


@st.composite
def states(draw: st.DrawFn, fee: bool = True) -> tuple[BracketModel, int, int, int, int, int, int, int]:
    model = draw(bracket_models())
    sd = draw(st.integers(0, 6))
    size = draw(st.integers(1, 200_000)) * draw(st.sampled_from([1, -1]))
    mark = draw(st.integers(px("0.5"), px("100000")))
    notional = abs(value_quote_q(size, mark, sd, Rounding.CEIL))
    equity = draw(st.integers(-notional // 50, notional // 5 + 1))
    fixed = equity - value_quote_q(size, mark, sd, Rounding.FLOOR)
    other_mm = draw(st.integers(0, max(notional // 100, 0)))
    target = draw(st.integers(0, 500_000))
    fee_ppm = draw(st.sampled_from([0, 200, 500, 1_000])) if fee else 0
    return model, size, sd, mark, fixed, other_mm, target, fee_ppm


@settings(max_examples=300, deadline=None)
@given(states())
def test_lands_on_target_and_is_minimal(s: tuple[BracketModel, int, int, int, int, int, int, int]) -> None:
    model, size, sd, mark, fixed, other_mm, target, fee = s
    args = (model, size, sd, mark, fixed, other_mm, target)
    got = close_size_to_target(*args, fee_ppm=fee)
    assert abs(got) <= abs(size) and got * size >= 0
    if reaches_target(*args, close_base_q=got, fee_ppm=fee):
        if got:
            one = 1 if size > 0 else -1
            assert not reaches_target(*args, close_base_q=got - one, fee_ppm=fee)
    else:
        assert got == size  # cannot be reached: the whole position


@settings(max_examples=300, deadline=None)
@given(states(fee=False))
def test_closed_form_agrees_with_bisection(s: tuple[BracketModel, int, int, int, int, int, int, int]) -> None:
    model, size, sd, mark, fixed, other_mm, target, _ = s
    args = (model, size, sd, mark, fixed, other_mm, target)
    assert close_size_to_target(*args) == bisect_close_size(*args)


@settings(max_examples=100, deadline=None)
@given(states(fee=False), st.integers(1, 300))
def test_global_minimum_brute_force(s: tuple[BracketModel, int, int, int, int, int, int, int], n: int) -> None:
    """Without a fee the target is monotone in the close: no smaller close meets it."""
    model, size, sd, mark, fixed, other_mm, target, _ = s
    size = n if size > 0 else -n
    fixed = fixed + value_quote_q(s[1], mark, sd, Rounding.FLOOR) - value_quote_q(size, mark, sd, Rounding.FLOOR)
    args = (model, size, sd, mark, fixed, other_mm, target)
    got = close_size_to_target(*args)
    one = 1 if size > 0 else -1
    first = next((q * one for q in range(n + 1) if reaches_target(*args, close_base_q=q * one)), size)
    assert got == first
