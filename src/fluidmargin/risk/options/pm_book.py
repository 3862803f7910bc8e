"""What the batch portfolio margin (:mod:`~fluidmargin.risk.options.pm_batch`) margins: an underlying's option
series (:class:`SeriesTable`), their market at one event time (:class:`PmMarket`) and the accounts as columns
(:class:`PmBook`), each validated when built; the screen's market move (:func:`move_market`); and the
conversions to and from the reference model's :class:`~fluidmargin.risk.options.pm_types.Portfolio`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.pm_params import require_finite
from fluidmargin.risk.options.pm_types import ExpiryHolding, OptionHolding, Portfolio

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def float_column(name: str, a: Any, n: int | None = None) -> FloatArray:
    """``a`` as a contiguous finite float64 vector (of length ``n`` when given), else ValidationError."""
    x = np.ascontiguousarray(a, dtype=np.float64)
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        raise ValidationError(f"{name} must be 1-D of length {n}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValidationError(f"{name} must be finite")
    return x


def int_column(name: str, a: Any, n: int | None = None) -> IntArray:
    """``a`` as a contiguous int64 vector (of length ``n`` when given), else ValidationError."""
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
        idx = int_column("expiry_index", self.expiry_index)
        n = idx.shape[0]
        strike = float_column("strike", self.strike, n)
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
            require_finite(name, getattr(self, name))
        if self.spot_price <= 0 or self.stable_price <= 0 or self.perp_price < 0:
            raise ValidationError("spot_price and stable_price must be > 0, perp_price >= 0")
        for name in ("spot_confidence", "perp_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValidationError(f"{name} must be in [0, 1]")
        sec = int_column("sec_to_expiry_s", self.sec_to_expiry_s, ne)
        if np.any(sec < 0):
            raise ValidationError("sec_to_expiry_s must be >= 0")
        fwd = float_column("forward", self.forward, ne)
        if np.any(fwd <= 0):
            raise ValidationError("forward must be > 0")
        fixed = float_column("forward_fixed", np.zeros(ne) if self.forward_fixed is None else self.forward_fixed, ne)
        if np.any(fixed < 0) or np.any(fixed > fwd) or np.any((fixed == fwd) & (sec > 0)):
            raise ValidationError("forward_fixed must be in [0, forward) (up to the forward at expiry)")
        vol = float_column("vol", self.vol, ns)
        if np.any(vol < 0):
            raise ValidationError("vol must be >= 0")
        _set(self, "sec_to_expiry_s", sec)
        _set(self, "forward", fwd)
        _set(self, "forward_fixed", fixed)
        _set(self, "rate", float_column("rate", self.rate, ne))
        _set(self, "vol", vol)
        for name, n in (("forward_confidence", ne), ("rate_confidence", ne), ("vol_confidence", ns)):
            raw = getattr(self, name)
            c = float_column(name, np.ones(n) if raw is None else raw, n)
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
        cash = float_column("cash_quote", self.cash_quote)
        n = cash.shape[0]
        offsets = int_column("pos_offsets", self.pos_offsets, n + 1)
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValidationError("pos_offsets must start at 0 and never decrease")
        m = int(offsets[-1])
        sid = int_column("pos_series", self.pos_series, m)
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
        _set(self, "perp_amount", float_column("perp_amount", self.perp_amount, n))
        _set(self, "perp_unrealised_quote", float_column("perp_unrealised_quote", self.perp_unrealised_quote, n))
        _set(self, "pos_offsets", offsets)
        _set(self, "pos_series", sid)
        _set(self, "pos_amount", float_column("pos_amount", self.pos_amount, m))

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
        offsets = int_column("pos_offsets", pos_offsets)
        sid = int_column("pos_series", pos_series)
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


# --- market moves and conversions -----------------------------------------------------------------------


def move_market(market: PmMarket, book: PmBook, spot_price: float, elapsed_s: int = 0) -> tuple[PmMarket, PmBook]:
    """The market and book the screen assumes after spot moves to ``spot_price`` and ``elapsed_s`` pass.

    The moving part of each forward and the perp price scale with spot, the unrealised perp P&L follows
    the perp, vols and rates stay, times to expiry shrink (never below 0). The screen's guarantee is
    relative to this move; any other market change calls for a full revaluation.
    """
    moved = market_at(market, spot_price, elapsed_s)
    pu = book.perp_unrealised_quote + book.perp_amount * (moved.perp_price - market.perp_price)
    return moved, book.with_perp_unrealised(pu)


def market_at(market: PmMarket, spot_price: float, elapsed_s: int) -> PmMarket:
    """The market alone, moved as :func:`move_market` moves it."""
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
