"""The fast path for the hot writes answers exactly as the FastAPI routes do.

Two real servers over the same venue and a deterministic clock, one with the fast path and one without,
get the same requests in the same order: good writes, idempotent replays, and every kind of bad request
the fast path must hand on (missing or wrong keys, other accounts, bad JSON, extra fields, oversize
bodies, rate limits, engine rejections). Status, body and the relevant headers must be equal, and the
fast one must have answered the good writes itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue

ADMIN = "fm_test-admin-key"
BTC = "BTC-PERP"


@dataclasses.dataclass
class Side:
    app: Any
    c: httpx.Client
    keys: dict[str, str]
    key_ids: dict[str, str]

    def send(self, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        return self.c.request(method, path, headers=headers, **kw)


@contextmanager
def side(tmp: Path, fast: bool) -> Iterator[Side]:
    ticks = itertools.count(1_700_000_000 * 10**9, 1_000_000)
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    app = create_app(
        ServiceSettings(
            db=tmp / "log.db",
            config=cfg,
            admin_key=ADMIN,
            rate_per_s=0,
            snapshot_dir=tmp / "snapshots",
            clock=lambda: next(ticks),
            fast_path=fast,
        )
    )
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        s = Side(app, c, {"admin": ADMIN}, {})
        for name, body in (
            ("venue", {"role": "venue"}),
            ("acct1", {"role": "account", "account_ids": [1]}),
            ("pub", {"role": "publisher", "source": "s1"}),
            ("slow", {"role": "venue", "rate_per_s": 0.001, "burst": 1}),
        ):
            r = s.send("POST", "/v1/keys", "admin", json=body)
            assert r.status_code == 201, r.text
            s.keys[name] = r.json()["api_key"]
            s.key_ids[r.json()["key_id"]] = name
        for aid in (1, 2):
            assert s.send("POST", "/v1/accounts", "admin", json={"account_id": aid}).status_code == 201
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            r = s.send("POST", "/v1/prices", "pub", json={"asset": asset, "price": price})
            assert r.status_code == 200, r.text
        yield s


D1 = "/v1/accounts/1/deposits"
F1 = "/v1/accounts/1/fills"
W1 = "/v1/accounts/1/withdrawals"
FILL = {"market": BTC, "size": "0.01", "price": "50000"}


def raw(body: bytes) -> dict[str, Any]:
    """Request kwargs for a JSON body sent as these exact bytes."""
    return {"headers": {"Content-Type": "application/json"}, "content": body}


# a key named twice: 422 on every hot write, whatever the values (the first value is garbage in some)
DUPLICATES: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("POST", D1, "venue", raw(b'{"amount":"NaN","amount":"10"}')),
    ("POST", D1, "venue", raw(b'{"amount":"10","amount":"10"}')),
    ("POST", W1, "acct1", raw(b'{"amount":"1","asset":"USD","asset":"USD"}')),
    ("POST", F1, "venue", raw(b'{"market":"BTC-PERP","size":"0.01","size":"1","price":"50000"}')),
    ("POST", F1, "venue", raw(b'{"market":"BTC-PERP","size":"0.01","price":"50000","leverage":5,"leverage":5}')),
]

# (method, path, key, request kwargs): in order; each one is sent to both servers
REQUESTS: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("POST", D1, "admin", {"json": {"amount": "1000"}}),
    ("POST", D1, "venue", {"json": {"amount": "2.5", "asset": "USD"}}),
    ("POST", D1, "acct1", {"json": {"amount": "1"}}),  # an account key may not credit itself: 403
    ("POST", "/v1/accounts/2/deposits", "venue", {"json": {"amount": "50000"}}),
    ("POST", D1, "venue", {"json": {"amount": "3"}, "headers": {"Idempotency-Key": "dep-1"}}),
    ("POST", D1, "venue", {"json": {"amount": "3"}, "headers": {"Idempotency-Key": "dep-1"}}),  # a replay
    ("POST", D1, "venue", {"json": {"amount": "4"}, "headers": {"Idempotency-Key": "dep-1"}}),  # mismatch: 422
    ("POST", F1, "venue", {"json": FILL}),
    ("POST", F1, "admin", {"json": {**FILL, "size": "-0.004", "fee": "0.1"}}),
    ("POST", F1, "venue", {"json": {**FILL, "margin_mode": "isolated", "leverage": 5, "isolated_margin": "200"}}),
    ("POST", W1, "acct1", {"json": {"amount": "1"}}),
    ("POST", W1, "venue", {"json": {"amount": "100000000"}}),  # beyond equity: 409
    ("POST", F1, "venue", {"json": {**FILL, "size": "100"}}),  # beyond margin: 409
    ("POST", F1, "venue", {"json": {**FILL, "market": "NOPE-PERP"}}),  # unknown market: 422
    ("POST", D1, "venue", {"json": {"amount": "1", "asset": "DOGE"}}),  # unknown asset: 422
    ("POST", D1, "venue", {"json": {"amount": "0.0000001"}}),  # more decimals than USD has: 422
    ("POST", D1, "venue", {"json": {"amount": "-1"}}),
    ("POST", D1, "venue", {"json": {"amount": 1}}),  # a JSON number: 422
    ("POST", D1, "venue", {"json": {"amount": "1", "extra": 1}}),
    ("POST", D1, "venue", {"json": ["amount", "1"]}),
    ("POST", D1, "venue", {"content": b"{not json"}),
    ("POST", D1, "venue", {"content": b""}),
    ("POST", D1, "venue", {"content": b'{"amount": "1"}', "headers": {"Content-Type": "text/plain"}}),
    ("POST", D1, "venue", {"content": b'{"amount": "1"}', "headers": {"Content-Type": "application/json"}}),
    ("POST", D1, "venue", {"content": b'{"amount": "1", "pad": "' + b"x" * 40_000 + b'"}'}),  # oversize
    ("POST", D1, "venue", {"json": {"amount": "1"}, "headers": {"Idempotency-Key": "has space"}}),
    ("POST", D1, "venue", {"json": {"amount": "1"}, "headers": {"Idempotency-Key": "k" * 129}}),
    ("POST", D1, None, {"json": {"amount": "1"}}),  # no key: 401
    ("POST", D1, "fm_not-a-key", {"json": {"amount": "1"}}),
    ("POST", D1, None, {"json": {"amount": "1"}, "headers": {"Authorization": f"Basic {ADMIN}"}}),
    ("POST", "/v1/accounts/2/deposits", "acct1", {"json": {"amount": "1"}}),  # another account: 403
    ("POST", F1, "acct1", {"json": FILL}),  # an account key may not post fills: 403
    ("POST", D1, "pub", {"json": {"amount": "1"}}),  # nor a publisher deposits
    ("POST", "/v1/accounts/99/deposits", "venue", {"json": {"amount": "1"}}),  # unknown account: 404
    ("POST", f"/v1/accounts/{2**63}/deposits", "venue", {"json": {"amount": "1"}}),  # beyond the id range
    ("POST", "/v1/accounts/0001/deposits", "venue", {"json": {"amount": "1"}}),  # not canonical digits: 422
    ("POST", "/v1/accounts/01/withdrawals", "acct1", {"json": {"amount": "1"}}),
    ("POST", "/v1/accounts/+1/deposits", "venue", {"json": {"amount": "1"}}),
    ("POST", "/v1/accounts/1.0/fills", "venue", {"json": FILL}),
    ("POST", "/v1/accounts/%201/deposits", "venue", {"json": {"amount": "1"}}),
    ("POST", "/v1/accounts/%EF%BC%91/deposits", "venue", {"json": {"amount": "1"}}),  # a fullwidth "1"
    *DUPLICATES,  # 422 on both
    ("POST", D1, None, raw(b'{"amount":"1","amount":"1"}')),  # no key, and a duplicate: as the app says
    # lax values: only JSON integers for integers
    ("POST", F1, "venue", {"json": {**FILL, "leverage": " 5"}}),
    ("POST", F1, "venue", {"json": {**FILL, "leverage": "+5"}}),
    ("POST", F1, "venue", {"json": {**FILL, "leverage": True}}),
    ("POST", F1, "venue", {"json": {**FILL, "leverage": 5.0}}),
    ("POST", F1, "venue", {"json": {**FILL, "leverage": 5}}),
    # how the body is read
    ("POST", D1, "venue", {"content": b'{"amount":"1"}'}),  # no content type: not read as JSON
    ("POST", D1, "venue", raw(b'{"amount":"1"}\n')),  # trailing whitespace: still one JSON value
    ("POST", D1, "venue", raw(b'{"amount":"1"} x')),
    ("POST", D1, "venue", raw(b'\xef\xbb\xbf{"amount":"1"}')),  # a UTF-8 byte-order mark
    ("POST", D1, "venue", raw(b'{"amount":"\xff"}')),  # not UTF-8
    ("POST", D1, "venue", raw(b'{"amount":"1","x":NaN}')),
    ("POST", D1, "slow", {"json": {"amount": "1"}}),
    ("POST", D1, "slow", {"json": {"amount": "1"}}),  # the bucket is empty: 429
    ("POST", D1, "slow", {"json": {"amount": "1", "x": 0}}),  # still 429 (checked before the body)
]


def _normal(s: Side, r: httpx.Response) -> Any:
    """The answer with each key id replaced by the key's name (ids are random per server)."""
    text = r.text
    for kid, name in s.key_ids.items():
        text = text.replace(kid, f"<{name}>")
    return re.sub(r'"durable_seq":\d+', '"durable_seq":"<n>"', text)


def test_the_fast_path_answers_as_the_routes_do(tmp_path: Path) -> None:
    with ExitStack() as stack:
        fast = stack.enter_context(side(tmp_path / "fast", True))
        slow = stack.enter_context(side(tmp_path / "slow", False))
        assert fast.app.fast is not None and slow.app.fast is None
        taken0 = fast.app.fast.taken
        statuses = []
        for method, path, key, kw in REQUESTS:
            a = fast.send(method, path, key, **kw)
            b = slow.send(method, path, key, **kw)
            where = f"{method} {path} as {key} {kw}"[:200]
            assert a.status_code == b.status_code, f"{where}: fast {a.status_code} {a.text} / slow {b.text}"
            assert a.headers.get("content-type") == b.headers.get("content-type"), where
            assert a.headers.get("retry-after") == b.headers.get("retry-after"), where
            assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate"), where
            ja, jb = a.json(), b.json()
            assert ja.keys() == jb.keys(), where
            assert _normal(fast, a) == _normal(slow, b) or ja == jb, f"{where}:\n{a.text}\n{b.text}"
            statuses.append(a.status_code)
        # the sequence did reach every kind of answer, and the fast path took the good writes
        assert {200, 401, 403, 404, 409, 422, 429} <= set(statuses)
        assert [st for st, req in zip(statuses, REQUESTS, strict=True) if req in DUPLICATES] == [422] * len(DUPLICATES)
        assert fast.app.fast.taken - taken0 == statuses.count(200)
        # and both logs hold the same inputs
        ours = fast.send("GET", "/v1/events", "admin", params={"limit": 1000}).json()["events"]
        theirs = slow.send("GET", "/v1/events", "admin", params={"limit": 1000}).json()["events"]
        assert [{k: v for k, v in e.items() if k != "event_id"} for e in ours] == [
            {k: v for k, v in e.items() if k != "event_id"} for e in theirs
        ]


@pytest.mark.parametrize("fast", [True, False])
def test_metrics_count_fast_writes_under_their_route(tmp_path: Path, fast: bool) -> None:
    with side(tmp_path, fast) as s:
        assert s.send("POST", D1, "venue", json={"amount": "1"}).status_code == 200
        text = s.send("GET", "/metrics", "admin").text
        route = "/v1/accounts/{account_id}/deposits"
        line = f'fluidmargin_http_request_duration_seconds_count{{method="POST",route="{route}",'
        assert any(ln.startswith(line) and 'status="200"' in ln and ln.endswith(" 1.0") for ln in text.splitlines())
