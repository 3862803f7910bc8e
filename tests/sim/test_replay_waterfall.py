"""`fluidmargin replay --liquidation waterfall` on the 2021-05-19 crash: per-mechanism figures, chart, log.

The figures the report gives (liquidated notional per mechanism, penalties, fund draws by reason,
ADL, bad debt, slippage) are recomputed here from the raw output events, independently of the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim import report
from fluidmargin.sim.candles import Candles, load_candles
from fluidmargin.sim.scenarios import PopulationSpec, Scenario
from fluidmargin.sim.venues import perp_venue, replay_venue, waterfall_venue
from support.data import shared_path

CRASH = "binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19"
WINDOW = "2021-05-19T12:00"  # BTC 38.7k -> 30k within two hours
LIMIT = 120
ACCOUNTS = 2000
SEED = 3
INSURANCE_USD = 20_000  # small enough that the fund runs dry: ADL, then bad debt
VOLATILE = {"wall_s", "inputs_per_s", "chart", "log"}
# the default replay's summary keys, as before the waterfall (its shape must not change)
DEFAULT_KEYS = {
    "accounts",
    "positions_open",
    "markets",
    "start",
    "end",
    "inputs_skipped",
    "inputs_processed",
    "outputs",
    "price_updates",
    "prices_rejected",
    "inputs_rejected",
    "liquidations",
    "accounts_liquidated",
    "liquidated_notional_usd",
    "insurance_fund_start_usd",
    "insurance_fund_end_usd",
    "liquidation_fees_usd",
    "insurance_draws_usd",
    "bad_debt_socialized_usd",
    "trading_fees_usd",
    "margin_ratio_median",
    "margin_ratio_p95",
    "buckets_underwater",
    "at_risk_end",
    "bankrupt_end",
    "ledger_balanced",
    "state_hash",
    "wall_s",
    "inputs_per_s",
}


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _crash_dir() -> Path:
    return shared_path("prices", CRASH)


def _candles(limit: int = LIMIT) -> dict[str, Candles]:
    d = _crash_dir()
    return {a: load_candles(d / f"{a}_USDT-1m.csv.gz").window(_ms(WINDOW), limit) for a in ("BTC", "ETH")}


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


def _cli_args(out: Path, *more: str, limit: int = LIMIT) -> list[str]:
    d = _crash_dir()
    return [
        "replay",
        str(d / "BTC_USDT-1m.csv.gz"),
        str(d / "ETH_USDT-1m.csv.gz"),
        "--accounts",
        str(ACCOUNTS),
        "--seed",
        str(SEED),
        "--start",
        WINDOW,
        "--limit",
        str(limit),
        "--insurance-usd",
        str(INSURANCE_USD),
        "--out",
        str(out),
        *more,
    ]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _notional_q(size: int, price_q: int) -> int:
    """|size| x price in quote quantums, rounded up (sizes at 8 decimals), by plain integer arithmetic."""
    shift = 8 + PRICE_DECIMALS - QUOTE_DECIMALS
    return -(-abs(size) * price_q // 10**shift)


def _usd(q: int) -> Decimal:
    return Decimal(q) / 10**QUOTE_DECIMALS


class _Tap(report.EngineTarget):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.records: list[tuple[int, ev.Event]] = []

    def submit(self, event: ev.Event) -> list[tuple[int, ev.Event]]:
        r = super().submit(event)
        self.records.extend(r)
        return r


def _run(mass_close_min: int | None = None) -> tuple[EngineConfig, report.RunResult, list[ev.Event]]:
    candles = _candles()
    cfg = replay_venue(candles, "waterfall", insurance_usd=INSURANCE_USD)
    if mass_close_min is not None:
        cfg = dataclasses.replace(cfg, mass_close_min=mass_close_min)
    sc = Scenario(cfg, candles, None, PopulationSpec(ACCOUNTS, SEED), path="ohlc")
    tap = _Tap(Engine(cfg))
    res = report.run(tap, sc.events(), report.sample_step_ns(sc.span_ns, sc.step_ns))
    return cfg, res, [e for _seq, e in tap.records]


@pytest.fixture(scope="module")
def waterfall_run() -> tuple[EngineConfig, report.RunResult, list[ev.Event]]:
    return _run()


# --- the figures against the raw events ----------------------------------------------------------------


def test_waterfall_venue_for_a_replay(waterfall_run: tuple[EngineConfig, report.RunResult, list[ev.Event]]) -> None:
    cfg, _res, _events = waterfall_run
    assert cfg.liquidation == "partial" and cfg.backstop is None
    for m in cfg.markets:
        pol = m.liquidation
        assert pol.execution == "impact" and pol.batch and pol.adl and pol.impact.model == "sqrt"
        assert pol.impact.daily_volume_base_q > 0 and pol.impact.sigma_ppm > 0
    # the whole choice is in the config, which a --log header stores (and compares on resume)
    assert EngineConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).to_dict() == cfg.to_dict()
    assert replay_venue(_candles(), "close_at_mark").to_dict() != cfg.to_dict()
    assert not report.has_waterfall(replay_venue(_candles(30), "close_at_mark"))
    assert report.has_waterfall(replay_venue(_candles(30), "partial"))


@pytest.mark.parametrize("mass_close_min", [None, 16])
def test_waterfall_figures_match_the_events(
    waterfall_run: tuple[EngineConfig, report.RunResult, list[ev.Event]], mass_close_min: int | None
) -> None:
    """Also with the engine's mass close on (columnar PositionsLiquidated for 16+ breaches a tick)."""
    cfg, res, raw = waterfall_run if mass_close_min is None else _run(mass_close_min)
    if mass_close_min is not None:
        assert any(isinstance(e, ev.PositionsLiquidated) for e in raw)
    events = ev.expand(raw)
    w = res.summary["liquidation_waterfall"]
    mech = {m.symbol: m.liquidation.execution for m in cfg.markets}

    liq_q: dict[str, int] = defaultdict(int)
    liq_n: dict[str, int] = defaultdict(int)
    pen_q: dict[str, int] = defaultdict(int)
    draws: dict[str, int] = defaultdict(int)
    inflows: dict[str, int] = defaultdict(int)
    crossed = adl_q = adl_n = slip = bad = executed = 0
    base_liq: dict[str, int] = defaultdict(int)
    base_batch: dict[str, int] = defaultdict(int)
    base_adl: dict[str, int] = defaultdict(int)
    for e in events:
        if isinstance(e, ev.PositionLiquidated):
            liq_n[mech[e.market]] += 1
            liq_q[mech[e.market]] += _notional_q(e.size_base_q, e.price_q)
            pen_q[mech[e.market]] += e.fee_quote_q
            base_liq[e.market] += abs(e.size_base_q)
        elif isinstance(e, ev.BatchNetted):
            crossed += _notional_q(min(e.sold_base_q, e.bought_base_q), e.price_q)
            base_batch[e.market] += e.sold_base_q + e.bought_base_q
            assert e.sold_base_q - e.bought_base_q == e.net_base_q
        elif isinstance(e, ev.LiquidationExecuted):
            slip += e.slippage_quote_q
            executed += _notional_q(e.size_base_q, e.price_q)
            assert e.price_q != e.mark_q and (e.price_q < e.mark_q) == (e.size_base_q > 0)  # impact is adverse
        elif isinstance(e, ev.AutoDeleveraged):
            adl_n += 1
            adl_q += _notional_q(e.size_base_q, e.price_q)
            base_adl[e.market] += abs(e.size_base_q)
        elif isinstance(e, ev.InsuranceFundChanged):
            (draws if e.delta_quote_q < 0 else inflows)[e.reason] += abs(e.delta_quote_q)
        elif isinstance(e, ev.BadDebtSocialized):
            bad += e.amount_quote_q

    # the crash liquidates, slips, draws the fund dry, deleverages and socialises a little
    assert sum(liq_n.values()) > 300 and slip > 0 and sum(pen_q.values()) > 0
    assert adl_n > 0 and bad > 0 and draws["shortfall"] > 0 and draws["slippage"] > 0

    assert w["sizing"] == "partial" and set(w["execution"]) == {"BTC-PERP", "ETH-PERP"}
    assert w["liquidations"] == {"impact": liq_n["impact"]} == {"impact": res.summary["liquidations"]}
    assert {k: Decimal(v) for k, v in w["liquidated_notional_usd"].items()} == {"impact": _usd(liq_q["impact"])}
    assert Decimal(w["liquidated_notional_total_usd"]) == Decimal(res.summary["liquidated_notional_usd"])
    assert {k: Decimal(v) for k, v in w["penalties_usd"].items()} == {"impact": _usd(pen_q["impact"])}
    assert Decimal(w["penalties_total_usd"]) == _usd(sum(pen_q.values()))
    assert Decimal(w["batch_crossed_notional_usd"]) == _usd(crossed)
    assert Decimal(w["impact_executed_notional_usd"]) == _usd(executed) > 0
    assert Decimal(w["slippage_usd"]) == _usd(slip)
    assert w["adl_events"] == adl_n and Decimal(w["adl_notional_usd"]) == _usd(adl_q)
    assert {k: Decimal(v) for k, v in w["fund_draws_usd"].items()} == {k: _usd(v) for k, v in draws.items()}
    assert Decimal(w["fund_draws_total_usd"]) == _usd(sum(draws.values()))
    assert Decimal(w["fund_draws_total_usd"]) == Decimal(res.summary["insurance_draws_usd"])
    assert {k: Decimal(v) for k, v in w["fund_inflows_usd"].items()} == {k: _usd(v) for k, v in inflows.items()}
    assert Decimal(w["bad_debt_usd"]) == _usd(bad) == Decimal(res.summary["bad_debt_socialized_usd"])
    assert w["auctions_started"] == w["backstop_takeovers"] == 0  # a replay has no bidders
    # penalties all go to the fund as liquidation fees
    assert inflows["liquidation_fee"] == sum(pen_q.values())
    # every base unit closed is netted in a batch or taken by ADL, per market
    assert dict(base_liq) == {m: base_batch[m] + base_adl[m] for m in base_liq}

    # the chart's series: cumulative, ending at the totals
    s = res.series
    ends = {
        "cum_liquidated_usd": sum(liq_q.values()),
        "cum_batch_crossed_usd": crossed,
        "cum_adl_usd": adl_q,
        "cum_penalties_usd": sum(pen_q.values()),
        "cum_slippage_usd": slip,
        "cum_fund_draws_usd": sum(draws.values()),
        "cum_bad_debt_usd": bad,
    }
    for name, q in ends.items():
        assert np.all(np.diff(s[name]) >= 0), name
        assert s[name][-1] == pytest.approx(q / 10**QUOTE_DECIMALS), name
    assert len(s["ts_ns"]) == LIMIT  # one sample per minute


def test_tally_counts_auctions_and_the_backstop() -> None:
    """The mechanisms a price replay cannot reach (no bidders), on hand-made events."""
    eng = Engine(waterfall_venue())
    t = report.WaterfallTally(eng)
    btc = 60_000 * 10**PRICE_DECIMALS
    t.add(ev.PositionLiquidated(1, 7, "BTC-PERP", 2 * 10**8, btc, 0, 600 * 10**6))
    t.add(ev.AuctionStarted(1, "BTC-PERP-1", "BTC-PERP", 2 * 10**8, btc, btc, [7]))
    t.add(ev.AuctionBidFilled(2, "BTC-PERP-1", 8, 10**8, btc, 5 * 10**6, 0))
    t.add(ev.AuctionReset(3, "BTC-PERP-1", "tail", btc, btc))
    t.add(ev.BackstopTakeover(4, "BTC-PERP-1", "BTC-PERP", 10**8, btc, -(10**6)))
    t.add(ev.InsuranceFundChanged(4, -(10**6), 0, "backstop", 2**62))
    w = t.summary(eng.cfg)
    assert w["liquidations"] == {"impact": 0, "auction": 1}  # the venue's mechanisms
    assert w["liquidated_notional_usd"]["auction"] == "120000" and w["penalties_total_usd"] == "600"
    assert (w["auctions_started"], w["auction_fills"], w["auction_resets"]) == (1, 1, 1)
    assert w["auction_filled_notional_usd"] == w["backstop_notional_usd"] == "60000"
    assert w["backstop_takeovers"] == 1 and w["fund_draws_usd"] == {"backstop": "1"}


# --- the command ---------------------------------------------------------------------------------------


def test_replay_cli_waterfall_reports_and_charts(
    tmp_path: Path, waterfall_run: tuple[EngineConfig, report.RunResult, list[ev.Event]]
) -> None:
    _cfg, res, _events = waterfall_run
    out = tmp_path / "wf"
    r = _cli(*_cli_args(out, "--liquidation", "waterfall", "--json"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    # the command builds the same venue and run as the in-process replay above
    strip = {k: v for k, v in res.summary.items() if k not in VOLATILE}
    assert {k: v for k, v in s.items() if k not in VOLATILE} == strip
    assert json.loads((out / "summary.json").read_text())["liquidation_waterfall"] == s["liquidation_waterfall"]
    w, h = _png_size(out / "chart.png")
    assert (out / "chart.png").stat().st_size > 40_000 and h > w  # five panels, stacked
    # the table form names the section and its figures
    from typer.testing import CliRunner

    from fluidmargin.cli.main import app

    res2 = CliRunner().invoke(
        app, _cli_args(tmp_path / "t", "--liquidation", "waterfall", limit=40), env={"COLUMNS": "200"}
    )
    assert res2.exit_code == 0, res2.output
    for words in ("liquidation waterfall", "liquidated notional usd", "penalties usd", "slippage usd"):
        assert words in res2.output
    for words in ("fund draws usd", "adl events", "bad debt usd", "netted in batches usd", "impact:"):
        assert words in res2.output


def test_replay_cli_default_output_keeps_its_shape(tmp_path: Path) -> None:
    out = tmp_path / "default"
    r = _cli(*_cli_args(out, "--json", limit=60), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s: dict[str, Any] = json.loads(r.stdout)
    assert set(s) == DEFAULT_KEYS | {"chart"}  # no waterfall section, nothing renamed
    assert s["liquidations"] > 0
    _w, h = _png_size(out / "chart.png")
    assert h == 11 * 110  # the four panels, as before
    # --liquidation close_at_mark is the default venue, unchanged but for the oracle: a replay has one
    # price feed (the candles), so it opts in to liquidating on a single source
    candles = _candles(60)
    want = perp_venue(("BTC", "ETH"), single_source_liquidation=True)
    assert replay_venue(candles, "close_at_mark").to_dict() == want.to_dict()
    from typer.testing import CliRunner

    from fluidmargin.cli.main import app

    args = _cli_args(tmp_path / "x", "--liquidation", "auction", limit=5)
    bad = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "close_at_mark, partial, waterfall" in bad.output


def test_replay_cli_waterfall_log_resumes(tmp_path: Path) -> None:
    log = tmp_path / "wf.sqlite"

    def go(limit: int, name: str, *more: str) -> subprocess.CompletedProcess[str]:
        args = _cli_args(tmp_path / name, "--path", "close", "--json", *more, limit=limit)
        args[args.index("--accounts") + 1] = "1000"
        return _cli(*args, cwd=tmp_path)

    part = go(50, "a", "--liquidation", "waterfall", "--log", str(log))
    assert part.returncode == 0, part.stderr
    resumed = go(100, "b", "--liquidation", "waterfall", "--log", str(log))
    assert resumed.returncode == 0, resumed.stderr
    direct = go(100, "c", "--liquidation", "waterfall")
    assert direct.returncode == 0, direct.stderr
    p, r, d = (json.loads(x.stdout) for x in (part, resumed, direct))
    assert r["inputs_skipped"] == p["inputs_processed"] and "liquidation_waterfall" in r
    assert r["state_hash"] == d["state_hash"] != p["state_hash"]
    # the log's header holds the waterfall venue: another liquidation cannot resume it
    other = go(100, "d", "--log", str(log))
    assert other.returncode == 2 and "different engine config" in other.stderr
