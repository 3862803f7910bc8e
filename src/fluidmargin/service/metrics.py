"""Prometheus metrics (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fluidmargin.core.units import QUOTE_SCALE
from fluidmargin.engine.engine import Engine
from fluidmargin.engine.state import STATUS_NAMES
from fluidmargin.model import events as ev

_FAST = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_HTTP = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "fluidmargin_http_request_duration_seconds",
            "HTTP request latency (through to the durable acknowledgement for writes)",
            ["method", "route", "status"],
            buckets=_HTTP,
            registry=r,
        )
        self.apply_latency = Histogram(
            "fluidmargin_engine_apply_seconds",
            "time the engine took to apply one input (tick latency for prices)",
            ["type"],
            buckets=_FAST,
            registry=r,
        )
        self.commit_latency = Histogram(
            "fluidmargin_commit_seconds", "group commit (flush) time", buckets=_FAST, registry=r
        )
        self.batch_size = Histogram(
            "fluidmargin_commit_batch_records",
            "records per group commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 20000),
            registry=r,
        )
        self.events = Counter("fluidmargin_events", "records committed to the log, by event type", ["type"], registry=r)
        self.liquidations = Counter(
            "fluidmargin_liquidations", "positions liquidated (partial closes count each)", ["market"], registry=r
        )
        self.accounts = Gauge("fluidmargin_accounts", "accounts by cross status", ["status"], registry=r)
        self.at_risk = Gauge(
            "fluidmargin_accounts_at_risk", "accounts at risk, liquidating or bankrupt (cross)", registry=r
        )
        self.fund_balance = Gauge(
            "fluidmargin_insurance_fund_balance", "insurance fund balance (quote units)", ["fund"], registry=r
        )
        self.durable_seq = Gauge("fluidmargin_durable_seq", "last durable log sequence number", registry=r)
        self._apply_by_type: dict[str, Any] = {}  # labels() costs more than observe()

    # called in the worker thread -------------------------------------------------------------------

    def on_apply(self, event_type: str, seconds: float) -> None:
        child = self._apply_by_type.get(event_type)
        if child is None:
            child = self._apply_by_type[event_type] = self.apply_latency.labels(event_type)
        child.observe(seconds)

    def on_commit(self, records: list[tuple[int, ev.Event]]) -> None:
        types: Tally[str] = Tally()
        liq: Tally[str] = Tally()
        for _seq, e in records:
            types[type(e).__name__] += 1
            if isinstance(e, ev.PositionLiquidated):
                liq[e.market] += 1
            elif isinstance(e, ev.PositionsLiquidated):
                liq[e.market] += len(e.account_ids)
        for t, n in types.items():
            self.events.labels(t).inc(n)
        for m, n in liq.items():
            self.liquidations.labels(m).inc(n)
        self.batch_size.observe(len(records))
        self.durable_seq.set(records[-1][0])

    def refresh(self, eng: Engine) -> None:
        """Gauges read from the engine (run in the worker thread before a scrape)."""
        counts = np.bincount(eng.status[: eng.n_acc], minlength=len(STATUS_NAMES)) if eng.n_acc else [0] * 4
        for i, name in enumerate(STATUS_NAMES):
            self.accounts.labels(name).set(int(counts[i]))
        self.at_risk.set(int(sum(counts[1:])))
        for fund, bal in eng.wf.funds.items():
            self.fund_balance.labels(fund).set(bal / QUOTE_SCALE)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Pure ASGI middleware: request latency by method, route template and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(scope["method"], path, str(status[0])).observe(time.perf_counter() - t0)
