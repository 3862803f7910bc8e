"""Ready-made venue configurations for the demo, replays, the evaluation harness and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import QUOTE_SCALE
from fluidmargin.model.config import BackstopSpec, EngineConfig
from fluidmargin.model.instruments import (
    AuctionSpec,
    BracketModel,
    CollateralAsset,
    FundingParams,
    ImpactSpec,
    LiquidationPolicy,
    OraclePolicy,
    PerpetualMarket,
    YieldSpec,
)
from fluidmargin.risk.perp import presets
from fluidmargin.sim.candles import Candles
from fluidmargin.sim.scenarios import LIQUIDATIONS, replay_policies

USD = CollateralAsset("USD", 6, 1_000_000, kind="quote")
PRESETS = ("binance", "hyperliquid", "dydx", "drift")  # the tier presets margin_model knows


def margin_model(preset: str, asset: str = "BTC") -> BracketModel:
    """A named preset's tier model for ``asset`` (binance, hyperliquid, dydx, drift)."""
    if preset == "binance":
        return presets.binance_btcusdt()
    if preset == "hyperliquid":
        return presets.hyperliquid(presets.HYPERLIQUID_MAINNET_TIERS.get(asset, ((0, 20),)))
    if preset == "dydx":
        # dYdX v4 "large-cap" liquidity tier: IMF 5 %, maintenance fraction 60 %
        return presets.dydx("0.05", "0.6", 20_000_000, 50_000_000)
    if preset == "drift":
        # Drift SOL/BTC-like perp: IMR 10 %, MMR 5 %, imf factor 0.0005 (its default majors)
        return presets.drift("0.1", "0.05", "0.0005")
    raise ValueError(f"unknown preset {preset!r}")


def perp_venue(
    assets: tuple[str, ...] = ("BTC", "ETH"),
    preset: str = "binance",
    insurance_fund_usd: int = 1_000_000,
    funding_source: str = "computed",
    max_jump_ppm: int = 250_000,
    staleness_s: int = 120,
    yield_collateral: bool = False,
    liquidation: str = "close_at_mark",
    policies: dict[str, LiquidationPolicy] | None = None,
    backstop: BackstopSpec | None = None,
    single_source_liquidation: bool = False,
) -> EngineConfig:
    """USD-margined perpetuals on ``assets`` with one shared tier preset.

    ``policies`` gives a market's liquidation waterfall by base asset (default: execution at mark).
    The oracle liquidates only on an index two sources agree on, unless ``single_source_liquidation``
    (a venue with one feed, such as a replay of historical candles, opts in).
    """
    policies = policies or {}
    markets = tuple(
        PerpetualMarket(
            symbol=f"{a}-PERP",
            base_asset=a,
            size_decimals=8,
            margin=margin_model(preset, a),
            funding=FundingParams(source=funding_source),  # type: ignore[arg-type]
            liquidation=policies.get(a, LiquidationPolicy()),
        )
        for a in assets
    )
    coll = [USD]
    if yield_collateral:
        coll.append(
            CollateralAsset(
                "wstETH",
                9,  # gwei: int64 balances hold up to 4.6e9 tokens at this scale
                900_000,
                price_asset="WSTETH",
                kind="yield",
                yield_spec=YieldSpec("ETH", 10**18, 35_000, 0),
            )
        )
    policy = OraclePolicy(
        max_staleness_ns=staleness_s * 10**9,
        max_jump_ppm=max_jump_ppm,
        single_source_liquidation=single_source_liquidation,
    )
    return EngineConfig(
        quote="USD",
        collateral=tuple(coll),
        markets=markets,
        default_oracle=policy,
        insurance_fund_quote_q=insurance_fund_usd * QUOTE_SCALE,
        liquidation=liquidation,
        backstop=backstop,
    )


def waterfall_venue(
    assets: tuple[str, ...] = ("BTC", "ETH"),
    insurance_fund_usd: int = 100_000,
    preset: str = "binance",
    single_source_liquidation: bool = False,
) -> EngineConfig:
    """The full waterfall: partial closes, batched per tick; BTC by Dutch auction with the backstop
    vault behind it, ETH sent to the market under square-root impact with its own insurance fund."""
    policies = {
        "BTC": LiquidationPolicy(
            execution="auction",
            batch=True,
            auction=AuctionSpec(curve="exponential", buf_ppm=1_010_000, tail_s=300, cusp_ppm=960_000, cut_ppm=999_000),
            backstop=True,
        ),
        "ETH": LiquidationPolicy(
            execution="impact",
            batch=True,
            impact=ImpactSpec("sqrt", daily_volume_base_q=2 * 10**14, sigma_ppm=40_000),
            own_fund=True,
            own_fund_quote_q=insurance_fund_usd * QUOTE_SCALE // 10,
        ),
    }
    return perp_venue(
        assets,
        preset=preset,
        insurance_fund_usd=insurance_fund_usd,
        liquidation="partial",
        policies=policies,
        backstop=BackstopSpec(),
        single_source_liquidation=single_source_liquidation,
    )


def replay_venue(
    candles: Mapping[str, Candles],
    liquidation: str = "close_at_mark",
    preset: str = "binance",
    insurance_usd: int = 1_000_000,
    funding_source: str = "computed",
    max_jump_ppm: int = 250_000,
) -> EngineConfig:
    """The venue of a replay: ``perp_venue`` on the replayed assets, liquidating per ``liquidation``
    (``close_at_mark``, ``partial``, or ``waterfall``: partial, batched, impact, ADL; see
    :func:`~fluidmargin.sim.scenarios.replay_policies`). The config is what a ``--log`` header stores.

    A replay has one price feed (the candles): it opts in to liquidating on a single source, a venue
    choice (a live venue's default needs two agreeing sources)."""
    if liquidation not in LIQUIDATIONS:
        raise ValidationError(f"liquidation must be one of {', '.join(LIQUIDATIONS)}, not {liquidation!r}")
    return perp_venue(
        tuple(candles),
        preset=preset,
        insurance_fund_usd=insurance_usd,
        funding_source=funding_source,
        max_jump_ppm=max_jump_ppm,
        liquidation="close_at_mark" if liquidation == "close_at_mark" else "partial",
        policies=replay_policies(candles) if liquidation == "waterfall" else None,
        single_source_liquidation=True,
    )
