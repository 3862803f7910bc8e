"""Cover-2 from a live engine: the figure from the engine's columns equals the pure function on the same
arrays, a venue whose insurance fund is that figure survives the two driving defaults to the quantum (and
one quantum less does not), and the history scenario builder (worst moves over the horizon, joint moves
at common timestamps; bad candles refused)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation.cover2 import (
    Cover2Result,
    Scenarios,
    accounts_book,
    cover2,
    cover2_reference,
    joint_scenarios,
    make_book,
    market_shocks,
)
from fluidmargin.sim.candles import Candles, load_candles
from fluidmargin.sim.cover2 import (
    engine_book,
    engine_cover2,
    engine_history_scenarios,
    history_scenarios,
    with_cover2_fund,
)
from fluidmargin.sim.population import build_population
from fluidmargin.sim.venues import perp_venue
from support.data import ROOT, shared_path

T0 = 1_700_000_000 * 10**9
PRICES = {"BTC": "50000", "ETH": "3000", "SOL": "150"}
MARKETS = tuple(f"{a}-PERP" for a in PRICES)


def venue(fund_quote_q: int | None = None) -> Engine:
    cfg = perp_venue(tuple(PRICES), preset="binance", max_jump_ppm=900_000, single_source_liquidation=True)
    if fund_quote_q is not None:
        cfg = dataclasses.replace(cfg, insurance_fund_quote_q=fund_quote_q)
    eng = Engine(cfg)
    for a, p in PRICES.items():
        eng.apply(ev.PriceObserved(T0, "feed", a, p))
    return eng


@pytest.fixture(scope="module")
def live() -> tuple[Engine, ev.AccountsSeeded]:
    eng = venue()
    marks = {m.spec.symbol: int(m.mark_q) for m in eng.markets if m.mark_q is not None}
    pop = build_population(eng.cfg, marks, 400, seed=3, ts_ns=T0 + 1)
    assert not any(isinstance(o, ev.InputRejected) for _s, o in eng.apply(pop))
    return eng, pop


def shocks() -> Scenarios:
    sc = market_shocks(MARKETS, 300_000, 300_000)
    return sc + joint_scenarios(MARKETS, {"crash": dict.fromkeys(MARKETS, -300_000)})


def test_engine_figure_equals_the_pure_function_on_the_same_arrays(live: tuple[Engine, ev.AccountsSeeded]) -> None:
    """The arrays built here position by position (not bucket by bucket, as engine_book does) from the
    engine's public columns and exact bucket reads give the same figures as engine_cover2."""
    eng, _pop = live
    ids = [int(eng.acct_id[r]) for r in range(eng.n_acc)]
    owner, equity = list(range(eng.n_acc)), [eng.cross_risk(r).equity_quote_q for r in range(eng.n_acc)]
    pos_bucket, pos_market, pos_size = [], [], []
    for p in range(eng.n_pos):
        if eng.pos_size[p] == 0:
            continue
        r = int(eng.pos_acct[p])
        if eng.pos_iso[p]:
            owner.append(r)
            equity.append(eng.iso_risk(p).equity_quote_q)
        pos_bucket.append(len(owner) - 1 if eng.pos_iso[p] else r)
        pos_market.append(int(eng.pos_mkt[p]))
        pos_size.append(int(eng.pos_size[p]))
    book = make_book(
        ids,
        owner,
        equity,
        pos_bucket,
        pos_market,
        pos_size,
        [m.spec.symbol for m in eng.markets],
        [m.mark_q for m in eng.markets],
        [m.spec.size_decimals for m in eng.markets],
    )
    sc = shocks()
    res = engine_cover2(eng, sc)
    assert res == cover2(book, sc) == cover2_reference(book, sc)
    assert res.venue.fund_quote_q > 0 and len(res.venue.accounts) == 2
    assert set(res.per_market) == set(MARKETS)
    # isolated positions are buckets of their own
    assert engine_book(eng).bucket_owner.size == eng.n_acc + int(np.count_nonzero(eng.pos_iso[: eng.n_pos]))


def test_one_bucket_per_account_differs_when_margin_is_ring_fenced(live: tuple[Engine, ev.AccountsSeeded]) -> None:
    """Merging every position into one bucket per account (ignoring isolated margin) changes the figure:
    the bucket structure matters and engine_book keeps it."""
    eng, _pop = live
    total = [eng.cross_risk(r).equity_quote_q for r in range(eng.n_acc)]
    live_p = [p for p in range(eng.n_pos) if eng.pos_size[p]]
    for p in live_p:
        if eng.pos_iso[p]:
            total[int(eng.pos_acct[p])] += eng.iso_risk(p).equity_quote_q
    merged = accounts_book(
        [int(eng.acct_id[r]) for r in range(eng.n_acc)],
        total,
        [int(eng.pos_acct[p]) for p in live_p],
        [int(eng.pos_mkt[p]) for p in live_p],
        [int(eng.pos_size[p]) for p in live_p],
        MARKETS,
        [m.mark_q for m in eng.markets],
        [8, 8, 8],
    )
    sc = shocks()
    assert cover2(merged, sc).venue != engine_cover2(eng, sc).venue


def _only(pop: ev.AccountsSeeded, ids: set[int]) -> ev.AccountsSeeded:
    """The population restricted to accounts ``ids`` (their deposits and positions unchanged)."""
    rows = [i for i, a in enumerate(pop.account_ids) if a in ids]
    new_row = {r: k for k, r in enumerate(rows)}
    ps = [j for j, r in enumerate(pop.pos_account) if r in new_row]
    cols = ("pos_market", "pos_size_base_q", "pos_price_q", "pos_isolated", "pos_iso_margin_quote_q", "pos_leverage")
    return dataclasses.replace(
        pop,
        account_ids=[pop.account_ids[r] for r in rows],
        deposits_quote_q=[pop.deposits_quote_q[r] for r in rows],
        pos_account=[new_row[pop.pos_account[j]] for j in ps],
        **{c: [getattr(pop, c)[j] for j in ps] for c in cols},
    )


def _shock(eng: Engine, moves: np.ndarray) -> list[ev.Event]:
    """Each moved market's mark moved by its ppm (exact prices here), one tick each."""
    out = []
    for m, rec in enumerate(eng.markets):
        if moves[m]:
            assert rec.mark_q is not None
            q, rem = divmod(rec.mark_q * (10**6 + int(moves[m])), 10**6)
            assert rem == 0
            out += [o for _s, o in eng.apply(ev.PriceObserved(T0 + 2, "feed", rec.spec.base_asset, f"{q / 10**8:.8f}"))]
            assert rec.mark_q == q
    return out


@pytest.mark.parametrize("market", MARKETS)
def test_a_cover2_sized_fund_survives_the_two_defaults(live: tuple[Engine, ev.AccountsSeeded], market: str) -> None:
    """The two accounts that drive a market's figure, alone on a venue whose fund is that figure
    (with_cover2_fund), defaulting under the driving move: the engine's liquidations draw the fund to
    exactly zero and socialise nothing; with one quantum less, one quantum is socialised."""
    eng, pop = live
    sc = shocks()
    res = engine_cover2(eng, sc)
    fig = res.per_market[market]
    assert len(fig.accounts) == 2
    drivers = _only(pop, set(fig.accounts))
    sized = with_cover2_fund(eng.cfg, Cover2Result(fig, {}))
    assert sized.insurance_fund_quote_q == fig.fund_quote_q

    def run(fund: int) -> tuple[int, int, int]:
        e2 = venue(fund)
        assert not any(isinstance(o, ev.InputRejected) for _s, o in e2.apply(drivers))
        outs = _shock(e2, sc.moves_ppm[fig.scenario_index])
        draws = -sum(o.delta_quote_q for o in outs if isinstance(o, ev.InsuranceFundChanged) and o.delta_quote_q < 0)
        bad = sum(o.amount_quote_q for o in outs if isinstance(o, ev.BadDebtSocialized))
        return draws, bad, e2.insurance_q

    assert run(fig.fund_quote_q) == (fig.fund_quote_q, 0, 0)
    assert run(fig.fund_quote_q - 1) == (fig.fund_quote_q - 1, 1, 0)


def test_with_cover2_fund_adds_a_buffer_rounded_up(live: tuple[Engine, ev.AccountsSeeded]) -> None:
    eng, _pop = live
    res = engine_cover2(eng, shocks())
    f = res.venue.fund_quote_q
    cfg = with_cover2_fund(eng.cfg, res, extra_ppm=100_000)
    assert cfg.insurance_fund_quote_q == f + -(-f // 10)
    with pytest.raises(ValidationError, match="extra_ppm"):
        with_cover2_fund(eng.cfg, res, extra_ppm=-1)


# --- scenarios from history ------------------------------------------------------------------------------


def candles(
    close: list[float],
    low: list[float] | None = None,
    high: list[float] | None = None,
    step_ms: int = 60_000,
    ts: list[int] | None = None,
) -> Candles:
    c = np.asarray(close, dtype=np.float64)
    t = np.asarray(ts if ts is not None else [i * step_ms for i in range(len(c))], dtype=np.int64)
    lo = np.asarray(low if low is not None else close, dtype=np.float64)
    hi = np.asarray(high if high is not None else close, dtype=np.float64)
    text = {
        k: np.array([str(x) for x in v], dtype=object)
        for k, v in (("open", c), ("high", hi), ("low", lo), ("close", c))
    }
    return Candles("<synthetic>", t, c.copy(), hi, lo, c, text)


def brute_worst(c: Candles, horizon_ms: int) -> tuple[float, float]:
    """The worst fall and rise within the horizon, window by window (the definition, slowly)."""
    dn, up = 0.0, 0.0
    for i in range(len(c)):
        if c.ts_ms[i] + horizon_ms > c.ts_ms[-1]:
            break
        js = [j for j in range(i + 1, len(c)) if c.ts_ms[j] <= c.ts_ms[i] + horizon_ms or j == i + 1]
        dn = min(dn, min(c.low[j] for j in js) / c.close[i] - 1)
        up = max(up, max(c.high[j] for j in js) / c.close[i] - 1)
    return dn, up


def test_history_shocks_are_the_worst_moves_within_the_horizon() -> None:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))
    low = close * (1 - rng.uniform(0, 0.02, 400))
    high = close * (1 + rng.uniform(0, 0.02, 400))
    ts = np.cumsum(rng.choice([60_000, 60_000, 180_000, 900_000], 400))  # gaps, one longer than the horizon
    c = candles(list(close), list(low), list(high), ts=list(ts))
    sc = history_scenarios({"X": c}, horizon_s=600, joint=False)
    dn, up = brute_worst(c, 600_000)
    assert sc.names == ("X:up", "X:down")
    assert sc.moves_ppm[:, 0].tolist() == [int(np.ceil(up * 1e6)), int(np.floor(dn * 1e6))]
    # a quantile is milder than the worst, and refusing long gaps is the caller's choice
    q = history_scenarios({"X": c}, horizon_s=600, quantile=0.9, joint=False)
    assert 0 < q.moves_ppm[0, 0] < sc.moves_ppm[0, 0] and sc.moves_ppm[1, 0] < q.moves_ppm[1, 0] < 0
    with pytest.raises(ValidationError, match="gap of 900 s"):
        history_scenarios({"X": c}, horizon_s=600, max_gap_s=300)


def test_joint_scenarios_are_common_timestamps_cross_sections() -> None:
    """Two markets, one common crash at minute 5: the crash scenario is both markets' close-to-close
    moves from there, named with its time."""
    a = [100.0] * 6 + [80.0] * 6
    b = [10.0] * 6 + [9.0] * 6
    sc = history_scenarios({"A": candles(a), "B": candles(b)}, horizon_s=60)
    crash = [n for n in sc.names if n.startswith("crash@")]
    assert crash == ["crash@1970-01-01T00:05Z"]
    row = sc.names.index(crash[0])
    assert sc.moves_ppm[row].tolist() == [-200_000, -100_000] and sc.single[row] == -1
    assert sc.single[:4] == (0, 0, 1, 1)


def test_bad_candles_refused() -> None:
    good = candles([1.0, 2.0, 3.0])
    with pytest.raises(ValidationError, match="NaN"):
        history_scenarios({"X": candles([1.0, float("nan"), 3.0])}, horizon_s=60)
    with pytest.raises(ValidationError, match="non-positive"):
        history_scenarios({"X": candles([1.0, 0.0, 3.0])}, horizon_s=60)
    with pytest.raises(ValidationError, match="less than the liquidation horizon"):
        history_scenarios({"X": good}, horizon_s=3600)
    with pytest.raises(ValidationError, match="no candles for market 'Y'"):
        history_scenarios({"X": good}, markets=["X", "Y"], horizon_s=60)
    with pytest.raises(ValidationError, match="quantile"):
        history_scenarios({"X": good}, horizon_s=60, quantile=1.5)
    with pytest.raises(ValidationError, match="horizon_s"):
        history_scenarios({"X": good}, horizon_s=0)
    with pytest.raises(ValidationError, match="common timestamps"):
        history_scenarios({"X": good, "Y": candles([1.0, 2.0, 3.0], ts=[30_000, 90_000, 150_000])}, horizon_s=60)


def test_engine_scenarios_from_the_shipped_crash(live: tuple[Engine, ev.AccountsSeeded]) -> None:
    """BTC and ETH of May 2021 for a BTC/ETH venue: the worst hour falls more than 20 %, the joint crash is
    on the 19th, and the fund they size is larger than under 10 % shocks."""
    d = "binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19"
    data = {a: load_candles(shared_path("prices", d, f"{a}_USDT-1m.csv.gz")) for a in ("BTC", "ETH")}
    eng = venue()
    with pytest.raises(ValidationError, match="no candles for asset 'SOL'"):
        engine_history_scenarios(eng, data)
    sub = dataclasses.replace(eng.cfg, markets=eng.cfg.markets[:2])
    e2 = Engine(sub)
    for a in ("BTC", "ETH"):
        e2.apply(ev.PriceObserved(T0, "feed", a, PRICES[a]))
    marks = {m.spec.symbol: int(m.mark_q) for m in e2.markets if m.mark_q is not None}
    e2.apply(build_population(sub, marks, 300, seed=4, ts_ns=T0 + 1))
    sc = engine_history_scenarios(e2, data, horizon_s=3600)
    assert sc.markets == ("BTC-PERP", "ETH-PERP")
    assert sc.moves_ppm[sc.names.index("BTC-PERP:down"), 0] < -200_000
    assert any(n.startswith("crash@2021-05-19") for n in sc.names)
    mild = market_shocks(sc.markets, 100_000, 100_000)
    assert engine_cover2(e2, sc).venue.fund_quote_q > engine_cover2(e2, mild).venue.fund_quote_q


def test_benchmark_quick_prints_its_figures() -> None:
    """``benchmarks/bench_governance.py --quick``: the Cover-2 figure by its exact name, the screen agreeing
    with the reference on the sample, and an exact confirmation of a small share of the pairs."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_governance.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    assert float(lines["cover2_1m_accounts_s"]) > 0
    assert lines["cover2_reference_agrees"] == "yes"
    assert float(lines["cover2_exact_confirmation_share"].split()[0]) < 0.01
    assert float(lines["cover2_venue_fund_usd"].split()[0]) > 0
