"""Fills: trades into positions, the pre-trade check, and margin modes.

Owns the exact position arithmetic (:meth:`Fills.trade`: cash rounded against the account, cost
released pro rata), a fill with its initial-margin check (:meth:`Fills.fill`), the protocol's own
takeovers (:meth:`Fills.take_position`), and THE pre-trade check (:meth:`Fills.check`), which both the
engine's ``TradeFilled`` and the service's what-if (:meth:`Fills.what_if`) go through. Also the
``MarginModeChanged`` input and the rules of each margin mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from fluidmargin.core.units import MAX_QUANTUMS, Rounding, div_round
from fluidmargin.engine.book import Book
from fluidmargin.engine.confirm import Confirm
from fluidmargin.engine.funding import Funding
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options import OptionBook
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.state import BANKRUPT, LIQUIDATING, STATUS_NAMES
from fluidmargin.engine.types import ISOLATED, MODE_NAMES, PORTFOLIO, MarketRecord, Overflow
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc

_FILL_INTS = ("size_delta_base_q", "price_q", "fee_quote_q", "isolated_margin_quote_q", "leverage")


class FillCheck(NamedTuple):
    """The pre-trade check's verdict on a perpetual fill: why it is refused (empty: go on to the dry run),
    the position it lands in (-1: a new one), whether it is isolated, and whether it adds risk."""

    reason: str
    p: int = -1
    iso: bool = False
    increases: bool = False


class WhatIf(NamedTuple):
    """A fill tried on the live state (see :meth:`Fills.what_if`): why it is refused (empty: accepted),
    whether the state inside the block is as after it, and the check's position, mode and direction."""

    reason: str
    applied: bool
    check: FillCheck


class Fills:
    """Fills, takeovers and margin modes over the ledger."""

    def __init__(
        self,
        led: Ledger,
        oracles: OracleState,
        funding: Funding,
        book: Book,
        screen: Screen,
        confirm: Confirm,
        opt: OptionBook,
    ) -> None:
        self.led = led
        self.oracles = oracles
        self.funding = funding
        self.book = book
        self.screen = screen
        self.confirm = confirm
        self.opt = opt

    # --- the pre-trade check ---------------------------------------------------------------------------

    def mode_refuses(self, r: int, fill_mode: str) -> str:
        """Why the account's margin mode refuses a perp fill in ``fill_mode`` (cross or isolated)."""
        mode = int(self.led.acct_mode[r])
        if mode == PORTFOLIO and fill_mode == "isolated":
            return "isolated positions are not allowed in portfolio margin mode"
        if mode == ISOLATED and fill_mode != "isolated":
            return "account is in isolated margin mode: cross fills are refused"
        return ""

    def check(self, r: int, m: MarketRecord, e: ev.TradeFilled) -> FillCheck:
        """Everything a perpetual fill must pass before it is tried (the engine's and the what-if's)."""
        led = self.led
        if led.is_vault(e.account_id):
            return FillCheck("the backstop vault trades only by taking over liquidations")
        for name in _FILL_INTS:
            v = getattr(e, name)
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) > MAX_QUANTUMS // 4:
                return FillCheck(f"{name} must be an integer within bounds (would overflow)")
        if e.size_delta_base_q == 0:
            return FillCheck("size_delta_base_q must be non-zero")
        if e.price_q <= 0:
            return FillCheck("price must be positive")
        if e.fee_quote_q < 0 or e.isolated_margin_quote_q < 0:
            return FillCheck("fee and isolated margin must be non-negative")
        if e.margin_mode not in ("cross", "isolated"):
            return FillCheck(f"margin_mode must be cross or isolated, not {e.margin_mode!r}")
        max_lev = m.spec.margin.brackets[0].max_leverage
        if not 1 <= e.leverage <= max_lev:
            return FillCheck(f"leverage must be in [1, {max_lev}]")
        if m.mark_q is None:
            return FillCheck(f"market {e.market} has no valid mark price yet")
        if led.status[r] in (LIQUIDATING, BANKRUPT):
            return FillCheck(f"account is {STATUS_NAMES[int(led.status[r])]}")
        mode_why = self.mode_refuses(r, e.margin_mode)
        if mode_why:
            return FillCheck(mode_why)
        iso = e.margin_mode == "isolated"
        p = led.find_pos(r, m.i)
        old_size = int(led.pos_size[p]) if p >= 0 else 0
        if p >= 0 and old_size != 0 and bool(led.pos_iso[p]) != iso:
            return FillCheck("position is held in the other margin mode; close it first", p, iso)
        new_size = old_size + e.size_delta_base_q
        if abs(new_size) > MAX_QUANTUMS // 4:
            return FillCheck("position size would overflow", p, iso)
        increases = abs(new_size) > abs(old_size) or (
            old_size != 0 and (new_size > 0) != (old_size > 0) and new_size != 0
        )
        if increases:
            halted = self.oracles.halted
            if m.spec.symbol in halted:
                return FillCheck(
                    f"market {m.spec.symbol} is halted ({halted[m.spec.symbol]}): no new risk", p, iso, True
                )
            blocked = self.oracles.blocked([m.spec.base_asset], orc.Action.OPEN) or (
                "" if iso else self.book.valuation_blocked(r)
            )
            if blocked:
                return FillCheck(blocked, p, iso, True)
        if e.isolated_margin_quote_q and not iso:
            return FillCheck("isolated margin given for a cross fill", p, iso, increases)
        if e.isolated_margin_quote_q > int(led.bal[r, led.quote_c]):
            return FillCheck("insufficient quote balance for the isolated margin", p, iso, increases)
        return FillCheck("", p, iso, increases)

    @contextmanager
    def what_if(self, r: int, e: ev.TradeFilled) -> Iterator[WhatIf]:
        """Try fill ``e`` on row ``r`` with the engine's own checks, on the funding index as it stands, and
        roll it back on leaving the block (nothing is emitted). Inside, the state is as after the fill
        where ``applied``: accepted, or refused by the initial-margin check after it was applied."""
        led = self.led
        m = led.market_idx.get(e.market)
        if m is None:
            s = self.opt.idx.get(e.market)
            with led.savepoint(r):
                reason = f"unknown market {e.market!r}" if s is None else self.opt.fill(r, s, e, [])
                yield WhatIf(reason, not reason, FillCheck(reason))
            return
        chk = self.check(r, m, e)
        if chk.reason:
            yield WhatIf(chk.reason, False, chk)
            return
        with led.savepoint(r):
            reason = self.fill(r, chk.p, m, e, chk.iso, chk.increases, [])
            yield WhatIf(reason, not reason or reason.startswith("pre-trade check"), chk)

    # --- fills -----------------------------------------------------------------------------------------

    def on_trade_filled(self, e: ev.TradeFilled, out: list[ev.Event]) -> str:
        led = self.led
        r = led.row_of.get(e.account_id)
        if r is None:
            return f"unknown account {e.account_id}"
        if led.is_vault(e.account_id):
            return "the backstop vault trades only by taking over liquidations"
        m = led.market_idx.get(e.market)
        if m is None:
            s = self.opt.idx.get(e.market)
            if s is None:
                return f"unknown market {e.market!r}"
            reason = self.opt.fill(r, s, e, out)
            if not reason:
                self.screen.resync(r)
                self.confirm.evaluate(led.buckets_of(r), out)
            return reason
        # the check, then a dry run on the funding index as it stands: a refused fill changes nothing at all
        with self.what_if(r, e) as w:
            pass
        if w.reason:
            return w.reason
        # for real: materialise funding to now (a pass over the market), then settle and fill
        touched = self.screen.accrue_pass(m)
        with led.savepoint(r) as sp:
            reason = self.fill(r, w.check.p, m, e, w.check.iso, w.check.increases, out)
            if not reason:
                sp.commit()
        self.screen.resync(r)
        self.confirm.evaluate([*touched, *led.buckets_of(r)], out)
        return reason

    def fill(
        self, r: int, p: int, m: MarketRecord, e: ev.TradeFilled, iso: bool, increases: bool, out: list[ev.Event]
    ) -> str:
        """Apply a fill to account ``r`` and run the pre-trade check; the caller rolls back on a reason."""
        led, book = self.led, self.book
        if p < 0:
            p = led.new_pos(r, m)
        self.funding.settle(p, out, emit=False)
        led.pos_iso[p] = 1 if iso else 0
        led.pos_lev[p] = e.leverage
        led.bal[r, led.quote_c] -= e.isolated_margin_quote_q
        led.pos_iso_margin[p] += e.isolated_margin_quote_q
        try:
            self.trade(p, e.size_delta_base_q, e.price_q, e.fee_quote_q)
        except Overflow as exc:
            return str(exc)
        if increases:
            risk = book.iso_risk(p) if iso else book.cross_risk(r)
            im = book.position_initial(p) if iso else book.cross_initial(r)
            if risk.equity_quote_q < im:
                return f"pre-trade check: equity {risk.equity_quote_q} below initial margin {im} after the fill"
        if e.isolated_margin_quote_q:
            # margin moved out of the cross bucket is withdrawn from it: it must keep initial margin with
            # unrealised profit weighted as for a withdrawal
            headroom = book.withdrawal_headroom_quote_q(r)
            if headroom < 0:
                im = book.cross_initial(r)
                return f"pre-trade check: cross equity {im + headroom} below initial margin {im} after the move"
        return ""

    def take_position(
        self, r: int, m: MarketRecord, delta: int, price_q: int, out: list[ev.Event], check_im: bool = True
    ) -> str:
        """Add ``delta`` of market ``m`` to account ``r``'s cross position at ``price_q`` (no fee).

        With ``check_im``, an increase must leave cross equity at or above initial margin; on a
        reason nothing has changed.
        """
        led = self.led
        with led.savepoint(r) as sp:
            p = led.find_pos(r, m.i)
            if p < 0:
                p = led.new_pos(r, m)
                led.pos_lev[p] = min(10, m.spec.margin.brackets[0].max_leverage)
            self.funding.settle(p, out, emit=False)
            led.pos_iso[p] = 0
            old = int(led.pos_size[p])
            try:
                self.trade(p, delta, price_q, 0)
            except Overflow as exc:
                return str(exc)
            new = int(led.pos_size[p])
            increases = abs(new) > abs(old) or (old and new and (old > 0) != (new > 0))
            if check_im and increases:
                risk, im = self.book.cross_risk(r), self.book.cross_initial(r)
                if risk.equity_quote_q < im:
                    return f"equity {risk.equity_quote_q} below initial margin {im} after taking {delta}"
            sp.commit()
        return ""

    def trade(self, p: int, delta: int, price_q: int, fee_q: int, release_iso: bool = True) -> int:
        """Apply a fill to position ``p`` at ``price_q``; returns realised PnL (quote quantums).

        Cash of the fill: a buyer pays ceil(delta * price), a seller gets floor(|delta| * price).
        Reducing releases cost pro rata, rounded so the realised PnL rounds down.
        """
        led = self.led
        m = led.markets[int(led.pos_mkt[p])]
        sd = m.spec.size_decimals
        r = int(led.pos_acct[p])
        size = int(led.pos_size[p])
        cost = int(led.pos_cost[p])
        realized = 0
        closing = 0 if size == 0 or (size > 0) == (delta > 0) else min(abs(delta), abs(size))
        if closing:
            sign = 1 if size > 0 else -1
            # cash in (out for a short) of closing `closing` units
            close_cash = (
                margin.value_quote_q(closing, price_q, sd, Rounding.FLOOR)
                if sign > 0
                else -margin.value_quote_q(closing, price_q, sd, Rounding.CEIL)
            )
            released = div_round(cost * closing, abs(size), Rounding.CEIL)  # long: more cost, short: less credit
            realized = close_cash - released
            cost -= released
            size -= sign * closing
            delta += sign * closing
        if delta:
            open_cash = (
                margin.value_quote_q(delta, price_q, sd, Rounding.CEIL)
                if delta > 0
                else -margin.value_quote_q(-delta, price_q, sd, Rounding.FLOOR)
            )
            cost += open_cash
            size += delta
        old_long = max(int(led.pos_size[p]), 0)
        lim = MAX_QUANTUMS // 4
        if abs(cost) > lim or abs(int(led.bal[r, led.quote_c]) + realized - fee_q) > lim:
            raise Overflow("the fill's value would overflow")
        led.pos_size[p] = size
        led.pos_cost[p] = cost if size else 0
        if size == 0:
            realized += cost  # any cost left by rounding is realised with the close (cost is then 0)
        m.long_oi_base_q += max(size, 0) - old_long
        # realised PnL and fee move between the account (or its isolated margin) and the ledgers
        if led.pos_iso[p]:
            led.pos_iso_margin[p] += realized - fee_q
            if size == 0 and release_iso:
                led.bal[r, led.quote_c] += int(led.pos_iso_margin[p])
                led.pos_iso_margin[p] = 0
        else:
            led.bal[r, led.quote_c] += realized - fee_q
        led.clearing_q -= realized
        led.fees_q += fee_q
        return realized

    # --- margin modes ------------------------------------------------------------------------------------

    def on_margin_mode_changed(self, e: ev.MarginModeChanged, out: list[ev.Event]) -> str:
        """Switch an account's margin mode; refused if it would leave equity below initial margin.

        Rules: options need portfolio mode; portfolio mode holds no isolated positions; isolated mode
        holds no cross positions. A blocked portfolio valuation refuses any switch.
        """
        led, book, opt = self.led, self.book, self.opt
        r = led.row_of.get(e.account_id)
        if r is None:
            return f"unknown account {e.account_id}"
        if led.is_vault(e.account_id):
            return "the backstop vault keeps standard margin"
        if e.mode not in MODE_NAMES:
            return f"mode must be one of {', '.join(MODE_NAMES)}, not {e.mode!r}"
        new = MODE_NAMES.index(e.mode)
        old = int(led.acct_mode[r])
        if new == old:
            return f"account is already in {e.mode} margin mode"
        if led.status[r] in (LIQUIDATING, BANKRUPT):
            return f"account is {STATUS_NAMES[int(led.status[r])]}"
        has_iso = any(led.pos_size[p] and led.pos_iso[p] for p in led.positions_of(r))
        if new != PORTFOLIO and opt.has_positions(r):
            return "option positions require portfolio margin mode: close them first"
        if new == PORTFOLIO and has_iso:
            return "close isolated positions first: portfolio mode margins every position together"
        if new == ISOLATED and book.has_cross_perps(r):
            return "close cross positions first: isolated mode holds isolated positions only"
        blocked = book.valuation_blocked(r) or self.oracles.blocked(book.cross_assets(r), orc.Action.OPEN)
        if blocked:
            return blocked
        led.acct_mode[r] = new
        why = book.valuation_blocked(r)
        risk, im = book.cross_risk(r), book.cross_initial(r)
        if why or risk.equity_quote_q < im:
            led.acct_mode[r] = old
            return why or f"equity {risk.equity_quote_q} would be below initial margin {im} in {e.mode} mode"
        if new == PORTFOLIO:
            opt.pm_rows.add(r)
        else:
            opt.pm_rows.discard(r)
            opt.blocked.pop(r, None)
        self.screen.resync(r)
        self.confirm.evaluate(led.buckets_of(r), out)
        return ""
