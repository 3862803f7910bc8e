"""Governance benchmark: insurance-fund sizing by Cover-2 over a 1M-account book.

``python benchmarks/bench_governance.py [--accounts N] [--sample N] [--quick]`` prints ``name: value`` lines.

The book is a seeded population (``sim.population.build_population``: 1-3 positions an account over ten
markets, a quarter of them isolated) taken as columns, each bucket's equity as seeded at the opening
mark. The scenarios: an up and a down shock per market and joint ones (a crash, a squeeze, and seeded
one-factor co-moves). ``cover2_1m_accounts_s`` times the columns validated (``make_book``) and
:func:`fluidmargin.risk.liquidation.cover2.cover2` on them, the median of ``--repeat`` runs (numba compiled
beforehand); the plain Python reference runs on the first ``--sample`` accounts in the same process, and
both must agree there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import psutil

from fluidmargin.core.rng import make_rng
from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_SCALE, Rounding, parse_decimal
from fluidmargin.risk.liquidation.cover2 import (
    Cover2Book,
    Scenarios,
    cover2,
    cover2_reference,
    joint_scenarios,
    make_book,
    market_shocks,
)
from fluidmargin.sim.population import build_population
from fluidmargin.sim.venues import perp_venue

ASSETS = {  # asset -> (start price, plausible one-hour shock in ppm)
    "BTC": ("60000", 150_000),
    "ETH": ("3000", 200_000),
    "SOL": ("150", 300_000),
    "XRP": ("0.6", 300_000),
    "BNB": ("600", 250_000),
    "DOGE": ("0.15", 350_000),
    "ADA": ("0.45", 300_000),
    "AVAX": ("35", 300_000),
    "LINK": ("15", 300_000),
    "DOT": ("7", 300_000),
}
T0 = 1_700_000_000 * 10**9


def out(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def build_book(n_accounts: int, seed: int) -> Cover2Book:
    """The population as Cover-2 columns: a cross bucket per account, one more per isolated position."""
    cfg = perp_venue(tuple(ASSETS), preset="binance")
    prices = {f"{a}-PERP": parse_decimal(p, PRICE_DECIMALS, Rounding.FLOOR) for a, (p, _s) in ASSETS.items()}
    pop = build_population(cfg, prices, n_accounts, seed, T0)
    markets = tuple(prices)
    index = {m: i for i, m in enumerate(markets)}
    pos_acct = np.asarray(pop.pos_account, dtype=np.int64)
    pos_mkt = np.array([index[m] for m in pop.pos_market], dtype=np.int64)
    iso = np.asarray(pop.pos_isolated, dtype=bool)
    iso_margin = np.asarray(pop.pos_iso_margin_quote_q, dtype=np.int64)
    n = n_accounts
    iso_pos = np.flatnonzero(iso)
    pos_bucket = pos_acct.copy()
    pos_bucket[iso_pos] = n + np.arange(len(iso_pos))
    cross_eq = np.asarray(pop.deposits_quote_q, dtype=np.int64) - np.bincount(
        pos_acct, weights=iso_margin, minlength=n
    ).astype(np.int64)
    return make_book(
        pop.account_ids,
        np.concatenate([np.arange(n), pos_acct[iso_pos]]),
        np.concatenate([cross_eq, iso_margin[iso_pos]]),
        pos_bucket,
        pos_mkt,
        pop.pos_size_base_q,
        markets,
        [prices[m] for m in markets],
        [m.size_decimals for m in cfg.markets],
    )


def scenarios(markets: tuple[str, ...], n_factor: int, seed: int) -> Scenarios:
    shock = {m: ASSETS[m.removesuffix("-PERP")][1] for m in markets}
    single = market_shocks(markets, shock, shock)
    rng = make_rng(seed)
    joint: dict[str, dict[str, int]] = {
        "crash": {m: -s for m, s in shock.items()},
        "squeeze": {m: s // 2 for m, s in shock.items()},
    }
    for j in range(n_factor):  # one market factor (beta ~ 1) and idiosyncratic noise, within the shocks
        f = rng.uniform(-1.0, 1.0)
        joint[f"factor{j}"] = {m: int(np.clip(s * (f + 0.3 * rng.standard_normal()), -s, s)) for m, s in shock.items()}
    return single + joint_scenarios(markets, joint)


def sub_book(book: Cover2Book, n: int) -> Cover2Book:
    """The first ``n`` accounts with their buckets and positions."""
    keep_b = np.flatnonzero(book.bucket_owner < n)
    remap = np.full(len(book.bucket_owner), -1, dtype=np.int64)
    remap[keep_b] = np.arange(len(keep_b))
    keep_p = np.flatnonzero(remap[book.pos_bucket] >= 0)
    return make_book(
        book.account_ids[:n],
        book.bucket_owner[keep_b],
        book.bucket_equity_quote_q[keep_b],
        remap[book.pos_bucket[keep_p]],
        book.pos_market[keep_p],
        book.pos_size_base_q[keep_p],
        book.markets,
        book.mark_price_q,
        book.size_decimals,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--factors", type=int, default=8, help="seeded one-factor joint scenarios")
    ap.add_argument("--sample", type=int, default=20_000, help="accounts the plain reference runs on")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.accounts, args.sample, args.repeat = 20_000, 2_000, 1
    out("command", " ".join([os.path.basename(sys.executable), *sys.argv]))
    env = {k: os.environ.get(k, "default") for k in ("NUMBA_NUM_THREADS", "OMP_WAIT_POLICY")}
    out("cpu", f"{psutil.cpu_count(logical=True)} logical cores, load {os.getloadavg()[0]:.1f}, {env}")
    t_all = time.perf_counter()
    t = time.perf_counter()
    pop_book = build_book(args.accounts, args.seed)
    out("setup_population_s", round(time.perf_counter() - t, 2))
    book = pop_book
    sc = scenarios(book.markets, args.factors, args.seed)
    n_single = sum(m >= 0 for m in sc.single)
    out(
        "cover2_book",
        f"{book.n_accounts} accounts, {len(book.bucket_owner)} buckets, {len(book.pos_bucket)} positions, "
        f"{len(book.markets)} markets; {len(sc)} scenarios ({n_single} single-market, {len(sc) - n_single} joint)",
    )
    small = sub_book(book, min(200, book.n_accounts))
    t = time.perf_counter()
    cover2(small, sc)  # numba: compile or load the cache before timing
    out("cover2_warmup_s", round(time.perf_counter() - t, 2))
    times, validate = [], []
    res = None
    for _ in range(max(1, args.repeat)):
        t = time.perf_counter()
        book = make_book(
            pop_book.account_ids,
            pop_book.bucket_owner,
            pop_book.bucket_equity_quote_q,
            pop_book.pos_bucket,
            pop_book.pos_market,
            pop_book.pos_size_base_q,
            pop_book.markets,
            pop_book.mark_price_q,
            pop_book.size_decimals,
        )
        t_book = time.perf_counter()
        res = cover2(book, sc)
        times.append(time.perf_counter() - t)
        validate.append(t_book - t)
    assert res is not None and res.stats is not None
    fast_s = float(np.median(times))
    out("cover2_1m_accounts_s", round(fast_s, 3))
    out("cover2_runs_s", " ".join(f"{x:.3f}" for x in times) + " (each: the columns validated, then cover2)")
    out("cover2_validate_s", round(float(np.median(validate)), 3))
    v = res.venue
    out("cover2_venue_fund_usd", f"{v.fund_quote_q / QUOTE_SCALE:.2f} (scenario {v.scenario}, accounts {v.accounts})")
    worst = max(res.per_market.items(), key=lambda kv: kv[1].fund_quote_q)
    out(
        "cover2_largest_market_fund_usd", f"{worst[1].fund_quote_q / QUOTE_SCALE:.2f} ({worst[0]}, {worst[1].scenario})"
    )
    st = res.stats
    out("cover2_scenarios_confirmed", f"{st.scenarios_confirmed} of {st.scenarios}")
    out(
        "cover2_exact_confirmation_share",
        f"{st.confirmed_share:.2e} ({st.pairs_confirmed} of {st.scenarios * st.accounts} pairs)",
    )
    # the plain reference on a sample, and the screen on the same sample
    sample = sub_book(book, min(args.sample, book.n_accounts))
    t = time.perf_counter()
    ref = cover2_reference(sample, sc)
    ref_s = time.perf_counter() - t
    t = time.perf_counter()
    fast_sample = cover2(sample, sc)
    fast_sample_s = time.perf_counter() - t
    out("cover2_reference_sample_s", f"{ref_s:.2f} ({sample.n_accounts} accounts, every pair in Python integers)")
    out("cover2_screen_sample_s", round(fast_sample_s, 4))
    out("cover2_reference_agrees", "yes" if ref == fast_sample else "NO")
    out("cover2_speedup_vs_reference_sample", round(ref_s / fast_sample_s, 1))
    per_acct = ref_s / sample.n_accounts
    out(
        "cover2_speedup_vs_reference_1m",
        f"{per_acct * book.n_accounts / fast_s:.0f} (reference extrapolated linearly from the sample: "
        f"{per_acct * book.n_accounts:.0f} s)",
    )
    out("bench_total_s", round(time.perf_counter() - t_all, 1))
    return 0 if ref == fast_sample else 1


if __name__ == "__main__":
    raise SystemExit(main())
