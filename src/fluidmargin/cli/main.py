"""The `fluidmargin` command line (typer). Each command lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="fluidmargin: a real-time margin engine.")


@app.callback()
def _root() -> None:
    """fluidmargin: a deterministic real-time margin engine for crypto derivatives."""


def _register() -> None:
    from fluidmargin.cli import (  # noqa: F401  (each registers its commands)
        demo,
        evaluate,
        forecast,
        jumps,
        portfolio,
        quote,
        replay,
        serve,
        verify,
    )


_register()

if __name__ == "__main__":
    from fluidmargin.cli.main import app as _app  # the module the commands registered on

    _app()
