"""Mass liquidation: one tick breaches ~10,000 accounts in a 1M-account book.

``python benchmarks/bench_liquidation.py [--accounts N] [--per-tick K] [--ticks T]`` prints ``name: value``.

The book is a seeded population plus T crafted groups of K accounts each: 50x longs on BTC whose
deposits put group g's breach between two successive price steps, so tick g breaches group g (and
whatever of the population sits there). BTC liquidates partially to a target health, batched per
tick, into a Dutch auction. Each tick is timed from the price event to its outputs durably in the
event log (SQLite, one group commit): detection, sizing, batching, auction creation, events logged.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fluidmargin.core.units import PPM, PRICE_DECIMALS, Rounding, parse_decimal
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.instruments import LiquidationPolicy
from fluidmargin.risk.perp import margin
from fluidmargin.sim.population import build_population
from fluidmargin.sim.venues import perp_venue
from fluidmargin.store.log import EventLog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import ASSETS, T0, TICKED, out

FIRST_STEP_PPM = 22_500  # group 0 breaches between a 2.25 % and a 2.75 % drop ...
STEP_PPM = 5_000  # ... group g between 2.25 % + g x 0.5 % and the next step


def venue():  # type: ignore[no-untyped-def]
    btc = LiquidationPolicy(execution="auction", batch=True)
    # one "bench" feed: the venue opts in to single-source liquidation (the quorum default is 2 sources)
    return perp_venue(tuple(ASSETS), liquidation="partial", policies={TICKED: btc}, single_source_liquidation=True)


def crafted(eng: Engine, first_id: int, groups: int, per_group: int, ts: int) -> ev.AccountsSeeded:
    """``groups`` x ``per_group`` 50x BTC longs at the mark, group g breaching at drop x_g (see above)."""
    m = eng.market_idx[f"{TICKED}-PERP"]
    mark = m.mark_q
    assert mark is not None
    size = 5 * 10**6  # 0.05 BTC: ~3,000 USD, first bracket
    notional = margin.value_quote_q(size, mark, m.spec.size_decimals, Rounding.CEIL)
    mmr = m.spec.margin.brackets[0].mmr_ppm
    ids, deps = [], []
    for g in range(groups):
        x = FIRST_STEP_PPM + g * STEP_PPM + STEP_PPM // 2  # breach drop, mid-step
        # breach when deposit - N x < N (1 - x) mmr  <=>  deposit < N (mmr + x (1 - mmr))
        dep = notional * (mmr * PPM + x * (PPM - mmr)) // (PPM * PPM)
        for _ in range(per_group):
            ids.append(first_id + len(ids))
            deps.append(dep)
    n = len(ids)
    return ev.AccountsSeeded(
        ts,
        ids,
        deps,
        list(range(n)),
        [m.spec.symbol] * n,
        [size] * n,
        [mark] * n,
        [0] * n,
        [0] * n,
        [50] * n,
    )


def warm_kernels() -> None:
    """Compile (or load from numba's cache) the exact close kernel before anything is timed."""
    from fluidmargin.risk.liquidation import mass_close as mc

    one = np.ones(1, dtype=np.int64)
    br = np.zeros(1, dtype=np.int64)
    mc.mass_close(one, one, one, br, np.int64(1), 1, 1, 1, br, one, br, True, 0, np.zeros((1, 11), dtype=np.int64))
    mc.exact_risk(one, one, one, br, np.int64(1), 1, 1, br, one, br, np.zeros((1, 3), dtype=np.int64))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--per-tick", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=7)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    cfg = venue()
    eng = Engine(cfg)
    tmp = tempfile.TemporaryDirectory()
    log = EventLog.create(Path(tmp.name) / "events.db", cfg)
    for i, (a, p) in enumerate(ASSETS.items()):
        log.append(eng.apply(ev.PriceObserved(T0 + i, "bench", a, p)))
    prices = {f"{a}-PERP": parse_decimal(p, PRICE_DECIMALS, Rounding.FLOOR) for a, p in ASSETS.items()}
    n_pop = args.accounts - args.ticks * args.per_tick
    weights = [2.4 if a == TICKED else 1.0 for a in ASSETS]
    t = time.perf_counter()
    for e in (
        build_population(cfg, prices, n_pop, args.seed, T0 + 100, market_weights=weights),
        crafted(eng, n_pop + 1, args.ticks, args.per_tick, T0 + 200),
    ):
        recs = eng.apply(e)
        if any(isinstance(o, ev.InputRejected) for _s, o in recs):
            raise SystemExit(f"seeding rejected: {recs[-1][1]}")
        log.append(recs)
    del recs
    gc.collect()
    gc.freeze()  # the long-lived book leaves the collector's view, as a long-running engine process does
    out("setup_s", round(time.perf_counter() - t, 1))
    out("accounts", eng.n_acc)
    warm_kernels()
    p0 = float(ASSETS[TICKED])
    ts = T0 + 10**9
    if True:
        # warm-up: the 2 % drop liquidates the population's most levered accounts (not timed)
        log.append(eng.apply(ev.PriceObserved(ts, "bench", TICKED, f"{p0 * 0.98:.2f}")))
        times, breaches, closes, quiet, engine_only = [], [], [], [], []
        for g in range(args.ticks):
            drop = (FIRST_STEP_PPM + (g + 1) * STEP_PPM) / PPM
            e = ev.PriceObserved(ts + (g + 1) * 10**9, "bench", TICKED, f"{p0 * (1 - drop):.2f}")
            t0 = time.perf_counter_ns()
            recs = eng.apply(e)
            t1 = time.perf_counter_ns()
            log.append(recs)
            times.append(time.perf_counter_ns() - t0)
            engine_only.append(t1 - t0)
            outs = ev.expand([o for _s, o in recs])
            breaches.append(sum(1 for o in outs if isinstance(o, ev.AccountStatusChanged) and o.new == "liquidating"))
            closes.append(sum(1 for o in outs if isinstance(o, ev.PositionLiquidated)))
            # the same tick again (same price, a second later): nothing left to liquidate
            t0 = time.perf_counter_ns()
            log.append(eng.apply(ev.PriceObserved(ts + (g + 1) * 10**9 + 5 * 10**8, "bench", TICKED, e.price)))
            quiet.append(time.perf_counter_ns() - t0)
        auctions = len(eng.wf.auctions)
        state_hash = eng.state_hash()
        log.close()
        tmp.cleanup()
    ms = np.array(times) / 1e6
    med = float(np.median(ms))
    out("breaches_per_tick", f"median {int(np.median(breaches))} (min {min(breaches)}, max {max(breaches)})")
    out("liquidation_closes_per_tick_median", int(np.median(closes)))
    out("auctions_open_at_end", auctions)
    out("mass_liquidation_tick_median_ms", round(med, 1))
    out("mass_liquidation_tick_max_ms", round(float(ms.max()), 1))
    out("of_which_engine_median_ms", round(float(np.median(engine_only)) / 1e6, 1))
    out("mass_liquidation_per_breach_us", round(med * 1000 / max(1, int(np.median(breaches))), 1))
    qmed = float(np.median(np.array(quiet) / 1e6))
    out("same_tick_without_breaches_median_ms", round(qmed, 2))
    out("mass_liquidation_vs_quiet_tick_ratio", round(med / qmed, 1))
    out("mass_liquidation_target_ms", "50 (median)")
    out("mass_liquidation_state_hash", state_hash)  # refactors must leave it unchanged
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
