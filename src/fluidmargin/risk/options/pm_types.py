"""The portfolio-margin model's records: one account's holdings on one underlying (:class:`Portfolio` and its
options, expiries and collaterals, each validated when built) and what
:func:`~fluidmargin.risk.options.portfolio.portfolio_margin` and
:func:`~fluidmargin.risk.options.portfolio.cross_portfolio_margin` return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.pm_params import (
    SECONDS_PER_YEAR,
    require_finite,
    require_fraction,
    require_non_negative,
    require_positive,
)

# --- portfolio ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionHolding:
    """European option, cash-settled in the quote asset; ``amount`` is signed contracts (short < 0)."""

    strike: float
    is_call: bool
    amount: float
    vol: float  # annualised implied vol at this strike
    vol_confidence: float = 1.0

    def __post_init__(self) -> None:
        require_positive("strike", self.strike)
        require_finite("amount", self.amount)
        require_non_negative("vol", self.vol)
        require_fraction("vol_confidence", self.vol_confidence)


@dataclass(frozen=True)
class ExpiryHolding:
    """The options of one expiry and that expiry's market: forward, rate, confidences.

    ``forward_fixed`` is the part of the forward already fixed (a settlement average under way); only
    the rest moves with spot. A negative ``rate`` counts as zero, as in Derive. ``sec_to_expiry_s`` 0
    means at or past expiry, unsettled: valued at intrinsic (Derive: ``max(expiry - now, 0)``); only
    then may the whole forward be fixed (the settlement price).
    """

    sec_to_expiry_s: int
    forward: float
    rate: float
    options: tuple[OptionHolding, ...]
    forward_confidence: float = 1.0
    rate_confidence: float = 1.0
    forward_fixed: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.sec_to_expiry_s, bool) or not isinstance(self.sec_to_expiry_s, int):
            raise ValidationError(f"sec_to_expiry_s must be an integer, got {self.sec_to_expiry_s!r}")
        if self.sec_to_expiry_s < 0:
            raise ValidationError(f"sec_to_expiry_s must be >= 0, got {self.sec_to_expiry_s}")
        require_positive("forward", self.forward)
        require_finite("rate", self.rate)
        require_non_negative("forward_fixed", self.forward_fixed)
        if self.forward_fixed > self.forward or (self.forward_fixed == self.forward and self.sec_to_expiry_s > 0):
            raise ValidationError("forward_fixed must be below the forward (up to it at expiry)")
        require_fraction("forward_confidence", self.forward_confidence)
        require_fraction("rate_confidence", self.rate_confidence)
        if not self.options:
            raise ValidationError("an expiry needs at least one option")

    @property
    def t_years(self) -> float:
        return self.sec_to_expiry_s / SECONDS_PER_YEAR

    @property
    def discount(self) -> float:
        """``exp(-max(rate, 0) * t)``."""
        return math.exp(-max(self.rate, 0.0) * self.t_years)


@dataclass(frozen=True)
class CollateralHolding:
    """A non-quote collateral; worth ``amount * price / stable_price`` in the quote stablecoin.

    A risk-cancelling collateral (the underlying or a close derivative) moves with spot in every
    scenario; the others only carry their haircuts.
    """

    name: str
    amount: float
    price: float  # in the index unit of the spot price (USD)
    confidence: float = 1.0
    risk_cancelling: bool = False
    mm_haircut: float = 0.0
    im_extra_haircut: float = 0.0

    def __post_init__(self) -> None:
        require_non_negative("amount", self.amount)
        require_non_negative("price", self.price)
        require_fraction("confidence", self.confidence)
        require_fraction("mm_haircut", self.mm_haircut)
        require_fraction("im_extra_haircut", self.im_extra_haircut)


@dataclass(frozen=True)
class Portfolio:
    """One account's holdings on one underlying, with the market it is valued in.

    ``perp_unrealised_quote`` is the perp's unsettled P&L plus funding; ``stable_price`` is the quote
    stablecoin's price in the spot's index unit.
    """

    spot_price: float
    cash_quote: float = 0.0
    spot_confidence: float = 1.0
    stable_price: float = 1.0
    perp_amount: float = 0.0
    perp_price: float = 0.0
    perp_confidence: float = 1.0
    perp_unrealised_quote: float = 0.0
    expiries: tuple[ExpiryHolding, ...] = ()
    collaterals: tuple[CollateralHolding, ...] = ()

    def __post_init__(self) -> None:
        require_positive("spot_price", self.spot_price)
        require_finite("cash_quote", self.cash_quote)
        require_fraction("spot_confidence", self.spot_confidence)
        require_positive("stable_price", self.stable_price)
        require_finite("perp_amount", self.perp_amount)
        require_non_negative("perp_price", self.perp_price)
        if self.perp_amount != 0 and self.perp_price <= 0:
            raise ValidationError("a perp position needs a perp price > 0")
        require_fraction("perp_confidence", self.perp_confidence)
        require_finite("perp_unrealised_quote", self.perp_unrealised_quote)
        seen = [e.sec_to_expiry_s for e in self.expiries if e.sec_to_expiry_s > 0]  # expired ones stay apart
        if len(set(seen)) != len(seen):
            raise ValidationError("each expiry must appear once")


# --- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contingencies:
    """The charges beyond the scaled worst loss, each >= 0 (``*_mm`` count for both margins)."""

    perp_mm_quote: float
    perp_im_extra_quote: float
    option_mm_quote: float
    option_im_extra_quote: float
    collateral_mm_quote: float
    collateral_im_extra_quote: float
    confidence_im_quote: float  # low oracle confidence, IM only

    @property
    def mm_quote(self) -> float:
        return self.perp_mm_quote + self.option_mm_quote + self.collateral_mm_quote

    @property
    def im_quote(self) -> float:
        """All IM charges: the MM ones plus the IM-only ones."""
        extra = self.perp_im_extra_quote + self.option_im_extra_quote + self.collateral_im_extra_quote
        return self.mm_quote + extra + self.confidence_im_quote


@dataclass(frozen=True)
class ExpiryReport:
    """Per-expiry intermediate values; per-option tuples follow ``ExpiryHolding.options``."""

    sec_to_expiry_s: int
    discount: float
    mtm_quote: float
    static_discount_long: float
    static_discount_short: float
    vol_shock_up: float  # multiplier
    vol_shock_down: float
    basis_contingency_quote: float  # <= 0, already scaled by add + mult * t
    naked_short_amount: float
    confidence: float
    vols_up: tuple[float, ...]  # the vols the up scenarios use
    vols_down: tuple[float, ...]
    log_moneyness: tuple[float, ...]  # ln(K / F)
    k_star: float
    linear_cap: float
    abs_cap: float
    linear_multipliers: tuple[float, ...]
    abs_multipliers: tuple[float, ...]


@dataclass(frozen=True)
class WorstScenario:
    """The scenario that sets the margin: ``index`` into the grid, or None for the basis contingency."""

    kind: str  # "regular", "tail", "skew" or "basis"
    index: int | None
    pnl_quote: float


@dataclass(frozen=True)
class PortfolioMarginResult:
    """Margins (Derive's sign: healthy while >= 0), requirements (>= 0) and the steps in between."""

    initial_margin_quote: float
    maintenance_margin_quote: float
    initial_requirement_quote: float
    maintenance_requirement_quote: float
    mark_to_market_quote: float  # cash + options + collateral + unrealised perp
    worst: WorstScenario
    scenario_pnls_quote: tuple[float, ...]  # aligned with params.scenarios
    basis_contingency_quote: float
    contingencies: Contingencies
    im_loss_factor: float  # after the de-peg add-on
    mm_loss_factor: float
    option_mtm_quote: float
    collateral_mtm_quote: float
    perp_mtm_quote: float
    expiries: tuple[ExpiryReport, ...]


@dataclass(frozen=True)
class CrossPortfolioMarginResult:
    """The netted margins of a multi-underlying account, with each underlying's standalone result.

    Losses are >= 0 (``standalone_loss_quote`` = sum of the per-underlying worst losses; ``comoving_loss_quote``
    the worst loss if every underlying moved along the same scenario; ``offset_credit_quote`` what the
    correlation offsets take off the first). ``floor_*`` are what the requirements never go below.
    """

    by_underlying: tuple[tuple[str, PortfolioMarginResult], ...]  # sorted by name
    standalone_loss_quote: float
    comoving_loss_quote: float
    offset_credit_quote: float
    initial_requirement_quote: float
    maintenance_requirement_quote: float
    floor_initial_quote: float
    floor_maintenance_quote: float
    mark_to_market_quote: float
    initial_margin_quote: float
    maintenance_margin_quote: float

    @property
    def standalone_initial_quote(self) -> float:
        """Sum of the per-underlying IM requirements: what no netting would charge."""
        return sum(r.initial_requirement_quote for _, r in self.by_underlying)

    @property
    def standalone_maintenance_quote(self) -> float:
        return sum(r.maintenance_requirement_quote for _, r in self.by_underlying)
