"""Every command that reads candle files answers a bad file with one line naming the file and the line,
and a non-zero exit; never a traceback. Repeats and gaps in good files show in the summaries."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fluidmargin.cli.main import app

CRASH_2021 = "binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19"
HEADER = "timestamp_ms,open,high,low,close,volume"
T0 = 1_621_425_600_000  # 2021-05-19T12:00Z


def _rows(n: int = 600) -> list[str]:
    return [f"{T0 + 60_000 * i},10.{i % 10},11,9,10.{(i + 3) % 10},{i}" for i in range(n)]


def _text(*rows: str) -> bytes:
    return ("\n".join([HEADER, *_rows(5), *rows]) + "\n").encode()


def _corrupt_gz() -> bytes:
    """Two gzip members, the second's first deflate block of the invalid type 3: corrupt at line 302."""
    good = gzip.compress(("\n".join([HEADER, *_rows(300)]) + "\n").encode())
    bad = bytearray(gzip.compress(("\n".join(_rows(600)[300:]) + "\n").encode(), mtime=0))
    bad[10] |= 0b110  # after the 10-byte gzip header
    return good + bytes(bad)


def _zip(text: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("BTCUSDT-1m-2021-05.csv", text)
    return buf.getvalue()


LATE = T0 + 5 * 60_000
# (case, file name, content, line (None: any line > 1), words in the reason)
CASES: list[tuple[str, str, Callable[[], bytes], int | None, str]] = [
    ("gzip corrupted mid-file", "BTC_USDT-1m.csv.gz", _corrupt_gz, 302, "corrupt gzip data"),
    ("gzip truncated", "BTC_USDT-1m.csv.gz", lambda: gzip.compress(_text())[:-30], None, "truncated"),
    ("30-digit timestamp", "BTC_USDT-1m.csv", lambda: _text("1" * 30 + ",10,11,9,10.5,1"), 7, "out of range"),
    ("year 2286", "BTC_USDT-1m.csv", lambda: _text("9999999999999,10,11,9,10.5,1"), 7, "fits no time unit"),
    ("ambiguous unit", "BTC_USDT-1m.csv", lambda: _text("99999999999,10,11,9,10.5,1"), 7, "fits no time unit"),
    ("deep JSON", "BTC_USDT-1m.json", lambda: b"[" * 50_000 + b"]" * 50_000, 1, "nested more than"),
    ("truncated JSON", "BTC_USDT-1m.json", lambda: f"[[{T0},1,2,1,1.5,3],\n[{T0 + 60_000},1,".encode(), 2, "invalid"),
    ("empty", "BTC_USDT-1m.csv", lambda: b"", 0, "empty file"),
    ("header only", "BTC_USDT-1m.csv.gz", lambda: gzip.compress(HEADER.encode() + b"\n"), 0, "no candles"),
    ("non-numeric", "BTC_USDT-1m.csv", lambda: _text(f"{LATE},10,11,9,ten,1"), 7, "non-numeric value 'ten'"),
    ("NaN", "BTC_USDT-1m.csv", lambda: _text(f"{LATE},10,NaN,9,10.5,1"), 7, "NaN in column 'high'"),
    ("inf", "BTC_USDT-1m.csv", lambda: _text(f"{LATE},10,inf,9,10.5,1"), 7, "non-finite"),
    ("negative", "BTC_USDT-1m.csv", lambda: _text(f"{LATE},10,11,-9,10.5,1"), 7, "not a positive"),
    ("zero", "BTC_USDT-1m.csv", lambda: _text(f"{LATE},0,11,9,10.5,1"), 7, "not a positive"),
    ("high < low", "BTC_USDT-1m.csv", lambda: _text(f"{LATE},10,9,11,10.5,1"), 7, "inconsistent candle"),
    ("conflicting repeat", "BTC_USDT-1m.csv", lambda: _text(f"{LATE - 60_000},10,11,9,10.5,1"), 7, "different values"),
    ("out of order", "BTC_USDT-1m.csv", lambda: _text(f"{T0},10,11,9,10.5,1"), 7, "goes back"),
    ("not UTF-8", "BTC_USDT-1m.csv", lambda: _text() + b"\xff\xfe\x00garbage\n", 7, "not UTF-8"),
    ("empty zip member", "BTCUSDT-1m-2021-05.zip", lambda: _zip(b""), 0, "empty file"),
    ("not a zip", "BTCUSDT-1m-2021-05.zip", lambda: b"PK\x03\x04 but no more", 0, "not a zip archive"),
]
COMMANDS = {
    "replay": lambda f, tmp: ["replay", str(f), "--accounts", "10", "--out", str(tmp / "out")],
    "evaluate": lambda f, tmp: ["evaluate", str(f), "--accounts", "10", "--plot", str(tmp / "f.png")],
    "walk-forward": lambda f, tmp: ["walk-forward", str(f)],
    "fit-jumps": lambda f, tmp: ["fit-jumps", str(f)],
    "stress": lambda f, tmp: ["stress", str(f), "--workers", "1", "--paths", "1"],
}


def _one_error_line(stderr: str, path: Path, line: int | None, words: str) -> None:
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    m = re.match(rf"error: {re.escape(str(path))}(\[[^\]]+\])?:(\d+): ", stderr)  # a zip names its member
    assert m is not None, stderr
    assert int(m[2]) == line if line is not None else int(m[2]) > 1, stderr
    assert words in stderr, stderr


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(("case", "name", "content", "line", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_file_one_line_and_exit_2(
    tmp_path: Path,
    command: str,
    case: str,
    name: str,
    content: Callable[[], bytes],
    line: int | None,
    words: str,
) -> None:
    f = tmp_path / name
    f.write_bytes(content())
    r = CliRunner().invoke(app, COMMANDS[command](f, tmp_path), env={"COLUMNS": "200"})
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2 and r.stdout == "", (r.exit_code, r.stdout)
    _one_error_line(r.stderr, f, line, words)
    assert not (tmp_path / "out").exists() and not (tmp_path / "f.png").exists()


# --- the real command, as a user runs it ---------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "fluidmargin")
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize(
    ("command", "case"),
    [
        ("replay", "gzip corrupted mid-file"),
        ("replay", "30-digit timestamp"),
        ("replay", "deep JSON"),
        ("replay", "year 2286"),
        ("evaluate", "gzip corrupted mid-file"),
        ("evaluate", "year 2286"),
    ],
)
def test_the_installed_command_fails_cleanly(tmp_path: Path, command: str, case: str) -> None:
    _, name, content, line, words = next(c for c in CASES if c[0] == case)
    f = tmp_path / name
    f.write_bytes(content())
    r = _cli(*COMMANDS[command](f, tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    _one_error_line(r.stderr, f, line, words)


# --- repeats and gaps in the summaries ----------------------------------------------------------------


def _with_repeat(src: Path, dest: Path, ts_ms: int) -> int:
    """``src`` (a header CSV, gz) written to ``dest`` with the row opening at ``ts_ms`` twice; its line."""
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    k = next(i for i, x in enumerate(lines) if x.startswith(f"{ts_ms},"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(gzip.compress(("\n".join([*lines[: k + 1], lines[k], *lines[k + 1 :]]) + "\n").encode()))
    return k + 2


GAP_START = "2021-04-25T02:00"  # the crash file's one gap: no candles 04:01..08:44 on 2021-04-25
REPEATED_MS = 1_619_319_600_000  # 2021-04-25T03:00Z


def test_replay_counts_a_repeated_row_of_a_real_file_and_reports_the_gap(prices_dir: Path, tmp_path: Path) -> None:
    src = prices_dir / CRASH_2021 / "BTC_USDT-1m.csv.gz"
    blemished = tmp_path / "rep" / "BTC_USDT-1m.csv.gz"
    line = _with_repeat(src, blemished, REPEATED_MS)
    opts = ["--accounts", "200", "--seed", "3", "--start", GAP_START, "--limit", "200", "--json"]
    r = _cli("replay", str(blemished), *opts, "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["candle_repeats_dropped"] == {"BTC": 1} and s["candle_repeat_lines"] == {"BTC": [line]}
    assert s["candle_gaps"] == {"BTC": 1} and s["candle_largest_gap_s"] == {"BTC": 17_040}  # 4 h 44 min missing
    assert s["candles"] == {"BTC": 200} and s["candle_time_unit"] == {"BTC": "ms"}
    # dropping the repeat replays exactly what the published file replays
    clean = CliRunner().invoke(app, ["replay", str(src), *opts, "--out", str(tmp_path / "b")])
    assert clean.exit_code == 0, clean.output
    c = json.loads(clean.stdout)
    assert c["state_hash"] == s["state_hash"] and c["candle_repeats_dropped"] == {"BTC": 0}


def test_evaluate_and_fit_jumps_report_repeats(prices_dir: Path, tmp_path: Path) -> None:
    src = prices_dir / CRASH_2021 / "BTC_USDT-1m.csv.gz"
    blemished = tmp_path / "rep" / "BTC_USDT-1m.csv.gz"
    line = _with_repeat(src, blemished, REPEATED_MS)
    ev = ["evaluate", str(blemished), "--start", GAP_START, "--limit", "180", "--accounts", "100"]
    ev += ["--configs", "binance", "--plot", str(tmp_path / "f.png")]
    table = CliRunner().invoke(app, ev, env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    words = " ".join(table.stdout.split())  # the caption may wrap
    assert f"BTC_USDT-1m.csv.gz: 1 identical repeat dropped (line {line}); 1 gap, the largest 4 h 44 min" in words
    js = CliRunner().invoke(app, [*ev, "--json"])
    assert js.exit_code == 0 and list(json.loads(js.stdout)) == ["binance"]
    assert "1 identical repeat dropped" in js.stderr
    fit = CliRunner().invoke(
        app, ["fit-jumps", str(blemished), "--start", "2021-04-24T12:00", "--limit", "3000", "--json"]
    )
    assert fit.exit_code == 0, fit.output
    got = json.loads(fit.stdout)[str(blemished)]
    assert got["repeats_dropped"] == 1 and got["gaps_dropped"] == 1


# --- files too short to use --------------------------------------------------------------------------


def test_files_too_short_to_fit(tmp_path: Path) -> None:
    one = tmp_path / "BTC_USDT-1m.csv"
    one.write_text(f"{HEADER}\n{T0},1,2,0.5,1.5,1\n")
    hourly = tmp_path / "ETH_USDT-1h.csv"
    hourly.write_text(f"{HEADER}\n{T0},1,2,0.5,1.5,1\n{T0 + 3_600_000},1.5,2,0.5,1.5,1\n")
    fit = CliRunner().invoke(app, ["fit-jumps", str(one)])
    assert fit.exit_code == 2 and fit.stderr == f"error: {one}: 1 candle(s): no returns to fit\n"
    for f in (one, hourly):  # nothing to score: a table of dashes, no warnings (they are errors here)
        r = CliRunner().invoke(app, ["walk-forward", str(f), "--json"])
        assert r.exit_code == 0 and r.stderr == "", (r.output, repr(r.exception))
        got = json.loads(r.stdout)[str(f)]
        assert got["har"]["scored_periods"] == 0 and "har_x" not in got and got["repeats_dropped"] == 0
