"""ADL ranking and fills, liquidation impact (square root and book walk), index circuit breakers.

ADL source: BitMEX "What is Auto-Deleveraging" and bitmex.com/app/autoDeleveragingExamples (the
six-long worked example is reproduced below).
"""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.liquidation.adl import AdlCandidate, AdlFill, adl_lights, adl_queue, adl_score, deleverage
from fluidmargin.risk.liquidation.breaker import divergence_halt, range_halt
from fluidmargin.risk.liquidation.impact import Side, isqrt_ceil_ratio, sqrt_impact_price_q, walk_book

# --- ADL: scores ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upnl", "entry", "mark", "equity", "score"),
    [
        # pnl% = 2000/10000 = 0.2, leverage = 12000/3000 = 4 -> 0.2 * 4 = 0.8
        (2_000, 10_000, 12_000, 3_000, Fraction(4, 5)),
        # pnl% = 1000/20000 = 0.05, leverage = 21000/3500 = 6 -> 0.3
        (1_000, 20_000, 21_000, 3_500, Fraction(3, 10)),
        # loss: pnl% = -3000/30000 = -0.1, leverage = 27000/9000 = 3 -> -0.1 / 3 = -1/30
        (-3_000, 30_000, 27_000, 9_000, Fraction(-1, 30)),
        (0, 5_000, 5_000, 1_000, Fraction(0)),
    ],
)
def test_adl_score_table(upnl: int, entry: int, mark: int, equity: int, score: Fraction) -> None:
    assert adl_score(upnl, entry, mark, equity) == score


def test_adl_score_rejects_bankrupt_or_empty() -> None:
    with pytest.raises(ValidationError):
        adl_score(1, 100, 100, 0)
    with pytest.raises(ValidationError):
        adl_score(1, 0, 100, 10)


# --- ADL: queue, lights, fills --------------------------------------------------------------------

THREE = [
    AdlCandidate(3, 30, -3_000, 30_000, 27_000, 9_000),  # score -1/30
    AdlCandidate(1, 10, 2_000, 10_000, 12_000, 3_000),  # score 0.8
    AdlCandidate(2, 20, 1_000, 20_000, 21_000, 3_500),  # score 0.3
    AdlCandidate(4, -50, 9_000, 10_000, 10_000, 1_000),  # short: same side as the bankrupt short, excluded
]


def test_adl_three_counterparties_ranked_and_filled() -> None:
    queue = adl_queue(THREE, bankrupt_size_base_q=-25)  # a bankrupt short: longs deleveraged
    assert [r.account_id for r in queue] == [1, 2, 3]
    # total 60: cum 10 -> ceil(5*10/60)=1 -> 5 lights; cum 30 -> ceil(150/60)=3 -> 3; cum 60 -> 5 -> 1
    assert [r.lights for r in queue] == [5, 3, 1]
    assert adl_lights(queue, 2) == 3
    assert adl_lights(queue, 4) == 0  # not a counterparty
    fills, rest = deleverage(queue, 25, bankruptcy_price_q=650)
    # 25 = 10 (all of account 1) + 15 (part of account 2's 20); account 3 untouched
    assert fills == (AdlFill(1, 10, -10, 650), AdlFill(2, 15, -15, 650))
    assert rest == 0
    fills, rest = deleverage(queue, 70, 650)  # more than the queue holds: 60 filled, 10 left
    assert sum(f.reduction_base_q for f in fills) == 60 and rest == 10


def test_adl_shorts_deleveraged_against_a_bankrupt_long() -> None:
    queue = adl_queue(THREE, bankrupt_size_base_q=7)
    assert [r.account_id for r in queue] == [4]
    assert queue[0].lights == 1  # BitMEX's rule is quantity-weighted: a sole position is the 100th percentile
    assert deleverage(queue, 7, 900) == ((AdlFill(4, 7, 7, 900),), 0)  # a short is reduced by buying


def test_adl_ties_broken_by_notional_then_account_id() -> None:
    same = dict(upnl_quote_q=1_000, entry_notional_quote_q=10_000, equity_quote_q=1_000)
    cands = [
        # scores: 0.1 * (mark/1000)
        AdlCandidate(7, 5, mark_notional_quote_q=10_000, **same),  # 0.1 * 10 = 1
        AdlCandidate(5, 5, mark_notional_quote_q=10_000, **same),  # 1, same notional: id 5 before 7
        AdlCandidate(9, 5, mark_notional_quote_q=20_000, upnl_quote_q=500, entry_notional_quote_q=10_000,
                     equity_quote_q=2_000),  # 0.05 * 10 = 0.5
        AdlCandidate(8, 5, mark_notional_quote_q=20_000, upnl_quote_q=2_000, entry_notional_quote_q=20_000,
                     equity_quote_q=2_000),  # 0.1 * 10 = 1, larger notional: first
    ]  # fmt: skip
    queue = adl_queue(cands, -1)
    assert [r.account_id for r in queue] == [8, 5, 7, 9]
    assert adl_queue(list(reversed(cands)), -1) == queue  # input order does not matter
    with pytest.raises(ValidationError):
        adl_queue([cands[0], cands[0]], -1)


def test_adl_bitmex_worked_example() -> None:
    # BitMEX: six longs (account, quantity, PNL ranking): leverage 1 so score = upnl / 100
    table = [(1, 10, 3), (2, 10, 6), (3, 20, 1), (4, 30, 4), (5, 20, 5), (6, 10, 2)]
    cands = [AdlCandidate(a, q, 100 * s, 100, 1_000, 1_000) for a, q, s in table]
    queue = adl_queue(cands, -20)
    assert [r.account_id for r in queue] == [2, 5, 4, 1, 6, 3]
    # cumulative 10, 30, 60, 70, 80, 100 of 100 -> percentiles 20, 40, 60, 80, 80, 100 %
    assert [r.lights for r in queue] == [5, 4, 3, 2, 2, 1]
    # short of 20 bankrupt at 650: account 2 closes all 10, account 5 closes 10 of its 20
    fills, rest = deleverage(queue, 20, 650)
    assert [(f.account_id, f.reduction_base_q) for f in fills] == [(2, 10), (5, 10)] and rest == 0


candidates_st = st.lists(
    st.builds(
        AdlCandidate,
        account_id=st.integers(0, 10**6),
        size_base_q=st.integers(1, 10**6),
        upnl_quote_q=st.integers(-(10**9), 10**9),
        entry_notional_quote_q=st.integers(1, 10**9),
        mark_notional_quote_q=st.integers(1, 10**9),
        equity_quote_q=st.integers(1, 10**9),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda c: c.account_id,
)


@settings(max_examples=200, deadline=None)
@given(cands=candidates_st, frac=st.fractions(0, 1))
def test_adl_fill_sum_equals_size_needed(cands: list[AdlCandidate], frac: Fraction) -> None:
    queue = adl_queue(cands, -1)
    total = sum(c.size_base_q for c in cands)
    needed = int(frac * total)
    fills, rest = deleverage(queue, needed, 100)
    assert rest == 0 and sum(f.reduction_base_q for f in fills) == needed
    # in queue order, every fill but the last closes the whole position
    assert [f.account_id for f in fills] == [r.account_id for r in queue[: len(fills)]]
    for f, r in zip(fills[:-1], queue, strict=False):
        assert f.reduction_base_q == r.size_base_q
    # the order is by score, descending; lights never increase down the queue
    assert all(a.score >= b.score for a, b in pairwise(queue))
    assert all(a.lights >= b.lights for a, b in pairwise(queue))
    assert queue[0].lights == 6 - -(-5 * queue[0].size_base_q // total)  # 6 - ceil(5 * size / total)
    assert queue[-1].lights == 1


# --- impact: square root --------------------------------------------------------------------------

MARK = 10_000_000_000  # 100.00000000


@pytest.mark.parametrize(
    ("size", "side", "price"),
    [
        # 1.0 * 5 % * sqrt(1/100) = 0.5 % of 100 = 0.5 -> 50_000_000 price quantums
        (1, Side.SELL, 9_950_000_000),
        (1, Side.BUY, 10_050_000_000),
        # 5 % * sqrt(2/100) * 100 = 0.70710678118... -> 70_710_678.118 rounded up to 70_710_679
        (2, Side.SELL, 9_929_289_321),
        (2, Side.BUY, 10_070_710_679),
        (0, Side.SELL, MARK),
    ],
)
def test_sqrt_impact_table(size: int, side: Side, price: int) -> None:
    assert sqrt_impact_price_q(MARK, side, size, 100, sigma_ppm=50_000, coefficient_ppm=1_000_000) == price


def test_isqrt_ceil_ratio() -> None:
    assert [isqrt_ceil_ratio(n, 1) for n in (0, 1, 2, 4, 5, 9, 10)] == [0, 1, 2, 2, 3, 3, 4]
    assert isqrt_ceil_ratio(1, 4) == 1  # sqrt(0.25) = 0.5 -> 1
    assert isqrt_ceil_ratio(9, 4) == 2  # 1.5 -> 2
    assert isqrt_ceil_ratio(16, 4) == 2  # exactly 2


@settings(max_examples=200, deadline=None)
@given(
    mark=st.integers(1, 10**13),
    a=st.integers(0, 10**9),
    b=st.integers(0, 10**9),
    vol=st.integers(1, 10**12),
    sigma=st.integers(0, 500_000),
    coef=st.integers(0, 3_000_000),
)
def test_sqrt_impact_monotone_and_never_better_than_mark(
    mark: int, a: int, b: int, vol: int, sigma: int, coef: int
) -> None:
    small, big = sorted((a, b))
    sells = [sqrt_impact_price_q(mark, Side.SELL, s, vol, sigma, coef) for s in (small, big)]
    buys = [sqrt_impact_price_q(mark, Side.BUY, s, vol, sigma, coef) for s in (small, big)]
    assert mark >= sells[0] >= sells[1] >= 0
    assert mark <= buys[0] <= buys[1]
    # rounding against the taker: the buy move is at least the exact move
    exact = Fraction(mark * coef * sigma, 10**12) ** 2 * Fraction(big, vol)
    assert (buys[1] - mark) ** 2 >= exact


# --- impact: book walk ----------------------------------------------------------------------------


def test_walk_book_table() -> None:
    bids = [(990, 10), (1001, 5), (999, 10)]
    # sell 18 at mark 1000: 5 @ min(1001, 1000) + 10 @ 999 + 3 @ 990 = 5000 + 9990 + 2970 = 17960
    # 17960 / 18 = 997.77... rounded down (against the seller) -> 997
    f = walk_book(bids, Side.SELL, 18, 1000)
    assert (f.avg_price_q, f.filled_base_q, f.unfilled_base_q) == (997, 18, 0)
    # buy 10 against 7 of asks: 3 @ 1002 + 4 @ 1005 = 3006 + 4020 = 7026; / 7 = 1003.71 -> 1004; 3 unfilled
    f = walk_book([(1005, 4), (1002, 3)], Side.BUY, 10, 1000)
    assert (f.avg_price_q, f.filled_base_q, f.unfilled_base_q) == (1004, 7, 3)
    assert walk_book([], Side.SELL, 5, 1000).avg_price_q is None
    with pytest.raises(ValidationError):
        walk_book([(0, 1)], Side.SELL, 1, 1000)


levels_st = st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 10**4)), max_size=10)


@settings(max_examples=200, deadline=None)
@given(levels=levels_st, a=st.integers(0, 10**5), b=st.integers(0, 10**5), mark=st.integers(1, 10**6))
def test_walk_book_monotone_and_never_better_than_mark(
    levels: list[tuple[int, int]], a: int, b: int, mark: int
) -> None:
    small, big = sorted((a, b))
    for side in (Side.SELL, Side.BUY):
        f_small, f_big = walk_book(levels, side, small, mark), walk_book(levels, side, big, mark)
        for f, size in ((f_small, small), (f_big, big)):
            assert f.filled_base_q + f.unfilled_base_q == size
            assert f.filled_base_q <= sum(q for _, q in levels)
        if f_small.avg_price_q is None or f_big.avg_price_q is None:
            continue
        if side is Side.SELL:
            assert mark >= f_small.avg_price_q >= f_big.avg_price_q
        else:
            assert mark <= f_small.avg_price_q <= f_big.avg_price_q


# --- circuit breakers -----------------------------------------------------------------------------


def test_range_halt_table() -> None:
    window = [(0, 100), (10, 104), (20, 101)]
    # over 100 ns: (104 - 100) / 100 = 4 % > 3 %
    assert range_halt(window, band_ppm=30_000, window_ns=100)[0] is True
    # over 15 ns (ts >= 5): (104 - 101) / 101 = 2.97 % <= 3 %
    assert range_halt(window, band_ppm=30_000, window_ns=15) == (False, "within band")
    # exactly at the band: 3 / 100 = 3 % is not above 3 %
    assert range_halt([(0, 100), (1, 103)], 30_000, 10)[0] is False
    assert range_halt([], 30_000, 10) == (False, "no prices")


def test_divergence_halt_table() -> None:
    prices = {"a": 100, "b": 101, "c": 110}
    # median 101; c deviates 9 / 101 = 8.9 %
    halted, reason = divergence_halt(prices, band_ppm=50_000)
    assert halted and "source c" in reason
    assert divergence_halt(prices, band_ppm=100_000) == (False, "sources agree")
    # even count: median (100 + 104) // 2 = 102; max deviation 2 / 102 = 1.96 %
    assert divergence_halt({"x": 100, "y": 104}, 19_607)[0] is True
    assert divergence_halt({"x": 100, "y": 104}, 19_608)[0] is False


@settings(max_examples=300, deadline=None)
@given(
    window=st.lists(st.tuples(st.integers(0, 1_000), st.integers(1, 10**6)), max_size=15),
    band=st.integers(0, 200_000),
    window_ns=st.integers(0, 1_000),
)
def test_range_halt_iff_range_exceeds_band(window: list[tuple[int, int]], band: int, window_ns: int) -> None:
    halted, _ = range_halt(window, band, window_ns)
    if not window:
        assert not halted
        return
    latest = max(ts for ts, _ in window)
    inside = [p for ts, p in window if latest - ts <= window_ns]
    assert halted == (Fraction(max(inside), min(inside)) - 1 > Fraction(band, 10**6))
