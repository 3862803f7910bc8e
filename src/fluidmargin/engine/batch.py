"""Batched exact confirmation and closes: many simple buckets judged (and liquidated) per kernel call.

Simple buckets are isolated positions and cross buckets of accounts with one linked position and only
the quote asset, on a market whose maintenance is plain brackets. Their exact equity and maintenance
come from one call of :func:`risk.liquidation.mass_close.exact_risk` per market and kind, and their
closes (when there are enough breaches and no caps) from one call of ``mass_close``, with the same
figures as the per-bucket path; whatever the kernels cannot settle goes back to that path.
"""

from __future__ import annotations

import itertools

import numpy as np

from fluidmargin.core.units import FUNDING_SCALE, PPM, PRICE_DECIMALS, QUOTE_DECIMALS, QUOTE_SCALE
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.state import AT_RISK, BANKRUPT, HEALTHY, LIQUIDATING, STATUS_NAMES
from fluidmargin.engine.types import ISO_BUCKET, PORTFOLIO, Breach, Bucket, BucketRisk, MarketRecord
from fluidmargin.engine.waterfall import MAIN_FUND, Block, Liquidator, PartialToTarget, Waterfall
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import mass_close as mc
from fluidmargin.risk.perp import kernels
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.risk.perp.kernels import ACCT_BUDGET_OTHERS, ACCT_NPOS, ACCT_STATUS, EMPTY_BAND


class Batch:
    """The batched exact kernels over the ledger; ``simple_pos`` maps the breaches they confirmed to their one
    position (reset by each confirmation pass)."""

    def __init__(self, led: Ledger, oracles: OracleState, screen: Screen, wf: Waterfall) -> None:
        self.led = led
        self.oracles = oracles
        self.screen = screen
        self.wf = wf
        self.simple_pos: dict[Bucket, int] = {}  # buckets the exact kernel confirmed -> their one position

    @staticmethod
    def simple_plain(m: MarketRecord) -> bool:
        """Whether market ``m``'s maintenance is plain brackets (what the exact kernels compute)."""
        mdl = m.spec.margin
        shift = m.spec.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
        return not (m.mark_q is None or shift < 0 or mdl.sqrt_imf_factor_ppm or mdl.close_fee_ppm or mdl.mm_on_entry)

    @staticmethod
    def kernel_scales(m: MarketRecord) -> tuple[np.int64, int, int]:
        """The exact kernels' mark and divisors: value = size x mark / pshift, funding = size x d fidx / fdiv."""
        assert m.mark_q is not None
        sd = m.spec.size_decimals
        return np.int64(m.mark_q), 10 ** (sd + PRICE_DECIMALS - QUOTE_DECIMALS), 10**sd * FUNDING_SCALE // QUOTE_SCALE

    @staticmethod
    def kernel_tables(m: MarketRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mdl = m.spec.margin
        return (
            np.array([b.floor_quote_q for b in mdl.brackets], dtype=np.int64),
            np.array([b.mmr_ppm for b in mdl.brackets], dtype=np.int64),
            np.array([b.cum_quote_q for b in mdl.brackets], dtype=np.int64),
        )

    def confirm_simple(
        self, cands: list[Bucket], breaches: list[Breach], known: dict[Bucket, BucketRisk]
    ) -> list[Bucket]:
        """Exact confirmation of many simple buckets at once: isolated positions, and cross buckets of
        accounts with one linked position and only the quote asset. Their exact equity and
        maintenance come from one kernel call per market and kind. Breaches go straight to
        ``breaches``; the other buckets are returned (with their exact risk in ``known``) for the
        per-bucket pass, which also takes everything not simple.
        """
        led = self.led
        ca = np.fromiter(itertools.chain.from_iterable(cands), dtype=np.int64, count=2 * len(cands)).reshape(-1, 2)
        rows = ca[ca[:, 1] < 0, 0]
        p = led.first_pos[rows]
        others = [c for c in range(len(led.coll)) if c != led.quote_c]
        q = np.maximum(p, 0)
        simple = (p >= 0) & (led.pos_next[q] == -1) & (led.pos_iso[q] == 0) & (led.acct_mode[rows] != PORTFOLIO)
        if others and len(rows):
            simple &= ~led.bal[rows][:, others].any(axis=1)
        iso_p = ca[ca[:, 1] >= 0, 1]
        iso_p = iso_p[led.pos_size[iso_p] != 0]
        kinds = ((False, rows[simple], p[simple]), (True, led.pos_acct[iso_p], iso_p))
        done: set[Bucket] = set()
        for m in led.markets:
            if not self.simple_plain(m):
                continue
            assert m.mark_q is not None
            blocked = bool(self.oracles.blocked([m.spec.base_asset], orc.Action.LIQUIDATE))
            for iso, krows, kpos in kinds:
                sel = np.flatnonzero(led.pos_mkt[kpos] == m.i)
                if not len(sel):
                    continue
                rs, ps = krows[sel], kpos[sel]
                res = np.zeros((len(sel), mc.RISK_WIDTH), dtype=np.int64)
                mc.exact_risk(
                    led.pos_size[ps],
                    led.pos_cost[ps],
                    led.pos_iso_margin[ps] if iso else led.bal[rs, led.quote_c],
                    m.fidx - led.pos_fidx[ps],
                    *self.kernel_scales(m),
                    *self.kernel_tables(m),
                    res,
                )
                ok = res[:, mc.RISK_OK] == 1
                h = res[:, mc.RISK_EQUITY] - res[:, mc.RISK_MM]
                br = ok & (h < 0) & (led.pos_size[ps] != 0) & (not blocked)
                bs = [
                    Bucket(r, pp) if iso else Bucket(r) for r, pp in zip(rs[br].tolist(), ps[br].tolist(), strict=True)
                ]
                breaches.extend(
                    zip(h[br].tolist(), (-res[br, mc.RISK_MM]).tolist(), led.acct_id[rs[br]].tolist(), bs, strict=True)
                )
                self.simple_pos.update(zip(bs, ps[br].tolist(), strict=True))
                done.update(bs)
                rest = ok & ~br
                for r, pp, eq, mm in zip(
                    rs[rest].tolist(),
                    ps[rest].tolist(),
                    res[rest, mc.RISK_EQUITY].tolist(),
                    res[rest, mc.RISK_MM].tolist(),
                    strict=True,
                ):
                    known[Bucket(r, pp) if iso else Bucket(r)] = BucketRisk(eq, mm)
        return [b for b in cands if b not in done] if done else cands

    def mass_close(self, breaches: list[Breach], out: list[ev.Event], liquidator: Liquidator) -> list[Breach]:
        """Close the simple breaches of a market in one exact kernel call; return the rest, in order.

        Simple: see :meth:`confirm_simple`; on a plain bracket model, with no liquidation caps. Same
        figures as the per-bucket path (see risk.mass_close); what the kernel cannot settle, or a
        bucket that would end with a shortfall, stays with the per-bucket path, which runs after.
        """
        led = self.led
        cfg = led.cfg
        if cfg.liquidation_max_notional_quote_q or cfg.liquidation_max_account_notional_quote_q:
            return breaches
        sp = self.simple_pos
        n = len(breaches)
        h = np.fromiter((t[0] for t in breaches), dtype=np.int64, count=n)
        aid = np.fromiter((t[2] for t in breaches), dtype=np.int64, count=n)
        row = np.fromiter((t[3].row for t in breaches), dtype=np.int64, count=n)
        pos = np.fromiter((t[3].pos for t in breaches), dtype=np.int64, count=n)
        p = np.fromiter((sp.get(t[3], -1) for t in breaches), dtype=np.int64, count=n)
        q = np.maximum(p, 0)
        st = np.where(pos >= 0, led.pos_status[q], led.status[row])
        ok = (p >= 0) & (st != LIQUIDATING)
        if cfg.backstop is not None:
            ok &= aid != cfg.backstop.account_id
        mk = led.pos_mkt[q]
        done = np.zeros(n, dtype=bool)
        for m in led.markets:
            if not self.simple_plain(m):
                continue
            for iso in (False, True):
                sel = np.flatnonzero(ok & (mk == m.i) & ((pos >= 0) == iso))
                if len(sel):
                    handled = self._close_market(m, iso, sel, row[sel], p[sel], h[sel], out, liquidator)
                    done[sel[handled]] = True
        if not done.any():
            return breaches
        return [t for t, d in zip(breaches, done.tolist(), strict=True) if not d]

    def _close_market(
        self,
        m: MarketRecord,
        iso: bool,
        idx: np.ndarray,
        rows: np.ndarray,
        ps: np.ndarray,
        hb: np.ndarray,
        out: list[ev.Event],
        liquidator: Liquidator,
    ) -> np.ndarray:
        """Run the close kernel over one market's simple breaches (cross or isolated); returns the
        positions in ``idx`` it settled."""
        led, wf = self.led, self.wf
        quote_c = led.quote_c
        assert m.mark_q is not None
        res = np.zeros((len(idx), mc.CLOSE_WIDTH), dtype=np.int64)
        partial = isinstance(liquidator, PartialToTarget)
        mc.mass_close(
            led.pos_size[ps],
            led.pos_cost[ps],
            led.pos_iso_margin[ps] if iso else led.bal[rows, quote_c],
            m.fidx - led.pos_fidx[ps],
            *self.kernel_scales(m),
            m.spec.liquidation_fee_ppm,
            *self.kernel_tables(m),
            partial,
            liquidator.target_ppm if isinstance(liquidator, PartialToTarget) else 0,
            res,
        )
        ok = res[:, mc.CLOSE_STATUS] == mc.ACCEPTED
        # shortfalls the fund covers whatever the order are settled here; otherwise ADL may be needed
        fund = wf.fund_of_market(m.i) if iso else MAIN_FUND
        sf = np.where(ok, np.maximum(-res[:, mc.CLOSE_EQUITY], 0), 0)
        if int(sf.sum()) > max(wf.funds[fund], 0):
            ok &= sf == 0
        if not ok.any():
            return np.zeros(0, dtype=np.int64)
        rows, ps, hb, res, sf = rows[ok], ps[ok], hb[ok], res[ok], sf[ok]
        size0 = led.pos_size[ps].copy()
        sign = np.sign(size0)
        q, owed, realized = res[:, mc.CLOSE_Q], res[:, mc.CLOSE_OWED], res[:, mc.CLOSE_REALIZED]
        cost2, size2, fee = res[:, mc.CLOSE_COST], res[:, mc.CLOSE_SIZE], res[:, mc.CLOSE_FEE]
        eq, mm, cash, bal_after = (
            res[:, mc.CLOSE_EQUITY],
            res[:, mc.CLOSE_MM],
            res[:, mc.CLOSE_CASH],
            res[:, mc.CLOSE_BAL],
        )
        closed = size2 == 0
        # exact state: funding settled, the close, the penalty
        led.pos_fidx[ps] = m.fidx
        led.pos_size[ps] = size2
        led.pos_cost[ps] = cost2
        m.long_oi_base_q += int(np.clip(size2, 0, None).sum()) - int(np.clip(size0, 0, None).sum())
        led.clearing_q += int(owed.sum()) - int(realized.sum())
        # restored, but still inside the at-risk band (health < buffer x maintenance): at risk
        buf = led.cfg.at_risk_buffer_ppm
        inside = np.array([(e_ - m_) * PPM < buf * m_ for e_, m_ in zip(eq.tolist(), mm.tolist(), strict=True)])
        if iso:
            old = led.pos_status[ps].copy()
            # restored (or at risk), or closed: the bucket is gone
            new = np.where(closed | ~inside, int(HEALTHY), int(AT_RISK)).astype(np.int8)
            health = np.where(closed, 0, eq - mm)
            released = np.where(closed, bal_after + sf, 0)  # a closed position's margin returns to the account
            led.pos_iso_margin[ps] = np.where(closed, 0, bal_after)
            led.pos_status[ps] = new
            np.add.at(led.bal[:, quote_c], rows, released)
            rel_f = np.zeros(led.n_acc, dtype=np.float64)
            np.add.at(rel_f, rows, released.astype(np.float64))
            touched = np.unique(rows)
            led.acct_h[touched] += rel_f[touched]
            led.coll_f[touched, quote_c] += rel_f[touched]
            led.acct_err[touched] += kernels.U * (np.abs(led.acct_h[touched]) + np.abs(rel_f[touched])) * 4
        else:
            old = led.status[rows].copy()
            new = np.where(eq > 0, np.where(inside, int(AT_RISK), int(HEALTHY)), int(BANKRUPT)).astype(np.int8)
            health = np.maximum(eq, 0) - mm
            bal_after = bal_after + sf  # a shortfall is put back: the account ends at zero
            led.bal[rows, quote_c] = bal_after
            led.status[rows] = new
            # float shadow: as for seeded accounts, the balance now and the positions' contributions next
            bal_f = bal_after.astype(np.float64)
            led.acct_h[rows] = bal_f
            led.coll_f[rows, quote_c] = bal_f
            led.acct_mm[rows] = 0.0
            led.acct_err[rows] = kernels.U * np.abs(bal_f) * 4
            led.acct_f[rows, ACCT_STATUS] = new
            led.acct_f[rows, ACCT_BUDGET_OTHERS] = 0.0
            led.acct_f[rows, ACCT_NPOS] = (~closed).astype(np.float64)
        aids = led.acct_id[rows].tolist()
        wf.orders.append(Block(m.i, led.acct_id[rows], sign * q, cash))
        led.pos_c[ps] = led.pos_e[ps] = led.pos_mm[ps] = led.pos_budget[ps] = 0.0
        led.pos_band[ps] = EMPTY_BAND
        self.screen.screen(np.sort(ps[~closed]), m)
        out.append(
            ev.PositionsLiquidated(
                led.now_ns,
                m.spec.symbol,
                ISO_BUCKET + m.spec.symbol if iso else "cross",
                m.mark_q,
                aids,
                [STATUS_NAMES[int(x)] for x in old.tolist()],
                hb.tolist(),
                (-owed).tolist(),
                (sign * q).tolist(),
                realized.tolist(),
                fee.tolist(),
                sf.tolist(),
                [STATUS_NAMES[int(x)] for x in new.tolist()],
                health.tolist(),
            )
        )
        wf.fund_in(wf.fund_of_market(m.i), int(fee.sum()), "liquidation_fee", -1, out)
        if sf.any():
            wf.fund_out(fund, int(sf.sum()), "shortfall", -1, out)
        return np.flatnonzero(ok)
