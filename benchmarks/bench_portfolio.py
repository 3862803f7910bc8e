"""Portfolio-margin benchmark: batch full revaluation, the delta-gamma screen's tick, and the reference loop.

``python benchmarks/bench_portfolio.py [--accounts N] [--loop-sample K] [--ticks T] [--seed S]`` prints
``name: value`` lines. The book: N accounts on BTC, each holding 5 options drawn from 160 series (4 expiries
x 20 strikes x call/put) and a perp, with cash that leaves each account healthy (MM between 2 % and 100 %
of its requirement); margined with the ``DERIVE_PM2`` preset (27 grid + 2 skew scenarios).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fluidmargin.core.rng import make_rng
from fluidmargin.risk.options.pm_batch import (
    PmBook,
    PmMarket,
    ScreenParams,
    SeriesTable,
    account_portfolio,
    pm_delta_gamma_tick,
    pm_full_reval,
    pm_screen_reval,
)
from fluidmargin.risk.options.portfolio import DERIVE_PM2, portfolio_margin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import out

SPOT = 60_000.0
DAY_S = 86_400
EXPIRIES_S = (7 * DAY_S, 14 * DAY_S, 28 * DAY_S, 91 * DAY_S)
OPTIONS_PER_ACCOUNT = 5
T0_NS = 1_700_000_000 * 10**9


def market(seed: int) -> PmMarket:
    """160 series around spot: strikes 70 % .. 130 % of spot, a smile on flat-ish forwards."""
    rng = make_rng(seed)
    strikes = SPOT * np.linspace(0.7, 1.3, 20)
    e_idx, k, call = [], [], []
    for e in range(len(EXPIRIES_S)):
        for strike in strikes:
            for is_call in (True, False):
                e_idx.append(e)
                k.append(float(np.round(strike, -2)))
                call.append(is_call)
    series = SeriesTable(np.array(e_idx), np.array(k), np.array(call), len(EXPIRIES_S))
    t = np.array(EXPIRIES_S) / (365 * DAY_S)
    forward = SPOT * np.exp(0.05 * t)
    log_m = np.log(series.strike / forward[series.expiry_index])
    vol = 0.55 + 0.4 * log_m**2 - 0.1 * log_m + rng.uniform(-0.02, 0.02, series.n_series)
    return PmMarket(series, SPOT, SPOT * 1.0002, np.array(EXPIRIES_S, dtype=np.int64), forward, np.full(4, 0.05), vol)


def book(mk: PmMarket, n: int, seed: int) -> PmBook:
    rng = make_rng(seed + 1)
    offsets = np.arange(n + 1, dtype=np.int64) * OPTIONS_PER_ACCOUNT
    sid = rng.integers(0, mk.series.n_series, n * OPTIONS_PER_ACCOUNT)
    amount = rng.choice([-1.0, 1.0], n * OPTIONS_PER_ACCOUNT) * rng.uniform(0.1, 2.0, n * OPTIONS_PER_ACCOUNT)
    perp = rng.uniform(-2.0, 2.0, n)
    zero = PmBook.build(mk.series, np.zeros(n), perp, offsets, sid, amount)
    r = pm_full_reval(mk, zero, DERIVE_PM2)
    # cash that puts MM at 10 % .. 100 % of the maintenance requirement
    cash = -r.maintenance_margin_quote + r.maintenance_requirement_quote * rng.uniform(0.02, 1.0, n)
    return PmBook(mk.series, cash, perp, zero.perp_unrealised_quote, offsets, zero.pos_series, zero.pos_amount)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--loop-sample", type=int, default=300)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    mk = market(args.seed)
    t = time.perf_counter()
    bk = book(mk, args.accounts, args.seed)
    out("pm_setup_s", round(time.perf_counter() - t, 2))
    out("pm_accounts", bk.n_accounts)
    out("pm_series", mk.series.n_series)
    out("pm_scenarios", len(DERIVE_PM2.scenarios))

    pm_full_reval(mk, bk, DERIVE_PM2, accounts=np.arange(10))  # compiled (or loaded) before timing
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        res = pm_full_reval(mk, bk, DERIVE_PM2)
        runs.append(time.perf_counter() - t)
    batch_s = float(np.median(runs))
    out("pm_full_reval_s", round(batch_s, 4))

    t = time.perf_counter()
    screen = ScreenParams(move_bound=0.02, time_bound_s=60)
    _, state = pm_screen_reval(mk, bk, DERIVE_PM2, screen, T0_NS)
    out("pm_screen_reval_s", round(time.perf_counter() - t, 4))

    rng = make_rng(args.seed + 2)
    moves = rng.uniform(-0.019, 0.019, args.ticks)
    pm_delta_gamma_tick(state, SPOT, T0_NS)
    tick = pm_delta_gamma_tick(state, SPOT, T0_NS)
    times = []
    flagged = []
    for i, x in enumerate(moves):
        t_ns = T0_NS + (i % 60) * 10**9
        t = time.perf_counter_ns()
        pm_delta_gamma_tick(state, SPOT * (1.0 + x), t_ns, out=tick)
        times.append(time.perf_counter_ns() - t)
        flagged.append(float(np.mean(tick.needs_reval)))
    out("pm_delta_gamma_tick_ms", round(float(np.median(times)) / 1e6, 3))
    out("pm_delta_gamma_tick_p99_ms", round(float(np.percentile(times, 99)) / 1e6, 3))
    out("pm_screen_flagged_share", round(float(np.mean(flagged)), 4))

    # the reference, account by account, on a sample (conversion to Portfolio not timed)
    sample = np.sort(make_rng(args.seed + 3).choice(bk.n_accounts, args.loop_sample, replace=False))
    portfolios = [account_portfolio(mk, bk, int(i)) for i in sample]
    t = time.perf_counter()
    refs = [portfolio_margin(p, DERIVE_PM2) for p in portfolios]
    loop_s = time.perf_counter() - t
    per_account = loop_s / len(sample)
    out("pm_loop_per_account_ms", round(per_account * 1e3, 3))
    out("pm_speedup_vs_loop", round(per_account * bk.n_accounts / batch_s, 1))
    worst = 0.0
    for j, i in enumerate(sample):
        r = refs[j]
        for got, want in (
            (res.initial_margin_quote[i], r.initial_margin_quote),
            (res.maintenance_margin_quote[i], r.maintenance_margin_quote),
            (res.worst_pnl_quote[i], r.worst.pnl_quote),
        ):
            worst = max(worst, abs(got - want) / max(abs(want), 1.0))
    verdict = "ok" if worst <= 1e-9 else "MISMATCH"
    out("pm_batch_matches_loop", f"{verdict} ({len(sample)} accounts, max rel diff {worst:.1e})")
    if verdict != "ok":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
