"""Dynamic margin configurations for the evaluation harness: the slot they plug into and the two built in.

The slot: the harness shows a configuration every candle once it has closed (:class:`ClosedCandle`) and
submits what it answers (:class:`ParameterChange`) as logged ``ParameterChangeRequested`` events; a
configuration is a :class:`DynamicMargin`. :data:`DYNAMIC` names the built-in ones:

- ``dynamic-ewma`` (:class:`EwmaMargin`): maintenance = max(floor, z · σ̂ · √h), σ̂ the EWMA of the
  online volatility model, moved by the policy's hourly change limit; no forecast, no anti-procyclicality.
- ``dynamic`` (:class:`DynamicMarginModel`), per market, on every closed candle:

  1. the online volatility model (:mod:`fluidmargin.risk.stats.vol`): EWMA of close-to-close log returns
     (gaps spread over the missing steps), or GARCH(1,1) fitted with ``arch`` on the first
     ``garch_fit_candles`` returns of the replay (the past only) and filtered from then on (EWMA until
     then, and if the fit fails);
  2. the proactive buffer (:mod:`fluidmargin.risk.stats.forecast`): candles are aggregated to hours, each
     hour's Garman-Klass variance feeds HAR-RV with coefficients fitted off-line (:data:`HAR_COEF`), and
     the forecast of the next hours' variance raises σ̂ when it is higher (it never lowers it);
  3. the policy (:mod:`fluidmargin.risk.perp.dynamic`): z · σ · √h, the anti-procyclicality rule, the
     floor and cap, and the hourly change limit.

Both keep one EWMA (:class:`~fluidmargin.risk.stats.vol.EwmaVol`) and one rate limiter
(:func:`fluidmargin.risk.perp.dynamic.step`). A change becomes two parameter changes, the market's one
bracket rate and its initial floor (:data:`MAINTENANCE_PARAMETER`, :data:`INITIAL_PARAMETER`; initial
first when rising, so initial stays above maintenance), with the inputs behind it attached (logged with
the request). Everything fixed for ``dynamic`` was chosen on data outside the evaluation windows
(see :data:`TUNED_ON`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM
from fluidmargin.model.config import EngineConfig
from fluidmargin.risk.perp import dynamic as pol
from fluidmargin.risk.perp import presets
from fluidmargin.risk.stats import forecast as fc
from fluidmargin.risk.stats import vol

__all__ = [
    "DYNAMIC",
    "HAR_COEF",
    "INITIAL_PARAMETER",
    "MAINTENANCE_PARAMETER",
    "TUNED_ON",
    "ClosedCandle",
    "DynamicMargin",
    "DynamicMarginModel",
    "DynamicParams",
    "EwmaMargin",
    "EwmaParams",
    "ParameterChange",
]

# the market parameters a dynamic rate changes: dynamic configurations start from one bracket
MAINTENANCE_PARAMETER = "margin.brackets.0.mmr_ppm"
INITIAL_PARAMETER = "margin.imr_floor_ppm"

# --- the slot ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClosedCandle:
    """A candle as a dynamic configuration sees it, once it has closed (floats: statistics only)."""

    asset: str
    market: str
    open_ms: int
    close_ns: int  # when it closed: the open time plus the data's interval
    open: float
    high: float
    low: float
    close: float


@dataclass(frozen=True, slots=True)
class ParameterChange:
    """A change a dynamic configuration asks for; ``inputs`` say why (kept for the audit trail)."""

    market: str  # empty for an engine-wide parameter
    name: str  # as Engine.MARKET_PARAMETERS / Engine.PARAMETERS name it
    value: int
    inputs: tuple[tuple[str, str], ...] = ()


class DynamicMargin(Protocol):
    """A margin configuration that follows the data: one fresh instance per dataset replay.

    ``configure`` gets the venue built on ``base_preset`` and returns the one to start from.
    ``on_candle`` is called for every candle of every asset once it has closed, in time order, before
    any later price reaches the engine (so it never sees the future); what it returns is submitted at
    the candle's close as ``ParameterChangeRequested`` events (held back until the population exists).
    ``parameters`` names every parameter it may change: the harness refuses to start if the engine
    does not accept one, and stops if the engine rejects a change.
    """

    base_preset: str
    parameters: tuple[str, ...]

    def configure(self, config: EngineConfig) -> EngineConfig: ...

    def on_candle(self, candle: ClosedCandle) -> Sequence[ParameterChange]: ...


def flat_rate(config: EngineConfig, floor_ppm: int, initial_ppm: int, name: str) -> EngineConfig:
    """Every market of ``config`` on one flat bracket at ``floor_ppm``, initial ``initial_ppm`` (max
    leverage 1 / initial): where a dynamic rate starts."""
    model = presets.single_rate(
        f"{floor_ppm / PPM:.6f}", max_leverage=max(1, PPM // initial_ppm), name=name, imr_floor_ppm=initial_ppm
    )
    return dataclasses.replace(config, markets=tuple(dataclasses.replace(m, margin=model) for m in config.markets))


def rate_changes(market: str, change: pol.Change, inputs: tuple[tuple[str, str], ...]) -> tuple[ParameterChange, ...]:
    """A policy change as the two parameter changes, in an order that keeps initial above maintenance."""
    mm = ParameterChange(market, MAINTENANCE_PARAMETER, change.maintenance_ppm, inputs)
    im = ParameterChange(market, INITIAL_PARAMETER, change.initial_ppm, inputs)
    return (im, mm) if change.maintenance_ppm > change.previous_ppm else (mm, im)


# --- dynamic-ewma -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EwmaParams:
    """``dynamic-ewma``: maintenance rate = max(floor, z · σ̂ · √h), σ̂ from an EWMA of squared log
    returns close to close (half-life ``halflife_s``), h the liquidation horizon; initial = k × maintenance.
    Nothing changes during the first ``warmup_candles``; a change waits ``min_interval_s`` after the
    previous one (the first after the first candle), is skipped below ``min_step_ppm``, and the changes of
    any trailing hour move the rate by at most ``max_change_ppm_per_hour`` in all (up or down)."""

    floor_ppm: int = 5_000
    z: float = 4.0
    horizon_s: int = 300
    halflife_s: int = 1_800
    warmup_candles: int = 60
    min_interval_s: int = 300
    max_change_ppm_per_hour: int = 20_000
    min_step_ppm: int = 250
    initial_multiple: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.floor_ppm * self.initial_multiple <= PPM or self.initial_multiple < 1:
            raise ValidationError("need 0 < floor_ppm and 1 <= initial_multiple with floor × multiple <= 1e6")
        if min(self.horizon_s, self.halflife_s, self.min_interval_s, self.max_change_ppm_per_hour) <= 0:
            raise ValidationError("horizon, half-life, interval and the hourly cap must be positive")
        if not (math.isfinite(self.z) and self.z > 0) or self.warmup_candles < 1 or self.min_step_ppm < 0:
            raise ValidationError("need z > 0, warmup_candles >= 1, min_step_ppm >= 0")

    def policy(self) -> pol.PolicyParams:
        """The same limits as a :mod:`~fluidmargin.risk.perp.dynamic` policy: no APC, capped at 1 / k."""
        return pol.PolicyParams(
            floor_ppm=self.floor_ppm,
            horizon=pol.Horizon(0, 0, self.horizon_s * 1000),
            z=self.z,
            cap_ppm=PPM // self.initial_multiple,
            initial_multiple_ppm=self.initial_multiple * PPM,
            max_change_ppm_per_hour=self.max_change_ppm_per_hour,
            min_step_ppm=self.min_step_ppm,
            min_interval_s=self.min_interval_s,
        )


@dataclass
class _EwmaMarket:
    step_s: float  # the candle interval in seconds (the EWMA's step)
    ewma: vol.EwmaVol  # variance per step
    state: pol.PolicyState | None = None  # from the first return on (the interval counts from there)
    last_close: float | None = None
    seen: int = 0


class EwmaMargin:
    """The built-in ``dynamic-ewma`` configuration (:class:`EwmaParams`), per market.

    It starts every market on a flat maintenance rate at the floor (initial = k × floor) and moves a
    per-market maintenance floor (:data:`MAINTENANCE_PARAMETER`) and the initial floor
    (:data:`INITIAL_PARAMETER`) with the forecast.
    """

    base_preset: str = "binance"
    parameters: tuple[str, ...] = (MAINTENANCE_PARAMETER, INITIAL_PARAMETER)

    def __init__(self, params: EwmaParams | None = None) -> None:
        self.p = params or EwmaParams()
        self.policy = self.p.policy()
        self.state: dict[str, _EwmaMarket] = {}

    def configure(self, config: EngineConfig) -> EngineConfig:
        p = self.p
        return flat_rate(config, p.floor_ppm, p.floor_ppm * p.initial_multiple, "dynamic-ewma")

    def target_ppm(self, var_per_s: float) -> int:
        """z · σ̂ · √h in ppm, rounded up, never below the floor."""
        return max(self.p.floor_ppm, pol.sigma_rate_ppm(self.p.z, var_per_s, self.policy.horizon.total_s))

    def on_candle(self, candle: ClosedCandle) -> Sequence[ParameterChange]:
        p = self.p
        s = self.state.get(candle.market)
        if s is None:
            step_s = max(candle.close_ns / 1e9 - candle.open_ms / 1e3, 1.0)
            s = self.state[candle.market] = _EwmaMarket(step_s, vol.EwmaVol(0.5 ** (step_s / p.halflife_s), 0.0))
        prev = candle.open if s.last_close is None else s.last_close
        s.last_close = candle.close
        if not (prev > 0 and candle.close > 0):
            return ()
        nxt = s.ewma.update(math.log(candle.close / prev))
        if isinstance(nxt, vol.Rejected):
            return ()
        s.ewma = nxt
        s.seen += 1
        if s.state is None:
            s.state = pol.PolicyState(p.floor_ppm, p.floor_ppm, changed_ns=candle.close_ns)
        if s.seen < p.warmup_candles:
            return ()
        obs = pol.Observation(candle.close_ns, s.ewma.var_per_step / s.step_s)
        s.state, change = pol.step(self.policy, s.state, obs)
        if change is None:
            return ()
        why = dict(change.inputs)
        inputs = (
            ("sigma_horizon", why["sigma_hat_h"]),
            ("target_ppm", why["target_ppm"]),
            ("previous_ppm", str(change.previous_ppm)),
            ("candles", str(s.seen)),
        )
        return rate_changes(candle.market, change, inputs)


# --- dynamic ----------------------------------------------------------------------------------------

TUNED_ON = (
    "HAR-RV coefficients, long-run and stressed variances: Binance spot BTC/USDT and ETH/USDT 1h, "
    "2018-01-01 .. 2021-04-19 (before the first evaluation window). Floor: the policy's rate at that "
    "history's median hourly BTC variance (0.25 %). APC (buffer over long_floor and none), coverage "
    "(0.999 / 0.9999 / 0.99999) and execution time (30 / 120 / 300 s): the lowest calm requirement with "
    "no more bad debt than the best static preset, on the LUNA 2022-05 1-minute window and 720-hour "
    "replays of the BTC/ETH perps from 2020-02-25, 2020-07-01, 2022-05-01, 2022-10-25 and 2023-09-20"
)
# log HAR-RV, lags 1/24/168/720 h, target the mean hourly variance of the next 4 h; pooled BTC+ETH OLS
HAR_LAGS = (1, 24, 168, 720)
HAR_HORIZON_H = 4
HAR_COEF = (-0.337, 0.213322, 0.497642, 0.185935, 0.087521)
HAR_RESID_VAR = 0.596995
# mean hourly Garman-Klass variance per second over the tuning history, and over its worst 30 days
LONG_RUN_VAR_PER_S = {"BTC": 2.409e-08, "ETH": 3.853e-08}
STRESSED_VAR_PER_S = {"BTC": 1.601e-07, "ETH": 2.218e-07}
HOUR_NS = 3600 * 10**9


@dataclass(frozen=True, slots=True)
class DynamicParams:
    """The ``dynamic`` configuration: the policy's limits, the online model and the proactive buffer."""

    floor_ppm: int = 2_500
    cap_ppm: int = 100_000
    coverage: float = 0.999
    oracle_latency_ms: int = 1_000
    detection_ms: int | None = None  # None: measured, the data's candle interval
    execution_ms: int = 30_000
    initial_multiple_ppm: int = 2 * PPM
    max_change_ppm_per_hour: int = 20_000
    min_step_ppm: int = 250
    min_interval_s: int = 300
    apc: str = pol.APC_BUFFER
    vol_model: str = "ewma"
    ewma_halflife_s: int = 1_800
    garch_fit_candles: int = 1_440
    warmup_candles: int = 60
    proactive: bool = True
    har_coef: tuple[float, ...] = HAR_COEF
    long_run_var_per_s: Mapping[str, float] = field(default_factory=lambda: dict(LONG_RUN_VAR_PER_S))
    stressed_var_per_s: Mapping[str, float] = field(default_factory=lambda: dict(STRESSED_VAR_PER_S))

    def __post_init__(self) -> None:
        if self.vol_model not in ("ewma", "garch"):
            raise ValidationError(f"vol_model must be ewma or garch, not {self.vol_model!r}")
        if min(self.ewma_halflife_s, self.garch_fit_candles, self.warmup_candles) < 1:
            raise ValidationError("half-life, GARCH fit length and warm-up must be >= 1")
        if len(self.har_coef) != len(HAR_LAGS) + 1:
            raise ValidationError(f"har_coef needs {len(HAR_LAGS) + 1} values")
        self.policy("BTC")  # the limits are checked now (LimitsRejected), not at the first candle

    def policy(self, asset: str, interval_ms: int = 60_000) -> pol.PolicyParams:
        """The policy of one asset (its long-run and stressed variances; the largest known otherwise) on
        candles ``interval_ms`` apart (the detection time when it is not configured)."""
        lr = self.long_run_var_per_s.get(asset, max(self.long_run_var_per_s.values(), default=0.0))
        st = self.stressed_var_per_s.get(asset, max(self.stressed_var_per_s.values(), default=0.0))
        return pol.PolicyParams(
            floor_ppm=self.floor_ppm,
            horizon=pol.Horizon(
                self.oracle_latency_ms,
                interval_ms if self.detection_ms is None else self.detection_ms,
                self.execution_ms,
            ),
            z=pol.z_for_coverage(self.coverage),
            cap_ppm=self.cap_ppm,
            initial_multiple_ppm=self.initial_multiple_ppm,
            max_change_ppm_per_hour=self.max_change_ppm_per_hour,
            min_step_ppm=self.min_step_ppm,
            min_interval_s=self.min_interval_s,
            apc=self.apc,
            long_run_var_per_s=lr,
            stressed_var_per_s=st,
            z_source=f"normal:{self.coverage}",
        )


class _Hourly:
    """Candles aggregated to hours; the completed hours' variances (at most the longest HAR lag)."""

    def __init__(self) -> None:
        self.hour: int | None = None
        self.o = self.h = self.lo = self.c = 0.0
        self.prev_close: float | None = None
        self.rv: deque[float] = deque(maxlen=max(HAR_LAGS))

    def add(self, c: ClosedCandle) -> bool:
        """Fold in a candle; True when it closed an hour (the hour it belongs to is complete)."""
        hour = c.open_ms // 3_600_000
        done = False
        if self.hour is not None and hour != self.hour:
            self._close_hour(hour - self.hour - 1)
            done = True
        if self.hour != hour:
            self.hour, self.o, self.h, self.lo = hour, c.open, c.high, c.low
        self.h, self.lo, self.c = max(self.h, c.high), min(self.lo, c.low), c.close
        return done

    def _close_hour(self, missing: int) -> None:
        hl, co = math.log(self.h / self.lo), math.log(self.c / self.o)
        gk = max(0.5 * hl * hl - (2.0 * math.log(2.0) - 1.0) * co * co, 0.0)
        jump = 0.0 if self.prev_close is None else math.log(self.o / self.prev_close) ** 2
        self.rv.extend([math.nan] * min(missing, max(HAR_LAGS)))  # hours without candles
        self.rv.append(gk + jump)
        self.prev_close = self.c


@dataclass
class _MarketState:
    policy: pol.PolicyParams
    state: pol.PolicyState
    ewma: vol.EwmaVol
    garch: vol.GarchVol | None = None
    returns: list[float] = field(default_factory=list)
    last_close: float | None = None
    step_s: float | None = None
    seen: int = 0
    rejected: int = 0
    hourly: _Hourly = field(default_factory=_Hourly)
    forecast_var_per_s: float | None = None
    garch_note: str = ""


class DynamicMarginModel:
    """The ``dynamic`` configuration (:class:`DynamicParams`), one instance per dataset replay."""

    base_preset: str = "binance"
    parameters: tuple[str, ...] = (MAINTENANCE_PARAMETER, INITIAL_PARAMETER)

    def __init__(self, params: DynamicParams | None = None) -> None:
        self.p = params or DynamicParams()
        self.markets: dict[str, _MarketState] = {}
        self.spec = fc.HarSpec(lags=HAR_LAGS, horizon=HAR_HORIZON_H, transform="log")
        self.har = fc.HarFit(self.spec, self.spec.names(), self.p.har_coef, HAR_RESID_VAR, 0, math.nan, 1e-12)

    def configure(self, config: EngineConfig) -> EngineConfig:
        """Every market on one flat bracket at the floor, initial k × floor (max leverage 1 / initial)."""
        p = self.p
        k_policy = p.policy("BTC")  # k is the same for every asset
        return flat_rate(config, p.floor_ppm, pol.initial_ppm(k_policy, p.floor_ppm), "dynamic")

    def _market(self, c: ClosedCandle) -> _MarketState:
        s = self.markets.get(c.market)
        if s is None:
            policy = self.p.policy(c.asset, max((c.close_ns // 1_000_000) - c.open_ms, 1))
            s = _MarketState(policy, pol.PolicyState.start(policy), vol.EwmaVol(0.94, 0.0))
            self.markets[c.market] = s
        return s

    def on_candle(self, candle: ClosedCandle) -> Sequence[ParameterChange]:
        p = self.p
        s = self._market(candle)
        step_s = (candle.close_ns / 1e9) - candle.open_ms / 1e3
        if s.step_s is None:
            s.step_s = max(step_s, 1.0)
            lam = 0.5 ** (s.step_s / p.ewma_halflife_s)
            s.ewma = vol.EwmaVol(lam, 0.0)
        prev = candle.open if s.last_close is None else s.last_close
        s.last_close = candle.close
        step_ns = int(s.step_s * 1e9)
        r = math.log(candle.close / prev) if prev > 0 and candle.close > 0 else math.nan
        nxt = s.ewma.update_at(r, candle.close_ns, step_ns)
        if isinstance(nxt, vol.Rejected):  # NaN return, time going backwards: the state stays, counted
            s.rejected += 1
            return ()
        s.ewma = nxt
        s.seen += 1
        if p.vol_model == "garch":
            self._garch(s, r, candle.close_ns, step_ns)
        if p.proactive and s.hourly.add(candle):
            s.forecast_var_per_s = self._forecast(s)
        if s.seen < p.warmup_candles:
            return ()
        var_step, model = s.ewma.var_per_step, f"ewma:halflife_s:{p.ewma_halflife_s}"
        if s.garch is not None:
            var_step, model = s.garch.var_per_step, "garch11"
        obs = pol.Observation(candle.close_ns, var_step / s.step_s, s.forecast_var_per_s, model)
        s.state, change = pol.step(s.policy, s.state, obs)
        if change is None:
            return ()
        inputs = (
            *change.inputs,
            ("candles", str(s.seen)),
            ("gaps", str(s.ewma.gaps)),
            ("missing_steps", str(s.ewma.missing_steps)),
            ("rejected", str(s.rejected)),
        )
        return rate_changes(candle.market, change, inputs)

    def _garch(self, s: _MarketState, r: float, ts_ns: int, step_ns: int) -> None:
        if s.garch is not None:
            g = s.garch.update_at(r, ts_ns, step_ns)
            if not isinstance(g, vol.Rejected):
                s.garch = g
            return
        if s.garch_note:
            return
        s.returns.append(r)
        if len(s.returns) < self.p.garch_fit_candles:
            return
        fit = vol.garch_or_floor(np.asarray(s.returns), 0.0, min_obs=min(self.p.garch_fit_candles, 250))
        s.returns.clear()
        if isinstance(fit, vol.Floor) or not fit.converged:
            s.garch_note = fit.reason if isinstance(fit, vol.Floor) else fit.message  # stays on EWMA
            return
        g = fit.filter_start()
        s.garch = dataclasses.replace(g, var_per_step=s.ewma.var_per_step, last_ts_ns=ts_ns)

    def _forecast(self, s: _MarketState) -> float | None:
        """The HAR-RV forecast of the next hours' variance per second (None before a day of hours)."""
        rv = np.asarray(s.hourly.rv, dtype=np.float64)
        if rv.size < self.spec.warmup:
            return None
        row = fc.har_features(rv, self.spec)[-1]
        if not np.isfinite(row).all():
            return None
        return float(self.har.predict(row)[0]) / 3600.0


DYNAMIC: dict[str, Callable[[], DynamicMargin]] = {"dynamic-ewma": EwmaMargin, "dynamic": DynamicMarginModel}
