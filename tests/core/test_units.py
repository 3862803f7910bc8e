"""core.units: rounding that names its direction, decimal parsing and formatting."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, Rounding, div_round, format_decimal, parse_decimal

F, C, D, U = Rounding.FLOOR, Rounding.CEIL, Rounding.DOWN, Rounding.UP


@pytest.mark.parametrize(
    ("num", "den", "floor", "ceil", "down", "up"),
    [
        # 7/2 = 3.5
        pytest.param(7, 2, 3, 4, 3, 4, id="pos/pos"),
        # -7/2 = -3.5: floor toward -inf, ceil toward +inf, down toward 0, up away from 0
        pytest.param(-7, 2, -4, -3, -3, -4, id="neg/pos"),
        pytest.param(7, -2, -4, -3, -3, -4, id="pos/neg"),
        pytest.param(-7, -2, 3, 4, 3, 4, id="neg/neg"),
        # exact quotients are never moved
        pytest.param(-6, 3, -2, -2, -2, -2, id="exact-neg"),
        pytest.param(0, 5, 0, 0, 0, 0, id="zero"),
        # 1/3 and -1/3 of a quantum
        pytest.param(1, 3, 0, 1, 0, 1, id="third"),
        pytest.param(-1, 3, -1, 0, 0, -1, id="minus-third"),
    ],
)
def test_div_round_four_directions(num: int, den: int, floor: int, ceil: int, down: int, up: int) -> None:
    assert [div_round(num, den, r) for r in (F, C, D, U)] == [floor, ceil, down, up]


@given(st.integers(-(10**30), 10**30), st.integers(-(10**12), 10**12).filter(bool))
@settings(max_examples=300, deadline=None)
def test_div_round_matches_exact_fraction(num: int, den: int) -> None:
    x = Fraction(num, den)
    f, c = div_round(num, den, F), div_round(num, den, C)
    assert f <= x < f + 1 and c - 1 < x <= c
    assert div_round(num, den, D) == (f if x >= 0 else c)
    assert div_round(num, den, U) == (c if x >= 0 else f)


def test_div_round_by_zero_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        div_round(1, 0, F)


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "nan",
        "sNaN",
        "-NaN",
        "inf",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e31",
        "abc",
        "",
        "1.2.3",
        "0x10",
        "1,5",
    ],
)
def test_parse_decimal_rejects(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_decimal(text, 6, F, "x")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, False], ids=repr)
def test_parse_decimal_rejects_non_finite_floats_and_bools(value: float | bool) -> None:
    with pytest.raises(ValidationError):
        parse_decimal(value, 6, F, "x")


def test_parse_decimal_rejects_what_overflows_int64_columns() -> None:
    with pytest.raises(ValidationError, match="overflow"):
        parse_decimal(str(MAX_QUANTUMS // 10**6 + 1), 6, F, "x")


@pytest.mark.parametrize(
    ("text", "decimals", "rounding", "expected"),
    [
        pytest.param("1.5", 6, F, 1_500_000, id="plain"),
        pytest.param(0.1, 6, F, 100_000, id="float-via-repr"),
        pytest.param(" 2 ", 0, F, 2, id="spaces"),
        pytest.param("1e3", 2, F, 100_000, id="exponent"),
        pytest.param("-0.0000015", 6, F, -2, id="neg-floor"),
        pytest.param("-0.0000015", 6, C, -1, id="neg-ceil"),
        pytest.param("-0.0000015", 6, D, -1, id="neg-down"),
        pytest.param("-0.0000015", 6, U, -2, id="neg-up"),
        pytest.param(Decimal("0.0000001"), 6, C, 1, id="decimal-ceil"),
        # more significant digits than Decimal's default 28-digit context: the named direction must hold
        pytest.param("1.0000000000000000000000000001", 6, C, 1_000_001, id="29-digits-ceil"),
        pytest.param("999999.9999999999999999999999999", 6, F, 999_999_999_999, id="31-digits-floor"),
        # far below the context's smallest exponent: still one quantum up when rounding up
        pytest.param("1e-1000040", 6, C, 1, id="underflow-ceil"),
        pytest.param("-1e-1000040", 6, F, -1, id="underflow-floor"),
    ],
)
def test_parse_decimal_values(text: str | float | Decimal, decimals: int, rounding: Rounding, expected: int) -> None:
    assert parse_decimal(text, decimals, rounding) == expected


@pytest.mark.parametrize(
    ("quantums", "decimals", "text"),
    [
        pytest.param(1_500_000, 6, "1.5", id="trailing-zeros-stripped"),
        pytest.param(-1, 6, "-0.000001", id="negative-small"),
        pytest.param(0, 6, "0", id="zero"),
        pytest.param(123, 0, "123", id="no-decimals"),
        pytest.param(12, -2, "1200", id="negative-decimals"),
        pytest.param(-(10**18), 8, "-10000000000", id="large"),
    ],
)
def test_format_decimal(quantums: int, decimals: int, text: str) -> None:
    assert format_decimal(quantums, decimals) == text


@given(st.integers(-MAX_QUANTUMS, MAX_QUANTUMS), st.integers(0, 12))
@settings(max_examples=300, deadline=None)
def test_format_parse_round_trip(quantums: int, decimals: int) -> None:
    text = format_decimal(quantums, decimals)
    assert Decimal(text) == Decimal(quantums).scaleb(-decimals)
    for r in (F, C, D, U):
        assert parse_decimal(text, decimals, r) == quantums
