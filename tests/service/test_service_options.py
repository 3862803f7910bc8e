"""Options and portfolio margin through the HTTP API (a real uvicorn server, httpx): option markets,
vol publishing and surfaces, margin modes, the portfolio view (scenario matrix, Greeks) and the
what-if preview on the same model. Quantums and risk figures are decimal strings, never JSON floats.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluidmargin.model.instruments import OptionSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue
from support.service import ADMIN, Api, check_response

NS = 10**9
EXP = (time.time_ns() // (3600 * NS) + 30 * 24) * 3600 * NS  # ~30 days after the service clock (wall time)
C60, P40 = "BTC-C-60000", "BTC-P-40000"


def make_app(tmp: Path) -> Any:
    cfg = dataclasses.replace(
        waterfall_venue(),
        options=(
            OptionSpec(C60, "BTC", 60_000 * 10**8, EXP, "call"),
            OptionSpec(P40, "BTC", 40_000 * 10**8, EXP, "put"),
        ),
    )
    return create_app(ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    app = make_app(tmp_path_factory.mktemp("opt"))
    with (
        ServerThread(app) as url,
        httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
            event_hooks={"response": [check_response]},
        ) as c,  # fmt: skip
    ):
        a = Api(app, c)
        a.keys["pub"] = a.key("publisher", source="vol-feed")
        a.price("BTC", "50000")
        a.price("ETH", "3000")
        yield a


def publish_vol(api: Api, strike: str, vol: str, status: int = 200) -> Any:
    body = {"underlying": "BTC", "expiry_ns": EXP, "strike": strike, "vol": vol}
    return api.ok("POST", "/v1/vols", status, json=body, headers=api.as_(api.keys["pub"]))


def pm_account(api: Api, usd: str) -> int:
    a = api.open()
    api.deposit(a, usd)
    r = api.ok("PUT", f"/v1/accounts/{a}/margin-mode", json={"mode": "portfolio"})
    assert r["events"][0]["type"] == "MarginModeChanged"
    return a


def test_vols_are_published_validated_and_listed(api: Api) -> None:
    publish_vol(api, "60000", "0.65")
    publish_vol(api, "40000", "0.7")
    # State unchanged by each refusal, each with its reason (409: a conflict with the engine's rules)
    for strike, vol, why in [("60000", "-0.1", "vol_not_positive"), ("60000", "30", "vol_too_high"),
                             ("55000", "0.5", "unknown series"), ("0", "0.5", "strike_not_positive")]:  # fmt: skip
        r = publish_vol(api, strike, vol, 409)
        assert why in r["detail"]
    assert (
        api.c.post("/v1/vols", json={"underlying": "BTC", "expiry_ns": EXP, "strike": "1", "vol": 0.5}).status_code
        == 422
    )
    surface = api.ok("GET", "/v1/vol-surfaces/BTC")
    assert [(p["strike"], p["vol"], p["source"]) for p in surface["points"]] == [
        ("40000", "0.7", "vol-feed"),
        ("60000", "0.65", "vol-feed"),
    ]
    assert api.c.get("/v1/vol-surfaces/DOGE").status_code == 404
    markets = {m["symbol"]: m for m in api.ok("GET", "/v1/options")}
    assert set(markets) == {C60, P40}
    c = api.ok("GET", f"/v1/options/{C60}")
    assert c["strike"] == "60000" and c["right"] == "call" and c["mark_vol"] == "0.65"
    assert 0 < Decimal(c["delta"]) < Decimal("0.5") and Decimal(c["mark_price"]) > 0 and Decimal(c["theta"]) < 0
    assert api.c.get("/v1/options/NOPE").status_code == 404


def test_portfolio_account_trades_options_and_shows_its_scenario_matrix(api: Api) -> None:
    publish_vol(api, "60000", "0.65")
    publish_vol(api, "40000", "0.7")
    bob = pm_account(api, "1000000")
    alice = pm_account(api, "20000")
    # a standard account cannot hold options: 409 with the rule
    std = api.open()
    api.deposit(std, "1000")
    r = api.c.post(f"/v1/accounts/{std}/fills", json={"market": C60, "size": "1", "price": "1000"})
    assert r.status_code == 409 and "portfolio margin mode" in r.json()["detail"]
    # what-if on the same model, then the fill: premium 1.5 x 1,000 = 1,500 USD paid by the buyer
    wi = api.ok("POST", f"/v1/accounts/{alice}/what-if", json={"market": C60, "size": "1.5", "price": "1000"})
    assert wi["accepted"] is True, wi["reason"]
    api.fill(alice, C60, "1.5", "1000")
    api.fill(bob, C60, "-1.5", "1000")
    api.fill(alice, "BTC-PERP", "-0.5", "50000")
    view = api.view(alice)
    assert view["margin_mode"] == "portfolio" and view["valuation_blocked"] is None
    assert {b["asset"]: b["amount"] for b in view["balances"]}["USD"] == "18500"  # 20,000 - 1,500
    pf = api.ok("GET", f"/v1/accounts/{alice}/portfolio")
    assert pf["equity"] == view["equity"] and pf["maintenance_margin"] == view["maintenance_margin"]
    assert [(p["market"], p["kind"], p["size"]) for p in pf["positions"]] == [
        ("BTC-PERP", "perpetual", "-0.5"),
        (C60, "option", "1.5"),
    ]
    (btc,) = pf["underlyings"]
    pnls = [Decimal(s["pnl"]) for s in btc["scenarios"]]
    assert len(pnls) == 31  # Derive PM2: 1 + 7 x 3 + 1 spot x vol moves, 6 tails, 2 skews
    # the worst scenario is the lowest P&L of the matrix (unless the basis contingency is worse)
    if btc["worst_index"] is not None:
        assert Decimal(btc["worst_pnl"]) == min(pnls)
        assert btc["scenarios"][btc["worst_index"]]["pnl"] == btc["worst_pnl"]
    total = pf["total"]
    # delta: -0.5 (perp) + 1.5 x call delta; the call's own delta from its market view
    call_delta = Decimal(api.ok("GET", f"/v1/options/{C60}")["delta"])
    assert abs(Decimal(total["delta"]) - (Decimal("-0.5") + Decimal("1.5") * call_delta)) < Decimal("1e-6")
    assert Decimal(total["gamma"]) > 0 and Decimal(total["vega"]) > 0 and Decimal(total["theta"]) < 0
    # a what-if that would breach the initial margin is refused with the reason, nothing applied
    wi = api.ok("POST", f"/v1/accounts/{alice}/what-if", json={"market": P40, "size": "-100", "price": "1"})
    assert wi["accepted"] is False and wi["reason"].startswith("pre-trade check")
    assert api.view(alice)["equity"] == view["equity"]


def test_margin_mode_changes_are_refused_with_reasons(api: Api) -> None:
    publish_vol(api, "40000", "0.7")
    a = api.open()
    api.deposit(a, "1500")
    api.fill(a, "BTC-PERP", "0.2", "50000", leverage=10)
    r = api.c.put(f"/v1/accounts/{a}/margin-mode", json={"mode": "portfolio"})
    assert r.status_code == 409 and "below initial margin" in r.json()["detail"]
    assert api.view(a)["margin_mode"] == "standard"
    assert api.c.put(f"/v1/accounts/{a}/margin-mode", json={"mode": "nope"}).status_code == 422
    assert api.c.put("/v1/accounts/987654/margin-mode", json={"mode": "portfolio"}).status_code == 404
