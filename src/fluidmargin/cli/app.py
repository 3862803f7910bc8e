"""The typer application every command registers on (:mod:`fluidmargin.cli.main` loads the commands)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="fluidmargin: a real-time margin engine.")


@app.callback()
def _root() -> None:
    """fluidmargin: a deterministic real-time margin engine for crypto derivatives."""
