"""Insurance funds: the main fund and markets' own funds, and what moves money in and out of them.

Owns the funds' balances (seeded from the config), which fund covers a market or a bucket, penalties
in, shortfalls out (what a fund cannot pay is socialised, as an explicit event), and inventory PnL
moving between the clearing counterparty and a fund.
"""

from __future__ import annotations

from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.types import Bucket
from fluidmargin.model import events as ev

MAIN_FUND = "main"


class InsuranceFunds:
    """The funds' balances and their movements."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        cfg = led.cfg
        self.funds: dict[str, int] = {MAIN_FUND: cfg.insurance_fund_quote_q}
        for m in cfg.markets:
            if m.liquidation.own_fund:
                self.funds[m.symbol] = m.liquidation.own_fund_quote_q
        self.seed_total = sum(self.funds.values())

    def fund_of_market(self, m: int) -> str:
        sym = self.led.markets[m].spec.symbol
        return sym if sym in self.funds else MAIN_FUND

    def fund_of_bucket(self, b: Bucket) -> str:
        return MAIN_FUND if b.pos < 0 else self.fund_of_market(int(self.led.pos_mkt[b.pos]))

    def fund_in(self, fund: str, amount_q: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        if amount_q:
            self.funds[fund] += amount_q
            out.append(ev.InsuranceFundChanged(self.led.now_ns, amount_q, self.funds[fund], reason, account_id, fund))

    def fund_out(self, fund: str, amount_q: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        """Pay ``amount_q`` from ``fund``; what it cannot pay is socialised (an explicit event)."""
        draw = min(amount_q, max(self.funds[fund], 0))
        if draw:
            self.funds[fund] -= draw
            out.append(ev.InsuranceFundChanged(self.led.now_ns, -draw, self.funds[fund], reason, account_id, fund))
        rest = amount_q - draw
        if rest:
            self.led.socialized_q += rest
            out.append(ev.BadDebtSocialized(self.led.now_ns, account_id, rest, fund))

    def fund_pnl(self, fund: str, pnl: int, reason: str, account_id: int, out: list[ev.Event]) -> None:
        """Inventory PnL moves between the clearing counterparty and the fund."""
        self.led.clearing_q -= pnl
        if pnl >= 0:
            self.fund_in(fund, pnl, reason, account_id, out)
        else:
            self.fund_out(fund, -pnl, reason, account_id, out)

    def fund_fee(self, amount_q: int, account_id: int, out: list[ev.Event], market: int = -1) -> None:
        """A liquidation penalty into the insurance fund (the market's own one, if it has one)."""
        fund = MAIN_FUND if market < 0 else self.fund_of_market(market)
        self.fund_in(fund, amount_q, "liquidation_fee", account_id, out)
