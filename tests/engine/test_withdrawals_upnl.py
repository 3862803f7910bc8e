"""Withdrawals against unrealised profit (issue 11, item 1).

Unrealised profit counts for margin but, for taking collateral out, only ``withdraw_upnl_weight_ppm`` of
it (default 0); losses and funding owed count in full; isolated positions keep their margin in their
own buckets. The account view and the what-if show ``withdrawable``: the quote one may take out now.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fluidmargin.core.units import PPM
from fluidmargin.engine import Engine
from fluidmargin.engine.state import BANKRUPT, HEALTHY
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.risk.perp import margin
from fluidmargin.service import ServiceSettings, create_app, views
from fluidmargin.sim.venues import perp_venue
from support.desk import NS, Desk, base, of_type, px, usd, without_funding
from support.service import ADMIN, Api, serving

ALICE, BOB, CAROL, DAVE = 1, 2, 3, 4
BTC, ETH = "BTC-PERP", "ETH-PERP"


def rejected(out: list[ev.Event]) -> list[str]:
    return [o.reason for o in of_type(out, ev.InputRejected)]


def venue(weight_ppm: int = 0, funding: bool = False) -> EngineConfig:
    """Binance brackets (BTC: 0.4 % maintenance, up to 125x), close at mark, a 1,000,000 USD fund."""
    cfg = perp_venue(("BTC", "ETH"))
    cfg = cfg if funding else without_funding(cfg)
    return dataclasses.replace(cfg, withdraw_upnl_weight_ppm=weight_ppm)


# --- the report, through the real HTTP service ----------------------------------------------------------


@contextmanager
def service(tmp: Path, cfg: EngineConfig) -> Iterator[Api]:
    ticks = itertools.count(NS, 10**6)  # event time: one millisecond a request, so the figures are exact
    app = create_app(ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, clock=lambda: next(ticks)))
    with serving(app) as api:
        api.keys["pub"] = api.key("publisher", source="test-feed")
        api.keys["pub2"] = api.key("publisher", source="test-feed-2")
        price(api, "BTC", "50000")
        price(api, "ETH", "3000")
        yield api


def price(api: Api, asset: str, text: str) -> None:
    """The same price from two sources (an index two sources agree on is liquidation grade)."""
    api.price(asset, text)
    api.ok("POST", "/v1/prices", json={"asset": asset, "price": text}, headers=api.as_(api.keys["pub2"]))


def fund(api: Api) -> Decimal:
    funds = api.ok("GET", "/v1/insurance-funds")["funds"]
    return sum((Decimal(f["balance"]) for f in funds), Decimal(0))


def test_a_withdrawal_against_unrealised_profit_is_refused_over_http(tmp_path: Path) -> None:
    """The report: 1,100 USD, long 1 BTC at 50,000 (50x); at 55,000 the whole deposit could be withdrawn,
    and the gap to 49,000 then left a bankrupt account for the insurance fund."""
    with service(tmp_path, venue()) as api:
        a = api.open()
        api.deposit(a, "1100")
        api.fill(a, BTC, "1", "50000", leverage=50)  # IM 50,000 / 50 = 1,000 <= 1,100
        price(api, "BTC", "55000")
        view = api.view(a)
        # equity 1,100 + 5,000; IM 55,000 / 50 = 1,100; unrealised profit counts for nothing here:
        # 1,100 + 0 - 1,100 = 0 may leave
        assert (view["equity"], view["initial_margin"], view["withdrawable"]) == ("6100", "1100", "0")
        r = api.c.post(f"/v1/accounts/{a}/withdrawals", json={"amount": "1100"})
        assert r.status_code == 409, r.text
        assert "below initial margin" in r.json()["detail"]
        assert [e["type"] for e in r.json()["events"]] == ["WithdrawalRequested", "InputRejected"]
        # the what-if shows it too, before and after a hypothetical fill
        wi = api.ok(
            "POST", f"/v1/accounts/{a}/what-if", json={"market": BTC, "size": "-0.5", "price": "55000", "leverage": 50}
        )
        # after selling 0.5 at 55,000: 2,500 realised (balance 3,600), IM 27,500 / 50 = 550, the other
        # half's 2,500 profit counts for nothing: 3,600 + 0 - 550 = 3,050 (at most the 3,600 held)
        assert (wi["before"]["withdrawable"], wi["after"]["withdrawable"]) == ("0", "3050")
        before = fund(api)
        price(api, "BTC", "49000")
        # the collateral stayed: equity 1,100 - 1,000 = 100 >= 0 when closed at the mark; the penalty
        # (0.5 % x 49,000 = 245, capped at the 100 left) goes to the fund, which pays nothing
        assert api.view(a)["balances"][0]["amount"] == "0"
        assert fund(api) - before == Decimal(100)


# --- engine scenarios ----------------------------------------------------------------------------------


def quote(d: Desk, asset: str, text: str) -> None:
    """The same price from two sources (an index two sources agree on is liquidation grade)."""
    d.price(asset, text)
    d.price(asset, text, source="s2")


def desk(cfg: EngineConfig) -> Desk:
    d = Desk(cfg)
    quote(d, "BTC", "50000")
    quote(d, "ETH", "3000")
    d.open(BOB, 1_000_000)
    d.open(CAROL, 1_000_000)
    return d


def withdrawable(d: Desk, account_id: int = ALICE) -> int:
    return d.eng.withdrawable_quote_q(d.row(account_id))


@pytest.mark.parametrize(
    ("weight_ppm", "mark", "expected_q", "boundary_reason"),
    [
        # State: 1,100 USD, long 1 BTC @ 50,000 cross at 50x. IM = mark / 50.
        # 55,000: profit 5,000 counted 0 %: 1,100 + 0 - 1,100 = 0
        pytest.param(0, "55000", 0, "below initial margin", id="profit-not-counted"),
        # counted 10 %: 1,100 + 500 - 1,100 = 500
        pytest.param(100_000, "55000", usd(500), "below initial margin", id="profit-10pct"),
        # counted 100 %: 1,100 + 5,000 - 1,100 = 5,000, but only the 1,100 held may leave
        pytest.param(PPM, "55000", usd(1_100), "insufficient USD balance", id="profit-in-full-capped-by-balance"),
        # 55,000.000001: 10 % of the profit 5,000.000001 rounds down to 500, IM 1,100.00000002 rounds up
        # to 1,100.000001: 1,100 + 500 - 1,100.000001 = 499.999999
        pytest.param(100_000, "55000.000001", usd(500) - 1, "below initial margin", id="rounding-for-the-system"),
        # 49,950: the loss of 50 counts in full whatever the weight, IM 999: 1,100 - 50 - 999 = 51
        pytest.param(PPM, "49950", usd(51), "below initial margin", id="loss-in-full"),
        # 49,800: loss 200, IM 996: 1,100 - 200 - 996 < 0: nothing
        pytest.param(PPM, "49800", 0, "below initial margin", id="loss-below-initial-margin"),
    ],
)
def test_withdrawable_keeps_initial_margin_with_weighted_profit(
    weight_ppm: int, mark: str, expected_q: int, boundary_reason: str
) -> None:
    d = desk(venue(weight_ppm))
    d.open(ALICE, 1_100)
    d.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    quote(d, "BTC", mark)
    assert withdrawable(d) == expected_q
    # the boundary: one quantum more is refused, exactly the withdrawable amount goes through
    assert boundary_reason in rejected(d.withdraw(ALICE, expected_q + 1))[0]
    if expected_q:
        assert rejected(d.withdraw(ALICE, expected_q)) == []
        assert int(d.eng.bal[d.row(ALICE), 0]) == usd(1_100) - expected_q
        assert withdrawable(d) == 0


def test_losses_count_in_full_and_profits_weighted_across_positions() -> None:
    # State: 2,000 USD; long 1 BTC @ 50,000 at 50x (IM 1,000), short 10 ETH @ 3,000 at 50x (IM 600)
    d = desk(venue(500_000))
    d.open(ALICE, 2_000)
    d.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    d.pair(CAROL, ALICE, ETH, base(10), px(3_000), leverage=50)
    # BTC 51,000: +1,000 (IM 1,020); ETH 3,050: -500 (IM 610)
    quote(d, "BTC", "51000")
    quote(d, "ETH", "3050")
    # netted (as the old check did) 2,000 + 500 - 1,630 = 870; weighted: 2,000 - 500 + 50 % x 1,000 - 1,630 = 370
    assert withdrawable(d) == usd(370)
    assert "below initial margin" in rejected(d.withdraw(ALICE, usd(370) + 1))[0]
    assert rejected(d.withdraw(ALICE, usd(370))) == []


def test_an_isolated_position_keeps_its_margin_and_its_profit_out_of_withdrawals() -> None:
    # State: 2,000 USD; long 1 BTC @ 50,000 isolated at 50x with 1,000 moved into its bucket; weight 100 %
    d = desk(venue(PPM))
    d.open(ALICE, 2_000)
    d.fill(ALICE, BTC, base(1), px(50_000), leverage=50, margin_mode="isolated", isolated_margin_quote_q=usd(1_000))
    d.fill(BOB, BTC, -base(1), px(50_000), leverage=50)
    quote(d, "BTC", "55000")
    # the bucket's 5,000 profit and 1,000 margin stay in it: the cross balance of 1,000 may leave, no more
    assert withdrawable(d) == usd(1_000)
    assert "insufficient USD balance" in rejected(d.withdraw(ALICE, usd(1_000) + 1))[0]
    assert rejected(d.withdraw(ALICE, usd(1_000))) == []


@pytest.mark.parametrize("weight_ppm", [0, 500_000])
def test_an_isolated_profit_neither_adds_to_nor_takes_from_the_cross_withdrawable(weight_ppm: int) -> None:
    # State: 2,000 USD; isolated long 1 BTC @ 50,000 at 50x with 1,000 in its bucket; cross: short 10 ETH
    # @ 3,000 at 50x (IM 600). BTC rallies to 55,000 (the bucket's +5,000), ETH stays.
    d = desk(venue(weight_ppm))
    d.open(ALICE, 2_000)
    d.fill(ALICE, BTC, base(1), px(50_000), leverage=50, margin_mode="isolated", isolated_margin_quote_q=usd(1_000))
    d.fill(BOB, BTC, -base(1), px(50_000), leverage=50)
    d.pair(CAROL, ALICE, ETH, base(10), px(3_000), leverage=50)
    quote(d, "BTC", "55000")
    # cross: 1,000 balance - 600 IM = 400, whatever the weight: the isolated profit is the bucket's
    assert withdrawable(d) == usd(400)


def test_funding_owed_counts_in_full_so_settling_it_changes_nothing() -> None:
    # State: 1,500 USD, long 1 BTC @ 50,000 at 50x, funding on (longs pay 0.01 % per 8 h); weight 50 %
    d = desk(venue(500_000, funding=True))
    d.open(ALICE, 1_500)
    d.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    d.clock(24 * 3600 * NS)
    quote(d, "BTC", "52000")
    p = d.pos(ALICE, BTC)
    owed = d.eng.funding_owed(p)
    assert owed > 0
    # 1,500 - owed + 50 % x 2,000 - 52,000 / 50 = 1,460 - owed
    assert withdrawable(d) == usd(1_460) - owed
    d.settle(ALICE)
    assert d.eng.funding_owed(p) == 0 and int(d.eng.bal[d.row(ALICE), 0]) == usd(1_500) - owed
    assert withdrawable(d) == usd(1_460) - owed


def test_nothing_is_withdrawable_while_withdrawals_are_blocked() -> None:
    d = desk(venue(PPM))
    d.open(ALICE, 150)
    d.pair(ALICE, BOB, BTC, base("0.1"), px(50_000), leverage=50)
    quote(d, "BTC", "48000")  # 150 - 200 < 0: bankrupt
    assert d.status(ALICE) == BANKRUPT
    assert withdrawable(d) == 0
    # a stale price blocks withdrawals of accounts exposed to it: nothing is withdrawable then
    d.open(DAVE, 10_000)
    d.pair(DAVE, BOB, BTC, base("0.1"), px(48_000), leverage=10)  # IM 480
    assert d.status(DAVE) == HEALTHY and withdrawable(d, DAVE) == usd(10_000 - 480)
    d.t += 121 * NS
    assert rejected(d.withdraw(DAVE, 1)) == ["oracle for BTC is STALE: open not allowed"]
    assert withdrawable(d, DAVE) == 0


def test_the_weight_is_a_parameter_with_a_range_and_replays() -> None:
    d = desk(venue())
    d.open(ALICE, 1_100)
    d.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    quote(d, "BTC", "55000")
    assert withdrawable(d) == 0
    out = d.apply(ev.ParameterChangeRequested(d.tick(), "", "withdraw_upnl_weight_ppm", 200_000))
    assert [(o.name, o.old, o.new) for o in of_type(out, ev.ParameterChanged)] == [
        ("withdraw_upnl_weight_ppm", 0, 200_000)
    ]
    assert withdrawable(d) == usd(1_000)  # 20 % x 5,000
    for bad in (-1, PPM + 1):
        reason = rejected(d.apply(ev.ParameterChangeRequested(d.tick(), "", "withdraw_upnl_weight_ppm", bad)))
        assert reason and f"must be in [0, {PPM}]" in reason[0]
    twin = Engine(d.cfg)
    for _s, e in d.records:
        if e.is_input:
            twin.apply(e)
    assert twin.state_hash() == d.eng.state_hash()
    restored = Engine.from_state(d.eng.state_dict())
    assert restored.cfg.withdraw_upnl_weight_ppm == 200_000 and restored.state_hash() == d.eng.state_hash()


def test_the_account_view_and_the_what_if_show_the_engine_figure() -> None:
    d = desk(venue(100_000))
    d.open(ALICE, 1_100)
    d.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    quote(d, "BTC", "55000")
    assert views.account_view(d.eng, ALICE)["withdrawable"] == "500"

    class Body:
        market, size, price, fee = BTC, "1", "55000", "0"
        margin_mode, leverage, isolated_margin = "cross", 50, "0"

    wi: Any = views.what_if(d.eng, ALICE, Body())
    # buying 1 more at 55,000 is accepted (equity 6,100 >= IM 2 x 1,100: profit counts for margin), and
    # afterwards 1,100 + 10 % x 5,000 - 2,200 < 0: nothing may leave
    assert wi["before"]["withdrawable"] == "500"
    assert wi["accepted"] and wi["after"]["withdrawable"] == "0"


def test_the_pure_function_rounds_the_counted_profit_down() -> None:
    # fixed 1,000; P&L +3 and -1 quanta at 50 %: 1,000 - 1 + floor(1.5) - 998 = 2
    assert margin.withdrawal_headroom_quote_q(1_000, [3, -1], 998, 500_000) == 2
    assert margin.withdrawal_headroom_quote_q(1_000, [], 1_000, 0) == 0


def test_margin_moved_into_an_isolated_bucket_is_a_withdrawal_from_the_cross_bucket() -> None:
    """The same hole through an isolated fill: 1,100 moved out of a cross bucket that only unrealised
    profit keeps at initial margin, the cross bucket then bankrupt on the gap, the fund paying."""
    d = desk(venue())
    d.open(ALICE, 1_100)
    d.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    quote(d, "BTC", "55000")
    fund_before = d.eng.insurance_q
    # an isolated short of 0.1 ETH carrying the cross bucket's 1,100 away: the cross bucket would keep
    # 0 + 0 % x 5,000 < 1,100 initial margin
    iso = dict(margin_mode="isolated", leverage=10, isolated_margin_quote_q=usd(1_100))
    reasons = rejected(d.fill(ALICE, ETH, -base("0.1"), px(3_000), **iso))
    assert reasons and "cross equity" in reasons[0] and "below initial margin" in reasons[0]
    assert int(d.eng.bal[d.row(ALICE), 0]) == usd(1_100)
    # the gap: the 1,100 stayed in the cross bucket and covers the 1,000 loss; the fund pays nothing
    quote(d, "BTC", "49000")
    assert d.eng.insurance_q >= fund_before
    # moving only what is withdrawable is fine: with 300 more deposited, 300 may move
    d2 = desk(venue())
    d2.open(ALICE, 1_400)
    d2.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    quote(d2, "BTC", "55000")
    assert withdrawable(d2) == usd(300)
    assert rejected(d2.fill(ALICE, ETH, -base("0.1"), px(3_000), **{**iso, "isolated_margin_quote_q": usd(300)})) == []


def test_a_vault_deposit_is_a_withdrawal_and_counts_profit_only_at_its_weight() -> None:
    """Buying backstop-vault shares takes collateral out of the cross bucket: the same weighted check."""
    from fluidmargin.model.config import BackstopSpec

    d = desk(dataclasses.replace(venue(), backstop=BackstopSpec(withdrawal_delay_ns=1)))
    d.open(ALICE, 1_100)
    d.pair(ALICE, BOB, BTC, base(1), px(50_000), leverage=50)
    quote(d, "BTC", "55000")
    # equity 6,100 against IM 1,100, but the 5,000 profit counts for nothing: no share may be bought
    reasons = rejected(d.apply(ev.VaultDeposit(d.tick(), ALICE, usd(1_100))))
    assert reasons and "below its initial margin" in reasons[0]
    assert int(d.eng.bal[d.row(ALICE), 0]) == usd(1_100)
    # 300 more deposited: exactly 300 may buy shares, one quantum more may not
    d.apply(ev.Deposited(d.tick(), ALICE, "USD", usd(300)))
    assert withdrawable(d) == usd(300)
    assert rejected(d.apply(ev.VaultDeposit(d.tick(), ALICE, usd(300) + 1)))
    assert rejected(d.apply(ev.VaultDeposit(d.tick(), ALICE, usd(300)))) == []
