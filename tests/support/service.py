"""The service under test: a real uvicorn server on a free port with an admin httpx client (:class:`Api`)
that checks every JSON answer holds no float (quantums travel as decimal strings)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue

ADMIN = "fm_test-admin-key"


def no_floats(x: Any, where: str = "$") -> None:
    if isinstance(x, float):
        raise AssertionError(f"JSON float at {where}: {x!r}")
    if isinstance(x, dict):
        for k, v in x.items():
            no_floats(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            no_floats(v, f"{where}[{i}]")


def check_response(r: httpx.Response) -> None:
    r.read()
    if r.headers.get("content-type", "").startswith("application/json") and r.request.url.path != "/openapi.json":
        body = r.json()
        rows = body if isinstance(body, list) else [body]
        if rows and isinstance(rows[0], dict) and "rate_per_s" in rows[0]:
            return  # key records: a rate limit is a configuration number, not a quantum
        no_floats(body)


class Api:
    """A test client: the app (for the engine's own figures), an admin httpx client, and helpers."""

    def __init__(self, app: Any, client: httpx.Client) -> None:
        self.app = app
        self.c = client
        self.worker = app.state.svc.worker
        self.keys: dict[str, str] = {}

    def call(self, fn: Any) -> Any:
        return self.worker.call(fn)

    def key(self, role: str, **kw: Any) -> str:
        r = self.c.post("/v1/keys", json={"role": role, **kw})
        assert r.status_code == 201, r.text
        return str(r.json()["api_key"])

    def as_(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.c.request(method, path, **kw)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def price(self, asset: str, price: str) -> Any:
        """The price from two sources (liquidations act only on an index two sources agree on); the answer
        to the second, "pub"'s."""
        if "pub2" not in self.keys:
            self.keys["pub2"] = self.key("publisher", source="test-feed-2")
        for key in ("pub2", "pub"):
            r = self.ok("POST", "/v1/prices", json={"asset": asset, "price": price}, headers=self.as_(self.keys[key]))
        return r

    def caused(self, r: Any) -> list[dict[str, Any]]:
        """Every event of the write answered by ``r``, as the log holds them (the answer shows a publisher
        only market-wide events)."""
        page = self.ok("GET", "/v1/events", params={"after": r["seq"] - 1, "limit": 1000})
        return [e for e in page["events"] if e["seq"] <= r["durable_seq"]]

    def open(self) -> int:
        return int(self.ok("POST", "/v1/accounts", 201, json={})["account_id"])

    def deposit(self, a: int, amount: str, **kw: Any) -> Any:
        return self.ok("POST", f"/v1/accounts/{a}/deposits", json={"amount": amount}, **kw)

    def fill(self, a: int, market: str, size: str, price: str, **kw: Any) -> Any:
        return self.ok("POST", f"/v1/accounts/{a}/fills", json={"market": market, "size": size, "price": price, **kw})

    def view(self, a: int) -> Any:
        return self.ok("GET", f"/v1/accounts/{a}")


def make_app(tmp: Path, **kw: Any) -> Any:
    # one publisher drives these scenarios: the venue opts in to single-source liquidation
    # (the quorum default is tested in test_service_oracle.py)
    venue = waterfall_venue(single_source_liquidation=True)
    cfg = dataclasses.replace(venue, backstop=BackstopSpec(withdrawal_delay_ns=1))
    return create_app(ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, **kw))


@contextmanager
def serving(app: Any) -> Iterator[Api]:
    """``app`` served on loopback by a real uvicorn, with an admin client that checks every answer."""
    with (
        ServerThread(app) as url,
        httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
            event_hooks={"response": [check_response]},
        ) as c,
    ):
        yield Api(app, c)


@contextmanager
def running(tmp: Path) -> Iterator[Api]:
    with serving(make_app(tmp)) as api:
        api.keys["pub"] = api.key("publisher", source="test-feed")
        api.price("BTC", "50000")
        api.price("ETH", "3000")
        yield api


def types(result: Any) -> list[str]:
    return [e["type"] for e in result["events"]]
