"""`fluidmargin verify-log`: check a store, replay its event log and check it against its checkpoint (and snapshots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

from fluidmargin.cli.app import app
from fluidmargin.core.errors import FluidMarginError
from fluidmargin.store.backend import DB_ENV, open_log, shows_password, target_from
from fluidmargin.store.verify import verify_log


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo("error: " + " ".join(message.split()), err=True)  # one line
    return typer.Exit(code)


@app.command("verify-log")
def verify_log_cmd(
    log: Annotated[
        str | None,
        typer.Argument(
            help=f"the store: a SQLite file or a postgresql:// URL (default: --db-file, else ${DB_ENV}, which keep"
            " a password out of the process list)",
            show_default=False,
        ),
    ] = None,
    db_file: Annotated[
        Path | None, typer.Option("--db-file", help="a file whose one line is the store's path or URL")
    ] = None,
    snapshots: Annotated[
        Path | None, typer.Option("--snapshots", help="also replay from the latest snapshot here")
    ] = None,
    expect_hash: Annotated[str | None, typer.Option("--expect-hash", help="the state hash the log must end at")] = None,
) -> None:
    """Check the store (every table the service keeps in it), replay LOG from empty and check every output;
    print one JSON line. Exit 0 ok, 1 a check failed (also one `error:` line on stderr), 2 unreadable store."""
    from fluidmargin.service.storage import check_service_tables  # the service package loads on use: a fast --help

    try:
        target = target_from(log, db_file, name="LOG")
    except FluidMarginError as e:
        raise _fail(str(e), 2) from None
    if shows_password(log):
        typer.echo(f"warning: the password in LOG shows in the process list; use --db-file or ${DB_ENV}", err=True)
    try:
        elog = open_log(target, readonly=True)
    except FluidMarginError as e:
        raise _fail(str(e), 2) from None
    try:
        report = verify_log(elog, snapshots, expect_hash)
        counts, problems = check_service_tables(target, elog)
    except FluidMarginError as e:  # unreadable: damaged beyond what the checks report, or the server went away
        raise _fail(str(e), 2) from None
    finally:
        elog.close()
    report.update(counts)
    if problems:
        report["ok"] = False
        report["error"] = "; ".join([*([report["error"]] if report.get("error") else []), *problems])
    typer.echo(orjson.dumps(report).decode())
    if not report["ok"]:
        raise _fail(report["error"], 1)
    raise typer.Exit(0)
