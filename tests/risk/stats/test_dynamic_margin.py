"""The dynamic margin policy (risk.dynamic) and the harness's ``dynamic`` configuration (sim.dynamic).

Scenarios with literal numbers: z · σ · √h, the floor and cap, k ×, the three anti-procyclicality
rules, the hourly change limit, size tiers, limits rejected at construction; then the ``dynamic``
configuration fed candles: calm, wild, calm again, with a gap and a bad price.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from datetime import UTC, datetime

import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import dynamic as pol
from fluidmargin.risk.stats.jumps import MertonParams
from fluidmargin.sim import evaluate as evl
from fluidmargin.sim.dynamic import DynamicMarginModel, DynamicParams
from support.data import shared_path

HOUR_NS = 3600 * 10**9
H_300S = pol.Horizon(oracle_latency_ms=1_000, detection_ms=60_000, execution_ms=239_000)
H_100S = pol.Horizon(0, 60_000, 40_000)


def _params(**kw: object) -> pol.PolicyParams:
    base: dict[str, object] = {"floor_ppm": 5_000, "horizon": H_300S, "z": 4.0, "min_interval_s": 0}
    base.update(kw)
    return pol.PolicyParams(**base)  # type: ignore[arg-type]


def _rate(
    p: pol.PolicyParams, var_per_s: float, forecast: float | None = None, state: pol.PolicyState | None = None
) -> int:
    s = state or pol.PolicyState.start(p)
    return pol.target(p, s, pol.Observation(0, var_per_s, forecast)).rate_ppm


# --- the rate ----------------------------------------------------------------------------------------


def test_horizon_is_the_sum_of_its_parts() -> None:
    assert H_300S.total_ms == 300_000 and H_300S.total_s == 300.0
    with pytest.raises(ValidationError):
        pol.Horizon(0, 0, 0)


def test_z_sigma_sqrt_h_with_literal_numbers() -> None:
    p = _params()
    # σ = 1 % a minute, h = 300 s: 4 × 0.01 × √5 = 0.0894427 -> 89_443 ppm (rounded up)
    assert pol.sigma_rate_ppm(4.0, 0.01**2 / 60, 300.0) == 89_443
    assert _rate(p, 0.01**2 / 60) == 89_443
    assert _rate(p, 0.0) == 5_000  # the floor
    assert _rate(p, 1.0) == 250_000  # the cap (25 % by default)
    assert pol.initial_ppm(p, 89_443) == 178_886  # k = 2
    assert pol.initial_ppm(_params(initial_multiple_ppm=2_500_000), 10_001) == 25_003  # 25_002.5 up


def test_z_from_coverage_and_from_a_jump_model() -> None:
    assert pol.z_for_coverage(0.999) == pytest.approx(3.090232306, abs=1e-9)
    # no jumps: touching within h is twice as likely as ending beyond, z ≈ ppf(1 - 0.001 / 2) = 3.2905
    diffusion = MertonParams(0.0, 0.8, 0.0, 0.0, 0.1)
    assert pol.z_from_jump_model(diffusion, 60.0, 0.999) == pytest.approx(3.2905, abs=2e-3)
    # the same total variance with a share in jumps (20 a year of -5 % ± 8 %) has a fatter tail at 1e-3
    jumpy = MertonParams(0.0, 0.6, 20.0, -0.05, 0.08)
    assert pol.z_from_jump_model(jumpy, 86_400.0, 0.999) > 3.4
    with pytest.raises(ValidationError):
        pol.z_for_coverage(1.0)


def test_a_forecast_raises_the_rate_and_never_lowers_it() -> None:
    p = _params(z=1.0, horizon=H_100S)
    # σ√h: √(1e-6 × 100) = 1 % -> 10_000; the forecast √(9e-6 × 100) = 3 % -> 30_000
    assert _rate(p, 1e-6) == 10_000
    assert _rate(p, 1e-6, forecast=9e-6) == 30_000
    assert _rate(p, 1e-6, forecast=1e-8) == 10_000


# --- anti-procyclicality -----------------------------------------------------------------------------


def test_apc_buffer_is_charged_in_calm_and_released_in_stress() -> None:
    # z = 1, h = 100 s, long-run variance 1e-6 a second: stress when σ >= 2 × long-run, i.e. var >= 4e-6
    p = _params(z=1.0, horizon=H_100S, apc=pol.APC_BUFFER, long_run_var_per_s=1e-6, cap_ppm=500_000)
    s0 = pol.PolicyState.start(p)
    calm = pol.target(p, s0, pol.Observation(0, 3.9e-6))
    # raw: √(3.9e-4) = 1.97484 % -> 19_749; with the 25 % buffer: 24_686.25 -> 24_687
    assert (calm.raw_ppm, calm.rate_ppm, calm.stress) == (19_749, 24_687, False)
    s1, _ = pol.step(p, s0, pol.Observation(0, 3.9e-6))
    assert s1.calm_rate_ppm == 24_687
    # stress at var 4e-6: raw 20_000, the buffer already charged absorbs the rise: max(20_000, 24_687)
    stressed = pol.target(p, s1, pol.Observation(1, 4e-6))
    assert (stressed.raw_ppm, stressed.rate_ppm, stressed.stress) == (20_000, 24_687, True)
    # deeper stress, var 9e-6: raw 30_000 is above the buffered calm rate, no buffer on top
    assert pol.target(p, s1, pol.Observation(2, 9e-6)).rate_ppm == 30_000


def test_apc_stressed_weight_and_long_floor() -> None:
    # raw 10_000 (var 1e-6); stressed var 1e-4 -> 100_000: 0.75 × 10_000 + 0.25 × 100_000 = 32_500
    w = _params(z=1.0, horizon=H_100S, apc=pol.APC_STRESSED_WEIGHT, stressed_var_per_s=1e-4)
    assert _rate(w, 1e-6) == 32_500
    # long-run var 4e-6 -> 20_000 floors a raw 10_000; a raw 30_000 stays
    f = _params(z=1.0, horizon=H_100S, apc=pol.APC_LONG_FLOOR, long_run_var_per_s=4e-6)
    assert (_rate(f, 1e-6), _rate(f, 9e-6)) == (20_000, 30_000)
    assert _rate(_params(z=1.0, horizon=H_100S), 1e-6) == 10_000  # none


# --- the hourly limit --------------------------------------------------------------------------------


def test_changes_move_at_most_the_hourly_limit_in_any_trailing_hour() -> None:
    p = _params()  # floor 5_000, 20_000 ppm an hour
    wild = 0.01**2 / 60  # target 89_443
    s = pol.PolicyState.start(p)
    s, c = pol.step(p, s, pol.Observation(0, wild))
    assert c is not None and (c.previous_ppm, c.maintenance_ppm, c.initial_ppm) == (5_000, 25_000, 50_000)
    s, c = pol.step(p, s, pol.Observation(HOUR_NS // 2, wild))
    assert c is None and s.rate_ppm == 25_000  # the hour's budget is spent
    s, c = pol.step(p, s, pol.Observation(HOUR_NS + 1, wild))  # the first change left the trailing hour
    assert c is not None and c.maintenance_ppm == 45_000
    s, c = pol.step(p, s, pol.Observation(3 * HOUR_NS, 0.0))  # calm again: down, as slowly, to the floor
    assert c is not None and c.maintenance_ppm == 25_000
    for k in range(4, 8):
        s, c = pol.step(p, s, pol.Observation(k * HOUR_NS, 0.0))
    assert s.rate_ppm == 5_000


def test_every_change_carries_its_inputs() -> None:
    p = _params(apc=pol.APC_LONG_FLOOR, long_run_var_per_s=1e-9)
    _s, c = pol.step(p, pol.PolicyState.start(p), pol.Observation(0, 0.01**2 / 60, 1e-6, model="ewma"))
    assert c is not None
    got = dict(c.inputs)
    for key in ("sigma_hat_h", "forecast_sigma_h", "h_s", "z", "apc", "target_ppm", "previous_ppm", "model"):
        assert key in got
    assert (got["h_s"], got["z"], got["apc"], got["target_ppm"]) == ("300", "4", "long_floor", "89443")
    assert float(got["sigma_hat_h"]) == pytest.approx(0.01 * math.sqrt(5), rel=1e-5)


def test_small_or_early_moves_wait() -> None:
    p = _params(min_interval_s=300, min_step_ppm=250)
    s, c = pol.step(p, pol.PolicyState.start(p), pol.Observation(0, 0.01**2 / 60))
    assert c is not None
    s2, c2 = pol.step(p, s, pol.Observation(299 * 10**9, 0.0))
    assert c2 is None and s2.rate_ppm == 25_000  # too soon after the last change
    tiny = (0.0052 / 4) ** 2 / 300  # target 5_200: 200 above the floor, under the minimum step
    s3, c3 = pol.step(p, pol.PolicyState.start(p), pol.Observation(0, tiny))
    assert c3 is None and s3.rate_ppm == 5_000


# --- tiers --------------------------------------------------------------------------------------------


def test_size_tiers_multiply_then_add_and_stay_continuous() -> None:
    tiers = (pol.Tier(0), pol.Tier(1_000_000_000, 1_500_000), pol.Tier(5_000_000_000, 2_000_000, 5_000))
    p = _params(tiers=tiers)
    # base 10_000: 10_000, 10_000 × 1.5 = 15_000, 10_000 × 2 + 5_000 = 25_000
    assert pol.tier_rates_ppm(p, 10_000) == (10_000, 15_000, 25_000)
    b = pol.tier_brackets(p, 10_000)
    # cum: 1_000 USD (1e9 q) × 0.5 % = 5 USD; + 5_000 USD × 1 % = 50 USD -> 55 USD
    assert [x.cum_quote_q for x in b] == [0, 5_000_000, 55_000_000]
    for lo, hi in itertools.pairwise(b):  # the requirement is continuous at each floor
        f = hi.floor_quote_q
        assert f * lo.mmr_ppm // PPM - lo.cum_quote_q == f * hi.mmr_ppm // PPM - hi.cum_quote_q
    assert [x.max_leverage for x in b] == [50, 33, 20]  # 1 / (2 × rate), rounded down


# --- limits rejected at construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"cap_ppm": 4_000},  # a cap under the floor
        {"floor_ppm": 0},
        {"initial_multiple_ppm": 900_000},  # initial below maintenance
        {"tiers": (pol.Tier(0, 900_000),)},  # a tier charging 90 % of the base
        {"tiers": (pol.Tier(0), pol.Tier(10, PPM, -1))},  # a negative add-on
        {"apc": pol.APC_BUFFER, "long_run_var_per_s": 1e-8, "apc_buffer_ppm": 100_000},  # under EMIR's 25 %
        {"apc": pol.APC_STRESSED_WEIGHT, "stressed_var_per_s": 1e-6, "apc_stressed_weight_ppm": 200_000},
        {"apc": pol.APC_LONG_FLOOR},  # no long-run volatility to floor with
        {"apc": "sometimes"},
        {"stress_ratio_ppm": 500_000},
        {"max_change_ppm_per_hour": 0},
    ],
)
def test_limits_that_could_breach_the_floor_are_rejected(change: dict[str, object]) -> None:
    with pytest.raises(pol.LimitsRejected) as e:
        _params(**change)
    assert e.value.reasons
    kw: dict[str, object] = {"floor_ppm": 5_000, "horizon": H_300S, "z": 4.0, **change}
    got = pol.build_policy(**kw)
    assert isinstance(got, pol.Rejected) and got.reason


def test_several_reasons_are_reported_together() -> None:
    with pytest.raises(pol.LimitsRejected) as e:
        _params(cap_ppm=1_000, initial_multiple_ppm=500_000)
    assert len(e.value.reasons) == 2


# --- the harness's ``dynamic`` configuration -----------------------------------------------------------

T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000  # on an hour


def _candle(i: int, close: float, prev: float, step_ms: int = 60_000) -> evl.ClosedCandle:
    t = T0_MS + step_ms * i
    hi, lo = max(prev, close), min(prev, close)
    return evl.ClosedCandle("BTC", "BTC-PERP", t, (t + step_ms) * 10**6, prev, hi, lo, close)


def _feed(
    m: DynamicMarginModel, closes: list[float], skip: frozenset[int] = frozenset()
) -> list[tuple[int, evl.ParameterChange]]:
    out: list[tuple[int, evl.ParameterChange]] = []
    prev = closes[0]
    for i in range(1, len(closes)):
        if i in skip:
            continue
        c = _candle(i, closes[i], prev)
        prev = closes[i]
        out.extend((c.close_ns, x) for x in m.on_candle(c))
    return out


CALM = [100.0 * (1 + 0.0002 * (i % 2)) for i in range(600)]  # 0.02 % a minute, ten hours
WILD = [100.0 * (1 + 0.01 * (i % 2)) for i in range(240)]  # 1 % a minute, four hours


def test_dynamic_follows_volatility_within_its_limits() -> None:
    p = DynamicParams()
    changes = _feed(DynamicMarginModel(p), CALM + WILD + CALM + CALM)
    assert changes == _feed(DynamicMarginModel(p), CALM + WILD + CALM + CALM)  # deterministic
    mm = [(t, c.value) for t, c in changes if c.name == evl.MAINTENANCE_PARAMETER]
    im = [c.value for _t, c in changes if c.name == evl.INITIAL_PARAMETER]
    assert im == [2 * v for _t, v in mm]
    wild_from = _candle(len(CALM), 1, 1).open_ms * 10**6
    assert all(t > wild_from for t, _v in mm)  # calm: the floor holds
    peak = max(v for _t, v in mm)
    # z σ √h = 3.0902 × 1 % × √(91 s / 60 s) = 3.806 %: reached within two hours at 2 %-points an hour
    assert 30_000 < peak <= 38_060
    assert min(v for _t, v in mm) >= p.floor_ppm and mm[-1][1] < peak
    before = [p.floor_ppm] + [v for _t, v in mm]
    steps = [(t, abs(v - u)) for (t, v), u in zip(mm, before, strict=False)]
    for t, _d in steps:
        assert sum(d for u, d in steps if t - HOUR_NS < u <= t) <= p.max_change_ppm_per_hour
    rate = {evl.MAINTENANCE_PARAMETER: p.floor_ppm, evl.INITIAL_PARAMETER: 2 * p.floor_ppm}
    for _t, c in changes:  # initial stays above maintenance after every single change
        rate[c.name] = c.value
        assert rate[evl.INITIAL_PARAMETER] >= rate[evl.MAINTENANCE_PARAMETER]
    inputs = dict(changes[0][1].inputs)
    assert {"sigma_hat_h", "h_s", "z", "apc", "forecast_sigma_h", "gaps", "rejected"} <= set(inputs)
    assert inputs["h_s"] == "91"  # 1 s oracle + 60 s candles (measured) + 30 s execution
    assert inputs["apc"] == "buffer"


def test_dynamic_forecasts_after_a_day_of_hours() -> None:
    m = DynamicMarginModel()
    _feed(m, [100.0 * (1 + 0.001 * (i % 2)) for i in range(26 * 60)])
    s = m.markets["BTC-PERP"]
    assert len(s.hourly.rv) == 25 and s.forecast_var_per_s is not None and s.forecast_var_per_s > 0


def test_dynamic_counts_gaps_and_refuses_bad_prices() -> None:
    m = DynamicMarginModel()
    closes = CALM[:200]
    _feed(m, closes, skip=frozenset(range(50, 60)))
    s = m.markets["BTC-PERP"]
    assert (s.ewma.gaps, s.ewma.missing_steps) == (1, 10)
    before = s.ewma
    assert m.on_candle(dataclasses.replace(_candle(300, float("nan"), 100.0), close=float("nan"))) == ()
    assert s.rejected == 1 and s.ewma == before  # the state did not move


def test_dynamic_starts_at_the_floor_and_rejects_bad_limits() -> None:
    from fluidmargin.sim.venues import perp_venue

    cfg = DynamicMarginModel().configure(perp_venue(("BTC", "ETH")))
    for m in cfg.markets:
        assert m.margin.brackets[0].mmr_ppm == 2_500 and m.margin.imr_floor_ppm == 5_000
        assert m.margin.brackets[0].max_leverage == 200
    with pytest.raises(pol.LimitsRejected):
        DynamicParams(cap_ppm=1_000)
    with pytest.raises(ValidationError):
        DynamicParams(vol_model="lstm")


def test_dynamic_runs_in_the_harness_and_its_inputs_are_logged() -> None:
    """Two and a half hours of the LUNA collapse: the engine takes every change, each with its inputs."""
    luna = shared_path("prices", "binance_spot_1m_LUNAUSDT_2022-05", "LUNAUSDT-1m-2022-05.csv.gz")
    start_ms = int(datetime(2022, 5, 11, 12, tzinfo=UTC).timestamp() * 1000)
    ds = evl.load_datasets([luna], start_ms, 150)
    records: list[ev.Event] = []
    audit: list[tuple[int, evl.ParameterChange]] = []
    assert isinstance(evl.DYNAMIC["dynamic"](), DynamicMarginModel)  # registered with the harness
    f = evl.run_configuration(
        "dynamic",
        ds,
        evl.Options(200, 3, "waterfall", 0),
        tap=lambda _d, r: records.extend(e for _s, e in r),
        audit=audit,
    )
    asked = [e for e in records if isinstance(e, ev.ParameterChangeRequested)]
    assert len(asked) == len(audit) == f.parameter_changes > 0
    assert evl.MAINTENANCE_PARAMETER in {e.name for e in asked} and evl.INITIAL_PARAMETER in {e.name for e in asked}
    for e in asked:
        got = dict(kv.split("=", 1) for kv in e.inputs.split(";"))
        assert {"sigma_hat_h", "h_s", "z", "apc", "target_ppm", "previous_ppm"} <= set(got)
