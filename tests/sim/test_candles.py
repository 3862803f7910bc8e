"""Candle and funding loaders: the three formats on real files, and malformed files naming file and line."""

from __future__ import annotations

import gzip
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fluidmargin.core.errors import InputFileError
from fluidmargin.sim.candles import asset_from_path, load_candles, load_funding

CRASH_2021 = "binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19"
LUNA = "binance_spot_1m_LUNAUSDT_2022-05"
HEADER = "timestamp_ms,open,high,low,close,volume"


def _rows(path: Path, n: int) -> list[list[str]]:
    """The first ``n`` data rows of a header CSV (gz), as text fields."""
    with gzip.open(path, "rt") as f:
        next(f)
        return [next(f).strip().split(",") for _ in range(n)]


def _day_ms(y: int, m: int, d: int) -> int:
    return int(datetime(y, m, d, tzinfo=UTC).timestamp() * 1000)


def test_header_csv_gz_real_crash(prices_dir: Path) -> None:
    c = load_candles(prices_dir / CRASH_2021 / "BTC_USDT-1m.csv.gz")
    assert len(c) == 42915
    assert c.ts_ms.dtype == np.int64 and int(c.ts_ms[0]) == 1618951320000
    assert c.text["close"][0] == "56813.98" and c.close[0] == pytest.approx(56813.98)
    assert bool(np.all(np.diff(c.ts_ms) > 0))
    day = c.window(_day_ms(2021, 5, 19), 1440)
    assert float(day.low.min()) == 30000.0  # SOURCE.txt: 2021-05-19 BTC low 30000.0
    assert c.interval_ms() == 60_000


def test_plain_csv_and_mark_without_volume(prices_dir: Path) -> None:
    d = prices_dir / "freqtrade_testdata_XRP_USDT_futures_2021-11"
    c = load_candles(d / "XRP_USDT_USDT-5m-futures.csv")
    assert len(c) == 1999 and c.interval_ms() == 300_000
    mark = load_candles(d / "XRP_USDT_USDT-1h-mark.csv")  # five columns: no volume
    assert len(mark) == 100 and mark.text["close"][0] == "1.21431"


def _kline_lines(rows: list[list[str]], micro: bool = False) -> list[str]:
    out = []
    for ts, o, h, lo, c, v in rows:
        t = int(ts) * (1000 if micro else 1)
        close_t = t + (59_999_999 if micro else 59_999)
        out.append(f"{t},{o},{h},{lo},{c},{v},{close_t},1.0,10,0.5,0.5,0")
    return out


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "zip", "micro", "header"])
def test_binance_kline_archive_formats(prices_dir: Path, tmp_path: Path, kind: str) -> None:
    src = prices_dir / LUNA / "LUNAUSDT-1m-2022-05.csv.gz"
    rows = _rows(src, 500)
    lines = _kline_lines(rows, micro=kind == "micro")
    if kind == "header":
        lines.insert(
            0,
            "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
            "taker_buy_quote_volume,ignore",
        )
    text = "\n".join(lines) + "\n"
    if kind == "csv.gz":
        p = tmp_path / "LUNAUSDT-1m-2022-05.csv.gz"
        p.write_bytes(gzip.compress(text.encode()))
    elif kind == "zip":
        p = tmp_path / "LUNAUSDT-1m-2022-05.zip"
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("LUNAUSDT-1m-2022-05.csv", text)
    else:
        p = tmp_path / "LUNAUSDT-1m-2022-05.csv"
        p.write_text(text)
    got = load_candles(p)
    ref = load_candles(src).slice(0, 500)
    assert np.array_equal(got.ts_ms, ref.ts_ms)
    for col in ("open", "high", "low", "close"):
        assert list(got.text[col]) == list(ref.text[col])
    assert asset_from_path(p) == "LUNA"


@pytest.mark.parametrize("gz", [False, True])
def test_freqtrade_json(prices_dir: Path, tmp_path: Path, gz: bool) -> None:
    src = prices_dir / CRASH_2021 / "ETH_USDT-1m.csv.gz"
    rows = _rows(src, 300)
    # numbers written as in the source text (freqtrade writes floats with json, i.e. repr)
    text = "[" + ",".join("[" + ",".join(r) + "]" for r in rows) + "]"
    p = tmp_path / ("ETH_USDT-1m.json.gz" if gz else "ETH_USDT-1m.json")
    p.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    got = load_candles(p)
    ref = load_candles(src).slice(0, 300)
    assert np.array_equal(got.ts_ms, ref.ts_ms)
    assert list(got.text["close"]) == list(ref.text["close"])
    assert got.text["open"][0] == rows[0][1]


def test_funding_real(prices_dir: Path) -> None:
    f = load_funding(
        prices_dir / "binance_usdm_perp_1m_calm_2025-05-25_to_2025-06-24" / "BTC_USDT_USDT-8h-funding_rate.csv"
    )
    assert len(f) == 89
    assert int(f.rate_e9[0]) == 36_510  # 3.651e-05 per interval, exactly
    assert f.text[0] == "3.651e-05"
    hist = load_funding(
        prices_dir / "binance_1h_spot_perp_mark_funding_2018_2026" / "BTC_USDT_USDT-1h-funding_rate.csv"
    )
    assert int(hist.ts_ms[0]) == 1568102400000 and int(hist.rate_e9[0]) == 100_000
    assert int(hist.rate_e9.min()) >= -3_000_000  # never beyond the -0.3 % clamp


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BTC_USDT_USDT-1m-futures.csv.gz", "BTC"),
        ("ETH_USDT-1m.csv.gz", "ETH"),
        ("LUNAUSDT-1m-2022-05.zip", "LUNA"),
        ("XRP_USDT_USDT-8h-funding_rate.csv", "XRP"),
        ("prices.csv", None),
    ],
)
def test_asset_from_path(name: str, expected: str | None) -> None:
    assert asset_from_path(name) == expected


GOOD = [
    "1000,10.0,11.0,9.5,10.5,1",
    "2000,10.5,10.9,10.1,10.2,1",
    "3000,10.2,10.4,10.0,10.3,1",
]


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        (["time,open,high,low,close", *GOOD], 1, "header"),
        ([HEADER, GOOD[0], "2000,10.5,10.9,10.1", GOOD[2]], 3, "columns"),
        ([HEADER, GOOD[0], GOOD[1], "3000,10.2,10.4,NaN,10.3,1"], 4, "NaN in column 'low'"),
        ([HEADER, GOOD[0], "2000,10.5,abc,10.1,10.2,1"], 3, "non-numeric value 'abc' in column 'high'"),
        ([HEADER, GOOD[0], "2000,10.5,inf,10.1,10.2,1"], 3, "non-finite"),
        (
            [HEADER, GOOD[0], GOOD[1], "2000,10.2,10.4,10.0,10.3,1"],
            4,
            "timestamp 2000 repeats line 3 with different values (open 10.5 there, 10.2 here)",
        ),
        ([HEADER, GOOD[0], GOOD[1], "1500,10.2,10.4,10.0,10.3,1"], 4, "goes back from the previous one 2000"),
        ([HEADER, GOOD[0], "2000.5,10.5,10.9,10.1,10.2,1"], 3, "not an integer"),
        ([HEADER, GOOD[0], "2000,0,10.9,0,10.2,1"], 3, "not a positive"),
        ([HEADER, GOOD[0], "2000,10.5,10.4,10.1,10.2,1"], 3, "inconsistent candle"),
        ([HEADER], 0, "no candles"),
        (["1000,10.0,11.0,9.5,10.5,1"], 1, "no header"),
        ([*_kline_lines([g.split(",") for g in GOOD[:2]]), "3000,10.2,10.4,10.0,10.3"], 3, "Binance kline"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path: Path, lines: list[str], line: int, words: str) -> None:
    p = tmp_path / "BTC_USDT-1m.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as ei:
        load_candles(p)
    assert ei.value.path == str(p)
    assert ei.value.line == line
    assert str(ei.value).startswith(f"{p}:{line}:")
    assert words in str(ei.value)


def test_malformed_gz_reports_the_gz_file(tmp_path: Path) -> None:
    p = tmp_path / "BTC_USDT-1m.csv.gz"
    p.write_bytes(gzip.compress(("\n".join([HEADER, GOOD[0], "2000,10.5,x,10.1,10.2,1"]) + "\n").encode()))
    with pytest.raises(InputFileError, match=r"BTC_USDT-1m\.csv\.gz:3: non-numeric"):
        load_candles(p)


def test_malformed_json(tmp_path: Path) -> None:
    rows = [
        [1000, 10.0, 11.0, 9.5, 10.5, 1],
        [2000, 10.5, 10.9, 10.1, 10.2, 1],
        [2000, 10.2, 10.4, 10.0, 10.3, 1],
    ]
    p = tmp_path / "BTC_USDT-1m.json"
    p.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")  # one row per line
    with pytest.raises(InputFileError) as ei:
        load_candles(p)
    assert ei.value.line == 4 and "row 2" in str(ei.value) and "repeats" in str(ei.value)
    p.write_text("[\n[1000, 10.0, 11.0, 9.5, 10.5, 1],\n[2000, 10.5, NaN, 10.1, 10.2, 1]\n]")
    with pytest.raises(InputFileError, match=r"json:3: row 1: NaN in column 'high'"):
        load_candles(p)
    p.write_text("[\n[1000, 10.0, 11.0, 9.5, 10.5, 1],\n[2000, 10.5 10.9]\n]")
    with pytest.raises(InputFileError, match=r"json:3: invalid JSON"):
        load_candles(p)
    p.write_text('[\n[1000, 10.0, 11.0, 9.5, 10.5, 1],\n[2000, 10.5, "x", 10.1, 10.2, 1]\n]')
    with pytest.raises(InputFileError, match=r"json:3: row 1: non-numeric"):
        load_candles(p)


def test_zip_with_two_members_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "LUNAUSDT-1m.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.csv", "x")
        zf.writestr("b.csv", "y")
    with pytest.raises(InputFileError, match="one member"):
        load_candles(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        load_candles(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        (["timestamp_ms,rate", "1000,0.0001"], 1, "header"),
        (["timestamp_ms,funding_rate", "1000,0.0001", "2000,nan"], 3, "NaN"),
        (["timestamp_ms,funding_rate", "1000,0.0001", "2000,0.0001,7"], 3, "columns"),
        (["timestamp_ms,funding_rate", "1000,0.0001", "1000,0.0002"], 3, "not after the previous one 1000"),
        (["timestamp_ms,funding_rate", "1000,0.0001", "2000,2"], 3, "beyond"),
    ],
)
def test_malformed_funding(tmp_path: Path, lines: list[str], line: int, words: str) -> None:
    p = tmp_path / "BTC_USDT_USDT-8h-funding_rate.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as ei:
        load_funding(p)
    assert ei.value.line == line and str(ei.value).startswith(f"{p}:{line}:") and words in str(ei.value)
