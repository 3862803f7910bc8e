"""Vectorised health screening (numba) with a proven error bound, and its plain-Python twin.

The screen is float64; it never changes state. It only decides which buckets the engine must
re-check in exact integer arithmetic. It is *conservative*: a bucket whose exact health is below
the flag threshold is always flagged.

Error bound (per position contribution c = value - cost - funding - mm, quote quantums):
inputs are int64 read exactly or with relative error u = 2**-53 (above 2**53); each product and
sum adds a relative error <= u; about 12 operations bound the float error by 12u * M where M is
the sum of the magnitudes of the terms (value, cost, funding, mm). The exact value rounds each of
value (floor), funding (ceil), notional (ceil) and mm (ceil) once: at most 4 quanta, plus the
bracket rate rounding. We use 64u * M + 8 quanta, plus ``disc_q`` (the largest jump of the tier
table at a bracket floor, 0 for continuous tables, covering a float picking the neighbour
bracket) and, for the sqrt (Drift) term, 2 ppm of notional for the integer square root and floors.
Adding contributions to an account's health adds u * |health| per addition; those bounds
accumulate in ``acct_err`` until the account is re-synchronised from its exact state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

U = 2.0**-53
REL = 64.0 * U
SLACK_Q = 8.0

# columns of the per-account float shadow ``acct_f`` (one cache line per account; the last two spare):
# health, maintenance, error bound, status mirror, budgets its positions hold, cross positions
ACCT_HEALTH, ACCT_MM, ACCT_ERR, ACCT_STATUS, ACCT_BUDGET_OTHERS, ACCT_NPOS = range(6)
ACCT_WIDTH = 8
# columns of ``pos_band``: the mark and funding-index band inside which a position's move is within budget
BAND_MARK_LO, BAND_MARK_HI, BAND_FIDX_LO, BAND_FIDX_HI = range(4)
BAND_WIDTH = 4
EMPTY_BAND = (1.0, 0.0, 0.0, 0.0)  # lo > hi: no mark is inside, so the kernel applies the position next time


def contribution_py(
    size: int,
    cost: int,
    fidx_now: int,
    fidx_last: int,
    mark_f: float,
    kv: float,
    kf: float,
    floors: np.ndarray,
    rates: np.ndarray,
    cums: np.ndarray,
    disc_q: float,
    drift_imf: float,
    drift_k: float,
) -> tuple[float, float, float]:
    """Float contribution of one position (value - cost - funding - mm), its error bound, and mm.

    Plain Python: the kernel below inlines the same formula (tests assert they agree).
    """
    s = float(size)
    value = s * mark_f * kv
    fund = s * float(fidx_now - fidx_last) * kf
    notional = abs(value)
    b = 0
    for j in range(1, len(floors)):
        if floors[j] <= notional:
            b = j
        else:
            break
    mm = notional * float(rates[b]) - float(cums[b])
    slack = SLACK_Q + disc_q
    if drift_imf > 0.0:
        r = float(rates[b]) * 1e6
        prem = (r - math.floor(r * 0.2) + math.sqrt(abs(s) * drift_k * 10.0 + 1.0) * drift_imf * 1e-5) * 1e-6
        if prem * notional > mm:
            mm = prem * notional
        slack += notional * 2e-6
    mm = max(mm, 0.0)
    cost_f = float(cost)
    c = value - cost_f - fund - mm
    err = REL * (notional + abs(cost_f) + abs(fund) + mm) + slack
    return c, err, mm


def may_change_py(h: float, eb: float, mm: float, b_in: float, b_out: float, status: int) -> bool:
    """Whether a bucket with float health ``h`` (error <= ``eb``) may need a status change.

    Statuses (engine.state): 0 healthy, 1 at risk. A healthy bucket becomes at risk when its exact
    health H < b_in * MM; an at-risk one is healthy again when H >= b_out * MM (b_out >= b_in: a band
    against flapping). Flag when a breach is possible (h - eb < 0) or the status could change.
    """
    if h - eb < 0.0:
        return True
    if status == 0:
        return h - eb < b_in * (mm + eb)
    if status == 1:
        return h + eb >= b_out * max(mm - eb, 0.0)
    return True


def _remargin_body(
    idx,
    pos_acct,
    pos_size,
    pos_cost,
    pos_fidx,
    pos_iso,
    pos_iso_margin,
    pos_c,
    pos_e,
    pos_mm,
    pos_budget,
    pos_band,
    fidx_now,
    mark_f,
    kv,
    kf,
    floors,
    rates,
    cums,
    disc_q,
    drift_imf,
    drift_k,
    acct_f,
    b_in,
    b_out,
    pos_status,
    flag,
):
    """Update every position of one market (``idx``) at a new mark / funding index, in parallel.

    ``acct_f[a]``: the ``ACCT_*`` columns (one cache line). A cross position
    moves its account's float health by (new - applied) contribution; an isolated one is its own
    bucket. Positions of one market belong to distinct accounts, so iterations never write the same
    row. ``flag[t] = 1`` where the bucket's status may change (see :func:`may_change_py`).

    Budgets: a position whose contribution, maintenance and error bound together moved by no more
    than ``pos_budget`` since they were last applied leaves its account untouched. When a position
    is applied it gets a new budget, a share of the account's distance to its nearest status
    boundary net of the budgets its other positions still hold (``outstanding``), so the
    unapplied moves of all positions can never carry the account across a boundary unseen.
    """
    nb = floors.shape[0]
    fidx_f = float(fidx_now)
    r_max = 0.0
    for j in range(nb):
        r_max = max(r_max, rates[j])
    for t in prange(idx.shape[0]):
        p = idx[t]
        flag[t] = 0
        # inside its band (mark and funding index) the position's move is within its budget
        in_mark = pos_band[p, BAND_MARK_LO] <= mark_f <= pos_band[p, BAND_MARK_HI]
        if in_mark and pos_band[p, BAND_FIDX_LO] <= fidx_f <= pos_band[p, BAND_FIDX_HI]:
            continue
        size = pos_size[p]
        if size == 0:
            continue
        s = float(size)
        value = s * mark_f * kv
        fund = s * float(fidx_now - pos_fidx[p]) * kf
        notional = abs(value)
        b = 0
        for j in range(1, nb):
            if floors[j] <= notional:
                b = j
            else:
                break
        mm = notional * rates[b] - cums[b]
        slack = SLACK_Q + disc_q
        if drift_imf > 0.0:
            r = rates[b] * 1e6
            prem = (r - math.floor(r * 0.2) + math.sqrt(abs(s) * drift_k * 10.0 + 1.0) * drift_imf * 1e-5) * 1e-6
            if prem * notional > mm:
                mm = prem * notional
            slack += notional * 2e-6
        if mm < 0.0:
            mm = 0.0
        cost = float(pos_cost[p])
        c = value - cost - fund - mm
        e = REL * (notional + abs(cost) + abs(fund) + mm) + slack
        if abs(c - pos_c[p]) + abs(mm - pos_mm[p]) + abs(e - pos_e[p]) <= pos_budget[p]:
            continue  # outside the (linearised) band, but the actual move is still within budget
        if pos_iso[p]:
            pos_c[p] = c
            pos_e[p] = e
            pos_mm[p] = mm
            im = float(pos_iso_margin[p])
            h = im + c
            eb = e + U * (abs(h) + abs(im))
            st = pos_status[p]
            others = 0.0
            npos = 1.0
        else:
            a = pos_acct[p]
            h = acct_f[a, ACCT_HEALTH] + (c - pos_c[p])
            m = acct_f[a, ACCT_MM] + (mm - pos_mm[p])
            eb = acct_f[a, ACCT_ERR] + (e - pos_e[p]) + 2.0 * U * (abs(h) + abs(m)) + REL * (abs(c) + abs(pos_c[p]))
            acct_f[a, ACCT_HEALTH] = h
            acct_f[a, ACCT_MM] = m
            acct_f[a, ACCT_ERR] = eb
            pos_c[p] = c
            pos_e[p] = e
            pos_mm[p] = mm
            mm = m
            st = acct_f[a, ACCT_STATUS]
            others = acct_f[a, ACCT_BUDGET_OTHERS] - pos_budget[p]
            if others < 0.0:
                others = 0.0
            npos = max(acct_f[a, ACCT_NPOS], 1.0)
        # the other positions' unapplied moves shift health, maintenance and the bound by (1 + b_out) x theirs
        ebo = eb + (1.0 + b_out) * others
        budget = 0.0
        if h - ebo < 0.0:
            flag[t] = 1
        elif st == 0:
            room = (h - ebo) - b_in * (mm + ebo)
            if room < 0.0:
                flag[t] = 1
            else:
                budget = room / ((1.0 + b_out) * 2.0 * npos)
        elif st == 1:
            room = min(h - ebo, b_out * (mm - ebo) - (h + ebo))
            if room <= 0.0:
                flag[t] = 1
            else:
                budget = room / ((1.0 + b_out) * 2.0 * npos)
        else:
            flag[t] = 1
        pos_budget[p] = budget
        if not pos_iso[p]:
            acct_f[pos_acct[p], ACCT_BUDGET_OTHERS] = others + budget
        # the band where |d contribution| + |d mm| + |d error bound| <= budget: 90 % for the mark, 10 %
        # for the funding index (the mm slope is at most the largest rate, or the sqrt premium)
        ratio = r_max
        if notional > 0.0 and mm / notional > ratio:
            ratio = mm / notional
        sens_p = abs(s) * kv * (1.0 + 2.0 * ratio) * (1.0 + 1e-5) + (2e-6 * abs(s) * kv if drift_imf > 0.0 else 0.0)
        sens_f = abs(s) * kf * (1.0 + 1e-5)
        part = budget - 4.0 * disc_q
        if part > 0.0 and sens_p > 0.0 and sens_f > 0.0:
            dp = 0.9 * part / sens_p * (1.0 - 1e-9)  # most of it for the mark: funding moves slowly
            df = 0.1 * part / sens_f * (1.0 - 1e-9)
            pos_band[p, BAND_MARK_LO] = mark_f - dp
            pos_band[p, BAND_MARK_HI] = mark_f + dp
            # shrunk by the rounding of the index to float (the kernel's own funding term is exact)
            pos_band[p, BAND_FIDX_LO] = fidx_f - df + abs(fidx_f) * 4.0 * U
            pos_band[p, BAND_FIDX_HI] = fidx_f + df - abs(fidx_f) * 4.0 * U
        else:
            pos_band[p, BAND_MARK_LO] = 1.0
            pos_band[p, BAND_MARK_HI] = 0.0


_serial = njit(cache=True, error_model="numpy")(_remargin_body)
_parallel = njit(cache=True, parallel=True, error_model="numpy")(_remargin_body)
# Below this many positions one thread wins: waking a second one costs more than it saves, and on a
# loaded machine a spinning pool is far slower (seen: 35x on a busy 2-core box).
PARALLEL_MIN_POSITIONS = 100_000


def remargin_market(idx: np.ndarray, *args: Any) -> None:
    """Screen one market's positions (see :func:`_remargin_body`), in parallel for large markets.

    The pool size and wait policy are set in ``fluidmargin/__init__`` before numba loads.
    """
    if len(idx) >= PARALLEL_MIN_POSITIONS and available_cores() > 1:
        _parallel(idx, *args)
    else:
        _serial(idx, *args)


def available_cores() -> int:
    """Cores this process may run on (numba's default counts the host's and oversubscribes)."""
    import os

    return max(1, len(os.sched_getaffinity(0)))
