"""sim.metrics: each per-path figure on hand-made output events (rounding included), the fast exact
requirement against the evaluation harness's, quantiles against evaluate.p95_nearest_rank, and the
statistics over paths (ruin, VaR, ES, liquidations-at-risk) on hand-made paths."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.instruments import ImpactSpec, LiquidationPolicy
from fluidmargin.sim import evaluate, metrics
from fluidmargin.sim.metrics import PathMetrics, PathTally, StressSummary
from fluidmargin.sim.paths import AssetModel, GbmParams, MonteCarlo
from fluidmargin.sim.scenarios import PopulationSpec, Scenario
from fluidmargin.sim.venues import perp_venue, replay_venue

FUND_Q = 1_000 * 10**6
T = 1_700_000_000 * 10**9


def engine(fund_usd: int = 1_000) -> Engine:
    impact = LiquidationPolicy(execution="impact", batch=True, impact=ImpactSpec("sqrt", 10**14, 40_000))
    return Engine(perp_venue(("BTC", "ETH"), insurance_fund_usd=fund_usd, policies={"ETH": impact}))


def fund(delta_usd: float, balance_usd: float, reason: str = "shortfall", f: str = "main") -> ev.InsuranceFundChanged:
    return ev.InsuranceFundChanged(T, round(delta_usd * 10**6), round(balance_usd * 10**6), reason, 1, f)


def tally(events: list[ev.Event], fund_usd: int = 1_000) -> PathMetrics:
    t = PathTally(engine(fund_usd))
    t.add_all(events)
    return t.result()


# --- one path, by hand -------------------------------------------------------------------------------


def test_liquidations_notional_rounds_up_and_counts_every_close() -> None:
    # 1.5 BTC at 60,000.00000001: 90,000.000000015 USD -> 90,000.000001 (up); 0.25 ETH short at 3,000
    events: list[ev.Event] = [
        ev.PositionLiquidated(T, 1, "BTC-PERP", 150_000_000, 6_000_000_000_001, -5, 7_000_000),
        ev.PositionLiquidated(T, 2, "ETH-PERP", -25_000_000, 300_000_000_000, 0, 1_000_000),
    ]
    m = tally(events)
    assert m.liquidations == 2
    assert m.liquidated_notional_q == 90_000_000_001 + 750_000_000
    assert m.penalties_q == 8_000_000


def test_columnar_mass_close_counts_each_row() -> None:
    t = PathTally(engine())
    one = ev.PositionLiquidated(T, 1, "BTC-PERP", 10**8, 6 * 10**12, 0, 0)
    t.add_all([one, one])
    assert t.result().liquidations == 2  # the tally is report.WaterfallTally's: one per close


def test_slippage_adl_and_bad_debt() -> None:
    events: list[ev.Event] = [
        ev.LiquidationExecuted(T, "ETH-PERP", 10**8, 299_000_000_000, 300_000_000_000, 10_000_000, -10_000_000),
        ev.LiquidationExecuted(T, "ETH-PERP", -(10**8), 301_000_000_000, 300_000_000_000, 2_500_000, -2_500_000),
        ev.AutoDeleveraged(T, 5, "BTC-PERP", -3, 6_000_000_000_000, 1, 9, 0),  # 3e-8 BTC at 60k: 0.0018 USD
        ev.BadDebtSocialized(T, 9, 4_000_000),
    ]
    m = tally(events)
    assert m.slippage_q == 12_500_000
    assert (m.adl_events, m.adl_notional_q) == (1, 1_800)
    assert (m.bad_debt_events, m.bad_debt_q) == (1, 4_000_000)
    assert m.ruined and m.funds_exhausted == ("main",)  # a loss socialised: the fund ran dry


def test_fund_drawdown_end_and_protocol_loss() -> None:
    events = [fund(-300, 700), fund(100, 800, "liquidation_fee"), fund(-500, 300), fund(50, 350, "liquidation_fee")]
    m = tally(events)
    assert (m.fund_start_q, m.fund_min_q, m.fund_end_q) == (FUND_Q, 300 * 10**6, 350 * 10**6)
    assert m.fund_drawdown_q == 700 * 10**6
    assert m.fund_draws_q == 800 * 10**6
    assert not m.ruined
    assert m.protocol_loss_q == 650 * 10**6
    with_debt = tally([*events, ev.BadDebtSocialized(T, 3, 1)])
    assert with_debt.protocol_loss_q == 650 * 10**6 + 1


def test_a_fund_that_gains_loses_nothing() -> None:
    m = tally([fund(-10, 990), fund(30, 1_020, "liquidation_fee")])
    assert m.protocol_loss_q == 0
    assert m.fund_drawdown_q == 10 * 10**6


def test_ruin_when_a_draw_empties_a_fund() -> None:
    assert tally([fund(-1_000, 0)]).funds_exhausted == ("main",)
    assert not tally([fund(-999.999999, 0.000001)]).ruined
    # an own fund of a market, beside the main one: its balance counts in the level, its ruin by name
    m = tally([fund(-40, 0, f="ETH-PERP"), fund(-10, 990)])
    assert m.funds_exhausted == ("ETH-PERP",)
    assert m.fund_end_q == 990 * 10**6  # the ETH fund was seeded by nothing here: 0 + 990 main


def test_a_refused_population_stops_the_path() -> None:
    t = PathTally(engine())
    seed = ev.AccountsSeeded(T, [1], [10**6], [], [], [], [], [], [], [])
    with pytest.raises(FluidMarginError, match="rejected the account population: no"):
        t.add([(1, seed), (2, ev.InputRejected(T, "AccountsSeeded", "no"))])
    other = PathTally(engine())
    other.add([(1, ev.ClockAdvanced(T)), (2, ev.InputRejected(T, "ClockAdvanced", "late"))])
    assert other.result().inputs_rejected == 1


# --- the requirement and open interest of a real engine ------------------------------------------------


@pytest.mark.parametrize("preset", ["binance", "drift"])  # plain brackets (the kernel) and drift's size premium
def test_requirement_matches_the_evaluation_harness(preset: str) -> None:
    mc = MonteCarlo((AssetModel("BTC", 60_000.0, GbmParams(0.0, 0.8)), AssetModel("ETH", 3_000.0, GbmParams(0.0, 1.0))))
    paths = mc.simulate(1, 30, seed=5)
    config = replay_venue(paths.candles(0), "waterfall", preset=preset)
    sc = Scenario(config, paths.candles(0, config), None, PopulationSpec(300, 4), path="close")
    eng = Engine(config)
    t = PathTally(eng)
    seen = 0
    for i, e in enumerate(sc.events()):
        t.add(eng.apply(e))
        if eng.n_acc and i % 7 == 0:
            assert metrics.requirement_quote_q(eng) == evaluate.requirement_quote_q(eng) > 0
            seen += 1
            t.sample()
    assert seen >= 3
    m = t.result()
    assert m.samples == seen
    oi = sum(m_.long_oi_base_q * m_.mark_q // 10 ** (m_.spec.size_decimals + 2) for m_ in eng.markets if m_.mark_q)
    assert metrics.open_interest_quote_q(eng) == oi > 0
    assert m.capital_efficiency == m.avg_open_interest_q / m.avg_requirement_q


def test_requirement_averages_round_up_and_p95_is_nearest_rank() -> None:
    t = PathTally(engine())
    t.requirements = [10, 11, 11]
    t.open_interest = [100, 100, 101]
    m = t.result()
    assert m.avg_requirement_q == 11  # 32/3 up
    assert m.avg_open_interest_q == 100  # 301/3 down
    assert m.p95_requirement_q == 11


# --- quantiles ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(10**15), 10**15), max_size=60))
def test_quantile_at_95_is_the_harness_p95(values: list[int]) -> None:
    assert metrics.quantile_nearest_rank(values, 0.95) == evaluate.p95_nearest_rank(values)


def test_quantile_and_shortfall_by_hand() -> None:
    losses = list(range(100, 0, -1))  # 1..100, shuffled order
    assert metrics.quantile_nearest_rank(losses, 0.99) == 99  # ceil(0.99 * 100) = 99: not 100 (binary 0.99)
    assert metrics.quantile_nearest_rank(losses, "0.991") == 100
    assert metrics.expected_shortfall(losses, 0.99) == 100  # mean of 99, 100 = 99.5 -> up
    assert metrics.expected_shortfall([0, 0, 0, 7], 0.5) == 3  # ranks 2..4: (0 + 0 + 7) / 3, up
    assert metrics.quantile_nearest_rank([5], 0.01) == 5
    assert metrics.quantile_nearest_rank([], 0.5) == 0


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, math.nan, math.inf, "abc", True, None])
def test_levels_outside_zero_one_are_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="level"):
        metrics.level_fraction(bad)  # type: ignore[arg-type]


# --- over paths --------------------------------------------------------------------------------------


def path(index: int, loss_usd: int, liquidated_usd: int, ruined: bool = False, adl: int = 0) -> PathMetrics:
    base = tally([])
    return dataclasses.replace(
        base,
        index=index,
        fund_end_q=FUND_Q - loss_usd * 10**6,
        fund_min_q=FUND_Q - loss_usd * 10**6,
        liquidated_notional_q=liquidated_usd * 10**6,
        funds_exhausted=("main",) if ruined else (),
        adl_events=adl,
    )


def test_summary_over_hand_made_paths() -> None:
    paths = [
        path(i, loss, 10 * i, ruined=loss >= 900, adl=int(loss > 500)) for i, loss in enumerate(range(0, 1000, 10))
    ]
    s: StressSummary = metrics.summarise(paths, 0.95)
    assert s.paths == 100
    assert s.ruined_paths == 10 and s.probability_of_ruin == 0.1  # losses 900..990
    assert s.paths_with_adl == 49  # 510..990
    assert s.level == Fraction(19, 20)
    assert s.var_q == 940 * 10**6  # the 95th smallest of 0, 10, ..., 990
    assert s.es_q == 965 * 10**6  # mean of 940, 950, ..., 990
    assert s.liquidations_at_risk_q == 940 * 10**6
    d = s.figure("protocol_loss")
    assert (d.mean, d.p50, d.p95, d.max) == (495 * 10**6, 490 * 10**6, 940 * 10**6, 990 * 10**6)
    assert s.to_json()["var"] == "940"
    assert s.to_json()["probability_of_ruin"] == 0.1


def test_summary_refuses_no_paths_and_paths_out_of_order() -> None:
    with pytest.raises(ValidationError, match="no paths"):
        metrics.summarise([])
    with pytest.raises(ValidationError, match="index order"):
        metrics.summarise([path(1, 0, 0), path(0, 0, 0)])
    with pytest.raises(ValidationError, match="level"):
        metrics.summarise([path(0, 0, 0)], math.nan)
