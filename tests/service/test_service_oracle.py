"""The oracle through the real HTTP service: one publisher cannot liquidate, a gap is reachable
(an admin re-anchor, ``max_jump_ppm`` changeable), and ``GET /v1/oracle`` judges validity now.

The server's clock is a test clock (the worker stamps every input with it), so times are exact.
Venue: the waterfall venue (BTC, ETH), default oracle policy: quorum of 2 sources to liquidate,
25 % jump limit over 60 s, 120 s staleness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.sim.venues import waterfall_venue
from support.service import ADMIN, Api, serving

S = 10**9
T0 = 1_700_000_000 * S


class Clock:
    """The service's clock: moves only when the test moves it (1 µs per read, so stamps differ)."""

    def __init__(self) -> None:
        self.ns = T0

    def __call__(self) -> int:
        self.ns += 1_000
        return self.ns


@contextmanager
def service(tmp: Path) -> Iterator[tuple[Api, Clock]]:
    clock = Clock()
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    app = create_app(ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, clock=clock, rate_per_s=0))
    with serving(app) as api:
        api.keys["pub"] = api.key("publisher", source="feed-a")
        api.keys["pub2"] = api.key("publisher", source="feed-b")
        yield api, clock


def publish(api: Api, price: str, key: str = "pub", asset: str = "BTC") -> Any:
    return api.ok("POST", "/v1/prices", json={"asset": asset, "price": price}, headers=api.as_(api.keys[key]))


def long_20x(api: Api) -> int:
    """An account long 1 BTC at 50,000 with 2,600 USD (20x): bankrupt below 47,400."""
    a, b = api.open(), api.open()
    api.deposit(a, "2600")
    api.deposit(b, "100000")
    api.fill(a, "BTC-PERP", "1", "50000", leverage=20)
    api.fill(b, "BTC-PERP", "-1", "50000", leverage=2)
    return a


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def fund(api: Api) -> Any:
    return api.ok("GET", "/v1/insurance-funds")


def test_one_publisher_cannot_liquidate(tmp_path: Path) -> None:
    # one publisher prints 24 % below: the venue marks at it but liquidates nobody and draws no fund
    with service(tmp_path) as (api, _clock):
        publish(api, "50000")
        publish(api, "3000", asset="ETH")
        a = long_20x(api)
        before = fund(api)
        r = publish(api, "38000")
        caused = types(api.caused(r))
        assert "IndexPriceUpdated" in caused
        assert not {"PositionLiquidated", "PositionsLiquidated", "AuctionStarted"} & set(caused), caused
        assert fund(api) == before
        view = api.view(a)
        assert view["status"] == "at_risk"
        assert api.ok("GET", "/v1/oracle")["assets"][0]["liquidation_grade"] is False
        # a second publisher agreeing makes a quorum: now the account is liquidated
        r = publish(api, "38000", key="pub2")
        assert "PositionsLiquidated" in types(api.caused(r)) or "PositionLiquidated" in types(api.caused(r))
        assert api.ok("GET", "/v1/oracle")["assets"][0]["liquidation_grade"] is True


def test_a_fast_walk_is_limited_over_the_window(tmp_path: Path) -> None:
    # -59 % in 4 requests, each step under 25 %: only the first (-16 %) is within 25 % of 50,000
    with service(tmp_path) as (api, clock):
        publish(api, "50000")
        refused = []
        for p in ("42000", "35000", "27000", "20500"):
            clock.ns += 40_000_000  # 40 ms
            refused += [e["reason"] for e in publish(api, p)["events"] if e["type"] == "OraclePriceRejected"]
        assert len(refused) == 3 and all(x.startswith("TOO_VOLATILE") for x in refused)
        assert api.ok("GET", "/v1/oracle")["assets"][0]["index_price"] == "42000"


def test_a_gap_is_reachable_by_an_admin_re_anchor_and_by_the_parameter(tmp_path: Path) -> None:
    with service(tmp_path) as (api, clock):
        publish(api, "50000")
        publish(api, "50000", key="pub2")
        clock.ns += 600 * S  # an outage; the market comes back 30 % lower
        assert publish(api, "35000")["events"][-1]["type"] == "OraclePriceRejected"
        # the admin's own prints are refused as well: a re-anchor is the operator's way
        r = api.ok("POST", "/v1/prices", json={"asset": "BTC", "price": "35000"})
        assert r["events"][-1]["type"] == "OraclePriceRejected"
        r = api.ok("POST", "/v1/oracle/BTC/reanchor", json={"price": "35000", "reason": "gap after outage"})
        (re,) = [e for e in r["events"] if e["type"] == "OracleReanchored"]
        assert (re["old_price"], re["price"], re["reason"]) == ("50000", "35000", "operator: gap after outage")
        assert api.ok("GET", "/v1/oracle")["assets"][0]["index_price"] == "35000"
        # bad input: a clear error, nothing logged
        bad = api.c.post("/v1/oracle/BTC/reanchor", json={"price": "-1", "reason": ""})
        assert bad.status_code == 422, bad.text
        bad = api.c.post("/v1/oracle/DOGE/reanchor", json={"price": "1", "reason": ""})
        assert bad.status_code == 422, bad.text
        # max_jump_ppm is a parameter one may change, per market or venue-wide
        for body in (
            {"market": "ETH-PERP", "name": "oracle.max_jump_ppm", "value": "400000"},
            {"market": "", "name": "default_oracle.max_jump_ppm", "value": "300000"},
        ):
            r = api.ok("PUT", "/v1/risk-parameters", json=body)
            assert "ParameterChanged" in types(r["events"])
        eth = next(x for x in api.ok("GET", "/v1/oracle")["assets"] if x["asset"] == "ETH")
        assert eth["policy"]["max_jump_ppm"] == 400_000


def test_the_oracle_view_judges_validity_at_the_service_clock(tmp_path: Path) -> None:
    with service(tmp_path) as (api, clock):
        publish(api, "50000")
        btc = api.ok("GET", "/v1/oracle")["assets"][0]
        assert btc["validity"] == "valid"
        clock.ns += 125 * S  # no input for 125 s: the feed is older than the 120 s staleness
        view = api.ok("GET", "/v1/oracle")
        btc = view["assets"][0]
        assert btc["validity"] == "stale"
        assert view["now_ns"] >= btc["index_ts_ns"] + 125 * S
        # and the engine judges the same at that time: opening risk is refused as stale
        a = api.open()
        api.deposit(a, "10000")
        r = api.c.post(f"/v1/accounts/{a}/fills", json={"market": "BTC-PERP", "size": "0.01", "price": "50000"})
        assert r.status_code == 409 and "STALE" in r.text, r.text
