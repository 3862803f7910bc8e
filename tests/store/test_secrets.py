"""Database passwords stay out of messages and out of the process list.

* ``redact`` hides a password however the URL spells it (reserved characters, ``?password=``), as libpq
  reads the URL (psycopg's own conninfo parser), and a URL libpq would misread is refused with a message
  that does not show it;
* ``serve`` and ``verify-log`` take the URL from ``$FLUIDMARGIN_DB`` or ``--db-file PATH`` as well as the
  command line, and ``serve --help`` says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.store import open_log
from fluidmargin.store.backend import describe
from fluidmargin.store.pg import parse_url, redact
from fluidmargin.store.records import LogFormatError

CLI = [str(Path(sys.executable).with_name("fluidmargin"))]
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1"}
ENV.pop("FLUIDMARGIN_DB", None)


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("postgresql://alice:p#ss@db/x", "p#ss", "postgresql://alice:***@db/x"),
        ("postgresql://alice:p/ss@db/x", "p/ss", "postgresql://alice:***@db/x"),
        ("postgresql://alice:p@ss@db/x", "p@ss", "postgresql://alice:***@db/x"),
        ("postgresql://alice:p?ss@db/x?schema=s", "p?ss", "postgresql://alice:***@db/x?schema=s"),
        ("postgresql://alice@db/x?password=s3cret", "s3cret", "postgresql://alice@db/x?password=***"),
        ("postgresql://alice@db/x?sslmode=disable&PassWord=s3cret&schema=s", "s3cret", None),
        ("postgres://u:secret@h:1/db?schema=s", "secret", "postgres://u:***@h:1/db?schema=s"),
        ("postgresql://u:pw%2Fx@h1:1,h2:2/db", "pw%2Fx", "postgresql://u:***@h1:1,h2:2/db"),
    ],
)
def test_redact_hides_the_password(url: str, secret: str, shown: str | None) -> None:
    out = redact(url)
    assert secret not in out and "***" in out, out
    if shown is not None:
        assert out == shown
    assert secret not in describe(url)


def test_urls_are_read_as_libpq_reads_them() -> None:
    conninfo, schema = parse_url("postgresql://alice:p#ss@db/x?schema=fm_a&connect_timeout=5")
    assert schema == "fm_a"
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(conninfo)
    assert (d["user"], d["password"], d["host"], d["dbname"], d["connect_timeout"]) == ("alice", "p#ss", "db", "x", "5")
    conninfo, _ = parse_url("postgresql://alice@db/x?password=s%3Fcret&schema=fm_b")
    assert conninfo_to_dict(conninfo)["password"] == "s?cret"
    # a '/' or '@' in the password makes libpq read another host, port or database: refused, not shown
    for url, secret in (("postgresql://alice:s3cr/et@db/x", "s3cr"), ("postgresql://alice:s3cr@et@db/x", "s3cr")):
        with pytest.raises(ValidationError, match="percent-encode") as info:
            parse_url(url)
        assert secret not in str(info.value)


def test_connection_errors_do_not_show_the_password(pg_server_url: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(pg_server_url)
    secret = "Wr0ng#pa/ss"
    url = f"postgresql://{d['user']}:{quote(secret, safe='')}@{d['host']}:{d['port']}/{d['dbname']}?schema=fm_x"
    with pytest.raises(LogFormatError, match="cannot connect") as info:
        open_log(url)
    msg = str(info.value)
    assert secret not in msg and quote(secret, safe="") not in msg and "***" in msg


# --- the URL outside the command line ----------------------------------------------------------------------


def test_serve_help_documents_the_safe_ways() -> None:
    p = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "--db-file" in text and "FLUIDMARGIN_DB" in text


def test_serve_reads_the_url_from_the_environment_or_a_file(pg_server_url: str, tmp_path: Path) -> None:
    from support.data import with_schema
    from support.server import ADMIN, Server

    url = with_schema(pg_server_url, "fm_secret_" + os.urandom(6).hex())
    password = parse_url(url)[0].split("@")[0].rsplit(":", 1)[1]
    urlfile = tmp_path / "db.url"
    urlfile.write_text(url + "\n")
    try:
        for how in ("env", "file"):
            server = Server(url, tmp_path)
            i = server.cmd.index("--db")
            del server.cmd[i : i + 2]
            env = dict(ENV)
            if how == "env":
                env["FLUIDMARGIN_DB"] = url
            else:
                server.cmd += ["--db-file", str(urlfile)]
            with open(server.work / f"server-{how}.log", "wb") as out:
                server.proc = subprocess.Popen(server.cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
            try:
                _wait_healthy(server)
                cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                assert url not in cmdline and f":{password}@" not in cmdline, cmdline
                r = httpx.post(
                    server.url + "/v1/accounts", json={}, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
                )
                assert r.status_code == 201, r.text
            finally:
                server.stop()
        # verify-log reads the same two ways
        for extra, env in (([], {**ENV, "FLUIDMARGIN_DB": url}), (["--db-file", str(urlfile)], ENV)):
            p = subprocess.run([*CLI, "verify-log", *extra], capture_output=True, text=True, timeout=120, env=env)
            assert p.returncode == 0, p.stderr[-2000:]
            assert orjson.loads(p.stdout.strip().splitlines()[-1])["ok"] is True
    finally:
        from support.data import drop_schema

        drop_schema(pg_server_url, url)


def _wait_healthy(server: object) -> None:
    import time

    proc, base = server.proc, server.url  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.05)


def test_the_url_must_come_from_exactly_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fluidmargin.store.backend import DB_ENV, target_from

    monkeypatch.delenv(DB_ENV, raising=False)
    urlfile = tmp_path / "db.url"
    urlfile.write_text("\n  postgresql://u@h/db?schema=s  \n")
    assert target_from(None, urlfile) == "postgresql://u@h/db?schema=s"
    with pytest.raises(ValidationError, match="only one of"):
        target_from("a.db", urlfile)
    (tmp_path / "empty.url").write_text("\n")
    with pytest.raises(ValidationError, match="empty"):
        target_from(None, tmp_path / "empty.url")
    with pytest.raises(ValidationError, match="cannot read"):
        target_from(None, tmp_path / "missing.url")
    monkeypatch.setenv(DB_ENV, "sqlite:///from/env.db")
    assert target_from(None, None) == "sqlite:///from/env.db"
    assert target_from("given.db", None) == "given.db"  # the command line first
    assert target_from(None, urlfile) == "postgresql://u@h/db?schema=s"
    # and through the command: no store anywhere is one clear line
    p = subprocess.run([*CLI, "verify-log"], capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and DB_ENV in p.stderr, p.stderr
