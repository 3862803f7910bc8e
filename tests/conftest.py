"""Shared fixtures. Data in ../shared/data is read in place; a missing copy fails loudly."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.data import ROOT, shared_path, with_schema


@pytest.fixture
def vectors_dir() -> Path:
    return shared_path("vectors")


@pytest.fixture
def prices_dir() -> Path:
    return shared_path("prices")


# --- event log backends: SQLite file or PostgreSQL schema ------------------------------------------

PG_URL_ENV = "FLUIDMARGIN_TEST_PG_URL"


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The test PostgreSQL server's URL: $FLUIDMARGIN_TEST_PG_URL (``make test`` sets it from
    scripts/postgres.sh); when unset, scripts/postgres.sh is run here. Fails (never skips) without one."""
    url = os.environ.get(PG_URL_ENV)
    if url is None:
        script = ROOT / "scripts" / "postgres.sh"
        try:
            p = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.fail(f"PostgreSQL is needed: {PG_URL_ENV} is unset and {script} could not run: {e}")
        if p.returncode != 0 or not p.stdout.strip():
            pytest.fail(
                f"PostgreSQL is needed: {PG_URL_ENV} is unset and {script} failed (exit {p.returncode}):\n"
                + p.stderr[-3000:]
            )
        url = p.stdout.strip().splitlines()[-1]
    if not url.strip():
        pytest.fail(
            f"PostgreSQL is needed: {PG_URL_ENV} is empty (scripts/postgres.sh failed under `make test`; "
            "its error is printed above the test run; run it by hand to see why)"
        )
    return url.strip()


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh event-log URL per test: a SQLite file in tmp_path, or a new schema on the test PostgreSQL
    server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'events.db'}"
        return
    import psycopg  # a dependency of the postgres backend
    from psycopg import sql

    server = request.getfixturevalue("pg_server_url")
    schema = f"fm_test_{uuid.uuid4().hex[:16]}"
    try:
        psycopg.connect(server, connect_timeout=10).close()
    except psycopg.Error as e:
        pytest.fail(f"PostgreSQL is needed: cannot connect to {server} ({PG_URL_ENV}): {e}")
    yield with_schema(server, schema)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
