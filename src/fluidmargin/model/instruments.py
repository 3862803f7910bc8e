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
class AuctionSpec:
    """Dutch auction of liquidated positions (MakerDAO Clipper/abaci parameters, in ppm).

    The price starts at ``buf`` x the mark (a long is sold from above, a short bought back from
    below: mirrored around the mark) and moves in the bidders' favour along ``curve``; past ``tail_s``
    seconds or once the premium left is below ``cusp`` of the start, the auction is stale and resets
    (or the backstop vault takes it over). Keeper incentive: ``tip`` + ``chip`` x tab, from the penalty.
    """

    curve: Literal["linear", "stairstep_exponential", "exponential"] = "linear"
    buf_ppm: int = 1_020_000  # start 2 % through the mark
    tail_s: int = 600
    cusp_ppm: int = 950_000
    tau_s: int = 1_200  # linear: reaches 0 after tau
    cut_ppm: int = 990_000  # exponential: per-second (or per-step) factor
    step_s: int = 10
    chip_ppm: int = 1_000  # 0.1 % of the tab
    tip_quote_q: int = 0

    def __post_init__(self) -> None:
        if not PPM <= self.buf_ppm <= 2 * PPM:
            raise ValidationError("auction buf_ppm must be in [1e6, 2e6] (the mirrored short price stays positive)")
        if not 0 <= self.cusp_ppm <= PPM or not 0 < self.cut_ppm <= PPM:
            raise ValidationError("auction cusp_ppm must be in [0, 1e6] and cut_ppm in (0, 1e6]")
        for name in ("tail_s", "tau_s", "step_s", "chip_ppm", "tip_quote_q"):
            if getattr(self, name) < 0:
                raise ValidationError(f"auction {name} must be >= 0")
        if self.tau_s == 0 or self.step_s == 0:
            raise ValidationError("auction tau_s and step_s must be positive")


@dataclass(frozen=True, slots=True)
class ImpactSpec:
    """How a liquidation order moves the market: square-root impact or a depth curve.

    ``sqrt``: price moves by coefficient x sigma x sqrt(size / daily volume). ``book``: levels of
    (distance from the mark in ppm, size) walked best first; what is left fills at the last level.
    """

    model: Literal["sqrt", "book"] = "sqrt"
    daily_volume_base_q: int = 10**14  # 1e6 BTC at 8 decimals
    sigma_ppm: int = 30_000
    coefficient_ppm: int = 1_000_000
    book: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.model not in ("sqrt", "book"):
            raise ValidationError("impact model must be sqrt or book")
        if self.daily_volume_base_q <= 0 or self.sigma_ppm < 0 or self.coefficient_ppm < 0:
            raise ValidationError("impact: daily volume must be positive, sigma and coefficient >= 0")
        if self.model == "book" and not self.book:
            raise ValidationError("impact: a book model needs levels")
        for off, qty in self.book:
            if not 0 <= off < PPM or qty <= 0:
                raise ValidationError("impact: book levels need 0 <= distance < 1e6 ppm and positive size")


@dataclass(frozen=True, slots=True)
class LiquidationPolicy:
    """How a market's liquidations are executed once sized (the waterfall, per market).

    ``execution``: ``mark`` (the clearing takes the position at the mark), ``impact`` (sent to the
    market, slippage per ``impact``) or ``auction`` (a Dutch auction per ``auction``). ``batch`` nets a
    tick's closes (longs against shorts) and executes only the net. ``backstop``: the vault takes
    over stale auctions. ``own_fund``: the market has its own insurance fund (seeded with
    ``own_fund_quote_q``). ``adl``: auto-deleverage when the fund cannot cover a shortfall.
    """

    execution: Literal["mark", "impact", "auction"] = "mark"
    batch: bool = False
    auction: AuctionSpec = field(default_factory=AuctionSpec)
    impact: ImpactSpec = field(default_factory=ImpactSpec)
    backstop: bool = False
    backstop_discount_ppm: int = 20_000
    own_fund: bool = False
    own_fund_quote_q: int = 0
    adl: bool = True

    def __post_init__(self) -> None:
        if self.execution not in ("mark", "impact", "auction"):
            raise ValidationError(f"liquidation execution must be mark, impact or auction, not {self.execution!r}")
        if not 0 <= self.backstop_discount_ppm < PPM:
            raise ValidationError("backstop_discount_ppm must be in [0, 1e6)")
        if self.own_fund_quote_q < 0 or (self.own_fund_quote_q and not self.own_fund):
            raise ValidationError("own_fund_quote_q must be >= 0 and needs own_fund")


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
    liquidation: LiquidationPolicy = field(default_factory=LiquidationPolicy)
    kind: Literal["perpetual"] = "perpetual"

    def __post_init__(self) -> None:
        if not 0 <= self.size_decimals <= 12:
            raise ValidationError(f"market {self.symbol}: size_decimals must be in [0, 12]")
        if not 0 < self.tick_price_q < MAX_QUANTUMS:
            raise ValidationError(f"market {self.symbol}: tick must be positive")
        if not 0 <= self.liquidation_fee_ppm < PPM:
            raise ValidationError(f"market {self.symbol}: liquidation_fee_ppm must be in [0, 1e6)")


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """A listed European option series on ``underlying``, cash-settled in the quote asset at expiry.

    ``strike_price_q`` in price quantums (1e-8 quote per whole unit of the underlying); a position is
    ``size_base_q`` contracts at ``10**-size_decimals`` (one contract = one unit of the underlying). The
    premium ``price_q`` of a fill is per whole contract, also in price quantums. Settlement pays the
    intrinsic value at the underlying's index at ``expiry_ns``. ``liquidation_fee_ppm`` is the penalty on
    the premium value of a liquidated option position.
    """

    symbol: str
    underlying: str
    strike_price_q: int
    expiry_ns: int
    right: Literal["call", "put"]
    size_decimals: int = 4
    liquidation_fee_ppm: int = 5_000
    kind: Literal["option"] = "option"

    def __post_init__(self) -> None:
        if not self.symbol or not self.underlying:
            raise ValidationError("option: symbol and underlying must be non-empty")
        for name in ("strike_price_q", "expiry_ns", "size_decimals", "liquidation_fee_ppm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValidationError(f"option {self.symbol}: {name} must be an integer")
        if not 0 < self.strike_price_q < MAX_QUANTUMS:
            raise ValidationError(f"option {self.symbol}: strike must be positive, got {self.strike_price_q}")
        if not 0 < self.expiry_ns < MAX_QUANTUMS:
            raise ValidationError(f"option {self.symbol}: expiry_ns must be positive")
        if self.right not in ("call", "put"):
            raise ValidationError(f"option {self.symbol}: right must be call or put, not {self.right!r}")
        if not 0 <= self.size_decimals <= 12:
            raise ValidationError(f"option {self.symbol}: size_decimals must be in [0, 12]")
        if not 0 <= self.liquidation_fee_ppm < PPM:
            raise ValidationError(f"option {self.symbol}: liquidation_fee_ppm must be in [0, 1e6)")

    @property
    def is_call(self) -> bool:
        return self.right == "call"


Instrument = PerpetualMarket | OptionSpec
INSTRUMENT_KINDS: dict[str, type] = {"perpetual": PerpetualMarket, "option": OptionSpec}
