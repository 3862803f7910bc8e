"""Portfolio margin by scenario revaluation: the whole account is repriced under stress, so hedges net.

Method: Derive's v2 portfolio risk manager "PMRM_2" (derivexyz/v2-core, ``src/risk-managers/PMRM_2.sol``
and ``PMRMLib_2.sol``, Business Source License 1.1), read for its method only and written afresh here.
Per underlying:

- every option expiry is revalued with Black-76 under each scenario: spot (and so the forward) times
  ``spot_shock``; each vol times ``1 + range_up * (30 d / max(DTE, floor))^power`` (up, floored at
  ``min_vol_up``), ``max(0, 1 - range_down * ...)`` (down) or left alone; ``power`` is the short-term one
  up to 30 days to expiry, else the long-term one;
- a shocked expiry value takes a static discount (``long`` when the value is >= 0, ``short`` when < 0,
  each with a rate-dependent term), then scenario P&L = (discounted shocked value - current value) x
  dampening; perps and risk-cancelling collateral move linearly with spot;
- two skew scenarios raise the wings of each expiry's smile (linear in log-moneyness, or in its absolute
  value), capped at ``k*``; each expiry counts with minus its absolute P&L (the skew may rotate either way);
- the worst P&L, never above the basis (forward) contingency, is scaled by the IM or MM loss factor (IM's
  grows when the stablecoin de-pegs) and the contingencies are charged on top: perp notional, naked
  short options, collateral haircuts and low oracle confidence.

Expiry (Derive: ``PMRM_2._initialiseExpiries``, ``LyraForwardFeed``): an expired, unsettled expiry has 0
seconds to expiry and is worth its intrinsic value on its forward (Black-76 at T = 0); what part of that
forward is already fixed (a settlement average under way, all of it once settled) is the caller's
``forward_fixed``. At T = 0 nothing is left to shock: static discounts are 1 (no time value to dampen; the
contract's formula would leave ``long_static_discount`` on a long expiry, its published post-expiry case
lists 1) and no skew shock applies (k* and caps 0). Degenerate parameters the reference accepts are taken
at their limit: the DTE of the vol shock is at least 1 s, k* at least 1e-18 (one unit of the contract's
18-decimal fixed point: at exactly 0 it divides by zero) and a forward shocked to 0 prices calls at 0,
puts at D K.

Money is in the quote stablecoin (``_quote``), as floats: this is a statistical valuation, like Derive's.
The engine converts a requirement to integer quote quanta rounding up. ``initial_margin`` and
``maintenance_margin`` follow Derive: mark-to-market minus requirement, healthy while >= 0.

An account on several underlyings is margined by :func:`cross_portfolio_margin`: each underlying alone,
then netted by configurable correlation offsets, never below a floor. Many accounts of one underlying are
margined at once by :mod:`fluidmargin.risk.options.pm_batch`, whose twin this module is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.black76 import black76_price

SECONDS_PER_DAY = 86_400
SECONDS_PER_YEAR = 365 * SECONDS_PER_DAY  # Derive annualises with a 365-day year
VOL_SHOCK_REFERENCE_S = 30 * SECONDS_PER_DAY  # the (30 / DTE)^power term structure's reference
DTE_MIN_S = 1.0  # the vol shock's DTE is never below 1 s (a zero floor at expiry divides by zero in Derive)
K_STAR_MIN = 1e-18  # k* below one unit of Derive's 18-decimal fixed point divides by zero there

FloatArray = npt.NDArray[np.float64]


def _finite(name: str, x: float) -> None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValidationError(f"{name} must be a finite number, got {x!r}")


def _positive(name: str, x: float) -> None:
    _finite(name, x)
    if x <= 0:
        raise ValidationError(f"{name} must be > 0, got {x!r}")


def _non_negative(name: str, x: float) -> None:
    _finite(name, x)
    if x < 0:
        raise ValidationError(f"{name} must be >= 0, got {x!r}")


def _fraction(name: str, x: float) -> None:
    _finite(name, x)
    if not 0 <= x <= 1:
        raise ValidationError(f"{name} must be in [0, 1], got {x!r}")


# --- parameters -----------------------------------------------------------------------------------------


class VolShock(Enum):
    """How a scenario moves implied vols: the grid's up / none / down, or one of the two skew shocks."""

    UP = "up"
    NONE = "none"
    DOWN = "down"
    SKEW_LINEAR = "skew_linear"
    SKEW_ABS = "skew_abs"

    @property
    def is_skew(self) -> bool:
        return self in (VolShock.SKEW_LINEAR, VolShock.SKEW_ABS)


@dataclass(frozen=True)
class Scenario:
    """One stress: spot times ``spot_shock``, vols moved by ``vol_shock``, P&L times ``dampening``.

    ``tail`` marks a tail scenario (a large move, usually dampened) for reporting only. Skew scenarios
    revalue at today's spot, so their ``spot_shock`` must be 1 (Derive's contract refuses anything else).
    """

    spot_shock: float
    vol_shock: VolShock
    dampening: float = 1.0
    tail: bool = False

    def __post_init__(self) -> None:
        _non_negative("spot_shock", self.spot_shock)  # 0: spot to nothing (Derive's shocks are unsigned)
        _non_negative("dampening", self.dampening)
        if not isinstance(self.vol_shock, VolShock):
            raise ValidationError(f"vol_shock must be a VolShock, got {self.vol_shock!r}")
        if self.vol_shock.is_skew and self.spot_shock != 1.0:
            raise ValidationError(
                f"a skew scenario revalues at today's spot: spot_shock must be 1, got {self.spot_shock}"
            )
        if self.vol_shock.is_skew and self.tail:
            raise ValidationError("a skew scenario cannot be a tail scenario")

    @property
    def kind(self) -> str:
        """``"skew"``, ``"tail"`` or ``"regular"``."""
        return "skew" if self.vol_shock.is_skew else ("tail" if self.tail else "regular")


@dataclass(frozen=True)
class VolShockParams:
    """Vol multipliers ``1 + range_up * m`` / ``max(0, 1 - range_down * m)``, ``m = (30 d / max(DTE, floor))^p``."""

    range_up: float
    range_down: float
    short_term_power: float  # p when DTE <= 30 days (signed, as in Derive)
    long_term_power: float  # p beyond 30 days
    dte_floor_s: float  # DTE is floored here so near-expiry shocks stay bounded (and at DTE_MIN_S)
    min_vol_up: float  # an up-shocked vol is never below this

    def __post_init__(self) -> None:
        for name in ("range_up", "range_down", "min_vol_up", "dte_floor_s"):
            _non_negative(name, getattr(self, name))
        _finite("short_term_power", self.short_term_power)
        _finite("long_term_power", self.long_term_power)


@dataclass(frozen=True)
class SkewShockParams:
    """Wing multipliers ``1 + clamp(k * cap / k*, -cap, cap)`` on each vol, ``k = ln(K / F)`` (or ``|k|``).

    ``cap = c_base * sqrt(t) + base_cap`` per shape; ``k* = max(min_k_star, sqrt(t) * width_scale *
    (vol_param_static + sqrt(t) * vol_param_scale))`` is where the smile is taken to flatten out.
    """

    linear_base_cap: float
    linear_c_base: float
    abs_base_cap: float
    abs_c_base: float
    min_k_star: float
    width_scale: float
    vol_param_static: float
    vol_param_scale: float

    def __post_init__(self) -> None:
        for name in ("linear_c_base", "abs_c_base", "vol_param_scale"):
            _finite(name, getattr(self, name))
        for name in ("linear_base_cap", "abs_base_cap", "width_scale", "vol_param_static", "min_k_star"):
            _non_negative(name, getattr(self, name))


@dataclass(frozen=True)
class MarginParams:
    """Loss factors and the static discount of shocked option values.

    Long (value >= 0): ``long_static_discount * exp(-t * (rate * long_rate_mult + long_rate_add))``.
    Short (value < 0): ``min(1 / discount, short_static_discount * exp(t * (rate * short_rate_mult +
    short_rate_add)))``; both make the shocked book worth less to its holder. At expiry the long one is 1.
    """

    im_loss_factor: float
    mm_loss_factor: float
    long_static_discount: float
    short_static_discount: float
    long_rate_mult: float
    long_rate_add: float
    short_rate_mult: float
    short_rate_add: float

    def __post_init__(self) -> None:
        for name in ("long_rate_mult", "long_rate_add", "short_rate_mult", "short_rate_add"):
            _non_negative(name, getattr(self, name))
        for name in ("long_static_discount", "short_static_discount"):
            _non_negative(name, getattr(self, name))  # 0: a shocked expiry counts for nothing
        for name in ("im_loss_factor", "mm_loss_factor"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class BasisContingencyParams:
    """Forward (basis) contingency: the worse of spot up/down (vols unmoved) per expiry, times
    ``add_factor + mult_factor * t``; it is also the floor of the worst scenario."""

    spot_up: float
    spot_down: float
    add_factor: float
    mult_factor: float

    def __post_init__(self) -> None:
        _positive("spot_up", self.spot_up)
        _non_negative("spot_down", self.spot_down)
        if not self.spot_down < 1 < self.spot_up:
            raise ValidationError(f"basis shocks need spot_down < 1 < spot_up, got {self.spot_down}, {self.spot_up}")
        _non_negative("add_factor", self.add_factor)
        _non_negative("mult_factor", self.mult_factor)


@dataclass(frozen=True)
class ContingencyParams:
    """Charges on top of the scaled worst loss. ``*_mm`` apply to both margins, ``*_im_extra`` to IM only.

    ``confidence_*``: a feed whose confidence is below the threshold charges
    ``(1 - confidence) * margin * notional`` (IM only). ``peg_loss_*``: when the stablecoin trades below
    the threshold, the IM loss factor grows by ``(threshold - price) * peg_loss_factor``.
    """

    perp_mm: float  # x |perp| x spot
    perp_im_extra: float
    option_mm: float  # x naked short contracts x spot
    option_im_extra: float
    confidence_threshold: float
    confidence_margin: float
    peg_loss_threshold: float
    peg_loss_factor: float

    def __post_init__(self) -> None:
        for name in ("perp_mm", "perp_im_extra", "option_mm", "option_im_extra", "confidence_margin"):
            _non_negative(name, getattr(self, name))
        _fraction("confidence_threshold", self.confidence_threshold)
        _non_negative("peg_loss_threshold", self.peg_loss_threshold)
        _non_negative("peg_loss_factor", self.peg_loss_factor)


@dataclass(frozen=True)
class PortfolioMarginParams:
    """Everything the model needs besides the portfolio: the scenario grid and the parameter blocks."""

    scenarios: tuple[Scenario, ...]
    vol_shock: VolShockParams
    skew_shock: SkewShockParams
    margin: MarginParams
    basis: BasisContingencyParams
    contingency: ContingencyParams

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ValidationError("at least one scenario is needed")
        for shape in (VolShock.SKEW_LINEAR, VolShock.SKEW_ABS):
            if sum(s.vol_shock is shape for s in self.scenarios) > 1:
                raise ValidationError(f"at most one {shape.value} scenario")


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
        _positive("strike", self.strike)
        _finite("amount", self.amount)
        _non_negative("vol", self.vol)
        _fraction("vol_confidence", self.vol_confidence)


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
        _positive("forward", self.forward)
        _finite("rate", self.rate)
        _non_negative("forward_fixed", self.forward_fixed)
        if self.forward_fixed > self.forward or (self.forward_fixed == self.forward and self.sec_to_expiry_s > 0):
            raise ValidationError("forward_fixed must be below the forward (up to it at expiry)")
        _fraction("forward_confidence", self.forward_confidence)
        _fraction("rate_confidence", self.rate_confidence)
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
        _non_negative("amount", self.amount)
        _non_negative("price", self.price)
        _fraction("confidence", self.confidence)
        _fraction("mm_haircut", self.mm_haircut)
        _fraction("im_extra_haircut", self.im_extra_haircut)


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
        _positive("spot_price", self.spot_price)
        _finite("cash_quote", self.cash_quote)
        _fraction("spot_confidence", self.spot_confidence)
        _positive("stable_price", self.stable_price)
        _finite("perp_amount", self.perp_amount)
        _non_negative("perp_price", self.perp_price)
        if self.perp_amount != 0 and self.perp_price <= 0:
            raise ValidationError("a perp position needs a perp price > 0")
        _fraction("perp_confidence", self.perp_confidence)
        _finite("perp_unrealised_quote", self.perp_unrealised_quote)
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


# --- Black-76 -------------------------------------------------------------------------------------------


def _values(
    forwards: FloatArray, strikes: FloatArray, is_call: npt.NDArray[np.bool_], amounts: FloatArray,
    vols: FloatArray, t_years: float, discount: float,
) -> FloatArray:  # fmt: skip
    """Expiry value per row: forwards (rows, 1), vols (rows, options) -> (rows,).

    Prices with the project's :func:`~fluidmargin.risk.options.black76.black76_price` (exact normal CDF). Derive's
    contract uses lyra-utils' fixed-point Black-76 (a CDF approximation, puts by parity floored at 0, the
    total vol capped at 24), but its cases come from an exact-CDF generator: this pricer reproduces every
    scenario P&L to ~1e-11 and IM / MM to ~1e-14, so no Derive-specific variant is needed.
    """
    prices = _black76(forwards, strikes, t_years, vols, discount, is_call)
    return np.asarray(prices @ amounts, dtype=np.float64)


def _black76(
    forward: npt.ArrayLike, strike: npt.ArrayLike, t_years: npt.ArrayLike, vol: npt.ArrayLike,
    discount: npt.ArrayLike, is_call: npt.ArrayLike,
) -> FloatArray:  # fmt: skip
    """Black-76 premiums, a forward shocked to 0 at its limit: calls 0, puts D K (lyra-utils' Black76 too)."""
    f = np.asarray(forward, dtype=np.float64)
    live = f > 0
    prices = black76_price(np.where(live, f, 1.0), strike, t_years, vol, discount, is_call)
    if bool(np.all(live)):
        return prices
    at_zero = np.where(is_call, 0.0, np.asarray(discount, dtype=np.float64) * np.asarray(strike, dtype=np.float64))
    return np.asarray(np.where(live, prices, at_zero), dtype=np.float64)


# --- the model ------------------------------------------------------------------------------------------


def _confidence_charge(confidence: float, notional_quote: float, c: ContingencyParams) -> float:
    if confidence < c.confidence_threshold:
        return (1.0 - confidence) * c.confidence_margin * notional_quote
    return 0.0


def _naked_shorts(options: Sequence[OptionHolding]) -> float:
    """Short contracts not covered by a long at the same strike (call or put alike), summed by strike."""
    net: dict[float, float] = {}
    for o in options:
        net[o.strike] = net.get(o.strike, 0.0) + o.amount
    return sum(max(0.0, -a) for _, a in sorted(net.items()))


def _vol_shock_multipliers(sec_to_expiry_s: int, p: VolShockParams) -> tuple[float, float]:
    ratio = VOL_SHOCK_REFERENCE_S / max(float(sec_to_expiry_s), p.dte_floor_s, DTE_MIN_S)
    power = p.short_term_power if sec_to_expiry_s <= VOL_SHOCK_REFERENCE_S else p.long_term_power
    try:
        m = ratio**power
    except OverflowError:
        m = math.inf
    if not math.isfinite(m):
        raise ValidationError(f"vol shock (30 d / DTE)^{power} overflows at {sec_to_expiry_s} s to expiry")
    return 1.0 + p.range_up * m, max(0.0, 1.0 - p.range_down * m)


def _skew_multipliers(k: FloatArray, cap: float | FloatArray, k_star: float | FloatArray) -> FloatArray:
    """``1 + min(cap, k cap / k*)`` for k >= 0, ``1 + max(-cap, k cap / k*)`` below (as Derive orders it);
    0 where k* is 0, i.e. at expiry (no skew shock: the vol no longer matters)."""
    ks = np.asarray(k_star, dtype=np.float64)
    live = ks > 0
    x = k * cap / np.where(live, ks, 1.0)
    mult = 1.0 + np.where(k >= 0, np.minimum(cap, x), np.maximum(-cap, x))
    return np.asarray(np.where(live, mult, 0.0), dtype=np.float64)


@dataclass(frozen=True)
class _ExpiryTerms:
    """The per-expiry intermediates (one entry per expiry), shared with the batch so the twins agree."""

    t_years: FloatArray
    rate: FloatArray  # max(rate, 0)
    discount: FloatArray
    sd_long: FloatArray
    sd_short: FloatArray
    vol_up: FloatArray  # multipliers
    vol_down: FloatArray
    k_star: FloatArray  # 0 at expiry
    linear_cap: FloatArray
    abs_cap: FloatArray
    basis_factor: FloatArray


def _expiry_terms(sec_to_expiry_s: npt.ArrayLike, rate: npt.ArrayLike, params: PortfolioMarginParams) -> _ExpiryTerms:
    """Time, discounting, static discounts, vol and skew shocks and the basis factor of each expiry."""
    sec = np.asarray(sec_to_expiry_s, dtype=np.int64)
    live = sec > 0
    t = sec / SECONDS_PER_YEAR
    r = np.maximum(np.asarray(rate, dtype=np.float64), 0.0)
    disc = np.exp(-r * t)
    m = params.margin
    sd_long = np.where(live, m.long_static_discount * np.exp(-t * (r * m.long_rate_mult + m.long_rate_add)), 1.0)
    sd_short = np.minimum(1.0 / disc, m.short_static_discount / np.exp(-t * (r * m.short_rate_mult + m.short_rate_add)))
    mult = [_vol_shock_multipliers(int(x), params.vol_shock) for x in sec]
    sk = params.skew_shock
    sqrt_t = np.sqrt(t)
    k_star = np.maximum(sk.min_k_star, sqrt_t * sk.width_scale * (sk.vol_param_static + sqrt_t * sk.vol_param_scale))
    return _ExpiryTerms(
        t_years=t, rate=r, discount=disc, sd_long=sd_long, sd_short=sd_short,
        vol_up=np.array([u for u, _ in mult], dtype=np.float64),
        vol_down=np.array([d for _, d in mult], dtype=np.float64),
        k_star=np.where(live, np.maximum(k_star, K_STAR_MIN), 0.0),
        linear_cap=np.where(live, sk.linear_c_base * sqrt_t + sk.linear_base_cap, 0.0),
        abs_cap=np.where(live, sk.abs_c_base * sqrt_t + sk.abs_base_cap, 0.0),
        basis_factor=params.basis.add_factor + params.basis.mult_factor * t,
    )  # fmt: skip


def _expiry_pnls(e: ExpiryHolding, params: PortfolioMarginParams) -> tuple[FloatArray, ExpiryReport]:
    """Scenario P&L of one expiry (aligned with params.scenarios) and its intermediate values."""
    terms = _expiry_terms([e.sec_to_expiry_s], [e.rate], params)
    t = float(terms.t_years[0])
    disc = float(terms.discount[0])
    strikes = np.array([o.strike for o in e.options], dtype=np.float64)
    amounts = np.array([o.amount for o in e.options], dtype=np.float64)
    is_call = np.array([o.is_call for o in e.options], dtype=np.bool_)
    vols = np.array([o.vol for o in e.options], dtype=np.float64)
    moving = e.forward - e.forward_fixed
    # value in a canonical option order, so the sum (to the last bit) never depends on the input's order
    order = sorted(range(len(e.options)), key=lambda i: (strikes[i], is_call[i], amounts[i], vols[i]))

    def value_at(spot_shocks: FloatArray, vol_rows: FloatArray) -> FloatArray:
        fwd = (moving * spot_shocks + e.forward_fixed)[:, None]
        return _values(fwd, strikes[order], is_call[order], amounts[order], vol_rows[:, order], t, disc)

    base = value_at(np.array([1.0, params.basis.spot_up, params.basis.spot_down]), np.tile(vols, (3, 1)))
    mtm, basis_up, basis_down = float(base[0]), float(base[1]), float(base[2])
    basis = min(basis_up - mtm, basis_down - mtm, 0.0) * float(terms.basis_factor[0])

    up, down = float(terms.vol_up[0]), float(terms.vol_down[0])
    vols_up = np.maximum(params.vol_shock.min_vol_up, vols * up)
    vols_down = vols * down

    k_star = float(terms.k_star[0])
    linear_cap, abs_cap = float(terms.linear_cap[0]), float(terms.abs_cap[0])
    log_m = np.log(strikes / e.forward)
    linear_mult = _skew_multipliers(log_m, linear_cap, k_star)
    abs_mult = _skew_multipliers(np.abs(log_m), abs_cap, k_star)

    shocks = np.array([s.spot_shock for s in params.scenarios], dtype=np.float64)
    vols_by_shock = {
        VolShock.UP: vols_up,
        VolShock.NONE: vols,
        VolShock.DOWN: vols_down,
        VolShock.SKEW_LINEAR: vols * np.maximum(linear_mult, 0.0),  # a negative multiplier means vol 0
        VolShock.SKEW_ABS: vols * np.maximum(abs_mult, 0.0),
    }
    vol_rows = np.stack([vols_by_shock[s.vol_shock] for s in params.scenarios])
    shocked = value_at(shocks, vol_rows)  # skew scenarios have spot_shock 1: today's forward

    sd_long, sd_short = float(terms.sd_long[0]), float(terms.sd_short[0])
    shocked = shocked * np.where(shocked >= 0, sd_long, sd_short)
    damp = np.array([s.dampening for s in params.scenarios], dtype=np.float64)
    pnl = (shocked - mtm) * damp
    skew = np.array([s.vol_shock.is_skew for s in params.scenarios], dtype=np.bool_)
    pnl = np.where(skew, -np.abs(pnl), pnl)

    report = ExpiryReport(
        sec_to_expiry_s=e.sec_to_expiry_s,
        discount=disc,
        mtm_quote=mtm,
        static_discount_long=sd_long,
        static_discount_short=sd_short,
        vol_shock_up=up,
        vol_shock_down=down,
        basis_contingency_quote=basis,
        naked_short_amount=_naked_shorts(e.options),
        confidence=min([e.forward_confidence, e.rate_confidence] + [o.vol_confidence for o in e.options]),
        vols_up=tuple(float(v) for v in vols_up),
        vols_down=tuple(float(v) for v in vols_down),
        log_moneyness=tuple(float(v) for v in log_m),
        k_star=k_star,
        linear_cap=linear_cap,
        abs_cap=abs_cap,
        linear_multipliers=tuple(float(v) for v in linear_mult),
        abs_multipliers=tuple(float(v) for v in abs_mult),
    )
    return np.asarray(pnl, dtype=np.float64), report


def portfolio_margin(portfolio: Portfolio, params: PortfolioMarginParams) -> PortfolioMarginResult:
    """Initial and maintenance margin of one account on one underlying, by scenario revaluation."""
    c = params.contingency
    pf = portfolio
    scenarios = params.scenarios
    shocks = np.array([s.spot_shock for s in scenarios], dtype=np.float64)
    damp = np.array([s.dampening for s in scenarios], dtype=np.float64)

    min_confidence = pf.spot_confidence
    if pf.perp_amount != 0:
        min_confidence = min(min_confidence, pf.perp_confidence)

    pnls = pf.perp_amount * (shocks - 1.0) * pf.perp_price * damp
    perp_notional = abs(pf.perp_amount) * pf.spot_price
    confidence_im = _confidence_charge(min_confidence, perp_notional, c)

    reports: list[ExpiryReport] = []
    option_mm = option_im_extra = 0.0
    basis = 0.0
    for e in sorted(pf.expiries, key=lambda x: x.sec_to_expiry_s):
        pnl, rep = _expiry_pnls(e, params)
        pnls = pnls + pnl
        basis += rep.basis_contingency_quote
        naked_notional = rep.naked_short_amount * pf.spot_price
        option_mm += naked_notional * c.option_mm
        option_im_extra += naked_notional * c.option_im_extra
        gross_notional = sum(abs(o.amount) for o in e.options) * pf.spot_price
        confidence_im += _confidence_charge(min(rep.confidence, min_confidence), gross_notional, c)
        reports.append(rep)

    collateral_mtm = collateral_mm = collateral_im_extra = 0.0
    for col in sorted(pf.collaterals, key=lambda x: (x.name, x.amount, x.price)):  # a fixed order to sum in
        value = col.amount * col.price / pf.stable_price
        collateral_mtm += value
        collateral_mm += value * col.mm_haircut
        collateral_im_extra += value * col.im_extra_haircut
        # Derive takes the collateral's confidence against spot's alone (the perp's joins later)
        confidence_im += _confidence_charge(min(col.confidence, pf.spot_confidence), value, c)
        if col.risk_cancelling:
            pnls = pnls + value * (shocks - 1.0) * damp

    worst = WorstScenario("basis", None, basis)
    for i, s in enumerate(scenarios):
        if pnls[i] < worst.pnl_quote:  # strict: the basis contingency, then the earliest, wins a tie
            worst = WorstScenario(s.kind, i, float(pnls[i]))

    mm_factor = params.margin.mm_loss_factor
    im_factor = params.margin.im_loss_factor
    if pf.stable_price < c.peg_loss_threshold:
        im_factor += (c.peg_loss_threshold - pf.stable_price) * c.peg_loss_factor

    conts = Contingencies(
        perp_mm_quote=perp_notional * c.perp_mm,
        perp_im_extra_quote=perp_notional * c.perp_im_extra,
        option_mm_quote=option_mm,
        option_im_extra_quote=option_im_extra,
        collateral_mm_quote=collateral_mm,
        collateral_im_extra_quote=collateral_im_extra,
        confidence_im_quote=confidence_im,
    )
    option_mtm = sum(r.mtm_quote for r in reports)
    mtm = pf.cash_quote + pf.perp_unrealised_quote + option_mtm + collateral_mtm
    mm_req = -worst.pnl_quote * mm_factor + conts.mm_quote
    im_req = -worst.pnl_quote * im_factor + conts.im_quote
    return PortfolioMarginResult(
        initial_margin_quote=mtm - im_req,
        maintenance_margin_quote=mtm - mm_req,
        initial_requirement_quote=im_req,
        maintenance_requirement_quote=mm_req,
        mark_to_market_quote=mtm,
        worst=worst,
        scenario_pnls_quote=tuple(float(x) for x in pnls),
        basis_contingency_quote=basis,
        contingencies=conts,
        im_loss_factor=im_factor,
        mm_loss_factor=mm_factor,
        option_mtm_quote=option_mtm,
        collateral_mtm_quote=collateral_mtm,
        perp_mtm_quote=pf.perp_unrealised_quote,
        expiries=tuple(reports),
    )


# --- cross-asset netting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossAssetParams:
    """Correlation offsets between underlyings, for :func:`cross_portfolio_margin`.

    ``offset_rates``: ``(a, b, rate)`` per pair of underlyings, ``rate`` in [0, 1] the share of the pair's
    co-movement netting that is credited (a correlation with a haircut: 0 = no netting, the default for
    any pair not listed). ``floor_fraction``: the netted requirement never goes below this share of the
    largest single-underlying scaled loss, plus every contingency.
    """

    offset_rates: tuple[tuple[str, str, float], ...]
    floor_fraction: float

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for a, b, rate in self.offset_rates:
            if not (isinstance(a, str) and isinstance(b, str) and a and b and a != b):
                raise ValidationError(f"an offset pairs two distinct underlyings, got {a!r}, {b!r}")
            _fraction(f"offset rate {a}/{b}", rate)
            key = (min(a, b), max(a, b))
            if key in seen:
                raise ValidationError(f"offset {key[0]}/{key[1]} given twice")
            seen.add(key)
        _fraction("floor_fraction", self.floor_fraction)

    def rate(self, a: str, b: str) -> float:
        """The offset rate of a pair (either order), 0 when not listed."""
        for x, y, r in self.offset_rates:
            if {x, y} == {a, b}:
                return r
        return 0.0


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


def _comoving_loss(results: Sequence[PortfolioMarginResult]) -> float:
    """Worst loss (>= 0) when every underlying moves along the same scenario of the shared grid."""
    pnls = np.sum([r.scenario_pnls_quote for r in results], axis=0)
    basis = sum(r.basis_contingency_quote for r in results)
    return -min(basis, float(np.min(pnls)))


def cross_portfolio_margin(
    portfolios: Mapping[str, Portfolio],
    params: PortfolioMarginParams | Mapping[str, PortfolioMarginParams],
    offsets: CrossAssetParams,
) -> CrossPortfolioMarginResult:
    """Margin of one account holding several underlyings: each stressed alone, then netted by correlation.

    With L_i the worst loss of underlying i alone (>= 0) and L_co(S) the worst loss of the set S moving
    along the same scenarios (same index of the shared grid: spot shocks and vol shocks in step):

    - pair credit c_ij = rate_ij x (L_i + L_j - L_co({i, j})) >= 0: the netting perfect co-movement
      would give the pair, scaled by its offset rate;
    - credit = min(sum of c_ij, sum L_i - L_co(all)): never more than all of them moving together nets;
    - requirement = sum_i (factor_i x L_i + contingencies_i) - min_i factor_i x credit, and at least the
      floor: floor_fraction x max_i (factor_i x L_i) + sum_i contingencies_i (IM and MM alike, each
      with its own loss factors and contingencies).

    Cash and every other holding count once, in the portfolio that holds them. All grids must be aligned
    (the same spot and vol shocks in the same order).
    """
    if not portfolios:
        raise ValidationError("at least one underlying is needed")
    names = sorted(portfolios)
    by_name = {n: params for n in names} if isinstance(params, PortfolioMarginParams) else dict(params)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValidationError(f"no parameters for {', '.join(missing)}")
    grids = {tuple((s.spot_shock, s.vol_shock) for s in by_name[n].scenarios) for n in names}
    if len(grids) != 1:
        raise ValidationError("cross-asset netting needs the same scenario grid for every underlying")
    for a, b, _ in offsets.offset_rates:
        for x in (a, b):
            if x not in portfolios:
                raise ValidationError(f"offset names {x!r}, which the account does not hold")
    results = [portfolio_margin(portfolios[n], by_name[n]) for n in names]
    losses = [-r.worst.pnl_quote for r in results]
    pair_credit = 0.0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            rate = offsets.rate(names[i], names[j])
            if rate > 0:
                pair_credit += rate * (losses[i] + losses[j] - _comoving_loss([results[i], results[j]]))
    comoving = _comoving_loss(results)
    standalone = sum(losses)
    credit = max(0.0, min(pair_credit, standalone - comoving))

    def requirement(initial: bool) -> tuple[float, float]:
        factors = [r.im_loss_factor if initial else r.mm_loss_factor for r in results]
        charges = sum(r.contingencies.im_quote if initial else r.contingencies.mm_quote for r in results)
        scaled = [f * loss for f, loss in zip(factors, losses, strict=True)]
        floor = offsets.floor_fraction * max(scaled) + charges
        return max(sum(scaled) + charges - min(factors) * credit, floor), floor

    im_req, im_floor = requirement(True)
    mm_req, mm_floor = requirement(False)
    mtm = sum(r.mark_to_market_quote for r in results)
    return CrossPortfolioMarginResult(
        by_underlying=tuple(zip(names, results, strict=True)),
        standalone_loss_quote=standalone,
        comoving_loss_quote=comoving,
        offset_credit_quote=credit,
        initial_requirement_quote=im_req,
        maintenance_requirement_quote=mm_req,
        floor_initial_quote=im_floor,
        floor_maintenance_quote=mm_floor,
        mark_to_market_quote=mtm,
        initial_margin_quote=mtm - im_req,
        maintenance_margin_quote=mtm - mm_req,
    )


# --- preset ---------------------------------------------------------------------------------------------


def _derive_pm2_scenarios() -> tuple[Scenario, ...]:
    grid: list[Scenario] = [Scenario(1.18, VolShock.UP)]
    for shock in (1.135, 1.09, 1.045, 1.0, 0.955, 0.91, 0.865):  # +-13.5 % in 4.5 % steps, three vol moves
        grid += [Scenario(shock, v) for v in (VolShock.DOWN, VolShock.NONE, VolShock.UP)]
    grid.append(Scenario(0.82, VolShock.UP))
    # tails, dampened to 0.036 / |move| (0.036 = 0.18 x 0.2): -66 %, -33 %, +50 %, x2, x3, x4
    for shock in (0.34, 0.67, 1.5, 2.0, 3.0, 4.0):
        grid.append(Scenario(shock, VolShock.UP, dampening=0.036 / abs(shock - 1.0), tail=True))
    grid += [Scenario(1.0, VolShock.SKEW_LINEAR), Scenario(1.0, VolShock.SKEW_ABS)]
    return tuple(grid)


DERIVE_PM2 = PortfolioMarginParams(
    scenarios=_derive_pm2_scenarios(),
    vol_shock=VolShockParams(
        range_up=0.5,
        range_down=0.275,
        short_term_power=0.3,
        long_term_power=0.13,
        dte_floor_s=1.0 * SECONDS_PER_DAY,
        min_vol_up=0.45,
    ),
    skew_shock=SkewShockParams(
        linear_base_cap=0.15,
        linear_c_base=-0.05,
        abs_base_cap=0.15,
        abs_c_base=-0.05,
        min_k_star=0.01,
        width_scale=4.0,
        vol_param_static=0.6,
        vol_param_scale=-0.1,
    ),
    margin=MarginParams(
        im_loss_factor=1.0,
        mm_loss_factor=0.8,
        long_static_discount=0.95,
        short_static_discount=1.04,
        long_rate_mult=1.0,
        long_rate_add=0.08,
        short_rate_mult=0.5,
        short_rate_add=0.08,
    ),
    basis=BasisContingencyParams(spot_up=1.045, spot_down=0.955, add_factor=0.5, mult_factor=2.0),
    contingency=ContingencyParams(
        perp_mm=0.015,
        perp_im_extra=0.005,  # IM 2 % in all
        option_mm=0.003,
        option_im_extra=0.002,  # IM 0.5 % in all
        confidence_threshold=0.55,
        confidence_margin=1.0,
        peg_loss_threshold=0.98,
        peg_loss_factor=2.0,
    ),
)
"""Derive's PM2 parameters: the default block of its published PMRM_2 portfolio cases (the one shared
by 23 of the 70, e.g. ``test_13_risk_cancelling_btc_covered_call``; the others vary one parameter)."""
