"""Exact liquidation closes for many single-position cross accounts at once (numba).

The engine's Python path sizes and closes one breached bucket at a time. When a tick breaches
thousands of accounts of one market that each hold a single cross position in the quote asset,
this kernel does the same exact arithmetic for all of them: funding owed (rounded up), the close at
the mark (a seller gets the floor, a buyer pays the ceiling, cost released rounded up), the penalty
(rounded up, capped at the equity left), and maintenance of what remains (bracket rate rounded up,
less its cum). Sizing is the smallest close that reaches the target health, found from a float
estimate and confirmed exactly at ``q`` and ``q - 1``; anything the kernel cannot settle with
certainty (no exact boundary within a few quanta, an overflow, a bucket left below maintenance) is
returned for the Python path. A fully closed bucket may end with negative equity: the caller covers
that shortfall from the insurance fund (or hands the bucket to the Python path, for ADL).
``tests/engine/test_mass_close.py`` checks the kernel against that path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from fluidmargin.risk.liquidation.exact128 import ge_products, muldiv

PPM = 1_000_000
ACCEPTED, FALLBACK = 0, 1
# columns of :func:`mass_close`'s result rows
(
    CLOSE_STATUS,
    CLOSE_Q,
    CLOSE_OWED,
    CLOSE_REALIZED,
    CLOSE_COST,
    CLOSE_SIZE,
    CLOSE_FEE,
    CLOSE_EQUITY,
    CLOSE_MM,
    CLOSE_CASH,
    CLOSE_BAL,
) = range(11)
CLOSE_WIDTH = 11
# columns of :func:`exact_risk`'s result rows
RISK_OK, RISK_EQUITY, RISK_MM = range(3)
RISK_WIDTH = 3


@njit(cache=True)
def _mm(n: Any, floors: np.ndarray, rates: np.ndarray, cums: np.ndarray) -> Any:
    """Maintenance of notional ``n``: ceil(n * rate / 1e6) - cum of the last bracket with floor <= n."""
    b = 0
    for j in range(len(floors)):
        if floors[j] <= n:
            b = j
        else:
            break
    v, ok = muldiv(n, rates[b], PPM, True)
    v -= cums[b]
    return (v if v > 0 else np.int64(0)), ok


@njit(cache=True)
def close_eval(
    size: Any,
    cost: Any,
    bal: Any,
    q: Any,
    mark: Any,
    pshift: Any,
    fee_ppm: Any,
    floors: np.ndarray,
    rates: np.ndarray,
    cums: np.ndarray,
) -> Any:
    """Close ``q`` (> 0, <= |size|) at the mark, funding already settled into ``bal``.

    Returns (ok, realized, cost after, size after, fee, equity after, maintenance after, close cash,
    balance after realised PnL and fee).
    """
    z = np.int64(0)
    a = size if size > 0 else -size
    ok = True
    if size > 0:
        cash, o1 = muldiv(q, mark, pshift, False)
    else:
        c, o1 = muldiv(q, mark, pshift, True)
        cash = -c
    released, o2 = muldiv(cost, q, a, True)
    realized = cash - released
    cost2 = cost - released
    size2 = size - q if size > 0 else size + q
    if size2 == 0:
        realized += cost2
        cost2 = z
    bal2 = bal + realized
    value2, o3 = muldiv(size2, mark, pshift, False)
    eq_after = bal2 + value2 - cost2
    notional, o4 = muldiv(q, mark, pshift, True)
    fee_full, o5 = muldiv(notional, fee_ppm, PPM, True)
    fee = fee_full if fee_full < eq_after else (eq_after if eq_after > 0 else z)
    eq = eq_after - fee
    mm = z
    o6 = True
    o7 = True
    if size2 != 0:
        n2, o6 = muldiv(size2 if size2 > 0 else -size2, mark, pshift, True)
        mm, o7 = _mm(n2, floors, rates, cums)
    ok = o1 and o2 and o3 and o4 and o5 and o6 and o7
    return ok, realized, cost2, size2, fee, eq, mm, cash, bal2 - fee


@njit(cache=True)
def _reached(eq: Any, mm: Any, target_ppm: Any) -> Any:
    if eq < 0:
        return False
    return ge_products(eq, np.int64(PPM), np.int64(PPM) + target_ppm, mm)


@njit(cache=True)
def mass_close(
    size: np.ndarray,
    cost: np.ndarray,
    bal: np.ndarray,
    dfidx: np.ndarray,
    mark: Any,
    pshift: Any,
    fdiv: Any,
    fee_ppm: Any,
    floors: np.ndarray,
    rates: np.ndarray,
    cums: np.ndarray,
    partial: bool,
    target_ppm: Any,
    out: np.ndarray,
) -> None:
    """Size and close every bucket; ``out[i]``: the ``CLOSE_*`` columns (status, q, owed, realized, cost2,
    size2, fee, eq, mm, close cash, balance after)."""
    for i in range(len(size)):
        s = size[i]
        a = s if s > 0 else -s
        out[i, CLOSE_STATUS] = FALLBACK
        owed, ok = muldiv(s, dfidx[i], fdiv, True)
        if not ok:
            continue
        b1 = bal[i] - owed
        q = a
        if partial:
            # float estimate: E - f q P = (1 + t) (r (A - q) P - cum), bracket by what remains
            p = mark / pshift
            e0 = b1 + s * p - cost[i]
            t1 = 1.0 + target_ppm / PPM
            f = fee_ppm / PPM
            est = float(a)
            for j in range(len(floors) - 1, -1, -1):
                r = rates[j] / PPM
                den = t1 * r * p - f * p
                if den <= 0.0:
                    continue
                qj = (t1 * (r * a * p - cums[j]) - e0) / den
                if qj < 0.0:
                    qj = 0.0
                if (a - qj) * p >= floors[j] or j == 0:
                    est = qj
                    break
            q = np.int64(min(max(np.ceil(est), 1.0), float(a)))
            good = False
            for _ in range(6):
                r_ok, _r, _c, _s2, _f, eq, mm, _cash, _b = close_eval(
                    s, cost[i], b1, q, mark, pshift, fee_ppm, floors, rates, cums
                )
                if not r_ok:
                    break
                if _reached(eq, mm, target_ppm) or q == a:
                    if q == 1:
                        good = True
                        break
                    p_ok, _r, _c, _s2, _f, eq1, mm1, _cash, _b = close_eval(
                        s, cost[i], b1, q - 1, mark, pshift, fee_ppm, floors, rates, cums
                    )
                    if not p_ok:
                        break
                    if not _reached(eq1, mm1, target_ppm):
                        good = True
                        break
                    q -= 1
                else:
                    q += 1
            if not good:
                continue
        ok, realized, cost2, size2, fee, eq, mm, cash, bal_after = close_eval(
            s, cost[i], b1, q, mark, pshift, fee_ppm, floors, rates, cums
        )
        if not ok or (size2 != 0 and (eq <= 0 or eq < mm)):
            continue  # left below maintenance: the Python path handles it
        out[i, CLOSE_STATUS] = ACCEPTED
        out[i, CLOSE_Q] = q
        out[i, CLOSE_OWED] = owed
        out[i, CLOSE_REALIZED] = realized
        out[i, CLOSE_COST] = cost2
        out[i, CLOSE_SIZE] = size2
        out[i, CLOSE_FEE] = fee
        out[i, CLOSE_EQUITY] = eq
        out[i, CLOSE_MM] = mm
        out[i, CLOSE_CASH] = cash
        out[i, CLOSE_BAL] = bal_after


@njit(cache=True)
def exact_risk(
    size: np.ndarray,
    cost: np.ndarray,
    bal: np.ndarray,
    dfidx: np.ndarray,
    mark: Any,
    pshift: Any,
    fdiv: Any,
    floors: np.ndarray,
    rates: np.ndarray,
    cums: np.ndarray,
    out: np.ndarray,
) -> None:
    """Exact equity and maintenance of single-position cross buckets: ``out[i]`` = (ok, equity, mm).

    Equity = balance + value at the mark (floor) - cost - funding owed (ceiling); maintenance on the
    notional (ceiling) as :func:`fluidmargin.risk.perp.margin.maintenance_quote_q` computes it.
    """
    for i in range(len(size)):
        s = size[i]
        owed, o1 = muldiv(s, dfidx[i], fdiv, True)
        value, o2 = muldiv(s, mark, pshift, False)
        mm = np.int64(0)
        o3 = True
        o4 = True
        if s != 0:
            n, o3 = muldiv(s if s > 0 else -s, mark, pshift, True)
            mm, o4 = _mm(n, floors, rates, cums)
        out[i, RISK_OK] = 1 if (o1 and o2 and o3 and o4) else 0
        out[i, RISK_EQUITY] = bal[i] + value - cost[i] - owed
        out[i, RISK_MM] = mm
