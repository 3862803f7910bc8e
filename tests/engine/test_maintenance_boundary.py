"""Accounts exactly at the boundaries of the liquidation state machine, on both exact confirmation paths.

Random populations never land on equity == maintenance, so a comparison flipped from ``<`` to ``<=``
would go unnoticed. Here every boundary gets one account exactly on it and one a quantum short, and
each scenario runs twice: through the batched exact kernels (``mass_close_min=1``: ``_confirm_simple``
confirms, ``risk.mass_close`` closes) and through the per-bucket Python path (``mass_close_min=10**9``).
Both must give the statuses below, and the same state.

The boundaries (engine ``_evaluate_once``, ``_band_trigger``, ``_confirm_simple``, ``_mass_close_market``,
``risk.mass_close``, ``engine.liquidation``):

* breach: health = equity - maintenance < 0 (at exactly 0 the bucket is not liquidated);
* at risk: health < 20 % of maintenance (``at_risk_buffer_ppm``; exactly 20 % stays healthy);
* healthy again: health >= 30 % of maintenance (``at_risk_exit_ppm``; exactly 30 % is healthy);
* after a full close: equity <= 0 is bankrupt (exactly 0 too), 1 quantum is healthy;
* a partial close: the smallest size with equity >= (1 + target) x maintenance (exactly on it counts),
  and a bucket left exactly at the at-risk buffer is healthy.

The arithmetic (BTC-PERP, 8 size decimals, Binance's first bracket: mmr 0.4 %, cum 0; quote quantums
are 1e-6 USD): every account is long 1 BTC (10^8 base quantums) entered at 49,400 USD, so its cost is
49,400,000,000. At a mark of 49,000 its value and notional are 49,000,000,000 and its maintenance is
49,000,000,000 x 0.004 = 196,000,000; equity is deposit - 400,000,000, so health = deposit - 596,000,000.
At 49,020: maintenance 196,080,000, equity deposit - 380,000,000, health = deposit - 576,080,000.
Funding is published (none is), so no funding accrues; the penalty is 0.1 % (1000 ppm), so a full close
at 49,000 costs ceil(49,000,000,000 x 0.001) = 49,000,000.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from fluidmargin.core.units import PPM
from fluidmargin.engine import Engine
from fluidmargin.engine.state import AT_RISK, BANKRUPT, HEALTHY, STATUS_NAMES
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim.venues import perp_venue
from support.desk import NS, state_diff

BTC = "BTC-PERP"
ONE_BTC = 10**8
ENTRY = "49400"
P1, P2 = "49000", "49020"
FEE_PPM = 1000
PATHS = {"batched": 1, "per-bucket": 10**9}
SOURCES = ("s1", "s2", "s3")


@dataclass(frozen=True)
class Case:
    name: str
    deposit_q: int  # the cross account's deposit, or the isolated position's margin
    at_p1: int  # status at 49,000 (of the cross account, or of the isolated bucket)
    closed_q: int  # base quantums liquidated at 49,000
    balance_after_q: int | None  # the account's quote balance after the close (when one happens)
    at_p2: int  # status at 49,020


# health at 49,000 = deposit - 596,000,000 (maintenance 196,000,000; the at-risk buffer 20 % of it:
# 39,200,000); health at 49,020 = deposit - 576,080,000 (the exit at 30 % of 196,080,000: 58,824,000)
CLOSE_AT_MARK = [
    # equity == maintenance: 596,000,000 - 400,000,000 = 196,000,000; health 0 is not a breach
    Case("at-maintenance", 596_000_000, AT_RISK, 0, None, AT_RISK),
    # one quantum below: health -1, closed at the mark; equity 195,999,999 - 49,000,000 penalty is left
    Case("one-below-maintenance", 595_999_999, HEALTHY, ONE_BTC, 146_999_999, HEALTHY),
    # health 39,200,000 = exactly the buffer: stays healthy; at 49,020 health 59,120,000
    Case("at-risk-buffer", 635_200_000, HEALTHY, 0, None, HEALTHY),
    # health 39,199,999: at risk; at 49,020 health 59,119,999 >= 58,824,000: healthy again
    Case("below-risk-buffer", 635_199_999, AT_RISK, 0, None, HEALTHY),
    # health 38,904,000 < buffer: at risk; at 49,020 health 58,824,000 = exactly the exit: healthy
    Case("at-exit", 634_904_000, AT_RISK, 0, None, HEALTHY),
    # ... and a quantum less stays at risk (58,823,999 < 58,824,000)
    Case("below-exit", 634_903_999, AT_RISK, 0, None, AT_RISK),
    # closed: equity 449,000,000 - 400,000,000 = 49,000,000 = the penalty, nothing left: bankrupt
    Case("close-leaves-zero", 449_000_000, BANKRUPT, ONE_BTC, 0, BANKRUPT),
    # closed: 1 quantum left after the penalty: healthy
    Case("close-leaves-one", 449_000_001, HEALTHY, ONE_BTC, 1, HEALTHY),
]

# partial closes to a target of 20 % (= the at-risk buffer). Closing q of the long leaves equity
# deposit - 400,000,000 - ceil(0.49 q) (the loss is the same whatever is closed; the penalty is on
# 490 q of notional) and maintenance ceil(1.96 (10^8 - q)); the target is 5 equity >= 6 maintenance.
# With deposit 542,100,000, q = 50,000,000 gives equity 142,100,000 - 24,500,000 = 117,600,000 and
# maintenance 98,000,000: 5 x 117,600,000 = 6 x 98,000,000, exactly on the target (and on the buffer:
# health 19,600,000 = 20 % of 98,000,000, so healthy); q - 1 leaves maintenance 98,000,002 (short).
# A quantum less deposit needs q + 2: q leaves 5 x 117,599,999 < 6 x 98,000,000; q + 1 pays a penalty of
# 24,500,001 and leaves 5 x 117,599,998 = 587,999,990 < 6 x 97,999,999 = 587,999,994; q + 2 leaves
# 117,599,998 against 97,999,997 (587,999,990 >= 587,999,982), health 19,600,001 >= 20 %: healthy.
PARTIAL = [
    Case("partial-lands-on-target", 542_100_000, HEALTHY, 50_000_000, None, HEALTHY),
    Case("partial-one-below", 542_099_999, HEALTHY, 50_000_002, None, HEALTHY),
]


def config(
    mass_close_min: int, liquidation: str = "close_at_mark", target_ppm: int = 0, assets: tuple[str, ...] = ("BTC",)
) -> EngineConfig:
    base = perp_venue(assets, funding_source="published", liquidation=liquidation, insurance_fund_usd=10**6)
    markets = tuple(dataclasses.replace(m, liquidation_fee_ppm=FEE_PPM) for m in base.markets)
    return dataclasses.replace(base, markets=markets, mass_close_min=mass_close_min, liquidation_target_ppm=target_ppm)


class Venue:
    """One engine; prices come from three sources, so the index moves once the second agrees."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.eng = Engine(cfg)
        self.t = NS
        self.outs: list[ev.Event] = []

    def apply(self, e: ev.Event) -> list[ev.Event]:
        out = [o for _s, o in self.eng.apply(e)[1:]]
        assert not any(isinstance(o, ev.InputRejected) for o in out), out
        self.outs += out
        return out

    def price(self, text: str, asset: str = "BTC") -> list[ev.Event]:
        out = []
        for s in SOURCES:
            self.t += 10**6
            out += self.apply(ev.PriceObserved(self.t, s, asset, text))
        mark = self.eng.market_idx[f"{asset}-PERP"].mark_q
        assert mark == int(text) * 10**8, mark
        return out

    def seed(self, cases: list[Case]) -> None:
        """Each case twice: a cross account (ids 100 + i) and an isolated position (ids 200 + i) whose
        account holds nothing else (its whole deposit is the position's margin)."""
        n = len(cases)
        ids = [100 + i for i in range(n)] + [200 + i for i in range(n)]
        deposits = [c.deposit_q for c in cases] * 2
        self.t += 10**6
        self.apply(
            ev.AccountsSeeded(
                self.t,
                ids,
                deposits,
                list(range(2 * n)),
                [BTC] * (2 * n),
                [ONE_BTC] * (2 * n),
                [int(ENTRY) * 10**8] * (2 * n),
                [0] * n + [1] * n,
                [0] * n + deposits[:n],
                [125] * (2 * n),  # initial margin 49,400,000,000 / 125 = 395,200,000 <= every deposit
            )
        )

    def status(self, account_id: int, isolated: bool) -> int:
        r = self.eng.row(account_id)
        assert r is not None
        if not isolated:
            return int(self.eng.status[r])
        return int(self.eng.pos_status[self.eng.find_pos(r, 0)])

    def balance(self, account_id: int) -> int:
        r = self.eng.row(account_id)
        assert r is not None
        return int(self.eng.bal[r, self.eng.quote_c])


def closed(outs: list[ev.Event]) -> dict[int, int]:
    return {o.account_id: o.size_base_q for o in ev.expand(outs) if isinstance(o, ev.PositionLiquidated)}


def names(statuses: dict[str, int]) -> dict[str, str]:
    return {k: STATUS_NAMES[v] for k, v in statuses.items()}


def run(path: str, cases: list[Case], liquidation: str = "close_at_mark", target_ppm: int = 0) -> Venue:
    v = Venue(config(PATHS[path], liquidation, target_ppm))
    v.price(ENTRY)
    v.seed(cases)
    start = len(v.outs)
    v.price(P1)
    tick = v.outs[start:]
    got = closed(tick)
    n = len(cases)
    for iso in (False, True):
        ids = [(200 if iso else 100) + i for i in range(n)]
        # a closed isolated bucket is gone: healthy, whatever its account's equity
        expected = {c.name: HEALTHY if iso and c.closed_q == ONE_BTC else c.at_p1 for c in cases}
        assert names({c.name: v.status(a, iso) for c, a in zip(cases, ids, strict=True)}) == names(expected), iso
        assert {c.name: got.get(a, 0) for c, a in zip(cases, ids, strict=True)} == {c.name: c.closed_q for c in cases}
        for c, a in zip(cases, ids, strict=True):
            if c.balance_after_q is not None:  # an isolated close returns what margin is left
                assert v.balance(a) == c.balance_after_q, (c.name, iso)
    batch = {a for o in tick if isinstance(o, ev.PositionsLiquidated) for a in o.account_ids}
    # the batched path closed every breach in the kernel; the per-bucket path never uses it
    assert batch == (set(got) if path == "batched" else set())
    return v


@pytest.mark.parametrize("path", PATHS)
def test_statuses_at_maintenance_and_band_boundaries(path: str) -> None:
    v = run(path, CLOSE_AT_MARK)
    v.price(P2)
    n = len(CLOSE_AT_MARK)
    for iso in (False, True):
        ids = [(200 if iso else 100) + i for i in range(n)]
        # an isolated bucket that was closed is gone (healthy); the rest move by their health at 49,020
        expected = {c.name: HEALTHY if iso and c.closed_q == ONE_BTC else c.at_p2 for c in CLOSE_AT_MARK}
        got = {c.name: v.status(a, iso) for c, a in zip(CLOSE_AT_MARK, ids, strict=True)}
        assert names(got) == names(expected), iso


def test_close_at_mark_paths_agree() -> None:
    states = []
    for path in PATHS:
        v = run(path, CLOSE_AT_MARK)
        v.price(P2)
        s = v.eng.state_dict(for_hash=True)
        del s["config"], s["seq"]  # mass_close_min differs, and so does how many events came out
        states.append(s)
    assert state_diff(*states) == []


@pytest.mark.parametrize("path", PATHS)
def test_partial_close_to_a_target_on_the_boundary(path: str) -> None:
    v = run(path, PARTIAL, "partial", target_ppm=200_000)  # the target = the at-risk buffer
    for iso in (False, True):
        a = 200 if iso else 100
        r = v.eng.row(a)
        assert r is not None
        p = v.eng.find_pos(r, 0)
        risk = v.eng.bucket_risk(v.eng.bucket_of(p))
        # exactly on the target, which is also the at-risk buffer: 117,600,000 vs 98,000,000
        assert (risk.equity_quote_q, risk.mm_quote_q) == (117_600_000, 98_000_000), iso
        assert risk.equity_quote_q * PPM == (PPM + v.eng.cfg.liquidation_target_ppm) * risk.mm_quote_q


# a partial close to a target of 0: back to exactly maintenance. With deposit 522,500,000, q = 50,000,000
# leaves equity 122,500,000 - 24,500,000 = 98,000,000 = maintenance (q - 1: 98,000,000 < 98,000,002).
# Health 0 is restored (not "continues"), inside the at-risk band; the kernel settles it itself.
TO_MAINTENANCE = [Case("partial-lands-on-maintenance", 522_500_000, AT_RISK, 50_000_000, None, AT_RISK)]


@pytest.mark.parametrize("path", PATHS)
def test_partial_close_back_to_exactly_maintenance(path: str) -> None:
    v = run(path, TO_MAINTENANCE, "partial", target_ppm=0)
    for a in (100, 200):
        r = v.eng.row(a)
        assert r is not None
        risk = v.eng.bucket_risk(v.eng.bucket_of(v.eng.find_pos(r, 0)))
        assert (risk.equity_quote_q, risk.mm_quote_q) == (98_000_000, 98_000_000)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("deposit_q", "eth_closed", "status"),
    [
        # after the BTC close: equity 461,000,000 - 400,000,000 - 49,000,000 = 12,000,000 = the ETH
        # position's maintenance (3,000,000,000 x 0.004): back at maintenance, the ETH position stays
        pytest.param(461_000_000, 0, AT_RISK, id="back-at-maintenance-stops"),
        # a quantum less: still below, so ETH is closed too (penalty 3,000,000): 8,999,999 left
        pytest.param(460_999_999, ONE_BTC, HEALTHY, id="one-below-closes-the-next"),
    ],
)
def test_close_at_mark_stops_once_back_at_maintenance(path: str, deposit_q: int, eth_closed: int, status: int) -> None:
    """A cross account long 1 BTC (entered at 49,400) and 1 ETH (at 3,000): BTC at 49,000 breaches it;
    the larger maintenance (BTC, 196,000,000) is closed first, then the next only while still below."""
    v = Venue(config(PATHS[path], assets=("BTC", "ETH")))
    v.price(ENTRY)
    v.price("3000", "ETH")
    v.t += 10**6
    v.apply(
        ev.AccountsSeeded(
            v.t, [7], [deposit_q], [0, 0], [BTC, "ETH-PERP"], [ONE_BTC, ONE_BTC], [int(ENTRY) * 10**8, 3000 * 10**8],
            [0, 0], [0, 0], [125, 125],
        )
    )  # fmt: skip
    start = len(v.outs)
    v.price(P1)
    sizes = {o.market: o.size_base_q for o in ev.expand(v.outs[start:]) if isinstance(o, ev.PositionLiquidated)}
    assert sizes == ({BTC: ONE_BTC, "ETH-PERP": ONE_BTC} if eth_closed else {BTC: ONE_BTC})
    assert STATUS_NAMES[v.status(7, False)] == STATUS_NAMES[status]
