"""Stress benchmark: Monte Carlo paths through the engine, one day of 1-minute steps at 100,000 accounts.

``python benchmarks/bench_stress.py [--accounts N] [--steps S] [--paths P] [--workers W] [--quick]``
prints ``name: value`` lines:

* ``stress_path_*``: one full-size path in this process (after a small warm-up path that loads the
  numba caches), timed by phase: generating the prices and candles, the population (building the
  ``AccountsSeeded`` event, applying it), the ticks (every other input), the requirement samples, the
  state hash. The phases are a timed copy of ``sim.stress.run_path``; its metrics are checked equal.
* ``mc_paths_per_min``: MEASURED on the process pool with ``--paths`` full-size paths (fewer than the
  target's 1,000; pool start-up included), and ``mc_1000_paths_min``: EXTRAPOLATED from that rate to
  1,000 paths (the target: <= 5 minutes).

The model is a GBM fitted to the BTC and ETH minutes of the 2024-08-05 crash month in ../shared/data
(correlation from the same data), the venue ``replay_venue`` with the waterfall, a 1M USD fund.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim import stress
from fluidmargin.sim.candles import load_candles
from fluidmargin.sim.executors import ProcessExecutor
from fluidmargin.sim.history import align
from fluidmargin.sim.metrics import PathMetrics, PathTally
from fluidmargin.sim.scenarios import PopulationSpec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/prices/binance_spot_1m_2024-07-26_to_2024-08-25_crash_2024-08-05"
SEED = 2024
TARGET_PATHS = 1_000


def out(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def spec_for(accounts: int, steps: int) -> stress.StressSpec:
    history = align({a: load_candles(DATA / f"{a}_USDT-1m.csv.gz") for a in ("BTC", "ETH")})
    return stress.StressSpec(stress.generator_from_history(history, "gbm"), steps, PopulationSpec(accounts, 7))


def timed_path(spec: stress.StressSpec, index: int) -> tuple[PathMetrics, dict[str, float]]:
    """``stress.run_path`` with a clock on each phase (the same calls in the same order)."""
    t: dict[str, float] = dict.fromkeys(("generate", "build_population", "apply_population", "ticks", "samples"), 0.0)
    c0 = time.perf_counter()
    sc, events, seed = spec.scenario(SEED, index)
    engine = Engine(sc.config)
    tally = PathTally(engine)
    lo, hi = sc.span_ns
    times = stress.sample_times(lo, hi + sc.step_ns, spec.samples)
    t["generate"] = time.perf_counter() - c0
    j = 0
    it = iter(events)
    while True:
        c = time.perf_counter()
        e = next(it, None)
        if e is None:
            break
        if isinstance(e, ev.AccountsSeeded):
            t["build_population"] += time.perf_counter() - c
        due = 0
        while j < len(times) and e.ts_ns >= times[j]:
            due += 1
            j += 1
        if due and engine.n_acc:
            c = time.perf_counter()
            tally.sample(due)
            t["samples"] += time.perf_counter() - c
        c = time.perf_counter()
        tally.add(engine.apply(e))
        t["apply_population" if isinstance(e, ev.AccountsSeeded) else "ticks"] += time.perf_counter() - c
    c = time.perf_counter()
    if j < len(times):
        tally.sample(len(times) - j)
    t["samples"] += time.perf_counter() - c
    c = time.perf_counter()
    h = engine.state_hash()
    t["state_hash"] = time.perf_counter() - c
    t["total"] = time.perf_counter() - c0
    return tally.result(index, seed, h), t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=1_440, help="1-minute steps per path (1,440: a day)")
    ap.add_argument("--paths", type=int, default=4, help="full-size paths on the process pool (the measured run)")
    ap.add_argument("--workers", type=int, default=None, help="pool processes (default: cores)")
    ap.add_argument("--quick", action="store_true", help="10,000 accounts, 240 steps, 2 paths")
    args = ap.parse_args()
    if args.quick:
        args.accounts, args.steps, args.paths = 10_000, 240, 2
    spec = spec_for(args.accounts, args.steps)
    workers = args.workers or max(1, len(os.sched_getaffinity(0)))
    out("stress_accounts", args.accounts)
    out("stress_steps", args.steps)
    out("stress_assets", ",".join(spec.assets))

    # one full-size path in this process, by phase (after a warm-up that loads the numba caches)
    stress.run_path(spec_for(200, 30), SEED, 0)
    metrics, t = timed_path(spec, 0)
    ticks = metrics.inputs - 1
    out("stress_path_s", round(t["total"], 2))
    out("stress_path_generate_s", round(t["generate"], 3))
    out("stress_path_population_s", f"{t['build_population']:.2f} build + {t['apply_population']:.2f} apply")
    out("stress_path_ticks_s", f"{t['ticks']:.2f} ({ticks} inputs, {t['ticks'] / ticks * 1e3:.2f} ms each)")
    out("stress_path_samples_s", f"{t['samples']:.2f} ({metrics.samples} requirement samples)")
    out("stress_path_state_hash_s", round(t["state_hash"], 3))
    out("stress_path_liquidations", metrics.liquidations)

    # the measured rate: full-size paths on the process pool, start-up included
    t0 = time.perf_counter()
    result = stress.run_stress(spec, args.paths, SEED, ProcessExecutor(workers))
    wall = time.perf_counter() - t0
    assert result.paths[0] == metrics  # the timed copy did what run_path does
    rate = args.paths / wall * 60
    out(
        "mc_pool",
        f"{args.paths} paths x {args.steps} steps x {args.accounts} accounts, {workers} workers, {wall:.1f} s",
    )
    out("mc_paths_per_min", f"{rate:.2f} (measured on {args.paths} full-size paths)")
    out("mc_1000_paths_min", f"{TARGET_PATHS / rate:.1f} (extrapolated from mc_paths_per_min; target <= 5)")


if __name__ == "__main__":
    main()
