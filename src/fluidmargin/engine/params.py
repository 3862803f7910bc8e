"""Parameters: an operator's change of one risk parameter, validated, applied, and everything re-margined.

Owns the lists of what may change (engine-wide and per market, oracle policies included), the change
itself (through the config's own validation), the reconfiguration that follows (market constants, the
liquidator), and the re-screen from scratch that thresholds and budgets need together.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS
from fluidmargin.engine.confirm import Confirm
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.types import ORACLE_PARAMETERS, Bucket
from fluidmargin.engine.waterfall import CloseAtMark, Liquidator, PartialToTarget
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.risk.perp.kernels import ACCT_BUDGET_OTHERS

# engine-wide and per-market parameters an operator may change (dotted: nested config fields)
PARAMETERS: tuple[str, ...] = (
    "at_risk_buffer_ppm",
    "at_risk_exit_ppm",
    "liquidation_target_ppm",
    "liquidation_max_notional_quote_q",
    "liquidation_max_account_notional_quote_q",
    "liquidation_account_window_ns",
    "breaker_band_ppm",
    "breaker_window_ns",
    "mass_close_min",
    "withdraw_upnl_weight_ppm",
    *(f"default_oracle.{n}" for n in ORACLE_PARAMETERS),
)
MARKET_PARAMETERS: tuple[str, ...] = (
    "liquidation_fee_ppm",
    "liquidation.batch",
    "liquidation.adl",
    "liquidation.backstop_discount_ppm",
    "liquidation.auction.buf_ppm",
    "liquidation.auction.tail_s",
    "liquidation.auction.cusp_ppm",
    "liquidation.auction.tau_s",
    "liquidation.auction.cut_ppm",
    "liquidation.auction.step_s",
    "liquidation.auction.chip_ppm",
    "liquidation.auction.tip_quote_q",
    "liquidation.impact.daily_volume_base_q",
    "liquidation.impact.sigma_ppm",
    "liquidation.impact.coefficient_ppm",
    "margin.imr_floor_ppm",
    "margin.brackets.<i>.mmr_ppm",  # <i>: a bracket's index (dynamic margin moves the rates)
    "margin.brackets.<i>.cum_quote_q",
    *(f"oracle.{n}" for n in ORACLE_PARAMETERS),  # the policy of the market's base asset
)


def is_market_parameter(name: str) -> bool:
    """Whether ``name`` is a market parameter one may change (a bracket's fields by index: ``.0.``)."""
    return re.sub(r"\.[0-9]{1,3}\.", ".<i>.", name) in MARKET_PARAMETERS


def make_liquidator(cfg: EngineConfig) -> Liquidator:
    """The liquidation sizing the config names."""
    if cfg.liquidation == "partial":
        return PartialToTarget(cfg.liquidation_target_ppm, cfg.liquidation_max_notional_quote_q)
    return CloseAtMark(cfg.liquidation_max_notional_quote_q)


class Params:
    """The ``ParameterChangeRequested`` input and the reconfiguration it causes."""

    def __init__(self, led: Ledger, screen: Screen, confirm: Confirm) -> None:
        self.led = led
        self.screen = screen
        self.confirm = confirm

    def on_parameter_change(self, e: ev.ParameterChangeRequested, out: list[ev.Event]) -> str:
        """Change one parameter: validated by the config's own checks, then everything re-margined."""
        changed = self.changed(self.led.cfg, e.market, e.name, e.value)
        if isinstance(changed, str):
            return changed
        old, cfg = changed
        self.commit(cfg, [(e.market, e.name, old, e.value)], out)
        return ""

    def changed(self, cfg: EngineConfig, market: str, name: str, value: int) -> tuple[int, EngineConfig] | str:
        """``cfg`` with one parameter changed, by the config's own checks, and the value before; or why not."""
        if abs(value) > MAX_QUANTUMS:
            return "value out of bounds"
        try:
            if market:
                m = self.led.market_idx.get(market)
                if m is None:
                    return f"unknown market {market!r}"
                if not is_market_parameter(name):
                    return f"{name!r} is not a market parameter one may change ({', '.join(MARKET_PARAMETERS)})"
                if name.startswith("oracle."):
                    return self._with_oracle(cfg, m.spec.base_asset, name.split(".")[1], value)
                spec = next(x for x in cfg.markets if x.symbol == market)
                old, spec = replace_path(spec, name.split("."), value)
                return old, dataclasses.replace(
                    cfg, markets=tuple(spec if x.symbol == market else x for x in cfg.markets)
                )
            if name not in PARAMETERS:
                return f"{name!r} is not an engine parameter one may change ({', '.join(PARAMETERS)})"
            return replace_path(cfg, name.split("."), value)
        except (ValidationError, TypeError, ValueError) as exc:
            return f"invalid value for {name}: {exc}"

    def commit(self, cfg: EngineConfig, changes: list[tuple[str, str, int, int]], out: list[ev.Event]) -> None:
        """Put ``cfg`` in force (from :meth:`changed`): ``ParameterChanged`` for each ``(market, name, old,
        new)``, then every account re-margined under the new parameters."""
        led = self.led
        self.reconfigure(cfg)
        for market, name, old, new in changes:
            out.append(ev.ParameterChanged(led.now_ns, market, name, old, new))
        # thresholds and budgets go together: drop every budget so that the screen re-applies each
        # position exactly and derives new budgets under the new parameters
        led.acct_f[: led.n_acc, ACCT_BUDGET_OTHERS] = 0.0
        touched: list[Bucket] = []
        for m in led.markets:
            if m.mark_q is not None:
                touched.extend(self.screen.remargin_all(m))
        self.confirm.evaluate(touched, out)

    def _with_oracle(self, cfg: EngineConfig, asset: str, name: str, value: int) -> tuple[int, EngineConfig]:
        """``cfg`` with one field of ``asset``'s oracle policy changed (the asset gets its own policy)."""
        old, pol = replace_path(cfg.policy(asset), [name], value)
        oracle = tuple(sorted([*((a, p) for a, p in cfg.oracle if a != asset), (asset, pol)]))
        return old, dataclasses.replace(cfg, oracle=oracle)

    def reconfigure(self, cfg: EngineConfig) -> None:
        led = self.led
        led.cfg = cfg
        for m, spec in zip(led.markets, cfg.markets, strict=True):
            if spec is not m.spec:
                m.set_spec(spec)
        self.confirm.liquidator = make_liquidator(cfg)


def replace_path(obj: Any, path: list[str], value: int) -> tuple[int, Any]:
    """``obj`` with the nested field ``path`` set to ``value`` (frozen dataclasses all the way down);
    returns (old value, new object). Booleans are given as 0/1."""
    head = path[0]
    if isinstance(obj, tuple):  # an element of a tuple field (a bracket), by index
        i = int(head)
        if not 0 <= i < len(obj):
            raise ValidationError(f"no element {i} (there are {len(obj)})")
        old, new_item = replace_path(obj[i], path[1:], value)
        return old, (*obj[:i], new_item, *obj[i + 1 :])
    cur = getattr(obj, head)
    if len(path) > 1:
        old, new_child = replace_path(cur, path[1:], value)
        return old, dataclasses.replace(obj, **{head: new_child})
    if isinstance(cur, bool):
        if value not in (0, 1):
            raise ValidationError(f"{head} must be in [0, 1] (a flag), got {value}")
        return int(cur), dataclasses.replace(obj, **{head: bool(value)})
    if not isinstance(cur, int):
        raise ValidationError(f"{head} is not an integer parameter")
    return cur, dataclasses.replace(obj, **{head: value})
