"""dYdX v4 bankruptcy quote and fillable price, from dYdX's own tests (read in place from
../shared/data/vectors/dydx_v4_bankruptcy_and_fillable_price.json, VECTORS.md section 6), plus
properties of :mod:`fluidmargin.risk.perp.liquidation_prices`.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, parse_decimal
from fluidmargin.risk.perp.liquidation_prices import (
    PerpPosition,
    account_totals,
    bankruptcy_quote_q,
    fillable_price_exact,
    fillable_price_q,
    maintenance_quote,
    net_notional_quote,
)
from support.data import shared_path

VECTORS_FILE = "dydx_v4_bankruptcy_and_fillable_price.json"
BANKRUPTCY = "TestGetBankruptcyPriceInQuoteQuantums"
FILLABLE = "TestGetFillablePrice"


def _load_cases() -> list[Any]:
    data = json.loads(shared_path("vectors", VECTORS_FILE).read_text())
    params = []
    for test in (BANKRUPTCY, FILLABLE):
        for case in data[test]:
            slug = re.sub(r"[^a-z0-9]+", "-", case["name"].lower()).strip("-")
            params.append(pytest.param(test, case["go_line"], id=f"{test[7:]}-L{case['go_line']}-{slug}"))
    return params


CASES = _load_cases()


def _case(vectors_dir: Path, test: str, go_line: int) -> dict[str, Any]:
    data = json.loads((vectors_dir / VECTORS_FILE).read_text())
    (case,) = [c for c in data[test] if c["go_line"] == go_line]
    return dict(case)


def _inputs(case: dict[str, Any]) -> tuple[int, dict[int, PerpPosition]]:
    """USDC (quote quantums) and positions by perpetual id, from the resolved constants."""
    perps = case["resolved_perpetuals"]
    positions: dict[int, PerpPosition] = {}
    for p in case["resolved_positions"]:
        perp = perps[str(p["perpetual_id"])]
        positions[p["perpetual_id"]] = PerpPosition(
            size_base_q=p["quantums"],
            size_decimals=-perp["atomic_resolution"],
            oracle_price_q=parse_decimal(perp["oracle_price_usd"], PRICE_DECIMALS, Rounding.FLOOR),
            mmf_ppm=parse_decimal(perp["maintenance_margin_fraction"], 6, Rounding.FLOOR),
        )
    usdc = case["usdc_balance"]
    assert isinstance(usdc, int)
    return usdc * 10**QUOTE_DECIMALS, positions


def test_vector_file_counts(vectors_dir: Path) -> None:
    data = json.loads((vectors_dir / VECTORS_FILE).read_text())
    cases = data[BANKRUPTCY] + data[FILLABLE]
    assert len(cases) == 37
    assert sum(c["expected_error"] is None for c in cases) == 29


@pytest.mark.parametrize(("test", "go_line"), CASES)
def test_dydx_liquidation_vector(vectors_dir: Path, test: str, go_line: int) -> None:
    case = _case(vectors_dir, test, go_line)
    usdc_q, positions = _inputs(case)
    pid, delta = case["perpetual_id"], case["delta_quantums"]
    if case["expected_error"] is not None:
        assert case["expected_error"] == "types.ErrInvalidPerpetualPositionSizeDelta"
        with pytest.raises(ValidationError, match="invalid position size delta"):
            if test == BANKRUPTCY:
                bankruptcy_quote_q(usdc_q, positions, pid, delta)
            else:
                fillable_price_q(
                    usdc_q, positions, pid, delta, case["bankruptcy_adjustment_ppm"], case["spread_to_mmr_ppm"]
                )
        return
    tnc, tmmr = account_totals(usdc_q, positions)
    assert tnc == parse_decimal(case["total_net_collateral_usd"], QUOTE_DECIMALS, Rounding.FLOOR)
    assert tmmr == parse_decimal(case["total_maintenance_margin_usd"], QUOTE_DECIMALS, Rounding.FLOOR)
    if test == BANKRUPTCY:
        got = bankruptcy_quote_q(usdc_q, positions, pid, delta)
        assert got == case["expected_bankruptcy_quote_quantums"]
    else:
        sd = positions[pid].size_decimals
        num, den = case["expected_fillable_price_rat"]  # quote quantums per base quantum, exact
        expected = Fraction(num, den) * Fraction(10 ** (sd + PRICE_DECIMALS), 10**QUOTE_DECIMALS)
        exact = fillable_price_exact(
            usdc_q, positions, pid, delta, case["bankruptcy_adjustment_ppm"], case["spread_to_mmr_ppm"]
        )
        assert exact == expected
        got = fillable_price_q(
            usdc_q, positions, pid, delta, case["bankruptcy_adjustment_ppm"], case["spread_to_mmr_ppm"]
        )
        assert got == expected  # every dYdX case is a whole price quantum
        assert got == parse_decimal(case["expected_fillable_price_usd_per_base"], PRICE_DECIMALS, Rounding.FLOOR)


def test_zero_maintenance_is_rejected() -> None:
    positions = {0: PerpPosition(10**7, 8, 50_000 * 10**8, 0)}
    with pytest.raises(ValidationError, match="maintenance margin is zero"):
        bankruptcy_quote_q(0, positions, 0, -(10**7))
    with pytest.raises(ValidationError, match="maintenance margin is zero"):
        fillable_price_q(0, positions, 0, -(10**7))


# --- properties ------------------------------------------------------------------------------------

positions_st = st.builds(
    PerpPosition,
    size_base_q=st.integers(1, 10**10) | st.integers(-(10**10), -1),
    size_decimals=st.integers(0, 10),
    oracle_price_q=st.integers(1, 10**14),
    mmf_ppm=st.integers(1, PPM),
)


@settings(max_examples=300, deadline=None)
@given(
    others=st.dictionaries(st.integers(1, 5), positions_st, max_size=3),
    pos=positions_st,
    usdc_q=st.integers(-(10**15), 10**15),
    frac=st.fractions(0, 1),
    rounding=st.sampled_from([Rounding.CEIL, Rounding.FLOOR]),
)
def test_bankruptcy_quote_leaves_the_closed_part_at_zero_equity(
    others: dict[int, PerpPosition], pos: PerpPosition, usdc_q: int, frac: Fraction, rounding: Rounding
) -> None:
    positions = {**others, 0: pos}
    sign = 1 if pos.size_base_q > 0 else -1
    delta = -sign * max(1, math.floor(abs(pos.size_base_q) * frac))
    tnc, tmmr = account_totals(usdc_q, positions)
    q = bankruptcy_quote_q(usdc_q, positions, 0, delta, rounding)
    # after the close: USDC + q, position size + delta
    after = {**positions, 0: PerpPosition(pos.size_base_q + delta, pos.size_decimals, pos.oracle_price_q, pos.mmf_ppm)}
    tnc_after, tmmr_after = account_totals(usdc_q + q, after)
    residual = tnc_after - tnc * tmmr_after / tmmr  # equity the closed part left behind
    if rounding is Rounding.CEIL:  # dYdX: never leaves a deficit by rounding
        assert 0 <= residual < 1
    else:  # the account never gains by rounding
        assert -1 < residual <= 0
    if not others and delta == -pos.size_base_q:  # full close of the only position: equity exactly ~0
        assert (0 <= tnc_after < 1) if rounding is Rounding.CEIL else (-1 < tnc_after <= 0)


@settings(max_examples=300, deadline=None)
@given(
    pos=positions_st,
    usdc_q=st.integers(-(10**15), 10**15),
    extra_q=st.integers(0, 10**12),
    ba_ppm=st.integers(0, 2**32 - 1),
    smmr_ppm=st.integers(0, PPM),
)
def test_fillable_price_between_oracle_and_max_spread(
    pos: PerpPosition, usdc_q: int, extra_q: int, ba_ppm: int, smmr_ppm: int
) -> None:
    positions = {0: pos}
    delta = -pos.size_base_q
    price = fillable_price_q(usdc_q, positions, 0, delta, ba_ppm, smmr_ppm)
    exact = fillable_price_exact(usdc_q, positions, 0, delta, ba_ppm, smmr_ppm)
    # the worst it can be: oracle moved against the liquidated side by SMMR * MMF (ABR = 1)
    spread = Fraction(pos.oracle_price_q * smmr_ppm * pos.mmf_ppm, PPM * PPM)
    long = pos.size_base_q > 0
    oracle = pos.oracle_price_q
    if long:  # sell limit, rounded up toward the oracle
        assert oracle - spread <= exact <= price <= oracle and price - exact < 1
    else:  # buy limit, rounded down toward the oracle
        assert oracle <= price <= exact <= oracle + spread and exact - price < 1
    # more collateral never makes the price worse for the liquidated account
    better = fillable_price_q(usdc_q + extra_q, positions, 0, delta, ba_ppm, smmr_ppm)
    assert (better >= price) if long else (better <= price)
    tnc, tmmr = account_totals(usdc_q, positions)
    if tnc >= tmmr:  # not liquidatable: no spread at all
        assert price == oracle


def test_exact_helpers_agree_on_units() -> None:
    # 0.1 BTC (size_decimals 8) at $50,000 = $5,000; MMF 10 % = $500
    assert net_notional_quote(10**7, 8, 50_000 * 10**8) == 5_000 * 10**6
    assert maintenance_quote(-(10**7), 8, 50_000 * 10**8, 100_000) == 500 * 10**6
