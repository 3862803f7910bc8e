"""Replay streams, the report, and the `fluidmargin replay` command on a slice of the 2021-05-19 crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from fluidmargin.core.errors import FluidMarginError
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim import report
from fluidmargin.sim.candles import load_candles, load_funding
from fluidmargin.sim.scenarios import PopulationSpec, Scenario, crash_candles, price_points
from fluidmargin.sim.venues import perp_venue

CRASH = "binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19"
CALM = "binance_usdm_perp_1m_calm_2025-05-25_to_2025-06-24"
WINDOW = "2021-05-19T12:00"  # BTC 38.7k -> 30k within two hours
VOLATILE = {"wall_s", "inputs_per_s"}


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [str(Path(sys.executable).parent / "fluidmargin"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture
def crash_dir(prices_dir: Path) -> Path:
    return prices_dir / CRASH


def _slice(crash_dir: Path, limit: int) -> dict[str, object]:
    return {a: load_candles(crash_dir / f"{a}_USDT-1m.csv.gz").window(_ms(WINDOW), limit) for a in ("BTC", "ETH")}


# --- the stream ----------------------------------------------------------------------------------------


def test_stream_order_and_ohlc_path(crash_dir: Path) -> None:
    candles = _slice(crash_dir, 30)
    cfg = perp_venue(("BTC", "ETH"), single_source_liquidation=True)
    sc = Scenario(cfg, candles, None, PopulationSpec(100, 1), path="ohlc", clock_every_s=600)
    events = list(sc.events())
    assert len(events) == sc.count()
    ts = [e.ts_ns for e in events]
    assert ts == sorted(ts)
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["PriceObserved", "PriceObserved", "AccountsSeeded"]
    assert kinds.count("AccountsSeeded") == 1 and kinds.count("ClockAdvanced") == 2  # 12:10, 12:20
    btc = candles["BTC"]
    first = [e.price for e in events if isinstance(e, ev.PriceObserved) and e.asset == "BTC"][:4]
    green = btc.close[0] >= btc.open[0]
    lo, hi = btc.text["low"][0], btc.text["high"][0]
    assert first == [btc.text["open"][0], lo if green else hi, hi if green else lo, btc.text["close"][0]]
    t, _x = price_points(btc, "ohlc")
    assert np.all(np.diff(t) > 0)  # strictly increasing per source


def test_funding_published_at_the_start_of_its_interval(prices_dir: Path) -> None:
    d = prices_dir / CALM
    btc = load_candles(d / "BTC_USDT_USDT-1m-futures.csv.gz").slice(
        0, 1000
    )  # 10:33 .. 03:13: funding at 16:00 and 00:00
    fund = load_funding(d / "BTC_USDT_USDT-8h-funding_rate.csv")
    cfg = perp_venue(("BTC",), funding_source="published", single_source_liquidation=True)
    sc = Scenario(cfg, {"BTC": btc}, {"BTC": fund}, PopulationSpec(200, 1), path="close")
    pubs = [e for e in sc.events() if isinstance(e, ev.FundingRatePublished)]
    ts = fund.ts_ms * 1_000_000
    assert len(pubs) >= 3
    for p in pubs[1:]:
        k = int(np.searchsorted(ts, p.ts_ns))
        assert ts[k] == p.ts_ns and p.rate_e9 == int(fund.rate_e9[k + 1])
    assert pubs[0].rate_e9 == int(fund.rate_e9[int(np.searchsorted(ts, pubs[0].ts_ns, side="right"))])
    eng = Engine(cfg)
    res = report.run(report.EngineTarget(eng), sc.events(), sc.step_ns)
    assert res.summary["inputs_rejected"] == 0
    assert eng.markets[0].rate_e9 == pubs[-1].rate_e9
    with pytest.raises(Exception, match="published"):
        Scenario(perp_venue(("BTC",)), {"BTC": btc}, {"BTC": fund}, PopulationSpec(10, 1))


def test_report_is_deterministic_and_consistent(crash_dir: Path) -> None:
    candles = _slice(crash_dir, 120)
    cfg = perp_venue(("BTC", "ETH"), single_source_liquidation=True)

    def once(seed: int) -> tuple[report.RunResult, list[tuple[int, ev.Event]]]:
        eng = Engine(cfg)
        sc = Scenario(cfg, candles, None, PopulationSpec(1500, seed), path="close")
        records: list[tuple[int, ev.Event]] = []

        class Tap(report.EngineTarget):
            def submit(self, event: ev.Event) -> list[tuple[int, ev.Event]]:
                r = super().submit(event)
                records.extend(r)
                return r

        return report.run(Tap(eng), sc.events(), 5 * sc.step_ns), records

    a, recs = once(11)
    b, _ = once(11)
    c, _ = once(12)
    strip = {k: v for k, v in a.summary.items() if k not in VOLATILE}
    assert strip == {k: v for k, v in b.summary.items() if k not in VOLATILE}
    assert a.summary["state_hash"] != c.summary["state_hash"]
    s = a.summary
    liq = [e for _q, e in recs if isinstance(e, ev.PositionLiquidated)]
    assert s["liquidations"] == len(liq) > 0
    assert s["ledger_balanced"] is True
    fund = [e for _q, e in recs if isinstance(e, ev.InsuranceFundChanged)]
    end = (
        Decimal(s["insurance_fund_start_usd"]) + Decimal(s["liquidation_fees_usd"]) - Decimal(s["insurance_draws_usd"])
    )
    assert Decimal(s["insurance_fund_end_usd"]) == end
    if fund:
        assert Decimal(fund[-1].balance_quote_q) / 10**6 == end
    assert int(a.series["liq_count"].sum()) == s["liquidations"]
    assert len(a.series["ts_ns"]) == len(a.prices["BTC"]) == 24  # 120 minutes in 5-minute steps
    assert np.nanmin(a.prices["BTC"]) < 0.8 * a.prices["BTC"][0]  # the crash is in the window


def test_crash_scenario_is_seeded() -> None:
    a, b, c = crash_candles(3), crash_candles(3), crash_candles(4)
    assert list(a["BTC"].text["close"]) == list(b["BTC"].text["close"])
    assert list(a["BTC"].text["close"]) != list(c["BTC"].text["close"])
    btc = a["BTC"]
    assert btc.low.min() < 0.75 * btc.open[0]  # a deep crash
    assert btc.close[-1] > btc.low.min() * 1.1  # and a partial rebound
    assert np.all(btc.low <= np.minimum(btc.open, btc.close)) and np.all(btc.high >= np.maximum(btc.open, btc.close))


# --- the command -----------------------------------------------------------------------------------------


def test_replay_cli_on_the_2021_crash(crash_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _cli(
        "replay",
        str(crash_dir / "BTC_USDT-1m.csv.gz"),
        str(crash_dir / "ETH_USDT-1m.csv.gz"),
        "--accounts",
        "2000",
        "--seed",
        "3",
        "--start",
        WINDOW,
        "--limit",
        "240",
        "--out",
        str(out),
        "--json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["accounts"] == 2000 and s["markets"] == ["BTC-PERP", "ETH-PERP"]
    assert s["liquidations"] > 50 and Decimal(s["liquidated_notional_usd"]) > 0
    assert s["start"] == "2021-05-19T12:00:00Z" and s["ledger_balanced"] is True
    png = out / "chart.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert json.loads((out / "summary.json").read_text())["state_hash"] == s["state_hash"]
    # the table form (in-process here) names the figures
    from typer.testing import CliRunner

    from fluidmargin.cli.main import app

    res = CliRunner().invoke(
        app,
        [
            "replay",
            str(crash_dir / "BTC_USDT-1m.csv.gz"),
            "--accounts",
            "300",
            "--start",
            WINDOW,
            "--limit",
            "30",
            "--out",
            str(out),
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    for words in ("liquidations", "insurance fund end usd", "margin ratio p95", "prices rejected"):
        assert words in res.output


def test_replay_cli_log_resumes_to_the_same_state(crash_dir: Path, tmp_path: Path) -> None:
    data = [str(crash_dir / "BTC_USDT-1m.csv.gz"), "--accounts", "1000", "--start", WINDOW, "--path", "close"]
    log = tmp_path / "replay.sqlite"

    def go(limit: int, out: str, *more: str) -> subprocess.CompletedProcess[str]:
        return _cli("replay", *data, "--limit", str(limit), "--out", str(tmp_path / out), *more, cwd=tmp_path)

    part = go(50, "a", "--log", str(log), "--json")
    assert part.returncode == 0, part.stderr
    resumed = go(100, "b", "--log", str(log), "--json")
    assert resumed.returncode == 0, resumed.stderr
    direct = go(100, "c", "--json")
    assert direct.returncode == 0, direct.stderr
    p, r, d = (json.loads(x.stdout) for x in (part, resumed, direct))
    assert r["inputs_skipped"] == p["inputs_processed"] > 50
    assert r["inputs_skipped"] + r["inputs_processed"] == d["inputs_processed"]
    assert r["state_hash"] == d["state_hash"] != p["state_hash"]
    # another population cannot resume this log
    data[2] = "1001"
    other = go(100, "d", "--log", str(log))
    assert other.returncode == 2 and "another replay" in other.stderr


def test_replay_cli_reports_a_bad_file_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "BTC_USDT-1m.csv"
    bad.write_text("timestamp_ms,open,high,low,close,volume\n1000,1,2,0.5,1.5,1\n2000,1,2,x,1.5,1\n")
    r = _cli("replay", str(bad), "--accounts", "10", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2
    assert f"{bad}:3: non-numeric value 'x' in column 'low'" in r.stderr
    nameless = tmp_path / "prices.csv"
    nameless.write_text("timestamp_ms,open,high,low,close\n1000,1,2,0.5,1.5\n")
    r = _cli("replay", str(nameless), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "--asset" in r.stderr


def test_a_rejected_population_stops_the_run() -> None:
    cfg = perp_venue(("BTC",), single_source_liquidation=True)
    seed = ev.AccountsSeeded(1, [1], [10**9], [0], ["BTC-PERP"], [10**8], [60_000 * 10**8], [0], [0], [10])
    with pytest.raises(FluidMarginError, match="rejected the account population: market BTC-PERP has no"):
        report.run(report.EngineTarget(Engine(cfg)), [seed], 60 * 10**9)
