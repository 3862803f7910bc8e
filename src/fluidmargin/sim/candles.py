"""Candle and funding-rate loaders with format auto-detection and file/line error reporting.

Formats (plain, gzip-compressed or in a one-member zip archive, told by their first bytes):

* header CSV ``timestamp_ms,open,high,low,close[,volume]`` (this project's converted files);
* the raw Binance kline archive (data.binance.vision): 12 columns, no header (a header line starting
  ``open_time`` is accepted too);
* freqtrade JSON: a list of ``[timestamp_ms, open, high, low, close, volume]``.

Real files have blemishes. A row repeating the previous one exactly (the same numbers, however
written) is dropped and counted (:attr:`Candles.repeats`); a repeated open time with other numbers,
and a time going back, are refused. Gaps are kept and measured (:meth:`Candles.gaps`).

Open times may be in seconds, milliseconds, microseconds (Binance spot archives from 2025) or
nanoseconds: each value's unit is told by its size, as the one unit that dates it between 1990 and
2262 (the ranges are a thousandfold apart, so at most one fits); a value no unit fits is refused. A
file whose first time falls before 1990 in every unit (synthetic data near the epoch) is read as
milliseconds throughout. Times end before 2262, so every time fits int64 nanoseconds (``ts_ns``).

Every refusal is an :class:`~fluidmargin.core.errors.InputFileError` naming the file (a zip archive's
member too) and the line (0: the file as a whole). Prices keep the decimal text as published (the
engine parses it); float copies are for statistics.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from fluidmargin.core.errors import InputFileError, ValidationError
from fluidmargin.core.units import Rounding, parse_decimal

PRICE_COLUMNS = ("open", "high", "low", "close")
HEADER = ("timestamp_ms", "open", "high", "low", "close")
KLINE_COLUMNS = 12
# the kline columns after the prices that must be non-negative numbers ("ignore" is not checked)
KLINE_NUMBERS = ("volume", "close_time", "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume")
MAX_TEXT_BYTES = 256 * 2**20  # uncompressed; about 3.5 million one-minute candles
MAX_JSON_DEPTH = 8  # a freqtrade file is 2 levels deep
_NUM = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_ROW_START = re.compile(r"\[\s*(?=[^\[\s])")
_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_ASSET = re.compile(r"^([A-Za-z0-9]+?)[_\-/]?(?:USDT|USDC|BUSD|USD)(?![a-z])")
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_PIECE = 1 << 14  # compressed bytes inflated at a time

# time units, coarsest first: name, nanoseconds per unit
UNITS = (("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1))
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
TS_FROM_NS = 631_152_000 * 10**9  # 1990-01-01T00:00Z: a unit must date a time after this
TS_END_NS = 9_214_646_400 * 10**9  # 2262-01-01T00:00Z: times end before (int64 ns end 2262-04-11)


@dataclass(frozen=True, slots=True)
class Candles:
    """OHLC candles of one file: int64 open times (ms), float prices, and the prices' original text.

    ``unit``: the unit(s) the file gave times in (``s``, ``ms``, ``us``, ``ns``; ``ms+us`` when both);
    ``repeats``: (open time ms, line) of each identical repeat dropped; ``volume``: floats, or None when
    the file has none.
    """

    path: str
    ts_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    text: dict[str, np.ndarray]  # column name -> object array of decimal strings
    unit: str = "ms"
    repeats: tuple[tuple[int, int], ...] = ()
    volume: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts_ms)

    def slice(self, start: int, stop: int | None = None) -> Candles:
        """Rows ``start:stop`` (views), with the repeats dropped among them."""
        s = slice(start, stop)
        ts = self.ts_ms[s]
        repeats = tuple(r for r in self.repeats if len(ts) and int(ts[0]) <= r[0] <= int(ts[-1]))
        return Candles(
            self.path,
            ts,
            self.open[s],
            self.high[s],
            self.low[s],
            self.close[s],
            {k: v[s] for k, v in self.text.items()},
            self.unit,
            repeats,
            None if self.volume is None else self.volume[s],
        )

    def window(self, start_ms: int | None = None, limit: int | None = None) -> Candles:
        """Candles opening at or after ``start_ms``, at most ``limit`` of them."""
        i = 0 if start_ms is None else int(np.searchsorted(self.ts_ms, min(start_ms, 2**63 - 1), side="left"))
        return self.slice(i, None if limit is None else i + limit)

    def interval_ms(self) -> int:
        """The usual spacing of candles (median step); 60_000 if there is a single candle."""
        if len(self.ts_ms) < 2:
            return 60_000
        return int(np.median(np.diff(self.ts_ms)))

    def gaps(self) -> tuple[int, int]:
        """(steps longer than the usual interval, the most time missing at one of them in ms: the step
        less one interval)."""
        if len(self.ts_ms) < 2:
            return 0, 0
        usual = self.interval_ms()
        steps = np.diff(self.ts_ms)
        long = steps[steps > usual]
        return int(long.size), int(long.max()) - usual if long.size else 0


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


def _too_large(where: str) -> InputFileError:
    return InputFileError(where, 0, f"larger than {MAX_TEXT_BYTES} bytes uncompressed: split it or cut it first")


def _inflate_gzip(where: str, raw: bytes) -> bytes:
    """Decompress gzip members (concatenated members too); corruption and truncation name the line of
    the uncompressed text where they show."""
    out = bytearray()
    lines = 0
    rest = raw
    while rest:
        d = zlib.decompressobj(wbits=31)  # gzip wrapper: header, CRC-32 and length checked
        pos = 0
        while pos < len(rest) and not d.eof:
            piece = rest[pos : pos + _PIECE]
            before = d.copy()
            try:
                chunk = d.decompress(piece)
            except zlib.error as e:
                line = lines + 1 + _lines_before_error(before, piece)
                raise InputFileError(where, line, f"corrupt gzip data ({e}), found at line {line}") from None
            pos += len(piece)
            lines += chunk.count(b"\n")
            out += chunk
            if len(out) > MAX_TEXT_BYTES:
                raise _too_large(where)
        if not d.eof:
            raise InputFileError(where, lines + 1, f"truncated gzip file: it ends inside line {lines + 1}")
        rest = d.unused_data + rest[pos:]
        if not rest.strip(b"\0"):  # zero padding after the last member is tolerated, as gzip does
            break
        if not rest.startswith(_GZIP_MAGIC):
            raise InputFileError(where, lines + 1, "data after the end of the gzip stream is not gzip")
    return bytes(out)


def _lines_before_error(d: zlib._Decompress, piece: bytes) -> int:
    """Newlines ``d`` produces from ``piece`` before failing, fed a few bytes at a time."""
    n = 0
    for i in range(0, len(piece), 64):
        try:
            n += d.decompress(piece[i : i + 64]).count(b"\n")
        except zlib.error:
            break
    return n


def _read_zip(path: Path, raw: bytes) -> tuple[bytes, str]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputFileError(str(path), 0, f"not a zip archive ({e})") from None
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if len(members) != 1:
            raise InputFileError(str(path), 0, f"expected one member in the zip archive, found {len(members)}")
        info = members[0]
        where = f"{path}[{info.filename}]"
        if info.file_size > MAX_TEXT_BYTES:
            raise _too_large(where)
        out = bytearray()
        lines = 0
        try:
            with zf.open(info) as f:
                while chunk := f.read(_PIECE):
                    lines += chunk.count(b"\n")
                    out += chunk
                    if len(out) > MAX_TEXT_BYTES:
                        raise _too_large(where)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
            raise InputFileError(where, lines + 1, f"corrupt zip member ({e}), found at line {lines + 1}") from None
    return bytes(out), where


def _read_text(path: Path) -> tuple[str, str]:
    """The file's text and the name to report errors under (a zip names its member)."""
    where = str(path)
    if not path.is_file():
        raise InputFileError(where, 0, "no such file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise InputFileError(where, 0, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_TEXT_BYTES:
        raise _too_large(where)
    if raw.startswith(_GZIP_MAGIC):
        data = _inflate_gzip(where, raw)
    elif raw.startswith(_ZIP_MAGIC) or path.suffix == ".zip":
        data, where = _read_zip(path, raw)
    elif path.suffix == ".gz" and raw:
        raise InputFileError(where, 0, "not a gzip file (it does not start with the gzip magic bytes 1f 8b)")
    else:
        data = raw
    try:
        return data.decode("utf-8-sig"), where
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputFileError(where, line, "not UTF-8 text") from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for i, line in enumerate(io.StringIO(text), start=1):
        line = line.strip()
        if line:
            yield i, line


def _is_number(s: str) -> bool:
    return bool(_NUM.match(s))


def _not_a_number(where: str, line: int, column: str, s: str) -> InputFileError:
    low = s.lower().lstrip("+-")
    if low == "nan":
        return InputFileError(where, line, f"NaN in column {column!r}")
    if low in ("inf", "infinity"):
        return InputFileError(where, line, f"non-finite value {s!r} in column {column!r}")
    return InputFileError(where, line, f"non-numeric value {s!r} in column {column!r}")


def _check_price(where: str, line: int, column: str, s: str) -> str:
    s = s.strip()
    if not _NUM.match(s):
        raise _not_a_number(where, line, column, s)
    if float(s) <= 0 or not math.isfinite(float(s)):
        raise InputFileError(where, line, f"price {s!r} in column {column!r} is not a positive finite number")
    return s


def _check_amount(where: str, line: int, column: str, s: str) -> float:
    """A volume or count: a finite number, not negative."""
    s = s.strip()
    if not _NUM.match(s):
        raise _not_a_number(where, line, column, s)
    v = float(s)
    if not math.isfinite(v):
        raise InputFileError(where, line, f"{column} {s!r} is not finite")
    if v < 0:
        raise InputFileError(where, line, f"{column} {s!r} is negative")
    return v


def _date(t_ns: int) -> str:
    t_s = t_ns // 10**9
    if not 0 <= t_s < 253_402_300_800:  # datetime ends with the year 9999
        return "after the year 9999"
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%d")


_END = _date(TS_END_NS)
_FROM = _date(TS_FROM_NS)


def _unit_of(v: int) -> tuple[str, int] | None:
    """The one unit that dates ``v`` between 1990 and 2262, if any."""
    for unit, ns in UNITS:
        if TS_FROM_NS <= v * ns < TS_END_NS:
            return unit, ns
    return None


def _no_unit(v: int) -> str:
    late = [(u, ns) for u, ns in UNITS if v * ns >= TS_END_NS]
    early = [(u, ns) for u, ns in UNITS if v * ns < TS_FROM_NS]
    if not early:
        return (
            f"timestamp {v} is out of range: even as nanoseconds it is past {_END}, "
            "beyond what ts_ns (int64 nanoseconds) holds"
        )
    what = [f"as {_UNIT_NAMES[late[-1][0]]} it is {_date(v * late[-1][1])}, after {_END}"] if late else []
    what.append(f"as {_UNIT_NAMES[early[0][0]]} it is {_date(v * early[0][1])}, before {_FROM}")
    return (
        f"timestamp {v} fits no time unit: {'; '.join(what)} (a time must be seconds, milliseconds, "
        f"microseconds or nanoseconds since 1970, dated from {_FROM[:4]} to 2261)"
    )


class _Times:
    """Open times to milliseconds, the unit of each told by its size (see the module docstring)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.near_epoch: bool | None = None  # the first time is before 1990 in every unit: all ms
        self.units: set[str] = set()

    def ms(self, line: int, s: str) -> int:
        s = s.strip()
        if not _INT.match(s):
            if re.fullmatch(r"[+-]?\d+\.0*", s):  # a float-typed integer, as JSON writers sometimes emit
                s = s.split(".")[0]
            else:
                raise InputFileError(self.where, line, f"timestamp {s!r} is not an integer")
        if len(s.lstrip("+-0")) > 40:  # beyond any unit; int() of thousands of digits is refused by Python
            raise InputFileError(self.where, line, f"timestamp of {len(s)} digits is out of range")
        v = int(s)
        if v < 0:
            raise InputFileError(self.where, line, f"negative timestamp {v}")
        if self.near_epoch is None:
            self.near_epoch = v * UNITS[0][1] < TS_FROM_NS
        if self.near_epoch:
            unit, ns = "ms", 10**6
            if v * ns >= TS_END_NS:
                raise InputFileError(
                    self.where,
                    line,
                    f"timestamp {v} is out of range: the file starts near 1970, so its times are milliseconds, "
                    f"and as milliseconds it is {_date(v * ns)}, after {_END}",
                )
        else:
            found = _unit_of(v)
            if found is None:
                raise InputFileError(self.where, line, _no_unit(v))
            unit, ns = found
        t_ns = v * ns
        if t_ns % 10**6:
            raise InputFileError(self.where, line, f"timestamp {v} in {_UNIT_NAMES[unit]} is not a whole millisecond")
        self.units.add(unit)
        return t_ns // 10**6

    def unit(self) -> str:
        return "+".join(u for u, _ in UNITS if u in self.units) or "ms"


def _same(a: Sequence[str], b: Sequence[str]) -> bool:
    """Two rows' fields hold the same values (``1.50`` and ``1.5`` are the same number)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        x, y = x.strip(), y.strip()
        if x == y:
            continue
        try:
            if Decimal(x) != Decimal(y):
                return False
        except InvalidOperation:
            return False
    return True


class _Rows:
    """Accumulates validated rows: drops identical repeats, refuses conflicting ones and times going back."""

    def __init__(self, where: str, extra: Sequence[str] = ()) -> None:
        self.where = where
        self.extra = tuple(extra)  # names of the fields after the prices (the first: volume), as checked
        self.times = _Times(where)
        self.ts: list[int] = []
        self.cols: list[list[str]] = [[], [], [], []]
        self.volume: list[float] = []
        self.has_volume = True
        self.repeats: list[tuple[int, int]] = []
        self.prev: tuple[int, int, list[str]] | None = None  # (ts, line, the fields after the time)

    def add(self, line: int, ts_s: str, fields: list[str]) -> None:
        """``fields``: the four prices, then ``extra`` (checked as amounts), then any unchecked."""
        ts = self.times.ms(line, ts_s)
        if self.prev is not None and ts == self.prev[0]:
            if _same(fields, self.prev[2]):
                self.repeats.append((ts, line))
                return
            raise InputFileError(
                self.where,
                line,
                f"timestamp {ts} repeats line {self.prev[1]} with different values "
                f"({self._difference(self.prev[2], fields)}): conflicting candles",
            )
        o, h, lo, c = (_check_price(self.where, line, n, s) for n, s in zip(PRICE_COLUMNS, fields[:4], strict=True))
        names = self.extra[: len(fields) - 4]
        amounts = [_check_amount(self.where, line, n, s) for n, s in zip(names, fields[4:], strict=False)]
        fo, fh, fl, fc = float(o), float(h), float(lo), float(c)
        if fl > min(fo, fc) or fh < max(fo, fc) or fl > fh:
            raise InputFileError(
                self.where,
                line,
                f"inconsistent candle: low {lo} / high {h} do not bound open {o} and close {c}",
            )
        if self.prev is not None and ts < self.prev[0]:
            raise InputFileError(
                self.where,
                line,
                f"timestamp {ts} goes back from the previous one {self.prev[0]} (line "
                f"{self.prev[1]}): timestamps must strictly increase",
            )
        self.prev = (ts, line, fields)
        self.ts.append(ts)
        for col, s in zip(self.cols, (o, h, lo, c), strict=True):
            col.append(s)
        if amounts and self.extra[0] == "volume":
            self.volume.append(amounts[0])
        else:
            self.has_volume = False

    def _difference(self, a: Sequence[str], b: Sequence[str]) -> str:
        names = (*PRICE_COLUMNS, *self.extra)
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if not _same([x], [y]):
                name = names[i] if i < len(names) else f"field {i + 2}"
                return f"{name} {x.strip()} there, {y.strip()} here"
        return f"{len(a)} fields there, {len(b)} here"

    def build(self, path: str) -> Candles:
        if not self.ts:
            raise InputFileError(self.where, 0, "no candles in the file")
        text = {n: np.array(col, dtype=object) for n, col in zip(PRICE_COLUMNS, self.cols, strict=True)}
        fl = {n: np.array(col, dtype=np.float64) for n, col in zip(PRICE_COLUMNS, self.cols, strict=True)}
        return Candles(
            path,
            np.array(self.ts, dtype=np.int64),
            fl["open"],
            fl["high"],
            fl["low"],
            fl["close"],
            text,
            self.times.unit(),
            tuple(self.repeats),
            np.array(self.volume, dtype=np.float64) if self.has_volume else None,
        )


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
    rows = _Rows(where, cols[5:])
    for line_no, line in it:
        f = line.split(",")
        if len(f) != n:
            raise InputFileError(where, line_no, f"{len(f)} columns, the header has {n}")
        rows.add(line_no, f[0], f[1:])
    return rows.build(path)


def _parse_kline(text: str, where: str, path: str) -> Candles:
    rows = _Rows(where, KLINE_NUMBERS)
    for line_no, line in _lines(text):
        f = line.split(",")
        if f[0].strip() == "open_time" and not rows.ts:
            continue
        if len(f) != KLINE_COLUMNS:
            raise InputFileError(where, line_no, f"{len(f)} columns, a Binance kline row has {KLINE_COLUMNS}")
        rows.add(line_no, f[0], f[1:])
    return rows.build(path)


def _check_json_depth(text: str, where: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH before parsing (the parser would recurse that deep)."""
    depth = 0
    for m in _JSON_NESTING.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InputFileError(
                    where,
                    text.count("\n", 0, m.start()) + 1,
                    f"JSON nested more than {MAX_JSON_DEPTH} levels deep (a freqtrade file is a list of rows)",
                )
        elif c in "]}":
            depth -= 1


def _parse_json(text: str, where: str, path: str) -> Candles:
    _check_json_depth(text, where)
    try:
        data = json.loads(text, parse_float=str, parse_int=str, parse_constant=str)
    except json.JSONDecodeError as e:
        raise InputFileError(where, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list):
        raise InputFileError(where, 1, "expected a JSON list of [timestamp_ms, open, high, low, close, volume]")
    rows = _Rows(where, ("volume",))
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
            rows.add(line, row[0], row[1:])
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
    times = _Times(where)
    for line_no, line in it:
        f = [x.strip() for x in line.split(",")]
        if len(f) != 2:
            raise InputFileError(where, line_no, f"{len(f)} columns, expected 2 (timestamp_ms,funding_rate)")
        t = times.ms(line_no, f[0])
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
