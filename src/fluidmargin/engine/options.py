"""The option book and portfolio-margin accounts: a component of the engine, kept out of engine.py.

State it owns (all exact, all in the state hash and snapshots):

* the listed series (``EngineConfig.options``) and, per series, whether it has settled and at what price;
* per account row, its option positions (signed contracts, ``size_base_q`` at the series' decimals);
* the published mark vols, one point per listed (underlying, expiry, strike): vol in ppm, time, source;
* per portfolio account, why its valuation is blocked (a missing vol point or index), if it is.

Money: a premium is exchanged exactly at the fill (a buyer pays ceil(size x price), a seller receives
floor), settlement pays floor(size x intrinsic) to holders and charges ceil to writers; the clearing
is the counterparty of both, so the ledgers stay conserved to the quantum. Valuation is the float
model of :mod:`fluidmargin.risk.options.portfolio`; its figures enter the integer state rounded in the system's
favour: an option's mark value rounds down (longs worth less, shorts owe more), requirements round up.

The margin of a portfolio account is :func:`risk.portfolio.portfolio_margin` per underlying (its perps
and options; the forward is the underlying's index, the rate zero), netted across underlyings by
:func:`risk.portfolio.cross_portfolio_margin` with the preset's :data:`CROSS_ASSET` offsets and floor.

A portfolio account that holds a series without a published vol (or whose underlying has no index)
cannot be valued: it is *blocked* (a ``ValuationChanged`` event says so and why). A blocked account
opens no new risk, withdraws nothing, switches no mode and is not liquidated (as with an oracle that
forbids liquidating); it is re-valued on every vol, price and clock event until it can be again.

Screening (:meth:`OptionBook.screen`, the seam in ``Engine._on_index`` / ``_on_ClockAdvanced``). On a
price tick or a clock event, a HEALTHY, unblocked portfolio account is *not* revalued when
:func:`risk.pm_batch.pm_delta_gamma_tick` certifies that it stays HEALTHY: the screen's lower bound of
``equity - (1 + at_risk_buffer) x maintenance`` (the margin of the preset with its maintenance factors
scaled by 1 + buffer) is >= 0 once every difference between the screen's model and the engine's exact
figures is charged against it (see :class:`_RowScreen`). Everything else is revalued in full: any other
status, a blocked account, a spot move beyond :data:`PM_SCREEN`'s bound or more time than its bound since
the screen's last full revaluation, and any change of the account's positions or vols (its screen key);
in the last three cases the screen is rebuilt (a full screen revaluation) at the new spot and time.
The screen only decides *whether* to revalue: a skipped account would have kept its status and emitted
nothing, so the state and its hash never depend on it (``Engine(screen="reference")`` or
``OptionBook.screening = False`` revalue every exposed account: the twins the tests compare against).
Liquidation decisions always come from a full revaluation (``Engine._evaluate``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, NS_PER_S, PPM, PRICE_SCALE, QUOTE_SCALE, Rounding, parse_decimal
from fluidmargin.model import events as ev
from fluidmargin.model.instruments import OptionSpec
from fluidmargin.risk.options import pm_batch as pmb
from fluidmargin.risk.options import portfolio as pm
from fluidmargin.risk.options.black76 import black76_greeks, black76_price, year_fraction
from fluidmargin.risk.options.volsurface import DEFAULT_MAX_VOL, point_reason
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc

if TYPE_CHECKING:
    from fluidmargin.engine.engine import Bucket, Engine

STANDARD, ISOLATED, PORTFOLIO = 0, 1, 2
MODE_NAMES = ("standard", "isolated", "portfolio")
PM_PARAMS: dict[str, pm.PortfolioMarginParams] = {"derive_pm2": pm.DERIVE_PM2}
CROSS_ASSET: dict[str, pm.CrossAssetParams] = {
    # BTC/ETH: 70 % of the pair's co-movement netting is credited. Their daily returns have been ~0.8-0.9
    # correlated; 0.7 keeps a haircut for the days they decouple. Any pair not listed nets nothing.
    # Floor: a netted account never needs less than half of its largest single-underlying scaled loss
    # (plus every contingency), however well the offsets hedge it.
    "derive_pm2": pm.CrossAssetParams(offset_rates=(("BTC", "ETH", 0.7),), floor_fraction=0.5),
}
PM_SCREEN: dict[str, pmb.ScreenParams] = {
    # between full revaluations a spot move of at most 2 % and at most 60 s of event time; beyond
    # either, the account is revalued in full (the screen's curvature and theta bounds hold inside them)
    "derive_pm2": pmb.ScreenParams(move_bound=0.02, time_bound_s=60),
}
VOL_DECIMALS = 6  # vols are stored in ppm (0.65 -> 650_000)
_CACHE_MAX = 4096
_QUOTE_SCALE_F: float = float(QUOTE_SCALE)
_SLACK_MULT = 100.0  # x the screen's own float slack (1e-9 of gross): covers the batch-vs-reference twin gap
_SQRT_1S_YEARS = math.sqrt(1.0 / pm.SECONDS_PER_YEAR)
_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)  # the normal density's peak


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
    """A portfolio account's exact figures and the float model's results per underlying (and netted)."""

    equity_quote_q: int
    mm_quote_q: int
    im_quote_q: int
    blocked: str
    options: list[OptionValue] = field(default_factory=list)
    results: dict[str, pm.PortfolioMarginResult] = field(default_factory=dict)
    cross: pm.CrossPortfolioMarginResult | None = None  # the netted requirements (None: nothing held)


# mm, im, blocked, option values, per-underlying results, netted result
_Valued = tuple[
    int, int, str, list[OptionValue], dict[str, pm.PortfolioMarginResult], pm.CrossPortfolioMarginResult | None
]


@dataclass(slots=True)
class _Leg:
    """One underlying of a screened account: the screen's state (one account) and how to correct it.

    The screen's book holds the perp (``perp_amount`` contracts, reference price ``perp_ref``) and the
    options, no cash: the exact collateral and perp P&L are added back on every tick instead.
    """

    asset: str
    state: pmb.PmScreenState
    spot_ref: float
    perp_amount: float
    perp_ref: float
    perp_dev_rate: float  # (1 + buffer) x mm loss factor x |perp| x max |(shock - 1) x dampening|


@dataclass(slots=True)
class _RowScreen:
    """A portfolio account's screen, valid while its key (positions, vols, buffer) is unchanged.

    It certifies ``E - (1 + b) R >= (n_options + 1 + b) / QUOTE_SCALE`` where E is the exact equity before
    rounding and R the netted maintenance requirement: then ``equity x PPM >= (PPM + buffer) x maintenance``
    for the rounded figures (options floor, requirement ceil) and the account stays HEALTHY. A lower bound
    of ``E - (1 + b) R`` on a tick is, since R <= the sum of the standalone requirements (netting only
    takes off, its floor is below that sum): the exact collateral and perp P&L, plus per underlying the
    screen's certified lower bound of its scaled margin, less the screen's own perp P&L (replaced by the
    exact one), less three model-vs-engine allowances --

    * the perp's mark is the engine's, not the screen's (reference perp x spot ratio): the requirement
      moves by at most ``perp_dev_rate x |mark - screen's perp price|``;
    * the reference model counts whole seconds to expiry: one more second of the screen's theta bound;
    * the engine values options at the exact time (ns): ``|dV| <= |n| F phi(0) vol |sqrt(t) - sqrt(t')|``
      per option, and the rounding quanta, and 100 x the screen's float slack (``const_quote``).
    """

    key: tuple[Any, ...]
    ts_ns: int
    legs: list[_Leg]
    const_quote: float


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
        self.cross_params = CROSS_ASSET[eng.cfg.portfolio_margin]
        self.screen_params = PM_SCREEN[eng.cfg.portfolio_margin]
        self._cache: dict[Any, _Valued] = {}
        # the delta-gamma screen: a cache, never state (rebuilt from exact state after a restore)
        self.screening = True  # False: revalue every exposed account on every tick (the twin)
        self._screens: dict[int, _RowScreen] = {}
        self._scaled: dict[int, pm.PortfolioMarginParams] = {}  # at-risk buffer (ppm) -> scaled preset
        self.screen_stats = {"screened": 0, "revalued": 0, "rebuilt": 0}  # accounts, over ticks (for benches)

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

    def _perps(self, r: int) -> tuple[int, dict[str, tuple[float, float]], list[tuple[int, int, int | None]]]:
        """Exact perp P&L of row ``r`` (quote quantums), per underlying (contracts, mark), and its perps."""
        eng = self.eng
        upnl = 0
        perps: dict[str, tuple[float, float]] = {}
        key_perps = []
        for p in eng.positions_of(r):
            size = int(eng.pos_size[p])
            if size == 0 or eng.pos_iso[p]:
                continue
            m = eng.markets[int(eng.pos_mkt[p])]
            upnl += eng.position_risk(p).upnl_quote_q
            a = m.spec.base_asset
            amt, _px = perps.get(a, (0.0, 0.0))
            mark = float(m.mark_q or 0) / PRICE_SCALE
            perps[a] = (amt + size / 10**m.spec.size_decimals, mark)
            key_perps.append((m.i, size, m.mark_q))
        return upnl, perps, key_perps

    def figures(self, r: int) -> PortfolioFigures:
        """Exact equity (collateral + perp PnL + option values, rounded down) and PM requirements (up)."""
        eng = self.eng
        eq = sum(eng.collateral_value_quote_q(c, int(eng.bal[r, c])) for c in range(len(eng.coll)))
        upnl, perps, key_perps = self._perps(r)
        eq += upnl
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
        mm, im, blocked, values, results, cross = hit
        return PortfolioFigures(
            eq + sum(v.value_quote_q for v in values), mm, im, blocked, list(values), dict(results), cross
        )

    def _portfolios(
        self, perps: dict[str, tuple[float, float]], opts: list[tuple[_Series, int]]
    ) -> tuple[str, list[OptionValue], dict[str, pm.Portfolio]]:
        """The model's portfolio per underlying (no cash: equity is exact), option values, or why blocked."""
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
        portfolios: dict[str, pm.Portfolio] = {}
        if not blocked:
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

    def _value(self, perps: dict[str, tuple[float, float]], opts: list[tuple[_Series, int]]) -> _Valued:
        blocked, values, portfolios = self._portfolios(perps, opts)
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
                mm = _ceil_q(cross.maintenance_requirement_quote)
                im = _ceil_q(cross.initial_requirement_quote)
        if blocked:
            mm = im = 0
            cross = None
        return mm, im, blocked, values, results, cross

    # --- the delta-gamma screen (see the module docstring and _RowScreen) ----------------------------------

    def screen(self, asset: str | None, touched: list[Bucket]) -> list[Bucket]:
        """The buckets to confirm exactly on a tick of ``asset`` (a clock event: None).

        ``touched`` (what the perp and collateral screens flagged) plus every portfolio row exposed to the
        tick, less the portfolio rows the delta-gamma screen certifies stay HEALTHY (none with screening off).
        """
        from fluidmargin.engine.engine import Bucket

        exposed = self.rows_exposed(asset)
        if not self.screening or self.eng.screen == "reference":
            return touched + [Bucket(r) for r in exposed]
        rows = sorted(set(exposed) | {b.row for b in touched if b.pos < 0 and b.row in self.pm_rows})
        skip = {r for r in rows if self._stays_healthy(r)}
        self.screen_stats["screened"] += len(skip)
        self.screen_stats["revalued"] += len(rows) - len(skip)
        return [b for b in touched if b.pos >= 0 or b.row not in skip] + [Bucket(r) for r in exposed if r not in skip]

    def _stays_healthy(self, r: int) -> bool:
        """Whether the screen certifies that row ``r``, evaluated now, would stay HEALTHY (no event)."""
        from fluidmargin.engine.state import HEALTHY

        eng = self.eng
        if eng.status[r] != HEALTHY or r in self.blocked:
            return False
        upnl, perps, key_perps = self._perps(r)
        opts = self.positions(r)
        key = (
            eng.cfg.at_risk_buffer_ppm,
            tuple((i, size) for i, size, _mark in key_perps),
            tuple((s.i, n, self.vol_ppm(s)) for s, n in opts),
        )
        sc = self._screens.get(r)
        now = eng.now_ns
        # a change other than spot and time (or no screen yet), or past the time bound
        expired = sc is None or sc.key != key or not 0 <= now - sc.ts_ns <= self.screen_params.time_bound_s * NS_PER_S
        lows: list[tuple[_Leg, float, float]] = []
        if sc is not None and not expired:
            for leg in sc.legs:
                index = eng.index_q.get(leg.asset)
                if index is None:
                    return False
                spot = index / PRICE_SCALE
                tick = pmb.pm_delta_gamma_tick(leg.state, spot, now)
                if tick.reason[0] in (pmb.REASON_MOVE, pmb.REASON_TIME):
                    expired = True  # beyond the screen's bounds
                    break
                lows.append((leg, spot, float(tick.mm_lower_quote[0])))
        if sc is None or expired:
            # a full revaluation now, and a new screen from here
            self._screens.pop(r, None)
            built = self._build_screen(key, perps, opts)
            if built is not None:
                self._screens[r] = built
            self.screen_stats["rebuilt"] += 1
            return False
        exact_q = upnl + sum(eng.collateral_value_quote_q(c, int(eng.bal[r, c])) for c in range(len(eng.coll)))
        low = exact_q / _QUOTE_SCALE_F
        low -= 1e-12 * abs(low) + sc.const_quote
        for leg, spot, lo in lows:
            theta_1s = float(leg.state.theta_bound_per_s[0])  # the reference counts whole seconds
            if not (math.isfinite(lo) and math.isfinite(theta_1s)):
                return False
            perp_model = leg.perp_ref * spot / leg.spot_ref  # the screen's perp follows spot
            mark = perps.get(leg.asset, (0.0, 0.0))[1] or spot  # the engine's (as in figures)
            low += lo - leg.perp_amount * (perp_model - leg.perp_ref)  # the exact perp P&L is in exact_q
            low -= leg.perp_dev_rate * abs(mark - perp_model) + theta_1s
        return low >= 0.0

    def _scaled_params(self, buffer_ppm: int) -> pm.PortfolioMarginParams:
        """The preset with every maintenance term x (1 + buffer): its margin is ``mtm - (1 + b) R``."""
        p = self._scaled.get(buffer_ppm)
        if p is None:
            k = 1.0 + buffer_ppm / PPM
            base = self.params
            p = dataclasses.replace(
                base,
                margin=dataclasses.replace(base.margin, mm_loss_factor=base.margin.mm_loss_factor * k),
                contingency=dataclasses.replace(
                    base.contingency, perp_mm=base.contingency.perp_mm * k, option_mm=base.contingency.option_mm * k
                ),
            )
            self._scaled[buffer_ppm] = p
        return p

    def _build_screen(
        self, key: tuple[Any, ...], perps: dict[str, tuple[float, float]], opts: list[tuple[_Series, int]]
    ) -> _RowScreen | None:
        """A full screen revaluation of the account now (None: it cannot be screened; revalued every tick)."""
        eng = self.eng
        blocked, _values, portfolios = self._portfolios(perps, opts)
        if blocked:
            return None
        buffer_ppm = int(key[0])
        params = self._scaled_params(buffer_ppm)
        b = float(self.screen_params.move_bound)
        window_s = self.screen_params.time_bound_s + 2  # + the reference's whole second, + 1 to spare
        bounds = pmb.ScreenParams(move_bound=b, time_bound_s=window_s, threshold_quote=0.0)
        perp_k = max(abs((sc.spot_shock - 1.0) * sc.dampening) for sc in params.scenarios)
        const = (len(opts) + 1 + buffer_ppm / PPM) / _QUOTE_SCALE_F  # options round down, the requirement up
        legs = []
        for a, pf in sorted(portfolios.items()):
            try:
                market, book = pmb.batch_from_portfolio(pf)
                _res, st = pmb.pm_screen_reval(market, book, params, bounds, eng.now_ns)
            except ValidationError:
                return None
            legs.append(
                _Leg(a, st, pf.spot_price, pf.perp_amount, pf.perp_price,
                     params.margin.mm_loss_factor * abs(pf.perp_amount) * perp_k)
            )  # fmt: skip
            const += _SLACK_MULT * float(st.slack_quote[0])
            f_max = pf.spot_price * (1.0 + b)
            for e in pf.expiries:
                # the engine's option values use the exact time, the model whole seconds (< 1 s apart):
                # V depends on time through vol sqrt(t) only (rate 0), with dV / d(vol sqrt(t)) = F phi(d1)
                t_min = (e.sec_to_expiry_s - window_s) / pm.SECONDS_PER_YEAR
                d_sqrt = _SQRT_1S_YEARS
                if t_min > 0:
                    d_sqrt = min(d_sqrt, 1.0 / pm.SECONDS_PER_YEAR / (2.0 * math.sqrt(t_min)))
                const += sum(abs(o.amount) * o.vol for o in e.options) * _PHI0 * f_max * d_sqrt
        return _RowScreen(key, eng.now_ns, legs, const)

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
