"""`fluidmargin portfolio-margin --derive-case FILE`: portfolio margin of a Derive-format case.

The file is parsed by :mod:`fluidmargin.adapters.derive` and margined by
:func:`fluidmargin.risk.options.portfolio.portfolio_margin` with the parameters the file carries; one JSON object
is printed, every number a decimal string. Exit 0 on success, 2 on an unreadable or malformed file.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from fluidmargin.adapters.derive import DeriveCaseError, parse_derive_case_text
from fluidmargin.cli.app import app
from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.portfolio import PortfolioMarginParams, PortfolioMarginResult, portfolio_margin


def _dec(x: float) -> str:
    """A float as a plain decimal string (shortest round-trip digits, no exponent)."""
    if x == 0:
        return "0"
    return format(Decimal(repr(float(x))), "f")


def result_json(
    result: PortfolioMarginResult, params: PortfolioMarginParams, warnings: tuple[str, ...]
) -> dict[str, Any]:
    """The command's output object."""
    scenarios = [
        {
            "index": i,
            "kind": s.kind,
            "spot_shock": _dec(s.spot_shock),
            "vol_shock": s.vol_shock.value,
            "dampening": _dec(s.dampening),
            "pnl": _dec(pnl),
        }
        for i, (s, pnl) in enumerate(zip(params.scenarios, result.scenario_pnls_quote, strict=True))
    ]
    w = result.worst
    worst: dict[str, Any] = {"kind": w.kind, "index": w.index, "pnl": _dec(w.pnl_quote)}
    if w.index is not None:
        worst.update({k: scenarios[w.index][k] for k in ("spot_shock", "vol_shock", "dampening")})
    c = result.contingencies
    return {
        "initial_margin": _dec(result.initial_margin_quote),
        "maintenance_margin": _dec(result.maintenance_margin_quote),
        "initial_requirement": _dec(result.initial_requirement_quote),
        "maintenance_requirement": _dec(result.maintenance_requirement_quote),
        "mark_to_market": _dec(result.mark_to_market_quote),
        "worst_scenario": worst,
        "basis_contingency": _dec(result.basis_contingency_quote),
        "im_loss_factor": _dec(result.im_loss_factor),
        "mm_loss_factor": _dec(result.mm_loss_factor),
        "contingencies": {
            "perp_mm": _dec(c.perp_mm_quote),
            "perp_im_extra": _dec(c.perp_im_extra_quote),
            "option_mm": _dec(c.option_mm_quote),
            "option_im_extra": _dec(c.option_im_extra_quote),
            "collateral_mm": _dec(c.collateral_mm_quote),
            "collateral_im_extra": _dec(c.collateral_im_extra_quote),
            "confidence_im": _dec(c.confidence_im_quote),
        },
        "scenarios": scenarios,
        "warnings": list(warnings),
    }


@app.command("portfolio-margin")
def portfolio_margin_command(
    derive_case: Annotated[
        Path, typer.Option("--derive-case", help="a Derive PMRM_2 portfolio case (JSON)", dir_okay=False)
    ],
) -> None:
    """Initial and maintenance margin of a Derive-format case, by this project's portfolio-margin model.

    Prints one JSON object: initial_margin, maintenance_margin (Derive's sign: healthy while >= 0), the
    requirements, the worst scenario, contingencies and every scenario's P&L. Exit 2 on a bad file.
    """
    try:
        text = derive_case.read_bytes()
    except OSError as e:
        typer.echo(f"error: {derive_case}: {e.strerror or e}", err=True)
        raise typer.Exit(2) from None
    try:
        case = parse_derive_case_text(text)
    except DeriveCaseError as e:
        typer.echo(f"error: {derive_case}: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        result = portfolio_margin(case.portfolio, case.params)
    except ValidationError as e:  # parameters the reference accepts but that overflow on this book
        typer.echo(f"error: {derive_case}: cannot be margined: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result_json(result, case.params, case.warnings)))
