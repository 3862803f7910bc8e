"""The dynamic margin rate as a pure policy: volatility in, rate (and why) out.

Maintenance rate (ppm of notional)::

    raw  = z · σ_eff · √h              σ_eff² = max(σ̂², forecast²): a forecast only ever raises it
    apc  = the anti-procyclicality rule applied to raw (below)
    mm   = clamp(apc, floor, cap)      rounded up to a ppm
    im   = k × mm                      rounded up

``σ̂`` and the forecast are variances per second (floats: statistics), ``h`` the liquidation horizon in
seconds (oracle latency + detection + execution, :class:`Horizon`), ``z`` from a target coverage
(:func:`z_for_coverage`, the normal quantile, or :func:`z_from_jump_model`, a fitted jump-diffusion's
barrier-crossing quantile). ``z·σ·√h`` is a log-return distance used as a fraction of notional, as the
issue states it (for a long, 1 - e^-x < x: the rate over-covers; for a short e^x - 1 > x under-covers
by x²/2, at most 0.5 %-point at a 10 % rate).

Anti-procyclicality (EMIR RTS 153/2013 Art. 28), one of :data:`APC_CHOICES`:

- ``buffer`` (a): in calm times charge raw × (1 + b), b >= 25 %; in stress (σ_eff >= ``stress_ratio`` ×
  the long-run σ) the buffer is released: the rate is max(raw, the last calm rate), so a rise is first
  absorbed by the buffer already charged;
- ``stressed_weight`` (b): (1 - w) · raw + w · z · σ_stressed · √h, w >= 25 %, σ_stressed a configured
  stressed period's volatility;
- ``long_floor`` (c): max(raw, z · σ_long · √h), σ_long the volatility over 10 years or the longest
  history available;
- ``none``.

Size tiers (:class:`Tier`) sit on top of the base maintenance rate: tier i charges
``ceil(base · multiplier_i) + add_i`` on notional above its floor, Binance-style with a continuity
amount, so the requirement is continuous in notional (:func:`tier_brackets`). Multipliers >= 1 and
add-ons >= 0, so no tier charges less than the base rate.

Changes are rate-limited (:func:`step`): the changes of any trailing hour move the maintenance rate by
at most ``max_change_ppm_per_hour`` in all (up and down), never below the floor. Each change carries its
inputs (σ̂, h, z, the APC choice, the forecast, the target and the cap) for the audit trail.

Limits that would let the margin fall below the floor (a cap under the floor, a tier multiplier under
1, a negative add-on, an APC buffer or weight under EMIR's 25 %...) are rejected when the parameters are
built: :class:`PolicyParams` raises :class:`LimitsRejected` with every reason; :func:`build_policy`
returns them as a :class:`Rejected` value instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.model.instruments import Bracket
from fluidmargin.risk.stats import jumps

__all__ = [
    "APC_BUFFER",
    "APC_CHOICES",
    "APC_LONG_FLOOR",
    "APC_NONE",
    "APC_STRESSED_WEIGHT",
    "EMIR_MIN_PPM",
    "Change",
    "Horizon",
    "LimitsRejected",
    "Observation",
    "PolicyParams",
    "PolicyState",
    "Rejected",
    "Target",
    "Tier",
    "build_policy",
    "initial_ppm",
    "sigma_rate_ppm",
    "step",
    "target",
    "tier_brackets",
    "tier_rates_ppm",
    "z_for_coverage",
    "z_from_jump_model",
]

APC_NONE = "none"
APC_BUFFER = "buffer"
APC_STRESSED_WEIGHT = "stressed_weight"
APC_LONG_FLOOR = "long_floor"
APC_CHOICES = (APC_NONE, APC_BUFFER, APC_STRESSED_WEIGHT, APC_LONG_FLOOR)
EMIR_MIN_PPM = 250_000  # Art. 28: a buffer of at least 25 %, or at least 25 % weight on stressed observations
NS_PER_HOUR = 3600 * 10**9
SECONDS_PER_YEAR = 365 * 86_400


class LimitsRejected(ValidationError):
    """Policy limits refused at construction; ``reasons`` names every one."""

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("margin policy rejected: " + "; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class Rejected:
    """A policy that was not built, and why."""

    reason: str


# --- z ----------------------------------------------------------------------------------------------


def z_for_coverage(coverage: float) -> float:
    """The one-sided normal quantile: P(move < z σ √h) = coverage (``scipy.stats.norm.ppf``)."""
    from scipy.stats import norm

    if not (math.isfinite(coverage) and 0.5 < coverage < 1.0):
        raise ValidationError(f"coverage must be in (0.5, 1), got {coverage}")
    return float(norm.ppf(coverage))


def z_from_jump_model(params: Any, horizon_s: float, coverage: float) -> float:
    """z such that z σ_total √h is the log distance a fitted jump-diffusion touches within ``horizon_s``
    with probability 1 - coverage (the worse of the down and up barriers; :mod:`fluidmargin.risk.stats.jumps`).

    σ_total is the model's whole volatility (diffusion and jumps), so z · σ̂ · √h rescales the model's
    tail shape to the current volatility estimate. Touching is likelier than ending beyond: for a pure
    diffusion this z is about norm.ppf(1 - (1 - coverage)/2).
    """
    if not (math.isfinite(coverage) and 0.5 < coverage < 1.0):
        raise ValidationError(f"coverage must be in (0.5, 1), got {coverage}")
    if not (math.isfinite(horizon_s) and horizon_s > 0):
        raise ValidationError(f"horizon_s must be > 0, got {horizon_s}")
    h_years = horizon_s / SECONDS_PER_YEAR
    table = jumps.crossing_table(params, h_years)
    tail = 1.0 - coverage
    d = max(
        float(jumps.required_log_distance(table, jumps.LONG, tail)),
        float(jumps.required_log_distance(table, jumps.SHORT, tail)),
    )
    if isinstance(params, jumps.MertonParams):
        jump_var = params.jump_mean**2 + params.jump_std**2
    else:  # Kou: E[Y²] of the double exponential
        jump_var = 2.0 * params.p_up / params.eta_up**2 + 2.0 * (1.0 - params.p_up) / params.eta_down**2
    total_var_per_year = params.sigma_annual**2 + params.lam_per_year * jump_var
    return d / math.sqrt(total_var_per_year * h_years)


# --- parameters ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Horizon:
    """The liquidation horizon h: how long from a price move until the position is closed."""

    oracle_latency_ms: int
    detection_ms: int
    execution_ms: int

    def __post_init__(self) -> None:
        if min(self.oracle_latency_ms, self.detection_ms, self.execution_ms) < 0:
            raise ValidationError("horizon parts must be >= 0 ms")
        if self.total_ms <= 0:
            raise ValidationError("the liquidation horizon must be > 0 ms")

    @property
    def total_ms(self) -> int:
        return self.oracle_latency_ms + self.detection_ms + self.execution_ms

    @property
    def total_s(self) -> float:
        return self.total_ms / 1000.0


@dataclass(frozen=True, slots=True)
class Tier:
    """A size tier: on notional at or above ``notional_floor_quote_q``, base × multiplier + add."""

    notional_floor_quote_q: int
    multiplier_ppm: int = PPM
    add_ppm: int = 0


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Published limits of the dynamic rate (rates in ppm of notional; variances per second).

    ``initial_multiple_ppm`` is k (2_000_000: initial = 2 × maintenance). ``cap_ppm`` is the highest
    maintenance rate. ``long_run_var_per_s`` feeds ``long_floor`` and the stress test of ``buffer``;
    ``stressed_var_per_s`` feeds ``stressed_weight``. Moves under ``min_step_ppm``, or sooner than
    ``min_interval_s`` after the previous change, are not made (each change re-margins every position).
    """

    floor_ppm: int
    horizon: Horizon
    z: float
    cap_ppm: int = 250_000
    initial_multiple_ppm: int = 2 * PPM
    max_change_ppm_per_hour: int = 20_000
    min_step_ppm: int = 250
    min_interval_s: int = 300
    apc: str = APC_NONE
    apc_buffer_ppm: int = EMIR_MIN_PPM
    apc_stressed_weight_ppm: int = EMIR_MIN_PPM
    stress_ratio_ppm: int = 2 * PPM
    long_run_var_per_s: float = 0.0
    stressed_var_per_s: float = 0.0
    z_source: str = "normal"
    tiers: tuple[Tier, ...] = (Tier(0),)

    def __post_init__(self) -> None:
        reasons = _limit_reasons(self)
        if reasons:
            raise LimitsRejected(reasons)

    def to_inputs(self) -> dict[str, str]:
        """The parameters as text, for the audit trail of a change."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name != "tiers"}


def _limit_reasons(p: PolicyParams) -> tuple[str, ...]:
    r: list[str] = []
    if p.floor_ppm <= 0:
        r.append(f"floor_ppm {p.floor_ppm} must be > 0")
    if p.cap_ppm < p.floor_ppm:
        r.append(f"cap_ppm {p.cap_ppm} is below the floor {p.floor_ppm}: the margin would fall below the floor")
    if p.initial_multiple_ppm < PPM:
        r.append(f"initial_multiple_ppm {p.initial_multiple_ppm} < 1e6: initial margin below maintenance")
    elif p.cap_ppm * p.initial_multiple_ppm > PPM * PPM:
        r.append(f"k × cap = {p.cap_ppm * p.initial_multiple_ppm / PPM:.0f} ppm exceeds 100 % of notional")
    if not (math.isfinite(p.z) and p.z > 0):
        r.append(f"z must be finite and > 0, got {p.z}")
    if p.max_change_ppm_per_hour <= 0:
        r.append("max_change_ppm_per_hour must be > 0")
    if p.min_step_ppm < 0 or p.min_interval_s < 0:
        r.append("min_step_ppm and min_interval_s must be >= 0")
    if p.apc not in APC_CHOICES:
        r.append(f"apc must be one of {', '.join(APC_CHOICES)}, not {p.apc!r}")
    if p.apc_buffer_ppm < 0 or p.apc_stressed_weight_ppm < 0:
        r.append("a negative APC buffer or weight would let the margin fall below the rate")
    if p.apc == APC_BUFFER and p.apc_buffer_ppm < EMIR_MIN_PPM:
        r.append(f"apc_buffer_ppm {p.apc_buffer_ppm} < {EMIR_MIN_PPM} (EMIR Art. 28: at least 25 %)")
    if p.apc == APC_STRESSED_WEIGHT and not EMIR_MIN_PPM <= p.apc_stressed_weight_ppm <= PPM:
        r.append(f"apc_stressed_weight_ppm {p.apc_stressed_weight_ppm} outside [{EMIR_MIN_PPM}, 1e6] (EMIR Art. 28)")
    for name in ("long_run_var_per_s", "stressed_var_per_s"):
        v = getattr(p, name)
        if not (math.isfinite(v) and v >= 0):
            r.append(f"{name} must be finite and >= 0, got {v}")
    if p.apc in (APC_BUFFER, APC_LONG_FLOOR) and not p.long_run_var_per_s > 0:
        r.append(f"apc {p.apc!r} needs long_run_var_per_s > 0")
    if p.apc == APC_STRESSED_WEIGHT and not p.stressed_var_per_s > 0:
        r.append("apc 'stressed_weight' needs stressed_var_per_s > 0")
    if p.stress_ratio_ppm < PPM:
        r.append(f"stress_ratio_ppm {p.stress_ratio_ppm} < 1e6: calm volatility would count as stress")
    if not p.tiers or p.tiers[0].notional_floor_quote_q != 0:
        r.append("the first tier must start at notional 0")
    for a, b in zip(p.tiers, p.tiers[1:], strict=False):
        if b.notional_floor_quote_q <= a.notional_floor_quote_q:
            r.append("tier floors must increase")
        if b.multiplier_ppm < a.multiplier_ppm or b.add_ppm < a.add_ppm:
            r.append("a larger tier must not charge less than a smaller one")
    for t in p.tiers:
        if t.multiplier_ppm < PPM or t.add_ppm < 0:
            r.append(
                f"tier at {t.notional_floor_quote_q}: multiplier {t.multiplier_ppm} ppm < 1e6 or add {t.add_ppm} < 0 "
                "would charge less than the base rate, possibly below the floor"
            )
    return tuple(r)


def build_policy(**kw: Any) -> PolicyParams | Rejected:
    """:class:`PolicyParams` from keywords, or :class:`Rejected` with the reasons (an operator's request)."""
    try:
        return PolicyParams(**kw)
    except LimitsRejected as e:
        return Rejected("; ".join(e.reasons))


# --- the rate -------------------------------------------------------------------------------------------


def sigma_rate_ppm(z: float, var_per_s: float, horizon_s: float) -> int:
    """z · σ · √h in ppm, rounded up (a requirement)."""
    if not (math.isfinite(var_per_s) and var_per_s >= 0):
        raise ValidationError(f"variance must be finite and >= 0, got {var_per_s}")
    return math.ceil(z * math.sqrt(var_per_s * horizon_s) * PPM)


def initial_ppm(p: PolicyParams, maintenance_ppm: int) -> int:
    """k × maintenance, rounded up."""
    return div_round(maintenance_ppm * p.initial_multiple_ppm, PPM, Rounding.CEIL)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the policy is told at ``now_ns``: the online variance and, if any, the forecast (per second)."""

    now_ns: int
    var_per_s: float
    forecast_var_per_s: float | None = None
    model: str = ""  # which online model gave var_per_s, for the audit trail

    def __post_init__(self) -> None:
        for v in (self.var_per_s, self.forecast_var_per_s):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValidationError(f"variance must be finite and >= 0, got {v}")


@dataclass(frozen=True, slots=True)
class PolicyState:
    """The rate in force, the last calm rate (APC buffer), and the changes of the trailing hour."""

    rate_ppm: int
    calm_rate_ppm: int = 0
    recent: tuple[tuple[int, int], ...] = ()  # (ts_ns, |change| ppm)
    changed_ns: int | None = None

    @classmethod
    def start(cls, p: PolicyParams) -> PolicyState:
        return cls(p.floor_ppm, p.floor_ppm)


@dataclass(frozen=True, slots=True)
class Target:
    """The unconstrained maintenance rate and how it was reached."""

    rate_ppm: int
    raw_ppm: int
    apc_ppm: int
    stress: bool
    inputs: Mapping[str, str] = field(default_factory=dict)


def target(p: PolicyParams, s: PolicyState, o: Observation) -> Target:
    """The maintenance rate the policy aims at now (before the hourly cap)."""
    h = p.horizon.total_s
    fc = o.forecast_var_per_s
    var = o.var_per_s if fc is None else max(o.var_per_s, fc)
    raw = sigma_rate_ppm(p.z, var, h)
    stress = p.long_run_var_per_s > 0 and var * PPM * PPM >= p.long_run_var_per_s * p.stress_ratio_ppm**2
    if p.apc == APC_BUFFER:
        apc = max(raw, s.calm_rate_ppm) if stress else div_round(raw * (PPM + p.apc_buffer_ppm), PPM, Rounding.CEIL)
    elif p.apc == APC_STRESSED_WEIGHT:
        stressed = sigma_rate_ppm(p.z, p.stressed_var_per_s, h)
        w = p.apc_stressed_weight_ppm
        apc = div_round(raw * (PPM - w) + stressed * w, PPM, Rounding.CEIL)
    elif p.apc == APC_LONG_FLOOR:
        apc = max(raw, sigma_rate_ppm(p.z, p.long_run_var_per_s, h))
    else:
        apc = raw
    rate = min(max(apc, p.floor_ppm), p.cap_ppm)
    inputs = {
        "sigma_hat_h": f"{math.sqrt(o.var_per_s * h):.6g}",
        "forecast_sigma_h": "" if fc is None else f"{math.sqrt(fc * h):.6g}",
        "h_s": f"{h:g}",
        "z": f"{p.z:.6g}",
        "z_source": p.z_source,
        "apc": p.apc,
        "stress": str(int(stress)),
        "raw_ppm": str(raw),
        "apc_ppm": str(apc),
        "floor_ppm": str(p.floor_ppm),
        "cap_ppm": str(p.cap_ppm),
        "model": o.model,
    }
    return Target(rate, raw, apc, stress, inputs)


@dataclass(frozen=True, slots=True)
class Change:
    """A rate change with everything that produced it (text, for ``ParameterChange.inputs``)."""

    maintenance_ppm: int
    initial_ppm: int
    previous_ppm: int
    inputs: tuple[tuple[str, str], ...]


def step(p: PolicyParams, s: PolicyState, o: Observation) -> tuple[PolicyState, Change | None]:
    """Move toward :func:`target` within the hourly cap; None when the rate stays (a move under the
    minimum step, or too soon after the previous change)."""
    t = target(p, s, o)
    hour_ago = o.now_ns - NS_PER_HOUR
    recent = tuple((ts, d) for ts, d in s.recent if ts > hour_ago)
    budget = max(p.max_change_ppm_per_hour - sum(d for _ts, d in recent), 0)
    new = max(min(t.rate_ppm, s.rate_ppm + budget), s.rate_ppm - budget, p.floor_ppm)
    calm = s.calm_rate_ppm if t.stress else t.rate_ppm
    soon = s.changed_ns is not None and o.now_ns - s.changed_ns < p.min_interval_s * 10**9
    if soon or abs(new - s.rate_ppm) < max(p.min_step_ppm, 1):
        return PolicyState(s.rate_ppm, calm, recent, s.changed_ns), None
    inputs = dict(t.inputs)
    inputs.update(
        target_ppm=str(t.rate_ppm),
        previous_ppm=str(s.rate_ppm),
        hourly_budget_ppm=str(budget),
        capped=str(int(new != t.rate_ppm)),
    )
    change = Change(new, initial_ppm(p, new), s.rate_ppm, tuple(sorted(inputs.items())))
    return PolicyState(new, calm, (*recent, (o.now_ns, abs(new - s.rate_ppm))), o.now_ns), change


# --- size tiers -----------------------------------------------------------------------------------------


def tier_rates_ppm(p: PolicyParams, base_ppm: int) -> tuple[int, ...]:
    """Each tier's maintenance rate on the base rate: ceil(base · multiplier) + add, at most 100 %."""
    return tuple(min(div_round(base_ppm * t.multiplier_ppm, PPM, Rounding.CEIL) + t.add_ppm, PPM) for t in p.tiers)


def tier_brackets(p: PolicyParams, base_ppm: int) -> tuple[Bracket, ...]:
    """The tiers as Binance-style brackets (MM = notional · rate - cum), continuous in notional:
    cum_i = cum_{i-1} + floor_i · (rate_i - rate_{i-1}), rounded down (the requirement up).
    Max leverage per bracket is 1 / (k × rate), rounded down."""
    rates = tier_rates_ppm(p, base_ppm)
    out: list[Bracket] = []
    cum = 0
    for i, (t, rate) in enumerate(zip(p.tiers, rates, strict=True)):
        if i:
            cum += div_round(t.notional_floor_quote_q * (rate - rates[i - 1]), PPM, Rounding.FLOOR)
        im = initial_ppm(p, rate)
        out.append(Bracket(t.notional_floor_quote_q, rate, cum, max(1, PPM // im)))
    return tuple(out)
