"""Liquidation sizing: how much of a breached bucket the protocol takes over, and in what order.

:class:`Liquidator` is the protocol. :class:`CloseAtMark` closes breached positions (largest
maintenance first) until the bucket is back above maintenance; :class:`PartialToTarget`
(``EngineConfig.liquidation="partial"``) closes only what restores a target health above it. Both
settle the account at the mark, charge the penalty to the insurance fund, respect the per-event and
per-account caps, and hand the closed size to :mod:`fluidmargin.engine.waterfall`, which executes it
(batch, auction, impact, backstop) and covers any shortfall (fund, then ADL, then socialised loss).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import partial
from fluidmargin.risk.perp import margin

if TYPE_CHECKING:
    from fluidmargin.engine.engine import Bucket, Engine


class Liquidator(Protocol):
    def liquidate(self, eng: Engine, b: Bucket, out: list[ev.Event]) -> None: ...


class CloseAtMark:
    """Close at mark until the bucket is back above maintenance (or nothing is left)."""

    def __init__(self, max_notional_quote_q: int = 0) -> None:
        self.max_notional_quote_q = max_notional_quote_q  # per position and event; 0: no cap

    def liquidate(self, eng: Engine, b: Bucket, out: list[ev.Event]) -> None:
        if b.pos >= 0:
            self._close(eng, b.pos, out, isolated=True, size=self._capped(eng, b.pos, int(eng.pos_size[b.pos])))
            return
        for p in self._cross_positions(eng, b):
            self._close(eng, p, out, isolated=False, size=self._capped(eng, p, int(eng.pos_size[p])))
            if eng.cross_risk(b.row).health_quote_q >= 0:
                break
        self._cover_cross_shortfall(eng, b, out)

    def _capped(self, eng: Engine, p: int, q: int) -> int:
        """``q`` cut to the per-event cap and to what the account may still have liquidated this window."""
        m = eng.markets[int(eng.pos_mkt[p])]
        assert m.mark_q is not None
        if self.max_notional_quote_q:
            q = partial.cap_close(q, self.max_notional_quote_q, m.mark_q, m.spec.size_decimals)
        allowance = eng.wf.account_allowance(int(eng.pos_acct[p]))
        if allowance is not None:
            q = partial.cap_close(q, max(allowance, 0), m.mark_q, m.spec.size_decimals, at_least_one=False)
        return q

    @staticmethod
    def _cross_positions(eng: Engine, b: Bucket) -> list[int]:
        """The cross bucket's open positions, largest maintenance contribution first, then market index."""
        by_market = {int(eng.pos_mkt[p]): p for p in eng.positions_of(b.row) if eng.pos_size[p] and not eng.pos_iso[p]}
        order = partial.pick_order([(mi, eng.position_risk(p).mm_quote_q) for mi, p in by_market.items()])
        return [by_market[mi] for mi, _mm in order]

    @staticmethod
    def _cover_cross_shortfall(eng: Engine, b: Bucket, out: list[ev.Event]) -> None:
        """A cross bucket with nothing left to close and negative equity: the fund (or a loss) covers it."""
        risk = eng.cross_risk(b.row)
        if risk.equity_quote_q < 0 and not eng._has_positions(b):
            eng.wf.settle_shortfall(b, -risk.equity_quote_q, out)
            eng.bal[b.row, eng.quote_c] += -risk.equity_quote_q

    def _close(self, eng: Engine, p: int, out: list[ev.Event], isolated: bool, size: int | None = None) -> None:
        """Close ``size`` (signed, as held; all of it by default) of position ``p`` at the mark."""
        m = eng.markets[int(eng.pos_mkt[p])]
        assert m.mark_q is not None
        r = int(eng.pos_acct[p])
        aid = int(eng.acct_id[r])
        eng._settle_funding(p, out)
        if size is None:
            size = int(eng.pos_size[p])
        if size == 0:
            return
        notional = margin.value_quote_q(abs(size), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        fee_full = div_round(notional * m.spec.liquidation_fee_ppm, PPM, Rounding.CEIL)
        realized = eng._trade(p, -size, m.mark_q, 0, release_iso=not isolated)
        eng.wf.take_over(p, size, m.mark_q)
        eng.wf.use_allowance(r, notional)
        closed = eng.pos_size[p] == 0
        if isolated:
            left = int(eng.pos_iso_margin[p]) + (0 if closed else eng.position_risk(p).upnl_quote_q)
            fee = min(fee_full, max(left, 0))
            eng.pos_iso_margin[p] -= fee
        else:
            fee = min(fee_full, max(eng.cross_risk(r).equity_quote_q, 0))
            eng.bal[r, eng.quote_c] -= fee
        out.append(ev.PositionLiquidated(eng.now_ns, aid, m.spec.symbol, size, m.mark_q, realized, fee))
        eng.fund_fee(fee, aid, out, m.i)
        if isolated and closed:
            left = int(eng.pos_iso_margin[p])
            if left < 0:
                eng.wf.settle_shortfall(eng._bucket_of(p), -left, out)
                left = 0
            eng.pos_iso_margin[p] = 0
            eng.bal[r, eng.quote_c] += left


class PartialToTarget(CloseAtMark):
    """Close only what brings the bucket back to a target health above maintenance.

    The bucket must end with equity >= (1 + target) x maintenance, so that it does not flap straight
    back into liquidation. Positions are reduced largest maintenance first; each by the smallest size
    that reaches the target (:func:`fluidmargin.risk.liquidation.partial.close_size_to_target`), confirmed on the
    engine's own exact figures (its rounding of the closed part's cash can cost a quantum more, in
    which case one more quantum is closed), or all of it when that cannot reach the target.
    """

    def __init__(self, target_ppm: int, max_notional_quote_q: int = 0) -> None:
        super().__init__(max_notional_quote_q)
        self.target_ppm = target_ppm

    def reached(self, eng: Engine, b: Bucket) -> bool:
        risk = eng.bucket_risk(b)
        return risk.equity_quote_q * PPM >= (PPM + self.target_ppm) * risk.mm_quote_q

    def liquidate(self, eng: Engine, b: Bucket, out: list[ev.Event]) -> None:
        ps = [b.pos] if b.pos >= 0 else self._cross_positions(eng, b)
        for p in ps:
            q = self._capped(eng, p, self._size_for_target(eng, b, p))
            self._close(eng, p, out, isolated=b.pos >= 0, size=q)
            if self.reached(eng, b):
                break
        if b.pos < 0:
            self._cover_cross_shortfall(eng, b, out)

    def _size_for_target(self, eng: Engine, b: Bucket, p: int) -> int:
        m = eng.markets[int(eng.pos_mkt[p])]
        assert m.mark_q is not None
        size = int(eng.pos_size[p])
        risk = eng.bucket_risk(b)
        pr = eng.position_risk(p)
        q = partial.close_size_to_target(
            m.spec.margin,
            size,
            m.spec.size_decimals,
            m.mark_q,
            risk.equity_quote_q - pr.value_quote_q,
            risk.mm_quote_q - pr.mm_quote_q,
            self.target_ppm,
            m.spec.liquidation_fee_ppm,
        )
        # confirm on the engine's exact figures (dry runs, state restored), a quantum more at a time
        sign = 1 if size > 0 else -1
        for _ in range(8):
            if q == size or self._dry_run_reaches(eng, b, p, q):
                return q
            q += sign
        return size

    def _dry_run_reaches(self, eng: Engine, b: Bucket, p: int, q: int) -> bool:
        saved = eng._save_account(b.row)  # with the funds, the tick's orders and the account's cap use
        scratch: list[ev.Event] = []
        self._close(eng, p, scratch, isolated=b.pos >= 0, size=q)
        ok = self.reached(eng, b)
        eng._restore_account(b.row, saved)
        return ok
