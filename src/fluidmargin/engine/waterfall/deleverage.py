"""Auto-deleveraging: what an insurance fund cannot cover is recovered from ranked opposite positions.

Owns the ADL queue of a market (exact scores; on a long queue only the best candidates by a float
estimate are scored) and the deleveraging of a bankrupt bucket's largest close of the tick at its
bankruptcy price, each counterparty's fill settled and re-checked.
"""

from __future__ import annotations

import numpy as np

from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, div_round
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.ports import WaterfallHost
from fluidmargin.engine.state import BANKRUPT, LIQUIDATING
from fluidmargin.engine.types import Bucket, MarketRecord
from fluidmargin.engine.waterfall.funds import InsuranceFunds
from fluidmargin.engine.waterfall.lots import Block, Order, hand_over, sign
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import adl
from fluidmargin.risk.perp import margin


class Deleverager:
    """ADL queues and deleveraging over the ledger's positions."""

    def __init__(self, host: WaterfallHost, led: Ledger, insurance: InsuranceFunds) -> None:
        self.host = host
        self.led = led
        self.insurance = insurance

    def deleverage(self, orders: list[Order | Block], b: Bucket, lack_q: int, fund: str, out: list[ev.Event]) -> None:
        """Hand this bucket's largest close of the tick (in ``orders``) to the ADL queue at its bankruptcy price.

        The price is the one at which the close would have left exactly what the fund can cover:
        ``mark ± lack / size``, rounded so the fund gets at least ``lack`` for a full fill.
        """
        host, led = self.host, self.led
        mine = [
            o
            for o in orders
            if isinstance(o, Order) and o.row == b.row and o.size and (b.pos < 0 or o.market == int(led.pos_mkt[b.pos]))
        ]
        mine = [o for o in mine if led.markets[o.market].spec.liquidation.adl]
        if not mine:
            return

        def notional(o: Order) -> int:
            m = led.markets[o.market]
            return margin.value_quote_q(abs(o.size), m.mark_q or 0, m.spec.size_decimals, Rounding.FLOOR)

        o = max(mine, key=lambda o: (notional(o), -o.market))
        m = led.markets[o.market]
        assert m.mark_q is not None
        q = abs(o.size)
        # value(q, d) >= lack: d = ceil(lack * 10^shift / q), shift = size + price - quote decimals
        shift = m.spec.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
        num, den = (lack_q * 10**shift, q) if shift >= 0 else (lack_q, q * 10**-shift)
        d = div_round(num, den, Rounding.CEIL)
        s = sign(o.size)
        price = m.mark_q + d if s > 0 else max(m.mark_q - d, 1)
        queue = self.adl_queue(m, o.size, exclude=b.row, need=q)
        fills, _rest = adl.deleverage(queue, q, price)
        for rank, f in enumerate(fills, 1):
            r = led.row_of[f.account_id]
            p = led.find_pos(r, m.i)
            host.settle_funding(p, out)
            host.trade(p, f.position_delta_base_q, price, 0)
            pnl = hand_over(o, f.reduction_base_q, price, m.spec.size_decimals)
            out.append(
                ev.AutoDeleveraged(
                    led.now_ns, f.account_id, m.spec.symbol, f.position_delta_base_q, price, rank, o.account_id, pnl
                )
            )
            self.insurance.fund_pnl(fund, pnl, "adl", f.account_id, out)
            host.resync(r)
            host.recheck(led.buckets_of(r))

    def adl_queue(
        self, m: MarketRecord, bankrupt_size: int, exclude: int = -1, need: int | None = None
    ) -> tuple[adl.RankedPosition, ...]:
        """The ADL queue of market ``m`` against a bankrupt position of sign ``bankrupt_size``.

        With ``need`` (the size to deleverage) and a long queue, only the best candidates by a float
        estimate of the score, enough to hold eight times ``need`` (and 256 more), are scored exactly
        and ranked. The estimate is computed from the exact state alone (the position's PnL on the
        quote balance, or on its isolated margin), so it is the same whatever screen the engine runs;
        the order and every fill come from exact figures. Without ``need``, every candidate is ranked.
        """
        host, led = self.host, self.led
        col = m.column()
        sizes = led.pos_size[col]
        rows = led.pos_acct[col]
        iso = led.pos_iso[col] == 1
        st = np.where(iso, led.pos_status[col], led.status[rows])
        keep = (np.sign(sizes) == -sign(bankrupt_size)) & (rows != exclude) & (st != LIQUIDATING) & (st != BANKRUPT)
        col = col[keep]
        if need is not None and len(col) > 256:
            size_f = led.pos_size[col].astype(np.float64)
            value = size_f * float(m.mark_q or 0) * m.kv
            owed = size_f * (m.fidx - led.pos_fidx[col]).astype(np.float64) * m.kf
            upnl = value - led.pos_cost[col].astype(np.float64) - owed
            base = np.where(
                led.pos_iso[col] == 1, led.pos_iso_margin[col], led.bal[led.pos_acct[col], led.quote_c]
            ).astype(np.float64)
            entry = np.maximum(np.abs(led.pos_cost[col].astype(np.float64)), 1.0)
            pct = upnl / entry
            lev = np.abs(value) / np.maximum(base + upnl, 1.0)
            score = np.where(pct > 0, pct * lev, pct / np.maximum(lev, 1e-300))
            order = np.lexsort((col, -score))
            cum = np.cumsum(np.abs(led.pos_size[col[order]]))
            k = int(np.searchsorted(cum, 8 * need)) + 256
            col = np.sort(col[order[:k]])
        cands = []
        for p in col.tolist():
            r = int(led.pos_acct[p])
            risk = host.bucket_risk(led.bucket_of(p))
            if risk.equity_quote_q <= 0 or m.mark_q is None:
                continue
            size = int(led.pos_size[p])
            entry_q = abs(int(led.pos_cost[p]))
            mark_n = margin.value_quote_q(abs(size), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
            if entry_q <= 0 or mark_n <= 0:
                continue
            upnl = host.position_risk(p).upnl_quote_q
            cands.append(adl.AdlCandidate(int(led.acct_id[r]), size, upnl, entry_q, mark_n, risk.equity_quote_q))
        return adl.adl_queue(cands, bankrupt_size)
