"""The hot writes (deposits, withdrawals, fills) answered without FastAPI's per-request machinery.

FastAPI's routing, dependency solving and response validation cost about 0.7 ms of the event loop's
time per request: more than everything else a write costs. Here a request is taken only when it is
plainly good: a canonical account id, a known key whose role and scope allow it, a JSON body (declared
``application/json``, read by the app's own reader, so a duplicate key is the app's to refuse) that the
route's own pydantic model accepts, a well-formed ``Idempotency-Key``, and a token in the key's rate
bucket. Anything else (a missing key, a 403, a 429, a body FastAPI would refuse, an oversize body) goes
on untouched, its body replayed, to the FastAPI app, which answers it as it always does: every error
shape has one source. What is taken runs the routes' own code: the same models, input builders
(``routes_accounts.*_input``), write path (``deps.submit``) and error answers (``app.error_response``),
so its answers equal the app's; ``tests/service/test_service_fastpath.py`` compares the two on the same
requests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic import ValidationError as PydanticError

from fluidmargin.service import routes_accounts as ra
from fluidmargin.service.auth import Principal
from fluidmargin.service.codec import loads_json
from fluidmargin.service.deps import Service, result_body, submit
from fluidmargin.service.roles import OWNERS, SEE_ALL
from fluidmargin.service.schemas import Fill, Transfer

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ErrorRenderer = Callable[[Service, Exception, Any], Any]

_PATH = re.compile(r"/v1/accounts/(0|[1-9][0-9]{0,18})/(deposits|withdrawals|fills)")  # as deps.AccountPath
_IDEM = re.compile(r"[\x21-\x7e]{1,128}")
MAX_BODY = 16 * 1024  # larger bodies are the app's to judge (none of these routes needs one)
_ROUTES: dict[str, tuple[type[BaseModel], tuple[str, ...], Callable[[int, Any], tuple[Any, Any]], str]] = {
    "deposits": (Transfer, SEE_ALL, ra.deposit_input, "/v1/accounts/{account_id}/deposits"),
    "withdrawals": (Transfer, OWNERS, ra.withdrawal_input, "/v1/accounts/{account_id}/withdrawals"),
    "fills": (Fill, SEE_ALL, ra.fill_input, "/v1/accounts/{account_id}/fills"),
}
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastPath:
    """Takes the plainly good hot writes; ``handle`` returns False (having consumed nothing that is not
    replayed) for everything else."""

    def __init__(self, svc: Service, render_error: ErrorRenderer) -> None:
        self.svc = svc
        self.render_error = render_error
        self._latency: dict[tuple[str, int], Any] = {}
        self.taken = 0  # requests answered here (tests check the fast path is in use)

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> tuple[bool, Receive]:
        """``(True, _)`` when answered here, else ``(False, receive')``: pass ``receive'`` on (it replays
        what was read)."""
        t0 = time.perf_counter()
        m = _PATH.fullmatch(scope["path"])
        if m is None or scope.get("root_path"):
            return False, receive
        account_id = int(m.group(1))
        model, roles, make_input, template = _ROUTES[m.group(2)]
        auth = idem = ctype = None
        length = -1
        for name, value in scope["headers"]:
            if name == b"authorization" and auth is None:
                auth = value
            elif name == b"idempotency-key" and idem is None:
                idem = value
            elif name == b"content-type" and ctype is None:
                ctype = value
            elif name == b"content-length" and length < 0:
                length = int(value) if value.isdigit() and len(value) < 9 else MAX_BODY + 1
        if account_id > 2**63 - 1 or auth is None or length > MAX_BODY or ctype != b"application/json":
            return False, receive
        scheme, _, secret = auth.decode("latin-1").partition(" ")
        svc = self.svc
        rec = svc.keys.lookup(secret) if scheme.lower() == "bearer" and secret else None
        if rec is None or rec.role not in roles:
            return False, receive
        p = Principal(rec, svc.keys)
        if not p.may_touch(account_id):
            return False, receive
        idem_key = None
        if idem is not None:
            idem_key = idem.decode("latin-1")
            if _IDEM.fullmatch(idem_key) is None:
                return False, receive

        read: list[Message] = []  # what was read, replayed to the app if it is not taken here
        body = b""
        while True:
            msg = await receive()
            read.append(msg)
            if msg["type"] != "http.request":
                return False, replaying(read, receive)
            body += msg.get("body", b"")
            if len(body) > MAX_BODY:
                return False, replaying(read, receive)
            if not msg.get("more_body", False):
                break
        try:
            parsed = loads_json(body) if body else None  # the app's reader (duplicate keys refused)
            fields = model.model_validate(parsed) if isinstance(parsed, dict) else None
        except (ValueError, RecursionError, PydanticError):  # DuplicateKey, JSON and UTF-8 errors are ValueErrors
            fields = None
        if fields is None or svc.limiter.take(rec.key_id, rec.rate_per_s, rec.burst):
            return False, replaying(read, receive)

        build, fingerprint = make_input(account_id, fields)
        try:
            outcome = await submit(svc, p, build, idem_key, fingerprint)
        except Exception as e:
            response = self.render_error(svc, e, p)
            if response is None:
                raise
            await response(scope, replaying(read, receive), send)
            self._observe(template, response.status_code, t0)
            return True, receive
        payload = orjson.dumps(result_body(svc, outcome, p))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        self.taken += 1
        self._observe(template, 200, t0)
        return True, receive

    def _observe(self, template: str, status: int, t0: float) -> None:
        child = self._latency.get((template, status))
        if child is None:
            child = self._latency[(template, status)] = self.svc.metrics.request_latency.labels(
                "POST", template, str(status)
            )
        child.observe(time.perf_counter() - t0)


def replaying(read: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``read`` again, then goes on with ``receive``."""
    pending = list(read)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return again
