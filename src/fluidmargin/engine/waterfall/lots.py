"""Lots of protocol inventory: what a liquidation hands the waterfall, and handing it on to a taker.

Owns the value types :class:`Order` (one close taken over this tick), :class:`Block` (many, from the mass
close kernel) and :class:`Auction` (a Dutch auction of inventory), and the arithmetic of passing part
of a lot to a taker at a price: the fund's PnL against the lot's cost basis, rounded in its favour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fluidmargin.core.units import Rounding, div_round
from fluidmargin.risk.perp import margin


@dataclass(slots=True)
class Order:
    """A liquidation close the protocol took over this tick: signed size (as the account held it)."""

    market: int
    account_id: int
    row: int
    size: int
    cost: int  # the inventory's cost basis: what the account received (+) or paid (-) at the mark


@dataclass(slots=True)
class Block:
    """Many orders of one market at once, as columns (from the mass-liquidation kernel)."""

    market: int
    account_ids: np.ndarray
    sizes: np.ndarray
    costs: np.ndarray


@dataclass(slots=True)
class Auction:
    """A Dutch auction of protocol inventory (``size`` > 0: a long for sale)."""

    auction_id: str
    market: int
    size: int
    cost: int
    ref_q: int
    top_ray: int
    started_ns: int
    accounts: tuple[int, ...]
    incentive_left_q: int  # keeper incentive still to pay, pro rata of the size filled
    fund: str

    def to_list(self) -> list[Any]:
        return [
            self.auction_id,
            self.market,
            self.size,
            self.cost,
            self.ref_q,
            self.top_ray,
            self.started_ns,
            list(self.accounts),
            self.incentive_left_q,
            self.fund,
        ]

    @staticmethod
    def from_list(x: list[Any]) -> Auction:
        return Auction(x[0], x[1], x[2], x[3], x[4], x[5], x[6], tuple(x[7]), x[8], x[9])


def sign(x: int) -> int:
    """-1, 0 or 1."""
    return (x > 0) - (x < 0)


def inventory_pnl(size: int, q: int, price_q: int, released: int, size_decimals: int) -> int:
    """The fund's PnL on handing ``q`` of inventory ``size`` (signed) over at ``price_q``.

    ``released`` is the share of the inventory's cost basis that goes with it. The taker pays the
    ceiling for a long and receives the floor for a short, as any fill in the engine does.
    """
    if size > 0:
        return margin.value_quote_q(q, price_q, size_decimals, Rounding.CEIL) - released
    return -margin.value_quote_q(q, price_q, size_decimals, Rounding.FLOOR) - released


def hand_over(lot: Order | Auction, q: int, price_q: int, size_decimals: int) -> int:
    """Hand ``q`` of a lot of inventory to a taker at ``price_q``; returns the fund's PnL on it.

    The lot shrinks by ``q`` and its cost basis pro rata, rounded in the fund's favour (the last
    part takes exactly what is left).
    """
    released = div_round(lot.cost * q, abs(lot.size), Rounding.FLOOR)
    pnl = inventory_pnl(lot.size, q, price_q, released, size_decimals)
    lot.size -= sign(lot.size) * q
    lot.cost -= released
    return pnl
