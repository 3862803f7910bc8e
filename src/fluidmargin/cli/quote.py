"""`fluidmargin quote`: one JSON position per line on stdin, one JSON answer per line on stdout.

The maths is :func:`fluidmargin.risk.quote.quote`; a bad line gets ``{"error": reason}`` and the
stream goes on with the next line. Blank lines are skipped.
"""

from __future__ import annotations

import json
import sys

from fluidmargin.cli.main import app
from fluidmargin.risk.quote import quote_line


@app.command("quote")
def quote_command() -> None:
    """Margin figures and liquidation price: reads JSON objects (one per line) on stdin.

    Example: echo '{"preset": "hyperliquid", "max_leverage": 50, "margin_mode": "isolated",
    "side": "long", "entry_price": "2458.5", "size": "0.015", "collateral": "36.864593"}'
    | fluidmargin quote
    """
    out = sys.stdout
    for raw in sys.stdin.buffer:
        result = quote_line(raw)
        if result is None:
            continue
        out.write(json.dumps(result) + "\n")
        out.flush()
