"""The margin engine: a deterministic state machine over an ordered stream of input events.

State is struct-of-arrays in exact int64 columns (balances, sizes, costs, funding indices); a
float64 shadow of each bucket's health is kept current by :func:`risk.kernels.remargin_market`
and only ever used to decide which buckets to re-check exactly. Nothing changes state on a float.

``screen="reference"`` swaps the incremental screen for a plain full exact recompute of every
exposed bucket: the twin the property tests compare against (same events, same state hash).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fluidmargin.core.errors import InvariantViolation, ValidationError
from fluidmargin.core.units import (
    FUNDING_SCALE,
    MAX_QUANTUMS,
    NS_PER_S,
    PPM,
    PRICE_DECIMALS,
    QUOTE_DECIMALS,
    QUOTE_SCALE,
    Rounding,
    div_round,
    parse_decimal,
)
from fluidmargin.engine import liquidation as liq
from fluidmargin.engine import options as opt
from fluidmargin.engine import waterfall as wfl
from fluidmargin.engine.state import AT_RISK, BANKRUPT, HEALTHY, LIQUIDATING, STATUS_NAMES, transition
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import CollateralAsset, PerpetualMarket
from fluidmargin.risk.liquidation import breaker
from fluidmargin.risk.perp import funding as fnd
from fluidmargin.risk.perp import kernels, margin
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.risk.stats import gap

YEAR_NS = 365 * 24 * 3600 * NS_PER_S
MANUAL_HALT = "operator:"
DIVERGENCE_HALT = "oracle sources diverge:"  # the automatic halts: sources set aside for divergence ...
RANGE_HALT = "price range"  # ... and the range breaker (risk.breaker.range_halt's reason)
# oracle policy fields an operator may change: per market (``oracle.<name>``: the policy of its base
# asset) or venue-wide (``default_oracle.<name>``)
ORACLE_PARAMETERS = (
    "max_staleness_ns",
    "max_jump_ppm",
    "min_confidence_ppm",
    "max_divergence_ppm",
    "min_sources",
    "min_sources_liquidation",
    "single_source_liquidation",
    "jump_window_ns",
    "reanchor_prints",
    "reanchor_after_ns",
    "reanchor_tolerance_ppm",
    "divergence_halt_ns",
)
ISO_BUCKET = "isolated:"


class Bucket(NamedTuple):
    """A margin bucket: an account's cross margin (pos = -1) or one isolated position."""

    row: int
    pos: int = -1


@dataclass(slots=True)
class BucketRisk:
    equity_quote_q: int
    mm_quote_q: int

    @property
    def health_quote_q(self) -> int:
        return self.equity_quote_q - self.mm_quote_q


class _Market:
    """Mutable per-market state plus the constants the kernel needs."""

    def __init__(self, i: int, spec: PerpetualMarket) -> None:
        self.i = i
        self.spec = spec
        self.mark_q: int | None = None
        self.last_trade_q: int | None = None
        self.fidx = 0
        self.fidx_ts_ns: int | None = None
        self.fidx_rem = 0  # remainder of the index accrual, carried so small steps lose nothing
        self.rate_e9 = 0
        self.long_oi_base_q = 0
        self.col = np.zeros(0, dtype=np.int64)
        self.pending: list[int] = []
        self.set_spec(spec)

    def set_spec(self, spec: PerpetualMarket) -> None:
        """Take ``spec`` and derive the screen's constants from it (at start, and after a parameter change)."""
        self.spec = spec
        mdl = spec.margin
        self.floors = np.array([b.floor_quote_q for b in mdl.brackets], dtype=np.float64)
        self.rates = np.array([b.mmr_ppm / PPM for b in mdl.brackets], dtype=np.float64)
        self.rates += np.array([mdl.close_fee_ppm / PPM] * len(mdl.brackets))
        self.cums = np.array([b.cum_quote_q for b in mdl.brackets], dtype=np.float64)
        disc = 0
        bs = mdl.brackets
        for j in range(1, len(bs)):
            # MM jump at floor_j between bracket j-1 and j (0 when the table is continuous)
            left = bs[j].floor_quote_q * bs[j - 1].mmr_ppm / PPM - bs[j - 1].cum_quote_q
            right = bs[j].floor_quote_q * bs[j].mmr_ppm / PPM - bs[j].cum_quote_q
            disc = max(disc, int(abs(left - right)) + 2)
        self.disc_q = float(disc)
        self.drift_imf = float(mdl.sqrt_imf_factor_ppm)
        self.drift_k = 10.0 ** (9 - spec.size_decimals)
        shift = spec.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
        self.kv = 10.0 ** (-shift)
        self.kf = QUOTE_SCALE / (10.0**spec.size_decimals * FUNDING_SCALE)

    def consts(self) -> tuple[Any, ...]:
        """The market's screen constants, in the kernel's argument order (kv .. drift_k)."""
        return (self.kv, self.kf, self.floors, self.rates, self.cums, self.disc_q, self.drift_imf, self.drift_k)

    def column(self) -> np.ndarray:
        if self.pending:
            self.col = np.concatenate([self.col, np.array(self.pending, dtype=np.int64)])
            self.pending.clear()
        return self.col


class Engine:
    """Apply input events in order; every call returns the output events it caused."""

    # position columns (allocated by _alloc_positions from _POS_FIELDS)
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

    def __init__(self, config: EngineConfig, screen: str = "incremental", capacity: int = 1024) -> None:
        if screen not in ("incremental", "reference"):
            raise ValueError("screen must be 'incremental' or 'reference'")
        gap.check_config(config)
        self.cfg = config
        self.screen = screen
        self.markets = [_Market(i, m) for i, m in enumerate(config.markets)]
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
        # oracle state
        self.src_last: dict[tuple[str, str], tuple[int, int]] = {}
        self.index_q: dict[str, int] = {}
        self.index_ts: dict[str, int] = {}
        # index samples within the breaker's and the jump limit's windows (kept with the breaker off too)
        self.index_hist: dict[str, list[tuple[int, int]]] = {}
        self.index_n: dict[str, int] = {}  # sources the index agrees with (liquidation needs a quorum)
        self.reanchor: dict[str, orc.Pending] = {}  # a level refused as a jump, pending re-anchoring
        self.anchor_ts: dict[str, int] = {}  # source prints before the last re-anchor no longer count
        self.diverged: dict[str, int] = {}  # asset -> since when a source is set aside for divergence
        self.halted: dict[str, str] = {}  # market -> why its circuit breaker stopped new risk
        # ledgers (quote quantums unless per asset); the insurance funds live in the waterfall
        self.wf = wfl.Waterfall(self)
        self._recheck: list[Bucket] = []  # buckets a liquidation touched on the side (ADL, backstop)
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
        self._ids_acc = 0  # order-independent digest of seen_ids, so hashing does not walk the set
        self.liquidator: liq.Liquidator = self._make_liquidator(config)
        # accounts
        self.n_acc = 0
        self.row_of: dict[int, int] = {}
        self.opt = opt.OptionBook(self)  # option series, positions, mark vols, portfolio-margin accounts
        self._alloc_accounts(capacity)
        self.n_pos = 0
        self._alloc_positions(capacity)
        # called once breaches are confirmed, before they are executed; for instrumentation only
        self.decision_hook: Callable[[], None] | None = None
        self._simple_pos: dict[Bucket, int] = {}  # buckets the exact kernel confirmed -> their one position

    @property
    def insurance_q(self) -> int:
        """The main insurance fund's balance."""
        return self.wf.funds[wfl.MAIN_FUND]

    # --- storage --------------------------------------------------------------------------------

    def _alloc_accounts(self, cap: int) -> None:
        nc = len(self.coll)
        self.acct_id = np.zeros(cap, dtype=np.int64)
        self.bal = np.zeros((cap, nc), dtype=np.int64)
        self.status = np.zeros(cap, dtype=np.int8)
        self.acct_mode = np.zeros(cap, dtype=np.int8)  # opt.STANDARD, ISOLATED or PORTFOLIO
        self.first_pos = np.full(cap, -1, dtype=np.int64)
        # float shadow, one cache line per account: health, maintenance, error bound, status mirror,
        # budgets its positions hold (see risk.kernels), cross positions, 2 spare
        self.acct_f = np.zeros((cap, 8), dtype=np.float64)
        self.coll_f = np.zeros((cap, nc), dtype=np.float64)
        self._views()

    def _views(self) -> None:
        self.acct_h = self.acct_f[:, 0]
        self.acct_mm = self.acct_f[:, 1]
        self.acct_err = self.acct_f[:, 2]

    def _grow_accounts(self) -> None:
        cap = len(self.acct_id) * 2
        for name in ("acct_id", "bal", "status", "acct_mode", "first_pos", "acct_f", "coll_f"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
            if name == "first_pos":
                new[:] = -1
            new[: len(old)] = old
            setattr(self, name, new)
        self._views()

    _POS_FIELDS = (
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
    _EXACT_POS = (
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

    def _alloc_positions(self, cap: int) -> None:
        for name, dt in self._POS_FIELDS:
            setattr(self, name, np.zeros(cap, dtype=dt))
        # price and funding-index band inside which a position's move stays within its budget
        self.pos_band = np.zeros((cap, 4), dtype=np.float64)

    def _grow_positions(self) -> None:
        cap = len(self.pos_acct) * 2
        for name, dt in self._POS_FIELDS:
            old = getattr(self, name)
            new = np.zeros(cap, dtype=dt)
            new[: len(old)] = old
            setattr(self, name, new)
        band = np.zeros((cap, 4), dtype=np.float64)
        band[: len(self.pos_band)] = self.pos_band
        self.pos_band = band

    # --- public API -----------------------------------------------------------------------------

    def apply(self, event: ev.Event) -> list[tuple[int, ev.Event]]:
        """Apply one input event. Returns ``[(seq, event), ...]``: the input first, then what it caused.

        A duplicate ``event_id`` returns ``[]`` (idempotent: nothing to log).
        """
        if not event.is_input:
            raise InvariantViolation(f"{type(event).__name__} is an output event, not an input")
        bad = ev.field_type_error(event)
        eid = event.event_id if isinstance(getattr(event, "event_id", ""), str) else ""  # type: ignore[attr-defined]
        if eid and not bad:
            if eid in self.seen_ids:
                return []
            self.seen_ids.add(eid)
            self._ids_acc = (self._ids_acc + _id_digest(eid)) & _MASK128
        out: list[ev.Event] = []
        ts = event.ts_ns
        name = type(event).__name__
        if bad:
            if isinstance(ts, int) and not isinstance(ts, bool) and self.now_ns <= ts <= MAX_QUANTUMS:
                self.now_ns = ts  # like any other refused input, it still marks the time it arrived
            out.append(ev.InputRejected(self.now_ns, name, bad, eid))
        elif not 0 <= ts <= MAX_QUANTUMS:
            out.append(ev.InputRejected(self.now_ns, name, "ts_ns must be a non-negative integer", eid))
        elif ts < self.now_ns:
            out.append(ev.InputRejected(self.now_ns, name, f"out of order: ts {ts} < engine time {self.now_ns}", eid))
        elif reason := self._time_overflow(ts):
            out.append(ev.InputRejected(self.now_ns, name, reason, eid))
        else:
            self.now_ns = ts
            if self.opt.series:
                settled = self.opt.settle_due(out)  # time passed an expiry: settle before the input itself
                if settled:
                    for r in settled:
                        self._resync(r)
                    self._evaluate([Bucket(r) for r in settled], out)
            handler = getattr(self, "_on_" + name)
            reason = handler(event, out)
            if reason:
                out.append(ev.InputRejected(ts, name, reason, eid))
        records = []
        self.seq += 1
        records.append((self.seq, event))
        for o in out:
            self.seq += 1
            records.append((self.seq, o))
        return records

    def _time_overflow(self, ts: int) -> str:
        """Why moving the clock to ``ts`` would overflow a funding index (empty if it would not)."""
        for m in self.markets:
            if abs(self._fidx_at(m, ts)) > MAX_QUANTUMS // 4:
                return f"time jump to {ts} would overflow the funding index of {m.spec.symbol}"
        return ""

    def apply_all(self, events: Iterable[ev.Event]) -> list[tuple[int, ev.Event]]:
        out = []
        for e in events:
            out.extend(self.apply(e))
        return out

    # --- accounts and collateral ----------------------------------------------------------------

    def row(self, account_id: int) -> int | None:
        return self.row_of.get(account_id)

    def _on_AccountOpened(self, e: ev.AccountOpened, out: list[ev.Event]) -> str:
        if not isinstance(e.account_id, int) or not 0 <= e.account_id < 2**63:
            return "account_id must be a non-negative 64-bit integer"
        if e.account_id in self.row_of:
            return f"account {e.account_id} already exists"
        if self.is_vault(e.account_id):
            return f"account {e.account_id} is reserved for the backstop vault"
        self._open_row(e.account_id)
        return ""

    def is_vault(self, account_id: int) -> bool:
        return self.cfg.backstop is not None and account_id == self.cfg.backstop.account_id

    def vault_row(self) -> int:
        """The backstop vault's account row (opened on first use)."""
        assert self.cfg.backstop is not None
        r = self.row_of.get(self.cfg.backstop.account_id)
        return self._open_row(self.cfg.backstop.account_id) if r is None else r

    def _open_row(self, account_id: int) -> int:
        if self.n_acc == len(self.acct_id):
            self._grow_accounts()
        r = self.n_acc
        self.n_acc += 1
        self.row_of[account_id] = r
        self.acct_id[r] = account_id
        return r

    def _check_amount(self, amount: int) -> str:
        if isinstance(amount, bool) or not isinstance(amount, int):
            return "amount must be an integer number of quantums"
        if amount <= 0:
            return "amount must be positive"
        if amount > MAX_QUANTUMS // 4:
            return f"amount {amount} is too large (would overflow)"
        return ""

    def _transfer_target(self, account_id: int, asset: str, amount_q: int) -> tuple[int, int] | str:
        """(row, collateral index) of a deposit or withdrawal, or why it is refused."""
        r = self.row_of.get(account_id)
        if r is None:
            return f"unknown account {account_id}"
        if self.is_vault(account_id):
            return "the backstop vault moves collateral only through vault deposits and claims"
        c = self.coll_idx.get(asset)
        if c is None:
            return f"unknown collateral asset {asset!r}"
        return self._check_amount(amount_q) or (r, c)

    def _on_Deposited(self, e: ev.Deposited, out: list[ev.Event]) -> str:
        target = self._transfer_target(e.account_id, e.asset, e.amount_q)
        if isinstance(target, str):
            return target
        r, c = target
        new = int(self.bal[r, c]) + e.amount_q
        if new > MAX_QUANTUMS // 4:
            return "balance would overflow"
        self.bal[r, c] = new
        self.deposits[c] += e.amount_q
        self._resync(r)
        self._evaluate([Bucket(r)], out)
        return ""

    def _on_WithdrawalRequested(self, e: ev.WithdrawalRequested, out: list[ev.Event]) -> str:
        target = self._transfer_target(e.account_id, e.asset, e.amount_q)
        if isinstance(target, str):
            return target
        r, c = target
        if int(self.bal[r, c]) < e.amount_q:
            return f"insufficient {e.asset} balance"
        blocked = self._withdrawal_blocked(r)
        if blocked:
            return blocked
        self.bal[r, c] -= e.amount_q
        headroom = self.withdrawal_headroom_quote_q(r)
        if headroom < 0:
            self.bal[r, c] += e.amount_q
            im = self.cross_initial(r)
            return (
                f"withdrawal would leave equity {im + headroom} below initial margin {im} "
                f"(unrealised profit counts at {self.cfg.withdraw_upnl_weight_ppm} ppm)"
            )
        self.withdrawals[c] += e.amount_q
        self._resync(r)
        return ""

    def _withdrawal_blocked(self, r: int) -> str:
        """Why account row ``r`` may not withdraw now, whatever the amount (empty: it may)."""
        if self.status[r] not in (HEALTHY,):
            return f"account is {STATUS_NAMES[int(self.status[r])]}"
        return self._oracle_blocked(self._cross_assets(r), orc.Action.OPEN) or self._valuation_blocked(r)

    def withdrawal_headroom_quote_q(self, r: int) -> int:
        """Cross equity that counts toward a withdrawal less initial margin (``margin.withdrawal_headroom_quote_q``).

        Cross perpetuals' price profit counts at ``withdraw_upnl_weight_ppm``; losses, funding owed,
        collateral and option values in full. Isolated positions hold their margin and their P&L in
        their own buckets: neither counts here (nor does their margin sit in the balance).
        """
        pnl = []
        for p in self.positions_of(r):
            if self.pos_size[p] and not self.pos_iso[p]:
                pnl.append(self.position_risk(p).value_quote_q - int(self.pos_cost[p]))
        fixed = self.cross_risk(r).equity_quote_q - sum(pnl)  # collateral - funding owed (+ option values)
        w = self.cfg.withdraw_upnl_weight_ppm
        return margin.withdrawal_headroom_quote_q(fixed, pnl, self.cross_initial(r), w)

    def withdrawable_quote_q(self, r: int) -> int:
        """How much of the quote asset account row ``r`` may withdraw now (the engine's own check, read-only)."""
        if self._withdrawal_blocked(r):
            return 0
        return max(0, min(self.withdrawal_headroom_quote_q(r), int(self.bal[r, self.quote_c])))

    def collateral_value_quote_q(self, c: int, amount_q: int) -> int:
        """Weighted value of ``amount_q`` of collateral ``c`` in quote quantums, rounded down."""
        spec = self.coll[c]
        if c == self.quote_c:
            return amount_q
        if amount_q <= 0:
            # only the quote asset can be negative; any other debt counts at full weight, rounded up
            return -self._raw_value(spec, -amount_q, Rounding.CEIL)
        raw = self._raw_value(spec, amount_q, Rounding.FLOOR)
        return div_round(raw * spec.weight_ppm * self._depeg_weight_ppm(spec), PPM * PPM, Rounding.FLOOR)

    def _token_price_q(self, spec: CollateralAsset) -> int | None:
        """Price of one whole token (price quantums): fair yield rate x base, capped at the market."""
        ys = spec.yield_spec
        if ys is None:
            return self.index_q.get(spec.price_asset or "")
        base = self.index_q.get(ys.base_asset)
        if base is None:
            return None
        fair = div_round(base * self._yield_rate_e18(spec), 10**18, Rounding.FLOOR)
        market = self.index_q.get(spec.price_asset or "") if spec.price_asset else None
        return fair if market is None else min(fair, market)

    def _yield_rate_e18(self, spec: CollateralAsset) -> int:
        ys = spec.yield_spec
        assert ys is not None
        dt = max(0, self.now_ns - ys.t0_ns)
        return div_round(ys.rate0_e18 * (PPM * YEAR_NS + ys.apr_ppm * dt), PPM * YEAR_NS, Rounding.FLOOR)

    def _depeg_weight_ppm(self, spec: CollateralAsset) -> int:
        ys = spec.yield_spec
        if ys is None or not spec.price_asset:
            return PPM
        base = self.index_q.get(ys.base_asset)
        market = self.index_q.get(spec.price_asset)
        if base is None or market is None:
            return PPM
        fair = div_round(base * self._yield_rate_e18(spec), 10**18, Rounding.FLOOR)
        if fair > 0 and (fair - market) * PPM > ys.depeg_threshold_ppm * fair:
            return PPM - ys.depeg_haircut_ppm
        return PPM

    def _raw_value(self, spec: CollateralAsset, amount_q: int, rounding: Rounding) -> int:
        price = self._token_price_q(spec)
        if price is None:
            return 0
        return div_round(amount_q * price, 10 ** (spec.decimals + PRICE_DECIMALS - QUOTE_DECIMALS), rounding)

    # --- positions --------------------------------------------------------------------------------

    def positions_of(self, r: int) -> list[int]:
        out = []
        p = int(self.first_pos[r])
        while p >= 0:
            out.append(p)
            p = int(self.pos_next[p])
        return out

    def _find_pos(self, r: int, m: int) -> int:
        p = int(self.first_pos[r])
        while p >= 0:
            if self.pos_mkt[p] == m:
                return p
            p = int(self.pos_next[p])
        return -1

    def _new_pos(self, r: int, m: _Market) -> int:
        if self.n_pos == len(self.pos_acct):
            self._grow_positions()
        p = self.n_pos
        self.n_pos += 1
        self.pos_acct[p] = r
        self.pos_mkt[p] = m.i
        self.pos_next[p] = self.first_pos[r]
        self.first_pos[r] = p
        self.pos_fidx[p] = m.fidx
        m.pending.append(p)
        return p

    def _funding_owed(self, p: int) -> int:
        m = self.markets[int(self.pos_mkt[p])]
        return fnd.funding_owed_quote_q(int(self.pos_size[p]), m.fidx, int(self.pos_fidx[p]), m.spec.size_decimals)

    def position_risk(self, p: int) -> margin.PositionRisk:
        m = self.markets[int(self.pos_mkt[p])]
        if m.mark_q is None:
            return margin.PositionRisk(0, 0, -int(self.pos_cost[p]), 0)
        return margin.position_risk(
            m.spec.margin,
            int(self.pos_size[p]),
            int(self.pos_cost[p]),
            self._funding_owed(p),
            m.mark_q,
            m.spec.size_decimals,
        )

    def position_initial(self, p: int) -> int:
        m = self.markets[int(self.pos_mkt[p])]
        size = int(self.pos_size[p])
        if size == 0 or m.mark_q is None:
            return 0
        notional = margin.value_quote_q(abs(size), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        oi = margin.value_quote_q(m.long_oi_base_q, m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        return margin.initial_quote_q(
            m.spec.margin, notional, int(self.pos_lev[p]), abs(size), m.spec.size_decimals, oi
        )

    def _valuation_blocked(self, r: int) -> str:
        """Why portfolio account ``r`` cannot be valued now (empty if it can, or is not a portfolio)."""
        if self.acct_mode[r] != opt.PORTFOLIO:
            return ""
        why = self.opt.figures(r).blocked
        return f"valuation blocked: {why}" if why else ""

    def _has_cross_perps(self, r: int) -> bool:
        return any(self.pos_size[p] and not self.pos_iso[p] for p in self.positions_of(r))

    def cross_risk(self, r: int) -> BucketRisk:
        if self.acct_mode[r] == opt.PORTFOLIO:
            f = self.opt.figures(r)
            return BucketRisk(f.equity_quote_q, f.mm_quote_q)
        eq = sum(self.collateral_value_quote_q(c, int(self.bal[r, c])) for c in range(len(self.coll)))
        mm = 0
        for p in self.positions_of(r):
            if self.pos_iso[p] or self.pos_size[p] == 0:
                continue
            pr = self.position_risk(p)
            eq += pr.upnl_quote_q
            mm += pr.mm_quote_q
        return BucketRisk(eq, mm)

    def cross_initial(self, r: int) -> int:
        if self.acct_mode[r] == opt.PORTFOLIO:
            return self.opt.figures(r).im_quote_q
        return sum(self.position_initial(p) for p in self.positions_of(r) if not self.pos_iso[p])

    def iso_risk(self, p: int) -> BucketRisk:
        pr = self.position_risk(p)
        return BucketRisk(int(self.pos_iso_margin[p]) + pr.upnl_quote_q, pr.mm_quote_q)

    def bucket_risk(self, b: Bucket) -> BucketRisk:
        return self.cross_risk(b.row) if b.pos < 0 else self.iso_risk(b.pos)

    def _cross_assets(self, r: int) -> list[str]:
        out = {self.markets[int(self.pos_mkt[p])].spec.base_asset for p in self.positions_of(r) if self.pos_size[p]}
        for c, spec in enumerate(self.coll):
            if c != self.quote_c and self.bal[r, c] != 0:
                if spec.price_asset:
                    out.add(spec.price_asset)
                if spec.yield_spec:
                    out.add(spec.yield_spec.base_asset)
        out |= self.opt.assets_of(r)
        return sorted(out)

    def _on_TradeFilled(self, e: ev.TradeFilled, out: list[ev.Event]) -> str:
        r = self.row_of.get(e.account_id)
        if r is None:
            return f"unknown account {e.account_id}"
        if self.is_vault(e.account_id):
            return "the backstop vault trades only by taking over liquidations"
        m = self.market_idx.get(e.market)
        if m is None:
            s = self.opt.idx.get(e.market)
            if s is None:
                return f"unknown market {e.market!r}"
            reason = self.opt.fill(r, s, e, out)
            if not reason:
                self._resync(r)
                self._evaluate(self._buckets_of(r), out)
            return reason
        for name in ("size_delta_base_q", "price_q", "fee_quote_q", "isolated_margin_quote_q", "leverage"):
            v = getattr(e, name)
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) > MAX_QUANTUMS // 4:
                return f"{name} must be an integer within bounds (would overflow)"
        if e.size_delta_base_q == 0:
            return "size_delta_base_q must be non-zero"
        if e.price_q <= 0:
            return "price must be positive"
        if e.fee_quote_q < 0 or e.isolated_margin_quote_q < 0:
            return "fee and isolated margin must be non-negative"
        if e.margin_mode not in ("cross", "isolated"):
            return f"margin_mode must be cross or isolated, not {e.margin_mode!r}"
        if not 1 <= e.leverage <= m.spec.margin.brackets[0].max_leverage:
            return f"leverage must be in [1, {m.spec.margin.brackets[0].max_leverage}]"
        if m.mark_q is None:
            return f"market {e.market} has no valid mark price yet"
        if self.status[r] in (LIQUIDATING, BANKRUPT):
            return f"account is {STATUS_NAMES[int(self.status[r])]}"
        mode_why = self._mode_refuses(r, e.margin_mode)
        if mode_why:
            return mode_why
        iso = e.margin_mode == "isolated"
        p = self._find_pos(r, m.i)
        old_size = int(self.pos_size[p]) if p >= 0 else 0
        if p >= 0 and old_size != 0 and bool(self.pos_iso[p]) != iso:
            return "position is held in the other margin mode; close it first"
        new_size = old_size + e.size_delta_base_q
        if abs(new_size) > MAX_QUANTUMS // 4:
            return "position size would overflow"
        increases = abs(new_size) > abs(old_size) or (
            old_size != 0 and (new_size > 0) != (old_size > 0) and new_size != 0
        )
        if increases:
            if m.spec.symbol in self.halted:
                return f"market {m.spec.symbol} is halted ({self.halted[m.spec.symbol]}): no new risk"
            blocked = self._oracle_blocked([m.spec.base_asset], orc.Action.OPEN) or (
                "" if iso else self._valuation_blocked(r)
            )
            if blocked:
                return blocked
        if e.isolated_margin_quote_q and not iso:
            return "isolated margin given for a cross fill"
        if e.isolated_margin_quote_q > int(self.bal[r, self.quote_c]):
            return "insufficient quote balance for the isolated margin"
        # dry run on the funding index as it stands: a refused fill changes nothing at all
        saved = self._save_account(r)
        reason = self._fill(r, p, m, e, iso, increases, out)
        self._restore_account(r, saved)
        if reason:
            return reason
        # for real: materialise funding to now (a pass over the market), then settle and fill
        touched = self._accrue_pass(m)
        saved = self._save_account(r)
        reason = self._fill(r, p, m, e, iso, increases, out)
        if reason:
            self._restore_account(r, saved)
        self._resync(r)
        self._evaluate([*touched, *self._buckets_of(r)], out)
        return reason

    def _fill(
        self, r: int, p: int, m: _Market, e: ev.TradeFilled, iso: bool, increases: bool, out: list[ev.Event]
    ) -> str:
        """Apply a fill to account ``r`` and run the pre-trade check; the caller restores on a reason."""
        if p < 0:
            p = self._new_pos(r, m)
        self._settle_funding(p, out, emit=False)
        self.pos_iso[p] = 1 if iso else 0
        self.pos_lev[p] = e.leverage
        self.bal[r, self.quote_c] -= e.isolated_margin_quote_q
        self.pos_iso_margin[p] += e.isolated_margin_quote_q
        try:
            self._trade(p, e.size_delta_base_q, e.price_q, e.fee_quote_q)
        except _Overflow as exc:
            return str(exc)
        if increases:
            risk = self.iso_risk(p) if iso else self.cross_risk(r)
            im = self.position_initial(p) if iso else self.cross_initial(r)
            if risk.equity_quote_q < im:
                return f"pre-trade check: equity {risk.equity_quote_q} below initial margin {im} after the fill"
        if e.isolated_margin_quote_q:
            # margin moved out of the cross bucket is withdrawn from it: it must keep initial margin with
            # unrealised profit weighted as for a withdrawal
            headroom = self.withdrawal_headroom_quote_q(r)
            if headroom < 0:
                im = self.cross_initial(r)
                return f"pre-trade check: cross equity {im + headroom} below initial margin {im} after the move"
        return ""

    def take_position(
        self, r: int, m: _Market, delta: int, price_q: int, out: list[ev.Event], check_im: bool = True
    ) -> str:
        """Add ``delta`` of market ``m`` to account ``r``'s cross position at ``price_q`` (no fee).

        With ``check_im``, an increase must leave cross equity at or above initial margin; on a
        reason nothing has changed.
        """
        saved = self._save_account(r)
        p = self._find_pos(r, m.i)
        if p < 0:
            p = self._new_pos(r, m)
            self.pos_lev[p] = min(10, m.spec.margin.brackets[0].max_leverage)
        self._settle_funding(p, out, emit=False)
        self.pos_iso[p] = 0
        old = int(self.pos_size[p])
        try:
            self._trade(p, delta, price_q, 0)
        except _Overflow as exc:
            self._restore_account(r, saved)
            return str(exc)
        new = int(self.pos_size[p])
        increases = abs(new) > abs(old) or (old and new and (old > 0) != (new > 0))
        if check_im and increases:
            risk, im = self.cross_risk(r), self.cross_initial(r)
            if risk.equity_quote_q < im:
                self._restore_account(r, saved)
                return f"equity {risk.equity_quote_q} below initial margin {im} after taking {delta}"
        return ""

    def _on_AccountsSeeded(self, e: ev.AccountsSeeded, out: list[ev.Event]) -> str:
        """Vectorised account opening: exact int64 columns, float screen, exact confirmation."""
        ids = e.account_ids
        k = len(ids)
        npos = len(e.pos_account)
        if len(e.deposits_quote_q) != k:
            return "account_ids and deposits_quote_q differ in length"
        cols = (
            e.pos_market,
            e.pos_size_base_q,
            e.pos_price_q,
            e.pos_isolated,
            e.pos_iso_margin_quote_q,
            e.pos_leverage,
        )
        if any(len(c) != npos for c in cols):
            return "position columns differ in length"
        try:
            aid = np.array(ids, dtype=np.int64)
            dep = np.array(e.deposits_quote_q, dtype=np.int64)
            pa = np.array(e.pos_account, dtype=np.int64)
            size = np.array(e.pos_size_base_q, dtype=np.int64)
            price = np.array(e.pos_price_q, dtype=np.int64)
            iso = np.array(e.pos_isolated, dtype=np.int8)
            isom = np.array(e.pos_iso_margin_quote_q, dtype=np.int64)
            lev = np.array(e.pos_leverage, dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
            return "columns must hold integers within 64 bits (would overflow)"
        if k and (
            aid.min() < 0
            or len(np.unique(aid)) != k
            or any(int(a) in self.row_of or self.is_vault(int(a)) for a in aid.tolist())
        ):
            return "account ids must be new, unique, non-negative and not reserved"
        lim = MAX_QUANTUMS // 4
        if k and (dep.min() <= 0 or dep.max() > lim):
            return "deposits must be positive and within bounds"
        midx = np.empty(npos, dtype=np.int64)
        for name, mi in {s_: self.market_idx.get(s_) for s_ in set(e.pos_market)}.items():
            if mi is None:
                return f"unknown market {name!r}"
            if mi.mark_q is None:
                return f"market {name} has no valid mark price yet"
        for j, name in enumerate(e.pos_market):
            midx[j] = self.market_idx[name].i
        if npos:
            if pa.min() < 0 or pa.max() >= k or np.any(np.diff(pa) < 0):
                return "pos_account must index account_ids and be sorted"
            if np.any(size == 0) or np.abs(size).max() > lim or price.min() <= 0 or price.max() > lim:
                return "sizes must be non-zero and prices positive, within bounds"
            if not np.isin(iso, (0, 1)).all() or isom.min() < 0 or np.any((iso == 0) & (isom != 0)):
                return "pos_isolated must be 0/1 and only isolated positions carry margin"
            if lev.min() < 1:
                return "leverage must be at least 1"
            if len(np.unique(pa * len(self.markets) + midx)) != npos:
                return "at most one position per account and market"
            per_acct_iso = np.bincount(pa, weights=isom.astype(np.float64), minlength=k)
            if np.any(per_acct_iso > dep.astype(np.float64)):
                return "isolated margin exceeds the account's deposit"
        for m in self.markets:
            sel = midx == m.i
            if sel.any() and lev[sel].max() > m.spec.margin.brackets[0].max_leverage:
                return f"leverage above the maximum of {m.spec.symbol}"
        # blocked oracles forbid opening risk
        blocked = self._oracle_blocked(
            sorted({self.markets[i].spec.base_asset for i in set(midx.tolist())}), orc.Action.OPEN
        )
        if blocked:
            return blocked
        # cost: a buyer pays ceil(size * price), a seller receives floor (exact Python ints)
        costs = []
        for sz, pr, mk in zip(size.tolist(), price.tolist(), midx.tolist(), strict=True):
            sd = self.markets[mk].spec.size_decimals
            costs.append(
                margin.value_quote_q(sz, pr, sd, Rounding.CEIL)
                if sz > 0
                else -margin.value_quote_q(-sz, pr, sd, Rounding.FLOOR)
            )
        if costs and max(-min(costs), max(costs)) > lim:
            return "a position's value would overflow"
        # --- write (rolled back below if the exact initial-margin check fails) ---
        r0, p0 = self.n_acc, self.n_pos
        while len(self.acct_id) < r0 + k:
            self._grow_accounts()
        while len(self.pos_acct) < p0 + npos:
            self._grow_positions()
        rows = np.arange(r0, r0 + k, dtype=np.int64)
        self.acct_id[r0 : r0 + k] = aid
        iso_sum = np.zeros(k, dtype=np.int64)
        np.add.at(iso_sum, pa, isom)
        self.bal[r0 : r0 + k, self.quote_c] = dep - iso_sum
        self.n_acc += k
        self.row_of.update(zip(aid.tolist(), rows.tolist(), strict=True))

        # physical slots market-major (then by account): each market's column is a contiguous run,
        # so the screen streams through memory; accounts find their positions by the linked list
        gp = np.empty(npos, dtype=np.int64)
        gp[np.argsort(midx, kind="stable")] = np.arange(p0, p0 + npos, dtype=np.int64)
        self.pos_acct[gp] = rows[pa]
        self.pos_mkt[gp] = midx
        self.pos_size[gp] = size
        self.pos_cost[gp] = np.array(costs, dtype=np.int64)
        self.pos_iso[gp] = iso
        self.pos_iso_margin[gp] = isom
        self.pos_lev[gp] = lev
        self.pos_status[gp] = 0
        fidx_now = np.array([m.fidx for m in self.markets], dtype=np.int64)
        self.pos_fidx[gp] = fidx_now[midx]
        nxt = np.full(npos, -1, dtype=np.int64)
        if npos > 1:
            same = pa[1:] == pa[:-1]
            nxt[:-1][same] = gp[1:][same]
        self.pos_next[gp] = nxt
        if npos:
            starts = np.flatnonzero(np.r_[True, pa[1:] != pa[:-1]])
            self.first_pos[rows[pa[starts]]] = gp[starts]
        self.n_pos += npos
        for m in self.markets:
            sel = midx == m.i
            if sel.any():
                m.pending.extend(np.sort(gp[sel]).tolist())
                m.long_oi_base_q += int(np.clip(size[sel], 0, None).sum())
        self.deposits[self.quote_c] += int(dep.sum())
        # float shadow for the new accounts, then the exact initial-margin check where it is not clear-cut
        self.acct_h[r0 : r0 + k] = self.bal[r0 : r0 + k, self.quote_c].astype(np.float64)
        self.coll_f[r0 : r0 + k, self.quote_c] = self.acct_h[r0 : r0 + k]
        self.acct_mm[r0 : r0 + k] = 0.0
        self.acct_err[r0 : r0 + k] = kernels.U * np.abs(self.acct_h[r0 : r0 + k]) * 4
        self.acct_f[r0 : r0 + k, 3] = 0.0
        self.acct_f[r0 : r0 + k, 4] = 0.0
        self.acct_f[r0 : r0 + k, 5] = np.bincount(pa[iso == 0], minlength=k) if npos else 0.0
        self.pos_c[gp] = self.pos_e[gp] = self.pos_mm[gp] = self.pos_budget[gp] = 0.0
        self.pos_band[gp] = (1.0, 0.0, 0.0, 0.0)
        flagged: list[Bucket] = []
        im_f = np.zeros(k, dtype=np.float64)
        exact_rows: set[int] = set()
        for m in self.markets:
            sel = np.flatnonzero(midx == m.i)
            if not len(sel):
                continue
            idx = gp[sel]  # ascending: slots were given market-major in input order
            flagged.extend(self._screen(idx, m))
            mdl = m.spec.margin
            if mdl.sqrt_imf_factor_ppm or mdl.oi_lower_quote_q is not None:
                exact_rows.update(pa[sel].tolist())
                continue
            notional = np.abs(size[sel].astype(np.float64)) * float(m.mark_q or 0) * m.kv
            b = np.searchsorted(m.floors, notional * (1 + 1e-9), side="right") - 1
            max_lev = np.array([br.max_leverage for br in mdl.brackets], dtype=np.float64)[np.clip(b, 0, None)]
            imf = np.maximum(np.maximum(1.0 / lev[sel], 1.0 / max_lev), mdl.imr_floor_ppm / PPM)
            need = notional * imf * (1 + 1e-9) + 4.0
            cross = iso[sel] == 0
            np.add.at(im_f, pa[sel][cross], need[cross])
            isol = ~cross
            if isol.any():
                hi = isom[sel][isol].astype(np.float64) + self.pos_c[idx[isol]] + self.pos_mm[idx[isol]]
                bad = hi - self.pos_e[idx[isol]] < need[isol]
                exact_rows.update(pa[sel][isol][bad].tolist())
        eq_f = self.acct_h[r0 : r0 + k] + self.acct_mm[r0 : r0 + k] - self.acct_err[r0 : r0 + k]
        exact_rows.update(np.flatnonzero(eq_f < im_f).tolist())
        for j in sorted(exact_rows):
            r = r0 + j
            ok = self.cross_risk(r).equity_quote_q >= self.cross_initial(r) and all(
                self.iso_risk(p).equity_quote_q >= self.position_initial(p)
                for p in self.positions_of(r)
                if self.pos_iso[p]
            )
            if not ok:
                self._rollback_seed(r0, p0, aid, midx, size, dep)
                return f"account {int(aid[j])} would start below initial margin"
        # accepted: a new position owes funding from now on, not for the time before it existed, so it
        # starts at the index as of now; then the markets materialise funding to now (and re-screen)
        for m in self.markets:
            sel = midx == m.i
            if sel.any():
                self.pos_fidx[gp[sel]] = self._fidx_now(m)
                flagged.extend(self._accrue_pass(m))
        self._evaluate(flagged, out)
        return ""

    def _rollback_seed(
        self, r0: int, p0: int, aid: np.ndarray, midx: np.ndarray, size: np.ndarray, dep: np.ndarray
    ) -> None:
        for a in aid.tolist():
            self.row_of.pop(a, None)
        self.first_pos[r0 : self.n_acc] = -1
        self.bal[r0 : self.n_acc] = 0
        self.acct_id[r0 : self.n_acc] = 0
        for f in self._EXACT_POS:
            getattr(self, f)[p0 : self.n_pos] = 0
        for m in self.markets:
            m.pending = [p for p in m.pending if p < p0]
            sel = midx == m.i
            m.long_oi_base_q -= int(np.clip(size[sel], 0, None).sum())
        self.deposits[self.quote_c] -= int(dep.sum())
        self.n_acc, self.n_pos = r0, p0

    def _save_account(self, r: int) -> dict[str, Any]:
        ps = self.positions_of(r)
        return {
            "bal": self.bal[r].copy(),
            "first": int(self.first_pos[r]),
            "n_pos": self.n_pos,
            "pos": {p: tuple(getattr(self, f)[p] for f in self._EXACT_POS) for p in ps},
            "pending": {m.i: len(m.pending) for m in self.markets},
            "oi": [m.long_oi_base_q for m in self.markets],
            "clearing": self.clearing_q,
            "fees": self.fees_q,
            "funds": dict(self.wf.funds),
            "socialized": self.socialized_q,
            "orders": len(self.wf.orders),
            "liq_used": self.wf.liq_used.get(r),
            "opt": self.opt.save_row(r),
        }

    def _restore_account(self, r: int, s: dict[str, Any]) -> None:
        self.bal[r] = s["bal"]
        self.first_pos[r] = s["first"]
        for p in range(s["n_pos"], self.n_pos):
            for f in self._EXACT_POS:
                getattr(self, f)[p] = 0
        self.n_pos = s["n_pos"]
        for p, vals in s["pos"].items():
            for f, v in zip(self._EXACT_POS, vals, strict=True):
                getattr(self, f)[p] = v
        for m in self.markets:
            del m.pending[s["pending"][m.i] :]
            m.long_oi_base_q = s["oi"][m.i]
        self.clearing_q = s["clearing"]
        self.fees_q = s["fees"]
        self.wf.funds = s["funds"]
        self.socialized_q = s["socialized"]
        del self.wf.orders[s["orders"] :]
        if s["liq_used"] is None:
            self.wf.liq_used.pop(r, None)
        else:
            self.wf.liq_used[r] = s["liq_used"]
        self.opt.restore_row(r, s["opt"])

    def _trade(self, p: int, delta: int, price_q: int, fee_q: int, release_iso: bool = True) -> int:
        """Apply a fill to position ``p`` at ``price_q``; returns realised PnL (quote quantums).

        Cash of the fill: a buyer pays ceil(delta * price), a seller gets floor(|delta| * price).
        Reducing releases cost pro rata, rounded so the realised PnL rounds down.
        """
        m = self.markets[int(self.pos_mkt[p])]
        sd = m.spec.size_decimals
        r = int(self.pos_acct[p])
        size = int(self.pos_size[p])
        cost = int(self.pos_cost[p])
        realized = 0
        closing = 0 if size == 0 or (size > 0) == (delta > 0) else min(abs(delta), abs(size))
        if closing:
            sign = 1 if size > 0 else -1
            # cash in (out for a short) of closing `closing` units
            close_cash = (
                margin.value_quote_q(closing, price_q, sd, Rounding.FLOOR)
                if sign > 0
                else -margin.value_quote_q(closing, price_q, sd, Rounding.CEIL)
            )
            released = div_round(cost * closing, abs(size), Rounding.CEIL)  # long: more cost, short: less credit
            realized = close_cash - released
            cost -= released
            size -= sign * closing
            delta += sign * closing
        if delta:
            open_cash = (
                margin.value_quote_q(delta, price_q, sd, Rounding.CEIL)
                if delta > 0
                else -margin.value_quote_q(-delta, price_q, sd, Rounding.FLOOR)
            )
            cost += open_cash
            size += delta
        old_long = max(int(self.pos_size[p]), 0)
        lim = MAX_QUANTUMS // 4
        if abs(cost) > lim or abs(int(self.bal[r, self.quote_c]) + realized - fee_q) > lim:
            raise _Overflow("the fill's value would overflow")
        self.pos_size[p] = size
        self.pos_cost[p] = cost if size else 0
        if size == 0:
            realized += cost  # any cost left by rounding is realised with the close (cost is then 0)
        m.long_oi_base_q += max(size, 0) - old_long
        # realised PnL and fee move between the account (or its isolated margin) and the ledgers
        if self.pos_iso[p]:
            self.pos_iso_margin[p] += realized - fee_q
            if size == 0 and release_iso:
                self.bal[r, self.quote_c] += int(self.pos_iso_margin[p])
                self.pos_iso_margin[p] = 0
        else:
            self.bal[r, self.quote_c] += realized - fee_q
        self.clearing_q -= realized
        self.fees_q += fee_q
        return realized

    def _settle_funding(self, p: int, out: list[ev.Event], emit: bool = True) -> None:
        m = self.markets[int(self.pos_mkt[p])]
        owed = self._funding_owed(p)
        self.pos_fidx[p] = m.fidx
        if owed == 0:
            return
        r = int(self.pos_acct[p])
        if self.pos_iso[p]:
            self.pos_iso_margin[p] -= owed
        else:
            self.bal[r, self.quote_c] -= owed
        self.clearing_q += owed
        if emit:
            out.append(ev.FundingSettled(self.now_ns, int(self.acct_id[r]), m.spec.symbol, -owed))

    def _on_FundingSettleRequested(self, e: ev.FundingSettleRequested, out: list[ev.Event]) -> str:
        r = self.row_of.get(e.account_id)
        if r is None:
            return f"unknown account {e.account_id}"
        touched: list[Bucket] = []
        for m in sorted({self.markets[int(self.pos_mkt[p])] for p in self.positions_of(r)}, key=lambda m: m.i):
            touched.extend(self._accrue_pass(m))
        for p in self.positions_of(r):
            self._settle_funding(p, out)
        self._resync(r)
        self._evaluate([*touched, *self._buckets_of(r)], out)
        return ""

    # --- oracles, funding, re-margining -------------------------------------------------------

    def _oracle_blocked(self, assets: Iterable[str], action: orc.Action) -> str:
        for a in assets:
            pol = self.cfg.policy(a)
            v = orc.staleness(self.now_ns, self.index_ts.get(a), pol)
            if not orc.allowed(v, action, pol):
                return f"oracle for {a} is {v.name}: {action.value} not allowed"
            if action is orc.Action.LIQUIDATE:
                n = self.index_n.get(a, 0)
                if not orc.liquidation_grade(n, pol):
                    return f"oracle for {a}: {n} agreeing source(s), liquidation needs {pol.min_sources_liquidation}"
                halt = self.auto_halt(a)
                if halt:
                    return f"oracle for {a}: halted ({halt}), no liquidation until the price is confirmed"
        return ""

    def auto_halt(self, asset: str) -> str:
        """The automatic halt (range breaker, divergence) on one of the asset's markets, if any."""
        for m in self.markets_of_asset[asset]:
            why = self.halted.get(m.spec.symbol, "")
            if why and not why.startswith(MANUAL_HALT):
                return why
        return ""

    def _on_PriceObserved(self, e: ev.PriceObserved, out: list[ev.Event]) -> str:
        if e.asset not in self.markets_of_asset:
            return f"unknown asset {e.asset!r}"
        if not isinstance(e.price, str):
            return "price must be decimal text"
        pol = self.cfg.policy(e.asset)
        key = (e.asset, e.source)
        last = self.src_last.get(key)
        was_open = not self._oracle_blocked([e.asset], orc.Action.LIQUIDATE)
        window = self._jump_window(e.asset, pol)
        cl = orc.classify(
            e.price, e.confidence_ppm, e.ts_ns, last[1] if last else None, self.index_q.get(e.asset), pol, window
        )
        if cl.validity == orc.Validity.TOO_VOLATILE and cl.price_q is not None:
            pend = orc.reanchor_step(self.reanchor.get(e.asset), e.source, cl.price_q, e.ts_ns, pol)
            if not orc.reanchor_ready(pend, self.now_ns, pol):
                self.reanchor[e.asset] = pend
                out.append(ev.OraclePriceRejected(e.ts_ns, e.source, e.asset, e.price, f"TOO_VOLATILE: {cl.reason}"))
                return ""
            self._adopt(e.asset, pend, out)
        elif cl.validity != orc.Validity.VALID:
            out.append(ev.OraclePriceRejected(e.ts_ns, e.source, e.asset, e.price, f"{cl.validity.name}: {cl.reason}"))
            return ""
        else:
            assert cl.price_q is not None
            self.src_last[key] = (cl.price_q, e.ts_ns)
            self.reanchor.pop(e.asset, None)  # the sources still print within the limit: no new level
        self._reindex(e, was_open, out)
        return ""

    def _jump_window(self, asset: str, pol: Any) -> list[int]:
        """The index samples the jump limit holds against besides the last index."""
        if not pol.jump_window_ns:
            return []
        cut = self.now_ns - pol.jump_window_ns
        return [p for t, p in self.index_hist.get(asset, ()) if t >= cut]

    def fresh_sources(self, asset: str, now_ns: int | None = None) -> dict[str, int]:
        """The sources' latest prices that count for the index at ``now_ns`` (default: engine time):
        fresh, and printed since the last re-anchor."""
        now = self.now_ns if now_ns is None else now_ns
        pol = self.cfg.policy(asset)
        since = self.anchor_ts.get(asset, 0)
        mine = sorted((s, pt) for (a, s), pt in self.src_last.items() if a == asset)  # sort this asset's only
        return {s: p for s, (p, t) in mine if now - t <= pol.max_staleness_ns and t >= since}

    def _reindex(self, e: ev.PriceObserved, was_open: bool, out: list[ev.Event]) -> None:
        """Aggregate the sources after a print: a new index (marked, re-margined), a divergence, or none."""
        asset = e.asset
        agg = orc.aggregate_sources(self.fresh_sources(asset), self.index_q.get(asset), self.cfg.policy(asset))
        if agg.index_q is None or (agg.validity != orc.Validity.VALID and e.source in agg.outliers):
            why = f"{agg.validity.name}: {agg.reason}"
            out.append(ev.OraclePriceRejected(e.ts_ns, e.source, e.asset, e.price, why))
        if agg.validity == orc.Validity.DIVERGENT:
            self._diverge(asset, agg.reason, out)
        else:
            self.diverged.pop(asset, None)
        if agg.index_q is None:
            return
        self.index_ts[asset] = e.ts_ns
        self.index_n[asset] = agg.n_sources
        self._breaker(asset, agg.index_q, out)
        if self.index_q.get(asset) != agg.index_q:
            self.index_q[asset] = agg.index_q
            out.append(ev.IndexPriceUpdated(e.ts_ns, asset, agg.index_q))
            self._on_index(asset, out)
        elif not was_open and not self._oracle_blocked([asset], orc.Action.LIQUIDATE):
            self._reopen(asset, out)  # the same price, now confirmed: liquidations wait no longer

    def _diverge(self, asset: str, why: str, out: list[ev.Event]) -> None:
        """Sources set aside for divergence: halt new risk, for at most the policy's divergence_halt_ns."""
        since = self.diverged.setdefault(asset, self.now_ns)
        if self.now_ns - since < self.cfg.policy(asset).divergence_halt_ns:
            self._halt(asset, f"{DIVERGENCE_HALT} {why}", out)
        else:
            self._lift(asset, (DIVERGENCE_HALT,), out)

    def _adopt(self, asset: str, pend: orc.Pending, out: list[ev.Event]) -> None:
        """Re-anchor on a level the sources printed consistently: their prints become their prices."""
        for s, p, t in pend.sources:
            self.src_last[(asset, s)] = (p, t)
        self.anchor_ts[asset] = pend.first_ts_ns
        self.index_hist[asset] = []
        del self.reanchor[asset]
        why = f"{pend.count} consistent prints over {self.now_ns - pend.first_ts_ns} ns"
        out.append(ev.OracleReanchored(self.now_ns, asset, self.index_q.get(asset, 0), pend.last_q, why))

    def _on_OracleReanchorRequested(self, e: ev.OracleReanchorRequested, out: list[ev.Event]) -> str:
        """An operator's new reference level: the index moves to it (and margins); liquidations wait for
        a quorum of sources printing near it (the jump limit now holds from it)."""
        if e.asset not in self.markets_of_asset:
            return f"unknown asset {e.asset!r}"
        if e.price == "":
            pend = self.reanchor.get(e.asset)
            if pend is None:
                return f"no pending level to adopt for {e.asset}: give a price"
            price_q = pend.last_q
        else:
            try:
                price_q = parse_decimal(e.price, PRICE_DECIMALS, Rounding.FLOOR, "price")
            except ValidationError as exc:
                return f"price: {exc}"
            if not 0 < price_q <= MAX_QUANTUMS // 4:
                return "price must be positive (and within range)"
        was_open = not self._oracle_blocked([e.asset], orc.Action.LIQUIDATE)
        old = self.index_q.get(e.asset, 0)
        self.reanchor.pop(e.asset, None)
        self.diverged.pop(e.asset, None)
        self.anchor_ts[e.asset] = self.now_ns
        self.index_hist[e.asset] = [(self.now_ns, price_q)]
        self.index_n[e.asset] = 0  # the operator's level margins; the sources make it liquidation-grade
        out.append(ev.OracleReanchored(self.now_ns, e.asset, old, price_q, f"{MANUAL_HALT} {e.reason}".strip()))
        self._lift(e.asset, (RANGE_HALT, DIVERGENCE_HALT), out)
        if old != price_q:
            self.index_q[e.asset] = price_q
            out.append(ev.IndexPriceUpdated(self.now_ns, e.asset, price_q))
            self._on_index(e.asset, out)
        elif not was_open and not self._oracle_blocked([e.asset], orc.Action.LIQUIDATE):
            self._reopen(e.asset, out)
        return ""

    def _oracle_clock(self, out: list[ev.Event]) -> None:
        """Time alone ends a divergence halt: the divergent source went stale, or the halt ran its time."""
        for asset in sorted(self.diverged):
            pol = self.cfg.policy(asset)
            agg = orc.aggregate_sources(self.fresh_sources(asset), self.index_q.get(asset), pol)
            if agg.validity == orc.Validity.DIVERGENT and self.now_ns - self.diverged[asset] < pol.divergence_halt_ns:
                continue
            if agg.validity != orc.Validity.DIVERGENT:
                del self.diverged[asset]
            was_open = not self._oracle_blocked([asset], orc.Action.LIQUIDATE)
            self._lift(asset, (DIVERGENCE_HALT,), out)
            if not was_open and not self._oracle_blocked([asset], orc.Action.LIQUIDATE):
                self._reopen(asset, out)

    def _reopen(self, asset: str, out: list[ev.Event]) -> None:
        """Re-judge every account exposed to ``asset`` once its price became liquidation-grade again."""
        touched: list[Bucket] = []
        for m in self.markets_of_asset[asset]:
            if m.mark_q is not None:
                touched.extend(self._remargin_all(m))
        for c in self.coll_of_asset[asset]:
            touched.extend(self._remargin_collateral(c))
        self._evaluate(self.opt.screen(asset, touched), out)

    def _breaker(self, asset: str, index_q: int, out: list[ev.Event]) -> None:
        """Circuit breaker on a valid index: halt the asset's markets when the range within the window
        exceeds the band; resume them once it is back within (and no source is set aside for divergence).

        The index history is kept with the band at 0 too, so a band switched on judges the next tick."""
        hist = self.index_hist.setdefault(asset, [])
        hist.append((self.now_ns, index_q))
        keep = max(self.cfg.breaker_window_ns, self.cfg.policy(asset).jump_window_ns)
        k = bisect.bisect_left(hist, (self.now_ns - keep, -1))
        if k:
            del hist[:k]
        halted, why = (False, "")
        if self.cfg.breaker_band_ppm:
            halted, why = breaker.range_halt(hist, self.cfg.breaker_band_ppm, self.cfg.breaker_window_ns)
        if halted:
            self._halt(asset, why, out)
            return
        since = self.diverged.get(asset)
        if since is None or self.now_ns - since >= self.cfg.policy(asset).divergence_halt_ns:
            self._lift(asset, (RANGE_HALT, DIVERGENCE_HALT), out)

    def _lift(self, asset: str, kinds: tuple[str, ...], out: list[ev.Event]) -> None:
        """Resume the asset's markets halted automatically for one of ``kinds`` (an operator's halt waits
        for the operator)."""
        for m in self.markets_of_asset[asset]:
            why = self.halted.get(m.spec.symbol, "")
            if why.startswith(kinds):
                del self.halted[m.spec.symbol]
                out.append(ev.MarketResumed(self.now_ns, m.spec.symbol))

    def _on_MarketHaltRequested(self, e: ev.MarketHaltRequested, out: list[ev.Event]) -> str:
        m = self.market_idx.get(e.market)
        if m is None:
            return f"unknown market {e.market!r}"
        if self.halted.get(e.market, "").startswith(MANUAL_HALT):
            return f"market {e.market} is already halted by an operator"
        self.halted[e.market] = f"{MANUAL_HALT} {e.reason}".strip()
        out.append(ev.MarketHalted(self.now_ns, e.market, self.halted[e.market]))
        return ""

    def _on_MarketResumeRequested(self, e: ev.MarketResumeRequested, out: list[ev.Event]) -> str:
        if e.market not in self.market_idx:
            return f"unknown market {e.market!r}"
        if not self.halted.get(e.market, "").startswith(MANUAL_HALT):
            return f"market {e.market} is not halted by an operator"
        del self.halted[e.market]
        out.append(ev.MarketResumed(self.now_ns, e.market))
        return ""

    # engine-wide and per-market parameters an operator may change (dotted: nested config fields)
    PARAMETERS: tuple[str, ...] = (
        "at_risk_buffer_ppm",
        "at_risk_exit_ppm",
        "liquidation_target_ppm",
        "liquidation_max_notional_quote_q",
        "liquidation_max_account_notional_quote_q",
        "liquidation_account_window_ns",
        "breaker_band_ppm",
        "breaker_window_ns",
        "mass_close_min",
        "withdraw_upnl_weight_ppm",
        *(f"default_oracle.{n}" for n in ORACLE_PARAMETERS),
    )
    MARKET_PARAMETERS: tuple[str, ...] = (
        "liquidation_fee_ppm",
        "liquidation.batch",
        "liquidation.adl",
        "liquidation.backstop_discount_ppm",
        "liquidation.auction.buf_ppm",
        "liquidation.auction.tail_s",
        "liquidation.auction.cusp_ppm",
        "liquidation.auction.tau_s",
        "liquidation.auction.cut_ppm",
        "liquidation.auction.step_s",
        "liquidation.auction.chip_ppm",
        "liquidation.auction.tip_quote_q",
        "liquidation.impact.daily_volume_base_q",
        "liquidation.impact.sigma_ppm",
        "liquidation.impact.coefficient_ppm",
        "margin.imr_floor_ppm",
        "margin.brackets.<i>.mmr_ppm",  # <i>: a bracket's index (dynamic margin moves the rates)
        "margin.brackets.<i>.cum_quote_q",
        *(f"oracle.{n}" for n in ORACLE_PARAMETERS),  # the policy of the market's base asset
    )

    @classmethod
    def is_market_parameter(cls, name: str) -> bool:
        """Whether ``name`` is a market parameter one may change (a bracket's fields by index: ``.0.``)."""
        return re.sub(r"\.[0-9]{1,3}\.", ".<i>.", name) in cls.MARKET_PARAMETERS

    def _on_ParameterChangeRequested(self, e: ev.ParameterChangeRequested, out: list[ev.Event]) -> str:
        """Change one parameter: validated by the config's own checks, then everything re-margined."""
        if abs(e.value) > MAX_QUANTUMS:
            return "value out of bounds"
        try:
            if e.market:
                m = self.market_idx.get(e.market)
                if m is None:
                    return f"unknown market {e.market!r}"
                if not self.is_market_parameter(e.name):
                    return f"{e.name!r} is not a market parameter one may change ({', '.join(self.MARKET_PARAMETERS)})"
                if e.name.startswith("oracle."):
                    old, cfg = self._with_oracle(m.spec.base_asset, e.name.split(".")[1], e.value)
                else:
                    old, spec = _replace_path(m.spec, e.name.split("."), e.value)
                    markets = tuple(spec if x.symbol == e.market else x for x in self.cfg.markets)
                    cfg = dataclasses.replace(self.cfg, markets=markets)
            else:
                if e.name not in self.PARAMETERS:
                    return f"{e.name!r} is not an engine parameter one may change ({', '.join(self.PARAMETERS)})"
                old, cfg = _replace_path(self.cfg, e.name.split("."), e.value)
        except (ValidationError, TypeError, ValueError) as exc:
            return f"invalid value for {e.name}: {exc}"
        self._reconfigure(cfg)
        out.append(ev.ParameterChanged(self.now_ns, e.market, e.name, old, e.value))
        # thresholds and budgets go together: drop every budget so that the screen re-applies each
        # position exactly and derives new budgets under the new parameters
        self.acct_f[: self.n_acc, 4] = 0.0
        touched: list[Bucket] = []
        for m in self.markets:
            if m.mark_q is not None:
                touched.extend(self._remargin_all(m))
        self._evaluate(touched, out)
        return ""

    def _with_oracle(self, asset: str, name: str, value: int) -> tuple[int, EngineConfig]:
        """The config with one field of ``asset``'s oracle policy changed (the asset gets its own policy)."""
        old, pol = _replace_path(self.cfg.policy(asset), [name], value)
        oracle = tuple(sorted([*((a, p) for a, p in self.cfg.oracle if a != asset), (asset, pol)]))
        return old, dataclasses.replace(self.cfg, oracle=oracle)

    def _reconfigure(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        for m, spec in zip(self.markets, cfg.markets, strict=True):
            if spec is not m.spec:
                m.set_spec(spec)
        self.liquidator = self._make_liquidator(cfg)

    @staticmethod
    def _make_liquidator(cfg: EngineConfig) -> liq.Liquidator:
        if cfg.liquidation == "partial":
            return liq.PartialToTarget(cfg.liquidation_target_ppm, cfg.liquidation_max_notional_quote_q)
        return liq.CloseAtMark(cfg.liquidation_max_notional_quote_q)

    def _remargin_all(self, m: _Market) -> list[Bucket]:
        """Re-screen every position of ``m`` from scratch (no budget held): after a parameter change."""
        col = m.column()
        self.pos_budget[col] = -1.0  # below any move, even none: the kernel re-judges every position
        self.pos_band[col] = (1.0, 0.0, 0.0, 0.0)
        return self._remargin(m)

    def _halt(self, asset: str, reason: str, out: list[ev.Event]) -> None:
        """Halt the asset's markets (an automatic halt of another kind takes the new reason; an
        operator's halt stays as it is)."""
        for m in self.markets_of_asset[asset]:
            old = self.halted.get(m.spec.symbol)
            if old is None or (not old.startswith(MANUAL_HALT) and _halt_kind(old) != _halt_kind(reason)):
                self.halted[m.spec.symbol] = reason
                out.append(ev.MarketHalted(self.now_ns, m.spec.symbol, reason))

    def _on_index(self, asset: str, out: list[ev.Event]) -> None:
        index = self.index_q[asset]
        touched: list[Bucket] = []
        for m in self.markets_of_asset[asset]:
            self._accrue(m)
            interval_ns = m.spec.funding.interval_s * NS_PER_S
            ttf = interval_ns - (self.now_ns % interval_ns)
            m.mark_q = orc.mark_price_q(
                m.spec.mark_rule, index, m.last_trade_q, m.rate_e9, ttf, m.spec.funding.interval_s
            )
            if m.spec.funding.source == "computed":
                m.rate_e9 = fnd.funding_rate_e9(fnd.premium_e9(m.mark_q, index), m.spec.funding)
            out.append(ev.MarkPriceUpdated(self.now_ns, m.spec.symbol, m.mark_q, m.rate_e9, m.fidx))
            touched.extend(self._remargin(m))
        for c in self.coll_of_asset[asset]:
            touched.extend(self._remargin_collateral(c))
        # portfolio accounts: the delta-gamma screen of engine.options decides which to revalue in full
        # (the float screen above knows only tiered maintenance)
        touched = self.opt.screen(asset, touched)
        self._evaluate(touched, out)
        if self.wf.auctions:
            self.wf.poll({m.i for m in self.markets_of_asset[asset]}, out)
            self._evaluate([], out)

    def _on_LastTradeObserved(self, e: ev.LastTradeObserved, out: list[ev.Event]) -> str:
        m = self.market_idx.get(e.market)
        if m is None:
            return f"unknown market {e.market!r}"
        if isinstance(e.price_q, bool) or not isinstance(e.price_q, int) or not 0 < e.price_q < MAX_QUANTUMS:
            return "price_q must be a positive integer"
        m.last_trade_q = e.price_q
        return ""

    def _on_FundingRatePublished(self, e: ev.FundingRatePublished, out: list[ev.Event]) -> str:
        m = self.market_idx.get(e.market)
        if m is None:
            return f"unknown market {e.market!r}"
        if m.spec.funding.source != "published":
            return f"market {e.market} computes its own funding rate"
        if isinstance(e.rate_e9, bool) or not isinstance(e.rate_e9, int) or abs(e.rate_e9) > fnd.RATE_SCALE:
            return "rate_e9 must be an integer within ±100 %"
        touched = self._accrue_pass(m)
        m.rate_e9 = fnd.clamp(e.rate_e9, -m.spec.funding.cap_e9, m.spec.funding.cap_e9)
        self._evaluate(touched, out)
        return ""

    def _on_ClockAdvanced(self, e: ev.ClockAdvanced, out: list[ev.Event]) -> str:
        if self.diverged:
            self._oracle_clock(out)
        touched: list[Bucket] = []
        for m in self.markets:
            if m.mark_q is None:
                continue
            self._accrue(m)
            touched.extend(self._remargin(m))
        for c, spec in enumerate(self.coll):
            if spec.yield_spec is not None:  # yield accrual (and a de-peg it causes) moves with time alone
                touched.extend(self._remargin_collateral(c))
        # a capped liquidation waits for its next window, which time alone opens
        n, k = self.n_acc, self.n_pos
        touched.extend(Bucket(r) for r in np.flatnonzero(self.status[:n] == LIQUIDATING).tolist())
        iso = np.flatnonzero((self.pos_status[:k] == LIQUIDATING) & (self.pos_size[:k] != 0) & (self.pos_iso[:k] == 1))
        touched.extend(Bucket(int(self.pos_acct[p]), p) for p in iso.tolist())
        touched = self.opt.screen(None, touched)  # theta: options lose time value (screened, as on a tick)
        self._evaluate(touched, out)
        self.wf.poll(None, out)
        self._evaluate([], out)
        return ""

    # --- options and margin modes ---------------------------------------------------------------------

    def _on_VolObserved(self, e: ev.VolObserved, out: list[ev.Event]) -> str:
        return self.opt.on_vol(e, out)

    def _mode_refuses(self, r: int, fill_mode: str) -> str:
        """Why the account's margin mode refuses a perp fill in ``fill_mode`` (cross or isolated)."""
        mode = int(self.acct_mode[r])
        if mode == opt.PORTFOLIO and fill_mode == "isolated":
            return "isolated positions are not allowed in portfolio margin mode"
        if mode == opt.ISOLATED and fill_mode != "isolated":
            return "account is in isolated margin mode: cross fills are refused"
        return ""

    def _on_MarginModeChanged(self, e: ev.MarginModeChanged, out: list[ev.Event]) -> str:
        """Switch an account's margin mode; refused if it would leave equity below initial margin.

        Rules: options need portfolio mode; portfolio mode holds no isolated positions; isolated mode
        holds no cross positions. A blocked portfolio valuation refuses any switch.
        """
        r = self.row_of.get(e.account_id)
        if r is None:
            return f"unknown account {e.account_id}"
        if self.is_vault(e.account_id):
            return "the backstop vault keeps standard margin"
        if e.mode not in opt.MODE_NAMES:
            return f"mode must be one of {', '.join(opt.MODE_NAMES)}, not {e.mode!r}"
        new = opt.MODE_NAMES.index(e.mode)
        old = int(self.acct_mode[r])
        if new == old:
            return f"account is already in {e.mode} margin mode"
        if self.status[r] in (LIQUIDATING, BANKRUPT):
            return f"account is {STATUS_NAMES[int(self.status[r])]}"
        has_iso = any(self.pos_size[p] and self.pos_iso[p] for p in self.positions_of(r))
        if new != opt.PORTFOLIO and self.opt.has_positions(r):
            return "option positions require portfolio margin mode: close them first"
        if new == opt.PORTFOLIO and has_iso:
            return "close isolated positions first: portfolio mode margins every position together"
        if new == opt.ISOLATED and self._has_cross_perps(r):
            return "close cross positions first: isolated mode holds isolated positions only"
        blocked = self._valuation_blocked(r) or self._oracle_blocked(self._cross_assets(r), orc.Action.OPEN)
        if blocked:
            return blocked
        self.acct_mode[r] = new
        why = self._valuation_blocked(r)
        risk, im = self.cross_risk(r), self.cross_initial(r)
        if why or risk.equity_quote_q < im:
            self.acct_mode[r] = old
            return why or f"equity {risk.equity_quote_q} would be below initial margin {im} in {e.mode} mode"
        if new == opt.PORTFOLIO:
            self.opt.pm_rows.add(r)
        else:
            self.opt.pm_rows.discard(r)
            self.opt.blocked.pop(r, None)
        self._resync(r)
        self._evaluate(self._buckets_of(r), out)
        return ""

    # --- the waterfall's commands ------------------------------------------------------------------

    def _on_AuctionBid(self, e: ev.AuctionBid, out: list[ev.Event]) -> str:
        return self.wf.bid(e, out)

    def _on_VaultDeposit(self, e: ev.VaultDeposit, out: list[ev.Event]) -> str:
        return self.wf.vault_deposit(e, out)

    def _on_VaultWithdrawalRequested(self, e: ev.VaultWithdrawalRequested, out: list[ev.Event]) -> str:
        return self.wf.vault_request(e, out)

    def _on_VaultWithdrawalClaimed(self, e: ev.VaultWithdrawalClaimed, out: list[ev.Event]) -> str:
        return self.wf.vault_claim(e, out)

    def adl_rank(self, account_id: int, market: str) -> dict[str, Any] | None:
        """Where ``account_id``'s position in ``market`` stands in the ADL queue (None if not ranked).

        The queue is the one a bankrupt position of the opposite side would draw on: rank 1 goes first.
        """
        r = self.row_of.get(account_id)
        m = self.market_idx.get(market)
        if r is None or m is None:
            return None
        p = self._find_pos(r, m.i)
        if p < 0 or self.pos_size[p] == 0:
            return None
        queue = self.wf.adl_queue(m, -int(self.pos_size[p]))
        for i, rp in enumerate(queue, 1):
            if rp.account_id == account_id:
                return {"rank": i, "of": len(queue), "lights": rp.lights, "score": str(rp.score)}
        return None

    def _fidx_now(self, m: _Market) -> int:
        return self._fidx_at(m, self.now_ns)

    def _fidx_at(self, m: _Market, ts: int) -> int:
        """The funding index accrued to ``ts``, without storing it (accrual with carry is exact)."""
        if m.fidx_ts_ns is None or m.mark_q is None or ts <= m.fidx_ts_ns:
            return m.fidx
        dt = ts - m.fidx_ts_ns
        inc, _ = fnd.accrue_fidx_carry(m.rate_e9, m.mark_q, dt, m.spec.funding.interval_s, m.fidx_rem)
        return m.fidx + inc

    def _accrue_pass(self, m: _Market) -> list[Bucket]:
        """Accrue funding to now; if the index moved, re-screen the market (its health moved too)."""
        before = m.fidx
        self._accrue(m)
        return self._remargin(m) if m.fidx != before else []

    def _accrue(self, m: _Market) -> None:
        """Accrue the market's funding index to now at the current rate and mark."""
        if m.fidx_ts_ns is not None and m.mark_q is not None and self.now_ns > m.fidx_ts_ns:
            inc, m.fidx_rem = fnd.accrue_fidx_carry(
                m.rate_e9, m.mark_q, self.now_ns - m.fidx_ts_ns, m.spec.funding.interval_s, m.fidx_rem
            )
            if abs(m.fidx + inc) > MAX_QUANTUMS:
                raise InvariantViolation(f"funding index of {m.spec.symbol} would overflow")
            m.fidx += inc
        m.fidx_ts_ns = self.now_ns

    def _kernel_args(self, m: _Market) -> tuple[Any, ...]:
        return (
            self.pos_acct,
            self.pos_size,
            self.pos_cost,
            self.pos_fidx,
            self.pos_iso,
            self.pos_iso_margin,
            self.pos_c,
            self.pos_e,
            self.pos_mm,
            self.pos_budget,
            self.pos_band,
            m.fidx,
            float(m.mark_q or 0),
            *m.consts(),
        )

    def _remargin(self, m: _Market) -> list[Bucket]:
        """Screen every position of market ``m``; return buckets to re-check exactly."""
        col = m.column()
        if self.screen == "reference":
            return self._reference_flags(col)
        return self._screen(col, m)

    def _screen(self, idx: np.ndarray, m: _Market) -> list[Bucket]:
        flag = np.empty(len(idx), dtype=np.uint8)
        kernels.remargin_market(
            idx,
            *self._kernel_args(m),
            self.acct_f,
            self.cfg.at_risk_buffer_ppm / PPM,
            self.cfg.at_risk_exit_ppm / PPM,
            self.pos_status,
            flag,
        )
        out = []
        for p in idx[np.flatnonzero(flag)].tolist():
            r = int(self.pos_acct[p])
            out.append(Bucket(r, p) if self.pos_iso[p] else Bucket(r))
        return out

    def _reference_flags(self, col: np.ndarray) -> list[Bucket]:
        """The twin: recompute every exposed bucket exactly and flag by the same threshold."""
        out = []
        seen = set()
        for p in col.tolist():
            if self.pos_size[p] == 0:
                continue
            b = Bucket(int(self.pos_acct[p]), p) if self.pos_iso[p] else Bucket(int(self.pos_acct[p]))
            if b in seen:
                continue
            seen.add(b)
            if self._exact_may_change(b):
                out.append(b)
        return out

    def _exact_may_change(self, b: Bucket) -> bool:
        """Reference twin of the kernel's flag: breached, or the exact class differs from the status."""
        risk = self.bucket_risk(b)
        if risk.health_quote_q < 0:
            return True
        st = self._status_of(b)
        if st not in (HEALTHY, AT_RISK):
            return True
        return transition(st, self._band_trigger(st, risk)) != st

    def _band_trigger(self, st: int, risk: BucketRisk) -> str:
        """'at_risk' or 'ok' for a bucket not in breach, with the band: enter below b_in, leave at b_out."""
        h, mm = risk.health_quote_q, risk.mm_quote_q
        if st == AT_RISK:
            return "ok" if h * PPM >= self.cfg.at_risk_exit_ppm * mm else "at_risk"
        return "at_risk" if h * PPM < self.cfg.at_risk_buffer_ppm * mm else "ok"

    def _remargin_collateral(self, c: int) -> list[Bucket]:
        rows = np.flatnonzero(self.bal[: self.n_acc, c])
        out = []
        for r in rows.tolist():
            if self.screen == "reference":
                if self._exact_may_change(Bucket(r)):
                    out.append(Bucket(r))
                continue
            self._resync(r)
            if self._float_flag(r):
                out.append(Bucket(r))
        return out

    def _float_flag(self, r: int) -> bool:
        return bool(
            kernels.may_change_py(
                float(self.acct_h[r]),
                float(self.acct_err[r]),
                float(self.acct_mm[r]),
                self.cfg.at_risk_buffer_ppm / PPM,
                self.cfg.at_risk_exit_ppm / PPM,
                int(self.status[r]),
            )
        )

    def _resync(self, r: int) -> None:
        """Recompute account ``r``'s float shadow from its exact state (after any non-tick change)."""
        h = 0.0
        err = 0.0
        for c in range(len(self.coll)):
            v = float(self.collateral_value_quote_q(c, int(self.bal[r, c])))
            self.coll_f[r, c] = v
            h += v
            err += kernels.U * abs(v) * 2
        mm = 0.0
        npos = 0
        for p in self.positions_of(r):
            m = self.markets[int(self.pos_mkt[p])]
            self.pos_budget[p] = 0.0  # every position holds no budget until it is next applied
            self.pos_band[p] = (1.0, 0.0, 0.0, 0.0)  # an empty band: the kernel applies it next time
            if self.pos_size[p] == 0 or m.mark_q is None:
                self.pos_c[p] = self.pos_e[p] = self.pos_mm[p] = 0.0
                continue
            c_, e_, mm_ = kernels.contribution_py(
                int(self.pos_size[p]),
                int(self.pos_cost[p]),
                m.fidx,
                int(self.pos_fidx[p]),
                float(m.mark_q),
                *m.consts(),
            )
            self.pos_c[p], self.pos_e[p], self.pos_mm[p] = c_, e_, mm_
            if not self.pos_iso[p]:
                h += c_
                err += e_
                mm += mm_
                npos += 1
        n = len(self.positions_of(r)) + len(self.coll) + 2
        self.acct_h[r] = h
        self.acct_mm[r] = mm
        self.acct_err[r] = err + n * kernels.U * (abs(h) + abs(mm)) * 2
        self.acct_f[r, 4] = 0.0
        self.acct_f[r, 5] = npos

    def rebuild_shadow(self) -> None:
        """Recompute every float shadow from exact state (after a snapshot restore)."""
        self.acct_f[: self.n_acc, 3] = self.status[: self.n_acc]
        for r in range(self.n_acc):
            self._resync(r)

    # --- liquidation state machine ----------------------------------------------------------------

    def _buckets_of(self, r: int) -> list[Bucket]:
        out = [Bucket(r)]
        out.extend(Bucket(r, p) for p in self.positions_of(r) if self.pos_iso[p] and self.pos_size[p])
        return out

    def _status_of(self, b: Bucket) -> int:
        return int(self.status[b.row]) if b.pos < 0 else int(self.pos_status[b.pos])

    def _set_status(self, b: Bucket, new: int, health: int, out: list[ev.Event]) -> None:
        old = self._status_of(b)
        if old == new:
            return
        if b.pos < 0:
            self.status[b.row] = new
            self.acct_f[b.row, 3] = new
        else:
            self.pos_status[b.pos] = new
        name = "cross" if b.pos < 0 else ISO_BUCKET + self.markets[int(self.pos_mkt[b.pos])].spec.symbol
        out.append(
            ev.AccountStatusChanged(
                self.now_ns, int(self.acct_id[b.row]), name, STATUS_NAMES[old], STATUS_NAMES[new], health
            )
        )

    def _evaluate(self, flagged: Iterable[Bucket], out: list[ev.Event]) -> None:
        """Confirm flagged buckets exactly, move them through the state machine, liquidate breaches,
        then execute what the protocol took over (netted per market when batching).

        Breaches are handled worst first, then larger maintenance first, then account id. Buckets a
        liquidation touched on the side (ADL counterparties, the vault) are confirmed right after.
        """
        self._evaluate_once(flagged, out)
        for _ in range(8):
            if not self._recheck:
                break
            again, self._recheck = self._recheck, []
            self._evaluate_once(again, out)
        self.wf.flush(out)

    def _bucket_of(self, p: int) -> Bucket:
        return Bucket(int(self.pos_acct[p]), p) if self.pos_iso[p] else Bucket(int(self.pos_acct[p]))

    def _evaluate_once(self, flagged: Iterable[Bucket], out: list[ev.Event]) -> None:
        cands = sorted(set(flagged))  # by row, then position (a Bucket is a tuple)
        breaches: list[tuple[int, int, int, Bucket]] = []
        known: dict[Bucket, BucketRisk] = {}
        self._simple_pos = {}
        if len(cands) >= self.cfg.mass_close_min:
            cands = self._confirm_simple(cands, breaches, known)
        for b in cands:
            if b.pos >= 0 and self.pos_size[b.pos] == 0:
                continue
            if b.pos < 0 and self.acct_mode[b.row] == opt.PORTFOLIO and self.opt.update_blocked(b.row, out):
                continue  # cannot be valued: no decision on it until it can (see engine.options)
            risk = known.get(b) or self.bucket_risk(b)
            h = risk.health_quote_q
            st = self._status_of(b)
            if (
                h < 0
                and self._has_positions(b)
                and not self._oracle_blocked(self._bucket_assets(b), orc.Action.LIQUIDATE)
            ):
                breaches.append((h, -risk.mm_quote_q, int(self.acct_id[b.row]), b))
                continue
            trig = "breach_blocked" if h < 0 and self._has_positions(b) else self._band_trigger(st, risk)
            if st == BANKRUPT and trig == "ok" and risk.equity_quote_q <= 0:
                continue
            new = transition(st, trig)
            self._set_status(b, new, h, out)
        breaches.sort()  # worst health, then larger maintenance, then account id, then bucket
        if self.decision_hook is not None:
            self.decision_hook()  # breaches found and confirmed; execution follows (benchmarks time this)
        breached = {t[3].row for t in breaches}
        for r in sorted({b.row for b in cands} - breached):
            self._resync(r)  # its class was in doubt: no position may keep an unapplied budget
        if len(breaches) >= self.cfg.mass_close_min and self._simple_pos:
            breaches = self._mass_close(breaches, out)
        for _h, _mm, _aid, b in breaches:
            now = self.bucket_risk(b)
            if now.health_quote_q >= 0 or not self._has_positions(b):
                # an earlier liquidation in this batch (an isolated bucket releasing margin) cured it
                trig = self._band_trigger(self._status_of(b), now)
                self._set_status(b, transition(self._status_of(b), trig), now.health_quote_q, out)
                self._resync(b.row)
                continue
            self._set_status(b, transition(self._status_of(b), "breach"), now.health_quote_q, out)
            if b.pos < 0 and self.acct_mode[b.row] == opt.PORTFOLIO:
                self.opt.liquidate(b, out)  # full revaluation, largest contributor first, then delta hedge
            else:
                self.liquidator.liquidate(self, b, out)
            r = b.row
            self._resync(r)
            risk = self.bucket_risk(b)
            if b.pos >= 0 and self.pos_size[b.pos] == 0:
                self._set_status(b, transition(LIQUIDATING, "closed"), 0, out)
                continue
            has_positions = self._has_positions(b)
            if risk.equity_quote_q <= 0 and not has_positions:
                trig = "bankrupt"
            elif risk.health_quote_q >= 0:
                trig = "restored" if self._band_trigger(HEALTHY, risk) == "ok" else "restored_at_risk"
            elif has_positions:
                trig = "continues"  # a capped partial close: the rest follows on later events
            else:
                trig = "bankrupt"
            self._set_status(b, transition(LIQUIDATING, trig), risk.health_quote_q, out)

    def _simple_plain(self, m: _Market) -> bool:
        """Whether market ``m``'s maintenance is plain brackets (what the exact kernels compute)."""
        mdl = m.spec.margin
        shift = m.spec.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
        return not (m.mark_q is None or shift < 0 or mdl.sqrt_imf_factor_ppm or mdl.close_fee_ppm or mdl.mm_on_entry)

    @staticmethod
    def _kernel_scales(m: _Market) -> tuple[np.int64, int, int]:
        """The exact kernels' mark and divisors: value = size x mark / pshift, funding = size x d fidx / fdiv."""
        assert m.mark_q is not None
        sd = m.spec.size_decimals
        return np.int64(m.mark_q), 10 ** (sd + PRICE_DECIMALS - QUOTE_DECIMALS), 10**sd * FUNDING_SCALE // QUOTE_SCALE

    def _kernel_tables(self, m: _Market) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mdl = m.spec.margin
        return (
            np.array([b.floor_quote_q for b in mdl.brackets], dtype=np.int64),
            np.array([b.mmr_ppm for b in mdl.brackets], dtype=np.int64),
            np.array([b.cum_quote_q for b in mdl.brackets], dtype=np.int64),
        )

    def _confirm_simple(
        self, cands: list[Bucket], breaches: list[tuple[int, int, int, Bucket]], known: dict[Bucket, BucketRisk]
    ) -> list[Bucket]:
        """Exact confirmation of many simple buckets at once: isolated positions, and cross buckets of
        accounts with one linked position and only the quote asset. Their exact equity and
        maintenance come from one kernel call per market and kind. Breaches go straight to
        ``breaches``; the other buckets are returned (with their exact risk in ``known``) for the
        per-bucket pass, which also takes everything not simple.
        """
        from fluidmargin.risk.liquidation import mass_close as mc

        ca = np.fromiter(itertools.chain.from_iterable(cands), dtype=np.int64, count=2 * len(cands)).reshape(-1, 2)
        rows = ca[ca[:, 1] < 0, 0]
        p = self.first_pos[rows]
        others = [c for c in range(len(self.coll)) if c != self.quote_c]
        q = np.maximum(p, 0)
        simple = (p >= 0) & (self.pos_next[q] == -1) & (self.pos_iso[q] == 0) & (self.acct_mode[rows] != opt.PORTFOLIO)
        if others and len(rows):
            simple &= ~self.bal[rows][:, others].any(axis=1)
        iso_p = ca[ca[:, 1] >= 0, 1]
        iso_p = iso_p[self.pos_size[iso_p] != 0]
        kinds = ((False, rows[simple], p[simple]), (True, self.pos_acct[iso_p], iso_p))
        done: set[Bucket] = set()
        for m in self.markets:
            if not self._simple_plain(m):
                continue
            assert m.mark_q is not None
            blocked = bool(self._oracle_blocked([m.spec.base_asset], orc.Action.LIQUIDATE))
            for iso, krows, kpos in kinds:
                sel = np.flatnonzero(self.pos_mkt[kpos] == m.i)
                if not len(sel):
                    continue
                rs, ps = krows[sel], kpos[sel]
                res = np.zeros((len(sel), 3), dtype=np.int64)
                mc.exact_risk(
                    self.pos_size[ps],
                    self.pos_cost[ps],
                    self.pos_iso_margin[ps] if iso else self.bal[rs, self.quote_c],
                    m.fidx - self.pos_fidx[ps],
                    *self._kernel_scales(m),
                    *self._kernel_tables(m),
                    res,
                )
                ok = res[:, 0] == 1
                h = res[:, 1] - res[:, 2]
                br = ok & (h < 0) & (self.pos_size[ps] != 0) & (not blocked)
                bs = [
                    Bucket(r, pp) if iso else Bucket(r) for r, pp in zip(rs[br].tolist(), ps[br].tolist(), strict=True)
                ]
                breaches.extend(
                    zip(h[br].tolist(), (-res[br, 2]).tolist(), self.acct_id[rs[br]].tolist(), bs, strict=True)
                )
                self._simple_pos.update(zip(bs, ps[br].tolist(), strict=True))
                done.update(bs)
                rest = ok & ~br
                for r, pp, eq, mm in zip(
                    rs[rest].tolist(), ps[rest].tolist(), res[rest, 1].tolist(), res[rest, 2].tolist(), strict=True
                ):
                    known[Bucket(r, pp) if iso else Bucket(r)] = BucketRisk(eq, mm)
        return [b for b in cands if b not in done] if done else cands

    def _mass_close(self, breaches: list[tuple[int, int, int, Bucket]], out: list[ev.Event]) -> list[Any]:
        """Close the simple breaches of a market in one exact kernel call; return the rest, in order.

        Simple: see :meth:`_confirm_simple`; on a plain bracket model, with no liquidation caps. Same
        figures as the per-bucket path (see risk.mass_close); what the kernel cannot settle, or a
        bucket that would end with a shortfall, stays with the per-bucket path, which runs after.
        """
        cfg = self.cfg
        if cfg.liquidation_max_notional_quote_q or cfg.liquidation_max_account_notional_quote_q:
            return breaches
        sp = self._simple_pos
        n = len(breaches)
        h = np.fromiter((t[0] for t in breaches), dtype=np.int64, count=n)
        aid = np.fromiter((t[2] for t in breaches), dtype=np.int64, count=n)
        row = np.fromiter((t[3].row for t in breaches), dtype=np.int64, count=n)
        pos = np.fromiter((t[3].pos for t in breaches), dtype=np.int64, count=n)
        p = np.fromiter((sp.get(t[3], -1) for t in breaches), dtype=np.int64, count=n)
        q = np.maximum(p, 0)
        st = np.where(pos >= 0, self.pos_status[q], self.status[row])
        ok = (p >= 0) & (st != LIQUIDATING)
        if self.cfg.backstop is not None:
            ok &= aid != self.cfg.backstop.account_id
        mk = self.pos_mkt[q]
        done = np.zeros(n, dtype=bool)
        for m in self.markets:
            if not self._simple_plain(m):
                continue
            for iso in (False, True):
                sel = np.flatnonzero(ok & (mk == m.i) & ((pos >= 0) == iso))
                if len(sel):
                    handled = self._mass_close_market(m, iso, sel, row[sel], p[sel], h[sel], out)
                    done[sel[handled]] = True
        if not done.any():
            return breaches
        return [t for t, d in zip(breaches, done.tolist(), strict=True) if not d]

    def _mass_close_market(
        self,
        m: _Market,
        iso: bool,
        idx: np.ndarray,
        rows: np.ndarray,
        ps: np.ndarray,
        hb: np.ndarray,
        out: list[ev.Event],
    ) -> np.ndarray:
        """Run the close kernel over one market's simple breaches (cross or isolated); returns the
        positions in ``idx`` it settled."""
        from fluidmargin.risk.liquidation import mass_close as mc

        assert m.mark_q is not None
        res = np.zeros((len(idx), 11), dtype=np.int64)
        mc.mass_close(
            self.pos_size[ps],
            self.pos_cost[ps],
            self.pos_iso_margin[ps] if iso else self.bal[rows, self.quote_c],
            m.fidx - self.pos_fidx[ps],
            *self._kernel_scales(m),
            m.spec.liquidation_fee_ppm,
            *self._kernel_tables(m),
            isinstance(self.liquidator, liq.PartialToTarget),
            int(getattr(self.liquidator, "target_ppm", 0)),
            res,
        )
        ok = res[:, 0] == mc.ACCEPTED
        # shortfalls the fund covers whatever the order are settled here; otherwise ADL may be needed
        fund = self.wf.fund_of_market(m.i) if iso else wfl.MAIN_FUND
        sf = np.where(ok, np.maximum(-res[:, 7], 0), 0)
        if int(sf.sum()) > max(self.wf.funds[fund], 0):
            ok &= sf == 0
        if not ok.any():
            return np.zeros(0, dtype=np.int64)
        rows, ps, hb, res, sf = rows[ok], ps[ok], hb[ok], res[ok], sf[ok]
        size0 = self.pos_size[ps].copy()
        sign = np.sign(size0)
        q, owed, realized, cost2, size2, fee = (res[:, j] for j in range(1, 7))
        eq, mm, cash, bal_after = res[:, 7], res[:, 8], res[:, 9], res[:, 10]
        closed = size2 == 0
        # exact state: funding settled, the close, the penalty
        self.pos_fidx[ps] = m.fidx
        self.pos_size[ps] = size2
        self.pos_cost[ps] = cost2
        m.long_oi_base_q += int(np.clip(size2, 0, None).sum()) - int(np.clip(size0, 0, None).sum())
        self.clearing_q += int(owed.sum()) - int(realized.sum())
        # restored, but still inside the at-risk band (health < buffer x maintenance): at risk
        buf = self.cfg.at_risk_buffer_ppm
        inside = np.array([(e_ - m_) * PPM < buf * m_ for e_, m_ in zip(eq.tolist(), mm.tolist(), strict=True)])
        if iso:
            old = self.pos_status[ps].copy()
            # restored (or at risk), or closed: the bucket is gone
            new = np.where(closed | ~inside, HEALTHY, AT_RISK).astype(np.int8)
            health = np.where(closed, 0, eq - mm)
            released = np.where(closed, bal_after + sf, 0)  # a closed position's margin returns to the account
            self.pos_iso_margin[ps] = np.where(closed, 0, bal_after)
            self.pos_status[ps] = new
            np.add.at(self.bal[:, self.quote_c], rows, released)
            rel_f = np.zeros(self.n_acc, dtype=np.float64)
            np.add.at(rel_f, rows, released.astype(np.float64))
            touched = np.unique(rows)
            self.acct_h[touched] += rel_f[touched]
            self.coll_f[touched, self.quote_c] += rel_f[touched]
            self.acct_err[touched] += kernels.U * (np.abs(self.acct_h[touched]) + np.abs(rel_f[touched])) * 4
        else:
            old = self.status[rows].copy()
            new = np.where(eq > 0, np.where(inside, AT_RISK, HEALTHY), BANKRUPT).astype(np.int8)
            health = np.maximum(eq, 0) - mm
            bal_after = bal_after + sf  # a shortfall is put back: the account ends at zero
            self.bal[rows, self.quote_c] = bal_after
            self.status[rows] = new
            # float shadow: as for seeded accounts, the balance now and the positions' contributions next
            bal_f = bal_after.astype(np.float64)
            self.acct_h[rows] = bal_f
            self.coll_f[rows, self.quote_c] = bal_f
            self.acct_mm[rows] = 0.0
            self.acct_err[rows] = kernels.U * np.abs(bal_f) * 4
            self.acct_f[rows, 3] = new
            self.acct_f[rows, 4] = 0.0
            self.acct_f[rows, 5] = (~closed).astype(np.float64)
        aids = self.acct_id[rows].tolist()
        self.wf.orders.append(wfl.Block(m.i, self.acct_id[rows], sign * q, cash))
        self.pos_c[ps] = self.pos_e[ps] = self.pos_mm[ps] = self.pos_budget[ps] = 0.0
        self.pos_band[ps] = (1.0, 0.0, 0.0, 0.0)
        self._screen(np.sort(ps[~closed]), m)
        out.append(
            ev.PositionsLiquidated(
                self.now_ns,
                m.spec.symbol,
                ISO_BUCKET + m.spec.symbol if iso else "cross",
                m.mark_q,
                aids,
                [STATUS_NAMES[int(x)] for x in old.tolist()],
                hb.tolist(),
                (-owed).tolist(),
                (sign * q).tolist(),
                realized.tolist(),
                fee.tolist(),
                sf.tolist(),
                [STATUS_NAMES[int(x)] for x in new.tolist()],
                health.tolist(),
            )
        )
        self.wf.fund_in(self.wf.fund_of_market(m.i), int(fee.sum()), "liquidation_fee", -1, out)
        if sf.any():
            self.wf.fund_out(fund, int(sf.sum()), "shortfall", -1, out)
        return np.flatnonzero(ok)

    def _has_positions(self, b: Bucket) -> bool:
        if b.pos >= 0:
            return bool(self.pos_size[b.pos])
        return self._has_cross_perps(b.row) or self.opt.has_positions(b.row)

    def _bucket_assets(self, b: Bucket) -> list[str]:
        if b.pos >= 0:
            return [self.markets[int(self.pos_mkt[b.pos])].spec.base_asset]
        return self._cross_assets(b.row)

    # --- insurance fund ---------------------------------------------------------------------------

    def fund_fee(self, amount_q: int, account_id: int, out: list[ev.Event], market: int = -1) -> None:
        """A liquidation penalty into the insurance fund (the market's own one, if it has one)."""
        fund = wfl.MAIN_FUND if market < 0 else self.wf.fund_of_market(market)
        self.wf.fund_in(fund, amount_q, "liquidation_fee", account_id, out)

    # --- integrity ------------------------------------------------------------------------------

    def ledger_total(self, c: int | None = None) -> int:
        """Sum of every ledger for collateral ``c`` (quote by default): must equal net deposits."""
        c = self.quote_c if c is None else c
        total = int(self.bal[: self.n_acc, c].astype(object).sum()) if self.n_acc else 0
        if c == self.quote_c:
            total += int(self.pos_iso_margin[: self.n_pos].astype(object).sum()) if self.n_pos else 0
            total += sum(self.wf.funds.values()) - self.wf.seed_total + self.fees_q + self.clearing_q
            total -= self.socialized_q
        return total

    def state_dict(self, for_hash: bool = False) -> dict[str, Any]:
        """The whole exact state as plain values (float shadows excluded): hashed and snapshotted.

        ``for_hash`` replaces the set of seen event ids by its count and order-independent digest.
        """
        n, k = self.n_acc, self.n_pos
        return {
            "version": 1,
            "seq": self.seq,
            "now_ns": self.now_ns,
            "config": self.cfg.to_dict(),
            "accounts": {
                "acct_id": self.acct_id[:n].copy(),
                "bal": self.bal[:n].copy(),
                "status": self.status[:n].copy(),
                "mode": self.acct_mode[:n].copy(),
                "first_pos": self.first_pos[:n].copy(),
            },
            "options": self.opt.state(),
            "positions": {f: getattr(self, f)[:k].copy() for f in self._EXACT_POS},
            "markets": [
                {
                    "mark_q": m.mark_q,
                    "last_trade_q": m.last_trade_q,
                    "fidx": m.fidx,
                    "fidx_ts_ns": m.fidx_ts_ns,
                    "fidx_rem": m.fidx_rem,
                    "rate_e9": m.rate_e9,
                    "long_oi_base_q": m.long_oi_base_q,
                    "col": m.column().copy(),
                }
                for m in self.markets
            ],
            "oracle": {
                "src_last": sorted((a, s, p, t) for (a, s), (p, t) in self.src_last.items()),
                "index_q": sorted(self.index_q.items()),
                "index_ts": sorted(self.index_ts.items()),
                "index_hist": sorted((a, list(h)) for a, h in self.index_hist.items()),
                "index_n": sorted(self.index_n.items()),
                "reanchor": sorted(
                    (a, p.first_ts_ns, p.last_q, p.count, [list(x) for x in p.sources])
                    for a, p in self.reanchor.items()
                ),
                "anchor_ts": sorted(self.anchor_ts.items()),
                "diverged": sorted(self.diverged.items()),
                "halted": sorted(self.halted.items()),
            },
            "waterfall": self.wf.state(),
            "ledgers": {
                "fees_q": self.fees_q,
                "clearing_q": self.clearing_q,
                "socialized_q": self.socialized_q,
                "deposits": list(self.deposits),
                "withdrawals": list(self.withdrawals),
            },
            "seen_ids": [len(self.seen_ids), self._ids_acc] if for_hash else sorted(self.seen_ids),
        }

    def state_hash(self) -> str:
        """SHA-256 over a canonical encoding of :meth:`state_dict`."""
        h = hashlib.sha256()
        _feed(h, self.state_dict(for_hash=True))
        return h.hexdigest()

    @classmethod
    def from_state(cls, state: dict[str, Any], screen: str = "incremental") -> Engine:
        eng = cls(
            EngineConfig.from_dict(state["config"]),
            screen=screen,
            capacity=max(16, len(state["accounts"]["acct_id"]), len(state["positions"]["pos_acct"])),
        )
        eng.seq = state["seq"]
        eng.now_ns = state["now_ns"]
        a = state["accounts"]
        n = len(a["acct_id"])
        eng.n_acc = n
        for name in ("acct_id", "bal", "status", "first_pos"):
            getattr(eng, name)[:n] = a[name]
        eng.row_of = {int(x): i for i, x in enumerate(a["acct_id"].tolist())}
        if "mode" in a:
            eng.acct_mode[:n] = a["mode"]
        eng.opt.pm_rows = {int(r) for r in np.flatnonzero(eng.acct_mode[:n] == opt.PORTFOLIO).tolist()}
        eng.opt.load(state.get("options"))
        k = len(state["positions"]["pos_acct"])
        eng.n_pos = k
        for f in cls._EXACT_POS:
            getattr(eng, f)[:k] = state["positions"][f]
        for m, s in zip(eng.markets, state["markets"], strict=True):
            m.mark_q, m.last_trade_q, m.fidx = s["mark_q"], s["last_trade_q"], s["fidx"]
            m.fidx_ts_ns, m.rate_e9, m.long_oi_base_q = s["fidx_ts_ns"], s["rate_e9"], s["long_oi_base_q"]
            m.fidx_rem = s["fidx_rem"]
            m.col = np.asarray(s["col"], dtype=np.int64).copy()
        o = state["oracle"]
        eng.src_last = {(a_, s_): (p, t) for a_, s_, p, t in o["src_last"]}
        eng.index_q = dict(o["index_q"])
        eng.index_ts = dict(o["index_ts"])
        eng.index_hist = {a: [tuple(x) for x in h] for a, h in o["index_hist"]}
        # a snapshot from before quorums: each index counts the sources that had printed for it
        n_of = Counter(a_ for a_, _s in eng.src_last)
        eng.index_n = dict(o["index_n"]) if "index_n" in o else {a_: n_of[a_] for a_ in eng.index_q}
        eng.reanchor = {
            a_: orc.Pending(f, q, c, tuple((str(x[0]), int(x[1]), int(x[2])) for x in srcs))
            for a_, f, q, c, srcs in o.get("reanchor", ())
        }
        eng.anchor_ts = dict(o.get("anchor_ts", ()))
        eng.diverged = dict(o.get("diverged", ()))
        eng.halted = dict(o["halted"])
        led = state["ledgers"]
        eng.wf.load(state["waterfall"])
        eng.fees_q, eng.clearing_q = led["fees_q"], led["clearing_q"]
        eng.socialized_q = led["socialized_q"]
        eng.deposits, eng.withdrawals = list(led["deposits"]), list(led["withdrawals"])
        eng.seen_ids = set(state["seen_ids"])
        for eid in eng.seen_ids:
            eng._ids_acc = (eng._ids_acc + _id_digest(eid)) & _MASK128
        eng.rebuild_shadow()
        return eng


_MASK128 = (1 << 128) - 1


class _Overflow(Exception):
    """A computed quantum would leave the int64 range: the input is refused, nothing changes."""


def _halt_kind(reason: str) -> str:
    """An automatic halt's kind (its reason's fixed opening): a halt of the same kind keeps its reason."""
    return next((k for k in (MANUAL_HALT, DIVERGENCE_HALT, RANGE_HALT) if reason.startswith(k)), reason)


def _id_digest(eid: str) -> int:
    return int.from_bytes(hashlib.sha256(eid.encode()).digest()[:16], "little")


def _feed(h: Any, obj: Any) -> None:
    """Canonical, type-tagged encoding for hashing (dict keys sorted; arrays as little-endian bytes)."""
    if isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj):
            _feed(h, key)
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[%d" % len(obj))
        for x in obj:
            _feed(h, x)
        h.update(b"]")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        h.update(b"A" + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    elif obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"T" if obj else b"F")
    elif isinstance(obj, int):
        h.update(b"I%d;" % obj)
    elif isinstance(obj, str):
        b = obj.encode()
        h.update(b"S%d:" % len(b) + b)
    else:
        raise InvariantViolation(f"cannot hash {type(obj).__name__}")


def _replace_path(obj: Any, path: list[str], value: int) -> tuple[int, Any]:
    """``obj`` with the nested field ``path`` set to ``value`` (frozen dataclasses all the way down);
    returns (old value, new object). Booleans are given as 0/1."""
    head = path[0]
    if isinstance(obj, tuple):  # an element of a tuple field (a bracket), by index
        i = int(head)
        if not 0 <= i < len(obj):
            raise ValidationError(f"no element {i} (there are {len(obj)})")
        old, new_item = _replace_path(obj[i], path[1:], value)
        return old, (*obj[:i], new_item, *obj[i + 1 :])
    cur = getattr(obj, head)
    if len(path) > 1:
        old, new_child = _replace_path(cur, path[1:], value)
        return old, dataclasses.replace(obj, **{head: new_child})
    if isinstance(cur, bool):
        if value not in (0, 1):
            raise ValidationError(f"{head} must be in [0, 1] (a flag), got {value}")
        return int(cur), dataclasses.replace(obj, **{head: bool(value)})
    if not isinstance(cur, int):
        raise ValidationError(f"{head} is not an integer parameter")
    return cur, dataclasses.replace(obj, **{head: value})
