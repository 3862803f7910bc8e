"""Portfolio valuation: a portfolio account's exact equity and its portfolio-margin requirements.

Owns the valuation of options (Black-76 at the published vol; a value rounds down: longs worth less,
shorts owe more) and the margin of :func:`risk.options.portfolio.portfolio_margin` per underlying (its
perps and options; the forward is the underlying's index, the rate zero), netted across underlyings by
:func:`risk.options.portfolio.cross_portfolio_margin` with the preset's :data:`CROSS_ASSET` offsets and
floor (requirements round up), and a cache of recent valuations. An account holding a series without a
published vol, or whose underlying has no index, cannot be valued: it is *blocked* (and says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fluidmargin.core.units import NS_PER_S, PPM, PRICE_SCALE, QUOTE_SCALE
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options.positions import OptionPositions, Series
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.ports import OptionsHost
from fluidmargin.risk.options import portfolio as pm
from fluidmargin.risk.options.black76 import black76_greeks, year_fraction

PM_PARAMS: dict[str, pm.PortfolioMarginParams] = {"derive_pm2": pm.DERIVE_PM2}
CROSS_ASSET: dict[str, pm.CrossAssetParams] = {
    # BTC/ETH: 70 % of the pair's co-movement netting is credited. Their daily returns have been ~0.8-0.9
    # correlated; 0.7 keeps a haircut for the days they decouple. Any pair not listed nets nothing.
    # Floor: a netted account never needs less than half of its largest single-underlying scaled loss
    # (plus every contingency), however well the offsets hedge it.
    "derive_pm2": pm.CrossAssetParams(offset_rates=(("BTC", "ETH", 0.7),), floor_fraction=0.5),
}
_CACHE_MAX = 4096
QUOTE_SCALE_F: float = float(QUOTE_SCALE)


@dataclass(slots=True)
class OptionValue:
    """One option position valued now (floats for risk display; ``value_quote_q`` exact, rounded down)."""

    symbol: str
    size_base_q: int
    vol: float
    price: float  # per contract
    value_quote_q: int
    delta: float  # per position, in units of the underlying
    gamma: float
    vega: float  # per 1.00 vol
    theta: float  # per year, time passing


@dataclass(slots=True)
class PortfolioFigures:
    """A portfolio account's exact figures and the float model's results per underlying (and netted)."""

    equity_quote_q: int
    mm_quote_q: int
    im_quote_q: int
    blocked: str
    options: list[OptionValue] = field(default_factory=list)
    results: dict[str, pm.PortfolioMarginResult] = field(default_factory=dict)
    cross: pm.CrossPortfolioMarginResult | None = None  # the netted requirements (None: nothing held)


# mm, im, blocked, option values, per-underlying results, netted result
Valued = tuple[
    int, int, str, list[OptionValue], dict[str, pm.PortfolioMarginResult], pm.CrossPortfolioMarginResult | None
]


def floor_q(x: float) -> int:
    return math.floor(float(x) * QUOTE_SCALE_F)  # an option's value: down (longs worth less, shorts owe more)


def ceil_q(x: float) -> int:
    return math.ceil(max(float(x), 0.0) * QUOTE_SCALE_F)  # a requirement: up


class PortfolioValuer:
    """Values portfolio rows from the ledger, the oracle indices and the option positions."""

    def __init__(self, host: OptionsHost, led: Ledger, oracles: OracleState, held: OptionPositions) -> None:
        self.host = host
        self.led = led
        self.oracles = oracles
        self.held = held
        self.params = PM_PARAMS[led.cfg.portfolio_margin]
        self.cross_params = CROSS_ASSET[led.cfg.portfolio_margin]
        self._cache: dict[Any, Valued] = {}

    def perps(self, r: int) -> tuple[int, dict[str, tuple[float, float]], list[tuple[int, int, int | None]]]:
        """Exact perp P&L of row ``r`` (quote quantums), per underlying (contracts, mark), and its perps."""
        led, host = self.led, self.host
        upnl = 0
        perps: dict[str, tuple[float, float]] = {}
        key_perps = []
        for p in led.positions_of(r):
            size = int(led.pos_size[p])
            if size == 0 or led.pos_iso[p]:
                continue
            m = led.markets[int(led.pos_mkt[p])]
            upnl += host.position_risk(p).upnl_quote_q
            a = m.spec.base_asset
            amt, _px = perps.get(a, (0.0, 0.0))
            mark = float(m.mark_q or 0) / PRICE_SCALE
            perps[a] = (amt + size / 10**m.spec.size_decimals, mark)
            key_perps.append((m.i, size, m.mark_q))
        return upnl, perps, key_perps

    def figures(self, r: int) -> PortfolioFigures:
        """Exact equity (collateral + perp PnL + option values, rounded down) and PM requirements (up)."""
        host, led, ora = self.host, self.led, self.oracles
        eq = sum(host.collateral_value_quote_q(c, int(led.bal[r, c])) for c in range(len(led.coll)))
        upnl, perps, key_perps = self.perps(r)
        eq += upnl
        opts = self.held.positions(r)
        key = (
            led.now_ns,
            tuple(key_perps),
            tuple((s.i, n, self.held.vol_ppm(s), ora.index_q.get(s.spec.underlying)) for s, n in opts),
            tuple(sorted((a, ora.index_q.get(a)) for a in perps)),
        )
        hit = self._cache.get(key)
        if hit is None:
            hit = self._value(perps, opts)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
        mm, im, blocked, values, results, cross = hit
        return PortfolioFigures(
            eq + sum(v.value_quote_q for v in values), mm, im, blocked, list(values), dict(results), cross
        )

    def portfolios(
        self, perps: dict[str, tuple[float, float]], opts: list[tuple[Series, int]]
    ) -> tuple[str, list[OptionValue], dict[str, pm.Portfolio]]:
        """The model's portfolio per underlying (no cash: equity is exact), option values, or why blocked."""
        led, ora = self.led, self.oracles
        blocked = ""
        values: list[OptionValue] = []
        by_asset: dict[str, dict[int, list[pm.OptionHolding]]] = {}
        for s, n in opts:
            spec = s.spec
            index = ora.index_q.get(spec.underlying)
            vol = self.held.vol_ppm(s)
            if index is None:
                blocked = blocked or f"no index price for {spec.underlying} (holds {spec.symbol})"
                continue
            if vol is None:
                blocked = blocked or f"no mark vol published for {spec.symbol}"
                continue
            f, k, v = index / PRICE_SCALE, spec.strike_price_q / PRICE_SCALE, vol / PPM
            t = max(year_fraction(led.now_ns, spec.expiry_ns), 0.0)
            g = black76_greeks(f, k, t, v, 1.0, spec.is_call)
            amount = n / 10**spec.size_decimals
            price = float(g.price)
            values.append(
                OptionValue(
                    spec.symbol, n, v, price, floor_q(price * amount), float(g.delta) * amount,
                    float(g.gamma) * amount, float(g.vega) * amount, float(g.theta) * amount,
                )
            )  # fmt: skip
            sec = max(spec.expiry_ns - led.now_ns, 0) // NS_PER_S
            by_asset.setdefault(spec.underlying, {}).setdefault(sec, []).append(
                pm.OptionHolding(k, spec.is_call, amount, v)
            )
        portfolios: dict[str, pm.Portfolio] = {}
        if not blocked:
            for a in sorted(set(by_asset) | set(perps)):
                index = ora.index_q.get(a)
                if index is None:
                    blocked = f"no index price for {a}"
                    break
                spot = index / PRICE_SCALE
                amt, mark = perps.get(a, (0.0, 0.0))
                expiries = tuple(
                    pm.ExpiryHolding(sec, spot, 0.0, tuple(hs)) for sec, hs in sorted(by_asset.get(a, {}).items())
                )
                portfolios[a] = pm.Portfolio(
                    spot_price=spot, perp_amount=amt, perp_price=mark or spot, expiries=expiries
                )
        return blocked, values, portfolios

    def _cross_for(self, assets: tuple[str, ...]) -> pm.CrossAssetParams:
        """The preset's offsets restricted to the pairs an account holds (the model refuses any other)."""
        c = self.cross_params
        held = set(assets)
        rates = tuple((a, b, x) for a, b, x in c.offset_rates if a in held and b in held)
        return pm.CrossAssetParams(offset_rates=rates, floor_fraction=c.floor_fraction)

    def _value(self, perps: dict[str, tuple[float, float]], opts: list[tuple[Series, int]]) -> Valued:
        blocked, values, portfolios = self.portfolios(perps, opts)
        mm = im = 0
        results: dict[str, pm.PortfolioMarginResult] = {}
        cross = None
        if not blocked and portfolios:
            # each underlying stressed alone, then netted by the preset's correlation offsets (never below its floor)
            cross = pm.cross_portfolio_margin(portfolios, self.params, self._cross_for(tuple(sorted(portfolios))))
            for a, res in cross.by_underlying:
                if not (
                    math.isfinite(res.maintenance_requirement_quote) and math.isfinite(res.initial_requirement_quote)
                ):
                    blocked = f"the portfolio model gave no finite requirement for {a}"
                    break
                results[a] = res
            if not blocked and not (
                math.isfinite(cross.maintenance_requirement_quote) and math.isfinite(cross.initial_requirement_quote)
            ):
                blocked = "the portfolio model gave no finite netted requirement"
            if not blocked:
                mm = ceil_q(cross.maintenance_requirement_quote)
                im = ceil_q(cross.initial_requirement_quote)
        if blocked:
            mm = im = 0
            cross = None
        return mm, im, blocked, values, results, cross
