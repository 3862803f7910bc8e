"""Circuit breakers: halts and resumes are events; a halt stops new risk, and liquidations at the
out-of-band price until it is confirmed (tests/engine/test_breaker_policy.py has the policy in full).

Parameters: band 10 % within a 5-minute window; two markets (BTC, ETH); Binance tiers, no funding; one
price source, opted in to liquidate on it (so the breaker alone decides).
"""

from __future__ import annotations

import dataclasses

import pytest

from fluidmargin.core.units import PRICE_SCALE, QUOTE_SCALE
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim.venues import perp_venue

S = 10**9
ALICE, BOB, CAROL = 1, 2, 3
BTC = 10**8


class Desk:
    def __init__(self, cfg: EngineConfig) -> None:
        self.eng = Engine(cfg)
        self.t = 0

    def apply(self, e_factory) -> list[ev.Event]:  # type: ignore[no-untyped-def]
        self.t += S
        return [o for _s, o in self.eng.apply(e_factory(self.t))]

    def price(self, asset: str, p: str, source: str = "s1") -> list[ev.Event]:
        return self.apply(lambda t: ev.PriceObserved(t, source, asset, p))

    def fill(self, acct: int, size: int, price: int, lev: int = 10) -> list[ev.Event]:
        return self.apply(lambda t: ev.TradeFilled(t, acct, "BTC-PERP", size, price * PRICE_SCALE, leverage=lev))


@pytest.fixture
def desk() -> Desk:
    cfg = dataclasses.replace(
        perp_venue(("BTC", "ETH"), funding_source="published", staleness_s=3600, single_source_liquidation=True),
        breaker_band_ppm=100_000,
        breaker_window_ns=300 * S,
    )
    d = Desk(cfg)
    d.price("BTC", "50000")
    d.price("ETH", "3000")
    for acct, usd in ((ALICE, 600), (BOB, 100_000), (CAROL, 100_000)):
        d.apply(lambda t, a=acct: ev.AccountOpened(t, a))
        d.apply(lambda t, a=acct, u=usd: ev.Deposited(t, a, "USD", u * QUOTE_SCALE))
    # alice long 0.1 BTC at 50,000 at 10x (IM 500); bob the other side
    assert not [o for o in d.fill(ALICE, BTC // 10, 50_000) if isinstance(o, ev.InputRejected)]
    assert not [o for o in d.fill(BOB, -BTC // 10, 50_000) if isinstance(o, ev.InputRejected)]
    return d


def kinds(out: list[ev.Event], cls: type) -> list[ev.Event]:
    return [o for o in out if isinstance(o, cls)]


def test_a_move_beyond_the_band_halts_new_risk_and_liquidations_at_that_price(desk: Desk) -> None:
    # 50,000 -> 44,000 within the window: a 13.6 % range > 10 %. Alice's equity 600 - 600 = 0 < mm:
    # she is in breach, but not liquidated at the out-of-band price that tripped the breaker.
    out = desk.price("BTC", "44000")
    assert [(o.market, o.reason.startswith("price range")) for o in kinds(out, ev.MarketHalted)] == [("BTC-PERP", True)]
    assert kinds(out, ev.PositionLiquidated) == []
    # new risk is refused while halted ...
    refused = desk.fill(CAROL, BTC // 100, 44_000)
    assert "halted" in kinds(refused, ev.InputRejected)[0].reason
    # ... but reducing risk is allowed (bob buys back part of his short)
    assert not kinds(desk.fill(BOB, BTC // 100, 44_000), ev.InputRejected)
    # the other market is unaffected
    assert "ETH-PERP" not in desk.eng.halted
    # 44,000 holds for the whole window: confirmed, the market resumes and alice is liquidated
    desk.t += 301 * S
    out = desk.price("BTC", "44000")
    assert [o.market for o in kinds(out, ev.MarketResumed)] == ["BTC-PERP"]
    assert [o.account_id for o in kinds(out, ev.PositionLiquidated)] == [ALICE]


def test_the_market_resumes_once_the_move_leaves_the_window(desk: Desk) -> None:
    desk.price("BTC", "44000")
    assert "BTC-PERP" in desk.eng.halted
    desk.t += 301 * S  # the 50,000 sample ages out of the 5-minute window
    out = desk.price("BTC", "44100")
    assert [o.market for o in kinds(out, ev.MarketResumed)] == ["BTC-PERP"]
    assert not kinds(desk.fill(CAROL, BTC // 100, 44_100), ev.InputRejected)


def test_a_move_within_the_band_does_not_halt(desk: Desk) -> None:
    out = desk.price("BTC", "45500")  # 50,000 -> 45,500: 9.9 % < 10 %
    assert not kinds(out, ev.MarketHalted)
    assert not desk.eng.halted


def test_divergent_sources_halt_and_agreement_resumes(desk: Desk) -> None:
    desk.price("ETH", "3001", source="s2")
    out = desk.price("ETH", "3200", source="s3")  # 3,000 / 3,001 / 3,200: s3 is the outlier, 2 of 3 agree
    assert not kinds(out, ev.MarketHalted)
    out = desk.price("ETH", "2850", source="s2")  # 3,000 / 2,850 / 3,200: none within 2 % of another
    assert [o.market for o in kinds(out, ev.MarketHalted)] == ["ETH-PERP"]
    assert kinds(out, ev.OraclePriceRejected)
    assert "diverge" in desk.eng.halted["ETH-PERP"]
    out = desk.price("ETH", "3000", source="s2")  # 3,000 / 3,000 / 3,200: agreement again
    assert [o.market for o in kinds(out, ev.MarketResumed)] == ["ETH-PERP"]


def test_halts_survive_a_snapshot(desk: Desk) -> None:
    desk.price("BTC", "44000")
    restored = Engine.from_state(desk.eng.state_dict())
    assert restored.halted == desk.eng.halted
    assert restored.state_hash() == desk.eng.state_hash()
