"""`fluidmargin serve`: the HTTP API (FastAPI under uvicorn) over a durable event log."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from fluidmargin.cli.app import app
from fluidmargin.core.errors import FluidMarginError
from fluidmargin.model import events as ev
from fluidmargin.sim.scenarios import CrashParams, PopulationSpec, Scenario, crash_candles
from fluidmargin.sim.venues import replay_venue
from fluidmargin.store.backend import DB_ENV, shows_password, target_from


def admin_key(path: Path) -> tuple[str, bool]:
    """The admin key in ``path`` (created, readable by its owner only, when missing): (key, created)."""
    from fluidmargin.service.auth import new_secret  # the service (FastAPI) loads on use: a fast --help

    if path.exists():
        key = path.read_text().strip()
        if not key:
            raise FluidMarginError(f"{path} is empty: delete it to have a new admin key made")
        return key, False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


@app.command()
def serve(
    *,  # keyword-only: lets the optional --db come before the required --admin-key-file
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="the store, created when missing: a SQLite path or sqlite:///PATH, or"
            " postgresql://USER:PASSWORD@HOST:PORT/DB?schema=NAME (the log, API keys and idempotency index live there)."
            " A password here shows in the process list: use --db-file or $FLUIDMARGIN_DB instead",
            show_default=False,
        ),
    ] = None,
    db_file: Annotated[
        Path | None,
        typer.Option("--db-file", help="a file whose one line is the store's path or URL (instead of --db)"),
    ] = None,
    admin_key_file: Annotated[
        Path, typer.Option("--admin-key-file", help="file holding the admin API key (created, and printed once)")
    ],
    config: Annotated[
        str | None,
        typer.Option("--config", help="venue for a new log: perp, waterfall, or an engine config JSON file"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on")] = 8000,
    rate_limit: Annotated[float, typer.Option(min=0.0, help="requests/s per key (0: unlimited)")] = 1000.0,
    burst: Annotated[int, typer.Option(min=1, help="token bucket size per key")] = 2000,
    snapshot_dir: Annotated[
        Path | None,
        typer.Option(
            help="snapshots (default: <db>.snapshots; for PostgreSQL"
            " ~/.local/state/fluidmargin/snapshots/HOST_PORT_DB_SCHEMA)"
        ),
    ] = None,
    snapshot_every: Annotated[int, typer.Option(min=0, help="records between snapshots (0: on shutdown)")] = 1_000_000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="largest request body (413 beyond it, unread)")
    ] = 1_048_576,
    read_timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds a client has for a request's head, and again its body")
    ] = 10.0,
    max_connections: Annotated[
        int, typer.Option(min=1, help="open connections, WebSockets included (503 beyond it)")
    ] = 4096,
    keep_alive_timeout: Annotated[int, typer.Option(min=1, help="seconds an idle keep-alive connection is kept")] = 5,
    read_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of the engine's time one key's reads may use (0: no cap)")
    ] = 0.25,
    public_metrics: Annotated[
        bool, typer.Option("--public-metrics", help="serve /metrics without a key (default: an admin or venue key)")
    ] = False,
    max_sub_accounts: Annotated[
        int, typer.Option(min=0, help="sub-accounts under one top-level account (any depth)")
    ] = 100,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="feed the built-in crash scenario (seeded population, BTC/ETH crash, waterfall venue) through"
            " the engine worker at a watchable pace, on event time; needs a new log (or one of the same demo)",
        ),
    ] = False,
    demo_accounts: Annotated[int, typer.Option(min=1, help="--demo: accounts in the population")] = 20_000,
    demo_seed: Annotated[int, typer.Option(help="--demo: seed of prices and population")] = 42,
    demo_days: Annotated[float, typer.Option(min=0.1, max=30.0, help="--demo: days of 1-minute prices")] = 1.0,
    demo_speed: Annotated[
        float, typer.Option(min=1.0, help="--demo: scenario seconds per wall-clock second (600: a minute in 0.1 s)")
    ] = 600.0,
) -> None:
    """Serve the API: accounts, margin, fills, what-if, prices, auctions, vault, metrics, streams, dashboard."""
    import uvicorn

    # lazy: the service (FastAPI, uvicorn) loads only when served, so other commands and --help stay fast
    from fluidmargin.service import ServiceSettings, create_app
    from fluidmargin.service.storage import load_config  # lazy, as above

    if shows_password(db):
        typer.echo(f"warning: the password in --db shows in the process list; use --db-file or ${DB_ENV}", err=True)

    feeder: DemoFeeder | None = None
    try:
        if demo:
            if config:
                raise FluidMarginError("--demo brings its own venue: leave out --config")
            feeder = DemoFeeder(demo_accounts, demo_seed, demo_days, demo_speed)
        cfg = feeder.config if feeder is not None else load_config(config) if config else None
        db = target_from(db, db_file)  # --db, else --db-file, else $FLUIDMARGIN_DB
        key, created = admin_key(admin_key_file)
        settings = ServiceSettings(
            db=cast(Path, db),  # a path or a URL: storage reads both (a URL must not go through Path)
            config=cfg,
            snapshot_dir=snapshot_dir,
            admin_key=key,
            rate_per_s=rate_limit,
            burst=burst,
            snapshot_every=snapshot_every,
            public_metrics=public_metrics,
            max_sub_accounts=max_sub_accounts,
            max_body_bytes=max_body_bytes,
            read_timeout_s=read_timeout,
            read_share=read_share,
        )
        if feeder is not None:
            settings.clock = feeder.clock  # the service stamps inputs with the scenario's event time
        api = create_app(settings)
        api.state.svc.worker.start()  # recover the log now: a store it cannot read is refused on one line
    except (FluidMarginError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if created:
        typer.echo(f"admin API key (written to {admin_key_file}, shown only now): {key}")
    elif api.state.svc.keys.lookup(key) is None:
        typer.echo(
            f"note: the admin key in {admin_key_file} is revoked; serving on the other admin keys"
            f" (delete {admin_key_file} and restart to have a new admin key made)",
            err=True,
        )
    typer.echo(f"fluidmargin API on http://{host}:{port} (OpenAPI at /docs, metrics at /metrics)")
    if feeder is not None:
        typer.echo(f"dashboard (admin key in the fragment): http://{host}:{port}/#key={key}")
        feeder.attach(api)
    else:
        typer.echo(f"dashboard: http://{host}:{port}/#key=<API key>")
    from fluidmargin.service.limits import http_protocol  # (lazy with the service, above)

    uvicorn.run(
        api,
        host=host,
        port=port,
        log_level=log_level,
        access_log=feeder is None,
        http=http_protocol(read_timeout),  # closes idle and slow-drip connections (service/limits.py)
        limit_concurrency=max_connections,
        timeout_keep_alive=keep_alive_timeout,
        backlog=max(2048, max_connections),
    )


class DemoFeeder:
    """``serve --demo``: the built-in crash scenario fed through the engine worker as it runs.

    Inputs keep the scenario's event time (the service's clock is the scenario's: see :meth:`clock`), so
    funding, oracle staleness and auctions behave as in ``fluidmargin demo``; they are paced so that
    ``speed`` scenario seconds pass per wall-clock second. The scenario is a pure function of its
    parameters; a restart on the same log skips the inputs the log already holds.
    """

    def __init__(self, accounts: int, seed: int, days: float, speed: float) -> None:
        candles = crash_candles(seed, CrashParams(days=days))
        self.config = replay_venue(candles, "waterfall")
        self.scenario = Scenario(
            self.config, candles, None, PopulationSpec(accounts, seed), path="close", name="serve --demo"
        )
        self.speed = speed
        self.t_ns = self.scenario.span_ns[0]

    def clock(self) -> int:
        return self.t_ns

    def attach(self, api: Any) -> None:
        """Run :meth:`feed` while the app runs (after the worker has started, until shutdown)."""
        inner = api.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            async with inner(app) as state:
                task = asyncio.ensure_future(self.feed(app))
                try:
                    yield state
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

        api.router.lifespan_context = lifespan

    async def feed(self, app: Any) -> None:
        try:
            await self._feed(app.state.svc.worker)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the service keeps serving what it has
            typer.echo(f"demo: stopped: {e!r}", err=True)

    async def _feed(self, worker: Any) -> None:
        applied = await worker.read(lambda eng: eng.now_ns)
        total = self.scenario.count()
        t0 = self.scenario.span_ns[0]
        wall0 = time.monotonic()
        last_note = t0
        typer.echo(f"demo: feeding {total} inputs of the crash scenario ({self.speed:g}x event time)")
        for n, e in enumerate(self.scenario.events(), 1):
            if e.ts_ns <= applied:
                continue  # a restart: the log holds it already
            wait = wall0 + (e.ts_ns - t0) / 1e9 / self.speed - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.t_ns = max(self.t_ns, e.ts_ns)

            def build(eng: Any, ts: int, e: ev.Event = e) -> ev.Event:
                return dataclasses.replace(e, ts_ns=ts)

            out = await worker.write(build)
            if isinstance(e, ev.AccountsSeeded):
                typer.echo(f"demo: seeded {len(e.account_ids)} accounts (seq {out.seq})")
            if e.ts_ns - last_note >= 6 * 3600 * 10**9:
                last_note = e.ts_ns
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.ts_ns / 1e9))
                typer.echo(f"demo: event time {when} UTC, {n}/{total} inputs, seq {out.seq}")
        typer.echo("demo: the crash scenario is over; the service keeps serving (Ctrl-C to stop)")
