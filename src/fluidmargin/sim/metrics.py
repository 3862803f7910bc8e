"""Metrics of a stress run: exact figures per path (quote quanta) and statistics over paths.

Per path (:class:`PathTally` over the engine's output records, :class:`PathMetrics` its result):

* the waterfall's counts come from :class:`fluidmargin.sim.report.WaterfallTally` (the replay report's own
  tally, not a second count): liquidations (``PositionLiquidated``, each row of a columnar
  ``PositionsLiquidated``) and their notional (|size| x price, rounded up per event), penalties,
  slippage (``LiquidationExecuted``), ADL events and notional (at the bankruptcy price), gross fund
  draws, bad debt (``BadDebtSocialized``);
* the insurance funds' level from each ``InsuranceFundChanged`` (its ``balance_quote_q``, per fund,
  summed over funds): start, end and lowest; the **drawdown** is start - lowest (>= 0); a fund is
  **exhausted** when a draw leaves it at zero or a loss is socialised because it ran dry; a path with
  an exhausted fund is **ruined**;
* **protocol loss** = what the funds lost net over the path (start - end, 0 if they gained) + bad debt;
* capital efficiency: the maintenance requirement (:func:`requirement_quote_q`, the same figure as
  :func:`fluidmargin.sim.evaluate.requirement_quote_q`, computed by the engine's exact 128-bit kernel
  for plain-bracket markets) and the open interest (:func:`open_interest_quote_q`) sampled at the same
  instants; ``avg`` requirement rounded up, ``avg`` open interest rounded down, ``p95`` nearest-rank;
  the efficiency is average open interest per unit of average requirement (a float: a ratio).

Over paths (:func:`summarise`), with nearest-rank quantiles (:func:`quantile_nearest_rank`, the
⌈level·n⌉-th smallest, as :func:`fluidmargin.sim.evaluate.p95_nearest_rank` at 0.95): probability of
ruin (ruined paths / paths), VaR of protocol loss at ``level``, expected shortfall (the mean of the
losses from the VaR's rank up, rounded up) and liquidations-at-risk (the quantile of liquidated
notional). Levels are exact decimal fractions (``0.99`` is 99/100, not its binary float).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.core.units import QUOTE_DECIMALS, Rounding, div_round, format_decimal
from fluidmargin.engine import Engine
from fluidmargin.engine.batch import Batch
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import mass_close
from fluidmargin.risk.perp import margin
from fluidmargin.sim.report import WaterfallTally

Records = Sequence[tuple[int, ev.Event]]
INT64_MAX = 2**63 - 1


def usd(q: int) -> str:
    """Quote quanta as exact decimal text."""
    return format_decimal(q, QUOTE_DECIMALS)


# --- quantiles -----------------------------------------------------------------------------------------


def level_fraction(level: float | str | Fraction) -> Fraction:
    """``level`` as an exact fraction in (0, 1): a float by its shortest decimal text (0.99 -> 99/100)."""
    if isinstance(level, bool) or not isinstance(level, int | float | str | Fraction):
        raise ValidationError(f"a level must be a number in (0, 1), got {level!r}")
    if isinstance(level, float) and not math.isfinite(level):
        raise ValidationError(f"a level must be a finite number in (0, 1), got {level!r}")
    try:
        f = Fraction(repr(level) if isinstance(level, float) else level)
    except (ValueError, ZeroDivisionError):
        raise ValidationError(f"a level must be a number in (0, 1), got {level!r}") from None
    if not 0 < f < 1:
        raise ValidationError(f"a level must be in (0, 1), got {level}")
    return f


def tail_rank(n: int, level: float | str | Fraction) -> int:
    """The nearest rank ⌈level·n⌉ (1-based; at least 1) of ``n`` sorted values."""
    f = level_fraction(level)
    return max(1, -(-f.numerator * n // f.denominator))


def quantile_nearest_rank(values: Sequence[int], level: float | str | Fraction) -> int:
    """The ⌈level·n⌉-th smallest of ``values`` (0 when there are none)."""
    if not values:
        level_fraction(level)
        return 0
    return sorted(values)[tail_rank(len(values), level) - 1]


def expected_shortfall(values: Sequence[int], level: float | str | Fraction) -> int:
    """The mean of the values from the nearest rank ⌈level·n⌉ up (the VaR and everything beyond it),
    rounded up; 0 when there are none."""
    if not values:
        level_fraction(level)
        return 0
    s = sorted(values)
    tail = s[tail_rank(len(s), level) - 1 :]
    return div_round(sum(tail), len(tail), Rounding.CEIL)


def mean_ceil(values: Sequence[int]) -> int:
    return div_round(sum(values), len(values), Rounding.CEIL) if values else 0


# --- figures of an engine now --------------------------------------------------------------------------


def requirement_quote_q(engine: Engine) -> int:
    """Every open position's exact maintenance margin at its market's mark, summed (quote quanta):
    :func:`fluidmargin.sim.evaluate.requirement_quote_q`, but one exact 128-bit kernel call
    (:func:`fluidmargin.risk.liquidation.mass_close.exact_risk`, what the engine's batched
    confirmation uses) per market whose maintenance is plain brackets; other markets, and any
    position the kernel cannot settle, through ``Engine.position_risk``."""
    k = engine.n_pos
    open_ = np.flatnonzero(engine.pos_size[:k])
    if not len(open_):
        return 0
    mkt = engine.pos_mkt[open_]
    total = 0
    for m in engine.markets:
        ps = open_[mkt == m.i]
        if not len(ps):
            continue
        if m.mark_q is None or not Batch.simple_plain(m):
            total += sum(engine.position_risk(p).mm_quote_q for p in ps.tolist())
            continue
        zeros = np.zeros(len(ps), dtype=np.int64)
        out = np.zeros((len(ps), mass_close.RISK_WIDTH), dtype=np.int64)
        sizes = np.ascontiguousarray(engine.pos_size[ps], dtype=np.int64)
        mass_close.exact_risk(sizes, zeros, zeros, zeros, *Batch.kernel_scales(m), *Batch.kernel_tables(m), out)
        ok = out[:, mass_close.RISK_OK] == 1
        mm = out[ok, mass_close.RISK_MM]  # each >= 0: an int64 sum is exact unless it could overflow
        if mm.size:
            total += int(mm.sum()) if int(mm.max()) <= INT64_MAX // mm.size else sum(mm.tolist())
        total += sum(engine.position_risk(p).mm_quote_q for p in ps[~ok].tolist())
    return total


def open_interest_quote_q(engine: Engine) -> int:
    """Open interest (the long side of every market) at its mark, rounded down per market (quote quanta)."""
    return sum(
        margin.value_quote_q(m.long_oi_base_q, m.mark_q, m.spec.size_decimals, Rounding.FLOOR)
        for m in engine.markets
        if m.mark_q is not None
    )


# --- one path ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathMetrics:
    """What one path did (money in quote quanta, exact; see the module docstring)."""

    index: int
    seed: int
    inputs: int
    prices_rejected: int
    inputs_rejected: int
    liquidations: int
    liquidated_notional_q: int
    penalties_q: int
    slippage_q: int
    adl_events: int
    adl_notional_q: int
    bad_debt_events: int
    bad_debt_q: int
    fund_start_q: int
    fund_end_q: int
    fund_min_q: int
    fund_draws_q: int
    funds_exhausted: tuple[str, ...]
    avg_requirement_q: int
    p95_requirement_q: int
    avg_open_interest_q: int
    samples: int
    state_hash: str = ""

    @property
    def fund_drawdown_q(self) -> int:
        """The deepest the funds fell below their start."""
        return max(0, self.fund_start_q - self.fund_min_q)

    @property
    def ruined(self) -> bool:
        return bool(self.funds_exhausted)

    @property
    def protocol_loss_q(self) -> int:
        """Net loss of the funds over the path (0 if they gained) plus bad debt."""
        return max(0, self.fund_start_q - self.fund_end_q) + self.bad_debt_q

    @property
    def capital_efficiency(self) -> float:
        """Average open interest per unit of average requirement (0.0 with no requirement)."""
        return self.avg_open_interest_q / self.avg_requirement_q if self.avg_requirement_q else 0.0

    def to_json(self) -> dict[str, Any]:
        """Money as exact decimal strings, counts as integers."""
        return {
            "index": self.index,
            "seed": self.seed,
            "inputs": self.inputs,
            "prices_rejected": self.prices_rejected,
            "inputs_rejected": self.inputs_rejected,
            "liquidations": self.liquidations,
            "liquidated_notional": usd(self.liquidated_notional_q),
            "penalties": usd(self.penalties_q),
            "slippage": usd(self.slippage_q),
            "adl_events": self.adl_events,
            "adl_notional": usd(self.adl_notional_q),
            "bad_debt_events": self.bad_debt_events,
            "bad_debt": usd(self.bad_debt_q),
            "fund_start": usd(self.fund_start_q),
            "fund_end": usd(self.fund_end_q),
            "fund_min": usd(self.fund_min_q),
            "fund_drawdown": usd(self.fund_drawdown_q),
            "fund_draws": usd(self.fund_draws_q),
            "funds_exhausted": list(self.funds_exhausted),
            "ruined": self.ruined,
            "protocol_loss": usd(self.protocol_loss_q),
            "avg_requirement": usd(self.avg_requirement_q),
            "p95_requirement": usd(self.p95_requirement_q),
            "avg_open_interest": usd(self.avg_open_interest_q),
            "capital_efficiency": round(self.capital_efficiency, 6),
            "samples": self.samples,
            "state_hash": self.state_hash,
        }


class PathTally:
    """Folds one engine's output records into :class:`PathMetrics` (see the module docstring).

    ``add(records)`` takes what ``Engine.apply`` returned (the input first); ``sample()`` records the
    requirement and open interest now. A refused population raises FluidMarginError (the path would
    be meaningless).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.wf = WaterfallTally(engine)
        self.balances: dict[str, int] = dict(engine.wf.funds)
        self.fund_start_q = sum(self.balances.values())
        self.fund_min_q = self.fund_start_q
        self.exhausted: set[str] = set()
        self.inputs = 0
        self.prices_rejected = 0
        self.inputs_rejected = 0
        self.requirements: list[int] = []
        self.open_interest: list[int] = []

    def add(self, records: Records) -> None:
        if not records:
            return
        self.inputs += 1
        first = records[0][1]
        for _seq, e in records[1:]:
            self.event(e, first)

    def add_all(self, outputs: Iterable[ev.Event]) -> None:
        """Output events without their input (hand-made lists)."""
        for e in outputs:
            self.event(e, None)

    def event(self, e: ev.Event, cause: ev.Event | None) -> None:
        self.wf.add(e)
        if isinstance(e, ev.InsuranceFundChanged):
            self.balances[e.fund] = e.balance_quote_q
            self.fund_min_q = min(self.fund_min_q, sum(self.balances.values()))
            if e.delta_quote_q < 0 and e.balance_quote_q <= 0:
                self.exhausted.add(e.fund)
        elif isinstance(e, ev.BadDebtSocialized):
            self.exhausted.add(e.fund)
        elif isinstance(e, ev.OraclePriceRejected):
            self.prices_rejected += 1
        elif isinstance(e, ev.InputRejected):
            self.inputs_rejected += 1
            if isinstance(cause, ev.AccountsSeeded):
                raise FluidMarginError(f"the engine rejected the account population: {e.reason}")

    def sample(self, times: int = 1) -> None:
        """The requirement and open interest now, counted ``times`` (instants with no input between)."""
        req, oi = requirement_quote_q(self.engine), open_interest_quote_q(self.engine)
        self.requirements.extend([req] * times)
        self.open_interest.extend([oi] * times)

    def result(self, index: int = 0, seed: int = 0, state_hash: str = "") -> PathMetrics:
        req, oi = self.requirements, self.open_interest
        wf = self.wf
        return PathMetrics(
            index=index,
            seed=seed,
            inputs=self.inputs,
            prices_rejected=self.prices_rejected,
            inputs_rejected=self.inputs_rejected,
            liquidations=sum(wf.closes.values()),
            liquidated_notional_q=wf.liquidated_q,
            penalties_q=wf.penalties_q,
            slippage_q=wf.slippage_q,
            adl_events=wf.adl_events,
            adl_notional_q=wf.adl_q,
            bad_debt_events=wf.bad_debt_events,
            bad_debt_q=wf.bad_debt_q,
            fund_start_q=self.fund_start_q,
            fund_end_q=sum(self.balances.values()),
            fund_min_q=self.fund_min_q,
            fund_draws_q=wf.fund_draws_q,
            funds_exhausted=tuple(sorted(self.exhausted)),
            avg_requirement_q=mean_ceil(req),
            p95_requirement_q=quantile_nearest_rank(req, Fraction(95, 100)),
            avg_open_interest_q=div_round(sum(oi), len(oi), Rounding.FLOOR) if oi else 0,
            samples=len(req),
            state_hash=state_hash,
        )


# --- over paths ----------------------------------------------------------------------------------------

MONEY = (  # PathMetrics money figures summarised over paths (name, attribute)
    ("protocol_loss", "protocol_loss_q"),
    ("bad_debt", "bad_debt_q"),
    ("fund_drawdown", "fund_drawdown_q"),
    ("fund_draws", "fund_draws_q"),
    ("adl_notional", "adl_notional_q"),
    ("liquidated_notional", "liquidated_notional_q"),
    ("slippage", "slippage_q"),
    ("avg_requirement", "avg_requirement_q"),
    ("p95_requirement", "p95_requirement_q"),
    ("avg_open_interest", "avg_open_interest_q"),
)
COUNTS = (("liquidations", "liquidations"), ("adl_events", "adl_events"), ("bad_debt_events", "bad_debt_events"))


@dataclass(frozen=True, slots=True)
class Distribution:
    """A figure over paths: mean (rounded up), nearest-rank median and p95, and maximum."""

    mean: int
    p50: int
    p95: int
    max: int

    @classmethod
    def of(cls, values: Sequence[int]) -> Distribution:
        if not values:
            return cls(0, 0, 0, 0)
        return cls(
            mean_ceil(values),
            quantile_nearest_rank(values, Fraction(1, 2)),
            quantile_nearest_rank(values, Fraction(95, 100)),
            max(values),
        )


@dataclass(frozen=True, slots=True)
class StressSummary:
    """Statistics over the paths of a run (money in quote quanta)."""

    paths: int
    level: Fraction
    ruined_paths: int
    var_q: int
    es_q: int
    liquidations_at_risk_q: int
    money: tuple[tuple[str, Distribution], ...]
    counts: tuple[tuple[str, Distribution], ...]
    capital_efficiency_mean: float
    paths_with_bad_debt: int
    paths_with_adl: int

    @property
    def probability_of_ruin(self) -> float:
        return self.ruined_paths / self.paths if self.paths else 0.0

    def figure(self, name: str) -> Distribution:
        for k, d in (*self.money, *self.counts):
            if k == name:
                return d
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "paths": self.paths,
            "level": str(float(self.level)),
            "ruined_paths": self.ruined_paths,
            "probability_of_ruin": self.probability_of_ruin,
            "var": usd(self.var_q),
            "expected_shortfall": usd(self.es_q),
            "liquidations_at_risk": usd(self.liquidations_at_risk_q),
            "paths_with_bad_debt": self.paths_with_bad_debt,
            "paths_with_adl": self.paths_with_adl,
            "capital_efficiency_mean": round(self.capital_efficiency_mean, 6),
            "per_path": {
                **{k: {f: usd(getattr(d, f)) for f in ("mean", "p50", "p95", "max")} for k, d in self.money},
                **{k: {f: getattr(d, f) for f in ("mean", "p50", "p95", "max")} for k, d in self.counts},
            },
        }


def summarise(paths: Sequence[PathMetrics], level: float | str | Fraction = "0.99") -> StressSummary:
    """Statistics over ``paths`` (in index order; every figure but the efficiency's mean is an exact
    integer, so the order changes nothing else): see the module docstring."""
    lv = level_fraction(level)
    if not paths:
        raise ValidationError("no paths to summarise")
    idx = [p.index for p in paths]
    if idx != sorted(idx) or len(set(idx)) != len(idx):
        raise ValidationError("paths must be in increasing index order, each once")
    losses = [p.protocol_loss_q for p in paths]
    liquidated = [p.liquidated_notional_q for p in paths]
    eff = 0.0
    for p in paths:  # summed in index order: the same float whatever ran the paths
        eff += p.capital_efficiency
    return StressSummary(
        paths=len(paths),
        level=lv,
        ruined_paths=sum(1 for p in paths if p.ruined),
        var_q=quantile_nearest_rank(losses, lv),
        es_q=expected_shortfall(losses, lv),
        liquidations_at_risk_q=quantile_nearest_rank(liquidated, lv),
        money=tuple((k, Distribution.of([getattr(p, a) for p in paths])) for k, a in MONEY),
        counts=tuple((k, Distribution.of([getattr(p, a) for p in paths])) for k, a in COUNTS),
        capital_efficiency_mean=eff / len(paths),
        paths_with_bad_debt=sum(1 for p in paths if p.bad_debt_q),
        paths_with_adl=sum(1 for p in paths if p.adl_events),
    )
