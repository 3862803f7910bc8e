"""`fluidmargin quote`: one JSON position per line on stdin, one JSON answer per line on stdout.

The maths is :func:`fluidmargin.adapters.quote.quote`; a bad line gets ``{"error": reason}`` and the
stream goes on with the next line. Blank lines are skipped. A line with a ``gap_risk`` object (a
jump-diffusion model, horizon and target) is also answered with ``bankruptcy_price``,
``gap_probability`` and ``gap_addon`` (:mod:`fluidmargin.risk.stats.gap`).
"""

from __future__ import annotations

import json
import sys

from fluidmargin.adapters.quote import quote_line
from fluidmargin.cli.app import app


@app.command("quote")
def quote_command() -> None:
    """Margin figures and liquidation price: reads JSON objects (one per line) on stdin.

    Example: echo '{"preset": "hyperliquid", "max_leverage": 50, "margin_mode": "isolated",
    "side": "long", "entry_price": "2458.5", "size": "0.015", "collateral": "36.864593"}'
    | fluidmargin quote

    Add "gap_risk": {"model": "merton", "sigma": "0.8", "lam": "20", "mu_j": "-0.05", "sigma_j": "0.08",
    "horizon_s": "10", "target": "0.001"} to a line for its gap probability and add-on.
    """
    out = sys.stdout
    for raw in sys.stdin.buffer:
        result = quote_line(raw)
        if result is None:
            continue
        out.write(json.dumps(result) + "\n")
        out.flush()
