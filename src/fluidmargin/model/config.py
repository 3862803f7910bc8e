"""The engine's frozen configuration and its plain-dict form (for the log header and files)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import NS_PER_S, PPM
from fluidmargin.model.instruments import (
    DAY_NS,
    MAX_AMOUNT_Q,
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
    Ranges,
    YieldSpec,
    check_ranges,
    cum_max_quote_q,
)

PM_PRESETS = ("derive_pm2",)  # names of risk.portfolio parameter presets (the engine maps them)
GAP_MODELS = ("merton", "kou", "gbm")  # jump-diffusion models of risk.jumps (gbm: no jumps)


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


_GAP_DECIMAL = re.compile(r"^-?[0-9]{1,20}(\.[0-9]{1,20})?$")
_GAP_NUMBERS = ("sigma", "lam", "mu_j", "sigma_j", "p_up", "eta_up", "eta_down", "horizon_s", "target")
_GAP_JUMP_FIELDS = {"merton": ("lam", "mu_j", "sigma_j"), "kou": ("lam", "p_up", "eta_up", "eta_down"), "gbm": ()}
GAP_MAX_HORIZON_S = 86_400  # a liquidation horizon beyond a day is not one (and would be slow to tabulate)
GAP_MIN_TARGET = 1e-9  # crossing tables resolve probabilities down to 1e-10
GAP_MAX_JUMPS_IN_HORIZON = 20.0  # expected jumps within the horizon (the crossing solver's working range)


def _gap_decimal(value: Any, name: str) -> str:
    """A number or decimal string as a plain decimal string (no exponent): the config's exact form."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValidationError(f"{name}: expected a number or a decimal string, got {type(value).__name__}")
    if isinstance(value, str):
        return value.strip()
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValidationError(f"{name}: {value!r} is not a decimal number") from None
    if not d.is_finite():
        raise ValidationError(f"{name}: {value!r} is not a finite number")
    s = format(d, "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


@dataclass(frozen=True, slots=True)
class GapRiskSpec:
    """A market's gap-risk model: jump-diffusion parameters, liquidation horizon and target probability.

    Numbers are decimal strings (exact in the config and the log header, never JSON floats); the model
    reads them as floats (risk statistics). ``sigma`` annual diffusion vol; ``lam`` jumps per year;
    Merton log jumps ~ Normal(``mu_j``, ``sigma_j``); Kou jumps +Exp(``eta_up``) with probability
    ``p_up``, else -Exp(``eta_down``); ``gbm`` has no jumps. ``horizon_s`` is the liquidation horizon in
    seconds (oracle latency + detection + execution); ``target`` the probability of crossing the
    bankruptcy price within it that the add-on keeps positions under. ``source``: where the numbers
    came from (e.g. the ``fluidmargin fit-jumps`` run).
    """

    model: str
    sigma: str
    horizon_s: str
    target: str
    lam: str = "0"
    mu_j: str = "0"
    sigma_j: str = "0"
    p_up: str = "0"
    eta_up: str = "0"
    eta_down: str = "0"
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or self.model not in GAP_MODELS:
            raise ValidationError(f"gap_risk.model: {self.model!r} is not one of {', '.join(GAP_MODELS)}")
        v: dict[str, float] = {}
        for name in _GAP_NUMBERS:
            text = getattr(self, name)
            if not isinstance(text, str) or not _GAP_DECIMAL.match(text):
                raise ValidationError(f"gap_risk.{name}: {text!r} is not a plain decimal string")
            v[name] = float(text)
            if not math.isfinite(v[name]):
                raise ValidationError(f"gap_risk.{name}: {text} is not finite")
        if not isinstance(self.source, str) or len(self.source) > 1000:
            raise ValidationError("gap_risk.source: expected a string of at most 1000 characters")
        used = _GAP_JUMP_FIELDS[self.model]
        for name in ("lam", "mu_j", "sigma_j", "p_up", "eta_up", "eta_down"):
            if name not in used and v[name] != 0.0:
                raise ValidationError(f"gap_risk.{name}: not a parameter of the {self.model} model")

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValidationError(f"gap_risk.{name}: must be {rule}, got {getattr(self, name)}")

        need(0.001 <= v["sigma"] <= 10.0, "sigma", "in [0.001, 10] (annual volatility)")
        need(0.0 < v["horizon_s"] <= GAP_MAX_HORIZON_S, "horizon_s", f"in (0, {GAP_MAX_HORIZON_S}] seconds")
        need(0.0 < v["target"] < 1.0, "target", "in (0, 1)")
        need(v["target"] >= GAP_MIN_TARGET, "target", f">= {GAP_MIN_TARGET} (the tables' resolution)")
        if self.model != "gbm":
            need(0.0 <= v["lam"] <= 1e7, "lam", "in [0, 1e7] jumps per year")
            jumps_in_horizon = v["lam"] * v["horizon_s"] / (365 * 86_400)
            rule = f"such that lam x horizon <= {GAP_MAX_JUMPS_IN_HORIZON} jumps (the solver's range)"
            need(jumps_in_horizon <= GAP_MAX_JUMPS_IN_HORIZON, "lam", rule)
        if self.model == "merton":
            need(abs(v["mu_j"]) <= 1.0, "mu_j", "in [-1, 1] (mean log jump)")
            need(1e-6 <= v["sigma_j"] <= 1.0 or (v["lam"] == 0.0 and v["sigma_j"] == 0.0), "sigma_j",
                 "in [1e-6, 1] (log-jump std) when lam > 0")  # fmt: skip
        if self.model == "kou":
            need(0.0 <= v["p_up"] <= 1.0, "p_up", "in [0, 1]")
            need(2.0 <= v["eta_up"] <= 1e6, "eta_up", "in [2, 1e6] (1 / mean up-jump)")
            need(2.0 <= v["eta_down"] <= 1e6, "eta_down", "in [2, 1e6] (1 / mean down-jump)")

    def number(self, name: str) -> float:
        """One of the numeric parameters as a float (for the model: risk statistics, not money)."""
        if name not in _GAP_NUMBERS:
            raise KeyError(name)
        return float(getattr(self, name))

    @staticmethod
    def from_dict(d: Any, where: str = "gap_risk") -> GapRiskSpec:
        """A spec from a JSON-like object: numbers or decimal strings; unknown keys are refused."""
        if not isinstance(d, dict):
            raise ValidationError(f"{where}: expected an object")
        known = {f.name for f in dataclasses.fields(GapRiskSpec)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValidationError(f"{where}: unknown field {extra[0]!r} (known: {', '.join(sorted(known))})")
        for k in ("model", "sigma", "horizon_s", "target"):
            if d.get(k) is None:
                raise ValidationError(f"{where}: missing field {k!r}")
        model = d["model"]
        if not isinstance(model, str):
            raise ValidationError(f"{where}.model: expected a string")
        kw: dict[str, Any] = {"model": model.strip().lower(), "source": d.get("source") or ""}
        for k in _GAP_NUMBERS:
            if d.get(k) is not None:
                kw[k] = _gap_decimal(d[k], f"{where}.{k}")
        try:
            return GapRiskSpec(**kw)
        except ValidationError as e:
            raise ValidationError(str(e).replace("gap_risk", where, 1)) from None


@dataclass(frozen=True, slots=True)
class GapRiskConfig:
    """Gap-risk specs: one engine-wide ``default`` and/or per-market ones (a market's own spec wins)."""

    default: GapRiskSpec | None = None
    markets: tuple[tuple[str, GapRiskSpec], ...] = ()

    def __post_init__(self) -> None:
        names = [m for m, _ in self.markets]
        if len(set(names)) != len(names):
            raise ValidationError("gap_risk.markets: a market is listed twice")
        if self.default is None and not self.markets:
            raise ValidationError("gap_risk: give a default spec, per-market specs, or leave gap_risk out")

    def spec_for(self, market: str) -> GapRiskSpec | None:
        """The spec that applies to ``market`` (None: no gap model there)."""
        for m, s in self.markets:
            if m == market:
                return s
        return self.default

    @staticmethod
    def from_dict(d: Any) -> GapRiskConfig:
        """``{"default": spec, "markets": {symbol: spec} or [[symbol, spec], ...]}``, or one bare spec."""
        if not isinstance(d, dict):
            raise ValidationError("gap_risk: expected an object")
        if "model" in d:  # a bare spec: engine-wide
            return GapRiskConfig(default=GapRiskSpec.from_dict(d))
        extra = sorted(set(d) - {"default", "markets"})
        if extra:
            raise ValidationError(f"gap_risk: unknown field {extra[0]!r} (known: default, markets)")
        default = None if d.get("default") is None else GapRiskSpec.from_dict(d["default"], "gap_risk.default")
        raw = d.get("markets") or ()
        pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
        markets = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ValidationError(f"gap_risk.markets[{i}]: expected [symbol, spec]")
            markets.append((pair[0], GapRiskSpec.from_dict(pair[1], f"gap_risk.markets.{pair[0]}")))
        return GapRiskConfig(default, tuple(sorted(markets, key=lambda p: p[0])))


GOVERNANCE_MODES = ("manual", "auto")


@dataclass(frozen=True, slots=True)
class GovernanceSpec:
    """The guardrails on proposals that change risk parameters (``engine/governance.py``).

    ``mode``: ``manual`` (every proposal waits for an admin's approval) or ``auto`` (a proposal may ask to
    activate without one). A proposal activates ``timelock_ns`` after its approval (its submission, when
    automatic), on the first input at or after that time. Within one epoch (event time cut into spans of
    ``epoch_ns``), governance moves a parameter at most ``max_change_ppm`` of its value before the epoch's
    first governance change, all proposals together (from 0 it cannot move it). For ``watch_ns`` after its
    activation a proposal is rolled back, its previous values restored, on the first input after which, since
    its activation, the insurance funds have lost ``rollback_fund_drawdown_quote_q`` or more in total, or
    ``rollback_bad_debt_quote_q`` or more was socialised, or ``rollback_liquidations`` or more positions were
    liquidated (each: 0 turns that check off). An operator's own change of a parameter always wins.
    """

    RANGES: ClassVar[Ranges] = {
        "max_change_ppm": (0, PPM),
        "epoch_ns": (1, 365 * DAY_NS),
        "timelock_ns": (0, 365 * DAY_NS),
        "watch_ns": (0, 365 * DAY_NS),
        "rollback_fund_drawdown_quote_q": (0, MAX_AMOUNT_Q),  # 0: off
        "rollback_bad_debt_quote_q": (0, MAX_AMOUNT_Q),  # 0: off
        "rollback_liquidations": (0, 2**32),  # 0: off
    }

    mode: str = "manual"
    max_change_ppm: int = 100_000  # 10 % per parameter per epoch
    epoch_ns: int = DAY_NS
    timelock_ns: int = 3600 * NS_PER_S
    watch_ns: int = DAY_NS
    rollback_fund_drawdown_quote_q: int = 0
    rollback_bad_debt_quote_q: int = 1  # any socialised loss
    rollback_liquidations: int = 0

    def __post_init__(self) -> None:
        if self.mode not in GOVERNANCE_MODES:
            raise ValidationError(f"governance: mode must be one of {', '.join(GOVERNANCE_MODES)}, got {self.mode!r}")
        check_ranges(self, "governance")


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
    gap_risk: GapRiskConfig | None = None  # jump-diffusion gap risk shown per position (None: not configured)
    # the share of cross unrealised profit that counts toward a withdrawal (losses always count in full)
    withdraw_upnl_weight_ppm: int = 0
    governance: GovernanceSpec | None = None  # guardrails on parameter proposals (None: governance off)

    RANGES: ClassVar[Ranges] = {
        "at_risk_buffer_ppm": (0, 100 * PPM),
        "at_risk_exit_ppm": (0, 100 * PPM),
        "insurance_fund_quote_q": (0, MAX_AMOUNT_Q),
        "liquidation_target_ppm": (0, 10 * PPM),
        "liquidation_max_notional_quote_q": (0, MAX_AMOUNT_Q),  # 0: no cap
        "liquidation_max_account_notional_quote_q": (0, MAX_AMOUNT_Q),
        "liquidation_account_window_ns": (1, 30 * DAY_NS),
        "mass_close_min": (1, 2**32),
        "breaker_band_ppm": (0, 10 * PPM),  # 0: off
        "breaker_window_ns": (1, 7 * DAY_NS),
        "withdraw_upnl_weight_ppm": (0, PPM),
    }

    def __post_init__(self) -> None:
        check_ranges(self, "engine config")
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
        if self.at_risk_buffer_ppm > self.at_risk_exit_ppm:
            raise ValidationError(
                f"engine config: at_risk_buffer_ppm must be in [0, at_risk_exit_ppm = {self.at_risk_exit_ppm}], "
                f"got {self.at_risk_buffer_ppm}"
            )
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
        if self.gap_risk is not None:
            for sym, _ in self.gap_risk.markets:
                if sym not in msyms:
                    raise ValidationError(f"gap_risk.markets: {sym!r} is not a market of this config")
            # whether the solver can resolve each spec to its target is the risk layer's question:
            # risk.gap.check_config, asked by the engine when it starts (model does not import risk)

    def policy(self, asset: str) -> OraclePolicy:
        for a, p in self.oracle:
            if a == asset:
                return p
        return self.default_oracle

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["gap_risk"] is None:
            del d["gap_risk"]  # configs without gap risk keep the form (and state hashes) they had before it
        if d["withdraw_upnl_weight_ppm"] == 0:
            del d["withdraw_upnl_weight_ppm"]  # likewise
        if d["governance"] is None:
            del d["governance"]  # likewise
        return d

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
                gap_risk=None if d.get("gap_risk") is None else GapRiskConfig.from_dict(d["gap_risk"]),
                withdraw_upnl_weight_ppm=d.get("withdraw_upnl_weight_ppm", 0),
                governance=None if d.get("governance") is None else GovernanceSpec(**d["governance"]),
            )
        except (KeyError, TypeError) as e:
            raise ValidationError(f"malformed engine config: {e}") from None


def parameter_owner(cfg: EngineConfig, market: str, name: str) -> tuple[Any, str]:
    """The config object holding parameter ``name`` (engine-wide when ``market`` is empty; dotted for
    nested fields, a bracket by index; a market's ``oracle.*`` is its base asset's policy) and the field."""
    obj: Any = cfg
    if market:
        obj = next(m for m in cfg.markets if m.symbol == market)
        if name.startswith("oracle."):
            obj, name = cfg.policy(obj.base_asset), name.removeprefix("oracle.")
    *path, last = name.split(".")
    for part in path:
        obj = obj[int(part)] if isinstance(obj, tuple) else getattr(obj, part)
    return obj, last


def parameter_range(cfg: EngineConfig, market: str, name: str) -> tuple[int, int]:
    """The range [lo, hi] the config's checks hold parameter ``name`` to, read from the ``RANGES`` they
    use (see :func:`parameter_owner`). Raises KeyError for a setting without a declared range."""
    obj, last = parameter_owner(cfg, market, name)
    lo, hi = type(obj).RANGES[last]
    if market and last == "cum_quote_q":
        hi = min(hi, cum_max_quote_q(obj))  # a market's bracket (PerpetualMarket's check)
    return lo, hi
