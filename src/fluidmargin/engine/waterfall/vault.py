"""The backstop vault: liquidity providers' shares in an account that takes over stale auctions.

Owns the shares, the pending withdrawals (claimable after a delay), the vault's risk limits (total
notional, and leverage on its equity), deposits (bought at equity per share; a deposit is a
withdrawal for the depositor), claims, and the takeover of what it can of a stale auction at the
market's discount, halving the size until it fits its limits.
"""

from __future__ import annotations

from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.ports import WaterfallHost
from fluidmargin.engine.waterfall.funds import InsuranceFunds
from fluidmargin.engine.waterfall.lots import Auction, hand_over, sign
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc


class BackstopVault:
    """The vault's shares and its takeovers; its account is the ledger's vault row."""

    def __init__(self, host: WaterfallHost, led: Ledger, insurance: InsuranceFunds) -> None:
        self.host = host
        self.led = led
        self.insurance = insurance
        self.shares: dict[int, int] = {}
        self.total_shares = 0
        self.pending: dict[int, tuple[int, int]] = {}  # LP -> (shares, claimable from ns)

    def take_over(self, a: Auction, out: list[ev.Event]) -> None:
        """The vault takes over what it can of a stale auction, at the market's discount."""
        host, led = self.host, self.led
        spec = led.cfg.backstop
        assert spec is not None
        m = led.markets[a.market]
        mark = m.mark_q
        assert mark is not None
        vr = led.vault_row()
        if int(led.acct_id[vr]) in a.accounts:
            return
        disc = m.spec.liquidation.backstop_discount_ppm
        s = sign(a.size)
        price = (
            max(div_round(mark * (PPM - disc), PPM, Rounding.CEIL), 1)
            if s > 0
            else div_round(mark * (PPM + disc), PPM, Rounding.FLOOR)
        )
        q = abs(a.size)
        while q > 0:
            with led.savepoint(vr) as sp:
                if not host.take_position(vr, m, s * q, price, out, check_im=False) and self.within_limits():
                    sp.commit()
                    break
            q //= 2
        if q == 0:
            return
        pnl = hand_over(a, q, price, m.spec.size_decimals)
        if a.size == 0:
            a.incentive_left_q = 0  # no keeper earned it
        out.append(ev.BackstopTakeover(led.now_ns, a.auction_id, m.spec.symbol, s * q, price, pnl))
        self.insurance.fund_pnl(a.fund, pnl, "backstop", int(led.acct_id[vr]), out)
        host.resync(vr)
        host.recheck(led.buckets_of(vr))

    def notional(self) -> int:
        led = self.led
        vr = led.vault_row()
        total = 0
        for p in led.positions_of(vr):
            m = led.markets[int(led.pos_mkt[p])]
            if led.pos_size[p] and m.mark_q is not None:
                total += margin.value_quote_q(abs(int(led.pos_size[p])), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        return total

    def within_limits(self, extra_out_q: int = 0) -> bool:
        """Total notional within the cap and within ``max_leverage`` x equity (after paying ``extra_out_q``)."""
        spec = self.led.cfg.backstop
        assert spec is not None
        n = self.notional()
        eq = self.equity() - extra_out_q
        return n <= spec.max_notional_quote_q and n <= eq * spec.max_leverage and eq >= 0

    def equity(self) -> int:
        return self.host.cross_risk(self.led.vault_row()).equity_quote_q

    def deposit(self, e: ev.VaultDeposit, out: list[ev.Event]) -> str:
        host, led = self.host, self.led
        if led.cfg.backstop is None:
            return "no backstop vault is configured"
        if led.is_vault(e.account_id):
            return "the vault cannot deposit into itself"
        target = host.transfer_target(e.account_id, led.cfg.quote, e.amount_q)
        if isinstance(target, str):
            return target
        r, c = target
        if int(led.bal[r, c]) < e.amount_q:
            return f"insufficient {led.cfg.quote} balance"
        if led.status[r] != 0:
            return "only a healthy account can provide liquidity"
        blocked = host.oracle_blocked(host.cross_assets(r), orc.Action.OPEN)
        if blocked:
            return blocked
        vr = led.vault_row()
        eq = self.equity()
        if self.total_shares and eq <= 0:
            return "the vault has no equity: deposits would buy its losses"
        shares = e.amount_q if not self.total_shares else div_round(e.amount_q * self.total_shares, eq, Rounding.FLOOR)
        if shares <= 0:
            return "the deposit is too small for one share"
        led.bal[r, c] -= e.amount_q
        if host.withdrawal_headroom_quote_q(r) < 0:  # a vault deposit is a withdrawal: weighted profit only
            led.bal[r, c] += e.amount_q
            return "the deposit would leave the account below its initial margin (unrealised profit weighted)"
        led.bal[vr, c] += e.amount_q
        self.shares[e.account_id] = self.shares.get(e.account_id, 0) + shares
        self.total_shares += shares
        out.append(
            ev.VaultSharesChanged(led.now_ns, e.account_id, shares, e.amount_q, self.total_shares, self.equity())
        )
        host.resync(r)
        host.resync(vr)
        host.evaluate([*led.buckets_of(r), *led.buckets_of(vr)], out)
        return ""

    def request(self, e: ev.VaultWithdrawalRequested, out: list[ev.Event]) -> str:
        led = self.led
        if led.cfg.backstop is None:
            return "no backstop vault is configured"
        if e.shares <= 0:
            return "shares must be positive"
        if e.account_id in self.pending:
            return "a withdrawal is already pending for this account"
        owned = self.shares.get(e.account_id, 0)
        if e.shares > owned:
            return f"withdrawal of {e.shares} shares is beyond the {owned} held"
        self.pending[e.account_id] = (e.shares, led.now_ns + led.cfg.backstop.withdrawal_delay_ns)
        return ""

    def claim(self, e: ev.VaultWithdrawalClaimed, out: list[ev.Event]) -> str:
        host, led = self.host, self.led
        if led.cfg.backstop is None:
            return "no backstop vault is configured"
        req = self.pending.get(e.account_id)
        if req is None:
            return "no pending withdrawal"
        shares, at = req
        if led.now_ns < at:
            return f"withdrawal locked until {at}"
        eq = self.equity()
        amount = div_round(shares * max(eq, 0), self.total_shares, Rounding.FLOOR)
        vr = led.vault_row()
        if amount > int(led.bal[vr, led.quote_c]):
            return "the vault's cash cannot pay this out now"
        if not self.within_limits(amount):
            return "paying this out would take the vault beyond its risk limits"
        r = led.row_of[e.account_id]
        led.bal[vr, led.quote_c] -= amount
        led.bal[r, led.quote_c] += amount
        self.shares[e.account_id] -= shares
        if not self.shares[e.account_id]:
            del self.shares[e.account_id]
        self.total_shares -= shares
        del self.pending[e.account_id]
        out.append(ev.VaultSharesChanged(led.now_ns, e.account_id, -shares, -amount, self.total_shares, self.equity()))
        host.resync(r)
        host.resync(vr)
        host.evaluate([*led.buckets_of(r), *led.buckets_of(vr)], out)
        return ""
