"""Margin figures and liquidation price of one position, from one plain JSON-like object.

This is the maths behind ``fluidmargin quote``: it parses and validates the object, builds the
tier model with :mod:`fluidmargin.risk.perp.presets` and computes everything with
:mod:`fluidmargin.risk.perp.margin` (one margin computation in the project). No I/O.

Input (keys of the object; numbers may be JSON numbers or decimal strings, never negative):

* ``preset``: ``binance`` (``mmr`` + ``maintenance_amount``, or ``brackets``, or ``symbol``
  BTCUSDT), ``hyperliquid`` (``max_leverage``, or ``tiers`` [[lower_bound, max_leverage], ...],
  or ``symbol`` BTC/ETH), ``dydx`` (``imf``, ``maintenance_fraction``, optional ``oi_lower``,
  ``oi_upper`` and ``open_interest``), ``drift`` (``imr``, ``mmr``, ``imf_factor``),
  ``gate`` / ``okx`` (``mmr`` + ``taker_fee``, charged inside maintenance), ``bybit`` (``mmr``;
  maintenance on the entry notional), ``custom`` (``tiers``: bracket rows as for binance).
* ``margin_mode``: ``isolated`` | ``cross``; ``side``: ``long`` | ``short``.
* ``entry_price``, ``size`` (base units, > 0), ``collateral`` (isolated margin, or the wallet
  balance in cross mode), ``mark_price`` (defaults to the entry price), ``leverage`` (a whole
  number, for the initial margin; defaults to the tier's maximum).
* ``other_positions`` (cross only): objects with ``entry_price``, ``size``, ``side``,
  ``mark_price`` and their own preset parameters (``preset`` defaults to the line's). Their
  unrealised PnL and maintenance enter the wallet as in Binance's one-way cross formula.

Output: decimal strings ``initial_margin`` (at ``leverage``, on the notional at mark),
``maintenance_margin`` (this position), ``total_maintenance_margin`` (with the other positions),
``notional``, ``equity`` (collateral plus unrealised PnL) and ``liquidation_price`` (``None`` when no
positive price liquidates the position), plus ``leverage`` and ``size_decimals`` used.

Gap risk (optional): ``gap_risk`` an object as a venue's :class:`~fluidmargin.model.config.GapRiskSpec`
(``model`` merton | kou | gbm, ``sigma``, ``lam``, ``mu_j``, ``sigma_j`` (merton), ``p_up``, ``eta_up``,
``eta_down`` (kou), ``horizon_s``, ``target``). The answer then adds ``bankruptcy_price`` (where the
bucket's equity is zero, rounded toward the mark; ``None`` for a long no positive price bankrupts),
``gap_probability`` (P(touch it within ``horizon_s``), :mod:`fluidmargin.risk.stats.gap`) and ``gap_addon``
(collateral that keeps that probability at or under ``target``). Without it the answer is unchanged.

Units and rounding: prices at 1e-8 quote, money at 1e-6 quote; the size keeps every decimal it
was given (at most 12). Every rounding goes against the account: collateral rounds down, entry
and mark prices round to the account's disadvantage, requirements round up, and the liquidation
price rounds toward safety (up for a long, down for a short).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import (
    MAX_QUANTUMS,
    PRICE_DECIMALS,
    QUOTE_DECIMALS,
    Rounding,
    check_bounds,
    format_decimal,
    parse_decimal,
)
from fluidmargin.model.config import GapRiskSpec
from fluidmargin.model.instruments import BracketModel
from fluidmargin.risk.perp import presets
from fluidmargin.risk.perp.margin import (
    bracket_for,
    initial_quote_q,
    liquidation_price_q,
    position_risk,
    value_quote_q,
)
from fluidmargin.risk.stats import gap

MAX_SIZE_DECIMALS = 12
PRESETS = ("binance", "hyperliquid", "dydx", "drift", "gate", "okx", "bybit", "custom")
MARGIN_MODES = ("isolated", "cross")
SIDES = ("long", "short")
# the keys presets.binance reads from a bracket row (three naming dialects)
_BRACKET_KEYS = (
    "notional_floor", "minNotional", "notionalFloor",
    "maint_margin_ratio", "maintenanceMarginRate", "maintMarginRatio",
    "maint_amount_cum", "maintAmt", "cum",
    "max_leverage", "maxLeverage", "initialLeverage",
)  # fmt: skip
_MIN_EXPONENT = -40  # a non-zero input below 1e-40 is a mistake, not a number to round
_MAX_EXPONENT = 30
_MAX_DIGITS = 28


# --- parsing --------------------------------------------------------------------------------------


def _to_decimal(value: Any, name: str) -> Decimal:
    """A finite, non-negative Decimal of sane magnitude, or a ValidationError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValidationError(f"{name}: expected a number or a decimal string, got {type(value).__name__}")
    shown = repr(value) if isinstance(value, str) else str(value)
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError(f"{name}: {shown} is not a decimal number") from None
    if not d.is_finite():
        raise ValidationError(f"{name}: {shown} is not a finite number")
    if d < 0:
        raise ValidationError(f"{name}: {shown} is negative")
    if d != 0 and not _MIN_EXPONENT <= d.adjusted() <= _MAX_EXPONENT:
        raise ValidationError(f"{name}: {shown} is out of range")
    if len("".join(map(str, d.as_tuple().digits)).strip("0")) > _MAX_DIGITS:
        # beyond Decimal's 28-digit context, parse_decimal would round before its named direction
        raise ValidationError(f"{name}: {shown} has more than {_MAX_DIGITS} significant digits")
    return d


def _field(obj: Mapping[str, Any], key: str, prefix: str = "") -> Decimal:
    if obj.get(key) is None:
        raise ValidationError(f"missing field {prefix}{key!r}")
    return _to_decimal(obj[key], prefix + key)


def _opt_field(obj: Mapping[str, Any], key: str, default: Decimal, prefix: str = "") -> Decimal:
    return default if obj.get(key) is None else _to_decimal(obj[key], prefix + key)


def _whole(d: Decimal, name: str) -> int:
    if d != d.to_integral_value() or d <= 0:
        raise ValidationError(f"{name}: {d} is not a positive whole number")
    n = int(d)
    return check_bounds(name, n, lo=1, hi=MAX_QUANTUMS)


def _choice(obj: Mapping[str, Any], key: str, allowed: Sequence[str], prefix: str = "") -> str:
    v = obj.get(key)
    if v is None:
        raise ValidationError(f"missing field {prefix}{key!r}")
    if not isinstance(v, str) or v.strip().lower() not in allowed:
        raise ValidationError(f"{prefix}{key}: {v!r} is not one of {', '.join(allowed)}")
    return v.strip().lower()


def _size(d: Decimal, name: str) -> tuple[int, int]:
    """(size in base quantums, size decimals) representing ``d`` exactly."""
    if d == 0:
        raise ValidationError(f"{name}: must be positive")
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)  # finite, checked by _to_decimal
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    decimals = max(0, -(exp + trailing))
    if decimals > MAX_SIZE_DECIMALS:
        raise ValidationError(f"{name}: {d} has more than {MAX_SIZE_DECIMALS} decimals")
    num, den = d.as_integer_ratio()
    size_q, rem = divmod(num * 10**decimals, den)
    assert rem == 0
    return check_bounds(name, size_q, lo=1), decimals


def _price_q(d: Decimal, name: str, rounding: Rounding) -> int:
    if d == 0:
        raise ValidationError(f"{name}: must be positive")
    p = parse_decimal(d, PRICE_DECIMALS, rounding, name)
    if p <= 0:
        raise ValidationError(f"{name}: {d} is below one price quantum (1e-8)")
    return p


# --- tier models ----------------------------------------------------------------------------------


def _rows(value: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{name}: expected a non-empty list of bracket objects")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise ValidationError(f"{name}[{i}]: expected an object")
        clean = {k: _to_decimal(row[k], f"{name}[{i}].{k}") for k in _BRACKET_KEYS if row.get(k) is not None}
        for k in ("max_leverage", "maxLeverage", "initialLeverage"):
            if k in clean:
                _whole(clean[k], f"{name}[{i}].{k}")
        rows.append(clean)
    return rows


def _hyperliquid_tiers(value: Any, name: str) -> list[tuple[Decimal, int]]:
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{name}: expected a non-empty list of [lower_bound, max_leverage]")
    tiers = []
    for i, t in enumerate(value):
        if isinstance(t, dict):
            lower, lev = t.get("lower_bound"), t.get("max_leverage")
        elif isinstance(t, list) and len(t) == 2:
            lower, lev = t
        else:
            raise ValidationError(f"{name}[{i}]: expected [lower_bound, max_leverage]")
        if lower is None or lev is None:
            raise ValidationError(f"{name}[{i}]: needs lower_bound and max_leverage")
        tiers.append(
            (_to_decimal(lower, f"{name}[{i}].lower_bound"),
             _whole(_to_decimal(lev, f"{name}[{i}].max_leverage"), f"{name}[{i}].max_leverage"))
        )  # fmt: skip
    return tiers


def _symbol(obj: Mapping[str, Any], prefix: str) -> str:
    s = obj.get("symbol")
    if not isinstance(s, str):
        raise ValidationError(f"{prefix}symbol: expected a string")
    return s.upper().replace("/", "").replace("-", "").split(":")[0]


def build_model(obj: Mapping[str, Any], preset: str, prefix: str = "") -> BracketModel:
    """The tier model a preset name and its parameters describe (see the module docstring)."""
    zero = Decimal(0)
    if preset == "binance":
        if obj.get("brackets") is not None:
            return presets.binance(_rows(obj["brackets"], prefix + "brackets"), "binance")
        if obj.get("mmr") is not None:
            lev = _whole(_opt_field(obj, "max_leverage", Decimal(125), prefix), prefix + "max_leverage")
            cum = _opt_field(obj, "maintenance_amount", zero, prefix)
            return presets.single_rate(_field(obj, "mmr", prefix), cum, lev, name="binance")
        if obj.get("symbol") is not None:
            if _symbol(obj, prefix) == "BTCUSDT":
                return presets.binance_btcusdt()
            raise ValidationError(f"{prefix}symbol: no built-in binance brackets for {obj['symbol']!r}")
        raise ValidationError("binance preset needs mmr (+ maintenance_amount), brackets or symbol")
    if preset == "hyperliquid":
        if obj.get("tiers") is not None:
            return presets.hyperliquid(_hyperliquid_tiers(obj["tiers"], prefix + "tiers"))
        if obj.get("max_leverage") is not None:
            lev = _whole(_field(obj, "max_leverage", prefix), prefix + "max_leverage")
            return presets.hyperliquid([(0, lev)])
        if obj.get("symbol") is not None:
            sym = _symbol(obj, prefix).removesuffix("USDC").removesuffix("USD")
            if sym in presets.HYPERLIQUID_MAINNET_TIERS:
                return presets.hyperliquid(presets.HYPERLIQUID_MAINNET_TIERS[sym])
            raise ValidationError(f"{prefix}symbol: no built-in hyperliquid tiers for {obj['symbol']!r}")
        raise ValidationError("hyperliquid preset needs max_leverage, tiers or symbol")
    if preset == "dydx":
        imf = _field(obj, "imf", prefix)
        if imf == 0:
            raise ValidationError(f"{prefix}imf: must be positive")
        has_lo, has_hi = obj.get("oi_lower") is not None, obj.get("oi_upper") is not None
        if has_lo != has_hi:
            raise ValidationError(f"{prefix}oi_lower and oi_upper go together")
        lo = _field(obj, "oi_lower", prefix) if has_lo else None
        hi = _field(obj, "oi_upper", prefix) if has_hi else None
        return presets.dydx(imf, _field(obj, "maintenance_fraction", prefix), lo, hi)
    if preset == "drift":
        imr = _field(obj, "imr", prefix)
        if imr == 0:
            raise ValidationError(f"{prefix}imr: must be positive")
        return presets.drift(imr, _field(obj, "mmr", prefix), _opt_field(obj, "imf_factor", zero, prefix))
    if preset in ("gate", "okx"):
        fee_ppm = parse_decimal(_field(obj, "taker_fee", prefix), 6, Rounding.CEIL, prefix + "taker_fee")
        lev = _whole(_opt_field(obj, "max_leverage", Decimal(125), prefix), prefix + "max_leverage")
        cum = _opt_field(obj, "maintenance_amount", zero, prefix)
        return presets.single_rate(_field(obj, "mmr", prefix), cum, lev, name=preset, close_fee_ppm=fee_ppm)
    if preset == "bybit":
        lev = _whole(_opt_field(obj, "max_leverage", Decimal(125), prefix), prefix + "max_leverage")
        cum = _opt_field(obj, "maintenance_amount", zero, prefix)
        return presets.single_rate(_field(obj, "mmr", prefix), cum, lev, name="bybit", mm_on_entry=True)
    if preset == "custom":
        if obj.get("tiers") is None:
            raise ValidationError("custom preset needs tiers")
        return presets.binance(_rows(obj["tiers"], prefix + "tiers"), "custom")
    raise ValidationError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")


# --- positions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Position:
    model: BracketModel
    size_base_q: int  # signed: long > 0
    size_decimals: int
    entry_q: int
    mark_q: int
    cost_quote_q: int  # signed: what opening it cost (a short's is negative), rounded up
    entry_notional_quote_q: int


def _position(obj: Mapping[str, Any], model: BracketModel, prefix: str = "") -> _Position:
    side = _choice(obj, "side", SIDES, prefix)
    long = side == "long"
    size_abs, sd = _size(_field(obj, "size", prefix), prefix + "size")
    size = size_abs if long else -size_abs
    # prices round against the account: a long bought higher and is marked lower, a short the reverse
    entry = _price_q(
        _field(obj, "entry_price", prefix), prefix + "entry_price", Rounding.CEIL if long else Rounding.FLOOR
    )
    mark_raw, mark_name = obj.get("mark_price"), prefix + "mark_price"
    if mark_raw is None:  # the mark defaults to the entry price, rounded as a mark
        mark_raw, mark_name = obj["entry_price"], prefix + "entry_price"
    mark = _price_q(_to_decimal(mark_raw, mark_name), mark_name, Rounding.FLOOR if long else Rounding.CEIL)
    cost = value_quote_q(size, entry, sd, Rounding.CEIL)
    entry_notional = check_bounds(prefix + "entry notional", value_quote_q(size_abs, entry, sd, Rounding.CEIL))
    check_bounds(prefix + "notional at mark", value_quote_q(size_abs, mark, sd, Rounding.CEIL))
    return _Position(model, size, sd, entry, mark, cost, entry_notional)


def quote(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Initial and maintenance margin and liquidation price of the position ``obj`` describes.

    Raises :class:`~fluidmargin.core.errors.ValidationError` naming the first bad field.
    """
    if not isinstance(obj, Mapping):
        raise ValidationError("expected a JSON object")
    if isinstance(obj.get("preset"), str) and obj["preset"].strip().lower() not in PRESETS:
        raise ValidationError(f"unknown preset {obj['preset']!r} (known: {', '.join(PRESETS)})")
    preset = _choice(obj, "preset", PRESETS)
    mode = _choice(obj, "margin_mode", MARGIN_MODES)
    model = build_model(obj, preset)
    pos = _position(obj, model)
    collateral = parse_decimal(_field(obj, "collateral"), QUOTE_DECIMALS, Rounding.FLOOR, "collateral")
    open_interest = parse_decimal(
        _opt_field(obj, "open_interest", Decimal(0)), QUOTE_DECIMALS, Rounding.CEIL, "open_interest"
    )

    risk = position_risk(
        model, pos.size_base_q, pos.cost_quote_q, 0, pos.mark_q, pos.size_decimals, pos.entry_notional_quote_q
    )
    others_upnl = 0
    others_mm = 0
    others = obj.get("other_positions")
    if others is not None and others != []:
        if mode != "cross":
            raise ValidationError("other_positions: only a cross account shares its wallet")
        if not isinstance(others, list):
            raise ValidationError("other_positions: expected a list of objects")
        for i, o in enumerate(others):
            prefix = f"other_positions[{i}]."
            if not isinstance(o, Mapping):
                raise ValidationError(f"{prefix[:-1]}: expected an object")
            o_preset = preset if o.get("preset") is None else _choice(o, "preset", PRESETS, prefix)
            op = _position(o, build_model(o, o_preset, prefix), prefix)
            r = position_risk(
                op.model,
                op.size_base_q,
                op.cost_quote_q,
                0,
                op.mark_q,
                op.size_decimals,
                op.entry_notional_quote_q,
            )
            others_upnl += r.upnl_quote_q
            others_mm += r.mm_quote_q

    if obj.get("leverage") is None:
        leverage = bracket_for(model, risk.notional_quote_q).max_leverage
    else:
        leverage = _whole(_to_decimal(obj["leverage"], "leverage"), "leverage")
    im = initial_quote_q(model, risk.notional_quote_q, leverage, abs(pos.size_base_q), pos.size_decimals, open_interest)
    # bucket equity at p is collateral + others' PnL - this position's cost + size * p
    fixed_equity = collateral + others_upnl - pos.cost_quote_q
    liq = liquidation_price_q(
        model, pos.size_base_q, pos.size_decimals, fixed_equity, others_mm, pos.entry_notional_quote_q
    )
    equity = collateral + others_upnl + risk.upnl_quote_q
    gap = _gap_fields(obj.get("gap_risk"), pos, fixed_equity)
    return {
        "preset": preset,
        "margin_mode": mode,
        "side": "long" if pos.size_base_q > 0 else "short",
        "size_decimals": pos.size_decimals,
        "leverage": leverage,
        "notional": format_decimal(risk.notional_quote_q, QUOTE_DECIMALS),
        "initial_margin": format_decimal(im, QUOTE_DECIMALS),
        "maintenance_margin": format_decimal(risk.mm_quote_q, QUOTE_DECIMALS),
        "total_maintenance_margin": format_decimal(risk.mm_quote_q + others_mm, QUOTE_DECIMALS),
        "equity": format_decimal(equity, QUOTE_DECIMALS),
        "liquidation_price": None if liq is None else format_decimal(liq, PRICE_DECIMALS),
        **gap,
    }


def _gap_fields(raw: Any, pos: _Position, fixed_equity_quote_q: int) -> dict[str, Any]:
    """``bankruptcy_price``, ``gap_probability`` and ``gap_addon`` when the line asks for gap risk."""
    if raw is None:
        return {}
    spec = GapRiskSpec.from_dict(raw, "gap_risk")
    g = gap.position_gap_risk(spec, pos.size_base_q, pos.size_decimals, pos.mark_q, fixed_equity_quote_q)
    return {
        "bankruptcy_price": None
        if g.bankruptcy_price_q is None
        else format_decimal(g.bankruptcy_price_q, PRICE_DECIMALS),
        "gap_probability": gap.format_probability(g.probability),
        "gap_addon": format_decimal(g.addon_quote_q, QUOTE_DECIMALS),
    }


def quote_line(line: str | bytes) -> dict[str, Any] | None:
    """One input line to one output object; never raises. None for a blank line (no output)."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
    except UnicodeDecodeError:
        return {"error": "line is not valid UTF-8"}
    if not text.strip():
        return None
    try:
        obj = json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        return {"error": f"malformed JSON: {e}"}
    try:
        return quote(obj)
    except ValidationError as e:
        return {"error": str(e)}
    except Exception as e:  # a bad line must never stop the stream; say what happened
        return {"error": f"cannot quote this line: {type(e).__name__}: {e}"}
