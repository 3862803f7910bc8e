"""The margin engine: a deterministic state machine over an ordered stream of input events.

State is struct-of-arrays in exact int64 columns (balances, sizes, costs, funding indices); a
float64 shadow of each bucket's health is kept current by :func:`risk.perp.kernels.remargin_market`
and only ever used to decide which buckets to re-check exactly. Nothing changes state on a float.

``screen="reference"`` swaps the incremental screen for a plain full exact recompute of every
exposed bucket: the twin the property tests compare against (same events, same state hash).

:class:`Engine` is the one entry point (:meth:`Engine.apply`, the reads) and holds the rooms, each
with one job: the :class:`~fluidmargin.engine.ledger.Ledger` (state columns), oracle state, funding,
the book (valuation), the float screen, the batched kernels, exact confirmation, fills, account
inputs, seeding, prices, parameters, snapshots, the waterfall and the option book. It dispatches each
input to the room that handles it, and implements the ports (:mod:`fluidmargin.engine.ports`) the
waterfall, the option book and the service are typed against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar, overload

import numpy as np

from fluidmargin.core.errors import InvariantViolation
from fluidmargin.core.units import MAX_QUANTUMS
from fluidmargin.engine import params
from fluidmargin.engine.accounts import Accounts
from fluidmargin.engine.batch import Batch
from fluidmargin.engine.book import Book
from fluidmargin.engine.confirm import Confirm
from fluidmargin.engine.fills import FillCheck, Fills, WhatIf
from fluidmargin.engine.funding import Funding
from fluidmargin.engine.governance import Governance
from fluidmargin.engine.ledger import Ledger, Savepoint
from fluidmargin.engine.options import OptionBook
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.ports import OptionsHost, ServicePort, SizingHost, WaterfallHost
from fluidmargin.engine.prices import Prices
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.seeding import Seeding
from fluidmargin.engine.snapshot import MASK128, Snapshot, hash_state, id_digest
from fluidmargin.engine.types import Bucket, BucketRisk, MarketRecord
from fluidmargin.engine.waterfall import MAIN_FUND, Liquidator, Waterfall
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import CollateralAsset
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.risk.stats import gap

__all__ = ["Bucket", "BucketRisk", "Engine"]

T = TypeVar("T")


class _Via(Generic[T]):
    """An engine attribute kept in one of its rooms: read and written there (``eng.pos_size`` is
    ``eng.ledger.pos_size``)."""

    __slots__ = ("name", "room")

    def __init__(self, room: str) -> None:
        self.room = room
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Via[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> T | _Via[T]:
        if obj is None:
            return self
        return getattr(getattr(obj, self.room), self.name)  # type: ignore[no-any-return]

    def __set__(self, obj: object, value: T) -> None:
        setattr(getattr(obj, self.room), self.name, value)


_L = "ledger"
_O = "oracles"


class Engine:
    """Apply input events in order; every call returns the output events it caused."""

    PARAMETERS = params.PARAMETERS
    MARKET_PARAMETERS = params.MARKET_PARAMETERS
    is_market_parameter = staticmethod(params.is_market_parameter)

    # the ledger's state, as the engine's own attributes (for readers and tests)
    cfg: _Via[EngineConfig] = _Via(_L)
    screen: _Via[str] = _Via(_L)
    markets: _Via[list[MarketRecord]] = _Via(_L)
    market_idx: _Via[dict[str, MarketRecord]] = _Via(_L)
    coll: _Via[list[CollateralAsset]] = _Via(_L)
    coll_idx: _Via[dict[str, int]] = _Via(_L)
    quote_c: _Via[int] = _Via(_L)
    assets: _Via[list[str]] = _Via(_L)
    markets_of_asset: _Via[dict[str, list[MarketRecord]]] = _Via(_L)
    coll_of_asset: _Via[dict[str, list[int]]] = _Via(_L)
    max_q: _Via[int] = _Via(_L)
    fees_q: _Via[int] = _Via(_L)
    clearing_q: _Via[int] = _Via(_L)
    socialized_q: _Via[int] = _Via(_L)
    deposits: _Via[list[int]] = _Via(_L)
    withdrawals: _Via[list[int]] = _Via(_L)
    now_ns: _Via[int] = _Via(_L)
    seq: _Via[int] = _Via(_L)
    seen_ids: _Via[set[str]] = _Via(_L)
    n_acc: _Via[int] = _Via(_L)
    row_of: _Via[dict[int, int]] = _Via(_L)
    n_pos: _Via[int] = _Via(_L)
    acct_id: _Via[np.ndarray] = _Via(_L)
    bal: _Via[np.ndarray] = _Via(_L)
    status: _Via[np.ndarray] = _Via(_L)
    acct_mode: _Via[np.ndarray] = _Via(_L)
    first_pos: _Via[np.ndarray] = _Via(_L)
    acct_f: _Via[np.ndarray] = _Via(_L)
    coll_f: _Via[np.ndarray] = _Via(_L)
    acct_h: _Via[np.ndarray] = _Via(_L)
    acct_mm: _Via[np.ndarray] = _Via(_L)
    acct_err: _Via[np.ndarray] = _Via(_L)
    pos_acct: _Via[np.ndarray] = _Via(_L)
    pos_mkt: _Via[np.ndarray] = _Via(_L)
    pos_size: _Via[np.ndarray] = _Via(_L)
    pos_cost: _Via[np.ndarray] = _Via(_L)
    pos_fidx: _Via[np.ndarray] = _Via(_L)
    pos_iso: _Via[np.ndarray] = _Via(_L)
    pos_iso_margin: _Via[np.ndarray] = _Via(_L)
    pos_lev: _Via[np.ndarray] = _Via(_L)
    pos_next: _Via[np.ndarray] = _Via(_L)
    pos_status: _Via[np.ndarray] = _Via(_L)
    pos_c: _Via[np.ndarray] = _Via(_L)
    pos_e: _Via[np.ndarray] = _Via(_L)
    pos_mm: _Via[np.ndarray] = _Via(_L)
    pos_budget: _Via[np.ndarray] = _Via(_L)
    pos_band: _Via[np.ndarray] = _Via(_L)
    # the oracle state
    src_last: _Via[dict[tuple[str, str], tuple[int, int]]] = _Via(_O)
    index_q: _Via[dict[str, int]] = _Via(_O)
    index_ts: _Via[dict[str, int]] = _Via(_O)
    index_hist: _Via[dict[str, list[tuple[int, int]]]] = _Via(_O)
    index_n: _Via[dict[str, int]] = _Via(_O)
    reanchor: _Via[dict[str, orc.Pending]] = _Via(_O)
    anchor_ts: _Via[dict[str, int]] = _Via(_O)
    diverged: _Via[dict[str, int]] = _Via(_O)
    halted: _Via[dict[str, str]] = _Via(_O)
    # exact confirmation's instrumentation (benchmarks time the decision)
    decision_hook: _Via[Callable[[], None] | None] = _Via("confirm")

    def __init__(self, config: EngineConfig, screen: str = "incremental", capacity: int = 1024) -> None:
        if screen not in ("incremental", "reference"):
            raise ValueError("screen must be 'incremental' or 'reference'")
        gap.check_config(config)
        self.ledger = led = Ledger(config, screen, capacity)
        self.oracles = ora = OracleState(led)
        self.funding = fund = Funding(led)
        self.opt = opt = OptionBook(self, led, ora)  # option series, positions, mark vols, portfolio accounts
        self.book = book = Book(led, ora, fund, opt)
        self.screener = scr = Screen(led, book, fund)
        self.wf = wf = Waterfall(self, led)  # insurance funds, tick orders, auctions, the backstop vault
        led.row_states.extend((wf, opt))
        batch = Batch(led, ora, scr, wf)
        self.confirm = conf = Confirm(led, ora, book, scr, batch, wf, opt, self, params.make_liquidator(config))
        self.fills = fills = Fills(led, ora, fund, book, scr, conf, opt)
        self.accounts = acc = Accounts(led, book, fund, scr, conf)
        self.seeding = Seeding(led, ora, fund, book, scr, conf)
        self.prices = px = Prices(led, ora, fund, scr, conf, opt, wf)
        self.params = params.Params(led, scr, conf)
        self.gov = gov = Governance(led, self.params, wf)  # parameter proposals under guardrails
        self.snapshot = Snapshot(led, ora, wf, opt, gov)
        # each input event's handler, by the event's class name
        self._handlers: dict[str, Callable[[Any, list[ev.Event]], str]] = {
            "AccountOpened": acc.on_account_opened,
            "Deposited": acc.on_deposited,
            "WithdrawalRequested": acc.on_withdrawal_requested,
            "FundingSettleRequested": acc.on_funding_settle_requested,
            "TradeFilled": fills.on_trade_filled,
            "MarginModeChanged": fills.on_margin_mode_changed,
            "AccountsSeeded": self.seeding.on_accounts_seeded,
            "PriceObserved": px.on_price_observed,
            "OracleReanchorRequested": px.on_reanchor_requested,
            "MarketHaltRequested": px.on_halt_requested,
            "MarketResumeRequested": px.on_resume_requested,
            "LastTradeObserved": px.on_last_trade,
            "FundingRatePublished": px.on_funding_rate,
            "ClockAdvanced": px.on_clock,
            "ParameterChangeRequested": gov.on_parameter_change,  # Params', then it overrides proposals
            "ProposalSubmitted": gov.on_submitted,
            "ProposalApproved": gov.on_approved,
            "ProposalRejected": gov.on_rejected,
            "ProposalCancelled": gov.on_cancelled,
            "VolObserved": opt.on_vol,
            "AuctionBid": wf.bid,
            "VaultDeposit": wf.vault_deposit,
            "VaultWithdrawalRequested": wf.vault_request,
            "VaultWithdrawalClaimed": wf.vault_claim,
        }

    @property
    def insurance_q(self) -> int:
        """The main insurance fund's balance."""
        return self.wf.funds[MAIN_FUND]

    @property
    def liquidator(self) -> Liquidator:
        """The liquidation sizing in force (from the config)."""
        return self.confirm.liquidator

    # --- the entry point --------------------------------------------------------------------------

    def apply(self, event: ev.Event) -> list[tuple[int, ev.Event]]:
        """Apply one input event. Returns ``[(seq, event), ...]``: the input first, then what it caused.

        A duplicate ``event_id`` returns ``[]`` (idempotent: nothing to log).
        """
        if not event.is_input:
            raise InvariantViolation(f"{type(event).__name__} is an output event, not an input")
        led = self.ledger
        bad = ev.field_type_error(event)
        eid = event.event_id if isinstance(getattr(event, "event_id", ""), str) else ""  # type: ignore[attr-defined]
        if eid and not bad:
            if eid in led.seen_ids:
                return []
            led.seen_ids.add(eid)
            led.ids_acc = (led.ids_acc + id_digest(eid)) & MASK128
        out: list[ev.Event] = []
        ts = event.ts_ns
        name = type(event).__name__
        if bad:
            if isinstance(ts, int) and not isinstance(ts, bool) and led.now_ns <= ts <= MAX_QUANTUMS:
                led.now_ns = ts  # like any other refused input, it still marks the time it arrived
            out.append(ev.InputRejected(led.now_ns, name, bad, eid))
        elif not 0 <= ts <= MAX_QUANTUMS:
            out.append(ev.InputRejected(led.now_ns, name, "ts_ns must be a non-negative integer", eid))
        elif ts < led.now_ns:
            out.append(ev.InputRejected(led.now_ns, name, f"out of order: ts {ts} < engine time {led.now_ns}", eid))
        elif reason := self.funding.time_overflow(ts):
            out.append(ev.InputRejected(led.now_ns, name, reason, eid))
        else:
            led.now_ns = ts
            if self.opt.series:
                settled = self.opt.settle_due(out)  # time passed an expiry: settle before the input itself
                if settled:
                    for r in settled:
                        self.screener.resync(r)
                    self.confirm.evaluate([Bucket(r) for r in settled], out)
            reason = self._handlers[name](event, out)
            if reason:
                out.append(ev.InputRejected(ts, name, reason, eid))
            if self.gov.live:  # queued or active proposals: due to activate, settle or roll back
                self.gov.step(out)
        records = []
        led.seq += 1
        records.append((led.seq, event))
        for o in out:
            led.seq += 1
            records.append((led.seq, o))
        return records

    def apply_all(self, events: Iterable[ev.Event]) -> list[tuple[int, ev.Event]]:
        out = []
        for e in events:
            out.extend(self.apply(e))
        return out

    # --- accounts and positions (the ledger) ------------------------------------------------------

    def row(self, account_id: int) -> int | None:
        return self.ledger.row_of.get(account_id)

    def is_vault(self, account_id: int) -> bool:
        return self.ledger.is_vault(account_id)

    def vault_row(self) -> int:
        """The backstop vault's account row (opened on first use)."""
        return self.ledger.vault_row()

    def positions_of(self, r: int) -> list[int]:
        return self.ledger.positions_of(r)

    def find_pos(self, r: int, m: int) -> int:
        """Row ``r``'s position slot in market index ``m`` (-1: none)."""
        return self.ledger.find_pos(r, m)

    def new_pos(self, r: int, m: MarketRecord) -> int:
        return self.ledger.new_pos(r, m)

    def bucket_of(self, p: int) -> Bucket:
        return self.ledger.bucket_of(p)

    def buckets_of(self, r: int) -> list[Bucket]:
        return self.ledger.buckets_of(r)

    def status_of(self, b: Bucket) -> int:
        return self.ledger.status_of(b)

    def savepoint(self, r: int) -> AbstractContextManager[Savepoint]:
        """Roll back whatever the block does to row ``r`` (and the ledgers), unless it commits."""
        return self.ledger.savepoint(r)

    # --- valuation (the book) ------------------------------------------------------------------------

    def collateral_value_quote_q(self, c: int, amount_q: int) -> int:
        return self.book.collateral_value_quote_q(c, amount_q)

    def position_risk(self, p: int) -> margin.PositionRisk:
        return self.book.position_risk(p)

    def position_initial(self, p: int) -> int:
        return self.book.position_initial(p)

    def cross_risk(self, r: int) -> BucketRisk:
        return self.book.cross_risk(r)

    def cross_initial(self, r: int) -> int:
        return self.book.cross_initial(r)

    def iso_risk(self, p: int) -> BucketRisk:
        return self.book.iso_risk(p)

    def bucket_risk(self, b: Bucket) -> BucketRisk:
        return self.book.bucket_risk(b)

    def has_positions(self, b: Bucket) -> bool:
        return self.book.has_positions(b)

    def has_cross_perps(self, r: int) -> bool:
        return self.book.has_cross_perps(r)

    def cross_assets(self, r: int) -> list[str]:
        return self.book.cross_assets(r)

    def bucket_assets(self, b: Bucket) -> list[str]:
        return self.book.bucket_assets(b)

    def valuation_blocked(self, r: int) -> str:
        return self.book.valuation_blocked(r)

    def transfer_target(self, account_id: int, asset: str, amount_q: int) -> tuple[int, int] | str:
        return self.book.transfer_target(account_id, asset, amount_q)

    def withdrawal_headroom_quote_q(self, r: int) -> int:
        return self.book.withdrawal_headroom_quote_q(r)

    def withdrawable_quote_q(self, r: int) -> int:
        return self.book.withdrawable_quote_q(r)

    # --- oracles and funding -------------------------------------------------------------------------

    def oracle_blocked(self, assets: Iterable[str], action: orc.Action) -> str:
        return self.oracles.blocked(assets, action)

    def auto_halt(self, asset: str) -> str:
        return self.oracles.auto_halt(asset)

    def fresh_sources(self, asset: str, now_ns: int | None = None) -> dict[str, int]:
        return self.oracles.fresh_sources(asset, now_ns)

    def funding_owed(self, p: int) -> int:
        return self.funding.owed(p)

    def fidx_now(self, m: MarketRecord) -> int:
        return self.funding.fidx_now(m)

    def settle_funding(self, p: int, out: list[ev.Event], emit: bool = True) -> None:
        self.funding.settle(p, out, emit)

    # --- fills ----------------------------------------------------------------------------------------

    def trade(self, p: int, delta: int, price_q: int, fee_q: int, release_iso: bool = True) -> int:
        return self.fills.trade(p, delta, price_q, fee_q, release_iso)

    def take_position(
        self, r: int, m: MarketRecord, delta: int, price_q: int, out: list[ev.Event], check_im: bool = True
    ) -> str:
        return self.fills.take_position(r, m, delta, price_q, out, check_im)

    def mode_refuses(self, r: int, fill_mode: str) -> str:
        return self.fills.mode_refuses(r, fill_mode)

    def check_fill(self, r: int, m: MarketRecord, e: ev.TradeFilled) -> FillCheck:
        """The pre-trade check a perpetual fill must pass (the engine's own)."""
        return self.fills.check(r, m, e)

    def what_if(self, r: int, e: ev.TradeFilled) -> AbstractContextManager[WhatIf]:
        """Fill ``e`` tried on row ``r`` with the engine's own checks, rolled back on leaving the block."""
        return self.fills.what_if(r, e)

    # --- screen and confirmation ----------------------------------------------------------------------

    def resync(self, r: int) -> None:
        self.screener.resync(r)

    def rebuild_shadow(self) -> None:
        """Recompute every float shadow from exact state (after a snapshot restore)."""
        self.screener.rebuild_shadow()

    def evaluate(self, flagged: Iterable[Bucket], out: list[ev.Event]) -> None:
        self.confirm.evaluate(flagged, out)

    def recheck(self, buckets: Iterable[Bucket]) -> None:
        self.confirm.recheck(buckets)

    # --- the waterfall ------------------------------------------------------------------------------------

    def fund_fee(self, amount_q: int, account_id: int, out: list[ev.Event], market: int = -1) -> None:
        """A liquidation penalty into the insurance fund (the market's own one, if it has one)."""
        self.wf.fund_fee(amount_q, account_id, out, market)

    def adl_rank(self, account_id: int, market: str) -> dict[str, Any] | None:
        """Where ``account_id``'s position in ``market`` stands in the ADL queue (None if not ranked).

        The queue is the one a bankrupt position of the opposite side would draw on: rank 1 goes first.
        """
        led = self.ledger
        r = led.row_of.get(account_id)
        m = led.market_idx.get(market)
        if r is None or m is None:
            return None
        p = led.find_pos(r, m.i)
        if p < 0 or led.pos_size[p] == 0:
            return None
        queue = self.wf.adl_queue(m, -int(led.pos_size[p]))
        for i, rp in enumerate(queue, 1):
            if rp.account_id == account_id:
                return {"rank": i, "of": len(queue), "lights": rp.lights, "score": str(rp.score)}
        return None

    # --- integrity, hashing and snapshots -----------------------------------------------------------------

    def ledger_total(self, c: int | None = None) -> int:
        """Sum of every ledger for collateral ``c`` (quote by default): must equal net deposits."""
        return self.snapshot.ledger_total(c)

    def state_dict(self, for_hash: bool = False) -> dict[str, Any]:
        """The whole exact state as plain values (see :meth:`Snapshot.state_dict`)."""
        return self.snapshot.state_dict(for_hash)

    def state_hash(self) -> str:
        """SHA-256 over a canonical encoding of :meth:`state_dict`."""
        return hash_state(self.state_dict(for_hash=True))

    @classmethod
    def from_state(cls, state: dict[str, Any], screen: str = "incremental") -> Engine:
        eng = cls(
            EngineConfig.from_dict(state["config"]),
            screen=screen,
            capacity=max(16, len(state["accounts"]["acct_id"]), len(state["positions"]["pos_acct"])),
        )
        eng.snapshot.load(state)
        eng.rebuild_shadow()
        return eng


def _implements_the_ports(eng: Engine) -> tuple[WaterfallHost, SizingHost, OptionsHost, ServicePort]:
    """Never called: mypy checks here that the engine is each port its components are typed against."""
    return eng, eng, eng, eng
