"""Aligned multi-asset history (sim.history): gaps refused or counted, never filled; correlation from data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fluidmargin.core.errors import InputFileError, ValidationError
from fluidmargin.sim.candles import Candles, load_candles
from fluidmargin.sim.history import align, check_correlation, cholesky, correlation_from_returns

T0 = 1_700_000_040_000  # a whole minute (ms)
MIN = 60_000
CRASH = "binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19"


def candles(ts_ms: list[int] | np.ndarray, close: list[float] | np.ndarray, name: str = "<test>") -> Candles:
    ts = np.asarray(ts_ms, dtype=np.int64)
    c = np.asarray(close, dtype=np.float64)
    text = {k: np.array([repr(float(v)) for v in c], dtype=object) for k in ("open", "high", "low", "close")}
    return Candles(name, ts, c.copy(), c.copy(), c.copy(), c, text)


def minutes(*ks: int) -> list[int]:
    return [T0 + k * MIN for k in ks]


def test_equal_grids_align_and_give_returns() -> None:
    a = candles(minutes(*range(6)), [100, 101, 102, 101, 100, 99])
    b = candles(minutes(*range(1, 8)), [10, 11, 12, 13, 14, 15, 16])
    h = align({"A": a, "B": b})
    assert h.assets == ("A", "B")
    assert h.ts_ms.tolist() == minutes(1, 2, 3, 4, 5)
    assert h.close[:, 0].tolist() == [101, 102, 101, 100, 99] and h.close[:, 1].tolist() == [10, 11, 12, 13, 14]
    assert dict(h.trimmed) == {"A": 1, "B": 2} and dict(h.dropped) == {"A": 0, "B": 0} and h.gaps == ()
    np.testing.assert_array_equal(h.ratios()[:, 1], np.array([11, 12, 13, 14]) / np.array([10, 11, 12, 13]))
    np.testing.assert_allclose(h.log_returns(), np.log(h.ratios()), rtol=0, atol=1e-16)


def test_a_gap_is_refused_naming_the_asset_and_its_first_gap() -> None:
    a = candles(minutes(*range(10)), np.linspace(100, 110, 10))
    b = candles(minutes(0, 1, 2, 5, 6, 8, 9), np.linspace(10, 11, 7))
    with pytest.raises(ValidationError) as e:
        align({"A": a, "B": b})
    msg = str(e.value)
    assert msg.startswith("B: gap from 2023-11-14T22:17Z") and f"{T0 + 3 * MIN} ms" in msg
    assert "120000 ms without candles" in msg and "3 of 10 candles missing" in msg
    # a missing first row of the common span is a gap too
    c = candles(minutes(0, 2, 3, 4, 5), [1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValidationError, match=r"C: gap from .*: 60000 ms without"):
        align({"A": a, "C": c}, start_ms=T0 + MIN)


def test_intersect_counts_what_it_drops_and_never_returns_across_a_gap() -> None:
    a = candles(minutes(*range(10)), np.linspace(100, 110, 10))
    b = candles(minutes(0, 1, 2, 5, 6, 8, 9), [10, 11, 12, 15, 16, 18, 19])
    h = align({"A": a, "B": b}, policy="intersect")
    assert h.ts_ms.tolist() == minutes(0, 1, 2, 5, 6, 8, 9)
    assert dict(h.dropped) == {"A": 3, "B": 0}
    assert h.gaps == ((T0 + 2 * MIN, 2 * MIN), (T0 + 6 * MIN, MIN))
    assert h.whole_steps().tolist() == [True, True, False, True, False, True]
    np.testing.assert_array_equal(h.ratios()[:, 1], [11 / 10, 12 / 11, 16 / 15, 19 / 18])
    s = h.summary()
    assert s["gaps"] == 2 and s["missing_ms"] == 3 * MIN and s["dropped"] == {"A": 3, "B": 0}


@pytest.mark.parametrize("policy", ["refuse", "intersect"])
def test_unequal_or_offset_grids_and_bad_prices_are_refused(policy: str) -> None:
    a = candles(minutes(*range(5)), [1, 2, 3, 4, 5])
    hourly = candles([T0 + k * 3_600_000 for k in range(5)], [1, 2, 3, 4, 5])
    with pytest.raises(ValidationError, match="B candles are every 3600000 ms, A every 60000 ms"):
        align({"A": a, "B": hourly}, policy)  # type: ignore[arg-type]
    offset = candles([t + 30_000 for t in minutes(*range(5))], [1, 2, 3, 4, 5])
    with pytest.raises(ValidationError, match=r"off the 60000 ms grid of A \(offset 30000 ms"):
        align({"A": a, "B": offset}, policy)  # type: ignore[arg-type]
    nan = candles(minutes(*range(5)), [1, 2, np.nan, 4, 5])
    with pytest.raises(ValidationError, match=r"B: close nan at 2023-11-14T22:16Z \(row 2\) is not a positive"):
        align({"A": a, "B": nan}, policy)  # type: ignore[arg-type]
    neg = candles(minutes(*range(5)), [1, 2, -3, 4, 5])
    with pytest.raises(ValidationError, match=r"B: close -3\.0"):
        align({"A": a, "B": neg}, policy)  # type: ignore[arg-type]
    late = candles(minutes(10, 11, 12), [1, 2, 3])
    with pytest.raises(ValidationError, match="do not overlap"):
        align({"A": a, "B": late}, policy)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="no candles"):
        align({}, policy)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="policy must be one of"):
        align({"A": a}, "fill")  # type: ignore[arg-type]


def test_candle_files_with_a_gap_or_nan_are_refused(tmp_path: Path) -> None:
    rows = [f"{t},1,1,1,1" for t in minutes(0, 1, 2, 4, 5)]
    (tmp_path / "A_USDT-1m.csv").write_text("timestamp_ms,open,high,low,close\n" + "\n".join(rows) + "\n")
    full = [f"{t},2,2,2,2" for t in minutes(*range(6))]
    (tmp_path / "B_USDT-1m.csv").write_text("timestamp_ms,open,high,low,close\n" + "\n".join(full) + "\n")
    loaded = {k: load_candles(tmp_path / f"{k}_USDT-1m.csv") for k in ("A", "B")}
    with pytest.raises(ValidationError, match="A: gap from 2023-11-14T22:17Z"):
        align(loaded)
    (tmp_path / "C_USDT-1m.csv").write_text("timestamp_ms,open,high,low,close\n" + f"{T0},1,1,NaN,1\n")
    with pytest.raises(InputFileError, match="NaN in column 'low'"):
        load_candles(tmp_path / "C_USDT-1m.csv")


def test_shipped_crash_window_has_a_gap_refused_or_counted(prices_dir: Path) -> None:
    d = prices_dir / CRASH
    c = {a: load_candles(d / f"{a}_USDT-1m.csv.gz") for a in ("BTC", "ETH")}
    with pytest.raises(ValidationError, match=r"^BTC: gap from 2021-04-25T04:01Z \(1619323260000 ms\): 17040000 ms"):
        align(c)
    h = align(c, policy="intersect")
    assert h.gaps == ((1619323200000, 17040000),)
    assert dict(h.trimmed) == {"BTC": 2, "ETH": 2} and len(h) == 42913
    r = h.log_returns()
    assert r.shape == (42911, 2)  # one return lost to the gap, none taken across it
    corr = correlation_from_returns(r, h.assets)
    assert 0.7 < corr[0, 1] < 0.95
    np.testing.assert_allclose(corr, np.corrcoef(r.T), atol=1e-12)


def test_correlation_from_returns_is_valid_and_bad_input_is_refused() -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5_000, 3))
    x = np.stack([z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1], -z[:, 0] * 0.3 + z[:, 2]], axis=1)
    c = correlation_from_returns(x, ["A", "B", "C"])
    np.testing.assert_allclose(c, np.corrcoef(x.T), atol=1e-12)
    assert np.all(np.diag(c) == 1.0) and np.all(c == c.T)
    bad = x.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValidationError, match="B: return nan at row 7 is not finite"):
        correlation_from_returns(bad, ["A", "B", "C"])
    const = x.copy()
    const[:, 2] = 0.01
    with pytest.raises(ValidationError, match="C: constant returns"):
        correlation_from_returns(const, ["A", "B", "C"])
    with pytest.raises(ValidationError, match="at least 2 returns"):
        correlation_from_returns(x[:1])
    with pytest.raises(ValidationError, match="2-d array"):
        correlation_from_returns(x[:, 0])


def test_check_correlation_refuses_what_is_not_a_correlation() -> None:
    ok = check_correlation([[1, 0.5], [0.5, 1]])
    assert ok.tolist() == [[1, 0.5], [0.5, 1]]
    cases = [
        ([[1, 0.9, -0.9], [0.9, 1, 0.9], [-0.9, 0.9, 1]], "not positive semi-definite"),
        ([[1, 0.5], [0.4, 1]], "not symmetric"),
        ([[1, 1.5], [1.5, 1]], "outside"),
        ([[2, 0.5], [0.5, 1]], "with itself is 2.0"),
        ([[1, np.nan], [np.nan, 1]], "non-finite"),
        ([[1, 0.5]], "square"),
    ]
    for m, why in cases:
        with pytest.raises(ValidationError, match=why):
            check_correlation(m)


def test_cholesky_reproduces_the_matrix_and_tolerates_perfect_correlation() -> None:
    m = check_correlation([[1, 0.8, 0.3], [0.8, 1, 0.5], [0.3, 0.5, 1]])
    lo = np.array(cholesky(m))
    np.testing.assert_allclose(lo @ lo.T, m, atol=1e-15)
    assert np.all(np.triu(lo, 1) == 0.0)
    singular = check_correlation([[1, 1, 0], [1, 1, 0], [0, 0, 1]])  # two assets moving as one
    ls = np.array(cholesky(singular))
    np.testing.assert_allclose(ls @ ls.T, singular, atol=1e-15)
    assert ls[1, 1] == 0.0
    with pytest.raises(ValidationError, match=r"not positive semi-definite \(pivot 2"):
        cholesky(np.array([[1, 0.9, -0.9], [0.9, 1, 0.9], [-0.9, 0.9, 1]]))
