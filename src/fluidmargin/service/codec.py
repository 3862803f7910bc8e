"""Quantums in and out of the API: exact decimal strings in natural units, never JSON floats.

Requests carry decimal strings ("12.5" USD, "0.01" BTC, "50000.12" a price) that are parsed exactly
with :func:`~fluidmargin.core.units.parse_decimal`; more decimals than the unit holds is refused, not
rounded. Responses render every quantum back with :func:`~fluidmargin.core.units.format_decimal`.

Engine field names carry their unit (``amount_quote_q``, ``size_base_q``, ``price_q``,
``funding_rate_e9``). On the wire the unit suffix is dropped and the value is a decimal string in
natural units: ``amount``, ``size``, ``price``, ``funding_rate``. :func:`wire_name` and
:func:`render_event` apply the rule; the event models in :mod:`fluidmargin.service.schemas` are
generated from the same rule, so documentation and payloads cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import FUNDING_DECIMALS, PPM, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, parse_decimal
from fluidmargin.core.units import format_decimal as fmt
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig

RATE_DECIMALS = 9  # *_e9 ratios (funding rates)
SHARE_DECIMALS = QUOTE_DECIMALS  # vault shares: the first deposit buys one share per quote quantum
DECIMAL_PATTERN = r"^-?[0-9]{1,30}(\.[0-9]{1,30})?$"
SHARE_FIELDS = ("shares", "shares_delta", "total_shares")
_SUFFIXES = ("_quote_q", "_base_q", "_fidx", "_e9", "_q")


class FieldError(ValidationError):
    """A request field that cannot be accepted; rendered as a 422 naming the field."""

    def __init__(self, field: str, msg: str, where: str = "body") -> None:
        super().__init__(f"{field}: {msg}")
        self.field = field
        self.msg = msg
        self.where = where


def to_quantums(text: str, decimals: int, field: str, *, positive: bool = False, signed: bool = False) -> int:
    """Exact quantums at ``10**-decimals`` of the decimal string ``text``; excess precision is refused."""
    if not isinstance(text, str):
        raise FieldError(field, "expected a decimal string (JSON numbers are not accepted)")
    try:
        lo = parse_decimal(text, decimals, Rounding.FLOOR, field)
        hi = parse_decimal(text, decimals, Rounding.CEIL, field)
    except ValidationError as e:
        raise FieldError(field, str(e).removeprefix(f"{field}: ")) from None
    if lo != hi:
        raise FieldError(field, f"{text!r} has more than {decimals} decimals")
    if lo < 0 and not signed:
        raise FieldError(field, f"{text!r} must not be negative")
    if positive and lo == 0:
        raise FieldError(field, f"{text!r} must be non-zero" if signed else f"{text!r} must be positive")
    return lo


def confidence_ppm(text: str) -> int:
    """A published price's or vol's confidence, a decimal from 0 to 1 (six decimals), in ppm."""
    conf = to_quantums(text, 6, "confidence")
    if conf > PPM:
        raise FieldError("confidence", "must be between 0 and 1")
    return conf


# --- strict reading of JSON bodies, path and query integers ------------------------------------------------

_CANONICAL_INT = re.compile(r"0|[1-9][0-9]{0,18}")


class DuplicateKey(ValueError):
    """A JSON object names the same key twice (which value was meant is unknowable: refused)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r} in a JSON object")
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKey(k)
            seen.add(k)
    return out


def loads_json(body: bytes | str) -> Any:
    """``json.loads`` that refuses duplicate keys (:class:`DuplicateKey`); the app and the fast path both
    read bodies with it, so they agree on every input."""
    return json.loads(body, object_pairs_hook=_unique_pairs)


def canonical_int(value: Any) -> Any:
    """A path or query integer (a pydantic ``BeforeValidator``): plain decimal digits only, no sign, space,
    ``_``, ``.`` or leading zero, so one id has one spelling."""
    if isinstance(value, str):
        if _CANONICAL_INT.fullmatch(value) is None:
            raise ValueError("must be plain decimal digits (no sign, spaces, separators or leading zeros)")
        return int(value)
    return value


def strict_bool(value: Any) -> Any:
    """A query flag (a pydantic ``BeforeValidator``): ``true`` or ``false``, nothing else."""
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("must be true or false")
        return value == "true"
    return value


# --- scales -------------------------------------------------------------------------------------------


def wire_name(name: str) -> str:
    """The field's name on the wire: its unit suffix dropped (``mark_q`` -> ``mark``)."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_quantum(name: str) -> bool:
    return name != "ts_ns" and (name.endswith(_SUFFIXES) or name in SHARE_FIELDS)


def market_of_auction(auction_id: str) -> str:
    """Auction ids are ``<market>-<n>`` (see the waterfall)."""
    return auction_id.rsplit("-", 1)[0]


class Scales:
    """Decimal places per unit for one engine configuration."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.size = {m.symbol: m.size_decimals for m in cfg.markets}
        self.size.update({o.symbol: o.size_decimals for o in cfg.options})
        self.coll = {c.symbol: c.decimals for c in cfg.collateral}

    def size_decimals(self, market: str) -> int:
        return self.size.get(market, 0)

    def of(self, name: str, ctx: dict[str, Any], i: int | None = None) -> int:
        """Decimals of field ``name`` in the event/object ``ctx`` (``i``: element of a column)."""
        if name in SHARE_FIELDS:
            return SHARE_DECIMALS
        if name.endswith("_fidx"):
            return FUNDING_DECIMALS
        if name.endswith("_e9"):
            return RATE_DECIMALS
        if name.endswith("price_q") or name == "mark_q":
            return PRICE_DECIMALS
        if name.endswith("_base_q"):
            market = ctx.get("market")
            if market is None and "auction_id" in ctx:
                market = market_of_auction(str(ctx["auction_id"]))
            if market is None and i is not None and isinstance(ctx.get("pos_market"), list):
                market = ctx["pos_market"][i]
            return self.size_decimals(str(market))
        if name == "amount_q" and "asset" in ctx:
            return self.coll.get(str(ctx["asset"]), QUOTE_DECIMALS)
        return QUOTE_DECIMALS

    def render(self, d: dict[str, Any]) -> dict[str, Any]:
        """A plain dict (an event's or a config's) with quantums as decimal strings, renamed for the wire."""
        out: dict[str, Any] = {}
        for k, v in d.items():
            if is_quantum(k) and isinstance(v, int) and not isinstance(v, bool):
                out[wire_name(k)] = fmt(v, self.of(k, d))
            elif is_quantum(k) and isinstance(v, list):
                out[wire_name(k)] = [fmt(x, self.of(k, d, i)) for i, x in enumerate(v)]
            else:
                out[k] = v
        return out

    def render_config(self, obj: Any, size_decimals: int | None = None) -> Any:
        """The engine config (``EngineConfig.to_dict()``) with its quantums as decimal strings."""
        if isinstance(obj, dict):
            sd = obj.get("size_decimals", size_decimals)
            out: dict[str, Any] = {}
            for k, v in obj.items():
                if k.endswith("_q") and isinstance(v, int) and not isinstance(v, bool):
                    dec = PRICE_DECIMALS if k.endswith("price_q") else sd if k.endswith("_base_q") else QUOTE_DECIMALS
                    out[wire_name(k)] = fmt(v, dec or 0)
                elif k.endswith("_q") and v is None:
                    out[wire_name(k)] = None
                else:
                    out[k] = self.render_config(v, sd)
            return out
        if isinstance(obj, list | tuple):
            return [self.render_config(x, size_decimals) for x in obj]
        return obj


def render_event(seq: int, event: ev.Event, scales: Scales) -> list[dict[str, Any]]:
    """One log record as wire events (a columnar ``PositionsLiquidated`` becomes one event per account)."""
    out = []
    for e in ev.expand([event]):
        d = e.to_dict()
        out.append({"type": d.pop("type"), "seq": seq, **scales.render(d)})
    return out


def render_records(records: list[tuple[int, ev.Event]], scales: Scales) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for seq, e in records:
        out.extend(render_event(seq, e, scales))
    return out


def event_fields(cls: type[ev.Event]) -> list[tuple[str, str, bool]]:
    """(engine name, declared type, is a quantum) of each field of an event class."""
    return [(f.name, str(f.type), is_quantum(f.name)) for f in dataclasses.fields(cls)]
