"""Liquidation of a portfolio account: largest contributor to the worst scenario first, then a delta hedge.

Owns the contributions of each position to its underlying's worst scenario, closing an option with the
clearing at its model mark (with a penalty), hedging an underlying's remaining delta with its first
perpetual (the protocol takes the other side: the waterfall executes it), and the loop that repeats
both until the account reaches the target health (or holds nothing). Perpetual closes go through the
waterfall's sizing (:class:`~fluidmargin.engine.waterfall.CloseAtMark`).
"""

from __future__ import annotations

import math

from fluidmargin.core.units import NS_PER_S, PPM, PRICE_SCALE, Rounding
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options.positions import OptionPositions, Series
from fluidmargin.engine.options.valuation import PortfolioValuer
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.ports import OptionsHost
from fluidmargin.engine.types import Bucket
from fluidmargin.engine.waterfall import CloseAtMark
from fluidmargin.model import events as ev
from fluidmargin.risk.options import portfolio as pm
from fluidmargin.risk.options.black76 import black76_price, year_fraction
from fluidmargin.risk.perp import margin


class PmLiquidator:
    """Liquidates portfolio rows."""

    def __init__(
        self, host: OptionsHost, led: Ledger, oracles: OracleState, held: OptionPositions, valuer: PortfolioValuer
    ) -> None:
        self.host = host
        self.led = led
        self.oracles = oracles
        self.held = held
        self.valuer = valuer

    def contributions(self, r: int, skip_perps: set[str]) -> list[tuple[float, str, int]]:
        """Each position's P&L in its underlying's worst scenario, most negative first (ties: by name).

        ``(pnl, symbol, handle)``: handle is the perp's position slot, or -1 - series index for an option.
        """
        led, ora = self.led, self.oracles
        fig = self.valuer.figures(r)
        worst: dict[str, int] = {}
        for a, res in fig.results.items():
            pnls = res.scenario_pnls_quote
            worst[a] = min(range(len(pnls)), key=lambda j: (pnls[j], j))
        out: list[tuple[float, str, int]] = []
        for p in led.positions_of(r):
            size = int(led.pos_size[p])
            if size == 0 or led.pos_iso[p]:
                continue
            m = led.markets[int(led.pos_mkt[p])]
            a = m.spec.base_asset
            if a in skip_perps or a not in worst:
                continue
            sc = self.valuer.params.scenarios[worst[a]]
            amount = size / 10**m.spec.size_decimals
            pnl = amount * (sc.spot_shock - 1.0) * (m.mark_q or 0) / PRICE_SCALE * sc.dampening
            out.append((pnl, m.spec.symbol, p))
        for s, n in self.held.positions(r):
            a = s.spec.underlying
            index = ora.index_q.get(a)
            vol = self.held.vol_ppm(s)
            if a not in worst or index is None or vol is None:
                continue
            spot = index / PRICE_SCALE
            sec = max(s.spec.expiry_ns - led.now_ns, 0) // NS_PER_S
            hold = pm.OptionHolding(
                s.spec.strike_price_q / PRICE_SCALE, s.spec.is_call, n / 10**s.spec.size_decimals, vol / PPM
            )
            res = pm.portfolio_margin(
                pm.Portfolio(spot_price=spot, expiries=(pm.ExpiryHolding(sec, spot, 0.0, (hold,)),)), self.valuer.params
            )
            out.append((res.scenario_pnls_quote[worst[a]], s.spec.symbol, -1 - s.i))
        out.sort()
        return out

    def reached(self, r: int) -> bool:
        risk = self.host.cross_risk(r)
        return risk.equity_quote_q * PPM >= (PPM + self.led.cfg.liquidation_target_ppm) * risk.mm_quote_q

    def liquidate(self, b: Bucket, out: list[ev.Event]) -> None:
        """Reduce the largest contributor to the worst scenario, then hedge the remaining delta with the
        perpetual; repeat until the account reaches the target health (or holds nothing)."""
        host, led = self.host, self.led
        r = b.row
        closer = CloseAtMark()
        hedged: set[str] = set()
        for _ in range(2 * (len(led.positions_of(r)) + len(self.held.pos.get(r, {}))) + 4):
            if self.reached(r) or self.valuer.figures(r).blocked:
                break
            skip = {a for a in hedged if a in self.held.assets_of(r)}  # a hedge stays while its options do
            cands = self.contributions(r, skip)
            if not cands:
                break
            _pnl, _sym, h = cands[0]
            if h >= 0:
                closer.close(host, h, out, isolated=False)
            else:
                self.close_option(r, self.held.series[-1 - h], out)
            if self.reached(r):
                break
            for a in sorted(self.held.assets_of(r)):
                if self.hedge(r, a, out):
                    hedged.add(a)
        CloseAtMark.cover_cross_shortfall(host, b, out)

    def mark_price_q(self, s: Series, long: bool) -> int:
        """The series' model price per contract in price quantums, rounded against the holder."""
        led, ora = self.led, self.oracles
        index = ora.index_q[s.spec.underlying]
        vol = self.held.vol_ppm(s)
        assert vol is not None
        t = max(year_fraction(led.now_ns, s.spec.expiry_ns), 0.0)
        price = float(
            black76_price(index / PRICE_SCALE, s.spec.strike_price_q / PRICE_SCALE, t, vol / PPM, 1.0, s.spec.is_call)
        )
        x = price * PRICE_SCALE
        return max(math.floor(float(x)), 0) if long else math.ceil(float(x))

    def close_option(self, r: int, s: Series, out: list[ev.Event]) -> None:
        """Close account ``r``'s whole position in ``s`` with the clearing at the model mark, with a penalty."""
        host, led = self.host, self.led
        n = self.held.pos[r][s.i]
        sd = s.spec.size_decimals
        price = self.mark_price_q(s, n > 0)
        cash = (
            margin.value_quote_q(n, price, sd, Rounding.FLOOR)
            if n > 0
            else -margin.value_quote_q(-n, price, sd, Rounding.CEIL)
        )  # received (+) by a holder, paid (-) by a writer
        led.bal[r, led.quote_c] += cash
        led.clearing_q -= cash
        self.held.set(r, s, 0)
        premium = margin.value_quote_q(abs(n), price, sd, Rounding.CEIL)
        fee_full = -(-premium * s.spec.liquidation_fee_ppm // PPM)  # ceil
        fee = min(fee_full, max(host.cross_risk(r).equity_quote_q, 0))
        led.bal[r, led.quote_c] -= fee
        aid = int(led.acct_id[r])
        out.append(ev.PositionLiquidated(led.now_ns, aid, s.spec.symbol, n, price, cash, fee))
        host.wf.fund_fee(fee, aid, out)

    def hedge(self, r: int, asset: str, out: list[ev.Event]) -> bool:
        """Trade the asset's first perpetual so the account's delta in ``asset`` is (about) zero."""
        host, led = self.host, self.led
        mkts = led.markets_of_asset.get(asset, [])
        mark = mkts[0].mark_q if mkts else None
        if mark is None:
            return False
        m = mkts[0]
        fig = self.valuer.figures(r)
        delta = sum(v.delta for v in fig.options if self.held.idx[v.symbol].spec.underlying == asset)
        for p in led.positions_of(r):
            if led.pos_size[p] and not led.pos_iso[p] and led.markets[int(led.pos_mkt[p])].spec.base_asset == asset:
                delta += int(led.pos_size[p]) / 10 ** led.markets[int(led.pos_mkt[p])].spec.size_decimals
        h = int(-delta * 10**m.spec.size_decimals)  # toward zero: never over-hedge
        if h == 0:
            return False
        p = led.find_pos(r, m.i)
        if p < 0:
            p = led.new_pos(r, m)
            led.pos_lev[p] = min(10, m.spec.margin.brackets[0].max_leverage)
        host.settle_funding(p, out)
        host.trade(p, h, mark, 0)
        host.wf.take_over(p, -h, mark)  # the protocol took the other side: the waterfall executes it
        out.append(ev.PortfolioHedged(led.now_ns, int(led.acct_id[r]), m.spec.symbol, h, mark, repr(delta)))
        return True
