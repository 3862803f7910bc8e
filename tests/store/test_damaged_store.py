"""A damaged store is refused with one clear line and a non-zero exit, by ``serve`` and by ``verify-log``.

``verify-log`` checks every table the service keeps in the store, not only the events it replays: a file
whose idempotency index SQLite calls malformed fails it, and on PostgreSQL an index row that points at the
wrong input does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from psycopg import sql

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue
from fluidmargin.store.backend import scheme_of, sqlite_path
from fluidmargin.store.pg import parse_url

CLI = [str(Path(sys.executable).with_name("fluidmargin"))]
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1"}
ADMIN = "fm_damaged-store-admin"
KEYED = 300  # keyed deposits: an idempotency index of a few pages


def fill_store(db: str, work: Path) -> None:
    """A store as the service leaves it: the log, keys, sub-accounts and an idempotency index."""
    cfg = dataclasses.replace(waterfall_venue(), backstop=BackstopSpec(withdrawal_delay_ns=1))
    s = ServiceSettings(db=db, config=cfg, snapshot_dir=work / "snapshots", admin_key=ADMIN)  # type: ignore[arg-type]
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with ServerThread(create_app(s)) as url, httpx.Client(base_url=url, headers=auth, timeout=60) as c:
        a = c.post("/v1/accounts", json={}).json()["account_id"]
        c.post(f"/v1/accounts/{a}/sub-accounts", json={}).raise_for_status()
        c.post("/v1/keys", json={"role": "venue"}).raise_for_status()
        for i in range(KEYED):
            r = c.post(f"/v1/accounts/{a}/deposits", json={"amount": "1"}, headers={"Idempotency-Key": f"k{i:04d}"})
            assert r.status_code == 200, r.text


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def serve(db: str, work: Path) -> subprocess.CompletedProcess[str]:
    (work / "admin.key").write_text(ADMIN + "\n")
    return run(
        "serve",
        "--db",
        db,
        "--admin-key-file",
        str(work / "admin.key"),
        "--port",
        "0",
        "--snapshot-dir",
        str(work / "no-snapshots"),  # recovery must read the whole log
        "--log-level",
        "warning",
    )


def assert_one_clear_line(p: subprocess.CompletedProcess[str], *words: str) -> None:
    """A non-zero exit, and stderr is one ``error: ...`` line naming the trouble, no traceback."""
    err = p.stderr.strip()
    assert p.returncode != 0, (p.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith("error: "), err
    for w in words:
        assert w in err, err


# --- SQLite: damage at the byte level ------------------------------------------------------------------


def _pages(path: Path) -> tuple[int, dict[str, int]]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        roots = {str(n): int(r) for n, r in conn.execute("SELECT name, rootpage FROM sqlite_master WHERE rootpage > 0")}
    return size, roots


def smash_page(path: Path, name: str) -> None:
    """Overwrite the root page of table or index ``name`` with garbage (the rest of the file is intact)."""
    size, roots = _pages(path)
    with open(path, "r+b") as f:
        f.seek((roots[name] - 1) * size)
        f.write(b"\xa5" * size)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("store")
    fill_store(f"sqlite://{work / 'events.db'}", work)
    return work / "events.db"


@pytest.fixture
def damaged(sqlite_store: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "events.db"
    copy.write_bytes(sqlite_store.read_bytes())
    yield copy


def test_an_intact_store_verifies(sqlite_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "events.db"
    copy.write_bytes(sqlite_store.read_bytes())
    p = run("verify-log", str(copy))
    assert p.returncode == 0, p.stderr[-3000:]
    rep = orjson.loads(p.stdout.strip().splitlines()[-1])
    assert rep["ok"] is True and rep["idempotency_keys"] == KEYED, rep


def test_verify_log_refuses_a_malformed_idempotency_index(damaged: Path) -> None:
    with contextlib.closing(sqlite3.connect(damaged)) as conn:
        index = next(n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'idempotency'"
                                                " AND type = 'index'"))  # fmt: skip
    smash_page(damaged, index)
    p = run("verify-log", str(damaged))
    assert_one_clear_line(p, str(damaged), "malformed")


def test_verify_log_refuses_a_malformed_key_table(damaged: Path) -> None:
    smash_page(damaged, "api_keys")
    assert_one_clear_line(run("verify-log", str(damaged)), str(damaged))


def test_serve_refuses_a_damaged_events_table(damaged: Path, tmp_path: Path) -> None:
    smash_page(damaged, "events")
    assert_one_clear_line(serve(str(damaged), tmp_path), str(damaged), "malformed")
    assert_one_clear_line(run("verify-log", str(damaged)), str(damaged), "malformed")


def test_serve_refuses_a_damaged_key_table(damaged: Path, tmp_path: Path) -> None:
    smash_page(damaged, "api_keys")
    assert_one_clear_line(serve(str(damaged), tmp_path), str(damaged))


def test_serve_refuses_a_truncated_store(damaged: Path, tmp_path: Path) -> None:
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    assert_one_clear_line(serve(str(damaged), tmp_path), str(damaged))
    assert_one_clear_line(run("verify-log", str(damaged)), str(damaged))


# --- PostgreSQL: the same tables, checked with queries ------------------------------------------------------


@pytest.fixture
def pg_store(pg_server_url: str, tmp_path: Path) -> Iterator[str]:
    from support.data import with_schema

    url = with_schema(pg_server_url, "fm_damaged_" + os.urandom(6).hex())
    fill_store(url, tmp_path)
    yield url
    with psycopg.connect(parse_url(url)[0], autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(parse_url(url)[1])))


def pg_exec(url: str, stmt: str) -> None:
    conninfo, schema = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(stmt.encode())


def test_postgres_store_checks(pg_store: str) -> None:
    assert scheme_of(pg_store) == "postgresql"
    env_url = {"FLUIDMARGIN_DB": pg_store}
    p = subprocess.run([*CLI, "verify-log"], capture_output=True, text=True, timeout=180, env={**ENV, **env_url})
    assert p.returncode == 0, p.stderr[-3000:]
    assert orjson.loads(p.stdout.strip().splitlines()[-1])["idempotency_keys"] == KEYED
    # an index row that points at another input: the index would answer a replay with the wrong records
    pg_exec(pg_store, "UPDATE idempotency SET seq = seq + 1 WHERE event_id = (SELECT MIN(event_id) FROM idempotency)")
    p = subprocess.run([*CLI, "verify-log"], capture_output=True, text=True, timeout=180, env={**ENV, **env_url})
    assert_one_clear_line(p, "idempotency")
    pg_exec(pg_store, "DROP TABLE api_keys CASCADE")
    p = subprocess.run([*CLI, "verify-log"], capture_output=True, text=True, timeout=180, env={**ENV, **env_url})
    assert_one_clear_line(p, "api_keys")


def test_sqlite_index_pointing_elsewhere_is_refused(damaged: Path) -> None:
    with contextlib.closing(sqlite3.connect(sqlite_path(str(damaged)), isolation_level=None)) as conn:
        conn.execute("UPDATE idempotency SET seq = seq + 1 WHERE event_id = (SELECT MIN(event_id) FROM idempotency)")
    assert_one_clear_line(run("verify-log", str(damaged)), "idempotency")
