"""Real candle files have blemishes: repeats, gaps, odd time units, corrupt or hostile files.

Identical repeats are dropped and counted, conflicting repeats and rows out of order are refused with
their line, gaps are measured; every refusal is an InputFileError naming the file and the line.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fluidmargin.core.errors import InputFileError
from fluidmargin.sim import candles as cm
from fluidmargin.sim.candles import load_candles, load_funding

CRASH_2021 = "binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19"
HEADER = "timestamp_ms,open,high,low,close,volume"
T0 = 1_621_425_600_000  # 2021-05-19T12:00Z in ms
ROWS = [  # one minute apart
    f"{T0},10.0,11.0,9.5,10.5,1",
    f"{T0 + 60_000},10.5,10.9,10.1,10.2,2",
    f"{T0 + 120_000},10.2,10.4,10.0,10.3,3",
]
KLINE_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
)


def _csv(tmp_path: Path, lines: list[str], name: str = "BTC_USDT-1m.csv") -> Path:
    p = tmp_path / name
    text = "\n".join(lines) + "\n"
    p.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    return p


def _refused(p: Path, line: int, words: str) -> InputFileError:
    with pytest.raises(InputFileError) as ei:
        load_candles(p)
    e = ei.value
    assert (e.path == str(p) or e.path.startswith(f"{p}[")) and e.line == line, str(e)  # a zip names its member
    assert str(e).startswith(e.path + f":{line}: ") and words in str(e), str(e)
    return e


# --- repeats, order, gaps -------------------------------------------------------------------------------


def test_an_identical_repeat_is_dropped_and_counted(tmp_path: Path) -> None:
    p = _csv(tmp_path, [HEADER, ROWS[0], ROWS[1], ROWS[1], ROWS[2]])
    c = load_candles(p)
    assert list(c.ts_ms) == [T0, T0 + 60_000, T0 + 120_000]
    assert c.repeats == ((T0 + 60_000, 4),)  # (open time, line of the dropped copy)
    assert list(c.text["close"]) == ["10.5", "10.2", "10.3"]


def test_a_repeat_written_differently_but_equal_is_identical(tmp_path: Path) -> None:
    same = f"{T0 + 60_000}.0,10.50,10.9,10.10,1.02e1,2.0"  # the same numbers, another writer
    c = load_candles(_csv(tmp_path, [HEADER, ROWS[0], ROWS[1], same, ROWS[2]]))
    assert len(c) == 3 and c.repeats == ((T0 + 60_000, 4),)
    assert c.text["close"][1] == "10.2"  # the first copy is kept


def test_a_conflicting_repeat_is_refused_with_both_lines(tmp_path: Path) -> None:
    other = f"{T0 + 60_000},10.5,10.9,10.1,10.25,2"
    _refused(_csv(tmp_path, [HEADER, ROWS[0], ROWS[1], other]), 4, "repeats line 3 with different values")
    vol = f"{T0 + 60_000},10.5,10.9,10.1,10.2,7"  # only the volume differs: still a conflict
    _refused(_csv(tmp_path, [HEADER, ROWS[0], ROWS[1], vol]), 4, "different values")


def test_out_of_order_is_refused_even_when_identical_to_an_earlier_row(tmp_path: Path) -> None:
    _refused(_csv(tmp_path, [HEADER, ROWS[0], ROWS[1], ROWS[0], ROWS[2]]), 4, "goes back")


def test_json_repeats_dropped_conflicts_refused_by_row(tmp_path: Path) -> None:
    rows = [[T0, 10.0, 11.0, 9.5, 10.5, 1], [T0 + 60_000, 10.5, 10.9, 10.1, 10.2, 2]]
    p = tmp_path / "BTC_USDT-1m.json"
    p.write_text("[\n" + ",\n".join(json.dumps(r) for r in [*rows, rows[1]]) + "\n]\n")
    c = load_candles(p)
    assert len(c) == 2 and c.repeats == ((T0 + 60_000, 4),)
    p.write_text("[\n" + ",\n".join(json.dumps(r) for r in [*rows, [T0 + 60_000, 10.5, 10.9, 10.1, 10.3, 2]]) + "\n]")
    e = _refused(p, 4, "row 2: ")
    assert "repeats line 3 with different values" in e.reason


def test_gaps_are_measured(tmp_path: Path) -> None:
    later = f"{T0 + 600_000},10.3,10.4,10.0,10.1,1"
    c = load_candles(_csv(tmp_path, [HEADER, *ROWS, later, f"{T0 + 660_000},10.1,10.2,10.0,10.1,1"]))
    assert c.interval_ms() == 60_000
    assert c.gaps() == (1, 420_000)  # a step of 8 minutes where 1 is usual: 7 minutes missing
    assert load_candles(_csv(tmp_path, [HEADER, *ROWS], "ETH_USDT-1m.csv")).gaps() == (0, 0)


def test_windows_keep_only_their_repeats(tmp_path: Path) -> None:
    c = load_candles(_csv(tmp_path, [HEADER, ROWS[0], ROWS[1], ROWS[1], ROWS[2]]))
    assert c.window(T0, 2).repeats == ((T0 + 60_000, 4),)
    assert c.window(T0 + 120_000).repeats == () and c.slice(0, 1).repeats == ()


def test_a_real_file_with_one_row_repeated(prices_dir: Path, tmp_path: Path) -> None:
    src = prices_dir / CRASH_2021 / "BTC_USDT-1m.csv.gz"
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    k = 5_000  # a data line, repeated right after itself
    p = _csv(tmp_path, [*lines[: k + 1], lines[k], *lines[k + 1 :]], "BTC_USDT-1m.csv.gz")
    got, ref = load_candles(p), load_candles(src)
    assert np.array_equal(got.ts_ms, ref.ts_ms) and list(got.text["low"]) == list(ref.text["low"])
    assert got.repeats == ((int(lines[k].split(",")[0]), k + 2),) and ref.repeats == ()
    assert ref.gaps() == (1, 17_100_000 - 60_000)  # SOURCE.txt: one irregular step (04-25 04:00, 4 h 45 min)


# --- time units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "unit"), [(10**-3, "s"), (1, "ms"), (10**3, "us"), (10**6, "ns")])
def test_time_units_are_recognised(tmp_path: Path, scale: float, unit: str) -> None:
    rows = [str(int((T0 + 60_000 * i) * scale)) + "," + r.split(",", 1)[1] for i, r in enumerate(ROWS)]
    c = load_candles(_csv(tmp_path, [HEADER, *rows]))
    assert list(c.ts_ms) == [T0, T0 + 60_000, T0 + 120_000] and c.unit == unit


def test_binance_archives_across_the_2025_switch_to_microseconds(tmp_path: Path) -> None:
    """Binance spot klines are in microseconds from 2025-01-01: a December archive followed by January's."""
    dec31 = int(datetime(2024, 12, 31, 23, 59, tzinfo=UTC).timestamp() * 1000)
    ms_row = f"{dec31},93000.1,93100,92900,93050.5,12.5,{dec31 + 59_999},1,10,0.5,0.5,0"
    jan1 = (dec31 + 60_000) * 1000
    us_row = f"{jan1},93050.5,93200,93000,93100,10.1,{jan1 + 59_999_999},1,10,0.5,0.5,0"
    p = tmp_path / "BTCUSDT-1m-2025-01.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("BTCUSDT-1m-2025-01.csv", f"{ms_row}\n{us_row}\n")
    c = load_candles(p)
    assert list(c.ts_ms) == [dec31, dec31 + 60_000] and c.unit == "ms+us"


@pytest.mark.parametrize(
    ("ts", "words"),
    [
        ("9999999999999", "fits no time unit: as milliseconds it is 2286-11-20"),  # as µs: 1970
        ("99999999999", "fits no time unit: as seconds it is 5138-11-16"),  # as ms: 1973
        ("1" * 30, "out of range"),
        (str(2**63), "out of range"),
        (str(T0 * 1000 + 1), "not a whole millisecond"),  # µs with a remainder
    ],
)
def test_timestamps_that_fit_no_unit_are_refused(tmp_path: Path, ts: str, words: str) -> None:
    e = _refused(_csv(tmp_path, [HEADER, ROWS[0], f"{ts},10.5,10.9,10.1,10.2,2"]), 3, words)
    assert "timestamp" in e.reason


def test_synthetic_times_near_the_epoch_stay_milliseconds(tmp_path: Path) -> None:
    rows = ["1000,10.0,11.0,9.5,10.5,1", "2000,10.5,10.9,10.1,10.2,1", "700000000,10.2,10.4,10.0,10.3,1"]
    c = load_candles(_csv(tmp_path, [HEADER, *rows]))
    assert list(c.ts_ms) == [1000, 2000, 700_000_000] and c.unit == "ms"
    _refused(_csv(tmp_path, [HEADER, *rows, "9999999999999,10,11,9,10.5,1"]), 5, "the file starts near 1970")


def test_funding_times_are_bounded(tmp_path: Path) -> None:
    p = tmp_path / "BTC_USDT_USDT-8h-funding_rate.csv"
    p.write_text(f"timestamp_ms,funding_rate\n{T0},0.0001\n9999999999999,0.0001\n")
    with pytest.raises(InputFileError, match=r"funding_rate\.csv:3: timestamp 9999999999999 fits no time unit"):
        load_funding(p)


# --- hostile and broken files ------------------------------------------------------------------------


def _gz_bytes(n: int = 3000) -> bytes:
    lines = [HEADER] + [f"{T0 + 60_000 * i},10.{i % 10},11,9,10.{i % 10},{i}" for i in range(n)]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def _bad_member(text: str) -> bytes:
    """A gzip member whose first deflate block has the invalid block type 3 (the 10-byte header first)."""
    m = bytearray(gzip.compress(text.encode(), mtime=0))
    m[10] |= 0b110
    return bytes(m)


def test_gzip_corrupted_mid_file(tmp_path: Path) -> None:
    first = "\n".join([HEADER, *ROWS]) + "\n"  # lines 1-4 whole, then a member that cannot be inflated
    p = tmp_path / "BTC_USDT-1m.csv.gz"
    p.write_bytes(gzip.compress(first.encode()) + _bad_member(f"{T0 + 180_000},10.3,10.4,10.0,10.3,1\n"))
    e = _refused(p, 5, "corrupt gzip data (Error -3 while decompressing data: invalid block type)")
    assert "line 5" in e.reason


def test_gzip_with_bytes_flipped_fails_its_checks(tmp_path: Path) -> None:
    data = bytearray(_gz_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    p = tmp_path / "BTC_USDT-1m.csv.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(InputFileError) as ei:
        load_candles(p)
    assert ei.value.path == str(p) and ei.value.line > 1 and "corrupt gzip data" in ei.value.reason


def test_gzip_truncated(tmp_path: Path) -> None:
    p = tmp_path / "BTC_USDT-1m.csv.gz"
    p.write_bytes(_gz_bytes()[:-100])
    with pytest.raises(InputFileError) as ei:
        load_candles(p)
    assert ei.value.line > 1 and "truncated" in ei.value.reason


def test_zip_member_corrupted(tmp_path: Path) -> None:
    p = tmp_path / "BTCUSDT-1m-2021-05.zip"
    rows = [f"{T0 + 60_000 * i},10,11,9,10.5,1,{T0 + 60_000 * i + 59_999},1,10,0.5,0.5,0" for i in range(3000)]
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("BTCUSDT-1m-2021-05.csv", "\n".join(rows) + "\n")
    data = bytearray(p.read_bytes())
    mid = len(data) // 3
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    p.write_bytes(bytes(data))
    with pytest.raises(InputFileError) as ei:
        load_candles(p)
    assert ei.value.path == f"{p}[BTCUSDT-1m-2021-05.csv]" and "corrupt zip member" in ei.value.reason


def test_deeply_nested_json(tmp_path: Path) -> None:
    p = tmp_path / "BTC_USDT-1m.json"
    p.write_text("[\n" + "[" * 100_000 + "]" * 100_000 + "\n]")
    _refused(p, 2, "nested more than")
    # the limit itself: 8 levels are read (and refused for their content), 9 are not parsed at all
    p.write_text("[" * (cm.MAX_JSON_DEPTH + 1) + "]" * (cm.MAX_JSON_DEPTH + 1))
    _refused(p, 1, f"nested more than {cm.MAX_JSON_DEPTH} levels")
    p.write_text("[" * cm.MAX_JSON_DEPTH + "]" * cm.MAX_JSON_DEPTH)
    with pytest.raises(InputFileError) as ei:
        load_candles(p)
    assert "nested" not in ei.value.reason


def test_a_file_too_large_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cm, "MAX_TEXT_BYTES", 10_000)
    p = tmp_path / "BTC_USDT-1m.csv.gz"
    p.write_bytes(_gz_bytes())  # ~150 kB once decompressed
    with pytest.raises(InputFileError, match=r"BTC_USDT-1m\.csv\.gz:0: larger than 10000 bytes"):
        load_candles(p)


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        ([], 0, "empty file"),
        (["", "   "], 0, "empty file"),
        ([HEADER], 0, "no candles"),
        (
            [HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.9,10.1,10.2,lots"],
            3,
            "non-numeric value 'lots' in column 'volume'",
        ),
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.9,10.1,10.2,nan"], 3, "NaN in column 'volume'"),
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.9,10.1,10.2,-3"], 3, "volume '-3' is negative"),
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.9,10.1,-inf,2"], 3, "non-finite value '-inf' in column 'close'"),
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.9,10.1,0,2"], 3, "not a positive"),
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.0,10.1,10.05,2"], 3, "inconsistent candle"),
        # high 10.6 above low 10.1 but below the open 10.7; low 10.4 above the close 10.3
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.7,10.6,10.1,10.5,2"], 3, "inconsistent candle"),
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.9,10.4,10.3,2"], 3, "inconsistent candle"),
        ([HEADER, ROWS[0], f"{T0 + 60_000},10.5,10.9"], 3, "columns"),  # a truncated last line
        ([HEADER, ROWS[0], f"{T0 + 60_000},,10.9,10.1,10.2,2"], 3, "non-numeric value '' in column 'open'"),
    ],
)
def test_blemished_csv_names_file_and_line(tmp_path: Path, lines: list[str], line: int, words: str) -> None:
    for name in ("BTC_USDT-1m.csv", "BTC_USDT-1m.csv.gz"):
        _refused(_csv(tmp_path, lines, name), line, words)


def test_blemished_kline_cells(tmp_path: Path) -> None:
    good = f"{T0},10,11,9,10.5,1,{T0 + 59_999},1,10,0.5,0.5,0"
    bad = f"{T0 + 60_000},10,11,9,10.5,1,{T0 + 119_999},1,x,0.5,0.5,0"
    _refused(_csv(tmp_path, [KLINE_HEADER, good, bad], "BTCUSDT-1m-2021-05.csv"), 3, "non-numeric value 'x'")


def test_an_empty_zip_and_an_empty_gz(tmp_path: Path) -> None:
    z = tmp_path / "BTCUSDT-1m-2021-05.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("BTCUSDT-1m-2021-05.csv", "")
    _refused(z, 0, "empty file")
    g = tmp_path / "BTC_USDT-1m.csv.gz"
    g.write_bytes(b"")
    _refused(g, 0, "empty file")
    g.write_bytes(b"not gzip at all")
    _refused(g, 0, "not a gzip file")
