"""Liquidation sizing, the waterfall's first step: how much of a breached bucket the protocol takes over.

:class:`Liquidator` is the protocol. :class:`CloseAtMark` closes breached positions (largest
maintenance first) until the bucket is back above maintenance; :class:`PartialToTarget`
(``EngineConfig.liquidation="partial"``) closes only what restores a target health above it. Both
settle the account at the mark, charge the penalty to the insurance fund, respect the per-event and
per-account caps, and hand the closed size to the waterfall (:mod:`.core`), which executes it
(batch, auction, impact, backstop) and covers any shortfall (fund, then ADL, then socialised loss).
"""

from __future__ import annotations

from typing import Protocol

from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.engine.ports import SizingHost
from fluidmargin.engine.types import Bucket
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import partial
from fluidmargin.risk.perp import margin


class Liquidator(Protocol):
    """Liquidation sizing: close what a breached bucket needs closed, handing it to the waterfall."""

    def liquidate(self, eng: SizingHost, b: Bucket, out: list[ev.Event]) -> None: ...


class CloseAtMark:
    """Close at mark until the bucket is back above maintenance (or nothing is left)."""

    def __init__(self, max_notional_quote_q: int = 0) -> None:
        self.max_notional_quote_q = max_notional_quote_q  # per position and event; 0: no cap

    def liquidate(self, eng: SizingHost, b: Bucket, out: list[ev.Event]) -> None:
        led = eng.ledger
        if b.pos >= 0:
            self.close(eng, b.pos, out, isolated=True, size=self._capped(eng, b.pos, int(led.pos_size[b.pos])))
            return
        for p in self._cross_positions(eng, b):
            self.close(eng, p, out, isolated=False, size=self._capped(eng, p, int(led.pos_size[p])))
            if eng.cross_risk(b.row).health_quote_q >= 0:
                break
        self.cover_cross_shortfall(eng, b, out)

    def _capped(self, eng: SizingHost, p: int, q: int) -> int:
        """``q`` cut to the per-event cap and to what the account may still have liquidated this window."""
        led = eng.ledger
        m = led.markets[int(led.pos_mkt[p])]
        assert m.mark_q is not None
        if self.max_notional_quote_q:
            q = partial.cap_close(q, self.max_notional_quote_q, m.mark_q, m.spec.size_decimals)
        allowance = eng.wf.account_allowance(int(led.pos_acct[p]))
        if allowance is not None:
            q = partial.cap_close(q, max(allowance, 0), m.mark_q, m.spec.size_decimals, at_least_one=False)
        return q

    @staticmethod
    def _cross_positions(eng: SizingHost, b: Bucket) -> list[int]:
        """The cross bucket's open positions, largest maintenance contribution first, then market index."""
        led = eng.ledger
        by_market = {int(led.pos_mkt[p]): p for p in led.positions_of(b.row) if led.pos_size[p] and not led.pos_iso[p]}
        order = partial.pick_order([(mi, eng.position_risk(p).mm_quote_q) for mi, p in by_market.items()])
        return [by_market[mi] for mi, _mm in order]

    @staticmethod
    def cover_cross_shortfall(eng: SizingHost, b: Bucket, out: list[ev.Event]) -> None:
        """A cross bucket with nothing left to close and negative equity: the fund (or a loss) covers it."""
        led = eng.ledger
        risk = eng.cross_risk(b.row)
        if risk.equity_quote_q < 0 and not eng.has_positions(b):
            eng.wf.settle_shortfall(b, -risk.equity_quote_q, out)
            led.bal[b.row, led.quote_c] += -risk.equity_quote_q

    def close(self, eng: SizingHost, p: int, out: list[ev.Event], isolated: bool, size: int | None = None) -> None:
        """Close ``size`` (signed, as held; all of it by default) of position ``p`` at the mark."""
        led = eng.ledger
        m = led.markets[int(led.pos_mkt[p])]
        assert m.mark_q is not None
        r = int(led.pos_acct[p])
        aid = int(led.acct_id[r])
        eng.settle_funding(p, out)
        if size is None:
            size = int(led.pos_size[p])
        if size == 0:
            return
        notional = margin.value_quote_q(abs(size), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        fee_full = div_round(notional * m.spec.liquidation_fee_ppm, PPM, Rounding.CEIL)
        realized = eng.trade(p, -size, m.mark_q, 0, release_iso=not isolated)
        eng.wf.take_over(p, size, m.mark_q)
        eng.wf.use_allowance(r, notional)
        closed = led.pos_size[p] == 0
        if isolated:
            left = int(led.pos_iso_margin[p]) + (0 if closed else eng.position_risk(p).upnl_quote_q)
            fee = min(fee_full, max(left, 0))
            led.pos_iso_margin[p] -= fee
        else:
            fee = min(fee_full, max(eng.cross_risk(r).equity_quote_q, 0))
            led.bal[r, led.quote_c] -= fee
        out.append(ev.PositionLiquidated(led.now_ns, aid, m.spec.symbol, size, m.mark_q, realized, fee))
        eng.wf.fund_fee(fee, aid, out, m.i)
        if isolated and closed:
            left = int(led.pos_iso_margin[p])
            if left < 0:
                eng.wf.settle_shortfall(led.bucket_of(p), -left, out)
                left = 0
            led.pos_iso_margin[p] = 0
            led.bal[r, led.quote_c] += left


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

    def reached(self, eng: SizingHost, b: Bucket) -> bool:
        risk = eng.bucket_risk(b)
        return risk.equity_quote_q * PPM >= (PPM + self.target_ppm) * risk.mm_quote_q

    def liquidate(self, eng: SizingHost, b: Bucket, out: list[ev.Event]) -> None:
        ps = [b.pos] if b.pos >= 0 else self._cross_positions(eng, b)
        for p in ps:
            q = self._capped(eng, p, self._size_for_target(eng, b, p))
            self.close(eng, p, out, isolated=b.pos >= 0, size=q)
            if self.reached(eng, b):
                break
        if b.pos < 0:
            self.cover_cross_shortfall(eng, b, out)

    def _size_for_target(self, eng: SizingHost, b: Bucket, p: int) -> int:
        led = eng.ledger
        m = led.markets[int(led.pos_mkt[p])]
        assert m.mark_q is not None
        size = int(led.pos_size[p])
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

    def _dry_run_reaches(self, eng: SizingHost, b: Bucket, p: int, q: int) -> bool:
        with eng.ledger.savepoint(b.row):  # with the funds, the tick's orders and the account's cap use
            self.close(eng, p, [], isolated=b.pos >= 0, size=q)
            return self.reached(eng, b)
