"""The float screen: which buckets a price, funding or parameter move may have changed.

Owns the float64 shadow's upkeep: the per-market kernel call (:func:`risk.perp.kernels.remargin_market`,
with budgets and bands so most positions are skipped), re-screening collateral, re-synchronising an
account's shadow from its exact state, and the reference twin (``screen="reference"``: a full exact
recompute of every exposed bucket, flagged by the same threshold). The screen never changes exact
state; it only names buckets for :mod:`fluidmargin.engine.confirm` to judge exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fluidmargin.core.units import PPM
from fluidmargin.engine.book import Book
from fluidmargin.engine.funding import Funding
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.state import AT_RISK, HEALTHY, Trigger, transition
from fluidmargin.engine.types import Bucket, BucketRisk, MarketRecord
from fluidmargin.risk.perp import kernels
from fluidmargin.risk.perp.kernels import ACCT_BUDGET_OTHERS, ACCT_NPOS, ACCT_STATUS, EMPTY_BAND


class Screen:
    """The float screen over the ledger's shadow columns."""

    def __init__(self, led: Ledger, book: Book, funding: Funding) -> None:
        self.led = led
        self.book = book
        self.funding = funding

    def kernel_args(self, m: MarketRecord) -> tuple[Any, ...]:
        led = self.led
        return (
            led.pos_acct,
            led.pos_size,
            led.pos_cost,
            led.pos_fidx,
            led.pos_iso,
            led.pos_iso_margin,
            led.pos_c,
            led.pos_e,
            led.pos_mm,
            led.pos_budget,
            led.pos_band,
            m.fidx,
            float(m.mark_q or 0),
            *m.consts(),
        )

    def remargin(self, m: MarketRecord) -> list[Bucket]:
        """Screen every position of market ``m``; return buckets to re-check exactly."""
        col = m.column()
        if self.led.screen == "reference":
            return self.reference_flags(col)
        return self.screen(col, m)

    def screen(self, idx: np.ndarray, m: MarketRecord) -> list[Bucket]:
        """Run the kernel over positions ``idx`` of market ``m`` (ascending); the buckets it flags."""
        led = self.led
        cfg = led.cfg
        flag = np.empty(len(idx), dtype=np.uint8)
        kernels.remargin_market(
            idx,
            *self.kernel_args(m),
            led.acct_f,
            cfg.at_risk_buffer_ppm / PPM,
            cfg.at_risk_exit_ppm / PPM,
            led.pos_status,
            flag,
        )
        out = []
        pos_acct, pos_iso = led.pos_acct, led.pos_iso
        for p in idx[np.flatnonzero(flag)].tolist():
            r = int(pos_acct[p])
            out.append(Bucket(r, p) if pos_iso[p] else Bucket(r))
        return out

    def accrue_pass(self, m: MarketRecord) -> list[Bucket]:
        """Accrue funding to now; if the index moved, re-screen the market (its health moved too)."""
        before = m.fidx
        self.funding.accrue(m)
        return self.remargin(m) if m.fidx != before else []

    def remargin_all(self, m: MarketRecord) -> list[Bucket]:
        """Re-screen every position of ``m`` from scratch (no budget held): after a parameter change."""
        col = m.column()
        self.led.pos_budget[col] = -1.0  # below any move, even none: the kernel re-judges every position
        self.led.pos_band[col] = EMPTY_BAND
        return self.remargin(m)

    # --- the reference twin -------------------------------------------------------------------------

    def reference_flags(self, col: np.ndarray) -> list[Bucket]:
        """The twin: recompute every exposed bucket exactly and flag by the same threshold."""
        led = self.led
        out = []
        seen = set()
        for p in col.tolist():
            if led.pos_size[p] == 0:
                continue
            b = Bucket(int(led.pos_acct[p]), p) if led.pos_iso[p] else Bucket(int(led.pos_acct[p]))
            if b in seen:
                continue
            seen.add(b)
            if self.exact_may_change(b):
                out.append(b)
        return out

    def exact_may_change(self, b: Bucket) -> bool:
        """Reference twin of the kernel's flag: breached, or the exact class differs from the status."""
        risk = self.book.bucket_risk(b)
        if risk.health_quote_q < 0:
            return True
        st = self.led.status_of(b)
        if st not in (HEALTHY, AT_RISK):
            return True
        return transition(st, self.band_trigger(st, risk)) != st

    def band_trigger(self, st: int, risk: BucketRisk) -> Trigger:
        """'at_risk' or 'ok' for a bucket not in breach, with the band: enter below b_in, leave at b_out."""
        h, mm = risk.health_quote_q, risk.mm_quote_q
        cfg = self.led.cfg
        if st == AT_RISK:
            return Trigger.OK if h * PPM >= cfg.at_risk_exit_ppm * mm else Trigger.AT_RISK
        return Trigger.AT_RISK if h * PPM < cfg.at_risk_buffer_ppm * mm else Trigger.OK

    # --- collateral and accounts ----------------------------------------------------------------------

    def remargin_collateral(self, c: int) -> list[Bucket]:
        led = self.led
        rows = np.flatnonzero(led.bal[: led.n_acc, c])
        out = []
        for r in rows.tolist():
            if led.screen == "reference":
                if self.exact_may_change(Bucket(r)):
                    out.append(Bucket(r))
                continue
            self.resync(r)
            if self.float_flag(r):
                out.append(Bucket(r))
        return out

    def float_flag(self, r: int) -> bool:
        led = self.led
        return bool(
            kernels.may_change_py(
                float(led.acct_h[r]),
                float(led.acct_err[r]),
                float(led.acct_mm[r]),
                led.cfg.at_risk_buffer_ppm / PPM,
                led.cfg.at_risk_exit_ppm / PPM,
                int(led.status[r]),
            )
        )

    def resync(self, r: int) -> None:
        """Recompute account ``r``'s float shadow from its exact state (after any non-tick change)."""
        led = self.led
        value = self.book.collateral_value_quote_q
        bal, coll_f = led.bal, led.coll_f
        h = 0.0
        err = 0.0
        for c in range(len(led.coll)):
            v = float(value(c, int(bal[r, c])))
            coll_f[r, c] = v
            h += v
            err += kernels.U * abs(v) * 2
        mm = 0.0
        npos = 0
        ps = led.positions_of(r)
        for p in ps:
            m = led.markets[int(led.pos_mkt[p])]
            led.pos_budget[p] = 0.0  # every position holds no budget until it is next applied
            led.pos_band[p] = EMPTY_BAND  # an empty band: the kernel applies it next time
            if led.pos_size[p] == 0 or m.mark_q is None:
                led.pos_c[p] = led.pos_e[p] = led.pos_mm[p] = 0.0
                continue
            c_, e_, mm_ = kernels.contribution_py(
                int(led.pos_size[p]),
                int(led.pos_cost[p]),
                m.fidx,
                int(led.pos_fidx[p]),
                float(m.mark_q),
                *m.consts(),
            )
            led.pos_c[p], led.pos_e[p], led.pos_mm[p] = c_, e_, mm_
            if not led.pos_iso[p]:
                h += c_
                err += e_
                mm += mm_
                npos += 1
        n = len(ps) + len(led.coll) + 2
        led.acct_h[r] = h
        led.acct_mm[r] = mm
        led.acct_err[r] = err + n * kernels.U * (abs(h) + abs(mm)) * 2
        led.acct_f[r, ACCT_BUDGET_OTHERS] = 0.0
        led.acct_f[r, ACCT_NPOS] = npos

    def rebuild_shadow(self) -> None:
        """Recompute every float shadow from exact state (after a snapshot restore)."""
        led = self.led
        led.acct_f[: led.n_acc, ACCT_STATUS] = led.status[: led.n_acc]
        for r in range(led.n_acc):
            self.resync(r)
