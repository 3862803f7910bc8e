"""Dutch auctions of protocol inventory: started, priced along their curve, bid on, reset or taken over.

Owns the open auctions (Clipper-style: a long is offered from above the mark and falls, a short from
below and rises), a keeper's bid (filled within the bidder's initial margin, with a pro-rata keeper
incentive paid from penalties), and the poll that resets a stale auction or hands it to the backstop vault.
"""

from __future__ import annotations

from typing import Any

from fluidmargin.core.units import NS_PER_S, PPM, Rounding, div_round
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.ports import WaterfallHost
from fluidmargin.engine.state import BANKRUPT, LIQUIDATING
from fluidmargin.engine.types import MarketRecord
from fluidmargin.engine.waterfall.funds import InsuranceFunds
from fluidmargin.engine.waterfall.lots import Auction, hand_over, sign
from fluidmargin.engine.waterfall.vault import BackstopVault
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import auction
from fluidmargin.risk.perp import margin

_PPM_TO_RAY = auction.RAY // PPM


def auction_params(spec: Any) -> auction.AuctionParams:
    """A market's auction spec as the auction model's parameters."""
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


class AuctionHouse:
    """The open auctions and what happens to them."""

    def __init__(self, host: WaterfallHost, led: Ledger, insurance: InsuranceFunds, vault: BackstopVault) -> None:
        self.host = host
        self.led = led
        self.insurance = insurance
        self.vault = vault
        self.auctions: dict[str, Auction] = {}
        self.n_auctions = 0

    def start(
        self, m: MarketRecord, size: int, cost: int, accounts: tuple[int, ...], fund: str, out: list[ev.Event]
    ) -> None:
        """Offer inventory ``size`` (cost basis ``cost``) of market ``m`` in a new Dutch auction."""
        led = self.led
        mark = m.mark_q
        assert mark is not None
        sd = m.spec.size_decimals
        params = auction_params(m.spec.liquidation.auction)
        top = auction.start_price(auction.ray_from_price_q(mark), params.buf_ray)
        self.n_auctions += 1
        aid = f"{m.spec.symbol}-{self.n_auctions}"
        tab = margin.value_quote_q(abs(size), mark, sd, Rounding.FLOOR)
        incentive = auction.keeper_incentive(tab, params.chip_ppm, params.tip_quote_q)
        a = Auction(aid, m.i, size, cost, mark, top, led.now_ns, accounts, incentive, fund)
        self.auctions[aid] = a
        out.append(ev.AuctionStarted(led.now_ns, aid, m.spec.symbol, size, mark, self.price_q(a), list(accounts)))

    def curve_ray(self, a: Auction) -> int:
        spec = self.led.markets[a.market].spec.liquidation.auction
        dur = (self.led.now_ns - a.started_ns) // NS_PER_S
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
        spec = self.led.markets[a.market].spec.liquidation.auction
        now_s, start_s = self.led.now_ns // NS_PER_S, a.started_ns // NS_PER_S
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
            m = self.led.markets[a.market]
            if m.spec.liquidation.backstop and m.mark_q is not None:
                self.vault.take_over(a, out)
                if a.size == 0:
                    del self.auctions[aid]
                    out.append(ev.AuctionFinished(self.led.now_ns, aid, "backstop"))
                    continue
            assert m.mark_q is not None
            params = auction_params(m.spec.liquidation.auction)
            a.ref_q = m.mark_q
            a.top_ray = auction.start_price(auction.ray_from_price_q(m.mark_q), params.buf_ray)
            a.started_ns = self.led.now_ns
            out.append(ev.AuctionReset(self.led.now_ns, aid, why, a.ref_q, self.price_q(a)))

    def bid(self, e: ev.AuctionBid, out: list[ev.Event]) -> str:
        """A keeper's bid on an auction: filled at the auction's price now, within the bidder's initial margin."""
        host, led, funds = self.host, self.led, self.insurance
        for name in ("size_base_q", "limit_price_q"):
            v = getattr(e, name)
            if v <= 0 or v > led.max_q:
                return f"{name} must be positive and within bounds"
        a = self.auctions.get(e.auction_id)
        if a is None:
            return f"auction {e.auction_id!r} is unknown or finished"
        self.poll({a.market}, out)
        host.evaluate([], out)  # whatever a takeover touched is settled before the bid is judged
        a = self.auctions.get(e.auction_id)
        if a is None:
            return f"auction {e.auction_id} finished before the bid (taken over by the backstop)"
        r = led.row_of.get(e.account_id)
        if r is None or led.is_vault(e.account_id):
            return f"unknown account {e.account_id}"
        if e.account_id in a.accounts:
            return "a liquidated account cannot bid on its own auction"
        if led.status[r] in (LIQUIDATING, BANKRUPT):
            return "the bidder is being liquidated"
        price = self.price_q(a)
        if a.size > 0 and e.limit_price_q < price:
            return f"bid limit {e.limit_price_q} is below the auction price {price}"
        if a.size < 0 and e.limit_price_q > price:
            return f"bid limit {e.limit_price_q} is above the auction price {price} (a short is bought back)"
        m = led.markets[a.market]
        q = min(e.size_base_q, abs(a.size))
        p = led.find_pos(r, m.i)
        if p >= 0 and led.pos_size[p] and led.pos_iso[p]:
            return "the bidder holds this market in isolated margin"
        delta = sign(a.size) * q
        reason = host.take_position(r, m, delta, price, out)
        if reason:
            return f"too little collateral: {reason}"
        reward = div_round(a.incentive_left_q * q, abs(a.size), Rounding.FLOOR)  # all of it with the last part
        a.incentive_left_q -= reward
        pnl = hand_over(a, q, price, m.spec.size_decimals)
        out.append(ev.AuctionBidFilled(led.now_ns, a.auction_id, e.account_id, delta, price, pnl, reward))
        funds.fund_pnl(a.fund, pnl, "auction", a.accounts[0] if len(a.accounts) == 1 else -1, out)
        if reward:
            pay = min(reward, max(funds.funds[a.fund], 0))  # the incentive comes from penalties only
            if pay:
                funds.fund_out(a.fund, pay, "keeper", e.account_id, out)
                led.bal[r, led.quote_c] += pay
        if a.size == 0:
            del self.auctions[a.auction_id]
            out.append(ev.AuctionFinished(led.now_ns, a.auction_id, "cleared"))
        host.resync(r)
        host.evaluate(led.buckets_of(r), out)
        return ""
