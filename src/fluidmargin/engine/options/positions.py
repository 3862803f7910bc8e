"""Option positions: the listed series, each account's contracts, the published mark vols.

Owns the exact option state (in the state hash and snapshots): per series whether it has settled and
at what price, and its open interest; per account row its signed contracts; per listed (underlying,
expiry, strike) the published vol (ppm), time and source; which rows are in portfolio mode; and why a
portfolio row cannot be valued, if it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fluidmargin.model.instruments import OptionSpec

# a savepoint's copy of one row: its positions, and every series' open interest
RowSaved = tuple[dict[int, int] | None, list[int]]


@dataclass(slots=True)
class Series:
    """A listed option series (index ``i`` in the config's list)."""

    i: int
    spec: OptionSpec
    settled_price_q: int | None = None
    long_oi_base_q: int = 0


class OptionPositions:
    """Series, positions, vols, portfolio rows and blocked valuations, with the queries over them."""

    def __init__(self, options: tuple[OptionSpec, ...]) -> None:
        self.series = [Series(i, s) for i, s in enumerate(options)]
        self.idx = {s.spec.symbol: s for s in self.series}
        self.vols: dict[tuple[str, int, int], tuple[int, int, str]] = {}  # point -> (vol_ppm, ts_ns, source)
        self.pos: dict[int, dict[int, int]] = {}  # row -> series index -> signed contracts
        self.blocked: dict[int, str] = {}  # portfolio row -> why it cannot be valued
        self.pm_rows: set[int] = set()  # rows in portfolio mode (a projection of the ledger's acct_mode)

    def positions(self, r: int) -> list[tuple[Series, int]]:
        return [(self.series[i], n) for i, n in sorted(self.pos.get(r, {}).items()) if n]

    def has_positions(self, r: int) -> bool:
        return any(self.pos.get(r, {}).values())

    def assets_of(self, r: int) -> set[str]:
        return {s.spec.underlying for s, _n in self.positions(r)}

    def vol_ppm(self, s: Series) -> int | None:
        pt = self.vols.get((s.spec.underlying, s.spec.expiry_ns, s.spec.strike_price_q))
        return None if pt is None else pt[0]

    def rows_holding_point(self, key: tuple[str, int, int]) -> list[int]:
        sis = {s.i for s in self.series if (s.spec.underlying, s.spec.expiry_ns, s.spec.strike_price_q) == key}
        return sorted(r for r, d in self.pos.items() if any(d.get(i) for i in sis))

    def set(self, r: int, s: Series, new: int) -> None:
        """Row ``r``'s position in ``s`` becomes ``new`` contracts (open interest follows)."""
        d = self.pos.setdefault(r, {})
        old = d.get(s.i, 0)
        s.long_oi_base_q += max(new, 0) - max(old, 0)
        if new:
            d[s.i] = new
        else:
            d.pop(s.i, None)
            if not d:
                del self.pos[r]

    def save_row(self, r: int) -> RowSaved:
        d = self.pos.get(r)
        return (None if d is None else dict(d)), [s.long_oi_base_q for s in self.series]

    def restore_row(self, r: int, saved: RowSaved) -> None:
        d, oi = saved
        if d is None:
            self.pos.pop(r, None)
        else:
            self.pos[r] = dict(d)
        for s, x in zip(self.series, oi, strict=True):
            s.long_oi_base_q = x

    def state(self) -> dict[str, Any]:
        return {
            "series": [[s.settled_price_q, s.long_oi_base_q] for s in self.series],
            "positions": sorted((r, i, n) for r, d in self.pos.items() for i, n in d.items()),
            "vols": sorted((a, x, k, v, t, src) for (a, x, k), (v, t, src) in self.vols.items()),
            "blocked": sorted(self.blocked.items()),
        }

    def load(self, st: dict[str, Any] | None) -> None:
        if not st:
            return
        for s, (price, oi) in zip(self.series, st["series"], strict=True):
            s.settled_price_q, s.long_oi_base_q = price, oi
        self.pos = {}
        for r, i, n in st["positions"]:
            self.pos.setdefault(int(r), {})[int(i)] = int(n)
        self.vols = {(a, int(x), int(k)): (int(v), int(t), src) for a, x, k, v, t, src in st["vols"]}
        self.blocked = {int(r): why for r, why in st["blocked"]}
