"""Seeded populations: the engine's initial-margin check accepts them; same seed, same population."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim.population import PopulationParams, build_population, population_stats
from fluidmargin.sim.venues import perp_venue

T0 = 1_700_000_000 * 10**9
PRICES = {"BTC": "43210.57", "ETH": "2345.6", "SOL": "98.123"}


def _engine(preset: str) -> tuple[Engine, dict[str, int]]:
    cfg = perp_venue(tuple(PRICES), preset=preset)
    eng = Engine(cfg)
    for a, p in PRICES.items():
        eng.apply(ev.PriceObserved(T0, "t", a, p))
    return eng, {m.spec.symbol: int(m.mark_q) for m in eng.markets if m.mark_q is not None}


def _rejections(records: list[tuple[int, ev.Event]]) -> list[str]:
    return [e.reason for _s, e in records if isinstance(e, ev.InputRejected)]


@pytest.mark.parametrize("preset", ["binance", "hyperliquid", "dydx", "drift"])
def test_population_passes_the_initial_margin_check(preset: str) -> None:
    eng, marks = _engine(preset)
    pop = build_population(eng.cfg, marks, 3000, seed=5, ts_ns=T0 + 1)
    assert _rejections(eng.apply(pop)) == []
    assert eng.n_acc == 3000 and eng.n_pos == len(pop.pos_account)
    # every account really is at or above initial margin, exactly
    for r in range(0, eng.n_acc, 97):
        assert eng.cross_risk(r).equity_quote_q >= eng.cross_initial(r)
        for p in eng.positions_of(r):
            if eng.pos_iso[p]:
                assert eng.iso_risk(p).equity_quote_q >= eng.position_initial(p)
    assert eng.ledger_total() == eng.deposits[eng.quote_c]


def test_population_shape() -> None:
    eng, marks = _engine("binance")
    pop = build_population(eng.cfg, marks, 5000, seed=9, ts_ns=T0)
    pa = np.array(pop.pos_account)
    assert np.all(np.diff(pa) >= 0)  # sorted by account
    pairs = set(zip(pop.pos_account, pop.pos_market, strict=True))
    assert len(pairs) == len(pop.pos_account)  # at most one position per market per account
    per_acct = np.bincount(pa, minlength=5000)
    assert per_acct.min() == 1 and per_acct.max() == 3
    lev = np.array(pop.pos_leverage)
    assert lev.min() >= 2 and lev.max() <= 50
    assert np.mean(lev <= 10) > 0.6  # heavier at low leverage
    iso = np.array(pop.pos_isolated)
    isom = np.array(pop.pos_iso_margin_quote_q)
    assert 0.15 < iso.mean() < 0.35 and np.all((isom > 0) == (iso == 1))
    sizes = np.array(pop.pos_size_base_q)
    assert 0.45 < np.mean(sizes > 0) < 0.65 and np.all(sizes != 0)
    assert all(pop.pos_price_q[i] == marks[m] for i, m in enumerate(pop.pos_market))
    st = population_stats(pop, eng.cfg)
    assert st["accounts"] == 5000 and st["notional_usd"] > st["deposits_usd"] / 2


def test_leverage_capped_by_market_maximum() -> None:
    eng, marks = _engine("hyperliquid")  # SOL and ETH allow at most 20x / 25x there
    params = PopulationParams(leverages=(50,), leverage_weights=(1.0,))
    pop = build_population(eng.cfg, marks, 500, seed=1, ts_ns=T0, params=params)
    cap = {m.spec.symbol: m.spec.margin.brackets[0].max_leverage for m in eng.markets}
    assert all(lv == min(50, cap[m]) for lv, m in zip(pop.pos_leverage, pop.pos_market, strict=True))
    assert _rejections(eng.apply(pop)) == []


def test_same_seed_same_population_other_seed_differs() -> None:
    eng, marks = _engine("binance")
    a = build_population(eng.cfg, marks, 2000, seed=3, ts_ns=T0)
    b = build_population(eng.cfg, marks, 2000, seed=3, ts_ns=T0)
    c = build_population(eng.cfg, marks, 2000, seed=4, ts_ns=T0)
    assert a.to_dict() == b.to_dict()
    assert a.pos_size_base_q != c.pos_size_base_q


def test_thin_deposits_are_rejected_by_the_engine() -> None:
    """Control: the check the populations pass is live (half the deposit fails it)."""
    eng, marks = _engine("binance")
    pop = build_population(eng.cfg, marks, 2000, seed=3, ts_ns=T0)
    thin = dataclasses.replace(
        pop,
        deposits_quote_q=[d // 20 + 1 for d in pop.deposits_quote_q],
        pos_iso_margin_quote_q=[0] * len(pop.pos_account),
        pos_isolated=[0] * len(pop.pos_account),
    )
    reasons = _rejections(eng.apply(thin))
    assert reasons and "below initial margin" in reasons[0]
    assert eng.n_acc == 0


def test_market_weights_skew_the_mix() -> None:
    eng, marks = _engine("binance")
    pop = build_population(eng.cfg, marks, 20_000, seed=2, ts_ns=T0, market_weights=[4.0, 1.0, 1.0])
    share = np.mean(np.array(pop.pos_market) == "BTC-PERP")
    assert share > 0.45
