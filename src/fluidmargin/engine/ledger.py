"""The engine's exact state: account and position columns, market records, money ledgers, clock.

Owns the struct-of-arrays columns (accounts: ids, balances per collateral, status, margin mode, first
position, and their float shadow; positions: a linked list per account of exact int64 fields plus the
screen's float fields) and their growth, the market records, the money ledgers (fees, clearing,
socialised loss, deposits, withdrawals), the clock and input sequence, and :meth:`Ledger.savepoint`, the
one way to try a change on an account and roll it back. Every other room reads and writes state here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from fluidmargin.core.units import MAX_QUANTUMS
from fluidmargin.engine.types import Bucket, MarketRecord
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import CollateralAsset
from fluidmargin.risk.perp.kernels import ACCT_ERR, ACCT_HEALTH, ACCT_MM, ACCT_WIDTH, BAND_WIDTH

# the position columns: (name, dtype); the exact ones are hashed, snapshotted and saved by a savepoint
POS_FIELDS: tuple[tuple[str, type[np.generic]], ...] = (
    ("pos_acct", np.int64),
    ("pos_mkt", np.int16),
    ("pos_size", np.int64),
    ("pos_cost", np.int64),
    ("pos_fidx", np.int64),
    ("pos_iso", np.int8),
    ("pos_iso_margin", np.int64),
    ("pos_lev", np.int32),
    ("pos_next", np.int64),
    ("pos_status", np.int8),
    ("pos_c", np.float64),
    ("pos_e", np.float64),
    ("pos_mm", np.float64),
    ("pos_budget", np.float64),
)
EXACT_POS = (
    "pos_acct",
    "pos_mkt",
    "pos_size",
    "pos_cost",
    "pos_fidx",
    "pos_iso",
    "pos_iso_margin",
    "pos_lev",
    "pos_next",
    "pos_status",
)
ACCOUNT_FIELDS = ("acct_id", "bal", "status", "acct_mode", "first_pos", "acct_f", "coll_f")


class RowState(Protocol):
    """A component with per-account state of its own that a savepoint must roll back too."""

    def save_row(self, r: int) -> Any: ...

    def restore_row(self, r: int, saved: Any) -> None: ...


class Savepoint:
    """What :meth:`Ledger.savepoint` yields: call :meth:`commit` to keep the changes made inside."""

    __slots__ = ("committed",)

    def __init__(self) -> None:
        self.committed = False

    def commit(self) -> None:
        self.committed = True


class Ledger:
    """Exact state in int64 columns, the float shadow beside it, and the engine-wide context."""

    # account columns
    acct_id: np.ndarray
    bal: np.ndarray
    status: np.ndarray
    acct_mode: np.ndarray
    first_pos: np.ndarray
    acct_f: np.ndarray
    coll_f: np.ndarray
    acct_h: np.ndarray
    acct_mm: np.ndarray
    acct_err: np.ndarray
    # position columns (allocated from POS_FIELDS)
    pos_acct: np.ndarray
    pos_mkt: np.ndarray
    pos_size: np.ndarray
    pos_cost: np.ndarray
    pos_fidx: np.ndarray
    pos_iso: np.ndarray
    pos_iso_margin: np.ndarray
    pos_lev: np.ndarray
    pos_next: np.ndarray
    pos_status: np.ndarray
    pos_c: np.ndarray
    pos_e: np.ndarray
    pos_mm: np.ndarray
    pos_budget: np.ndarray
    pos_band: np.ndarray

    def __init__(self, config: EngineConfig, screen: str, capacity: int) -> None:
        self.cfg = config
        self.screen = screen  # "incremental" or "reference" (the twin: a full exact recompute)
        self.markets = [MarketRecord(i, m) for i, m in enumerate(config.markets)]
        self.market_idx = {m.spec.symbol: m for m in self.markets}
        self.coll: list[CollateralAsset] = list(config.collateral)
        self.coll_idx = {c.symbol: i for i, c in enumerate(self.coll)}
        self.quote_c = self.coll_idx[config.quote]
        assets = {m.base_asset for m in config.markets}
        for c in self.coll:
            if c.price_asset:
                assets.add(c.price_asset)
            if c.yield_spec:
                assets.add(c.yield_spec.base_asset)
        self.assets = sorted(assets)
        self.markets_of_asset = {a: [m for m in self.markets if m.spec.base_asset == a] for a in self.assets}
        self.coll_of_asset = {
            a: [
                i
                for i, c in enumerate(self.coll)
                if c.price_asset == a or (c.yield_spec and c.yield_spec.base_asset == a)
            ]
            for a in self.assets
        }
        # money ledgers (quote quantums unless per asset); the insurance funds live in the waterfall
        self.max_q = MAX_QUANTUMS // 4
        self.fees_q = 0
        self.clearing_q = 0  # counterparty of fills, liquidations at mark, and funding
        self.socialized_q = 0
        self.deposits = [0] * len(self.coll)
        self.withdrawals = [0] * len(self.coll)
        # time and sequence
        self.now_ns = 0
        self.seq = 0
        self.seen_ids: set[str] = set()  # every id ever accepted (an id is consumed even if its input was rejected)
        self.ids_acc = 0  # order-independent digest of seen_ids, so hashing does not walk the set
        # accounts and positions
        self.n_acc = 0
        self.row_of: dict[int, int] = {}
        self.alloc_accounts(capacity)
        self.n_pos = 0
        self.alloc_positions(capacity)
        self.row_states: list[RowState] = []  # rolled back with an account by a savepoint

    # --- storage --------------------------------------------------------------------------------

    def alloc_accounts(self, cap: int) -> None:
        nc = len(self.coll)
        self.acct_id = np.zeros(cap, dtype=np.int64)
        self.bal = np.zeros((cap, nc), dtype=np.int64)
        self.status = np.zeros(cap, dtype=np.int8)
        self.acct_mode = np.zeros(cap, dtype=np.int8)  # STANDARD, ISOLATED or PORTFOLIO
        self.first_pos = np.full(cap, -1, dtype=np.int64)
        # float shadow, one cache line per account: the ACCT_* columns of risk.perp.kernels, 2 spare
        self.acct_f = np.zeros((cap, ACCT_WIDTH), dtype=np.float64)
        self.coll_f = np.zeros((cap, nc), dtype=np.float64)
        self._views()

    def _views(self) -> None:
        self.acct_h = self.acct_f[:, ACCT_HEALTH]
        self.acct_mm = self.acct_f[:, ACCT_MM]
        self.acct_err = self.acct_f[:, ACCT_ERR]

    def grow_accounts(self) -> None:
        cap = len(self.acct_id) * 2
        for name in ACCOUNT_FIELDS:
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
            if name == "first_pos":
                new[:] = -1
            new[: len(old)] = old
            setattr(self, name, new)
        self._views()

    def alloc_positions(self, cap: int) -> None:
        for name, dt in POS_FIELDS:
            setattr(self, name, np.zeros(cap, dtype=dt))
        # price and funding-index band inside which a position's move stays within its budget (BAND_*)
        self.pos_band = np.zeros((cap, BAND_WIDTH), dtype=np.float64)

    def grow_positions(self) -> None:
        cap = len(self.pos_acct) * 2
        for name, dt in POS_FIELDS:
            old = getattr(self, name)
            new: np.ndarray = np.zeros(cap, dtype=dt)
            new[: len(old)] = old
            setattr(self, name, new)
        band = np.zeros((cap, BAND_WIDTH), dtype=np.float64)
        band[: len(self.pos_band)] = self.pos_band
        self.pos_band = band

    # --- accounts and positions -------------------------------------------------------------------

    def is_vault(self, account_id: int) -> bool:
        return self.cfg.backstop is not None and account_id == self.cfg.backstop.account_id

    def open_row(self, account_id: int) -> int:
        if self.n_acc == len(self.acct_id):
            self.grow_accounts()
        r = self.n_acc
        self.n_acc += 1
        self.row_of[account_id] = r
        self.acct_id[r] = account_id
        return r

    def vault_row(self) -> int:
        """The backstop vault's account row (opened on first use)."""
        assert self.cfg.backstop is not None
        r = self.row_of.get(self.cfg.backstop.account_id)
        return self.open_row(self.cfg.backstop.account_id) if r is None else r

    def positions_of(self, r: int) -> list[int]:
        out = []
        nxt = self.pos_next
        p = int(self.first_pos[r])
        while p >= 0:
            out.append(p)
            p = int(nxt[p])
        return out

    def find_pos(self, r: int, m: int) -> int:
        """Account row ``r``'s position slot in market index ``m`` (-1: none)."""
        p = int(self.first_pos[r])
        while p >= 0:
            if self.pos_mkt[p] == m:
                return p
            p = int(self.pos_next[p])
        return -1

    def new_pos(self, r: int, m: MarketRecord) -> int:
        """A new (empty) position slot of account row ``r`` in market ``m``, at the market's funding index."""
        if self.n_pos == len(self.pos_acct):
            self.grow_positions()
        p = self.n_pos
        self.n_pos += 1
        self.pos_acct[p] = r
        self.pos_mkt[p] = m.i
        self.pos_next[p] = self.first_pos[r]
        self.first_pos[r] = p
        self.pos_fidx[p] = m.fidx
        m.pending.append(p)
        return p

    def bucket_of(self, p: int) -> Bucket:
        """The bucket position ``p`` is margined in."""
        return Bucket(int(self.pos_acct[p]), p) if self.pos_iso[p] else Bucket(int(self.pos_acct[p]))

    def buckets_of(self, r: int) -> list[Bucket]:
        """Account row ``r``'s buckets: its cross bucket, then its open isolated positions."""
        out = [Bucket(r)]
        out.extend(Bucket(r, p) for p in self.positions_of(r) if self.pos_iso[p] and self.pos_size[p])
        return out

    def status_of(self, b: Bucket) -> int:
        return int(self.status[b.row]) if b.pos < 0 else int(self.pos_status[b.pos])

    # --- dry runs ------------------------------------------------------------------------------------

    @contextmanager
    def savepoint(self, r: int) -> Iterator[Savepoint]:
        """Try a change to account row ``r``: on exit everything it may touch is rolled back, unless the
        block called ``commit()`` on what this yields.

        Covered: the row's balances and positions (and positions opened meanwhile), the markets'
        pending slots and open interest, the money ledgers, and each registered :class:`RowState`
        (the waterfall's funds, orders and the row's cap use; the row's option positions).
        """
        ps = self.positions_of(r)
        bal = self.bal[r].copy()
        first = int(self.first_pos[r])
        n_pos = self.n_pos
        pos = {p: tuple(getattr(self, f)[p] for f in EXACT_POS) for p in ps}
        pending = [len(m.pending) for m in self.markets]
        oi = [m.long_oi_base_q for m in self.markets]
        money = (self.clearing_q, self.fees_q, self.socialized_q)
        parts = [(x, x.save_row(r)) for x in self.row_states]
        sp = Savepoint()
        try:
            yield sp
        finally:
            if not sp.committed:
                self.bal[r] = bal
                self.first_pos[r] = first
                for p in range(n_pos, self.n_pos):
                    for f in EXACT_POS:
                        getattr(self, f)[p] = 0
                self.n_pos = n_pos
                for p, vals in pos.items():
                    for f, v in zip(EXACT_POS, vals, strict=True):
                        getattr(self, f)[p] = v
                for m in self.markets:
                    del m.pending[pending[m.i] :]
                    m.long_oi_base_q = oi[m.i]
                self.clearing_q, self.fees_q, self.socialized_q = money
                for x, saved in parts:
                    x.restore_row(r, saved)
