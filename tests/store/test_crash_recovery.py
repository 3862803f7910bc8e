"""SIGKILL a real ingest process mid-run: every acknowledged seq survives and a restart converges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from fluidmargin.store import EventLog, list_snapshots
from fluidmargin.store.verify import verify_log

EVENTS, SEED, GROUP, SNAP_EVERY = 4000, 11, 100, 700
KILL_AFTER_SEQ = 2000  # past at least one snapshot, well before the end (about 6500 records)
# several processes share few cores: one numba thread each (the kernel's results do not depend on it)
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1"}


def ingest_cmd(log: Path, events: int = EVENTS) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fluidmargin.sim.ingest",
        "--log",
        str(log),
        "--events",
        str(events),
        "--seed",
        str(SEED),
        "--group-size",
        str(GROUP),
        "--snapshot-every",
        str(SNAP_EVERY),
    ]


def final_hash(stdout: str) -> str:
    lines = stdout.strip().splitlines()
    assert lines and lines[-1].startswith("HASH "), stdout[-500:]
    return lines[-1].split()[1]


def kill_and_read_acks(victim: subprocess.Popen[str]) -> list[int]:
    """Read ACK lines until one reaches KILL_AFTER_SEQ, then SIGKILL the process."""
    acked: list[int] = []
    assert victim.stdout is not None
    for line in victim.stdout:
        assert line.startswith("ACK "), f"ingest stopped before the kill: {line!r}"
        acked.append(int(line.split()[1]))
        if acked[-1] >= KILL_AFTER_SEQ:
            break
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    victim.stdout.close()
    return acked


def test_sigkill_mid_ingest_loses_no_acknowledged_record(tmp_path: Path) -> None:
    crashed, reference = tmp_path / "crashed.fmlog", tmp_path / "reference.fmlog"
    # the uninterrupted run goes alongside, in its own file
    ref = subprocess.Popen(ingest_cmd(reference), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    # the victim is asked for a far longer prefix of the same stream, so it is surely still running when
    # killed (however the machine schedules us); the restart below then completes the first EVENTS inputs
    victim = subprocess.Popen(
        ingest_cmd(crashed, 10**7), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV
    )
    try:
        acked = kill_and_read_acks(victim)
        ref_out, ref_err = ref.communicate(timeout=120)
    finally:
        for proc in (victim, ref):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert acked and acked == sorted(acked) and acked[-1] >= KILL_AFTER_SEQ
    assert ref.returncode == 0, ref_err

    # every acknowledged record is in the log, contiguous from seq 1; the log is still a valid log
    with EventLog.open(crashed, readonly=True) as log:
        last = log.last_seq()
        assert last >= acked[-1]
        assert log.count() == last
        seqs = {s for s, _ in log.read_dicts()}
        assert all(a in seqs for a in acked)
        inputs_before_restart = log.count(inputs_only=True)
        # the checkpoint may be older than the crash point; the log still verifies up to it and beyond
        rep = verify_log(log)
    assert inputs_before_restart < EVENTS
    assert rep["ok"] is True and rep["checkpoint_seq"] <= last, rep

    restart = subprocess.run(ingest_cmd(crashed), capture_output=True, text=True, timeout=120, env=ENV)
    assert restart.returncode == 0, restart.stderr
    resume = dict(kv.split("=") for kv in restart.stderr.split("RESUME ")[1].split())
    assert int(resume["inputs"]) == inputs_before_restart and int(resume["seq"]) == last
    assert resume["snapshot"] != "None"  # recovery went through a snapshot, then replayed the tail
    first_ack = int(restart.stdout.split()[1])
    assert first_ack > last  # it resumed after the crash point, nothing was re-logged
    assert final_hash(restart.stdout) == final_hash(ref_out)

    # the recovered log passes verify-log, from empty and from its latest snapshot
    snaps = crashed.with_name(crashed.name + ".snapshots")
    assert list_snapshots(snaps)
    with EventLog.open(crashed, readonly=True) as log:
        assert log.count(inputs_only=True) == EVENTS
    cli = str(Path(sys.executable).with_name("fluidmargin"))  # the installed console script
    p = subprocess.run(
        [cli, "verify-log", str(crashed), "--snapshots", str(snaps), "--expect-hash", final_hash(ref_out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    rep = orjson.loads(p.stdout.strip().splitlines()[-1])
    assert rep["ok"] is True and rep["inputs"] == EVENTS and rep["state_hash"] == final_hash(ref_out)
