"""Every changeable parameter has a range, checked the same on start-up and on change (issue 11, item 5).

The ranges are declared once, in the config classes' ``RANGES`` (model/instruments.py, model/config.py),
and checked when a config is built: from a file or log header on start-up, and when the engine rebuilds
its config for a ``ParameterChangeRequested``. A refused change names the range.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig, parameter_owner, parameter_range
from fluidmargin.sim.venues import perp_venue
from support.desk import Desk, base, of_type, px
from support.service import running

ALICE, BOB = 1, 2
BTC = "BTC-PERP"
CFG = perp_venue(("BTC", "ETH"))  # Binance BTCUSDT brackets: 12 of them, bracket 3 from 3,000,000 USD at 1 %

# every changeable parameter, the bracket ones for the first bracket and one further up
PARAMS = [("", n) for n in Engine.PARAMETERS] + [
    (BTC, n.replace("<i>", i)) for n in Engine.MARKET_PARAMETERS for i in (("0", "3") if "<i>" in n else ("",))
]
IDS = [f"{m or 'engine'}:{n}" for m, n in PARAMS]


def desk() -> Desk:
    """Alice long 0.2 BTC against Bob at 50,000 (10x), so that a change re-margins something."""
    d = Desk(CFG)
    d.price("BTC", "50000")
    d.price("ETH", "3000")
    d.open(ALICE, 2_000)
    d.open(BOB, 1_000_000)
    d.pair(ALICE, BOB, BTC, base("0.2"), px(50_000), leverage=10)
    return d


def change(d: Desk, market: str, name: str, value: int) -> list[str]:
    out = d.apply(ev.ParameterChangeRequested(d.tick(), market, name, value))
    return [o.reason for o in of_type(out, ev.InputRejected)]


def hashable_state(d: Desk) -> str:
    s = d.eng.state_dict(for_hash=True)
    s.pop("seq"), s.pop("now_ns")
    return str(s)


def config_with(market: str, name: str, value: int) -> dict[str, Any]:
    """The venue's config as a plain dict (a config file, a log header) with one setting replaced."""
    d = CFG.to_dict()
    node: Any = d if not market else next(m for m in d["markets"] if m["symbol"] == market)
    if market and name.startswith("oracle."):  # the policy of the market's base asset
        asset, name = node["base_asset"], name.removeprefix("oracle.")
        node = next((p for a, p in d["oracle"] if a == asset), d["default_oracle"])
    *path, last = name.split(".")
    for part in path:
        node = node[int(part)] if isinstance(node, list | tuple) else node[part]
    node[last] = value
    return d


def names_bound(reason: str, lo: int, hi: int, value: int) -> bool:
    """The reason names the range and the bound the value broke."""
    return "must be in [" in reason and (f"[{lo}, " in reason if value < lo else f", {hi}]" in reason)


def test_every_changeable_parameter_has_a_declared_range() -> None:
    for market, name in PARAMS:
        lo, hi = parameter_range(CFG, market, name)
        assert lo <= hi, (market, name)


@pytest.mark.parametrize(("market", "name"), PARAMS, ids=IDS)
@pytest.mark.parametrize("side", ["below-min", "above-max"])
def test_an_out_of_range_value_is_refused_on_change_and_on_start_up(market: str, name: str, side: str) -> None:
    lo, hi = parameter_range(CFG, market, name)
    value = lo - 1 if side == "below-min" else hi + 1
    # on change: refused with its range, logged, nothing changes
    d = desk()
    before = hashable_state(d)
    reasons = change(d, market, name, value)
    assert len(reasons) == 1 and reasons[0].startswith(f"invalid value for {name}: "), reasons
    assert names_bound(reasons[0], lo, hi, value), reasons[0]
    assert hashable_state(d) == before
    # on start-up: the same config checks refuse a config holding it
    with pytest.raises(ValidationError) as err:
        EngineConfig.from_dict(config_with(market, name, value))
    assert names_bound(str(err.value), lo, hi, value), str(err.value)


# where a bound of the range is itself refused by a relation with another setting
RELATED = {
    ("", "at_risk_buffer_ppm", "hi"): "at_risk_exit_ppm",  # the buffer stays <= the exit band (300,000)
    ("", "at_risk_exit_ppm", "lo"): "at_risk_exit_ppm",  # ... and the exit band >= the buffer (200,000)
    # bracket 3's maintenance amount 11,450 USD would exceed 3,000,000 x 1e-6 = 3 USD at its floor
    (BTC, "margin.brackets.3.mmr_ppm", "lo"): "cum_quote_q must be in [0, 3000000]",
}


@pytest.mark.parametrize(("market", "name"), PARAMS, ids=IDS)
def test_the_bounds_themselves_are_accepted(market: str, name: str) -> None:
    lo, hi = parameter_range(CFG, market, name)
    for end, value in (("lo", lo), ("hi", hi)):
        d = desk()
        reasons = change(d, market, name, value)
        related = RELATED.get((market, name, end))
        if related:
            assert len(reasons) == 1 and related in reasons[0], reasons
            continue
        assert reasons == [], (end, value, reasons)
        flag = isinstance(getattr(*parameter_owner(CFG, market, name)), bool)
        EngineConfig.from_dict(config_with(market, name, bool(value) if flag else value))  # and it starts


@pytest.mark.parametrize(
    ("name", "value", "bound"),
    [
        # the reported cases, and their fellows
        ("margin.imr_floor_ppm", -1, "[0, 1000000]"),
        ("margin.imr_floor_ppm", -(2**62), "[0, 1000000]"),
        ("margin.imr_floor_ppm", PPM + 1, "[0, 1000000]"),
        ("margin.brackets.0.cum_quote_q", -1, "[0, "),
        ("margin.brackets.0.cum_quote_q", 1, "[0, 0]"),  # bracket 0 starts at 0: nothing to deduct
        ("margin.brackets.1.mmr_ppm", -5, "[1, 1000000]"),
    ],
)
def test_the_reported_values_are_refused(name: str, value: int, bound: str) -> None:
    d = desk()
    out = d.apply(ev.ParameterChangeRequested(d.tick(), BTC, name, value))
    reasons = [o.reason for o in of_type(out, ev.InputRejected)]
    assert len(reasons) == 1 and bound in reasons[0], reasons
    assert not of_type(out, ev.ParameterChanged)


def test_a_valid_change_is_still_accepted_and_replays() -> None:
    d = desk()
    assert change(d, BTC, "margin.imr_floor_ppm", 200_000) == []
    assert change(d, "", "withdraw_upnl_weight_ppm", 500_000) == []
    assert change(d, BTC, "liquidation.adl", 0) == []
    assert d.eng.market_idx[BTC].spec.margin.imr_floor_ppm == 200_000
    assert d.eng.market_idx[BTC].spec.liquidation.adl is False
    twin = Engine(d.cfg)
    for _s, e in d.records:
        if e.is_input:
            twin.apply(e)
    assert twin.state_hash() == d.eng.state_hash()
    assert Engine.from_state(d.eng.state_dict()).state_hash() == d.eng.state_hash()


def test_start_up_refuses_a_flag_that_is_not_a_flag() -> None:
    with pytest.raises(ValidationError, match=r"adl must be in \[0, 1\]"):
        EngineConfig.from_dict(config_with(BTC, "liquidation.adl", 2))
    with pytest.raises(ValidationError, match=r"withdraw_upnl_weight_ppm must be in \[0, 1000000\]"):
        dataclasses.replace(CFG, withdraw_upnl_weight_ppm=-1)


# --- through the API -------------------------------------------------------------------------------------


def test_put_risk_parameters_refuses_out_of_range_values(tmp_path: Path) -> None:
    with running(tmp_path) as api:
        for name, value in (
            ("margin.imr_floor_ppm", "-1"),
            ("margin.imr_floor_ppm", str(-(2**62))),
            ("margin.brackets.0.cum_quote_q", "-1"),
        ):
            seq = api.call(lambda e: e.seq)
            r = api.c.put("/v1/risk-parameters", json={"market": BTC, "name": name, "value": value})
            assert r.status_code == 422, r.text  # "must be in [..]": a malformed value (deps.rejection_status)
            body = r.json()
            detail = body["detail"]
            text = detail if isinstance(detail, str) else " ".join(x["msg"] for x in detail)
            assert f"invalid value for {name}" in text and "must be in [0, " in text, text
            # refused, and logged with its reason
            logged = api.ok("GET", "/v1/events", params={"after": seq})["events"]
            assert [e["type"] for e in logged] == ["ParameterChangeRequested", "InputRejected"]
        cfg = api.ok("GET", "/v1/risk-parameters")["config"]
        btc = next(m for m in cfg["markets"] if m["symbol"] == BTC)
        assert btc["margin"]["imr_floor_ppm"] == 0 and btc["margin"]["brackets"][0]["cum"] == "0"
        r = api.ok("PUT", "/v1/risk-parameters", json={"market": BTC, "name": "margin.imr_floor_ppm", "value": "20000"})
        assert [e["type"] for e in r["events"]][:2] == ["ParameterChangeRequested", "ParameterChanged"]
        r = api.ok("PUT", "/v1/risk-parameters", json={"market": "", "name": "withdraw_upnl_weight_ppm", "value": "1"})
        assert [e["type"] for e in r["events"]][:2] == ["ParameterChangeRequested", "ParameterChanged"]
