"""``fluidmargin serve`` as a child process, for crash, limit and fairness tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ADMIN = "fm_crash-test-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``fluidmargin serve`` as a child process (snapshots every few hundred records)."""

    def __init__(self, db: str, work: Path) -> None:
        self.db, self.work = db, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.snapshots = work / "snapshots"
        keyfile = work / "admin.key"
        keyfile.write_text(ADMIN + "\n")
        self.cmd = [
            sys.executable,
            "-m",
            "fluidmargin",
            "serve",
            "--db",
            db,
            "--config",
            "waterfall",
            "--admin-key-file",
            str(keyfile),
            "--port",
            str(self.port),
            "--rate-limit",
            "0",
            "--snapshot-dir",
            str(self.snapshots),
            "--snapshot-every",
            "300",
            "--log-level",
            "warning",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.work / f"server-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.work)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"the server exited: {self.log_path.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        assert self.proc.returncode in (0, -signal.SIGTERM), self.log_path.read_text()[-3000:]
