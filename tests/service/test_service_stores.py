"""The HTTP API suite on both stores: SQLite (a file) and PostgreSQL (a schema on the test server).

The scenarios are :mod:`test_service_api`'s own test functions, re-run here against a server whose
``--db`` is a ``sqlite:///`` or ``postgresql://`` URL; then what only a store can show: the key registry
and the idempotency index live in the log's own store (no other local state but snapshots), and keys,
sub-accounts, state and Idempotency-Key replays survive a restart on either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_service_api as api_tests

from fluidmargin.model.config import BackstopSpec
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.storage import is_postgres
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.venues import waterfall_venue
from fluidmargin.store.backend import open_log
from fluidmargin.store.replay import replay
from support.data import drop_schema, with_schema
from support.service import ADMIN, Api, check_response

SERVICE_TABLES = {"api_keys", "key_accounts", "sub_accounts", "idempotency"}


def settings(db: str, workdir: Path, **kw: Any) -> ServiceSettings:
    # one publisher drives these scenarios: the venue opts in to single-source liquidation
    # (the quorum default is tested in test_service_oracle.py)
    venue = waterfall_venue(single_source_liquidation=True)
    cfg = dataclasses.replace(venue, backstop=BackstopSpec(withdrawal_delay_ns=1))
    kw.setdefault("admin_key", ADMIN)
    return ServiceSettings(db=db, config=cfg, snapshot_dir=workdir / "snapshots", **kw)  # type: ignore[arg-type]


def make_app(s: ServiceSettings, workdir: Path) -> Any:
    with contextlib.chdir(workdir):  # whatever the app makes relative to the working directory stays in workdir
        return create_app(s)


@contextlib.contextmanager
def running_at(db: str, workdir: Path) -> Iterator[Api]:
    """:func:`test_service_api.running`, on the store ``db``."""
    app = make_app(settings(db, workdir), workdir)
    with (
        ServerThread(app) as url,
        httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
            event_hooks={"response": [check_response]},
        ) as c,
    ):
        api = Api(app, c)
        api.keys["pub"] = api.key("publisher", source="test-feed")
        api.price("BTC", "50000")
        api.price("ETH", "3000")
        yield api


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store_api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One server per store for the scenarios that share one (as test_service_api's ``api`` fixture)."""
    work = tmp_path_factory.mktemp(f"api-{request.param}")
    if request.param == "sqlite":
        with running_at(f"sqlite://{work / 'events.db'}", work) as api:
            yield api
        return
    server = request.getfixturevalue("pg_server_url")
    url = with_schema(server, f"fm_api_{uuid.uuid4().hex[:16]}")
    try:
        with running_at(url, work) as api:
            yield api
    finally:
        drop_schema(server, url)


# --- test_service_api's scenarios on both stores -------------------------------------------------------

SHARED = [
    "test_account_view_matches_the_engine",
    "test_unknown_ids_are_404",
    "test_decimal_strings_round_trip",
    "test_what_if_changes_nothing_and_predicts_the_fill",
    "test_withdrawal_beyond_initial_margin_is_409",
    "test_idempotency_key_replays_the_first_outcome",
    "test_open_accounts_and_sub_accounts",
    "test_markets_oracle_funds_and_parameters",
    "test_healthz_and_metrics",
    "test_openapi_document_is_complete",
]
OWN_SERVER = [
    "test_liquidation_is_visible_after_a_price_crash",
    "test_auctions_list_and_bid",
    "test_vault_deposit_withdraw_claim",
]


@pytest.mark.parametrize("scenario", SHARED)
def test_api_scenario(store_api: Api, scenario: str) -> None:
    getattr(api_tests, scenario)(store_api)


def test_malformed_quantities_are_422(store_api: Api) -> None:
    (mark,) = [m for m in api_tests.test_malformed_quantities_are_422.pytestmark if m.name == "parametrize"]
    cases = mark.args[1]
    assert len(cases) >= 10
    for path, body, field in cases:
        api_tests.test_malformed_quantities_are_422(store_api, path, body, field)


@pytest.mark.parametrize("scenario", OWN_SERVER)
def test_api_scenario_on_a_server_of_its_own(
    log_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    monkeypatch.setattr(api_tests, "running", lambda tmp: running_at(log_url, tmp))
    getattr(api_tests, scenario)(tmp_path)


def test_every_api_scenario_runs_on_both_stores() -> None:
    """A scenario added to test_service_api must be listed here too."""
    names = {n for n in dir(api_tests) if n.startswith("test_")}
    assert names == {*SHARED, *OWN_SERVER, "test_malformed_quantities_are_422"}


# --- what lives in the store, and what survives a restart ----------------------------------------------


def store_tables(db: str) -> set[str]:
    if is_postgres(db):
        import psycopg

        from fluidmargin.store.pg import parse_url

        conninfo, schema = parse_url(db)
        with psycopg.connect(conninfo) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            ).fetchall()
        return {str(r[0]) for r in rows}
    path = Path(db.removeprefix("sqlite://"))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def store_sql(db: str, stmt: str) -> list[tuple[Any, ...]]:
    """Run one statement on the store's own tables (the SQLite file, or the PostgreSQL schema)."""
    if is_postgres(db):
        import psycopg
        from psycopg import sql

        from fluidmargin.store.pg import parse_url

        conninfo, schema = parse_url(db)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            cur = conn.execute(stmt.encode())
            return list(cur.fetchall()) if cur.description else []
    with contextlib.closing(sqlite3.connect(Path(db.removeprefix("sqlite://")), isolation_level=None)) as conn:
        return list(conn.execute(stmt).fetchall())


def test_keys_idempotency_and_state_survive_a_restart(log_url: str, tmp_path: Path) -> None:
    s = settings(log_url, tmp_path)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with ServerThread(make_app(s, tmp_path)) as url, httpx.Client(base_url=url, headers=auth, timeout=30) as c:
        assert c.post("/v1/prices", json={"asset": "BTC", "price": "50000"}).status_code == 200
        a = c.post("/v1/accounts", json={}).json()["account_id"]
        sub = c.post(f"/v1/accounts/{a}/sub-accounts", json={}).json()["account_id"]
        c.post(f"/v1/accounts/{a}/deposits", json={"amount": "1000"}).raise_for_status()
        own = c.post("/v1/keys", json={"role": "account", "account_ids": [a]}).json()["api_key"]
        venue = c.post("/v1/keys", json={"role": "venue"}).json()["api_key"]
        as_own, as_venue = {"Authorization": f"Bearer {own}"}, {"Authorization": f"Bearer {venue}"}
        firsts = []
        for i in range(5):
            r = c.post(  # an account key's write: a withdrawal request (deposits are the venue's to report)
                f"/v1/accounts/{a}/withdrawals",
                json={"amount": f"{i + 1}"},
                headers={**as_own, "Idempotency-Key": f"dep-{i}"},
            )
            assert r.status_code == 200, r.text
            firsts.append(r.json())
        fill = c.post(
            f"/v1/accounts/{a}/fills",
            json={"market": "BTC-PERP", "size": "0.01", "price": "50000"},
            headers={**as_venue, "Idempotency-Key": "fill-1"},
        ).json()
        refused = c.post(
            f"/v1/accounts/{a}/withdrawals", json={"amount": "999999"}, headers={**as_own, "Idempotency-Key": "w-1"}
        )
        assert refused.status_code == 409
        before = c.get(f"/v1/accounts/{a}").json()
    # everything is in the log's store: its tables, and (SQLite) no other file but the snapshots
    assert {"meta", "events"} | SERVICE_TABLES <= store_tables(log_url)
    if not is_postgres(log_url):
        files = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
        assert files <= {"events.db", "events.db-wal", "events.db-shm", "snapshots"}, files
    log = open_log(log_url, readonly=True)
    try:
        seq, hash_before = log.checkpoint()  # the clean stop's checkpoint: the state as it stopped
        assert seq == log.last_seq()
    finally:
        log.close()
    # the idempotency index loses the rows of the last two keyed writes (as a crash between the log's commit
    # and the index's would), and one older row (as if never written): the log still has every id
    assert len(store_sql(log_url, "SELECT event_id FROM idempotency WHERE fingerprint IS NOT NULL")) == 7
    store_sql(log_url, "DELETE FROM idempotency WHERE event_id LIKE '%:fill-1' OR event_id LIKE '%:w-1'")
    store_sql(log_url, "DELETE FROM idempotency WHERE event_id LIKE '%:dep-0'")

    app = make_app(dataclasses.replace(s, admin_key=None), tmp_path)  # the store alone knows the keys now
    with ServerThread(app) as url, httpx.Client(base_url=url, headers=as_own, timeout=30) as c:
        worker = app.state.svc.worker
        rebuilt = store_sql(log_url, "SELECT event_id, fingerprint FROM idempotency ORDER BY seq")
        assert [(e.split(":")[1], fp) for e, fp in rebuilt[-2:]] == [("fill-1", None), ("w-1", None)]
        assert worker.recovery["snapshot_seq"] == seq  # restored from the clean stop's snapshot
        assert worker.call(lambda e: e.state_hash()) == hash_before
        assert c.get(f"/v1/accounts/{a}").json() == before
        assert c.get(f"/v1/accounts/{sub}").json()["parent_id"] == a  # the sub-account link survived
        for i, first in enumerate(firsts):  # replays: the first outcome, nothing applied
            r = c.post(
                f"/v1/accounts/{a}/withdrawals", json={"amount": f"{i + 1}"}, headers={"Idempotency-Key": f"dep-{i}"}
            )
            assert r.status_code == 200 and r.json() == {
                **first,
                "durable_seq": r.json()["durable_seq"],
                "replayed": True,
            }
        again = c.post(
            f"/v1/accounts/{a}/fills",
            json={"market": "BTC-PERP", "size": "0.01", "price": "50000"},
            headers={**as_venue, "Idempotency-Key": "fill-1"},
        )
        assert again.json()["seq"] == fill["seq"] and again.json()["replayed"]
        r = c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "999999"}, headers={"Idempotency-Key": "w-1"})
        assert r.status_code == 409 and r.json() == refused.json()
        # the fingerprint survived the restart: the key reused for another request is refused ...
        r = c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "7"}, headers={"Idempotency-Key": "dep-3"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"], r.text
        # ... except where the index row was rebuilt from the log (the log has the id, not the request)
        r = c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "7"}, headers={"Idempotency-Key": "dep-0"})
        assert r.status_code == 200 and r.json()["seq"] == firsts[0]["seq"] and r.json()["replayed"]
        r = c.post(
            f"/v1/accounts/{a}/fills",
            json={"market": "BTC-PERP", "size": "0.02", "price": "50000"},
            headers={**as_venue, "Idempotency-Key": "fill-1"},
        )
        assert r.status_code == 200 and r.json()["seq"] == fill["seq"] and r.json()["replayed"]
        assert store_sql(log_url, "SELECT seq FROM idempotency WHERE event_id LIKE '%:dep-0'") == [(firsts[0]["seq"],)]
        assert c.get(f"/v1/accounts/{a}").json() == before
        assert worker.call(lambda e: e.state_hash()) == hash_before
        # and new writes go on
        r = c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1"}, headers={"Idempotency-Key": "dep-new"})
        assert r.status_code == 200 and not r.json()["replayed"] and r.json()["seq"] > seq
        assert c.get("/v1/keys").status_code == 403
        assert c.get("/v1/keys", headers=auth).status_code == 200  # registered in the store on the first start
        live = worker.call(lambda e: (e.seq, e.state_hash()))
    log = open_log(log_url, readonly=True)
    try:
        from fluidmargin.engine import Engine

        eng = Engine(log.config)
        replay(log, eng)
        assert (eng.seq, eng.state_hash()) == live  # the service's state is the log's replay
    finally:
        log.close()


def test_keys_of_the_old_separate_registry_file_are_brought_in(tmp_path: Path) -> None:
    from fluidmargin.service.auth import KeyRegistry

    legacy = KeyRegistry(tmp_path / "events.db.keys.sqlite")  # the old layout: a file of its own
    rec, secret = legacy.create("account", "old", account_ids=[7])
    legacy.link(8, 7)
    legacy.close()
    app = make_app(settings(f"sqlite://{tmp_path / 'events.db'}", tmp_path), tmp_path)
    keys = app.state.svc.keys
    try:
        got = keys.lookup(secret)
        assert got is not None and got.key_id == rec.key_id and got.account_ids == {7}
        assert keys.parent_of(8) == 7 and keys.lookup(ADMIN) is not None
        assert not (tmp_path / "events.db.keys.sqlite").exists()
        assert (tmp_path / "events.db.keys.sqlite.migrated").exists()
    finally:
        keys.close()
    assert "api_keys" in store_tables(f"sqlite://{tmp_path / 'events.db'}")
