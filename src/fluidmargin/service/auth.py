"""API keys, roles, account scopes and per-key rate limits.

Keys are random (``fm_`` + 43 url-safe characters), shown once when created and stored only as
their SHA-256, in a key registry: tables in the event log's own store (the SQLite file, or the
PostgreSQL schema; see :mod:`fluidmargin.service.storage`). The same tables hold the sub-account
links (child -> parent); the engine knows nothing of sub-accounts.

Roles (:mod:`fluidmargin.service.roles`): ``admin`` (everything; creates keys), ``venue`` (the venue's
matching engine and custody: opens accounts, posts fills, reports deposits and withdrawals, reads any
account, never prices), ``account`` (its own accounts and their sub-accounts only; it may ask for a
withdrawal, never credit itself), ``publisher`` (only publishes prices, under the source name of its key).
README.md's "Roles" table is the whole model; tests/service/test_service_auth.py checks the server against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator

from fluidmargin.service.codec import canonical_int
from fluidmargin.service.roles import ACCOUNT, ADMIN, PUBLISHERS, ROLES, SEE_ALL
from fluidmargin.service.storage import ServiceTables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    source TEXT,
    created_ns BIGINT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    rate_per_s DOUBLE PRECISION,
    burst BIGINT
);
CREATE TABLE IF NOT EXISTS key_accounts (
    key_id TEXT NOT NULL REFERENCES api_keys(key_id),
    account_id BIGINT NOT NULL,
    PRIMARY KEY (key_id, account_id)
);
CREATE TABLE IF NOT EXISTS sub_accounts (
    account_id BIGINT PRIMARY KEY,
    parent_id BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sub_accounts_parent ON sub_accounts (parent_id)
"""
MAX_DEPTH = 8  # sub-accounts of sub-accounts: how far a scope reaches down
# a path's account id: canonical digits only ("01", "+1", " 1", "1.0", "1_0" are 422s)
AccountPath = Annotated[
    int, Path(ge=0, le=2**63 - 1, description="engine account id (decimal digits)"), BeforeValidator(canonical_int)
]  # (the validator after Path: FastAPI then documents ge/le as minimum/maximum)


class LastAdminKey(ValueError):
    """Revoking this key would leave no active admin key."""


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return "fm_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    role: str
    name: str
    account_ids: frozenset[int]
    source: str | None
    created_ns: int
    revoked: bool
    rate_per_s: float | None
    burst: int | None


class KeyRegistry:
    """The key and sub-account registry (durable in the log's store; cached in memory, written through).

    ``target``: the store, a SQLite path or ``sqlite:`` URL, or a ``postgresql://`` URL (its schema).
    """

    def __init__(self, target: str | FilePath) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._db = ServiceTables(target, durable=True)
        try:
            self._db.script(_SCHEMA)
        except BaseException:
            self._db.close()
            raise
        self.path = self._db.where
        self._migrate_legacy_file()
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._parent: dict[int, int] = {}
        self._load()

    def _load(self) -> None:
        accts: dict[str, set[int]] = {}
        for kid, aid in self._db.execute("SELECT key_id, account_id FROM key_accounts"):
            accts.setdefault(kid, set()).add(int(aid))
        rows = self._db.execute(
            "SELECT key_id, key_hash, role, name, source, created_ns, revoked, rate_per_s, burst FROM api_keys"
        )
        for kid, h, role, name, source, created, revoked, rate, burst in rows:
            rec = KeyRecord(
                kid,
                role,
                name,
                frozenset(accts.get(kid, ())),
                source,
                int(created),
                bool(revoked),
                None if rate is None else float(rate),
                None if burst is None else int(burst),
            )
            self._by_hash[h] = rec
            self._by_id[kid] = rec
        self._parent = {int(a): int(p) for a, p in self._db.execute("SELECT account_id, parent_id FROM sub_accounts")}

    def _migrate_legacy_file(self) -> None:
        """Bring in the keys of a registry kept in its own file (``<log>.keys.sqlite``, the old layout), once."""
        if self._db.postgres:
            return
        legacy = FilePath(self.path).with_name(FilePath(self.path).name + ".keys.sqlite")
        if not legacy.is_file() or self._db.execute("SELECT COUNT(*) FROM api_keys")[0][0]:
            return
        import sqlite3

        tables = {
            "api_keys": "key_id, key_hash, role, name, source, created_ns, revoked, rate_per_s, burst",
            "key_accounts": "key_id, account_id",
            "sub_accounts": "account_id, parent_id",
        }
        conn = sqlite3.connect(legacy)
        try:
            rows = {t: conn.execute(f"SELECT {cols} FROM {t}").fetchall() for t, cols in tables.items()}
        finally:
            conn.close()  # the last connection: its WAL is folded into the file
        with self._db.transaction():
            for t, cols in tables.items():
                marks = ", ".join("?" * len(cols.split(", ")))
                self._db.executemany(f"INSERT INTO {t} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows[t])
        legacy.rename(legacy.with_name(legacy.name + ".migrated"))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- keys -----------------------------------------------------------------------------------

    def _insert(self, secret: str, role: str, name: str, account_ids: Iterable[int], source: str | None,
                rate_per_s: float | None, burst: int | None) -> KeyRecord:  # fmt: skip
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        rec = KeyRecord(
            secrets.token_hex(8), role, name, frozenset(account_ids), source, time.time_ns(), False, rate_per_s, burst
        )
        h = hash_key(secret)
        with self._lock:
            with self._db.transaction():
                self._db.execute(
                    "INSERT INTO api_keys (key_id, key_hash, role, name, source, created_ns, rate_per_s, burst)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.key_id, h, role, name, source, rec.created_ns, rate_per_s, burst),
                )
                self._db.executemany(
                    "INSERT INTO key_accounts (key_id, account_id) VALUES (?, ?)",
                    [(rec.key_id, a) for a in sorted(rec.account_ids)],
                )
            self._by_hash[h] = rec
            self._by_id[rec.key_id] = rec
        return rec

    def create(
        self,
        role: str,
        name: str = "",
        account_ids: Iterable[int] = (),
        source: str | None = None,
        rate_per_s: float | None = None,
        burst: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key: (its record, the secret, which is never stored and cannot be shown again)."""
        secret = new_secret()
        return self._insert(secret, role, name, account_ids, source, rate_per_s, burst), secret

    def ensure_admin(self, secret: str, name: str = "admin") -> KeyRecord:
        """Register ``secret`` (the admin key file's) as an admin key unless it already is one.

        A revoked admin key stays revoked (the record is returned, ``revoked`` set): the service starts
        without it, on the admin keys made since; a new key file makes a new admin key."""
        rec = self._by_hash.get(hash_key(secret))
        if rec is not None:
            if rec.role != ADMIN:
                raise ValueError(f"the admin key file holds a {rec.role} key, not an admin key")
            return rec
        return self._insert(secret, ADMIN, name, (), None, None, None)

    def lookup(self, secret: str) -> KeyRecord | None:
        rec = self._by_hash.get(hash_key(secret))
        return None if rec is None or rec.revoked else rec

    def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    def all_keys(self) -> list[KeyRecord]:
        return sorted(self._by_id.values(), key=lambda r: (r.created_ns, r.key_id))

    def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke a key (None: unknown); :class:`LastAdminKey` for the last active admin key."""
        with self._lock:
            rec = self._by_id.get(key_id)
            if rec is None:
                return None
            others = (r for r in self._by_id.values() if r.key_id != key_id)
            if rec.role == ADMIN and not rec.revoked and not any(r.role == ADMIN and not r.revoked for r in others):
                raise LastAdminKey("the last active admin key cannot be revoked: create another admin key first")
            self._db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,))
            new = dataclasses.replace(rec, revoked=True)
            self._by_id[key_id] = new
            for h, r in self._by_hash.items():
                if r.key_id == key_id:
                    self._by_hash[h] = new
            return new

    # --- sub-accounts ---------------------------------------------------------------------------

    def link(self, child: int, parent: int) -> None:
        """Record ``child`` as a sub-account of ``parent`` (idempotent)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO sub_accounts (account_id, parent_id) VALUES (?, ?) ON CONFLICT (account_id) DO NOTHING",
                (child, parent),
            )
            self._parent.setdefault(child, parent)

    def parent_of(self, account_id: int) -> int | None:
        return self._parent.get(account_id)

    def children_of(self, account_id: int) -> list[int]:
        with self._lock:  # read from the engine worker's thread too
            return sorted(a for a, p in self._parent.items() if p == account_id)

    def tree_size(self, account_id: int) -> int:
        """How many sub-accounts (at any depth) the top-level account above ``account_id`` holds."""
        with self._lock:
            top = [account_id, *self.ancestors(account_id)][-1]
            return sum(1 for a in self._parent if top in self.ancestors(a))

    def ancestors(self, account_id: int) -> list[int]:
        out = []
        a: int | None = account_id
        for _ in range(MAX_DEPTH):
            a = self._parent.get(a) if a is not None else None
            if a is None:
                break
            out.append(a)
        return out


# --- rate limits ----------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: ``rate`` requests/s on average, bursts up to ``burst``."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, rate: float | None = None, burst: int | None = None) -> float:
        """0 if the request may go, else the seconds until a token is there (for Retry-After)."""
        rate = self.rate if rate is None else rate
        cap = float(self.burst if burst is None else burst)
        if rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (cap, now))
            tokens = min(cap, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate


# --- FastAPI dependencies -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    key: KeyRecord
    registry: KeyRegistry

    @property
    def role(self) -> str:
        return self.key.role

    @property
    def source(self) -> str:
        """The source prices and vols published with this key carry: the key's own, or ``admin:<key id>``
        for an admin key without one; empty when it has none (the key may not publish)."""
        return self.key.source or (f"admin:{self.key.key_id}" if self.role == ADMIN else "")

    def check_role(self, roles: tuple[str, ...]) -> None:
        """403 unless this key holds one of ``roles``."""
        if self.role not in roles:
            raise HTTPException(403, f"the {self.role} role may not use this endpoint")

    def may_touch(self, account_id: int) -> bool:
        if self.role in SEE_ALL:
            return True
        if self.role != ACCOUNT:
            return False
        scope = self.key.account_ids
        return account_id in scope or any(a in scope for a in self.registry.ancestors(account_id))

    def may_see_all(self, account_ids: Iterable[int]) -> bool:
        """Whether this key may see what concerns every one of ``account_ids``."""
        return self.role in SEE_ALL or (self.role == ACCOUNT and all(self.may_touch(i) for i in account_ids))

    def sees(self, event: dict[str, Any]) -> bool:
        """Whether this key may see a wire event: admin and venue all; an account key those of its own
        accounts (and events of no account); a publisher only events of no account."""
        if self.role in SEE_ALL:
            return True
        ids = event_account_ids(event)
        return not ids or self.may_see_all(ids)

    def check_account(self, account_id: int) -> None:
        """403 unless this key may act on ``account_id`` (its own, or a sub-account of its own)."""
        if not self.may_touch(account_id):
            raise HTTPException(403, f"this key may not act on account {account_id}")


def event_account_ids(event: dict[str, Any]) -> list[int]:
    """The accounts a wire event names (``-1``, no account, left out)."""
    out: list[int] = []
    for f in ("account_id", "account_ids", "bankrupt_account_id"):
        v = event.get(f)
        if isinstance(v, list):
            out.extend(i for i in v if isinstance(i, int) and i >= 0)
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            out.append(v)
    return out


bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer fm_...`")


async def authenticate(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """401 without a valid key, 429 beyond the key's rate. (Dependencies are ``async``: FastAPI runs plain
    functions in a thread pool, a thread hop per request.)"""
    svc: Any = request.app.state.svc
    if creds is None or not creds.credentials:
        raise HTTPException(401, "missing API key", headers={"WWW-Authenticate": "Bearer"})
    rec = svc.keys.lookup(creds.credentials)
    if rec is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    wait = svc.limiter.take(rec.key_id, rec.rate_per_s, rec.burst)
    if wait:
        raise HTTPException(
            429, "rate limit exceeded for this key", headers={"Retry-After": str(max(1, math.ceil(wait)))}
        )
    p = Principal(rec, svc.keys)
    request.state.principal = p
    return p


def require(*roles: str) -> Any:
    """A dependency: the caller, who must hold one of ``roles`` (else 403)."""

    async def dep(p: Annotated[Principal, Depends(authenticate)]) -> Principal:
        p.check_role(roles)
        return p

    return Depends(dep)


def require_account(*roles: str) -> Any:
    """A dependency: the caller, holding one of ``roles`` and allowed to touch the path's ``account_id``.

    Checked before the body is judged, so a key learns nothing about another account's requests.
    """

    async def dep(account_id: AccountPath, p: Annotated[Principal, Depends(authenticate)]) -> Principal:
        p.check_role(roles)
        p.check_account(account_id)
        return p

    return Depends(dep)


# the role checks several routers share
ANYONE = require(*ROLES)
ADMINS = require(ADMIN)
PUBLISHING = require(*PUBLISHERS)
