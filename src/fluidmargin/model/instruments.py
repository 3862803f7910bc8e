"""Immutable instruments and their frozen configuration.

An instrument kind is a small frozen dataclass with a ``kind`` tag; the registry in
:data:`INSTRUMENT_KINDS` lets a later module (options) add a kind without touching this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, PPM

# --- margin tier models (configuration only; the maths lives in fluidmargin.risk.margin) -------


@dataclass(frozen=True, slots=True)
class Bracket:
    """One Binance-style bracket: MM = notional * mmr - cum for notional >= floor."""

    floor_quote_q: int
    mmr_ppm: int
    cum_quote_q: int
    max_leverage: int


@dataclass(frozen=True, slots=True)
class BracketModel:
    """Binance-style brackets (rate + maintenance amount); also Hyperliquid, dYdX and flat rates.

    ``oi_imf`` (dYdX-style) scales the initial-margin fraction with the market's open interest
    between ``oi_lower_quote_q`` and ``oi_upper_quote_q`` (base IMF up to 100 %).
    ``sqrt_imf_factor_ppm`` (Drift-style) makes margin grow with the square root of size.
    """

    name: str
    brackets: tuple[Bracket, ...]
    imr_floor_ppm: int = 0
    oi_lower_quote_q: int | None = None
    oi_upper_quote_q: int | None = None
    sqrt_imf_factor_ppm: int = 0  # Drift imf_factor, 1e6 == 1.0
    close_fee_ppm: int = 0  # taker fee charged inside maintenance (Gate/OKX style)
    mm_on_entry: bool = False  # Bybit-simple: maintenance on entry notional

    def __post_init__(self) -> None:
        if not self.brackets:
            raise ValidationError(f"margin model {self.name}: no brackets")
        if self.brackets[0].floor_quote_q != 0:
            raise ValidationError(f"margin model {self.name}: first bracket must start at 0")
        prev = None
        for b in self.brackets:
            if not 0 < b.mmr_ppm <= PPM:
                raise ValidationError(f"margin model {self.name}: mmr_ppm {b.mmr_ppm} outside (0, 1e6]")
            if b.max_leverage <= 0:
                raise ValidationError(f"margin model {self.name}: max_leverage must be positive")
            if prev is not None and b.floor_quote_q <= prev.floor_quote_q:
                raise ValidationError(f"margin model {self.name}: bracket floors must increase")
            prev = b
        if (self.oi_lower_quote_q is None) != (self.oi_upper_quote_q is None):
            raise ValidationError(f"margin model {self.name}: give both open-interest caps or neither")
        if (
            self.oi_lower_quote_q is not None
            and self.oi_upper_quote_q is not None
            and not 0 <= self.oi_lower_quote_q < self.oi_upper_quote_q
        ):
            raise ValidationError(f"margin model {self.name}: need 0 <= oi_lower < oi_upper")


# --- instruments ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class YieldSpec:
    """Yield-bearing collateral: the token is worth ``rate`` base units, accruing linearly in time.

    rate(t) = rate0 * (1 + apr * (t - t0) / year), rounded down; the token is valued at
    min(rate(t), market rate) and, when the market rate is below rate(t) by more than
    ``depeg_threshold_ppm``, an extra ``depeg_haircut_ppm`` applies.
    """

    base_asset: str
    rate0_e18: int  # base units per token, scaled 1e18
    apr_ppm: int
    t0_ns: int
    depeg_threshold_ppm: int = 20_000
    depeg_haircut_ppm: int = 100_000


@dataclass(frozen=True, slots=True)
class CollateralAsset:
    """A collateral asset. ``weight_ppm`` is the haircut weight (1e6 = counted in full)."""

    symbol: str
    decimals: int
    weight_ppm: int
    price_asset: str | None = None  # oracle asset that prices it; None for the quote asset
    yield_spec: YieldSpec | None = None
    kind: Literal["spot", "quote", "yield"] = "spot"

    def __post_init__(self) -> None:
        if not 0 <= self.weight_ppm <= PPM:
            raise ValidationError(f"collateral {self.symbol}: weight_ppm must be in [0, 1e6]")
        if not 0 <= self.decimals <= 12:
            # balances are int64 quantums: at 18 decimals one could hold barely 9 tokens
            raise ValidationError(f"collateral {self.symbol}: decimals must be in [0, 12] (convert at the edge)")


@dataclass(frozen=True, slots=True)
class FundingParams:
    """Funding: rate = clamp(premium + clamp(interest - premium, ±damper), ±cap) per interval."""

    interval_s: int = 8 * 3600
    interest_e9: int = 100_000  # 0.01 % per interval, rate scale 1e9
    damper_e9: int = 500_000  # ±0.05 %
    cap_e9: int = 3_000_000  # ±0.3 % (Binance BTCUSDT cap)
    source: Literal["computed", "published"] = "computed"


@dataclass(frozen=True, slots=True)
class OraclePolicy:
    """Validity thresholds for one asset's prices and which actions each validity allows."""

    max_staleness_ns: int = 120 * 10**9
    max_jump_ppm: int = 250_000  # a valid price may move at most 25 % against the last one
    min_confidence_ppm: int = 900_000
    max_divergence_ppm: int = 20_000  # sources further than 2 % from the median are outliers
    min_sources: int = 1
    aggregation: Literal["median", "mean"] = "median"
    # the worst validity (see risk.oracle.Validity) each action tolerates
    allow_margin: int = 1  # STALE still margins (last valid price)
    allow_liquidate: int = 1
    allow_open: int = 0  # opening risk / withdrawing needs a fresh, valid price


@dataclass(frozen=True, slots=True)
class PerpetualMarket:
    """A linear, quote-margined perpetual swap on ``base_asset``."""

    symbol: str
    base_asset: str
    size_decimals: int
    margin: BracketModel
    tick_price_q: int = 1
    funding: FundingParams = field(default_factory=FundingParams)
    liquidation_fee_ppm: int = 5_000
    mark_rule: Literal["index", "median3"] = "index"
    kind: Literal["perpetual"] = "perpetual"

    def __post_init__(self) -> None:
        if not 0 <= self.size_decimals <= 12:
            raise ValidationError(f"market {self.symbol}: size_decimals must be in [0, 12]")
        if not 0 < self.tick_price_q < MAX_QUANTUMS:
            raise ValidationError(f"market {self.symbol}: tick must be positive")
        if not 0 <= self.liquidation_fee_ppm < PPM:
            raise ValidationError(f"market {self.symbol}: liquidation_fee_ppm must be in [0, 1e6)")


Instrument = PerpetualMarket  # options join this union in a later issue
INSTRUMENT_KINDS: dict[str, type] = {"perpetual": PerpetualMarket}
