"""The portfolio-margin model (:mod:`fluidmargin.risk.options.portfolio`) on named books, its Derive-case loader's
bad input, and the ``portfolio-margin`` command.

Books are margined with the shipped ``DERIVE_PM2`` preset on one ETH market (spot 3000, a 28-day expiry,
forward 3010, rate 5 %, flat 60 % vol, every feed fully confident). Each hedged book needs less than its
legs margined alone, and never less than its floor: the forward (basis) contingency scaled by the loss
factor plus the contingencies, which the worst scenario can only exceed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fluidmargin.adapters.derive import DeriveCaseError, parse_derive_case, parse_derive_case_text
from fluidmargin.cli.main import app
from fluidmargin.core.errors import ValidationError
from fluidmargin.risk.options.portfolio import (
    DERIVE_PM2,
    CollateralHolding,
    CrossAssetParams,
    ExpiryHolding,
    OptionHolding,
    Portfolio,
    PortfolioMarginResult,
    Scenario,
    VolShock,
    cross_portfolio_margin,
    portfolio_margin,
)
from support.data import shared_path

SPOT = 3000.0
SEC_28D = 28 * 86_400
FORWARD = 3010.0
RATE = 0.05
VOL = 0.6


def call(strike: float, amount: float) -> OptionHolding:
    return OptionHolding(strike=strike, is_call=True, amount=amount, vol=VOL)


def put(strike: float, amount: float) -> OptionHolding:
    return OptionHolding(strike=strike, is_call=False, amount=amount, vol=VOL)


def book(*options: OptionHolding, perps: float = 0.0, eth_collateral: float = 0.0, **market: Any) -> Portfolio:
    """ETH options of the 28-day expiry, a perp and risk-cancelling ETH collateral (2 % MM + 1 % IM haircut)."""
    expiries = (ExpiryHolding(SEC_28D, FORWARD, RATE, tuple(options)),) if options else ()
    eth = CollateralHolding("ETH", eth_collateral, SPOT, risk_cancelling=True, mm_haircut=0.02, im_extra_haircut=0.01)
    collaterals = (eth,) if eth_collateral else ()
    return Portfolio(
        spot_price=SPOT, perp_amount=perps, perp_price=SPOT, expiries=expiries, collaterals=collaterals, **market
    )


def pm(p: Portfolio) -> PortfolioMarginResult:
    return portfolio_margin(p, DERIVE_PM2)


# --- literal arithmetic -------------------------------------------------------------------------------------


def test_cash_only_needs_nothing() -> None:
    r = pm(Portfolio(spot_price=SPOT, cash_quote=1000.0))
    assert (r.initial_requirement_quote, r.maintenance_requirement_quote) == (0.0, 0.0)
    assert r.initial_margin_quote == r.maintenance_margin_quote == r.mark_to_market_quote == 1000.0


@pytest.mark.parametrize(
    ("name", "portfolio", "worst_pnl", "mm_req", "im_req"),
    [
        # 1 perp long at 3000: worst is spot x 0.82: 0.18 x 3000 = 540 (the -66 % tail is dampened to
        # 0.036/0.66: 1980 x 0.0545 = 108); MM 540 x 0.8 + 3000 x 1.5 % = 477; IM 540 + 3000 x 2 % = 600
        ("Alice_1ETHPerp_Long", book(perps=1.0), -540.0, 477.0, 600.0),
        # short 2 perps: spot x 1.18 loses 2 x 540 = 1080; MM 864 + 90 = 954; IM 1080 + 120 = 1200
        ("Bob_2ETHPerp_Short", book(perps=-2.0), -1080.0, 954.0, 1200.0),
        # 1 ETH collateral, risk-cancelling: as the long perp but charged its haircuts, not the perp's:
        # MM 432 + 3000 x 2 % = 492; IM 540 + 3000 x 3 % = 630
        ("Carol_1ETHCollateral", book(eth_collateral=1.0), -540.0, 492.0, 630.0),
        # stablecoin at 0.96: collateral worth 3000 / 0.96 = 3125, IM factor 1 + (0.98 - 0.96) x 2 = 1.04:
        # worst 0.18 x 3125 = 562.5; MM 450 + 62.5 = 512.5; IM 585 + 93.75 = 678.75
        ("Dave_1ETHCollateral_DepeggedQuote", book(eth_collateral=1.0, stable_price=0.96), -562.5, 512.5, 678.75),
        # spot feed at confidence 0.5 < 0.55: IM adds (1 - 0.5) x 1.0 x 3000 = 1500 to the perp's 600
        ("Erin_1ETHPerp_LowSpotConfidence", book(perps=1.0, spot_confidence=0.5), -540.0, 477.0, 2100.0),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_linear_books(name: str, portfolio: Portfolio, worst_pnl: float, mm_req: float, im_req: float) -> None:
    r = pm(portfolio)
    assert r.worst.pnl_quote == pytest.approx(worst_pnl, rel=1e-12)
    assert r.maintenance_requirement_quote == pytest.approx(mm_req, rel=1e-12)
    assert r.initial_requirement_quote == pytest.approx(im_req, rel=1e-12)
    assert r.maintenance_margin_quote == pytest.approx(r.mark_to_market_quote - mm_req, rel=1e-12)


# --- hedged books: below the sum of their legs, above the floor ---------------------------------------------

HEDGED = {
    # name: (the book, its legs margined alone)
    "Covered_call_short_3300C_plus_1ETH": (book(call(3300, -1), eth_collateral=1.0),
                                           [book(call(3300, -1)), book(eth_collateral=1.0)]),
    "Call_spread_long_3000C_short_3300C": (book(call(3000, 1), call(3300, -1)),
                                           [book(call(3000, 1)), book(call(3300, -1))]),
    "Short_straddle_3000": (book(call(3000, -1), put(3000, -1)), [book(call(3000, -1)), book(put(3000, -1))]),
    "Long_perp_protective_2800P": (book(put(2800, 1), perps=1.0), [book(perps=1.0), book(put(2800, 1))]),
    "Short_perp_hedged_by_3200C": (book(call(3200, 1), perps=-1.0), [book(perps=-1.0), book(call(3200, 1))]),
    "Collar_1ETH_long_2700P_short_3300C": (book(put(2700, 1), call(3300, -1), eth_collateral=1.0),
                                           [book(eth_collateral=1.0), book(put(2700, 1)), book(call(3300, -1))]),
}  # fmt: skip


def _floor(r: PortfolioMarginResult, initial: bool) -> float:
    """What no book can go below: the scaled forward contingency plus the contingencies."""
    factor = r.im_loss_factor if initial else r.mm_loss_factor
    charges = r.contingencies.im_quote if initial else r.contingencies.mm_quote
    return -r.basis_contingency_quote * factor + charges


@pytest.mark.parametrize("name", sorted(HEDGED))
def test_hedged_book_needs_less_than_its_legs_and_more_than_its_floor(name: str) -> None:
    whole, legs = HEDGED[name]
    r = pm(whole)
    alone = [pm(leg) for leg in legs]
    for initial in (False, True):
        req = r.initial_requirement_quote if initial else r.maintenance_requirement_quote
        legs_req = sum(a.initial_requirement_quote if initial else a.maintenance_requirement_quote for a in alone)
        assert req < legs_req, (initial, req, legs_req)
        assert req >= _floor(r, initial) > 0, (initial, req, _floor(r, initial))


def test_a_hedge_does_not_hide_naked_shorts() -> None:
    """The covered call's short is still naked for the option contingency (collateral is no option):
    3000 x 0.3 % = 9 for MM, plus 3000 x 0.2 % = 6 for IM."""
    r = pm(HEDGED["Covered_call_short_3300C_plus_1ETH"][0])
    assert r.contingencies.option_mm_quote == pytest.approx(9.0)
    assert r.contingencies.option_im_extra_quote == pytest.approx(6.0)
    boxed = pm(book(call(3000, -1), put(3000, 1)))  # a long at the same strike covers it, call or put
    assert boxed.contingencies.option_mm_quote == 0.0


def test_long_options_alone_cannot_lose_more_than_their_value() -> None:
    r = pm(book(call(3000, 2), put(2800, 3)))
    assert 0 < r.maintenance_requirement_quote <= r.option_mtm_quote * DERIVE_PM2.margin.mm_loss_factor


def test_requirements_scale_with_size_and_ignore_order() -> None:
    one = pm(book(call(3000, 1), put(2800, -2), call(3300, -1), perps=0.5))
    double = pm(book(call(3000, 2), put(2800, -4), call(3300, -2), perps=1.0))
    shuffled = pm(book(call(3300, -1), call(3000, 1), put(2800, -2), perps=0.5))
    assert double.initial_requirement_quote == pytest.approx(2 * one.initial_requirement_quote, rel=1e-12)
    assert double.maintenance_requirement_quote == pytest.approx(2 * one.maintenance_requirement_quote, rel=1e-12)
    # the same book in another order gives the same bits (options are valued in a canonical order)
    assert shuffled.initial_requirement_quote == one.initial_requirement_quote
    assert shuffled.scenario_pnls_quote == one.scenario_pnls_quote
    assert shuffled.worst == one.worst


def test_worst_scenario_points_into_the_grid() -> None:
    r = pm(book(call(3300, -5)))  # naked short calls: the biggest rally hurts most
    assert r.worst.index is not None
    s = DERIVE_PM2.scenarios[r.worst.index]
    assert (s.spot_shock, s.vol_shock, r.worst.kind) == (1.18, VolShock.UP, "regular")
    assert r.worst.pnl_quote == min(r.scenario_pnls_quote)


def test_preset_shape() -> None:
    kinds = [s.kind for s in DERIVE_PM2.scenarios]
    assert kinds == ["regular"] * 23 + ["tail"] * 6 + ["skew"] * 2
    # the tails' dampening is 0.036 / |move|, e.g. x4: 0.036 / 3 = 0.012
    assert DERIVE_PM2.scenarios[28].dampening == pytest.approx(0.012)


def test_preset_is_the_published_default_block() -> None:
    """DERIVE_PM2 equals the parameters of Derive's default case, test_13 (one of the 23 sharing them)."""
    text = shared_path("vectors", "derive_pmrm2", "test_13_risk_cancelling_btc_covered_call.json").read_text()
    loaded = parse_derive_case_text(text).params
    assert loaded.vol_shock == DERIVE_PM2.vol_shock
    assert loaded.skew_shock == DERIVE_PM2.skew_shock
    assert loaded.margin == DERIVE_PM2.margin
    assert loaded.basis == DERIVE_PM2.basis
    # the file writes IM_PERP_PERCENT as 0.02 - 0.015 = 0.005000000000000001
    assert dataclasses.replace(loaded.contingency, perp_im_extra=0.005) == DERIVE_PM2.contingency
    assert len(loaded.scenarios) == len(DERIVE_PM2.scenarios)
    for a, b in zip(loaded.scenarios, DERIVE_PM2.scenarios, strict=True):
        assert (a.vol_shock, a.tail) == (b.vol_shock, b.tail)
        assert a.spot_shock == pytest.approx(b.spot_shock, rel=1e-12)
        assert a.dampening == pytest.approx(b.dampening, rel=1e-12)


# --- cross-asset netting: one account, several underlyings ------------------------------------------------

BTC_SPOT = 60_000.0
CROSS = CrossAssetParams(offset_rates=(("BTC", "ETH", 0.8),), floor_fraction=0.3)


def btc_perp(amount: float) -> Portfolio:
    return Portfolio(spot_price=BTC_SPOT, perp_amount=amount, perp_price=BTC_SPOT)


def eth_perp(amount: float) -> Portfolio:
    return Portfolio(spot_price=SPOT, perp_amount=amount, perp_price=SPOT)


@pytest.mark.parametrize(
    ("name", "btc", "eth", "rate", "mm_req", "im_req"),
    [
        # 1 BTC perp long (60000 notional), 20 ETH perps short (60000): alone, each loses 0.18 x 60000 = 10800
        # (BTC at spot x 0.82, ETH at x 1.18): MM 0.8 x 10800 + 1.5 % x 60000 = 9540, IM 10800 + 2 % x 60000
        # = 12000. Moving together they cancel (co-moving loss 0): credit 0.8 x (10800 + 10800 - 0) = 17280;
        # MM 0.8 x (21600 - 17280) + 900 + 900 = 5256 (floor 0.3 x 8640 + 1800 = 4392);
        # IM 1.0 x 4320 + 1200 + 1200 = 6720 (floor 0.3 x 10800 + 2400 = 5640)
        ("Alice_1BTCLong_20ETHShort_offset80", 1.0, -20.0, 0.8, 5256.0, 6720.0),
        # offset 100 %: credit 21600, MM 1800 and IM 2400 are below the floors: 4392 and 5640
        ("Alice_1BTCLong_20ETHShort_offset100", 1.0, -20.0, 1.0, 4392.0, 5640.0),
        # no offset: the sum of the legs, 2 x 9540 = 19080 and 2 x 12000 = 24000
        ("Alice_1BTCLong_20ETHShort_offset0", 1.0, -20.0, 0.0, 19080.0, 24000.0),
        # both long: they lose together (co-moving loss 21600 = the sum), no credit: 19080 / 24000
        ("Bob_1BTCLong_20ETHLong", 1.0, 20.0, 0.8, 19080.0, 24000.0),
        # half hedge: 10 ETH short alone loses 5400 (MM 4320 + 450 = 4770); together 60000 (k - 1) - 30000 (k - 1)
        # loses 5400 at k = 0.82; credit 0.8 x (10800 + 5400 - 5400) = 8640; MM 0.8 x (16200 - 8640) + 900
        # + 450 = 7398; IM 7560 + 1200 + 600 = 9360
        ("Carol_1BTCLong_10ETHShort", 1.0, -10.0, 0.8, 7398.0, 9360.0),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_cross_asset_netting_table(
    name: str, btc: float, eth: float, rate: float, mm_req: float, im_req: float
) -> None:
    offsets = CrossAssetParams(offset_rates=(("BTC", "ETH", rate),), floor_fraction=0.3)
    r = cross_portfolio_margin({"BTC": btc_perp(btc), "ETH": eth_perp(eth)}, DERIVE_PM2, offsets)
    assert r.maintenance_requirement_quote == pytest.approx(mm_req, rel=1e-12)
    assert r.initial_requirement_quote == pytest.approx(im_req, rel=1e-12)
    assert r.maintenance_margin_quote == pytest.approx(r.mark_to_market_quote - mm_req, rel=1e-12)


def test_btc_long_hedged_by_eth_short_needs_less_than_either_alone_and_more_than_the_floor() -> None:
    r = cross_portfolio_margin({"BTC": btc_perp(1.0), "ETH": eth_perp(-20.0)}, DERIVE_PM2, CROSS)
    alone = dict(r.by_underlying)
    for initial in (False, True):
        req = r.initial_requirement_quote if initial else r.maintenance_requirement_quote
        legs = [a.initial_requirement_quote if initial else a.maintenance_requirement_quote for a in alone.values()]
        floor = r.floor_initial_quote if initial else r.floor_maintenance_quote
        assert req < min(legs) and req < sum(legs), (initial, req, legs)
        assert req >= floor > 0, (initial, req, floor)
    assert r.standalone_maintenance_quote == pytest.approx(19080.0)  # what no netting would charge


def test_one_underlying_is_margined_as_alone() -> None:
    p = book(call(3300, -1), perps=0.5)
    r = cross_portfolio_margin({"ETH": p}, DERIVE_PM2, CrossAssetParams((), floor_fraction=0.5))
    assert r.maintenance_requirement_quote == pm(p).maintenance_requirement_quote
    assert r.initial_requirement_quote == pm(p).initial_requirement_quote


@settings(max_examples=100, deadline=None)
@given(
    btc=st.floats(-3, 3),
    eth=st.floats(-60, 60),
    strike=st.sampled_from([2700.0, 3000.0, 3300.0]),
    calls=st.floats(-2, 2),
    rate=st.floats(0, 1),
    floor_fraction=st.floats(0, 1),
)
def test_cross_netting_stays_between_the_floor_and_the_sum(
    btc: float, eth: float, strike: float, calls: float, rate: float, floor_fraction: float
) -> None:
    """Never above the legs margined alone, never below the floor, nor below the loss of the two moving
    together (a credit only nets what co-movement could)."""
    eth_book = book(call(strike, calls), perps=eth) if calls else eth_perp(eth)
    offsets = CrossAssetParams((("ETH", "BTC", rate),), floor_fraction)
    r = cross_portfolio_margin({"BTC": btc_perp(btc), "ETH": eth_book}, DERIVE_PM2, offsets)
    tol = 1e-9 * (1 + r.standalone_maintenance_quote)
    assert r.floor_maintenance_quote - tol <= r.maintenance_requirement_quote <= r.standalone_maintenance_quote + tol
    assert r.floor_initial_quote - tol <= r.initial_requirement_quote <= r.standalone_initial_quote + tol
    charges = sum(x.contingencies.mm_quote for _, x in r.by_underlying)
    assert r.maintenance_requirement_quote >= 0.8 * r.comoving_loss_quote + charges - tol


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: CrossAssetParams((("BTC", "BTC", 0.5),), 0.3), "two distinct underlyings"),
        (lambda: CrossAssetParams((("BTC", "ETH", 1.5),), 0.3), "offset rate BTC/ETH must be in"),
        (lambda: CrossAssetParams((("BTC", "ETH", 0.5), ("ETH", "BTC", 0.4)), 0.3), "given twice"),
        (lambda: CrossAssetParams((), -0.1), "floor_fraction"),
        (lambda: cross_portfolio_margin({}, DERIVE_PM2, CROSS), "at least one underlying"),
        (lambda: cross_portfolio_margin({"BTC": btc_perp(1.0)}, DERIVE_PM2, CROSS), "does not hold"),
        (
            lambda: cross_portfolio_margin(
                {"BTC": btc_perp(1.0), "ETH": eth_perp(-1.0)},
                {"BTC": DERIVE_PM2, "ETH": dataclasses.replace(DERIVE_PM2, scenarios=DERIVE_PM2.scenarios[:5])},
                CROSS,
            ),
            "same scenario grid",
        ),
        (lambda: cross_portfolio_margin({"BTC": btc_perp(1.0)}, {"ETH": DERIVE_PM2}, CROSS), "no parameters"),
    ],
)
def test_cross_netting_rejects_bad_input(build: Any, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        build()


# --- the model's own validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: OptionHolding(strike=0.0, is_call=True, amount=1, vol=0.5), "strike must be > 0"),
        (lambda: OptionHolding(strike=100.0, is_call=True, amount=1, vol=-0.1), "vol must be >= 0"),
        (lambda: OptionHolding(strike=100.0, is_call=True, amount=math.nan, vol=0.5), "amount must be a finite"),
        (lambda: ExpiryHolding(-1, 100.0, 0.0, (call(100, 1),)), "sec_to_expiry_s must be >= 0"),
        (lambda: ExpiryHolding(10, 100.0, 0.0, ()), "at least one option"),
        (lambda: ExpiryHolding(10, 100.0, 0.0, (call(100, 1),), forward_fixed=100.0), "forward_fixed"),  # not yet
        (lambda: ExpiryHolding(0, 100.0, 0.0, (call(100, 1),), forward_fixed=100.5), "forward_fixed"),
        (lambda: Scenario(1.1, VolShock.SKEW_LINEAR), "spot_shock must be 1"),
        (lambda: Scenario(-0.5, VolShock.UP), "spot_shock must be >= 0"),  # 0 (spot to nothing) is allowed
        (lambda: Scenario(1.0, VolShock.UP, dampening=-1.0), "dampening must be >= 0"),
        (lambda: Portfolio(spot_price=SPOT, perp_amount=1.0), "perp price"),
        (lambda: Portfolio(spot_price=SPOT, stable_price=0.0), "stable_price must be > 0"),
        (lambda: book(call(3000, 1), spot_confidence=1.5), "spot_confidence must be in [0, 1]"),
        (
            lambda: Portfolio(spot_price=SPOT, expiries=(ExpiryHolding(10, 1.0, 0.0, (call(1, 1),)),) * 2),
            "each expiry must appear once",
        ),
        (lambda: dataclasses.replace(DERIVE_PM2, scenarios=()), "at least one scenario"),
        (
            lambda: dataclasses.replace(DERIVE_PM2, scenarios=(Scenario(1.0, VolShock.SKEW_ABS),) * 2),
            "at most one skew_abs",
        ),
    ],
)
def test_model_rejects_bad_values(build: Any, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        build()


def test_expired_unsettled_options_are_worth_intrinsic() -> None:
    expired = Portfolio(spot_price=SPOT, expiries=(ExpiryHolding(0, 3010.0, RATE, (call(2900, 1), put(2900, 1))),))
    assert pm(expired).option_mtm_quote == pytest.approx(110.0)  # (3010 - 2900), the put worthless


# --- the Derive-case loader's bad input ------------------------------------------------------------------


def _base_case() -> dict[str, Any]:
    text = shared_path("vectors", "derive_pmrm2", "test_13_risk_cancelling_btc_covered_call.json").read_text()
    return dict(json.loads(text))


def _set(path: str, value: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return edit


_DELETE = object()


def _both(*edits: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        for e in edits:
            e(d)

    return edit


BAD_CASES = [
    # (edit of the decoded case, a fragment the reason must contain)
    (_set("Scenario.SpotPrice", _DELETE), "Scenario.SpotPrice: missing"),
    (_set("Parameters.VolShock", _DELETE), "Parameters.VolShock: missing"),
    (_set("Parameters.Margin.IM_LOSS_FACTOR", _DELETE), "Parameters.Margin.IM_LOSS_FACTOR: missing"),
    (_set("Scenario.Options.0.Strike", "abc"), "Scenario.Options[0].Strike: not a number"),
    (_set("Scenario.Options.0.Strike", 0.0), "Scenario.Options[0]: strike must be > 0"),
    (_set("Scenario.Options.0.MarkVol", -0.2), "Scenario.Options[0]: vol must be >= 0"),
    (_set("Scenario.Options.0.MarkVol", "inf"), "Scenario.Options[0].MarkVol: not a finite number"),
    (_set("Scenario.Options.0.Amount", None), "Scenario.Options[0].Amount: expected a number"),
    (_set("Scenario.Options.0.IsCall", 2), "Scenario.Options[0].IsCall: expected true/false"),
    (_set("Scenario.Options.0.Expiry", 12.5), "expected whole seconds"),
    (_set("Scenario.Options.0.Expiry", 123), "no OptionFeeds entry for expiry 123"),
    (
        _both(_set("Scenario.Options.0.Expiry", -5), _set("Scenario.OptionFeeds.0.FeedExpiry", -5.5)),
        "expected whole seconds",
    ),
    (_set("Scenario.OptionFeeds.0.Forward", -1.0), "forward must be > 0"),
    (_set("Scenario.Collaterals.0.Name", ""), "Scenario.Collaterals[0].Name: expected a name"),
    (_set("Scenario.Collaterals.0.MMHaircut", 1.5), "mm_haircut must be in [0, 1]"),
    (_set("Scenario.StablePrice", 0), "stable_price must be > 0"),
    (_set("Scenario.Options", {}), "Scenario.Options: expected a list"),
    (_set("Parameters.Scenarios.0.VolShockDirection", "Sideways"), "unknown 'Sideways'"),
    (_set("Parameters.Scenarios.0.DampeningFactor", -1), "DampeningFactor must be >= 0"),
    (_set("Parameters.Scenarios", []), "at least one scenario"),
    (_set("Parameters.VolShock.DTE_FLOOR", -1), "Parameters.VolShock.DTE_FLOOR must be >= 0"),
    (
        _set("Parameters.BasisContingency.SCENARIO_SPOT_UP", 0.9),
        "Parameters.BasisContingency.SCENARIO_SPOT_UP must be > 1",
    ),
    (_set("Parameters.OtherContingency.CONF_THRESHOLD", True), "expected a number, got True"),
]


@pytest.mark.parametrize(("edit", "reason"), BAD_CASES, ids=[r for _, r in BAD_CASES])
def test_loader_rejects_malformed_cases(edit: Any, reason: str) -> None:
    data = _base_case()
    bad = copy.deepcopy(data)
    edit(bad)
    with pytest.raises(DeriveCaseError) as exc:
        parse_derive_case(bad)
    assert reason in exc.value.reason
    parse_derive_case(data)  # the untouched case still loads


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"Scenario": {', "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"Scenario": {"SpotPrice": NaN}}', "not a finite number: NaN"),
        ('{"Scenario": {"SpotPrice": -Infinity}}', "not a finite number: -Infinity"),
        ('{"Parameters": {}}', "Scenario: missing"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
    ],
)
def test_loader_rejects_bad_text(text: str | bytes, reason: str) -> None:
    with pytest.raises(DeriveCaseError) as exc:
        parse_derive_case_text(text)
    assert reason in exc.value.reason


# --- the command -----------------------------------------------------------------------------------------


def test_cli_prints_derive_margins() -> None:
    path = shared_path("vectors", "derive_pmrm2", "test_61_general_general_test_1.json")
    want = json.loads(path.read_text())["Result"]
    res = CliRunner().invoke(app, ["portfolio-margin", "--derive-case", str(path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert isinstance(out["initial_margin"], str) and "e" not in out["initial_margin"].lower()
    assert float(Decimal(out["initial_margin"])) == pytest.approx(want["IM"], rel=1e-6)
    assert float(Decimal(out["maintenance_margin"])) == pytest.approx(want["MM"], rel=1e-6)
    worst = out["worst_scenario"]
    assert (worst["kind"], worst["vol_shock"], worst["index"]) == ("skew", "skew_linear", 28)
    assert float(Decimal(worst["pnl"])) == pytest.approx(want["worst_skew_loss"], rel=1e-6)
    assert len(out["scenarios"]) == 30 and out["warnings"] == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file"),
        ("{not json", "malformed JSON"),
        ('{"Scenario": {}, "Parameters": {}}', "Parameters.VolShock: missing"),
    ],
)
def test_cli_rejects_bad_files(tmp_path: Any, content: str | None, reason: str) -> None:
    path = tmp_path / "case.json"
    if content is not None:
        path.write_text(content)
    res = CliRunner().invoke(app, ["portfolio-margin", "--derive-case", str(path)])
    assert res.exit_code == 2
    assert reason in res.stderr and res.stdout == ""


def _case_file(tmp_path: Any, *edits: Any) -> str:
    data = _base_case()
    for e in edits:
        e(data)
    path = tmp_path / "case.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_margins_an_expired_case_and_says_so(tmp_path: Any) -> None:
    # test_13's short calls expired a second ago: valued at intrinsic on the (now fixed) forward
    path = _case_file(tmp_path, _set("Scenario.Options.0.Expiry", -1), _set("Scenario.OptionFeeds.0.FeedExpiry", -1))
    res = CliRunner().invoke(app, ["portfolio-margin", "--derive-case", path])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["warnings"]) == 1 and "expired 1 s ago" in out["warnings"][0]
    # the calls (strike 100,000, forward 95,777) expired worthless and the forward no longer moves: no basis risk
    assert Decimal(out["basis_contingency"]) == 0


@pytest.mark.parametrize(
    ("edits", "reason"),
    [
        ((_set("Parameters.Margin.IM_LOSS_FACTOR", 0.4),), "IM_LOSS_FACTOR must be >= 0.5"),
        (  # accepted by the reference (a signed power), but (30 d / 100 d)^-1000 overflows
            (
                _set("Scenario.Options.0.Expiry", 8_640_000),
                _set("Scenario.OptionFeeds.0.FeedExpiry", 8_640_000),
                _set("Parameters.VolShock.LONGTERMPOWER", -1000),
            ),
            "cannot be margined: vol shock",
        ),
    ],
    ids=["out of the reference's bounds", "overflowing vol shock"],
)
def test_cli_refuses_cases_it_cannot_margin(tmp_path: Any, edits: tuple[Any, ...], reason: str) -> None:
    res = CliRunner().invoke(app, ["portfolio-margin", "--derive-case", _case_file(tmp_path, *edits)])
    assert res.exit_code == 2
    assert reason in res.stderr and res.stdout == ""
