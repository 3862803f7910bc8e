"""Oracle state and the checks that read it: whether an asset's price may open risk or liquidate.

Owns each source's last price, each asset's index (price, time, agreeing sources, recent samples), a
level pending re-anchoring, the last re-anchor time, divergence since when, and each market's halt
reason. What a print or an operator does to this state is :mod:`fluidmargin.engine.prices`.
"""

from __future__ import annotations

from collections.abc import Iterable

from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.types import MANUAL_HALT
from fluidmargin.risk.perp import oracle as orc


class OracleState:
    """Sources, indices, halts; :meth:`blocked` says why an action on some assets is not allowed now."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        self.src_last: dict[tuple[str, str], tuple[int, int]] = {}
        self.index_q: dict[str, int] = {}
        self.index_ts: dict[str, int] = {}
        # index samples within the breaker's and the jump limit's windows (kept with the breaker off too)
        self.index_hist: dict[str, list[tuple[int, int]]] = {}
        self.index_n: dict[str, int] = {}  # sources the index agrees with (liquidation needs a quorum)
        self.reanchor: dict[str, orc.Pending] = {}  # a level refused as a jump, pending re-anchoring
        self.anchor_ts: dict[str, int] = {}  # source prints before the last re-anchor no longer count
        self.diverged: dict[str, int] = {}  # asset -> since when a source is set aside for divergence
        self.halted: dict[str, str] = {}  # market -> why its circuit breaker stopped new risk

    def blocked(self, assets: Iterable[str], action: orc.Action) -> str:
        """Why ``action`` is not allowed on one of ``assets`` now (empty: it is allowed on all)."""
        led = self.led
        for a in assets:
            pol = led.cfg.policy(a)
            v = orc.staleness(led.now_ns, self.index_ts.get(a), pol)
            if not orc.allowed(v, action, pol):
                return f"oracle for {a} is {v.name}: {action.value} not allowed"
            if action is orc.Action.LIQUIDATE:
                n = self.index_n.get(a, 0)
                if not orc.liquidation_grade(n, pol):
                    return f"oracle for {a}: {n} agreeing source(s), liquidation needs {pol.min_sources_liquidation}"
                halt = self.auto_halt(a)
                if halt:
                    return f"oracle for {a}: halted ({halt}), no liquidation until the price is confirmed"
        return ""

    def auto_halt(self, asset: str) -> str:
        """The automatic halt (range breaker, divergence) on one of the asset's markets, if any."""
        for m in self.led.markets_of_asset[asset]:
            why = self.halted.get(m.spec.symbol, "")
            if why and not why.startswith(MANUAL_HALT):
                return why
        return ""

    def fresh_sources(self, asset: str, now_ns: int | None = None) -> dict[str, int]:
        """The sources' latest prices that count for the index at ``now_ns`` (default: engine time):
        fresh, and printed since the last re-anchor."""
        now = self.led.now_ns if now_ns is None else now_ns
        pol = self.led.cfg.policy(asset)
        since = self.anchor_ts.get(asset, 0)
        mine = sorted((s, pt) for (a, s), pt in self.src_last.items() if a == asset)  # sort this asset's only
        return {s: p for s, (p, t) in mine if now - t <= pol.max_staleness_ns and t >= since}
