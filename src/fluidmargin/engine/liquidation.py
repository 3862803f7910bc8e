"""Liquidation execution: the seam where the full waterfall plugs in.

:class:`Liquidator` is the protocol; :class:`CloseAtMark` is the simple execution of the core
issue: close breached positions at the mark price (largest maintenance first), pay a fee to the
insurance fund, and draw any shortfall from the fund (socialising what it cannot cover).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.model import events as ev
from fluidmargin.risk import margin

if TYPE_CHECKING:
    from fluidmargin.engine.engine import Bucket, Engine


class Liquidator(Protocol):
    def liquidate(self, eng: Engine, b: Bucket, out: list[ev.Event]) -> None: ...


class CloseAtMark:
    """Close at mark until the bucket is back above maintenance (or nothing is left)."""

    def liquidate(self, eng: Engine, b: Bucket, out: list[ev.Event]) -> None:
        if b.pos >= 0:
            self._close(eng, b.pos, out, isolated=True)
            return
        ps = [p for p in eng.positions_of(b.row) if eng.pos_size[p] and not eng.pos_iso[p]]
        # deterministic order: largest maintenance contribution first, then market index
        ps.sort(key=lambda p: (-eng.position_risk(p).mm_quote_q, int(eng.pos_mkt[p])))
        for p in ps:
            self._close(eng, p, out, isolated=False)
            if eng.cross_risk(b.row).health_quote_q >= 0:
                break
        risk = eng.cross_risk(b.row)
        if risk.equity_quote_q < 0 and not any(eng.pos_size[p] and not eng.pos_iso[p] for p in eng.positions_of(b.row)):
            shortfall = -risk.equity_quote_q
            eng.bal[b.row, eng.quote_c] += shortfall
            eng.cover_shortfall(shortfall, int(eng.acct_id[b.row]), out)

    def _close(self, eng: Engine, p: int, out: list[ev.Event], isolated: bool) -> None:
        m = eng.markets[int(eng.pos_mkt[p])]
        assert m.mark_q is not None
        r = int(eng.pos_acct[p])
        aid = int(eng.acct_id[r])
        eng._settle_funding(p, out)
        size = int(eng.pos_size[p])
        notional = margin.value_quote_q(abs(size), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        fee_full = div_round(notional * m.spec.liquidation_fee_ppm, PPM, Rounding.CEIL)
        realized = eng._trade(p, -size, m.mark_q, 0, release_iso=not isolated)
        if isolated:
            left = int(eng.pos_iso_margin[p])
            fee = min(fee_full, max(left, 0))
            left -= fee
        else:
            fee = min(fee_full, max(eng.cross_risk(r).equity_quote_q, 0))
            eng.bal[r, eng.quote_c] -= fee
        out.append(ev.PositionLiquidated(eng.now_ns, aid, m.spec.symbol, size, m.mark_q, realized, fee))
        eng.fund_fee(fee, aid, out)
        if isolated:
            if left < 0:
                eng.cover_shortfall(-left, aid, out)
                left = 0
            eng.pos_iso_margin[p] = 0
            eng.bal[r, eng.quote_c] += left
