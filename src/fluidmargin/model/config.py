"""The engine's frozen configuration and its plain-dict form (for the log header and files)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.instruments import (
    AuctionSpec,
    Bracket,
    BracketModel,
    CollateralAsset,
    FundingParams,
    ImpactSpec,
    LiquidationPolicy,
    OptionSpec,
    OraclePolicy,
    PerpetualMarket,
    YieldSpec,
)

PM_PRESETS = ("derive_pm2",)  # names of risk.portfolio parameter presets (the engine maps them)


@dataclass(frozen=True, slots=True)
class BackstopSpec:
    """The backstop liquidity vault: an engine-held account that LPs fund against shares.

    It takes over positions no auction absorbed, at the market's discount, never beyond
    ``max_notional_quote_q`` in total nor ``max_leverage`` x its equity; LPs' withdrawals are
    claimable ``withdrawal_delay_ns`` after the request.
    """

    account_id: int = 2**62
    max_notional_quote_q: int = 10**15
    max_leverage: int = 5
    withdrawal_delay_ns: int = 24 * 3600 * 10**9

    def __post_init__(self) -> None:
        if not 0 <= self.account_id < 2**63 or self.max_notional_quote_q < 0:
            raise ValidationError("backstop: account_id must be a 64-bit id, max_notional >= 0")
        if self.max_leverage < 1 or self.withdrawal_delay_ns < 0:
            raise ValidationError("backstop: max_leverage >= 1 and withdrawal_delay_ns >= 0")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything that defines a venue: collateral, markets, oracle policies, liquidation knobs."""

    quote: str = "USD"
    collateral: tuple[CollateralAsset, ...] = ()
    markets: tuple[PerpetualMarket, ...] = ()
    oracle: tuple[tuple[str, OraclePolicy], ...] = ()  # per asset; missing assets use the default
    default_oracle: OraclePolicy = field(default_factory=OraclePolicy)
    at_risk_buffer_ppm: int = 200_000  # "at risk" when health < 20 % of maintenance ...
    at_risk_exit_ppm: int = 300_000  # ... and healthy again only at 30 %: a band so statuses do not flap
    insurance_fund_quote_q: int = 0
    liquidation: str = "close_at_mark"  # or "partial": close only what restores the target health
    liquidation_target_ppm: int = 100_000  # partial: equity >= (1 + 10 %) x maintenance afterwards
    liquidation_max_notional_quote_q: int = 0  # partial: at most this notional per position and event (0: no cap)
    liquidation_max_account_notional_quote_q: int = 0  # at most this notional per account and window (0: no cap)
    liquidation_account_window_ns: int = 60 * 10**9
    backstop: BackstopSpec | None = None
    mass_close_min: int = 256  # breaches of one market in one tick from which the exact kernel closes them
    breaker_band_ppm: int = 0  # circuit breaker: halt new risk when the index range within the window
    breaker_window_ns: int = 300 * 10**9  # exceeds this band (0: off); divergent sources always halt
    options: tuple[OptionSpec, ...] = ()  # listed option series (portfolio-margin accounts only)
    portfolio_margin: str = "derive_pm2"  # the portfolio-margin parameter preset (risk.portfolio)

    def __post_init__(self) -> None:
        syms = [c.symbol for c in self.collateral]
        if self.quote not in syms:
            raise ValidationError(f"the quote asset {self.quote} must be listed as collateral")
        if len(set(syms)) != len(syms):
            raise ValidationError("duplicate collateral symbols")
        msyms = [m.symbol for m in self.markets]
        if len(set(msyms)) != len(msyms):
            raise ValidationError("duplicate market symbols")
        if self.liquidation not in ("close_at_mark", "partial"):
            raise ValidationError(f"liquidation must be close_at_mark or partial, not {self.liquidation!r}")
        if self.liquidation_max_notional_quote_q < 0 or self.liquidation_max_account_notional_quote_q < 0:
            raise ValidationError("liquidation caps must be >= 0")
        if self.mass_close_min < 1:
            raise ValidationError("mass_close_min must be >= 1")
        if self.liquidation_account_window_ns <= 0:
            raise ValidationError("liquidation_account_window_ns must be positive")
        if self.breaker_band_ppm < 0 or self.breaker_window_ns <= 0:
            raise ValidationError("breaker_band_ppm must be >= 0 and breaker_window_ns > 0")
        if not 0 <= self.liquidation_target_ppm <= 10 * 1_000_000:
            raise ValidationError("liquidation_target_ppm must be in [0, 1e7]")
        if not 0 <= self.at_risk_buffer_ppm <= self.at_risk_exit_ppm:
            raise ValidationError("need 0 <= at_risk_buffer_ppm <= at_risk_exit_ppm")
        osyms = [o.symbol for o in self.options]
        if len(set(osyms)) != len(osyms) or set(osyms) & set(msyms):
            raise ValidationError("option symbols must be unique and distinct from market symbols")
        perp_assets = {m.base_asset for m in self.markets}
        for o in self.options:
            if o.underlying not in perp_assets:
                raise ValidationError(f"option {o.symbol}: underlying {o.underlying} has no perpetual market")
        if self.portfolio_margin not in PM_PRESETS:
            raise ValidationError(f"portfolio_margin must be one of {sorted(PM_PRESETS)}")
        for m in self.markets:
            if m.liquidation.backstop and self.backstop is None:
                raise ValidationError(f"market {m.symbol}: backstop liquidation needs a backstop vault configured")
            if m.margin.mm_on_entry:
                raise ValidationError(f"market {m.symbol}: entry-notional maintenance is for quotes only")

    def policy(self, asset: str) -> OraclePolicy:
        for a, p in self.oracle:
            if a == asset:
                return p
        return self.default_oracle

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EngineConfig:
        def coll(c: dict[str, Any]) -> CollateralAsset:
            c = dict(c)
            ys = c.pop("yield_spec", None)
            return CollateralAsset(**c, yield_spec=YieldSpec(**ys) if ys else None)

        def model(m: dict[str, Any]) -> BracketModel:
            m = dict(m)
            return BracketModel(**{**m, "brackets": tuple(Bracket(**b) for b in m["brackets"])})

        def policy(p: dict[str, Any] | None) -> LiquidationPolicy:
            if p is None:
                return LiquidationPolicy()
            imp = dict(p.get("impact", {}))
            imp["book"] = tuple(tuple(lv) for lv in imp.get("book", ()))
            return LiquidationPolicy(
                **{**p, "auction": AuctionSpec(**p.get("auction", {})), "impact": ImpactSpec(**imp)}
            )

        def market(m: dict[str, Any]) -> PerpetualMarket:
            m = dict(m)
            return PerpetualMarket(
                **{
                    **m,
                    "margin": model(m["margin"]),
                    "funding": FundingParams(**m["funding"]),
                    "liquidation": policy(m.get("liquidation")),
                }
            )

        try:
            return EngineConfig(
                quote=d["quote"],
                collateral=tuple(coll(c) for c in d["collateral"]),
                markets=tuple(market(m) for m in d["markets"]),
                oracle=tuple((a, OraclePolicy(**p)) for a, p in d.get("oracle", ())),
                default_oracle=OraclePolicy(**d.get("default_oracle", {})),
                at_risk_buffer_ppm=d.get("at_risk_buffer_ppm", 200_000),
                at_risk_exit_ppm=d.get("at_risk_exit_ppm", 300_000),
                insurance_fund_quote_q=d.get("insurance_fund_quote_q", 0),
                liquidation=d.get("liquidation", "close_at_mark"),
                liquidation_target_ppm=d.get("liquidation_target_ppm", 100_000),
                liquidation_max_notional_quote_q=d.get("liquidation_max_notional_quote_q", 0),
                liquidation_max_account_notional_quote_q=d.get("liquidation_max_account_notional_quote_q", 0),
                liquidation_account_window_ns=d.get("liquidation_account_window_ns", 60 * 10**9),
                backstop=BackstopSpec(**d["backstop"]) if d.get("backstop") else None,
                mass_close_min=d.get("mass_close_min", 256),
                breaker_band_ppm=d.get("breaker_band_ppm", 0),
                breaker_window_ns=d.get("breaker_window_ns", 300 * 10**9),
                options=tuple(OptionSpec(**o) for o in d.get("options", ())),
                portfolio_margin=d.get("portfolio_margin", "derive_pm2"),
            )
        except (KeyError, TypeError) as e:
            raise ValidationError(f"malformed engine config: {e}") from None
