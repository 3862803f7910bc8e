"""Golden liquidation prices from other projects, reproduced with the risk functions directly.

* ``freqtrade_binance_faq_liquidation.json``: Binance's FAQ worked example (isolated and cross).
* ``freqtrade_isolated_liquidation_multi_exchange.json``: freqtrade's binance/gate/okx/bybit
  isolated formulas (24 rows).
* Hyperliquid: liquidation prices *reported by the exchange*, recorded in freqtrade's
  ``tests/exchange/test_hyperliquid.py::test_hyperliquid_dry_run_liquidation_price``
  (freqtrade/freqtrade@3b1fb5af847863302393b0413321642d454e35a5), compared at the test's rel 1e-4.

The vector files are read in place (``vectors_dir`` fixture). Each vector is also checked against
the formula VECTORS.md states, evaluated exactly (Fractions) on the same quantised inputs: our
price must be that value rounded toward safety (up for a long, down for a short).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, parse_decimal
from fluidmargin.model.instruments import BracketModel
from fluidmargin.risk.perp import presets
from fluidmargin.risk.perp.margin import liquidation_price_q, position_risk, value_quote_q

FAQ_COUNT = 4  # VECTORS.md section 1
MULTI_COUNT = 24  # VECTORS.md section 2


def dec(x: Any) -> Decimal:
    """The decimal a JSON number was written as (floats through repr: 0.1 is 0.1)."""
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(str(x))


def size_q(x: Any) -> tuple[int, int]:
    """(base quantums, size decimals) representing the quantity exactly."""
    d = dec(x).normalize()
    sd = max(0, -int(d.as_tuple().exponent))
    return int(d.scaleb(sd)), sd


def within(ours: Decimal, expected: Any, tol: dict[str, Any]) -> bool:
    exp = dec(expected)
    bound = dec(tol["abs"]) if "abs" in tol else dec(tol["rel"]) * abs(exp)
    return abs(ours - exp) <= bound


def load(vectors_dir: Path, name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((vectors_dir / name).read_text())
    return data


@pytest.fixture
def faq_vectors(vectors_dir: Path) -> list[dict[str, Any]]:
    return load(vectors_dir, "freqtrade_binance_faq_liquidation.json")


@pytest.fixture
def multi_vectors(vectors_dir: Path) -> list[dict[str, Any]]:
    return load(vectors_dir, "freqtrade_isolated_liquidation_multi_exchange.json")


def model_for(v: dict[str, Any]) -> BracketModel:
    """The tier model each VECTORS.md formula describes."""
    formula = v["formula"]
    if formula == "binance_usdm_one_way":
        return presets.single_rate(dec(v["mmr"]), dec(v["maintenance_amount"]))
    if formula == "gate_okx_isolated_with_taker_fee":  # no maintenance amount in this formula
        fee_ppm = parse_decimal(dec(v["taker_fee_rate"]), 6, Rounding.CEIL)
        return presets.single_rate(dec(v["mmr"]), 0, close_fee_ppm=fee_ppm)
    if formula == "bybit_isolated_simple":  # maintenance on entry notional, no amount
        return presets.single_rate(dec(v["mmr"]), 0, mm_on_entry=True)
    raise AssertionError(f"unknown formula {formula}")


def engine_liquidation(v: dict[str, Any], model: BracketModel) -> tuple[int | None, int, list[int]]:
    """(liquidation price quantums, wallet quantums, [UPNL - MM of each other position] quantums)."""
    long = v["side"] == "long"
    n, sd = size_q(v["quantity"])
    size = n if long else -n
    entry = parse_decimal(dec(v["entry_price"]), PRICE_DECIMALS, Rounding.CEIL if long else Rounding.FLOOR)
    cost = value_quote_q(size, entry, sd, Rounding.CEIL)
    entry_notional = value_quote_q(n, entry, sd, Rounding.CEIL)
    wallet = parse_decimal(dec(v["wallet_balance"]), QUOTE_DECIMALS, Rounding.FLOOR)
    upnl = mm = 0
    adjustments = []
    for o in v.get("other_positions_same_wallet", []):
        o_long = o["side"] == "long"
        on, osd = size_q(o["quantity"])
        o_size = on if o_long else -on
        o_entry = parse_decimal(dec(o["entry_price"]), PRICE_DECIMALS, Rounding.CEIL if o_long else Rounding.FLOOR)
        o_mark = parse_decimal(dec(o["mark_price"]), PRICE_DECIMALS, Rounding.FLOOR if o_long else Rounding.CEIL)
        o_model = presets.single_rate(dec(o["mmr"]), dec(o["maintenance_amount"]))
        r = position_risk(o_model, o_size, value_quote_q(o_size, o_entry, osd, Rounding.CEIL), 0, o_mark, osd)
        upnl += r.upnl_quote_q
        mm += r.mm_quote_q
        adjustments.append(r.upnl_quote_q - r.mm_quote_q)
    liq = liquidation_price_q(model, size, sd, wallet + upnl - cost, mm, entry_notional)
    return liq, wallet, adjustments


def formula_exact(v: dict[str, Any], wallet_q: int, cross_adj_q: int) -> Fraction:
    """VECTORS.md formulas, exactly, on the quantised wallet (and quantised cross adjustment)."""
    side = 1 if v["side"] == "long" else -1
    q = Fraction(dec(v["quantity"]))
    ep = Fraction(dec(v["entry_price"]))
    mmr = Fraction(dec(v["mmr"]))
    wb = Fraction(wallet_q, 10**QUOTE_DECIMALS)
    formula = v["formula"]
    if formula == "binance_usdm_one_way":
        # LP = (WB + cross_adj + cum - side*Q*EP) / (Q*MMR - side*Q)
        cum = Fraction(dec(v["maintenance_amount"]))
        return (wb + Fraction(cross_adj_q, 10**QUOTE_DECIMALS) + cum - side * q * ep) / (q * mmr - side * q)
    if formula == "gate_okx_isolated_with_taker_fee":
        # long LP = (EP - WB/Q) / (1 - (MMR + taker)); short LP = (EP + WB/Q) / (1 + MMR + taker)
        fee = Fraction(dec(v["taker_fee_rate"]))
        return (ep - side * wb / q) / (1 - side * (mmr + fee))
    # bybit: LP = EP(1 - side/lev + side*MMR) with WB = Q*EP/lev, i.e. LP = EP - side*WB/Q + side*EP*MMR
    return ep - side * wb / q + side * ep * mmr


def check_safe_rounding(v: dict[str, Any], liq: int, exact: Fraction) -> None:
    scaled = exact * 10**PRICE_DECIMALS
    if v["side"] == "long":
        assert liq == math.ceil(scaled), "a long's liquidation price rounds up"
    else:
        assert liq == math.floor(scaled), "a short's liquidation price rounds down"


# --- Binance FAQ -----------------------------------------------------------------------------------


def test_faq_file_has_the_documented_vectors(faq_vectors: list[dict[str, Any]]) -> None:
    assert len(faq_vectors) == FAQ_COUNT
    assert [v["margin_mode"] for v in faq_vectors] == ["isolated", "isolated", "cross", "cross"]


@pytest.mark.parametrize(
    "index", range(FAQ_COUNT), ids=["eth-isolated", "btc-numbers-isolated", "eth-cross", "btc-cross"]
)
def test_binance_faq_liquidation_price(faq_vectors: list[dict[str, Any]], index: int) -> None:
    v = faq_vectors[index]
    liq, wallet, adjustments = engine_liquidation(v, model_for(v))
    assert liq is not None
    ours = Decimal(liq).scaleb(-PRICE_DECIMALS)
    assert within(ours, v["expected_liquidation_price"], v["tolerance"]), (
        ours,
        v["expected_liquidation_price"],
    )
    check_safe_rounding(v, liq, formula_exact(v, wallet, sum(adjustments)))
    # cross: each other position's UPNL - MM (formula 1) is quantised down, by less than 2 quantums
    others = v["other_positions_same_wallet"]
    assert len(adjustments) == len(others) == (1 if v["margin_mode"] == "cross" else 0)
    for o, adj in zip(others, adjustments, strict=True):
        sign = 1 if o["side"] == "long" else -1
        qty, mark = Fraction(dec(o["quantity"])), Fraction(dec(o["mark_price"]))
        upnl = sign * qty * (mark - Fraction(dec(o["entry_price"])))
        mm = qty * mark * Fraction(dec(o["mmr"])) - Fraction(dec(o["maintenance_amount"]))
        exact_q = (upnl - mm) * 10**QUOTE_DECIMALS
        assert exact_q - 2 < adj <= exact_q


# --- freqtrade multi-exchange isolated -------------------------------------------------------------


def test_multi_exchange_file_has_the_documented_vectors(multi_vectors: list[dict[str, Any]]) -> None:
    assert len(multi_vectors) == MULTI_COUNT
    assert {v["exchange"] for v in multi_vectors} == {"binance", "gate", "okx", "bybit"}


@pytest.mark.parametrize("index", range(MULTI_COUNT), ids=[f"row{i:02d}" for i in range(MULTI_COUNT)])
def test_multi_exchange_isolated_liquidation_price(multi_vectors: list[dict[str, Any]], index: int) -> None:
    v = multi_vectors[index]
    liq, wallet, _ = engine_liquidation(v, model_for(v))
    assert liq is not None
    ours = Decimal(liq).scaleb(-PRICE_DECIMALS)
    label = f"{v['exchange']} {v['side']} x{v['leverage']} EP {v['entry_price']} Q {v['quantity']}"
    assert within(ours, v["expected_liquidation_price"], v["tolerance"]), (
        label,
        ours,
        v["expected_liquidation_price"],
    )
    check_safe_rounding(v, liq, formula_exact(v, wallet, 0))


# --- Hyperliquid: prices reported by the exchange ----------------------------------------------------

# freqtrade/freqtrade@3b1fb5af:tests/exchange/test_hyperliquid.py::test_hyperliquid_dry_run_liquidation_price:
# positions (symbol, entryPrice, side, contracts, collateral, liquidationPrice) as returned by Hyperliquid;
# max leverage per symbol from the markets_hip3 fixture (BTC, ETH 50; SOL, DOGE 20; XYZ-* 10).
HL_MAX_LEVERAGE = {
    "BTC": 50,
    "ETH": 50,
    "SOL": 20,
    "DOGE": 20,
    "XYZ-AAPL": 10,
    "XYZ-GOOGL": 10,
    "XYZ-TSLA": 10,
}
HL_REPORTED = [
    # symbol, entry, side, size, isolated margin, liquidation price reported by the exchange
    ("ETH", "2458.5", "long", "0.015", "36.864593", "0.86915825"),
    ("BTC", "63287.0", "long", "0.00039", "24.673292", "22.37166537"),
    ("SOL", "146.82", "long", "0.16", "23.482979", "0.05269872"),
    ("SOL", "145.83", "long", "0.33", "24.045107", "74.83696193"),
    ("ETH", "2459.5", "long", "0.0199", "24.454895", "1243.0411908"),
    ("BTC", "62739.0", "long", "0.00077", "24.137992", "31708.03843631"),
    ("DOGE", "0.11586", "long", "437.0", "25.29769", "0.05945697"),
    ("ETH", "2642.8", "short", "0.019", "25.091876", "3924.18322043"),
    ("SOL", "155.89", "short", "0.32", "24.924941", "228.07847866"),
    ("DOGE", "0.14333", "short", "351.0", "25.136807", "0.20970228"),
    ("BTC", "68595.0", "short", "0.00069", "23.64871", "101849.99354283"),
    ("BTC", "65536.0", "short", "0.00099", "21.604172", "86493.46174617"),
    ("SOL", "173.06", "long", "0.6", "20.735658", "142.05186667"),
    ("ETH", "2545.5", "long", "0.0329", "20.909894", "1929.23322895"),
    ("BTC", "67400.0", "short", "0.00031", "20.887308", "133443.97317151"),
    ("ETH", "2552.0", "short", "0.0327", "20.833393", "3157.53150453"),
    ("BTC", "66930.0", "long", "0.0015", "20.043862", "54108.51043771"),
    ("BTC", "67033.0", "long", "0.00121", "20.251817", "50804.00091827"),
    ("ETH", "2521.9", "long", "0.0237", "19.902091", "1699.14071943"),
    ("BTC", "68139.0", "short", "0.00145", "19.72573", "80933.61590987"),
    ("SOL", "178.29", "short", "0.11", "19.605036", "347.82205322"),
    ("SOL", "176.23", "long", "0.33", "19.364946", "120.56240404"),
    ("SOL", "173.08", "short", "0.33", "19.01881", "225.08561715"),
    ("BTC", "68240.0", "short", "0.00105", "17.887922", "84431.79820839"),
    ("ETH", "2518.4", "short", "0.007", "17.62263", "4986.05799151"),
    ("ETH", "2533.2", "long", "0.0347", "17.555195", "2047.7642302"),
    ("DOGE", "0.13284", "long", "360.0", "15.943218", "0.09082388"),
    ("SOL", "163.11", "short", "0.48", "15.650731", "190.94213618"),
    ("BTC", "67141.0", "long", "0.00067", "14.979079", "45236.52992613"),
    ("XYZ-AAPL", "250.0", "long", "0.5", "25.0", "210.5263157894737"),
    ("XYZ-GOOGL", "190.0", "short", "0.5", "9.5", "199.04761904761904"),
    ("XYZ-TSLA", "350.0", "long", "1.0", "50.0", "315.7894736842105"),
]
HL_REL_TOL = Decimal("1e-4")  # the freqtrade test's pytest.approx(rel=0.0001)


@pytest.mark.parametrize(
    ("symbol", "entry", "side", "size", "margin", "reported"),
    HL_REPORTED,
    ids=[f"{r[0]}-{r[2]}-{r[1]}" for r in HL_REPORTED],
)
def test_hyperliquid_reported_liquidation_price(
    symbol: str, entry: str, side: str, size: str, margin: str, reported: str
) -> None:
    # Hyperliquid: maintenance = half the initial margin at max leverage, 1/(2 maxLev), one tier
    model = presets.hyperliquid([(0, HL_MAX_LEVERAGE[symbol])])
    long = side == "long"
    n, sd = size_q(size)
    s = n if long else -n
    entry_q = parse_decimal(entry, PRICE_DECIMALS, Rounding.CEIL if long else Rounding.FLOOR)
    cost = value_quote_q(s, entry_q, sd, Rounding.CEIL)
    collateral = parse_decimal(margin, QUOTE_DECIMALS, Rounding.FLOOR)
    liq = liquidation_price_q(model, s, sd, collateral - cost)
    assert liq is not None
    ours = Decimal(liq).scaleb(-PRICE_DECIMALS)
    assert abs(ours - Decimal(reported)) <= HL_REL_TOL * Decimal(reported), (ours, reported)
