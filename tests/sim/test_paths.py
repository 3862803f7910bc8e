"""Scenario generators (sim.paths): pinned bytes, the statistics each model promises, candles the replay takes."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.risk.stats.jump_models import KouParams, MertonParams
from fluidmargin.risk.stats.vol import GarchParams
from fluidmargin.sim import evaluate
from fluidmargin.sim.candles import Candles
from fluidmargin.sim.history import AlignedHistory, align, correlation_from_returns
from fluidmargin.sim.paths import (
    MS_PER_YEAR,
    AssetModel,
    GbmParams,
    MonteCarlo,
    Paths,
    Regime,
    RegimeChain,
    block_indices,
    bootstrap,
    calibrate,
    path_candles,
)
from fluidmargin.sim.scenarios import PopulationSpec, Scenario
from fluidmargin.sim.venues import replay_venue

DT = 60_000 / MS_PER_YEAR  # one minute in years
CORR3 = ((1.0, 0.8, 0.6), (0.8, 1.0, 0.5), (0.6, 0.5, 1.0))

# SHA-256 of the bytes of small paths, computed by this code; the same on any machine (sim.draws)
PINNED_MC = "5da97e9adaade3f149780dc439869256c0f456195f24935a16635e46de2be5db"
PINNED_BOOTSTRAP = "7813c583ac67a0ba675c147235d824612d7c8c71a69269b5bd52c2617dc31d67"


def full_model() -> MonteCarlo:
    """Every feature at once: Merton, Kou and GBM assets, correlation, regimes, GARCH, common jumps."""
    models = (
        AssetModel("BTC", 60_000.0, MertonParams(0.05, 0.6, 2_000.0, -0.01, 0.02)),
        AssetModel("ETH", 3_000.0, KouParams(0.0, 0.8, 3_000.0, 0.3, 60.0, 40.0)),
        AssetModel("SOL", 150.0, GbmParams(-0.2, 1.1)),
    )
    chain = RegimeChain.persistent((Regime("calm"), Regime("stress", -5.0, 3.0, 4.0)), (30.0, 10.0))
    return MonteCarlo(models, CORR3, chain, GarchParams(1e-8, 0.1, 0.85))


def synthetic_history(n: int = 2_000) -> AlignedHistory:
    """A deterministic two-asset history (no random numbers): correlated wiggles of known returns."""
    k = np.arange(n, dtype=np.float64)
    a = 100.0 * np.cumprod(1.0 + 0.002 * np.sin(0.7 * k) + 0.001 * np.cos(0.13 * k))
    b = 10.0 * np.cumprod(1.0 + 0.003 * np.sin(0.7 * k + 0.2) - 0.0005 * np.cos(0.31 * k))
    ts = 1_700_000_040_000 + 60_000 * np.arange(n, dtype=np.int64)

    def c(x: np.ndarray) -> Candles:
        text = {f: np.array([repr(float(v)) for v in x], dtype=object) for f in ("open", "high", "low", "close")}
        return Candles("<synthetic>", ts, x, x, x, x, text)

    return align({"A": c(a), "B": c(b)})


def log_increments(p: Paths) -> np.ndarray:
    return np.log(p.prices[:, 1:] / p.prices[:, :-1])


# --- determinism -------------------------------------------------------------------------------------


def test_pinned_digests() -> None:
    assert full_model().simulate(8, 64, seed=2024).digest() == PINNED_MC
    assert bootstrap(synthetic_history(), 8, 64, seed=2024, mean_block=5.0).digest() == PINNED_BOOTSTRAP


def test_same_seed_same_bytes_other_seed_other_path() -> None:
    mc = full_model()
    a, b, c = mc.simulate(20, 120, 7), mc.simulate(20, 120, 7), mc.simulate(20, 120, 8)
    assert a.prices.tobytes() == b.prices.tobytes() and a.digest() == b.digest()
    assert a.regimes is not None and b.regimes is not None and np.array_equal(a.regimes, b.regimes)
    assert np.all(a.prices[:, 1:] != c.prices[:, 1:]) and a.digest() != c.digest()
    h = synthetic_history()
    x, y, z = (bootstrap(h, 20, 120, s) for s in (7, 7, 8))
    assert x.prices.tobytes() == y.prices.tobytes()
    assert x.digest() != z.digest()
    # paths are prices from the start: step 0 is the start price on every path
    assert np.all(a.prices[:, 0] == [60_000.0, 3_000.0, 150.0])
    assert a.prices.shape == (20, 121, 3) and a.n_paths == 20 and a.n_steps == 120


def test_a_day_of_minutes_for_a_thousand_paths_takes_seconds() -> None:
    t = time.perf_counter()
    p = full_model().simulate(1_000, 1_440, seed=1)
    took = time.perf_counter() - t
    assert p.prices.shape == (1_000, 1_441, 3) and np.all(np.isfinite(p.prices)) and np.all(p.prices > 0)
    assert took < 20.0, f"{took:.1f} s"  # about 1 s on a quiet 2-core machine


# --- the models' statistics --------------------------------------------------------------------------


def test_gbm_moments_and_correlation() -> None:
    models = tuple(
        AssetModel(a, 100.0, GbmParams(mu, s)) for a, mu, s in (("A", 0.5, 0.4), ("B", -1.0, 0.9), ("C", 0, 1.5))
    )
    p = MonteCarlo(models, CORR3).simulate(200, 1_000, seed=3)
    x = log_increments(p).reshape(-1, 3)
    n = x.shape[0]
    for j, (mu, s) in enumerate(((0.5, 0.4), (-1.0, 0.9), (0.0, 1.5))):
        sd = s * math.sqrt(DT)
        assert abs(x[:, j].mean() - mu * DT) < 4 * sd / math.sqrt(n)
        assert abs(x[:, j].std() / sd - 1.0) < 0.01
    np.testing.assert_allclose(np.corrcoef(x.T), CORR3, atol=0.01)
    independent = MonteCarlo(models).simulate(200, 1_000, seed=3)
    np.testing.assert_allclose(np.corrcoef(log_increments(independent).reshape(-1, 3).T), np.eye(3), atol=0.01)


def test_jump_models_add_their_variance_and_drift() -> None:
    merton = MertonParams(0.0, 0.5, 5_000.0, -0.01, 0.02)
    kou = KouParams(0.0, 0.5, 5_000.0, 0.4, 80.0, 50.0)
    for common in (True, False):
        mc = MonteCarlo((AssetModel("M", 100.0, merton), AssetModel("K", 100.0, kou)), common_jumps=common)
        x = log_increments(mc.simulate(400, 1_000, seed=11)).reshape(-1, 2)
        lam = 5_000.0 * DT
        var_m = 0.25 * DT + lam * (0.01**2 + 0.02**2)
        mean_m = lam * -0.01
        assert abs(x[:, 0].var() / var_m - 1.0) < 0.05
        assert abs(x[:, 0].mean() - mean_m) < 4 * math.sqrt(var_m / x.shape[0])
        mean_k = lam * (0.4 / 80.0 - 0.6 / 50.0)
        var_k = 0.25 * DT + lam * (0.4 * 2 / 80.0**2 + 0.6 * 2 / 50.0**2)
        assert abs(x[:, 1].mean() - mean_k) < 4 * math.sqrt(var_k / x.shape[0])
        assert abs(x[:, 1].var() / var_k - 1.0) < 0.05


def test_common_jumps_arrive_together_and_keep_each_rate() -> None:
    big = MertonParams(0.0, 0.01, 10_000.0, -0.1, 0.01)  # jumps dwarf the diffusion: |x| > 0.05 is a jump
    half = MertonParams(0.0, 0.01, 5_000.0, -0.1, 0.01)
    models = (AssetModel("A", 100.0, big), AssetModel("B", 100.0, half))
    lam = 10_000.0 * DT
    for common in (True, False):
        x = log_increments(MonteCarlo(models, common_jumps=common).simulate(200, 2_000, seed=5)).reshape(-1, 2)
        ja, jb = np.abs(x[:, 0]) > 0.05, np.abs(x[:, 1]) > 0.05
        n = x.shape[0]
        assert abs(ja.mean() / (1 - math.exp(-lam)) - 1) < 0.05
        assert abs(jb.mean() / (1 - math.exp(-lam / 2)) - 1) < 0.05
        both = (ja & jb).sum()
        if common:
            assert both / jb.sum() > 0.97  # every jump of B comes with one of A (thinning)
        else:
            assert both < 4 * n * ja.mean() * jb.mean() + 10


def test_regime_chain_switches_and_scales_the_volatility() -> None:
    chain = RegimeChain.persistent((Regime("calm"), Regime("stress", 0.0, 4.0)), (200.0, 50.0))
    mc = MonteCarlo((AssetModel("A", 100.0, GbmParams(0.0, 0.5)),), regimes=chain)
    p = mc.simulate(300, 2_000, seed=9)
    assert p.regimes is not None and p.regimes.shape == (300, 2_000)
    assert np.all(p.regimes[:, 0] == 0)
    late = p.regimes[:, 1_000:]
    assert abs(late.mean() - 0.2) < 0.03  # stationary share of stress: (1/200) / (1/200 + 1/50)
    stays = (p.regimes[:, 1:] == p.regimes[:, :-1]).mean()
    assert abs(stays - (0.8 * (1 - 1 / 200) + 0.2 * (1 - 1 / 50))) < 0.003
    x = log_increments(p)[..., 0]
    ratio = x[p.regimes == 1].std() / x[p.regimes == 0].std()
    assert abs(ratio - 4.0) < 0.1
    with pytest.raises(ValidationError, match="each row summing to 1"):
        RegimeChain((Regime("a"), Regime("b")), ((0.5, 0.4), (0.5, 0.5)))
    with pytest.raises(ValidationError, match="2x2"):
        RegimeChain((Regime("a"), Regime("b")), ((1.0,),))
    with pytest.raises(ValidationError, match="start regime 2"):
        RegimeChain((Regime("a"),), ((1.0,),), start=2)
    with pytest.raises(ValidationError, match="vol_scale must be > 0"):
        Regime("x", vol_scale=-1.0)
    with pytest.raises(ValidationError, match="finite"):
        Regime("x", drift_annual=math.nan)


def test_garch_clusters_volatility_and_keeps_the_long_run_level() -> None:
    g = GarchParams(1e-8, 0.1, 0.88)
    plain = MonteCarlo((AssetModel("A", 100.0, GbmParams(0.0, 0.5)),))
    clustered = dataclasses.replace(plain, garch=g)
    sd = 0.5 * math.sqrt(DT)

    def acf_sq(x: np.ndarray) -> float:
        s = x * x - (x * x).mean()
        return float((s[:, 1:] * s[:, :-1]).mean() / (s * s).mean())

    xp = log_increments(plain.simulate(200, 2_000, seed=4))[..., 0]
    xc = log_increments(clustered.simulate(200, 2_000, seed=4))[..., 0]
    assert abs(acf_sq(xp)) < 0.01 and acf_sq(xc) > 0.1
    kurt = float(((xc - xc.mean()) ** 4).mean() / xc.var() ** 2)
    assert kurt > 3.5
    assert abs(xc.std() / sd - 1.0) < 0.05  # the multiplier has long-run mean 1


# --- block bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_resamples_whole_rows_in_blocks() -> None:
    h = synthetic_history()
    ratios = h.ratios()
    p = bootstrap(h, 50, 400, seed=3, mean_block=20.0)
    assert np.all(p.prices[:, 0] == h.close[-1])
    got = p.prices[:, 1:] / p.prices[:, :-1]
    idx = block_indices(len(ratios), 50, 400, 20.0, np.random.Generator(np.random.PCG64(3)))
    np.testing.assert_allclose(got, ratios[idx], rtol=1e-12)  # the same row (time) for both assets
    cont = ((idx[:, 1:] - idx[:, :-1]) % len(ratios) == 1).mean()
    assert abs(cont - (1 - 1 / 20)) < 0.01  # geometric blocks of mean 20
    circ = block_indices(len(ratios), 10, 100, 25, np.random.Generator(np.random.PCG64(1)), "circular")
    steps = (circ[:, 1:] - circ[:, :-1]) % len(ratios)
    assert np.all(steps[:, np.arange(99) % 25 != 24] == 1)  # blocks of exactly 25, wrapping around
    with pytest.raises(ValidationError, match="whole"):
        block_indices(100, 1, 10, 2.5, np.random.Generator(np.random.PCG64(1)), "circular")
    with pytest.raises(ValidationError, match=r"mean_block must be a number in \[1, 100\]"):
        block_indices(100, 1, 10, 0.5, np.random.Generator(np.random.PCG64(1)))
    with pytest.raises(ValidationError, match="method must be"):
        block_indices(100, 1, 10, 2, np.random.Generator(np.random.PCG64(1)), "moving")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"B: start price -1\.0 must be positive"):
        bootstrap(h, 1, 10, 1, start_prices=[1.0, -1.0])


def test_bootstrap_keeps_the_cross_correlation_and_skips_gaps() -> None:
    h = synthetic_history(3_000)
    p = bootstrap(h, 100, 500, seed=1, mean_block=10.0)
    x = log_increments(p).reshape(-1, 2)
    target = correlation_from_returns(h.log_returns())[0, 1]
    assert abs(np.corrcoef(x.T)[0, 1] - target) < 0.03
    gap = dataclasses.replace(h, ts_ms=np.where(np.arange(len(h)) >= 10, h.ts_ms + 3_600_000, h.ts_ms))
    assert len(gap.ratios()) == len(h.ratios()) - 1
    assert not np.any(np.isclose(gap.ratios()[:, 0], h.close[10, 0] / h.close[9, 0], rtol=0, atol=0))


# --- into the engine ---------------------------------------------------------------------------------


def test_path_candles_round_to_the_price_quantum_and_replay_without_rejections() -> None:
    p = full_model().simulate(3, 240, seed=5)
    cfg0 = replay_venue({"BTC": None, "ETH": None, "SOL": None})  # type: ignore[dict-item]
    ticks = {"BTC": 10**7, "ETH": 10**6, "SOL": 10**4}  # 0.1, 0.01, 0.0001 USD
    markets = tuple(dataclasses.replace(m, tick_price_q=ticks[m.base_asset]) for m in cfg0.markets)
    cfg = dataclasses.replace(cfg0, markets=markets)
    cs = p.candles(1, cfg, substeps=4)
    assert set(cs) == {"BTC", "ETH", "SOL"}
    for a, c in cs.items():
        assert len(c) == 60 and c.interval_ms() == 240_000
        for f in ("open", "high", "low", "close"):
            q = np.array([round(float(t) * 1e8) for t in c.text[f]], dtype=np.int64)
            assert np.all(q % ticks[a] == 0) and np.all(q > 0)
            np.testing.assert_array_equal(getattr(c, f), np.array([float(t) for t in c.text[f]]))
        assert np.all(c.low <= np.minimum(c.open, c.close)) and np.all(c.high >= np.maximum(c.open, c.close))
        pts = p.prices[1, :, list(p.assets).index(a)]
        np.testing.assert_allclose(c.close, pts[4::4], atol=ticks[a] / 2e8 + 1e-9)
        np.testing.assert_allclose(c.high, pts[1:].reshape(60, 4).max(axis=1).clip(min=pts[:-1:4]), atol=ticks[a] / 2e8)
        np.testing.assert_array_equal(c.open[1:], c.close[:-1])
    sc = Scenario(cfg, cs, None, PopulationSpec(200, 2), path="ohlc", clock_every_s=3_600)
    eng = Engine(cfg)
    bad = []
    n = 0
    for e in sc.events():
        n += 1
        bad += [x for _s, x in eng.apply(e)[1:] if isinstance(x, ev.InputRejected | ev.OraclePriceRejected)]
    assert n == sc.count() and bad == []
    assert eng.ledger_total() == eng.deposits[eng.quote_c] - eng.withdrawals[eng.quote_c]


def test_simulated_candles_run_through_the_evaluation_harness() -> None:
    crash = MonteCarlo(
        (AssetModel("BTC", 60_000.0, MertonParams(-40.0, 0.8, 3_000.0, -0.02, 0.01)),
         AssetModel("ETH", 3_000.0, GbmParams(-60.0, 1.0))),
        ((1.0, 0.8), (0.8, 1.0)),
    )  # fmt: skip
    cs = crash.simulate(1, 240, seed=3).candles(0)
    opts = evaluate.Options(accounts=150, seed=1)
    fig = evaluate.run_configuration("binance", [evaluate.Dataset("mc", cs)], opts)
    assert fig.liquidations > 0 and fig.avg_requirement_q > 0
    again = evaluate.run_configuration("binance", [evaluate.Dataset("mc", crash.simulate(1, 240, 3).candles(0))], opts)
    assert again == fig


# --- calibration -------------------------------------------------------------------------------------


def test_calibrate_takes_moments_and_correlation_from_the_history() -> None:
    h = synthetic_history()
    mc = calibrate(h)
    x = h.log_returns()
    assert mc.assets == ("A", "B") and mc.step_ms == 60_000
    assert [m.start_price for m in mc.models] == h.close[-1].tolist()
    for j, m in enumerate(mc.models):
        assert isinstance(m.params, GbmParams)
        assert m.params.mu_annual == pytest.approx(x[:, j].mean() / DT, rel=1e-12)
        assert m.params.sigma_annual == pytest.approx(x[:, j].std(ddof=1) / math.sqrt(DT), rel=1e-12)
    assert mc.correlation == tuple(map(tuple, correlation_from_returns(x).tolist()))
    merton = calibrate(h, "merton")
    assert all(isinstance(m.params, MertonParams) for m in merton.models)
    with pytest.raises(ValidationError, match="model must be"):
        calibrate(h, "heston")  # type: ignore[arg-type]


# --- bad input ---------------------------------------------------------------------------------------


def test_bad_parameters_are_refused_with_a_reason() -> None:
    ok = AssetModel("A", 100.0, GbmParams(0.0, 0.5))
    cases: list[tuple[object, str]] = [
        (lambda: GbmParams(math.nan, 0.5), "finite"),
        (lambda: GbmParams(0.0, -0.5), "sigma_annual must be > 0"),
        (lambda: MertonParams(0.0, 0.5, -1.0, 0.0, 0.1), "lam_per_year must be >= 0"),
        (lambda: KouParams(0.0, 0.5, 1.0, 0.5, 0.5, 10.0), "eta_up > 1"),
        (lambda: GarchParams(1e-6, 0.5, 0.6), "alpha \\+ beta < 1"),
        (lambda: AssetModel("A", math.nan, GbmParams(0.0, 0.5)), "start price nan"),
        (lambda: AssetModel("A", -5.0, GbmParams(0.0, 0.5)), "start price -5.0"),
        (lambda: AssetModel("", 5.0, GbmParams(0.0, 0.5)), "non-empty name"),
        (lambda: MonteCarlo((ok, ok)), "unique"),
        (lambda: MonteCarlo(()), "at least one asset"),
        (lambda: MonteCarlo((ok, dataclasses.replace(ok, asset="B")), ((1, 2), (2, 1))), "outside"),
        (
            lambda: MonteCarlo(
                tuple(dataclasses.replace(ok, asset=a) for a in "ABC"),
                ((1, 0.9, -0.9), (0.9, 1, 0.9), (-0.9, 0.9, 1)),
            ),
            "not positive semi-definite",
        ),
        (lambda: MonteCarlo((ok,), ((1.0, 0.0), (0.0, 1.0))), "for 1 assets"),
        (lambda: MonteCarlo((ok,), step_ms=0), "step_ms"),
        (lambda: MonteCarlo((AssetModel("A", 1.0, MertonParams(0, 0.5, 1e9, 0, 0.1)),)), "jumps expected per step"),
        (lambda: MonteCarlo((ok,)).simulate(0, 10, 1), "at least 1"),
        (lambda: MonteCarlo((ok,)).simulate(10, 10, -1), "seed must be non-negative"),
        (lambda: MonteCarlo((ok,)).simulate(10, 10, 1.5), "seed must be an integer"),  # type: ignore[arg-type]
        (lambda: MonteCarlo((ok,)).simulate(100_000, 1_440, 1), "generate the paths in batches"),
    ]
    for make, why in cases:
        with pytest.raises(ValidationError, match=why):
            make()  # type: ignore[operator]


def test_bad_candle_requests_are_refused() -> None:
    p = MonteCarlo((AssetModel("A", 100.0, GbmParams(0.0, 0.5)),)).simulate(2, 10, 1)
    with pytest.raises(ValidationError, match=r"path must be an index in \[0, 2\)"):
        path_candles(p, 2)
    with pytest.raises(ValidationError, match="do not divide"):
        path_candles(p, 0, substeps=3)
    with pytest.raises(ValidationError, match="price quantum 0"):
        path_candles(p, 0, ticks={"A": 0})
    broken = dataclasses.replace(p, prices=np.where(np.arange(11)[None, :, None] == 4, np.nan, p.prices))
    with pytest.raises(ValidationError, match="A: price nan at step 4"):
        path_candles(broken, 0)
