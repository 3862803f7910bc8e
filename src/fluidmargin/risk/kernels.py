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

import numpy as np
from numba import njit

U = 2.0**-53
REL = 64.0 * U
SLACK_Q = 8.0


@njit(cache=True, inline="always")
def _contribution(size, cost, fidx_now, fidx_last, mark_f, kv, kf, floors, rates, cums, disc_q, drift_imf, drift_k):
    """Float contribution of one position, its error bound, and its maintenance margin."""
    s = float(size)
    value = s * mark_f * kv
    fund = s * float(fidx_now - fidx_last) * kf
    notional = abs(value)
    b = 0
    for j in range(floors.shape[0]):
        if floors[j] <= notional:
            b = j
        else:
            break
    mm = notional * rates[b] - cums[b]
    slack = SLACK_Q + disc_q
    if drift_imf > 0.0:
        r = rates[b] * 1e6
        size_1e9 = abs(s) * drift_k
        prem = (r - math.floor(r / 5.0) + math.sqrt(size_1e9 * 10.0 + 1.0) * drift_imf / 1e5) / 1e6
        if prem * notional > mm:
            mm = prem * notional
        slack += notional * 2e-6
    if mm < 0.0:
        mm = 0.0
    c = value - float(cost) - fund - mm
    err = REL * (notional + abs(float(cost)) + abs(fund) + mm) + slack
    return c, err, mm


@njit(cache=True)
def remargin_market(
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
    acct_h,
    acct_mm,
    acct_err,
    buffer_frac,
    flag_acct,
    flag_pos,
):
    """Update every position of one market (``idx``) at a new mark / funding index.

    Cross positions move their account's health by (new - old) contribution; isolated ones are
    their own bucket. Returns the number of flagged accounts and isolated positions written
    into ``flag_acct`` / ``flag_pos``.
    """
    na = 0
    npos = 0
    for t in range(idx.shape[0]):
        p = idx[t]
        size = pos_size[p]
        if size == 0:
            continue
        c, e, mm = _contribution(
            size, pos_cost[p], fidx_now, pos_fidx[p], mark_f, kv, kf, floors, rates, cums, disc_q, drift_imf, drift_k
        )
        if pos_iso[p]:
            pos_c[p] = c
            pos_e[p] = e
            pos_mm[p] = mm
            h = float(pos_iso_margin[p]) + c
            eb = e + U * abs(h) + U * abs(float(pos_iso_margin[p]))
            if h - eb < buffer_frac * (mm + eb):
                flag_pos[npos] = p
                npos += 1
            continue
        a = pos_acct[p]
        h = acct_h[a] + (c - pos_c[p])
        acct_h[a] = h
        m = acct_mm[a] + (mm - pos_mm[p])
        acct_mm[a] = m
        eb = acct_err[a] + (e - pos_e[p]) + 2.0 * U * (abs(h) + abs(m)) + REL * (abs(c) + abs(pos_c[p]))
        acct_err[a] = eb
        pos_c[p] = c
        pos_e[p] = e
        pos_mm[p] = mm
        if h - eb < buffer_frac * (m + eb):
            flag_acct[na] = a
            na += 1
    return na, npos


def contribution_py(size, cost, fidx_now, fidx_last, mark_f, kv, kf, floors, rates, cums, disc_q, drift_imf, drift_k):
    """Plain-Python twin of the kernel's per-position contribution (for the agreement tests)."""
    return _contribution.py_func(
        size, cost, fidx_now, fidx_last, mark_f, kv, kf, np.asarray(floors), np.asarray(rates), np.asarray(cums),
        disc_q, drift_imf, drift_k,
    )
