"""The machine-independent draws and elementary functions of sim.draws, against numpy/scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtri

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.sim import draws


def test_exp_within_one_ulp() -> None:
    x = np.concatenate([np.linspace(-700.0, 700.0, 200_001), np.linspace(-1e-3, 1e-3, 10_001), [0.0, 1.0, -1.0]])
    got = draws.exp(x)
    want = np.exp(x)
    assert np.all(np.abs(got - want) <= np.spacing(want))
    assert draws.exp(0.0) == 1.0
    assert draws.exp(800.0) > 1e307 and 0.0 < draws.exp(-800.0) < 1e-320  # clamped, finite
    assert np.isnan(draws.exp(np.nan))


def test_log_within_one_ulp() -> None:
    x = np.concatenate([np.exp(np.linspace(-700.0, 700.0, 200_001)), np.linspace(0.5, 2.0, 100_001)])
    got = draws.log(x)
    want = np.log(x)
    assert np.all(np.abs(got - want) <= np.spacing(np.maximum(np.abs(want), 1e-300)))
    assert draws.log(1.0) == 0.0
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValidationError, match="not positive and finite"):
            draws.log(np.array([1.0, bad]))


def test_uniforms_are_open_symmetric_and_uniform() -> None:
    u = draws.uniforms(make_rng(3), 200_000)
    assert u.min() > 0.0 and u.max() < 1.0
    assert np.all((u * 2**52 - 0.5) == np.floor(u * 2**52))  # (k + 1/2) / 2^52 exactly
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_inverse_normal_matches_ndtri_and_normal_is_normal() -> None:
    u = np.concatenate([draws.uniforms(make_rng(4), 200_000), [2**-53, 1e-12, 0.02425, 0.075, 0.5, 1 - 2**-53]])
    z = draws.inverse_normal(u)
    ref = ndtri(u)
    assert np.all(np.abs(z - ref) <= 4e-15 * np.maximum(np.abs(ref), 1.0))
    assert np.all(z[:-1][np.argsort(u[:-1])][1:] >= z[:-1][np.argsort(u[:-1])][:-1])  # monotone
    n = draws.normal(make_rng(5), 100_000)
    assert stats.kstest(n, "norm").pvalue > 1e-3
    with pytest.raises(ValidationError, match="strictly between 0 and 1"):
        draws.inverse_normal(np.array([0.5, 1.0]))


def test_poisson_inverts_the_cdf() -> None:
    for mean in (1e-4, 0.3, 4.0, 20.0):
        cdf = draws.poisson_cdf(mean)
        ref = stats.poisson.cdf(np.arange(len(cdf)), mean)
        assert np.max(np.abs(cdf - ref)) < 1e-13
        assert 1.0 - cdf[-1] < 1e-15
    u = draws.uniforms(make_rng(6), 100_000)
    which = np.repeat(np.array([0, 1], dtype=np.int64), 50_000)
    counts = draws.poisson(u, np.array([0.0, 2.5]), which)
    assert np.all(counts[:50_000] == 0)
    assert abs(counts[50_000:].mean() - 2.5) < 4 * math.sqrt(2.5 / 50_000)
    assert abs(counts[50_000:].var() - 2.5) < 0.1
    for bad in (-1.0, math.nan, 21.0):
        with pytest.raises(ValidationError, match="Poisson mean"):
            draws.poisson_cdf(bad)


def test_results_are_elementwise_whatever_the_array_shape() -> None:
    """No value depends on its neighbours (chunking, SIMD width or array size cannot change a bit)."""
    u = draws.uniforms(make_rng(8), 100_003)
    z = draws.inverse_normal(u)
    parts = np.concatenate([draws.inverse_normal(u[a : a + 7_919]) for a in range(0, u.size, 7_919)])
    assert z.tobytes() == parts.tobytes()
    assert draws.inverse_normal(u.reshape(-1, 1)).ravel().tobytes() == z.tobytes()
    x = z * 3.0
    assert (
        draws.exp(x).tobytes()
        == np.array([float(draws.exp(v)) for v in x[:2_000]] + list(draws.exp(x[2_000:]))).tobytes()
    )
    assert draws.log(u).tobytes() == np.concatenate([draws.log(u[:5]), draws.log(u[5:])]).tobytes()
