"""Run an engine (or a durable Runner) over a stream, sample a time series, summarise, and chart it.

Money in the summary is exact decimal text (from integer quantums); ratios and series are floats,
for statistics and plots only.

On a venue with a liquidation waterfall (partial closes, batching, impact or auction execution, a
backstop vault) the summary gains a ``liquidation_waterfall`` section (:class:`WaterfallTally`) and
the chart a fifth panel; a plain close-at-mark venue's report keeps its shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fluidmargin.core.errors import FluidMarginError
from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS, QUOTE_SCALE, Rounding, format_decimal
from fluidmargin.engine import Engine
from fluidmargin.engine.state import AT_RISK, BANKRUPT
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import LiquidationPolicy
from fluidmargin.risk.perp import margin
from fluidmargin.sim.candles import Candles

SERIES = (
    "ts_ns",
    "liq_count",
    "liq_notional_usd",
    "open_interest_usd",
    "maintenance_usd",
    "margin_ratio_median",
    "margin_ratio_p95",
    "at_risk",
    "insurance_usd",
    "bad_debt_usd",
    # cumulative over the run (the waterfall panel)
    "cum_liquidated_usd",
    "cum_batch_crossed_usd",
    "cum_adl_usd",
    "cum_penalties_usd",
    "cum_slippage_usd",
    "cum_fund_draws_usd",
    "cum_bad_debt_usd",
)
MAX_SAMPLES = 1000
MECHANISMS = ("mark", "impact", "auction")


class Target(Protocol):
    engine: Engine

    def submit(self, event: ev.Event) -> list[tuple[int, ev.Event]]: ...


class EngineTarget:
    """Adapts a bare engine to the Runner's ``submit``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def submit(self, event: ev.Event) -> list[tuple[int, ev.Event]]:
        return self.engine.apply(event)


@dataclass
class RunResult:
    summary: dict[str, Any]
    series: dict[str, np.ndarray]
    prices: dict[str, np.ndarray]  # asset -> index price (float, NaN before the first)
    outputs: dict[str, int] = field(default_factory=dict)


def has_waterfall(cfg: EngineConfig) -> bool:
    """Whether a venue liquidates by anything but full closes at the mark (its report gets the waterfall)."""
    return (
        cfg.liquidation != "close_at_mark"
        or cfg.backstop is not None
        or any(m.liquidation != LiquidationPolicy() for m in cfg.markets)
    )


def _value(size_base_q: int, price_q: int, size_decimals: int) -> int:
    """Notional of ``|size|`` at ``price``, rounded up, as the report's liquidated notional always is."""
    return margin.value_quote_q(abs(size_base_q), price_q, size_decimals, Rounding.CEIL)


def _add(d: dict[str, int], key: str, q: int) -> None:
    d[key] = d.get(key, 0) + q


class WaterfallTally:
    """Exact per-mechanism totals of the liquidation waterfall's output events (quote quantums).

    - ``closes``: PositionLiquidated (also inside a columnar PositionsLiquidated) by the execution
      mechanism of its market (mark, impact, auction): count, notional (|size| x price, rounded up)
      and penalties (``fee_quote_q``);
    - ``batch``: BatchNetted; ``crossed`` is the size netted inside the tick, min(sold, bought),
      valued at the batch's mark;
    - ``impact``: LiquidationExecuted: notional sent to the market at the fill price, slippage;
    - ``auction``: AuctionStarted / AuctionBidFilled (notional filled) / AuctionReset;
    - ``backstop``: BackstopTakeover; ``adl``: AutoDeleveraged (count and notional at the bankruptcy
      price);
    - ``fund_draws``/``fund_inflows``: InsuranceFundChanged by reason (draws as positive amounts);
    - ``bad_debt``: BadDebtSocialized.
    """

    def __init__(self, engine: Engine) -> None:
        self.sd = {m.spec.symbol: m.spec.size_decimals for m in engine.markets}
        self.execution = {m.spec.symbol: m.spec.liquidation.execution for m in engine.markets}
        self.closes: dict[str, int] = dict.fromkeys(MECHANISMS, 0)
        self.closed_q: dict[str, int] = dict.fromkeys(MECHANISMS, 0)
        self.penalties_by_q: dict[str, int] = dict.fromkeys(MECHANISMS, 0)
        self.batches = 0
        self.crossed_q = 0
        self.executions = 0
        self.executed_q = 0
        self.slippage_q = 0
        self.auctions_started = 0
        self.auction_market: dict[str, str] = {}
        self.auction_fills = 0
        self.auction_filled_q = 0
        self.auction_resets = 0
        self.backstop_takeovers = 0
        self.backstop_q = 0
        self.adl_events = 0
        self.adl_q = 0
        self.fund_draws: dict[str, int] = {}
        self.fund_inflows: dict[str, int] = {}
        self.bad_debt_events = 0
        self.bad_debt_q = 0

    @property
    def liquidated_q(self) -> int:
        return sum(self.closed_q.values())

    @property
    def penalties_q(self) -> int:
        return sum(self.penalties_by_q.values())

    @property
    def fund_draws_q(self) -> int:
        return sum(self.fund_draws.values())

    def add(self, e: ev.Event) -> None:
        if isinstance(e, ev.PositionsLiquidated):  # the engine's mass close, as columns
            for x in e.expand():
                self.add(x)
        elif isinstance(e, ev.PositionLiquidated):
            mech = self.execution[e.market]
            self.closes[mech] += 1
            self.closed_q[mech] += _value(e.size_base_q, e.price_q, self.sd[e.market])
            self.penalties_by_q[mech] += e.fee_quote_q
        elif isinstance(e, ev.BatchNetted):
            self.batches += 1
            self.crossed_q += _value(min(e.sold_base_q, e.bought_base_q), e.price_q, self.sd[e.market])
        elif isinstance(e, ev.LiquidationExecuted):
            self.executions += 1
            self.executed_q += _value(e.size_base_q, e.price_q, self.sd[e.market])
            self.slippage_q += e.slippage_quote_q
        elif isinstance(e, ev.AuctionStarted):
            self.auctions_started += 1
            self.auction_market[e.auction_id] = e.market
        elif isinstance(e, ev.AuctionBidFilled):
            self.auction_fills += 1
            # auction ids are "<market>-<n>": a fill of an auction started before a resume still has its market
            market = self.auction_market.get(e.auction_id) or e.auction_id.rsplit("-", 1)[0]
            self.auction_filled_q += _value(e.size_base_q, e.price_q, self.sd[market])
        elif isinstance(e, ev.AuctionReset):
            self.auction_resets += 1
        elif isinstance(e, ev.BackstopTakeover):
            self.backstop_takeovers += 1
            self.backstop_q += _value(e.size_base_q, e.price_q, self.sd[e.market])
        elif isinstance(e, ev.AutoDeleveraged):
            self.adl_events += 1
            self.adl_q += _value(e.size_base_q, e.price_q, self.sd[e.market])
        elif isinstance(e, ev.InsuranceFundChanged):
            if e.delta_quote_q < 0:
                _add(self.fund_draws, e.reason, -e.delta_quote_q)
            else:
                _add(self.fund_inflows, e.reason, e.delta_quote_q)
        elif isinstance(e, ev.BadDebtSocialized):
            self.bad_debt_events += 1
            self.bad_debt_q += e.amount_quote_q

    def summary(self, cfg: EngineConfig) -> dict[str, Any]:
        """The report's ``liquidation_waterfall`` section: exact decimal USD text, counts as ints."""
        used = [m for m in MECHANISMS if m in self.execution.values() or self.closes[m]]
        return {
            "sizing": cfg.liquidation,
            "execution": {
                m.symbol: m.liquidation.execution
                + (" batched" if m.liquidation.batch else "")
                + (" +backstop" if m.liquidation.backstop else "")
                + (" +adl" if m.liquidation.adl else "")
                for m in cfg.markets
            },
            "liquidations": {m: self.closes[m] for m in used},
            "liquidated_notional_usd": {m: _usd(self.closed_q[m]) for m in used},
            "penalties_usd": {m: _usd(self.penalties_by_q[m]) for m in used},
            "liquidated_notional_total_usd": _usd(self.liquidated_q),
            "penalties_total_usd": _usd(self.penalties_q),
            "batches": self.batches,
            "batch_crossed_notional_usd": _usd(self.crossed_q),
            "impact_executions": self.executions,
            "impact_executed_notional_usd": _usd(self.executed_q),
            "slippage_usd": _usd(self.slippage_q),
            "auctions_started": self.auctions_started,
            "auction_fills": self.auction_fills,
            "auction_filled_notional_usd": _usd(self.auction_filled_q),
            "auction_resets": self.auction_resets,
            "backstop_takeovers": self.backstop_takeovers,
            "backstop_notional_usd": _usd(self.backstop_q),
            "adl_events": self.adl_events,
            "adl_notional_usd": _usd(self.adl_q),
            "fund_draws_usd": {k: _usd(v) for k, v in sorted(self.fund_draws.items())},
            "fund_draws_total_usd": _usd(self.fund_draws_q),
            "fund_inflows_usd": {k: _usd(v) for k, v in sorted(self.fund_inflows.items())},
            "bad_debt_events": self.bad_debt_events,
            "bad_debt_usd": _usd(self.bad_debt_q),
        }


class Collector:
    """Counts outputs and samples the engine once per time step (state at the end of the step)."""

    def __init__(self, engine: Engine, step_ns: int) -> None:
        self.eng = engine
        self.step_ns = max(1, step_ns)
        self.bucket: int | None = None
        self.rows: list[list[float]] = []
        self.price_rows: list[list[float]] = []
        self.liq_count = 0
        self.liq_notional_q = 0
        self.counts: dict[str, int] = {}
        self.inputs = 0
        self.liquidations = 0
        self.liquidated_notional_q = 0
        self.liquidated_accounts: set[int] = set()
        self.fund_fees_q = 0
        self.fund_draws_q = 0
        self.bad_debt_q = 0
        self.rejections: dict[str, int] = {}
        self.seed_rejected: str | None = None
        self.sd = {m.spec.symbol: m.spec.size_decimals for m in engine.markets}
        self.wf = WaterfallTally(engine)

    def before(self, event: ev.Event) -> None:
        b = event.ts_ns // self.step_ns
        if self.bucket is None:
            self.bucket = b
        elif b != self.bucket:
            self.sample()
            self.bucket = b

    def after(self, records: list[tuple[int, ev.Event]]) -> None:
        if not records:
            return
        self.inputs += 1
        first = records[0][1]
        for _seq, raw in records[1:]:
            name = type(raw).__name__
            self.counts[name] = self.counts.get(name, 0) + 1
            # a columnar PositionsLiquidated (the engine's mass close) stands for per-account events
            for e in raw.expand() if isinstance(raw, ev.PositionsLiquidated) else (raw,):
                self._tally(e, first)

    def _tally(self, e: ev.Event, first: ev.Event) -> None:
        self.wf.add(e)
        if isinstance(e, ev.PositionLiquidated):
            q = margin.value_quote_q(abs(e.size_base_q), e.price_q, self.sd[e.market], Rounding.CEIL)
            self.liq_count += 1
            self.liq_notional_q += q
            self.liquidations += 1
            self.liquidated_notional_q += q
            self.liquidated_accounts.add(e.account_id)
        elif isinstance(e, ev.InsuranceFundChanged):
            if e.delta_quote_q >= 0:
                self.fund_fees_q += e.delta_quote_q
            else:
                self.fund_draws_q -= e.delta_quote_q
        elif isinstance(e, ev.BadDebtSocialized):
            self.bad_debt_q += e.amount_quote_q
        elif isinstance(e, ev.InputRejected):
            key = f"{e.input_type}: {e.reason.split(':')[0]}"
            self.rejections[key] = self.rejections.get(key, 0) + 1
            if isinstance(first, ev.AccountsSeeded):
                self.seed_rejected = e.reason

    def sample(self) -> None:
        """Record the state now; margin figures come from the engine's float shadow (statistics only)."""
        eng = self.eng
        n, k = eng.n_acc, eng.n_pos
        oi = 0.0
        for m in eng.markets:
            if m.mark_q is not None:
                oi += m.long_oi_base_q * m.mark_q / 10.0 ** (m.spec.size_decimals + PRICE_DECIMALS)
        mm_c = eng.acct_mm[:n]
        eq_c = eng.acct_h[:n] + mm_c
        iso = (eng.pos_iso[:k] == 1) & (eng.pos_size[:k] != 0)
        mm_i = eng.pos_mm[:k][iso]
        eq_i = eng.pos_iso_margin[:k][iso] + eng.pos_c[:k][iso] + mm_i
        mm = np.concatenate([mm_c[mm_c > 0], mm_i[mm_i > 0]])
        eq = np.concatenate([eq_c[mm_c > 0], eq_i[mm_i > 0]])
        ratio = np.where(eq > 0, mm / np.where(eq > 0, eq, 1.0), np.inf)
        med, p95 = np.percentile(ratio, [50, 95]) if len(ratio) else (np.nan, np.nan)
        at_risk = int(np.count_nonzero(eng.status[:n] == AT_RISK) + np.count_nonzero(eng.pos_status[:k] == AT_RISK))
        self.rows.append(
            [
                float((self.bucket or 0) * self.step_ns),
                self.liq_count,
                self.liq_notional_q / QUOTE_SCALE,
                oi,
                float(mm.sum()) / QUOTE_SCALE,
                float(med),
                float(p95),
                at_risk,
                eng.insurance_q / QUOTE_SCALE,
                eng.socialized_q / QUOTE_SCALE,
                self.wf.liquidated_q / QUOTE_SCALE,
                self.wf.crossed_q / QUOTE_SCALE,
                self.wf.adl_q / QUOTE_SCALE,
                self.wf.penalties_q / QUOTE_SCALE,
                self.wf.slippage_q / QUOTE_SCALE,
                self.wf.fund_draws_q / QUOTE_SCALE,
                self.wf.bad_debt_q / QUOTE_SCALE,
            ]
        )
        self.price_rows.append([eng.index_q.get(a, 0) / 10.0**PRICE_DECIMALS or float("nan") for a in eng.assets])
        self.liq_count = 0
        self.liq_notional_q = 0


def _usd(q: int) -> str:
    return format_decimal(q, QUOTE_DECIMALS)


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _count_status(eng: Engine, status: int) -> int:
    """Buckets (cross accounts and isolated positions) in ``status``."""
    n, k = eng.n_acc, eng.n_pos
    return int(np.count_nonzero(eng.status[:n] == status) + np.count_nonzero(eng.pos_status[:k] == status))


def margin_ratios(eng: Engine) -> tuple[np.ndarray, int]:
    """Exact maintenance / equity of every bucket holding positions; and how many have equity <= 0."""
    ratios: list[float] = []
    underwater = 0
    for r in range(eng.n_acc):
        has_cross = False
        for p in eng.positions_of(r):
            if not eng.pos_size[p]:
                continue
            if eng.pos_iso[p]:
                risk = eng.iso_risk(p)
                if risk.equity_quote_q <= 0:
                    underwater += 1
                else:
                    ratios.append(risk.mm_quote_q / risk.equity_quote_q)
            else:
                has_cross = True
        if has_cross:
            risk = eng.cross_risk(r)
            if risk.equity_quote_q <= 0:
                underwater += 1
            else:
                ratios.append(risk.mm_quote_q / risk.equity_quote_q)
    return np.array(ratios, dtype=np.float64), underwater


def run(
    target: Target,
    events: Iterable[ev.Event],
    step_ns: int,
    skip: int = 0,
    progress: Callable[[int], None] | None = None,
    waterfall: bool | None = None,
) -> RunResult:
    """Submit ``events`` (after skipping the first ``skip``, already applied) and collect a report.

    ``waterfall``: add the ``liquidation_waterfall`` section (None: when the venue has a waterfall,
    :func:`has_waterfall`). Like every count in the summary, it covers the inputs this run submitted.

    Raises FluidMarginError if the population is rejected (the replay would be meaningless).
    """
    eng = target.engine
    col = Collector(eng, step_ns)
    fund0 = eng.insurance_q
    social0 = eng.socialized_q
    fees0 = eng.fees_q
    t0 = time.perf_counter()
    t_first: int | None = None
    submitted = 0
    for i, e in enumerate(events):
        if i < skip:
            if progress and i % 1000 == 999:
                progress(1000)
            continue
        if t_first is None:
            t_first = e.ts_ns
        col.before(e)
        records = target.submit(e)
        col.after(records)
        if col.seed_rejected:
            raise FluidMarginError(f"the engine rejected the account population: {col.seed_rejected}")
        submitted += 1
        if progress and submitted % 1000 == 0:
            progress(1000)
    if col.bucket is not None:
        col.sample()
    wall = time.perf_counter() - t0
    ratios, underwater = margin_ratios(eng)
    series = {name: np.array([r[j] for r in col.rows], dtype=np.float64) for j, name in enumerate(SERIES)}
    prices = {a: np.array([r[j] for r in col.price_rows], dtype=np.float64) for j, a in enumerate(eng.assets)}
    ledger_ok = eng.ledger_total() == eng.deposits[eng.quote_c] - eng.withdrawals[eng.quote_c]
    summary: dict[str, Any] = {
        "accounts": eng.n_acc,
        "positions_open": int(np.count_nonzero(eng.pos_size[: eng.n_pos])),
        "markets": [m.spec.symbol for m in eng.markets],
        "start": _iso(t_first) if t_first is not None else None,
        "end": _iso(eng.now_ns),
        "inputs_skipped": skip,
        "inputs_processed": col.inputs,
        "outputs": sum(col.counts.values()),
        "price_updates": col.counts.get("IndexPriceUpdated", 0),
        "prices_rejected": col.counts.get("OraclePriceRejected", 0),
        "inputs_rejected": col.counts.get("InputRejected", 0),
        "liquidations": col.liquidations,
        "accounts_liquidated": len(col.liquidated_accounts),
        "liquidated_notional_usd": _usd(col.liquidated_notional_q),
        "insurance_fund_start_usd": _usd(fund0),
        "insurance_fund_end_usd": _usd(eng.insurance_q),
        "liquidation_fees_usd": _usd(col.fund_fees_q),
        "insurance_draws_usd": _usd(col.fund_draws_q),
        "bad_debt_socialized_usd": _usd(eng.socialized_q - social0),
        "trading_fees_usd": _usd(eng.fees_q - fees0),
        "margin_ratio_median": round(float(np.median(ratios)), 6) if len(ratios) else None,
        "margin_ratio_p95": round(float(np.percentile(ratios, 95)), 6) if len(ratios) else None,
        "buckets_underwater": underwater,
        "at_risk_end": _count_status(eng, AT_RISK),
        "bankrupt_end": _count_status(eng, BANKRUPT),
        "ledger_balanced": bool(ledger_ok),
        "state_hash": eng.state_hash(),
        "wall_s": round(wall, 3),
        "inputs_per_s": round(col.inputs / wall, 1) if wall > 0 else None,
    }
    if col.rejections:
        summary["rejection_reasons"] = dict(sorted(col.rejections.items()))
    if has_waterfall(eng.cfg) if waterfall is None else waterfall:
        summary["liquidation_waterfall"] = col.wf.summary(eng.cfg)
    return RunResult(summary, series, prices, dict(sorted(col.counts.items())))


REPEAT_LINES_SHOWN = 10


def candle_summary(candles: Mapping[str, Candles]) -> dict[str, Any]:
    """What the loader found in the replayed files, by asset: the candles replayed, the time unit the
    file used, identical repeats dropped (with the first lines), gaps (steps longer than the usual
    interval) and the most time missing at one, in seconds. Empty when every file is in milliseconds
    with neither repeats nor gaps, so a clean replay's summary keeps its shape."""
    if all(c.unit == "ms" and not c.repeats and not c.gaps()[0] for c in candles.values()):
        return {}
    out: dict[str, Any] = {
        "candles": {a: len(c) for a, c in candles.items()},
        "candle_time_unit": {a: c.unit for a, c in candles.items()},
        "candle_repeats_dropped": {a: len(c.repeats) for a, c in candles.items()},
        "candle_gaps": {a: c.gaps()[0] for a, c in candles.items()},
        "candle_largest_gap_s": {a: c.gaps()[1] // 1000 for a, c in candles.items()},
    }
    lines = {a: [line for _, line in c.repeats[:REPEAT_LINES_SHOWN]] for a, c in candles.items() if c.repeats}
    if lines:
        out["candle_repeat_lines"] = lines
    return out


def duration(ms: int) -> str:
    """``4 h 44 min``, ``7 min``, ``2 d 3 h``, ``30 s``: the two largest units."""
    parts = []
    rest = ms // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size} {unit}")
            rest %= size
    return " ".join(parts[:2]) or f"{ms} ms"


def candle_notes(candles: Iterable[Candles]) -> list[str]:
    """One line for each file with repeats dropped or gaps: ``FILE: 1 identical repeat dropped (line 7);
    1 gap, the largest 4 h 44 min``."""
    notes = []
    for c in candles:
        n_gaps, largest = c.gaps()
        what = []
        if c.repeats:
            k = len(c.repeats)
            shown = ", ".join(str(line) for _, line in c.repeats[:REPEAT_LINES_SHOWN])
            more = ", ..." if k > REPEAT_LINES_SHOWN else ""
            what.append(f"{k} identical repeat{'s' * (k > 1)} dropped (line{'s' * (k > 1)} {shown}{more})")
        if n_gaps:
            what.append(f"{n_gaps} gap{'s' * (n_gaps > 1)}, the largest {duration(largest)}")
        if what:
            notes.append(f"{c.path}: {'; '.join(what)}")
    return notes


def sample_step_ns(span_ns: tuple[int, int], base_step_ns: int, max_samples: int = MAX_SAMPLES) -> int:
    """A sampling step: the data's own step, coarsened so the series has at most ``max_samples`` points."""
    lo, hi = span_ns
    need = max(1, (hi - lo) // max_samples + 1)
    return max(base_step_ns, -(-need // base_step_ns) * base_step_ns)


def write_chart(result: RunResult, path: str | Path, title: str = "") -> Path:
    """Stacked panels: prices, open interest, margin, liquidations with the insurance fund; and, when
    the summary has a ``liquidation_waterfall`` section, the waterfall's cumulative figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    s = result.series
    t = np.array([datetime.fromtimestamp(x / 1e9, tz=UTC) for x in s["ts_ns"]])
    waterfall = "liquidation_waterfall" in result.summary
    n = 5 if waterfall else 4
    fig, ax = plt.subplots(n, 1, figsize=(11, 11 + 2.75 * (n - 4)), sharex=True, constrained_layout=True)
    multi = sum(1 for v in result.prices.values() if np.isfinite(v).any()) > 1
    for a, v in result.prices.items():
        if not np.isfinite(v).any():
            continue
        first = v[np.isfinite(v)][0]
        ax[0].plot(t, v / first * 100 if multi else v, label=a, lw=1)
    ax[0].set_ylabel("index (start = 100)" if multi else "index price (USD)")
    ax[0].legend(loc="best", fontsize=8)
    ax[0].set_title(title or "replay")
    ax[1].plot(t, s["open_interest_usd"] / 1e6, color="tab:purple", lw=1)
    ax[1].set_ylabel("open interest (M USD)")
    ax[2].plot(t, s["margin_ratio_median"] * 100, color="tab:orange", lw=1, label="median")
    ax[2].plot(t, s["margin_ratio_p95"] * 100, color="tab:brown", lw=1, label="p95")
    ax[2].set_ylabel("maintenance / equity (%)")
    a2 = ax[2].twinx()
    a2.plot(t, s["at_risk"], color="tab:red", lw=0.8, alpha=0.7)
    a2.set_ylabel("buckets at risk", color="tab:red")
    ax[2].legend(loc="upper left", fontsize=8)
    width = (s["ts_ns"][1] - s["ts_ns"][0]) / 86_400e9 if len(t) > 1 else 1 / 1440
    ax[3].bar(t, s["liq_notional_usd"] / 1e6, width=width, color="tab:red", label="liquidated notional")
    ax[3].set_ylabel("liquidated (M USD / step)")
    a3 = ax[3].twinx()
    a3.plot(t, s["insurance_usd"] / 1e6, color="tab:green", lw=1.2, label="insurance fund")
    a3.set_ylabel("insurance fund (M USD)", color="tab:green")
    if waterfall:
        _waterfall_panel(ax[4], t, s)
    ax[-1].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))  # type: ignore[no-untyped-call]
    for a in ax:
        a.grid(alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _waterfall_panel(ax: Any, t: np.ndarray, s: dict[str, np.ndarray]) -> None:
    """Cumulative notional (left, M USD: liquidated, netted in batches, deleveraged) and what the
    waterfall cost (right, k USD: penalties collected, slippage, insurance draws, bad debt)."""
    ax.plot(t, s["cum_liquidated_usd"] / 1e6, color="tab:red", lw=1.4, label="liquidated notional")
    ax.plot(t, s["cum_batch_crossed_usd"] / 1e6, color="tab:pink", lw=1, ls="--", label="netted in batches")
    ax.plot(t, s["cum_adl_usd"] / 1e6, color="black", lw=1, ls=":", label="ADL notional")
    ax.set_ylabel("cumulative notional (M USD)")
    ax.set_title("liquidation waterfall (cumulative)", fontsize=9, loc="left")
    b = ax.twinx()
    b.plot(t, s["cum_penalties_usd"] / 1e3, color="tab:green", lw=1, label="penalties")
    b.plot(t, s["cum_slippage_usd"] / 1e3, color="tab:orange", lw=1, label="slippage")
    b.plot(t, s["cum_fund_draws_usd"] / 1e3, color="tab:blue", lw=1, label="fund draws")
    b.plot(t, s["cum_bad_debt_usd"] / 1e3, color="tab:purple", lw=1.2, label="bad debt")
    b.set_yscale("symlog", linthresh=0.01)  # $10 and up on a log scale: slippage beside fund draws
    b.set_ylabel("cumulative (k USD, log above 0.01)")
    lines = ax.get_legend_handles_labels()
    more = b.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=7, ncol=2)
