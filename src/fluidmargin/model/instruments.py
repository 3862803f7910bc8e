"""Immutable instruments and their frozen configuration.

An instrument kind is a small frozen dataclass with a ``kind`` tag; the registry in
:data:`INSTRUMENT_KINDS` lets a later module (options) add a kind without touching this one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, NS_PER_S, PPM

# --- ranges of settings ----------------------------------------------------------------------------
# Each config class declares the inclusive range of its integer settings once, in ``RANGES``; they are
# checked when the config is built: on start-up, and on an operator's change (the engine rebuilds the
# config with the new value), so both paths refuse the same values with the same reason.

MAX_AMOUNT_Q = MAX_QUANTUMS // 4  # the largest balance or amount the engine takes (int64 columns, with room)
DAY_S = 86_400
DAY_NS = DAY_S * NS_PER_S
FLAG = (0, 1)  # a flag: false or true in a config, 0 or 1 in a change
Ranges = dict[str, tuple[int, int]]


def check_range(where: str, name: str, value: object, lo: int, hi: int) -> None:
    """Refuse ``value`` unless it is an integer in [lo, hi]; the reason names the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationError(f"{where}: {name} must be in [{lo}, {hi}], got {value!r}")


def check_ranges(obj: Any, where: str) -> None:
    """Check every setting ``type(obj).RANGES`` declares (a flag must be a bool)."""
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for name, (lo, hi) in type(obj).RANGES.items():
        value = getattr(obj, name)
        if isinstance(defaults.get(name), bool):
            if not isinstance(value, bool):
                raise ValidationError(f"{where}: {name} must be in [0, 1] (a flag: false or true), got {value!r}")
            continue
        check_range(where, name, value, lo, hi)


# --- margin tier models (configuration only; the maths lives in fluidmargin.risk.perp.margin) -------


@dataclass(frozen=True, slots=True)
class Bracket:
    """One Binance-style bracket: MM = notional * mmr - cum for notional >= floor."""

    RANGES: ClassVar[Ranges] = {
        "floor_quote_q": (0, MAX_AMOUNT_Q),
        "mmr_ppm": (1, PPM),
        "cum_quote_q": (0, MAX_AMOUNT_Q),  # a market also keeps it <= floor x mmr (PerpetualMarket)
        "max_leverage": (1, PPM),
    }

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

    RANGES: ClassVar[Ranges] = {
        "imr_floor_ppm": (0, PPM),
        "sqrt_imf_factor_ppm": (0, PPM),
        "close_fee_ppm": (0, PPM - 1),
        "mm_on_entry": FLAG,
    }

    def __post_init__(self) -> None:
        if not self.brackets:
            raise ValidationError(f"margin model {self.name}: no brackets")
        check_ranges(self, f"margin model {self.name}")
        for i, b in enumerate(self.brackets):
            for name, (lo, hi) in Bracket.RANGES.items():
                check_range(f"margin model {self.name}", f"brackets.{i}.{name}", getattr(b, name), lo, hi)
        if self.brackets[0].floor_quote_q != 0:
            raise ValidationError(f"margin model {self.name}: first bracket must start at 0")
        prev = None
        for b in self.brackets:
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


def cum_max_quote_q(b: Bracket) -> int:
    """The largest maintenance amount a market's bracket may deduct: maintenance at its floor stays >= 0."""
    return b.floor_quote_q * b.mmr_ppm // PPM  # floor division: rounds the allowance down


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

    RANGES: ClassVar[Ranges] = {
        "max_staleness_ns": (1, 365 * DAY_NS),
        "max_jump_ppm": (0, 10 * PPM),
        "min_confidence_ppm": (0, PPM),
        "max_divergence_ppm": (0, PPM),
        "min_sources": (1, 1000),
        "allow_margin": (0, 5),  # a risk.oracle.Validity
        "allow_liquidate": (0, 5),
        "allow_open": (0, 5),
        "min_sources_liquidation": (1, 1000),
        "single_source_liquidation": FLAG,
        "jump_window_ns": (0, 365 * DAY_NS),
        "reanchor_prints": (0, 10_000),  # 0: no automatic re-anchoring
        "reanchor_after_ns": (0, 365 * DAY_NS),
        "reanchor_tolerance_ppm": (0, PPM),
        "divergence_halt_ns": (0, 365 * DAY_NS),
    }

    max_staleness_ns: int = 120 * 10**9
    max_jump_ppm: int = 250_000  # a valid price may move at most 25 % against the last one
    min_confidence_ppm: int = 900_000
    max_divergence_ppm: int = 20_000  # sources further than 2 % from the median are outliers
    min_sources: int = 1  # fresh sources an index needs at all (a single source may mark)
    aggregation: Literal["median", "mean"] = "median"
    # the worst validity (see risk.oracle.Validity) each action tolerates
    allow_margin: int = 1  # STALE still margins (last valid price)
    allow_liquidate: int = 1
    allow_open: int = 0  # opening risk / withdrawing needs a fresh, valid price
    # liquidation-grade prices: an index agreed by this many sources, unless the venue opts in to one
    min_sources_liquidation: int = 2
    single_source_liquidation: bool = False  # a venue with one feed (e.g. a candle replay) may choose it
    # the jump limit holds against every index within this window, not only the last (0: the last only)
    jump_window_ns: int = 60 * 10**9
    # re-anchoring: prints refused as a jump, each within the tolerance of the one before, adopt their
    # level once there are reanchor_prints of them spanning reanchor_after_ns (0 prints: never)
    reanchor_prints: int = 3
    reanchor_after_ns: int = 60 * 10**9
    reanchor_tolerance_ppm: int = 20_000
    # a source set aside for divergence halts new risk at most this long (it stays set aside)
    divergence_halt_ns: int = 120 * 10**9

    def __post_init__(self) -> None:
        check_ranges(self, "oracle")
        if self.aggregation not in ("median", "mean"):
            raise ValidationError(f"oracle: aggregation must be median or mean, not {self.aggregation!r}")


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

    RANGES: ClassVar[Ranges] = {
        "buf_ppm": (PPM, 2 * PPM),  # the mirrored short price stays positive
        "tail_s": (0, 7 * DAY_S),
        "cusp_ppm": (0, PPM),
        "tau_s": (1, 7 * DAY_S),
        "cut_ppm": (1, PPM),
        "step_s": (1, DAY_S),
        "chip_ppm": (0, PPM),
        "tip_quote_q": (0, MAX_AMOUNT_Q),
    }

    def __post_init__(self) -> None:
        check_ranges(self, "auction")


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

    RANGES: ClassVar[Ranges] = {
        "daily_volume_base_q": (1, MAX_AMOUNT_Q),
        "sigma_ppm": (0, 10 * PPM),  # daily volatility
        "coefficient_ppm": (0, 100 * PPM),
    }

    def __post_init__(self) -> None:
        if self.model not in ("sqrt", "book"):
            raise ValidationError("impact model must be sqrt or book")
        check_ranges(self, "impact")
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

    RANGES: ClassVar[Ranges] = {
        "batch": FLAG,
        "backstop": FLAG,
        "backstop_discount_ppm": (0, PPM - 1),
        "own_fund": FLAG,
        "own_fund_quote_q": (0, MAX_AMOUNT_Q),
        "adl": FLAG,
    }

    def __post_init__(self) -> None:
        if self.execution not in ("mark", "impact", "auction"):
            raise ValidationError(f"liquidation execution must be mark, impact or auction, not {self.execution!r}")
        check_ranges(self, "liquidation")
        if self.own_fund_quote_q and not self.own_fund:
            raise ValidationError("liquidation: own_fund_quote_q needs own_fund")


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

    RANGES: ClassVar[Ranges] = {"liquidation_fee_ppm": (0, PPM - 1)}

    def __post_init__(self) -> None:
        if not 0 <= self.size_decimals <= 12:
            raise ValidationError(f"market {self.symbol}: size_decimals must be in [0, 12]")
        if not 0 < self.tick_price_q < MAX_QUANTUMS:
            raise ValidationError(f"market {self.symbol}: tick must be positive")
        check_ranges(self, f"market {self.symbol}")
        for i, b in enumerate(self.margin.brackets):
            # the maintenance amount never deducts more than the bracket's floor carries (a quote of one
            # bracket of a table may; a market's table starts at 0)
            check_range(f"market {self.symbol}", f"margin.brackets.{i}.cum_quote_q", b.cum_quote_q, 0,
                        cum_max_quote_q(b))  # fmt: skip


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
