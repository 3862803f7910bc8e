"""Governance: proposals that change risk parameters, with their evidence, under the config's guardrails.

A proposal (``ProposalSubmitted``) names parameter changes as ``ParameterChangeRequested`` names them and
carries its evidence. Everything is in event time and logged, so replay is exact:

* **Modes.** ``manual``: an admin approves (``ProposalApproved``) or rejects it; ``auto`` (only where the
  config's :class:`~fluidmargin.model.config.GovernanceSpec` mode is ``auto``): queued at submission.
* **Timelock.** Queued at ts, a proposal activates ``timelock_ns`` later, on the first input at or after
  that time (after the input itself): ``ProposalActivated``, then the ``ParameterChanged`` events, through
  :class:`~fluidmargin.engine.params.Params` (the config's own checks, one re-margin for all the changes).
* **Epoch cap.** Event time is cut into epochs of ``epoch_ns``. In an epoch governance moves a parameter
  at most ``max_change_ppm`` of the value it had before the epoch's first governance change (floored to
  the quantum; all proposals together). Checked at submission and again at activation; a proposal that no
  longer fits is refused then (``ProposalRefused``), nothing applied. Rollbacks only restore, uncapped.
* **Rollback.** For ``watch_ns`` after activation, on the first input after which a live figure since the
  activation reaches its threshold (bad debt socialised; insurance-fund drawdown, the funds' total fall;
  positions liquidated) the values before are restored (``ProposalRolledBack``).
* **A human override wins.** An operator's ``ParameterChangeRequested`` that is applied cancels every
  proposal not yet active that touches the parameter, and releases it from active ones: a rollback never
  overwrites it (``ProposalOverridden``). A later proposal's activation releases it the same way.

Refusals of inputs (governance not configured, a duplicate id, an unknown parameter, a value the config's
checks refuse, a change beyond the epoch cap, no evidence, an unknown or finished proposal) are reasons:
the engine logs them as ``InputRejected`` and applies nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from fluidmargin.core.units import PPM
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.params import Params
from fluidmargin.engine.waterfall import Waterfall
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig, GovernanceSpec

MAX_CHANGES = 32  # parameters one proposal may change
MAX_EVIDENCE = 16_384  # characters of evidence JSON
MAX_TEXT = 512  # characters of a URI, a reason, a name
PROPOSAL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
DIGEST = re.compile(r"[0-9a-f]{64}")
# a proposal's states: waiting for an admin, behind its timelock, applied and watched; then finished
SUBMITTED, QUEUED, ACTIVE = "submitted", "queued", "active"
SETTLED, ROLLED_BACK, REJECTED, CANCELLED, REFUSED, OVERRIDDEN = (
    "settled",
    "rolled_back",
    "rejected",
    "cancelled",
    "refused",
    "overridden",
)
METRICS = ("bad_debt_quote_q", "fund_drawdown_quote_q", "liquidations")  # judged in this order


@dataclass(slots=True)
class Proposal:
    """One proposal and where it stands (plain values: the state dict holds them as they are)."""

    id: str
    mode: str
    markets: list[str]
    names: list[str]
    values: list[int]
    evidence: str
    evidence_digest: str
    evidence_uri: str
    by: str
    submitted_ns: int
    state: str = SUBMITTED
    decided_ns: int = -1  # approved, rejected or cancelled at (-1: not yet)
    decided_by: str = ""
    reason: str = ""  # why it was rejected, cancelled, refused or rolled back
    activates_ns: int = -1  # the end of its timelock (-1: not queued)
    activated_ns: int = -1
    ended_ns: int = -1  # when it finished (settled, rolled back, ...)
    olds: list[int] = field(default_factory=list)  # the values before activation
    held: list[int] = field(default_factory=list)  # 1: a rollback restores that change's parameter
    bases: list[int] = field(default_factory=list)  # at activation: socialised, funds' total, liquidations

    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.markets, self.names, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FIELDS}


FIELDS = tuple(Proposal.__dataclass_fields__)


def liquidations_in(out: list[ev.Event]) -> int:
    """Positions liquidated by these events (a columnar ``PositionsLiquidated`` counts each account)."""
    n = 0
    for e in out:
        if isinstance(e, ev.PositionLiquidated):
            n += 1
        elif isinstance(e, ev.PositionsLiquidated):
            n += len(e.account_ids)
    return n


class Governance:
    """The proposals, the epoch bases of the parameters governance moved, and the live figures it watches."""

    def __init__(self, led: Ledger, params: Params, wf: Waterfall) -> None:
        self.led = led
        self.params = params
        self.wf = wf
        self.proposals: dict[str, Proposal] = {}  # by id, in submission order
        self.live: list[Proposal] = []  # queued and active ones (the only ones time moves)
        self.epoch_base: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (epoch, value before)
        self.liquidations = 0  # positions liquidated while something was live (a running count)

    @property
    def busy(self) -> bool:
        """Whether time may move a proposal (the engine then calls :meth:`step` after each input)."""
        return bool(self.live)

    @property
    def spec(self) -> GovernanceSpec | None:
        return self.led.cfg.governance

    # --- inputs -------------------------------------------------------------------------------------

    def on_submitted(self, e: ev.ProposalSubmitted, out: list[ev.Event]) -> str:
        spec = self.spec
        if spec is None:
            return "governance is not configured (the engine config has no governance section)"
        if not PROPOSAL_ID.fullmatch(e.proposal_id):
            return "proposal_id must be 1 to 64 characters of A-Z a-z 0-9 _ . : -"
        if e.proposal_id in self.proposals:
            return f"proposal {e.proposal_id!r} already exists"
        if e.mode not in ("manual", "auto"):
            return f"mode must be manual or auto, got {e.mode[:20]!r}"
        if e.mode == "auto" and spec.mode != "auto":
            return "an auto proposal is refused: the governance mode is manual (an admin must approve)"
        if not len(e.markets) == len(e.names) == len(e.values):
            return "markets, names and values must be lists of the same length"
        if not 1 <= len(e.names) <= MAX_CHANGES:
            return f"a proposal must change 1 to {MAX_CHANGES} parameters"
        keys = [self.key(m, n) for m, n in zip(e.markets, e.names, strict=True)]
        if len(set(keys)) != len(keys):
            return "a proposal must not change the same parameter twice"
        bad = evidence_error(e.evidence, e.evidence_digest, e.evidence_uri) or text_error(e.by, "by")
        if bad:
            return bad
        cfg = self.led.cfg
        for m, n, v in zip(e.markets, e.names, e.values, strict=True):
            checked = self.check(cfg, m, n, v, spec)
            if isinstance(checked, str):
                return checked
            cfg = checked[1]
        p = Proposal(
            e.proposal_id, e.mode, list(e.markets), list(e.names), list(e.values), e.evidence,
            e.evidence_digest, e.evidence_uri, e.by, e.ts_ns,
        )  # fmt: skip
        self.proposals[p.id] = p
        if p.mode == "auto":
            self.queue(p, out)
        return ""

    def on_approved(self, e: ev.ProposalApproved, out: list[ev.Event]) -> str:
        p, reason = self.find(e.proposal_id, (SUBMITTED,))
        if p is None or (reason := reason or text_error(e.by, "by")):
            return reason
        p.decided_ns, p.decided_by = e.ts_ns, e.by
        self.queue(p, out)
        return ""

    def on_rejected(self, e: ev.ProposalRejected, out: list[ev.Event]) -> str:
        return self.close(e.proposal_id, REJECTED, e.reason, e.by, e.ts_ns)

    def on_cancelled(self, e: ev.ProposalCancelled, out: list[ev.Event]) -> str:
        return self.close(e.proposal_id, CANCELLED, e.reason, e.by, e.ts_ns)

    def on_parameter_change(self, e: ev.ParameterChangeRequested, out: list[ev.Event]) -> str:
        """An operator's change (through :class:`Params`); once applied, it overrides every proposal on it."""
        reason = self.params.on_parameter_change(e, out)
        if reason or not self.proposals:
            return reason
        key = self.key(e.market, e.name)
        self.epoch_base.pop(key, None)  # governance measures its next moves from the operator's value
        self.override(key, "operator", out)
        return ""

    # --- time ---------------------------------------------------------------------------------------

    def step(self, out: list[ev.Event]) -> None:
        """After an input (time is ``now``): active proposals whose watch ended settle; due ones activate;
        then the watched ones still holding a parameter are judged on the figures since their activation,
        until none rolls back."""
        led, spec = self.led, self.spec
        assert spec is not None  # proposals exist only under a governance config (which never changes)
        now = led.now_ns
        seen = len(out)
        self.liquidations += liquidations_in(out)
        for p in [p for p in self.live if p.state == ACTIVE and now >= p.activated_ns + spec.watch_ns]:
            self.finish(p, SETTLED, now)
            out.append(ev.ProposalSettled(now, p.id))
        due = [p for p in self.live if p.state == QUEUED and p.activates_ns <= now]
        due.sort(key=lambda p: p.activates_ns)
        for p in due:
            self.activate(p, spec, out)
            self.liquidations += liquidations_in(out[seen:])
            seen = len(out)
        judged = True
        while judged:
            judged = False
            for p in self.live:
                if p.state == ACTIVE and any(p.held) and (fired := self.breach(p, spec)):
                    self.roll_back(p, *fired, out)
                    self.liquidations += liquidations_in(out[seen:])
                    seen = len(out)
                    judged = True
                    break

    def activate(self, p: Proposal, spec: GovernanceSpec, out: list[ev.Event]) -> None:
        """Apply a queued proposal whose timelock has passed, if it still fits the epoch cap and the checks."""
        led = self.led
        cfg = led.cfg
        olds = []
        for m, n, v in zip(p.markets, p.names, p.values, strict=True):
            checked = self.check(cfg, m, n, v, spec)
            if isinstance(checked, str):
                self.finish(p, REFUSED, led.now_ns, checked)
                out.append(ev.ProposalRefused(led.now_ns, p.id, checked))
                return
            olds.append(checked[0])
            cfg = checked[1]
        epoch = led.now_ns // spec.epoch_ns
        for key, old in zip(p.pairs(), olds, strict=True):
            k = self.key(*key)
            if self.epoch_base.get(k, (-1, 0))[0] != epoch:
                self.epoch_base[k] = (epoch, old)
        for q in self.live:  # a later change releases the parameter from earlier active proposals
            if q.state == ACTIVE:
                self.release(q, {self.key(*k) for k in p.pairs()}, f"proposal:{p.id}", out)
        p.state, p.activated_ns, p.olds, p.held = ACTIVE, led.now_ns, olds, [1] * len(olds)
        p.bases = [led.socialized_q, sum(self.wf.funds.values()), self.liquidations]
        until = p.activated_ns + spec.watch_ns
        out.append(ev.ProposalActivated(led.now_ns, p.id, p.markets, p.names, olds, p.values, until))
        self.params.commit(cfg, list(zip(p.markets, p.names, olds, p.values, strict=True)), out)
        if spec.watch_ns == 0:
            self.finish(p, SETTLED, led.now_ns)
            out.append(ev.ProposalSettled(led.now_ns, p.id))

    def figures(self, p: Proposal) -> dict[str, int]:
        """An active (or finished) proposal's live figures since its activation."""
        if not p.bases:
            return {m: 0 for m in METRICS}
        social, funds, liqs = p.bases
        return {
            "bad_debt_quote_q": self.led.socialized_q - social,
            "fund_drawdown_quote_q": max(0, funds - sum(self.wf.funds.values())),
            "liquidations": self.liquidations - liqs,
        }

    def breach(self, p: Proposal, spec: GovernanceSpec) -> tuple[str, int, int] | None:
        """The first figure at or beyond its threshold (metric, value, threshold), if any."""
        limits = (spec.rollback_bad_debt_quote_q, spec.rollback_fund_drawdown_quote_q, spec.rollback_liquidations)
        figures = self.figures(p)
        for metric, limit in zip(METRICS, limits, strict=True):
            if limit and figures[metric] >= limit:
                return metric, figures[metric], limit
        return None

    def roll_back(self, p: Proposal, metric: str, value: int, limit: int, out: list[ev.Event]) -> None:
        """Restore the values before ``p`` of the parameters it still holds (each through the config's checks)."""
        led = self.led
        cfg = led.cfg
        done: list[tuple[str, str, int, int]] = []
        skipped = []
        for i, (m, n) in enumerate(p.pairs()):
            if not p.held[i]:
                continue
            changed = self.params.changed(cfg, m, n, p.olds[i])
            if isinstance(changed, str):
                skipped.append(f"{m}:{n}: {changed}"[:MAX_TEXT])
                continue
            done.append((m, n, changed[0], p.olds[i]))
            cfg = changed[1]
        self.finish(p, ROLLED_BACK, led.now_ns, f"{metric} {value} >= {limit}")
        markets, names, values = [d[0] for d in done], [d[1] for d in done], [d[3] for d in done]
        out.append(ev.ProposalRolledBack(led.now_ns, p.id, metric, value, limit, markets, names, values, skipped))
        if done:
            self.params.commit(cfg, done, out)

    # --- helpers ------------------------------------------------------------------------------------

    def key(self, market: str, name: str) -> tuple[str, str]:
        """The parameter a (market, name) pair sets: a market's ``oracle.*`` is its base asset's policy."""
        m = self.led.market_idx.get(market) if market else None
        if m is not None and name.startswith("oracle."):
            return "@" + m.spec.base_asset, name
        return market, name

    def check(
        self, cfg: EngineConfig, market: str, name: str, value: int, spec: GovernanceSpec
    ) -> tuple[int, EngineConfig] | str:
        """The value before and ``cfg`` with this change, if it passes the config's checks and the epoch cap
        now; else why not."""
        changed = self.params.changed(cfg, market, name, value)
        where = f"{market}:{name}" if market else name
        if isinstance(changed, str):
            return f"{where}: {changed}"[:2000]
        old, new_cfg = changed
        epoch = self.led.now_ns // spec.epoch_ns
        at, base = self.epoch_base.get(self.key(market, name), (-1, 0))
        if at != epoch:
            base = old
        cap = abs(base) * spec.max_change_ppm // PPM
        if abs(value - base) > cap:
            return (
                f"{where}: {base} -> {value} is beyond the epoch cap "
                f"(at most {cap} from {base} this epoch: {spec.max_change_ppm} ppm)"
            )
        return old, new_cfg

    def queue(self, p: Proposal, out: list[ev.Event]) -> None:
        spec = self.spec
        assert spec is not None
        p.state, p.activates_ns = QUEUED, self.led.now_ns + spec.timelock_ns
        self.live.append(p)
        out.append(ev.ProposalQueued(self.led.now_ns, p.id, p.activates_ns))

    def find(self, pid: str, states: tuple[str, ...]) -> tuple[Proposal | None, str]:
        p = self.proposals.get(pid)
        if p is None:
            return None, f"proposal {pid[:64]!r} is unknown or finished (no such proposal)"
        if p.state not in states:
            return None, f"proposal {pid!r} is {p.state}, not {' or '.join(states)}"
        return p, ""

    def close(self, pid: str, state: str, reason: str, by: str, ts: int) -> str:
        """Reject or cancel a proposal that has not activated."""
        p, why = self.find(pid, (SUBMITTED, QUEUED))
        if p is None or (why := why or text_error(reason, "reason") or text_error(by, "by")):
            return why
        p.decided_ns, p.decided_by = ts, by
        self.finish(p, state, ts, reason)
        return ""

    def finish(self, p: Proposal, state: str, ts: int, reason: str = "") -> None:
        p.state, p.ended_ns, p.reason = state, ts, reason
        if p in self.live:
            self.live.remove(p)

    def override(self, key: tuple[str, str], by: str, out: list[ev.Event]) -> None:
        """``by`` set the parameter ``key``: proposals not active yet that touch it are cancelled, active ones
        release it."""
        now = self.led.now_ns
        for p in list(self.proposals.values()):
            if p.state in (SUBMITTED, QUEUED):
                hit = [k for k in p.pairs() if self.key(*k) == key]
                if hit:
                    self.finish(p, OVERRIDDEN, now, f"{hit[0][0]}:{hit[0][1]} set by {by}")
                    out.append(ev.ProposalOverridden(now, p.id, hit[0][0], hit[0][1], "cancelled", by))
            elif p.state == ACTIVE:
                self.release(p, {key}, by, out)

    def release(self, p: Proposal, keys: set[tuple[str, str]], by: str, out: list[ev.Event]) -> None:
        for i, (m, n) in enumerate(p.pairs()):
            if p.held[i] and self.key(m, n) in keys:
                p.held[i] = 0
                out.append(ev.ProposalOverridden(self.led.now_ns, p.id, m, n, "released", by))

    # --- state --------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain values for the state dict (the snapshot leaves it out while there is no proposal)."""
        return {
            "proposals": [p.to_dict() for p in self.proposals.values()],
            "epoch_base": sorted([m, n, at, base] for (m, n), (at, base) in self.epoch_base.items()),
            "liquidations": self.liquidations,
        }

    def load(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.proposals = {}
        for d in state["proposals"]:
            kw: dict[str, Any] = {f: list(v) if isinstance(v, list | tuple) else v for f, v in d.items()}
            p = Proposal(**kw)
            self.proposals[p.id] = p
        self.live = [p for p in self.proposals.values() if p.state in (QUEUED, ACTIVE)]
        self.epoch_base = {(str(m), str(n)): (int(at), int(base)) for m, n, at, base in state["epoch_base"]}
        self.liquidations = int(state["liquidations"])


def text_error(text: str, name: str) -> str:
    return f"{name} must be at most {MAX_TEXT} characters" if len(text) > MAX_TEXT else ""


def evidence_error(evidence: str, digest: str, uri: str) -> str:
    """Why a proposal's evidence is not acceptable ("" if it is): some evidence is required; the JSON
    must be an object without floats (numbers integers, fractions as decimal strings), the digest SHA-256
    hex."""
    if not evidence and not digest:
        return "a proposal must carry its evidence (evidence JSON, or a report's evidence_digest and evidence_uri)"
    if len(evidence) > MAX_EVIDENCE:
        return f"evidence must be at most {MAX_EVIDENCE} characters of JSON"
    if digest and not DIGEST.fullmatch(digest):
        return "evidence_digest must be 64 lowercase hex characters (SHA-256)"
    if text_error(uri, "evidence_uri"):
        return text_error(uri, "evidence_uri")
    if evidence:
        try:
            obj = json.loads(evidence, parse_float=_no_float, parse_constant=_no_float)
        except (ValueError, RecursionError) as e:
            return f"evidence must be a JSON object: {str(e)[:200]}"
        if not isinstance(obj, dict):
            return "evidence must be a JSON object"
    return ""


def _no_float(text: str) -> Any:
    raise ValueError(f"{text[:40]} is not an integer (numbers must be integers; give fractions as decimal strings)")
