"""Candle and funding-rate loaders with format auto-detection and file/line error reporting.

Formats (plain or gzip-compressed; the Binance archive also zipped):

* header CSV ``timestamp_ms,open,high,low,close[,volume]`` (this project's converted files);
* the raw Binance kline archive (data.binance.vision): 12 columns, no header (a header line starting
  ``open_time`` is accepted too); open times in microseconds (archives from 2025) are scaled to ms;
* freqtrade JSON: a list of ``[timestamp_ms, open, high, low, close, volume]``.

Prices keep the decimal text as published (the engine parses it); float copies are for statistics.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fluidmargin.core.errors import InputFileError, ValidationError
from fluidmargin.core.units import Rounding, parse_decimal

PRICE_COLUMNS = ("open", "high", "low", "close")
HEADER = ("timestamp_ms", "open", "high", "low", "close")
KLINE_COLUMNS = 12
_NUM = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_ROW_START = re.compile(r"\[\s*(?=[^\[\s])")
_ASSET = re.compile(r"^([A-Za-z0-9]+?)[_\-/]?(?:USDT|USDC|BUSD|USD)(?![a-z])")
_US_THRESHOLD = 10**14  # an open time above this (year 5138 in ms) is in microseconds


@dataclass(frozen=True, slots=True)
class Candles:
    """OHLC candles of one file: int64 open times (ms), float prices, and the prices' original text."""

    path: str
    ts_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    text: dict[str, np.ndarray]  # column name -> object array of decimal strings

    def __len__(self) -> int:
        return len(self.ts_ms)

    def slice(self, start: int, stop: int | None = None) -> Candles:
        """Rows ``start:stop`` (views)."""
        s = slice(start, stop)
        return Candles(
            self.path,
            self.ts_ms[s],
            self.open[s],
            self.high[s],
            self.low[s],
            self.close[s],
            {k: v[s] for k, v in self.text.items()},
        )

    def window(self, start_ms: int | None = None, limit: int | None = None) -> Candles:
        """Candles opening at or after ``start_ms``, at most ``limit`` of them."""
        i = 0 if start_ms is None else int(np.searchsorted(self.ts_ms, start_ms, side="left"))
        return self.slice(i, None if limit is None else i + limit)

    def interval_ms(self) -> int:
        """The usual spacing of candles (median step); 60_000 if there is a single candle."""
        if len(self.ts_ms) < 2:
            return 60_000
        return int(np.median(np.diff(self.ts_ms)))


@dataclass(frozen=True, slots=True)
class Funding:
    """Funding events: int64 times (ms), exact rates at 1e-9 per interval, and the original text."""

    path: str
    ts_ms: np.ndarray
    rate_e9: np.ndarray
    text: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_ms)


def asset_from_path(path: str | Path) -> str | None:
    """Base asset from a file name: ``BTC_USDT_USDT-1m...`` -> BTC, ``LUNAUSDT-1m...`` -> LUNA."""
    m = _ASSET.match(Path(path).name)
    return m.group(1).upper() if m else None


# --- reading raw text --------------------------------------------------------------------------------


def _read_text(path: Path) -> tuple[str, str]:
    """The file's text and the name to report errors under (a zip names its member)."""
    if not path.is_file():
        raise InputFileError(str(path), 0, "no such file")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if not n.endswith("/")]
                if len(members) != 1:
                    raise InputFileError(str(path), 0, f"expected one member in the zip archive, found {len(members)}")
                data = zf.read(members[0])
                where = f"{path}[{members[0]}]"
        elif path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
            where = str(path)
        else:
            data = path.read_bytes()
            where = str(path)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputFileError(str(path), 0, f"cannot read: {e}") from None
    try:
        return data.decode("utf-8-sig"), where
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputFileError(str(path), line, "not UTF-8 text") from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for i, line in enumerate(io.StringIO(text), start=1):
        line = line.strip()
        if line:
            yield i, line


def _is_number(s: str) -> bool:
    return bool(_NUM.match(s))


def _check_price(where: str, line: int, column: str, s: str) -> str:
    s = s.strip()
    if not _NUM.match(s):
        low = s.lower().lstrip("+-")
        if low == "nan":
            raise InputFileError(where, line, f"NaN in column {column!r}")
        if low in ("inf", "infinity"):
            raise InputFileError(where, line, f"non-finite value {s!r} in column {column!r}")
        raise InputFileError(where, line, f"non-numeric value {s!r} in column {column!r}")
    if float(s) <= 0 or not math.isfinite(float(s)):
        raise InputFileError(where, line, f"price {s!r} in column {column!r} is not a positive finite number")
    return s


def _check_ts(where: str, line: int, s: str) -> int:
    s = s.strip()
    if not _INT.match(s):
        if re.fullmatch(r"[+-]?\d+\.0*", s):  # a float-typed integer, as JSON writers sometimes emit
            s = s.split(".")[0]
        else:
            raise InputFileError(where, line, f"timestamp {s!r} is not an integer number of milliseconds")
    v = int(s)
    if v < 0:
        raise InputFileError(where, line, f"negative timestamp {v}")
    return v


class _Rows:
    """Accumulates validated rows; checks times strictly increase."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.ts: list[int] = []
        self.cols: list[list[str]] = [[], [], [], []]
        self.prev: tuple[int, int] | None = None  # (ts, line)

    def add(self, line: int, ts_s: str, prices: list[str], scale_us: bool = False) -> None:
        ts = _check_ts(self.where, line, ts_s)
        if scale_us and ts > _US_THRESHOLD:
            ts //= 1000
        o, h, lo, c = (_check_price(self.where, line, n, s) for n, s in zip(PRICE_COLUMNS, prices, strict=True))
        fo, fh, fl, fc = float(o), float(h), float(lo), float(c)
        if fl > min(fo, fc) or fh < max(fo, fc) or fl > fh:
            raise InputFileError(
                self.where,
                line,
                f"inconsistent candle: low {lo} / high {h} do not bound open {o} and close {c}",
            )
        if self.prev is not None and ts <= self.prev[0]:
            what = "repeats" if ts == self.prev[0] else "goes back from"
            raise InputFileError(
                self.where,
                line,
                f"timestamp {ts} {what} the previous one {self.prev[0]} (line "
                f"{self.prev[1]}): timestamps must strictly increase",
            )
        self.prev = (ts, line)
        self.ts.append(ts)
        for col, s in zip(self.cols, (o, h, lo, c), strict=True):
            col.append(s)

    def build(self, path: str) -> Candles:
        if not self.ts:
            raise InputFileError(self.where, 0, "no candles in the file")
        text = {n: np.array(col, dtype=object) for n, col in zip(PRICE_COLUMNS, self.cols, strict=True)}
        fl = {n: np.array(col, dtype=np.float64) for n, col in zip(PRICE_COLUMNS, self.cols, strict=True)}
        return Candles(path, np.array(self.ts, dtype=np.int64), fl["open"], fl["high"], fl["low"], fl["close"], text)


# --- candles -------------------------------------------------------------------------------------


def load_candles(path: str | Path) -> Candles:
    """Load candles from any supported format (auto-detected); InputFileError names file and line."""
    p = Path(path)
    text, where = _read_text(p)
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):  # JSON (an object is reported as not the expected list)
        return _parse_json(text, where, str(p))
    first = next(_lines(text), None)
    if first is None:
        raise InputFileError(where, 0, "empty file")
    line_no, line = first
    fields = [f.strip() for f in line.split(",")]
    if _is_number(fields[0]):
        if len(fields) == KLINE_COLUMNS:
            return _parse_kline(text, where, str(p))
        raise InputFileError(
            where,
            line_no,
            f"no header and {len(fields)} columns: expected a header "
            f"{','.join(HEADER)}[,volume] or the {KLINE_COLUMNS} Binance kline columns",
        )
    if fields[0] == "open_time" and len(fields) == KLINE_COLUMNS:
        return _parse_kline(text, where, str(p))
    return _parse_header_csv(text, where, str(p))


def _parse_header_csv(text: str, where: str, path: str) -> Candles:
    it = _lines(text)
    line_no, header = next(it)
    cols = [c.strip().lower() for c in header.split(",")]
    if tuple(cols[:5]) != HEADER or len(cols) > 6 or (len(cols) == 6 and cols[5] != "volume"):
        raise InputFileError(where, line_no, f"header {header!r}: expected {','.join(HEADER)}[,volume]")
    n = len(cols)
    rows = _Rows(where)
    for line_no, line in it:
        f = line.split(",")
        if len(f) != n:
            raise InputFileError(where, line_no, f"{len(f)} columns, the header has {n}")
        rows.add(line_no, f[0], f[1:5])
    return rows.build(path)


def _parse_kline(text: str, where: str, path: str) -> Candles:
    rows = _Rows(where)
    for line_no, line in _lines(text):
        f = line.split(",")
        if f[0].strip() == "open_time" and not rows.ts:
            continue
        if len(f) != KLINE_COLUMNS:
            raise InputFileError(where, line_no, f"{len(f)} columns, a Binance kline row has {KLINE_COLUMNS}")
        rows.add(line_no, f[0], f[1:5], scale_us=True)
    return rows.build(path)


def _parse_json(text: str, where: str, path: str) -> Candles:
    try:
        data = json.loads(text, parse_float=str, parse_int=str, parse_constant=str)
    except json.JSONDecodeError as e:
        raise InputFileError(where, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list):
        raise InputFileError(where, 1, "expected a JSON list of [timestamp_ms, open, high, low, close, volume]")
    rows = _Rows(where)
    starts = [m.start() for m in _ROW_START.finditer(text)]  # where each inner list opens, for line numbers
    for i, row in enumerate(data):
        line = text.count("\n", 0, starts[i]) + 1 if i < len(starts) else 1
        if not isinstance(row, list) or len(row) not in (5, 6):
            n = len(row) if isinstance(row, list) else type(row).__name__
            raise InputFileError(
                where,
                line,
                f"row {i}: expected [timestamp_ms, open, high, low, close, volume], got {n} fields",
            )
        if not all(isinstance(x, str) for x in row):
            raise InputFileError(where, line, f"row {i}: non-numeric value in {row!r}")
        try:
            rows.add(line, row[0], row[1:5])
        except InputFileError as e:
            raise InputFileError(where, line, f"row {i}: {e.reason}") from None
    return rows.build(path)


# --- funding ---------------------------------------------------------------------------------------


def load_funding(path: str | Path) -> Funding:
    """Load ``timestamp_ms,funding_rate`` (plain or gz): rates per interval, kept exactly at 1e-9.

    Rates are rounded toward zero to 1e-9 (Binance publishes at most 8 decimals).
    """
    p = Path(path)
    text, where = _read_text(p)
    it = _lines(text)
    first = next(it, None)
    if first is None:
        raise InputFileError(where, 0, "empty file")
    line_no, header = first
    cols = [c.strip().lower() for c in header.split(",")]
    if cols != ["timestamp_ms", "funding_rate"]:
        raise InputFileError(where, line_no, f"header {header!r}: expected timestamp_ms,funding_rate")
    ts: list[int] = []
    rates: list[int] = []
    texts: list[str] = []
    prev: tuple[int, int] | None = None
    for line_no, line in it:
        f = [x.strip() for x in line.split(",")]
        if len(f) != 2:
            raise InputFileError(where, line_no, f"{len(f)} columns, expected 2 (timestamp_ms,funding_rate)")
        t = _check_ts(where, line_no, f[0])
        r = f[1]
        if not _NUM.match(r):
            what = "NaN" if r.lower().lstrip("+-") == "nan" else f"non-numeric value {r!r}"
            raise InputFileError(where, line_no, f"{what} in column 'funding_rate'")
        try:
            rate = parse_decimal(r, 9, Rounding.DOWN, "funding_rate")
        except ValidationError as e:
            raise InputFileError(where, line_no, str(e)) from None
        if abs(rate) > 10**9:
            raise InputFileError(where, line_no, f"funding rate {r} is beyond ±100 % per interval")
        if prev is not None and t <= prev[0]:
            raise InputFileError(
                where,
                line_no,
                f"timestamp {t} is not after the previous one {prev[0]} (line "
                f"{prev[1]}): timestamps must strictly increase",
            )
        prev = (t, line_no)
        ts.append(t)
        rates.append(rate)
        texts.append(r)
    if not ts:
        raise InputFileError(where, 0, "no funding rows in the file")
    return Funding(str(p), np.array(ts, dtype=np.int64), np.array(rates, dtype=np.int64), np.array(texts, dtype=object))
