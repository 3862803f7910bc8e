"""`fluidmargin demo` runs end to end in a subprocess: summary, chart and the durable log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path


def test_demo_runs_and_writes_the_chart(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    exe = Path(sys.executable).parent / "fluidmargin"
    # a smaller crowd and one day keep the test short; `make demo` runs the full default
    args = [str(exe), "demo", "--out", str(out), "--accounts", "2000", "--days", "1", "--json"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["accounts"] == 2000 and s["liquidations"] > 100
    assert Decimal(s["liquidated_notional_usd"]) > 1_000_000
    assert s["ledger_balanced"] is True and s["prices_rejected"] == 0 and s["inputs_rejected"] == 0
    png = out / "chart.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    log = out / "events.sqlite"
    assert s["log"] == str(log)
    with sqlite3.connect(log) as db:
        inputs = db.execute("SELECT COUNT(*) FROM events WHERE is_input = 1").fetchone()[0]
    assert inputs == s["inputs_processed"]
