"""Partial liquidation sizing: how much to close at the mark to bring a bucket back above target.

Bucket model (all quote quantums)::

    equity      = fixed_equity + value(size, mark)        value rounded down, as position_risk
    fixed_equity = collateral - cost - funding owed ± other positions' PnL
    MM          = maintenance(size at mark) + other_mm

Closing ``q`` (same sign as ``size``) at the mark realises that part's PnL, which is already in the
equity at the mark, so the equity changes only by the closing fee
``ceil(ceil(|q| * mark) * fee_ppm / 1e6)`` (the engine's liquidation fee). After the close::

    equity_after = equity - fee(q)
    MM_after     = maintenance(size - q at mark) + other_mm

and the target is met when ``equity_after * 1e6 >= (1e6 + target_ppm) * MM_after`` (exact integers;
``target_ppm > 0`` is the anti-flapping buffer above maintenance). The margin figures come from
:mod:`fluidmargin.risk.perp.margin`; nothing here re-derives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, div_round, pow10
from fluidmargin.model.instruments import BracketModel
from fluidmargin.risk.perp.margin import maintenance_quote_q, value_quote_q

_WALK = 64  # quantums walked one by one from the closed-form candidate before galloping


def _check(mark_q: int, target_ppm: int, fee_ppm: int) -> None:
    if mark_q <= 0:
        raise ValidationError("mark must be positive")
    if target_ppm < 0 or not 0 <= fee_ppm < PPM:
        raise ValidationError("target_ppm must be >= 0 and fee_ppm in [0, 1e6)")


class _Target:
    """The exact target predicate over the closed magnitude ``a`` in ``[0, |size|]``."""

    def __init__(
        self,
        model: BracketModel,
        size_base_q: int,
        size_decimals: int,
        mark_q: int,
        fixed_equity_quote_q: int,
        other_mm_quote_q: int,
        target_ppm: int,
        fee_ppm: int,
    ) -> None:
        _check(mark_q, target_ppm, fee_ppm)
        self.model, self.sd, self.mark, self.fee_ppm = model, size_decimals, mark_q, fee_ppm
        self.n = abs(size_base_q)
        self.equity = fixed_equity_quote_q + value_quote_q(size_base_q, mark_q, size_decimals, Rounding.FLOOR)
        self.other_mm = other_mm_quote_q
        self.k = PPM + target_ppm

    def mm_after(self, a: int) -> int:
        r = self.n - a
        if r == 0:
            return self.other_mm
        notional = value_quote_q(r, self.mark, self.sd, Rounding.CEIL)
        return self.other_mm + maintenance_quote_q(self.model, notional, r, self.sd)

    def fee(self, a: int) -> int:
        notional = value_quote_q(a, self.mark, self.sd, Rounding.CEIL)
        return div_round(notional * self.fee_ppm, PPM, Rounding.CEIL)

    def __call__(self, a: int) -> bool:
        return (self.equity - self.fee(a)) * PPM >= self.k * self.mm_after(a)


def reaches_target(
    model: BracketModel,
    size_base_q: int,
    size_decimals: int,
    mark_q: int,
    fixed_equity_quote_q: int,
    other_mm_quote_q: int,
    target_ppm: int,
    close_base_q: int,
    fee_ppm: int = 0,
) -> bool:
    """Whether closing ``close_base_q`` (same sign as size) at the mark meets the target."""
    if close_base_q * size_base_q < 0 or abs(close_base_q) > abs(size_base_q):
        raise ValidationError("close must have the position's sign and not exceed it")
    t = _Target(model, size_base_q, size_decimals, mark_q, fixed_equity_quote_q, other_mm_quote_q, target_ppm, fee_ppm)
    return t(abs(close_base_q))


def _bisect(ok: _Target, lo: int, hi: int) -> int:
    """Given ``not ok(lo)`` and ``ok(hi)``, the ``a`` in ``(lo, hi]`` with ``ok(a)`` and not ``ok(a-1)``."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _refine(ok: _Target, a: int) -> int:
    """From a candidate, the nearby boundary: ``ok(a)`` and not ``ok(a - 1)``; ``n`` if none above."""
    a = min(max(a, 1), ok.n)
    if ok(a):
        for i in range(ok.n + 1):  # walk, then gallop, down to a failing point (ok(0) is known false)
            lo = max(a - (1 if i < _WALK else 2 ** (i - _WALK)), 0)
            if not ok(lo):
                return _bisect(ok, lo, a)
            a = lo
    for i in range(ok.n + 1):  # walk, then gallop, up to a holding point
        if a >= ok.n:
            break
        hi = min(a + (1 if i < _WALK else 2 ** (i - _WALK)), ok.n)
        if ok(hi):
            return _bisect(ok, a, hi)
        a = hi
    return ok.n


def _closed_form_candidate(ok: _Target) -> int:
    """Smallest closed magnitude meeting the target in continuous terms, bracket by bracket.

    With remaining notional ``x`` (quote quantums) in bracket j, MM = x (mmr_j + close_fee) - cum_j,
    the fee is f (S - x) and the target reads ``x (f - k m_j) >= k (other_mm - cum_j) - E + f S``:
    linear in x, so the largest admissible x per bracket is explicit. Returns ``n`` if none.
    """
    model = ok.model
    shift = ok.sd + PRICE_DECIMALS - QUOTE_DECIMALS
    per_q = Fraction(ok.mark, pow10(shift)) if shift >= 0 else Fraction(ok.mark * pow10(-shift))  # quote q per base q
    total = ok.n * per_q
    k = Fraction(ok.k, PPM)
    f = Fraction(ok.fee_ppm, PPM)
    cf = Fraction(model.close_fee_ppm, PPM)
    best: Fraction | None = None
    for j, b in enumerate(model.brackets):
        lo = Fraction(b.floor_quote_q)
        if lo > total:
            break
        hi = min(Fraction(model.brackets[j + 1].floor_quote_q), total) if j + 1 < len(model.brackets) else total
        x: Fraction | None
        c = f - k * (Fraction(b.mmr_ppm, PPM) + cf)
        rhs = k * (ok.other_mm - b.cum_quote_q) - ok.equity + f * total
        if c < 0:
            x = min(hi, rhs / c)
        elif c > 0:
            x = hi if hi >= rhs / c else None
        else:
            x = hi if rhs <= 0 else None
        if x is not None and x >= lo and (best is None or x > best):
            best = x
    if best is None:
        return ok.n
    return ok.n - int(best / per_q)  # floor of the remaining size: the close rounds up


def close_size_to_target(
    model: BracketModel,
    size_base_q: int,
    size_decimals: int,
    mark_q: int,
    fixed_equity_quote_q: int,
    other_mm_quote_q: int,
    target_ppm: int,
    fee_ppm: int = 0,
) -> int:
    """Smallest size to close at the mark so that equity_after >= (1 + target) * MM_after.

    The result has the position's sign and ``|result| <= |size|``; 0 if the bucket already meets
    the target. If even closing everything cannot, the whole position is returned: check with
    :func:`reaches_target`. Linear bracket models use the closed form bracket by bracket, then an
    exact integer correction; Drift's sqrt model falls back to :func:`bisect_close_size`.

    Exactness: the result ``a`` meets the target and ``a`` minus one quantum does not. Without a fee
    (and with maintenance non-decreasing in size, as every preset is) the predicate is monotone and
    this is the global minimum; with a fee, closing can cost more than it frees, and the result is
    the first crossing of the target next to the continuous closed-form solution.
    """
    ok = _Target(model, size_base_q, size_decimals, mark_q, fixed_equity_quote_q, other_mm_quote_q, target_ppm, fee_ppm)
    if size_base_q == 0 or ok(0):
        return 0
    a = _bisect_magnitude(ok) if model.sqrt_imf_factor_ppm else _refine(ok, _closed_form_candidate(ok))
    return a if size_base_q > 0 else -a


def _bisect_magnitude(ok: _Target) -> int:
    if ok(0):
        return 0
    if not ok(ok.n):
        return ok.n
    return _bisect(ok, 0, ok.n)


def bisect_close_size(
    model: BracketModel,
    size_base_q: int,
    size_decimals: int,
    mark_q: int,
    fixed_equity_quote_q: int,
    other_mm_quote_q: int,
    target_ppm: int,
    fee_ppm: int = 0,
) -> int:
    """Generic exact bisection on the target predicate (any model with monotone maintenance).

    Exact minimum when the predicate is monotone in the closed size (no fee); returns the whole
    position when closing everything does not meet the target.
    """
    ok = _Target(model, size_base_q, size_decimals, mark_q, fixed_equity_quote_q, other_mm_quote_q, target_ppm, fee_ppm)
    a = _bisect_magnitude(ok)
    return a if size_base_q > 0 else -a


def pick_order(positions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Cross-bucket reduction order of ``(market_index, mm_quote_q)``: largest MM first, then index."""
    return sorted(positions, key=lambda p: (-p[1], p[0]))


def cap_close(size: int, max_notional_quote_q: int, mark_q: int, size_decimals: int, at_least_one: bool = True) -> int:
    """Cap a close to ``max_notional`` at the mark, keeping sign.

    With ``at_least_one`` (a per-event cap: every event makes progress) at least one quantum is
    closed; without (a budget that may be spent) the result is 0 when not even one quantum fits.
    """
    if mark_q <= 0 or max_notional_quote_q < 0:
        raise ValidationError("mark must be positive and the cap non-negative")
    if size == 0:
        return 0
    # largest q with ceil(q * mark / 10^shift) <= cap  <=>  q * mark <= cap * 10^shift
    shift = size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
    if shift >= 0:
        q_max = max_notional_quote_q * pow10(shift) // mark_q
    else:
        q_max = max_notional_quote_q // (mark_q * pow10(-shift))
    a = min(abs(size), q_max)
    if at_least_one:
        a = max(a, 1)
    return a if size > 0 else -a
