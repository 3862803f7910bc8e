"""Aligned multi-asset history and the correlation the scenario generators take from it.

:func:`align` puts several :class:`~fluidmargin.sim.candles.Candles` on one time grid. Nothing is ever
filled in: a gap or a missing row is either refused (``policy="refuse"``, the default: a
:class:`~fluidmargin.core.errors.ValidationError` naming the asset and its first gap) or handled by the
explicit ``policy="intersect"``: only the times every asset has are kept, the rows dropped are counted
per asset, and the gaps of the common grid are listed; no return is ever taken across one
(:meth:`AlignedHistory.ratios`). Rows outside the span all assets cover are trimmed and counted.
Different candle intervals, grids offset from each other, and non-finite or non-positive closes are
refused under either policy.

:func:`correlation_from_returns` estimates a correlation matrix from aligned returns and
:func:`check_correlation` validates one (symmetric, unit diagonal, entries in [-1, 1], positive
semi-definite); :func:`cholesky` factors it in plain Python floats (machine-independent, see
:mod:`fluidmargin.sim.draws`), tolerating a singular (semi-definite) matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.sim import draws
from fluidmargin.sim.candles import Candles

FloatArray = npt.NDArray[np.float64]
Policy = Literal["refuse", "intersect"]
POLICIES = ("refuse", "intersect")
CORR_TOL = 1e-10  # symmetry, unit diagonal, and the most negative eigenvalue accepted as rounding


def iso_ms(ts_ms: int) -> str:
    """A time in ms as ``YYYY-MM-DDTHH:MMZ`` (for messages)."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


@dataclass(frozen=True, slots=True, eq=False)
class AlignedHistory:
    """Closes of several assets on one time grid.

    ``ts_ms`` (n,) the grid; ``close`` (n, assets); ``interval_ms`` the candle interval; ``gaps``: (time
    of the last row before the gap, ms missing) of each gap in the grid; ``dropped``: per asset, rows
    inside the common span not on the grid (``intersect``); ``trimmed``: per asset, rows outside the
    span every asset covers.
    """

    assets: tuple[str, ...]
    ts_ms: npt.NDArray[np.int64]
    close: FloatArray
    interval_ms: int
    gaps: tuple[tuple[int, int], ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()
    trimmed: tuple[tuple[str, int], ...] = ()

    def __len__(self) -> int:
        return len(self.ts_ms)

    def whole_steps(self) -> npt.NDArray[np.bool_]:
        """(n - 1,) whether each step of the grid is one interval (False across a gap)."""
        ok: npt.NDArray[np.bool_] = np.diff(self.ts_ms) == self.interval_ms
        return ok

    def ratios(self) -> FloatArray:
        """Gross returns ``close[t+1] / close[t]`` over whole intervals only, (m, assets)."""
        ok = self.whole_steps()
        return (self.close[1:] / self.close[:-1])[ok]

    def log_returns(self) -> FloatArray:
        """Log returns over whole intervals only (machine-independent :func:`~fluidmargin.sim.draws.log`)."""
        return draws.log(self.ratios())

    def summary(self) -> dict[str, object]:
        """What alignment kept, dropped and trimmed (for reports)."""
        return {
            "assets": list(self.assets),
            "rows": len(self),
            "interval_ms": self.interval_ms,
            "start": iso_ms(int(self.ts_ms[0])),
            "end": iso_ms(int(self.ts_ms[-1])),
            "gaps": len(self.gaps),
            "missing_ms": sum(m for _t, m in self.gaps),
            "dropped": dict(self.dropped),
            "trimmed": dict(self.trimmed),
        }


def _check_series(asset: str, c: Candles) -> None:
    if len(c) == 0:
        raise ValidationError(f"{asset}: no candles")
    ts = c.ts_ms
    if len(ts) > 1 and np.any(np.diff(ts) <= 0):
        i = int(np.flatnonzero(np.diff(ts) <= 0)[0]) + 1
        raise ValidationError(f"{asset}: times must strictly increase (row {i} at {int(ts[i])} ms)")
    bad = np.flatnonzero(~(np.isfinite(c.close) & (c.close > 0.0)))
    if bad.size:
        i = int(bad[0])
        raise ValidationError(
            f"{asset}: close {float(c.close[i])!r} at {iso_ms(int(ts[i]))} (row {i}) is not a positive finite price"
        )


def align(
    candles: Mapping[str, Candles],
    policy: Policy = "refuse",
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> AlignedHistory:
    """The closes of ``candles`` (asset -> series) on their common grid, within [start_ms, end_ms].

    ``refuse``: every asset must have every interval of the span all of them cover, else a
    ValidationError names the asset and its first gap. ``intersect``: the times all assets share, the
    rest dropped and counted, the grid's gaps listed (see the module docstring).
    """
    if policy not in POLICIES:
        raise ValidationError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if not candles:
        raise ValidationError("no candles to align")
    assets = tuple(candles)
    for a in assets:
        _check_series(a, candles[a])
    intervals = {a: candles[a].interval_ms() for a in assets}
    interval = intervals[assets[0]]
    for a in assets[1:]:
        if intervals[a] != interval:
            raise ValidationError(
                f"{a} candles are every {intervals[a]} ms, {assets[0]} every {interval} ms: resample to one interval"
            )
    if interval <= 0:
        raise ValidationError(f"{assets[0]}: candle interval {interval} ms must be positive")
    phase = {a: int(candles[a].ts_ms[0]) % interval for a in assets}
    for a in assets:
        off = np.flatnonzero(candles[a].ts_ms % interval != phase[assets[0]])
        if off.size:
            t = int(candles[a].ts_ms[off[0]])
            raise ValidationError(
                f"{a}: the candle at {iso_ms(t)} ({t} ms) is off the {interval} ms grid of {assets[0]} "
                f"(offset {(t - phase[assets[0]]) % interval} ms): grids must line up"
            )
    lo = max(int(candles[a].ts_ms[0]) for a in assets)
    hi = min(int(candles[a].ts_ms[-1]) for a in assets)
    if start_ms is not None:
        lo = max(lo, start_ms + (phase[assets[0]] - start_ms) % interval)
    if end_ms is not None:
        hi = min(hi, end_ms)
    if hi < lo:
        raise ValidationError(f"the series do not overlap (common span {iso_ms(lo)} to {iso_ms(hi)} is empty)")
    inside: dict[str, npt.NDArray[np.int64]] = {}
    trimmed: list[tuple[str, int]] = []
    for a in assets:
        ts = candles[a].ts_ms
        i, j = int(np.searchsorted(ts, lo, side="left")), int(np.searchsorted(ts, hi, side="right"))
        inside[a] = np.arange(i, j, dtype=np.int64)
        trimmed.append((a, len(ts) - (j - i)))
    if policy == "refuse":
        expected = (hi - lo) // interval + 1
        for a in assets:
            ts = candles[a].ts_ms[inside[a]]
            if len(ts) != expected:
                full = lo + interval * np.arange(expected, dtype=np.int64)
                first = int(full[np.flatnonzero(~np.isin(full, ts, assume_unique=True))[0]])
                k = int(np.searchsorted(ts, first))
                resume = int(ts[k]) if k < len(ts) else hi + interval
                raise ValidationError(
                    f"{a}: gap from {iso_ms(first)} ({first} ms): {resume - first} ms without candles "
                    f"({expected - len(ts)} of {expected} candles missing in the common span); "
                    "nothing is filled in: cut the window or align with policy='intersect'"
                )
        grid = candles[assets[0]].ts_ms[inside[assets[0]]]
        rows = {a: inside[a] for a in assets}
        dropped = tuple((a, 0) for a in assets)
    else:
        grid = candles[assets[0]].ts_ms[inside[assets[0]]]
        for a in assets[1:]:
            grid = np.intersect1d(grid, candles[a].ts_ms[inside[a]], assume_unique=True)
        if len(grid) == 0:
            raise ValidationError("the series share no candle time")
        rows = {a: inside[a][np.isin(candles[a].ts_ms[inside[a]], grid, assume_unique=True)] for a in assets}
        dropped = tuple((a, len(inside[a]) - len(rows[a])) for a in assets)
    close = np.stack([candles[a].close[rows[a]] for a in assets], axis=1).astype(np.float64)
    steps = np.diff(grid)
    at = np.flatnonzero(steps != interval)
    gaps = tuple((int(grid[k]), int(steps[k]) - interval) for k in at.tolist())
    return AlignedHistory(assets, grid.astype(np.int64), close, interval, gaps, dropped, tuple(trimmed))


# --- correlation -------------------------------------------------------------------------------------


def correlation_from_returns(returns: npt.ArrayLike, assets: Sequence[str] | None = None) -> FloatArray:
    """The sample correlation matrix of aligned returns (rows: times, columns: assets), checked by
    :func:`check_correlation`. Sums are exact (``math.fsum``), so the matrix is the same on any machine.

    Refused: fewer than 2 rows, a non-finite return (named by asset and row), a constant column.
    """
    x = np.asarray(returns, dtype=np.float64)
    if x.ndim != 2:
        raise ValidationError(f"returns must be a 2-d array (times x assets), got {x.ndim} dimension(s)")
    n, k = x.shape
    names = list(assets) if assets is not None else [f"column {j}" for j in range(k)]
    if len(names) != k:
        raise ValidationError(f"{len(names)} asset names for {k} columns")
    if n < 2:
        raise ValidationError(f"a correlation needs at least 2 returns, got {n}")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise ValidationError(f"{names[j]}: return {float(x[i, j])!r} at row {i} is not finite")
    dev = [x[:, j] - math.fsum(x[:, j].tolist()) / n for j in range(k)]
    ss = [math.fsum((d * d).tolist()) for d in dev]
    for j in range(k):
        if ss[j] <= 0.0:
            raise ValidationError(f"{names[j]}: constant returns have no correlation")
    out = np.eye(k)
    for i in range(k):
        for j in range(i):
            r = math.fsum((dev[i] * dev[j]).tolist()) / math.sqrt(ss[i] * ss[j])
            out[i, j] = out[j, i] = min(1.0, max(-1.0, r))
    return check_correlation(out, names)


def check_correlation(matrix: npt.ArrayLike, assets: Sequence[str] | None = None) -> FloatArray:
    """A copy of ``matrix`` if it is a valid correlation matrix, else a ValidationError saying why:
    square, finite, symmetric, unit diagonal, entries in [-1, 1], positive semi-definite."""
    m = np.array(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValidationError(f"a correlation matrix must be square and non-empty, got shape {m.shape}")
    k = m.shape[0]
    names = list(assets) if assets is not None else [str(j) for j in range(k)]
    if len(names) != k:
        raise ValidationError(f"a {k}x{k} correlation matrix for {len(names)} assets")
    if not np.all(np.isfinite(m)):
        raise ValidationError("the correlation matrix has non-finite entries")
    if np.any(np.abs(np.diag(m) - 1.0) > CORR_TOL):
        j = int(np.argmax(np.abs(np.diag(m) - 1.0)))
        raise ValidationError(f"correlation of {names[j]} with itself is {m[j, j]}, not 1")
    asym = np.abs(m - m.T)
    if np.any(asym > CORR_TOL):
        i, j = (int(v) for v in np.unravel_index(int(np.argmax(asym)), asym.shape))
        raise ValidationError(
            f"the correlation matrix is not symmetric ({names[i]}/{names[j]}: {m[i, j]} vs {m[j, i]})"
        )
    if np.any(np.abs(m) > 1.0 + CORR_TOL):
        i, j = (int(v) for v in np.unravel_index(int(np.argmax(np.abs(m))), m.shape))
        raise ValidationError(f"correlation {names[i]}/{names[j]} = {m[i, j]} is outside [-1, 1]")
    m = np.clip((m + m.T) / 2.0, -1.0, 1.0)
    np.fill_diagonal(m, 1.0)
    low = float(np.linalg.eigvalsh(m)[0])  # a check only; the paths use cholesky() below
    if low < -CORR_TOL * k:
        raise ValidationError(f"the correlation matrix is not positive semi-definite (smallest eigenvalue {low:.3g})")
    return m


def cholesky(matrix: FloatArray) -> tuple[tuple[float, ...], ...]:
    """Lower-triangular L with L L^T = ``matrix`` (a checked correlation matrix), in Python floats.

    A semi-definite matrix (perfectly correlated assets) gets a zero column where its pivot is zero
    (within 1e-10); a pivot below -1e-10 means the matrix is not positive semi-definite (refused).
    """
    k = matrix.shape[0]
    a = [[float(matrix[i, j]) for j in range(k)] for i in range(k)]
    lo = [[0.0] * k for _ in range(k)]
    for j in range(k):
        d = a[j][j] - math.fsum(lo[j][p] * lo[j][p] for p in range(j))
        if d < -CORR_TOL:
            raise ValidationError(f"the correlation matrix is not positive semi-definite (pivot {j} is {d:.3g})")
        if d <= CORR_TOL:
            continue
        lo[j][j] = math.sqrt(d)
        for i in range(j + 1, k):
            lo[i][j] = (a[i][j] - math.fsum(lo[i][p] * lo[j][p] for p in range(j))) / lo[j][j]
    return tuple(tuple(row) for row in lo)
