"""Governance: proposals that change risk parameters, submitted, approved, rejected and cancelled by admins,
read by any key. Each write is a logged engine input (``engine/governance.py`` holds the guardrails); the
proposals' events go out on the ``markets`` stream with the parameter changes."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

from fastapi import APIRouter, Path

from fluidmargin.core.units import QUOTE_DECIMALS, format_decimal
from fluidmargin.engine.engine import Engine
from fluidmargin.engine.governance import ACTIVE, Proposal
from fluidmargin.model import events as ev
from fluidmargin.model.config import parameter_owner
from fluidmargin.service import views
from fluidmargin.service.auth import ADMINS, ANYONE, Principal
from fluidmargin.service.codec import Scales
from fluidmargin.service.deps import IdempotencyKey, StrictJSONRoute, Svc, errors, write
from fluidmargin.service.schemas import GovernanceView, ProposalIn, ProposalView, ReasonIn, WriteResult

router = APIRouter(prefix="/v1/governance", tags=["governance"], route_class=StrictJSONRoute)
ProposalPath = Annotated[str, Path(min_length=1, max_length=64)]


def current_value(eng: Engine, market: str, name: str) -> str:
    obj, last = parameter_owner(eng.cfg, market, name)
    return str(int(getattr(obj, last)))


def proposal_view(eng: Engine, p: Proposal) -> dict[str, Any]:
    """One proposal as the API shows it: its changes with the values before and now, its timelock and watch
    window, its evidence, and its live figures since activation."""
    spec = eng.cfg.governance
    watch = spec.watch_ns if spec is not None else 0
    activated = p.activated_ns >= 0
    figures = eng.gov.figures(p) if p.state == ACTIVE else None
    changes = [
        {
            "market": m,
            "name": n,
            "value": str(v),
            "old": str(p.olds[i]) if activated else None,
            "current": current_value(eng, m, n),
            "held": bool(p.held[i]) if activated else True,
        }
        for i, (m, n, v) in enumerate(zip(p.markets, p.names, p.values, strict=True))
    ]
    return {
        "proposal_id": p.id,
        "state": p.state,
        "mode": p.mode,
        "changes": changes,
        "evidence": json.loads(p.evidence) if p.evidence else None,
        "evidence_digest": p.evidence_digest,
        "evidence_uri": p.evidence_uri,
        "submitted_ns": p.submitted_ns,
        "submitted_by": p.by,
        "decided_ns": p.decided_ns if p.decided_ns >= 0 else None,
        "decided_by": p.decided_by,
        "activates_ns": p.activates_ns if p.activates_ns >= 0 else None,
        "activated_ns": p.activated_ns if activated else None,
        "watch_until_ns": p.activated_ns + watch if activated else None,
        "ended_ns": p.ended_ns if p.ended_ns >= 0 else None,
        "reason": p.reason,
        "figures": None
        if figures is None
        else {
            "bad_debt": format_decimal(figures["bad_debt_quote_q"], QUOTE_DECIMALS),
            "fund_drawdown": format_decimal(figures["fund_drawdown_quote_q"], QUOTE_DECIMALS),
            "liquidations": figures["liquidations"],
        },
    }


def governance_view(eng: Engine) -> dict[str, Any]:
    spec = eng.cfg.governance
    return {
        "now_ns": eng.now_ns,
        "guardrails": None if spec is None else Scales(eng.cfg).render_config(dataclasses.asdict(spec)),
        "proposals": [proposal_view(eng, p) for p in eng.gov.proposals.values()],
    }


def one_proposal(eng: Engine, proposal_id: str) -> dict[str, Any]:
    p = eng.gov.proposals.get(proposal_id)
    if p is None:
        raise views.NotFound(f"unknown proposal {proposal_id!r}")
    return proposal_view(eng, p)


@router.get(
    "/proposals",
    response_model=GovernanceView,
    responses=errors(403),
    summary="The guardrails and every proposal (state, timelock, activation, evidence, live figures)",
)
async def proposals(svc: Svc, p: Annotated[Principal, ANYONE]) -> dict[str, Any]:
    return await svc.worker.read(governance_view)


@router.get("/proposals/{proposal_id}", response_model=ProposalView, responses=errors(403, 404), summary="One proposal")
async def proposal(proposal_id: ProposalPath, svc: Svc, p: Annotated[Principal, ANYONE]) -> dict[str, Any]:
    return await svc.worker.read(lambda eng: one_proposal(eng, proposal_id))


@router.post(
    "/proposals",
    response_model=WriteResult,
    responses=errors(403, 409),
    summary="Propose parameter changes with their evidence (admin): a logged engine event",
    description="Each change is validated by the engine config's own checks and held to the governance "
    "guardrails (the most a parameter may move per epoch); a refusal is a 409 or 422 with the reason, and "
    "nothing is applied. A manual proposal waits for an admin's approval; an auto one (where the governance "
    "mode is auto) is queued at once. Either activates after the timelock, on the first input at or after it.",
)
async def submit_proposal(
    body: ProposalIn, svc: Svc, p: Annotated[Principal, ADMINS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    values = [int(c.value) for c in body.changes]
    evidence = "" if body.evidence is None else json.dumps(body.evidence, sort_keys=True, separators=(",", ":"))

    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.ProposalSubmitted(
            ts,
            body.proposal_id or f"P{ts}",
            [c.market for c in body.changes],
            [c.name for c in body.changes],
            values,
            body.mode,
            evidence,
            body.evidence_digest,
            body.evidence_uri,
            by=p.key.key_id,
        )

    fingerprint = {**body.model_dump(exclude={"evidence"}), "evidence": evidence}  # (big integers as text)
    return await write(svc, p, build, idem, ("proposal", fingerprint))


@router.post(
    "/proposals/{proposal_id}/approve",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Approve a proposal (admin): it is queued behind the timelock",
)
async def approve_proposal(
    proposal_id: ProposalPath, svc: Svc, p: Annotated[Principal, ADMINS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.ProposalApproved(ts, proposal_id, by=p.key.key_id)

    return await write(svc, p, build, idem, ("approve", proposal_id))


@router.post(
    "/proposals/{proposal_id}/reject",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Reject a proposal that has not activated (admin)",
)
async def reject_proposal(
    proposal_id: ProposalPath, body: ReasonIn, svc: Svc, p: Annotated[Principal, ADMINS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.ProposalRejected(ts, proposal_id, body.reason, by=p.key.key_id)

    return await write(svc, p, build, idem, ("reject", proposal_id, body.model_dump()))


@router.post(
    "/proposals/{proposal_id}/cancel",
    response_model=WriteResult,
    responses=errors(403, 404, 409),
    summary="Cancel a proposal that has not activated (admin)",
)
async def cancel_proposal(
    proposal_id: ProposalPath, body: ReasonIn, svc: Svc, p: Annotated[Principal, ADMINS], idem: IdempotencyKey = None
) -> dict[str, Any]:
    def build(eng: Engine, ts: int) -> ev.Event:
        return ev.ProposalCancelled(ts, proposal_id, body.reason, by=p.key.key_id)

    return await write(svc, p, build, idem, ("cancel", proposal_id, body.model_dump()))
