"""The waterfall's spine: the tick's takeovers, their execution, shortfalls, and the per-account cap.

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

:class:`Waterfall` owns the tick's orders and each account's liquidated notional per window, and
composes the mechanisms: :mod:`.funds`, :mod:`.deleverage`, :mod:`.impact`, :mod:`.auctions`, :mod:`.vault`.
"""

from __future__ import annotations

from typing import Any

from fluidmargin.core.units import Rounding
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.ports import WaterfallHost
from fluidmargin.engine.types import Bucket, MarketRecord
from fluidmargin.engine.waterfall.auctions import AuctionHouse
from fluidmargin.engine.waterfall.deleverage import Deleverager
from fluidmargin.engine.waterfall.funds import InsuranceFunds
from fluidmargin.engine.waterfall.impact import impact_price
from fluidmargin.engine.waterfall.lots import Auction, Block, Order, inventory_pnl
from fluidmargin.engine.waterfall.vault import BackstopVault
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import adl
from fluidmargin.risk.perp import margin

# what a savepoint keeps of the waterfall: the funds, how many orders, the row's cap use
_RowSaved = tuple[dict[str, int], int, tuple[int, int] | None]


class Waterfall:
    """The waterfall's state (funds, tick orders, auctions, vault shares) and its steps."""

    def __init__(self, host: WaterfallHost, led: Ledger) -> None:
        self.host = host
        self.led = led
        self.insurance = InsuranceFunds(led)
        self.vault = BackstopVault(host, led, self.insurance)
        self.auction_house = AuctionHouse(host, led, self.insurance, self.vault)
        self.deleverager = Deleverager(host, led, self.insurance)
        self.orders: list[Order | Block] = []  # this tick's, in the order they were taken over
        self.liq_used: dict[int, tuple[int, int]] = {}  # row -> (window index, notional liquidated)

    # --- the mechanisms' state, as the waterfall's ------------------------------------------------------

    @property
    def funds(self) -> dict[str, int]:
        return self.insurance.funds

    @funds.setter
    def funds(self, value: dict[str, int]) -> None:
        self.insurance.funds = value

    @property
    def seed_total(self) -> int:
        return self.insurance.seed_total

    @property
    def auctions(self) -> dict[str, Auction]:
        return self.auction_house.auctions

    @property
    def n_auctions(self) -> int:
        return self.auction_house.n_auctions

    @property
    def shares(self) -> dict[int, int]:
        return self.vault.shares

    @property
    def total_shares(self) -> int:
        return self.vault.total_shares

    @property
    def pending(self) -> dict[int, tuple[int, int]]:
        return self.vault.pending

    # --- funds ----------------------------------------------------------------------------------------

    def fund_of_market(self, m: int) -> str:
        return self.insurance.fund_of_market(m)

    def fund_of_bucket(self, b: Bucket) -> str:
        return self.insurance.fund_of_bucket(b)

    def fund_in(self, fund: str, amount_q: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        self.insurance.fund_in(fund, amount_q, reason, account_id, out)

    def fund_out(self, fund: str, amount_q: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        """Pay ``amount_q`` from ``fund``; what it cannot pay is socialised (an explicit event)."""
        self.insurance.fund_out(fund, amount_q, reason, account_id, out)

    def fund_fee(self, amount_q: int, account_id: int, out: list[ev.Event], market: int = -1) -> None:
        """A liquidation penalty into the insurance fund (the market's own one, if it has one)."""
        self.insurance.fund_fee(amount_q, account_id, out, market)

    # --- per-account cap ------------------------------------------------------------------------------

    def account_allowance(self, r: int) -> int | None:
        """Notional account ``r`` may still have liquidated in this window (None: no cap)."""
        cfg = self.led.cfg
        cap = cfg.liquidation_max_account_notional_quote_q
        if not cap:
            return None
        w = self.led.now_ns // cfg.liquidation_account_window_ns
        win, used = self.liq_used.get(r, (w, 0))
        return cap - (used if win == w else 0)

    def use_allowance(self, r: int, notional_q: int) -> None:
        cfg = self.led.cfg
        if not cfg.liquidation_max_account_notional_quote_q:
            return
        w = self.led.now_ns // cfg.liquidation_account_window_ns
        win, used = self.liq_used.get(r, (w, 0))
        self.liq_used[r] = (w, (used if win == w else 0) + notional_q)

    # --- the tick's orders ------------------------------------------------------------------------------

    def take_over(self, p: int, size: int, mark_q: int) -> None:
        """Record that the protocol took ``size`` (as held) of position ``p`` at the mark."""
        led = self.led
        m = led.markets[int(led.pos_mkt[p])]
        sd = m.spec.size_decimals
        cost = (
            margin.value_quote_q(size, mark_q, sd, Rounding.FLOOR)
            if size > 0
            else -margin.value_quote_q(-size, mark_q, sd, Rounding.CEIL)
        )
        r = int(led.pos_acct[p])
        self.orders.append(Order(m.i, int(led.acct_id[r]), r, size, cost))

    def settle_shortfall(self, b: Bucket, shortfall_q: int, out: list[ev.Event]) -> None:
        """Cover a bankrupt bucket: its fund first, then ADL for what the fund lacks, then socialise.

        The caller credits the bucket with ``shortfall_q`` (it ends at zero equity).
        """
        funds = self.insurance
        fund = funds.fund_of_bucket(b)
        aid = int(self.led.acct_id[b.row])
        lack = shortfall_q - max(funds.funds[fund], 0)
        if lack > 0:
            self.deleverager.deleverage(self.orders, b, lack, fund, out)
        funds.fund_out(fund, shortfall_q, "shortfall", aid, out)

    def adl_queue(
        self, m: MarketRecord, bankrupt_size: int, exclude: int = -1, need: int | None = None
    ) -> tuple[adl.RankedPosition, ...]:
        """The ADL queue of market ``m`` against a bankrupt position of sign ``bankrupt_size`` (rank 1 first)."""
        return self.deleverager.adl_queue(m, bankrupt_size, exclude, need)

    def flush(self, out: list[ev.Event]) -> None:
        """Execute the tick's orders per market: net them when batching, then mark, impact or auction."""
        if not self.orders:
            return
        led = self.led
        by_market: dict[int, list[Order | Block]] = {}
        for o in self.orders:
            by_market.setdefault(o.market, []).append(o)
        self.orders = []
        for mi in sorted(by_market):
            m = led.markets[mi]
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
                out.append(ev.BatchNetted(led.now_ns, m.spec.symbol, sold, sold - size, size, m.mark_q or 0, residue))
                self._execute(m, size, cost, tuple(sorted(ids)), out)
                continue
            for o in orders:
                if isinstance(o, Block):
                    for a, sz, c in zip(o.account_ids.tolist(), o.sizes.tolist(), o.costs.tolist(), strict=True):
                        if sz:
                            self._execute(m, sz, c, (a,), out)
                elif o.size:
                    self._execute(m, o.size, o.cost, (o.account_id,), out)

    def _execute(self, m: MarketRecord, size: int, cost: int, accounts: tuple[int, ...], out: list[ev.Event]) -> None:
        funds = self.insurance
        pol = m.spec.liquidation
        fund = funds.fund_of_market(m.i)
        mark = m.mark_q
        assert mark is not None
        sd = m.spec.size_decimals
        if size == 0:
            if cost:  # the crossed parts' rounding: the fund keeps (or pays) the residue
                funds.fund_pnl(fund, -cost, "batch", accounts[0], out)
            return
        if pol.execution == "mark":
            return  # the clearing counterparty takes it at the mark: nothing left to settle
        if pol.execution == "impact":
            price = impact_price(m, size)
            pnl = inventory_pnl(size, abs(size), price, cost, sd)
            at_mark = inventory_pnl(size, abs(size), mark, cost, sd)
            slip = max(at_mark - pnl, 0)
            out.append(ev.LiquidationExecuted(self.led.now_ns, m.spec.symbol, size, price, mark, slip, pnl))
            funds.fund_pnl(fund, pnl, "slippage", accounts[0], out)
            return
        self.auction_house.start(m, size, cost, accounts, fund, out)

    # --- auctions and the vault (inputs, and reads for the service) -------------------------------------

    def price_q(self, a: Auction) -> int:
        """The auction's price now."""
        return self.auction_house.price_q(a)

    def stale(self, a: Auction) -> str:
        """'tail' or 'cusp' when the auction needs a reset, else ''."""
        return self.auction_house.stale(a)

    def poll(self, markets: set[int] | None, out: list[ev.Event]) -> None:
        """Stale auctions (of ``markets``, or all): the backstop vault takes over, or they reset."""
        self.auction_house.poll(markets, out)

    def bid(self, e: ev.AuctionBid, out: list[ev.Event]) -> str:
        return self.auction_house.bid(e, out)

    def vault_equity(self) -> int:
        return self.vault.equity()

    def vault_deposit(self, e: ev.VaultDeposit, out: list[ev.Event]) -> str:
        return self.vault.deposit(e, out)

    def vault_request(self, e: ev.VaultWithdrawalRequested, out: list[ev.Event]) -> str:
        return self.vault.request(e, out)

    def vault_claim(self, e: ev.VaultWithdrawalClaimed, out: list[ev.Event]) -> str:
        return self.vault.claim(e, out)

    # --- dry runs and state ---------------------------------------------------------------------------------

    def save_row(self, r: int) -> _RowSaved:
        """What a savepoint on row ``r`` must restore here: the funds, the orders so far, the row's cap use."""
        return dict(self.insurance.funds), len(self.orders), self.liq_used.get(r)

    def restore_row(self, r: int, saved: _RowSaved) -> None:
        funds, n_orders, used = saved
        self.insurance.funds = funds
        del self.orders[n_orders:]
        if used is None:
            self.liq_used.pop(r, None)
        else:
            self.liq_used[r] = used

    def state(self) -> dict[str, Any]:
        house, vault = self.auction_house, self.vault
        return {
            "funds": sorted(self.insurance.funds.items()),
            "auctions": [house.auctions[k].to_list() for k in sorted(house.auctions)],
            "n_auctions": house.n_auctions,
            "shares": sorted(vault.shares.items()),
            "total_shares": vault.total_shares,
            "pending": sorted((k, s, t) for k, (s, t) in vault.pending.items()),
            "liq_used": sorted((k, w, u) for k, (w, u) in self.liq_used.items()),
        }

    def load(self, s: dict[str, Any]) -> None:
        house, vault = self.auction_house, self.vault
        self.insurance.funds = {k: v for k, v in s["funds"]}
        house.auctions = {x[0]: Auction.from_list(list(x)) for x in s["auctions"]}
        house.n_auctions = s["n_auctions"]
        vault.shares = {k: v for k, v in s["shares"]}
        vault.total_shares = s["total_shares"]
        vault.pending = {k: (sh, t) for k, sh, t in s["pending"]}
        self.liq_used = {k: (w, u) for k, w, u in s["liq_used"]}
