"""Funding: each market's funding index accrued over event time, and what a position owes against it.

Owns the index arithmetic (accrual with carry, so small steps lose nothing), the check that a clock
jump would not overflow an index, and the settlement of a position's funding into its account (or
its isolated margin) against the clearing counterparty.
"""

from __future__ import annotations

from fluidmargin.core.errors import InvariantViolation
from fluidmargin.core.units import MAX_QUANTUMS
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.types import MarketRecord
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import funding as fnd


class Funding:
    """Funding indices and settlement over the ledger's positions."""

    def __init__(self, led: Ledger) -> None:
        self.led = led

    def time_overflow(self, ts: int) -> str:
        """Why moving the clock to ``ts`` would overflow a funding index (empty if it would not)."""
        for m in self.led.markets:
            if abs(self.fidx_at(m, ts)) > MAX_QUANTUMS // 4:
                return f"time jump to {ts} would overflow the funding index of {m.spec.symbol}"
        return ""

    def fidx_now(self, m: MarketRecord) -> int:
        """The market's funding index accrued to now, without storing it."""
        return self.fidx_at(m, self.led.now_ns)

    @staticmethod
    def fidx_at(m: MarketRecord, ts: int) -> int:
        """The funding index accrued to ``ts``, without storing it (accrual with carry is exact)."""
        if m.fidx_ts_ns is None or m.mark_q is None or ts <= m.fidx_ts_ns:
            return m.fidx
        dt = ts - m.fidx_ts_ns
        inc, _ = fnd.accrue_fidx_carry(m.rate_e9, m.mark_q, dt, m.spec.funding.interval_s, m.fidx_rem)
        return m.fidx + inc

    def accrue(self, m: MarketRecord) -> None:
        """Accrue the market's funding index to now at the current rate and mark."""
        now = self.led.now_ns
        if m.fidx_ts_ns is not None and m.mark_q is not None and now > m.fidx_ts_ns:
            inc, m.fidx_rem = fnd.accrue_fidx_carry(
                m.rate_e9, m.mark_q, now - m.fidx_ts_ns, m.spec.funding.interval_s, m.fidx_rem
            )
            if abs(m.fidx + inc) > MAX_QUANTUMS:
                raise InvariantViolation(f"funding index of {m.spec.symbol} would overflow")
            m.fidx += inc
        m.fidx_ts_ns = now

    def owed(self, p: int) -> int:
        """Funding position ``p`` owes (quote quantums, + owed) since it last settled."""
        led = self.led
        m = led.markets[int(led.pos_mkt[p])]
        return fnd.funding_owed_quote_q(int(led.pos_size[p]), m.fidx, int(led.pos_fidx[p]), m.spec.size_decimals)

    def settle(self, p: int, out: list[ev.Event], emit: bool = True) -> None:
        """Settle what position ``p`` owes into its account (or isolated margin); the clearing takes it."""
        led = self.led
        m = led.markets[int(led.pos_mkt[p])]
        owed = self.owed(p)
        led.pos_fidx[p] = m.fidx
        if owed == 0:
            return
        r = int(led.pos_acct[p])
        if led.pos_iso[p]:
            led.pos_iso_margin[p] -= owed
        else:
            led.bal[r, led.quote_c] -= owed
        led.clearing_q += owed
        if emit:
            out.append(ev.FundingSettled(led.now_ns, int(led.acct_id[r]), m.spec.symbol, -owed))
