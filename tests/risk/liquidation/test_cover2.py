"""Cover-2 insurance-fund sizing: a hand-computed book, edge cases, refused input, and the float screen with
exact confirmation against the plain-Python reference on random books."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.risk.liquidation import cover2 as c2
from fluidmargin.risk.liquidation.cover2 import (
    Cover2Book,
    Cover2Figure,
    Scenarios,
    accounts_book,
    cover2,
    cover2_reference,
    joint_scenarios,
    make_book,
    make_scenarios,
    market_shocks,
)

USD = 10**6  # quote quantums per USD
COIN = 10**8  # base quantums per coin (size_decimals 8)
PX = 10**8  # price quantums per USD
MARKETS = ("BTC-PERP", "ETH-PERP")


def both(book: Cover2Book, sc: Scenarios, top: int = 5) -> c2.Cover2Result:
    """The screened result, checked equal to the reference (serial and threaded screens alike)."""
    ref = cover2_reference(book, sc, top)
    for parallel in (False, True):
        assert cover2(book, sc, top, parallel=parallel) == ref
    return ref


# --- the hand-computed example -------------------------------------------------------------------------


def hand_book() -> Cover2Book:
    """Seven accounts on BTC-PERP (mark 50,000 USD) and ETH-PERP (mark 2,000 USD).

    account  bucket                          equity (USD)
    1  A     cross: long 1 BTC                     8,000
    2  B     cross: short 1 BTC                    7,000
    3  C     cross: long 10 ETH, short 0.5 BTC     4,000
    4  D     cross: long 20 ETH                    9,000
    5  E     isolated: long 0.5 BTC                2,500   (its isolated margin)
             cross: short 10 ETH                   1,000
    6  F     cross: long 1 BTC                    20,000
    7  G     cross: long 1 BTC, long 10 ETH       12,000
    """
    ids = [1, 2, 3, 4, 5, 6, 7]
    # buckets 0-6: each account's cross bucket; bucket 7: E's isolated BTC position
    owner = [0, 1, 2, 3, 4, 5, 6, 4]
    equity = [8_000, 7_000, 4_000, 9_000, 1_000, 20_000, 12_000, 2_500]
    positions = [  # (bucket, market, size in coins)
        (0, 0, 1.0),
        (1, 0, -1.0),
        (2, 1, 10.0),
        (2, 0, -0.5),
        (3, 1, 20.0),
        (7, 0, 0.5),
        (4, 1, -10.0),
        (5, 0, 1.0),
        (6, 0, 1.0),
        (6, 1, 10.0),
    ]
    return make_book(
        ids,
        owner,
        [e * USD for e in equity],
        [p[0] for p in positions],
        [p[1] for p in positions],
        [round(p[2] * COIN) for p in positions],
        MARKETS,
        [50_000 * PX, 2_000 * PX],
        [8, 8],
    )


def hand_scenarios() -> Scenarios:
    shocks = market_shocks(
        MARKETS, {"BTC-PERP": 200_000, "ETH-PERP": 300_000}, {"BTC-PERP": 200_000, "ETH-PERP": 300_000}
    )
    return shocks + joint_scenarios(MARKETS, {"crash": {"BTC-PERP": -200_000, "ETH-PERP": -300_000}})


def test_hand_computed_example() -> None:
    """A BTC move of 20 % is 10,000 USD a coin, an ETH move of 30 % 600 USD a coin. Uncovered losses (USD):

    scenario (index)   A      B      C      D      E              F   G       Cover-2
    BTC:up   (0)       gain   3,000  1,000  -      0 (iso gains)  -   gain    B + C = 4,000
    BTC:down (1)       2,000  gain   gain   -      2,500 (iso)    0   0       E + A = 4,500
    ETH:up   (2)       -      -      gain   gain   5,000 (cross)  -   gain    E     = 5,000
    ETH:down (3)       -      -      2,000  3,000  gain           -   0       D + C = 5,000
    crash    (4)       2,000  gain   0      3,000  2,500          0   4,000   G + D = 7,000

    B up: 10,000 - 7,000. C up: 0.5 x 10,000 - 4,000. A down: 10,000 - 8,000. E down: its isolated bucket
    5,000 - 2,500. E up on ETH: its cross bucket 6,000 - 1,000. C down on ETH: 6,000 - 4,000. D: 12,000 -
    9,000. F: 10,000 < 20,000. G: 10,000 < 12,000 and 6,000 < 12,000 alone, 16,000 - 12,000 in the crash.
    In the crash C's short BTC (+5,000) offsets its ETH loss (-6,000) within its cross bucket: 1,000 <
    4,000, covered; E's cross gain on its short ETH does not help its ring-fenced isolated BTC: 2,500.

    BTC-PERP: max(4,000, 4,500) = 4,500 (BTC:down; E, A). ETH-PERP: 5,000 twice, the first scenario wins
    (ETH:up; E alone). Venue: max over all = 7,000 (crash; G, D; then E 2,500, A 2,000).
    """
    res = both(hand_book(), hand_scenarios())
    assert res.venue == Cover2Figure(
        7_000 * USD, "crash", 4, (7, 4), ((7, 4_000 * USD), (4, 3_000 * USD), (5, 2_500 * USD), (1, 2_000 * USD))
    )
    assert res.per_market == {
        "BTC-PERP": Cover2Figure(4_500 * USD, "BTC-PERP:down", 1, (5, 1), ((5, 2_500 * USD), (1, 2_000 * USD))),
        "ETH-PERP": Cover2Figure(5_000 * USD, "ETH-PERP:up", 2, (5,), ((5, 5_000 * USD),)),
    }


def test_hand_example_scenario_by_scenario() -> None:
    """Each scenario alone is its market's (or the venue's) figure: the table's rows one by one."""
    book, sc = hand_book(), hand_scenarios()
    expect = {0: (4_000, (2, 3)), 1: (4_500, (5, 1)), 2: (5_000, (5,)), 3: (5_000, (4, 3)), 4: (7_000, (7, 4))}
    for s, (usd, accounts) in expect.items():
        one = make_scenarios(MARKETS, [sc.names[s]], sc.moves_ppm[s : s + 1], [sc.single[s]])
        v = both(book, one).venue
        assert (v.fund_quote_q, v.accounts) == (usd * USD, accounts)


def test_top_lists_what_is_asked() -> None:
    res = both(hand_book(), hand_scenarios(), top=3)
    assert res.venue.top == ((7, 4_000 * USD), (4, 3_000 * USD), (5, 2_500 * USD))
    assert both(hand_book(), hand_scenarios(), top=2).venue.top == ((7, 4_000 * USD), (4, 3_000 * USD))


# --- rounding and edge cases ---------------------------------------------------------------------------


def test_losses_round_up_gains_down() -> None:
    """3 base quantums at 33,333.33333333 USD (1e-8 BTC), a 1 ppm fall: 3 x 3,333,333,333,333 / 1e16 =
    0.0009999999999999 quote quantums: a loss of 1 quantum (rounded up); the same short gains 0 (down)."""
    book = accounts_book([1, 2], [0, 0], [0, 1], [0, 0], [3, -3], ("BTC-PERP",), [3_333_333_333_333], [8])
    sc = make_scenarios(("BTC-PERP",), ["down"], [[-1]])
    res = both(book, sc)
    assert res.venue.top == ((1, 1),)
    assert res.venue.fund_quote_q == 1


def test_no_positions_no_accounts() -> None:
    sc = market_shocks(MARKETS, 100_000, 100_000)
    empty = make_book([], [], [], [], [], [], MARKETS, [PX, PX], [8, 8])
    res = both(empty, sc)
    assert res.venue == Cover2Figure(0, "BTC-PERP:up", 0, (), ())
    assert set(res.per_market) == set(MARKETS)
    flat = accounts_book([10, 11], [5 * USD, 0], [], [], [], MARKETS, [PX, PX], [8, 8])
    assert both(flat, sc).venue.fund_quote_q == 0


def test_one_account() -> None:
    book = accounts_book([42], [1_000 * USD], [0], [0], [COIN], MARKETS, [10_000 * PX, PX], [8, 8])
    res = both(book, market_shocks(MARKETS, 500_000, 500_000))
    # long 1 coin at 10,000: a 50 % fall loses 5,000 against 1,000 of equity
    assert res.venue == Cover2Figure(4_000 * USD, "BTC-PERP:down", 1, (42,), ((42, 4_000 * USD),))
    assert res.per_market["ETH-PERP"].fund_quote_q == 0


def test_ties_go_to_book_order() -> None:
    """Three accounts lose the same; the first two in the book make the figure, whatever their ids."""
    book = accounts_book([30, 10, 20], [0, 0, 0], [0, 1, 2], [0, 0, 0], [COIN] * 3, ("X",), [100 * PX], [8])
    res = both(book, market_shocks(("X",), 100_000, 100_000))
    assert res.venue.accounts == (30, 10)
    assert res.venue.top == ((30, 10 * USD), (10, 10 * USD), (20, 10 * USD))


def test_equity_that_covers_leaves_nothing() -> None:
    """Equity exactly the loss: uncovered 0; one quantum less: 1."""
    loss = 10 * USD  # 1 coin at 100 USD, 10 % fall
    book = accounts_book([1, 2], [loss, loss - 1], [0, 1], [0, 0], [COIN, COIN], ("X",), [100 * PX], [8])
    res = both(book, market_shocks(("X",), 100_000, 100_000))
    assert res.venue.top == ((2, 1),)


def test_negative_equity_counts_without_a_move() -> None:
    """A bucket already below zero leaves its deficit to the fund even in a scenario that moves nothing."""
    book = accounts_book([1, 2, 3], [-7, -5, 4], [], [], [], ("X",), [PX], [8])
    res = both(book, make_scenarios(("X",), ["still"], [[0]]))
    assert (res.venue.fund_quote_q, res.venue.accounts) == (12, (1, 2))


def test_joint_scenario_of_one_market_counts_venue_wide_only() -> None:
    book = accounts_book([1], [0], [0], [0], [COIN], MARKETS, [100 * PX, PX], [8, 8])
    sc = joint_scenarios(MARKETS, {"btc only": {"BTC-PERP": -100_000}})
    res = both(book, sc)
    assert res.per_market == {} and res.venue.fund_quote_q == 10 * USD


# --- refused input -------------------------------------------------------------------------------------


def test_bad_shocks_refused() -> None:
    with pytest.raises(ValidationError, match="NaN"):
        market_shocks(MARKETS, float("nan"), 100_000)
    with pytest.raises(ValidationError, match="outside"):
        market_shocks(MARKETS, 100_000, -5)  # a shock is a magnitude
    with pytest.raises(ValidationError, match="outside"):
        market_shocks(MARKETS, 100_000, 1_000_001)  # a fall beyond 100 %
    with pytest.raises(ValidationError, match="unknown market 'SOL-PERP'"):
        market_shocks(MARKETS, {"BTC-PERP": 1, "ETH-PERP": 1, "SOL-PERP": 1}, 1)
    with pytest.raises(ValidationError, match="no shock for market 'ETH-PERP'"):
        market_shocks(MARKETS, {"BTC-PERP": 1}, 1)
    with pytest.raises(ValidationError, match="unknown market 'DOGE'"):
        joint_scenarios(MARKETS, {"x": {"DOGE": -1}})
    with pytest.raises(ValidationError, match="NaN"):
        make_scenarios(MARKETS, ["a"], [[float("inf"), 0.0]])
    with pytest.raises(ValidationError, match="shape"):
        make_scenarios(MARKETS, ["a", "b"], [[1, 2]])
    with pytest.raises(ValidationError, match="moves other markets"):
        make_scenarios(MARKETS, ["a"], [[1, 2]], [0])
    with pytest.raises(ValidationError, match="given twice"):
        make_scenarios(MARKETS, ["a", "a"], [[1, 2], [1, 2]])
    # a float move is whole ppm, rounded away from zero (more severe)
    assert make_scenarios(MARKETS, ["a"], [[1.2, -1.2]]).moves_ppm.tolist() == [[2, -2]]


def _good() -> dict[str, object]:
    return {
        "account_ids": [1, 2],
        "bucket_owner": [0, 1],
        "bucket_equity_quote_q": [10, 20],
        "pos_bucket": [0, 1],
        "pos_market": [0, 1],
        "pos_size_base_q": [5, -5],
        "markets": MARKETS,
        "mark_price_q": [PX, PX],
        "size_decimals": [8, 8],
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pos_market": [0, 2]}, "unknown market index 2"),
        ({"pos_market": [0, -1]}, "unknown market index -1"),
        ({"pos_size_base_q": [5]}, "different lengths"),
        ({"bucket_equity_quote_q": [10]}, "different lengths"),
        ({"mark_price_q": [PX]}, "2 names, 1 marks"),
        ({"pos_size_base_q": [2**63 - 1, 1]}, "oversize"),
        ({"pos_size_base_q": [2**70, 1]}, "oversize"),
        ({"bucket_equity_quote_q": [float("nan"), 1.0]}, "NaN"),
        ({"bucket_equity_quote_q": [0.5, 1.0]}, "whole quantums"),
        ({"mark_price_q": [0, PX]}, "outside"),
        ({"size_decimals": [8, 19]}, "outside"),
        ({"account_ids": [1, 1]}, "given twice"),
        ({"bucket_owner": [0, 2]}, "outside"),
        ({"pos_bucket": [0, 5]}, "outside"),
        ({"pos_size_base_q": [True, False]}, "booleans"),
        ({"pos_size_base_q": ["5", "-5"]}, "integers expected"),
        ({"markets": ("BTC-PERP", "BTC-PERP")}, "given twice"),
    ],
)
def test_bad_book_refused(change: dict[str, object], reason: str) -> None:
    args = _good() | change
    with pytest.raises(ValidationError, match=reason):
        make_book(**args)  # type: ignore[arg-type]


def test_mismatched_scenarios_refused() -> None:
    book = make_book(**_good())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="over markets"):
        cover2(book, market_shocks(("BTC-PERP",), 1, 1))
    with pytest.raises(ValidationError, match="no scenarios"):
        cover2(book, make_scenarios(MARKETS, [], []))
    with pytest.raises(ValidationError, match="top"):
        cover2(book, market_shocks(MARKETS, 1, 1), top=1)
    with pytest.raises(ValidationError, match="different markets"):
        market_shocks(MARKETS, 1, 1) + market_shocks(("BTC-PERP",), 1, 1)


# --- the screen and its exact confirmation equal the reference ------------------------------------------


def exact_losses(book: Cover2Book, moves: list[int]) -> list[int]:
    """Each bucket's exact loss under ``moves`` (for equities placed right at the edge)."""
    out = [0] * len(book.bucket_owner)
    for b, m, q in zip(book.pos_bucket.tolist(), book.pos_market.tolist(), book.pos_size_base_q.tolist(), strict=True):
        den = 10**6 * 10 ** (int(book.size_decimals[m]) + 2)
        out[b] += -((q * int(book.mark_price_q[m]) * moves[m]) // den)  # ceil(-q * mark * move / den)
    return out


@st.composite
def books(draw: st.DrawFn) -> tuple[Cover2Book, Scenarios]:
    n_acc = draw(st.integers(1, 12))
    n_mkt = draw(st.integers(1, 3))
    n_bkt = n_acc + draw(st.integers(0, 6))
    owner = list(range(n_acc)) + draw(
        st.lists(st.integers(0, n_acc - 1), min_size=n_bkt - n_acc, max_size=n_bkt - n_acc)
    )
    huge = draw(st.booleans())
    size_lim = 2**62 if huge else 10**10
    n_pos = draw(st.integers(0, 20))
    pos = draw(
        st.lists(
            st.tuples(st.integers(0, n_bkt - 1), st.integers(0, n_mkt - 1), st.integers(-size_lim, size_lim)),
            min_size=n_pos,
            max_size=n_pos,
        )
    )
    marks = draw(st.lists(st.integers(1, 2**62 if huge else 10**13), min_size=n_mkt, max_size=n_mkt))
    sd = draw(st.lists(st.integers(0, 18), min_size=n_mkt, max_size=n_mkt))
    move = st.one_of(st.sampled_from([0, -1, 1, -1_000_000, 10_000_000, -333_333]), st.integers(-1_000_000, 10_000_000))
    n_s = draw(st.integers(1, 5))
    moves = draw(st.lists(st.lists(move, min_size=n_mkt, max_size=n_mkt), min_size=n_s, max_size=n_s))
    markets = tuple(f"M{i}" for i in range(n_mkt))
    sc = make_scenarios(markets, [f"s{i}" for i in range(n_s)], moves)
    equity = draw(st.lists(st.integers(-(10**12), 10**15), min_size=n_bkt, max_size=n_bkt))
    book = make_book(
        [7 * i + 3 for i in range(n_acc)],
        owner,
        equity,
        [p[0] for p in pos],
        [p[1] for p in pos],
        [p[2] for p in pos],
        markets,
        marks,
        sd,
    )
    # some buckets' equity right at the edge of a scenario's loss: uncovered exactly 0, 1, or just covered
    s_edge = draw(st.integers(0, n_s - 1))
    loss = exact_losses(book, moves[s_edge])
    nudge = draw(st.lists(st.sampled_from([None, -1, 0, 1]), min_size=n_bkt, max_size=n_bkt))
    edged = [
        e if d is None else min(max(loss[b] + d, -(2**62)), 2**62)
        for b, (e, d) in enumerate(zip(equity, nudge, strict=True))
    ]
    book = make_book(
        book.account_ids, owner, edged, book.pos_bucket, book.pos_market, book.pos_size_base_q, markets, marks, sd
    )
    return book, sc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books(), st.integers(2, 4))
def test_screen_and_confirm_equal_the_reference(case: tuple[Cover2Book, Scenarios], top: int) -> None:
    book, sc = case
    both(book, sc, top)


def random_book(rng: np.random.Generator, n_acc: int, n_mkt: int) -> tuple[Cover2Book, Scenarios]:
    n_iso = n_acc // 3
    owner = np.concatenate([np.arange(n_acc), rng.integers(0, n_acc, n_iso)])
    n_pos = int(n_acc * 1.5)
    pos_bucket = np.concatenate([np.arange(n_acc + n_iso), rng.integers(0, n_acc, n_pos - n_acc - n_iso)])
    markets = tuple(f"M{i}" for i in range(n_mkt))
    size = rng.integers(-(10**9), 10**9, n_pos)
    notional = np.abs(size) * 1e-8 * 1_000.0  # USD at a 1,000 mark
    pos_mkt = rng.integers(0, n_mkt, n_pos)
    margin = np.bincount(pos_bucket, weights=notional, minlength=len(owner)) * rng.uniform(0.02, 0.5, len(owner))
    book = make_book(
        np.arange(n_acc) + 1,
        owner,
        (margin * USD).astype(np.int64),
        pos_bucket,
        pos_mkt,
        size,
        markets,
        [1_000 * PX] * n_mkt,
        [8] * n_mkt,
    )
    sc = market_shocks(markets, 150_000, 250_000) + joint_scenarios(
        markets,
        {"crash": dict.fromkeys(markets, -250_000), "mixed": {m: (-1) ** i * 120_000 for i, m in enumerate(markets)}},
    )
    return book, sc


def test_screen_confirms_few_pairs_and_agrees_on_a_larger_book() -> None:
    book, sc = random_book(make_rng(7), 3_000, 4)
    res = both(book, sc)
    assert res.venue.fund_quote_q > 0
    stats = cover2(book, sc).stats
    assert stats is not None and stats.confirmed_share < 0.01  # the screen, not the exact path, did the work
    assert stats.scenarios_confirmed < len(sc)


def test_record_overflow_takes_the_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for one record per chunk, the first pass overflows and the candidates come from the
    second (and a third with the exact room): the same figures."""
    book, sc = random_book(make_rng(3), 400, 3)
    expect = cover2_reference(book, sc)
    monkeypatch.setattr(c2, "REC_CAP", 1)
    for parallel in (False, True):
        assert cover2(book, sc, parallel=parallel) == expect


def test_float_error_is_bounded_at_large_magnitudes() -> None:
    """Positions near 2**60 quote quantums, each account's equity one quantum short of its loss: in floats
    the loss is off by up to a few hundred quantums, so only the proven error bound keeps every account
    a candidate. All tie at 1: the first two in the book make the figure."""
    rng = make_rng(5)
    n = 300
    size = rng.integers(2**40, 2**41, n)
    mark = 2**22 + 12_345  # sd 0: loss = size * mark / 100 under a 100 % fall
    loss = [(int(s) * mark) // 100 for s in size]
    size_exact = [100 * (L // mark) for L in loss]  # whole multiples so the loss is an exact integer
    loss = [s * mark // 100 for s in size_exact]
    book = accounts_book(
        np.arange(n) + 1, [v - 1 for v in loss], np.arange(n), [0] * n, size_exact, ("X",), [mark], [0]
    )
    res = both(book, make_scenarios(("X",), ["fall"], [[-1_000_000]]), top=3)
    assert res.venue.top == ((1, 1), (2, 1), (3, 1))
