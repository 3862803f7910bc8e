"""Tier models of other venues, built from their published parameters (pure builders, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, QUOTE_DECIMALS, Rounding, div_round, parse_decimal
from fluidmargin.model.instruments import Bracket, BracketModel


def _ppm(x: Any, name: str) -> int:
    return parse_decimal(x, 6, Rounding.CEIL, name)  # rates round up: requirements never shrink


def _quote(x: Any, name: str) -> int:
    return parse_decimal(x, QUOTE_DECIMALS, Rounding.FLOOR, name)


def binance(rows: Iterable[Mapping[str, Any]], name: str = "binance") -> BracketModel:
    """From Binance brackets: dicts with notional floor, maint ratio, cum and max leverage.

    Accepts both the leverageBracket API names (notionalFloor, maintMarginRatio, cum,
    initialLeverage) and ccxt/freqtrade's (minNotional, maintenanceMarginRate, maintAmt,
    maxLeverage) and this project's (notional_floor, maint_margin_ratio, maint_amount_cum,
    max_leverage).
    """
    out = []
    for r in rows:
        floor = r.get("notional_floor", r.get("minNotional", r.get("notionalFloor")))
        mmr = r.get("maint_margin_ratio", r.get("maintenanceMarginRate", r.get("maintMarginRatio")))
        cum = r.get("maint_amount_cum", r.get("maintAmt", r.get("cum", 0)))
        lev = r.get("max_leverage", r.get("maxLeverage", r.get("initialLeverage")))
        if floor is None or mmr is None or lev is None:
            raise ValidationError(f"{name}: bracket {dict(r)} lacks floor, rate or leverage")
        out.append(
            Bracket(
                floor_quote_q=_quote(floor, "notional_floor"),
                mmr_ppm=_ppm(mmr, "maint_margin_ratio"),
                cum_quote_q=_quote(cum, "maint_amount_cum"),
                max_leverage=int(Decimal(str(lev))),
            )
        )
    return BracketModel(name=name, brackets=tuple(out))


def single_rate(mmr: Any, cum: Any = 0, max_leverage: int = 125, name: str = "custom", **kw: Any) -> BracketModel:
    """One bracket: a flat maintenance rate and maintenance amount."""
    return BracketModel(
        name=name,
        brackets=(Bracket(0, _ppm(mmr, "mmr"), _quote(cum, "maintenance_amount"), max_leverage),),
        **kw,
    )


def hyperliquid(tiers: Sequence[tuple[Any, int]], name: str = "hyperliquid") -> BracketModel:
    """Hyperliquid margin tiers: (notional lower bound, max leverage) pairs.

    Maintenance rate is half the initial rate at the tier's max leverage, 1/(2 maxLev), rounded up
    to a ppm; the maintenance deduction keeps the requirement continuous:
    deduction_n = deduction_{n-1} + lower_bound_n * (mmr_n - mmr_{n-1}).
    """
    brackets: list[Bracket] = []
    cum = 0
    prev_mmr = 0
    for i, (lower, max_lev) in enumerate(tiers):
        if max_lev <= 0:
            raise ValidationError(f"{name}: max leverage must be positive")
        mmr = div_round(PPM, 2 * int(max_lev), Rounding.CEIL)
        lower_q = _quote(lower, "lower_bound")
        if i:
            cum += div_round(lower_q * (mmr - prev_mmr), PPM, Rounding.FLOOR)
        brackets.append(Bracket(lower_q, mmr, cum, int(max_lev)))
        prev_mmr = mmr
    return BracketModel(name=name, brackets=tuple(brackets))


def dydx(
    imf: Any, maintenance_fraction: Any, oi_lower: Any = None, oi_upper: Any = None, name: str = "dydx"
) -> BracketModel:
    """dYdX v4 liquidity tier: IMF, MMF = IMF * maintenance fraction, open-interest-scaled IMF."""
    imf_ppm = _ppm(imf, "imf")
    mmf_ppm = div_round(imf_ppm * _ppm(maintenance_fraction, "maintenance_fraction"), PPM, Rounding.CEIL)
    max_lev = max(1, div_round(PPM, imf_ppm, Rounding.CEIL))  # so 1/max_lev never exceeds the IMF
    if oi_upper is not None and _quote(oi_upper, "oi_upper") == 0:
        oi_lower = oi_upper = None  # dYdX: an upper cap of 0 switches open-interest scaling off
    return BracketModel(
        name=name,
        brackets=(Bracket(0, mmf_ppm, 0, max_lev),),
        imr_floor_ppm=imf_ppm,
        oi_lower_quote_q=None if oi_lower is None else _quote(oi_lower, "oi_lower"),
        oi_upper_quote_q=None if oi_upper is None else _quote(oi_upper, "oi_upper"),
    )


def drift(imr: Any, mmr: Any, imf_factor: Any, name: str = "drift") -> BracketModel:
    """Drift v2 perp market: base IMR/MMR, and an IMF factor that grows margin with sqrt(size)."""
    imr_ppm = _ppm(imr, "imr")
    return BracketModel(
        name=name,
        brackets=(Bracket(0, _ppm(mmr, "mmr"), 0, max(1, div_round(PPM, imr_ppm, Rounding.CEIL))),),
        imr_floor_ppm=imr_ppm,
        sqrt_imf_factor_ppm=parse_decimal(imf_factor, 6, Rounding.CEIL, "imf_factor"),
    )


# Published defaults used by `fluidmargin quote` presets and the demo.
BINANCE_BTCUSDT_2024 = (
    # notional floor, maint ratio, cum, max leverage: Binance BTCUSDT, in force 2024-05-30 .. 2024-10-24
    # (the last table of ../shared/data/vectors/binance_leverage_brackets_btc_eth_history.json)
    (0, "0.004", 0, 125),
    (50_000, "0.005", 50, 100),
    (600_000, "0.0065", 950, 75),
    (3_000_000, "0.01", 11_450, 50),
    (12_000_000, "0.02", 131_450, 25),
    (70_000_000, "0.025", 481_450, 20),
    (100_000_000, "0.05", 2_981_450, 10),
    (230_000_000, "0.1", 14_481_450, 5),
    (480_000_000, "0.125", 26_481_450, 4),
    (600_000_000, "0.15", 41_481_450, 3),
    (800_000_000, "0.25", 121_481_450, 2),
    (1_200_000_000, "0.5", 421_481_450, 1),
)
HYPERLIQUID_MAINNET_TIERS = {"BTC": ((0, 40), (150_000_000, 20)), "ETH": ((0, 25), (100_000_000, 15))}


def binance_btcusdt() -> BracketModel:
    rows = [
        {"notional_floor": f, "maint_margin_ratio": m, "maint_amount_cum": c, "max_leverage": lev}
        for f, m, c, lev in BINANCE_BTCUSDT_2024
    ]
    return binance(rows, "binance-btcusdt")
