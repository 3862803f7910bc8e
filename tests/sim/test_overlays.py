"""Stress overlays (sim.overlays) on a small crash stream, applied by a real Engine: each one's effect shows
in the engine's outputs, and nothing is rejected but what the overlay means to be."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import FUNDING_SCALE, PRICE_SCALE
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import CollateralAsset
from fluidmargin.sim import overlays as ov
from fluidmargin.sim.candles import Candles
from fluidmargin.sim.paths import Paths
from fluidmargin.sim.scenarios import NS_PER_MS, PopulationSpec, Scenario
from fluidmargin.sim.venues import replay_venue

MIN_NS = 60 * 10**9
N_MIN = 300
DROP = {"BTC": 0.20, "ETH": 0.24}
START = {"BTC": 60_000.0, "ETH": 3_000.0}
PROBE = 9_000_000  # an account id the population does not use


def crash_candles() -> dict[str, Candles]:
    """Flat for an hour, down 20 % (ETH 24 %) over the next, flat, then back to 3 % below the start."""
    t = np.arange(N_MIN + 1, dtype=np.float64)
    down = np.clip((t - 60) / 60, 0, 1)
    up = np.clip((t - 180) / 60, 0, 1)
    cols = []
    for a in ("BTC", "ETH"):
        level = 1 - DROP[a] * down + (DROP[a] - 0.03) * up
        cols.append(START[a] * level * (1 + 0.0005 * np.sin(t * (1.3 if a == "BTC" else 0.7))))
    return Paths(("BTC", "ETH"), np.stack(cols, axis=1)[None], 60_000).candles(0)


CANDLES = crash_candles()
T0 = int(CANDLES["BTC"].ts_ms[0]) * NS_PER_MS


def at(minute: float) -> int:
    return T0 + int(minute * MIN_NS)


def stream(cfg: EngineConfig, accounts: int = 300) -> list[ev.Event]:
    return list(Scenario(cfg, CANDLES, None, PopulationSpec(accounts, 5), path="ohlc", clock_every_s=600).events())


def run(events: Iterable[ev.Event], cfg: EngineConfig) -> tuple[Engine, list[ev.Event]]:
    eng = Engine(cfg)
    out: list[ev.Event] = []
    last = -1
    for e in events:
        assert e.ts_ns >= last  # every overlay keeps the stream in time order
        last = e.ts_ns
        out.extend(x for _s, x in eng.apply(e)[1:])
    assert eng.ledger_total() == eng.deposits[eng.quote_c] - eng.withdrawals[eng.quote_c]
    return eng, out


def rejections(out: list[ev.Event]) -> list[str]:
    return [f"{type(x).__name__}: {x.reason}" for x in out if isinstance(x, ev.InputRejected | ev.OraclePriceRejected)]


def liquidations(out: list[ev.Event], market: str | None = None) -> list[ev.PositionLiquidated]:
    return [x for x in ev.expand(out) if isinstance(x, ev.PositionLiquidated) and market in (None, x.market)]


def merged(events: Sequence[ev.Event], extra: Sequence[ev.Event]) -> list[ev.Event]:
    return sorted([*events, *extra], key=lambda e: e.ts_ns)  # stable: an extra input follows its instant


# --- oracle latency ----------------------------------------------------------------------------------


def test_latency_delays_every_print_after_the_seed_and_the_engine_follows() -> None:
    cfg = replay_venue(CANDLES)
    base = stream(cfg)
    d = 30 * 10**9
    late = list(ov.oracle_latency(base, d))
    assert len(late) == len(base) and Counter(map(type, late)) == Counter(map(type, base))
    t_seed = next(e.ts_ns for e in base if isinstance(e, ev.AccountsSeeded))
    before = [e for e in base if isinstance(e, ev.PriceObserved)]
    after = [e for e in late if isinstance(e, ev.PriceObserved)]
    assert [(e.asset, e.price) for e in before] == [(e.asset, e.price) for e in after]  # nothing lost, same order
    assert all(b.ts_ns + (d if b.ts_ns > t_seed else 0) == a.ts_ns for b, a in zip(before, after, strict=True))
    _, out0 = run(base, cfg)
    _, out1 = run(late, cfg)
    assert rejections(out0) == [] and rejections(out1) == []
    l0, l1 = liquidations(out0), liquidations(out1)
    assert len(l0) > 20 and [x.ts_ns + d for x in l0] == [x.ts_ns for x in l1]  # the same, d later


def test_latency_jitter_is_seeded_and_keeps_each_sources_order() -> None:
    cfg = replay_venue(CANDLES)
    base = stream(cfg, 50)
    d, j = 5 * 10**9, 40 * 10**9  # jitter far above the 15 s between prints: order must be enforced
    a = list(ov.oracle_latency(base, d, j, seed=3, assets=["ETH"]))
    assert a == list(ov.oracle_latency(base, d, j, seed=3, assets=["ETH"]))
    assert a != list(ov.oracle_latency(base, d, j, seed=4, assets=["ETH"]))
    for asset in ("BTC", "ETH"):
        b0 = [e for e in base if isinstance(e, ev.PriceObserved) and e.asset == asset]
        b1 = [e for e in a if isinstance(e, ev.PriceObserved) and e.asset == asset]
        assert [e.price for e in b0] == [e.price for e in b1]
        ts = np.array([e.ts_ns for e in b1])
        assert np.all(np.diff(ts) > 0)
        lag = ts - np.array([e.ts_ns for e in b0])
        if asset == "BTC":
            assert np.all(lag == 0)  # not selected
        else:
            assert lag[-1] >= d and lag.max() <= d + j + 15 * 10**9 and len(set(lag.tolist())) > 10
    _, out = run(a, cfg)
    assert rejections(out) == []


# --- oracle outages ----------------------------------------------------------------------------------


def test_outage_leaves_the_index_stale_and_liquidates_nothing_at_unseen_prices() -> None:
    cfg = replay_venue(CANDLES)
    base = stream(cfg)
    w = (at(55), at(130))  # BTC's source is silent through its crash
    dark = list(ov.oracle_outage(base, [w], sources=["replay"], assets=["BTC"]))
    dropped = [e for e in base if e not in dark]
    assert dropped and all(isinstance(e, ev.PriceObserved) and e.asset == "BTC" for e in dropped)
    assert all(w[0] <= e.ts_ns < w[1] for e in dropped) and len(dropped) == 75 * 4
    acct = next(e for e in base if isinstance(e, ev.AccountsSeeded)).account_ids[0]
    probes = [
        ev.WithdrawalRequested(at(50), acct, "USD", 1, event_id="probe-before"),
        ev.WithdrawalRequested(at(70), acct, "USD", 1, event_id="probe-in"),
    ]
    _, out0 = run(merged(base, probes), cfg)
    _, out1 = run(merged(dark, probes), cfg)
    assert rejections(out0) == []
    assert rejections(out1) == ["InputRejected: oracle for BTC is STALE: open not allowed"]
    btc_index = [x for x in out1 if isinstance(x, ev.IndexPriceUpdated) and x.asset == "BTC"]
    assert not [x for x in btc_index if w[0] <= x.ts_ns < w[1]]
    last_mark = max((x for x in out1 if isinstance(x, ev.MarkPriceUpdated) and x.market == "BTC-PERP"
                     and x.ts_ns < w[0]), key=lambda x: x.ts_ns).price_q  # fmt: skip
    inside = [x for x in liquidations(out1, "BTC-PERP") if w[0] <= x.ts_ns < w[1]]
    assert all(x.price_q == last_mark for x in inside)  # only cross accounts, at the last price seen
    base_inside = [x for x in liquidations(out0, "BTC-PERP") if w[0] <= x.ts_ns < w[1]]
    assert len(base_inside) > len(inside)
    assert any(x.ts_ns == w[1] for x in liquidations(out1, "BTC-PERP"))  # the move arrives at once

    # a venue that liquidates only on fresh prices liquidates nothing on BTC in the dark
    strict = dataclasses.replace(cfg, default_oracle=dataclasses.replace(cfg.default_oracle, allow_liquidate=0))
    _, out2 = run(dark, strict)
    stale_from = w[0] + strict.default_oracle.max_staleness_ns
    assert not [x for x in liquidations(out2, "BTC-PERP") if stale_from < x.ts_ns < w[1]]
    assert rejections(out2) == []


def test_outage_windows_are_seeded_and_bad_windows_refused() -> None:
    w = ov.outage_windows(1, at(0), at(100), 5, 10 * MIN_NS)
    assert w == ov.outage_windows(1, at(0), at(100), 5, 10 * MIN_NS) != ov.outage_windows(2, at(0), at(100), 5, MIN_NS)
    assert len(w) == 5 and all(at(0) <= a < b <= at(100) and b - a <= 15 * MIN_NS for a, b in w)
    for windows, why in (([], "no outage windows"), ([(5, 5)], "ends before it starts"), ([(-1, 5)], ">= 0")):
        with pytest.raises(ValidationError, match=why):
            ov.oracle_outage([], windows)
    with pytest.raises(ValidationError, match="collection of names"):
        ov.oracle_outage([], [(1, 2)], sources="replay")


# --- liquidity drying up -----------------------------------------------------------------------------


def test_liquidity_crunch_worsens_impact_with_the_drawdown_and_restores_it() -> None:
    cfg = replay_venue(CANDLES, "waterfall")
    base = stream(cfg)
    crunched = list(ov.liquidity_crunch(base, cfg))
    _, out0 = run(base, cfg)
    _, out1 = run(crunched, cfg)
    assert rejections(out0) == [] and rejections(out1) == []
    changes = [(x.market, x.old, x.new) for x in out1 if isinstance(x, ev.ParameterChanged)]
    assert [c for c in changes if c[0] == "BTC-PERP"] == [
        ("BTC-PERP", 1_000_000, 2_000_000),  # 5 % down
        ("BTC-PERP", 2_000_000, 4_000_000),  # 10 %
        ("BTC-PERP", 4_000_000, 8_000_000),  # 20 %: the bottom
        ("BTC-PERP", 8_000_000, 4_000_000),  # the recovery, level by level
        ("BTC-PERP", 4_000_000, 2_000_000),
        ("BTC-PERP", 2_000_000, 1_000_000),  # back within 3 % of the peak
    ]
    req = [e for e in crunched if isinstance(e, ev.ParameterChangeRequested)]
    assert all(e.name == ov.COEFFICIENT_PARAMETER and "drawdown_ppm=" in e.inputs for e in req)
    slip0 = sum(x.slippage_quote_q for x in out0 if isinstance(x, ev.LiquidationExecuted))
    slip1 = sum(x.slippage_quote_q for x in out1 if isinstance(x, ev.LiquidationExecuted))
    assert slip0 > 0 and slip1 > 2 * slip0
    with pytest.raises(ValidationError, match="executes liquidations by 'mark'"):
        ov.liquidity_crunch(base, replay_venue(CANDLES))
    for levels, why in (
        ([], "no drawdown levels"),
        ([(0.1, 2.0), (0.05, 4.0)], "must deepen"),
        ([(1.5, 2.0)], "drawdown in"),
        ([(0.1, 0.5)], "multiplier >= 1"),
        ([(0.1, float("nan"))], "multiplier >= 1"),
        ([(0.1, 1e9)], "exceeds"),
    ):
        with pytest.raises(ValidationError, match=why):
            ov.liquidity_crunch(base, cfg, levels)
    with pytest.raises(ValidationError, match="no market on SOL"):
        ov.liquidity_crunch(base, cfg, assets=["SOL"])
    with pytest.raises(ValidationError, match="hysteresis must be in"):
        ov.liquidity_crunch(base, cfg, hysteresis=0.06)


# --- collateral de-pegs ------------------------------------------------------------------------------


def test_collateral_depeg_falls_with_the_crash_and_liquidates_who_holds_it() -> None:
    usde = CollateralAsset("USDE", 6, 950_000, price_asset="USDE")
    cfg = dataclasses.replace(replay_venue(CANDLES), collateral=(*replay_venue(CANDLES).collateral, usde))
    base = stream(cfg)
    t_seed = next(e.ts_ns for e in base if isinstance(e, ev.AccountsSeeded))
    probe = [
        ev.AccountOpened(t_seed + 1, PROBE),
        ev.Deposited(t_seed + 2, PROBE, "USDE", 10_000 * 10**6),
        ev.TradeFilled(t_seed + 3, PROBE, "BTC-PERP", 75_000_000, 60_000 * PRICE_SCALE),  # 0.75 BTC, 45k
    ]
    pegged = list(ov.collateral_depeg(base, [ov.Depeg("USDE", "BTC", beta=0.0)], cfg))
    depeg = ov.Depeg("USDE", "BTC", peg="1", beta=0.5, noise_ppm=200)
    falling = list(ov.collateral_depeg(base, [depeg], cfg, seed=9))
    assert falling == list(ov.collateral_depeg(base, [depeg], cfg, seed=9))
    assert falling != list(ov.collateral_depeg(base, [depeg], cfg, seed=10))
    usde_prints = [e for e in falling if isinstance(e, ev.PriceObserved) and e.asset == "USDE"]
    assert len(usde_prints) == 4 * N_MIN and all(e.source == "depeg" for e in usde_prints)
    bottom = min(float(e.price) for e in usde_prints)
    assert 1 - 0.5 * 0.2 * 1.02 - 0.001 < bottom < 1 - 0.5 * 0.2 * 0.98  # half the driver's drawdown
    assert all(abs(float(e.price) - 1) < 0.0008 for e in usde_prints if e.ts_ns < at(60))  # wiggles and noise
    _, out0 = run(merged(pegged, probe), cfg)
    _, out1 = run(merged(falling, probe), cfg)
    assert rejections(out0) == [] and rejections(out1) == []
    assert not [x for x in liquidations(out0) if x.account_id == PROBE]  # the BTC loss alone is covered
    hit = [x for x in liquidations(out1) if x.account_id == PROBE]
    assert hit and at(60) < hit[0].ts_ns <= at(121)
    with pytest.raises(ValidationError, match="no collateral is priced by 'USDC'"):
        ov.collateral_depeg(base, [ov.Depeg("USDC", "BTC")], cfg)
    with pytest.raises(ValidationError, match="no market on the driver 'SOL'"):
        ov.collateral_depeg(base, [ov.Depeg("USDE", "SOL")], cfg)
    bad_depegs: list[tuple[dict[str, object], str]] = [
        ({"beta": 1.5}, "beta must be in"),
        ({"threshold": -0.1}, "threshold"),
        ({"peg": "-1"}, "peg"),
        ({"noise_ppm": -1}, "noise_ppm"),
        ({"driver": "USDE"}, "different driver"),
    ]
    for kw, why in bad_depegs:
        with pytest.raises(ValidationError, match=why):
            ov.Depeg(**{"asset": "USDE", "driver": "BTC", **kw})  # type: ignore[arg-type]


# --- funding spikes ----------------------------------------------------------------------------------


def fidx_at(out: list[ev.Event], market: str, ts_ns: int) -> int:
    """The funding index of the last mark at or before ``ts_ns``."""
    return max((x for x in out if isinstance(x, ev.MarkPriceUpdated) and x.market == market and x.ts_ns <= ts_ns),
               key=lambda x: x.ts_ns).funding_index_fidx  # fmt: skip


def test_funding_spike_overrides_the_published_rate_within_its_window() -> None:
    cfg = replay_venue(CANDLES, funding_source="published")
    base = stream(cfg)
    rate = 3_000_000  # 0.3 % per 8 h, the cap
    w = (at(10), at(50))
    spiked = list(ov.funding_spike(base, cfg, ["BTC-PERP"], w[0], w[1], rate))
    pub = [e for e in spiked if isinstance(e, ev.FundingRatePublished)]
    assert [(e.ts_ns, e.market, e.rate_e9) for e in pub] == [(w[0], "BTC-PERP", rate), (w[1], "BTC-PERP", 0)]
    _, out0 = run(base, cfg)
    _, out1 = run(spiked, cfg)
    assert rejections(out0) == [] and rejections(out1) == []
    assert fidx_at(out0, "BTC-PERP", at(299)) == 0
    grown = fidx_at(out1, "BTC-PERP", at(51)) - fidx_at(out1, "BTC-PERP", at(9))
    expected = rate / 1e9 * 60_000 * (40 / 480) * FUNDING_SCALE
    assert abs(grown / expected - 1) < 0.002
    assert fidx_at(out1, "BTC-PERP", at(299)) == fidx_at(out1, "BTC-PERP", at(51))  # restored to 0 after
    assert fidx_at(out1, "ETH-PERP", at(299)) == 0
    paid = sum(x.amount_quote_q for x in out1 if isinstance(x, ev.FundingSettled) and x.market == "BTC-PERP")
    assert paid != 0 and not [x for x in out0 if isinstance(x, ev.FundingSettled) and x.amount_quote_q]
    # the stream's own publications inside the window are overridden, the last one restored after it
    own = [ev.FundingRatePublished(at(5), "BTC-PERP", 100_000), ev.FundingRatePublished(at(20), "BTC-PERP", 50_000)]
    s = list(ov.funding_spike(merged(base, own), cfg, ["BTC-PERP"], w[0], w[1], -rate))
    got = [(e.ts_ns, e.rate_e9) for e in s if isinstance(e, ev.FundingRatePublished)]
    assert got == [(at(5), 100_000), (w[0], -rate), (w[1], 50_000)]
    for kw, why in (
        ({"markets": ["SOL-PERP"]}, "unknown market"),
        ({"rate_e9": 10**8}, "beyond its cap"),
        ({"end_ns": w[0]}, "ends before it starts"),
        ({"rate_e9": 1.5}, "integer"),
    ):
        args = {"markets": ["BTC-PERP"], "start_ns": w[0], "end_ns": w[1], "rate_e9": rate, **kw}
        with pytest.raises(ValidationError, match=why):
            ov.funding_spike(base, cfg, **args)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="computes its own funding"):
        ov.funding_spike(base, replay_venue(CANDLES), ["BTC-PERP"], w[0], w[1], rate)


# --- all at once -------------------------------------------------------------------------------------


def test_overlays_compose_into_one_stress_stream() -> None:
    usde = CollateralAsset("USDE", 6, 950_000, price_asset="USDE")
    cfg0 = replay_venue(CANDLES, "waterfall", funding_source="published")
    cfg = dataclasses.replace(cfg0, collateral=(*cfg0.collateral, usde))
    base = stream(cfg, 200)

    def stressed() -> list[ev.Event]:
        s: Iterable[ev.Event] = ov.collateral_depeg(base, [ov.Depeg("USDE", "ETH", beta=0.3)], cfg, seed=1)
        s = ov.liquidity_crunch(s, cfg)
        s = ov.funding_spike(s, cfg, ["BTC-PERP", "ETH-PERP"], at(100), at(160), -2_000_000)
        s = ov.oracle_latency(s, 2 * 10**9, 3 * 10**9, seed=2)
        s = ov.oracle_outage(s, [(at(200), at(204))], assets=["ETH"])
        return list(s)

    a = stressed()
    assert a == stressed()
    eng, out = run(a, cfg)
    assert rejections(out) == []
    kinds = Counter(type(x).__name__ for x in out)
    assert kinds["ParameterChanged"] >= 6 and kinds["PositionLiquidated"] + kinds["PositionsLiquidated"] > 0
    assert eng.oracles.index_q["USDE"] < PRICE_SCALE  # de-pegged (and the ledger balanced: run())
