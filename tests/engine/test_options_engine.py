"""Options and portfolio-margin accounts in the engine: premiums, settlement, margin modes, portfolio
liquidation, bad input and determinism.

Units: USD in quote quantums (1e-6), prices and strikes in 1e-8 USD, perp sizes in 1e-8 BTC, option
sizes in 1e-4 contracts (one contract = one BTC). ``bob`` is the deep-pocketed portfolio counterparty.
The model's figures (Black-76, Derive PM2 scenarios) are floats: tests assert their exact integer
consequences (rounding direction, conservation) and their order relations, not float literals.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine import Engine
from fluidmargin.engine.options import PORTFOLIO, STANDARD
from fluidmargin.engine.state import HEALTHY
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import OptionSpec
from fluidmargin.sim.venues import perp_venue
from support.desk import DAY, NS, Desk, base, of_type, px, state_diff, usd, without_funding

ALICE, BOB = 1, 2
EXP = NS + 30 * DAY  # every series expires 30 days after the desk's first event
C60, P40, C50, P50 = "BTC-C-60000", "BTC-P-40000", "BTC-C-50000", "BTC-P-50000"


def opt(n: str | int) -> int:
    """Option size quantums (4 decimals) of ``n`` contracts."""
    return base(n, 4)


def venue(**kw: object) -> EngineConfig:
    # one price source drives these scenarios: the venue opts in to liquidating on it; the rallies move
    # 30 % within milliseconds, so the jump limit holds per print here (jump_window_ns 0), not per minute
    cfg = without_funding(perp_venue(("BTC", "ETH"), preset="hyperliquid", single_source_liquidation=True))
    cfg = replace(cfg, default_oracle=replace(cfg.default_oracle, jump_window_ns=0))
    series = (
        OptionSpec(C60, "BTC", px(60_000), EXP, "call"),
        OptionSpec(P40, "BTC", px(40_000), EXP, "put"),
        OptionSpec(C50, "BTC", px(50_000), EXP, "call"),
        OptionSpec(P50, "BTC", px(50_000), EXP, "put"),
    )
    return replace(cfg, options=series, **kw)  # type: ignore[arg-type]


def mode(d: Desk, account_id: int, name: str) -> list[ev.Event]:
    return d.apply(ev.MarginModeChanged(d.tick(), account_id, name))


def vol(d: Desk, strike_usd: int, text: str = "0.6", **kw: object) -> list[ev.Event]:
    return d.apply(ev.VolObserved(d.tick(), "vols", "BTC", kw.pop("expiry", EXP), px(strike_usd), text, **kw))  # type: ignore[arg-type]


def rejected(out: list[ev.Event]) -> list[str]:
    return [o.reason for o in of_type(out, ev.InputRejected)]


def pair(d: Desk, buyer: int, seller: int, market: str, size: int, price_q: int) -> None:
    for who, s in ((buyer, size), (seller, -size)):
        assert not rejected(d.fill(who, market, s, price_q)), f"setup fill {market} {who} refused"


def figures(d: Desk, account_id: int):  # type: ignore[no-untyped-def]
    return d.eng.opt.figures(d.row(account_id))


def conserved(d: Desk) -> None:
    assert d.eng.ledger_total() == d.eng.deposits[d.eng.quote_c] - d.eng.withdrawals[d.eng.quote_c]


def make_desk(cfg: EngineConfig | None = None, alice_usd: int = 12_000) -> Desk:
    """BTC 50,000, ETH 3,000; vols 60 % at every listed strike; bob (10M USD) and alice in portfolio mode."""
    d = Desk(cfg or venue())
    d.price("BTC", "50000")
    d.price("ETH", "3000")
    d.open(BOB, 10_000_000)
    d.open(ALICE, alice_usd)
    for k in (40_000, 50_000, 60_000):
        assert not rejected(vol(d, k))
    assert not rejected(mode(d, BOB, "portfolio"))
    assert not rejected(mode(d, ALICE, "portfolio"))
    return d


@pytest.fixture
def desk() -> Desk:
    return make_desk()


# --- premiums ------------------------------------------------------------------------------------------


def test_premium_is_exchanged_exactly_buyer_pays_ceil_seller_receives_floor(desk: Desk) -> None:
    d = desk
    # Parameters: alice buys 1.2345 C60 from bob at 1,000.12345678 per contract
    # 1.2345 x 1,000.12345678 = 1,234.65240739491 USD -> 1,234,652,407.39491 quanta
    pair(d, ALICE, BOB, C60, opt("1.2345"), px("1000.12345678"))
    e = d.eng
    # Expectations: alice paid ceil = 1,234,652,408; bob received floor = 1,234,652,407
    assert int(e.bal[d.row(ALICE), 0]) == usd(12_000) - 1_234_652_408
    assert int(e.bal[d.row(BOB), 0]) == usd(10_000_000) + 1_234_652_407
    assert e.clearing_q == 1  # the rounding residue stays with the system
    assert e.opt.pos[d.row(ALICE)] == {0: 12_345} and e.opt.pos[d.row(BOB)] == {0: -12_345}
    assert e.opt.idx[C60].long_oi_base_q == 12_345
    conserved(d)


# --- settlement ----------------------------------------------------------------------------------------

SETTLEMENTS = [
    # (id, series, index at expiry, alice's size, alice's amount, bob's amount)
    # C50 ITM at 52,000: intrinsic 2,000 x 1.5 = 3,000 USD each way
    ("call itm long", C50, "52000", "1.5", usd(3_000), -usd(3_000)),
    # C60 OTM at 52,000: nothing changes hands
    ("call otm long", C60, "52000", "1.5", 0, 0),
    # P50 ITM at 47,000: intrinsic 3,000 x 2 = 6,000 USD; alice short, bob long
    ("put itm short", P50, "47000", "-2", -usd(6_000), usd(6_000)),
    # P40 OTM at 47,000
    ("put otm short", P40, "47000", "-2", 0, 0),
    # rounding: C50 at 52,000.00000003: 0.0001 x 2,000.00000003 = 200,000.000003 quanta
    # holder receives floor 200,000, writer pays ceil 200,001
    ("call itm rounding long", C50, "52000.00000003", "0.0001", 200_000, -200_001),
    ("call itm rounding short", C50, "52000.00000003", "-0.0001", -200_001, 200_000),
]


@pytest.mark.parametrize(("series", "index", "size", "alice_amt", "bob_amt"), [s[1:] for s in SETTLEMENTS],
                         ids=[s[0] for s in SETTLEMENTS])  # fmt: skip
def test_settlement_at_expiry_pays_intrinsic_value_conserved_to_the_quantum(
    desk: Desk, series: str, index: str, size: str, alice_amt: int, bob_amt: int
) -> None:
    d = desk
    d.deposit(ALICE, usd(100_000))
    n = opt(size)
    if n > 0:
        pair(d, ALICE, BOB, series, n, px(100))
    else:
        pair(d, BOB, ALICE, series, -n, px(100))
    d.clock_to(EXP - 60 * NS)
    d.price("BTC", "50500")
    d.price("BTC", index)
    bal = {a: int(d.eng.bal[d.row(a), 0]) for a in (ALICE, BOB)}
    clearing = d.eng.clearing_q
    out = d.clock_to(EXP)  # event time reaches the expiry: settled at the index of that moment
    settled = [o for o in of_type(out, ev.OptionsSettled) if o.market == series]
    assert len(settled) == 1
    s = settled[0]
    assert s.price_q == px(index)
    assert s.account_ids == [ALICE, BOB] and s.sizes_base_q == [n, -n]
    assert s.amounts_quote_q == [alice_amt, bob_amt]
    assert int(d.eng.bal[d.row(ALICE), 0]) - bal[ALICE] == alice_amt
    assert int(d.eng.bal[d.row(BOB), 0]) - bal[BOB] == bob_amt
    assert d.eng.clearing_q - clearing == -(alice_amt + bob_amt)  # >= 0: the residue is the system's
    assert not d.eng.opt.has_positions(d.row(ALICE)) and not d.eng.opt.has_positions(d.row(BOB))
    conserved(d)
    # the settled series is closed: a later fill is refused as expired
    assert rejected(d.fill(ALICE, series, opt(1), px(1)))[0].startswith("expired")


# --- margin modes --------------------------------------------------------------------------------------


def test_mode_switch_accepted_and_refused() -> None:
    d = make_desk(alice_usd=1_500)
    e = d.eng
    assert not rejected(mode(d, ALICE, "standard"))
    # State: alice 1,500 USD, long 0.2 BTC perp @ 50,000 (10,000 notional) at 10x
    d.fill(ALICE, "BTC-PERP", base("0.2"), px(50_000), leverage=10)
    # standard (tiered) IM = 10,000 / 10 = 1,000 <= 1,500: held
    assert e.cross_initial(d.row(ALICE)) == usd(1_000)
    # portfolio IM of a naked perp = worst scenario (-18 %, 1,800) x 1.0 + 2 % contingency (200) = 2,000
    out = mode(d, ALICE, "portfolio")
    assert rejected(out) and "below initial margin" in rejected(out)[0]
    assert e.acct_mode[d.row(ALICE)] == STANDARD
    # isolated mode refuses an account holding cross positions
    assert "close cross positions first" in rejected(mode(d, ALICE, "isolated"))[0]
    d.deposit(ALICE, usd(1_000))  # 2,500 >= 2,000
    assert not rejected(mode(d, ALICE, "portfolio"))
    assert e.acct_mode[d.row(ALICE)] == PORTFOLIO
    assert e.cross_initial(d.row(ALICE)) == pytest.approx(usd(2_000), rel=1e-6)
    # portfolio mode refuses isolated fills; options need portfolio mode
    assert (
        "not allowed in portfolio" in rejected(d.fill(ALICE, "ETH-PERP", base(1), px(3_000), margin_mode="isolated"))[0]
    )
    pair(d, ALICE, BOB, P40, opt("0.1"), px(100))
    assert "option positions require portfolio" in rejected(mode(d, ALICE, "standard"))[0]
    assert "already in portfolio" in rejected(mode(d, ALICE, "portfolio"))[0]
    assert "mode must be one of" in rejected(mode(d, ALICE, "yolo"))[0]
    # a standard account cannot trade options
    d.open(3, 100_000)
    assert "require portfolio margin mode" in rejected(d.fill(3, C60, opt(1), px(100)))[0]


HEDGES = [
    # (id, perp size, option, option size): each a hedged book
    ("protective put", "1", P50, "1"),  # long perp + long ATM put: the down scenarios are capped
    ("short perp hedged by a call", "-1", C50, "1"),  # short perp + long ATM call: the up scenarios are capped
]


@pytest.mark.parametrize(("perp", "series", "size"), [h[1:] for h in HEDGES], ids=[h[0] for h in HEDGES])
def test_a_hedged_book_needs_less_margin_in_portfolio_mode(desk: Desk, perp: str, series: str, size: str) -> None:
    d = desk
    d.deposit(ALICE, usd(100_000))
    assert not rejected(d.fill(ALICE, "BTC-PERP", base(perp), px(50_000), leverage=10))
    alone_perp = figures(d, ALICE)
    pair(d, ALICE, BOB, series, opt(size), px(2_000))
    both = figures(d, ALICE)
    d2 = make_desk(alice_usd=112_000)
    pair(d2, ALICE, BOB, series, opt(size), px(2_000))
    alone_opt = figures(d2, ALICE)
    # Expectations: the book nets: less than the standalone parts, and less than standard mode's
    # tiered IM of the perp alone (10,000 USD at 10x of 50,000 notional)
    assert both.im_quote_q < alone_perp.im_quote_q + alone_opt.im_quote_q
    assert both.mm_quote_q < alone_perp.mm_quote_q
    assert both.im_quote_q < usd(5_000)
    assert both.im_quote_q > 0  # never free: contingencies and the vol shocks remain


def test_a_btc_long_hedged_by_an_eth_short_nets_across_underlyings_above_the_floor(desk: Desk) -> None:
    # State: alice (portfolio) long 1 BTC perp @ 50,000 and short 15 ETH perp @ 3,000 (45,000 notional);
    # account 3 holds the BTC leg alone, account 4 the ETH leg alone (each portfolio, 100,000 USD)
    d = desk
    d.deposit(ALICE, usd(100_000))
    for aid in (3, 4):
        d.open(aid, 100_000)
        assert not rejected(mode(d, aid, "portfolio"))
    for who, market, size, price in (
        (ALICE, "BTC-PERP", base(1), 50_000), (ALICE, "ETH-PERP", -base(15), 3_000),
        (3, "BTC-PERP", base(1), 50_000), (4, "ETH-PERP", -base(15), 3_000),
    ):  # fmt: skip
        assert not rejected(d.fill(who, market, size, px(price), leverage=10))
    # Parameters: PM2 (MM loss factor 0.8, IM 1.0; perp contingency 1.5 % MM, 2 % IM; worst spot move
    # +-18 %), CROSS_ASSET: BTC/ETH offset 0.7, floor 0.5 x the largest scaled loss + contingencies
    both, btc, eth = figures(d, ALICE), figures(d, 3), figures(d, 4)
    # Expectations, standalone: BTC loss 0.18 x 50,000 = 9,000 -> MM 0.8 x 9,000 + 750 = 7,950;
    # ETH loss 0.18 x 45,000 = 8,100 -> MM 0.8 x 8,100 + 675 = 7,155 (sum 15,105)
    assert btc.mm_quote_q == pytest.approx(usd(7_950), abs=2)
    assert eth.mm_quote_q == pytest.approx(usd(7_155), abs=2)
    # netted: moving together the legs lose at most 5,000 x 0.18 = 900 (co-moving loss); credit
    # 0.7 x (9,000 + 8,100 - 900) = 11,340; MM = 0.8 x (17,100 - 11,340) + 1,425 = 6,033
    assert both.cross is not None
    assert both.cross.offset_credit_quote == pytest.approx(11_340, rel=1e-12)
    assert both.mm_quote_q == pytest.approx(usd(6_033), abs=2)
    # IM = 1.0 x (17,100 - 11,340) + 1,900 = 7,660 (standalone 10,000 + 9,000)
    assert both.im_quote_q == pytest.approx(usd(7_660), abs=2)
    # floor: 0.5 x max(0.8 x 9,000, 0.8 x 8,100) + 1,425 = 5,025 <= 6,033 < 15,105
    assert both.cross.floor_maintenance_quote == pytest.approx(5_025, rel=1e-12)
    assert usd(5_025) <= both.mm_quote_q < btc.mm_quote_q + eth.mm_quote_q
    assert both.im_quote_q < btc.im_quote_q + eth.im_quote_q
    # the engine's risk is the netted one (health = equity - 6,033)
    assert d.cross(ALICE).mm_quote_q == both.mm_quote_q


# --- time and prices -----------------------------------------------------------------------------------


def test_theta_enters_equity_as_event_time_passes(desk: Desk) -> None:
    d = desk
    pair(d, ALICE, BOB, C50, opt(1), px(2_000))
    before = figures(d, ALICE).equity_quote_q
    d.price("BTC", "50000", source="s2")
    d.clock(DAY)
    after = figures(d, ALICE).equity_quote_q
    # a long ATM call loses theta x 1 day: F x N'(d1) x vol / (2 sqrt T) / 365
    # = 50,000 x 0.3975 x 0.6 / (2 x sqrt(30 / 365)) / 365 ~ 57 USD
    assert usd(50) < before - after < usd(65)


def test_portfolio_liquidation_closes_largest_contributor_then_hedges_delta() -> None:
    # State: alice 12,000 USD short a 60,000 call and a 40,000 put (a short strangle), bob long both;
    # target health 800 %: equity >= 9 x maintenance once done
    d = make_desk(venue(liquidation="partial", liquidation_target_ppm=8_000_000))
    pair(d, BOB, ALICE, C60, opt(1), px(1_000))
    pair(d, BOB, ALICE, P40, opt(1), px(500))
    d.price("BTC", "56000")
    d.price("BTC", "61000")
    # Parameters: BTC rallies to 65,000: the short call is the worst scenario's (spot up) largest loss
    out = d.price("BTC", "65000")
    liq = [o for o in out if isinstance(o, ev.PositionLiquidated | ev.PortfolioHedged)]
    # Expectations: the call goes first, then the remaining (put's) delta is hedged with the perp
    # (short put delta > 0: the hedge sells), then the put, until the target is met
    assert [(type(o).__name__, o.market) for o in liq] == [
        ("PositionLiquidated", C60),
        ("PortfolioHedged", "BTC-PERP"),
        ("PositionLiquidated", P40),
    ]
    assert liq[0].size_base_q == -opt(1) and liq[1].size_base_q < 0
    r = d.row(ALICE)
    assert d.eng.status[r] == HEALTHY
    risk = d.eng.cross_risk(r)
    assert risk.equity_quote_q >= 9 * risk.mm_quote_q
    conserved(d)


def test_liquidation_stops_once_the_target_is_met() -> None:
    d = make_desk()  # target 10 %
    pair(d, BOB, ALICE, C60, opt(1), px(1_000))
    pair(d, BOB, ALICE, P40, opt(1), px(500))
    for p in ("56000", "61000"):
        d.price("BTC", p)
    out = d.price("BTC", "65000")
    # only the largest contributor is closed: the short put alone is far above 110 % of maintenance
    assert [o.market for o in of_type(out, ev.PositionLiquidated)] == [C60]
    assert not of_type(out, ev.PortfolioHedged)
    assert d.eng.opt.pos[d.row(ALICE)] == {1: -opt(1)}
    conserved(d)


def test_missing_vol_blocks_valuation_and_liquidation(desk: Desk) -> None:
    d = desk
    pair(d, BOB, ALICE, C60, opt(1), px(1_000))
    # white-box: the surface point disappears (a restored state without it); nothing can value alice
    del d.eng.opt.vols[("BTC", EXP, px(60_000))]
    out = d.price("BTC", "56000") + d.price("BTC", "66000")  # deep in breach if it could be valued
    changed = [o for o in of_type(out, ev.ValuationChanged) if o.account_id == ALICE]
    assert len(changed) == 1 and "no mark vol published for BTC-C-60000" in changed[0].reason
    assert not of_type(out, ev.PositionLiquidated)
    assert "valuation blocked" in rejected(d.withdraw(ALICE, usd(1)))[0]
    assert "no mark vol" in rejected(d.fill(ALICE, C60, -opt(1), px(1)))[0]
    out = vol(d, 60_000, "0.6")  # published again: valued, and now liquidated
    assert [(o.account_id, o.reason) for o in of_type(out, ev.ValuationChanged)] == [(BOB, ""), (ALICE, "")]
    assert [o.market for o in of_type(out, ev.PositionLiquidated)] == [C60]


# --- bad input -----------------------------------------------------------------------------------------


def same_state_as_a_rejection_at_the_door(d: Desk, attempt: ev.Event) -> tuple[list[str], list[str]]:
    """Apply ``attempt`` and, to a replica, an input refused before any work; both must end equal."""
    replica = Engine.from_state(d.eng.state_dict())
    out = d.apply(attempt)
    replica.apply(ev.TradeFilled(attempt.ts_ns, 999_999, "BTC-PERP", 1, px(1)))
    return rejected(out), state_diff(d.eng.state_dict(), replica.state_dict())


def _settled_desk() -> Desk:
    d = make_desk()
    d.clock_to(EXP)
    return d


BAD = [
    # (id, event builder, expected reason prefix)
    ("vol negative", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, px(60_000), "-0.2"), "vol_not_positive"),
    ("vol zero", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, px(60_000), "0"), "vol_not_positive"),
    ("vol absurd", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, px(60_000), "25"), "vol_too_high"),
    ("vol NaN", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, px(60_000), "NaN"), "vol_not_finite"),
    ("vol text", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, px(60_000), "high"), "vol_not_finite"),
    ("vol expired", lambda d: ev.VolObserved(d.tick(), "v", "BTC", NS, px(60_000), "0.5"), "expired"),
    ("vol zero strike", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, 0, "0.5"), "strike_not_positive"),
    ("vol unknown series", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, px(55_000), "0.5"), "unknown series"),
    ("vol unknown underlying", lambda d: ev.VolObserved(d.tick(), "v", "DOGE", EXP, px(1), "0.5"),
     "unknown underlying"),
    ("vol low confidence", lambda d: ev.VolObserved(d.tick(), "v", "BTC", EXP, px(60_000), "0.5", 500_000),
     "low_confidence"),
    ("fill unknown series", lambda d: ev.TradeFilled(d.tick(), ALICE, "BTC-C-99999", 1, px(1)), "unknown market"),
    ("fill zero premium", lambda d: ev.TradeFilled(d.tick(), ALICE, C60, 1, 0), "price must be positive"),
    ("fill isolated option", lambda d: ev.TradeFilled(d.tick(), ALICE, C60, 1, px(1), margin_mode="isolated"),
     "options are margined"),
    ("fill beyond margin", lambda d: ev.TradeFilled(d.tick(), ALICE, C60, -opt(100), px(1_000)), "pre-trade check"),
    ("mode unknown account", lambda d: ev.MarginModeChanged(d.tick(), 77, "portfolio"), "unknown account"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "why"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_with_a_reason_and_changes_nothing(desk: Desk, build, why: str) -> None:  # type: ignore[no-untyped-def]
    reasons, diff = same_state_as_a_rejection_at_the_door(desk, build(desk))
    assert len(reasons) == 1 and reasons[0].startswith(why), reasons
    assert diff == []


def test_expired_option_fill_is_rejected_and_changes_nothing() -> None:
    d = _settled_desk()
    reasons, diff = same_state_as_a_rejection_at_the_door(d, ev.TradeFilled(d.tick(), ALICE, C60, opt(1), px(1)))
    assert reasons[0].startswith("expired") and diff == []


def test_missing_surface_point_refuses_the_fill() -> None:
    d = Desk(venue())
    d.price("BTC", "50000")
    d.open(ALICE, 100_000)
    mode(d, ALICE, "portfolio")
    reasons, diff = same_state_as_a_rejection_at_the_door(d, ev.TradeFilled(d.tick(), ALICE, C60, opt(1), px(100)))
    assert reasons == ["no mark vol published for BTC-C-60000"] and diff == []


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"strike_price_q": 0}, "strike must be positive"),
        ({"strike_price_q": -5}, "strike must be positive"),
        ({"expiry_ns": 0}, "expiry_ns must be positive"),
        ({"right": "straddle"}, "right must be call or put"),
        ({"underlying": "DOGE"}, "has no perpetual market"),
    ],
)
def test_bad_series_in_config_is_refused(change: dict[str, object], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        spec = OptionSpec(**{"symbol": "X", "underlying": "BTC", "strike_price_q": px(1), "expiry_ns": EXP,
                             "right": "call", **change})  # type: ignore[arg-type]  # fmt: skip
        replace(venue(), options=(spec,))


def test_config_round_trips_with_options() -> None:
    cfg = venue()
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg


# --- determinism -----------------------------------------------------------------------------------------


def _script(d: Desk) -> None:
    pair(d, BOB, ALICE, C60, opt(1), px(1_000))
    pair(d, BOB, ALICE, P40, opt(1), px(500))
    d.fill(ALICE, "BTC-PERP", base("0.1"), px(50_000), leverage=10)
    for p in ("53000", "56000", "61000", "65000"):
        d.price("BTC", p)
        d.clock(3600 * NS)
    vol(d, 60_000, "0.8")
    d.price("BTC", "64000")
    d.clock_to(EXP + 1)


@pytest.mark.parametrize("screen", ["incremental", "reference"])
def test_two_runs_give_the_same_state_hash(screen: str) -> None:
    a, b = make_desk(), make_desk()
    a.eng.screen = b.eng.screen = screen
    _script(a)
    _script(b)
    assert a.eng.state_hash() == b.eng.state_hash()
    assert a.eng.opt.idx[C60].settled_price_q is not None
    conserved(a)


def test_incremental_and_reference_screens_agree() -> None:
    a, b = make_desk(), make_desk()
    b.eng.screen = "reference"
    _script(a)
    _script(b)
    assert a.eng.state_hash() == b.eng.state_hash()


def test_portfolio_screening_on_and_off_agree() -> None:
    # the delta-gamma screen only decides which portfolio accounts a tick revalues: never the outcome
    a, b = make_desk(), make_desk()
    b.eng.opt.screening = False
    _script(a)
    _script(b)
    assert a.eng.state_hash() == b.eng.state_hash()


def test_snapshot_resume_gives_the_same_state_hash() -> None:
    live = make_desk()
    pair(live, BOB, ALICE, C60, opt(1), px(1_000))
    inputs = [e for _s, e in live.records if e.is_input]
    n = len(inputs)
    _script(live)
    all_inputs = [e for _s, e in live.records if e.is_input]
    fresh = Engine(venue())
    fresh.apply_all(all_inputs[:n])
    resumed = Engine.from_state(fresh.state_dict())
    assert resumed.state_hash() == fresh.state_hash()
    resumed.apply_all(all_inputs[n:])
    assert resumed.state_hash() == live.eng.state_hash()
