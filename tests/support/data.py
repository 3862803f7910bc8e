"""Paths to ../shared/data (read in place; a missing copy fails loudly) and URL helpers for the log fixtures."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
VECTORS = SHARED / "vectors"
PRICES = SHARED / "prices"


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; fails (never skips) when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"shared data missing: {p} (tests read ../shared/data beside the repository)")
    return p


def with_schema(url: str, schema: str) -> str:
    """The PostgreSQL URL with its ``schema`` query parameter set."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def drop_schema(server: str, url: str) -> None:
    import psycopg
    from psycopg import sql

    from fluidmargin.store.pg import parse_url

    schema = parse_url(url)[1]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
