"""Authentication and authorisation through real HTTP: every endpoint x every role, rate limits,
keys stored hashed and durable across restarts, and the `fluidmargin serve` command itself."""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluidmargin.cli.serve import admin_key
from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue

ADMIN = "fm_auth-test-admin"
ROLES = ("admin", "venue", "own", "other", "publisher", "none", "bad")


def settings(tmp: Path, **kw: Any) -> ServiceSettings:
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    return ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, **kw)


class World:
    """A running server with one key per role and two accounts: A (own) and B (other's)."""

    def __init__(self, url: str, app: Any) -> None:
        self.url = url
        self.app = app
        self.admin = httpx.Client(base_url=url, headers=self.auth(ADMIN), timeout=30)
        self.anon = httpx.Client(base_url=url, timeout=30)
        self.a = self.post("/v1/accounts", {}, 201)["account_id"]
        self.b = self.post("/v1/accounts", {}, 201)["account_id"]
        for acct in (self.a, self.b):
            self.post(f"/v1/accounts/{acct}/deposits", {"amount": "100000"})
        self.keys = {
            "admin": ADMIN,
            "venue": self.key("venue"),
            "own": self.key("account", account_ids=[self.a]),
            "other": self.key("account", account_ids=[self.b]),
            "publisher": self.key("publisher", source="feed-1"),
            "bad": "fm_not-a-key",
        }
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            r = self.anon.post("/v1/prices", json={"asset": asset, "price": price}, headers=self.as_("publisher"))
            assert r.status_code == 200, r.text

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def as_(self, role: str) -> dict[str, str]:
        return {} if role == "none" else self.auth(self.keys[role])

    def post(self, path: str, body: Any, status: int = 200) -> Any:
        r = self.admin.post(path, json=body)
        assert r.status_code == status, f"{path}: {r.status_code} {r.text}"
        return r.json()

    def key(self, role: str, **kw: Any) -> str:
        return str(self.post("/v1/keys", {"role": role, **kw}, 201)["api_key"])

    def sub_of_a(self, vault_shares: str | None = None, pending: bool = False) -> int:
        """A fresh sub-account of A (in the own key's scope, outside the other's), set up by the admin."""
        s = int(self.post("/v1/accounts", {"parent_id": self.a}, 201)["account_id"])
        self.post(f"/v1/accounts/{s}/deposits", {"amount": "100"})
        if vault_shares:
            self.post("/v1/vault/deposits", {"account_id": s, "amount": vault_shares})
        if pending:
            self.post("/v1/vault/withdrawals", {"account_id": s, "shares": "1"})
        return s


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    app = create_app(settings(tmp_path_factory.mktemp("auth")))
    with ServerThread(app) as url:
        w = World(url, app)
        yield w
        w.admin.close()
        w.anon.close()


# --- the matrix -----------------------------------------------------------------------------------

OK, NEW, NOPE, DENY, AUTH, NI = 200, 201, 404, 403, 401, 501
KEYED = ("admin", "venue", "own", "other", "publisher")


def expect(allowed: dict[str, int], public: bool = False) -> dict[str, int]:
    """Status per role: the allowed roles' answers, 403 for every other key, 401 without a valid key."""
    if public:
        return dict.fromkeys(ROLES, OK)
    return {r: allowed.get(r, DENY) if r in KEYED else AUTH for r in ROLES}


Req = Callable[[World], tuple[str, str, Any]]
OWNERS = {"admin": OK, "venue": OK, "own": OK}
ANY_KEY = dict.fromkeys(KEYED, OK)
LPS = {"admin": OK, "own": OK}

CASES: list[tuple[str, Req, dict[str, int]]] = [
    ("healthz", lambda w: ("GET", "/healthz", None), expect({}, public=True)),
    ("metrics", lambda w: ("GET", "/metrics", None), expect({}, public=True)),
    ("openapi", lambda w: ("GET", "/openapi.json", None), expect({}, public=True)),
    ("create key", lambda w: ("POST", "/v1/keys", {"role": "venue"}), expect({"admin": NEW})),
    ("list keys", lambda w: ("GET", "/v1/keys", None), expect({"admin": OK})),
    (
        "revoke key",
        lambda w: ("DELETE", f"/v1/keys/{w.post('/v1/keys', {'role': 'venue'}, 201)['key_id']}", None),
        expect({"admin": OK}),
    ),
    ("events", lambda w: ("GET", "/v1/events", None), expect({"admin": OK})),
    ("clock", lambda w: ("POST", "/v1/clock", None), expect({"admin": OK})),
    ("open account", lambda w: ("POST", "/v1/accounts", {}), expect({"admin": NEW, "venue": NEW})),
    (
        "open sub-account",
        lambda w: ("POST", f"/v1/accounts/{w.a}/sub-accounts", {}),
        expect({"admin": NEW, "venue": NEW, "own": NEW}),
    ),
    ("list sub-accounts", lambda w: ("GET", f"/v1/accounts/{w.a}/sub-accounts", None), expect(OWNERS)),
    ("get account", lambda w: ("GET", f"/v1/accounts/{w.a}", None), expect(OWNERS)),
    ("deposit", lambda w: ("POST", f"/v1/accounts/{w.a}/deposits", {"amount": "1"}), expect(OWNERS)),
    ("withdraw", lambda w: ("POST", f"/v1/accounts/{w.a}/withdrawals", {"amount": "1"}), expect(OWNERS)),
    (
        "fill",
        lambda w: ("POST", f"/v1/accounts/{w.a}/fills", {"market": "BTC-PERP", "size": "0.001", "price": "50000"}),
        expect({"admin": OK, "venue": OK}),
    ),
    (
        "what-if",
        lambda w: ("POST", f"/v1/accounts/{w.a}/what-if", {"market": "BTC-PERP", "size": "1", "price": "5e4"}),
        expect(dict.fromkeys(OWNERS, 422)),
    ),  # authorised, then the body is judged
    (
        "what-if ok",
        lambda w: ("POST", f"/v1/accounts/{w.a}/what-if", {"market": "BTC-PERP", "size": "1", "price": "1"}),
        expect(OWNERS),
    ),
    ("settle funding", lambda w: ("POST", f"/v1/accounts/{w.a}/funding-settlements", None), expect(OWNERS)),
    ("markets", lambda w: ("GET", "/v1/markets", None), expect(ANY_KEY)),
    ("market", lambda w: ("GET", "/v1/markets/BTC-PERP", None), expect(ANY_KEY)),
    ("oracle", lambda w: ("GET", "/v1/oracle", None), expect(ANY_KEY)),
    ("insurance funds", lambda w: ("GET", "/v1/insurance-funds", None), expect(ANY_KEY)),
    ("risk parameters", lambda w: ("GET", "/v1/risk-parameters", None), expect(ANY_KEY)),
    (
        "change risk parameters",
        lambda w: ("PUT", "/v1/risk-parameters", {"market": "", "name": "at_risk_buffer_ppm", "value": "200000"}),
        expect({"admin": OK}),
    ),
    # authorised, then refused by the engine (an unknown market): no halt left behind for the other cases
    ("halt market", lambda w: ("POST", "/v1/markets/DOGE-PERP/halt", {"reason": "matrix"}), expect({"admin": 422})),
    ("resume market", lambda w: ("POST", "/v1/markets/DOGE-PERP/resume", None), expect({"admin": 422})),
    (
        "publish price",
        lambda w: ("POST", "/v1/prices", {"asset": "BTC", "price": "50000"}),
        expect({"admin": OK, "publisher": OK}),
    ),
    ("dashboard summary", lambda w: ("GET", "/v1/dashboard/summary", None), expect({**OWNERS, "other": OK})),
    ("auctions", lambda w: ("GET", "/v1/auctions", None), expect(ANY_KEY)),
    ("auction", lambda w: ("GET", "/v1/auctions/BTC-PERP-99", None), expect(dict.fromkeys(KEYED, NOPE))),
    (
        "bid",
        lambda w: ("POST", "/v1/auctions/BTC-PERP-99/bids", {"account_id": w.a, "size": "1", "limit_price": "1"}),
        expect({"admin": NOPE, "own": NOPE}),
    ),  # authorised; no such auction
    ("vault", lambda w: ("GET", "/v1/vault", None), expect(ANY_KEY)),
    ("options", lambda w: ("GET", "/v1/options", None), expect(ANY_KEY)),
    ("option", lambda w: ("GET", "/v1/options/BTC-C-1", None), expect(dict.fromkeys(KEYED, NOPE))),
    ("vol surface", lambda w: ("GET", "/v1/vol-surfaces/BTC", None), expect(ANY_KEY)),
    (
        "publish vol",
        lambda w: ("POST", "/v1/vols", {"underlying": "BTC", "expiry_ns": 1, "strike": "1", "vol": "0.5"}),
        expect({"admin": 409, "publisher": 409}),
    ),  # authorised, then refused by the engine (expired): no vol left behind
    ("portfolio", lambda w: ("GET", f"/v1/accounts/{w.a}/portfolio", None), expect(OWNERS)),
    (
        "margin mode",
        lambda w: ("PUT", f"/v1/accounts/{w.a}/margin-mode", {"mode": "standard"}),
        expect(dict.fromkeys(OWNERS, 409)),
    ),  # authorised, then refused (already standard): the other cases keep a standard account
    ("vault deposit", lambda w: ("POST", "/v1/vault/deposits", {"account_id": w.a, "amount": "1"}), expect(LPS)),
    (
        "vault withdrawal",
        lambda w: ("POST", "/v1/vault/withdrawals", {"account_id": w.sub_of_a("5"), "shares": "1"}),
        expect(LPS),
    ),
    ("vault claim", lambda w: ("POST", "/v1/vault/claims", {"account_id": w.sub_of_a("5", pending=True)}), expect(LPS)),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("name", "req", "want"), CASES, ids=[c[0] for c in CASES])
def test_authorisation_matrix(world: World, name: str, req: Req, want: dict[str, int], role: str) -> None:
    method, path, body = req(world)
    r = world.anon.request(method, path, json=body, headers=world.as_(role))
    assert r.status_code == want[role], f"{name} as {role}: {r.status_code} {r.text}"
    if r.status_code == AUTH:
        assert r.headers["www-authenticate"] == "Bearer"


def test_every_route_is_in_the_matrix(world: World) -> None:
    doc = world.app.openapi()
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    seen = set()
    for _name, req, _want in CASES:
        method, path, _body = req(world)
        for m, p in ops:
            parts, want = p.split("/"), path.split("?")[0].split("/")
            same = len(parts) == len(want) and all(
                a == b or a.startswith("{") for a, b in zip(parts, want, strict=True)
            )
            if m == method and same:
                seen.add((m, p))
    assert ops - seen == set()


# --- scopes, publishers, keys -------------------------------------------------------------------------


def test_sub_accounts_share_their_parents_scope_only(world: World) -> None:
    own, other = world.as_("own"), world.as_("other")
    r = world.anon.post(f"/v1/accounts/{world.a}/sub-accounts", json={}, headers=own)
    assert r.status_code == 201, r.text
    s = r.json()["account_id"]
    assert world.anon.post(f"/v1/accounts/{s}/deposits", json={"amount": "2"}, headers=own).status_code == 200
    view = world.anon.get(f"/v1/accounts/{s}", headers=own).json()
    assert view["parent_id"] == world.a and view["balances"][0]["amount"] == "2"
    for method, path in (("GET", f"/v1/accounts/{s}"), ("POST", f"/v1/accounts/{s}/sub-accounts")):
        assert world.anon.request(method, path, json={}, headers=other).status_code == 403
    # the own key cannot reach the parent's siblings or the other account through a body either
    body = {"account_id": world.b, "amount": "1"}
    assert world.anon.post("/v1/vault/deposits", json=body, headers=own).status_code == 403
    r = world.anon.post("/v1/accounts", json={"parent_id": world.b}, headers=world.as_("venue"))
    assert r.status_code == 201  # a venue may open a sub-account of any account


def test_publisher_source_comes_from_its_key(world: World) -> None:
    pub = world.as_("publisher")
    r = world.anon.post("/v1/prices", json={"asset": "ETH", "price": "3000", "source": "someone-else"}, headers=pub)
    assert r.status_code == 422  # no source in the body
    r = world.anon.post("/v1/prices", json={"asset": "ETH", "price": "3000.5"}, headers=pub)
    assert r.status_code == 200 and r.json()["events"][0]["source"] == "feed-1"
    sources = {x["asset"]: x["sources"] for x in world.admin.get("/v1/oracle").json()["assets"]}
    assert {s["source"] for s in sources["ETH"]} == {"feed-1"}
    assert world.anon.post("/v1/prices", json={"asset": "DOGE", "price": "1"}, headers=pub).status_code == 422


def test_answers_hide_other_accounts_events(world: World) -> None:
    x = world.post("/v1/accounts", {}, 201)["account_id"]
    world.post(f"/v1/accounts/{x}/deposits", {"amount": "3100"})
    world.post(f"/v1/accounts/{x}/fills", {"market": "ETH-PERP", "size": "10", "price": "3000"})
    r = world.anon.post("/v1/prices", json={"asset": "ETH", "price": "2700"}, headers=world.as_("publisher"))
    assert r.status_code == 200, r.text
    seen = {e["type"] for e in r.json()["events"]}
    assert "MarkPriceUpdated" in seen and not seen & {"PositionLiquidated", "AccountStatusChanged"}
    logged = world.admin.get("/v1/events", params={"after": r.json()["seq"] - 1, "limit": 50}).json()["events"]
    assert any(e["type"] == "PositionLiquidated" and e["account_id"] == x for e in logged)
    world.anon.post("/v1/prices", json={"asset": "ETH", "price": "3000"}, headers=world.as_("publisher"))


def test_rate_limit_is_per_key(world: World) -> None:
    key = world.key("account", account_ids=[world.a], rate_per_s=1.0, burst=2)
    h = world.auth(key)
    codes = [world.anon.get(f"/v1/accounts/{world.a}", headers=h).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = world.anon.get(f"/v1/accounts/{world.a}", headers=h)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert world.anon.get(f"/v1/accounts/{world.a}", headers=world.as_("own")).status_code == 200  # other keys go on
    time.sleep(1.05)
    assert world.anon.get(f"/v1/accounts/{world.a}", headers=h).status_code == 200


def test_revoked_key_is_refused(world: World) -> None:
    created = world.post("/v1/keys", {"role": "venue", "name": "short-lived"}, 201)
    h = world.auth(created["api_key"])
    assert world.anon.get("/v1/markets", headers=h).status_code == 200
    assert world.admin.delete(f"/v1/keys/{created['key_id']}").json()["revoked"] is True
    assert world.anon.get("/v1/markets", headers=h).status_code == 401
    listed = {k["key_id"]: k for k in world.admin.get("/v1/keys").json()}
    assert listed[created["key_id"]]["revoked"] and "api_key" not in listed[created["key_id"]]


def test_keys_and_idempotency_survive_a_restart(tmp_path: Path) -> None:
    s = settings(tmp_path)
    idem = {"Idempotency-Key": "deposit-before-restart"}
    with ServerThread(create_app(s)) as url, httpx.Client(base_url=url, headers=World.auth(ADMIN)) as c:
        a = c.post("/v1/accounts", json={}).json()["account_id"]
        c.post(f"/v1/accounts/{a}/deposits", json={"amount": "12.5"})
        key = c.post("/v1/keys", json={"role": "account", "account_ids": [a]}).json()["api_key"]
        once = c.post(f"/v1/accounts/{a}/deposits", json={"amount": "1"}, headers={**World.auth(key), **idem})
        before = c.get(f"/v1/accounts/{a}").json()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name.startswith("log.db"))
    assert key.encode() not in stored and ADMIN.encode() not in stored
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored
    app = create_app(dataclasses.replace(s, admin_key=None))  # the key registry alone knows the keys now
    with ServerThread(app) as url, httpx.Client(base_url=url, headers=World.auth(key)) as c:
        assert c.get(f"/v1/accounts/{a}").json() == before
        again = c.post(f"/v1/accounts/{a}/deposits", json={"amount": "1"}, headers=idem)  # found in the log
        assert again.status_code == 200 and again.json() == {**once.json(), "replayed": True}
        assert c.get(f"/v1/accounts/{a}").json() == before
        assert c.get("/v1/keys").status_code == 403
        assert c.get("/v1/keys", headers=World.auth(ADMIN)).status_code == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_command(tmp_path: Path) -> None:
    port, key_file = _free_port(), tmp_path / "admin.key"
    cmd = [sys.executable, "-m", "fluidmargin", "serve", "--db", str(tmp_path / "log.db"), "--config", "perp"]
    cmd += ["--admin-key-file", str(key_file), "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)
        key = key_file.read_text().strip()
        assert (key_file.stat().st_mode & 0o777) == 0o600
        r = httpx.post(f"http://127.0.0.1:{port}/v1/accounts", json={}, headers=World.auth(key))
        assert r.status_code == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal once shut down
    assert out.count(key) == 1  # shown once
    assert any(p.name.startswith("snap-") for p in (tmp_path / "log.db.snapshots").iterdir())
    assert admin_key(key_file) == (key, False)  # a second start reuses the file and prints nothing
