"""Scenario generators: block bootstrap of real returns and Monte Carlo price paths, as candles to replay.

Every generator takes a seed (:func:`fluidmargin.core.rng.make_rng`) and returns :class:`Paths`: an array
of prices ``(paths, steps + 1, assets)`` whose first step is the start. The same seed gives the same
bytes on any machine: draws and arithmetic follow :mod:`fluidmargin.sim.draws` (the generator's integer
bits, IEEE basic operations, sequential accumulations; no libm, no BLAS, no threads), and
:meth:`Paths.digest` is the SHA-256 a test pins.

* :func:`bootstrap`: resampled blocks of the returns of an :class:`~fluidmargin.sim.history.AlignedHistory`,
  the same time blocks for every asset (cross-correlation survives), stationary (Politis-Romano:
  geometric block lengths of the given mean) or circular (fixed length); wrapping around the end.
  Returns are gross ratios over whole intervals (none across a gap); a block may join the two sides of
  a gap as it joins any two blocks.
* :class:`MonteCarlo` (``simulate``): GBM, Merton or Kou jump-diffusion per asset (the parameter types of
  :mod:`fluidmargin.risk.stats.jump_models`, log drift and volatility per year of 365 days), assets
  correlated through the Cholesky factor of a correlation matrix (:func:`~fluidmargin.sim.history.
  correlation_from_returns` takes it from data), jumps common to all assets by default (one arrival
  process thinned per asset, so each keeps its own rate), regime switching (a seeded Markov chain whose
  regimes shift the drift and scale the volatility and the jump rate), and volatility clustering
  (GARCH(1,1) as a variance multiplier of long-run mean 1: ``alpha``/``beta`` of
  :class:`~fluidmargin.risk.stats.vol.GarchParams`, so each asset keeps its long-run volatility).
  :func:`calibrate` fits one to an aligned history (GBM moments, or :func:`~fluidmargin.risk.stats.
  jump_fit.fit_merton` / ``fit_kou``, and the correlation of the same returns).
* :meth:`Paths.candles` turns one path into :class:`~fluidmargin.sim.candles.Candles` per asset, prices
  rounded to the instrument's price quantum, ready for :class:`~fluidmargin.sim.scenarios.Scenario`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.core.units import MAX_QUANTUMS, PRICE_DECIMALS, PRICE_SCALE, format_decimal
from fluidmargin.model.config import EngineConfig
from fluidmargin.risk.stats.jump_fit import fit_kou, fit_merton
from fluidmargin.risk.stats.jump_models import KouParams, MertonParams
from fluidmargin.risk.stats.vol import GarchParams
from fluidmargin.sim import draws
from fluidmargin.sim.candles import Candles
from fluidmargin.sim.history import AlignedHistory, check_correlation, cholesky, correlation_from_returns
from fluidmargin.sim.scenarios import CRASH_START_MS

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
MS_PER_YEAR = 365 * 86_400_000
MAX_CELLS = 20_000_000  # paths x steps x assets in one call (about 160 MB per array)
MAX_PRICE = MAX_QUANTUMS // 4 / PRICE_SCALE  # the engine's price bound, in quote per base unit
METHODS = ("stationary", "circular")


def _check_counts(n_paths: int, n_steps: int, n_assets: int, seed: int) -> None:
    for name, v in (("n_paths", n_paths), ("n_steps", n_steps), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValidationError(f"{name} must be an integer, got {v!r}")
    if n_paths < 1 or n_steps < 1:
        raise ValidationError(f"n_paths and n_steps must be at least 1, got {n_paths} and {n_steps}")
    if seed < 0:
        raise ValidationError(f"seed must be non-negative, got {seed}")
    if n_paths * n_steps * n_assets > MAX_CELLS:
        raise ValidationError(
            f"{n_paths} paths x {n_steps} steps x {n_assets} assets exceed {MAX_CELLS} cells: "
            "generate the paths in batches (one seed each)"
        )


# --- paths and their candles -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Paths:
    """Simulated prices ``(n_paths, n_steps + 1, n_assets)`` (``[:, 0]`` the start), a step of ``step_ms``
    from ``start_ms``; ``regimes``: the regime of each step ``(n_paths, n_steps)`` when a chain drove them."""

    assets: tuple[str, ...]
    prices: FloatArray
    step_ms: int
    start_ms: int = CRASH_START_MS
    regimes: npt.NDArray[np.int8] | None = None

    @property
    def n_paths(self) -> int:
        return int(self.prices.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.prices.shape[1]) - 1

    def digest(self) -> str:
        """SHA-256 of the shape and the prices as little-endian float64 bytes (the same on any machine)."""
        h = hashlib.sha256(repr(self.prices.shape).encode())
        h.update(np.ascontiguousarray(self.prices, dtype="<f8").tobytes())
        return h.hexdigest()

    def candles(
        self,
        path: int,
        config: EngineConfig | None = None,
        ticks: Mapping[str, int] | None = None,
        substeps: int = 1,
    ) -> dict[str, Candles]:
        """One path as candles per asset (see :func:`path_candles`)."""
        return path_candles(self, path, config, ticks, substeps)


def price_ticks(assets: Sequence[str], config: EngineConfig | None = None) -> dict[str, int]:
    """Each asset's price quantum in price quanta (1e-8): its market's ``tick_price_q`` (the coarsest
    if several markets share the asset), 1 for an asset without a market."""
    out = dict.fromkeys(assets, 1)
    for m in config.markets if config is not None else ():
        if m.base_asset in out:
            out[m.base_asset] = max(out[m.base_asset], m.tick_price_q)
    return out


def path_candles(
    paths: Paths,
    path: int,
    config: EngineConfig | None = None,
    ticks: Mapping[str, int] | None = None,
    substeps: int = 1,
) -> dict[str, Candles]:
    """Path ``path`` as OHLC candles per asset, each of ``substeps`` steps: open the first point, close
    the last, high and low the extremes of the points in between (wicks need ``substeps`` > 1).

    Prices are rounded half-to-even to the asset's price quantum (``ticks`` in price quanta, default
    :func:`price_ticks` of ``config``), never below one quantum; the decimal text is exact and the
    floats are its values, so ``replay_events`` and the evaluation harness take the candles unchanged.
    """
    if isinstance(path, bool) or not isinstance(path, int) or not 0 <= path < paths.n_paths:
        raise ValidationError(f"path must be an index in [0, {paths.n_paths}), got {path!r}")
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValidationError(f"substeps must be a positive integer, got {substeps!r}")
    if paths.n_steps % substeps:
        raise ValidationError(f"{paths.n_steps} steps do not divide into candles of {substeps} steps")
    tick = price_ticks(paths.assets, config) | dict(ticks or {})
    p = paths.prices[path]
    bad = np.argwhere(~(np.isfinite(p) & (p > 0.0) & (p <= MAX_PRICE)))
    if bad.size:
        t, j = (int(v) for v in bad[0])
        raise ValidationError(f"{paths.assets[j]}: price {float(p[t, j])!r} at step {t} is not in (0, {MAX_PRICE:g}]")
    n = paths.n_steps // substeps
    ts_ms = paths.start_ms + paths.step_ms * substeps * np.arange(n, dtype=np.int64)
    out: dict[str, Candles] = {}
    for j, a in enumerate(paths.assets):
        tq = tick[a]
        if isinstance(tq, bool) or not isinstance(tq, int) or not 0 < tq < MAX_QUANTUMS:
            raise ValidationError(f"{a}: price quantum {tq!r} must be a positive integer number of 1e-8")
        q = np.maximum(np.rint(p[:, j] * (PRICE_SCALE / tq)), 1.0).astype(np.int64) * tq
        seg = q[1:].reshape(n, substeps)
        cols = {
            "open": q[:-1:substeps],
            "high": np.maximum(seg.max(axis=1), q[:-1:substeps]),
            "low": np.minimum(seg.min(axis=1), q[:-1:substeps]),
            "close": q[substeps::substeps],
        }
        memo: dict[int, str] = {}
        text = {k: np.array([_text(v, memo) for v in c.tolist()], dtype=object) for k, c in cols.items()}
        fl = {k: c.astype(np.float64) / PRICE_SCALE for k, c in cols.items()}
        out[a] = Candles(f"<sim path={path} {a}>", ts_ms.copy(), fl["open"], fl["high"], fl["low"], fl["close"], text)
    return out


def _text(q: int, memo: dict[int, str]) -> str:
    t = memo.get(q)
    if t is None:
        t = memo[q] = format_decimal(q, PRICE_DECIMALS)
    return t


# --- block bootstrap ---------------------------------------------------------------------------------


def block_indices(
    n_returns: int,
    n_paths: int,
    n_steps: int,
    mean_block: float,
    rng: np.random.Generator,
    method: Literal["stationary", "circular"] = "stationary",
) -> IntArray:
    """Indices ``(n_paths, n_steps)`` into ``n_returns`` returns, in blocks of consecutive (circular) rows.

    ``stationary``: each step starts a new block with probability 1/mean_block (geometric lengths),
    at a uniform row; ``circular``: blocks of exactly ``mean_block`` rows (an integer), uniform starts.
    """
    if method not in METHODS:
        raise ValidationError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if n_returns < 1:
        raise ValidationError("no returns to resample")
    if not (isinstance(mean_block, int | float) and math.isfinite(mean_block) and 1.0 <= mean_block <= n_returns):
        raise ValidationError(f"mean_block must be a number in [1, {n_returns}] (the returns), got {mean_block!r}")
    pos = np.arange(n_steps, dtype=np.int64)
    if method == "circular":
        if mean_block != int(mean_block):
            raise ValidationError(f"circular blocks have a fixed length: mean_block must be whole, got {mean_block}")
        length = int(mean_block)
        starts = rng.integers(0, n_returns, size=(n_paths, -(-n_steps // length)), dtype=np.int64)
        return (starts[:, pos // length] + pos % length) % n_returns
    new = draws.uniforms(rng, (n_paths, n_steps)) < 1.0 / mean_block
    new[:, 0] = True
    starts = rng.integers(0, n_returns, size=(n_paths, n_steps), dtype=np.int64)
    last = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    first = np.take_along_axis(starts, last, axis=1)
    return (first + (pos - last)) % n_returns


def bootstrap(
    history: AlignedHistory,
    n_paths: int,
    n_steps: int,
    seed: int,
    mean_block: float = 60.0,
    method: Literal["stationary", "circular"] = "stationary",
    start_prices: Sequence[float] | None = None,
    start_ms: int | None = None,
) -> Paths:
    """Paths of resampled real returns: the same blocks of time for every asset (see the module
    docstring), from ``start_prices`` at ``start_ms`` (default: the history's last closes, one interval
    after its last candle)."""
    k = len(history.assets)
    _check_counts(n_paths, n_steps, k, seed)
    ratios = history.ratios()
    if len(ratios) == 0:
        raise ValidationError("the history has no return over a whole interval")
    s0 = _start_prices(history.assets, history.close[-1] if start_prices is None else start_prices)
    idx = block_indices(len(ratios), n_paths, n_steps, mean_block, make_rng(seed), method)
    prices = np.empty((n_paths, n_steps + 1, k))
    prices[:, 0] = s0
    np.cumprod(ratios[idx], axis=1, out=prices[:, 1:])
    prices[:, 1:] *= s0
    t0 = int(history.ts_ms[-1]) + history.interval_ms if start_ms is None else start_ms
    return Paths(history.assets, prices, history.interval_ms, t0)


def _start_prices(assets: Sequence[str], values: Sequence[float] | FloatArray) -> FloatArray:
    s0 = np.array(values, dtype=np.float64).reshape(-1)
    if s0.shape != (len(assets),):
        raise ValidationError(f"{s0.size} start prices for {len(assets)} assets")
    for a, v in zip(assets, s0.tolist(), strict=True):
        if not (math.isfinite(v) and 0.0 < v <= MAX_PRICE):
            raise ValidationError(f"{a}: start price {v!r} must be positive and finite")
    return s0


# --- Monte Carlo -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GbmParams:
    """Geometric Brownian motion: log drift and volatility per year (365 days)."""

    mu_annual: float
    sigma_annual: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu_annual) and math.isfinite(self.sigma_annual)):
            raise ValidationError(f"GBM parameters must be finite, got {self.mu_annual}, {self.sigma_annual}")
        if self.sigma_annual <= 0.0:
            raise ValidationError(f"sigma_annual must be > 0, got {self.sigma_annual}")

    @property
    def lam_per_year(self) -> float:
        return 0.0


ModelParams = GbmParams | MertonParams | KouParams


@dataclass(frozen=True, slots=True)
class AssetModel:
    """One asset of a Monte Carlo: its name, start price and price model."""

    asset: str
    start_price: float
    params: ModelParams

    def __post_init__(self) -> None:
        if not isinstance(self.asset, str) or not self.asset:
            raise ValidationError(f"asset must be a non-empty name, got {self.asset!r}")
        if not isinstance(self.params, GbmParams | MertonParams | KouParams):
            raise ValidationError(f"{self.asset}: params must be GbmParams, MertonParams or KouParams")
        _start_prices([self.asset], [self.start_price])


@dataclass(frozen=True, slots=True)
class Regime:
    """A market regime: ``drift_annual`` added to every asset's log drift, volatilities and jump rates
    scaled by ``vol_scale`` and ``jump_scale``."""

    name: str
    drift_annual: float = 0.0
    vol_scale: float = 1.0
    jump_scale: float = 1.0

    def __post_init__(self) -> None:
        vals = (self.drift_annual, self.vol_scale, self.jump_scale)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
            raise ValidationError(f"regime {self.name!r}: parameters must be finite numbers, got {vals}")
        if self.vol_scale <= 0.0 or self.jump_scale < 0.0:
            raise ValidationError(f"regime {self.name!r}: vol_scale must be > 0 and jump_scale >= 0")


@dataclass(frozen=True, slots=True)
class RegimeChain:
    """A Markov chain of regimes: ``transition[i][j]`` the probability per step of moving from i to j
    (rows sum to 1), starting in regime ``start``."""

    regimes: tuple[Regime, ...]
    transition: tuple[tuple[float, ...], ...]
    start: int = 0

    def __post_init__(self) -> None:
        r = len(self.regimes)
        if r == 0:
            raise ValidationError("a regime chain needs at least one regime")
        t = np.array(self.transition, dtype=np.float64)
        if t.shape != (r, r):
            raise ValidationError(f"the transition matrix must be {r}x{r}, got shape {t.shape}")
        if not np.all(np.isfinite(t)) or np.any(t < 0.0) or np.any(np.abs(t.sum(axis=1) - 1.0) > 1e-9):
            raise ValidationError("transition probabilities must be finite, non-negative, each row summing to 1")
        if not 0 <= self.start < r:
            raise ValidationError(f"start regime {self.start} is not one of the {r} regimes")

    @classmethod
    def persistent(cls, regimes: Sequence[Regime], mean_steps: Sequence[float], start: int = 0) -> RegimeChain:
        """Regime i lasts ``mean_steps[i]`` steps on average, then moves to another in equal shares."""
        r = len(regimes)
        if len(mean_steps) != r or not all(math.isfinite(m) and m >= 1.0 for m in mean_steps):
            raise ValidationError(f"need a mean duration >= 1 step for each of the {r} regimes")
        if r == 1:
            return cls(tuple(regimes), ((1.0,),), start)
        rows = tuple(
            tuple(1.0 - 1.0 / mean_steps[i] if i == j else 1.0 / mean_steps[i] / (r - 1) for j in range(r))
            for i in range(r)
        )
        return cls(tuple(regimes), rows, start)

    def simulate(self, u: FloatArray) -> npt.NDArray[np.int8]:
        """The regime of each step ``(paths, steps)`` from uniforms of that shape (step 0: ``start``)."""
        cum = np.cumsum(np.array(self.transition, dtype=np.float64), axis=1)[:, :-1]
        out = np.empty(u.shape, dtype=np.int8)
        state = np.full(u.shape[0], self.start, dtype=np.int64)
        for t in range(u.shape[1]):
            out[:, t] = state
            state = np.sum(u[:, t, None] >= cum[state], axis=1)
        return out


@dataclass(frozen=True, slots=True)
class MonteCarlo:
    """Correlated multi-asset jump-diffusions with optional regimes and GARCH clustering (module docstring).

    ``correlation``: assets x assets (None: independent); ``common_jumps``: jumps arrive together on all
    assets (each asset's rate kept by thinning) rather than independently.
    """

    models: tuple[AssetModel, ...]
    correlation: Sequence[Sequence[float]] | FloatArray | None = None
    regimes: RegimeChain | None = None
    garch: GarchParams | None = None
    common_jumps: bool = True
    step_ms: int = 60_000
    start_ms: int = CRASH_START_MS
    _chol: tuple[tuple[float, ...], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValidationError("a Monte Carlo needs at least one asset")
        names = [m.asset for m in self.models]
        if len(set(names)) != len(names):
            raise ValidationError(f"assets must be unique, got {names}")
        if isinstance(self.step_ms, bool) or not isinstance(self.step_ms, int) or self.step_ms <= 0:
            raise ValidationError(f"step_ms must be a positive integer, got {self.step_ms!r}")
        if self.garch is not None and not isinstance(self.garch, GarchParams):
            raise ValidationError("garch must be GarchParams (omega is ignored: the multiplier has mean 1)")
        k = len(names)
        corr = np.eye(k) if self.correlation is None else check_correlation(self.correlation, names)
        object.__setattr__(self, "correlation", tuple(tuple(float(v) for v in row) for row in corr))
        object.__setattr__(self, "_chol", cholesky(corr))
        scales = [r.jump_scale for r in self.regimes.regimes] if self.regimes else [1.0]
        top = max(m.params.lam_per_year for m in self.models) * max(scales) * self.dt_years
        if top > draws.MAX_POISSON_MEAN:
            raise ValidationError(f"{top:.3g} jumps expected per step: use a shorter step or a lower jump rate")

    @property
    def assets(self) -> tuple[str, ...]:
        return tuple(m.asset for m in self.models)

    @property
    def dt_years(self) -> float:
        return self.step_ms / MS_PER_YEAR

    def simulate(self, n_paths: int, n_steps: int, seed: int) -> Paths:
        """``n_paths`` paths of ``n_steps`` steps from ``seed``. Draws, in this order: regime uniforms
        (paths x steps), diffusion normals (paths x steps x assets), jump arrivals, jump thinning per
        asset, jump sizes per asset."""
        k = len(self.models)
        _check_counts(n_paths, n_steps, k, seed)
        rng = make_rng(seed)
        dt = self.dt_years
        chain = self.regimes
        state = chain.simulate(draws.uniforms(rng, (n_paths, n_steps))) if chain is not None else None
        regs = chain.regimes if chain is not None else (Regime("base"),)
        e = self._correlate(draws.normal(rng, (n_paths, n_steps, k)))
        if self.garch is not None:
            _garch_scale(e, self.garch)
        drift = np.array([r.drift_annual for r in regs]) * dt
        vscale = np.array([r.vol_scale for r in regs]) * math.sqrt(dt)
        dx = np.empty_like(e)
        for j, m in enumerate(self.models):
            mu = m.params.mu_annual * dt + (drift if state is None else drift[state])
            sig = m.params.sigma_annual * (vscale if state is None else vscale[state])
            np.multiply(e[:, :, j], sig, out=dx[:, :, j])
            dx[:, :, j] += mu
        self._add_jumps(dx, state, regs, rng)
        s0 = np.array([m.start_price for m in self.models])
        prices = np.empty((n_paths, n_steps + 1, k))
        prices[:, 0] = s0
        np.cumsum(dx, axis=1, out=dx)
        prices[:, 1:] = draws.exp(dx)
        prices[:, 1:] *= s0
        return Paths(self.assets, prices, self.step_ms, self.start_ms, state)

    def _correlate(self, z: FloatArray) -> FloatArray:
        """``L z`` per step, as elementwise products summed in a fixed order (no BLAS)."""
        lo = self._chol
        e = np.zeros_like(z)
        for i in range(z.shape[2]):
            for j in range(i + 1):
                if lo[i][j] != 0.0:
                    e[:, :, i] += lo[i][j] * z[:, :, j]
        return e

    def _add_jumps(
        self, dx: FloatArray, state: npt.NDArray[np.int8] | None, regs: Sequence[Regime], rng: np.random.Generator
    ) -> None:
        lam = np.array([m.params.lam_per_year for m in self.models]) * self.dt_years  # per step, base regime
        if not np.any(lam > 0.0):
            return
        jscale = np.array([r.jump_scale for r in regs])
        which = np.zeros(dx.shape[:2], dtype=np.int64) if state is None else state.astype(np.int64)
        if self.common_jumps:
            top = float(lam.max())
            arrivals = draws.poisson(draws.uniforms(rng, dx.shape[:2]), top * jscale, which)
            counts = np.zeros(dx.shape, dtype=np.int64)
            for level in range(1, int(arrivals.max(initial=0)) + 1):
                cells = np.flatnonzero(arrivals.reshape(-1) >= level)
                u = draws.uniforms(rng, (cells.size, dx.shape[2]))
                counts.reshape(-1, dx.shape[2])[cells] += u < lam / top
        else:
            u = draws.uniforms(rng, dx.shape)
            counts = np.stack([draws.poisson(u[:, :, j], lam[j] * jscale, which) for j in range(dx.shape[2])], axis=2)
        for j, m in enumerate(self.models):
            dx[:, :, j] += _jump_sums(m.params, counts[:, :, j], rng)


def _garch_scale(e: FloatArray, g: GarchParams) -> None:
    """Scale innovations in place by ``sqrt(h_t)``: ``h_0 = 1``, ``h_{t+1} = (1 - a - b) + a h_t z_t^2 + b h_t``."""
    w = 1.0 - g.alpha - g.beta
    h = np.ones((e.shape[0], e.shape[2]))
    for t in range(e.shape[1]):
        e[:, t] *= np.sqrt(h)
        h = w + g.alpha * (e[:, t] * e[:, t]) + g.beta * h


def _jump_sums(params: ModelParams, counts: IntArray, rng: np.random.Generator) -> FloatArray:
    """The sum of ``counts`` log jumps in each cell (Merton: one normal per cell with a jump; Kou: one
    side and one size per jump)."""
    out = np.zeros(counts.shape)
    flat = out.reshape(-1)
    n = counts.reshape(-1)
    if isinstance(params, MertonParams):
        cells = np.flatnonzero(n)
        k = n[cells].astype(np.float64)
        flat[cells] = k * params.jump_mean + np.sqrt(k) * params.jump_std * draws.normal(rng, cells.size)
    elif isinstance(params, KouParams):
        for level in range(1, int(n.max(initial=0)) + 1):
            cells = np.flatnonzero(n >= level)
            up = draws.uniforms(rng, cells.size) < params.p_up
            size = -draws.log(draws.uniforms(rng, cells.size))
            flat[cells] += np.where(up, size / params.eta_up, -size / params.eta_down)
    return out


def calibrate(
    history: AlignedHistory,
    model: Literal["gbm", "merton", "kou"] = "gbm",
    regimes: RegimeChain | None = None,
    garch: GarchParams | None = None,
    common_jumps: bool = True,
) -> MonteCarlo:
    """A Monte Carlo fitted to ``history``: per asset GBM moments of the log returns (or the Merton/Kou
    maximum-likelihood fit of :mod:`~fluidmargin.risk.stats.jump_fit`, which needs 500 returns), the
    correlation of the same returns, start prices the last closes, the history's step."""
    if model not in ("gbm", "merton", "kou"):
        raise ValidationError(f"model must be gbm, merton or kou, not {model!r}")
    x = history.log_returns()
    corr = correlation_from_returns(x, history.assets)
    dt = history.interval_ms / MS_PER_YEAR
    out = []
    for j, a in enumerate(history.assets):
        col = x[:, j]
        params: ModelParams
        if model == "gbm":
            mean = math.fsum(col.tolist()) / len(col)
            var = math.fsum(((col - mean) ** 2).tolist()) / (len(col) - 1)
            params = GbmParams(mean / dt, math.sqrt(var / dt))
        else:
            params = (fit_merton if model == "merton" else fit_kou)(col, dt).params
        out.append(AssetModel(a, float(history.close[-1, j]), params))
    return MonteCarlo(tuple(out), corr, regimes, garch, common_jumps, history.interval_ms)
