"""The liquidation state machine as a table: {(state, trigger): next_state}."""

from __future__ import annotations

from fluidmargin.core.errors import InvariantViolation

HEALTHY, AT_RISK, LIQUIDATING, BANKRUPT = 0, 1, 2, 3
STATUS_NAMES = ("healthy", "at_risk", "liquidating", "bankrupt")

TRANSITIONS: dict[tuple[int, str], int] = {
    (HEALTHY, "ok"): HEALTHY,
    (HEALTHY, "at_risk"): AT_RISK,
    (HEALTHY, "breach_blocked"): AT_RISK,  # below maintenance but the oracle forbids liquidating
    (HEALTHY, "breach"): LIQUIDATING,
    (AT_RISK, "ok"): HEALTHY,
    (AT_RISK, "at_risk"): AT_RISK,
    (AT_RISK, "breach_blocked"): AT_RISK,
    (AT_RISK, "breach"): LIQUIDATING,
    (LIQUIDATING, "restored"): HEALTHY,
    (LIQUIDATING, "restored_at_risk"): AT_RISK,  # back above maintenance, but inside the at-risk band
    (LIQUIDATING, "closed"): HEALTHY,  # an isolated position fully closed: its bucket is gone
    (LIQUIDATING, "bankrupt"): BANKRUPT,
    (LIQUIDATING, "continues"): LIQUIDATING,  # capped: still below maintenance, more closes to come
    (LIQUIDATING, "breach"): LIQUIDATING,
    (LIQUIDATING, "breach_blocked"): LIQUIDATING,
    (LIQUIDATING, "ok"): HEALTHY,  # the market came back before the rest was closed
    (LIQUIDATING, "at_risk"): AT_RISK,
    (BANKRUPT, "ok"): HEALTHY,  # new collateral brought equity back
    (BANKRUPT, "at_risk"): BANKRUPT,
    (BANKRUPT, "breach_blocked"): BANKRUPT,
    (BANKRUPT, "breach"): LIQUIDATING,
}


def transition(state: int, trigger: str) -> int:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvariantViolation(f"no transition from {STATUS_NAMES[state]} on {trigger!r}") from None
