"""The `fluidmargin` command line (typer): the app of :mod:`fluidmargin.cli.app` with every command on it.

Each command lives in its own module and registers on import; importing this module loads them all.
"""

from __future__ import annotations

from fluidmargin.cli import (  # noqa: F401  (each registers its commands)
    demo,
    evaluate,
    forecast,
    jumps,
    portfolio,
    quote,
    replay,
    serve,
    stress,
    verify,
)
from fluidmargin.cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
