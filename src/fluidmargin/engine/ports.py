"""Declared ports: exactly what the waterfall, the option book and the service need from the engine.

In the spirit of dYdX's ``expected_keepers.go``: a component names the engine operations it calls as a
small :class:`typing.Protocol`, and is typed against that, never against the engine class. State is
not in the ports: a component that reads or writes the columns is given the
:class:`~fluidmargin.engine.ledger.Ledger` (and the option book the
:class:`~fluidmargin.engine.oracles.OracleState`) when it is built. :class:`~fluidmargin.engine.Engine`
implements every port (``engine.py`` checks that with mypy).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Protocol

from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.types import Bucket, BucketRisk, MarketRecord
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc


class LiquidationDesk(Protocol):
    """What liquidation sizing (and the option book's liquidation) hands the waterfall."""

    def take_over(self, p: int, size: int, mark_q: int) -> None:
        """The protocol took ``size`` (as held) of position ``p`` at the mark: execute it this tick."""

    def settle_shortfall(self, b: Bucket, shortfall_q: int, out: list[ev.Event]) -> None:
        """Cover a bankrupt bucket's shortfall: its fund, then ADL, then socialised."""

    def account_allowance(self, r: int) -> int | None:
        """Notional account row ``r`` may still have liquidated in this window (None: no cap)."""

    def use_allowance(self, r: int, notional_q: int) -> None:
        """Count ``notional_q`` liquidated against row ``r``'s window."""

    def fund_fee(self, amount_q: int, account_id: int, out: list[ev.Event], market: int = -1) -> None:
        """A liquidation penalty into the insurance fund (the market's own one, if it has one)."""


class Valuation(Protocol):
    """Exact figures of positions and buckets (read-only)."""

    def position_risk(self, p: int) -> margin.PositionRisk: ...

    def cross_risk(self, r: int) -> BucketRisk: ...

    def bucket_risk(self, b: Bucket) -> BucketRisk: ...


class Rejudge(Protocol):
    """After changing an account: re-synchronise its float shadow, and confirm buckets exactly."""

    def resync(self, r: int) -> None:
        """Recompute row ``r``'s float shadow from its exact state."""

    def evaluate(self, flagged: Iterable[Bucket], out: list[ev.Event]) -> None:
        """Confirm ``flagged`` exactly, drive the state machine, liquidate breaches, flush the waterfall."""

    def recheck(self, buckets: Iterable[Bucket]) -> None:
        """Confirm ``buckets`` once the liquidations under way are done (ADL counterparties, the vault)."""


class Trading(Protocol):
    """The exact position arithmetic every close, takeover and hedge goes through."""

    def settle_funding(self, p: int, out: list[ev.Event], emit: bool = True) -> None:
        """Settle position ``p``'s funding owed into its account (or isolated margin)."""

    def trade(self, p: int, delta: int, price_q: int, fee_q: int, release_iso: bool = True) -> int:
        """Fill ``delta`` of position ``p`` at ``price_q``; returns the realised PnL."""


class SizingHost(Valuation, Trading, Protocol):
    """What liquidation sizing (``waterfall.sizing``) needs: the ledger, the waterfall, figures, trades."""

    @property
    def ledger(self) -> Ledger: ...

    @property
    def wf(self) -> LiquidationDesk: ...

    def has_positions(self, b: Bucket) -> bool:
        """Whether bucket ``b`` holds anything left to close."""


class WaterfallHost(Valuation, Trading, Rejudge, Protocol):
    """What the waterfall (funds, ADL, auctions, backstop vault) needs from the engine."""

    def take_position(
        self, r: int, m: MarketRecord, delta: int, price_q: int, out: list[ev.Event], check_im: bool = True
    ) -> str:
        """Add ``delta`` of ``m`` to row ``r``'s cross position at ``price_q`` (no fee); why not, if refused."""

    def withdrawal_headroom_quote_q(self, r: int) -> int:
        """Row ``r``'s cross equity that counts toward a withdrawal, less initial margin."""

    def transfer_target(self, account_id: int, asset: str, amount_q: int) -> tuple[int, int] | str:
        """(row, collateral index) of a transfer, or why it is refused."""

    def oracle_blocked(self, assets: Iterable[str], action: orc.Action) -> str:
        """Why ``action`` is not allowed on one of ``assets`` now (empty: allowed)."""

    def cross_assets(self, r: int) -> list[str]:
        """The assets whose prices move row ``r``'s cross bucket."""


class OptionsHost(SizingHost, Rejudge, Protocol):
    """What the option book (portfolio valuation, fills, expiry, liquidation and hedging) needs."""

    def collateral_value_quote_q(self, c: int, amount_q: int) -> int: ...

    def oracle_blocked(self, assets: Iterable[str], action: orc.Action) -> str: ...

    def has_cross_perps(self, r: int) -> bool: ...


class WhatIfResult(Protocol):
    """What a what-if yields: why the fill is refused (empty: accepted), and whether the state inside the
    block is as after it."""

    @property
    def reason(self) -> str: ...

    @property
    def applied(self) -> bool: ...


class ServicePort(Protocol):
    """What the service's read models need beyond the engine's public reads: the what-if and two figures."""

    def what_if(self, r: int, e: ev.TradeFilled) -> AbstractContextManager[WhatIfResult]:
        """Fill ``e`` tried on row ``r`` with the engine's own pre-trade check, rolled back on leaving the block."""

    def funding_owed(self, p: int) -> int:
        """Funding position ``p`` owes since it last settled."""

    def fidx_now(self, m: MarketRecord) -> int:
        """Market ``m``'s funding index accrued to now (not stored)."""
