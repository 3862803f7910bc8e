"""Tier tables: Binance bracket lookups and history, Hyperliquid margin tiers.

* ``freqtrade_maintenance_tier_lookup.json``: freqtrade's (maintenance rate, maintenance amount)
  lookups against its ``leverage_tiers`` fixture, through ``presets.binance`` + ``bracket_for``.
* ``binance_leverage_brackets_btc_eth_history.json``: every BTCUSDT/ETHUSDT bracket table Binance
  served 2022-02 .. 2024-10 loads and satisfies cum_b = cum_{b-1} + floor_b (mmr_b - mmr_{b-1})
  exactly, so maintenance is continuous at every floor.
* Hyperliquid tiers from its docs ("Margin tiers"): mmr = 1 / (2 maxLev),
  deduction_n = deduction_{n-1} + lower_n (mmr_n - mmr_{n-1}).
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from fluidmargin.core.units import PPM, QUOTE_DECIMALS, QUOTE_SCALE, Rounding, parse_decimal
from fluidmargin.risk.perp import presets
from fluidmargin.risk.perp.margin import bracket_for, maintenance_quote_q

LOOKUP_COUNT = 10  # VECTORS.md section 3
HISTORY_COUNT = 18  # VECTORS.md section 5


def dec(x: Any) -> Decimal:
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(str(x))


def quote_q(x: Any) -> int:
    return parse_decimal(dec(x), QUOTE_DECIMALS, Rounding.FLOOR)


@pytest.fixture
def tier_lookup(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "freqtrade_maintenance_tier_lookup.json").read_text())
    return data


@pytest.fixture
def bracket_history(vectors_dir: Path) -> list[dict[str, Any]]:
    data = json.loads((vectors_dir / "binance_leverage_brackets_btc_eth_history.json").read_text())
    tables: list[dict[str, Any]] = data["tables"]
    return tables


# --- freqtrade maintenance tier lookups ------------------------------------------------------------


def test_lookup_file_has_the_documented_vectors(tier_lookup: dict[str, Any]) -> None:
    assert len(tier_lookup["vectors"]) == LOOKUP_COUNT
    assert all(v["symbol"] in tier_lookup["tiers_fixture"]["tiers"] for v in tier_lookup["vectors"])


@pytest.mark.parametrize("index", range(LOOKUP_COUNT), ids=[f"lookup{i}" for i in range(LOOKUP_COUNT)])
def test_maintenance_tier_lookup(tier_lookup: dict[str, Any], index: int) -> None:
    v = tier_lookup["vectors"][index]
    model = presets.binance(tier_lookup["tiers_fixture"]["tiers"][v["symbol"]], v["symbol"])
    b = bracket_for(model, quote_q(v["notional"]))
    tol = dec(v["tolerance"]["abs"])
    assert abs(Decimal(b.mmr_ppm) / PPM - dec(v["expected_mmr"])) <= tol, (v["symbol"], v["notional"])
    assert abs(Decimal(b.cum_quote_q) / QUOTE_SCALE - dec(v["expected_maintenance_amount"])) <= tol


# --- Binance BTC/ETH bracket history ---------------------------------------------------------------


def test_history_file_has_the_documented_tables(bracket_history: list[dict[str, Any]]) -> None:
    assert len(bracket_history) == HISTORY_COUNT
    assert {t["symbol"] for t in bracket_history} == {"BTCUSDT", "ETHUSDT"}


@pytest.mark.parametrize("index", range(HISTORY_COUNT), ids=[f"table{i:02d}" for i in range(HISTORY_COUNT)])
def test_bracket_table_loads_exactly_and_is_continuous(bracket_history: list[dict[str, Any]], index: int) -> None:
    table = bracket_history[index]
    model = presets.binance(table["tiers"], table["symbol"])
    assert len(model.brackets) == len(table["tiers"])
    for b, row in zip(model.brackets, table["tiers"], strict=True):
        # every published figure is representable: no rounding on load
        assert Fraction(b.mmr_ppm, PPM) == Fraction(dec(row["maint_margin_ratio"]))
        assert Fraction(b.cum_quote_q, QUOTE_SCALE) == Fraction(dec(row["maint_amount_cum"]))
        assert Fraction(b.floor_quote_q, QUOTE_SCALE) == Fraction(dec(row["notional_floor"]))
    for prev, b in zip(model.brackets, model.brackets[1:], strict=False):
        # cum_b = cum_{b-1} + floor_b * (mmr_b - mmr_{b-1}), exactly in quantums
        step, rem = divmod(b.floor_quote_q * (b.mmr_ppm - prev.mmr_ppm), PPM)
        assert rem == 0
        assert b.cum_quote_q == prev.cum_quote_q + step, (table["symbol"], table["first_seen_date"], b)
        # maintenance is continuous at the floor: left and right limits within one quantum
        left = maintenance_quote_q(model, b.floor_quote_q - 1)
        right = maintenance_quote_q(model, b.floor_quote_q)
        assert 0 <= right - left <= 1


def test_builtin_btcusdt_preset_is_the_latest_table(bracket_history: list[dict[str, Any]]) -> None:
    latest = [t for t in bracket_history if t["symbol"] == "BTCUSDT"][-1]
    assert latest["valid_through_commit_date"] == "2024-10-24"
    assert presets.binance_btcusdt().brackets == presets.binance(latest["tiers"]).brackets


# --- Hyperliquid margin tiers ----------------------------------------------------------------------

# Hyperliquid docs, "Margin tiers": testnet BTC tiers (lower bound USDC, max leverage) and their
# maintenance deductions 0, 75, 1575, 6575, 26575 (exact arithmetic with mmr = 1/(2 maxLev)):
#   75 = 10k (2% - 1.25%); 1575 = 75 + 50k (5% - 2%); 6575 = 1575 + 100k (10% - 5%);
#   26575 = 6575 + 300k (1/6 - 10%).
HL_TESTNET_BTC = [(0, 40), (10_000, 25), (50_000, 10), (100_000, 5), (300_000, 3)]
HL_TESTNET_BTC_DEDUCTIONS = [0, 75, 1575, 6575, 26575]


def test_hyperliquid_testnet_btc_deductions() -> None:
    model = presets.hyperliquid(HL_TESTNET_BTC)
    assert [b.mmr_ppm for b in model.brackets] == [12_500, 20_000, 50_000, 100_000, 166_667]
    # the first four rates are exact in ppm, so are their deductions
    got = [Fraction(b.cum_quote_q, QUOTE_SCALE) for b in model.brackets]
    assert got[:4] == HL_TESTNET_BTC_DEDUCTIONS[:4]
    # 3x: mmr 1/6 is rounded UP to 166_667 ppm (requirements never shrink); the deduction then is
    # 6575 + 300k * (0.166667 - 0.1) = 26575.1, 300k * 1e-6 * (1/3) = 0.1 above the published 26575
    assert got[4] == Fraction(265_751, 10)
    assert got[4] - HL_TESTNET_BTC_DEDUCTIONS[4] == Fraction(300_000) * (Fraction(166_667, PPM) - Fraction(1, 6))


@pytest.mark.parametrize(
    ("notional", "published_mm"),
    [
        # Hyperliquid docs example: 20k notional is in the 25x tier: 20k * 2% - 75 = 325
        pytest.param(20_000, 325, id="20k"),
        # 100k is the floor of the 5x tier: 100k * 10% - 6575 = 3425
        pytest.param(100_000, 3425, id="100k"),
    ],
)
def test_hyperliquid_testnet_btc_maintenance(notional: int, published_mm: int) -> None:
    model = presets.hyperliquid(HL_TESTNET_BTC)
    assert maintenance_quote_q(model, notional * QUOTE_SCALE) == published_mm * QUOTE_SCALE


@pytest.mark.parametrize("notional", [300_000, 300_001, 450_000, 1_000_000, 25_000_000], ids=str)
def test_hyperliquid_rounded_third_tier_stays_on_the_safe_side(notional: int) -> None:
    # above 300k our MM (mmr 166_667 ppm, deduction 26575.1) is >= the exact docs value
    # (1/6, 26575) and exceeds it by at most (notional - 300k) * 1/3 ppm (+ one quantum of rounding)
    model = presets.hyperliquid(HL_TESTNET_BTC)
    ours = maintenance_quote_q(model, notional * QUOTE_SCALE)
    exact = (Fraction(notional, 6) - 26_575) * QUOTE_SCALE
    assert exact <= ours <= exact + Fraction(notional - 300_000, 3) + 1


def test_hyperliquid_tiers_are_continuous_at_every_lower_bound() -> None:
    model = presets.hyperliquid(HL_TESTNET_BTC)
    for b in model.brackets[1:]:
        left = maintenance_quote_q(model, b.floor_quote_q - 1)
        right = maintenance_quote_q(model, b.floor_quote_q)
        assert 0 <= right - left <= 1, b


def test_hyperliquid_mainnet_btc_at_200m() -> None:
    # mainnet BTC tiers (0 -> 40x, 150M -> 20x): deduction = 150M * (2.5% - 1.25%) = 1,875,000;
    # MM at 200M notional = 200M * 2.5% - 1,875,000 = 3,125,000
    model = presets.hyperliquid(presets.HYPERLIQUID_MAINNET_TIERS["BTC"])
    assert [b.floor_quote_q for b in model.brackets] == [0, 150_000_000 * QUOTE_SCALE]
    assert model.brackets[1].cum_quote_q == 1_875_000 * QUOTE_SCALE
    assert maintenance_quote_q(model, 200_000_000 * QUOTE_SCALE) == 3_125_000 * QUOTE_SCALE
