"""The option book: a component of the engine for option series and portfolio-margin accounts.

Owns the option inputs and money: ``VolObserved`` (a published mark vol point), option fills (a premium
is exchanged exactly: a buyer pays ceil(size x price), a seller receives floor; the pre-trade check uses
the portfolio model), expiry settlement (floor(size x intrinsic) to holders, ceil from writers; the
clearing is the counterparty of both, so the ledgers stay conserved to the quantum), and whether a
portfolio row can be valued (a ``ValuationChanged`` event says so and why). A blocked account opens no
new risk, withdraws nothing, switches no mode and is not liquidated; it is re-valued on every vol, price
and clock event until it can be again.

It composes the state (:mod:`.positions`), the valuation (:mod:`.valuation`), the delta-gamma screen
(:mod:`.screen`) and portfolio liquidation (:mod:`.liquidation`), and reaches the engine only through
:class:`~fluidmargin.engine.ports.OptionsHost`.
"""

from __future__ import annotations

import math
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, PPM, PRICE_SCALE, Rounding, parse_decimal
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options.liquidation import PmLiquidator
from fluidmargin.engine.options.positions import OptionPositions, RowSaved, Series
from fluidmargin.engine.options.screen import PmScreen
from fluidmargin.engine.options.valuation import PortfolioFigures, PortfolioValuer
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.ports import OptionsHost
from fluidmargin.engine.state import BANKRUPT, LIQUIDATING, STATUS_NAMES
from fluidmargin.engine.types import MODE_NAMES, PORTFOLIO, Bucket
from fluidmargin.model import events as ev
from fluidmargin.risk.options import portfolio as pm
from fluidmargin.risk.options.volsurface import DEFAULT_MAX_VOL, point_reason
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc

VOL_DECIMALS = 6  # vols are stored in ppm (0.65 -> 650_000)


class OptionBook:
    """Series, option positions, mark vols, margin modes' portfolio side, settlement and PM liquidation."""

    def __init__(self, host: OptionsHost, led: Ledger, oracles: OracleState) -> None:
        self.host = host
        self.led = led
        self.oracles = oracles
        self.held = OptionPositions(led.cfg.options)
        self.valuer = PortfolioValuer(host, led, oracles, self.held)
        self.pm_screen = PmScreen(host, led, oracles, self.held, self.valuer)
        self.liquidator = PmLiquidator(host, led, oracles, self.held, self.valuer)

    # --- the state, as the book's own attributes ---------------------------------------------------------

    @property
    def series(self) -> list[Series]:
        return self.held.series

    @property
    def idx(self) -> dict[str, Series]:
        return self.held.idx

    @property
    def vols(self) -> dict[tuple[str, int, int], tuple[int, int, str]]:
        return self.held.vols

    @property
    def pos(self) -> dict[int, dict[int, int]]:
        return self.held.pos

    @property
    def blocked(self) -> dict[int, str]:
        return self.held.blocked

    @property
    def pm_rows(self) -> set[int]:
        return self.held.pm_rows

    @pm_rows.setter
    def pm_rows(self, rows: set[int]) -> None:
        self.held.pm_rows = rows

    @property
    def params(self) -> pm.PortfolioMarginParams:
        return self.valuer.params

    @property
    def screening(self) -> bool:
        """False: revalue every exposed portfolio account on every tick (the screen's twin)."""
        return self.pm_screen.screening

    @screening.setter
    def screening(self, on: bool) -> None:
        self.pm_screen.screening = on

    @property
    def screen_stats(self) -> dict[str, int]:
        return self.pm_screen.screen_stats

    # --- queries ------------------------------------------------------------------------------------------

    def positions(self, r: int) -> list[tuple[Series, int]]:
        return self.held.positions(r)

    def has_positions(self, r: int) -> bool:
        return self.held.has_positions(r)

    def assets_of(self, r: int) -> set[str]:
        return self.held.assets_of(r)

    def vol_ppm(self, s: Series) -> int | None:
        return self.held.vol_ppm(s)

    def rows_exposed(self, asset: str | None) -> list[int]:
        """Portfolio rows with a perp or option on ``asset`` (any asset: None), in row order."""
        return self.pm_screen.rows_exposed(asset)

    def figures(self, r: int) -> PortfolioFigures:
        """Exact equity (collateral + perp PnL + option values, rounded down) and PM requirements (up)."""
        return self.valuer.figures(r)

    def screen(self, asset: str | None, touched: list[Bucket]) -> list[Bucket]:
        """The buckets to confirm exactly on a tick of ``asset`` (a clock event: None); see :mod:`.screen`."""
        return self.pm_screen.screen(asset, touched)

    def liquidate(self, b: Bucket, out: list[ev.Event]) -> None:
        """Liquidate portfolio bucket ``b`` (see :mod:`.liquidation`)."""
        self.liquidator.liquidate(b, out)

    def update_blocked(self, r: int, out: list[ev.Event]) -> str:
        """Re-check whether portfolio row ``r`` can be valued; emit a ValuationChanged on a change."""
        reason = self.figures(r).blocked if r in self.pm_rows else ""
        if reason != self.blocked.get(r, ""):
            if reason:
                self.blocked[r] = reason
            else:
                self.blocked.pop(r, None)
            out.append(ev.ValuationChanged(self.led.now_ns, int(self.led.acct_id[r]), reason))
        return reason

    # --- vols -------------------------------------------------------------------------------------

    def on_vol(self, e: ev.VolObserved, out: list[ev.Event]) -> str:
        host, led = self.host, self.led
        if not isinstance(e.vol, str):
            return "vol must be decimal text"
        if e.underlying not in led.markets_of_asset:
            return f"unknown underlying {e.underlying!r}"
        try:
            vol_ppm = parse_decimal(e.vol, VOL_DECIMALS, Rounding.CEIL, "vol")
            vol_f = float(e.vol)
        except (ValidationError, ValueError):
            vol_ppm, vol_f = -1, math.nan
        why = point_reason(e.ts_ns, e.expiry_ns, e.strike_price_q / PRICE_SCALE, vol_f, DEFAULT_MAX_VOL)
        if why is not None:
            return f"{why.value}: mark vol {e.vol!r} for {e.underlying} expiry {e.expiry_ns} strike {e.strike_price_q}"
        if vol_ppm <= 0:
            return f"vol_not_positive: mark vol {e.vol!r} rounds to zero"
        pol = led.cfg.policy(e.underlying)
        if not 0 <= e.confidence_ppm <= PPM:
            return "confidence_ppm must be in [0, 1e6]"
        if e.confidence_ppm < pol.min_confidence_ppm:
            return f"low_confidence: {e.confidence_ppm} ppm below {pol.min_confidence_ppm}"
        key = (e.underlying, e.expiry_ns, e.strike_price_q)
        if not any((s.spec.underlying, s.spec.expiry_ns, s.spec.strike_price_q) == key for s in self.series):
            return (
                f"unknown series: no listed option on {e.underlying} at expiry {e.expiry_ns} strike {e.strike_price_q}"
            )
        self.vols[key] = (vol_ppm, e.ts_ns, e.source)
        host.evaluate([Bucket(r) for r in self.held.rows_holding_point(key) if r in self.pm_rows], out)
        return ""

    def vol_fresh(self, s: Series) -> str:
        """Empty if the series' vol may open risk now (published within the oracle's staleness), else why."""
        pt = self.vols.get((s.spec.underlying, s.spec.expiry_ns, s.spec.strike_price_q))
        if pt is None:
            return f"no mark vol published for {s.spec.symbol}"
        pol = self.led.cfg.policy(s.spec.underlying)
        v = orc.staleness(self.led.now_ns, pt[1], pol)
        if not orc.allowed(v, orc.Action.OPEN, pol):
            return f"mark vol of {s.spec.symbol} is {v.name}: open not allowed"
        return ""

    # --- fills --------------------------------------------------------------------------------------

    def fill(self, r: int, s: Series, e: ev.TradeFilled, out: list[ev.Event]) -> str:
        host, led = self.host, self.led
        spec = s.spec
        for name in ("size_delta_base_q", "price_q", "fee_quote_q", "isolated_margin_quote_q"):
            v = getattr(e, name)
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) > MAX_QUANTUMS // 4:
                return f"{name} must be an integer within bounds (would overflow)"
        if led.acct_mode[r] != PORTFOLIO:
            return f"option positions require portfolio margin mode (account is {MODE_NAMES[int(led.acct_mode[r])]})"
        if s.settled_price_q is not None or e.ts_ns >= spec.expiry_ns:
            return f"expired: option {spec.symbol} expired at {spec.expiry_ns}"
        if e.size_delta_base_q == 0:
            return "size_delta_base_q must be non-zero"
        if e.price_q <= 0:
            return "price must be positive"
        if e.fee_quote_q < 0:
            return "fee must be non-negative"
        if e.margin_mode != "cross" or e.isolated_margin_quote_q:
            return "options are margined with the portfolio, never isolated"
        if led.status[r] in (LIQUIDATING, BANKRUPT):
            return f"account is {STATUS_NAMES[int(led.status[r])]}"
        old = self.pos.get(r, {}).get(s.i, 0)
        new = old + e.size_delta_base_q
        if abs(new) > MAX_QUANTUMS // 4:
            return "position size would overflow"
        increases = abs(new) > abs(old) or (old != 0 and new != 0 and (old > 0) != (new > 0))
        if increases:
            blocked = host.oracle_blocked([spec.underlying], orc.Action.OPEN) or self.vol_fresh(s)
            if blocked:
                return blocked
        sd = spec.size_decimals
        d = e.size_delta_base_q
        cash = (
            margin.value_quote_q(d, e.price_q, sd, Rounding.CEIL)
            if d > 0
            else -margin.value_quote_q(-d, e.price_q, sd, Rounding.FLOOR)
        )  # what the account pays (+) or receives (-)
        if abs(int(led.bal[r, led.quote_c]) - cash - e.fee_quote_q) > MAX_QUANTUMS // 4:
            return "the fill's value would overflow"
        with led.savepoint(r) as sp:
            led.bal[r, led.quote_c] -= cash + e.fee_quote_q
            led.clearing_q += cash
            led.fees_q += e.fee_quote_q
            self.held.set(r, s, new)
            if increases:
                f = self.figures(r)
                if f.blocked:
                    return f"valuation blocked: {f.blocked}"
                if f.equity_quote_q < f.im_quote_q:
                    return (
                        f"pre-trade check: equity {f.equity_quote_q} below initial margin {f.im_quote_q} after the fill"
                    )
            sp.commit()
        return ""

    # --- settlement ----------------------------------------------------------------------------------

    def settle_due(self, out: list[ev.Event]) -> list[int]:
        """Settle every series whose expiry event time has reached, at its underlying's index now."""
        led, ora = self.led, self.oracles
        rows: set[int] = set()
        due = [s for s in self.series if s.settled_price_q is None and s.spec.expiry_ns <= led.now_ns]
        for s in sorted(due, key=lambda x: (x.spec.expiry_ns, x.spec.symbol)):
            spec = s.spec
            index = ora.index_q.get(spec.underlying)
            if index is None:
                continue  # no price to settle at yet: the next input tries again
            payoff = max(index - spec.strike_price_q, 0) if spec.is_call else max(spec.strike_price_q - index, 0)
            holders = sorted((int(led.acct_id[r]), r, d[s.i]) for r, d in self.pos.items() if d.get(s.i))
            ids, sizes, amounts = [], [], []
            for aid, r, n in holders:
                amt = (
                    margin.value_quote_q(n, payoff, spec.size_decimals, Rounding.FLOOR)
                    if n > 0
                    else -margin.value_quote_q(-n, payoff, spec.size_decimals, Rounding.CEIL)
                )
                led.bal[r, led.quote_c] += amt
                led.clearing_q -= amt
                self.held.set(r, s, 0)
                ids.append(aid)
                sizes.append(n)
                amounts.append(amt)
                rows.add(r)
            s.settled_price_q = index
            out.append(ev.OptionsSettled(led.now_ns, spec.symbol, index, payoff, ids, sizes, amounts))
        return sorted(rows)

    # --- dry runs and state --------------------------------------------------------------------------

    def save_row(self, r: int) -> RowSaved:
        return self.held.save_row(r)

    def restore_row(self, r: int, saved: RowSaved) -> None:
        self.held.restore_row(r, saved)

    def state(self) -> dict[str, Any]:
        return self.held.state()

    def load(self, st: dict[str, Any] | None) -> None:
        self.held.load(st)
