"""Oracle policy in the engine: quorum for liquidation, a windowed jump limit, re-anchoring, divergence.

State (every test): one market, BTC-PERP (Binance tiers: 0.4 % maintenance below 50,000 USD notional),
published funding, an index of 50,000 from the sources the test names.

| account | collateral | position                      | health at p                      |
|---------|-----------:|-------------------------------|----------------------------------|
| ALICE   |      2,600 | long 1 BTC at 50,000, 20x     | 2,600 + (p - 50,000) - 0.004 p   |
| BOB     |    100,000 | short 1 BTC at 50,000, 2x     | far from liquidation             |

Alice breaches once 2,600 + p - 50,000 < 0.004 p, i.e. p < 47,400 / 0.996 = 47,590.36.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fluidmargin.core.units import PRICE_SCALE, QUOTE_SCALE
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.sim.venues import perp_venue

S = 10**9
MS = 10**6
ALICE, BOB, CAROL = 1, 2, 3
BTC = 10**8  # one BTC in size quantums (8 decimals)
T0 = 1_000 * S


def venue(**policy: Any) -> EngineConfig:
    cfg = perp_venue(("BTC",), funding_source="published")
    return dataclasses.replace(cfg, default_oracle=dataclasses.replace(cfg.default_oracle, **policy))


class Desk:
    """An engine driven at explicit times (``at`` in ns since T0)."""

    def __init__(self, cfg: EngineConfig, sources: tuple[str, ...] = ("s1", "s2")) -> None:
        self.eng = Engine(cfg)
        self.t = T0
        self.sources = sources
        for s in sources:
            self.price("50000", s)
        for acct, usd in ((ALICE, 2_600), (BOB, 100_000), (CAROL, 100_000)):
            self.apply(ev.AccountOpened(self.tick(), acct))
            self.apply(ev.Deposited(self.tick(), acct, "USD", usd * QUOTE_SCALE))
        assert not kinds(self.fill(ALICE, BTC, 50_000, 20), ev.InputRejected)
        assert not kinds(self.fill(BOB, -BTC, 50_000, 2), ev.InputRejected)

    def tick(self, dt: int = MS) -> int:
        self.t += dt
        return self.t

    def apply(self, e: ev.Event) -> list[ev.Event]:
        return [o for _s, o in self.eng.apply(e)]

    def price(self, p: str, source: str = "s1", dt: int = MS) -> list[ev.Event]:
        return self.apply(ev.PriceObserved(self.tick(dt), source, "BTC", p))

    def fill(self, acct: int, size: int, price: int, lev: int = 10) -> list[ev.Event]:
        return self.apply(ev.TradeFilled(self.tick(), acct, "BTC-PERP", size, price * PRICE_SCALE, leverage=lev))

    @property
    def index(self) -> int:
        return self.eng.index_q["BTC"] // PRICE_SCALE


def kinds(out: list[ev.Event], cls: type) -> list[Any]:
    return [o for o in out if isinstance(o, cls)]


def liquidated(out: list[ev.Event]) -> list[int]:
    return sorted({o.account_id for o in kinds(out, ev.PositionLiquidated)})


# --- item 6: one publisher cannot liquidate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "sources", "prints", "index", "liquidated_after"),
    [
        # the default: a single source marks (index 38,000, Alice below maintenance) but cannot liquidate
        pytest.param({}, ("s1",), [("s1", "38000")], 38_000, [], id="one-source-marks-only"),
        # two sources: s1 alone moving is a divergence (index held at 50,000); s2 confirming makes a quorum
        pytest.param({}, ("s1", "s2"), [("s1", "38000")], 50_000, [], id="two-sources-one-moves"),
        pytest.param({}, ("s1", "s2"), [("s1", "38000"), ("s2", "38000")], 38_000, [ALICE], id="two-sources-agree"),
        # a venue with one feed may opt in: then the one source liquidates (the old behaviour, chosen)
        pytest.param({"single_source_liquidation": True}, ("s1",), [("s1", "38000")], 38_000, [ALICE], id="opt-in"),
    ],
)
def test_liquidation_needs_a_quorum_of_sources(
    policy: dict[str, Any],
    sources: tuple[str, ...],
    prints: list[tuple[str, str]],
    index: int,
    liquidated_after: list[int],
) -> None:
    d = Desk(venue(**policy), sources)
    fund = d.eng.insurance_q
    out: list[ev.Event] = []
    for s, p in prints:
        out += d.price(p, s)
    assert d.index == index
    assert liquidated(out) == liquidated_after
    if not liquidated_after:
        assert d.eng.insurance_q == fund  # no draw on the fund
        if index == 38_000:  # marked: Alice is below maintenance, held at_risk, not liquidated
            assert d.eng.status[d.eng.row(ALICE)] != 0


def test_a_single_source_reaches_liquidation_grade_once_a_second_agrees() -> None:
    # s1 prints 38,000 (marks: n = 1); s2 then prints 38,000: n = 2 at an unchanged index, Alice goes
    d = Desk(venue(), ("s1",))
    assert liquidated(d.price("38000", "s1")) == []
    assert liquidated(d.price("38000", "s2")) == [ALICE]


def test_the_jump_limit_holds_over_a_window_not_per_print() -> None:
    # a -59 % walk in 4 prints 40 ms apart; every step is under 25 % of the one before:
    # 50,000 -> 42,000 (-16 %) -> 35,000 (-16.7 %) -> 27,000 (-22.9 %) -> 20,500 (-24.1 %)
    # over the 60 s window the move from 50,000 is 16 %, 30 %, 46 %, 59 %: only the first is within 25 %
    d = Desk(venue(single_source_liquidation=True), ("s1",))
    rejected = []
    for p in ("42000", "35000", "27000", "20500"):
        rejected += [o.reason for o in kinds(d.price(p, "s1", dt=40 * MS), ev.OraclePriceRejected)]
    assert d.index == 42_000
    assert len(rejected) == 3 and all(r.startswith("TOO_VOLATILE") for r in rejected)


def test_a_gradual_move_beyond_the_limit_is_accepted_across_windows() -> None:
    # 50,000 -> 40,000 (-20 %) -> 32,000 (-20 %), 61 s apart: each window holds one move within 25 %
    d = Desk(venue(), ("s1",))
    d.price("40000", "s1", dt=61 * S)
    d.price("32000", "s1", dt=61 * S)
    assert d.index == 32_000


# --- item 7: a genuine gap is reachable -------------------------------------------------------------


def test_a_gap_after_an_outage_re_anchors_after_consistent_prints() -> None:
    # Parameters (defaults): re-anchor after 3 consistent prints (within 2 % of the one before) spanning
    # at least 60 s. Both sources come back from a 10-minute outage at 35,000 (-30 %: beyond 25 %).
    d = Desk(venue(), ("s1", "s2"))
    d.t += 600 * S
    table = [  # (seconds after the first print, source, price, re-anchored?)
        (0, "s1", "35000", False),
        (1, "s2", "35020", False),
        (30, "s1", "34980", False),
        (60, "s2", "35000", True),  # 4 prints, 60 s: adopted; s1 and s2's latest prints make a quorum
    ]
    start = d.t + S
    out: list[ev.Event] = []
    for at, s, p, re_anchored in table:
        d.t = start + at * S - MS
        got = d.price(p, s)
        assert bool(kinds(got, ev.OracleReanchored)) == re_anchored, (at, got)
        out += got
    # the index is the median of s1's 34,980 and s2's 35,000 = 34,990, from 2 sources: Alice liquidated
    assert d.index == 34_990
    assert liquidated(out) == [ALICE]
    (r,) = kinds(out, ev.OracleReanchored)
    assert (r.asset, r.old_price_q, r.price_q) == ("BTC", 50_000 * PRICE_SCALE, 35_000 * PRICE_SCALE)


def test_a_burst_of_consistent_prints_does_not_re_anchor() -> None:
    # 5 prints of 35,000 within 1 s: enough prints, not enough time: every one refused
    d = Desk(venue(), ("s1",))
    for _ in range(5):
        assert kinds(d.price("35000", "s1", dt=200 * MS), ev.OraclePriceRejected)
    assert d.index == 50_000


def test_a_slow_trickle_below_the_print_count_does_not_re_anchor() -> None:
    # 2 consistent prints 90 s apart: enough time, too few prints (3 needed); the third adopts the level
    d = Desk(venue(), ("s1",))
    assert kinds(d.price("35000", "s1", dt=S), ev.OraclePriceRejected)
    got = d.price("35000", "s1", dt=90 * S)
    assert kinds(got, ev.OraclePriceRejected) and not kinds(got, ev.OracleReanchored)
    assert d.index == 50_000
    assert kinds(d.price("35000", "s1", dt=S), ev.OracleReanchored)
    assert d.index == 35_000


def test_an_operator_re_anchor_is_a_logged_event_and_sources_confirm_it() -> None:
    d = Desk(venue(), ("s1", "s2"))
    for s in ("s1", "s2"):
        assert kinds(d.price("35000", s), ev.OraclePriceRejected)
    out = d.apply(ev.OracleReanchorRequested(d.tick(), "BTC", "35000", "exchange gap"))
    (r,) = kinds(out, ev.OracleReanchored)
    assert (r.old_price_q, r.price_q, r.reason) == (
        50_000 * PRICE_SCALE,
        35_000 * PRICE_SCALE,
        "operator: exchange gap",
    )
    assert d.index == 35_000  # the venue margins at the operator's level ...
    assert liquidated(out) == []  # ... but liquidates only at a price its sources confirm
    out = d.price("35010", "s1") + d.price("35000", "s2")
    assert liquidated(out) == [ALICE]
    assert d.index == 35_005


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        pytest.param(ev.OracleReanchorRequested(0, "DOGE", "1", ""), "unknown asset", id="unknown-asset"),
        pytest.param(ev.OracleReanchorRequested(0, "BTC", "-1", ""), "positive", id="negative"),
        pytest.param(ev.OracleReanchorRequested(0, "BTC", "NaN", ""), "price", id="nan"),
        pytest.param(ev.OracleReanchorRequested(0, "BTC", "", ""), "no pending level", id="nothing-pending"),
    ],
)
def test_a_bad_re_anchor_is_refused_with_a_reason(event: ev.OracleReanchorRequested, reason: str) -> None:
    d = Desk(venue(), ("s1",))
    out = d.apply(dataclasses.replace(event, ts_ns=d.tick()))
    (rej,) = kinds(out, ev.InputRejected)
    assert reason in rej.reason
    assert d.index == 50_000 and not kinds(out, ev.OracleReanchored)
    assert d.price("50100", "s1") and d.index == 50_100  # the oracle goes on as before


def test_an_operator_re_anchor_without_a_price_adopts_the_pending_level() -> None:
    d = Desk(venue(), ("s1",))
    d.price("35000", "s1")
    d.price("35100", "s1")  # pending level: the latest consistent print, 35,100
    out = d.apply(ev.OracleReanchorRequested(d.tick(), "BTC", "", "confirmed by phone"))
    assert kinds(out, ev.OracleReanchored)[0].price_q == 35_100 * PRICE_SCALE


@pytest.mark.parametrize(
    ("market", "name"),
    [
        pytest.param("BTC-PERP", "oracle.max_jump_ppm", id="per-market"),
        pytest.param("", "default_oracle.max_jump_ppm", id="engine-wide"),
    ],
)
def test_max_jump_is_a_parameter_one_may_change(market: str, name: str) -> None:
    d = Desk(venue(single_source_liquidation=True), ("s1",))
    assert kinds(d.price("35000", "s1"), ev.OraclePriceRejected)  # -30 % > 25 %
    out = d.apply(ev.ParameterChangeRequested(d.tick(), market, name, 400_000))
    assert not kinds(out, ev.InputRejected), out
    assert d.eng.cfg.policy("BTC").max_jump_ppm == 400_000
    assert liquidated(d.price("35000", "s1")) == [ALICE]


def test_oracle_parameters_are_validated() -> None:
    d = Desk(venue(), ("s1",))
    out = d.apply(ev.ParameterChangeRequested(d.tick(), "BTC-PERP", "oracle.min_sources_liquidation", 0))
    assert "min_sources_liquidation" in kinds(out, ev.InputRejected)[0].reason


# --- item 8: a rogue second source ------------------------------------------------------------------


def test_a_rogue_second_source_is_named_and_its_halt_expires() -> None:
    # honest h and rogue r; r refreshes 45,000 (-10 %: within the jump limit, 10 % off h) every 30 s.
    # With two sources there is no majority: the source farther from the index (r) is set aside, the
    # index follows h, the market halts new risk for at most divergence_halt_ns (120 s), naming r.
    d = Desk(venue(max_staleness_ns=120 * S), ("h", "r"))
    out = d.price("45000", "r", dt=S)
    (halt,) = kinds(out, ev.MarketHalted)
    assert "source r " in halt.reason
    assert d.eng.halted["BTC-PERP"] == halt.reason
    resumed: list[ev.Event] = []
    for k in range(1, 6):  # 150 s of r refreshing while h moves a little
        got = d.price(str(50_000 + 10 * k), "h", dt=15 * S) + d.price("45000", "r", dt=15 * S)
        resumed += kinds(got, ev.MarketResumed)
        assert d.index == 50_000 + 10 * k  # the index follows h all along
    assert [o.market for o in resumed] == ["BTC-PERP"]  # the halt expired although r keeps refreshing
    assert "BTC-PERP" not in d.eng.halted
    assert liquidated(d.price("45000", "r")) == []  # r alone never makes a liquidation-grade price
    # r falls back in line: the divergence is over, both count again
    d.price("50050", "r", dt=S)
    assert d.eng.index_n["BTC"] == 2


def test_a_divergence_halt_ends_when_the_divergent_source_goes_stale() -> None:
    d = Desk(venue(max_staleness_ns=120 * S, divergence_halt_ns=3600 * S), ("h", "r"))
    d.price("45000", "r", dt=S)
    assert "BTC-PERP" in d.eng.halted
    out = d.apply(ev.ClockAdvanced(d.tick(121 * S)))  # r's print is older than 120 s: stale
    assert [o.market for o in kinds(out, ev.MarketResumed)] == ["BTC-PERP"]


def test_with_three_sources_the_median_outvotes_a_rogue() -> None:
    d = Desk(venue(), ("a", "b", "r"))
    out = d.price("45000", "r")
    assert not kinds(out, ev.MarketHalted) and d.index == 50_000
    out = d.price("38000", "a") + d.price("38000", "b")  # a and b agree on 38,000: r is the outlier
    assert d.index == 38_000 and liquidated(out) == [ALICE]


# --- the pure functions behind it (risk.oracle) -------------------------------------------------------

P = PRICE_SCALE
POLICY = perp_venue(("BTC",)).default_oracle  # 2 % divergence band, quorum 2, min_sources 1


@pytest.mark.parametrize(
    ("prices", "reference", "validity", "index", "n", "outliers"),
    [
        # a majority within 2 % of the median: the median of the kept; the outvoted one named, no halt
        pytest.param({"a": 100, "b": 101, "r": 150}, 100, "VALID", 1005 * P // 10, 2, ("r",), id="outvoted"),
        # two sources 10 % apart: the one farther from the index 100 (r) is set aside, a: one source
        pytest.param({"a": 100, "r": 90}, 100, "DIVERGENT", 100 * P, 1, ("r",), id="two-apart"),
        # ... and when the index sits nearer r, a is set aside: the rule is the reference, not the name
        pytest.param({"a": 100, "r": 90}, 91, "DIVERGENT", 90 * P, 1, ("a",), id="two-apart-other-way"),
        # three 3 % apart: only the median 103 is within 2 % of itself; set aside the farthest from 100
        # (c at 106): a and b agree (each 1.5 from their median 101.5, within 2.03)
        pytest.param({"a": 100, "b": 103, "c": 106}, 100, "DIVERGENT", 1015 * P // 10, 2, ("c",), id="three-apart"),
        # no reference (no index yet): nothing to judge by
        pytest.param({"a": 100, "r": 90}, None, "DIVERGENT", None, 0, ("a", "r"), id="no-reference"),
    ],
)
def test_aggregate_sources(
    prices: dict[str, int], reference: int | None, validity: str, index: int | None, n: int, outliers: tuple[str, ...]
) -> None:
    agg = orc.aggregate_sources({k: v * P for k, v in prices.items()}, reference and reference * P, POLICY)
    assert (agg.validity.name, agg.index_q, agg.n_sources, agg.outliers) == (validity, index, n, outliers)
    assert bool(agg.reason) == (validity != "VALID")


def test_re_anchoring_needs_consistent_prints_and_time() -> None:
    # Parameters: 3 prints, 60 s, each within 2 % of the one before
    # | ts (s) | price  | pending (first ts, count) | ready |
    # |      0 | 35,000 | (0, 1)                    | no    |
    # |     10 | 36,000 | (10, 1): 2.9 % off, anew  | no    |
    # |     40 | 35,500 | (10, 2)                   | no    |
    # |     69 | 35,600 | (10, 3), 59 s             | no    |
    # |     70 | 35,600 | (10, 4), 60 s             | yes   |
    pend = None
    table = [(0, 35_000, 0, 1, False), (10, 36_000, 10, 1, False), (40, 35_500, 10, 2, False),
             (69, 35_600, 10, 3, False), (70, 35_600, 10, 4, True)]  # fmt: skip
    for ts, price, first, count, ready in table:
        pend = orc.reanchor_step(pend, "s1", price * P, ts * S, POLICY)
        assert (pend.first_ts_ns, pend.count, orc.reanchor_ready(pend, ts * S, POLICY)) == (first * S, count, ready)
    assert pend is not None and pend.sources == (("s1", 35_600 * P, 70 * S),)


def test_liquidation_grade() -> None:
    assert not orc.liquidation_grade(1, POLICY) and orc.liquidation_grade(2, POLICY)
    assert orc.liquidation_grade(1, dataclasses.replace(POLICY, single_source_liquidation=True))
    assert not orc.liquidation_grade(0, dataclasses.replace(POLICY, single_source_liquidation=True))
