"""Gap risk per position: the probability that the price touches the bankruptcy price within the
liquidation horizon, and the add-on that keeps it under a target.

A position's bankruptcy price is the mark of its market at which its bucket's equity reaches zero, all
else held (:func:`bankruptcy_price_exact`): the bucket's equity is ``fixed + size * p`` with ``fixed``
the equity less this position's value (cross: the account's other positions and collateral; isolated:
the position's margin less its cost and funding owed). The barrier ratio bankruptcy / mark goes to
:func:`fluidmargin.risk.stats.jumps.crossing_probability` with the crossing table of the market's
:class:`GapRiskSpec` (diffusion barrier crossing plus jumps; one table per distinct spec, cached).

The add-on is the collateral that moves the bankruptcy price to where the probability meets the
target: the target barrier ratio r* comes from :func:`~fluidmargin.risk.stats.jumps.required_barrier_ratio`
(floats: a statistic), the target bankruptcy price from r* x mark rounded away from the mark to a price
quantum (and checked with the lookup itself), and the add-on from it exactly, in integers, rounded up to
a quote quantum. So the position with the add-on, its bankruptcy price rounded as here, has a
probability at or under the target. Pure: no clock, no engine, no I/O.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import InvariantViolation, ValidationError
from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS
from fluidmargin.model.config import GAP_MODELS, EngineConfig, GapRiskConfig, GapRiskSpec
from fluidmargin.risk.stats import jumps

__all__ = [
    "GAP_MODELS",
    "MERTON_BTC_1H_2018_2026",
    "MERTON_BTC_1M_CRASH_2021_05_19",
    "GapModel",
    "GapRisk",
    "GapRiskConfig",
    "GapRiskSpec",
    "bankruptcy_price_exact",
    "bankruptcy_price_q",
    "barrier_ratio",
    "format_probability",
    "gap_model",
    "params_of",
    "position_gap_risk",
    "positions_gap_risk",
]

SECONDS_PER_YEAR = 365 * 86_400  # risk.jumps annualises with a 365-day year
PROBABILITY_PLACES = 12  # decimals of a probability on the wire (rounded up)
_SMALL_BATCH = 64  # below this many positions the plain-Python lookup beats numba's dispatch

# Fitted by `fluidmargin fit-jumps DATA --model merton` (maximum likelihood on close-to-close log returns,
# returns across a gap in the data dropped). The "jumps" these fits find are the fat tails of the return
# distribution at the sampling interval, not rare crashes: many small jumps per year. horizon_s and target
# are venue choices, not fitted: 10 s (1 s oracle latency + 1 s detection + 8 s execution) and 0.1 %.
MERTON_BTC_1H_2018_2026 = GapRiskSpec(
    model="merton",
    sigma="0.277997",
    lam="2727.49",
    mu_j="-0.000148364",
    sigma_j="0.0106746",
    horizon_s="10",
    target="0.001",
    source="fluidmargin fit-jumps ../shared/data/prices/binance_1h_spot_perp_mark_funding_2018_2026/"
    "BTC_USDT-1h.csv.gz --model merton: 71,028 hourly returns 2018-01-01..2026-05-16, 29 gaps dropped",
)
MERTON_BTC_1M_CRASH_2021_05_19 = GapRiskSpec(
    model="merton",
    sigma="0.696289",
    lam="91071.8",
    mu_j="0.0000857787",
    sigma_j="0.0031603",
    horizon_s="10",
    target="0.001",
    source="fluidmargin fit-jumps ../shared/data/prices/binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19/"
    "BTC_USDT-1m.csv.gz --model merton: 42,913 one-minute returns 2021-04-20..2021-05-20, 1 gap dropped",
)


# --- models -------------------------------------------------------------------------------------------


def params_of(spec: GapRiskSpec) -> jumps.MertonParams | jumps.KouParams:
    """The :mod:`~fluidmargin.risk.stats.jumps` parameters of a spec (the drift is the table's martingale drift)."""
    sigma, lam = spec.number("sigma"), spec.number("lam")
    if spec.model == "kou":
        return jumps.KouParams(0.0, sigma, lam, spec.number("p_up"), spec.number("eta_up"), spec.number("eta_down"))
    if spec.model == "merton" and lam > 0.0:
        return jumps.MertonParams(0.0, sigma, lam, spec.number("mu_j"), spec.number("sigma_j"))
    return jumps.MertonParams(0.0, sigma, 0.0, 0.0, 1.0)  # gbm (or no jumps): the jump law is never drawn


@dataclass(frozen=True, slots=True, eq=False)
class GapModel:
    """A spec's crossing table and the barrier ratios that meet its target, per side."""

    spec: GapRiskSpec
    table: jumps.CrossingTable
    target: float
    ratio_long: float  # a long's bankruptcy price must be at most this x the mark
    ratio_short: float  # a short's at least this x the mark


@lru_cache(maxsize=64)
def _model(key: tuple[str, ...]) -> GapModel:
    spec = GapRiskSpec(*key)
    where = f"gap_risk ({spec.model}, sigma {spec.sigma}, lam {spec.lam}, horizon {spec.horizon_s} s)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a numeric warning means a table not to trust
            table = jumps.crossing_table(params_of(spec), spec.number("horizon_s") / SECONDS_PER_YEAR)
    except (RuntimeWarning, ArithmeticError, ValueError) as e:
        raise ValidationError(f"{where}: outside the crossing solver's range ({type(e).__name__}: {e})") from None
    if not (np.isfinite(table.lookup_long).all() and np.isfinite(table.lookup_short).all()):
        raise ValidationError(f"{where}: outside the crossing solver's range (non-finite probabilities)")
    target = spec.number("target")
    if table.p_floor > target:
        raise ValidationError(
            f"{where}: the table resolves probabilities down to {table.p_floor:.3g} only, above the target "
            f"{spec.target} (jumps too large for the diffusion's scale over the horizon); raise the target"
        )
    return GapModel(
        spec,
        table,
        target,
        jumps.required_barrier_ratio(table, jumps.LONG, target),
        jumps.required_barrier_ratio(table, jumps.SHORT, target),
    )


def gap_model(spec: GapRiskSpec) -> GapModel:
    """The spec's model, tabulated once per distinct (model, parameters, horizon, target) and cached.

    Raises ValidationError, with the reason, for a spec the crossing solver cannot tabulate to its target.
    """
    key = (spec.model, spec.sigma, spec.horizon_s, spec.target, spec.lam, spec.mu_j, spec.sigma_j, spec.p_up,
           spec.eta_up, spec.eta_down)  # fmt: skip
    return _model(key)


# --- bankruptcy price ------------------------------------------------------------------------------------


def _quote_per_price(size_decimals: int) -> Fraction:
    """Quote quantums per (base quantum x price quantum)."""
    return Fraction(10**QUOTE_DECIMALS, 10 ** (size_decimals + PRICE_DECIMALS))


def bankruptcy_price_exact(
    size_base_q: int, size_decimals: int, fixed_equity_quote_q: int | Fraction
) -> Fraction | None:
    """Price (price quantums, exact) at which ``fixed + size * p`` is zero; None for a flat position.

    May be <= 0: a long then never goes bankrupt at a positive price, a short is bankrupt at any.
    """
    if size_base_q == 0:
        return None
    if size_decimals < 0:
        raise ValidationError(f"size_decimals must be >= 0, got {size_decimals}")
    return -Fraction(fixed_equity_quote_q) / (size_base_q * _quote_per_price(size_decimals))


def bankruptcy_price_q(size_base_q: int, size_decimals: int, fixed_equity_quote_q: int | Fraction) -> int | None:
    """The bankruptcy price rounded toward the mark's side of danger: up for a long, down for a short.

    None for a flat position or a long that no positive price bankrupts; 0 for a short bankrupt at any.
    """
    p = bankruptcy_price_exact(size_base_q, size_decimals, fixed_equity_quote_q)
    if p is None:
        return None
    if size_base_q > 0:
        up = math.ceil(p)
        return up if up > 0 else None
    return max(math.floor(p), 0)


def barrier_ratio(size_base_q: int, bankruptcy_q: int | None, mark_q: int) -> float:
    """bankruptcy / mark as :func:`~fluidmargin.risk.stats.jumps.crossing_probability` takes it (0 for a long
    without a bankruptcy price)."""
    if mark_q <= 0:
        raise ValidationError(f"mark price must be positive, got {mark_q}")
    if bankruptcy_q is None:
        return 0.0 if size_base_q > 0 else math.inf
    return bankruptcy_q / mark_q


# --- per position ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GapRisk:
    """One position's gap risk: P(touch the bankruptcy price within the horizon) and the add-on."""

    probability: float  # a statistic (float), at the bankruptcy price rounded toward the mark
    addon_quote_q: int  # collateral that brings the probability to <= target (0 if it is already)
    bankruptcy_price_q: int | None


def _lookup(model: GapModel, side: npt.NDArray[np.int8], ratio: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if side.shape[0] < _SMALL_BATCH:
        return jumps.crossing_probability_py(model.table, side, ratio)
    return jumps.crossing_probability(model.table, side, ratio)


def _target_bankruptcy_q(model: GapModel, long: bool, mark_q: int) -> int:
    """The bankruptcy price farthest toward the mark whose probability is <= target, in price quantums.

    r* x mark rounded away from the mark; then the lookup itself confirms it (the float round trip of
    r* can land a hair on the wrong side), stepping away from the mark until it does.
    """
    r = Fraction(model.ratio_long if long else model.ratio_short)
    side = np.array([jumps.LONG if long else jumps.SHORT], dtype=np.int8)
    bk = math.floor(r * mark_q) if long else math.ceil(r * mark_q)
    step = 1
    for _ in range(64):
        if long and bk <= 0:
            return 0
        p = float(_lookup(model, side, np.array([bk / mark_q]))[0])
        if p <= model.target:
            return bk
        bk = bk - step if long else bk + step
        step *= 2
    raise InvariantViolation(f"gap add-on: no bankruptcy price meets target {model.target} at mark {mark_q}")


def _addon_quote_q(model: GapModel, size_base_q: int, size_decimals: int, mark_q: int, fixed: int | Fraction) -> int:
    """Collateral A with bankruptcy(fixed + A) on the safe side of the target's bankruptcy price B*.

    Equity at p is fixed + size k p (k quote quantums per base x price quantum), so the bankruptcy price
    with A added is -(fixed + A) / (size k): a long needs it <= B*, a short >= B*, both
    A >= -fixed - B* size k. Rounded up (a requirement); the rounded bankruptcy price then stays on the
    safe side of B* (an integer) too.
    """
    target_q = _target_bankruptcy_q(model, size_base_q > 0, mark_q)
    need = -Fraction(fixed) - target_q * size_base_q * _quote_per_price(size_decimals)
    return max(0, math.ceil(need))


def positions_gap_risk(
    spec: GapRiskSpec,
    size_base_q: Sequence[int],
    size_decimals: Sequence[int],
    mark_q: Sequence[int],
    fixed_equity_quote_q: Sequence[int | Fraction],
) -> list[GapRisk]:
    """Gap risk of many positions under one spec: the probabilities in one vectorised lookup.

    ``fixed_equity_quote_q``: each position's bucket equity less its value at the mark (see the module
    docstring). Flat positions are refused; marks must be positive.
    """
    n = len(size_base_q)
    if not (len(size_decimals) == len(mark_q) == len(fixed_equity_quote_q) == n):
        raise ValidationError("positions_gap_risk: the input sequences differ in length")
    model = gap_model(spec)
    bks: list[int | None] = []
    side = np.empty(n, dtype=np.int8)
    ratio = np.empty(n)
    for i in range(n):
        if size_base_q[i] == 0:
            raise ValidationError("gap risk of a flat position")
        bk = bankruptcy_price_q(size_base_q[i], size_decimals[i], fixed_equity_quote_q[i])
        bks.append(bk)
        side[i] = jumps.LONG if size_base_q[i] > 0 else jumps.SHORT
        ratio[i] = barrier_ratio(size_base_q[i], bk, mark_q[i])
    probs = _lookup(model, side, ratio)
    out = []
    for i in range(n):
        p = float(probs[i])
        addon = 0
        if p > model.target:
            addon = _addon_quote_q(model, size_base_q[i], size_decimals[i], mark_q[i], fixed_equity_quote_q[i])
        out.append(GapRisk(p, addon, bks[i]))
    return out


def position_gap_risk(
    spec: GapRiskSpec, size_base_q: int, size_decimals: int, mark_q: int, fixed_equity_quote_q: int | Fraction
) -> GapRisk:
    """Gap risk of one position (see :func:`positions_gap_risk`)."""
    return positions_gap_risk(spec, [size_base_q], [size_decimals], [mark_q], [fixed_equity_quote_q])[0]


def format_probability(p: float) -> str:
    """A probability as a decimal string: 12 places, rounded up (a risk figure errs high), no exponent."""
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise InvariantViolation(f"not a probability: {p!r}")
    d = Decimal(repr(p)).quantize(Decimal(1).scaleb(-PROBABILITY_PLACES), rounding=ROUND_CEILING)
    s = format(d, "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def check_config(cfg: EngineConfig) -> None:
    """Tabulate every gap model of ``cfg`` now (and cache it for the views): a spec the solver cannot
    resolve to its target is refused when the engine starts, with the reason, not at the first account view."""
    if cfg.gap_risk is None:
        return
    specs = [("default", cfg.gap_risk.default)] + [(f"markets.{m}", s) for m, s in cfg.gap_risk.markets]
    for where, spec in specs:
        if spec is not None:
            try:
                gap_model(spec)
            except ValidationError as e:
                raise ValidationError(str(e).replace("gap_risk", f"gap_risk.{where}", 1)) from None
