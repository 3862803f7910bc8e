"""Money and authority in the HTTP service, through a real server: who may credit an account, who may
choose account ids, how strictly requests are read, what the bootstrap admin key, auctions and
metrics expose. (The full role table is README.md's, enforced by test_service_auth's matrix.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue

ADMIN = "fm_authority-test-admin"
VAULT_ID = 2**62  # BackstopSpec's default account id
BOUND = 2**40  # client-chosen account ids lie below it


def settings(tmp: Path, **kw: Any) -> ServiceSettings:
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    return ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, rate_per_s=0, **kw)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclasses.dataclass
class Srv:
    app: Any
    c: httpx.Client  # as the admin

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.c.request(method, path, **kw)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def key(self, role: str, **kw: Any) -> str:
        return str(self.ok("POST", "/v1/keys", 201, json={"role": role, **kw})["api_key"])

    def seq(self) -> int:
        return int(self.app.state.svc.worker.call(lambda e: e.seq))

    def balance(self, a: int) -> str:
        return str(self.ok("GET", f"/v1/accounts/{a}")["balances"][0]["amount"])


@contextmanager
def serving(s: ServiceSettings) -> Iterator[Srv]:
    app = create_app(s)
    with ServerThread(app) as url, httpx.Client(base_url=url, headers=auth(ADMIN), timeout=30) as c:
        yield Srv(app, c)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    with serving(settings(tmp_path_factory.mktemp("authority"))) as s:
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            s.ok("POST", "/v1/prices", json={"asset": asset, "price": price})
        yield s


# --- item 2: deposits are the custody's facts ------------------------------------------------------------


def test_an_account_key_cannot_credit_its_own_account(srv: Srv) -> None:
    a = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
    srv.ok("POST", f"/v1/accounts/{a}/deposits", json={"amount": "100"})  # the venue's custody reports it
    own = auth(srv.key("account", account_ids=[a]))
    seq = srv.seq()
    r = srv.c.post(f"/v1/accounts/{a}/deposits", json={"amount": "1000000000000"}, headers=own)
    assert r.status_code == 403, r.text
    assert srv.seq() == seq and srv.balance(a) == "100"  # nothing logged, nothing credited
    # it may still ask for a withdrawal of what it has (kept only above initial margin)
    r = srv.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "40"}, headers=own)
    assert r.status_code == 200, r.text
    assert srv.balance(a) == "60"
    r = srv.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1000"}, headers=own)
    assert r.status_code == 409 and srv.balance(a) == "60"


# --- item 3: account numbering ------------------------------------------------------------------------------


def test_client_chosen_ids_are_bounded_and_never_move_the_counter(tmp_path: Path) -> None:
    s = settings(tmp_path)
    with serving(s) as srv:
        a = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
        assert a == 1
        own = auth(srv.key("account", account_ids=[a]))
        seq = srv.seq()
        for wanted in (2**63 - 1, VAULT_ID, BOUND, -1, 2**64):
            for path, hdr in ((f"/v1/accounts/{a}/sub-accounts", own), ("/v1/accounts", auth(ADMIN))):
                r = srv.c.post(path, json={"account_id": wanted}, headers=hdr)
                assert r.status_code == 422, f"{path} {wanted}: {r.status_code} {r.text}"
                assert r.json()["detail"][0]["loc"][-1] == "account_id", r.text
        assert srv.seq() == seq  # refused at the door: nothing logged
        # the largest id a client may choose is taken as asked, and moves nothing
        top = srv.ok("POST", f"/v1/accounts/{a}/sub-accounts", 201, json={"account_id": BOUND - 1}, headers=own)
        assert (top["account_id"], top["parent_id"]) == (BOUND - 1, a)
        # refused requests move nothing either: an id taken, an unknown parent
        assert srv.c.post("/v1/accounts", json={"account_id": BOUND - 1}).status_code == 409
        assert srv.c.post("/v1/accounts", json={"parent_id": 123456}).status_code == 404
        assert srv.ok("POST", "/v1/accounts", 201, json={})["account_id"] == 2
        srv.ok("POST", "/v1/accounts", 201, json={"account_id": 3})  # a client's own numbering ...
        assert srv.ok("POST", "/v1/accounts", 201, json={})["account_id"] == 4  # ... is skipped, not followed
    with serving(s) as srv:  # and after a restart
        assert srv.ok("POST", "/v1/accounts", 201, json={})["account_id"] == 5
        sub = srv.ok("POST", "/v1/accounts/1/sub-accounts", 201, json={})
        assert (sub["account_id"], sub["parent_id"]) == (6, 1)


def test_sub_accounts_per_parent_are_capped(tmp_path: Path) -> None:
    with serving(settings(tmp_path, max_sub_accounts=2)) as srv:
        a = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
        own = auth(srv.key("account", account_ids=[a]))
        idem = {"Idempotency-Key": "second"}
        first = srv.ok("POST", f"/v1/accounts/{a}/sub-accounts", 201, json={}, headers=own)
        second = srv.ok("POST", f"/v1/accounts/{a}/sub-accounts", 201, json={}, headers={**own, **idem})
        seq = srv.seq()
        for path, body, hdr in (
            (f"/v1/accounts/{a}/sub-accounts", {}, own),
            ("/v1/accounts", {"parent_id": a}, auth(ADMIN)),
            (f"/v1/accounts/{a}/sub-accounts", {"account_id": 77}, own),
        ):
            r = srv.c.post(path, json=body, headers=hdr)
            assert r.status_code == 409 and "2 sub-accounts" in r.json()["detail"], r.text
        assert srv.seq() == seq
        # a replay of a sub-account opened before the cap still answers as it did
        again = srv.c.post(f"/v1/accounts/{a}/sub-accounts", json={}, headers={**own, **idem})
        assert again.status_code == 201 and again.json() == {**second, "replayed": True}
        listed = srv.ok("GET", f"/v1/accounts/{a}/sub-accounts")["sub_accounts"]
        assert listed == sorted([first["account_id"], second["account_id"]])
        # the cap is the whole tree's: no sub-account of a sub-account either, and nothing logged
        r = srv.c.post(f"/v1/accounts/{first['account_id']}/sub-accounts", json={}, headers=own)
        assert r.status_code == 409 and srv.seq() == seq, r.text
        # another top-level account has a tree of its own
        b = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
        srv.ok("POST", f"/v1/accounts/{b}/sub-accounts", 201, json={})


# --- item 4: strict parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/vault/deposits", {"account_id": True, "amount": "1"}),
        ("/v1/vault/deposits", {"account_id": "1", "amount": "1"}),
        ("/v1/vault/deposits", {"account_id": 1.0, "amount": "1"}),
        ("/v1/vault/withdrawals", {"account_id": False, "shares": "1"}),
        ("/v1/vault/claims", {"account_id": "1_000"}),
        ("/v1/auctions/BTC-PERP-1/bids", {"account_id": True, "size": "1", "limit_price": "1"}),
        ("/v1/accounts", {"account_id": "1_000"}),
        ("/v1/accounts", {"parent_id": True}),
        ("/v1/accounts/{a}/sub-accounts", {"account_id": "9"}),
        ("/v1/accounts/{a}/fills", {"market": "BTC-PERP", "size": "0.001", "price": "50000", "leverage": " 5"}),
        ("/v1/accounts/{a}/fills", {"market": "BTC-PERP", "size": "0.001", "price": "50000", "leverage": "+5"}),
        ("/v1/accounts/{a}/fills", {"market": "BTC-PERP", "size": "0.001", "price": "50000", "leverage": True}),
        ("/v1/accounts/{a}/fills", {"market": "BTC-PERP", "size": "0.001", "price": "50000", "leverage": 5.0}),
        ("/v1/accounts/{a}/what-if", {"market": "BTC-PERP", "size": "0.001", "price": "50000", "leverage": "5"}),
        ("/v1/keys", {"role": "account", "account_ids": ["1"]}),
        ("/v1/keys", {"role": "account", "account_ids": [True]}),
        ("/v1/keys", {"role": "venue", "burst": "10"}),
        ("/v1/keys", {"role": "venue", "rate_per_s": "10"}),
        ("/v1/vols", {"underlying": "BTC", "expiry_ns": "1", "strike": "1", "vol": "0.5"}),
    ],
)
def test_lax_values_are_refused(srv: Srv, path: str, body: dict[str, Any]) -> None:
    a = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
    srv.ok("POST", f"/v1/accounts/{a}/deposits", json={"amount": "10000"})
    keys, seq = len(srv.ok("GET", "/v1/keys")), srv.seq()
    r = srv.c.post(path.format(a=a), json=body)
    assert r.status_code == 422, r.text
    assert srv.seq() == seq and len(srv.ok("GET", "/v1/keys")) == keys


@pytest.mark.parametrize("raw", ["1.0", "%201", "+1", "01", "1_0", "1%20", "0x1", "%EF%BC%91"])
@pytest.mark.parametrize("route", ["GET {}", "POST {}/deposits", "POST {}/withdrawals", "POST {}/fills"])
def test_path_ids_are_canonical_digits(srv: Srv, raw: str, route: str) -> None:
    method, path = route.split()
    body = {"market": "BTC-PERP", "size": "0.001", "price": "50000"} if path.endswith("fills") else {"amount": "1"}
    seq = srv.seq()
    r = srv.c.request(method, "/v1/accounts/" + path.format(raw), json=None if method == "GET" else body)
    assert r.status_code == 422, f"{raw}: {r.status_code} {r.text}"
    assert srv.seq() == seq


@pytest.mark.parametrize("adl", ["1", "yes", "on", "True", " true"])
def test_query_flags_are_strict(srv: Srv, adl: str) -> None:
    a = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
    assert srv.c.get(f"/v1/accounts/{a}", params={"adl": "false"}).status_code == 200
    assert srv.c.get(f"/v1/accounts/{a}", params={"adl": adl}).status_code == 422
    assert srv.c.get("/v1/events", params={"after": "+1"}).status_code == 422


def test_duplicate_keys_are_refused(srv: Srv) -> None:
    a = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
    seq = srv.seq()
    for path, raw in (
        (f"/v1/accounts/{a}/deposits", b'{"amount":"NaN","amount":"10"}'),
        (f"/v1/accounts/{a}/deposits", b'{"amount":"10","asset":"USD","asset":"USD"}'),
        ("/v1/accounts", b'{"account_id":5000,"account_id":5001}'),
        ("/v1/keys", b'{"role":"account","role":"admin"}'),
    ):
        r = srv.c.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, f"{path} {raw!r}: {r.status_code} {r.text}"
        (d,) = r.json()["detail"]
        assert d["type"] == "duplicate_key" and d["loc"][0] == "body", d
    assert srv.seq() == seq and srv.balance(a) == "0"


# --- item 14: the bootstrap admin key, auctions, metrics ---------------------------------------------------------


def test_the_last_admin_key_cannot_be_revoked_and_a_revoked_bootstrap_key_restarts(tmp_path: Path) -> None:
    s = settings(tmp_path)
    with serving(s) as srv:
        (boot,) = srv.ok("GET", "/v1/keys")
        r = srv.c.delete(f"/v1/keys/{boot['key_id']}")
        assert r.status_code == 409 and "last active admin key" in r.json()["detail"], r.text
        second = srv.ok("POST", "/v1/keys", 201, json={"role": "admin", "name": "ops"})
        h2 = auth(second["api_key"])
        assert srv.ok("DELETE", f"/v1/keys/{boot['key_id']}", headers=h2)["revoked"] is True
        r = srv.c.delete(f"/v1/keys/{second['key_id']}", headers=h2)
        assert r.status_code == 409, r.text
    # the bootstrap key file still holds the revoked key: the service starts, and that key stays refused
    with serving(s) as srv:
        assert srv.c.get("/v1/keys").status_code == 401
        listed = srv.ok("GET", "/v1/keys", headers=h2)
        assert [k["revoked"] for k in listed] == [True, False]
    # a new key file (the operator deleted the old one): a new admin key is made on start
    with serving(dataclasses.replace(s, admin_key="fm_a-new-admin-key")) as srv:
        assert srv.ok("GET", "/v1/keys", headers=auth("fm_a-new-admin-key"))[-1]["role"] == "admin"


def test_auctions_show_account_ids_only_to_whom_may_see_them(tmp_path: Path) -> None:
    with serving(settings(tmp_path)) as srv:
        loser, bidder = (srv.ok("POST", "/v1/accounts", 201, json={})["account_id"] for _ in range(2))
        keys = {
            "venue": srv.key("venue"),
            "loser": srv.key("account", account_ids=[loser]),
            "bidder": srv.key("account", account_ids=[bidder]),
            "publisher": srv.key("publisher", source="feed"),
        }
        feeds = (auth(ADMIN), auth(keys["publisher"]))  # two sources: an index that may liquidate
        for h in feeds:
            srv.ok("POST", "/v1/prices", json={"asset": "BTC", "price": "50000"}, headers=h)
        srv.ok("POST", f"/v1/accounts/{loser}/deposits", json={"amount": "5100"})
        srv.ok("POST", f"/v1/accounts/{loser}/fills", json={"market": "BTC-PERP", "size": "1", "price": "50000"})
        for h in feeds:  # equity 100 < maintenance 180: the close goes to auction
            srv.ok("POST", "/v1/prices", json={"asset": "BTC", "price": "45000"}, headers=h)
        (auction,) = srv.ok("GET", "/v1/auctions")
        assert auction["accounts"] == [loser]
        seen = {"venue": [loser], "loser": [loser], "bidder": [], "publisher": []}
        for who, want in seen.items():
            (listed,) = srv.ok("GET", "/v1/auctions", headers=auth(keys[who]))
            one = srv.ok("GET", f"/v1/auctions/{auction['auction_id']}", headers=auth(keys[who]))
            assert listed["accounts"] == one["accounts"] == want, who
            assert listed["auction_id"] == one["auction_id"] == auction["auction_id"]


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_a_key_unless_made_public(tmp_path: Path, public: bool) -> None:
    with serving(settings(tmp_path, public_metrics=public)) as srv:
        a = srv.ok("POST", "/v1/accounts", 201, json={})["account_id"]
        keys = {
            "venue": srv.key("venue"),
            "account": srv.key("account", account_ids=[a]),
            "publisher": srv.key("publisher", source="feed"),
        }
        anon = httpx.get(str(srv.c.base_url.join("/metrics")))
        assert anon.status_code == (200 if public else 401), anon.text
        for role, want in (("venue", 200), ("account", 403), ("publisher", 403)):
            r = srv.c.get("/metrics", headers=auth(keys[role]))
            assert r.status_code == (200 if public else want), role
        r = srv.c.get("/metrics")
        assert r.status_code == 200 and "fluidmargin_events_total" in r.text
        assert r.headers["content-type"].startswith("text/plain")
