"""What several commands share: option checks, running a scenario (on a bare engine, or durably through
the store's Runner with ``--log``) and printing its summary (``replay``, ``demo``, ``evaluate``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fluidmargin.core.errors import FluidMarginError
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.sim import report
from fluidmargin.sim.scenarios import Scenario
from fluidmargin.store.runner import Runner

err = Console(stderr=True)


def progress_bar(console: Console, disable: bool) -> Progress:
    """The commands' progress bar on stderr: description, bar, done/total, time left; gone when finished."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=True,
    )


def one_of(option: str, value: str, choices: Sequence[str]) -> None:
    """A usage error (exit 2) unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise typer.BadParameter(f"--{option} must be one of {', '.join(choices)}")


def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch from digits or an ISO date/time (UTC unless it says otherwise)."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither milliseconds nor an ISO date/time") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp() * 1000)


# --- running a scenario ----------------------------------------------------------------------------


def _same_stream(runner: Runner, events: Iterator[ev.Event], n: int = 2) -> None:
    """Resuming: the log's first inputs must be this stream's first inputs (same data and options)."""
    logged = []
    for _seq, e in runner.log.read():
        if e.is_input:
            logged.append(e)
            if len(logged) == n:
                break
    for e_log, e_new in zip(logged, events, strict=False):
        if e_log.to_dict() != e_new.to_dict():
            raise FluidMarginError(
                f"{runner.log.path} holds another replay ({type(e_log).__name__} at {e_log.ts_ns} differs): "
                "resume with the same data and options, or use a new --log"
            )


class _Acking:
    """Wraps the Runner: prints ``ACK <seq>`` on stdout each time a group commit makes records durable."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.engine = runner.engine
        self.acked = runner.durable_seq

    def submit(self, event: Any) -> Any:
        recs = self.runner.submit(event)
        if self.runner.durable_seq != self.acked:
            self.acked = self.runner.durable_seq
            print(f"ACK {self.acked}", flush=True)
        return recs


def execute(
    scenario: Scenario, log: Path | None, quiet: bool, fresh_log: bool = False, ack: bool = False
) -> report.RunResult:
    """Run a scenario on a bare engine, or durably through the store's Runner when ``log`` is given."""
    step = report.sample_step_ns(scenario.span_ns, scenario.step_ns)
    total = scenario.count()
    runner = None
    skip = 0
    if log is not None:
        if fresh_log:
            for suffix in ("", "-wal", "-shm"):
                Path(str(log) + suffix).unlink(missing_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        runner = Runner.open_or_create(log, scenario.config)
        skip = runner.inputs_applied
        try:
            if skip > total:
                raise FluidMarginError(f"{log} holds {skip} inputs, this replay only {total}: use a new log")
            if skip:
                _same_stream(runner, scenario.events())
        except BaseException:
            runner.close()
            raise
        target: report.Target = _Acking(runner) if ack else runner
    else:
        target = report.EngineTarget(Engine(scenario.config))
    try:
        with progress_bar(err, disable=quiet) as bar:
            task = bar.add_task(scenario.name, total=total)
            adv: Callable[[int], None] = lambda k: bar.advance(task, k)  # noqa: E731
            result = report.run(target, scenario.events(), step, skip=skip, progress=adv)
    finally:
        if runner is not None:
            runner.close()
    if runner is not None:
        result.summary["log"] = str(log)
    return result


# --- the summary -----------------------------------------------------------------------------------


def _join(d: dict[str, Any]) -> str:
    return "; ".join(f"{a}: {b}" for a, b in d.items())


def waterfall_rows(w: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``liquidation_waterfall`` section as (what, value) rows, per mechanism."""
    total = "liquidated_notional_total_usd"
    rows = [
        ("venue", f"{w['sizing']} closes; " + _join(w["execution"])),
        ("liquidations", _join(w["liquidations"])),
        ("liquidated notional usd", _join({**w["liquidated_notional_usd"], "total": w[total]})),
        ("penalties usd", _join({**w["penalties_usd"], "total": w["penalties_total_usd"]})),
        ("netted in batches usd", f"{w['batch_crossed_notional_usd']} ({w['batches']} batches)"),
        ("sent to market usd", f"{w['impact_executed_notional_usd']} ({w['impact_executions']} orders)"),
        ("slippage usd", w["slippage_usd"]),
    ]
    if w["auctions_started"] or "auction" in w["liquidations"]:
        rows.append(
            (
                "auctions",
                f"{w['auctions_started']} started, {w['auction_fills']} fills "
                f"({w['auction_filled_notional_usd']} usd), {w['auction_resets']} resets",
            )
        )
    if w["backstop_takeovers"] or any("backstop" in x for x in w["execution"].values()):
        rows.append(("backstop takeovers", f"{w['backstop_takeovers']} ({w['backstop_notional_usd']} usd)"))
    rows += [
        ("adl events", f"{w['adl_events']} ({w['adl_notional_usd']} usd)"),
        ("fund draws usd", _join({**w["fund_draws_usd"], "total": w["fund_draws_total_usd"]})),
        ("fund inflows usd", _join(w["fund_inflows_usd"]) or "0"),
        ("bad debt usd", f"{w['bad_debt_usd']} ({w['bad_debt_events']} events)"),
    ]
    return rows


def print_summary(result: report.RunResult, title: str, as_json: bool, chart: Path | None) -> None:
    if as_json:
        out = dict(result.summary)
        if chart is not None:
            out["chart"] = str(chart)
        typer.echo(json.dumps(out, sort_keys=True))
        return
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", justify="right", overflow="fold")
    for k, v in result.summary.items():
        if k == "liquidation_waterfall":
            continue
        if isinstance(v, dict):
            v = "; ".join(f"{a}: {b}" for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        t.add_row(k.replace("_", " "), str(v))
    if chart is not None:
        t.add_row("chart", str(chart))
    w = result.summary.get("liquidation_waterfall")
    if w is not None:
        t.add_section()
        t.add_row("liquidation waterfall", "", style="bold cyan")
        for what, value in waterfall_rows(w):
            t.add_row(what, value)
    Console().print(t)
