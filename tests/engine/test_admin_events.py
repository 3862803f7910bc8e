"""Operator actions as logged events: manual halts and resumes, risk-parameter changes."""

from __future__ import annotations

import dataclasses

import pytest

from fluidmargin.engine import Engine
from fluidmargin.engine.state import AT_RISK, HEALTHY
from fluidmargin.model import events as ev
from fluidmargin.sim.venues import perp_venue
from support.desk import Desk, base, of_type, px, without_funding

ALICE, BOB = 1, 2


def desk() -> Desk:
    d = Desk(without_funding(perp_venue(("BTC", "ETH"), single_source_liquidation=True)))
    d.price("BTC", "50000")
    d.price("ETH", "3000")
    d.open(ALICE, 2_000)
    d.open(BOB, 2_000)
    return d


def rejected(out: list[ev.Event]) -> list[str]:
    return [o.reason for o in of_type(out, ev.InputRejected)]


def test_an_operator_halt_stops_new_risk_until_the_operator_resumes() -> None:
    d = desk()
    out = d.apply(ev.MarketHaltRequested(d.tick(), "BTC-PERP", "maintenance"))
    assert [(o.market, o.reason) for o in of_type(out, ev.MarketHalted)] == [("BTC-PERP", "operator: maintenance")]
    out = d.fill(ALICE, "BTC-PERP", base("0.01"), px(50_000))
    assert rejected(out) == ["market BTC-PERP is halted (operator: maintenance): no new risk"]
    # a valid index within any band does not lift an operator's halt (a circuit breaker's would be)
    out = d.price("BTC", "50010")
    assert not of_type(out, ev.MarketResumed)
    assert rejected(d.apply(ev.MarketHaltRequested(d.tick(), "BTC-PERP", "again"))) == [
        "market BTC-PERP is already halted by an operator"
    ]
    out = d.apply(ev.MarketResumeRequested(d.tick(), "BTC-PERP"))
    assert [o.market for o in of_type(out, ev.MarketResumed)] == ["BTC-PERP"]
    d.pair(ALICE, BOB, "BTC-PERP", base("0.01"), px(50_010))  # accepted again (pair asserts it)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ev.MarketHaltRequested(0, "DOGE-PERP", "x"), "unknown market 'DOGE-PERP'"),
        (ev.MarketResumeRequested(0, "ETH-PERP"), "market ETH-PERP is not halted by an operator"),
        (ev.ParameterChangeRequested(0, "", "quote", 1), "'quote' is not an engine parameter one may change"),
        (ev.ParameterChangeRequested(0, "BTC-PERP", "symbol", 1), "'symbol' is not a market parameter"),
        (ev.ParameterChangeRequested(0, "", "at_risk_buffer_ppm", 400_000), "invalid value for at_risk_buffer_ppm"),
        (ev.ParameterChangeRequested(0, "BTC-PERP", "liquidation_fee_ppm", 2_000_000), "invalid value"),
        (ev.ParameterChangeRequested(0, "BTC-PERP", "liquidation.adl", 2), "invalid value for liquidation.adl"),
        (ev.ParameterChangeRequested(0, "", "mass_close_min", 0), "invalid value for mass_close_min"),
    ],
)
def test_bad_operator_input_is_rejected_and_changes_nothing(event: ev.Event, reason: str) -> None:
    d = desk()
    before = d.eng.state_dict(for_hash=True)
    out = d.apply(dataclasses.replace(event, ts_ns=d.tick()))
    assert len(rejected(out)) == 1 and rejected(out)[0].startswith(reason)
    after = d.eng.state_dict(for_hash=True)
    for k in ("seq", "now_ns"):
        before.pop(k), after.pop(k)
    assert str(before) == str(after)


def test_a_parameter_change_is_an_event_and_takes_effect_at_once() -> None:
    d = desk()
    # Alice long 0.2 BTC at 50,000 with 2,000 USD: at 41,500 equity 300, mm 0.4 % x 8,300 = 33.2,
    # health 266.8 = 8.0 x mm: healthy under the 20 % buffer; a 1,000 % buffer makes her at risk
    d.pair(ALICE, BOB, "BTC-PERP", base("0.2"), px(50_000), leverage=10)
    d.price("BTC", "41500")
    assert d.status(ALICE) == HEALTHY
    out = d.apply(ev.ParameterChangeRequested(d.tick(), "", "at_risk_exit_ppm", 12_000_000))
    out += d.apply(ev.ParameterChangeRequested(d.tick(), "", "at_risk_buffer_ppm", 10_000_000))
    assert [(o.name, o.old, o.new) for o in of_type(out, ev.ParameterChanged)] == [
        ("at_risk_exit_ppm", 300_000, 12_000_000),
        ("at_risk_buffer_ppm", 200_000, 10_000_000),
    ]
    assert [(o.account_id, o.new) for o in of_type(out, ev.AccountStatusChanged)] == [(ALICE, "at_risk")]
    assert d.status(ALICE) == AT_RISK
    # a market parameter: the liquidation penalty of BTC-PERP goes from 0.5 % to 0.1 %
    out = d.apply(ev.ParameterChangeRequested(d.tick(), "BTC-PERP", "liquidation_fee_ppm", 1_000))
    assert d.eng.market_idx["BTC-PERP"].spec.liquidation_fee_ppm == 1_000
    # 0.2 BTC at 40,100: equity 2,000 - 0.2 x 9,900 = 20, mm 0.4 % x 8,020 = 32.08: breached; closed
    # at the mark, the penalty is 0.1 % of 8,020 = 8.02 (at 0.5 % it would be 40.1, capped at 20)
    out = d.price("BTC", "40100")
    assert [o.fee_quote_q for o in of_type(out, ev.PositionLiquidated)] == [8_020_000]
    # the change is part of the state: a replay of the same inputs reaches the same hash
    twin = Engine(d.cfg)
    for _s, e in d.records:
        if e.is_input:
            twin.apply(e)
    assert twin.state_hash() == d.eng.state_hash()
    assert Engine.from_state(d.eng.state_dict()).state_hash() == d.eng.state_hash()


def test_a_maintenance_rate_change_remargins_every_position_at_once() -> None:
    """The dynamic-margin path: a bracket's rate (and the initial floor) changed by a logged event."""
    d = desk()
    # Alice long 0.2 BTC at 50,000 with 2,000 USD; at 45,000: equity 2,000 - 0.2 x 5,000 = 1,000,
    # mm 0.4 % x 9,000 = 36: healthy
    d.pair(ALICE, BOB, "BTC-PERP", base("0.2"), px(50_000), leverage=10)
    d.price("BTC", "45000")
    assert d.status(ALICE) == HEALTHY
    # the first bracket's rate to 10 %: mm 10 % x 9,000 = 900 <= 1,000, but within the 20 % at-risk buffer
    out = d.apply(ev.ParameterChangeRequested(d.tick(), "BTC-PERP", "margin.brackets.0.mmr_ppm", 100_000))
    assert [(o.name, o.old, o.new) for o in of_type(out, ev.ParameterChanged)] == [
        ("margin.brackets.0.mmr_ppm", 4_000, 100_000)
    ]
    assert d.eng.market_idx["BTC-PERP"].spec.margin.brackets[0].mmr_ppm == 100_000
    assert d.status(ALICE) == AT_RISK
    # 12 %: mm 1,080 > equity 1,000: liquidated at once, on the change itself (no price moved)
    out = d.apply(ev.ParameterChangeRequested(d.tick(), "BTC-PERP", "margin.brackets.0.mmr_ppm", 120_000))
    assert [o.account_id for o in of_type(out, ev.PositionLiquidated)] == [ALICE]
    # the initial floor: 50 % means at most 2x on a new position
    d.apply(ev.ParameterChangeRequested(d.tick(), "BTC-PERP", "margin.imr_floor_ppm", 500_000))
    d.open(3, 2_000)
    out = d.fill(3, "BTC-PERP", base("0.1"), px(45_000), leverage=10)  # 4,500 notional needs 2,250 > 2,000
    assert len(rejected(out)) == 1
    out = d.fill(3, "BTC-PERP", base("0.08"), px(45_000), leverage=10)  # 3,600 needs 1,800: accepted
    assert not rejected(out)
    # bad values are refused by the model's own checks, and nothing changes
    for name, value in (("margin.brackets.0.mmr_ppm", 0), ("margin.brackets.99.mmr_ppm", 1), ("margin.x.0.y", 1)):
        assert rejected(d.apply(ev.ParameterChangeRequested(d.tick(), "BTC-PERP", name, value)))
        assert d.eng.market_idx["BTC-PERP"].spec.margin.brackets[0].mmr_ppm == 120_000
    twin = Engine(d.cfg)
    for _s, e in d.records:
        if e.is_input:
            twin.apply(e)
    assert twin.state_hash() == d.eng.state_hash()
    assert Engine.from_state(d.eng.state_dict()).state_hash() == d.eng.state_hash()
