"""Scenario tables for the liquidation waterfall (issue 3): partial sizing and the per-account cap,
Dutch auctions, the backstop vault, batch netting, per-market insurance funds, ADL, socialised
loss, bad input, value conservation and replay determinism.

Units: USD in quote quantums (1e-6 USD), prices in 1e-8 USD, BTC/ETH sizes in 1e-8. On these
venues one base quantum at price P (USD) is worth P / 100 quote quantums (size x price / 1e10).
Funding is off (``without_funding``), so no amount drifts with event time.

Every expected number is derived by hand in the comments beside it. ``Book`` (a ``Desk``) checks
value conservation, ``ledger_total() == net deposits``, after every single input of every scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from math import ceil, floor
from typing import Any, Literal

import pytest

from fluidmargin.core.units import PPM
from fluidmargin.engine import Engine
from fluidmargin.engine.state import AT_RISK, HEALTHY, LIQUIDATING
from fluidmargin.model import events as ev
from fluidmargin.model.config import BackstopSpec, EngineConfig
from fluidmargin.model.instruments import AuctionSpec, ImpactSpec, LiquidationPolicy
from fluidmargin.risk.liquidation import partial
from fluidmargin.sim.venues import perp_venue
from support.desk import NS, Desk, base, of_type, px, state_diff, usd, without_funding

ALICE, BOB, CAROL, DAVE, ERIN = 1, 2, 3, 4, 5
LP1, LP2 = 11, 12
X, A, B, C, Y = 21, 22, 23, 24, 25  # the ADL cast: X goes bankrupt, A/B/C are its counterparties
L, S = 31, 32  # batch netting: a long and a short breached in the same tick
BTC, ETH = "BTC-PERP", "ETH-PERP"
AID = "BTC-PERP-1"  # the first auction of the BTC market


# --- venues and drivers --------------------------------------------------------------------------------


class Book(Desk):
    """A Desk that checks value conservation after every input and keeps the inputs for replays."""

    def __init__(self, cfg: EngineConfig, screen: str = "incremental") -> None:
        super().__init__(cfg, screen)
        self.inputs: list[ev.Event] = []

    def apply(self, event: ev.Event) -> list[ev.Event]:
        self.inputs.append(event)
        out = super().apply(event)
        assert self.eng.ledger_total() == net_deposits(self.eng), f"value not conserved after {event}"
        return out

    def at(self, t0: int, seconds: float) -> int:
        """Set the clock to ``t0`` + ``seconds`` (auction ages are whole seconds since the start)."""
        self.t = t0 + int(seconds * NS)
        return self.t

    def bid(self, who: int, size: int, limit: int, aid: str = AID) -> list[ev.Event]:
        return self.apply(ev.AuctionBid(self.tick(), aid, who, size, limit))

    def vault_deposit(self, who: int, amount_q: int) -> list[ev.Event]:
        return self.apply(ev.VaultDeposit(self.tick(), who, amount_q))


def net_deposits(eng: Engine) -> int:
    return sum(eng.deposits) - sum(eng.withdrawals)


def venue(
    preset: str = "hyperliquid",
    fund_usd: int = 1_000_000,
    liquidation: str = "close_at_mark",
    btc: LiquidationPolicy | None = None,
    eth: LiquidationPolicy | None = None,
    backstop: BackstopSpec | None = None,
    btc_fee_ppm: int | None = None,
    **cfg: Any,
) -> EngineConfig:
    """BTC and ETH perpetuals, no funding. Hyperliquid tiers: BTC maintenance 1/(2 x 40) = 1.25 %
    (max 40x), ETH 1/(2 x 25) = 2 % (max 25x); binance: 0.4 % below 50,000 USD of notional.
    Liquidation fee 0.5 % unless ``btc_fee_ppm`` says otherwise."""
    policies = {k: v for k, v in (("BTC", btc), ("ETH", eth)) if v is not None}
    out = without_funding(
        perp_venue(
            ("BTC", "ETH"),
            preset=preset,
            insurance_fund_usd=fund_usd,
            liquidation=liquidation,
            policies=policies,
            backstop=backstop,
            single_source_liquidation=True,  # one price source drives these scenarios
        )
    )
    if btc_fee_ppm is not None:
        out = replace(
            out,
            markets=tuple(replace(m, liquidation_fee_ppm=btc_fee_ppm) if m.symbol == BTC else m for m in out.markets),
        )
    return replace(out, **cfg)


def auction_policy(backstop: bool = False, **spec: Any) -> LiquidationPolicy:
    """BTC by Dutch auction: buf 1.02, chip 0.1 % of the tab plus a 1 USD tip (cusp 0.95, tail 600 s
    unless ``spec`` says otherwise)."""
    return LiquidationPolicy(execution="auction", auction=AuctionSpec(tip_quote_q=usd(1), **spec), backstop=backstop)


def start(cfg: EngineConfig, bob: bool = True, screen: str = "incremental") -> Book:
    """Priced venue (BTC 50,000, ETH 3,000); ``bob`` (1,000,000 USD) takes the other side of fills."""
    d = Book(cfg, screen)
    d.price("BTC", "50000")
    d.price("ETH", "3000")
    if bob:
        d.open(BOB, 1_000_000)
    return d


def alice_breached(d: Book, side: int = +1) -> tuple[list[ev.Event], int]:
    """Alice (1,000 USD) holds 0.2 BTC @ 50,000 at 20x (IM 10,000 / 20 = 500) against bob; the price
    gaps through her maintenance. Returns the breach tick's outputs and its time (an auction's start).

    long, BTC 45,500: equity 1,000 - 0.2 x 4,500 = 100 < mm 0.2 x 45,500 x 1.25 % = 113.75
    short, BTC 54,400: equity 1,000 - 0.2 x 4,400 = 120 < mm 0.2 x 54,400 x 1.25 % = 136
    """
    d.open(ALICE, 1_000)
    if side > 0:
        d.pair(ALICE, BOB, BTC, base("0.2"), px(50_000), leverage=20)
        out = d.price("BTC", "45500")
    else:
        d.pair(BOB, ALICE, BTC, base("0.2"), px(50_000), leverage=20)
        out = d.price("BTC", "54400")
    return out, d.t


def fund_moves(out: list[ev.Event]) -> list[tuple[int, int, str, str]]:
    return [(o.delta_quote_q, o.balance_quote_q, o.reason, o.fund) for o in of_type(out, ev.InsuranceFundChanged)]


def fills(out: list[ev.Event]) -> list[tuple[int, int, int, int, int]]:
    """AuctionBidFilled as (bidder, size, price, fund PnL, keeper reward)."""
    return [
        (f.account_id, f.size_base_q, f.price_q, f.fund_pnl_quote_q, f.keeper_reward_quote_q)
        for f in of_type(out, ev.AuctionBidFilled)
    ]


def share_moves(out: list[ev.Event]) -> list[tuple[int, int, int, int, int]]:
    """VaultSharesChanged as (LP, shares, quote moved, total shares, vault equity after)."""
    return [
        (o.account_id, o.shares_delta, o.amount_quote_q, o.total_shares, o.vault_equity_quote_q)
        for o in of_type(out, ev.VaultSharesChanged)
    ]


def rejection(out: list[ev.Event]) -> str:
    rej = of_type(out, ev.InputRejected)
    assert len(rej) == 1, out
    return str(rej[0].reason)


def comparable(eng: Engine) -> dict[str, Any]:
    """The exact state less what any consumed input changes (its sequence number and time)."""
    sd = eng.state_dict()
    del sd["seq"], sd["now_ns"]
    return sd


def meets_target(equity_q: int, mm_q: int, target_ppm: int = 100_000) -> bool:
    return equity_q * PPM >= (PPM + target_ppm) * mm_q


# --- 1. partial liquidation lands exactly on the target ----------------------------------------------


@pytest.mark.parametrize(
    ("side", "closed", "fee", "after", "one_less", "health"),
    [
        # State: alice long 0.2 BTC @ 50,000, BTC gaps to 45,500 (equity 100, mm 113.75, health -13.75).
        # Parameters: liquidation="partial", target 10 %, fee 0.5 %. Closing q BTC at the mark costs
        # only the fee 0.005 x 45,500 q = 227.5 q; the mm left is 0.0125 x 45,500 (0.2 - q):
        #   100 - 227.5 q >= 1.1 x (113.75 - 568.75 q)  <=>  398.125 q >= 25.125  <=>  q >= 0.063108320..
        # Expectations: q = 0.06310833 (6,310,833 quantums, 455 quote q each). Exactly:
        #   fee ceil(6,310,833 x 455 x 0.005) = ceil(14,357,145.075) = 14,357,146; equity 100e6 - fee
        #   = 85,642,854; mm ceil(13,689,167 x 455 x 0.0125) = ceil(77,857,137.3) = 77,857,138;
        #   1.1 x 77,857,138 = 85,642,851.8 <= 85,642,854: reached.
        # One quantum less: fee ceil(14,357,142.8) = 14,357,143, equity 85,642,857, mm
        #   13,689,168 x 455 x 0.0125 = 77,857,143 -> 1.1 x = 85,642,857.3 > 85,642,857: not reached.
        pytest.param(
            +1,
            6_310_833,
            14_357_146,
            (85_642_854, 77_857_138),
            (85_642_857, 77_857_143),
            (-usd("13.75"), 85_642_854 - 77_857_138),
            id="long-gap-to-45500",
        ),
        # State: alice short 0.2 BTC @ 50,000, BTC to 54,400 (equity 120, mm 136, health -16).
        #   120 - 272 q >= 1.1 x 680 (0.2 - q)  <=>  476 q >= 29.6  <=>  q >= 0.0621848739..
        # Expectations: q = -0.06218488 (as held). 544 quote q per quantum: fee ceil(6,218,488 x 544
        #   x 0.005) = ceil(16,914,287.36) = 16,914,288 -> equity 103,085,712; mm ceil(13,781,512 x 544
        #   x 0.0125) = ceil(93,714,281.6) = 93,714,282; 1.1 x = 103,085,710.2 <= 103,085,712.
        # One quantum less: fee 16,914,285, equity 103,085,715, mm ceil(93,714,288.4) = 93,714,289,
        #   1.1 x = 103,085,717.9 > 103,085,715.
        pytest.param(
            -1,
            -6_218_488,
            16_914_288,
            (103_085_712, 93_714_282),
            (103_085_715, 93_714_289),
            (-usd(16), 103_085_712 - 93_714_282),
            id="short-gap-to-54400",
        ),
    ],
)
def test_partial_liquidation_lands_exactly_on_the_target(
    side: int,
    closed: int,
    fee: int,
    after: tuple[int, int],
    one_less: tuple[int, int],
    health: tuple[int, int],
) -> None:
    d = start(venue(liquidation="partial"))
    out, _ = alice_breached(d, side)
    assert [(o.size_base_q, o.fee_quote_q) for o in of_type(out, ev.PositionLiquidated)] == [(closed, fee)]
    risk = d.cross(ALICE)
    assert (risk.equity_quote_q, risk.mm_quote_q) == after
    assert meets_target(*after) and not meets_target(*one_less)
    # the library's own predicate agrees that one quantum less misses (fixed equity = 1,000 - cost)
    mark = px(45_500) if side > 0 else px(54_400)
    model = d.eng.markets[0].spec.margin
    fixed = usd(1_000) - side * usd(10_000)
    size = side * base("0.2")
    assert partial.reaches_target(model, size, 8, mark, fixed, 0, 100_000, closed, 5_000)
    assert not partial.reaches_target(model, size, 8, mark, fixed, 0, 100_000, closed - side, 5_000)
    assert [(o.old, o.new, o.health_quote_q) for o in of_type(out, ev.AccountStatusChanged)] == [
        ("healthy", "liquidating", health[0]),
        # 10 % above maintenance is inside the 20 % at-risk band: restored, but at risk
        ("liquidating", "at_risk", health[1]),
    ]
    assert fund_moves(out) == [(fee, usd(1_000_000) + fee, "liquidation_fee", "main")]


# --- 1b. the per-account cap spreads a liquidation over windows -----------------------------------------


@pytest.mark.parametrize(
    ("screen", "trigger"),
    [
        # FundingSettleRequested re-evaluates the account's buckets exactly (no funding accrues here)
        pytest.param("incremental", "settle", id="incremental-settle"),
        pytest.param("reference", "clock", id="reference-clock"),
        # regression: the incremental screen skips a position whose mark and funding index did not move,
        # so a LIQUIDATING bucket was never revisited on a no-move ClockAdvanced (the reference twin
        # was): ClockAdvanced must re-check liquidating buckets itself
        pytest.param("incremental", "clock", id="incremental-clock"),
    ],
)
def test_the_per_account_cap_leaves_the_account_liquidating_until_a_later_window(screen: str, trigger: str) -> None:
    # State: as the long row above (0.2 BTC, BTC gaps to 45,500; the target needs 0.06310833 BTC).
    # Parameters: at most 1,592.5 USD of notional per account and 60 s window (= 0.035 BTC x 45,500:
    #   3,500,000 quantums x 455 quote q exactly, so the window's allowance ends at exactly 0).
    d = start(venue(liquidation="partial", liquidation_max_account_notional_quote_q=usd("1592.5")), screen=screen)
    out, t0 = alice_breached(d)
    assert t0 < 60 * NS  # window 0
    # Expectations, window 0: the cap cuts the close to 0.035 BTC: fee 0.005 x 1,592.5 = 7.9625, equity
    #   100 - 7.9625 = 92.0375; mm 0.165 x 45,500 x 1.25 % = 93.84375; health -1.80625: still liquidating
    assert [o.size_base_q for o in of_type(out, ev.PositionLiquidated)] == [3_500_000]
    assert (d.cross(ALICE).equity_quote_q, d.cross(ALICE).mm_quote_q) == (92_037_500, 93_843_750)
    assert d.status(ALICE) == LIQUIDATING

    def again() -> list[ev.Event]:
        return d.settle(ALICE) if trigger == "settle" else d.clock(NS)

    # a second look in the same window: the allowance is spent, nothing more is closed
    assert not of_type(again(), ev.PositionLiquidated)
    assert d.status(ALICE) == LIQUIDATING
    # the next window (t >= 60 s): a fresh allowance; the target now needs
    #   92.0375 - 227.5 q >= 1.1 x 568.75 (0.165 - q)  <=>  398.125 q >= 11.190625  <=>  q >= 0.028108320..
    # -> 2,810,833 quantums (within the 3,500,000 allowed). Together 6,310,833: the one-shot close of
    # the row above, and the same end state: fees 7,962,500 + ceil(2,810,833 x 455 x 0.005) =
    # 7,962,500 + 6,394,646 = 14,357,146, equity 85,642,854, mm 77,857,138 (target reached)
    d.t = 61 * NS
    out = again()
    assert [o.size_base_q for o in of_type(out, ev.PositionLiquidated)] == [2_810_833]
    assert (d.cross(ALICE).equity_quote_q, d.cross(ALICE).mm_quote_q) == (85_642_854, 77_857_138)
    assert d.status(ALICE) == AT_RISK  # 10 % above maintenance: inside the 20 % at-risk band
    assert d.eng.insurance_q == usd(1_000_000) + 14_357_146


def test_the_per_account_cap_is_never_exceeded_by_a_leftover_quantum() -> None:
    # regression: a positive allowance smaller than one quantum's notional used to close one quantum
    # (partial.cap_close never returns less than 1), taking the window's notional past the cap.
    # State: as above. Parameters: cap 500 USD per window.
    # Expectations: the first close is floor(500e6 / 455) = 1,098,901 quantums (499,999,955 quote q of
    # notional): 45 quote q of allowance are left, less than one quantum (455). A second look in the
    # same window must close nothing: one more quantum would make 500,000,410 > 500,000,000.
    d = start(venue(liquidation="partial", liquidation_max_account_notional_quote_q=usd(500)))
    out, _ = alice_breached(d)
    assert [o.size_base_q for o in of_type(out, ev.PositionLiquidated)] == [1_098_901]
    assert not of_type(d.settle(ALICE), ev.PositionLiquidated)
    assert d.eng.wf.liq_used[d.row(ALICE)][1] <= usd(500)


# --- 2. Dutch auctions ------------------------------------------------------------------------------------


def maker_curve(spec: AuctionSpec, top: Fraction, dur: int) -> Fraction:
    """MakerDAO abaci.sol, exactly (no ray rounding): LinearDecrease, ExponentialDecrease and
    StairstepExponentialDecrease (``cut`` the per-second / per-step factor)."""
    if spec.curve == "linear":
        return top * max(spec.tau_s - dur, 0) / spec.tau_s
    n = dur // spec.step_s if spec.curve == "stairstep_exponential" else dur
    return top * Fraction(spec.cut_ppm, PPM) ** n


def auction_price_q(spec: AuctionSpec, side: int, mark_usd: int, dur: int) -> int:
    """A long is sold along the curve from mark x buf (rounded up: the taker pays the ceiling); a
    short is bought back at the mirror 2 x mark - curve (rounded down)."""
    curve = maker_curve(spec, Fraction(mark_usd) * Fraction(spec.buf_ppm, PPM), dur)
    if side > 0:
        return ceil(curve * 10**8)
    return floor((2 * mark_usd - curve) * 10**8)


@pytest.mark.parametrize(
    ("side", "spec", "dur", "price", "fund_pnl", "reward"),
    [
        # All rows: alice's 0.2 BTC is closed in full at the mark (close_at_mark) and auctioned.
        # long: mark 45,500, start 45,500 x 1.02 = 46,410, cost basis 0.2 x 45,500 = 9,100 USD, tab 9,100:
        #   keeper reward 1 + 0.1 % x 9,100 = 10.1 USD. Fund PnL = ceil(0.2 x price) - 9,100.
        # linear, tau 1,200 s, 30 s in: 46,410 x 1,170 / 1,200 = 45,249.75; 0.2 x = 9,049.95 -> -50.05
        pytest.param(+1, AuctionSpec(curve="linear", tau_s=1_200), 30, px("45249.75"), -usd("50.05"), usd("10.1"),
                     id="linear"),
        # exponential, cut 0.99 per second, 5 s in: 46,410 x 0.99^5 = 46,410 x 0.9509900499
        #   = 44,135.448215859 -> ceil 44,135.44821586; 0.2 x = 8,827.089643172 -> ceil 8,827.089644 -> -272.910356
        pytest.param(+1, AuctionSpec(curve="exponential", cut_ppm=990_000), 5, px("44135.44821586"),
                     -usd("272.910356"), usd("10.1"), id="exponential"),
        # stairstep, cut 0.99 per 10 s step, 25 s in (2 steps): 46,410 x 0.9801 = 45,486.441;
        #   0.2 x = 9,097.2882 -> -2.7118
        pytest.param(+1, AuctionSpec(curve="stairstep_exponential", cut_ppm=990_000, step_s=10), 25,
                     px("45486.441"), -usd("2.7118"), usd("10.1"), id="stairstep"),
        # short: mark 54,400, the curve from 54,400 x 1.02 = 55,488, mirrored: starts at 53,312 and rises.
        #   Cost basis -0.2 x 54,400 = -10,880 USD (the clearing paid it); tab 10,880: reward 1 + 10.88.
        # linear, 12 s in: curve 55,488 x 0.99 = 54,933.12, price 108,800 - 54,933.12 = 53,866.88;
        #   the fund buys back at 0.2 x 53,866.88 = 10,773.376: PnL 10,880 - 10,773.376 = +106.624
        pytest.param(-1, AuctionSpec(curve="linear", tau_s=1_200), 12, px("53866.88"), usd("106.624"),
                     usd("11.88"), id="short-linear"),
    ],
)  # fmt: skip
def test_an_auction_clears_at_the_curve_price(
    side: int, spec: AuctionSpec, dur: int, price: int, fund_pnl: int, reward: int
) -> None:
    spec = replace(spec, tip_quote_q=usd(1))
    d = start(venue(btc=LiquidationPolicy(execution="auction", auction=spec)))
    d.open(CAROL, 20_000)
    out, t0 = alice_breached(d, side)
    mark_usd = 45_500 if side > 0 else 54_400
    fee = usd("45.5") if side > 0 else usd("54.4")  # 0.5 % of the 9,100 / 10,880 USD closed
    started = of_type(out, ev.AuctionStarted)
    start_price = px(46_410) if side > 0 else px(53_312)
    assert [(a.auction_id, a.size_base_q, a.ref_price_q, a.start_price_q, a.account_ids) for a in started] == [
        (AID, side * base("0.2"), px(mark_usd), start_price, [ALICE])
    ]
    # the hand figure is the MakerDAO curve, computed independently
    assert price == auction_price_q(spec, side, mark_usd, dur)
    # Carol bids for the whole lot at exactly the current price (her limit) `dur` seconds in
    d.at(t0, dur)
    out = d.apply(ev.AuctionBid(d.t, AID, CAROL, base("0.2"), price))
    assert fills(out) == [(CAROL, side * base("0.2"), price, fund_pnl, reward)]
    seed = usd(1_000_000)
    assert fund_moves(out) == [
        (fund_pnl, seed + fee + fund_pnl, "auction", "main"),
        (-reward, seed + fee + fund_pnl - reward, "keeper", "main"),
    ]
    assert [(f.auction_id, f.how) for f in of_type(out, ev.AuctionFinished)] == [(AID, "cleared")]
    assert not d.eng.wf.auctions
    # Carol holds the lot at the auction price and was paid the keeper reward from the fund
    assert d.eng.pos_size[d.pos(CAROL, BTC)] == side * base("0.2")
    assert int(d.eng.bal[d.row(CAROL), 0]) == usd(20_000) + reward


def test_an_auction_filled_by_two_bids() -> None:
    # State: alice's 0.2 BTC long auctioned from 46,410 (linear, tau 1,200 s); incentive 10.1 USD.
    d = start(venue(btc=auction_policy(curve="linear", tau_s=1_200)))
    d.open(CAROL, 20_000)
    d.open(DAVE, 20_000)
    _, t0 = alice_breached(d)
    # 12 s in: 46,410 x 0.99 = 45,945.9. Carol takes 0.05 BTC: pays ceil(0.05 x 45,945.9) = 2,297.295;
    #   cost released 9,100 x 1/4 = 2,275 -> fund +22.295; reward 10.1 / 4 = 2.525 USD
    d.at(t0, 12)
    out = d.apply(ev.AuctionBid(d.t, AID, CAROL, base("0.05"), px("45945.9")))
    assert fills(out) == [(CAROL, base("0.05"), px("45945.9"), usd("22.295"), usd("2.525"))]
    assert not of_type(out, ev.AuctionFinished)
    assert d.eng.wf.auctions[AID].size == base("0.15")
    # 30 s in: 45,249.75. Dave asks for 1 BTC with a generous limit: he gets the 0.15 left at the
    #   current price (not his limit): pays 0.15 x 45,249.75 = 6,787.4625 against the 6,825 of cost
    #   left -> fund -37.5375; the reward left 10.1 - 2.525 = 7.575 USD
    d.at(t0, 30)
    out = d.apply(ev.AuctionBid(d.t, AID, DAVE, base(1), px(50_000)))
    assert fills(out) == [(DAVE, base("0.15"), px("45249.75"), -usd("37.5375"), usd("7.575"))]
    assert [f.how for f in of_type(out, ev.AuctionFinished)] == ["cleared"]
    # the fund: + fee 45.5 + 22.295 - 2.525 - 37.5375 - 7.575
    assert d.eng.insurance_q == usd(1_000_000) + usd("45.5") + usd("22.295") - usd("2.525") - usd("37.5375") - usd(
        "7.575"
    )
    assert d.eng.pos_size[d.pos(DAVE, BTC)] == base("0.15")


@pytest.mark.parametrize(
    ("side", "spec", "move", "quiet_s", "reset_s", "trigger", "reset"),
    [
        # State: alice's long auctioned from mark 45,500. Parameters: tail 120 s (cusp 0.5: never reached
        # first). BTC moves to 45,000 at 100 s. Expectations: 120 s old is still live (Clipper: strictly
        # more than tail); at 121 s a ClockAdvanced resets it: new start 45,000 x 1.02 = 45,900.
        pytest.param(+1, AuctionSpec(curve="linear", tau_s=1_200, tail_s=120, cusp_ppm=500_000), (100, "45000"),
                     120, 121, "clock", ("tail", px(45_000), px(45_900)), id="tail"),
        # cusp 0.95 (linear, tau 1,200 s): at 60 s the price is 0.95 x top, not below: live; at 61 s it is
        # 1,139 / 1,200 = 0.9491 x top < 0.95: reset. BTC moved to 46,000 at 30 s: start 46,920.
        pytest.param(+1, AuctionSpec(curve="linear", tau_s=1_200), (30, "46000"), 60, 61, "clock",
                     ("cusp", px(46_000), px(46_920)), id="cusp-linear"),
        # exponential, cut 0.99/s: 0.99^5 = 0.95099 >= 0.95 live; 0.99^6 = 0.94148 < 0.95: reset at the same
        # mark: start 46,410 again
        pytest.param(+1, AuctionSpec(curve="exponential", cut_ppm=990_000), None, 5, 6, "clock",
                     ("cusp", px(45_500), px(46_410)), id="cusp-exponential"),
        # a bid on a stale auction resets it first and then fills at the fresh start price 46,410
        pytest.param(+1, AuctionSpec(curve="linear", tau_s=1_200), None, 60, 61, "bid",
                     ("cusp", px(45_500), px(46_410)), id="cusp-reset-by-a-bid"),
        # short inventory (mark 54,400), tail 120 s; BTC to 54,000 at 100 s: the fresh start is mirrored,
        # 2 x 54,000 - 54,000 x 1.02 = 52,920
        pytest.param(-1, AuctionSpec(curve="linear", tau_s=1_200, tail_s=120, cusp_ppm=500_000), (100, "54000"),
                     120, 121, "clock", ("tail", px(54_000), px(52_920)), id="tail-short"),
    ],
)  # fmt: skip
def test_a_stale_auction_resets(
    side: int,
    spec: AuctionSpec,
    move: tuple[int, str] | None,
    quiet_s: int,
    reset_s: int,
    trigger: str,
    reset: tuple[str, int, int],
) -> None:
    d = start(venue(btc=LiquidationPolicy(execution="auction", auction=spec)))
    d.open(CAROL, 20_000)
    _, t0 = alice_breached(d, side)
    if move is not None:
        d.at(t0, move[0] - 0.001)  # price() ticks the clock 1 ms forward
        assert not of_type(d.price("BTC", move[1]), ev.AuctionReset)
    d.at(t0, quiet_s)
    assert not of_type(d.apply(ev.ClockAdvanced(d.t)), ev.AuctionReset)
    d.at(t0, reset_s)
    if trigger == "clock":
        out = d.apply(ev.ClockAdvanced(d.t))
    else:
        out = d.apply(ev.AuctionBid(d.t, AID, CAROL, base("0.2"), reset[2]))
    assert [(r.auction_id, r.reason, r.ref_price_q, r.start_price_q) for r in of_type(out, ev.AuctionReset)] == [
        (AID, *reset)
    ]
    if trigger == "bid":
        assert [f.price_q for f in of_type(out, ev.AuctionBidFilled)] == [reset[2]]
        assert not d.eng.wf.auctions
    else:
        a = d.eng.wf.auctions[AID]
        assert (a.started_ns, a.ref_q, a.size) == (d.t, reset[1], side * base("0.2"))


# --- 3. the backstop vault ---------------------------------------------------------------------------------

VAULT = BackstopSpec(max_notional_quote_q=usd(1_000_000), max_leverage=5, withdrawal_delay_ns=600 * NS)


def test_the_backstop_vault_takes_over_a_stale_auction_and_prices_its_shares() -> None:
    # Parameters: BTC auctioned (linear, tau 1,200 s, cusp 0.95) with backstop=True at a 2 % discount;
    # the vault may hold 1,000,000 USD of notional at 5x its equity; withdrawals wait 600 s.
    d = start(venue(btc=auction_policy(backstop=True, curve="linear", tau_s=1_200), backstop=VAULT))
    vault = VAULT.account_id
    d.open(LP1, 20_000)
    d.open(LP2, 10_000)
    # LP1 is first: 10,000 USD buys 10,000e6 shares, one per quantum
    out = d.vault_deposit(LP1, usd(10_000))
    assert share_moves(out) == [(LP1, usd(10_000), usd(10_000), usd(10_000), usd(10_000))]
    # alice's 0.2 BTC long is auctioned from 46,410; nobody bids
    _, t0 = alice_breached(d)
    # 61 s in the auction is past its cusp: the vault takes the whole lot at 45,500 x 0.98 = 44,590.
    #   Fund PnL: 0.2 x 44,590 = 8,918 against the 9,100 cost basis: -182 USD
    d.at(t0, 61)
    out = d.apply(ev.ClockAdvanced(d.t))
    assert [
        (o.auction_id, o.market, o.size_base_q, o.price_q, o.fund_pnl_quote_q)
        for o in of_type(out, ev.BackstopTakeover)
    ] == [(AID, BTC, base("0.2"), px(44_590), -usd(182))]
    assert [(o.auction_id, o.how) for o in of_type(out, ev.AuctionFinished)] == [(AID, "backstop")]
    assert not of_type(out, ev.AuctionReset)
    assert [(m[0], m[2]) for m in fund_moves(out)] == [(-usd(182), "backstop")]
    # the vault: cash 10,000, long 0.2 bought for 8,918; marked at 45,500 its equity is 10,000 + 182
    assert d.eng.pos_size[d.pos(vault, BTC)] == base("0.2")
    assert d.eng.wf.vault_equity() == usd(10_182)
    # BTC 46,000: equity 10,000 + 0.2 x 46,000 - 8,918 = 10,282: a share is worth 1.0282
    d.price("BTC", "46000")
    assert d.eng.wf.vault_equity() == usd(10_282)
    # LP2 deposits 5,141 USD: shares = 5,141 x 10,000 / 10,282 = 5,000 (pro rata to the equity)
    out = d.vault_deposit(LP2, usd(5_141))
    assert share_moves(out) == [(LP2, usd(5_000), usd(5_141), usd(15_000), usd(15_423))]
    # BTC 45,000: equity = cash 15,141 + 0.2 x 45,000 - 8,918 = 15,223
    d.price("BTC", "45000")
    assert d.eng.wf.vault_equity() == usd(15_223)
    # LP1 asks to redeem 4,000 of its 10,000 shares: claimable 600 s later, not a millisecond before
    d.apply(ev.VaultWithdrawalRequested(d.tick(), LP1, usd(4_000)))
    requested = d.t
    d.at(requested, 600 - 0.001)
    assert rejection(d.apply(ev.VaultWithdrawalClaimed(d.t, LP1))) == f"withdrawal locked until {requested + 600 * NS}"
    # at 600 s: 4,000 / 15,000 x 15,223 = 4,059.4666.. -> floor 4,059.466666 USD; the rest of the
    # vault: 15,223 - 4,059.466666 = 11,163.533334 for 11,000 shares
    d.at(requested, 600)
    out = d.apply(ev.VaultWithdrawalClaimed(d.t, LP1))
    assert share_moves(out) == [(LP1, -usd(4_000), -usd("4059.466666"), usd(11_000), usd("11163.533334"))]
    assert int(d.eng.bal[d.row(LP1), 0]) == usd(10_000) + usd("4059.466666")
    assert d.eng.wf.shares == {LP1: usd(6_000), LP2: usd(5_000)}


@pytest.mark.parametrize(
    ("lp_usd", "backstop", "max_notional_usd", "taken", "fund_pnl"),
    [
        # The vault halves the lot until its limits hold (notional at mark <= cap, <= 5x its equity).
        # cap 5,000 USD: 0.2 BTC is 9,100 of notional: too much; 0.1 is 4,550: taken at 44,590:
        #   0.1 x 44,590 = 4,459 against half the cost, 4,550: -91 USD. The other 0.1 is reset.
        pytest.param(10_000, True, 5_000, base("0.1"), -usd(91), id="notional-cap"),
        # equity 500 USD, 5x: 0.2 -> equity 500 + 182 = 682, 5x = 3,410 < 9,100; 0.1 -> 591 x 5 = 2,955 <
        #   4,550; 0.05 -> 545.5 x 5 = 2,727.5 >= 2,275: taken. 0.05 x 44,590 = 2,229.5 - 2,275 = -45.5
        pytest.param(500, True, 1_000_000, base("0.05"), -usd("45.5"), id="leverage-cap"),
        # an empty vault: its equity would be only the 2 % discount, 5x of that never covers the notional
        pytest.param(0, True, 1_000_000, 0, 0, id="empty-vault"),
        # the market does not use the backstop: the auction is simply reset
        pytest.param(10_000, False, 1_000_000, 0, 0, id="market-without-backstop"),
    ],
)
def test_a_takeover_beyond_the_vault_limits_is_partial_and_the_rest_is_reset(
    lp_usd: int, backstop: bool, max_notional_usd: int, taken: int, fund_pnl: int
) -> None:
    spec = replace(VAULT, max_notional_quote_q=usd(max_notional_usd))
    d = start(venue(btc=auction_policy(backstop=backstop, curve="linear", tau_s=1_200), backstop=spec))
    d.open(LP1, 20_000)
    if lp_usd:
        d.vault_deposit(LP1, usd(lp_usd))
    _, t0 = alice_breached(d)
    d.at(t0, 61)  # past the cusp
    out = d.apply(ev.ClockAdvanced(d.t))
    assert [(o.size_base_q, o.price_q, o.fund_pnl_quote_q) for o in of_type(out, ev.BackstopTakeover)] == (
        [(taken, px(44_590), fund_pnl)] if taken else []
    )
    # the rest stays on auction, restarted from the mark: 45,500 x 1.02 = 46,410
    assert [(o.reason, o.ref_price_q, o.start_price_q) for o in of_type(out, ev.AuctionReset)] == [
        ("cusp", px(45_500), px(46_410))
    ]
    a = d.eng.wf.auctions[AID]
    assert a.size == base("0.2") - taken
    assert a.cost == usd(9_100) - usd(9_100) * taken // base("0.2")
    assert a.incentive_left_q == usd("10.1")  # no keeper has earned any of it yet
    assert not of_type(out, ev.AuctionFinished)


# --- 4. batch netting ----------------------------------------------------------------------------------------

BOOK = ImpactSpec("book", book=((0, base("0.1")), (10_000, base(1))))  # 0.1 BTC at the mark, then 1 % through
SQRT = ImpactSpec("sqrt", daily_volume_base_q=base(20), sigma_ppm=30_000, coefficient_ppm=1_000_000)


def batch_tick(policy: LiquidationPolicy) -> tuple[Book, list[ev.Event]]:
    """One ETH tick breaches a long and a short BTC position (both accounts also hold ETH).

    L: 800 USD, long 0.3 BTC @ 50,000 (40x) and long 1 ETH @ 3,000 (25x): IM 375 + 120 = 495.
    S: 700 USD, short 0.1 BTC @ 50,000 (40x) and long 1 ETH @ 3,000 (25x): IM 125 + 120 = 245.
    ETH 3,000 -> 2,400 (BTC stays at 50,000), each loses 600 on ETH:
      L: equity 200, mm 0.3 x 50,000 x 1.25 % + 2,400 x 2 % = 187.5 + 48 = 235.5: health -35.5
      S: equity 100, mm 62.5 + 48 = 110.5: health -10.5
    Both close BTC first (larger maintenance): L sells 0.3 (fee 75), S buys back 0.1 (fee 25); each is
    then back above maintenance (L: 125 vs 48, S: 75 vs 48). Worst first: L's close, then S's.
    """
    d = start(venue(btc=policy))
    d.open(L, 800)
    d.pair(L, BOB, BTC, base("0.3"), px(50_000), leverage=40)
    d.pair(L, BOB, ETH, base(1), px(3_000), leverage=25)
    d.open(S, 700)
    d.pair(BOB, S, BTC, base("0.1"), px(50_000), leverage=40)
    d.pair(S, BOB, ETH, base(1), px(3_000), leverage=25)
    out = d.price("ETH", "2400")
    assert [(o.account_id, o.size_base_q, o.fee_quote_q) for o in of_type(out, ev.PositionLiquidated)] == [
        (L, base("0.3"), usd(75)),
        (S, -base("0.1"), usd(25)),
    ]
    assert d.status(L) == HEALTHY and d.status(S) == HEALTHY
    return d, out


MARK = px(50_000)


@pytest.mark.parametrize(
    ("policy", "netted", "executed", "auctions"),
    [
        # batched book: only the net 0.2 BTC is sold: 0.1 at 50,000 and 0.1 at 49,500 -> 49,750;
        # cost basis 15,000 - 5,000 = 10,000; fund 0.2 x 49,750 - 10,000 = -50 = the slippage
        pytest.param(LiquidationPolicy(execution="impact", batch=True, impact=BOOK),
                     [(base("0.3"), base("0.1"), base("0.2"), MARK, 0)],
                     [(base("0.2"), px(49_750), usd(50), -usd(50))], [], id="book-batched"),
        # unbatched book: L's 0.3 sells 0.1 at 50,000 + 0.2 at 49,500: 14,900 / 0.3 = 49,666.666666666..
        #   (floor 49,666.66666666); 0.3 x that = 14,899.999999998 -> ceil 14,900: -100 (slippage 100);
        # S's 0.1 is bought at the first ask level, the mark: no slippage
        pytest.param(LiquidationPolicy(execution="impact", batch=False, impact=BOOK), [],
                     [(base("0.3"), 4_966_666_666_666, usd(100), -usd(100)), (-base("0.1"), MARK, 0, 0)], [],
                     id="book-unbatched"),
        # batched sqrt: 50,000 x 3 % x sqrt(0.2 / 20) = 150 -> 49,850; fund 0.2 x 49,850 - 10,000 = -30
        pytest.param(LiquidationPolicy(execution="impact", batch=True, impact=SQRT),
                     [(base("0.3"), base("0.1"), base("0.2"), MARK, 0)],
                     [(base("0.2"), px(49_850), usd(30), -usd(30))], [], id="sqrt-batched"),
        # unbatched sqrt: sell 0.3: 1,500 x sqrt(0.015) = 183.71173070.. -> ceil 183.71173071, price
        #   49,816.28826929, 0.3 x = 14,944.886480787 -> ceil: -55.113519; buy 0.1: 1,500 x sqrt(0.005)
        #   = 106.06601717.. -> ceil 106.06601718, price 50,106.06601718, 0.1 x floor 5,010.606601: -10.606601
        pytest.param(LiquidationPolicy(execution="impact", batch=False, impact=SQRT), [],
                     [(base("0.3"), 4_981_628_826_929, 55_113_519, -55_113_519),
                      (-base("0.1"), 5_010_606_601_718, 10_606_601, -10_606_601)], [], id="sqrt-unbatched"),
        # batched auction: one auction of the net 0.2 from 50,000 x 1.02 = 51,000, for both accounts
        pytest.param(LiquidationPolicy(execution="auction", batch=True),
                     [(base("0.3"), base("0.1"), base("0.2"), MARK, 0)], [],
                     [(AID, base("0.2"), px(51_000), [L, S])], id="auction-batched"),
        # unbatched: two auctions, a long from 51,000 and a short from 2 x 50,000 - 51,000 = 49,000
        pytest.param(LiquidationPolicy(execution="auction", batch=False), [], [],
                     [(AID, base("0.3"), px(51_000), [L]), ("BTC-PERP-2", -base("0.1"), px(49_000), [S])],
                     id="auction-unbatched"),
    ],
)  # fmt: skip
def test_batch_netting_executes_only_the_net(
    policy: LiquidationPolicy, netted: list[tuple[Any, ...]], executed: list[tuple[Any, ...]], auctions: list[Any]
) -> None:
    d, out = batch_tick(policy)
    assert [
        (o.market, o.sold_base_q, o.bought_base_q, o.net_base_q, o.price_q, o.fund_pnl_quote_q)
        for o in of_type(out, ev.BatchNetted)
    ] == [(BTC, *n) for n in netted]
    assert [
        (o.market, o.size_base_q, o.price_q, o.mark_q, o.slippage_quote_q, o.fund_pnl_quote_q)
        for o in of_type(out, ev.LiquidationExecuted)
    ] == [(BTC, e[0], e[1], MARK, e[2], e[3]) for e in executed]
    assert [
        (o.auction_id, o.size_base_q, o.ref_price_q, o.start_price_q, o.account_ids)
        for o in of_type(out, ev.AuctionStarted)
    ] == [(a[0], a[1], MARK, a[2], a[3]) for a in auctions]
    # the fund: the two penalties (75 + 25) and what the execution made or lost
    assert d.eng.insurance_q == usd(1_000_000) + usd(100) + sum(e[3] for e in executed)


@pytest.mark.parametrize("impact", [pytest.param(BOOK, id="book"), pytest.param(SQRT, id="sqrt")])
def test_batching_strictly_reduces_the_slippage_of_one_tick(impact: ImpactSpec) -> None:
    # book: 50 < 100 + 0; sqrt: 30 < 55.113519 + 10.606601 (see the table above)
    slips = {}
    for batch in (True, False):
        _, out = batch_tick(LiquidationPolicy(execution="impact", batch=batch, impact=impact))
        slips[batch] = sum(o.slippage_quote_q for o in of_type(out, ev.LiquidationExecuted))
    assert 0 < slips[True] < slips[False]


@pytest.mark.parametrize("execution", ["impact", "auction"])
def test_a_fully_netted_tick_executes_nothing_and_the_fund_keeps_the_rounding_residue(
    execution: Literal["impact", "auction"],
) -> None:
    # State: BTC at 50,000.5 (one base quantum is worth 500.005 quote quantums). L and S (800 USD each)
    # hold 0.30000001 BTC long / short @ 50,000.5 (40x) and 1 ETH long @ 3,000 (25x); ETH 3,000 -> 2,400
    # breaches both (equity 200 < mm 187.5.. + 48) and both BTC positions are closed in the same tick.
    # Expectations: sold = bought = 30,000,001, net 0: nothing to auction or send to the market. The
    # cost bases: the long's floor(30,000,001 x 500.005) = floor(15,000,150,500.005) = 15,000,150,500,
    # the short's -ceil(..) = -15,000,150,501: the crossed parts leave 1 quantum, the fund's.
    d = start(venue(btc=LiquidationPolicy(execution=execution, batch=True, impact=BOOK)))
    d.price("BTC", "50000.5")
    size = base("0.30000001")
    for who, side in ((L, +1), (S, -1)):
        d.open(who, 800)
        if side > 0:
            d.pair(who, BOB, BTC, size, px("50000.5"), leverage=40)
        else:
            d.pair(BOB, who, BTC, size, px("50000.5"), leverage=40)
        d.pair(who, BOB, ETH, base(1), px(3_000), leverage=25)
    out = d.price("ETH", "2400")
    assert [(o.account_id, o.size_base_q) for o in of_type(out, ev.PositionLiquidated)] == [(L, size), (S, -size)]
    assert [
        (o.sold_base_q, o.bought_base_q, o.net_base_q, o.price_q, o.fund_pnl_quote_q)
        for o in of_type(out, ev.BatchNetted)
    ] == [(size, size, 0, px("50000.5"), 1)]
    assert not of_type(out, ev.LiquidationExecuted) and not of_type(out, ev.AuctionStarted)
    # penalties: ceil(0.005 x ceil(15,000,150,500.005)) = ceil(75,000,752.505) = 75,000,753 each
    assert fund_moves(out)[-1] == (1, usd(1_000_000) + 2 * 75_000_753 + 1, "batch", "main")


# --- 5. an insurance fund per market ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "eth_price", "moves", "eth_fund", "main_fund"),
    [
        # State: ETH-PERP has its own fund (own_fund=True, seeded 100 USD); alice (1,000 USD) holds 1 ETH
        # @ 3,000 isolated at 20x with 150 USD of margin. ETH 2,900: isolated equity 150 - 100 = 50 < mm
        # 2,900 x 2 % = 58. Closed at the mark: the 0.5 % penalty, 14.5 USD, goes to the ETH fund
        pytest.param("isolated", "2900", [(usd("14.5"), usd("114.5"), "liquidation_fee", ETH)], usd("114.5"),
                     usd(1_000_000), id="penalty-to-the-market-fund"),
        # ETH 2,800: isolated equity 150 - 200 = -50: no penalty, the 50 USD shortfall is drawn from the
        # ETH fund (100 -> 50), not from main
        pytest.param("isolated", "2800", [(-usd(50), usd(50), "shortfall", ETH)], usd(50), usd(1_000_000),
                     id="isolated-bankruptcy-draws-the-market-fund"),
        # the same loss in cross margin (alice holds only 150 USD): the bucket is the account's, so its
        # shortfall is main's
        pytest.param("cross", "2800", [(-usd(50), usd(1_000_000) - usd(50), "shortfall", "main")], usd(100),
                     usd(1_000_000) - usd(50), id="cross-bankruptcy-draws-main"),
    ],
)  # fmt: skip
def test_an_own_fund_market_keeps_its_penalties_and_covers_its_isolated_losses(
    mode: str, eth_price: str, moves: list[tuple[int, int, str, str]], eth_fund: int, main_fund: int
) -> None:
    d = start(venue(eth=LiquidationPolicy(own_fund=True, own_fund_quote_q=usd(100))))
    assert d.eng.wf.funds == {"main": usd(1_000_000), ETH: usd(100)}
    if mode == "isolated":
        d.open(ALICE, 1_000)
        d.pair(
            ALICE, BOB, ETH, base(1), px(3_000), leverage=20, margin_mode="isolated", isolated_margin_quote_q=usd(150)
        )
    else:
        d.open(ALICE, 150)
        d.pair(ALICE, BOB, ETH, base(1), px(3_000), leverage=20)
    out = d.price("ETH", eth_price)
    assert [o.size_base_q for o in of_type(out, ev.PositionLiquidated)] == [base(1)]
    assert fund_moves(out) == moves
    assert d.eng.wf.funds == {"main": main_fund, ETH: eth_fund}
    assert not of_type(out, ev.BadDebtSocialized)


# --- 6. ADL: the fund runs dry, the ranked counterparties absorb the rest -------------------------------------


def adl_cast(d: Book, x_usd: int) -> None:
    """X goes long 0.3 BTC against three shorts, at three prices (no bob in this market):

    C: 520 USD, short 0.1 @ 50,000; B: 1,800 USD, short 0.1 @ 51,000; A: 3,400 USD, short 0.1 @ 52,000;
    all at 50x (the ranking's leverage is the effective one, notional / equity, not this setting).
    X: cost 5,000 + 5,100 + 5,200 = 15,300; IM at the last fill 0.3 x 52,000 / 50 = 312 <= 900 + 300.
    """
    d.open(X, x_usd)
    d.open(A, 3_400)
    d.open(B, 1_800)
    d.open(C, 520)
    d.pair(X, C, BTC, base("0.1"), px(50_000), leverage=50)
    d.price("BTC", "51000")
    d.pair(X, B, BTC, base("0.1"), px(51_000), leverage=50)
    d.price("BTC", "52000")
    d.pair(X, A, BTC, base("0.1"), px(52_000), leverage=50)


@pytest.mark.parametrize(
    ("fund_usd", "price", "pnl_each", "fund_end"),
    [
        # Parameters: binance brackets (0.4 %), an empty fund. X has 900 USD.
        # At 46,000 X's equity is 900 + 0.3 x 46,000 - 15,300 = -600: closed at the mark, no penalty,
        # shortfall 600, the fund lacks all 600. Bankruptcy price 46,000 + 600 / 0.3 = 48,000 (exact).
        # Each 0.1 BTC sold to a short at 48,000 (4,800) against a third of the 13,800 cost basis (4,600)
        # recovers 200: 3 x 200 = 600 exactly; the fund pays the shortfall and ends at exactly zero.
        pytest.param(0, px(48_000), usd(200), 0, id="empty-fund-exact"),
        # a fund of 200: it lacks 400: 46,000 + 400 / 0.3 = 47,333.333333333.. rounded up against the
        # counterparties: 47,333.33333334; each fill 0.1 x that = 4,733.333333334 -> ceil 4,733.333334,
        # recovering 133.333334; 3 x = 400.000002; the fund 200 + 400.000002 - 600 = 0.000002 USD
        pytest.param(200, 4_733_333_333_334, 133_333_334, 2, id="fund-first-then-adl-rounded-up"),
    ],
)
def test_adl_closes_the_ranked_counterparties_at_the_bankruptcy_price(
    fund_usd: int, price: int, pnl_each: int, fund_end: int
) -> None:
    d = start(venue(preset="binance", fund_usd=fund_usd), bob=False)
    adl_cast(d, 900)
    # BTC 48,200: X's equity 0.3 x 48,200 - 14,400 = 60 >= mm 0.3 x 48,200 x 0.4 % = 57.84 (at risk only).
    # The ranking (BitMEX: PnL% on entry x |mark notional| / equity) of the shorts at 48,200:
    #   A: pnl 380 / 5,200, equity 3,400 + 380 = 3,780, mark notional 4,820 -> 4579/49140 ~ 0.0932
    #   B: pnl 280 / 5,100, equity 2,080 -> 1687/13260 ~ 0.1272
    #   C: pnl 180 / 5,000, equity 700 -> 2169/8750 ~ 0.2479
    # so C, B, A; lights by cumulative size (0.1 of 0.3 each): ceil(5/3) = 2 -> 4, ceil(10/3) = 4 -> 2, 5 -> 1
    d.price("BTC", "48200")
    assert d.status(X) != LIQUIDATING
    expected = {
        C: (1, Fraction(180, 5_000) * Fraction(4_820, 700), 4),
        B: (2, Fraction(280, 5_100) * Fraction(4_820, 2_080), 2),
        A: (3, Fraction(380, 5_200) * Fraction(4_820, 3_780), 1),
    }
    for who, (rank, score, lights) in expected.items():
        r = d.eng.adl_rank(who, BTC)
        assert r is not None
        assert (r["rank"], r["of"], Fraction(r["score"]), r["lights"]) == (rank, 3, score, lights)
    # X is ranked on the other side (against a bankrupt short), alone there: a loss of 15,300 - 14,460 =
    # 840 on 15,300 of entry, divided (a loss) by the leverage 14,460 / 60 = 241: -14/61455
    r = d.eng.adl_rank(X, BTC)
    assert r is not None
    assert (r["rank"], r["of"], Fraction(r["score"])) == (1, 1, Fraction(-840, 15_300) / Fraction(14_460, 60))
    # at 46,000 the scores change (A 69/520, B 10/51, C 2/5) but not the order: C, B, A
    out = d.price("BTC", "46000")
    adl = of_type(out, ev.AutoDeleveraged)
    assert [
        (o.account_id, o.size_base_q, o.price_q, o.rank, o.bankrupt_account_id, o.fund_pnl_quote_q) for o in adl
    ] == [
        (C, base("0.1"), price, 1, X, pnl_each),
        (B, base("0.1"), price, 2, X, pnl_each),
        (A, base("0.1"), price, 3, X, pnl_each),
    ]
    assert [m[2] for m in fund_moves(out)] == ["adl", "adl", "adl", "shortfall"]
    assert fund_moves(out)[-1][0] == -usd(600)
    assert d.eng.insurance_q == fund_end
    assert not of_type(out, ev.BadDebtSocialized) and d.eng.socialized_q == 0
    for who in (A, B, C):
        assert d.eng.pos_size[d.pos(who, BTC)] == 0
    if fund_usd == 0:
        # each short was bought back at 48,000 instead of 46,000: C 520 + 200, B 1,800 + 300, A 3,400 + 400
        assert [int(d.eng.bal[d.row(w), 0]) for w in (C, B, A)] == [usd(720), usd(2_100), usd(3_800)]


# --- 7. socialised loss, the last resort ----------------------------------------------------------------------


def test_without_adl_the_rest_of_a_shortfall_is_socialised() -> None:
    # State: the ADL cast above, an empty fund, but ADL off: the whole 600 USD is socialised
    d = start(venue(preset="binance", fund_usd=0, btc=LiquidationPolicy(adl=False)), bob=False)
    adl_cast(d, 900)
    d.price("BTC", "48200")
    out = d.price("BTC", "46000")
    assert not of_type(out, ev.AutoDeleveraged)
    assert [(o.account_id, o.amount_quote_q, o.fund) for o in of_type(out, ev.BadDebtSocialized)] == [
        (X, usd(600), "main")
    ]
    assert d.eng.socialized_q == usd(600) and d.eng.insurance_q == 0


def test_counterparties_too_small_for_adl_leave_the_rest_socialised() -> None:
    # Parameters: binance brackets, an empty fund, no liquidation penalty on BTC (so nothing ever
    # seeds the fund), BTC auctioned without resets (cusp 0, tail 3,600 s).
    # State: X (600 USD) long 0.3 BTC @ 50,000 against Y (500 USD, short 0.2) and A (2,000 USD, short 0.1).
    d = start(
        venue(
            preset="binance",
            fund_usd=0,
            btc_fee_ppm=0,
            btc=auction_policy(curve="linear", tau_s=3_600, tail_s=3_600, cusp_ppm=0),
        ),
        bob=False,
    )
    d.open(X, 600)
    d.open(Y, 500)
    d.open(A, 2_000)
    d.pair(X, Y, BTC, base("0.2"), px(50_000), leverage=50)
    d.pair(X, A, BTC, base("0.1"), px(50_000), leverage=50)
    # BTC 52,400: Y's equity 500 - 480 = 20 < mm 0.2 x 52,400 x 0.4 % = 41.92: Y's short is closed and
    # its 0.2 is auctioned, unsold: the accounts' shorts (0.1) no longer match X's long (0.3)
    out = d.price("BTC", "52400")
    assert [o.size_base_q for o in of_type(out, ev.AuctionStarted)] == [-base("0.2")]
    # BTC 46,000: X's equity 600 - 1,200 = -600 -> shortfall 600, the fund lacks all of it: bankruptcy
    # price 46,000 + 600 / 0.3 = 48,000. Only A (0.1) is in the queue: it recovers 4,800 - 4,600 = 200;
    # the fund pays those 200 and the remaining 400 USD are socialised
    out = d.price("BTC", "46000")
    assert [
        (o.account_id, o.size_base_q, o.price_q, o.rank, o.fund_pnl_quote_q) for o in of_type(out, ev.AutoDeleveraged)
    ] == [(A, base("0.1"), px(48_000), 1, usd(200))]
    assert fund_moves(out) == [(usd(200), usd(200), "adl", "main"), (-usd(200), 0, "shortfall", "main")]
    assert [(o.account_id, o.amount_quote_q, o.fund) for o in of_type(out, ev.BadDebtSocialized)] == [
        (X, usd(400), "main")
    ]
    # what ADL did not take (0.2 of X's long, cost 13,800 - 4,600 = 9,200) goes to its own auction
    assert [(o.auction_id, o.size_base_q) for o in of_type(out, ev.AuctionStarted)] == [("BTC-PERP-2", base("0.2"))]
    assert d.eng.wf.auctions["BTC-PERP-2"].cost == usd(9_200)


# --- 8. bad input: rejected with a reason, nothing changed -----------------------------------------------------


def bad_input_desk() -> tuple[Book, int]:
    """Alice's 0.2 BTC long on auction (linear, tau 1,200 s) 30 s in, at 45,249.75; LP1 holds 10,000e6
    vault shares; carol (20,000 USD) and erin (100 USD) may bid."""
    d = start(venue(btc=auction_policy(curve="linear", tau_s=1_200), backstop=VAULT))
    d.open(LP1, 20_000)
    d.vault_deposit(LP1, usd(10_000))
    d.open(CAROL, 20_000)
    d.open(ERIN, 100)
    _, t0 = alice_breached(d)
    d.at(t0, 30)
    return d, t0


def _bid(who: int, size: int, limit: int, aid: str = AID) -> Callable[[Book, int], ev.Event]:
    return lambda d, t0: ev.AuctionBid(d.at(t0, 30), aid, who, size, limit)


def _clear(d: Book, t0: int) -> None:
    d.at(t0, 30)
    assert of_type(d.apply(ev.AuctionBid(d.t, AID, CAROL, base("0.2"), px("45249.75"))), ev.AuctionFinished)


def _request(d: Book, t0: int) -> None:
    d.apply(ev.VaultWithdrawalRequested(d.tick(), LP1, usd(1_000)))


@pytest.mark.parametrize(
    ("prepare", "bad", "reason"),
    [
        # the price 30 s in is 45,249.75: a limit one quantum below is refused
        pytest.param(None, _bid(CAROL, base("0.2"), px("45249.75") - 1),
                     "bid limit 4524974999999 is below the auction price 4524975000000", id="bid-below-price"),
        pytest.param(_clear, _bid(CAROL, base("0.1"), px(50_000)), f"auction {AID!r} is unknown or finished",
                     id="bid-on-a-finished-auction"),
        pytest.param(None, _bid(CAROL, base("0.1"), px(50_000), "BTC-PERP-9"),
                     "auction 'BTC-PERP-9' is unknown or finished", id="bid-on-an-unknown-auction"),
        pytest.param(None, _bid(ALICE, base("0.1"), px(50_000)), "a liquidated account cannot bid on its own auction",
                     id="bid-by-the-liquidated-account"),
        # erin's 100 USD cannot carry 0.2 BTC: IM 10 % of 9,100 = 910 > 100 + 0.2 x (45,500 - 45,249.75)
        pytest.param(None, _bid(ERIN, base("0.2"), px(50_000)),
                     "too little collateral: equity 150050000 below initial margin 910000000 after taking 20000000",
                     id="bid-with-too-little-collateral"),
        pytest.param(None, _bid(CAROL, 0, px(50_000)), "size_base_q must be positive and within bounds",
                     id="bid-of-nothing"),
        pytest.param(None, lambda d, t0: ev.VaultWithdrawalRequested(d.tick(), LP1, usd(10_000) + 1),
                     "withdrawal of 10000000001 shares is beyond the 10000000000 held", id="withdraw-beyond-shares"),
        pytest.param(None, lambda d, t0: ev.VaultWithdrawalClaimed(d.tick(), LP1), "no pending withdrawal",
                     id="claim-with-nothing-pending"),
        pytest.param(_request, lambda d, t0: ev.VaultWithdrawalClaimed(d.tick(), LP1), "withdrawal locked until",
                     id="claim-before-the-delay"),
        pytest.param(None, lambda d, t0: ev.VaultDeposit(d.tick(), ERIN, usd(101)), "insufficient USD balance",
                     id="vault-deposit-beyond-balance"),
    ],
)  # fmt: skip
def test_bad_waterfall_input_is_rejected_and_changes_nothing(
    prepare: Callable[[Book, int], None] | None, bad: Callable[[Book, int], ev.Event], reason: str
) -> None:
    d, t0 = bad_input_desk()
    if prepare is not None:
        prepare(d, t0)
    before = comparable(d.eng)
    event = bad(d, t0)
    assert rejection(d.apply(event)).startswith(reason)
    assert state_diff(before, comparable(d.eng)) == []


# --- 10. replay determinism ---------------------------------------------------------------------------------------


def full_story() -> tuple[Book, int]:
    """Every waterfall step in one run: a vault deposit and withdrawal request, a liquidation
    auctioned, a partial bid (the middle: the snapshot point), a mark move, the vault's takeover past
    the cusp, the claim, then a second liquidation (a new auction id) cleared by a bid.
    Returns the desk and the number of inputs up to the middle of the first auction."""
    d = start(venue(btc=auction_policy(backstop=True, curve="linear", tau_s=1_200), backstop=VAULT))
    d.open(LP1, 20_000)
    d.vault_deposit(LP1, usd(10_000))
    d.apply(ev.VaultWithdrawalRequested(d.tick(), LP1, usd(2_500)))
    requested = d.t
    d.open(CAROL, 20_000)
    _, t0 = alice_breached(d)
    d.at(t0, 12)
    assert of_type(d.apply(ev.AuctionBid(d.t, AID, CAROL, base("0.05"), px("45945.9"))), ev.AuctionBidFilled)
    mid = len(d.inputs)
    d.at(t0, 30)
    d.price("BTC", "45600")
    d.at(t0, 61)
    assert of_type(d.apply(ev.ClockAdvanced(d.t)), ev.BackstopTakeover)
    d.at(requested, 600)
    assert of_type(d.apply(ev.VaultWithdrawalClaimed(d.t, LP1)), ev.VaultSharesChanged)
    d.price("BTC", "46000")
    d.open(DAVE, 1_000)
    d.pair(DAVE, BOB, BTC, base("0.2"), px(46_000), leverage=20)
    d.price("BTC", "41500")  # dave: equity 1,000 - 900 = 100 < mm 0.2 x 41,500 x 1.25 % = 103.75
    d.at(d.t, 10)
    assert of_type(d.apply(ev.AuctionBid(d.t, "BTC-PERP-2", CAROL, base(1), px(45_000))), ev.AuctionFinished)
    return d, mid


def test_replaying_the_same_inputs_gives_the_same_outputs_and_hash() -> None:
    d, _ = full_story()
    runs = []
    for _ in range(2):
        eng = Engine(d.cfg)
        runs.append((eng.apply_all(d.inputs), eng.state_hash()))
    assert runs[0] == runs[1]
    assert runs[0][0] == d.records and runs[0][1] == d.eng.state_hash()


def test_a_snapshot_mid_auction_resumes_identically() -> None:
    d, mid = full_story()
    eng = Engine(d.cfg)
    eng.apply_all(d.inputs[:mid])
    assert eng.wf.auctions[AID].size == base("0.15")  # mid-auction: 0.15 of 0.2 left
    twin = Engine.from_state(eng.state_dict())
    assert twin.state_hash() == eng.state_hash()
    rest = d.inputs[mid:]
    assert twin.apply_all(rest) == eng.apply_all(rest)
    assert twin.state_hash() == eng.state_hash() == d.eng.state_hash()
