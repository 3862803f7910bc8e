"""Seeded account populations, built as one :class:`~fluidmargin.model.events.AccountsSeeded` event.

Every account holds 1-3 positions in distinct markets, opened at the current mark. Deposits cover
each position's initial margin at its leverage (mirroring :func:`fluidmargin.risk.perp.margin.initial_ratio`
in floats: brackets, leverage caps, Drift's size premium, dYdX's open-interest scaling) with a safety
margin of 1 % + 4 quantums, plus a random cushion, so the engine's exact check passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.core.units import PPM, PRICE_DECIMALS, QUOTE_DECIMALS, QUOTE_SCALE
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import PerpetualMarket

SAFETY = 0.01  # relative head-room over the float initial margin
SLACK_Q = 4  # quantums per position (rounding of cost, value and the requirement)


@dataclass(frozen=True, slots=True)
class PopulationParams:
    """The shape of a population. Leverage weights are heavier at low leverage."""

    leverages: tuple[int, ...] = (2, 3, 5, 10, 20, 25, 50)
    leverage_weights: tuple[float, ...] = (0.20, 0.16, 0.20, 0.22, 0.12, 0.05, 0.05)
    long_share: float = 0.55
    isolated_share: float = 0.25
    positions_weights: tuple[float, ...] = (0.55, 0.30, 0.15)  # P(1), P(2), P(3) positions
    notional_median_usd: float = 4_000.0
    notional_sigma: float = 1.3  # lognormal sigma of a position's notional
    notional_min_usd: float = 20.0
    notional_max_usd: float = 5_000_000.0
    cushion_mean: float = 0.6  # extra collateral, exponential, as a fraction of the initial margin
    iso_cushion_max: float = 0.5  # isolated margin = IM * (1 + U(0, max))

    def __post_init__(self) -> None:
        if len(self.leverages) != len(self.leverage_weights) or min(self.leverages) < 1:
            raise ValidationError("leverages and their weights must match, leverage >= 1")
        if not 1 <= len(self.positions_weights) <= 8:
            raise ValidationError("positions_weights: between 1 and 8 entries")
        for name in ("long_share", "isolated_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValidationError(f"{name} must be within [0, 1]")


def _imf(
    spec: PerpetualMarket, notional_q: np.ndarray, lev: np.ndarray, size_abs: np.ndarray, oi_q: float
) -> np.ndarray:
    """Initial-margin fraction per position (float mirror of margin.initial_ratio)."""
    mdl = spec.margin
    floors = np.array([b.floor_quote_q for b in mdl.brackets], dtype=np.float64)
    maxlev = np.array([b.max_leverage for b in mdl.brackets], dtype=np.float64)
    b = np.searchsorted(floors, notional_q, side="right") - 1
    eff = np.minimum(lev.astype(np.float64), maxlev[np.maximum(b, 0)])
    imf = np.maximum(1.0 / eff, mdl.imr_floor_ppm / PPM)
    if mdl.sqrt_imf_factor_ppm:
        base = np.ceil(imf * PPM)
        size_1e9 = size_abs.astype(np.float64) * 10.0 ** (9 - spec.size_decimals)
        prem = base - np.floor(base / 5) + np.floor(np.sqrt(size_1e9 * 10 + 1)) * mdl.sqrt_imf_factor_ppm / 100_000
        imf = np.maximum(base, prem) / PPM
    if mdl.oi_lower_quote_q is not None and mdl.oi_upper_quote_q is not None:
        scaling = (oi_q - mdl.oi_lower_quote_q) / (mdl.oi_upper_quote_q - mdl.oi_lower_quote_q)
        imf = np.minimum(imf + max(scaling, 0.0) * (1.0 - imf), 1.0)
    return np.minimum(imf, 1.0)


def build_population(
    config: EngineConfig,
    prices_q: Mapping[str, int],
    n_accounts: int,
    seed: int,
    ts_ns: int,
    params: PopulationParams | None = None,
    market_weights: Sequence[float] | None = None,
    first_account_id: int = 1,
    existing_long_oi_base_q: Mapping[str, int] | None = None,
    event_id: str = "",
) -> ev.AccountsSeeded:
    """A seeded population over the markets in ``prices_q`` (symbol -> the mark the engine will hold).

    Positions open at that mark. ``market_weights`` (parallel to ``prices_q``) skews which markets
    accounts trade; ``existing_long_oi_base_q`` is the markets' open interest before the event (it
    raises dYdX-style initial margin).
    """
    p = params or PopulationParams()
    if n_accounts < 1:
        raise ValidationError("n_accounts must be positive")
    specs = {m.symbol: m for m in config.markets}
    symbols = list(prices_q)
    if not symbols:
        raise ValidationError("no markets to trade")
    for s in symbols:
        if s not in specs:
            raise ValidationError(f"unknown market {s!r}")
        if prices_q[s] <= 0:
            raise ValidationError(f"price of {s} must be positive")
    nm = len(symbols)
    w = np.ones(nm) if market_weights is None else np.asarray(market_weights, dtype=np.float64)
    if w.shape != (nm,) or (w <= 0).any():
        raise ValidationError("market_weights must give one positive weight per market")
    rng = make_rng(seed)
    n = n_accounts

    # how many positions, in which markets (weighted sampling without replacement: exponential keys)
    kmax = min(len(p.positions_weights), nm)
    pw = np.asarray(p.positions_weights[:kmax], dtype=np.float64)
    k = rng.choice(np.arange(1, kmax + 1), size=n, p=pw / pw.sum())
    keys = rng.exponential(size=(n, nm)) / w
    order = np.argsort(keys, axis=1, kind="stable")
    take = np.arange(nm)[None, :] < k[:, None]
    chosen = np.where(take, order, nm)  # nm sorts after every real market
    chosen.sort(axis=1)
    pos_acct = np.repeat(np.arange(n, dtype=np.int64), k)
    pos_mi = chosen[chosen < nm].astype(np.int64)  # row-major: grouped by account, markets ascending
    npos = len(pos_acct)

    # side, leverage (capped by the market's maximum), mode, notional
    lw = np.asarray(p.leverage_weights, dtype=np.float64)
    lev = rng.choice(np.asarray(p.leverages, dtype=np.int64), size=npos, p=lw / lw.sum())
    max_lev = np.array([specs[s].margin.brackets[0].max_leverage for s in symbols], dtype=np.int64)
    lev = np.minimum(lev, max_lev[pos_mi])
    side = np.where(rng.random(npos) < p.long_share, 1, -1)
    iso = (rng.random(npos) < p.isolated_share).astype(np.int64)
    notional_usd = np.clip(
        p.notional_median_usd * np.exp(p.notional_sigma * rng.standard_normal(npos)),
        p.notional_min_usd,
        p.notional_max_usd,
    )
    price = np.array([prices_q[s] for s in symbols], dtype=np.int64)[pos_mi]
    sd = np.array([specs[s].size_decimals for s in symbols], dtype=np.int64)[pos_mi]
    size_abs = np.maximum(np.round(notional_usd / (price / 10.0**PRICE_DECIMALS) * 10.0**sd), 1).astype(np.int64)
    size = side * size_abs

    # float initial margin of each position, per market
    notional_q = size_abs * (price / 10.0 ** (sd + PRICE_DECIMALS - QUOTE_DECIMALS))
    im = np.empty(npos, dtype=np.float64)
    for j, s in enumerate(symbols):
        sel = pos_mi == j
        if not sel.any():
            continue
        spec = specs[s]
        long_oi = float((existing_long_oi_base_q or {}).get(s, 0)) + float(size_abs[sel & (side > 0)].sum())
        oi_q = long_oi * prices_q[s] / 10.0 ** (spec.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS)
        im[sel] = np.minimum(_imf(spec, notional_q[sel], lev[sel], size_abs[sel], oi_q), 1.0) * notional_q[sel]
    need = np.ceil(im * (1.0 + SAFETY)) + SLACK_Q
    # isolated margin, and the cross requirement of each account
    iso_margin = np.where(iso == 1, np.ceil(need * (1.0 + p.iso_cushion_max * rng.random(npos))), 0.0)
    cross_need = np.bincount(pos_acct, weights=np.where(iso == 1, 0.0, need), minlength=n)
    iso_sum = np.bincount(pos_acct, weights=iso_margin, minlength=n)
    total_im = np.bincount(pos_acct, weights=im, minlength=n)
    cushion = np.ceil(total_im * rng.exponential(p.cushion_mean, size=n)) + QUOTE_SCALE  # + 1 USD
    deposit = cross_need + iso_sum + cushion
    if deposit.max() >= 2.0**62 / 4:
        raise ValidationError("a deposit would overflow: lower notional_max_usd")
    return ev.AccountsSeeded(
        ts_ns,
        account_ids=list(range(first_account_id, first_account_id + n)),
        deposits_quote_q=deposit.astype(np.int64).tolist(),
        pos_account=pos_acct.tolist(),
        pos_market=[symbols[i] for i in pos_mi.tolist()],
        pos_size_base_q=size.astype(np.int64).tolist(),
        pos_price_q=price.tolist(),
        pos_isolated=iso.tolist(),
        pos_iso_margin_quote_q=iso_margin.astype(np.int64).tolist(),
        pos_leverage=lev.tolist(),
        event_id=event_id,
    )


def population_stats(e: ev.AccountsSeeded, config: EngineConfig) -> dict[str, float]:
    """A few figures about a population (floats, for display)."""
    sd = {m.symbol: m.size_decimals for m in config.markets}
    scale = np.array([10.0 ** (sd[s] + PRICE_DECIMALS) for s in e.pos_market])
    size = np.abs(np.asarray(e.pos_size_base_q, dtype=np.float64))
    notional = size * np.asarray(e.pos_price_q, dtype=np.float64) / scale
    return {
        "accounts": len(e.account_ids),
        "positions": len(e.pos_account),
        "deposits_usd": float(np.sum(np.asarray(e.deposits_quote_q, dtype=np.float64))) / QUOTE_SCALE,
        "notional_usd": float(notional.sum()),
        "isolated_share": float(np.mean(e.pos_isolated)) if e.pos_isolated else math.nan,
        "mean_leverage": float(np.mean(e.pos_leverage)) if e.pos_leverage else math.nan,
    }
