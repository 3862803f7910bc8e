"""Bad inputs: every one is answered (InputRejected or OraclePriceRejected, with a reason) and
changes nothing but the log position and the engine clock.

"Changes nothing" is checked against a replica restored from the same state that received an
input rejected at the door (an unknown account) at the same time: both logged two records and
moved the clock, so their state hashes agree exactly when the bad input had no other effect.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim.venues import perp_venue
from support.desk import NS, Desk, base, of_type, px, state_diff, usd
from support.strategies import Scenario, scenarios

ALICE, BOB = 1, 2


@pytest.fixture
def priced_desk() -> Desk:
    """Binance venue; BTC 50,000 and ETH 3,000 from source s1; alice 1,000 USD, bob 1,000,000 USD."""
    d = Desk(perp_venue(("BTC", "ETH")))
    d.price("BTC", "50000")
    d.price("ETH", "3000")
    d.open(ALICE, 1_000)
    d.open(BOB, 1_000_000)
    return d


@pytest.fixture
def alice_long_0_1btc_cross(priced_desk: Desk) -> Desk:
    d = priced_desk
    d.pair(ALICE, BOB, "BTC-PERP", base("0.1"), px(50_000), leverage=10)
    return d


def door_replica(d: Desk) -> Engine:
    return Engine.from_state(d.eng.state_dict())


def reject_at_the_door(replica: Engine, ts: int) -> None:
    replica.apply(ev.Deposited(ts, 999_999, "USD", 1))


def apply_and_compare(d: Desk, bad: ev.Event) -> tuple[list[ev.Event], list[str]]:
    """Apply ``bad``; return its outputs and where the state differs from a door rejection's."""
    replica = door_replica(d)
    out = d.apply(bad)
    reject_at_the_door(replica, bad.ts_ns)
    return out, state_diff(d.eng.state_dict(), replica.state_dict())


# --- prices --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("NaN", "INVALID: unparseable or non-finite", id="nan"),
        pytest.param("nan", "INVALID: unparseable or non-finite", id="nan-lower"),
        pytest.param("sNaN", "INVALID: unparseable or non-finite", id="signalling-nan"),
        pytest.param("inf", "INVALID: unparseable or non-finite", id="inf"),
        pytest.param("-Infinity", "INVALID: unparseable or non-finite", id="minus-infinity"),
        pytest.param("abc", "INVALID: unparseable or non-finite", id="text"),
        pytest.param("", "INVALID: unparseable or non-finite", id="empty"),
        pytest.param("1e40", "INVALID: unparseable or non-finite", id="huge-exponent"),
        # 1e11 USD is 1e19 price quantums: beyond the int64 head-room (2**62 ~ 4.6e18)
        pytest.param("100000000000", "INVALID: unparseable or non-finite", id="beyond-int64"),
        pytest.param("-5", "INVALID: non-positive price", id="negative"),
        pytest.param("0", "INVALID: non-positive price", id="zero"),
        # below one price quantum (1e-8): rounds down to 0
        pytest.param("0.000000001", "INVALID: non-positive price", id="below-a-quantum"),
        # 50,000 -> 75,000 is a 50 % jump, the policy allows 25 %
        pytest.param("75000", "TOO_VOLATILE", id="jump"),
    ],
)
def test_a_bad_price_is_rejected_with_a_reason_and_the_index_is_unchanged(
    priced_desk: Desk, text: str, reason: str
) -> None:
    d = priced_desk
    out, changed = apply_and_compare(d, ev.PriceObserved(d.tick(), "s1", "BTC", text))
    rejected = of_type(out, ev.OraclePriceRejected)
    assert len(rejected) == 1 and rejected[0].reason.startswith(reason), out
    assert of_type(out, ev.IndexPriceUpdated) == []
    assert d.eng.index_q["BTC"] == px(50_000)
    # a print refused as a jump is kept as a pending level (evidence for re-anchoring), nothing else
    assert [c for c in changed if not c.startswith("/oracle/reanchor")] == []
    assert bool(changed) == (reason == "TOO_VOLATILE")


def test_a_low_confidence_price_is_rejected(priced_desk: Desk) -> None:
    d = priced_desk
    # the policy wants 900,000 ppm (90 %) confidence
    out = d.price("BTC", "50100", confidence_ppm=899_999)
    assert [o.reason.split(":")[0] for o in of_type(out, ev.OraclePriceRejected)] == ["LOW_CONFIDENCE"]
    assert d.eng.index_q["BTC"] == px(50_000)


def test_a_price_out_of_order_for_its_source_is_rejected(priced_desk: Desk) -> None:
    d = priced_desk
    ts = d.tick()
    d.apply(ev.PriceObserved(ts, "s1", "BTC", "50100"))
    # the same source again at the same time: not strictly later than its last price
    out = d.apply(ev.PriceObserved(ts, "s1", "BTC", "50200"))
    assert [o.reason.split(":")[0] for o in of_type(out, ev.OraclePriceRejected)] == ["INVALID"]
    assert "out of order" in of_type(out, ev.OraclePriceRejected)[0].reason
    assert d.eng.index_q["BTC"] == px(50_100)
    # another source at that time is fine
    assert of_type(d.apply(ev.PriceObserved(ts, "s2", "BTC", "50100")), ev.OraclePriceRejected) == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda ts: ev.PriceObserved(ts, "s9", "BTC", "50000"), id="price"),
        pytest.param(lambda ts: ev.Deposited(ts, ALICE, "USD", usd(1)), id="deposit"),
        pytest.param(lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", base("0.01"), px(50_000)), id="fill"),
        pytest.param(lambda ts: ev.ClockAdvanced(ts), id="clock"),
    ],
)
def test_an_event_older_than_engine_time_is_rejected_and_changes_nothing(priced_desk: Desk, make) -> None:
    d = priced_desk
    now = d.eng.now_ns
    replica = door_replica(d)
    out = d.apply(make(now - 1))
    assert [o.reason.startswith("out of order") for o in of_type(out, ev.InputRejected)] == [True]
    assert d.eng.now_ns == now
    reject_at_the_door(replica, now)
    assert replica.state_hash() == d.eng.state_hash()


# --- unknown names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda ts: ev.Deposited(ts, 77, "USD", usd(1)), "unknown account 77", id="deposit-account"),
        pytest.param(
            lambda ts: ev.Deposited(ts, ALICE, "DOGE", usd(1)),
            "unknown collateral asset 'DOGE'",
            id="deposit-asset",
        ),
        pytest.param(lambda ts: ev.WithdrawalRequested(ts, 77, "USD", 1), "unknown account 77", id="withdraw-account"),
        pytest.param(
            lambda ts: ev.WithdrawalRequested(ts, ALICE, "DOGE", 1),
            "unknown collateral asset 'DOGE'",
            id="withdraw-asset",
        ),
        pytest.param(
            lambda ts: ev.TradeFilled(ts, 77, "BTC-PERP", 1, px(50_000)),
            "unknown account 77",
            id="fill-account",
        ),
        pytest.param(
            lambda ts: ev.TradeFilled(ts, ALICE, "DOGE-PERP", 1, px(1)),
            "unknown market 'DOGE-PERP'",
            id="fill-market",
        ),
        pytest.param(lambda ts: ev.PriceObserved(ts, "s1", "DOGE", "0.1"), "unknown asset 'DOGE'", id="price-asset"),
        pytest.param(
            lambda ts: ev.LastTradeObserved(ts, "DOGE-PERP", px(1)),
            "unknown market 'DOGE-PERP'",
            id="last-trade-market",
        ),
        pytest.param(
            lambda ts: ev.FundingRatePublished(ts, "DOGE-PERP", 1),
            "unknown market 'DOGE-PERP'",
            id="funding-rate-market",
        ),
        pytest.param(lambda ts: ev.FundingSettleRequested(ts, 77), "unknown account 77", id="settle-account"),
        pytest.param(lambda ts: ev.AccountOpened(ts, ALICE), "account 1 already exists", id="open-twice"),
    ],
)
def test_unknown_accounts_assets_and_markets_are_rejected_and_change_nothing(
    priced_desk: Desk, make, reason: str
) -> None:
    d = priced_desk
    out, changed = apply_and_compare(d, make(d.tick()))
    assert [o.reason for o in of_type(out, ev.InputRejected)] == [reason]
    assert changed == []


# --- duplicates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda ts: ev.Deposited(ts, ALICE, "USD", usd(100), event_id="dep-1"), id="accepted-deposit"),
        pytest.param(lambda ts: ev.Deposited(ts, 77, "USD", usd(100), event_id="dep-1"), id="rejected-deposit"),
        pytest.param(lambda ts: ev.PriceObserved(ts, "s2", "BTC", "50010", event_id="px-1"), id="price"),
        pytest.param(
            lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", base("0.01"), px(50_000), event_id="f-1"),
            id="fill",
        ),
    ],
)
def test_a_duplicate_event_id_returns_nothing_and_changes_nothing(priced_desk: Desk, make) -> None:
    d = priced_desk
    first = make(d.tick())
    assert d.eng.apply(first)
    before = d.eng.state_hash()
    # the same event again, and the same id on a later, different event
    assert d.eng.apply(first) == []
    assert d.eng.apply(make(d.tick())) == []
    assert d.eng.state_hash() == before


# --- overflow --------------------------------------------------------------------------------------


BIG = 2**70  # beyond int64


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda ts: ev.Deposited(ts, ALICE, "USD", BIG), id="deposit"),
        pytest.param(lambda ts: ev.WithdrawalRequested(ts, ALICE, "USD", BIG), id="withdrawal"),
        pytest.param(lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", BIG, px(50_000)), id="fill-size"),
        pytest.param(lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", -BIG, px(50_000)), id="fill-negative-size"),
        pytest.param(lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", 1, BIG), id="fill-price"),
        pytest.param(lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", 1, px(50_000), fee_quote_q=BIG), id="fill-fee"),
        pytest.param(
            lambda ts: ev.TradeFilled(
                ts, ALICE, "BTC-PERP", 1, px(50_000), margin_mode="isolated", isolated_margin_quote_q=BIG
            ),
            id="fill-isolated-margin",
        ),
        pytest.param(lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", 1, px(50_000), leverage=BIG), id="fill-leverage"),
        # 2**59 BTC quantums x 2**59 price quantums: each within bounds, their cost (~3.3e25) is not
        pytest.param(lambda ts: ev.TradeFilled(ts, ALICE, "BTC-PERP", 2**59, 2**59), id="fill-size-times-price"),
        pytest.param(lambda ts: ev.LastTradeObserved(ts, "BTC-PERP", BIG), id="last-trade"),
        pytest.param(
            lambda ts: ev.AccountsSeeded(ts, [BIG], [usd(1)], [], [], [], [], [], [], []),
            id="seed-account-id",
        ),
        pytest.param(lambda ts: ev.AccountsSeeded(ts, [10], [BIG], [], [], [], [], [], [], []), id="seed-deposit"),
        pytest.param(
            lambda ts: ev.AccountsSeeded(ts, [10], [usd(1)], [0], ["BTC-PERP"], [BIG], [px(50_000)], [0], [0], [10]),
            id="seed-size",
        ),
        # 2**50 x 2**50 within bounds each; the cost 2**100 / 1e10 ~ 1.3e20 is not
        pytest.param(
            lambda ts: ev.AccountsSeeded(ts, [10], [2**58], [0], ["BTC-PERP"], [2**50], [2**50], [0], [0], [10]),
            id="seed-size-times-price",
        ),
    ],
)
def test_an_amount_that_would_overflow_int64_is_rejected_and_changes_nothing(priced_desk: Desk, make) -> None:
    d = priced_desk
    out, changed = apply_and_compare(d, make(d.tick()))
    assert len(of_type(out, ev.InputRejected)) == 1, out
    assert changed == []


def test_a_clock_jump_that_would_overflow_the_funding_index_is_rejected() -> None:
    """BTC at 40 billion USD (4e18 price quantums, within int64) and a jump to ts 2**62 (146 years):
    the funding index would pass 2**62. The input must be refused, not stop the engine."""
    d = Desk(perp_venue(("BTC", "ETH")))
    d.price("BTC", "40000000000")
    replica = door_replica(d)
    out = d.apply(ev.ClockAdvanced(2**62))
    assert len(of_type(out, ev.InputRejected)) == 1
    reject_at_the_door(replica, 2**62)
    assert replica.state_hash() == d.eng.state_hash()


def test_a_balance_that_would_overflow_is_rejected(priced_desk: Desk) -> None:
    d = priced_desk
    cap = 2**62 // 4  # balances stay below MAX_QUANTUMS // 4
    assert of_type(d.deposit(BOB, cap - usd(1_000_000)), ev.InputRejected) == []  # bob now holds exactly the cap
    out, changed = apply_and_compare(d, ev.Deposited(d.tick(), BOB, "USD", 1))
    assert [o.reason for o in of_type(out, ev.InputRejected)] == ["balance would overflow"]
    assert changed == []


# --- seeded populations ----------------------------------------------------------------------------


def seed(ts: int, **over: object) -> ev.AccountsSeeded:
    """Two accounts (10, 11), 10,000 USD each, 0.1 BTC long / short at 50,000, cross, 10x."""
    cols: dict[str, object] = dict(
        account_ids=[10, 11],
        deposits_quote_q=[usd(10_000), usd(10_000)],
        pos_account=[0, 1],
        pos_market=["BTC-PERP", "BTC-PERP"],
        pos_size_base_q=[base("0.1"), -base("0.1")],
        pos_price_q=[px(50_000), px(50_000)],
        pos_isolated=[0, 0],
        pos_iso_margin_quote_q=[0, 0],
        pos_leverage=[10, 10],
    )
    cols.update(over)
    return ev.AccountsSeeded(ts, **cols)  # type: ignore[arg-type]


def test_a_consistent_seed_is_accepted(priced_desk: Desk) -> None:
    d = priced_desk
    assert of_type(d.apply(seed(d.tick())), ev.InputRejected) == []
    assert d.eng.row(10) is not None and d.eng.row(11) is not None


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        pytest.param({"deposits_quote_q": [usd(10_000)]}, "differ in length", id="short-deposits"),
        pytest.param({"pos_leverage": [10]}, "differ in length", id="short-position-column"),
        pytest.param({"account_ids": [10, 10]}, "new, unique", id="duplicate-ids"),
        pytest.param({"account_ids": [10, ALICE]}, "new, unique", id="existing-id"),
        pytest.param({"pos_account": [0, 2]}, "pos_account", id="position-of-no-account"),
        pytest.param({"pos_account": [1, 0]}, "sorted", id="unsorted-positions"),
        pytest.param({"pos_market": ["BTC-PERP", "DOGE-PERP"]}, "unknown market", id="unknown-market"),
        pytest.param({"pos_size_base_q": [base("0.1"), 0]}, "non-zero", id="zero-size"),
        pytest.param({"pos_iso_margin_quote_q": [0, usd(1)]}, "only isolated", id="margin-on-a-cross-position"),
        pytest.param({"pos_leverage": [10, 0]}, "leverage", id="zero-leverage"),
        # account 11 short 3 BTC on 10,000 USD at 10x: IM 150,000 / 10 = 15,000 > 10,000;
        # account 10 is fine, both are refused
        pytest.param({"pos_size_base_q": [base("0.1"), -base(3)]}, "below initial margin", id="one-below-im"),
        # integers only: no floats, booleans or numeric strings in the columns
        pytest.param({"deposits_quote_q": [usd(10_000) + 0.5, usd(10_000)]}, "", id="float-deposit"),
        pytest.param({"account_ids": ["10", 11]}, "", id="string-id"),
        pytest.param({"pos_isolated": [False, False]}, "", id="boolean-flag"),
        pytest.param({"pos_account": [0.0, 1.0]}, "", id="float-index"),
    ],
)
def test_a_seed_with_inconsistent_columns_is_rejected_whole(priced_desk: Desk, over: dict, reason: str) -> None:
    d = priced_desk
    n_acc, n_pos = d.eng.n_acc, d.eng.n_pos
    out, changed = apply_and_compare(d, seed(d.tick(), **over))
    rejected = of_type(out, ev.InputRejected)
    assert len(rejected) == 1 and reason in rejected[0].reason, out
    assert (d.eng.n_acc, d.eng.n_pos) == (n_acc, n_pos)
    assert d.eng.row(10) is None and d.eng.row(11) is None
    assert changed == []


# --- wrongly typed fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        # an integer event id next to string ids: the state must stay hashable
        pytest.param(lambda ts: ev.Deposited(ts, ALICE, "USD", usd(1), event_id=7), id="integer-event-id"),
        pytest.param(lambda ts: ev.PriceObserved(ts, None, "BTC", "50010"), id="source-none"),
        pytest.param(lambda ts: ev.PriceObserved(ts, 7, "BTC", "50010"), id="source-integer"),
        pytest.param(
            lambda ts: ev.PriceObserved(ts, "s2", "BTC", "50010", confidence_ppm="high"), id="confidence-text"
        ),
        pytest.param(lambda ts: ev.PriceObserved(ts, "s2", "BTC", 50010), id="price-number"),
        pytest.param(lambda ts: ev.AccountOpened(ts, False), id="boolean-account-id"),  # False == 0, a new id
        pytest.param(lambda ts: ev.AccountOpened(ts, "12"), id="text-account-id"),
        pytest.param(lambda ts: ev.ClockAdvanced(float(ts)), id="float-time"),
    ],
)
def test_a_wrongly_typed_field_is_rejected_and_changes_nothing(priced_desk: Desk, make) -> None:
    d = priced_desk
    d.apply(ev.Deposited(d.tick(), ALICE, "USD", usd(1), event_id="some-id"))
    bad = make(d.tick())
    replica = door_replica(d)
    out = d.apply(bad)
    assert len(of_type(out, ev.InputRejected)) == 1, out
    reject_at_the_door(replica, d.eng.now_ns)
    assert replica.state_hash() == d.eng.state_hash()


# --- nothing is lost --------------------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scn=scenarios())
def test_every_input_is_logged_first_with_consecutive_sequence_numbers(scn: Scenario) -> None:
    """Each apply returns the input first, then its outputs; sequence numbers run 1, 2, 3, ...
    over the whole run without gaps; only a duplicate event id returns nothing."""
    eng = Engine(scn.cfg)
    seen: set[str] = set()
    expected_seq = 0
    for e in scn.events:
        eid = getattr(e, "event_id", "")
        recs = eng.apply(e)
        if eid and eid in seen:
            assert recs == []
            continue
        seen.add(eid) if eid else None
        assert recs and recs[0][1] is e
        assert [s for s, _ in recs] == list(range(expected_seq + 1, expected_seq + 1 + len(recs)))
        assert all(not o.is_input for _, o in recs[1:])
        rejections = [o for _, o in recs[1:] if isinstance(o, ev.InputRejected)]
        assert len(rejections) <= 1 and all(o.reason for o in rejections)
        expected_seq += len(recs)
    assert eng.seq == expected_seq


def test_a_rejected_input_is_still_logged(priced_desk: Desk) -> None:
    d = priced_desk
    bad = ev.Deposited(d.tick(), 77, "USD", 1)
    seq0 = d.eng.seq
    recs = d.eng.apply(bad)
    assert [(s, type(e).__name__) for s, e in recs] == [(seq0 + 1, "Deposited"), (seq0 + 2, "InputRejected")]
    assert recs[1][1].ts_ns == bad.ts_ns and recs[1][1].input_type == "Deposited"


def test_prices_keep_flowing_after_rejections(priced_desk: Desk) -> None:
    """A burst of garbage does not wedge the oracle: the next good price moves the index."""
    d = priced_desk
    for text in ("NaN", "-1", "abc", "1e40"):
        d.price("BTC", text)
    d.t += NS
    assert of_type(d.price("BTC", "50500"), ev.IndexPriceUpdated)[0].price_q == px(50_500)
