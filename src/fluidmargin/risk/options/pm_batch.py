"""Batch portfolio margin: :func:`~fluidmargin.risk.options.portfolio.portfolio_margin` over many accounts of one
underlying at once (numba), and a conservative delta-gamma screen to run between full revaluations.

Layout. A :class:`SeriesTable` lists the underlying's option series (expiry, strike, call/put); a
:class:`PmMarket` prices them (spot, perp price, per expiry: time, forward, rate; per series: mark vol); a
:class:`PmBook` holds the accounts as columns (cash, perp, unrealised perp P&L) and their options as
ragged rows (CSR: ``pos_offsets``) of (series, signed contracts). Each series is priced once per column --
today, the two basis shocks and every scenario of the grid -- then each account's expiry values are
sparse sums over its positions: 100k accounts of 5 options cost 100k x 5 x (3 + scenarios) multiply-adds.
The model is the reference's, term for term (:func:`portfolio_margin` is the twin; the tests hold them to
1e-9). Collaterals other than cash are not in the batch: accounts holding them use the reference.

Screening (:func:`pm_screen_reval`, :func:`pm_delta_gamma_tick`). A full revaluation at spot S0 also
values the maintenance margin M at S0 (1 - b) and S0 (1 + b) (``b`` = ``ScreenParams.move_bound``) with
every other input moved as :func:`move_market` does (forwards and the perp with spot, vols per series
unchanged). The quadratic through the three values gives the margin's delta and gamma; between full
revaluations the screened margin is ``M0 + delta dS + gamma dS^2 / 2 + theta dt`` (theta: the options'
value theta, an estimate of the margin's drift). It flags an account
for a full revaluation when a *certified lower bound* of M is below the threshold, when |dS| > b S0, or
when more than ``time_bound_s`` passed -- and the engine revalues before any liquidation decision.

Why the lower bound holds (x = dS / S0 in [-b, b]):

1. M = min over pieces i (the basis contingency, each scenario) of F_i = A + f W_i, with A the mark to
   market less the linear contingencies and W_i a sum over expiries of Black-76 values, each taken
   through ``min`` (the static discounts: v -> min(long v, short v)) or ``-|.|`` (skew). Every kink is a
   minimum, so concave, except ``-|.|`` over a discounted value: there the branch fixed by the sign at
   S0 is used instead, giving M~ <= M with M~(0) = M(0) (``-|p| = min(p, -p)`` and ``-p >= -p_branch``).
2. Each piece's second derivative in x is bounded above by G_i, summed per position from sup bounds of
   gamma, vanna, volga and vega over the band (and for the skew's moving vols, their kinks: a convex
   kink of slope jump J counts as curvature 2 J / b). Then on [p, q] = [0, b] or [-b, 0]:
   F_i >= chord(F_i) - G_i (x - p)(q - x) / 2, so M~ >= chord(M~) - G* (x - p)(q - x) / 2 with
   G* = max_i [G_i - 2 (sqrt(g_p,i) + sqrt(g_q,i))^2 / b^2], g the gap F_i - M~ at the ends: a piece far
   above the minimum cannot bind. In delta-gamma form: M(x) >= Q(x) - (G* - gamma_x) |x| (b - |x|) / 2.
3. Time: |dM~/dt| <= Theta (sup bounds of theta, of the term-structure and skew shocks' drift, of the
   static discounts' drift, over the band and the time window); an expiry inside the window makes
   Theta infinite. So M(x, t0 + dt) >= Q(x) - (G* - gamma) |x| (b - |x|) / 2 - Theta dt - slack, and
   slack (1e-9 of the account's gross value) covers float rounding.

So an account whose maintenance margin is below the threshold (0: breached) is always flagged; the
property tests check it, and that the bound never exceeds the exact margin, on random books and paths.
The screen covers spot moves and time only: a new vol, forward, rate or confidence, an account event
(trade, deposit, funding) and any liquidation decision take a full revaluation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import NS_PER_S
from fluidmargin.risk.options.black76 import MIN_TOTAL_VOL, black76_greeks
from fluidmargin.risk.options.portfolio import (
    DTE_MIN_S,
    K_STAR_MIN,
    SECONDS_PER_YEAR,
    VOL_SHOCK_REFERENCE_S,
    ExpiryHolding,
    OptionHolding,
    Portfolio,
    PortfolioMarginParams,
    VolShock,
    _black76,
    _expiry_terms,
    _skew_multipliers,
)

__all__ = [
    "REASON_MOVE",
    "REASON_NEAR",
    "REASON_OK",
    "REASON_TIME",
    "WORST_BASIS",
    "PmBatchResult",
    "PmBook",
    "PmMarket",
    "PmScreenState",
    "PmTickResult",
    "ScreenParams",
    "SeriesTable",
    "account_portfolio",
    "batch_from_portfolio",
    "move_market",
    "pm_delta_gamma_tick",
    "pm_full_reval",
    "pm_screen_reval",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

WORST_BASIS = -1  # worst_index when the basis (forward) contingency sets the margin
REASON_OK = 0  # screened: no full revaluation needed
REASON_NEAR = 1  # the certified lower bound of the maintenance margin is below the threshold
REASON_MOVE = 2  # spot moved beyond the bound since the last full revaluation
REASON_TIME = 3  # the time bound passed (or the clock went backwards)

_N0 = 1.0 / math.sqrt(2.0 * math.pi)  # the normal density's peak
_SLACK_REL = 1e-9  # float rounding allowance, relative to the account's gross value
_COLS_FIXED = 3  # price columns before the scenarios: today, basis up, basis down


def _f64(name: str, a: Any, n: int | None = None) -> FloatArray:
    x = np.ascontiguousarray(a, dtype=np.float64)
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        raise ValidationError(f"{name} must be 1-D of length {n}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValidationError(f"{name} must be finite")
    return x


def _i64(name: str, a: Any, n: int | None = None) -> IntArray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu" and arr.size:
        raise ValidationError(f"{name} must hold integers, got {arr.dtype}")
    x = np.ascontiguousarray(arr, dtype=np.int64)
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        raise ValidationError(f"{name} must be 1-D of length {n}, got shape {x.shape}")
    return x


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen value type's fields while it is built


# --- value types ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SeriesTable:
    """The option series of one underlying: ``expiry_index`` (into the market's expiries), strike, call/put."""

    expiry_index: IntArray
    strike: FloatArray
    is_call: BoolArray
    n_expiries: int

    def __post_init__(self) -> None:
        idx = _i64("expiry_index", self.expiry_index)
        n = idx.shape[0]
        strike = _f64("strike", self.strike, n)
        is_call = np.ascontiguousarray(self.is_call, dtype=np.bool_)
        if is_call.shape != (n,):
            raise ValidationError(f"is_call must be 1-D of length {n}")
        if isinstance(self.n_expiries, bool) or not isinstance(self.n_expiries, int) or self.n_expiries < 0:
            raise ValidationError(f"n_expiries must be an integer >= 0, got {self.n_expiries!r}")
        if n and (idx.min() < 0 or idx.max() >= self.n_expiries):
            raise ValidationError("expiry_index out of range")
        if np.any(strike <= 0):
            raise ValidationError("strike must be > 0")
        _set(self, "expiry_index", idx)
        _set(self, "strike", strike)
        _set(self, "is_call", is_call)

    @property
    def n_series(self) -> int:
        return int(self.strike.shape[0])


@dataclass(frozen=True, eq=False)
class PmMarket:
    """One underlying's market at one event time, for the series of ``series``.

    Per expiry: whole seconds to expiry, forward, rate (negative counts as 0), the fixed part of the
    forward and the confidences; per series: mark vol and its confidence. Confidence arrays default to 1.
    """

    series: SeriesTable
    spot_price: float
    perp_price: float
    sec_to_expiry_s: IntArray
    forward: FloatArray
    rate: FloatArray
    vol: FloatArray
    forward_fixed: FloatArray | None = None
    forward_confidence: FloatArray | None = None
    rate_confidence: FloatArray | None = None
    vol_confidence: FloatArray | None = None
    spot_confidence: float = 1.0
    perp_confidence: float = 1.0
    stable_price: float = 1.0

    def __post_init__(self) -> None:
        ne, ns = self.series.n_expiries, self.series.n_series
        for name in ("spot_price", "perp_price", "spot_confidence", "perp_confidence", "stable_price"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValidationError(f"{name} must be a finite number, got {v!r}")
        if self.spot_price <= 0 or self.stable_price <= 0 or self.perp_price < 0:
            raise ValidationError("spot_price and stable_price must be > 0, perp_price >= 0")
        for name in ("spot_confidence", "perp_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValidationError(f"{name} must be in [0, 1]")
        sec = _i64("sec_to_expiry_s", self.sec_to_expiry_s, ne)
        if np.any(sec < 0):
            raise ValidationError("sec_to_expiry_s must be >= 0")
        fwd = _f64("forward", self.forward, ne)
        if np.any(fwd <= 0):
            raise ValidationError("forward must be > 0")
        fixed = _f64("forward_fixed", np.zeros(ne) if self.forward_fixed is None else self.forward_fixed, ne)
        if np.any(fixed < 0) or np.any(fixed > fwd) or np.any((fixed == fwd) & (sec > 0)):
            raise ValidationError("forward_fixed must be in [0, forward) (up to the forward at expiry)")
        vol = _f64("vol", self.vol, ns)
        if np.any(vol < 0):
            raise ValidationError("vol must be >= 0")
        _set(self, "sec_to_expiry_s", sec)
        _set(self, "forward", fwd)
        _set(self, "forward_fixed", fixed)
        _set(self, "rate", _f64("rate", self.rate, ne))
        _set(self, "vol", vol)
        for name, n in (("forward_confidence", ne), ("rate_confidence", ne), ("vol_confidence", ns)):
            raw = getattr(self, name)
            c = _f64(name, np.ones(n) if raw is None else raw, n)
            if np.any(c < 0) or np.any(c > 1):
                raise ValidationError(f"{name} must be in [0, 1]")
            _set(self, name, c)

    @property
    def fixed(self) -> FloatArray:
        """``forward_fixed`` (never None once built)."""
        assert self.forward_fixed is not None
        return self.forward_fixed


@dataclass(frozen=True, eq=False)
class PmBook:
    """Accounts on one underlying, as columns. Account i's options are the rows
    ``pos_offsets[i]:pos_offsets[i + 1]`` of ``pos_series`` / ``pos_amount`` (signed contracts), ordered
    by (expiry, strike) of their series within each account (:meth:`build` sorts them)."""

    series: SeriesTable
    cash_quote: FloatArray
    perp_amount: FloatArray
    perp_unrealised_quote: FloatArray
    pos_offsets: IntArray
    pos_series: IntArray
    pos_amount: FloatArray

    def __post_init__(self) -> None:
        cash = _f64("cash_quote", self.cash_quote)
        n = cash.shape[0]
        offsets = _i64("pos_offsets", self.pos_offsets, n + 1)
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValidationError("pos_offsets must start at 0 and never decrease")
        m = int(offsets[-1])
        sid = _i64("pos_series", self.pos_series, m)
        if m and (sid.min() < 0 or sid.max() >= self.series.n_series):
            raise ValidationError("pos_series out of range")
        acct = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        e = self.series.expiry_index[sid]
        k = self.series.strike[sid]
        same = acct[1:] == acct[:-1]
        ordered = (e[1:] > e[:-1]) | ((e[1:] == e[:-1]) & (k[1:] >= k[:-1]))
        if np.any(same & ~ordered):
            raise ValidationError("positions must be ordered by (expiry, strike) within each account: use PmBook.build")
        _set(self, "cash_quote", cash)
        _set(self, "perp_amount", _f64("perp_amount", self.perp_amount, n))
        _set(self, "perp_unrealised_quote", _f64("perp_unrealised_quote", self.perp_unrealised_quote, n))
        _set(self, "pos_offsets", offsets)
        _set(self, "pos_series", sid)
        _set(self, "pos_amount", _f64("pos_amount", self.pos_amount, m))

    @classmethod
    def build(
        cls,
        series: SeriesTable,
        cash_quote: Any,
        perp_amount: Any,
        pos_offsets: Any,
        pos_series: Any,
        pos_amount: Any,
        perp_unrealised_quote: Any = None,
    ) -> PmBook:
        """A book from positions in any order within each account (sorted here, stably)."""
        offsets = _i64("pos_offsets", pos_offsets)
        sid = _i64("pos_series", pos_series)
        amount = np.asarray(pos_amount, dtype=np.float64)
        n = offsets.shape[0] - 1
        if n < 0 or sid.shape != amount.shape or (sid.size and (sid.min() < 0 or sid.max() >= series.n_series)):
            raise ValidationError("pos_offsets, pos_series and pos_amount do not fit together")
        acct = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        if acct.shape != sid.shape:
            raise ValidationError("pos_offsets must end at the number of positions")
        order = np.lexsort((series.strike[sid], series.expiry_index[sid], acct))
        pu = np.zeros(n) if perp_unrealised_quote is None else perp_unrealised_quote
        return cls(series, cash_quote, perp_amount, pu, offsets, sid[order], amount[order])

    @property
    def n_accounts(self) -> int:
        return int(self.cash_quote.shape[0])

    def with_perp_unrealised(self, perp_unrealised_quote: Any) -> PmBook:
        """The same book with new unrealised perp P&L (positions already ordered: no re-sort)."""
        return PmBook(
            self.series, self.cash_quote, self.perp_amount, perp_unrealised_quote, self.pos_offsets,
            self.pos_series, self.pos_amount,
        )  # fmt: skip


@dataclass(frozen=True)
class ScreenParams:
    """Bounds of the delta-gamma screen: a full revaluation once |dS / S| > ``move_bound`` or more than
    ``time_bound_s`` passed; flag when the certified lower bound of MM is below ``threshold_quote``."""

    move_bound: float = 0.02
    time_bound_s: int = 60
    threshold_quote: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.move_bound, float | int) or not 0 < self.move_bound <= 0.5:
            raise ValidationError(f"move_bound must be in (0, 0.5], got {self.move_bound!r}")
        if isinstance(self.time_bound_s, bool) or not isinstance(self.time_bound_s, int) or self.time_bound_s < 0:
            raise ValidationError(f"time_bound_s must be an integer >= 0, got {self.time_bound_s!r}")
        if not isinstance(self.threshold_quote, float | int) or not math.isfinite(self.threshold_quote):
            raise ValidationError(f"threshold_quote must be finite, got {self.threshold_quote!r}")


@dataclass(frozen=True, eq=False)
class PmBatchResult:
    """Per account (aligned with ``rows``, indices into the book): the reference's figures.

    ``worst_index`` is the scenario setting the margin, or :data:`WORST_BASIS`; ``scenario_pnls_quote``
    (accounts x scenarios) only when asked for.
    """

    rows: IntArray
    initial_margin_quote: FloatArray
    maintenance_margin_quote: FloatArray
    initial_requirement_quote: FloatArray
    maintenance_requirement_quote: FloatArray
    mark_to_market_quote: FloatArray
    option_mtm_quote: FloatArray
    worst_pnl_quote: FloatArray
    worst_index: IntArray
    basis_contingency_quote: FloatArray
    scenario_pnls_quote: FloatArray | None = None


@dataclass(frozen=True, eq=False)
class PmScreenState:
    """What the screen keeps per account from its last full revaluation (arrays aligned with the book).

    Margin sensitivities are those of the maintenance margin (quote per unit of spot, per spot^2, per
    second); ``delta`` / ``gamma`` / ``theta_per_s`` are the portfolio value's Greeks w.r.t. spot (the
    perp included), for display and hedging; ``theta_est_per_s`` (the options' theta) drives the estimate.
    ``curv_*`` are the certified curvature bounds G* (per spot^2) below and above the reference spot,
    ``theta_bound_per_s`` the bound on |dM/dt|, ``slack_quote`` the rounding allowance.
    """

    spot_ref: FloatArray
    ts_ref_ns: IntArray
    mm_quote: FloatArray
    im_quote: FloatArray
    margin_delta: FloatArray
    margin_gamma: FloatArray
    curv_down: FloatArray
    curv_up: FloatArray
    theta_bound_per_s: FloatArray
    theta_est_per_s: FloatArray
    slack_quote: FloatArray
    delta: FloatArray
    gamma: FloatArray
    theta_per_s: FloatArray
    move_bound: float
    time_bound_s: int
    threshold_quote: float

    def __post_init__(self) -> None:
        n = self.spot_ref.shape[0]
        for name in _STATE_ARRAYS:
            if getattr(self, name).shape != (n,):
                raise ValidationError(f"{name} must be 1-D of length {n}")

    @property
    def n_accounts(self) -> int:
        return int(self.spot_ref.shape[0])

    def merged(self, rows: Any, part: PmScreenState) -> PmScreenState:
        """A copy with the accounts ``rows`` replaced by ``part`` (a revaluation of just those)."""
        idx = np.asarray(rows, dtype=np.int64)
        if part.n_accounts != idx.shape[0]:
            raise ValidationError("part must have one row per index in rows")
        bounds = ("move_bound", "time_bound_s", "threshold_quote")
        if any(getattr(part, b) != getattr(self, b) for b in bounds):
            raise ValidationError("part was built with other screen bounds")
        arrays = {}
        for name in _STATE_ARRAYS:
            a = getattr(self, name).copy()
            a[idx] = getattr(part, name)
            arrays[name] = a
        return dataclasses.replace(self, **arrays)


_STATE_ARRAYS = tuple(
    f.name for f in dataclasses.fields(PmScreenState) if f.name not in ("move_bound", "time_bound_s", "threshold_quote")
)


@dataclass(frozen=True, eq=False)
class PmTickResult:
    """One tick's screen: the delta-gamma(-theta) estimate of MM, its certified lower bound, and why a full
    revaluation is needed (``REASON_*``; :data:`REASON_OK` when none)."""

    screened_mm_quote: FloatArray
    mm_lower_quote: FloatArray
    reason: npt.NDArray[np.uint8]

    @property
    def needs_reval(self) -> BoolArray:
        return np.asarray(self.reason != REASON_OK)


# --- market moves and conversions -----------------------------------------------------------------------


def move_market(market: PmMarket, book: PmBook, spot_price: float, elapsed_s: int = 0) -> tuple[PmMarket, PmBook]:
    """The market and book the screen assumes after spot moves to ``spot_price`` and ``elapsed_s`` pass.

    The moving part of each forward and the perp price scale with spot, the unrealised perp P&L follows
    the perp, vols and rates stay, times to expiry shrink (never below 0). The screen's guarantee is
    relative to this move; any other market change calls for a full revaluation.
    """
    moved = _moved_market(market, spot_price, elapsed_s)
    pu = book.perp_unrealised_quote + book.perp_amount * (moved.perp_price - market.perp_price)
    return moved, book.with_perp_unrealised(pu)


def _moved_market(market: PmMarket, spot_price: float, elapsed_s: int) -> PmMarket:
    if not math.isfinite(spot_price) or spot_price <= 0:
        raise ValidationError(f"spot_price must be > 0, got {spot_price!r}")
    if isinstance(elapsed_s, bool) or not isinstance(elapsed_s, int) or elapsed_s < 0:
        raise ValidationError(f"elapsed_s must be an integer >= 0, got {elapsed_s!r}")
    ratio = spot_price / market.spot_price
    fixed = market.fixed
    return PmMarket(
        series=market.series,
        spot_price=spot_price,
        perp_price=market.perp_price * ratio,
        sec_to_expiry_s=np.maximum(market.sec_to_expiry_s - elapsed_s, 0),
        forward=fixed + (market.forward - fixed) * ratio,
        rate=market.rate,
        vol=market.vol,
        forward_fixed=fixed,
        forward_confidence=market.forward_confidence,
        rate_confidence=market.rate_confidence,
        vol_confidence=market.vol_confidence,
        spot_confidence=market.spot_confidence,
        perp_confidence=market.perp_confidence,
        stable_price=market.stable_price,
    )


def account_portfolio(market: PmMarket, book: PmBook, i: int) -> Portfolio:
    """Account ``i`` of the book as the reference model's :class:`Portfolio` (the batch's twin)."""
    s = market.series
    lo, hi = int(book.pos_offsets[i]), int(book.pos_offsets[i + 1])
    by_expiry: dict[int, list[OptionHolding]] = {}
    assert market.vol_confidence is not None and market.forward_confidence is not None
    assert market.rate_confidence is not None
    for j in range(lo, hi):
        sid = int(book.pos_series[j])
        opt = OptionHolding(
            strike=float(s.strike[sid]),
            is_call=bool(s.is_call[sid]),
            amount=float(book.pos_amount[j]),
            vol=float(market.vol[sid]),
            vol_confidence=float(market.vol_confidence[sid]),
        )
        by_expiry.setdefault(int(s.expiry_index[sid]), []).append(opt)
    expiries = tuple(
        ExpiryHolding(
            sec_to_expiry_s=int(market.sec_to_expiry_s[e]),
            forward=float(market.forward[e]),
            rate=float(market.rate[e]),
            options=tuple(opts),
            forward_confidence=float(market.forward_confidence[e]),
            rate_confidence=float(market.rate_confidence[e]),
            forward_fixed=float(market.fixed[e]),
        )
        for e, opts in sorted(by_expiry.items())
    )
    return Portfolio(
        spot_price=market.spot_price,
        cash_quote=float(book.cash_quote[i]),
        spot_confidence=market.spot_confidence,
        stable_price=market.stable_price,
        perp_amount=float(book.perp_amount[i]),
        perp_price=market.perp_price,
        perp_confidence=market.perp_confidence,
        perp_unrealised_quote=float(book.perp_unrealised_quote[i]),
        expiries=expiries,
    )


def batch_from_portfolio(portfolio: Portfolio) -> tuple[PmMarket, PmBook]:
    """A one-account market and book from a reference :class:`Portfolio` (which must hold no collaterals)."""
    pf = portfolio
    if pf.collaterals:
        raise ValidationError("the batch model holds no collaterals other than cash")
    expiries = sorted(pf.expiries, key=lambda e: e.sec_to_expiry_s)
    opts = [(ei, o) for ei, e in enumerate(expiries) for o in e.options]
    series = SeriesTable(
        expiry_index=np.array([ei for ei, _ in opts], dtype=np.int64),
        strike=np.array([o.strike for _, o in opts], dtype=np.float64),
        is_call=np.array([o.is_call for _, o in opts], dtype=np.bool_),
        n_expiries=len(expiries),
    )
    market = PmMarket(
        series=series,
        spot_price=pf.spot_price,
        perp_price=pf.perp_price,
        sec_to_expiry_s=np.array([e.sec_to_expiry_s for e in expiries], dtype=np.int64),
        forward=np.array([e.forward for e in expiries]),
        rate=np.array([e.rate for e in expiries]),
        vol=np.array([o.vol for _, o in opts]),
        forward_fixed=np.array([e.forward_fixed for e in expiries]),
        forward_confidence=np.array([e.forward_confidence for e in expiries]),
        rate_confidence=np.array([e.rate_confidence for e in expiries]),
        vol_confidence=np.array([o.vol_confidence for _, o in opts]),
        spot_confidence=pf.spot_confidence,
        perp_confidence=pf.perp_confidence,
        stable_price=pf.stable_price,
    )
    book = PmBook.build(
        series, [pf.cash_quote], [pf.perp_amount], [0, len(opts)], np.arange(len(opts)),
        [o.amount for _, o in opts], [pf.perp_unrealised_quote],
    )  # fmt: skip
    return market, book


# --- per-series tables (numpy: a few hundred series) ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Columns:
    """Per expiry and per (series, column) inputs of one market; columns = today, basis up/down, scenarios."""

    t_years: FloatArray  # per expiry
    rate: FloatArray  # max(rate, 0)
    discount: FloatArray
    sd_long: FloatArray
    sd_short: FloatArray
    basis_factor: FloatArray
    confidence: FloatArray  # min(forward, rate) confidence
    shocks: FloatArray  # per column
    vols: FloatArray  # (series, column)
    prices: FloatArray  # (series, column)
    k_star: FloatArray  # per expiry
    caps: tuple[FloatArray, FloatArray]  # linear, abs per expiry


def _columns(market: PmMarket, params: PortfolioMarginParams) -> _Columns:
    """The reference's per-expiry intermediates, then every series priced once per column."""
    s = market.series
    e = s.expiry_index
    terms = _expiry_terms(market.sec_to_expiry_s, market.rate, params)  # the reference's, term for term
    t, disc = terms.t_years, terms.discount
    assert market.forward_confidence is not None and market.rate_confidence is not None
    confidence = np.minimum(market.forward_confidence, market.rate_confidence)
    up, down = terms.vol_up, terms.vol_down
    k_star, linear_cap, abs_cap = terms.k_star, terms.linear_cap, terms.abs_cap
    vol = market.vol
    log_m = np.log(s.strike / market.forward[e])
    by_shock = {
        VolShock.UP: np.maximum(params.vol_shock.min_vol_up, vol * up[e]),
        VolShock.NONE: vol,
        VolShock.DOWN: vol * down[e],
        VolShock.SKEW_LINEAR: vol * np.maximum(_skew_multipliers(log_m, linear_cap[e], k_star[e]), 0.0),
        VolShock.SKEW_ABS: vol * np.maximum(_skew_multipliers(np.abs(log_m), abs_cap[e], k_star[e]), 0.0),
    }
    shocks = np.array(
        [1.0, params.basis.spot_up, params.basis.spot_down] + [sc.spot_shock for sc in params.scenarios],
        dtype=np.float64,
    )
    vols = np.stack([vol, vol, vol] + [by_shock[sc.vol_shock] for sc in params.scenarios], axis=1)
    moving = (market.forward - market.fixed)[e]
    fwd = moving[:, None] * shocks[None, :] + market.fixed[e][:, None]
    prices = _black76(fwd, s.strike[:, None], t[e][:, None], vols, disc[e][:, None], s.is_call[:, None])
    return _Columns(
        t_years=t, rate=terms.rate, discount=disc, sd_long=terms.sd_long, sd_short=terms.sd_short,
        basis_factor=terms.basis_factor,
        confidence=confidence, shocks=shocks, vols=np.ascontiguousarray(vols), prices=np.ascontiguousarray(prices),
        k_star=k_star, caps=(linear_cap, abs_cap),
    )  # fmt: skip


def _mul(a: FloatArray | float, b: FloatArray | float) -> FloatArray:
    """a * b with 0 * inf = 0 (a position or factor of zero contributes nothing, however steep)."""
    a_, b_ = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    out = np.zeros(a_.shape)
    nz = (a_ != 0) & (b_ != 0)
    out[nz] = a_[nz] * b_[nz]
    return out


def _npdf(x: FloatArray) -> FloatArray:
    return np.asarray(_N0 * np.exp(-0.5 * np.minimum(x * x, 1e300)), dtype=np.float64)


def _curvature_tables(
    market: PmMarket, params: PortfolioMarginParams, cols: _Columns, b: float
) -> tuple[FloatArray, FloatArray]:
    """Per (series, column): bounds ``up`` >= sup d2P/dx2 and ``dn`` >= sup -d2P/dx2 over x in [-b, b]
    (x = dS / S0), convex (``up``) and concave (``dn``) kinks folded in as 2 J / b. May hold inf."""
    s = market.series
    e = s.expiry_index
    n_cols = cols.shocks.shape[0]
    t = cols.t_years[e][:, None]
    sqrt_t = np.sqrt(t)
    d = cols.discount[e][:, None]
    fixed = market.fixed[e][:, None]
    moving = (market.forward - market.fixed)[e][:, None]
    k = s.strike[:, None]
    slope = moving * cols.shocks[None, :]  # dF / dx
    f_lo = fixed + slope * (1.0 - b)
    f_hi = fixed + slope * (1.0 + b)
    kink_in = (f_lo <= k) & (k <= f_hi)
    up = np.zeros((s.n_series, n_cols))
    dn = np.zeros((s.n_series, n_cols))

    # vols fixed in x: gamma only, n(d1) at its largest over the band
    sig = cols.vols
    tot = sig * sqrt_t
    degen = tot < MIN_TOTAL_VOL
    tot_safe = np.where(degen, 1.0, tot)
    d1_lo = np.log(f_lo / k) / tot_safe + 0.5 * tot_safe
    d1_hi = np.log(f_hi / k) / tot_safe + 0.5 * tot_safe
    n_hat = np.where((d1_lo <= 0) & (d1_hi >= 0), _N0, _npdf(np.minimum(np.abs(d1_lo), np.abs(d1_hi))))
    gamma_x = d * n_hat / (f_lo * tot_safe) * slope * slope
    # an intrinsic payoff (no vol left) has a convex kink of slope jump D dF/dx where F crosses K
    kink = np.where(kink_in, 2.0 * d * slope / b, 0.0)
    up[:] = np.where(degen, kink, gamma_x)

    # skew columns: the vol moves with log-moneyness ln(K / F(x)), through a piecewise-linear multiplier
    sk_cols = [(c + _COLS_FIXED, sc.vol_shock) for c, sc in enumerate(params.scenarios) if sc.vol_shock.is_skew]
    vol0 = market.vol
    for c, shape in sk_cols:
        cap = (cols.caps[0] if shape is VolShock.SKEW_LINEAR else cols.caps[1])[e]
        ks = cols.k_star[e]
        sq = sqrt_t[:, 0]
        fl, fh, kk, dd_, mv = f_lo[:, c], f_hi[:, c], s.strike, d[:, 0], moving[:, 0]
        sig_lo = vol0 * (1.0 - cap if shape is VolShock.SKEW_LINEAR else 1.0)
        sig_hi = vol0 * (1.0 + cap)
        flat = vol0 * (1.0 + np.abs(cap)) * sq < MIN_TOTAL_VOL  # intrinsic throughout the band
        ok = (cap >= 0) & (cap <= 1) & (sig_lo * sq >= MIN_TOTAL_VOL)
        with np.errstate(divide="ignore", invalid="ignore"):
            s_lo = np.where(ok, sig_lo * sq, 1.0)
            s_hi = sig_hi * sq
            du = mv / fl  # |d ln F / dx| <= moving / F_lo
            ds1 = vol0 * (cap / ks) * du  # |d sigma / dx|
            ds2 = vol0 * (cap / ks) * du * du  # |d2 sigma / dx2| (smooth part)
            gam = dd_ * _N0 / (fl * s_lo)
            vega = dd_ * fh * _N0 * sq
            lnm = np.maximum(np.abs(np.log(fl / kk)), np.abs(np.log(fh / kk)))
            dd = (lnm + 0.5 * s_hi * s_hi) / s_lo  # bounds |d1| and |d2|
            sig_lo_safe = np.where(ok, sig_lo, 1.0)
            vanna = dd_ * _N0 * dd / sig_lo_safe
            volga = vega * dd * dd / sig_lo_safe
            smooth = 2.0 * vanna * mv * ds1 + volga * ds1 * ds1 + vega * ds2
            jump = vega * ds1
            if shape is VolShock.SKEW_LINEAR:  # convex kink at F = K e^k*, concave at F = K e^-k*
                convex = np.where((fl <= kk * np.exp(ks)) & (kk * np.exp(ks) <= fh), jump, 0.0)
                concave = np.where((fl <= kk * np.exp(-ks)) & (kk * np.exp(-ks) <= fh), jump, 0.0)
            else:  # |ln(K/F)|: convex at the money (twice the slope), concave at F = K e^+-k*
                convex = np.where((fl <= kk) & (kk <= fh), 2.0 * jump, 0.0)
                concave = np.where((fl <= kk * np.exp(ks)) & (kk * np.exp(ks) <= fh), jump, 0.0)
                concave = concave + np.where((fl <= kk * np.exp(-ks)) & (kk * np.exp(-ks) <= fh), jump, 0.0)
            up_c = np.where(ok, gam * mv * mv + smooth + 2.0 * convex / b, np.inf)
            dn_c = np.where(ok, smooth + 2.0 * concave / b, np.inf)
        intrinsic_kink = np.where((fl <= kk) & (kk <= fh), 2.0 * dd_ * mv / b, 0.0)
        up[:, c] = np.where(flat, intrinsic_kink, up_c)
        dn[:, c] = np.where(flat, 0.0, dn_c)
    return up, dn


def _time_tables(
    market: PmMarket, params: PortfolioMarginParams, cols: _Columns, b: float, tau_s: int
) -> tuple[FloatArray, FloatArray]:
    """Per (series, column) ``TB`` (see the module docstring's step 3; per year of time passing) and the
    per-expiry ``sd_max`` bounding both static discounts over the window. May hold inf."""
    s = market.series
    e = s.expiry_index
    n_cols = cols.shocks.shape[0]
    vs, sk, mp = params.vol_shock, params.skew_shock, params.margin
    sec0 = market.sec_to_expiry_s.astype(np.float64)
    sec_min = sec0 - tau_s
    t0 = cols.t_years
    t_min = sec_min / SECONDS_PER_YEAR
    r = cols.rate
    expired = sec0 == 0
    lapses = (~expired) & (sec_min <= 0)  # an expiry inside the window: no bound
    t_min_safe = np.where(t_min > 0, t_min, 1.0)

    # term-structure multiplier m(T) = (30 d / max(T, floor))^p and |dm/dT| (per year) over the window
    dte_floor = max(vs.dte_floor_s, DTE_MIN_S)
    ratio_max = VOL_SHOCK_REFERENCE_S / np.maximum(np.maximum(sec_min, 0.0), dte_floor)
    ratio_min = VOL_SHOCK_REFERENCE_S / np.maximum(sec0, dte_floor)
    m_max = np.zeros_like(sec0)
    for p in (vs.short_term_power, vs.long_term_power):
        m_max = np.maximum(m_max, np.maximum(ratio_max**p, ratio_min**p))
    power_max = max(abs(vs.short_term_power), abs(vs.long_term_power))
    floor_y = dte_floor / SECONDS_PER_YEAR
    dm = np.where(sec0 <= dte_floor, 0.0, power_max * m_max / np.maximum(t_min_safe, floor_y))

    # skew: |d mult / dT| <= |cap'| + |cap| |k*'| / k*, over the window
    sq0, sqm = np.sqrt(t0), np.sqrt(t_min_safe)
    g0 = sk.width_scale * (sk.vol_param_static * sq0 + sk.vol_param_scale * t0)
    gm = sk.width_scale * (sk.vol_param_static * sqm + sk.vol_param_scale * t_min_safe)
    k_star_min = np.maximum(max(sk.min_k_star, K_STAR_MIN), np.minimum(g0, gm))
    dk_star = sk.width_scale * (sk.vol_param_static / (2.0 * sqm) + abs(sk.vol_param_scale))
    skew_dmult = {}
    skew_cap = {}
    for shape, c_base, base in (
        (VolShock.SKEW_LINEAR, sk.linear_c_base, sk.linear_base_cap),
        (VolShock.SKEW_ABS, sk.abs_c_base, sk.abs_base_cap),
    ):
        cap0, capm = c_base * sq0 + base, c_base * sqm + base
        cap_abs = np.maximum(np.abs(cap0), np.abs(capm))
        valid = (np.minimum(cap0, capm) >= 0) & (np.maximum(cap0, capm) <= 1)
        skew_dmult[shape] = np.where(valid, abs(c_base) / (2.0 * sqm) + cap_abs * dk_star / k_star_min, np.inf)
        skew_cap[shape] = cap_abs

    # static discounts and the basis factor over the window
    sd_long_max = np.full_like(t0, mp.long_static_discount)
    sd_short_max = cols.sd_short  # increasing in T: largest now
    sd_max = np.maximum(np.maximum(sd_long_max, sd_short_max), cols.sd_long)
    k_long = r * mp.long_rate_mult + mp.long_rate_add
    k_short = r * mp.short_rate_mult + mp.short_rate_add
    d_sd = np.maximum(
        k_long * mp.long_static_discount,
        np.maximum(r * np.exp(r * t0), k_short * mp.short_static_discount * np.exp(k_short * t0)),
    )
    basis_max = params.basis.add_factor + params.basis.mult_factor * t0

    # per (series, column): kappa >= sup |dP/dT| and P_max >= sup |P|
    moving = (market.forward - market.fixed)[e][:, None]
    f_hi = market.fixed[e][:, None] + moving * cols.shocks[None, :] * (1.0 + b)
    p_max = np.where(s.is_call[:, None], f_hi, s.strike[:, None])
    vol0 = market.vol[:, None]
    sig_max = np.repeat(vol0, n_cols, axis=1)
    dsig = np.zeros((s.n_series, n_cols))
    for c, sc in enumerate(params.scenarios):
        cc = c + _COLS_FIXED
        if sc.vol_shock is VolShock.UP:
            sig_max[:, cc] = np.maximum(vs.min_vol_up, vol0[:, 0] * (1.0 + vs.range_up * m_max[e]))
            dsig[:, cc] = vol0[:, 0] * vs.range_up * dm[e]
        elif sc.vol_shock is VolShock.DOWN:
            dsig[:, cc] = vol0[:, 0] * vs.range_down * dm[e]
        elif sc.vol_shock.is_skew:
            sig_max[:, cc] = vol0[:, 0] * (1.0 + skew_cap[sc.vol_shock][e])
            dsig[:, cc] = _mul(vol0[:, 0], skew_dmult[sc.vol_shock][e])
    tm = t_min_safe[e][:, None]
    vega_max = f_hi * _N0 * np.sqrt(t0[e][:, None])
    kappa = f_hi * _N0 * sig_max / (2.0 * np.sqrt(tm)) + r[e][:, None] * p_max + _mul(vega_max, dsig)
    kappa = np.where(expired[e][:, None], 0.0, np.where(lapses[e][:, None], np.inf, kappa))
    p_max = np.where(expired[e][:, None], 0.0, p_max)  # an expired series never moves in time

    tb = np.zeros((s.n_series, n_cols))
    tb[:, 0] = kappa[:, 0]
    basis_kappa = np.maximum(kappa[:, 1], kappa[:, 2]) + kappa[:, 0]
    tb[:, 1] = _mul(basis_max[e], basis_kappa) + _mul(
        params.basis.mult_factor, np.maximum(p_max[:, 1], p_max[:, 2]) + p_max[:, 0]
    )
    tb[:, _COLS_FIXED:] = _mul(sd_max[e][:, None], kappa[:, _COLS_FIXED:]) + _mul(
        d_sd[e][:, None], p_max[:, _COLS_FIXED:]
    )
    return tb, sd_max


# --- the numba kernel -------------------------------------------------------------------------------------

_OUT_F = 6  # mtm, option mtm, worst pnl, basis, mm requirement, im requirement
_OUT_S = 10  # M(-b), M(0), M(+b), G*(-), G*(+), Theta (per year), delta, gamma, theta (per year), scale


def _charge(confidence: float, notional: float, threshold: float, margin: float) -> float:
    if confidence < threshold:
        return (1.0 - confidence) * margin * notional
    return 0.0


_charge_nb = njit(cache=True, error_model="numpy")(_charge)


def _reval_body(
    rows: Any,
    offsets: Any,
    pos_series: Any,
    pos_amount: Any,
    cash: Any,
    perp_amt: Any,
    pu: Any,
    ser_exp: Any,
    ser_strike: Any,
    ser_volconf: Any,
    ser_scale: Any,
    px: Any,
    exp_sdl: Any,
    exp_sds: Any,
    exp_basis_f: Any,
    exp_conf: Any,
    exp_sdmax: Any,
    damp: Any,
    is_skew: Any,
    shock: Any,
    perp_px: Any,
    spot_px: Any,
    scal: Any,
    screen: Any,
    up: Any,
    dn: Any,
    tb: Any,
    greeks: Any,
    band: Any,
    out_f: Any,
    out_i: Any,
    out_pnl: Any,
    out_scr: Any,
    chunk: Any,
) -> None:
    """Revalue accounts ``rows`` at ``px.shape[0]`` spot points (1, or 3 for the screen: 0, -b, +b).

    Point 0 follows :func:`portfolio_margin` term for term. Points 1 and 2 (screen only) use the skew
    branch fixed at point 0 (the module docstring's M~) and feed the curvature / time bounds.
    """
    n = rows.shape[0]
    n_pt = px.shape[0]
    n_col = px.shape[2]
    n_sc = n_col - 3
    f_mm = scal[0]
    f_im = scal[1]
    perp_mm = scal[2]
    perp_imx = scal[3]
    opt_mm = scal[4]
    opt_imx = scal[5]
    c_thr = scal[6]
    c_margin = scal[7]
    spot_conf = scal[8]
    perp_conf = scal[9]
    shock_max = scal[10]
    keep_pnl = out_pnl.shape[0] > 0
    n_chunks = (n + chunk - 1) // chunk
    for ch in prange(n_chunks):
        val = np.empty((n_pt, n_col))
        pnl = np.empty((n_pt, n_sc))
        basis = np.empty(n_pt)
        omtm = np.empty(n_pt)
        uv = np.empty(n_col)
        un = np.empty(n_col)
        kc = np.empty(n_col)
        curv = np.empty(n_sc + 1)
        thw = np.empty(n_sc + 1)
        mt = np.empty(n_pt)
        wmin = np.empty(n_pt)
        lo = ch * chunk
        hi = min(n, lo + chunk)
        for t in range(lo, hi):
            r = rows[t]
            pa = perp_amt[r]
            for p in range(n_pt):
                basis[p] = 0.0
                omtm[p] = 0.0
                for s in range(n_sc):
                    pnl[p, s] = pa * (shock[s] - 1.0) * perp_px[p] * damp[s]
            for i in range(n_sc + 1):
                curv[i] = 0.0
                thw[i] = 0.0
            g_a = 0.0
            th_a = 0.0
            dl = pa * perp_px[0] / spot_px[0]
            gm = 0.0
            th = 0.0
            naked = 0.0
            min_conf = spot_conf
            if pa != 0.0:
                min_conf = min(min_conf, perp_conf)
            perp_notional = abs(pa) * spot_px[0]
            conf_im = _charge_nb(min_conf, perp_notional, c_thr, c_margin)
            scale = abs(cash[r]) + abs(pu[r]) + abs(pa) * perp_px[0] * shock_max
            j = offsets[r]
            end = offsets[r + 1]
            while j < end:
                e = ser_exp[pos_series[j]]
                for p in range(n_pt):
                    for c in range(n_col):
                        val[p, c] = 0.0
                if screen:
                    for c in range(n_col):
                        uv[c] = 0.0
                        un[c] = 0.0
                        kc[c] = 0.0
                gross = 0.0
                conf_e = exp_conf[e]
                k = j
                while k < end and ser_exp[pos_series[k]] == e:
                    sid = pos_series[k]
                    a = pos_amount[k]
                    for p in range(n_pt):
                        for c in range(n_col):
                            val[p, c] += a * px[p, sid, c]
                    aa = abs(a)
                    gross += aa
                    conf_e = min(conf_e, ser_volconf[sid])
                    scale += aa * ser_scale[sid]
                    if screen and a != 0.0:
                        for c in range(n_col):
                            if a > 0.0:
                                uv[c] += a * up[sid, c]
                                un[c] += a * dn[sid, c]
                            else:
                                uv[c] += aa * dn[sid, c]
                                un[c] += aa * up[sid, c]
                            kc[c] += aa * tb[sid, c]
                        dl += a * greeks[sid, 0]
                        gm += a * greeks[sid, 1]
                        th += a * greeks[sid, 2]
                    k += 1
                # naked shorts: net contracts per strike (the run is sorted by strike), shorts only
                q = j
                while q < k:
                    kk = ser_strike[pos_series[q]]
                    net = 0.0
                    while q < k and ser_strike[pos_series[q]] == kk:
                        net += pos_amount[q]
                        q += 1
                    if net < 0.0:
                        naked -= net
                cf = exp_basis_f[e]
                sdl = exp_sdl[e]
                sds = exp_sds[e]
                for p in range(n_pt):
                    m0 = val[p, 0]
                    omtm[p] += m0
                    basis[p] += min(val[p, 1] - m0, val[p, 2] - m0, 0.0) * cf
                    for s in range(n_sc):
                        v = val[p, 3 + s]
                        if p > 0 and is_skew[s]:
                            sdt = sdl if val[0, 3 + s] >= 0.0 else sds
                            d = min((sdl * v - m0) * damp[s], (sds * v - m0) * damp[s], (m0 - sdt * v) * damp[s])
                        else:
                            d = (v * (sdl if v >= 0.0 else sds) - m0) * damp[s]
                            if is_skew[s]:
                                d = -abs(d)
                        pnl[p, s] += d
                if screen:
                    g_a += uv[0]
                    if sdl > sds:  # v -> v x (long if v >= 0 else short) is then convex at 0: no bound
                        g_a = np.inf
                    th_a += kc[0]
                    sdm = exp_sdmax[e]
                    if cf > 0.0:
                        curv[0] += cf * max(uv[1] + un[0], uv[2] + un[0], 0.0)
                    thw[0] += kc[1]
                    for s in range(n_sc):
                        if damp[s] == 0.0:
                            continue
                        if is_skew[s]:
                            cs = max(sdm * uv[3 + s] + un[0], uv[0] + sdm * un[3 + s])
                        else:
                            cs = sdm * uv[3 + s] + un[0]
                        curv[1 + s] += damp[s] * cs
                        thw[1 + s] += damp[s] * (kc[3 + s] + kc[0])
                conf_im += _charge_nb(min(conf_e, min_conf), gross * spot_px[0], c_thr, c_margin)
                j = k
            worst = basis[0]
            widx = -1
            for s in range(n_sc):
                if pnl[0, s] < worst:  # strict: the basis contingency, then the earliest, wins a tie
                    worst = pnl[0, s]
                    widx = s
            naked_notional = naked * spot_px[0]
            cont_mm = perp_notional * perp_mm + naked_notional * opt_mm
            cont_im = cont_mm + perp_notional * perp_imx + naked_notional * opt_imx + conf_im
            out_f[t, 0] = cash[r] + pu[r] + omtm[0]
            out_f[t, 1] = omtm[0]
            out_f[t, 2] = worst
            out_f[t, 3] = basis[0]
            out_f[t, 4] = -worst * f_mm + cont_mm
            out_f[t, 5] = -worst * f_im + cont_im
            out_i[t] = widx
            if keep_pnl:
                for s in range(n_sc):
                    out_pnl[t, s] = pnl[0, s]
            if not screen:
                continue
            # M~ at each point as A + f min(W); the pieces' gaps and curvatures give G* per side
            for p in range(n_pt):
                w = basis[p]
                for s in range(n_sc):
                    w = min(w, pnl[p, s])
                wmin[p] = w
                a_p = cash[r] + pu[r] + pa * (perp_px[p] - perp_px[0]) + omtm[p]
                a_p -= (abs(pa) * perp_mm + naked * opt_mm) * spot_px[p]
                mt[p] = a_p + f_mm * w
            theta_b = 0.0
            for i in range(n_sc + 1):
                theta_b = max(theta_b, th_a + f_mm * thw[i])
            out_scr[t, 0] = mt[1]
            out_scr[t, 1] = mt[0]
            out_scr[t, 2] = mt[2]
            for side in range(1, 3):
                gstar = -np.inf
                for i in range(n_sc + 1):
                    w0 = basis[0] if i == 0 else pnl[0, i - 1]
                    wq = basis[side] if i == 0 else pnl[side, i - 1]
                    g0 = max(f_mm * (w0 - wmin[0]), 0.0)
                    gq = max(f_mm * (wq - wmin[side]), 0.0)
                    gi = g_a + f_mm * curv[i]
                    root = math.sqrt(g0) + math.sqrt(gq)
                    gstar = max(gstar, gi - 2.0 * root * root / (band * band))
                out_scr[t, 2 + side] = gstar
            out_scr[t, 5] = theta_b
            out_scr[t, 6] = dl
            out_scr[t, 7] = gm
            out_scr[t, 8] = th
            out_scr[t, 9] = scale


_reval_serial = njit(cache=True, error_model="numpy")(_reval_body)
_reval_parallel = njit(cache=True, parallel=True, error_model="numpy")(_reval_body)


def _run_reval(
    market: PmMarket,
    book: PmBook,
    params: PortfolioMarginParams,
    rows: IntArray,
    points: list[PmMarket],
    cols: list[_Columns],
    screen: tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, float] | None,
    with_scenarios: bool,
    parallel: bool,
) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
    s = market.series
    n_sc = len(params.scenarios)
    c = params.contingency
    im_factor = params.margin.im_loss_factor
    if market.stable_price < c.peg_loss_threshold:
        im_factor += (c.peg_loss_threshold - market.stable_price) * c.peg_loss_factor
    shocks = np.array([sc.spot_shock for sc in params.scenarios], dtype=np.float64)
    scal = np.array(
        [
            params.margin.mm_loss_factor, im_factor, c.perp_mm, c.perp_im_extra, c.option_mm, c.option_im_extra,
            c.confidence_threshold, c.confidence_margin, market.spot_confidence, market.perp_confidence,
            max(1.0, float(shocks.max())),
        ],
        dtype=np.float64,
    )  # fmt: skip
    px = np.ascontiguousarray(np.stack([cl.prices for cl in cols]))
    c0 = cols[0]
    n = rows.shape[0]
    out_f = np.empty((n, _OUT_F))
    out_i = np.empty(n, dtype=np.int64)
    out_pnl = np.empty((n, n_sc) if with_scenarios else (0, n_sc))
    if screen is None:
        up = dn = tb = greeks = np.zeros((0, 0))
        sd_max = c0.sd_long
        band = 1.0
        out_s = np.empty((0, _OUT_S))
    else:
        up, dn, tb, greeks, sd_max, band = screen
        out_s = np.empty((n, _OUT_S))
    ser_scale = np.ascontiguousarray(np.abs(px).max(axis=(0, 2)) + s.strike)
    assert market.vol_confidence is not None
    kernel = _reval_parallel if parallel else _reval_serial
    kernel(
        rows, book.pos_offsets, book.pos_series, book.pos_amount, book.cash_quote, book.perp_amount,
        book.perp_unrealised_quote, s.expiry_index, s.strike, market.vol_confidence, ser_scale, px,
        c0.sd_long, c0.sd_short, c0.basis_factor, c0.confidence, sd_max,
        np.array([sc.dampening for sc in params.scenarios], dtype=np.float64),
        np.array([sc.vol_shock.is_skew for sc in params.scenarios], dtype=np.bool_), shocks,
        np.array([pt.perp_price for pt in points], dtype=np.float64),
        np.array([pt.spot_price for pt in points], dtype=np.float64), scal,
        screen is not None, up, dn, tb, greeks, band, out_f, out_i, out_pnl, out_s, 256,
    )  # fmt: skip
    return out_f, out_i, out_pnl, out_s


def _check(market: PmMarket, book: PmBook, accounts: Any) -> IntArray:
    if book.series is not market.series:
        raise ValidationError("the book and the market must share one SeriesTable")
    rows = np.arange(book.n_accounts, dtype=np.int64) if accounts is None else _i64("accounts", accounts)
    if rows.size and (rows.min() < 0 or rows.max() >= book.n_accounts):
        raise ValidationError("accounts out of range")
    if market.perp_price <= 0 and np.any(book.perp_amount[rows] != 0):
        raise ValidationError("a perp position needs a perp price > 0")
    return rows


def _result(rows: IntArray, out_f: FloatArray, out_i: IntArray, pnl: FloatArray, keep: bool) -> PmBatchResult:
    mtm = out_f[:, 0].copy()
    mm_req = out_f[:, 4].copy()
    im_req = out_f[:, 5].copy()
    return PmBatchResult(
        rows=rows,
        initial_margin_quote=mtm - im_req,
        maintenance_margin_quote=mtm - mm_req,
        initial_requirement_quote=im_req,
        maintenance_requirement_quote=mm_req,
        mark_to_market_quote=mtm,
        option_mtm_quote=out_f[:, 1].copy(),
        worst_pnl_quote=out_f[:, 2].copy(),
        worst_index=out_i,
        basis_contingency_quote=out_f[:, 3].copy(),
        scenario_pnls_quote=pnl if keep else None,
    )


def pm_full_reval(
    market: PmMarket,
    book: PmBook,
    params: PortfolioMarginParams,
    *,
    accounts: Any = None,
    with_scenarios: bool = False,
    parallel: bool = False,
) -> PmBatchResult:
    """Initial and maintenance margin of every account (or of ``accounts``), by full scenario revaluation.

    The same model as :func:`~fluidmargin.risk.options.portfolio.portfolio_margin`, account by account.
    ``parallel`` runs numba's thread pool (same results to the bit; one thread does 100k accounts in
    ~30 ms, and on a busy machine a spinning pool can be slower).
    """
    rows = _check(market, book, accounts)
    cols = _columns(market, params)
    out_f, out_i, pnl, _ = _run_reval(market, book, params, rows, [market], [cols], None, with_scenarios, parallel)
    return _result(rows, out_f, out_i, pnl, with_scenarios)


def pm_screen_reval(
    market: PmMarket,
    book: PmBook,
    params: PortfolioMarginParams,
    screen: ScreenParams,
    now_ns: int,
    *,
    accounts: Any = None,
    parallel: bool = False,
) -> tuple[PmBatchResult, PmScreenState]:
    """:func:`pm_full_reval` plus the screen's state for the same accounts (rows aligned with ``accounts``).

    Also revalues at spot x (1 +- b) and bounds curvature and time decay (the module docstring); about
    three times the work of a plain revaluation.
    """
    rows = _check(market, book, accounts)
    if isinstance(now_ns, bool) or not isinstance(now_ns, int | np.integer):
        raise ValidationError(f"now_ns must be an integer, got {now_ns!r}")
    b = float(screen.move_bound)
    s0 = market.spot_price
    points = [market] + [_moved_market(market, s0 * (1.0 + x), 0) for x in (-b, b)]
    cols = [_columns(pt, params) for pt in points]
    up, dn = _curvature_tables(market, params, cols[0], b)
    tb, sd_max = _time_tables(market, params, cols[0], b, screen.time_bound_s)
    s = market.series
    e = s.expiry_index
    g = black76_greeks(market.forward[e], s.strike, cols[0].t_years[e], market.vol, cols[0].discount[e], s.is_call)
    dfds = (market.forward - market.fixed)[e] / s0  # dF/dS: the moving part of the forward follows spot
    greeks = np.ascontiguousarray(np.stack([g.delta * dfds, g.gamma * dfds * dfds, g.theta], axis=1))
    out_f, out_i, pnl, out_s = _run_reval(
        market, book, params, rows, points, cols, (up, dn, tb, greeks, sd_max, b), False, parallel
    )
    res = _result(rows, out_f, out_i, pnl, False)
    m_lo, m0, m_hi = out_s[:, 0], out_s[:, 1], out_s[:, 2]
    n = rows.shape[0]
    state = PmScreenState(
        spot_ref=np.full(n, s0),
        ts_ref_ns=np.full(n, int(now_ns), dtype=np.int64),
        mm_quote=m0.copy(),
        im_quote=res.initial_margin_quote.copy(),
        margin_delta=(m_hi - m_lo) / (2.0 * b * s0),
        margin_gamma=(m_hi - 2.0 * m0 + m_lo) / (b * b * s0 * s0),
        curv_down=out_s[:, 3] / (s0 * s0),
        curv_up=out_s[:, 4] / (s0 * s0),
        theta_bound_per_s=out_s[:, 5] / SECONDS_PER_YEAR,
        theta_est_per_s=out_s[:, 8] / SECONDS_PER_YEAR,
        slack_quote=_SLACK_REL * out_s[:, 9],
        delta=out_s[:, 6].copy(),
        gamma=out_s[:, 7].copy(),
        theta_per_s=out_s[:, 8] / SECONDS_PER_YEAR,
        move_bound=b,
        time_bound_s=screen.time_bound_s,
        threshold_quote=float(screen.threshold_quote),
    )
    return res, state


# --- the tick -----------------------------------------------------------------------------------------------


def _tick_body(
    spot: Any,
    now_ns: Any,
    spot_ref: Any,
    ts_ref: Any,
    mm: Any,
    delta: Any,
    gamma: Any,
    curv_dn: Any,
    curv_up: Any,
    theta_b: Any,
    theta_e: Any,
    slack: Any,
    move_bound: Any,
    time_bound_ns: Any,
    threshold: Any,
    out_est: Any,
    out_low: Any,
    out_reason: Any,
) -> None:
    """Screen one tick for every account: estimate, certified lower bound, reason code."""
    for i in prange(spot_ref.shape[0]):
        ds = spot - spot_ref[i]
        elapsed = now_ns - ts_ref[i]
        dt = elapsed * 1e-9
        est = mm[i] + delta[i] * ds + 0.5 * gamma[i] * ds * ds
        out_est[i] = est + theta_e[i] * dt
        reach = move_bound * spot_ref[i] * (1.0 - 1e-12)
        a = abs(ds)
        if a > reach:
            out_low[i] = -np.inf
            out_reason[i] = 2
            continue
        if elapsed < 0 or elapsed > time_bound_ns:
            out_low[i] = -np.inf
            out_reason[i] = 3
            continue
        g = curv_up[i] if ds >= 0.0 else curv_dn[i]
        low = est - slack[i]
        if a > 0.0:
            low = low - 0.5 * (g - gamma[i]) * a * (move_bound * spot_ref[i] - a) if math.isfinite(g) else -np.inf
        if elapsed > 0:
            low = low - theta_b[i] * dt if math.isfinite(theta_b[i]) else -np.inf
        out_low[i] = low
        out_reason[i] = 1 if low < threshold else 0


_tick_serial = njit(cache=True, error_model="numpy")(_tick_body)
_tick_parallel = njit(cache=True, parallel=True, error_model="numpy")(_tick_body)


def pm_delta_gamma_tick(
    state: PmScreenState,
    spot_price: float,
    now_ns: int,
    *,
    threshold_quote: float | None = None,
    out: PmTickResult | None = None,
    parallel: bool = False,
) -> PmTickResult:
    """Screen every account of ``state`` at a new spot and event time (no revaluation).

    An account needs a full revaluation when ``reason != REASON_OK``; one that is not flagged has a
    maintenance margin >= the threshold (the state's, unless ``threshold_quote`` is given), under
    :func:`move_market`'s move: the module docstring's guarantee. ``out`` reuses arrays between ticks.
    """
    if not math.isfinite(spot_price) or spot_price <= 0:
        raise ValidationError(f"spot_price must be > 0, got {spot_price!r}")
    n = state.n_accounts
    if out is None:
        out = PmTickResult(np.empty(n), np.empty(n), np.empty(n, dtype=np.uint8))
    kernel = _tick_parallel if parallel else _tick_serial
    kernel(
        float(spot_price), int(now_ns), state.spot_ref, state.ts_ref_ns, state.mm_quote, state.margin_delta,
        state.margin_gamma, state.curv_down, state.curv_up, state.theta_bound_per_s, state.theta_est_per_s,
        state.slack_quote, state.move_bound, state.time_bound_s * NS_PER_S,
        state.threshold_quote if threshold_quote is None else float(threshold_quote),
        out.screened_mm_quote, out.mm_lower_quote, out.reason,
    )  # fmt: skip
    return out
