"""Core benchmark: tick-to-decision latency at 1M accounts, the exact reference, memory, log ingest, a month.

``python benchmarks/bench_core.py [--accounts N] [--ticks T] [--quick]`` prints ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from fluidmargin.core.rng import make_rng
from fluidmargin.core.units import PRICE_DECIMALS, Rounding, parse_decimal
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim.candles import load_candles
from fluidmargin.sim.population import build_population
from fluidmargin.sim.scenarios import PopulationSpec, replay_events
from fluidmargin.sim.venues import perp_venue

ROOT = Path(__file__).resolve().parents[1]
MONTH = (
    ROOT.parent
    / "shared/data/prices/binance_usdm_perp_1m_calm_2023-07-18_to_2023-08-17/BTC_USDT_USDT-1m-futures.csv.gz"
)
ASSETS = {  # asset -> start price (decimal text)
    "BTC": "60000",
    "ETH": "3000",
    "SOL": "150",
    "XRP": "0.6",
    "BNB": "600",
    "DOGE": "0.15",
    "ADA": "0.45",
    "AVAX": "35",
    "LINK": "15",
    "DOT": "7",
}
TICKED = "BTC"
T0 = 1_700_000_000 * 10**9


def out(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def build(n_accounts: int, seed: int, preset: str, screen: str = "incremental") -> tuple[Engine, ev.AccountsSeeded]:
    cfg = perp_venue(tuple(ASSETS), preset=preset, single_source_liquidation=True)  # one "bench" feed
    eng = Engine(cfg, screen=screen)
    for i, (a, p) in enumerate(ASSETS.items()):
        eng.apply(ev.PriceObserved(T0 + i, "bench", a, p))
    prices = {f"{a}-PERP": parse_decimal(p, PRICE_DECIMALS, Rounding.FLOOR) for a, p in ASSETS.items()}
    # weight the ticked market so that about 20 % of positions are on it
    weights = [2.4 if a == TICKED else 1.0 for a in ASSETS]
    seed_ev = build_population(cfg, prices, n_accounts, seed, T0 + 100, market_weights=weights)
    return eng, seed_ev


def tick_prices(n: int, seed: int) -> list[str]:
    """A walk of +-0.5 % steps on the ticked asset, as published decimal text."""
    rng = make_rng(seed + 1)
    p = float(ASSETS[TICKED])
    outp = []
    for s in rng.choice([-1.0, 1.0], size=n).tolist():
        p *= 1 + 0.005 * s
        outp.append(f"{p:.2f}")
    return outp


def bench_ticks(args: argparse.Namespace) -> None:
    rss0 = rss_mb()
    t = time.perf_counter()
    eng, seed_ev = build(args.accounts, args.seed, args.preset)
    t_pop = time.perf_counter() - t
    n_pos = len(seed_ev.pos_account)
    on_ticked = sum(1 for m in seed_ev.pos_market if m == f"{TICKED}-PERP")
    t = time.perf_counter()
    recs = eng.apply(seed_ev)
    t_seed = time.perf_counter() - t
    if any(isinstance(e, ev.InputRejected) for _s, e in recs):
        raise SystemExit(f"population rejected: {recs[-1][1]}")
    del seed_ev, recs
    gc.collect()
    rss1 = rss_mb()
    out("setup_population_s", round(t_pop, 2))
    out("setup_seed_apply_s", round(t_seed, 2))
    out("accounts", eng.n_acc)
    out("positions", n_pos)
    out("positions_touched_per_tick", on_ticked)
    out("share_on_ticked_asset", round(on_ticked / n_pos, 3))
    out("state_rss_mb", round(rss1 - rss0, 1))
    state0 = eng.state_dict() if args.ref_ticks else None
    prices = tick_prices(args.ticks, args.seed)
    times = []
    liq_per_tick = []
    liq = 0
    flagged_outputs = 0
    outputs_inc = []
    ts = T0 + 10**9
    decided: list[int] = []
    eng.decision_hook = lambda: decided.append(time.perf_counter_ns())
    applied = []
    for i, px in enumerate(prices):
        e = ev.PriceObserved(ts + i * 250_000_000, "bench", TICKED, px)
        decided.clear()
        t = time.perf_counter_ns()
        r = eng.apply(e)
        t_end = time.perf_counter_ns()
        # tick-to-decision: health updated, breaches found and confirmed (before they are executed)
        times.append((decided[0] if decided else t_end) - t)
        applied.append(t_end - t)
        outs = ev.expand([o for _s, o in r])  # the mass-close kernel's columnar events, per account
        liq_per_tick.append(sum(1 for o in outs if isinstance(o, ev.PositionLiquidated)))
        liq += liq_per_tick[-1]
        flagged_outputs += sum(1 for o in outs if isinstance(o, ev.AccountStatusChanged))
        if i < args.ref_ticks:
            outputs_inc.append([o.to_dict() for _s, o in r])
    ms = np.array(times) / 1e6
    med = float(np.median(ms))
    out("remargin_tick_median_ms", round(med, 3))
    out("remargin_tick_p99_ms", round(float(np.percentile(ms, 99)), 3))
    out("remargin_tick_max_ms", round(float(ms.max()), 3))
    ams = np.array(applied) / 1e6
    out("tick_apply_with_liquidations_median_ms", round(float(np.median(ams)), 3))
    out("tick_apply_with_liquidations_p99_ms", round(float(np.percentile(ams, 99)), 3))
    quiet = ams[np.array(liq_per_tick) == 0]
    if len(quiet):
        out("tick_apply_no_liquidation_p99_ms", f"{np.percentile(quiet, 99):.3f} ({len(quiet)} ticks)")
    out("ticks", len(ms))
    out("liquidations_during_ticks", liq)
    out("status_changes_during_ticks", flagged_outputs)
    out("ticks_state_hash", eng.state_hash())  # refactors must leave it unchanged
    if not args.ref_ticks:
        out("remargin_speedup_vs_reference", "n/a (--ref-ticks 0)")
        return
    # the exact reference: a twin restored from the same state, the same first ticks
    del eng
    gc.collect()
    t = time.perf_counter()
    twin = Engine.from_state(state0, screen="reference")
    out("reference_setup_s", round(time.perf_counter() - t, 2))
    del state0
    ref = []
    agree = True
    twin.decision_hook = lambda: decided.append(time.perf_counter_ns())
    for i, px in enumerate(prices[: args.ref_ticks]):
        e = ev.PriceObserved(ts + i * 250_000_000, "bench", TICKED, px)
        decided.clear()
        t = time.perf_counter_ns()
        r = twin.apply(e)
        ref.append((decided[0] if decided else time.perf_counter_ns()) - t)
        agree &= [o.to_dict() for _s, o in r] == outputs_inc[i]
    ref_ms = float(np.median(np.array(ref) / 1e6))
    out("reference_tick_median_ms", round(ref_ms, 1))
    out("reference_ticks", f"{len(ref)} (full exact recompute on the same state, measured, not extrapolated)")
    out("reference_outputs_agree", "yes" if agree else "NO")
    out("remargin_speedup_vs_reference", round(ref_ms / med, 1))


def bench_ingest(args: argparse.Namespace) -> None:
    try:
        from fluidmargin.store import EventLog
    except ImportError:
        out("log_ingest_events_per_s", "n/a (store missing)")
        return
    # real records: a small population under a random walk of prices, with its outputs
    cfg = perp_venue(("BTC", "ETH"), single_source_liquidation=True)
    eng = Engine(cfg)
    records = []
    records += eng.apply(ev.PriceObserved(T0, "bench", "BTC", "60000"))
    records += eng.apply(ev.PriceObserved(T0, "bench", "ETH", "3000"))
    pop = build_population(cfg, {"BTC-PERP": 60_000 * 10**8, "ETH-PERP": 3_000 * 10**8}, 2000, args.seed, T0)
    records += eng.apply(pop)
    for i, px in enumerate(tick_prices(args.ingest_events, args.seed + 5), start=1):
        records += eng.apply(ev.PriceObserved(T0 + i * 10**8, "bench", "BTC", px))
        if len(records) >= args.ingest_events:
            break
    records = records[: args.ingest_events]
    group = 1000
    with tempfile.TemporaryDirectory() as d:
        log = EventLog.create(Path(d) / "bench.sqlite", cfg)
        try:
            t = time.perf_counter()
            for j in range(0, len(records), group):
                log.append(records[j : j + group])
            dt = time.perf_counter() - t
        finally:
            log.close()
    out("log_ingest_events_per_s", round(len(records) / dt))
    out("log_ingest_context", f"{len(records)} records, group commit of {group}, WAL synchronous=FULL")


def bench_month(args: argparse.Namespace) -> None:
    c = load_candles(MONTH)
    if args.month_candles:
        c = c.slice(0, args.month_candles)
    cfg = perp_venue(("BTC",), single_source_liquidation=True)
    t = time.perf_counter()
    events = list(
        replay_events(
            cfg,
            {"BTC": c},
            None,
            PopulationSpec(args.month_accounts, args.seed),
            path="close",
            clock_every_s=3600,
        )
    )
    out("replay_month_setup_s", round(time.perf_counter() - t, 2))
    eng = Engine(cfg)
    liq = 0
    t = time.perf_counter()
    for e in events:
        for _s, o in eng.apply(e):
            liq += len(o.account_ids) if isinstance(o, ev.PositionsLiquidated) else isinstance(o, ev.PositionLiquidated)
    dt = time.perf_counter() - t
    out("replay_month_s", round(dt, 2))
    out("replay_month_state_hash", eng.state_hash())
    out(
        "replay_month_context",
        f"{len(c)} 1m candles of {MONTH.name}, {args.month_accounts} accounts, "
        f"{len(events)} inputs, {liq} liquidations",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--ref-ticks", type=int, default=3, help="ticks on the exact reference twin (0: skip)")
    ap.add_argument("--month-accounts", type=int, default=100_000)
    ap.add_argument("--month-candles", type=int, default=0, help="0: the whole month")
    ap.add_argument("--ingest-events", type=int, default=100_000)
    ap.add_argument("--preset", default="binance", choices=("binance", "hyperliquid", "dydx", "drift"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.accounts, args.ticks, args.ref_ticks = 5_000, 20, 2
        args.month_accounts, args.month_candles, args.ingest_events = 1_000, 1_000, 3_000
    out("command", " ".join([os.path.basename(sys.executable), *sys.argv]))
    env = {k: os.environ.get(k, "default") for k in ("NUMBA_NUM_THREADS", "OMP_WAIT_POLICY")}
    out("cpu", f"{psutil.cpu_count(logical=True)} logical cores, load {os.getloadavg()[0]:.1f}, {env}")
    t = time.perf_counter()
    bench_ticks(args)
    bench_ingest(args)
    bench_month(args)
    out("bench_total_s", round(time.perf_counter() - t, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
