"""Parameters of the portfolio-margin model (:mod:`fluidmargin.risk.options.portfolio`): the scenario grid,
the vol, skew, margin, basis and contingency blocks, the cross-asset offsets, and Derive's PM2 preset.

Also the time constants both twins (the reference and :mod:`~fluidmargin.risk.options.pm_batch`) annualise
with, and the checks the model's value types validate their fields with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from fluidmargin.core.errors import ValidationError

SECONDS_PER_DAY = 86_400
SECONDS_PER_YEAR = 365 * SECONDS_PER_DAY  # Derive annualises with a 365-day year
VOL_SHOCK_REFERENCE_S = 30 * SECONDS_PER_DAY  # the (30 / DTE)^power term structure's reference
DTE_MIN_S = 1.0  # the vol shock's DTE is never below 1 s (a zero floor at expiry divides by zero in Derive)
K_STAR_MIN = 1e-18  # k* below one unit of Derive's 18-decimal fixed point divides by zero there


def require_finite(name: str, x: float) -> None:
    """ValidationError naming ``name`` unless ``x`` is a finite int or float (a bool is not a number here)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValidationError(f"{name} must be a finite number, got {x!r}")


def require_positive(name: str, x: float) -> None:
    """Finite and > 0."""
    require_finite(name, x)
    if x <= 0:
        raise ValidationError(f"{name} must be > 0, got {x!r}")


def require_non_negative(name: str, x: float) -> None:
    """Finite and >= 0."""
    require_finite(name, x)
    if x < 0:
        raise ValidationError(f"{name} must be >= 0, got {x!r}")


def require_fraction(name: str, x: float) -> None:
    """Finite and in [0, 1]."""
    require_finite(name, x)
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
        require_non_negative("spot_shock", self.spot_shock)  # 0: spot to nothing (Derive's shocks are unsigned)
        require_non_negative("dampening", self.dampening)
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
            require_non_negative(name, getattr(self, name))
        require_finite("short_term_power", self.short_term_power)
        require_finite("long_term_power", self.long_term_power)


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
            require_finite(name, getattr(self, name))
        for name in ("linear_base_cap", "abs_base_cap", "width_scale", "vol_param_static", "min_k_star"):
            require_non_negative(name, getattr(self, name))


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
            require_non_negative(name, getattr(self, name))
        for name in ("long_static_discount", "short_static_discount"):
            require_non_negative(name, getattr(self, name))  # 0: a shocked expiry counts for nothing
        for name in ("im_loss_factor", "mm_loss_factor"):
            require_positive(name, getattr(self, name))


@dataclass(frozen=True)
class BasisContingencyParams:
    """Forward (basis) contingency: the worse of spot up/down (vols unmoved) per expiry, times
    ``add_factor + mult_factor * t``; it is also the floor of the worst scenario."""

    spot_up: float
    spot_down: float
    add_factor: float
    mult_factor: float

    def __post_init__(self) -> None:
        require_positive("spot_up", self.spot_up)
        require_non_negative("spot_down", self.spot_down)
        if not self.spot_down < 1 < self.spot_up:
            raise ValidationError(f"basis shocks need spot_down < 1 < spot_up, got {self.spot_down}, {self.spot_up}")
        require_non_negative("add_factor", self.add_factor)
        require_non_negative("mult_factor", self.mult_factor)


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
            require_non_negative(name, getattr(self, name))
        require_fraction("confidence_threshold", self.confidence_threshold)
        require_non_negative("peg_loss_threshold", self.peg_loss_threshold)
        require_non_negative("peg_loss_factor", self.peg_loss_factor)


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


@dataclass(frozen=True)
class CrossAssetParams:
    """Correlation offsets between underlyings, for :func:`~fluidmargin.risk.options.portfolio.cross_portfolio_margin`.

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
            require_fraction(f"offset rate {a}/{b}", rate)
            key = (min(a, b), max(a, b))
            if key in seen:
                raise ValidationError(f"offset {key[0]}/{key[1]} given twice")
            seen.add(key)
        require_fraction("floor_fraction", self.floor_fraction)

    def rate(self, a: str, b: str) -> float:
        """The offset rate of a pair (either order), 0 when not listed."""
        for x, y, r in self.offset_rates:
            if {x, y} == {a, b}:
                return r
        return 0.0


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
