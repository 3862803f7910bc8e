"""Exact integer arithmetic for numba kernels: 64 x 64 -> 128-bit products divided back to 64 bits.

Python ints are exact but cost a microsecond an operation; the mass-liquidation path needs the same
exact figures for ten thousand accounts in a few milliseconds. ``muldiv(a, b, d, ceil)`` is
``a * b / d`` rounded down (``ceil=False``) or up, for signed int64 ``a``, ``b`` and positive ``d``,
exactly as :func:`fluidmargin.core.units.div_round` would round it. ``ok`` is False when the
quotient does not fit in 62 bits (the caller then falls back to the Python path).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

M32 = np.uint64(0xFFFFFFFF)
M16 = np.uint64(0xFFFF)
LIMIT = np.uint64(1) << np.uint64(62)
SMALL_DIVISOR = np.uint64(1) << np.uint64(47)


@njit(cache=True, inline="always")
def mul128(a: Any, b: Any) -> Any:
    """(hi, lo) of the full 128-bit product of two uint64."""
    a_lo, a_hi = a & M32, a >> np.uint64(32)
    b_lo, b_hi = b & M32, b >> np.uint64(32)
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    mid = (p0 >> np.uint64(32)) + (p1 & M32) + (p2 & M32)
    lo = (p0 & M32) | ((mid & M32) << np.uint64(32))
    hi = p3 + (p1 >> np.uint64(32)) + (p2 >> np.uint64(32)) + (mid >> np.uint64(32))
    return hi, lo


@njit(cache=True)
def divmod128(hi: Any, lo: Any, d: Any) -> Any:
    """(quotient, remainder, ok) of the 128-bit (hi, lo) by d > 0; ok is False if the quotient >= 2**64."""
    q = np.uint64(0)
    rem = np.uint64(0)
    if d < SMALL_DIVISOR:
        # 16-bit digits: rem < d < 2**47, so rem * 2**16 + digit < 2**63
        for i in range(7, -1, -1):
            word = hi if i >= 4 else lo
            digit = (word >> np.uint64(16 * (i % 4))) & M16
            cur = (rem << np.uint64(16)) | digit
            if q >> np.uint64(48):
                return q, rem, False
            q = (q << np.uint64(16)) | (cur // d)
            rem = cur % d
        return q, rem, True
    # any divisor below 2**63: one bit at a time (rem < d < 2**63, so rem * 2 + 1 < 2**64)
    for i in range(127, -1, -1):
        bit = (hi >> np.uint64(i - 64)) & np.uint64(1) if i >= 64 else (lo >> np.uint64(i)) & np.uint64(1)
        rem = (rem << np.uint64(1)) | bit
        if q >> np.uint64(63):
            return q, rem, False
        q = q << np.uint64(1)
        if rem >= d:
            rem -= d
            q |= np.uint64(1)
    return q, rem, True


@njit(cache=True)
def muldiv(a: Any, b: Any, d: Any, ceil: bool) -> Any:
    """``a * b / d`` rounded down (or up when ``ceil``), exact; d > 0. Returns (value, ok)."""
    neg = (a < 0) != (b < 0)
    ua = np.uint64(-a) if a < 0 else np.uint64(a)
    ub = np.uint64(-b) if b < 0 else np.uint64(b)
    hi, lo = mul128(ua, ub)
    q, rem, ok = divmod128(hi, lo, np.uint64(d))
    if not ok or q >= LIMIT:
        return np.int64(0), False
    v = np.int64(q)
    if rem != np.uint64(0) and neg != ceil:  # away from zero: a negative floor, a positive ceiling
        v += 1
    return (-v if neg else v), True


@njit(cache=True)
def ge_products(a: Any, b: Any, c: Any, d: Any) -> Any:
    """``a * b >= c * d`` exactly, for non-negative int64 operands."""
    h1, l1 = mul128(np.uint64(a), np.uint64(b))
    h2, l2 = mul128(np.uint64(c), np.uint64(d))
    return h1 > h2 or (h1 == h2 and l1 >= l2)
