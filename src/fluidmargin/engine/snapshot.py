"""Snapshots and the state hash: the whole exact state as plain values, its canonical hash, and back.

Owns :meth:`Snapshot.state_dict` (every exact field, float shadows excluded), :func:`hash_state` (SHA-256
over a canonical, type-tagged encoding), :meth:`Snapshot.load` (the state back into a fresh engine's
rooms), the digest of the seen event ids, and :meth:`Snapshot.ledger_total`, the conservation check.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np

from fluidmargin.core.errors import InvariantViolation
from fluidmargin.engine.governance import Governance
from fluidmargin.engine.ledger import EXACT_POS, Ledger
from fluidmargin.engine.options import OptionBook
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.types import PORTFOLIO
from fluidmargin.engine.waterfall import Waterfall
from fluidmargin.risk.perp import oracle as orc

MASK128 = (1 << 128) - 1


def id_digest(eid: str) -> int:
    """An event id's share of the order-independent digest of the seen ids (added mod 2^128)."""
    return int.from_bytes(hashlib.sha256(eid.encode()).digest()[:16], "little")


def hash_state(state: dict[str, Any]) -> str:
    """SHA-256 over a canonical encoding of a state dict."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


class Snapshot:
    """Reads and restores the exact state held by the ledger, the oracles, the waterfall and the option book."""

    def __init__(self, led: Ledger, oracles: OracleState, wf: Waterfall, opt: OptionBook, gov: Governance) -> None:
        self.led = led
        self.oracles = oracles
        self.wf = wf
        self.opt = opt
        self.gov = gov

    def ledger_total(self, c: int | None = None) -> int:
        """Sum of every ledger for collateral ``c`` (quote by default): must equal net deposits."""
        led, wf = self.led, self.wf
        c = led.quote_c if c is None else c
        total = int(led.bal[: led.n_acc, c].astype(object).sum()) if led.n_acc else 0
        if c == led.quote_c:
            total += int(led.pos_iso_margin[: led.n_pos].astype(object).sum()) if led.n_pos else 0
            total += sum(wf.funds.values()) - wf.seed_total + led.fees_q + led.clearing_q
            total -= led.socialized_q
        return total

    def state_dict(self, for_hash: bool = False) -> dict[str, Any]:
        """The whole exact state as plain values (float shadows excluded): hashed and snapshotted.

        ``for_hash`` replaces the set of seen event ids by its count and order-independent digest.
        """
        led, ora = self.led, self.oracles
        n, k = led.n_acc, led.n_pos
        state = {
            "version": 1,
            "seq": led.seq,
            "now_ns": led.now_ns,
            "config": led.cfg.to_dict(),
            "accounts": {
                "acct_id": led.acct_id[:n].copy(),
                "bal": led.bal[:n].copy(),
                "status": led.status[:n].copy(),
                "mode": led.acct_mode[:n].copy(),
                "first_pos": led.first_pos[:n].copy(),
            },
            "options": self.opt.state(),
            "positions": {f: getattr(led, f)[:k].copy() for f in EXACT_POS},
            "markets": [
                {
                    "mark_q": m.mark_q,
                    "last_trade_q": m.last_trade_q,
                    "fidx": m.fidx,
                    "fidx_ts_ns": m.fidx_ts_ns,
                    "fidx_rem": m.fidx_rem,
                    "rate_e9": m.rate_e9,
                    "long_oi_base_q": m.long_oi_base_q,
                    "col": m.column().copy(),
                }
                for m in led.markets
            ],
            "oracle": {
                "src_last": sorted((a, s, p, t) for (a, s), (p, t) in ora.src_last.items()),
                "index_q": sorted(ora.index_q.items()),
                "index_ts": sorted(ora.index_ts.items()),
                "index_hist": sorted((a, list(h)) for a, h in ora.index_hist.items()),
                "index_n": sorted(ora.index_n.items()),
                "reanchor": sorted(
                    (a, p.first_ts_ns, p.last_q, p.count, [list(x) for x in p.sources]) for a, p in ora.reanchor.items()
                ),
                "anchor_ts": sorted(ora.anchor_ts.items()),
                "diverged": sorted(ora.diverged.items()),
                "halted": sorted(ora.halted.items()),
            },
            "waterfall": self.wf.state(),
            "ledgers": {
                "fees_q": led.fees_q,
                "clearing_q": led.clearing_q,
                "socialized_q": led.socialized_q,
                "deposits": list(led.deposits),
                "withdrawals": list(led.withdrawals),
            },
            "seen_ids": [len(led.seen_ids), led.ids_acc] if for_hash else sorted(led.seen_ids),
        }
        if self.gov.proposals:  # a state without proposals keeps the form (and hash) it had before governance
            state["governance"] = self.gov.state()
        return state

    def load(self, state: dict[str, Any]) -> None:
        """Restore ``state`` (from :meth:`state_dict`) into these fresh rooms; the float shadow is the caller's."""
        led, ora, opt = self.led, self.oracles, self.opt
        led.seq = state["seq"]
        led.now_ns = state["now_ns"]
        a = state["accounts"]
        n = len(a["acct_id"])
        led.n_acc = n
        led.acct_id[:n] = a["acct_id"]
        led.bal[:n] = a["bal"]
        led.status[:n] = a["status"]
        led.first_pos[:n] = a["first_pos"]
        led.row_of = {int(x): i for i, x in enumerate(a["acct_id"].tolist())}
        if "mode" in a:
            led.acct_mode[:n] = a["mode"]
        opt.pm_rows = {int(r) for r in np.flatnonzero(led.acct_mode[:n] == PORTFOLIO).tolist()}
        opt.load(state.get("options"))
        k = len(state["positions"]["pos_acct"])
        led.n_pos = k
        for f in EXACT_POS:
            getattr(led, f)[:k] = state["positions"][f]
        for m, s in zip(led.markets, state["markets"], strict=True):
            m.mark_q, m.last_trade_q, m.fidx = s["mark_q"], s["last_trade_q"], s["fidx"]
            m.fidx_ts_ns, m.rate_e9, m.long_oi_base_q = s["fidx_ts_ns"], s["rate_e9"], s["long_oi_base_q"]
            m.fidx_rem = s["fidx_rem"]
            m.col = np.asarray(s["col"], dtype=np.int64).copy()
        o = state["oracle"]
        ora.src_last = {(a_, s_): (p, t) for a_, s_, p, t in o["src_last"]}
        ora.index_q = dict(o["index_q"])
        ora.index_ts = dict(o["index_ts"])
        ora.index_hist = {a: [tuple(x) for x in h] for a, h in o["index_hist"]}
        # a snapshot from before quorums: each index counts the sources that had printed for it
        n_of = Counter(a_ for a_, _s in ora.src_last)
        ora.index_n = dict(o["index_n"]) if "index_n" in o else {a_: n_of[a_] for a_ in ora.index_q}
        ora.reanchor = {
            a_: orc.Pending(f, q, c, tuple((str(x[0]), int(x[1]), int(x[2])) for x in srcs))
            for a_, f, q, c, srcs in o.get("reanchor", ())
        }
        ora.anchor_ts = dict(o.get("anchor_ts", ()))
        ora.diverged = dict(o.get("diverged", ()))
        ora.halted = dict(o["halted"])
        led_ = state["ledgers"]
        self.wf.load(state["waterfall"])
        led.fees_q, led.clearing_q = led_["fees_q"], led_["clearing_q"]
        led.socialized_q = led_["socialized_q"]
        led.deposits, led.withdrawals = list(led_["deposits"]), list(led_["withdrawals"])
        led.seen_ids = set(state["seen_ids"])
        self.gov.load(state.get("governance"))
        for eid in led.seen_ids:
            led.ids_acc = (led.ids_acc + id_digest(eid)) & MASK128


def _feed(h: Any, obj: Any) -> None:
    """Canonical, type-tagged encoding for hashing (dict keys sorted; arrays as little-endian bytes)."""
    if isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj):
            _feed(h, key)
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[%d" % len(obj))
        for x in obj:
            _feed(h, x)
        h.update(b"]")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        h.update(b"A" + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    elif obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"T" if obj else b"F")
    elif isinstance(obj, int):
        h.update(b"I%d;" % obj)
    elif isinstance(obj, str):
        b = obj.encode()
        h.update(b"S%d:" % len(b) + b)
    else:
        raise InvariantViolation(f"cannot hash {type(obj).__name__}")
