"""freqtrade's funding-fee vectors (``freqtrade_funding_fee.json``), reproduced with risk.funding.

Rule (from the file): fee_short = sum of qty * mark_open(ts) * rate(ts) over the funding events
with open' <= ts <= close; fee_long = -fee_short. open' is the open time floored to the hour when
the trade opened on the hour within 15 s (binance) or exactly on it (gate).

Two checks per vector:
* the funding index (``accrue_fidx`` over one interval at the event's rate and mark, 1e-12 quote
  per base unit, exact for these inputs) times the size reproduces the published fee within its
  stated tolerance (rel 1e-6), compared in Decimal;
* the settled amounts in quote quantums (``funding_payment_quote_q`` per event and
  ``funding_owed_quote_q`` for the window) are that exact amount rounded in the system's favour: a
  payer pays at least it, a receiver gets at most it, by less than one quantum per rounding.
  (Quantums are 1e-6 USD, so a fee of 0.0009141 cannot meet rel 1e-6 once rounded to them.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import (
    FUNDING_SCALE,
    NS_PER_S,
    PRICE_DECIMALS,
    QUOTE_SCALE,
    Rounding,
    parse_decimal,
)
from fluidmargin.risk.perp.funding import accrue_fidx, funding_owed_quote_q, funding_payment_quote_q

WINDOW_COUNT = 15  # VECTORS.md section 4: 15 + 4
SIMPLE_COUNT = 4
INTERVAL_S = 8 * 3600


def dec(x: Any) -> Decimal:
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(str(x))


def exact_int(x: Any, decimals: int) -> int:
    """x at 10**-decimals; the vectors' figures are representable, so both roundings agree."""
    lo = parse_decimal(dec(x), decimals, Rounding.FLOOR)
    assert lo == parse_decimal(dec(x), decimals, Rounding.CEIL), f"{x} is not exact at 1e-{decimals}"
    return lo


def size_q(x: Any) -> tuple[int, int]:
    d = dec(x).normalize()
    sd = max(0, -int(d.as_tuple().exponent))
    return int(d.scaleb(sd)), sd


def ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()) * 1000


def window_start_ms(open_text: str, exchange: str) -> int:
    t = datetime.strptime(open_text, "%Y-%m-%d %H:%M:%S")
    on_the_hour = t.minute == 0 and (t.second < 15 if exchange == "binance" else t.second == 0)
    return ms(open_text) // 3_600_000 * 3_600_000 if on_the_hour else ms(open_text)


@pytest.fixture
def funding_file(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "freqtrade_funding_fee.json").read_text())
    return data


def test_funding_file_has_the_documented_vectors(funding_file: dict[str, Any]) -> None:
    assert len(funding_file["vectors_fetch_and_calculate"]) == WINDOW_COUNT
    assert len(funding_file["vectors_simple"]) == SIMPLE_COUNT


@pytest.mark.parametrize("index", range(WINDOW_COUNT), ids=[f"window{i:02d}" for i in range(WINDOW_COUNT)])
def test_funding_fee_over_a_window(funding_file: dict[str, Any], index: int) -> None:
    v = funding_file["vectors_fetch_and_calculate"][index]
    candles = funding_file["fixtures"]["mark_ohlcv"]
    assert candles["columns"][:2] == ["timestamp_ms", "open"]
    mark_open = {row[0]: row[1] for row in candles["rows"]}
    n, sd = size_q(v["quantity"])
    start, end = window_start_ms(v["open_date_utc"], v["exchange"]), ms(v["close_date_utc"])
    events = [e for e in v["funding_events"] if start <= e["timestamp"] <= end]

    fidx = 0  # quote per base unit, 1e-12: what a long has paid per unit over the window
    long_pays_q = short_pays_q = 0
    for e in events:
        rate_e9 = exact_int(e["fundingRate"], 9)
        mark_q = exact_int(mark_open[e["timestamp"]], PRICE_DECIMALS)
        step = accrue_fidx(rate_e9, mark_q, INTERVAL_S * NS_PER_S, INTERVAL_S)
        # one full interval adds rate * mark per base unit: (1e-9 * 1e-8) / 1e-12 = 1e-5, no remainder here
        assert step * 10**5 == rate_e9 * mark_q
        fidx += step
        long_pays_q += funding_payment_quote_q(n, mark_q, rate_e9, sd)
        short_pays_q += funding_payment_quote_q(-n, mark_q, rate_e9, sd)

    # exact fee from the index; a short receives what a long pays
    exact_short = Decimal(n).scaleb(-sd) * Decimal(fidx) / FUNDING_SCALE
    expected_short, expected_long = dec(v["expected_funding_fee_short"]), dec(v["expected_funding_fee_long"])
    rel = dec(v["tolerance"]["rel"])
    assert abs(exact_short - expected_short) <= rel * abs(expected_short), (exact_short, expected_short)
    assert abs(-exact_short - expected_long) <= rel * abs(expected_long)

    # settled in quantums, rounded for the system: each side pays at least / receives at most the exact fee
    exact_q = exact_short * QUOTE_SCALE  # what the long pays, in quantums
    for paid_q, owed in ((long_pays_q, exact_q), (short_pays_q, -exact_q)):
        assert owed <= paid_q < owed + max(1, len(events))
    owed_long = funding_owed_quote_q(n, fidx, 0, sd)
    owed_short = funding_owed_quote_q(-n, fidx, 0, sd)
    assert exact_q <= owed_long < exact_q + 1
    assert -exact_q <= owed_short < -exact_q + 1


@pytest.mark.parametrize("index", range(SIMPLE_COUNT), ids=[f"simple{i}" for i in range(SIMPLE_COUNT)])
def test_funding_fee_simple(funding_file: dict[str, Any], index: int) -> None:
    v = funding_file["vectors_simple"][index]
    n, sd = size_q(v["quantity"])
    assert v["side"] == "short"
    if v["mark_price_is_nan"]:
        # freqtrade books 0 for a NaN mark; we never price with one: it is rejected at the edge
        with pytest.raises(ValidationError):
            parse_decimal(float("nan"), PRICE_DECIMALS, Rounding.FLOOR)
        assert dec(v["expected_funding_fee"]) == 0
        return
    rate_e9 = exact_int(v["funding_rate"], 9)
    mark_q = exact_int(v["mark_price"], PRICE_DECIMALS)
    # the short receives qty * mark * rate (pays its negative)
    received_q = -funding_payment_quote_q(-n, mark_q, rate_e9, sd)
    assert Decimal(received_q) / QUOTE_SCALE == dec(v["expected_funding_fee"])  # exact: 10 * 2 * 1e-4 etc.
    if v["time_in_ratio"] is not None:
        # kraken: the fee for a part of the interval == continuous accrual over that part
        dt_ns = int(dec(v["time_in_ratio"]) * INTERVAL_S * NS_PER_S)
        fidx = accrue_fidx(rate_e9, mark_q, dt_ns, INTERVAL_S)
        received = -Decimal(funding_owed_quote_q(-n, fidx, 0, sd)) / QUOTE_SCALE
        assert received == dec(v["expected_kraken_fee"])
