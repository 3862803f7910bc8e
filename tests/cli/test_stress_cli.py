"""`fluidmargin stress` through the installed console script: a GBM fitted to ../shared/data/prices (by
relative path) gives the library's numbers, the same in this process (--workers 1) and on a spawned
process pool (--workers 2); the table fits 80 columns; --out writes summary.json and loss.png; bad
input is one ``error: reason`` line with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fluidmargin.cli.main import app
from fluidmargin.sim import stress
from fluidmargin.sim.candles import load_candles
from fluidmargin.sim.history import align
from fluidmargin.sim.scenarios import PopulationSpec
from support.data import ROOT, shared_path

CLI = [str(Path(sys.executable).with_name("fluidmargin"))]
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1", "COLUMNS": "80"}
DIR = "binance_spot_1m_2024-07-26_to_2024-08-25_crash_2024-08-05"
FILES = [f"../shared/data/prices/{DIR}/{a}_USDT-1m.csv.gz" for a in ("BTC", "ETH")]  # relative to the repository
LIMIT = 1_500
TINY = ["--limit", str(LIMIT), "--paths", "3", "--steps", "60", "--accounts", "150", "--seed", "5"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    shared_path("prices", DIR)  # fails loudly when the shared data is missing
    return subprocess.run([*CLI, "stress", *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def test_json_matches_the_library_and_the_process_pool(tmp_path: Path) -> None:
    serial = cli(*FILES, *TINY, "--workers", "1", "--json", "--overlay", "latency:delay_ms=1000")
    assert serial.returncode == 0, serial.stderr[-2000:]
    got: dict[str, Any] = json.loads(serial.stdout)
    pooled = cli(*FILES, *TINY, "--workers", "2", "--json", "--overlay", "latency:delay_ms=1000")
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    other: dict[str, Any] = json.loads(pooled.stdout)
    assert (got["executor"], other["executor"]) == ("serial", "process")
    assert got["paths"] == other["paths"] and got["summary"] == other["summary"]
    # the library, on the same files, options and seeds
    candles = {a: load_candles(ROOT / f).window(None, LIMIT) for a, f in zip(("BTC", "ETH"), FILES, strict=True)}
    spec = stress.StressSpec(
        stress.generator_from_history(align(candles), "gbm"),
        60,
        PopulationSpec(150, 7),
        overlays=(stress.Latency(1_000),),
    )
    lib = stress.run_stress(spec, 3, 5)
    assert got["paths"] == [p.to_json() for p in lib.paths]
    assert got["summary"] == lib.summary.to_json()
    assert got["scenario"]["assets"] == ["BTC", "ETH"] and got["summary"]["paths"] == 3


def test_table_fits_80_columns_and_out_writes_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli("--scenario", "crash", "--paths", "3", "--steps", "60", "--accounts", "150", "--workers", "1",
            "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, r.stdout
    for words in ("probability of ruin", "VaR 99 %", "ES 99 %", "liquidations at risk", "protocol loss"):
        assert words in r.stdout
    saved = json.loads((out / "summary.json").read_text())
    assert saved["summary"]["paths"] == 3 and len(saved["paths"]) == 3
    assert saved["scenario"]["model"] == "shipped crash"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, why",
    [
        (["--scenario", "crash", "--paths", "0"], "n_paths must be"),
        (["--scenario", "crash", "--overlay", "tsunami"], "unknown overlay 'tsunami'"),
        (["--scenario", "crash", "--overlay", "funding:at=nan"], "funding at must be a finite number"),
        (["--scenario", "crash", "--level", "nan"], "level"),
        (["--scenario", "crash", "--steps", "0"], "n_steps must be"),
        (["--scenario", "crash", "--accounts", "0"], "accounts must be"),
        (["--scenario", "crash", "--liquidation", "close_at_mark"], "executes liquidations by 'mark'"),
        ([*FILES, "--scenario", "crash"], "not both"),
        ([], "give candle files"),
    ],
)
def test_bad_input_is_one_error_line(args: list[str], why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(app, ["stress", *args, "--workers", "1"])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and why in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_gaps_and_nan_in_data_are_refused(tmp_path: Path) -> None:
    t0 = 1_722_000_000_000
    rows = [f"{t0 + 60_000 * i},100,103,99,{100 + i % 3}.5,1" for i in range(50)]
    gap = tmp_path / "gap"
    gap.mkdir()
    (gap / "BTC_USDT-1m.csv").write_text("\n".join(["timestamp_ms,open,high,low,close,volume", *rows[:20], *rows[30:]]))
    r = CliRunner().invoke(app, ["stress", str(gap / "BTC_USDT-1m.csv"), "--workers", "1", "--paths", "1"])
    assert r.exit_code == 2 and "gap from" in r.stderr, r.output
    ok = CliRunner().invoke(
        app,
        ["stress", str(gap / "BTC_USDT-1m.csv"), "--gaps", "intersect", "--workers", "1", "--json",
         "--paths", "2", "--steps", "10", "--accounts", "20"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["summary"]["paths"] == 2
    nan = tmp_path / "nan"
    nan.mkdir()
    bad = [*rows[:10], f"{t0 + 600_000},100,103,99,nan,1"]
    (nan / "BTC_USDT-1m.csv").write_text("\n".join(["timestamp_ms,open,high,low,close,volume", *bad]))
    r = CliRunner().invoke(app, ["stress", str(nan / "BTC_USDT-1m.csv"), "--workers", "1"])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "nan" in r.stderr.lower(), r.output
