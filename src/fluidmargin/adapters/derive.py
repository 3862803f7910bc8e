"""Derive-format portfolio-margin cases: parse one into this project's portfolio and parameters.

The format is that of Derive's PMRM_2 portfolio cases (derivexyz/v2-core,
``test/risk-managers/unit-tests/PMRM_2/portfolio_cases/*.json``): a ``Scenario`` (the account and its
market), ``Parameters`` (the grid and the parameter blocks) and an optional ``Result`` (which is not
read here). Parsing is pure: text or a decoded object in, a :class:`DeriveCase` out; a malformed case
raises :class:`DeriveCaseError` naming the key path and the reason.

Parameters are held to exactly the bounds Derive's setters enforce (``PMRMLib_2.sol`` at a6010890:
``setVolShockParams``, ``setMarginParams``, ``setBasisContingencyParams``, ``setOtherContingencyParams``,
``setSkewShockParameters``, ``setCollateralParameters``; ``PMRM_2.setScenarios``): zero is accepted wherever
they accept it, and an unsigned field refuses a negative. Times follow the contract and its test harness:
a negative ``FeedExpiry`` (already expired) counts as 0 (``secToExpiry = max(expiry - now, 0)``), and in
the last 30 minutes the forward is split as ``LyraForwardFeed`` splits it: ``Forward x (1800 - s) / 1800``
already fixed by the settlement TWAP, the rest moving with spot (all of it fixed at expiry).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.pm_params import (
    SECONDS_PER_DAY,
    BasisContingencyParams,
    ContingencyParams,
    MarginParams,
    PortfolioMarginParams,
    Scenario,
    SkewShockParams,
    VolShock,
    VolShockParams,
)
from fluidmargin.risk.options.pm_types import CollateralHolding, ExpiryHolding, OptionHolding, Portfolio

SETTLEMENT_TWAP_S = 1800  # LyraForwardFeed.SETTLEMENT_TWAP_DURATION: the settlement price averages 30 minutes
MAX_SCENARIOS = 40  # PMRM_2.setScenarios

_INF = math.inf
_SETTERS = {
    "VolShock": "setVolShockParams",
    "Margin": "setMarginParams",
    "BasisContingency": "setBasisContingencyParams",
    "OtherContingency": "setOtherContingencyParams",
    "SkewShock": "setSkewShockParameters",
}
# (lower, lower inclusive, upper, upper inclusive): Derive's require()s; unsigned fields start at 0
_BOUNDS: dict[tuple[str, str], tuple[float, bool, float, bool]] = {
    ("VolShock", "VOLRANGEUP"): (0.0, True, 10.0, True),
    ("VolShock", "VOLRANGEDOWN"): (0.0, True, 10.0, True),
    ("VolShock", "SHORTTERMPOWER"): (-_INF, True, 10.0, True),  # signed
    ("VolShock", "LONGTERMPOWER"): (-_INF, True, 10.0, True),
    ("VolShock", "DTE_FLOOR"): (0.0, True, 400.0, True),  # days
    ("VolShock", "MIN_VOL_EVAL_SHOCKED"): (0.0, True, 20.0, True),
    ("Margin", "IM_LOSS_FACTOR"): (0.5, True, 10.0, True),
    ("Margin", "MM_LOSS_FACTOR"): (0.1, True, 10.0, True),
    ("Margin", "SHORT_RATE_MULTSCALE"): (0.0, True, 10.0, True),
    ("Margin", "LONG_RATE_MULTSCALE"): (0.0, True, 10.0, True),
    ("Margin", "SHORT_RATE_ADDSCALE"): (0.0, True, 10.0, True),
    ("Margin", "LONG_RATE_ADDSCALE"): (0.0, True, 10.0, True),
    ("Margin", "BASE_STATIC_DISCOUNT"): (0.0, True, 4.0, True),
    ("Margin", "BASE_STATIC_DISCOUNT_NEG"): (0.0, True, 4.0, True),
    ("BasisContingency", "SCENARIO_SPOT_UP"): (1.0, False, 3.0, False),
    ("BasisContingency", "SCENARIO_SPOT_DOWN"): (0.0, True, 1.0, False),
    ("BasisContingency", "BASIS_CONT_ADD_FACTOR"): (0.0, True, 20.0, True),
    ("BasisContingency", "BASIS_CONT_MULT_FACTOR"): (0.0, True, 20.0, True),
    ("OtherContingency", "PEG_LOSS_THRESHOLD"): (0.0, True, 100.0, True),
    ("OtherContingency", "PEG_LOSS_FACTOR"): (0.0, True, 10.0, True),
    ("OtherContingency", "CONF_THRESHOLD"): (0.0, True, 1.0, True),
    ("OtherContingency", "CONF_MARGIN"): (0.0, True, 20.0, True),
    ("OtherContingency", "MM_PERP_PERCENT"): (0.0, True, 3.0, True),
    ("OtherContingency", "IM_PERP_PERCENT"): (0.0, True, 3.0, True),
    ("OtherContingency", "MM_OPTION_PERCENT"): (0.0, True, 2.0, True),
    ("OtherContingency", "IM_OPTION_PERCENT"): (0.0, True, 2.0, True),
    ("SkewShock", "LINEAR_SCALE_CAP"): (0.0, True, 10.0, True),
    ("SkewShock", "ABS_SCALE_CAP"): (0.0, True, 10.0, True),
    ("SkewShock", "LINEAR_CBASE"): (-10.0, True, 10.0, True),
    ("SkewShock", "ABS_CBASE"): (-10.0, True, 10.0, True),
    ("SkewShock", "MIN_K_STAR"): (0.0, True, 10.0, True),
    ("SkewShock", "MIN_WIDTH_SCALE"): (0.0, True, 10.0, True),
    ("SkewShock", "VOL_PARAM_STATIC"): (0.0, True, 10.0, True),
    ("SkewShock", "VOL_PARAM_SCALE"): (-20.0, True, 20.0, True),
}

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


def _param(obj: Mapping[str, Any], block: str, key: str) -> float:
    """A parameter within the bounds Derive's setter for its block enforces."""
    x = _num(obj, key, f"Parameters.{block}")
    lo, lo_in, hi, hi_in = _BOUNDS[(block, key)]
    bad = None
    if x < lo or (x == lo and not lo_in):
        bad = f"must be {'>=' if lo_in else '>'} {lo:g}"
    elif x > hi or (x == hi and not hi_in):
        bad = f"must be {'<=' if hi_in else '<'} {hi:g}"
    if bad:
        raise DeriveCaseError(
            f"Parameters.{block}.{key} {bad}, got {x!r} (Derive's PMRMLib_2.{_SETTERS[block]} refuses it)"
        )
    return x


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
    if len(rows) > MAX_SCENARIOS:
        raise DeriveCaseError(
            f"Parameters.Scenarios: at most {MAX_SCENARIOS} scenarios (Derive's PMRM_2.setScenarios), got {len(rows)}"
        )
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
        for name, x in (("SpotShock", spot_shock), ("DampeningFactor", dampening)):
            if x < 0:
                raise DeriveCaseError(f"{where}.{name} must be >= 0 (unsigned in Derive's PMRM_2.Scenario), got {x!r}")
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
            range_up=_param(vs, "VolShock", "VOLRANGEUP"),
            range_down=_param(vs, "VolShock", "VOLRANGEDOWN"),
            short_term_power=_param(vs, "VolShock", "SHORTTERMPOWER"),
            long_term_power=_param(vs, "VolShock", "LONGTERMPOWER"),
            dte_floor_s=_param(vs, "VolShock", "DTE_FLOOR") * SECONDS_PER_DAY,
            min_vol_up=_param(vs, "VolShock", "MIN_VOL_EVAL_SHOCKED"),
        ),
        skew_shock=_build(
            s,
            SkewShockParams,
            linear_base_cap=_param(sk, "SkewShock", "LINEAR_SCALE_CAP"),
            linear_c_base=_param(sk, "SkewShock", "LINEAR_CBASE"),
            abs_base_cap=_param(sk, "SkewShock", "ABS_SCALE_CAP"),
            abs_c_base=_param(sk, "SkewShock", "ABS_CBASE"),
            min_k_star=_param(sk, "SkewShock", "MIN_K_STAR"),
            width_scale=_param(sk, "SkewShock", "MIN_WIDTH_SCALE"),
            vol_param_static=_param(sk, "SkewShock", "VOL_PARAM_STATIC"),
            vol_param_scale=_param(sk, "SkewShock", "VOL_PARAM_SCALE"),
        ),
        margin=_build(
            m,
            MarginParams,
            im_loss_factor=_param(mg, "Margin", "IM_LOSS_FACTOR"),
            mm_loss_factor=_param(mg, "Margin", "MM_LOSS_FACTOR"),
            long_static_discount=_param(mg, "Margin", "BASE_STATIC_DISCOUNT"),
            short_static_discount=_param(mg, "Margin", "BASE_STATIC_DISCOUNT_NEG"),
            long_rate_mult=_param(mg, "Margin", "LONG_RATE_MULTSCALE"),
            long_rate_add=_param(mg, "Margin", "LONG_RATE_ADDSCALE"),
            short_rate_mult=_param(mg, "Margin", "SHORT_RATE_MULTSCALE"),
            short_rate_add=_param(mg, "Margin", "SHORT_RATE_ADDSCALE"),
        ),
        basis=_build(
            b,
            BasisContingencyParams,
            spot_up=_param(bc, "BasisContingency", "SCENARIO_SPOT_UP"),
            spot_down=_param(bc, "BasisContingency", "SCENARIO_SPOT_DOWN"),
            add_factor=_param(bc, "BasisContingency", "BASIS_CONT_ADD_FACTOR"),
            mult_factor=_param(bc, "BasisContingency", "BASIS_CONT_MULT_FACTOR"),
        ),
        contingency=_build(
            o,
            ContingencyParams,
            perp_mm=_param(oc, "OtherContingency", "MM_PERP_PERCENT"),
            perp_im_extra=_param(oc, "OtherContingency", "IM_PERP_PERCENT"),
            option_mm=_param(oc, "OtherContingency", "MM_OPTION_PERCENT"),
            option_im_extra=_param(oc, "OtherContingency", "IM_OPTION_PERCENT"),
            confidence_threshold=_param(oc, "OtherContingency", "CONF_THRESHOLD"),
            confidence_margin=_param(oc, "OtherContingency", "CONF_MARGIN"),
            peg_loss_threshold=_param(oc, "OtherContingency", "PEG_LOSS_THRESHOLD"),
            peg_loss_factor=_param(oc, "OtherContingency", "PEG_LOSS_FACTOR"),
        ),
    )


def _expiries(
    sc: Mapping[str, Any], warnings: list[str]
) -> tuple[tuple[ExpiryHolding, ...], tuple[tuple[int, int], ...]]:
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
        if sec < 0:
            warnings.append(
                f"{where}: expired {-sec} s ago, valued as at expiry (Derive: secToExpiry = max(expiry - now, 0))"
            )
        live_s = max(sec, 0)
        forward = _num(feed, "Forward", where)
        # the settlement TWAP's share observed so far is fixed (LyraForwardFeed._getSettlementPricePortions)
        fixed = forward - forward * live_s / SETTLEMENT_TWAP_S if live_s < SETTLEMENT_TWAP_S else 0.0
        expiries.append(
            _build(
                where,
                ExpiryHolding,
                sec_to_expiry_s=live_s,
                forward=forward,
                forward_fixed=max(fixed, 0.0),
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
        im = _num(col, "IMHaircut", where)
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
                im_extra_haircut=im,
            )
        )
        if mm + im > 1.0:  # after each is checked in [0, 1] by the model
            why = "(Derive's PMRMLib_2.setCollateralParameters)"
            raise DeriveCaseError(f"{where}: IMHaircut + MMHaircut must be <= 1 {why}, got {mm + im!r}")
    return tuple(out)


def parse_derive_case(data: Any) -> DeriveCase:
    """A decoded Derive-format case (the object ``json.loads`` gives) as the model's inputs."""
    if not isinstance(data, Mapping):
        raise DeriveCaseError(f"expected a JSON object at the top, got {type(data).__name__}")
    sc = _get(data, "Scenario", "")
    warnings: list[str] = []
    params = _params(_get(data, "Parameters", ""), warnings)
    expiries, option_index = _expiries(sc, warnings)
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
