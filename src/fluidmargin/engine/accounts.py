"""Account inputs: opening an account, depositing and withdrawing collateral, settling funding on request.

Owns the rules of moving collateral in and out (a withdrawal must leave initial margin, unrealised
profit weighted; the vault's own account moves only through the waterfall) and re-judges the account
after each change. What an account is worth is :mod:`fluidmargin.engine.book`.
"""

from __future__ import annotations

from fluidmargin.core.units import MAX_QUANTUMS
from fluidmargin.engine.book import Book
from fluidmargin.engine.confirm import Confirm
from fluidmargin.engine.funding import Funding
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.types import Bucket
from fluidmargin.model import events as ev


class Accounts:
    """The account and collateral inputs."""

    def __init__(self, led: Ledger, book: Book, funding: Funding, screen: Screen, confirm: Confirm) -> None:
        self.led = led
        self.book = book
        self.funding = funding
        self.screen = screen
        self.confirm = confirm

    def on_account_opened(self, e: ev.AccountOpened, out: list[ev.Event]) -> str:
        led = self.led
        if not isinstance(e.account_id, int) or not 0 <= e.account_id < 2**63:
            return "account_id must be a non-negative 64-bit integer"
        if e.account_id in led.row_of:
            return f"account {e.account_id} already exists"
        if led.is_vault(e.account_id):
            return f"account {e.account_id} is reserved for the backstop vault"
        led.open_row(e.account_id)
        return ""

    def on_deposited(self, e: ev.Deposited, out: list[ev.Event]) -> str:
        led = self.led
        target = self.book.transfer_target(e.account_id, e.asset, e.amount_q)
        if isinstance(target, str):
            return target
        r, c = target
        new = int(led.bal[r, c]) + e.amount_q
        if new > MAX_QUANTUMS // 4:
            return "balance would overflow"
        led.bal[r, c] = new
        led.deposits[c] += e.amount_q
        self.screen.resync(r)
        self.confirm.evaluate([Bucket(r)], out)
        return ""

    def on_withdrawal_requested(self, e: ev.WithdrawalRequested, out: list[ev.Event]) -> str:
        led, book = self.led, self.book
        target = book.transfer_target(e.account_id, e.asset, e.amount_q)
        if isinstance(target, str):
            return target
        r, c = target
        if int(led.bal[r, c]) < e.amount_q:
            return f"insufficient {e.asset} balance"
        blocked = book.withdrawal_blocked(r)
        if blocked:
            return blocked
        led.bal[r, c] -= e.amount_q
        headroom = book.withdrawal_headroom_quote_q(r)
        if headroom < 0:
            led.bal[r, c] += e.amount_q
            im = book.cross_initial(r)
            return (
                f"withdrawal would leave equity {im + headroom} below initial margin {im} "
                f"(unrealised profit counts at {led.cfg.withdraw_upnl_weight_ppm} ppm)"
            )
        led.withdrawals[c] += e.amount_q
        self.screen.resync(r)
        return ""

    def on_funding_settle_requested(self, e: ev.FundingSettleRequested, out: list[ev.Event]) -> str:
        led = self.led
        r = led.row_of.get(e.account_id)
        if r is None:
            return f"unknown account {e.account_id}"
        touched: list[Bucket] = []
        for m in sorted({led.markets[int(led.pos_mkt[p])] for p in led.positions_of(r)}, key=lambda m: m.i):
            touched.extend(self.screen.accrue_pass(m))
        for p in led.positions_of(r):
            self.funding.settle(p, out)
        self.screen.resync(r)
        self.confirm.evaluate([*touched, *led.buckets_of(r)], out)
        return ""
