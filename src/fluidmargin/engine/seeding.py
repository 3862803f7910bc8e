"""Seeding: many accounts and positions opened at once (``AccountsSeeded``), as one vectorised input.

Owns the validation of the columns, their write into the ledger (positions market-major, so each
market's column is a contiguous run), the float shadow of the new accounts, the exact initial-margin
check where the float one is not clear-cut, and the rollback of the whole input when one account fails it.
"""

from __future__ import annotations

import numpy as np

from fluidmargin.core.units import MAX_QUANTUMS, PPM, Rounding
from fluidmargin.engine.book import Book
from fluidmargin.engine.confirm import Confirm
from fluidmargin.engine.funding import Funding
from fluidmargin.engine.ledger import EXACT_POS, Ledger
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.types import Bucket
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import kernels, margin
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.risk.perp.kernels import ACCT_BUDGET_OTHERS, ACCT_NPOS, ACCT_STATUS, EMPTY_BAND


class Seeding:
    """The ``AccountsSeeded`` input."""

    def __init__(
        self, led: Ledger, oracles: OracleState, funding: Funding, book: Book, screen: Screen, confirm: Confirm
    ) -> None:
        self.led = led
        self.oracles = oracles
        self.funding = funding
        self.book = book
        self.screen = screen
        self.confirm = confirm

    def on_accounts_seeded(self, e: ev.AccountsSeeded, out: list[ev.Event]) -> str:
        """Vectorised account opening: exact int64 columns, float screen, exact confirmation."""
        led = self.led
        ids = e.account_ids
        k = len(ids)
        npos = len(e.pos_account)
        if len(e.deposits_quote_q) != k:
            return "account_ids and deposits_quote_q differ in length"
        cols = (
            e.pos_market,
            e.pos_size_base_q,
            e.pos_price_q,
            e.pos_isolated,
            e.pos_iso_margin_quote_q,
            e.pos_leverage,
        )
        if any(len(c) != npos for c in cols):
            return "position columns differ in length"
        try:
            aid = np.array(ids, dtype=np.int64)
            dep = np.array(e.deposits_quote_q, dtype=np.int64)
            pa = np.array(e.pos_account, dtype=np.int64)
            size = np.array(e.pos_size_base_q, dtype=np.int64)
            price = np.array(e.pos_price_q, dtype=np.int64)
            iso = np.array(e.pos_isolated, dtype=np.int8)
            isom = np.array(e.pos_iso_margin_quote_q, dtype=np.int64)
            lev = np.array(e.pos_leverage, dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
            return "columns must hold integers within 64 bits (would overflow)"
        if k and (
            aid.min() < 0
            or len(np.unique(aid)) != k
            or any(int(a) in led.row_of or led.is_vault(int(a)) for a in aid.tolist())
        ):
            return "account ids must be new, unique, non-negative and not reserved"
        lim = MAX_QUANTUMS // 4
        if k and (dep.min() <= 0 or dep.max() > lim):
            return "deposits must be positive and within bounds"
        midx = np.empty(npos, dtype=np.int64)
        for name, mi in {s_: led.market_idx.get(s_) for s_ in set(e.pos_market)}.items():
            if mi is None:
                return f"unknown market {name!r}"
            if mi.mark_q is None:
                return f"market {name} has no valid mark price yet"
        for j, name in enumerate(e.pos_market):
            midx[j] = led.market_idx[name].i
        if npos:
            if pa.min() < 0 or pa.max() >= k or np.any(np.diff(pa) < 0):
                return "pos_account must index account_ids and be sorted"
            if np.any(size == 0) or np.abs(size).max() > lim or price.min() <= 0 or price.max() > lim:
                return "sizes must be non-zero and prices positive, within bounds"
            if not np.isin(iso, (0, 1)).all() or isom.min() < 0 or np.any((iso == 0) & (isom != 0)):
                return "pos_isolated must be 0/1 and only isolated positions carry margin"
            if lev.min() < 1:
                return "leverage must be at least 1"
            if len(np.unique(pa * len(led.markets) + midx)) != npos:
                return "at most one position per account and market"
            per_acct_iso = np.bincount(pa, weights=isom.astype(np.float64), minlength=k)
            if np.any(per_acct_iso > dep.astype(np.float64)):
                return "isolated margin exceeds the account's deposit"
        for m in led.markets:
            sel = midx == m.i
            if sel.any() and lev[sel].max() > m.spec.margin.brackets[0].max_leverage:
                return f"leverage above the maximum of {m.spec.symbol}"
        # blocked oracles forbid opening risk
        blocked = self.oracles.blocked(
            sorted({led.markets[i].spec.base_asset for i in set(midx.tolist())}), orc.Action.OPEN
        )
        if blocked:
            return blocked
        # cost: a buyer pays ceil(size * price), a seller receives floor (exact Python ints)
        costs = []
        for sz, pr, mk in zip(size.tolist(), price.tolist(), midx.tolist(), strict=True):
            sd = led.markets[mk].spec.size_decimals
            costs.append(
                margin.value_quote_q(sz, pr, sd, Rounding.CEIL)
                if sz > 0
                else -margin.value_quote_q(-sz, pr, sd, Rounding.FLOOR)
            )
        if costs and max(-min(costs), max(costs)) > lim:
            return "a position's value would overflow"
        # --- write (rolled back below if the exact initial-margin check fails) ---
        r0, p0 = led.n_acc, led.n_pos
        while len(led.acct_id) < r0 + k:
            led.grow_accounts()
        while len(led.pos_acct) < p0 + npos:
            led.grow_positions()
        rows = np.arange(r0, r0 + k, dtype=np.int64)
        led.acct_id[r0 : r0 + k] = aid
        iso_sum = np.zeros(k, dtype=np.int64)
        np.add.at(iso_sum, pa, isom)
        led.bal[r0 : r0 + k, led.quote_c] = dep - iso_sum
        led.n_acc += k
        led.row_of.update(zip(aid.tolist(), rows.tolist(), strict=True))

        # physical slots market-major (then by account): each market's column is a contiguous run,
        # so the screen streams through memory; accounts find their positions by the linked list
        gp = np.empty(npos, dtype=np.int64)
        gp[np.argsort(midx, kind="stable")] = np.arange(p0, p0 + npos, dtype=np.int64)
        led.pos_acct[gp] = rows[pa]
        led.pos_mkt[gp] = midx
        led.pos_size[gp] = size
        led.pos_cost[gp] = np.array(costs, dtype=np.int64)
        led.pos_iso[gp] = iso
        led.pos_iso_margin[gp] = isom
        led.pos_lev[gp] = lev
        led.pos_status[gp] = 0
        fidx_now = np.array([m.fidx for m in led.markets], dtype=np.int64)
        led.pos_fidx[gp] = fidx_now[midx]
        nxt = np.full(npos, -1, dtype=np.int64)
        if npos > 1:
            same = pa[1:] == pa[:-1]
            nxt[:-1][same] = gp[1:][same]
        led.pos_next[gp] = nxt
        if npos:
            starts = np.flatnonzero(np.r_[True, pa[1:] != pa[:-1]])
            led.first_pos[rows[pa[starts]]] = gp[starts]
        led.n_pos += npos
        for m in led.markets:
            sel = midx == m.i
            if sel.any():
                m.pending.extend(np.sort(gp[sel]).tolist())
                m.long_oi_base_q += int(np.clip(size[sel], 0, None).sum())
        led.deposits[led.quote_c] += int(dep.sum())
        # float shadow for the new accounts, then the exact initial-margin check where it is not clear-cut
        led.acct_h[r0 : r0 + k] = led.bal[r0 : r0 + k, led.quote_c].astype(np.float64)
        led.coll_f[r0 : r0 + k, led.quote_c] = led.acct_h[r0 : r0 + k]
        led.acct_mm[r0 : r0 + k] = 0.0
        led.acct_err[r0 : r0 + k] = kernels.U * np.abs(led.acct_h[r0 : r0 + k]) * 4
        led.acct_f[r0 : r0 + k, ACCT_STATUS] = 0.0
        led.acct_f[r0 : r0 + k, ACCT_BUDGET_OTHERS] = 0.0
        led.acct_f[r0 : r0 + k, ACCT_NPOS] = np.bincount(pa[iso == 0], minlength=k) if npos else 0.0
        led.pos_c[gp] = led.pos_e[gp] = led.pos_mm[gp] = led.pos_budget[gp] = 0.0
        led.pos_band[gp] = EMPTY_BAND
        flagged: list[Bucket] = []
        im_f = np.zeros(k, dtype=np.float64)
        exact_rows: set[int] = set()
        for m in led.markets:
            sel = np.flatnonzero(midx == m.i)
            if not len(sel):
                continue
            idx = gp[sel]  # ascending: slots were given market-major in input order
            flagged.extend(self.screen.screen(idx, m))
            mdl = m.spec.margin
            if mdl.sqrt_imf_factor_ppm or mdl.oi_lower_quote_q is not None:
                exact_rows.update(pa[sel].tolist())
                continue
            notional = np.abs(size[sel].astype(np.float64)) * float(m.mark_q or 0) * m.kv
            b = np.searchsorted(m.floors, notional * (1 + 1e-9), side="right") - 1
            max_lev = np.array([br.max_leverage for br in mdl.brackets], dtype=np.float64)[np.clip(b, 0, None)]
            imf = np.maximum(np.maximum(1.0 / lev[sel], 1.0 / max_lev), mdl.imr_floor_ppm / PPM)
            need = notional * imf * (1 + 1e-9) + 4.0
            cross = iso[sel] == 0
            np.add.at(im_f, pa[sel][cross], need[cross])
            isol = ~cross
            if isol.any():
                hi = isom[sel][isol].astype(np.float64) + led.pos_c[idx[isol]] + led.pos_mm[idx[isol]]
                bad = hi - led.pos_e[idx[isol]] < need[isol]
                exact_rows.update(pa[sel][isol][bad].tolist())
        eq_f = led.acct_h[r0 : r0 + k] + led.acct_mm[r0 : r0 + k] - led.acct_err[r0 : r0 + k]
        exact_rows.update(np.flatnonzero(eq_f < im_f).tolist())
        for j in sorted(exact_rows):
            r = r0 + j
            ok = self.book.cross_risk(r).equity_quote_q >= self.book.cross_initial(r) and all(
                self.book.iso_risk(p).equity_quote_q >= self.book.position_initial(p)
                for p in led.positions_of(r)
                if led.pos_iso[p]
            )
            if not ok:
                self._rollback(r0, p0, aid, midx, size, dep)
                return f"account {int(aid[j])} would start below initial margin"
        # accepted: a new position owes funding from now on, not for the time before it existed, so it
        # starts at the index as of now; then the markets materialise funding to now (and re-screen)
        for m in led.markets:
            sel = midx == m.i
            if sel.any():
                led.pos_fidx[gp[sel]] = self.funding.fidx_now(m)
                flagged.extend(self.screen.accrue_pass(m))
        self.confirm.evaluate(flagged, out)
        return ""

    def _rollback(self, r0: int, p0: int, aid: np.ndarray, midx: np.ndarray, size: np.ndarray, dep: np.ndarray) -> None:
        led = self.led
        for a in aid.tolist():
            led.row_of.pop(a, None)
        led.first_pos[r0 : led.n_acc] = -1
        led.bal[r0 : led.n_acc] = 0
        led.acct_id[r0 : led.n_acc] = 0
        for f in EXACT_POS:
            getattr(led, f)[p0 : led.n_pos] = 0
        for m in led.markets:
            m.pending = [p for p in m.pending if p < p0]
            sel = midx == m.i
            m.long_oi_base_q -= int(np.clip(size[sel], 0, None).sum())
        led.deposits[led.quote_c] -= int(dep.sum())
        led.n_acc, led.n_pos = r0, p0
