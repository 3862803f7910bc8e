"""SIGKILL in the middle of `fluidmargin replay --log`, restart: nothing acknowledged is lost and the
final state hash equals an uninterrupted run's. A real subprocess, a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fluidmargin.store import EventLog
from support.data import shared_path

CRASH = ("binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19", "BTC_USDT-1m.csv.gz")


def _cmd(data: Path, log: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fluidmargin",
        "replay",
        str(data),
        "--accounts",
        "3000",
        "--seed",
        "11",
        "--limit",
        "5000",
        "--log",
        str(log),
        "--out",
        str(out),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "NUMBA_NUM_THREADS": "1"}


def test_sigkill_mid_replay_loses_no_acknowledged_event(tmp_path: Path) -> None:
    data = shared_path("prices", *CRASH)
    # the uninterrupted run
    full = subprocess.run(
        _cmd(data, tmp_path / "full.db", tmp_path / "full", "--json"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=True,
    )
    want = json.loads(full.stdout.strip().splitlines()[-1])["state_hash"]

    # the same run, killed after a few acknowledgements
    log = tmp_path / "crash.db"
    proc = subprocess.Popen(
        _cmd(data, log, tmp_path / "crash", "--ack"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    acked: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ACK "):
            acked.append(int(line.split()[1]))
        if len(acked) >= 4:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the replay finished before it could be killed"
    assert acked == sorted(acked)

    # every acknowledged record is in the log, with no gap
    el = EventLog.open(log)
    seqs = [seq for seq, _e in el.read()]
    el.close()
    assert seqs[: acked[-1]] == list(range(1, acked[-1] + 1))
    assert len(seqs) < 20_000  # it really was cut short (the full run writes more)

    # restart: resumes where the durable log ends and reaches the same state
    again = subprocess.run(
        _cmd(data, log, tmp_path / "crash", "--json"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=True,
    )
    got = json.loads(again.stdout.strip().splitlines()[-1])
    assert got["inputs_skipped"] > 0
    assert got["state_hash"] == want
    verify = subprocess.run(
        [sys.executable, "-m", "fluidmargin", "verify-log", str(log), "--expect-hash", want],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
