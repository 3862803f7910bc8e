"""Derive-format portfolio-margin cases: parse one into this project's portfolio and parameters.

The format is that of Derive's PMRM_2 portfolio cases (derivexyz/v2-core,
``test/risk-managers/unit-tests/PMRM_2/portfolio_cases/*.json``): a ``Scenario`` (the account and its
market), ``Parameters`` (the grid and the parameter blocks) and an optional ``Result`` (which is not
read here). Parsing is pure: text or a decoded object in, a :class:`DeriveCase` out; a malformed case
raises :class:`DeriveCaseError` naming the key path and the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.portfolio import (
    SECONDS_PER_DAY,
    BasisContingencyParams,
    CollateralHolding,
    ContingencyParams,
    ExpiryHolding,
    MarginParams,
    OptionHolding,
    Portfolio,
    PortfolioMarginParams,
    Scenario,
    SkewShockParams,
    VolShock,
    VolShockParams,
)

_DIRECTIONS = {
    "Up": VolShock.UP,
    "None": VolShock.NONE,
    "Down": VolShock.DOWN,
    "LINEAR": VolShock.SKEW_LINEAR,
    "ABS": VolShock.SKEW_ABS,
}


class DeriveCaseError(ValidationError):
    """A Derive-format case that cannot be read; ``reason`` says why (with the key path)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"bad Derive case: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class DeriveCase:
    """A parsed case. ``option_index[i]`` locates the file's i-th option: (expiry index, option index)
    in ``portfolio.expiries`` (sorted by time to expiry). ``warnings`` lists what was read leniently."""

    portfolio: Portfolio
    params: PortfolioMarginParams
    option_index: tuple[tuple[int, int], ...]
    warnings: tuple[str, ...]


def _get(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if not isinstance(obj, Mapping):
        raise DeriveCaseError(f"{path}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise DeriveCaseError(f"{path}.{key}: missing" if path else f"{key}: missing")
    return obj[key]


def _num(obj: Mapping[str, Any], key: str, path: str) -> float:
    """A finite number; numeric strings are accepted (the format writes some numbers as strings)."""
    raw = _get(obj, key, path)
    where = f"{path}.{key}"
    if isinstance(raw, bool):
        raise DeriveCaseError(f"{where}: expected a number, got {raw!r}")
    if isinstance(raw, int | float):
        x = float(raw)
    elif isinstance(raw, str):
        try:
            x = float(raw)
        except ValueError:
            raise DeriveCaseError(f"{where}: not a number: {raw!r}") from None
    else:
        raise DeriveCaseError(f"{where}: expected a number, got {type(raw).__name__}")
    if not math.isfinite(x):
        raise DeriveCaseError(f"{where}: not a finite number: {raw!r}")
    return x


def _int(obj: Mapping[str, Any], key: str, path: str) -> int:
    x = _num(obj, key, path)
    if x != int(x):
        raise DeriveCaseError(f"{path}.{key}: expected whole seconds, got {x!r}")
    return int(x)


def _bool(obj: Mapping[str, Any], key: str, path: str) -> bool:
    raw = _get(obj, key, path)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise DeriveCaseError(f"{path}.{key}: expected true/false or 1/0, got {raw!r}")


def _list(obj: Mapping[str, Any], key: str, path: str) -> Sequence[Any]:
    raw = _get(obj, key, path)
    if not isinstance(raw, list):
        raise DeriveCaseError(f"{path}.{key}: expected a list, got {type(raw).__name__}")
    return raw


T = TypeVar("T")


def _build(where: str, cls: type[T], **kw: Any) -> T:
    """Construct a model value, turning its validation error into a DeriveCaseError at ``where``."""
    try:
        return cls(**kw)
    except DeriveCaseError:
        raise
    except ValidationError as e:
        raise DeriveCaseError(f"{where}: {e}") from None


def _scenarios(params: Mapping[str, Any], warnings: list[str]) -> tuple[Scenario, ...]:
    """Derive's grid lists the undampened regular scenarios first; every stress after them is a tail."""
    rows = _list(params, "Scenarios", "Parameters")
    out: list[Scenario] = []
    in_regular = True
    for i, row in enumerate(rows):
        where = f"Parameters.Scenarios[{i}]"
        direction = _get(row, "VolShockDirection", where)
        if direction not in _DIRECTIONS:
            raise DeriveCaseError(f"{where}.VolShockDirection: unknown {direction!r} (Up, None, Down, LINEAR, ABS)")
        vol_shock = _DIRECTIONS[direction]
        spot_shock = _num(row, "SpotShock", where)
        dampening = _num(row, "DampeningFactor", where)
        if vol_shock.is_skew:
            in_regular = False
            if spot_shock != 1.0:
                warnings.append(
                    f"{where}: a {direction} skew scenario with SpotShock {spot_shock} is revalued at today's "
                    "spot (Derive's contract refuses a skew scenario with a spot move)"
                )
                spot_shock = 1.0
        elif dampening != 1.0:
            in_regular = False
        tail = not vol_shock.is_skew and not in_regular
        out.append(_build(where, Scenario, spot_shock=spot_shock, vol_shock=vol_shock, dampening=dampening, tail=tail))
    return tuple(out)


def _params(p: Mapping[str, Any], warnings: list[str]) -> PortfolioMarginParams:
    vs = _get(p, "VolShock", "Parameters")
    sk = _get(p, "SkewShock", "Parameters")
    mg = _get(p, "Margin", "Parameters")
    bc = _get(p, "BasisContingency", "Parameters")
    oc = _get(p, "OtherContingency", "Parameters")
    v, s, m, b, o = (
        "Parameters.VolShock",
        "Parameters.SkewShock",
        "Parameters.Margin",
        "Parameters.BasisContingency",
        "Parameters.OtherContingency",
    )
    return _build(
        "Parameters",
        PortfolioMarginParams,
        scenarios=_scenarios(p, warnings),
        vol_shock=_build(
            v,
            VolShockParams,
            range_up=_num(vs, "VOLRANGEUP", v),
            range_down=_num(vs, "VOLRANGEDOWN", v),
            short_term_power=_num(vs, "SHORTTERMPOWER", v),
            long_term_power=_num(vs, "LONGTERMPOWER", v),
            dte_floor_s=_num(vs, "DTE_FLOOR", v) * SECONDS_PER_DAY,
            min_vol_up=_num(vs, "MIN_VOL_EVAL_SHOCKED", v),
        ),
        skew_shock=_build(
            s,
            SkewShockParams,
            linear_base_cap=_num(sk, "LINEAR_SCALE_CAP", s),
            linear_c_base=_num(sk, "LINEAR_CBASE", s),
            abs_base_cap=_num(sk, "ABS_SCALE_CAP", s),
            abs_c_base=_num(sk, "ABS_CBASE", s),
            min_k_star=_num(sk, "MIN_K_STAR", s),
            width_scale=_num(sk, "MIN_WIDTH_SCALE", s),
            vol_param_static=_num(sk, "VOL_PARAM_STATIC", s),
            vol_param_scale=_num(sk, "VOL_PARAM_SCALE", s),
        ),
        margin=_build(
            m,
            MarginParams,
            im_loss_factor=_num(mg, "IM_LOSS_FACTOR", m),
            mm_loss_factor=_num(mg, "MM_LOSS_FACTOR", m),
            long_static_discount=_num(mg, "BASE_STATIC_DISCOUNT", m),
            short_static_discount=_num(mg, "BASE_STATIC_DISCOUNT_NEG", m),
            long_rate_mult=_num(mg, "LONG_RATE_MULTSCALE", m),
            long_rate_add=_num(mg, "LONG_RATE_ADDSCALE", m),
            short_rate_mult=_num(mg, "SHORT_RATE_MULTSCALE", m),
            short_rate_add=_num(mg, "SHORT_RATE_ADDSCALE", m),
        ),
        basis=_build(
            b,
            BasisContingencyParams,
            spot_up=_num(bc, "SCENARIO_SPOT_UP", b),
            spot_down=_num(bc, "SCENARIO_SPOT_DOWN", b),
            add_factor=_num(bc, "BASIS_CONT_ADD_FACTOR", b),
            mult_factor=_num(bc, "BASIS_CONT_MULT_FACTOR", b),
        ),
        contingency=_build(
            o,
            ContingencyParams,
            perp_mm=_num(oc, "MM_PERP_PERCENT", o),
            perp_im_extra=_num(oc, "IM_PERP_PERCENT", o),
            option_mm=_num(oc, "MM_OPTION_PERCENT", o),
            option_im_extra=_num(oc, "IM_OPTION_PERCENT", o),
            confidence_threshold=_num(oc, "CONF_THRESHOLD", o),
            confidence_margin=_num(oc, "CONF_MARGIN", o),
            peg_loss_threshold=_num(oc, "PEG_LOSS_THRESHOLD", o),
            peg_loss_factor=_num(oc, "PEG_LOSS_FACTOR", o),
        ),
    )


def _expiries(sc: Mapping[str, Any]) -> tuple[tuple[ExpiryHolding, ...], tuple[tuple[int, int], ...]]:
    feeds: dict[int, Mapping[str, Any]] = {}
    for i, feed in enumerate(_list(sc, "OptionFeeds", "Scenario")):
        where = f"Scenario.OptionFeeds[{i}]"
        sec = _int(feed, "FeedExpiry", where)
        if sec in feeds:
            raise DeriveCaseError(f"{where}.FeedExpiry: expiry {sec} appears twice")
        feeds[sec] = feed
    by_expiry: dict[int, list[tuple[int, OptionHolding]]] = {}
    for i, opt in enumerate(_list(sc, "Options", "Scenario")):
        where = f"Scenario.Options[{i}]"
        sec = _int(opt, "Expiry", where)
        if sec not in feeds:
            raise DeriveCaseError(f"{where}.Expiry: no OptionFeeds entry for expiry {sec}")
        feed_where = f"Scenario.OptionFeeds[FeedExpiry={sec}]"
        holding = _build(
            where,
            OptionHolding,
            strike=_num(opt, "Strike", where),
            is_call=_bool(opt, "IsCall", where),
            amount=_num(opt, "Amount", where),
            vol=_num(opt, "MarkVol", where),
            vol_confidence=_num(feeds[sec], "OptionVolConfidences", feed_where),
        )
        by_expiry.setdefault(sec, []).append((i, holding))
    expiries: list[ExpiryHolding] = []
    index: dict[int, tuple[int, int]] = {}
    for e_idx, sec in enumerate(sorted(by_expiry)):
        feed = feeds[sec]
        where = f"Scenario.OptionFeeds[FeedExpiry={sec}]"
        for o_idx, (file_idx, _) in enumerate(by_expiry[sec]):
            index[file_idx] = (e_idx, o_idx)
        expiries.append(
            _build(
                where,
                ExpiryHolding,
                sec_to_expiry_s=sec,
                forward=_num(feed, "Forward", where),
                rate=_num(feed, "Rate", where),
                options=tuple(h for _, h in by_expiry[sec]),
                forward_confidence=_num(feed, "ForwardConfidence", where),
                rate_confidence=_num(feed, "RateConfidence", where),
            )
        )
    return tuple(expiries), tuple(index[i] for i in range(len(index)))


def _collaterals(sc: Mapping[str, Any]) -> tuple[CollateralHolding, ...]:
    out = []
    for i, col in enumerate(_list(sc, "Collaterals", "Scenario")):
        where = f"Scenario.Collaterals[{i}]"
        name = _get(col, "Name", where)
        if not isinstance(name, str) or not name:
            raise DeriveCaseError(f"{where}.Name: expected a name, got {name!r}")
        mm = _num(col, "MMHaircut", where)
        out.append(
            _build(
                where,
                CollateralHolding,
                name=name,
                amount=_num(col, "Amount", where),
                price=_num(col, "Price", where),
                confidence=_num(col, "Confidence", where),
                risk_cancelling=_bool(col, "IsRiskCancelling", where),
                mm_haircut=mm,
                im_extra_haircut=_num(col, "IMHaircut", where),
            )
        )
    return tuple(out)


def parse_derive_case(data: Any) -> DeriveCase:
    """A decoded Derive-format case (the object ``json.loads`` gives) as the model's inputs."""
    if not isinstance(data, Mapping):
        raise DeriveCaseError(f"expected a JSON object at the top, got {type(data).__name__}")
    sc = _get(data, "Scenario", "")
    warnings: list[str] = []
    params = _params(_get(data, "Parameters", ""), warnings)
    expiries, option_index = _expiries(sc)
    s = "Scenario"
    portfolio = _build(
        s,
        Portfolio,
        spot_price=_num(sc, "SpotPrice", s),
        cash_quote=_num(sc, "Cash", s),
        spot_confidence=_num(sc, "SpotConfidence", s),
        stable_price=_num(sc, "StablePrice", s),
        perp_amount=_num(sc, "NumPerps", s),
        perp_price=_num(sc, "PerpPrice", s),
        perp_confidence=_num(sc, "PerpConfidence", s),
        perp_unrealised_quote=_num(sc, "UnrealisedPerpPNL", s) + _num(sc, "UnrealisedFunding", s),
        expiries=expiries,
        collaterals=_collaterals(sc),
    )
    return DeriveCase(portfolio=portfolio, params=params, option_index=option_index, warnings=tuple(warnings))


def _reject_constant(token: str) -> float:
    raise DeriveCaseError(f"not a finite number: {token}")


def parse_derive_case_text(text: str | bytes) -> DeriveCase:
    """A Derive-format case from its JSON text; NaN and Infinity literals are refused."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except DeriveCaseError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise DeriveCaseError(f"malformed JSON: {e}") from None
    return parse_derive_case(data)
