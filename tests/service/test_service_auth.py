"""Authentication and authorisation through real HTTP: every endpoint x every role, rate limits,
keys stored hashed and durable across restarts, and the `fluidmargin serve` command itself."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
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
from support.data import ROOT

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


# --- the matrix: README.md's "Roles" table, held against the server ------------------------------------------

README = ROOT / "README.md"
COLUMNS = ("admin", "venue", "account", "publisher", "no key")
OK, NEW, NOPE, DENY, AUTH = 200, 201, 404, 403, 401


def role_table() -> dict[str, dict[str, str]]:
    """README's Roles table: ``"METHOD /path"`` -> column -> ``✓`` (allowed), ``own`` (allowed on the key's
    own accounts) or ``–`` (refused)."""
    text = README.read_text()
    lines = text[text.index("### Roles") :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    block = itertools.takewhile(lambda ln: ln.startswith("|"), lines[start:])  # the first table only
    rows = [ln for ln in block if ln.startswith("| `")]
    assert rows, "README.md has no Roles table"
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 1 + len(COLUMNS) and all(c in ("✓", "own", "–") for c in cells[1:]), row
        for route in re.findall(r"`((?:GET|POST|PUT|DELETE|PATCH) /[^`]*)`", cells[0]):
            assert route not in table, f"{route} is in the Roles table twice"
            table[route] = dict(zip(COLUMNS, cells[1:], strict=True))
    return table


ROLE_TABLE = role_table()


def route_of(method: str, path: str) -> str:
    """The table's route (``"POST /v1/accounts/{account_id}/deposits"``) that a request's path matches."""
    want = path.split("?")[0].split("/")
    for route in ROLE_TABLE:
        m, template = route.split(" ", 1)
        parts = template.split("/")
        same = len(parts) == len(want) and all(a == b or a.startswith("{") for a, b in zip(parts, want, strict=True))
        if m == method and same:
            return route
    raise AssertionError(f"{method} {path} is not in README.md's Roles table")


def expect(route: str, authorised: int) -> dict[str, int]:
    """Status per test role from the table: ``authorised`` where the table allows it (the own key on its
    own account, the other key only where the account column is ✓), 403 for other keys, 401 without a
    valid key (unless the route is open to no key)."""
    row = ROLE_TABLE[route]
    column = {"admin": "admin", "venue": "venue", "own": "account", "other": "account", "publisher": "publisher"}
    out = {}
    for role in ROLES:
        if role in ("none", "bad"):
            out[role] = authorised if row["no key"] == "✓" else AUTH
        else:
            cell = row[column[role]]
            allowed = cell == "✓" or (cell == "own" and role != "other")
            out[role] = authorised if allowed else DENY
    return out


Req = Callable[[World], tuple[str, str, Any]]
FILL = {"market": "BTC-PERP", "size": "0.001", "price": "50000"}

# (name, request, the status a caller the table allows gets)
CASES: list[tuple[str, Req, int]] = [
    ("healthz", lambda w: ("GET", "/healthz", None), OK),
    ("metrics", lambda w: ("GET", "/metrics", None), OK),
    ("openapi", lambda w: ("GET", "/openapi.json", None), OK),
    ("create key", lambda w: ("POST", "/v1/keys", {"role": "venue"}), NEW),
    ("list keys", lambda w: ("GET", "/v1/keys", None), OK),
    ("revoke key", lambda w: ("DELETE", f"/v1/keys/{w.post('/v1/keys', {'role': 'venue'}, 201)['key_id']}", None), OK),
    ("events", lambda w: ("GET", "/v1/events", None), OK),
    ("clock", lambda w: ("POST", "/v1/clock", None), OK),
    ("open account", lambda w: ("POST", "/v1/accounts", {}), NEW),
    ("open sub-account", lambda w: ("POST", f"/v1/accounts/{w.a}/sub-accounts", {}), NEW),
    ("list sub-accounts", lambda w: ("GET", f"/v1/accounts/{w.a}/sub-accounts", None), OK),
    ("get account", lambda w: ("GET", f"/v1/accounts/{w.a}", None), OK),
    ("deposit", lambda w: ("POST", f"/v1/accounts/{w.a}/deposits", {"amount": "1"}), OK),
    ("withdraw", lambda w: ("POST", f"/v1/accounts/{w.a}/withdrawals", {"amount": "1"}), OK),
    ("fill", lambda w: ("POST", f"/v1/accounts/{w.a}/fills", FILL), OK),
    # authorised, then the body is judged
    ("what-if", lambda w: ("POST", f"/v1/accounts/{w.a}/what-if", {**FILL, "size": "1", "price": "5e4"}), 422),
    ("what-if ok", lambda w: ("POST", f"/v1/accounts/{w.a}/what-if", {**FILL, "size": "1", "price": "1"}), OK),
    ("settle funding", lambda w: ("POST", f"/v1/accounts/{w.a}/funding-settlements", None), OK),
    ("markets", lambda w: ("GET", "/v1/markets", None), OK),
    ("market", lambda w: ("GET", "/v1/markets/BTC-PERP", None), OK),
    ("oracle", lambda w: ("GET", "/v1/oracle", None), OK),
    ("insurance funds", lambda w: ("GET", "/v1/insurance-funds", None), OK),
    ("risk parameters", lambda w: ("GET", "/v1/risk-parameters", None), OK),
    (
        "change risk parameters",
        lambda w: ("PUT", "/v1/risk-parameters", {"market": "", "name": "at_risk_buffer_ppm", "value": "200000"}),
        OK,
    ),
    # authorised, then refused by the engine (an unknown market): no halt left behind for the other cases
    ("halt market", lambda w: ("POST", "/v1/markets/DOGE-PERP/halt", {"reason": "matrix"}), 422),
    ("resume market", lambda w: ("POST", "/v1/markets/DOGE-PERP/resume", None), 422),
    ("reanchor oracle", lambda w: ("POST", "/v1/oracle/DOGE/reanchor", {"price": "1", "reason": "matrix"}), 422),
    ("publish price", lambda w: ("POST", "/v1/prices", {"asset": "BTC", "price": "50000"}), OK),
    ("dashboard summary", lambda w: ("GET", "/v1/dashboard/summary", None), OK),
    ("auctions", lambda w: ("GET", "/v1/auctions", None), OK),
    ("auction", lambda w: ("GET", "/v1/auctions/BTC-PERP-99", None), NOPE),
    # authorised; no such auction
    (
        "bid",
        lambda w: ("POST", "/v1/auctions/BTC-PERP-99/bids", {"account_id": w.a, "size": "1", "limit_price": "1"}),
        NOPE,
    ),
    ("vault", lambda w: ("GET", "/v1/vault", None), OK),
    ("options", lambda w: ("GET", "/v1/options", None), OK),
    ("option", lambda w: ("GET", "/v1/options/BTC-C-1", None), NOPE),
    ("vol surface", lambda w: ("GET", "/v1/vol-surfaces/BTC", None), OK),
    # authorised, then refused by the engine (expired): no vol left behind
    (
        "publish vol",
        lambda w: ("POST", "/v1/vols", {"underlying": "BTC", "expiry_ns": 1, "strike": "1", "vol": "0.5"}),
        409,
    ),
    ("portfolio", lambda w: ("GET", f"/v1/accounts/{w.a}/portfolio", None), OK),
    # authorised, then refused (already standard): the other cases keep a standard account
    ("margin mode", lambda w: ("PUT", f"/v1/accounts/{w.a}/margin-mode", {"mode": "standard"}), 409),
    ("vault deposit", lambda w: ("POST", "/v1/vault/deposits", {"account_id": w.a, "amount": "1"}), OK),
    (
        "vault withdrawal",
        lambda w: ("POST", "/v1/vault/withdrawals", {"account_id": w.sub_of_a("5"), "shares": "1"}),
        OK,
    ),
    ("vault claim", lambda w: ("POST", "/v1/vault/claims", {"account_id": w.sub_of_a("5", pending=True)}), OK),
    ("governance proposals", lambda w: ("GET", "/v1/governance/proposals", None), OK),
    ("governance proposal", lambda w: ("GET", "/v1/governance/proposals/nope", None), NOPE),
    # authorised, then refused by the engine (this venue has no governance section): nothing left behind
    (
        "submit proposal",
        lambda w: (
            "POST",
            "/v1/governance/proposals",
            {"changes": [{"name": "at_risk_buffer_ppm", "value": "200000"}], "evidence": {"runs": 1}},
        ),
        409,
    ),
    ("approve proposal", lambda w: ("POST", "/v1/governance/proposals/nope/approve", None), NOPE),
    ("reject proposal", lambda w: ("POST", "/v1/governance/proposals/nope/reject", {"reason": "matrix"}), NOPE),
    ("cancel proposal", lambda w: ("POST", "/v1/governance/proposals/nope/cancel", {"reason": "matrix"}), NOPE),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("name", "req", "authorised"), CASES, ids=[c[0] for c in CASES])
def test_authorisation_matrix(world: World, name: str, req: Req, authorised: int, role: str) -> None:
    method, path, body = req(world)
    want = expect(route_of(method, path), authorised)
    r = world.anon.request(method, path, json=body, headers=world.as_(role))
    assert r.status_code == want[role], f"{name} as {role}: {r.status_code} {r.text}"
    if r.status_code == AUTH:
        assert r.headers["www-authenticate"] == "Bearer"


def test_every_route_is_in_the_table_and_the_matrix(world: World) -> None:
    doc = world.app.openapi()
    ops = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item}
    assert ops | {"GET /openapi.json"} == set(ROLE_TABLE), "README.md's Roles table and the routes differ"
    tried = {route_of(*req(world)[:2]) for _name, req, _status in CASES}
    assert tried == set(ROLE_TABLE), set(ROLE_TABLE) - tried


def test_every_body_refuses_duplicate_keys(world: World) -> None:
    """Every route that reads a JSON body answers a key named twice with a 422, whatever the values."""
    doc = world.app.openapi()
    with_body = {
        f"{m.upper()} {p}" for p, item in doc["paths"].items() for m, op in item.items() if "requestBody" in op
    }
    seen = set()
    seq = world.app.state.svc.worker.call(lambda e: e.seq)
    for _name, req, _status in CASES:
        method, path, body = req(world)
        route = route_of(method, path)
        if route not in with_body or route in seen:
            continue
        seen.add(route)
        if body:  # the first key again, first with a garbage value: a last-wins reader would accept it
            raw = json.dumps({next(iter(body)): "NaN"})[:-1] + ", " + json.dumps(body)[1:]
        else:
            raw = '{"account_id": 1, "account_id": 2}'
        seq = world.app.state.svc.worker.call(lambda e: e.seq)
        r = world.anon.request(
            method, path, content=raw, headers={**world.as_("admin"), "content-type": "application/json"}
        )
        assert r.status_code == 422, f"{route} {raw}: {r.status_code} {r.text}"
        assert r.json()["detail"][0]["type"] == "duplicate_key", r.text
        assert world.app.state.svc.worker.call(lambda e: e.seq) == seq  # nothing logged
    assert seen == with_body


def test_every_router_reads_bodies_strictly(world: World) -> None:
    from fastapi.routing import APIRoute

    from fluidmargin.service.deps import StrictJSONRoute

    def routes(rs: Any) -> Iterator[Any]:
        for r in rs:
            yield r
            sub = getattr(r, "original_router", None)  # newer FastAPI keeps included routers whole
            if sub is not None:
                yield from routes(sub.routes)

    bodies = [r for r in routes(world.app.routes) if isinstance(r, APIRoute) and r.body_field is not None]
    assert bodies and all(isinstance(r, StrictJSONRoute) for r in bodies), [
        r.path for r in bodies if not isinstance(r, StrictJSONRoute)
    ]


# --- scopes, publishers, keys -------------------------------------------------------------------------


def test_sub_accounts_share_their_parents_scope_only(world: World) -> None:
    own, other = world.as_("own"), world.as_("other")
    r = world.anon.post(f"/v1/accounts/{world.a}/sub-accounts", json={}, headers=own)
    assert r.status_code == 201, r.text
    s = r.json()["account_id"]
    assert world.anon.post(f"/v1/accounts/{s}/deposits", json={"amount": "2"}, headers=own).status_code == 403
    world.post(f"/v1/accounts/{s}/deposits", {"amount": "2"})  # the venue's custody reports deposits
    assert world.anon.post(f"/v1/accounts/{s}/withdrawals", json={"amount": "0.5"}, headers=own).status_code == 200
    view = world.anon.get(f"/v1/accounts/{s}", headers=own).json()
    assert view["parent_id"] == world.a and view["balances"][0]["amount"] == "1.5"
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
    second = world.auth(world.key("publisher", source="feed-2"))  # liquidations need two sources agreeing
    assert world.anon.post("/v1/prices", json={"asset": "ETH", "price": "2700"}, headers=second).status_code == 200
    r = world.anon.post("/v1/prices", json={"asset": "ETH", "price": "2700"}, headers=world.as_("publisher"))
    assert r.status_code == 200, r.text
    seen = {e["type"] for e in r.json()["events"]}
    assert "MarkPriceUpdated" in seen and not seen & {"PositionLiquidated", "AccountStatusChanged"}
    logged = world.admin.get("/v1/events", params={"after": r.json()["seq"] - 1, "limit": 50}).json()["events"]
    assert any(e["type"] == "PositionLiquidated" and e["account_id"] == x for e in logged)
    for h in (second, world.as_("publisher")):
        world.anon.post("/v1/prices", json={"asset": "ETH", "price": "3000"}, headers=h)


def test_rate_limit_is_per_key(world: World) -> None:
    # 1 token a second, 2 at most. The limiter's clock is held still and then moved on by hand: a busy
    # machine could stretch three requests past a second, and a sleep would race the same way
    limiter = world.app.state.svc.limiter
    now = [limiter._clock()]
    real, limiter._clock = limiter._clock, lambda: now[0]
    try:
        key = world.key("account", account_ids=[world.a], rate_per_s=1.0, burst=2)
        h = world.auth(key)
        codes = [world.anon.get(f"/v1/accounts/{world.a}", headers=h).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = world.anon.get(f"/v1/accounts/{world.a}", headers=h)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert world.anon.get(f"/v1/accounts/{world.a}", headers=world.as_("own")).status_code == 200  # others go on
        now[0] += 1.05  # a second later: one token back
        assert world.anon.get(f"/v1/accounts/{world.a}", headers=h).status_code == 200
        assert world.anon.get(f"/v1/accounts/{world.a}", headers=h).status_code == 429
    finally:
        limiter._clock = real


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
    idem = {"Idempotency-Key": "withdrawal-before-restart"}
    with ServerThread(create_app(s)) as url, httpx.Client(base_url=url, headers=World.auth(ADMIN)) as c:
        a = c.post("/v1/accounts", json={}).json()["account_id"]
        c.post(f"/v1/accounts/{a}/deposits", json={"amount": "12.5"})
        key = c.post("/v1/keys", json={"role": "account", "account_ids": [a]}).json()["api_key"]
        once = c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1"}, headers={**World.auth(key), **idem})
        before = c.get(f"/v1/accounts/{a}").json()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name.startswith("log.db"))
    assert key.encode() not in stored and ADMIN.encode() not in stored
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored
    app = create_app(dataclasses.replace(s, admin_key=None))  # the key registry alone knows the keys now
    with ServerThread(app) as url, httpx.Client(base_url=url, headers=World.auth(key)) as c:
        assert c.get(f"/v1/accounts/{a}").json() == before
        again = c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1"}, headers=idem)  # found in the log
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
