"""Governance through the real HTTP service: a proposal submitted with its evidence, approved by an admin,
visible with its timelock (over the API and on the ``markets`` stream), activated once the clock passes
it, the parameter changed in ``GET /v1/risk-parameters``; a non-admin refused; proposals beyond the
guardrails refused with their reason and nothing applied.

The server's clock is a test clock (the worker stamps every input with it), so times are exact.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from fluidmargin.model.config import BackstopSpec, GovernanceSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.sim.venues import waterfall_venue
from support.service import ADMIN, Api, serving

S = 10**9
T0 = 1_700_000_000 * S
HOUR = 3600 * S
BTC = "BTC-PERP"
EVIDENCE = {"objective": {"before": "1.25", "after": "0.98"}, "runs": 64, "walk_forward": "2024-03..2024-06"}


class Clock:
    """The service's clock: moves only when the test moves it (1 µs per read, so stamps differ)."""

    def __init__(self) -> None:
        self.ns = T0

    def __call__(self) -> int:
        self.ns += 1_000
        return self.ns


@contextmanager
def service(tmp: Path, **guardrails: Any) -> Iterator[tuple[Api, Clock]]:
    clock = Clock()
    spec = GovernanceSpec(**{"timelock_ns": HOUR, "watch_ns": 24 * HOUR, **guardrails})
    venue = waterfall_venue(single_source_liquidation=True)
    cfg = dataclasses.replace(venue, backstop=BackstopSpec(withdrawal_delay_ns=1), governance=spec)
    app = create_app(ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, clock=clock, rate_per_s=0))
    with serving(app) as api:
        api.keys["pub"] = api.key("publisher", source="feed")
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            api.ok("POST", "/v1/prices", json={"asset": asset, "price": price}, headers=api.as_(api.keys["pub"]))
        yield api, clock


def fee(api: Api) -> int:
    """BTC-PERP's liquidation fee (ppm) as GET /v1/risk-parameters shows it."""
    markets = api.ok("GET", "/v1/risk-parameters")["config"]["markets"]
    return int(next(m for m in markets if m["symbol"] == BTC)["liquidation_fee_ppm"])


def proposal(pid: str, value: int, **kw: Any) -> dict[str, Any]:
    return {"proposal_id": pid, "changes": [{"market": BTC, "name": "liquidation_fee_ppm", "value": str(value)}], **kw}


def types(r: Any) -> list[str]:
    return [e["type"] for e in r["events"]]


def test_a_proposal_is_approved_shown_with_its_timelock_and_activates_after_it(tmp_path: Path) -> None:
    with service(tmp_path) as (api, clock):
        before = fee(api)
        new = before * 105 // 100
        digest = "ab" * 32
        body = proposal("tune-1", new, evidence=EVIDENCE, evidence_digest=digest, evidence_uri="s3://r/tune-1.html")
        r = api.ok("POST", "/v1/governance/proposals", json=body)
        assert types(r) == ["ProposalSubmitted"]
        submitted = r["events"][0]
        assert json.loads(submitted["evidence"]) == EVIDENCE and submitted["values"] == [new]  # in the log
        view = api.ok("GET", "/v1/governance/proposals/tune-1")
        assert (view["state"], view["activates_ns"], view["evidence"]) == ("submitted", None, EVIDENCE)
        assert (view["evidence_digest"], view["evidence_uri"]) == (digest, "s3://r/tune-1.html")
        assert view["changes"] == [
            {"market": BTC, "name": "liquidation_fee_ppm", "value": str(new), "old": None,
             "current": str(before), "held": True}
        ]  # fmt: skip

        # only an admin approves
        for role in ("venue", "account", "publisher"):
            kw = {"account_ids": [api.open()]} if role == "account" else {"source": "x"} if role == "publisher" else {}
            key = api.key(role, **kw)
            r2 = api.c.post("/v1/governance/proposals/tune-1/approve", headers=api.as_(key))
            assert r2.status_code == 403, (role, r2.text)
            assert api.c.get("/v1/governance/proposals/tune-1", headers=api.as_(key)).status_code == 200
        assert api.ok("GET", "/v1/governance/proposals/tune-1")["state"] == "submitted"

        r = api.ok("POST", "/v1/governance/proposals/tune-1/approve")
        assert types(r) == ["ProposalApproved", "ProposalQueued"]
        approved_ns = r["ts_ns"]
        activates = r["events"][1]["activates_ns"]
        assert activates == approved_ns + HOUR
        view = api.ok("GET", "/v1/governance/proposals/tune-1")
        assert (view["state"], view["activates_ns"], view["decided_ns"]) == ("queued", activates, approved_ns)
        listed = api.ok("GET", "/v1/governance/proposals")
        assert listed["guardrails"]["timelock_ns"] == HOUR and listed["guardrails"]["mode"] == "manual"
        assert [p["proposal_id"] for p in listed["proposals"]] == ["tune-1"]

        # the stream's markets channel carries the proposal and its timelock
        ws_url = "ws" + str(api.c.base_url).removeprefix("http")
        head = int(api.ok("GET", "/healthz")["durable_seq"])
        with connect(f"{ws_url}/v1/stream?key={ADMIN}&channels=markets&from_seq=1", open_timeout=30) as ws:
            got: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while not got or got[-1]["seq"] < head:
                msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                got.extend(msg.get("records", []))
        streamed = {rec["type"]: rec["events"][0] for rec in got}
        assert {"ProposalSubmitted", "ProposalApproved", "ProposalQueued"} <= set(streamed)
        assert streamed["ProposalQueued"]["activates_ns"] == activates

        # half-way through the timelock nothing changes; once the clock passes it, the next input activates it
        clock.ns = approved_ns + HOUR // 2
        r = api.ok("POST", "/v1/clock")
        assert "ProposalActivated" not in types(r) and fee(api) == before
        clock.ns = activates
        r = api.ok("POST", "/v1/clock")
        assert r["ts_ns"] >= activates
        assert types(r)[:3] == ["ClockAdvanced", "ProposalActivated", "ParameterChanged"]
        changed = r["events"][2]
        assert (changed["market"], changed["name"], changed["old"], changed["new"]) == (
            BTC, "liquidation_fee_ppm", before, new
        )  # fmt: skip
        assert fee(api) == new
        view = api.ok("GET", "/v1/governance/proposals/tune-1")
        assert (view["state"], view["activated_ns"], view["watch_until_ns"]) == (
            "active",
            r["ts_ns"],
            r["ts_ns"] + 24 * HOUR,
        )
        assert view["changes"][0]["old"] == str(before) and view["changes"][0]["current"] == str(new)
        assert view["figures"] == {"bad_debt": "0", "fund_drawdown": "0", "liquidations": 0}


def test_proposals_beyond_the_guardrails_are_refused_with_the_reason_and_nothing_applied(tmp_path: Path) -> None:
    with service(tmp_path, max_change_ppm=100_000) as (api, _clock):
        before = fee(api)
        cases = [
            (proposal("a", before * 2, evidence=EVIDENCE), 409, "is beyond the epoch cap (at most 500 from 5000"),
            (proposal("b", before, evidence=EVIDENCE, mode="auto"), 409, "an auto proposal is refused"),
            (proposal("c", 2_000_000, evidence=EVIDENCE), 422, "liquidation_fee_ppm must be in"),
            (proposal("d", before), 409, "a proposal must carry its evidence"),
            (proposal("e", before, evidence={"sharpe": 1.5}), 422, "1.5 is not an integer"),
            (
                {"proposal_id": "f", "changes": [{"market": BTC, "name": "nope", "value": "1"}], "evidence": EVIDENCE},
                409,
                "'nope' is not a market parameter one may change",
            ),
        ]
        for body, status, reason in cases:
            r = api.c.post("/v1/governance/proposals", json=body)
            assert r.status_code == status, (body, r.text)
            detail = r.json()["detail"]
            text = detail if isinstance(detail, str) else detail[0]["msg"]
            assert reason in text, (reason, text)
        assert api.ok("GET", "/v1/governance/proposals")["proposals"] == [] and fee(api) == before
        # unknown proposals: 404 for a decision or a read; a non-admin may not propose at all
        for action in ("approve", "reject", "cancel"):
            kw = {} if action == "approve" else {"json": {"reason": "no"}}
            assert api.c.post(f"/v1/governance/proposals/nope/{action}", **kw).status_code == 404
        assert api.c.get("/v1/governance/proposals/nope").status_code == 404
        venue = api.key("venue")
        r = api.c.post(
            "/v1/governance/proposals", json=proposal("g", before, evidence=EVIDENCE), headers=api.as_(venue)
        )
        assert r.status_code == 403
        # a rejected proposal never activates, and cannot be approved afterwards
        api.ok("POST", "/v1/governance/proposals", json=proposal("h", before + 100, evidence=EVIDENCE))
        r = api.ok("POST", "/v1/governance/proposals/h/reject", json={"reason": "the runs are too few"})
        assert types(r) == ["ProposalRejected"]
        r = api.c.post("/v1/governance/proposals/h/approve")
        assert r.status_code == 409 and r.json()["detail"] == "proposal 'h' is rejected, not submitted"
        view = api.ok("GET", "/v1/governance/proposals/h")
        assert (view["state"], view["reason"]) == ("rejected", "the runs are too few")
        assert fee(api) == before
