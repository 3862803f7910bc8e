"""`fluidmargin serve`: the HTTP API (FastAPI under uvicorn) over a durable event log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, cast

import typer

from fluidmargin.cli.main import app
from fluidmargin.core.errors import FluidMarginError


def admin_key(path: Path) -> tuple[str, bool]:
    """The admin key in ``path`` (created, readable by its owner only, when missing): (key, created)."""
    from fluidmargin.service.auth import new_secret

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
    db: Annotated[
        str,
        typer.Option(
            "--db",
            help="the store, created when missing: a SQLite path or sqlite:///PATH, or"
            " postgresql://USER:PASSWORD@HOST:PORT/DB?schema=NAME (the log, API keys and idempotency index live there)",
        ),
    ],
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
) -> None:
    """Serve the API: accounts, margin, fills, what-if, prices, auctions, vault, metrics."""
    import uvicorn

    from fluidmargin.service import ServiceSettings, create_app
    from fluidmargin.service.storage import load_config

    try:
        cfg = load_config(config) if config else None
        key, created = admin_key(admin_key_file)
        settings = ServiceSettings(
            db=cast(Path, db),  # a path or a URL: storage reads both (a URL must not go through Path)
            config=cfg,
            snapshot_dir=snapshot_dir,
            admin_key=key,
            rate_per_s=rate_limit,
            burst=burst,
            snapshot_every=snapshot_every,
        )
        api = create_app(settings)
    except (FluidMarginError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if created:
        typer.echo(f"admin API key (written to {admin_key_file}, shown only now): {key}")
    typer.echo(f"fluidmargin API on http://{host}:{port} (OpenAPI at /docs, metrics at /metrics)")
    uvicorn.run(api, host=host, port=port, log_level=log_level)
