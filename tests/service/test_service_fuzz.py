"""Property-based fuzzing of the whole HTTP API from its OpenAPI document (Schemathesis).

Every operation the document describes is called with generated requests (valid ones and, in the
negative mode, invalid ones) against a real uvicorn server on loopback, as an admin key and as an
account key scoped to one account (so both the authorised and the 403 paths are fuzzed). The server
holds accounts with collateral and positions and live prices, so small account ids reach real state.
Checks: no 5xx, every status code documented, every answer's content type and body conform to the
document. Bounded: a few examples per operation, well under a minute in all.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue

ADMIN = "fm_fuzz-admin-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 12


def settings(tmp: Path) -> ServiceSettings:
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    return ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, rate_per_s=0)


@dataclasses.dataclass
class Target:
    url: str
    app: Any
    headers: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(settings(tmp))
    with ServerThread(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        accounts = []
        for i in range(4):
            a = c.post("/v1/accounts", json={}).json()["account_id"]
            c.post(f"/v1/accounts/{a}/deposits", json={"amount": "100000"}).raise_for_status()
            accounts.append(a)
            if i == 0:
                c.post("/v1/vault/deposits", json={"account_id": a, "amount": "1000"}).raise_for_status()
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            c.post("/v1/prices", json={"asset": asset, "price": price}).raise_for_status()
        for a, size in zip(accounts, ("0.5", "-0.5", "2", "-2"), strict=True):
            c.post(f"/v1/accounts/{a}/fills", json={"market": "BTC-PERP", "size": size, "price": "50000"})
        own = c.post("/v1/keys", json={"role": "account", "account_ids": [accounts[0]]}).json()["api_key"]
        yield Target(
            url, app, {"admin": {"Authorization": f"Bearer {ADMIN}"}, "account": {"Authorization": f"Bearer {own}"}}
        )


def _document() -> dict[str, Any]:
    """The OpenAPI document, from an app over a throwaway store (the live one is made by ``target``)."""
    with tempfile.TemporaryDirectory() as d:
        app = create_app(settings(Path(d)))
        try:
            doc: dict[str, Any] = app.openapi()
            return doc
        finally:
            app.state.svc.keys.close()


schema = schemathesis.openapi.from_dict(_document())


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case: Any, target: Target) -> None:
    for role in ("admin", "account"):
        headers = {**(case.headers or {}), **target.headers[role]}
        case.call_and_validate(base_url=target.url, headers=headers, checks=CHECKS, timeout=30)
