"""The option book and portfolio-margin accounts: a component of the engine, kept out of engine.py.

State it owns (all exact, all in the state hash and snapshots):

* the listed series (``EngineConfig.options``) and, per series, whether it has settled and at what price;
* per account row, its option positions (signed contracts, ``size_base_q`` at the series' decimals);
* the published mark vols, one point per listed (underlying, expiry, strike): vol in ppm, time, source;
* per portfolio account, why its valuation is blocked (a missing vol point or index), if it is.

Money: a premium is exchanged exactly at the fill (a buyer pays ceil(size x price), a seller receives
floor), settlement pays floor(size x intrinsic) to holders and charges ceil to writers; the clearing
is the counterparty of both, so the ledgers stay conserved to the quantum. Valuation is the float
model of :mod:`fluidmargin.risk.portfolio`; its figures enter the integer state rounded in the system's
favour: an option's mark value rounds down (longs worth less, shorts owe more), requirements round up.

The margin of a portfolio account is :func:`risk.portfolio.portfolio_margin` per underlying (its perps
and options), summed over underlyings (no cross-asset netting yet: that is the seam for
``risk.pm_batch``); the forward is the underlying's index and the rate zero.

A portfolio account that holds a series without a published vol (or whose underlying has no index)
cannot be valued: it is *blocked* (a ``ValuationChanged`` event says so and why). A blocked account
opens no new risk, withdraws nothing, switches no mode and is not liquidated (as with an oracle that
forbids liquidating); it is re-valued on every vol, price and clock event until it can be again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, NS_PER_S, PPM, PRICE_SCALE, QUOTE_SCALE, Rounding, parse_decimal
from fluidmargin.model import events as ev
from fluidmargin.model.instruments import OptionSpec
from fluidmargin.risk import margin
from fluidmargin.risk import oracle as orc
from fluidmargin.risk import portfolio as pm
from fluidmargin.risk.options import black76_greeks, black76_price, year_fraction
from fluidmargin.risk.volsurface import DEFAULT_MAX_VOL, point_reason

if TYPE_CHECKING:
    from fluidmargin.engine.engine import Bucket, Engine

STANDARD, ISOLATED, PORTFOLIO = 0, 1, 2
MODE_NAMES = ("standard", "isolated", "portfolio")
PM_PARAMS: dict[str, pm.PortfolioMarginParams] = {"derive_pm2": pm.DERIVE_PM2}
VOL_DECIMALS = 6  # vols are stored in ppm (0.65 -> 650_000)
_CACHE_MAX = 4096
_QUOTE_SCALE_F: float = float(QUOTE_SCALE)


@dataclass(slots=True)
class _Series:
    i: int
    spec: OptionSpec
    settled_price_q: int | None = None
    long_oi_base_q: int = 0


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
    """A portfolio account's exact figures and the float model's results per underlying."""

    equity_quote_q: int
    mm_quote_q: int
    im_quote_q: int
    blocked: str
    options: list[OptionValue] = field(default_factory=list)
    results: dict[str, pm.PortfolioMarginResult] = field(default_factory=dict)


def _floor_q(x: float) -> int:
    return math.floor(float(x) * _QUOTE_SCALE_F)  # an option's value: down (longs worth less, shorts owe more)


def _ceil_q(x: float) -> int:
    return math.ceil(max(float(x), 0.0) * _QUOTE_SCALE_F)  # a requirement: up


class OptionBook:
    """Series, option positions, mark vols, margin modes' portfolio side, settlement and PM liquidation."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.series = [_Series(i, s) for i, s in enumerate(eng.cfg.options)]
        self.idx = {s.spec.symbol: s for s in self.series}
        self.vols: dict[tuple[str, int, int], tuple[int, int, str]] = {}  # point -> (vol_ppm, ts_ns, source)
        self.pos: dict[int, dict[int, int]] = {}  # row -> series index -> signed contracts
        self.blocked: dict[int, str] = {}  # portfolio row -> why it cannot be valued
        self.pm_rows: set[int] = set()  # rows in portfolio mode (a projection of eng.acct_mode)
        self.params = PM_PARAMS[eng.cfg.portfolio_margin]
        self._cache: dict[Any, tuple[int, int, str, list[OptionValue], dict[str, pm.PortfolioMarginResult]]] = {}

    # --- queries ---------------------------------------------------------------------------------

    def positions(self, r: int) -> list[tuple[_Series, int]]:
        return [(self.series[i], n) for i, n in sorted(self.pos.get(r, {}).items()) if n]

    def has_positions(self, r: int) -> bool:
        return any(self.pos.get(r, {}).values())

    def assets_of(self, r: int) -> set[str]:
        return {s.spec.underlying for s, _n in self.positions(r)}

    def vol_ppm(self, s: _Series) -> int | None:
        pt = self.vols.get((s.spec.underlying, s.spec.expiry_ns, s.spec.strike_price_q))
        return None if pt is None else pt[0]

    def rows_exposed(self, asset: str | None) -> list[int]:
        """Portfolio rows with a perp or option on ``asset`` (any asset: None), in row order."""
        eng = self.eng
        out = []
        for r in sorted(self.pm_rows):
            if asset is None:
                if self.has_positions(r) or eng._has_cross_perps(r):
                    out.append(r)
                continue
            if asset in self.assets_of(r) or any(
                eng.pos_size[p] and eng.markets[int(eng.pos_mkt[p])].spec.base_asset == asset
                for p in eng.positions_of(r)
            ):
                out.append(r)
        return out

    def rows_holding_point(self, key: tuple[str, int, int]) -> list[int]:
        sis = {s.i for s in self.series if (s.spec.underlying, s.spec.expiry_ns, s.spec.strike_price_q) == key}
        return sorted(r for r, d in self.pos.items() if any(d.get(i) for i in sis))

    # --- valuation --------------------------------------------------------------------------------

    def figures(self, r: int) -> PortfolioFigures:
        """Exact equity (collateral + perp PnL + option values, rounded down) and PM requirements (up)."""
        eng = self.eng
        eq = sum(eng.collateral_value_quote_q(c, int(eng.bal[r, c])) for c in range(len(eng.coll)))
        perps: dict[str, tuple[float, float]] = {}
        key_perps = []
        for p in eng.positions_of(r):
            size = int(eng.pos_size[p])
            if size == 0 or eng.pos_iso[p]:
                continue
            m = eng.markets[int(eng.pos_mkt[p])]
            eq += eng.position_risk(p).upnl_quote_q
            a = m.spec.base_asset
            amt, _px = perps.get(a, (0.0, 0.0))
            mark = float(m.mark_q or 0) / PRICE_SCALE
            perps[a] = (amt + size / 10**m.spec.size_decimals, mark)
            key_perps.append((m.i, size, m.mark_q))
        opts = self.positions(r)
        key = (
            eng.now_ns,
            tuple(key_perps),
            tuple((s.i, n, self.vol_ppm(s), eng.index_q.get(s.spec.underlying)) for s, n in opts),
            tuple(sorted((a, eng.index_q.get(a)) for a in perps)),
        )
        hit = self._cache.get(key)
        if hit is None:
            hit = self._value(perps, opts)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
        mm, im, blocked, values, results = hit
        return PortfolioFigures(eq + sum(v.value_quote_q for v in values), mm, im, blocked, list(values), dict(results))

    def _value(
        self, perps: dict[str, tuple[float, float]], opts: list[tuple[_Series, int]]
    ) -> tuple[int, int, str, list[OptionValue], dict[str, pm.PortfolioMarginResult]]:
        eng = self.eng
        blocked = ""
        values: list[OptionValue] = []
        by_asset: dict[str, dict[int, list[pm.OptionHolding]]] = {}
        for s, n in opts:
            spec = s.spec
            index = eng.index_q.get(spec.underlying)
            vol = self.vol_ppm(s)
            if index is None:
                blocked = blocked or f"no index price for {spec.underlying} (holds {spec.symbol})"
                continue
            if vol is None:
                blocked = blocked or f"no mark vol published for {spec.symbol}"
                continue
            f, k, v = index / PRICE_SCALE, spec.strike_price_q / PRICE_SCALE, vol / PPM
            t = max(year_fraction(eng.now_ns, spec.expiry_ns), 0.0)
            g = black76_greeks(f, k, t, v, 1.0, spec.is_call)
            amount = n / 10**spec.size_decimals
            price = float(g.price)
            values.append(
                OptionValue(
                    spec.symbol, n, v, price, _floor_q(price * amount), float(g.delta) * amount,
                    float(g.gamma) * amount, float(g.vega) * amount, float(g.theta) * amount,
                )
            )  # fmt: skip
            sec = max(spec.expiry_ns - eng.now_ns, 0) // NS_PER_S
            by_asset.setdefault(spec.underlying, {}).setdefault(sec, []).append(
                pm.OptionHolding(k, spec.is_call, amount, v)
            )
        mm = im = 0
        results: dict[str, pm.PortfolioMarginResult] = {}
        if not blocked:
            # one underlying at a time, summed: the seam for risk.pm_batch's cross-asset netting
            for a in sorted(set(by_asset) | set(perps)):
                index = eng.index_q.get(a)
                if index is None:
                    blocked = f"no index price for {a}"
                    break
                spot = index / PRICE_SCALE
                amt, mark = perps.get(a, (0.0, 0.0))
                expiries = tuple(
                    pm.ExpiryHolding(sec, spot, 0.0, tuple(hs)) for sec, hs in sorted(by_asset.get(a, {}).items())
                )
                res = pm.portfolio_margin(
                    pm.Portfolio(spot_price=spot, perp_amount=amt, perp_price=mark or spot, expiries=expiries),
                    self.params,
                )
                if not (
                    math.isfinite(res.maintenance_requirement_quote) and math.isfinite(res.initial_requirement_quote)
                ):
                    blocked = f"the portfolio model gave no finite requirement for {a}"
                    break
                results[a] = res
                mm += _ceil_q(res.maintenance_requirement_quote)
                im += _ceil_q(res.initial_requirement_quote)
        if blocked:
            mm = im = 0
        return mm, im, blocked, values, results

    def update_blocked(self, r: int, out: list[ev.Event]) -> str:
        """Re-check whether portfolio row ``r`` can be valued; emit a ValuationChanged on a change."""
        reason = self.figures(r).blocked if r in self.pm_rows else ""
        if reason != self.blocked.get(r, ""):
            if reason:
                self.blocked[r] = reason
            else:
                self.blocked.pop(r, None)
            out.append(ev.ValuationChanged(self.eng.now_ns, int(self.eng.acct_id[r]), reason))
        return reason

    # --- vols -------------------------------------------------------------------------------------

    def on_vol(self, e: ev.VolObserved, out: list[ev.Event]) -> str:
        eng = self.eng
        if not isinstance(e.vol, str):
            return "vol must be decimal text"
        if e.underlying not in eng.markets_of_asset:
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
        pol = eng.cfg.policy(e.underlying)
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
        from fluidmargin.engine.engine import Bucket

        eng._evaluate([Bucket(r) for r in self.rows_holding_point(key) if r in self.pm_rows], out)
        return ""

    def vol_fresh(self, s: _Series) -> str:
        """Empty if the series' vol may open risk now (published within the oracle's staleness), else why."""
        pt = self.vols.get((s.spec.underlying, s.spec.expiry_ns, s.spec.strike_price_q))
        if pt is None:
            return f"no mark vol published for {s.spec.symbol}"
        pol = self.eng.cfg.policy(s.spec.underlying)
        v = orc.staleness(self.eng.now_ns, pt[1], pol)
        if not orc.allowed(v, orc.Action.OPEN, pol):
            return f"mark vol of {s.spec.symbol} is {v.name}: open not allowed"
        return ""

    # --- fills --------------------------------------------------------------------------------------

    def fill(self, r: int, s: _Series, e: ev.TradeFilled, out: list[ev.Event]) -> str:
        eng = self.eng
        from fluidmargin.engine.state import BANKRUPT, LIQUIDATING, STATUS_NAMES

        spec = s.spec
        for name in ("size_delta_base_q", "price_q", "fee_quote_q", "isolated_margin_quote_q"):
            v = getattr(e, name)
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) > MAX_QUANTUMS // 4:
                return f"{name} must be an integer within bounds (would overflow)"
        if eng.acct_mode[r] != PORTFOLIO:
            return f"option positions require portfolio margin mode (account is {MODE_NAMES[int(eng.acct_mode[r])]})"
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
        if eng.status[r] in (LIQUIDATING, BANKRUPT):
            return f"account is {STATUS_NAMES[int(eng.status[r])]}"
        old = self.pos.get(r, {}).get(s.i, 0)
        new = old + e.size_delta_base_q
        if abs(new) > MAX_QUANTUMS // 4:
            return "position size would overflow"
        increases = abs(new) > abs(old) or (old != 0 and new != 0 and (old > 0) != (new > 0))
        if increases:
            blocked = eng._oracle_blocked([spec.underlying], orc.Action.OPEN) or self.vol_fresh(s)
            if blocked:
                return blocked
        sd = spec.size_decimals
        d = e.size_delta_base_q
        cash = (
            margin.value_quote_q(d, e.price_q, sd, Rounding.CEIL)
            if d > 0
            else -margin.value_quote_q(-d, e.price_q, sd, Rounding.FLOOR)
        )  # what the account pays (+) or receives (-)
        if abs(int(eng.bal[r, eng.quote_c]) - cash - e.fee_quote_q) > MAX_QUANTUMS // 4:
            return "the fill's value would overflow"
        saved = eng._save_account(r)
        eng.bal[r, eng.quote_c] -= cash + e.fee_quote_q
        eng.clearing_q += cash
        eng.fees_q += e.fee_quote_q
        self._set(r, s, new)
        if increases:
            f = self.figures(r)
            if f.blocked:
                eng._restore_account(r, saved)
                return f"valuation blocked: {f.blocked}"
            if f.equity_quote_q < f.im_quote_q:
                eng._restore_account(r, saved)
                return f"pre-trade check: equity {f.equity_quote_q} below initial margin {f.im_quote_q} after the fill"
        return ""

    def _set(self, r: int, s: _Series, new: int) -> None:
        d = self.pos.setdefault(r, {})
        old = d.get(s.i, 0)
        s.long_oi_base_q += max(new, 0) - max(old, 0)
        if new:
            d[s.i] = new
        else:
            d.pop(s.i, None)
            if not d:
                del self.pos[r]

    # --- settlement ----------------------------------------------------------------------------------

    def settle_due(self, out: list[ev.Event]) -> list[int]:
        """Settle every series whose expiry event time has reached, at its underlying's index now."""
        eng = self.eng
        rows: set[int] = set()
        due = [s for s in self.series if s.settled_price_q is None and s.spec.expiry_ns <= eng.now_ns]
        for s in sorted(due, key=lambda x: (x.spec.expiry_ns, x.spec.symbol)):
            spec = s.spec
            index = eng.index_q.get(spec.underlying)
            if index is None:
                continue  # no price to settle at yet: the next input tries again
            payoff = max(index - spec.strike_price_q, 0) if spec.is_call else max(spec.strike_price_q - index, 0)
            holders = sorted((int(eng.acct_id[r]), r, d[s.i]) for r, d in self.pos.items() if d.get(s.i))
            ids, sizes, amounts = [], [], []
            for aid, r, n in holders:
                amt = (
                    margin.value_quote_q(n, payoff, spec.size_decimals, Rounding.FLOOR)
                    if n > 0
                    else -margin.value_quote_q(-n, payoff, spec.size_decimals, Rounding.CEIL)
                )
                eng.bal[r, eng.quote_c] += amt
                eng.clearing_q -= amt
                self._set(r, s, 0)
                ids.append(aid)
                sizes.append(n)
                amounts.append(amt)
                rows.add(r)
            s.settled_price_q = index
            out.append(ev.OptionsSettled(eng.now_ns, spec.symbol, index, payoff, ids, sizes, amounts))
        return sorted(rows)

    # --- liquidation ---------------------------------------------------------------------------------

    def contributions(self, r: int, skip_perps: set[str]) -> list[tuple[float, str, int]]:
        """Each position's P&L in its underlying's worst scenario, most negative first (ties: by name).

        ``(pnl, symbol, handle)``: handle is the perp's position slot, or -1 - series index for an option.
        """
        eng = self.eng
        fig = self.figures(r)
        worst: dict[str, int] = {}
        for a, res in fig.results.items():
            pnls = res.scenario_pnls_quote
            worst[a] = min(range(len(pnls)), key=lambda j: (pnls[j], j))
        out: list[tuple[float, str, int]] = []
        for p in eng.positions_of(r):
            size = int(eng.pos_size[p])
            if size == 0 or eng.pos_iso[p]:
                continue
            m = eng.markets[int(eng.pos_mkt[p])]
            a = m.spec.base_asset
            if a in skip_perps or a not in worst:
                continue
            sc = self.params.scenarios[worst[a]]
            amount = size / 10**m.spec.size_decimals
            pnl = amount * (sc.spot_shock - 1.0) * (m.mark_q or 0) / PRICE_SCALE * sc.dampening
            out.append((pnl, m.spec.symbol, p))
        for s, n in self.positions(r):
            a = s.spec.underlying
            index = eng.index_q.get(a)
            vol = self.vol_ppm(s)
            if a not in worst or index is None or vol is None:
                continue
            spot = index / PRICE_SCALE
            sec = max(s.spec.expiry_ns - eng.now_ns, 0) // NS_PER_S
            hold = pm.OptionHolding(
                s.spec.strike_price_q / PRICE_SCALE, s.spec.is_call, n / 10**s.spec.size_decimals, vol / PPM
            )
            res = pm.portfolio_margin(
                pm.Portfolio(spot_price=spot, expiries=(pm.ExpiryHolding(sec, spot, 0.0, (hold,)),)), self.params
            )
            out.append((res.scenario_pnls_quote[worst[a]], s.spec.symbol, -1 - s.i))
        out.sort()
        return out

    def reached(self, r: int) -> bool:
        risk = self.eng.cross_risk(r)
        return risk.equity_quote_q * PPM >= (PPM + self.eng.cfg.liquidation_target_ppm) * risk.mm_quote_q

    def liquidate(self, b: Bucket, out: list[ev.Event]) -> None:
        """Reduce the largest contributor to the worst scenario, then hedge the remaining delta with the
        perpetual; repeat until the account reaches the target health (or holds nothing)."""
        from fluidmargin.engine.liquidation import CloseAtMark

        eng = self.eng
        r = b.row
        closer = CloseAtMark()
        hedged: set[str] = set()
        for _ in range(2 * (len(eng.positions_of(r)) + len(self.pos.get(r, {}))) + 4):
            if self.reached(r) or self.figures(r).blocked:
                break
            skip = {a for a in hedged if a in self.assets_of(r)}  # a hedge stays while its options do
            cands = self.contributions(r, skip)
            if not cands:
                break
            _pnl, _sym, h = cands[0]
            if h >= 0:
                closer._close(eng, h, out, isolated=False)
            else:
                self.close_option(r, self.series[-1 - h], out)
            if self.reached(r):
                break
            for a in sorted(self.assets_of(r)):
                if self.hedge(r, a, out):
                    hedged.add(a)
        CloseAtMark._cover_cross_shortfall(eng, b, out)

    def mark_price_q(self, s: _Series, long: bool) -> int:
        """The series' model price per contract in price quantums, rounded against the holder."""
        eng = self.eng
        index = eng.index_q[s.spec.underlying]
        vol = self.vol_ppm(s)
        assert vol is not None
        t = max(year_fraction(eng.now_ns, s.spec.expiry_ns), 0.0)
        price = float(
            black76_price(index / PRICE_SCALE, s.spec.strike_price_q / PRICE_SCALE, t, vol / PPM, 1.0, s.spec.is_call)
        )
        x = price * PRICE_SCALE
        return max(math.floor(float(x)), 0) if long else math.ceil(float(x))

    def close_option(self, r: int, s: _Series, out: list[ev.Event]) -> None:
        """Close account ``r``'s whole position in ``s`` with the clearing at the model mark, with a penalty."""
        eng = self.eng
        n = self.pos[r][s.i]
        sd = s.spec.size_decimals
        price = self.mark_price_q(s, n > 0)
        cash = (
            margin.value_quote_q(n, price, sd, Rounding.FLOOR)
            if n > 0
            else -margin.value_quote_q(-n, price, sd, Rounding.CEIL)
        )  # received (+) by a holder, paid (-) by a writer
        eng.bal[r, eng.quote_c] += cash
        eng.clearing_q -= cash
        self._set(r, s, 0)
        premium = margin.value_quote_q(abs(n), price, sd, Rounding.CEIL)
        fee_full = -(-premium * s.spec.liquidation_fee_ppm // PPM)  # ceil
        fee = min(fee_full, max(eng.cross_risk(r).equity_quote_q, 0))
        eng.bal[r, eng.quote_c] -= fee
        aid = int(eng.acct_id[r])
        out.append(ev.PositionLiquidated(eng.now_ns, aid, s.spec.symbol, n, price, cash, fee))
        eng.fund_fee(fee, aid, out)

    def hedge(self, r: int, asset: str, out: list[ev.Event]) -> bool:
        """Trade the asset's first perpetual so the account's delta in ``asset`` is (about) zero."""
        eng = self.eng
        mkts = eng.markets_of_asset.get(asset, [])
        mark = mkts[0].mark_q if mkts else None
        if mark is None:
            return False
        m = mkts[0]
        fig = self.figures(r)
        delta = sum(v.delta for v in fig.options if self.idx[v.symbol].spec.underlying == asset)
        for p in eng.positions_of(r):
            if eng.pos_size[p] and not eng.pos_iso[p] and eng.markets[int(eng.pos_mkt[p])].spec.base_asset == asset:
                delta += int(eng.pos_size[p]) / 10 ** eng.markets[int(eng.pos_mkt[p])].spec.size_decimals
        h = int(-delta * 10**m.spec.size_decimals)  # toward zero: never over-hedge
        if h == 0:
            return False
        p = eng._find_pos(r, m.i)
        if p < 0:
            p = eng._new_pos(r, m)
            eng.pos_lev[p] = min(10, m.spec.margin.brackets[0].max_leverage)
        eng._settle_funding(p, out)
        eng._trade(p, h, mark, 0)
        eng.wf.take_over(p, -h, mark)  # the protocol took the other side: the waterfall executes it
        out.append(ev.PortfolioHedged(eng.now_ns, int(eng.acct_id[r]), m.spec.symbol, h, mark, repr(delta)))
        return True

    # --- dry runs and state --------------------------------------------------------------------------

    def save_row(self, r: int) -> tuple[dict[int, int] | None, list[int]]:
        d = self.pos.get(r)
        return (None if d is None else dict(d)), [s.long_oi_base_q for s in self.series]

    def restore_row(self, r: int, saved: tuple[dict[int, int] | None, list[int]]) -> None:
        d, oi = saved
        if d is None:
            self.pos.pop(r, None)
        else:
            self.pos[r] = dict(d)
        for s, x in zip(self.series, oi, strict=True):
            s.long_oi_base_q = x

    def state(self) -> dict[str, Any]:
        return {
            "series": [[s.settled_price_q, s.long_oi_base_q] for s in self.series],
            "positions": sorted((r, i, n) for r, d in self.pos.items() for i, n in d.items()),
            "vols": sorted((a, x, k, v, t, src) for (a, x, k), (v, t, src) in self.vols.items()),
            "blocked": sorted(self.blocked.items()),
        }

    def load(self, st: dict[str, Any] | None) -> None:
        if not st:
            return
        for s, (price, oi) in zip(self.series, st["series"], strict=True):
            s.settled_price_q, s.long_oi_base_q = price, oi
        self.pos = {}
        for r, i, n in st["positions"]:
            self.pos.setdefault(int(r), {})[int(i)] = int(n)
        self.vols = {(a, int(x), int(k)): (int(v), int(t), src) for a, x, k, v, t, src in st["vols"]}
        self.blocked = {int(r): why for r, why in st["blocked"]}
