"""The HTTP API end to end: a real uvicorn server on a free port, driven with httpx.

Figures the API shows are checked against the engine's own exact figures (read through the worker).
Every JSON answer is checked to hold no JSON float anywhere (quantums travel as decimal strings).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS
from fluidmargin.core.units import format_decimal as fmt
from fluidmargin.risk.perp import margin
from support.service import Api, running, types

BTC, ETH = "BTC-PERP", "ETH-PERP"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running(tmp_path_factory.mktemp("api")) as a:
        yield a


# --- accounts -------------------------------------------------------------------------------------


def _engine_figures(a: int) -> Any:
    def read(eng: Any) -> dict[str, Any]:
        r = eng.row(a)
        risk = eng.cross_risk(r)
        pos = {}
        for p in eng.positions_of(r):
            if not eng.pos_size[p]:
                continue
            m = eng.markets[int(eng.pos_mkt[p])]
            pr = eng.position_risk(p)

            # the bucket's health at a price, all else held: to check the liquidation price brackets it
            def health_at(price_q: int, p: int = p, m: Any = m, pr: Any = pr) -> int:
                at = margin.position_risk(
                    m.spec.margin,
                    int(eng.pos_size[p]),
                    int(eng.pos_cost[p]),
                    eng.funding_owed(p),
                    price_q,
                    m.spec.size_decimals,
                )
                if eng.pos_iso[p]:
                    return int(eng.pos_iso_margin[p]) + at.upnl_quote_q - at.mm_quote_q
                eq = risk.equity_quote_q - pr.upnl_quote_q + at.upnl_quote_q
                return eq - (risk.mm_quote_q - pr.mm_quote_q + at.mm_quote_q)

            pos[m.spec.symbol] = {
                "size": fmt(int(eng.pos_size[p]), m.spec.size_decimals),
                "notional": fmt(pr.notional_quote_q, QUOTE_DECIMALS),
                "unrealized_pnl": fmt(pr.upnl_quote_q, QUOTE_DECIMALS),
                "maintenance_margin": fmt(pr.mm_quote_q, QUOTE_DECIMALS),
                "initial_margin": fmt(eng.position_initial(p), QUOTE_DECIMALS),
                "health": fmt(eng.iso_risk(p).health_quote_q, QUOTE_DECIMALS) if eng.pos_iso[p] else None,
                "adl": eng.adl_rank(a, m.spec.symbol),
                "health_at": health_at,
                "long": int(eng.pos_size[p]) > 0,
            }
        return {
            "USD": fmt(int(eng.bal[r, eng.quote_c]), QUOTE_DECIMALS),
            "equity": fmt(risk.equity_quote_q, QUOTE_DECIMALS),
            "maintenance_margin": fmt(risk.mm_quote_q, QUOTE_DECIMALS),
            "initial_margin": fmt(eng.cross_initial(r), QUOTE_DECIMALS),
            "health": fmt(risk.health_quote_q, QUOTE_DECIMALS),
            "positions": pos,
        }

    return read


def test_account_view_matches_the_engine(api: Api) -> None:
    a, b = api.open(), api.open()
    api.deposit(a, "10000")
    api.deposit(b, "20000.5")
    api.fill(a, BTC, "0.5", "50000", leverage=10)
    api.fill(b, BTC, "-0.5", "50000", leverage=5, fee="1.25")
    api.fill(a, ETH, "2", "3000", margin_mode="isolated", isolated_margin="1500", leverage=5)
    for acct in (a, b):
        view = api.view(acct)
        want = api.call(_engine_figures(acct))
        assert view["account_id"] == acct
        assert view["status"] == "healthy"
        assert {x["asset"]: x["amount"] for x in view["balances"]} == {"USD": want["USD"]}
        for k in ("equity", "maintenance_margin", "initial_margin", "health"):
            assert view[k] == want[k], k
        got = {p["market"]: p for p in view["positions"]}
        assert set(got) == set(want["positions"])
        for market, w in want["positions"].items():
            g = got[market]
            for k in ("size", "notional", "unrealized_pnl", "maintenance_margin", "initial_margin", "health", "adl"):
                assert g[k] == w[k], (market, k)
            # the liquidation price brackets the bucket's zero health: safe just on one side, breached on the other
            liq = int(Decimal(g["liquidation_price"]) * 10**PRICE_DECIMALS)
            above, below = w["health_at"](liq * 1001 // 1000), w["health_at"](liq * 999 // 1000)
            assert (above > 0 > below) if w["long"] else (below > 0 > above), (market, g["liquidation_price"])
    assert api.view(a)["positions"][0]["margin_mode"] in ("cross", "isolated")
    assert Decimal(api.view(b)["balances"][0]["amount"]) == Decimal("20000.5") - Decimal("1.25")


def test_unknown_ids_are_404(api: Api) -> None:
    assert api.c.get("/v1/accounts/987654321").status_code == 404
    assert api.c.post("/v1/accounts/987654321/deposits", json={"amount": "1"}).status_code == 404
    assert api.c.get("/v1/markets/NOPE-PERP").status_code == 404
    assert api.c.get("/v1/auctions/BTC-PERP-999").status_code == 404
    assert api.c.post("/v1/accounts", json={"parent_id": 987654321}).status_code == 404


def test_decimal_strings_round_trip(api: Api) -> None:
    a = api.open()
    r = api.deposit(a, "12.345678")
    assert r["events"][0]["amount"] == "12.345678"
    api.deposit(a, "0.000001")
    api.deposit(a, "100000")
    assert api.view(a)["balances"][0]["amount"] == "100012.345679"
    r = api.fill(a, BTC, "0.00000001", "50000.12345678")
    assert (r["events"][0]["size_delta"], r["events"][0]["price"]) == ("0.00000001", "50000.12345678")
    pos = api.view(a)["positions"][0]
    assert pos["size"] == "0.00000001"
    assert pos["mark_price"] == "50000"
    r = api.fill(a, BTC, "-0.00000001", "50000")
    assert api.view(a)["positions"] == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("deposits", {"amount": "1.0000001"}, "amount"),  # 7 decimals of USD
        ("deposits", {"amount": 1.5}, "amount"),  # a JSON float
        ("deposits", {"amount": 2}, "amount"),  # a JSON integer
        ("deposits", {"amount": "1e3"}, "amount"),
        ("deposits", {"amount": "NaN"}, "amount"),
        ("deposits", {"amount": "-1"}, "amount"),
        ("deposits", {"amount": "0"}, "amount"),
        ("deposits", {"amount": "99999999999999999999"}, "amount"),  # beyond int64 quantums
        ("deposits", {"amount": "1", "asset": "DOGE"}, "asset"),
        ("fills", {"market": BTC, "size": "0.000000001", "price": "50000"}, "size"),  # 9 decimals of BTC
        ("fills", {"market": BTC, "size": "1", "price": "50000.000000001"}, "price"),
        ("fills", {"market": BTC, "size": "0", "price": "50000"}, "size"),
        ("fills", {"market": "DOGE-PERP", "size": "1", "price": "1"}, "market"),
        ("what-if", {"market": BTC, "size": "0.5", "price": "50000", "fee": "0.0000001"}, "fee"),
    ],
)
def test_malformed_quantities_are_422(api: Api, path: str, body: dict[str, Any], field: str) -> None:
    a = api.open()
    api.deposit(a, "10000")
    seq = api.call(lambda e: e.seq)
    r = api.c.post(f"/v1/accounts/{a}/{path}", json=body)
    assert r.status_code == 422, r.text
    assert any(field in map(str, d["loc"]) for d in r.json()["detail"]), r.text
    assert api.call(lambda e: e.seq) == seq  # nothing applied, nothing logged


def test_what_if_changes_nothing_and_predicts_the_fill(api: Api) -> None:
    a = api.open()
    api.deposit(a, "10000")
    api.fill(a, BTC, "1", "50000")
    before = api.call(lambda e: (e.state_hash(), e.seq))
    r = api.ok("POST", f"/v1/accounts/{a}/what-if", json={"market": BTC, "size": "0.5", "price": "50000"})
    assert r["accepted"] and r["reason"] is None
    assert r["after"]["positions"][0]["size"] == "1.5" and r["before"]["positions"][0]["size"] == "1"
    assert Decimal(r["after"]["initial_margin"]) > Decimal(r["before"]["initial_margin"])
    assert r["after"]["positions"][0]["liquidation_price"] is not None
    big = api.ok("POST", f"/v1/accounts/{a}/what-if", json={"market": BTC, "size": "10", "price": "50000"})
    assert not big["accepted"] and big["reason"].startswith("pre-trade check"), big
    new = api.ok(
        "POST",
        f"/v1/accounts/{a}/what-if",
        json={"market": ETH, "size": "-1", "price": "3000", "margin_mode": "isolated", "isolated_margin": "500"},
    )
    assert new["accepted"] and {p["market"] for p in new["after"]["positions"]} == {BTC, ETH}
    assert api.call(lambda e: (e.state_hash(), e.seq)) == before
    # the real fill lands where the what-if said (margins do not depend on the funding accrued since)
    api.fill(a, BTC, "0.5", "50000")
    view = api.view(a)
    for k in ("initial_margin", "maintenance_margin"):
        assert view[k] == r["after"][k]
    assert view["positions"][0]["size"] == "1.5"
    liq_after, liq_before = view["positions"][0]["liquidation_price"], r["before"]["positions"][0]["liquidation_price"]
    assert Decimal(liq_after) > Decimal(liq_before)


def test_withdrawal_beyond_initial_margin_is_409(api: Api) -> None:
    a = api.open()
    api.deposit(a, "10000")
    api.fill(a, BTC, "1", "50000", leverage=10)  # initial margin 5000
    r = api.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "5000.5"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert "below initial margin" in body["detail"]
    assert [e["type"] for e in body["events"]] == ["WithdrawalRequested", "InputRejected"]
    assert api.view(a)["balances"][0]["amount"] == "10000"
    api.ok("POST", f"/v1/accounts/{a}/withdrawals", json={"amount": "4999"})
    assert api.view(a)["balances"][0]["amount"] == "5001"
    r = api.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1000000"})
    assert r.status_code == 409 and "insufficient" in r.json()["detail"]


def test_idempotency_key_replays_the_first_outcome(api: Api) -> None:
    a = api.open()
    h = {"Idempotency-Key": "deposit-1"}
    first = api.deposit(a, "5", headers=h)
    seq = api.call(lambda e: e.seq)
    again = api.deposit(a, "5", headers=h)
    assert again == {**first, "replayed": True}
    assert api.call(lambda e: e.seq) == seq  # no second event
    assert api.view(a)["balances"][0]["amount"] == "5"
    r = api.c.post(f"/v1/accounts/{a}/deposits", json={"amount": "6"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # another key's Idempotency-Key is its own: no collision across callers
    venue = api.key("venue")
    other = api.deposit(a, "5", headers={**h, **api.as_(venue)})
    assert not other["replayed"] and other["seq"] > first["seq"]
    # a refused input replays as the same refusal
    w = {"Idempotency-Key": "too-much"}
    r1 = api.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1000"}, headers=w)
    r2 = api.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1000"}, headers=w)
    assert r1.status_code == r2.status_code == 409 and r1.json() == r2.json()


def test_open_accounts_and_sub_accounts(api: Api) -> None:
    parent = api.open()
    r = api.ok("POST", f"/v1/accounts/{parent}/sub-accounts", 201, json={})
    child = r["account_id"]
    assert r["parent_id"] == parent and types(r) == ["AccountOpened"]
    assert api.view(child)["parent_id"] == parent
    assert child in api.view(parent)["sub_accounts"]
    assert api.ok("GET", f"/v1/accounts/{parent}/sub-accounts") == {"account_id": parent, "sub_accounts": [child]}
    wanted = api.call(lambda e: max(a for a in e.row_of if not e.is_vault(a)) + 1000)  # below 2^40
    assert api.ok("POST", "/v1/accounts", 201, json={"account_id": wanted})["account_id"] == wanted
    r = api.c.post("/v1/accounts", json={"account_id": wanted})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]


# --- markets, oracle, funds -----------------------------------------------------------------------


def test_markets_oracle_funds_and_parameters(api: Api) -> None:
    markets = {m["symbol"]: m for m in api.ok("GET", "/v1/markets")}
    assert set(markets) == {BTC, ETH}
    btc = api.ok("GET", f"/v1/markets/{BTC}")
    assert btc["index_price"] == "50000" and btc["mark_price"] == "50000" and not btc["halted"]
    assert btc["liquidation_execution"] == "auction"
    oi = api.call(lambda e: e.market_idx[BTC].long_oi_base_q)
    assert btc["open_interest"] == fmt(oi, 8)
    oracle = {x["asset"]: x for x in api.ok("GET", "/v1/oracle")["assets"]}
    assert oracle["BTC"]["validity"] == "valid"
    assert {s["source"] for s in oracle["BTC"]["sources"]} == {"test-feed", "test-feed-2"}
    funds = {f["fund"]: f["balance"] for f in api.ok("GET", "/v1/insurance-funds")["funds"]}
    assert funds == {k: fmt(v, 6) for k, v in api.call(lambda e: dict(e.wf.funds)).items()}
    cfg = api.ok("GET", "/v1/risk-parameters")["config"]
    assert cfg["insurance_fund"] == "100000" and cfg["markets"][0]["margin"]["brackets"][1]["floor"] == "50000"
    # an operator's change is a logged engine event: the new value is in the config at once
    r = api.ok("PUT", "/v1/risk-parameters", json={"market": BTC, "name": "liquidation_fee_ppm", "value": "2000"})
    assert [e["type"] for e in r["events"]][:2] == ["ParameterChangeRequested", "ParameterChanged"]
    assert api.call(lambda e: e.market_idx[BTC].spec.liquidation_fee_ppm) == 2000
    bad = api.c.put("/v1/risk-parameters", json={"market": "", "name": "quote", "value": "1"})
    assert bad.status_code == 409 and "not an engine parameter" in bad.text
    halted = api.ok("POST", f"/v1/markets/{BTC}/halt", json={"reason": "test"})
    assert any(e["type"] == "MarketHalted" for e in halted["events"])
    assert api.ok("GET", f"/v1/markets/{BTC}")["halted"]
    api.ok("POST", f"/v1/markets/{BTC}/resume")
    assert not api.ok("GET", f"/v1/markets/{BTC}")["halted"]


def test_healthz_and_metrics(api: Api) -> None:
    h = api.ok("GET", "/healthz")
    assert h["status"] == "ok" and h["durable_seq"] == h["seq"] == api.call(lambda e: e.seq)
    text = api.c.get("/metrics").text
    for name in (
        "fluidmargin_http_request_duration_seconds_bucket",
        "fluidmargin_engine_apply_seconds_bucket",
        "fluidmargin_events_total",
        "fluidmargin_accounts_at_risk",
        "fluidmargin_liquidations",
        'fluidmargin_insurance_fund_balance{fund="main"} 100000.0',
        'route="/v1/accounts/{account_id}"',
    ):
        assert name in text, name


# --- liquidations, auctions, vault (each on a server of its own) ----------------------------------


def test_liquidation_is_visible_after_a_price_crash(tmp_path: Path) -> None:
    with running(tmp_path) as api:
        a = api.open()
        api.deposit(a, "3100")
        api.fill(a, ETH, "10", "3000", leverage=10)
        r = api.price("ETH", "2700")  # equity 100 < maintenance 108: liquidation
        assert not [e for e in r["events"] if "account_id" in e]  # a publisher sees market-wide events only
        caused = api.caused(r)
        liq = [e for e in caused if e["type"] == "PositionLiquidated"]
        assert liq and liq[0]["account_id"] == a and liq[0]["market"] == ETH and liq[0]["price"] == "2700"
        assert "LiquidationExecuted" in {e["type"] for e in caused}  # ETH goes to the market under impact
        view = api.view(a)  # the penalty (0.5 %) is above the maintenance rate (0.4 %): closed in full
        assert view["positions"] == [] and view["status"] in ("healthy", "bankrupt")
        text = api.c.get("/metrics").text
        assert 'fluidmargin_liquidations_total{market="ETH-PERP"}' in text


def test_auctions_list_and_bid(tmp_path: Path) -> None:
    with running(tmp_path) as api:
        loser, bidder = api.open(), api.open()
        api.deposit(loser, "5100")
        api.deposit(bidder, "100000")
        api.fill(loser, BTC, "1", "50000", leverage=10)
        r = api.price("BTC", "45000")  # equity 100 < maintenance 180: the close goes to auction
        assert "AuctionStarted" in {e["type"] for e in api.caused(r)}
        (auction,) = api.ok("GET", "/v1/auctions")
        assert auction["market"] == BTC and Decimal(auction["size"]) > 0 and auction["accounts"] == [loser]
        assert api.ok("GET", f"/v1/auctions/{auction['auction_id']}") == auction
        r = api.c.post(
            f"/v1/auctions/{auction['auction_id']}/bids",
            json={"account_id": loser, "size": auction["size"], "limit_price": auction["price"]},
        )
        assert r.status_code == 409 and "own auction" in r.json()["detail"]
        r = api.c.post(
            f"/v1/auctions/{auction['auction_id']}/bids",
            json={"account_id": bidder, "size": auction["size"], "limit_price": "1"},
        )
        assert r.status_code == 409 and "below the auction price" in r.json()["detail"]
        r = api.ok(
            "POST",
            f"/v1/auctions/{auction['auction_id']}/bids",
            json={"account_id": bidder, "size": auction["size"], "limit_price": auction["price"]},
        )
        filled = [e for e in r["events"] if e["type"] == "AuctionBidFilled"]
        assert filled[0]["size"] == auction["size"] and "AuctionFinished" in types(r)
        assert Decimal(filled[0]["price"]) <= Decimal(auction["price"])
        assert api.ok("GET", "/v1/auctions") == []
        assert api.view(bidder)["positions"][0]["size"] == auction["size"]
        assert api.c.get(f"/v1/auctions/{auction['auction_id']}").status_code == 404


def test_vault_deposit_withdraw_claim(tmp_path: Path) -> None:
    with running(tmp_path) as api:
        lp = api.open()
        api.deposit(lp, "10000")
        r = api.ok("POST", "/v1/vault/deposits", json={"account_id": lp, "amount": "4000"})
        (changed,) = [e for e in r["events"] if e["type"] == "VaultSharesChanged"]
        assert (changed["shares_delta"], changed["amount"], changed["total_shares"]) == ("4000", "4000", "4000")
        vault = api.ok("GET", "/v1/vault")
        assert (vault["configured"], vault["equity"], vault["cash"], vault["total_shares"]) == (
            True,
            "4000",
            "4000",
            "4000",
        )
        view = api.view(lp)
        assert view["vault"] == {"shares": "4000", "pending_shares": None, "claimable_at_ns": None}
        assert view["balances"][0]["amount"] == "6000"
        r = api.c.post("/v1/vault/claims", json={"account_id": lp})
        assert r.status_code == 409 and "no pending withdrawal" in r.json()["detail"]
        r = api.c.post("/v1/vault/withdrawals", json={"account_id": lp, "shares": "4000.000001"})
        assert r.status_code == 409 and "beyond" in r.json()["detail"]
        api.ok("POST", "/v1/vault/withdrawals", json={"account_id": lp, "shares": "1000"})
        assert api.view(lp)["vault"]["pending_shares"] == "1000"
        r = api.ok("POST", "/v1/vault/claims", json={"account_id": lp})
        (changed,) = [e for e in r["events"] if e["type"] == "VaultSharesChanged"]
        assert (changed["shares_delta"], changed["amount"], changed["total_shares"]) == ("-1000", "-1000", "3000")
        view = api.view(lp)
        assert view["balances"][0]["amount"] == "7000" and view["vault"]["shares"] == "3000"


# --- the OpenAPI document -------------------------------------------------------------------------


def _refs(x: Any) -> Iterator[str]:
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(x, list):
        for v in x:
            yield from _refs(v)


def _api_routes(routes: Any) -> Iterator[APIRoute]:
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        sub = getattr(r, "original_router", None)  # newer FastAPI keeps included routers whole
        if sub is not None:
            yield from _api_routes(sub.routes)


def test_openapi_document_is_complete(api: Api) -> None:
    app = api.app
    doc = app.openapi()
    assert api.ok("GET", "/openapi.json") == doc
    schemas = doc["components"]["schemas"]
    assert all(ref.removeprefix("#/components/schemas/") in schemas for ref in _refs(doc))
    routes = list(_api_routes(app.routes))
    assert len(routes) >= 27
    for route in routes:
        for method in route.methods:
            op = doc["paths"][route.path][method.lower()]
            assert op.get("summary"), (route.path, method)
            codes = op["responses"]
            main = [c for c in codes if c.startswith("2")] or ["501"]
            for c in main:
                content = codes[c]["content"]
                assert any(v.get("schema") for v in content.values()), (route.path, method, c)
            if route.path.startswith("/v1/"):
                for c in ("401", "429"):
                    assert codes[c]["content"]["application/json"]["schema"], (route.path, method, c)
    # quantums are strings in every schema, never numbers
    for name in ("AccountView", "PositionView", "MarketView", "WriteResult", "DepositedEvent", "TradeFilledEvent"):
        props = schemas[name]["properties"]
        for k in ("equity", "size", "mark_price", "durable_seq", "amount", "size_delta", "price"):
            if k in props and k != "durable_seq":
                s = props[k]
                kinds = {s.get("type")} | {x.get("type") for x in s.get("anyOf", [])}
                assert "number" not in kinds and "string" in kinds, (name, k, s)
    # every engine event type a write can return is documented, discriminated by its type
    event_union = schemas["WriteResult"]["properties"]["events"]["items"]
    assert event_union["discriminator"]["propertyName"] == "type"
    assert {"PositionLiquidatedEvent", "AuctionStartedEvent", "VaultSharesChangedEvent"} <= {
        r.removeprefix("#/components/schemas/") for r in _refs(event_union)
    }
