"""Risk models: gap-risk probabilities for 1M accounts, and the online volatility updates.

``python benchmarks/bench_risk_models.py [--accounts N] [--runs R] [--quick]`` prints ``name: value`` lines.

Gap risk: one market (Merton, 80 % vol, 20 jumps a year of mean -5 % and sd 8 %, martingale drift) and a
1M-account book with random sides and leverages 2x-100x (bankruptcy 1 % to 50 % away, jittered). A call is
the market's crossing table (built once per parameter change) plus one lookup per account; both timed,
median of ``runs``. The plain reference is :func:`crossing_probability_py`, one account at a time, on a
subsample; its per-account time is compared with the numba lookup's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from fluidmargin.core.rng import make_rng
from fluidmargin.risk.stats import jumps, vol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import out

MARKET = jumps.MertonParams(mu_annual=0.0, sigma_annual=0.8, lam_per_year=20.0, jump_mean=-0.05, jump_std=0.08)
HORIZONS = {"1d": 1.0 / 365.0, "60s": 60.0 / (365.0 * 86_400.0)}


def book(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sides and bankruptcy-price ratios: leverage L in [2, 100] puts the barrier about 1/L away."""
    rng = make_rng(seed)
    side = np.where(rng.random(n) < 0.6, jumps.LONG, jumps.SHORT).astype(np.int8)
    dist = (1.0 / rng.uniform(2.0, 100.0, n)) * rng.uniform(0.8, 1.2, n)
    ratio = np.where(side == jumps.LONG, 1.0 - dist, 1.0 + dist)
    return side, ratio


def bench_gap_risk(args: argparse.Namespace) -> None:
    side, ratio = book(args.accounts, args.seed)
    table = jumps.crossing_table(MARKET, HORIZONS["1d"])
    jumps.crossing_probability(table, side[:1000], ratio[:1000])  # compile / load the numba cache
    for name, h in HORIZONS.items():
        builds, lookups, totals = [], [], []
        p = np.empty(0)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            table = jumps.crossing_table(MARKET, h)
            t1 = time.perf_counter()
            p = jumps.crossing_probability(table, side, ratio)
            t2 = time.perf_counter()
            builds.append(t1 - t0)
            lookups.append(t2 - t1)
            totals.append(t2 - t0)
        suffix = "" if name == "1d" else f"_{name}"
        out(f"gap_risk_1m_accounts_ms{suffix}", round(1e3 * float(np.median(totals)), 2))
        out(f"gap_risk_table_build_ms{suffix}", round(1e3 * float(np.median(builds)), 2))
        out(f"gap_risk_lookup_1m_ms{suffix}", round(1e3 * float(np.median(lookups)), 2))
        out(
            f"gap_risk_context{suffix}",
            f"{args.accounts} accounts, horizon {name}, lookup rows {table.lookup_long.shape[0]} long + "
            f"{table.lookup_short.shape[0]} short, {table.steps} time steps, mean P {p.mean():.4g}, "
            f"max P {p.max():.4g}, median of {args.runs}",
        )
    table = jumps.crossing_table(MARKET, HORIZONS["1d"])
    sub = slice(0, args.loop_accounts)
    t0 = time.perf_counter()
    ref = jumps.crossing_probability_py(table, side[sub], ratio[sub])
    loop_per_account = (time.perf_counter() - t0) / args.loop_accounts
    t0 = time.perf_counter()
    fast = jumps.crossing_probability(table, side, ratio)
    fast_per_account = (time.perf_counter() - t0) / args.accounts
    out("gap_risk_loop_us_per_account", round(1e6 * loop_per_account, 3))
    out("gap_risk_speedup_vs_loop", round(loop_per_account / fast_per_account, 1))
    out("gap_risk_loop_agrees", "yes" if fast[sub].tolist() == ref.tolist() else "NO")
    t0 = time.perf_counter()
    add = jumps.gap_addon_fraction(table, side, ratio, 1e-3)
    out("gap_addon_1m_accounts_ms", round(1e3 * (time.perf_counter() - t0), 2))
    out(
        "gap_addon_context",
        f"target P 1e-3: {int((add > 0).sum())} accounts need more, mean {add.mean():.4g} of notional",
    )


def time_updates(update: object, state: object, xs: list[float]) -> float:
    """Seconds per update, folding ``xs`` through ``update(state, x)``."""
    t0 = time.perf_counter()
    s = state
    for x in xs:
        s = update(s, x)  # type: ignore[operator]
    return (time.perf_counter() - t0) / len(xs)


def bench_vol(args: argparse.Namespace) -> None:
    xs = make_rng(args.seed).normal(0.0, 0.01, args.updates).tolist()
    ewma = vol.EwmaVol(0.94, 1e-4)
    garch = vol.GarchVol(vol.GarchParams(2e-6, 0.13, 0.86), 1e-4)
    rv = vol.RealisedVariance().update(100.0)
    prices = (100.0 * np.exp(np.cumsum(xs))).tolist()
    res = {}
    for _ in range(3):  # best of 3: the machine is shared
        for name, upd, st, data in (
            ("ewma", vol.EwmaVol.update, ewma, xs),
            ("garch", vol.GarchVol.update, garch, xs),
            ("realised", vol.RealisedVariance.update, rv, prices),
        ):
            res[name] = min(res.get(name, 1.0), time_updates(upd, st, data))
    roll = vol.RollingRangeVol(24)
    candles = [(p, p * 1.01, p * 0.99, p * 1.001) for p in prices[: args.updates // 4]]
    t0 = time.perf_counter()
    for c in candles:
        roll.update(*c)
    res["range"] = (time.perf_counter() - t0) / len(candles)
    out("vol_update_us", round(1e6 * max(res["ewma"], res["garch"]), 3))
    for name in ("ewma", "garch", "realised", "range"):
        out(f"vol_update_{name}_us", round(1e6 * res[name], 3))
    out("vol_update_context", f"{args.updates} updates, frozen states (each update returns a new one), best of 3")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--loop-accounts", type=int, default=20_000, help="subsample for the plain-Python loop")
    ap.add_argument("--updates", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.accounts, args.runs, args.loop_accounts, args.updates = 20_000, 2, 2_000, 10_000
    out("command", " ".join([os.path.basename(sys.executable), *sys.argv]))
    env = {k: os.environ.get(k, "default") for k in ("NUMBA_NUM_THREADS", "OMP_WAIT_POLICY")}
    out("cpu", f"{psutil.cpu_count(logical=True)} logical cores, load {os.getloadavg()[0]:.1f}, {env}")
    bench_gap_risk(args)
    bench_vol(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
