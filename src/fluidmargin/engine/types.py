"""Value types shared by the engine's rooms, the waterfall and the option book (no behaviour beyond them).

Owns: :class:`Bucket` (a margin bucket), :class:`BucketRisk` (its exact equity and maintenance),
:class:`MarketRecord` (a perpetual market's mutable state and the screen's constants), the margin-mode
and halt constants, and :class:`Overflow`. Everything else in ``engine/`` imports from here, so imports
point one way and no module needs another lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fluidmargin.core.units import FUNDING_SCALE, NS_PER_S, PPM, PRICE_DECIMALS, QUOTE_DECIMALS, QUOTE_SCALE
from fluidmargin.model.instruments import PerpetualMarket

YEAR_NS = 365 * 24 * 3600 * NS_PER_S
ISO_BUCKET = "isolated:"  # an isolated bucket's name in events: "isolated:<market>"
# margin modes (``Engine.acct_mode``)
STANDARD, ISOLATED, PORTFOLIO = 0, 1, 2
MODE_NAMES = ("standard", "isolated", "portfolio")
# halt reasons open with their kind
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


# one breach found by the confirmation: (health, -maintenance, account id, bucket); sorted, worst first
Breach = tuple[int, int, int, Bucket]


class Overflow(Exception):
    """A computed quantum would leave the int64 range: the input is refused, nothing changes."""


class MarketRecord:
    """A perpetual market's mutable state plus the constants the screen's kernel needs."""

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
        """The market's positions (slots), with those opened since the last call folded in."""
        if self.pending:
            self.col = np.concatenate([self.col, np.array(self.pending, dtype=np.int64)])
            self.pending.clear()
        return self.col
