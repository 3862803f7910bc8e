"""The liquidation state machine as a table: {(status, trigger): next status}.

Statuses are stored as int8 in the ledger (their values are part of the state hash); triggers are what
the confirmation found about a bucket.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from fluidmargin.core.errors import InvariantViolation


class Status(IntEnum):
    """A bucket's liquidation status (the int8 stored in ``status`` / ``pos_status``)."""

    HEALTHY = 0
    AT_RISK = 1
    LIQUIDATING = 2
    BANKRUPT = 3


class Trigger(StrEnum):
    """What the exact confirmation found about a bucket."""

    OK = "ok"  # above the at-risk band
    AT_RISK = "at_risk"  # above maintenance, inside the band
    BREACH = "breach"  # below maintenance, may be liquidated
    BREACH_BLOCKED = "breach_blocked"  # below maintenance but the oracle forbids liquidating
    RESTORED = "restored"  # a liquidation brought it back above the band
    RESTORED_AT_RISK = "restored_at_risk"  # back above maintenance, but inside the at-risk band
    CLOSED = "closed"  # an isolated position fully closed: its bucket is gone
    BANKRUPT = "bankrupt"  # nothing left to close and no equity left
    CONTINUES = "continues"  # capped: still below maintenance, more closes to come


HEALTHY, AT_RISK, LIQUIDATING, BANKRUPT = Status
STATUS_NAMES = ("healthy", "at_risk", "liquidating", "bankrupt")

TRANSITIONS: dict[tuple[Status, Trigger], Status] = {
    (HEALTHY, Trigger.OK): HEALTHY,
    (HEALTHY, Trigger.AT_RISK): AT_RISK,
    (HEALTHY, Trigger.BREACH_BLOCKED): AT_RISK,
    (HEALTHY, Trigger.BREACH): LIQUIDATING,
    (AT_RISK, Trigger.OK): HEALTHY,
    (AT_RISK, Trigger.AT_RISK): AT_RISK,
    (AT_RISK, Trigger.BREACH_BLOCKED): AT_RISK,
    (AT_RISK, Trigger.BREACH): LIQUIDATING,
    (LIQUIDATING, Trigger.RESTORED): HEALTHY,
    (LIQUIDATING, Trigger.RESTORED_AT_RISK): AT_RISK,
    (LIQUIDATING, Trigger.CLOSED): HEALTHY,
    (LIQUIDATING, Trigger.BANKRUPT): BANKRUPT,
    (LIQUIDATING, Trigger.CONTINUES): LIQUIDATING,
    (LIQUIDATING, Trigger.BREACH): LIQUIDATING,
    (LIQUIDATING, Trigger.BREACH_BLOCKED): LIQUIDATING,
    (LIQUIDATING, Trigger.OK): HEALTHY,  # the market came back before the rest was closed
    (LIQUIDATING, Trigger.AT_RISK): AT_RISK,
    (BANKRUPT, Trigger.OK): HEALTHY,  # new collateral brought equity back
    (BANKRUPT, Trigger.AT_RISK): BANKRUPT,
    (BANKRUPT, Trigger.BREACH_BLOCKED): BANKRUPT,
    (BANKRUPT, Trigger.BREACH): LIQUIDATING,
}


def transition(state: int, trigger: str) -> Status:
    """The next status of a bucket in ``state`` on ``trigger`` (a plain int and str are accepted too)."""
    try:
        return TRANSITIONS[(state, trigger)]  # type: ignore[index]
    except KeyError:
        raise InvariantViolation(f"no transition from {STATUS_NAMES[state]} on {str(trigger)!r}") from None
