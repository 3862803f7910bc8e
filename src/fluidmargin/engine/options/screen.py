"""The delta-gamma screen of portfolio accounts: which of them a tick may have changed.

On a price tick or a clock event, a HEALTHY, unblocked portfolio account is *not* revalued when
:func:`risk.options.pm_batch.pm_delta_gamma_tick` certifies that it stays HEALTHY: the screen's lower
bound of ``equity - (1 + at_risk_buffer) x maintenance`` (the margin of the preset with its maintenance
factors scaled by 1 + buffer) is >= 0 once every difference between the screen's model and the engine's
exact figures is charged against it (see :class:`RowScreen`). Everything else is revalued in full: any
other status, a blocked account, a spot move beyond :data:`PM_SCREEN`'s bound or more time than its bound
since the screen's last full revaluation, and any change of the account's positions or vols (its screen
key); in the last three cases the screen is rebuilt (a full screen revaluation) at the new spot and time.
The screen only decides *whether* to revalue: a skipped account would have kept its status and emitted
nothing, so the state and its hash never depend on it (``Engine(screen="reference")`` or
``OptionBook.screening = False`` revalue every exposed account: the twins the tests compare against).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import NS_PER_S, PPM, PRICE_SCALE
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options.positions import OptionPositions, Series
from fluidmargin.engine.options.valuation import QUOTE_SCALE_F, PortfolioValuer
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.ports import OptionsHost
from fluidmargin.engine.state import HEALTHY
from fluidmargin.engine.types import Bucket
from fluidmargin.risk.options import pm_batch as pmb
from fluidmargin.risk.options import portfolio as pm

PM_SCREEN: dict[str, pmb.ScreenParams] = {
    # between full revaluations a spot move of at most 2 % and at most 60 s of event time; beyond
    # either, the account is revalued in full (the screen's curvature and theta bounds hold inside them)
    "derive_pm2": pmb.ScreenParams(move_bound=0.02, time_bound_s=60),
}
_SLACK_MULT = 100.0  # x the screen's own float slack (1e-9 of gross): covers the batch-vs-reference twin gap
_SQRT_1S_YEARS = math.sqrt(1.0 / pm.SECONDS_PER_YEAR)
_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)  # the normal density's peak


@dataclass(slots=True)
class Leg:
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
class RowScreen:
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
    legs: list[Leg]
    const_quote: float


class PmScreen:
    """The screens of portfolio rows (a cache, never state: rebuilt from exact state after a restore)."""

    def __init__(
        self, host: OptionsHost, led: Ledger, oracles: OracleState, held: OptionPositions, valuer: PortfolioValuer
    ) -> None:
        self.host = host
        self.led = led
        self.oracles = oracles
        self.held = held
        self.valuer = valuer
        self.screen_params = PM_SCREEN[led.cfg.portfolio_margin]
        self.screening = True  # False: revalue every exposed account on every tick (the twin)
        self.screens: dict[int, RowScreen] = {}
        self._scaled: dict[int, pm.PortfolioMarginParams] = {}  # at-risk buffer (ppm) -> scaled preset
        self.screen_stats = {"screened": 0, "revalued": 0, "rebuilt": 0}  # accounts, over ticks (for benches)

    def rows_exposed(self, asset: str | None) -> list[int]:
        """Portfolio rows with a perp or option on ``asset`` (any asset: None), in row order."""
        host, led = self.host, self.led
        out = []
        for r in sorted(self.held.pm_rows):
            if asset is None:
                if self.held.has_positions(r) or host.has_cross_perps(r):
                    out.append(r)
                continue
            if asset in self.held.assets_of(r) or any(
                led.pos_size[p] and led.markets[int(led.pos_mkt[p])].spec.base_asset == asset
                for p in led.positions_of(r)
            ):
                out.append(r)
        return out

    def screen(self, asset: str | None, touched: list[Bucket]) -> list[Bucket]:
        """The buckets to confirm exactly on a tick of ``asset`` (a clock event: None).

        ``touched`` (what the perp and collateral screens flagged) plus every portfolio row exposed to the
        tick, less the portfolio rows the delta-gamma screen certifies stay HEALTHY (none with screening off).
        """
        exposed = self.rows_exposed(asset)
        if not self.screening or self.led.screen == "reference":
            return touched + [Bucket(r) for r in exposed]
        rows = sorted(set(exposed) | {b.row for b in touched if b.pos < 0 and b.row in self.held.pm_rows})
        skip = {r for r in rows if self.stays_healthy(r)}
        self.screen_stats["screened"] += len(skip)
        self.screen_stats["revalued"] += len(rows) - len(skip)
        return [b for b in touched if b.pos >= 0 or b.row not in skip] + [Bucket(r) for r in exposed if r not in skip]

    def stays_healthy(self, r: int) -> bool:
        """Whether the screen certifies that row ``r``, evaluated now, would stay HEALTHY (no event)."""
        host, led, ora = self.host, self.led, self.oracles
        if led.status[r] != HEALTHY or r in self.held.blocked:
            return False
        upnl, perps, key_perps = self.valuer.perps(r)
        opts = self.held.positions(r)
        key = (
            led.cfg.at_risk_buffer_ppm,
            tuple((i, size) for i, size, _mark in key_perps),
            tuple((s.i, n, self.held.vol_ppm(s)) for s, n in opts),
        )
        sc = self.screens.get(r)
        now = led.now_ns
        # a change other than spot and time (or no screen yet), or past the time bound
        expired = sc is None or sc.key != key or not 0 <= now - sc.ts_ns <= self.screen_params.time_bound_s * NS_PER_S
        lows: list[tuple[Leg, float, float]] = []
        if sc is not None and not expired:
            for leg in sc.legs:
                index = ora.index_q.get(leg.asset)
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
            self.screens.pop(r, None)
            built = self._build_screen(key, perps, opts)
            if built is not None:
                self.screens[r] = built
            self.screen_stats["rebuilt"] += 1
            return False
        exact_q = upnl + sum(host.collateral_value_quote_q(c, int(led.bal[r, c])) for c in range(len(led.coll)))
        low = exact_q / QUOTE_SCALE_F
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
            base = self.valuer.params
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
        self, key: tuple[Any, ...], perps: dict[str, tuple[float, float]], opts: list[tuple[Series, int]]
    ) -> RowScreen | None:
        """A full screen revaluation of the account now (None: it cannot be screened; revalued every tick)."""
        led = self.led
        blocked, _values, portfolios = self.valuer.portfolios(perps, opts)
        if blocked:
            return None
        buffer_ppm = int(key[0])
        params = self._scaled_params(buffer_ppm)
        b = float(self.screen_params.move_bound)
        window_s = self.screen_params.time_bound_s + 2  # + the reference's whole second, + 1 to spare
        bounds = pmb.ScreenParams(move_bound=b, time_bound_s=window_s, threshold_quote=0.0)
        perp_k = max(abs((sc.spot_shock - 1.0) * sc.dampening) for sc in params.scenarios)
        const = (len(opts) + 1 + buffer_ppm / PPM) / QUOTE_SCALE_F  # options round down, the requirement up
        legs = []
        for a, pf in sorted(portfolios.items()):
            try:
                market, book = pmb.batch_from_portfolio(pf)
                _res, st = pmb.pm_screen_reval(market, book, params, bounds, led.now_ns)
            except ValidationError:
                return None
            legs.append(
                Leg(a, st, pf.spot_price, pf.perp_amount, pf.perp_price,
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
        return RowScreen(key, led.now_ns, legs, const)
