"""`python -m fluidmargin ...` runs the CLI."""

from fluidmargin.cli.main import app

app()
