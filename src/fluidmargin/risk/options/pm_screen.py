"""The delta-gamma screen of batch portfolio margin: its bounds (:class:`ScreenParams`), what it keeps per
account from the last full revaluation (:class:`PmScreenState`, built by
:func:`~fluidmargin.risk.options.pm_batch.pm_screen_reval`), and the tick (:func:`pm_delta_gamma_tick`, numba)
that screens every account at a new spot and time without revaluing.

Screening. A full revaluation at spot S0 (:func:`~fluidmargin.risk.options.pm_batch.pm_screen_reval`) also
values the maintenance margin M at S0 (1 - b) and S0 (1 + b) (``b`` = ``ScreenParams.move_bound``) with
every other input moved as :func:`~fluidmargin.risk.options.pm_book.move_market` does (forwards and the perp
with spot, vols per series unchanged). The quadratic through the three values gives the margin's delta and
gamma; between full revaluations the screened margin is ``M0 + delta dS + gamma dS^2 / 2 + theta dt``
(theta: the options' value theta, an estimate of the margin's drift). It flags an account for a full
revaluation when a *certified lower bound* of M is below the threshold, when |dS| > b S0, or when more than
``time_bound_s`` passed -- and the engine revalues before any liquidation decision.

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
from fluidmargin.risk.options.pm_book import BoolArray, FloatArray, IntArray

REASON_OK = 0  # screened: no full revaluation needed
REASON_NEAR = 1  # the certified lower bound of the maintenance margin is below the threshold
REASON_MOVE = 2  # spot moved beyond the bound since the last full revaluation
REASON_TIME = 3  # the time bound passed (or the clock went backwards)


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
