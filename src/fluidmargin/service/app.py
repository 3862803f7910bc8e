"""The FastAPI application: ``create_app(settings)`` wires the worker, the key registry and the routes.

The engine worker starts (recovering the log) when the app starts and stops, committing, when it
stops; see :mod:`fluidmargin.service.worker` for the write path and its acknowledgement point.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.config import EngineConfig
from fluidmargin.service import (
    routes_accounts,
    routes_admin,
    routes_dashboard,
    routes_governance,
    routes_market,
    routes_options,
    routes_waterfall,
    storage,
    streams,
    views,
)
from fluidmargin.service.auth import KeyRegistry, RateLimiter, require
from fluidmargin.service.codec import FieldError
from fluidmargin.service.deps import EngineRejected, Service, errors, rejection_status, visible_events
from fluidmargin.service.errors import IdempotencyMismatch, WorkerUnavailable
from fluidmargin.service.fastpath import FastPath
from fluidmargin.service.limits import Limits, RequestGuard
from fluidmargin.service.metrics import Metrics, RequestTimer
from fluidmargin.service.roles import SEE_ALL
from fluidmargin.service.schemas import Healthz
from fluidmargin.service.stream_hub import StreamHub
from fluidmargin.service.worker import EngineWorker, ReadFairness
from fluidmargin.store.backend import describe

API_VERSION = "1"


@dataclass
class ServiceSettings:
    db: Path
    config: EngineConfig | None = None  # required to create a new log; checked against an existing one
    snapshot_dir: Path | None = None  # default: <db>.snapshots
    keys_db: Path | None = None  # default: <db>.keys.sqlite
    admin_key: str | None = None  # registered as an admin key on start (the --admin-key-file's)
    rate_per_s: float = 1000.0  # per key, unless the key says otherwise
    burst: int = 2000
    max_batch: int = 4096
    snapshot_every: int = 1_000_000  # records between snapshots (0: only on shutdown)
    clock: Callable[[], int] = time.time_ns
    fast_path: bool = True  # the hot writes skip FastAPI's machinery (service/fastpath.py)
    max_body_bytes: int = 1024 * 1024  # larger request bodies: 413, unread (service/limits.py)
    read_timeout_s: float = 10.0  # for a request's body (408); `serve` gives the same to its head
    read_share: float = 0.25  # of the engine thread's time, one key's reads at most (0: no budget)
    read_burst_s: float = 0.5  # engine seconds a key's reads may take ahead of its share
    reads_in_flight: int = 2  # GET requests served at once per key (more wait their turn; 0: no cap)
    public_metrics: bool = False  # /metrics without a key (else an admin or venue key)
    max_sub_accounts: int = 100  # under one top-level account, at any depth


class ServiceApp(FastAPI):
    """The FastAPI app behind the request guard (service/limits.py), with the hot writes first offered to
    the fast path."""

    fast: FastPath | None = None
    guard: RequestGuard | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.guard is not None:
            await self.guard(scope, receive, send)  # then self.serve
        else:
            await self.serve(scope, receive, send)

    async def serve(self, scope: Any, receive: Any, send: Any) -> None:
        if self.fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            taken, receive = await self.fast.handle(scope, receive, send)
            if taken:
                return
        await super().__call__(scope, receive, send)


def create_app(settings: ServiceSettings) -> FastAPI:
    config = settings.config or storage.log_config(settings.db)
    if config is None:
        raise ValidationError(f"{describe(settings.db)} does not exist: give an engine config (--config) to create it")
    snapshot_dir = settings.snapshot_dir or storage.default_snapshot_dir(settings.db)
    metrics = Metrics()
    fairness = ReadFairness(settings.read_share, settings.read_burst_s, settings.reads_in_flight)
    worker = EngineWorker(
        lambda: storage.open_runner(settings.db, settings.config, snapshot_dir),
        clock=settings.clock,
        max_batch=settings.max_batch,
        snapshot_every=settings.snapshot_every,
        on_apply=metrics.on_apply,
        on_flush=metrics.commit_latency.observe,
        fairness=fairness,
    )
    worker.add_commit_listener(metrics.on_commit)
    keys = KeyRegistry(settings.keys_db or storage.key_registry_path(settings.db))
    if settings.admin_key:
        keys.ensure_admin(settings.admin_key)
    svc = Service(worker, keys, RateLimiter(settings.rate_per_s, settings.burst), metrics, config)
    svc.max_sub_accounts = settings.max_sub_accounts
    hub = StreamHub(svc, settings.db)  # WebSocket streams: fed by the worker after each commit
    worker.add_commit_listener(hub.on_commit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        hub.start()
        try:
            yield
        finally:
            await hub.stop()
            worker.stop(snapshot=True)
            keys.close()

    app = ServiceApp(
        title="fluidmargin",
        version=API_VERSION,
        summary="Real-time margin engine: accounts, margin, liquidations, auctions, vault",
        description=(
            "Every quantum travels as a decimal string in natural units ('12.5' USD, '0.01' BTC, "
            "'50000.12' a price), never as a JSON number; more decimals than the unit holds is a 422. "
            "Authenticate with `Authorization: Bearer <api key>`. A write is answered once it is durable; "
            "an `Idempotency-Key` header makes it idempotent."
        ),
        lifespan=lifespan,
    )
    app.state.svc = svc
    app.state.hub = hub
    app.state.publisher = streams.Publisher(svc)
    _handlers(app)
    for r in (routes_accounts, routes_market, routes_options, routes_waterfall, routes_admin, routes_governance):
        app.include_router(r.router)
    app.include_router(streams.router)
    routes_dashboard.mount(app)
    _system_routes(app, svc, settings.public_metrics)
    app.add_middleware(RequestTimer, metrics=metrics)
    if settings.fast_path:
        app.fast = FastPath(svc, error_response)
    app.guard = RequestGuard(app.serve, keys.lookup, Limits(settings.max_body_bytes, settings.read_timeout_s), fairness)
    return app


def _system_routes(app: FastAPI, svc: Service, public_metrics: bool = False) -> None:
    @app.get(
        "/healthz",
        response_model=Healthz,
        tags=["system"],
        summary="Liveness and log position",
        responses={503: {"model": Healthz, "description": "the engine worker has failed"}},
    )
    async def healthz() -> Any:
        w = svc.worker

        def read(eng: Any) -> dict[str, Any]:
            return {"seq": eng.seq, "now_ns": eng.now_ns, "accounts": eng.n_acc}

        try:
            body = await w.read(read)
        except WorkerUnavailable:
            body = {"seq": 0, "now_ns": 0, "accounts": 0}
        body.update(status="failed" if w.failed else "ok", durable_seq=w.durable_seq, queued=w.queued())
        return JSONResponse(body, status_code=503 if w.failed else 200)

    @app.get(
        "/metrics",
        tags=["system"],
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"},
            **({} if public_metrics else errors(403)),
        },
        dependencies=[] if public_metrics else [require(*SEE_ALL)],  # public: `serve --public-metrics`
    )
    async def metrics_endpoint() -> Response:
        with suppress(WorkerUnavailable):
            await svc.worker.read(svc.metrics.refresh)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _validation(loc: list[str], msg: str, typ: str = "value_error") -> JSONResponse:
    """A 422 in FastAPI's own validation-error shape (what the OpenAPI document declares)."""
    return JSONResponse({"detail": [{"loc": loc, "msg": msg, "type": typ}]}, status_code=422)


def error_response(svc: Service, exc: Exception, principal: Any) -> JSONResponse | None:
    """The answer to an exception a write or read may raise (None: not one of ours). Shared by the app's
    exception handlers and the fast path, so both answer alike."""
    if isinstance(exc, views.NotFound):
        return JSONResponse({"detail": str(exc.args[0] if exc.args else exc)}, status_code=404)
    if isinstance(exc, FieldError):
        return _validation([exc.where, exc.field], exc.msg)
    if isinstance(exc, IdempotencyMismatch):
        return _validation(["header", "Idempotency-Key"], str(exc), "idempotency_mismatch")
    if isinstance(exc, ValidationError):
        return _validation(["body"], str(exc))
    if isinstance(exc, WorkerUnavailable):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})
    if isinstance(exc, EngineRejected):
        status = rejection_status(exc.reason)
        if status == 422:
            return _validation(["body"], exc.reason, "engine_rejected")
        if status == 404:
            return JSONResponse({"detail": exc.reason}, status_code=404)
        events = visible_events(svc, exc.outcome, principal)
        return JSONResponse({"detail": exc.reason, "seq": exc.outcome.seq, "events": events}, status_code=409)
    return None


def _handlers(app: FastAPI) -> None:
    async def ours(request: Request, exc: Exception) -> Response:
        svc: Service = request.app.state.svc
        response = error_response(svc, exc, getattr(request.state, "principal", None))
        assert response is not None
        return response

    for kind in (views.NotFound, FieldError, IdempotencyMismatch, ValidationError, WorkerUnavailable, EngineRejected):
        app.add_exception_handler(kind, ours)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # a body that is not JSON (or not UTF-8): a validation error like any other
            return _validation(["body"], str(exc.detail), "json_invalid")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape, minus the echoed input (it may be large, or a secret)
        errs = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": errs}, status_code=422)
