"""Circuit-breaker policy: a halt stops liquidations at the out-of-band price until it is confirmed.

Policy: the tick that trips the range breaker marks the market (accounts are re-margined and shown
at risk) but liquidates nobody at that price; liquidations resume at a price confirmed after the halt
clears: the range within the window back within the band (the out-of-band move has aged out of the
window, or the price came back), or an operator re-anchor followed by a quorum of sources.

State: BTC-PERP (Binance tiers, 0.4 % maintenance), two sources s1, s2 at 50,000; band 5 % over 300 s.
Five accounts long 1 BTC at 50,000 with 4,000 USD each: health at p = 4,000 + (p - 50,000) - 0.004 p,
negative below 46,000 / 0.996 = 46,184.74; the other side is one short with 1,000,000 USD.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fluidmargin.core.units import PRICE_SCALE, QUOTE_SCALE
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim.venues import perp_venue

S = 10**9
BTC = 10**8
LONGS = (1, 2, 3, 4, 5)
SHORT = 9
SOURCES = ("s1", "s2")


class Desk:
    def __init__(self, band_ppm: int) -> None:
        cfg: EngineConfig = dataclasses.replace(
            perp_venue(("BTC",), funding_source="published", staleness_s=3600),
            breaker_band_ppm=band_ppm,
            breaker_window_ns=300 * S,
        )
        self.eng = Engine(cfg)
        self.t = 0
        self.prices("50000")
        for a, usd in [*((x, 4_000) for x in LONGS), (SHORT, 1_000_000)]:
            self.apply(lambda t, a=a: ev.AccountOpened(t, a))
            self.apply(lambda t, a=a, u=usd: ev.Deposited(t, a, "USD", u * QUOTE_SCALE))
        for a in LONGS:
            self.fill(a, BTC)
        self.fill(SHORT, -len(LONGS) * BTC)

    def apply(self, make: Any, dt: int = S) -> list[ev.Event]:
        self.t += dt
        return [o for _s, o in self.eng.apply(make(self.t))]

    def fill(self, a: int, size: int) -> None:
        out = self.apply(lambda t: ev.TradeFilled(t, a, "BTC-PERP", size, 50_000 * PRICE_SCALE, leverage=20))
        assert not [o for o in out if isinstance(o, ev.InputRejected)], out

    def prices(self, p: str, dt: int = S) -> list[ev.Event]:
        """Both sources print ``p`` (a quorum)."""
        out = self.apply(lambda t: ev.PriceObserved(t, "s1", "BTC", p), dt)
        return out + self.apply(lambda t: ev.PriceObserved(t, "s2", "BTC", p))


def kinds(out: list[ev.Event], cls: type) -> list[Any]:
    return [o for o in out if isinstance(o, cls)]


def liquidated(out: list[ev.Event]) -> list[int]:
    return sorted({o.account_id for o in kinds(out, ev.PositionLiquidated)})


def test_the_tick_that_trips_the_breaker_liquidates_nobody() -> None:
    # Parameters: band 5 %. 50,000 -> 45,000 is a 10 % range (5,000 x 1e6 > 50,000 x 45,000): halt.
    # Expectations per step:
    # | step                          | halted | liquidated      | why                                    |
    # | both sources print 45,000     | yes    | none            | out-of-band price, not confirmed       |
    # | 301 s later, 45,000 again     | no     | the five longs  | 50,000 aged out: range 0 within band   |
    d = Desk(band_ppm=50_000)
    out = d.prices("45000")
    assert d.eng.halted["BTC-PERP"].startswith("price range")
    assert liquidated(out) == []
    assert d.eng.index_q["BTC"] == 45_000 * PRICE_SCALE  # marked at the new price all the same
    assert all(d.eng.status[d.eng.row(a)] != 0 for a in LONGS)  # shown at risk, not healthy
    out = d.prices("45000", dt=301 * S)
    assert [o.market for o in kinds(out, ev.MarketResumed)] == ["BTC-PERP"]
    assert liquidated(out) == list(LONGS)


def test_a_price_back_within_the_band_confirms_and_liquidates_nobody() -> None:
    # 45,000 halts; back to 48,000: range 45,000..50,000 still exceeds 5 %, so still halted; the longs
    # are healthy at 48,000 (4,000 - 2,000 - 192 > 0) and nothing is ever liquidated at 45,000
    d = Desk(band_ppm=50_000)
    out = d.prices("45000") + d.prices("48000")
    assert liquidated(out) == []
    out = d.prices("48000", dt=301 * S)  # 45,000 and 50,000 aged out: resumes at 48,000
    assert kinds(out, ev.MarketResumed) and liquidated(out) == []


def test_an_operator_re_anchor_confirms_the_level() -> None:
    d = Desk(band_ppm=50_000)
    d.prices("45000")
    out = d.apply(lambda t: ev.OracleReanchorRequested(t, "BTC", "45000", "confirmed"))
    assert [o.market for o in kinds(out, ev.MarketResumed)] == ["BTC-PERP"]
    assert liquidated(out) == []  # the operator's level margins; the sources confirm it for liquidation
    assert liquidated(d.prices("45000")) == list(LONGS)


def test_a_band_switched_on_mid_stream_judges_the_next_tick() -> None:
    # the band is 0 (off) while 50,000 is printed, then set to 5 %: the next tick (45,000, -10 %) is
    # judged against the 50,000 already in the window, so it halts and liquidates nobody
    d = Desk(band_ppm=0)
    out = d.apply(lambda t: ev.ParameterChangeRequested(t, "", "breaker_band_ppm", 50_000))
    assert kinds(out, ev.ParameterChanged)
    out = d.prices("45000")
    assert d.eng.halted["BTC-PERP"].startswith("price range")
    assert liquidated(out) == []


def test_without_a_band_the_same_tick_liquidates() -> None:
    d = Desk(band_ppm=0)
    assert liquidated(d.prices("45000")) == list(LONGS)


def test_an_operator_halt_does_not_stop_liquidations() -> None:
    d = Desk(band_ppm=0)
    d.apply(lambda t: ev.MarketHaltRequested(t, "BTC-PERP", "maintenance"))
    assert liquidated(d.prices("45000")) == list(LONGS)
