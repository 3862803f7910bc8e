"""The liquidation waterfall after sizing: execution, insurance funds, ADL, the backstop vault.

A liquidated close always settles the account at the mark (its penalty goes to the insurance
fund); the protocol takes the position over as *inventory* and executes it per the market's
:class:`~fluidmargin.model.instruments.LiquidationPolicy`:

- a tick's closes of a market are netted when ``batch`` (the crossed part settles at the mark);
- the rest is executed at the mark (the clearing takes it), against the impact model (slippage
  borne by the fund), or offered in a Dutch auction that bidders fill over event time; a stale
  auction (``tail``/``cusp``) is taken over by the backstop vault within its risk limits, or reset.

Whatever the inventory makes or loses against its cost at the mark is the insurance fund's. A
bankrupt bucket's shortfall is drawn from its fund; what the fund cannot cover is recovered by
auto-deleveraging the ranked opposite positions at the bankruptcy price, and only what is still
left is socialised, as an explicit event. Rounding favours the fund on every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fluidmargin.core.units import NS_PER_S, PPM, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, div_round
from fluidmargin.engine.state import BANKRUPT, LIQUIDATING
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import adl, auction, impact
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc

if TYPE_CHECKING:
    from fluidmargin.engine.engine import Bucket, Engine, _Market

MAIN_FUND = "main"
_PPM_TO_RAY = auction.RAY // PPM


@dataclass(slots=True)
class Order:
    """A liquidation close the protocol took over this tick: signed size (as the account held it)."""

    market: int
    account_id: int
    row: int
    size: int
    cost: int  # the inventory's cost basis: what the account received (+) or paid (-) at the mark


@dataclass(slots=True)
class Block:
    """Many orders of one market at once, as columns (from the mass-liquidation kernel)."""

    market: int
    account_ids: np.ndarray
    sizes: np.ndarray
    costs: np.ndarray


@dataclass(slots=True)
class Auction:
    """A Dutch auction of protocol inventory (``size`` > 0: a long for sale)."""

    auction_id: str
    market: int
    size: int
    cost: int
    ref_q: int
    top_ray: int
    started_ns: int
    accounts: tuple[int, ...]
    incentive_left_q: int  # keeper incentive still to pay, pro rata of the size filled
    fund: str

    def to_list(self) -> list[Any]:
        return [
            self.auction_id,
            self.market,
            self.size,
            self.cost,
            self.ref_q,
            self.top_ray,
            self.started_ns,
            list(self.accounts),
            self.incentive_left_q,
            self.fund,
        ]

    @staticmethod
    def from_list(x: list[Any]) -> Auction:
        return Auction(x[0], x[1], x[2], x[3], x[4], x[5], x[6], tuple(x[7]), x[8], x[9])


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def auction_params(spec: Any) -> auction.AuctionParams:
    return auction.AuctionParams(
        buf_ray=spec.buf_ppm * _PPM_TO_RAY,
        tail_s=spec.tail_s,
        cusp_ray=spec.cusp_ppm * _PPM_TO_RAY,
        chip_ppm=spec.chip_ppm,
        tip_quote_q=spec.tip_quote_q,
        curve=auction.Curve(spec.curve),
        tau_s=spec.tau_s,
        cut_ray=spec.cut_ppm * _PPM_TO_RAY,
        step_s=spec.step_s,
    )


def inventory_pnl(size: int, q: int, price_q: int, released: int, size_decimals: int) -> int:
    """The fund's PnL on handing ``q`` of inventory ``size`` (signed) over at ``price_q``.

    ``released`` is the share of the inventory's cost basis that goes with it. The taker pays the
    ceiling for a long and receives the floor for a short, as any fill in the engine does.
    """
    if size > 0:
        return margin.value_quote_q(q, price_q, size_decimals, Rounding.CEIL) - released
    return -margin.value_quote_q(q, price_q, size_decimals, Rounding.FLOOR) - released


def hand_over(lot: Order | Auction, q: int, price_q: int, size_decimals: int) -> int:
    """Hand ``q`` of a lot of inventory to a taker at ``price_q``; returns the fund's PnL on it.

    The lot shrinks by ``q`` and its cost basis pro rata, rounded in the fund's favour (the last
    part takes exactly what is left).
    """
    released = div_round(lot.cost * q, abs(lot.size), Rounding.FLOOR)
    pnl = inventory_pnl(lot.size, q, price_q, released, size_decimals)
    lot.size -= _sign(lot.size) * q
    lot.cost -= released
    return pnl


class Waterfall:
    """The waterfall's state (funds, tick orders, auctions, vault shares) and its steps."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        cfg = eng.cfg
        self.funds: dict[str, int] = {MAIN_FUND: cfg.insurance_fund_quote_q}
        for m in cfg.markets:
            if m.liquidation.own_fund:
                self.funds[m.symbol] = m.liquidation.own_fund_quote_q
        self.seed_total = sum(self.funds.values())
        self.orders: list[Order | Block] = []  # this tick's, in the order they were taken over
        self.auctions: dict[str, Auction] = {}
        self.n_auctions = 0
        self.shares: dict[int, int] = {}
        self.total_shares = 0
        self.pending: dict[int, tuple[int, int]] = {}  # LP -> (shares, claimable from ns)
        self.liq_used: dict[int, tuple[int, int]] = {}  # row -> (window index, notional liquidated)

    # --- funds --------------------------------------------------------------------------------------

    def fund_of_market(self, m: int) -> str:
        sym = self.eng.markets[m].spec.symbol
        return sym if sym in self.funds else MAIN_FUND

    def fund_of_bucket(self, b: Bucket) -> str:
        return MAIN_FUND if b.pos < 0 else self.fund_of_market(int(self.eng.pos_mkt[b.pos]))

    def fund_in(self, fund: str, amount_q: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        if amount_q:
            self.funds[fund] += amount_q
            out.append(ev.InsuranceFundChanged(self.eng.now_ns, amount_q, self.funds[fund], reason, account_id, fund))

    def fund_out(self, fund: str, amount_q: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        """Pay ``amount_q`` from ``fund``; what it cannot pay is socialised (an explicit event)."""
        draw = min(amount_q, max(self.funds[fund], 0))
        if draw:
            self.funds[fund] -= draw
            out.append(ev.InsuranceFundChanged(self.eng.now_ns, -draw, self.funds[fund], reason, account_id, fund))
        rest = amount_q - draw
        if rest:
            self.eng.socialized_q += rest
            out.append(ev.BadDebtSocialized(self.eng.now_ns, account_id, rest, fund))

    def _fund_pnl(self, fund: str, pnl: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        """Inventory PnL moves between the clearing counterparty and the fund."""
        self.eng.clearing_q -= pnl
        if pnl >= 0:
            self.fund_in(fund, pnl, reason, account_id, out)
        else:
            self.fund_out(fund, -pnl, reason, account_id, out)

    # --- per-account cap ------------------------------------------------------------------------------

    def account_allowance(self, r: int) -> int | None:
        """Notional account ``r`` may still have liquidated in this window (None: no cap)."""
        cap = self.eng.cfg.liquidation_max_account_notional_quote_q
        if not cap:
            return None
        w = self.eng.now_ns // self.eng.cfg.liquidation_account_window_ns
        win, used = self.liq_used.get(r, (w, 0))
        return cap - (used if win == w else 0)

    def use_allowance(self, r: int, notional_q: int) -> None:
        if not self.eng.cfg.liquidation_max_account_notional_quote_q:
            return
        w = self.eng.now_ns // self.eng.cfg.liquidation_account_window_ns
        win, used = self.liq_used.get(r, (w, 0))
        self.liq_used[r] = (w, (used if win == w else 0) + notional_q)

    # --- the tick's orders ------------------------------------------------------------------------------

    def take_over(self, p: int, size: int, mark_q: int) -> None:
        """Record that the protocol took ``size`` (as held) of position ``p`` at the mark."""
        eng = self.eng
        m = eng.markets[int(eng.pos_mkt[p])]
        sd = m.spec.size_decimals
        cost = (
            margin.value_quote_q(size, mark_q, sd, Rounding.FLOOR)
            if size > 0
            else -margin.value_quote_q(-size, mark_q, sd, Rounding.CEIL)
        )
        r = int(eng.pos_acct[p])
        self.orders.append(Order(m.i, int(eng.acct_id[r]), r, size, cost))

    def settle_shortfall(self, b: Bucket, shortfall_q: int, out: list[ev.Event]) -> None:
        """Cover a bankrupt bucket: its fund first, then ADL for what the fund lacks, then socialise.

        The caller credits the bucket with ``shortfall_q`` (it ends at zero equity).
        """
        eng = self.eng
        fund = self.fund_of_bucket(b)
        aid = int(eng.acct_id[b.row])
        lack = shortfall_q - max(self.funds[fund], 0)
        if lack > 0:
            self._deleverage(b, lack, fund, out)
        self.fund_out(fund, shortfall_q, "shortfall", aid, out)

    def _deleverage(self, b: Bucket, lack_q: int, fund: str, out: list[ev.Event]) -> None:
        """Hand this bucket's largest close of the tick to the ADL queue at its bankruptcy price.

        The price is the one at which the close would have left exactly what the fund can cover:
        ``mark ± lack / size``, rounded so the fund gets at least ``lack`` for a full fill.
        """
        eng = self.eng
        mine = [
            o
            for o in self.orders
            if isinstance(o, Order) and o.row == b.row and o.size and (b.pos < 0 or o.market == int(eng.pos_mkt[b.pos]))
        ]
        mine = [o for o in mine if eng.markets[o.market].spec.liquidation.adl]
        if not mine:
            return

        def notional(o: Order) -> int:
            m = eng.markets[o.market]
            return margin.value_quote_q(abs(o.size), m.mark_q or 0, m.spec.size_decimals, Rounding.FLOOR)

        o = max(mine, key=lambda o: (notional(o), -o.market))
        m = eng.markets[o.market]
        assert m.mark_q is not None
        q = abs(o.size)
        # value(q, d) >= lack: d = ceil(lack * 10^shift / q), shift = size + price - quote decimals
        shift = m.spec.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
        num, den = (lack_q * 10**shift, q) if shift >= 0 else (lack_q, q * 10**-shift)
        d = div_round(num, den, Rounding.CEIL)
        s = _sign(o.size)
        price = m.mark_q + d if s > 0 else max(m.mark_q - d, 1)
        queue = self.adl_queue(m, o.size, exclude=b.row, need=q)
        fills, _rest = adl.deleverage(queue, q, price)
        for rank, f in enumerate(fills, 1):
            r = eng.row_of[f.account_id]
            p = eng._find_pos(r, m.i)
            eng._settle_funding(p, out)
            eng._trade(p, f.position_delta_base_q, price, 0)
            pnl = hand_over(o, f.reduction_base_q, price, m.spec.size_decimals)
            out.append(
                ev.AutoDeleveraged(
                    eng.now_ns, f.account_id, m.spec.symbol, f.position_delta_base_q, price, rank, o.account_id, pnl
                )
            )
            self._fund_pnl(fund, pnl, "adl", f.account_id, out)
            eng._resync(r)
            eng._recheck.extend(eng._buckets_of(r))

    def adl_queue(
        self, m: _Market, bankrupt_size: int, exclude: int = -1, need: int | None = None
    ) -> tuple[adl.RankedPosition, ...]:
        """The ADL queue of market ``m`` against a bankrupt position of sign ``bankrupt_size``.

        With ``need`` (the size to deleverage) and a long queue, only the best candidates by a float
        estimate of the score, enough to hold eight times ``need`` (and 256 more), are scored exactly
        and ranked. The estimate is computed from the exact state alone (the position's PnL on the
        quote balance, or on its isolated margin), so it is the same whatever screen the engine runs;
        the order and every fill come from exact figures. Without ``need``, every candidate is ranked.
        """
        eng = self.eng
        col = m.column()
        sizes = eng.pos_size[col]
        rows = eng.pos_acct[col]
        iso = eng.pos_iso[col] == 1
        st = np.where(iso, eng.pos_status[col], eng.status[rows])
        keep = (np.sign(sizes) == -_sign(bankrupt_size)) & (rows != exclude) & (st != LIQUIDATING) & (st != BANKRUPT)
        col = col[keep]
        if need is not None and len(col) > 256:
            size_f = eng.pos_size[col].astype(np.float64)
            value = size_f * float(m.mark_q or 0) * m.kv
            owed = size_f * (m.fidx - eng.pos_fidx[col]).astype(np.float64) * m.kf
            upnl = value - eng.pos_cost[col].astype(np.float64) - owed
            base = np.where(
                eng.pos_iso[col] == 1, eng.pos_iso_margin[col], eng.bal[eng.pos_acct[col], eng.quote_c]
            ).astype(np.float64)
            entry = np.maximum(np.abs(eng.pos_cost[col].astype(np.float64)), 1.0)
            pct = upnl / entry
            lev = np.abs(value) / np.maximum(base + upnl, 1.0)
            score = np.where(pct > 0, pct * lev, pct / np.maximum(lev, 1e-300))
            order = np.lexsort((col, -score))
            cum = np.cumsum(np.abs(eng.pos_size[col[order]]))
            k = int(np.searchsorted(cum, 8 * need)) + 256
            col = np.sort(col[order[:k]])
        cands = []
        for p in col.tolist():
            r = int(eng.pos_acct[p])
            risk = eng.bucket_risk(eng._bucket_of(p))
            if risk.equity_quote_q <= 0 or m.mark_q is None:
                continue
            size = int(eng.pos_size[p])
            entry_q = abs(int(eng.pos_cost[p]))
            mark_n = margin.value_quote_q(abs(size), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
            if entry_q <= 0 or mark_n <= 0:
                continue
            upnl = eng.position_risk(p).upnl_quote_q
            cands.append(adl.AdlCandidate(int(eng.acct_id[r]), size, upnl, entry_q, mark_n, risk.equity_quote_q))
        return adl.adl_queue(cands, bankrupt_size)

    def flush(self, out: list[ev.Event]) -> None:
        """Execute the tick's orders per market: net them when batching, then mark, impact or auction."""
        if not self.orders:
            return
        eng = self.eng
        by_market: dict[int, list[Order | Block]] = {}
        for o in self.orders:
            by_market.setdefault(o.market, []).append(o)
        self.orders = []
        for mi in sorted(by_market):
            m = eng.markets[mi]
            orders = by_market[mi]
            if m.spec.liquidation.batch:
                size = cost = sold = 0
                ids: set[int] = set()
                for o in orders:
                    if isinstance(o, Block):
                        size += int(o.sizes.sum())
                        cost += int(o.costs.astype(object).sum())
                        sold += int(o.sizes[o.sizes > 0].sum())
                        ids.update(o.account_ids.tolist())
                    elif o.size:
                        size += o.size
                        cost += o.cost
                        sold += max(o.size, 0)
                        ids.add(o.account_id)
                if not ids:
                    continue
                residue = -cost if size == 0 else 0
                out.append(ev.BatchNetted(eng.now_ns, m.spec.symbol, sold, sold - size, size, m.mark_q or 0, residue))
                self._execute(m, size, cost, tuple(sorted(ids)), out)
                continue
            for o in orders:
                if isinstance(o, Block):
                    for a, sz, c in zip(o.account_ids.tolist(), o.sizes.tolist(), o.costs.tolist(), strict=True):
                        if sz:
                            self._execute(m, sz, c, (a,), out)
                elif o.size:
                    self._execute(m, o.size, o.cost, (o.account_id,), out)

    def _execute(self, m: _Market, size: int, cost: int, accounts: tuple[int, ...], out: list[ev.Event]) -> None:
        eng = self.eng
        pol = m.spec.liquidation
        fund = self.fund_of_market(m.i)
        mark = m.mark_q
        assert mark is not None
        sd = m.spec.size_decimals
        if size == 0:
            if cost:  # the crossed parts' rounding: the fund keeps (or pays) the residue
                self._fund_pnl(fund, -cost, "batch", accounts[0], out)
            return
        if pol.execution == "mark":
            return  # the clearing counterparty takes it at the mark: nothing left to settle
        if pol.execution == "impact":
            price = self._impact_price(m, size)
            pnl = inventory_pnl(size, abs(size), price, cost, sd)
            at_mark = inventory_pnl(size, abs(size), mark, cost, sd)
            slip = max(at_mark - pnl, 0)
            out.append(ev.LiquidationExecuted(eng.now_ns, m.spec.symbol, size, price, mark, slip, pnl))
            self._fund_pnl(fund, pnl, "slippage", accounts[0], out)
            return
        params = auction_params(pol.auction)
        top = auction.start_price(auction.ray_from_price_q(mark), params.buf_ray)
        self.n_auctions += 1
        aid = f"{m.spec.symbol}-{self.n_auctions}"
        tab = margin.value_quote_q(abs(size), mark, sd, Rounding.FLOOR)
        incentive = auction.keeper_incentive(tab, params.chip_ppm, params.tip_quote_q)
        a = Auction(aid, m.i, size, cost, mark, top, eng.now_ns, accounts, incentive, fund)
        self.auctions[aid] = a
        out.append(ev.AuctionStarted(eng.now_ns, aid, m.spec.symbol, size, mark, self.price_q(a), list(accounts)))

    def _impact_price(self, m: _Market, size: int) -> int:
        spec = m.spec.liquidation.impact
        mark = m.mark_q
        assert mark is not None
        side = impact.Side.SELL if size > 0 else impact.Side.BUY
        if spec.model == "sqrt":
            return impact.sqrt_impact_price_q(
                mark, side, abs(size), spec.daily_volume_base_q, spec.sigma_ppm, spec.coefficient_ppm
            )
        if side is impact.Side.SELL:
            levels = [(div_round(mark * (PPM - off), PPM, Rounding.FLOOR), qty) for off, qty in spec.book]
        else:
            levels = [(div_round(mark * (PPM + off), PPM, Rounding.CEIL), qty) for off, qty in spec.book]
        fill = impact.walk_book(levels, side, abs(size), mark)
        if fill.unfilled_base_q:
            worst = min(p for p, _ in levels) if side is impact.Side.SELL else max(p for p, _ in levels)
            value = (fill.avg_price_q or 0) * fill.filled_base_q + worst * fill.unfilled_base_q
            rounding = Rounding.FLOOR if side is impact.Side.SELL else Rounding.CEIL
            return max(div_round(value, abs(size), rounding), 1)
        assert fill.avg_price_q is not None
        return max(fill.avg_price_q, 1)

    # --- auctions ---------------------------------------------------------------------------------------

    def curve_ray(self, a: Auction) -> int:
        spec = self.eng.markets[a.market].spec.liquidation.auction
        dur = (self.eng.now_ns - a.started_ns) // NS_PER_S
        return auction.curve_price(auction_params(spec), a.top_ray, dur)

    def price_q(self, a: Auction) -> int:
        """The auction's price now: a long falls from above the mark, a short rises from below it."""
        c = self.curve_ray(a)
        if a.size > 0:
            return max(auction.price_q_from_ray(c, Rounding.CEIL), 1)
        mirrored = max(2 * auction.ray_from_price_q(a.ref_q) - c, 0)
        return max(auction.price_q_from_ray(mirrored, Rounding.FLOOR), 1)

    def stale(self, a: Auction) -> str:
        """'tail' or 'cusp' when the auction needs a reset (Clipper ``status``), else ''."""
        spec = self.eng.markets[a.market].spec.liquidation.auction
        now_s, start_s = self.eng.now_ns // NS_PER_S, a.started_ns // NS_PER_S
        if now_s - start_s > spec.tail_s:
            return "tail"
        c = self.curve_ray(a)
        if auction.rdiv(c, a.top_ray) < spec.cusp_ppm * _PPM_TO_RAY:
            return "cusp"
        return ""

    def poll(self, markets: set[int] | None, out: list[ev.Event]) -> None:
        """Stale auctions (of ``markets``, or all): the backstop vault takes over, or they reset."""
        for aid in sorted(self.auctions):
            a = self.auctions[aid]
            if markets is not None and a.market not in markets:
                continue
            why = self.stale(a)
            if not why:
                continue
            m = self.eng.markets[a.market]
            if m.spec.liquidation.backstop and m.mark_q is not None:
                self._backstop(a, out)
                if a.size == 0:
                    del self.auctions[aid]
                    out.append(ev.AuctionFinished(self.eng.now_ns, aid, "backstop"))
                    continue
            assert m.mark_q is not None
            params = auction_params(m.spec.liquidation.auction)
            a.ref_q = m.mark_q
            a.top_ray = auction.start_price(auction.ray_from_price_q(m.mark_q), params.buf_ray)
            a.started_ns = self.eng.now_ns
            out.append(ev.AuctionReset(self.eng.now_ns, aid, why, a.ref_q, self.price_q(a)))

    def bid(self, e: ev.AuctionBid, out: list[ev.Event]) -> str:
        eng = self.eng
        for name in ("size_base_q", "limit_price_q"):
            v = getattr(e, name)
            if v <= 0 or v > eng.max_q:
                return f"{name} must be positive and within bounds"
        a = self.auctions.get(e.auction_id)
        if a is None:
            return f"auction {e.auction_id!r} is unknown or finished"
        self.poll({a.market}, out)
        eng._evaluate([], out)  # whatever a takeover touched is settled before the bid is judged
        a = self.auctions.get(e.auction_id)
        if a is None:
            return f"auction {e.auction_id} finished before the bid (taken over by the backstop)"
        r = eng.row_of.get(e.account_id)
        if r is None or eng.is_vault(e.account_id):
            return f"unknown account {e.account_id}"
        if e.account_id in a.accounts:
            return "a liquidated account cannot bid on its own auction"
        if eng.status[r] in (LIQUIDATING, BANKRUPT):
            return "the bidder is being liquidated"
        price = self.price_q(a)
        if a.size > 0 and e.limit_price_q < price:
            return f"bid limit {e.limit_price_q} is below the auction price {price}"
        if a.size < 0 and e.limit_price_q > price:
            return f"bid limit {e.limit_price_q} is above the auction price {price} (a short is bought back)"
        m = eng.markets[a.market]
        q = min(e.size_base_q, abs(a.size))
        p = eng._find_pos(r, m.i)
        if p >= 0 and eng.pos_size[p] and eng.pos_iso[p]:
            return "the bidder holds this market in isolated margin"
        delta = _sign(a.size) * q
        reason = eng.take_position(r, m, delta, price, out)
        if reason:
            return f"too little collateral: {reason}"
        reward = div_round(a.incentive_left_q * q, abs(a.size), Rounding.FLOOR)  # all of it with the last part
        a.incentive_left_q -= reward
        pnl = hand_over(a, q, price, m.spec.size_decimals)
        out.append(ev.AuctionBidFilled(eng.now_ns, a.auction_id, e.account_id, delta, price, pnl, reward))
        self._fund_pnl(a.fund, pnl, "auction", a.accounts[0] if len(a.accounts) == 1 else -1, out)
        if reward:
            pay = min(reward, max(self.funds[a.fund], 0))  # the incentive comes from penalties only
            if pay:
                self.fund_out(a.fund, pay, "keeper", e.account_id, out)
                eng.bal[r, eng.quote_c] += pay
        if a.size == 0:
            del self.auctions[a.auction_id]
            out.append(ev.AuctionFinished(eng.now_ns, a.auction_id, "cleared"))
        eng._resync(r)
        eng._evaluate(eng._buckets_of(r), out)
        return ""

    # --- backstop vault ---------------------------------------------------------------------------------

    def _backstop(self, a: Auction, out: list[ev.Event]) -> None:
        """The vault takes over what it can of a stale auction, at the market's discount."""
        eng = self.eng
        spec = eng.cfg.backstop
        assert spec is not None
        m = eng.markets[a.market]
        mark = m.mark_q
        assert mark is not None
        vr = eng.vault_row()
        if int(eng.acct_id[vr]) in a.accounts:
            return
        disc = m.spec.liquidation.backstop_discount_ppm
        s = _sign(a.size)
        price = (
            max(div_round(mark * (PPM - disc), PPM, Rounding.CEIL), 1)
            if s > 0
            else div_round(mark * (PPM + disc), PPM, Rounding.FLOOR)
        )
        q = abs(a.size)
        while q > 0:
            saved = eng._save_account(vr)
            if not eng.take_position(vr, m, s * q, price, out, check_im=False) and self.vault_within_limits():
                break
            eng._restore_account(vr, saved)
            q //= 2
        if q == 0:
            return
        pnl = hand_over(a, q, price, m.spec.size_decimals)
        if a.size == 0:
            a.incentive_left_q = 0  # no keeper earned it
        out.append(ev.BackstopTakeover(eng.now_ns, a.auction_id, m.spec.symbol, s * q, price, pnl))
        self._fund_pnl(a.fund, pnl, "backstop", int(eng.acct_id[vr]), out)
        eng._resync(vr)
        eng._recheck.extend(eng._buckets_of(vr))

    def vault_notional(self) -> int:
        eng = self.eng
        vr = eng.vault_row()
        total = 0
        for p in eng.positions_of(vr):
            m = eng.markets[int(eng.pos_mkt[p])]
            if eng.pos_size[p] and m.mark_q is not None:
                total += margin.value_quote_q(abs(int(eng.pos_size[p])), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        return total

    def vault_within_limits(self, extra_out_q: int = 0) -> bool:
        """Total notional within the cap and within ``max_leverage`` x equity (after paying ``extra_out_q``)."""
        spec = self.eng.cfg.backstop
        assert spec is not None
        n = self.vault_notional()
        eq = self.vault_equity() - extra_out_q
        return n <= spec.max_notional_quote_q and n <= eq * spec.max_leverage and eq >= 0

    def vault_equity(self) -> int:
        return self.eng.cross_risk(self.eng.vault_row()).equity_quote_q

    def vault_deposit(self, e: ev.VaultDeposit, out: list[ev.Event]) -> str:
        eng = self.eng
        if eng.cfg.backstop is None:
            return "no backstop vault is configured"
        if eng.is_vault(e.account_id):
            return "the vault cannot deposit into itself"
        target = eng._transfer_target(e.account_id, eng.cfg.quote, e.amount_q)
        if isinstance(target, str):
            return target
        r, c = target
        if int(eng.bal[r, c]) < e.amount_q:
            return f"insufficient {eng.cfg.quote} balance"
        if eng.status[r] != 0:
            return "only a healthy account can provide liquidity"
        blocked = eng._oracle_blocked(eng._cross_assets(r), orc.Action.OPEN)
        if blocked:
            return blocked
        vr = eng.vault_row()
        eq = self.vault_equity()
        if self.total_shares and eq <= 0:
            return "the vault has no equity: deposits would buy its losses"
        shares = e.amount_q if not self.total_shares else div_round(e.amount_q * self.total_shares, eq, Rounding.FLOOR)
        if shares <= 0:
            return "the deposit is too small for one share"
        eng.bal[r, c] -= e.amount_q
        if eng.withdrawal_headroom_quote_q(r) < 0:  # a vault deposit is a withdrawal: weighted profit only
            eng.bal[r, c] += e.amount_q
            return "the deposit would leave the account below its initial margin (unrealised profit weighted)"
        eng.bal[vr, c] += e.amount_q
        self.shares[e.account_id] = self.shares.get(e.account_id, 0) + shares
        self.total_shares += shares
        out.append(
            ev.VaultSharesChanged(eng.now_ns, e.account_id, shares, e.amount_q, self.total_shares, self.vault_equity())
        )
        eng._resync(r)
        eng._resync(vr)
        eng._evaluate([*eng._buckets_of(r), *eng._buckets_of(vr)], out)
        return ""

    def vault_request(self, e: ev.VaultWithdrawalRequested, out: list[ev.Event]) -> str:
        eng = self.eng
        if eng.cfg.backstop is None:
            return "no backstop vault is configured"
        if e.shares <= 0:
            return "shares must be positive"
        if e.account_id in self.pending:
            return "a withdrawal is already pending for this account"
        owned = self.shares.get(e.account_id, 0)
        if e.shares > owned:
            return f"withdrawal of {e.shares} shares is beyond the {owned} held"
        self.pending[e.account_id] = (e.shares, eng.now_ns + eng.cfg.backstop.withdrawal_delay_ns)
        return ""

    def vault_claim(self, e: ev.VaultWithdrawalClaimed, out: list[ev.Event]) -> str:
        eng = self.eng
        if eng.cfg.backstop is None:
            return "no backstop vault is configured"
        req = self.pending.get(e.account_id)
        if req is None:
            return "no pending withdrawal"
        shares, at = req
        if eng.now_ns < at:
            return f"withdrawal locked until {at}"
        eq = self.vault_equity()
        amount = div_round(shares * max(eq, 0), self.total_shares, Rounding.FLOOR)
        vr = eng.vault_row()
        if amount > int(eng.bal[vr, eng.quote_c]):
            return "the vault's cash cannot pay this out now"
        if not self.vault_within_limits(amount):
            return "paying this out would take the vault beyond its risk limits"
        r = eng.row_of[e.account_id]
        eng.bal[vr, eng.quote_c] -= amount
        eng.bal[r, eng.quote_c] += amount
        self.shares[e.account_id] -= shares
        if not self.shares[e.account_id]:
            del self.shares[e.account_id]
        self.total_shares -= shares
        del self.pending[e.account_id]
        out.append(
            ev.VaultSharesChanged(eng.now_ns, e.account_id, -shares, -amount, self.total_shares, self.vault_equity())
        )
        eng._resync(r)
        eng._resync(vr)
        eng._evaluate([*eng._buckets_of(r), *eng._buckets_of(vr)], out)
        return ""

    # --- state ---------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "funds": sorted(self.funds.items()),
            "auctions": [self.auctions[k].to_list() for k in sorted(self.auctions)],
            "n_auctions": self.n_auctions,
            "shares": sorted(self.shares.items()),
            "total_shares": self.total_shares,
            "pending": sorted((k, s, t) for k, (s, t) in self.pending.items()),
            "liq_used": sorted((k, w, u) for k, (w, u) in self.liq_used.items()),
        }

    def load(self, s: dict[str, Any]) -> None:
        self.funds = {k: v for k, v in s["funds"]}
        self.auctions = {x[0]: Auction.from_list(list(x)) for x in s["auctions"]}
        self.n_auctions = s["n_auctions"]
        self.shares = {k: v for k, v in s["shares"]}
        self.total_shares = s["total_shares"]
        self.pending = {k: (sh, t) for k, sh, t in s["pending"]}
        self.liq_used = {k: (w, u) for k, w, u in s["liq_used"]}
