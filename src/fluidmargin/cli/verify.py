"""`fluidmargin verify-log`: replay an event log and check it against its checkpoint (and snapshots)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated

import orjson
import typer

from fluidmargin.cli.main import app
from fluidmargin.core.errors import ValidationError
from fluidmargin.store.backend import open_log
from fluidmargin.store.log import LogFormatError
from fluidmargin.store.verify import verify_log


@app.command("verify-log")
def verify_log_cmd(
    log: Annotated[str, typer.Argument(help="event log: a SQLite file or a postgresql:// URL")],
    snapshots: Annotated[
        Path | None, typer.Option("--snapshots", help="also replay from the latest snapshot here")
    ] = None,
    expect_hash: Annotated[str | None, typer.Option("--expect-hash", help="the state hash the log must end at")] = None,
) -> None:
    """Replay LOG from empty, check every output; print one JSON line. Exit 0 ok, 1 mismatch, 2 bad file."""
    try:
        elog = open_log(log, readonly=True)
    except (LogFormatError, ValidationError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        report = verify_log(elog, snapshots, expect_hash)
    except sqlite3.DatabaseError as e:
        typer.echo(f"error: {log}: unreadable event log: {e}", err=True)
        raise typer.Exit(2) from None
    finally:
        elog.close()
    typer.echo(orjson.dumps(report).decode())
    raise typer.Exit(0 if report["ok"] else 1)
