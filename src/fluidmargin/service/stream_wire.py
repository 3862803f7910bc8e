"""What the live streams send (:mod:`fluidmargin.service.streams`): channels, close codes, each log
record rendered once and cut per view, the messages, and the WebSocket helpers both endpoints use.

A record is rendered once for every subscriber (:func:`render_record`); :func:`visible_frag` gives the
part of it one key may see (:meth:`~fluidmargin.service.auth.Principal.sees`, the rule write answers use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from fluidmargin.model import events as ev
from fluidmargin.service.auth import Principal, event_account_ids
from fluidmargin.service.codec import Scales, render_event
from fluidmargin.service.deps import Service
from fluidmargin.service.roles import SEE_ALL

# --- channels ------------------------------------------------------------------------------------------

CHANNELS: dict[str, tuple[str, ...]] = {
    "prices": (
        "PriceObserved",
        "OraclePriceRejected",
        "IndexPriceUpdated",
        "MarkPriceUpdated",
        "LastTradeObserved",
        "FundingRatePublished",
        "OracleReanchorRequested",
        "OracleReanchored",
    ),
    "markets": (
        "MarketHaltRequested",
        "MarketResumeRequested",
        "MarketHalted",
        "MarketResumed",
        "ParameterChangeRequested",
        "ParameterChanged",
        *(n for n in ev.EVENT_TYPES if n.startswith("Proposal")),  # governance: proposals and what became of them
    ),
    "liquidations": (
        "PositionLiquidated",
        "PositionsLiquidated",
        "BatchNetted",
        "LiquidationExecuted",
        "AuctionStarted",
        "AuctionBid",
        "AuctionBidFilled",
        "AuctionReset",
        "AuctionFinished",
        "BackstopTakeover",
        "AutoDeleveraged",
        "BadDebtSocialized",
    ),
    "health": ("AccountStatusChanged", "PositionsLiquidated"),
    "accounts": (
        "AccountOpened",
        "AccountsSeeded",
        "Deposited",
        "WithdrawalRequested",
        "TradeFilled",
        "FundingSettleRequested",
        "FundingSettled",
        "AccountStatusChanged",
        "VaultDeposit",
        "VaultWithdrawalRequested",
        "VaultWithdrawalClaimed",
        "VaultSharesChanged",
    ),
    "funds": ("InsuranceFundChanged", "BadDebtSocialized", "VaultSharesChanged"),
    "system": ("ClockAdvanced", "InputRejected"),
}
_BIT = {name: 1 << i for i, name in enumerate(CHANNELS)}
ALL_CHANNELS = (1 << len(CHANNELS)) - 1
_TYPE_MASK: dict[str, int] = {}
for _name, _types in CHANNELS.items():
    for _t in _types:
        _TYPE_MASK[_t] = _TYPE_MASK.get(_t, 0) | _BIT[_name]


def type_mask(type_name: str) -> int:
    """The channels a log record of this type belongs to (an unknown type: ``system``)."""
    return _TYPE_MASK.get(type_name, _BIT["system"])


def parse_channels(text: str | None) -> tuple[int, list[str]]:
    """``channels=`` as a bit mask and the sorted names; ``all`` (the default) is every channel."""
    names = [c.strip() for c in (text or "all").split(",") if c.strip()]
    if not names:
        names = ["all"]
    mask = 0
    for n in names:
        if n == "all":
            mask = ALL_CHANNELS
        elif n in _BIT:
            mask |= _BIT[n]
        else:
            raise ValueError(f"unknown channel {n[:40]!r} (channels: all, {', '.join(CHANNELS)})")
    return mask, (["all"] if mask == ALL_CHANNELS else sorted(n for n in CHANNELS if mask & _BIT[n]))


CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SLOW = 4408
CLOSE_RATE_LIMITED = 4429
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013

# --- records as the stream shows them ----------------------------------------------------------------


@dataclass(slots=True)
class StreamRecord:
    """One log record rendered once for every subscriber: ``frag`` is its JSON as a full-view client gets it."""

    seq: int
    type: str
    mask: int
    frag: str
    events: list[dict[str, Any]]
    private: bool  # some event names an account: account keys get a filtered copy
    owner: list[int] | None = None  # the record goes as a whole to keys that may see these accounts


def event_ids(e: ev.Event) -> list[int]:
    """The accounts an input names (an AccountsSeeded's list as is: it may be long)."""
    ids = getattr(e, "account_ids", None)
    if isinstance(ids, list):
        return ids
    v = getattr(e, "account_id", None)
    return [v] if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else []


def render_record(seq: int, e: ev.Event, scales: Scales, input_ids: list[int] | None = None) -> StreamRecord:
    """A log record as the stream shows it. ``input_ids``: for an InputRejected, the accounts of the input
    it refuses (the rejection goes to whoever may see that input)."""
    name = type(e).__name__
    owner: list[int] | None = None
    if isinstance(e, ev.AccountsSeeded):
        events: list[dict[str, Any]] = [
            {
                "type": name,
                "seq": seq,
                "ts_ns": e.ts_ns,
                "event_id": e.event_id,
                "accounts": len(e.account_ids),
                "positions": len(e.pos_account),
                "summary": True,
            }
        ]
        owner, private = e.account_ids, True
    else:
        events = render_event(seq, e, scales)
        private = any(event_account_ids(x) for x in events)
        if isinstance(e, ev.InputRejected):
            owner = input_ids or []
    frag = orjson.dumps({"seq": seq, "type": name, "events": events}).decode()
    return StreamRecord(seq, name, type_mask(name), frag, events, private, owner)


def visible_frag(p: Principal, rec: StreamRecord) -> str | None:
    """``rec`` as this key may see it (None: nothing of it)."""
    if p.role in SEE_ALL:
        return rec.frag
    if rec.owner is not None:
        return rec.frag if p.may_see_all(rec.owner) else None
    if not rec.private:
        return rec.frag
    evs = [x for x in rec.events if p.sees(x)]
    if not evs:
        return None
    if len(evs) == len(rec.events):
        return rec.frag
    return orjson.dumps({"seq": rec.seq, "type": rec.type, "events": evs}).decode()


class Chunk:
    """What one commit (or one progress tick) gives one view of the stream: records ``first..last``."""

    __slots__ = ("_text", "first", "frags", "last", "nbytes")

    def __init__(self, first: int, last: int, frags: list[tuple[int, str]]) -> None:
        self.first = first
        self.last = last
        self.frags = frags
        self.nbytes = 32 + sum(len(f) for _, f in frags)
        self._text: str | None = None

    def text(self) -> str:
        if self._text is None:
            self._text = message(self.last, [f for _, f in self.frags])
        return self._text


def message(seq: int, frags: list[str]) -> str:
    return '{"seq":' + str(seq) + ',"records":[' + ",".join(frags) + "]}"


def control(op: str, **kw: Any) -> str:
    """A control message (``hello``, ``live``)."""
    return orjson.dumps({"op": op, **kw}).decode()


# --- the WebSocket side ------------------------------------------------------------------------------


def authenticate(svc: Service, ws: WebSocket, roles: tuple[str, ...]) -> tuple[Principal | None, int, str]:
    """The key of a WebSocket (``?key=`` or a bearer header), if it may use the endpoint: (principal, 0, "");
    else (None, close code, reason)."""
    secret = ws.query_params.get("key") or ""
    if not secret:
        scheme, _, cred = ws.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            secret = cred.strip()
    if not secret:
        return None, CLOSE_UNAUTHORIZED, "missing API key (?key=... or Authorization: Bearer ...)"
    keys = svc.keys
    rec = keys.lookup(secret)
    if rec is None:
        return None, CLOSE_UNAUTHORIZED, "invalid or revoked API key"
    if svc.limiter.take(rec.key_id, rec.rate_per_s, rec.burst):
        return None, CLOSE_RATE_LIMITED, "rate limit exceeded for this key"
    if rec.role not in roles:
        return None, CLOSE_FORBIDDEN, f"the {rec.role} role may not use this endpoint"
    return Principal(rec, keys), 0, ""


def close_reason(text: str) -> str:
    """A close reason (at most 123 bytes of UTF-8)."""
    b = text.encode()[:123]
    return b.decode("utf-8", "ignore")


def is_disconnect(e: BaseException | None) -> bool:
    """Whether ``e`` says the client went away."""
    return isinstance(e, WebSocketDisconnect | ConnectionError | OSError) or type(e).__name__ == "ClientDisconnected"


async def until_disconnect(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends until it goes away."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
