"""The base of every event: :class:`Event`, the declared field types of an event class, and the check
that an event's fields have them (ints are never bools). Inputs are in :mod:`fluidmargin.model.events`,
outputs in :mod:`fluidmargin.model.outputs`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Event:
    ts_ns: int
    is_input: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name, _want, _required in field_specs(type(self))}
        d["type"] = type(self).__name__
        return d


_SPECS: dict[type, tuple[tuple[str, str, bool], ...]] = {}


def field_specs(cls: type) -> tuple[tuple[str, str, bool], ...]:
    """``(name, declared type, required)`` of each field of an event class, in order (cached: the hot
    path asks for every input)."""
    specs = _SPECS.get(cls)
    if specs is None:
        specs = _SPECS[cls] = tuple(
            (
                f.name,
                f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
    return specs


def _type_error(name: str, want: str, v: Any) -> str:
    if want == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{name}: expected an integer, got {v!r}"
    elif want == "str":
        if not isinstance(v, str):
            return f"{name}: expected a string, got {v!r}"
    elif want.startswith("list[") and want.endswith("]"):
        if not isinstance(v, list):
            return f"{name}: expected a list, got {type(v).__name__}"
        inner = want[5:-1]
        for i, x in enumerate(v):
            bad = _type_error(f"{name}[{i}]", inner, x)
            if bad:
                return bad
    return ""


def field_type_error(event: Event) -> str:
    """Empty if every field of ``event`` has its declared type (ints are never bools), else why not."""
    for name, want, _required in field_specs(type(event)):
        v = getattr(event, name)
        if (want == "int" and type(v) is int) or (want == "str" and type(v) is str):
            continue  # the common case, without building a field label
        bad = _type_error(f"{type(event).__name__}.{name}", want, v)
        if bad:
            return bad
    return ""
