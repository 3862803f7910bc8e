"""A published implied-volatility surface (mark vols): frozen, validated when built, interpolated purely.

Points are (expiry_ts_ns, strike, vol): ``strike`` in the forward's price units (any consistent
unit: the interpolation is in log-strike, so scale-free), ``vol`` annualised (0.8 == 80 %).
Time to expiry is ACT/365 from the surface's ``as_of_ns`` (its publication time).

Interpolation (:meth:`VolSurface.vols`), at a fixed strike K:

- within an expiry: linear in vol against ln K between the quoted strikes; flat (the wing's vol)
  beyond the lowest and highest strike;
- across expiries: linear in total variance w = vol**2 * T against T between the two
  neighbouring expiries, vol = sqrt(w / T) (the standard, arbitrage-friendlier choice);
- beyond the first or last expiry (``TimeMode.EXTRAPOLATE`` only): flat vol of the nearest
  expiry, i.e. total variance linear in T through the origin before the first.

Invalid published data raises :class:`SurfaceError` (a ``ValidationError``) with a
:class:`SurfaceReason`; screening a point or a query without raising returns the reason instead
(:func:`point_reason`, :meth:`VolSurface.vol_reason`), as business outcomes are values.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.black76 import year_fraction

__all__ = [
    "DEFAULT_MAX_VOL",
    "Smile",
    "SurfaceConfig",
    "SurfaceError",
    "SurfaceReason",
    "TimeMode",
    "VolSurface",
    "point_reason",
]

DEFAULT_MAX_VOL = 10.0  # 1000 % annualised: above this a published vol is treated as garbage

FloatArray = npt.NDArray[np.float64]


class SurfaceReason(enum.Enum):
    """Why a surface, a point or a query is rejected (stable codes, for tests and events)."""

    BAD_CONFIG = "bad_config"
    TIME_NOT_INTEGER = "time_not_integer"
    EXPIRED = "expired"
    STRIKE_NOT_FINITE = "strike_not_finite"
    STRIKE_NOT_POSITIVE = "strike_not_positive"
    VOL_NOT_FINITE = "vol_not_finite"
    VOL_NOT_POSITIVE = "vol_not_positive"
    VOL_TOO_HIGH = "vol_too_high"
    NO_POINTS = "no_points"  # an expiry without points, or a surface without expiries
    LENGTH_MISMATCH = "length_mismatch"
    STRIKES_NOT_INCREASING = "strikes_not_increasing"  # duplicate or unsorted strikes in a smile
    EXPIRIES_NOT_INCREASING = "expiries_not_increasing"
    EXPIRY_NOT_ON_SURFACE = "expiry_not_on_surface"  # outside what the TimeMode allows


class SurfaceError(ValidationError):
    """A rejected surface, point or query; ``reason`` is the code, the message the detail."""

    def __init__(self, reason: SurfaceReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


class TimeMode(enum.Enum):
    """Which query expiries a surface answers."""

    EXACT = "exact"  # only the published expiries
    INTERPOLATE = "interpolate"  # anything between the first and last published expiry
    EXTRAPOLATE = "extrapolate"  # any unexpired expiry: flat vol beyond the ends


@dataclass(frozen=True, slots=True)
class SurfaceConfig:
    """Validation and interpolation policy of a surface."""

    max_vol: float = DEFAULT_MAX_VOL
    time_mode: TimeMode = TimeMode.INTERPOLATE

    def __post_init__(self) -> None:
        if isinstance(self.max_vol, bool) or not isinstance(self.max_vol, int | float):
            raise SurfaceError(SurfaceReason.BAD_CONFIG, f"max_vol must be a number, got {self.max_vol!r}")
        if not (math.isfinite(self.max_vol) and self.max_vol > 0.0):
            raise SurfaceError(SurfaceReason.BAD_CONFIG, f"max_vol must be finite and > 0, got {self.max_vol}")
        if not isinstance(self.time_mode, TimeMode):
            raise SurfaceError(SurfaceReason.BAD_CONFIG, f"time_mode must be a TimeMode, got {self.time_mode!r}")


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _strike_reason(strike: float) -> SurfaceReason | None:
    if not math.isfinite(strike):
        return SurfaceReason.STRIKE_NOT_FINITE
    if strike <= 0.0:
        return SurfaceReason.STRIKE_NOT_POSITIVE
    return None


def _vol_reason(vol: float, max_vol: float) -> SurfaceReason | None:
    if not math.isfinite(vol):
        return SurfaceReason.VOL_NOT_FINITE
    if vol <= 0.0:
        return SurfaceReason.VOL_NOT_POSITIVE
    if vol > max_vol:
        return SurfaceReason.VOL_TOO_HIGH
    return None


def point_reason(
    as_of_ns: int, expiry_ns: int, strike: float, vol: float, max_vol: float = DEFAULT_MAX_VOL
) -> SurfaceReason | None:
    """Why one published (expiry, strike, vol) point is unusable at ``as_of_ns``, or None if it is fine."""
    if not (_is_int(as_of_ns) and _is_int(expiry_ns)):
        return SurfaceReason.TIME_NOT_INTEGER
    if expiry_ns <= as_of_ns:
        return SurfaceReason.EXPIRED
    return _strike_reason(float(strike)) or _vol_reason(float(vol), max_vol)


@dataclass(frozen=True, slots=True)
class Smile:
    """The quoted (strike, vol) points of one expiry, strikes strictly increasing."""

    expiry_ns: int
    strikes: tuple[float, ...]
    vols: tuple[float, ...]
    _log_strikes: FloatArray = field(init=False, repr=False, compare=False)
    _vols: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _is_int(self.expiry_ns):
            raise SurfaceError(SurfaceReason.TIME_NOT_INTEGER, f"expiry_ns must be an int, got {self.expiry_ns!r}")
        strikes = tuple(float(k) for k in self.strikes)
        vols = tuple(float(v) for v in self.vols)
        where = f"expiry {self.expiry_ns}"
        if not strikes:
            raise SurfaceError(SurfaceReason.NO_POINTS, f"{where} has no points")
        if len(strikes) != len(vols):
            raise SurfaceError(SurfaceReason.LENGTH_MISMATCH, f"{where}: {len(strikes)} strikes, {len(vols)} vols")
        for k, v in zip(strikes, vols, strict=True):
            reason = _strike_reason(k) or _vol_reason(v, math.inf)  # max_vol: checked by the surface
            if reason is not None:
                raise SurfaceError(reason, f"{where}, strike {k}: vol {v}")
        for lo, hi in itertools.pairwise(strikes):
            if not lo < hi:
                raise SurfaceError(SurfaceReason.STRIKES_NOT_INCREASING, f"{where}: strike {hi} after {lo}")
        object.__setattr__(self, "expiry_ns", int(self.expiry_ns))
        object.__setattr__(self, "strikes", strikes)
        object.__setattr__(self, "vols", vols)
        log_k = np.log(np.array(strikes, dtype=np.float64))
        vol_a = np.array(vols, dtype=np.float64)
        log_k.flags.writeable = False
        vol_a.flags.writeable = False
        object.__setattr__(self, "_log_strikes", log_k)
        object.__setattr__(self, "_vols", vol_a)

    def vols_at(self, log_strikes: FloatArray) -> FloatArray:
        """Vols at ln K: linear in ln K between quotes, flat beyond the wings."""
        return np.asarray(np.interp(log_strikes, self._log_strikes, self._vols), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class VolSurface:
    """Mark vols by expiry, published at ``as_of_ns``; expiries strictly increasing and unexpired."""

    as_of_ns: int
    smiles: tuple[Smile, ...]
    config: SurfaceConfig = field(default_factory=SurfaceConfig)

    def __post_init__(self) -> None:
        if not _is_int(self.as_of_ns):
            raise SurfaceError(SurfaceReason.TIME_NOT_INTEGER, f"as_of_ns must be an int, got {self.as_of_ns!r}")
        object.__setattr__(self, "as_of_ns", int(self.as_of_ns))
        smiles = tuple(self.smiles)
        object.__setattr__(self, "smiles", smiles)
        if not smiles:
            raise SurfaceError(SurfaceReason.NO_POINTS, "surface has no expiries")
        for s in smiles:
            if s.expiry_ns <= self.as_of_ns:
                raise SurfaceError(SurfaceReason.EXPIRED, f"expiry {s.expiry_ns} <= as_of {self.as_of_ns}")
            for k, v in zip(s.strikes, s.vols, strict=True):
                if v > self.config.max_vol:
                    raise SurfaceError(
                        SurfaceReason.VOL_TOO_HIGH, f"expiry {s.expiry_ns}, strike {k}: vol {v} > {self.config.max_vol}"
                    )
        for a, b in itertools.pairwise(smiles):
            if not a.expiry_ns < b.expiry_ns:
                raise SurfaceError(SurfaceReason.EXPIRIES_NOT_INCREASING, f"expiry {b.expiry_ns} after {a.expiry_ns}")

    @classmethod
    def from_points(
        cls,
        as_of_ns: int,
        points: Mapping[int, Iterable[tuple[float, float]]],
        config: SurfaceConfig | None = None,
    ) -> VolSurface:
        """Build from ``{expiry_ns: [(strike, vol), ...]}`` in any order (sorted here)."""
        smiles = []
        for expiry_ns in sorted(points):
            pts = sorted(points[expiry_ns])
            smiles.append(Smile(expiry_ns, tuple(k for k, _ in pts), tuple(v for _, v in pts)))
        return cls(as_of_ns, tuple(smiles), config if config is not None else SurfaceConfig())

    @property
    def expiries_ns(self) -> tuple[int, ...]:
        return tuple(s.expiry_ns for s in self.smiles)

    def _expiry_reason(self, expiry_ns: int) -> SurfaceReason | None:
        if not _is_int(expiry_ns):
            return SurfaceReason.TIME_NOT_INTEGER
        if expiry_ns <= self.as_of_ns:
            return SurfaceReason.EXPIRED
        mode = self.config.time_mode
        first, last = self.smiles[0].expiry_ns, self.smiles[-1].expiry_ns
        if mode is TimeMode.EXACT and expiry_ns not in self.expiries_ns:
            return SurfaceReason.EXPIRY_NOT_ON_SURFACE
        if mode is TimeMode.INTERPOLATE and not first <= expiry_ns <= last:
            return SurfaceReason.EXPIRY_NOT_ON_SURFACE
        return None

    def vol_reason(self, expiry_ns: int, strike: float) -> SurfaceReason | None:
        """Why :meth:`vol` would reject this query, or None if it answers."""
        return self._expiry_reason(expiry_ns) or _strike_reason(float(strike))

    def vol(self, expiry_ns: int, strike: float) -> float:
        """Interpolated vol at one (expiry, strike); raises :class:`SurfaceError` on a bad query."""
        return float(self.vols(expiry_ns, strike))

    def vols(self, expiry_ns: int, strikes: npt.ArrayLike) -> FloatArray:
        """Interpolated vols at one expiry for an array of strikes (module docstring: the scheme)."""
        reason = self._expiry_reason(expiry_ns)
        if reason is not None:
            raise SurfaceError(reason, f"expiry {expiry_ns} (as_of {self.as_of_ns}, on surface {self.expiries_ns})")
        k = np.asarray(strikes, dtype=np.float64)
        if not np.all(np.isfinite(k)):
            raise SurfaceError(SurfaceReason.STRIKE_NOT_FINITE, "query strikes must be finite")
        if np.any(k <= 0.0):
            raise SurfaceError(SurfaceReason.STRIKE_NOT_POSITIVE, "query strikes must be > 0")
        log_k = np.log(k)
        expiries = self.expiries_ns
        j = int(np.searchsorted(np.array(expiries, dtype=np.int64), expiry_ns))  # expiries[j-1] < e <= expiries[j]
        if j < len(expiries) and expiries[j] == expiry_ns:
            return self.smiles[j].vols_at(log_k)
        if j == 0:
            return self.smiles[0].vols_at(log_k)  # flat vol before the first expiry (EXTRAPOLATE)
        if j == len(expiries):
            return self.smiles[-1].vols_at(log_k)  # flat vol after the last expiry (EXTRAPOLATE)
        lo, hi = self.smiles[j - 1], self.smiles[j]
        t_lo = year_fraction(self.as_of_ns, lo.expiry_ns)
        t_hi = year_fraction(self.as_of_ns, hi.expiry_ns)
        t = year_fraction(self.as_of_ns, expiry_ns)
        w_lo = lo.vols_at(log_k) ** 2 * t_lo
        w_hi = hi.vols_at(log_k) ** 2 * t_hi
        frac = (expiry_ns - lo.expiry_ns) / (hi.expiry_ns - lo.expiry_ns)  # exact ints, one rounding
        return np.asarray(np.sqrt((w_lo + (w_hi - w_lo) * frac) / t), dtype=np.float64)
