"""sim.stress on the shipped ``crash`` scenario: the same numbers serially, on a process pool and on a real
Dask LocalCluster; seeds per path independent of the run's size; overlays, bootstrap, and bad input.

The scenario is small (300 accounts, two hours of 1-minute steps, 6 paths: under a second serially);
base seed 7 drives some paths through ADL and bad debt into ruin, so the executors are compared on
every kind of figure, not on zeros.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine import Engine
from fluidmargin.sim import stress
from fluidmargin.sim.candles import load_candles
from fluidmargin.sim.executors import DaskExecutor, ProcessExecutor, SerialExecutor, make_executor
from fluidmargin.sim.history import align
from fluidmargin.sim.metrics import PathTally
from fluidmargin.sim.stress import Bootstrap, Crunch, FundingSpike, Latency, Outage, StressResult, VenueSpec
from support.data import shared_path

SEED = 7
N_PATHS = 6


@pytest.fixture(scope="module")
def spec() -> stress.StressSpec:
    return stress.shipped("crash", accounts=300, n_steps=120)


@pytest.fixture(scope="module")
def serial(spec: stress.StressSpec) -> StressResult:
    return stress.run_stress(spec, N_PATHS, SEED)


def test_the_scenario_exercises_every_figure(serial: StressResult) -> None:
    s = serial.summary
    assert [p.index for p in serial.paths] == list(range(N_PATHS))
    assert s.ruined_paths > 0 and s.paths_with_adl > 0 and s.paths_with_bad_debt > 0
    assert all(p.liquidations > 0 and p.samples == 24 for p in serial.paths)
    assert s.var_q > 0 and s.es_q >= s.var_q and s.liquidations_at_risk_q > 0
    assert len({p.state_hash for p in serial.paths}) == N_PATHS  # every path a different market
    assert len({p.seed for p in serial.paths}) == N_PATHS


def test_same_numbers_on_a_process_pool_and_on_dask(spec: stress.StressSpec, serial: StressResult) -> None:
    from distributed import LocalCluster

    seen: list[tuple[int, int]] = []
    pooled = stress.run_stress(spec, N_PATHS, SEED, ProcessExecutor(2), progress=lambda d, n: seen.append((d, n)))
    assert seen == [(k, N_PATHS) for k in range(1, N_PATHS + 1)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = stress.run_stress(spec, N_PATHS, SEED, DaskExecutor(cluster.scheduler_address))  # as --scheduler
    assert (pooled.executor, dask.executor) == ("process", "dask")
    assert pooled.paths == serial.paths == dask.paths
    assert pooled.summary == serial.summary == dask.summary
    assert pooled.to_json()["summary"] == dask.to_json()["summary"]


def test_a_path_depends_only_on_the_base_seed_and_its_index(spec: stress.StressSpec, serial: StressResult) -> None:
    assert stress.run_path(spec, SEED, 4) == serial.paths[4]
    assert stress.run_stress(spec, 2, SEED).paths == serial.paths[:2]
    other = stress.run_stress(spec, 2, SEED + 1).paths
    assert [p.state_hash for p in other] != [p.state_hash for p in serial.paths[:2]]
    assert stress.path_seed(SEED, 4) == serial.paths[4].seed != stress.path_seed(SEED + 1, 4)


def test_the_tally_matches_the_engine(spec: stress.StressSpec) -> None:
    """A path's figures against the engine's own ledgers at the end of the path."""
    sc, events, _seed = spec.scenario(SEED, 0)
    eng = Engine(sc.config)
    tally = PathTally(eng)
    social0 = eng.socialized_q
    for e in events:
        tally.add(eng.apply(e))
    m = tally.result()
    assert m.fund_end_q == eng.insurance_q
    assert m.bad_debt_q == eng.socialized_q - social0
    assert m == dataclasses.replace(
        stress.run_path(spec, SEED, 0),
        samples=0,
        avg_requirement_q=0,
        p95_requirement_q=0,
        avg_open_interest_q=0,
        state_hash="",
        index=0,
        seed=0,
    )


# --- generators and overlays -------------------------------------------------------------------------


def test_bootstrap_of_real_returns_and_every_overlay() -> None:
    d = "binance_spot_1m_2024-07-26_to_2024-08-25_crash_2024-08-05"
    candles = {
        a: load_candles(shared_path("prices", d, f"{a}_USDT-1m.csv.gz")).window(None, 600) for a in ("BTC", "ETH")
    }
    gen = stress.generator_from_history(align(candles), "bootstrap", mean_block=30.0)
    assert isinstance(gen, Bootstrap)
    overlays = (Latency(3_000, 1_000), Outage(1, 300), Crunch(), FundingSpike(2_000_000, 0.25, 0.5))
    spec = stress.StressSpec(gen, 90, stress.PopulationSpec(200, 3), VenueSpec(insurance_usd=500), overlays)
    a = stress.run_stress(spec, 2, 11)
    b = stress.run_stress(spec, 2, 11)
    assert a.paths == b.paths
    plain = stress.run_stress(dataclasses.replace(spec, overlays=()), 2, 11)
    assert [p.state_hash for p in plain.paths] != [p.state_hash for p in a.paths]
    _sc, events, _ = spec.scenario(11, 0)
    names = {type(e).__name__ for e in events}
    assert "FundingRatePublished" in names  # the spike (the crunch acts on the crash scenario, below)


def test_the_crunch_and_the_latency_act(spec: stress.StressSpec) -> None:
    plain = dataclasses.replace(spec, overlays=())
    _sc, events, _ = spec.scenario(SEED, 0)
    got = list(events)
    want = list(plain.scenario(SEED, 0)[1])
    assert any(type(e).__name__ == "ParameterChangeRequested" for e in got)
    prints = [e.ts_ns for e in got if type(e).__name__ == "PriceObserved"]
    base = [e.ts_ns for e in want if type(e).__name__ == "PriceObserved"]
    assert len(prints) == len(base) and prints[-1] == base[-1] + 2_000 * 10**6  # 2 s late


def test_vary_population_draws_a_book_per_path(spec: stress.StressSpec) -> None:
    same = [spec.scenario(SEED, i)[1] for i in range(2)]
    varied = [dataclasses.replace(spec, vary_population=True).scenario(SEED, i)[1] for i in range(2)]

    def book(events: object) -> list[int]:
        return next(e.deposits_quote_q for e in events if type(e).__name__ == "AccountsSeeded")  # type: ignore[attr-defined]

    a, b = (book(e) for e in same)
    c, d = (book(e) for e in varied)
    assert np.allclose(a, b, rtol=0.05) and c != d  # the same book (priced at each path's start) or not


def test_overlays_from_text() -> None:
    assert stress.parse_overlay("latency:delay_ms=5000,jitter_ms=1_000") == Latency(5_000, 1_000)
    assert stress.parse_overlay("crunch:levels=0.05x2+0.1x4") == Crunch(((0.05, 2.0), (0.1, 4.0)))
    assert stress.parse_overlay("funding:rate_e9=-500000,at=0.1,hours=2") == FundingSpike(-500_000, 0.1, 2.0)
    assert stress.parse_overlay(" outage ") == Outage()


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, why",
    [
        ("tsunami", "unknown overlay 'tsunami'"),
        ("latency:delay=5", "not one of delay_ms"),
        ("latency:delay_ms=nan", "cannot read 'nan'"),
        ("latency:delay_ms=-1", "delay_ms must be an integer"),
        ("funding:at=nan", "finite"),
        ("funding:hours=inf", "finite"),
        ("crunch:levels=nanx2", "finite"),
        ("crunch:levels=0.2x2+0.1x4", "deepen"),
        ("outage:count=0", "count must be"),
    ],
)
def test_bad_overlays_are_refused(spec: stress.StressSpec, text: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        o = stress.parse_overlay(text)
        stress.run_stress(dataclasses.replace(spec, overlays=(o,)), 1, 0)


@pytest.mark.parametrize(
    "n_paths, seed, level, why",
    [
        (0, 1, "0.99", "n_paths must be"),
        (-3, 1, "0.99", "n_paths must be"),
        (2.0, 1, "0.99", "n_paths must be"),
        (2, -1, "0.99", "seed must be"),
        (2, 1, math.nan, "level"),
        (2, 1, 1.0, "level"),
    ],
)
def test_bad_runs_are_refused(spec: stress.StressSpec, n_paths: object, seed: object, level: object, why: str) -> None:
    ran: list[int] = []
    with pytest.raises(ValidationError, match=why):
        stress.run_stress(spec, n_paths, seed, level=level, progress=lambda d, n: ran.append(d))  # type: ignore[arg-type]
    assert not ran


def test_bad_specs_are_refused(spec: stress.StressSpec) -> None:
    with pytest.raises(ValidationError, match="n_steps"):
        dataclasses.replace(spec, n_steps=0)
    with pytest.raises(ValidationError, match="samples"):
        dataclasses.replace(spec, samples=0)
    with pytest.raises(ValidationError, match="unknown overlay"):
        dataclasses.replace(spec, overlays=("crunch",))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="finite"):
        stress.shipped("calm", overlays=(Crunch(((math.nan, 2.0),)),))
    with pytest.raises(ValidationError, match="preset"):
        VenueSpec(preset="ftx")
    with pytest.raises(ValidationError, match="unknown scenario"):
        stress.shipped("meteor")
    with pytest.raises(ValidationError, match="model must be"):
        stress.generator_from_history(None, "heston")  # type: ignore[arg-type]
    # the crunch needs impact execution: refused before the first path, not in a worker
    mark = dataclasses.replace(spec, venue=VenueSpec(liquidation="close_at_mark"))
    with pytest.raises(ValidationError, match="executes liquidations by 'mark'"):
        stress.run_stress(mark, 2, 1, ProcessExecutor(2))


def test_an_unreachable_scheduler_is_a_clear_error(spec: stress.StressSpec) -> None:
    with pytest.raises(ValidationError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:1"):
        stress.run_stress(spec, 1, 0, DaskExecutor("tcp://127.0.0.1:1", connect_timeout_s=0.5))


def test_executor_choice() -> None:
    assert isinstance(make_executor(), ProcessExecutor)
    assert isinstance(make_executor("serial"), SerialExecutor)
    assert make_executor(workers=3).workers == 3  # type: ignore[attr-defined]
    assert isinstance(make_executor(scheduler="tcp://127.0.0.1:1"), DaskExecutor)
    for bad in ({"kind": "threads"}, {"kind": "dask"}, {"workers": 0}, {"kind": "serial", "scheduler": "tcp://x:1"}):
        with pytest.raises(ValidationError):
            make_executor(**bad)  # type: ignore[arg-type]
