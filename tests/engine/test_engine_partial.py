"""Partial liquidation (EngineConfig.liquidation="partial"): close only what restores the target health.

State: Hyperliquid tiers (BTC: 40x max, maintenance 1.25 %), liquidation fee 0.5 %, no funding.
Alice: 1,500 USD, long 1 BTC at 50,000 at 40x (IM 1,250). Bob holds the other side.
"""

from __future__ import annotations

import pytest

from fluidmargin.core.units import PPM, PRICE_SCALE, QUOTE_SCALE
from fluidmargin.engine import Bucket, Engine
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import partial
from fluidmargin.sim.venues import perp_venue

ALICE, BOB = 1, 2
BTC = 10**8  # base quantums per BTC


def usd(x: int) -> int:
    return x * QUOTE_SCALE


def px(x: int) -> int:
    return x * PRICE_SCALE


@pytest.fixture
def venue() -> tuple[Engine, list[int]]:
    cfg = perp_venue(
        ("BTC",),
        preset="hyperliquid",
        funding_source="published",
        liquidation="partial",
        single_source_liquidation=True,
    )
    eng = Engine(cfg)
    t = [1]

    def step() -> int:
        t[0] += 1
        return t[0]

    for e in (
        ev.PriceObserved(step(), "s", "BTC", "50000"),
        ev.AccountOpened(step(), ALICE),
        ev.Deposited(step(), ALICE, "USD", usd(1_500)),
        ev.AccountOpened(step(), BOB),
        ev.Deposited(step(), BOB, "USD", usd(100_000)),
        ev.TradeFilled(step(), ALICE, "BTC-PERP", BTC, px(50_000), leverage=40),
        ev.TradeFilled(step(), BOB, "BTC-PERP", -BTC, px(50_000), leverage=10),
    ):
        assert not [o for _s, o in eng.apply(e) if isinstance(o, ev.InputRejected)], e
    return eng, t


def test_partial_liquidation_lands_on_the_target(venue: tuple[Engine, list[int]]) -> None:
    eng, t = venue
    r = eng.row(ALICE)
    assert r is not None
    p = eng.positions_of(r)[0]
    model = eng.markets[0].spec.margin
    # BTC 48,800: equity 1,500 - 1,200 = 300 < maintenance 48,800 x 1.25 % = 610: a breach
    out = [o for _s, o in eng.apply(ev.PriceObserved(t[0] + 1, "s", "BTC", "48800"))]
    liq = [o for o in out if isinstance(o, ev.PositionLiquidated)]
    assert len(liq) == 1 and liq[0].account_id == ALICE
    q = liq[0].size_base_q
    # the closed form: 300 - 0.005 x 48,800 q >= 1.1 x 610 (1 - q)  =>  q >= 371 / 427 = 0.86885... BTC
    assert 86_885_000 <= q <= 86_890_000
    assert 0 < eng.pos_size[p] < BTC  # partial: Alice keeps part of her position
    after = eng.cross_risk(r)
    target = eng.cfg.liquidation_target_ppm
    assert after.equity_quote_q * PPM >= (PPM + target) * after.mm_quote_q
    # minimal: one quantum less would not reach the target (exact figures at the breach:
    # fixed equity = collateral 1,500 - cost 50,000, the position's value is added at the mark)
    fixed = usd(1_500) - usd(50_000)
    assert partial.reaches_target(model, BTC, 8, px(48_800), fixed, 0, target, q, 5_000)
    assert not partial.reaches_target(model, BTC, 8, px(48_800), fixed, 0, target, q - 1, 5_000)
    # the state machine: healthy -> liquidating -> at risk (restored above maintenance, but the 10 %
    # target is inside the 20 % at-risk band)
    changes = [(o.old, o.new) for o in out if isinstance(o, ev.AccountStatusChanged) and o.account_id == ALICE]
    assert changes == [("healthy", "liquidating"), ("liquidating", "at_risk")]
    assert eng.ledger_total() == sum(eng.deposits) - sum(eng.withdrawals)


def test_partial_and_full_close_agree_when_the_target_cannot_be_reached(venue: tuple[Engine, list[int]]) -> None:
    """Below the bankruptcy price no partial close helps: everything is closed, the fund pays."""
    eng, t = venue
    r = eng.row(ALICE)
    assert r is not None
    out = [o for _s, o in eng.apply(ev.PriceObserved(t[0] + 1, "s", "BTC", "48400"))]  # equity -100
    liq = [o for o in out if isinstance(o, ev.PositionLiquidated)]
    assert [o.size_base_q for o in liq] == [BTC]
    assert [o for o in out if isinstance(o, ev.InsuranceFundChanged) and o.reason == "shortfall"]
    assert eng.bucket_risk(Bucket(r)).equity_quote_q == 0


def test_a_per_event_cap_spreads_the_liquidation_over_ticks() -> None:
    """Cap 10,000 USD of notional per position and event: at ~48,800 each tick closes ~0.2049 BTC;
    the account stays `liquidating` (fills and withdrawals refused) until the target is reached."""
    import dataclasses

    cfg = dataclasses.replace(
        perp_venue(
            ("BTC",),
            preset="hyperliquid",
            funding_source="published",
            liquidation="partial",
            single_source_liquidation=True,
        ),
        liquidation_max_notional_quote_q=usd(10_000),
    )
    eng = Engine(cfg)
    t = 1
    for e in (
        ev.PriceObserved(1, "s", "BTC", "50000"),
        ev.AccountOpened(2, ALICE),
        ev.Deposited(3, ALICE, "USD", usd(1_500)),
        ev.AccountOpened(4, BOB),
        ev.Deposited(5, BOB, "USD", usd(100_000)),
        ev.TradeFilled(6, ALICE, "BTC-PERP", BTC, px(50_000), leverage=40),
        ev.TradeFilled(7, BOB, "BTC-PERP", -BTC, px(50_000), leverage=10),
    ):
        eng.apply(e)
        t = e.ts_ns
    r = eng.row(ALICE)
    assert r is not None
    closed = []
    statuses = []
    for i, price in enumerate(("48800", "48799", "48798", "48797", "48796")):
        out = [o for _s, o in eng.apply(ev.PriceObserved(t + 1 + i, "s", "BTC", price))]
        closed += [o.size_base_q for o in out if isinstance(o, ev.PositionLiquidated)]
        statuses += [(o.old, o.new) for o in out if isinstance(o, ev.AccountStatusChanged) and o.account_id == ALICE]
        if i == 0:
            refused = eng.apply(ev.WithdrawalRequested(t + 100, ALICE, "USD", 1))
            assert "liquidating" in next(o for _s, o in refused if isinstance(o, ev.InputRejected)).reason
            t += 100
    # capped closes: the largest q with q x price <= 10,000 USD, e.g. 10,000 / 48,800 = 0.20491803 BTC;
    # four of them, then the remainder that reaches the target (~0.054 BTC at 48,796)
    capped = [usd(10_000) * 10**10 // px(p) for p in (48_800, 48_799, 48_798, 48_797)]
    assert closed[:4] == capped
    assert len(closed) == 5 and 0 < closed[4] < capped[-1]
    assert statuses == [("healthy", "liquidating"), ("liquidating", "at_risk")]  # target 10 % < 20 % band
    after = eng.cross_risk(r)
    assert after.equity_quote_q * PPM >= (PPM + cfg.liquidation_target_ppm) * after.mm_quote_q
    assert eng.ledger_total() == sum(eng.deposits) - sum(eng.withdrawals)
