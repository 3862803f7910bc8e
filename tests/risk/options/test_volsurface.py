"""The published vol surface: interpolation scenarios, time modes, and rejection of bad data by reason."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.black76 import YEAR_NS, black76_price
from fluidmargin.risk.options.volsurface import (
    Smile,
    SurfaceConfig,
    SurfaceError,
    SurfaceReason,
    TimeMode,
    VolSurface,
    point_reason,
)

DAY_NS = 86_400 * 10**9
T0_NS = 1_700_000_000 * 10**9  # publication time of the fixtures
E7_NS = T0_NS + 7 * DAY_NS
E30_NS = T0_NS + 30 * DAY_NS

# State: BTC mark vols, two expiries, three strikes each (a smile with a put skew).
#   expiry     80_000   100_000   120_000
#   7 days      0.80      0.60      0.70
#   30 days     0.70      0.55      0.60
BTC_POINTS = {
    E7_NS: [(80_000.0, 0.80), (100_000.0, 0.60), (120_000.0, 0.70)],
    E30_NS: [(120_000.0, 0.60), (80_000.0, 0.70), (100_000.0, 0.55)],  # any order: sorted when built
}


def btc_surface(mode: TimeMode = TimeMode.INTERPOLATE, max_vol: float = 10.0) -> VolSurface:
    return VolSurface.from_points(T0_NS, BTC_POINTS, SurfaceConfig(max_vol=max_vol, time_mode=mode))


# --- interpolation scenarios ---------------------------------------------------------------------


def test_quoted_points_are_returned_exactly() -> None:
    s = btc_surface()
    assert s.expiries_ns == (E7_NS, E30_NS)
    assert s.vol(E7_NS, 80_000.0) == 0.80
    assert s.vol(E30_NS, 100_000.0) == 0.55
    assert s.smiles[1].strikes == (80_000.0, 100_000.0, 120_000.0)


def test_within_expiry_linear_in_log_strike() -> None:
    # K = sqrt(80k * 100k) is half-way in ln K: vol = (0.80 + 0.60) / 2 = 0.70.
    assert btc_surface().vol(E7_NS, math.sqrt(80_000.0 * 100_000.0)) == pytest.approx(0.70, abs=1e-15)
    # K = 110k: ln(1.1) / ln(1.2) = 0.52276 of the way from 0.60 to 0.70 -> 0.652276.
    expected = 0.60 + 0.10 * math.log(1.1) / math.log(1.2)
    assert btc_surface().vol(E7_NS, 110_000.0) == pytest.approx(expected, abs=1e-15)


def test_flat_beyond_the_wings() -> None:
    s = btc_surface()
    assert s.vol(E7_NS, 1.0) == 0.80
    assert s.vol(E7_NS, 10_000_000.0) == 0.70


def test_across_expiries_linear_in_total_variance() -> None:
    # 18.5 days is half-way between 7 and 30 days; at K = 100k:
    #   w7 = 0.60**2 * 7/365, w30 = 0.55**2 * 30/365, w = (w7 + w30) / 2, vol = sqrt(w / (18.5/365))
    #   = sqrt((0.36 * 7 + 0.3025 * 30) / 2 / 18.5) = sqrt(11.595 / 37) = 0.559799...
    e_ns = T0_NS + 18 * DAY_NS + DAY_NS // 2
    assert btc_surface().vol(e_ns, 100_000.0) == pytest.approx(math.sqrt(11.595 / 37), rel=1e-14)


def test_vectorised_equals_scalar_queries() -> None:
    s = btc_surface()
    strikes = np.array([1.0, 70_000.0, 80_000.0, 95_000.0, 100_000.0, 130_000.0])
    e_ns = T0_NS + 12 * DAY_NS
    assert s.vols(e_ns, strikes).tolist() == [s.vol(e_ns, float(k)) for k in strikes]


@pytest.mark.parametrize(
    ("mode", "expiry_ns", "expected"),
    [
        # State: BTC surface at T0. Parameters: time mode, query expiry. Expectation: vol or reason.
        (TimeMode.EXACT, E7_NS, 0.60),
        (TimeMode.EXACT, E7_NS + DAY_NS, SurfaceReason.EXPIRY_NOT_ON_SURFACE),
        (TimeMode.INTERPOLATE, E7_NS + DAY_NS, None),  # interpolated: checked above
        (TimeMode.INTERPOLATE, T0_NS + DAY_NS, SurfaceReason.EXPIRY_NOT_ON_SURFACE),  # before the first
        (TimeMode.INTERPOLATE, E30_NS + DAY_NS, SurfaceReason.EXPIRY_NOT_ON_SURFACE),  # after the last
        (TimeMode.EXTRAPOLATE, T0_NS + DAY_NS, 0.60),  # flat vol of the 7-day smile
        (TimeMode.EXTRAPOLATE, E30_NS + 300 * DAY_NS, 0.55),  # flat vol of the 30-day smile
        (TimeMode.EXTRAPOLATE, T0_NS, SurfaceReason.EXPIRED),
    ],
)
def test_time_modes(mode: TimeMode, expiry_ns: int, expected: float | SurfaceReason | None) -> None:
    s = btc_surface(mode)
    if isinstance(expected, SurfaceReason):
        assert s.vol_reason(expiry_ns, 100_000.0) is expected
        with pytest.raises(SurfaceError) as e:
            s.vol(expiry_ns, 100_000.0)
        assert e.value.reason is expected
    else:
        assert s.vol_reason(expiry_ns, 100_000.0) is None
        if expected is not None:
            assert s.vol(expiry_ns, 100_000.0) == expected


def test_surface_vol_feeds_the_pricer() -> None:
    s = btc_surface()
    t_years = 7 * DAY_NS / YEAR_NS
    p = black76_price(100_000.0, 100_000.0, t_years, s.vol(E7_NS, 100_000.0), 1.0, True)
    # ATM: D F (2 N(s/2) - 1) = F erf(s / (2 sqrt 2)) with s = 0.6 sqrt(7/365).
    assert float(p) == pytest.approx(100_000.0 * math.erf(0.6 * math.sqrt(7 / 365) / (2 * math.sqrt(2))), rel=1e-13)


def test_surface_is_frozen() -> None:
    s = btc_surface()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.as_of_ns = 0  # type: ignore[misc]
    assert s == btc_surface()


# --- rejection of bad published data, by reason --------------------------------------------------


def _build(points: dict[int, list[tuple[float, float]]], **config: object) -> VolSurface:
    return VolSurface.from_points(T0_NS, points, SurfaceConfig(**config))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "points", "config", "reason"),
    [
        ("expired_at_publication", {T0_NS: [(100.0, 0.5)]}, {}, SurfaceReason.EXPIRED),
        ("expired_before_publication", {T0_NS - 1: [(100.0, 0.5)]}, {}, SurfaceReason.EXPIRED),
        ("negative_vol", {E7_NS: [(100.0, -0.5)]}, {}, SurfaceReason.VOL_NOT_POSITIVE),
        ("zero_vol", {E7_NS: [(100.0, 0.0)]}, {}, SurfaceReason.VOL_NOT_POSITIVE),
        ("nan_vol", {E7_NS: [(100.0, math.nan)]}, {}, SurfaceReason.VOL_NOT_FINITE),
        ("inf_vol", {E7_NS: [(100.0, math.inf)]}, {}, SurfaceReason.VOL_NOT_FINITE),
        ("absurd_vol_default_max_10", {E7_NS: [(100.0, 10.01)]}, {}, SurfaceReason.VOL_TOO_HIGH),
        ("absurd_vol_configured_max_3", {E7_NS: [(100.0, 3.5)]}, {"max_vol": 3.0}, SurfaceReason.VOL_TOO_HIGH),
        ("zero_strike", {E7_NS: [(0.0, 0.5)]}, {}, SurfaceReason.STRIKE_NOT_POSITIVE),
        ("negative_strike", {E7_NS: [(-100.0, 0.5)]}, {}, SurfaceReason.STRIKE_NOT_POSITIVE),
        ("nan_strike", {E7_NS: [(math.nan, 0.5)]}, {}, SurfaceReason.STRIKE_NOT_FINITE),
        ("duplicate_strike", {E7_NS: [(100.0, 0.5), (100.0, 0.6)]}, {}, SurfaceReason.STRIKES_NOT_INCREASING),
        ("expiry_without_points", {E7_NS: [(100.0, 0.5)], E30_NS: []}, {}, SurfaceReason.NO_POINTS),
        ("surface_without_expiries", {}, {}, SurfaceReason.NO_POINTS),
        ("max_vol_zero", {E7_NS: [(100.0, 0.5)]}, {"max_vol": 0.0}, SurfaceReason.BAD_CONFIG),
        ("max_vol_nan", {E7_NS: [(100.0, 0.5)]}, {"max_vol": math.nan}, SurfaceReason.BAD_CONFIG),
        ("time_mode_not_enum", {E7_NS: [(100.0, 0.5)]}, {"time_mode": "exact"}, SurfaceReason.BAD_CONFIG),
    ],
)
def test_bad_surface_rejected(name: str, points, config, reason: SurfaceReason) -> None:
    with pytest.raises(SurfaceError) as e:
        _build(points, **config)
    assert e.value.reason is reason, name
    assert isinstance(e.value, ValidationError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    ("name", "smile_args", "reason"),
    [
        ("float_expiry", (float(E7_NS), (100.0,), (0.5,)), SurfaceReason.TIME_NOT_INTEGER),
        ("unsorted_strikes", (E7_NS, (110.0, 100.0), (0.5, 0.5)), SurfaceReason.STRIKES_NOT_INCREASING),
        ("length_mismatch", (E7_NS, (100.0, 110.0), (0.5,)), SurfaceReason.LENGTH_MISMATCH),
    ],
)
def test_bad_smile_rejected(name: str, smile_args, reason: SurfaceReason) -> None:
    with pytest.raises(SurfaceError) as e:
        Smile(*smile_args)
    assert e.value.reason is reason, name


def test_unsorted_expiries_rejected() -> None:
    smiles = (Smile(E30_NS, (100.0,), (0.5,)), Smile(E7_NS, (100.0,), (0.5,)))
    with pytest.raises(SurfaceError) as e:
        VolSurface(T0_NS, smiles)
    assert e.value.reason is SurfaceReason.EXPIRIES_NOT_INCREASING


@pytest.mark.parametrize(
    ("expiry_ns", "strike", "reason"),
    [
        (T0_NS - DAY_NS, 100_000.0, SurfaceReason.EXPIRED),
        (E7_NS, 0.0, SurfaceReason.STRIKE_NOT_POSITIVE),
        (E7_NS, -5.0, SurfaceReason.STRIKE_NOT_POSITIVE),
        (E7_NS, math.inf, SurfaceReason.STRIKE_NOT_FINITE),
        (E30_NS + 1, 100_000.0, SurfaceReason.EXPIRY_NOT_ON_SURFACE),
    ],
)
def test_bad_queries_rejected(expiry_ns: int, strike: float, reason: SurfaceReason) -> None:
    s = btc_surface()
    assert s.vol_reason(expiry_ns, strike) is reason
    with pytest.raises(SurfaceError) as e:
        s.vol(expiry_ns, strike)
    assert e.value.reason is reason


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((T0_NS, E7_NS, 100.0, 0.5), None),
        ((T0_NS, T0_NS, 100.0, 0.5), SurfaceReason.EXPIRED),
        ((T0_NS, E7_NS, 0.0, 0.5), SurfaceReason.STRIKE_NOT_POSITIVE),
        ((T0_NS, E7_NS, 100.0, math.nan), SurfaceReason.VOL_NOT_FINITE),
        ((T0_NS, E7_NS, 100.0, -0.1), SurfaceReason.VOL_NOT_POSITIVE),
        ((T0_NS, E7_NS, 100.0, 12.0), SurfaceReason.VOL_TOO_HIGH),
        ((T0_NS, 1.5e18, 100.0, 0.5), SurfaceReason.TIME_NOT_INTEGER),
    ],
)
def test_point_reason(args, reason: SurfaceReason | None) -> None:
    assert point_reason(*args) is reason


# --- properties ----------------------------------------------------------------------------------

smile_points = st.lists(
    st.tuples(st.floats(1.0, 1e6), st.floats(0.01, 5.0)), min_size=1, max_size=6, unique_by=lambda p: p[0]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(smile_points, min_size=1, max_size=4),
    st.integers(1, 800 * DAY_NS),
    st.floats(0.5, 2e6),
    st.floats(0.5, 4.0),
)
def test_vols_bounded_by_quotes_and_scale_free(smiles, query_offset_ns, strike, scale) -> None:
    points = {T0_NS + (i + 1) * 90 * DAY_NS: pts for i, pts in enumerate(smiles)}
    cfg = SurfaceConfig(time_mode=TimeMode.EXTRAPOLATE)
    s = VolSurface.from_points(T0_NS, points, cfg)
    v = s.vol(T0_NS + query_offset_ns, strike)
    quoted = [vol for pts in smiles for _, vol in pts]
    # total variance is a convex combination in T of quotes' total variances: vol stays in range.
    assert min(quoted) * (1 - 1e-12) <= v <= max(quoted) * (1 + 1e-12)
    # log-strike interpolation does not care about the unit of the strikes (while scaling keeps them distinct)
    assume(all(len({k * scale for k, _ in p}) == len(p) for p in points.values()))
    scaled = VolSurface.from_points(T0_NS, {e: [(k * scale, vol) for k, vol in p] for e, p in points.items()}, cfg)
    assert scaled.vol(T0_NS + query_offset_ns, strike * scale) == pytest.approx(v, rel=1e-9)
