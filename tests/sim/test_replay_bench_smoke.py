"""The core benchmark runs (quick sizes) and prints every figure by its exact name."""

from __future__ import annotations

import subprocess
import sys

from support.data import ROOT

NAMES = (
    "remargin_tick_median_ms",
    "remargin_tick_p99_ms",
    "remargin_speedup_vs_reference",
    "state_rss_mb",
    "log_ingest_events_per_s",
    "replay_month_s",
)


def test_bench_quick_prints_every_figure() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_core.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    for name in NAMES:
        assert name in lines, f"{name} missing from:\n{r.stdout}"
    for name in (
        "remargin_tick_median_ms",
        "remargin_tick_p99_ms",
        "replay_month_s",
        "remargin_speedup_vs_reference",
    ):
        assert float(lines[name]) > 0
    assert lines["reference_outputs_agree"] == "yes"
    # the ticks cross liquidation prices: a benchmark whose venue stopped liquidating measures something else
    assert int(lines["liquidations_during_ticks"]) > 0, r.stdout
    assert float(lines["log_ingest_events_per_s"]) > 0  # the store is part of the project
