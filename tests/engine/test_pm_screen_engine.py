"""The delta-gamma screen of portfolio accounts, through the engine (engine.options over risk.pm_batch).

The screen only decides *which* portfolio accounts a tick revalues in full. So, on random portfolio books
(options on two underlyings, perps, little or much collateral) and random paths (spot moves inside and
beyond the screen's 2 % bound, clock steps inside and beyond its 60 s bound, vol changes, fills):

* after every input, an engine that screens and one that revalues every exposed account on every tick
  (``OptionBook.screening = False``) have the same state hash;
* after every input, no portfolio account is left HEALTHY while its exact full revaluation puts it in the
  at-risk band or in breach (``health x PPM < at_risk_buffer_ppm x maintenance``), and none in breach is
  left unliquidated (HEALTHY, or AT_RISK with liquidation allowed).

Units: USD in quote quantums (1e-6), prices and strikes in 1e-8 USD, perp sizes in 1e-8 of the base,
option sizes in 1e-4 contracts. ``BOB`` is the deep-pocketed counterparty of every fill.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluidmargin.core.units import PPM, PRICE_SCALE
from fluidmargin.engine import Engine
from fluidmargin.engine.options import PORTFOLIO
from fluidmargin.engine.state import AT_RISK, HEALTHY
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from fluidmargin.model.instruments import OptionSpec
from fluidmargin.risk.options.black76 import black76_price, year_fraction
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.sim.venues import perp_venue
from support.desk import DAY, HOUR, NS, px, usd

T0 = NS
BOB = 1
VOLS = {"BTC": "0.6", "ETH": "0.7"}
START = {"BTC": 50_000, "ETH": 3_000}
# (underlying, expiry after T0, strike USD): calls and puts at each; the 2-hour BTC expiry settles on the
# longer paths (settlement changes positions: the screen must revalue)
POINTS = [
    ("BTC", 2 * HOUR, 50_000),
    ("BTC", 7 * DAY, 45_000),
    ("BTC", 7 * DAY, 50_000),
    ("BTC", 30 * DAY, 55_000),
    ("ETH", 30 * DAY, 2_800),
    ("ETH", 30 * DAY, 3_200),
]


def symbol(a: str, exp: int, k: int, right: str) -> str:
    return f"{a}-{right[0].upper()}-{k}-{exp // HOUR}H"


SERIES = tuple(
    OptionSpec(symbol(a, exp, k, right), a, px(k), T0 + exp, right) for a, exp, k in POINTS for right in ("call", "put")
)
PERPS = ("BTC-PERP", "ETH-PERP")


def venue() -> EngineConfig:
    """Hyperliquid tiers, computed funding (accrues with time), 120 s oracle staleness, the PM2 preset;
    marks are median3 (index, index with funding, last trade): a perp's mark strays from the index."""
    cfg = perp_venue(("BTC", "ETH"), preset="hyperliquid")
    markets = tuple(replace(m, mark_rule="median3") for m in cfg.markets)
    return replace(cfg, markets=markets, options=SERIES)


# --- a driver feeding the same inputs to two engines --------------------------------------------------------


class Twin:
    """Two engines on one input stream: ``on`` screens, ``off`` revalues every exposed account every tick."""

    def __init__(self) -> None:
        self.on = Engine(venue())
        self.off = Engine(venue())
        self.off.opt.screening = False
        self.t = T0
        self.spot: dict[str, float] = {a: float(x) for a, x in START.items()}
        self.vol = {(a, T0 + exp, px(k)): VOLS[a] for a, exp, k in POINTS}
        self.n = 0

    def apply(self, e: ev.Event) -> list[ev.Event]:
        out_on = self.on.apply(e)
        out_off = self.off.apply(e)
        assert [x for _s, x in out_on] == [x for _s, x in out_off], f"outputs differ after {e}"
        self.n += 1
        return [x for _s, x in out_on[1:]]

    def step(self, dt_ns: int) -> int:
        self.t += dt_ns
        return self.t

    def price(self, asset: str, usd_price: float, dt_ns: int = 10**6) -> None:
        text = f"{usd_price:.2f}"
        self.apply(ev.PriceObserved(self.step(dt_ns), "s1", asset, text))
        self.spot[asset] = float(text)

    def option_price_q(self, sym: str) -> int:
        s = self.on.opt.idx[sym].spec
        v = float(self.vol[(s.underlying, s.expiry_ns, s.strike_price_q)])
        t = max(year_fraction(self.t, s.expiry_ns), 1e-9)
        p = float(black76_price(self.spot[s.underlying], s.strike_price_q / PRICE_SCALE, t, v, 1.0, s.is_call))
        return max(int(p * PRICE_SCALE), 1)

    def fill(self, account: int, market: str, size: int) -> bool:
        """A paired fill with BOB at the model price (options) or the index (perps); False if refused."""
        if market in PERPS:
            price_q = int(self.spot[market.split("-")[0]] * PRICE_SCALE)
        else:
            if self.on.opt.idx[market].settled_price_q is not None:
                return False
            price_q = self.option_price_q(market)
        ts = self.step(10**6)
        out = self.apply(ev.TradeFilled(ts, account, market, size, price_q, leverage=20))
        if any(isinstance(o, ev.InputRejected) for o in out):
            return False
        back = self.apply(ev.TradeFilled(ts, BOB, market, -size, price_q, leverage=20))
        assert not any(isinstance(o, ev.InputRejected) for o in back), back
        return True


Book = list[tuple[int, float | None, list[tuple[str, int]]]]  # (collateral USD, cushion, [(market, size)])


def row(eng: Engine, account_id: int) -> int:
    r = eng.row(account_id)
    assert r is not None
    return r


def setup(book: Book) -> Twin:
    """BOB (100M USD) and each account in portfolio mode; prices, vols, then the book's fills; then each
    account with a cushion withdraws down to ``initial margin x (1 + cushion)`` (health ~25 % of maintenance
    and up: the at-risk band starts at 20 %, so small moves push such accounts into it and beyond)."""
    d = Twin()
    for a in ("BTC", "ETH"):
        d.price(a, START[a])
    for (a, x, k), v in sorted(d.vol.items()):
        d.apply(ev.VolObserved(d.step(10**6), "vols", a, x, k, v))
    for i, collateral_usd in enumerate([100_000_000] + [c for c, _u, _p in book]):
        aid = BOB + i
        d.apply(ev.AccountOpened(d.step(10**6), aid))
        d.apply(ev.Deposited(d.step(10**6), aid, "USD", usd(collateral_usd)))
        d.apply(ev.MarginModeChanged(d.step(10**6), aid, "portfolio"))
    for i, (_c, cushion, positions) in enumerate(book):
        aid = BOB + 1 + i
        for market, size in positions:
            d.fill(aid, market, size)
        if cushion is not None:
            r = row(d.on, aid)
            excess = d.on.cross_risk(r).equity_quote_q - int(d.on.cross_initial(r) * (1 + cushion))
            if excess > 0:
                d.apply(ev.WithdrawalRequested(d.step(10**6), aid, "USD", min(excess, int(d.on.bal[r, 0]))))
    return d


# --- the invariant -------------------------------------------------------------------------------------------


def check_statuses(eng: Engine) -> None:
    """Every portfolio account's status against a fresh exact revaluation now."""
    buffer_ppm = eng.cfg.at_risk_buffer_ppm
    for r in sorted(eng.opt.pm_rows):
        if int(eng.acct_mode[r]) != PORTFOLIO or r == eng.row(BOB):
            continue
        f = eng.opt.figures(r)
        if f.blocked:
            continue
        h = f.equity_quote_q - f.mm_quote_q
        st = int(eng.status[r])
        aid = int(eng.acct_id[r])
        if st == HEALTHY:
            # what a full revaluation now would keep HEALTHY: outside the at-risk band
            assert h * PPM >= buffer_ppm * f.mm_quote_q, f"account {aid} HEALTHY at health {h}, mm {f.mm_quote_q}"
        if h < 0 and (eng.opt.has_positions(r) or eng.has_cross_perps(r)):
            may_liquidate = not eng.oracle_blocked(eng.cross_assets(r), orc.Action.LIQUIDATE)
            assert st != HEALTHY and not (st == AT_RISK and may_liquidate), f"account {aid} breached, not liquidated"


# --- strategies ----------------------------------------------------------------------------------------------

OPTION_SYMBOLS = [s.symbol for s in SERIES]


@st.composite
def books(draw: Any) -> Book:
    """2-4 accounts: 2,000 to 80,000 USD; 1-4 positions each (options of +-0.1..2 contracts, BTC perps of
    +-0.05..1, ETH perps of +-1..10; a fill refused by the pre-trade check simply does not happen); most then
    withdraw down to a cushion of 0 to 100 % above initial margin (explicit weights, as in :func:`paths`)."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # hypothesis picks (and reports) the seed
    out: Book = []
    for _ in range(rnd.randint(2, 4)):
        collateral = rnd.choice([2_000, 5_000, 12_000, 30_000, 80_000])
        cushion = rnd.choice([None, 0.0, 0.0, 0.0, 0.03, 0.1, 0.3, 1.0])
        positions = []
        for _ in range(rnd.randint(1, 4)):
            market = rnd.choice(OPTION_SYMBOLS + list(PERPS))
            if market == "BTC-PERP":
                size = rnd.choice([5, 20, 50, 100]) * 10**6  # 0.05 .. 1 BTC
            elif market == "ETH-PERP":
                size = rnd.choice([1, 3, 10]) * 10**8
            else:
                size = rnd.choice([1_000, 5_000, 10_000, 20_000])  # 0.1 .. 2 contracts
            positions.append((market, rnd.choice([-1, 1]) * size))
        out.append((collateral, cushion, positions))
    return out


# a path step: ("move", asset, ppm, dt_ms) | ("trend", asset, ppm, ticks, dt_ms) | ("clock", dt_s)
# | ("vol", point, vol) | ("fill", account, market, sign) | ("trade", asset, ppm off the index)


@st.composite
def paths(draw: Any) -> list[tuple[Any, ...]]:
    """5-25 steps drawn with explicit weights (hypothesis alone favours the first, smallest choices):
    40 % single moves (half within +-0.3 %, a third within +-1.5 %, the rest up to +-6 %: across the 2 %
    bound), 30 % trends (2-12 ticks of 0.05-0.3 % one way: accounts drift into the band inside the
    bound), 10 % clock steps (1 s to an hour: inside and beyond the 60 s bound), 10 % vol changes, 5 % fills,
    5 % last trades up to 1 % off the index (the next tick's mark follows)."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    out: list[tuple[Any, ...]] = []
    for _ in range(rnd.randint(5, 25)):
        k = rnd.random()
        asset = rnd.choice(["BTC", "ETH"])
        if k < 0.4:
            scale = rnd.choice([3_000, 3_000, 3_000, 15_000, 15_000, 60_000])
            out.append(("move", asset, rnd.randint(-scale, scale), rnd.choice([1, 50, 500, 5_000])))
        elif k < 0.7:
            ppm = rnd.choice([-3_000, -1_000, -500, 500, 1_000, 3_000])
            out.append(("trend", asset, ppm, rnd.randint(2, 12), rnd.choice([10, 200, 2_000])))
        elif k < 0.8:
            out.append(("clock", rnd.choice([1, 20, 59, 61, 90, 3_600])))
        elif k < 0.9:
            out.append(("vol", rnd.randrange(len(POINTS)), rnd.choice(["0.45", "0.6", "0.9"])))
        elif k < 0.95:
            out.append(("fill", rnd.randrange(4), rnd.choice(OPTION_SYMBOLS + list(PERPS)), rnd.choice([-1, 1])))
        else:
            out.append(("trade", asset, rnd.randint(-10_000, 10_000)))
    return out


def run_step(d: Twin, step: tuple[Any, ...], n_accounts: int) -> None:
    """Apply one step; after each input, the two engines' hashes agree and the statuses hold."""
    kind = step[0]
    if kind in ("move", "trend"):
        asset, ppm, n, dt_ms = (*step[1:3], 1, step[3]) if kind == "move" else step[1:]
        for _ in range(n):
            d.price(asset, d.spot[asset] * (1 + ppm / PPM), dt_ms * 10**6)
            assert d.on.state_hash() == d.off.state_hash(), f"state differs in {step}"
            check_statuses(d.on)
    elif kind == "clock":
        d.apply(ev.ClockAdvanced(d.step(step[1] * NS)))
        for a in ("BTC", "ETH"):  # refresh the oracle (staleness 120 s) at the same price
            d.price(a, d.spot[a])
    elif kind == "vol":
        a, x, k = POINTS[step[1]]
        key = (a, T0 + x, px(k))
        if T0 + x > d.t:
            d.vol[key] = step[2]
            d.apply(ev.VolObserved(d.step(10**6), "vols", a, key[1], key[2], step[2]))
    elif kind == "trade":
        _k, asset, ppm = step
        price_q = int(d.spot[asset] * (1 + ppm / PPM) * PRICE_SCALE)
        d.apply(ev.LastTradeObserved(d.step(10**6), f"{asset}-PERP", price_q))
    else:
        _k, i, market, sign = step
        size = (10**7 if market == "BTC-PERP" else 10**8 if market == "ETH-PERP" else 2_500) * sign
        d.fill(BOB + 1 + i % n_accounts, market, size)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(book=books(), path=paths())
def test_screening_never_leaves_a_breached_account_unflagged_and_never_changes_the_state(
    book: Book, path: list[tuple[Any, ...]]
) -> None:
    d = setup(book)
    assert d.on.state_hash() == d.off.state_hash()
    for step in path:
        run_step(d, step, len(book))
        assert d.on.state_hash() == d.off.state_hash(), f"state differs after {step}"
        check_statuses(d.on)


# --- the screen does skip work, and never on what it must not ----------------------------------------------


@dataclass
class Run:
    twin: Twin
    screened: int
    revalued: int


def seeded_run(seed: int, ticks: int, move_ppm: int) -> Run:
    """20 random accounts (some withdrawn close to initial margin), then ``ticks`` BTC/ETH ticks 100 ms
    apart, each a random move of at most ``move_ppm``."""
    rng = random.Random(seed)
    book = []
    for _ in range(20):
        positions = [
            (rng.choice(OPTION_SYMBOLS), rng.choice([-1, 1]) * rng.choice([1_000, 5_000, 10_000])) for _ in range(3)
        ]
        positions.append((rng.choice(PERPS), rng.choice([-1, 1]) * (10**7 if rng.random() < 0.5 else 10**8)))
        book.append((80_000, rng.choice([None, 0.0, 0.1, 0.5, 2.0]), positions))
    d = setup(book)
    stats = d.on.opt.screen_stats
    s0, r0 = stats["screened"], stats["revalued"]
    for _ in range(ticks):
        a = rng.choice(["BTC", "ETH"])
        d.price(a, d.spot[a] * (1 + rng.randint(-move_ppm, move_ppm) / PPM), 100 * 10**6)
    return Run(d, stats["screened"] - s0, stats["revalued"] - r0)


def test_small_moves_are_screened_and_give_the_same_state() -> None:
    # Parameters: 20 accounts, 60 ticks of at most +-0.1 % every 100 ms (6 s in all: inside the 60 s bound)
    run = seeded_run(seed=7, ticks=60, move_ppm=1_000)
    d = run.twin
    assert d.on.state_hash() == d.off.state_hash()
    check_statuses(d.on)
    # Expectations: most exposed accounts are screened, not revalued (the first tick after the fills
    # rebuilds every screen; accounts near the at-risk band or in it are revalued every tick)
    assert run.screened > 2 * run.revalued, (run.screened, run.revalued)


def test_moves_and_time_beyond_the_bounds_revalue_every_account_and_rebuild_the_screens() -> None:
    run = seeded_run(seed=11, ticks=2, move_ppm=1_000)
    d = run.twin
    eng = d.on
    stats = eng.opt.screen_stats

    def healthy(rows: list[int]) -> int:
        return sum(1 for r in rows if eng.status[r] == HEALTHY and r not in eng.opt.blocked)

    # Parameters: BTC moves 3 % (> the 2 % bound) in one tick
    exposed = eng.opt.rows_exposed("BTC")
    n_healthy = healthy(exposed)
    before = dict(stats)
    d.price("BTC", d.spot["BTC"] * 1.03)
    # Expectations: every BTC-exposed account is revalued; each HEALTHY one gets a new screen from here
    assert stats["screened"] == before["screened"]
    assert stats["revalued"] - before["revalued"] == len(exposed)
    assert stats["rebuilt"] - before["rebuilt"] == n_healthy > 0
    # ... so a small tick after it is screened again
    before = dict(stats)
    d.price("BTC", d.spot["BTC"] * 1.0005)
    assert stats["screened"] > before["screened"]
    # Parameters: 61 s pass (> the 60 s bound): every exposed account is revalued, the screens rebuilt
    exposed = eng.opt.rows_exposed(None)
    n_healthy = healthy(exposed)
    before = dict(stats)
    d.apply(ev.ClockAdvanced(d.step(61 * NS)))
    assert stats["screened"] == before["screened"]
    assert stats["revalued"] - before["revalued"] == len(exposed)
    assert stats["rebuilt"] - before["rebuilt"] == n_healthy
    assert eng.state_hash() == d.off.state_hash()
    check_statuses(eng)


C50_7D = symbol("BTC", 7 * DAY, 50_000, "call")


def test_a_change_other_than_spot_or_time_revalues_the_account() -> None:
    # State: account 2 (80,000 USD) long 1 BTC 7-day ATM call and 0.1 BTC perp; screened after one tick
    d = setup([(80_000, None, [(C50_7D, 10_000), ("BTC-PERP", 10**7)])])
    stats = d.on.opt.screen_stats
    r = row(d.on, BOB + 1)
    for _ in range(2):
        d.price("BTC", d.spot["BTC"] * 1.0001)
    key = d.on.opt.pm_screen.screens[r].key
    rebuilt = stats["rebuilt"]
    # a deposit moves exact collateral only (read exactly on every tick): the screen stays
    d.apply(ev.Deposited(d.step(10**6), BOB + 1, "USD", usd(1)))
    d.price("BTC", d.spot["BTC"] * 1.0001)
    assert stats["rebuilt"] == rebuilt and d.on.opt.pm_screen.screens[r].key == key
    # Expectations: a fill, then a vol, each change the key: the next tick revalues and rebuilds the
    # account, and BOB (the fill's counterparty, short the same call)
    for change in (
        lambda: d.fill(BOB + 1, "BTC-PERP", 10**6),
        lambda: d.apply(ev.VolObserved(d.step(10**6), "vols", "BTC", T0 + 7 * DAY, px(50_000), "0.65")),
    ):
        change()
        before = dict(stats)
        d.price("BTC", d.spot["BTC"] * 1.0001)
        assert stats["rebuilt"] - before["rebuilt"] == 2 and stats["screened"] == before["screened"]
        assert d.on.opt.pm_screen.screens[r].key != key
        key = d.on.opt.pm_screen.screens[r].key
    assert d.on.state_hash() == d.off.state_hash()


def test_the_screen_flags_an_account_on_the_tick_it_enters_the_band_and_revalues_it_until_it_leaves() -> None:
    # State: account 2 long 1 BTC perp at 50,000, withdrawn to initial margin:
    # IM = 0.18 x 50,000 x 1.0 + 2 % x 50,000 = 10,000; MM = 9,000 x 0.8 + 1.5 % x 50,000 = 7,950;
    # health = 10,000 - 7,950 = 2,050 = 25.8 % of MM (HEALTHY; the band starts below 20 %, ends at 30 %)
    d = setup([(80_000, 0.0, [("BTC-PERP", 10**8)])])
    r = row(d.on, BOB + 1)
    stats = d.on.opt.screen_stats

    def ratio_ppm() -> int:
        f = d.on.opt.figures(r)
        return (f.equity_quote_q - f.mm_quote_q) * PPM // f.mm_quote_q

    assert 257_000 < ratio_ppm() < 259_000
    # Parameters: BTC falls 0.1 % per tick, 100 ms apart: health falls ~50 USD a tick, MM ~8 USD
    entered = None
    for i in range(20):
        before = dict(stats)
        d.price("BTC", d.spot["BTC"] * 0.999, 10**8)
        if d.on.status[r] == AT_RISK:
            entered = i
            break
        assert ratio_ppm() >= 200_000  # still outside the band
        if i > 0:  # the first tick built the screen; then each tick is certified without a revaluation
            assert stats["screened"] - before["screened"] == 2  # account 2 and BOB
    # Expectations: AT_RISK on the first tick below 20 % (2,050 - 20 % x 7,950 = 460 USD of room: ~9-12 ticks)
    assert entered is not None and 8 <= entered <= 12 and ratio_ppm() < 200_000
    # Parameters: BTC recovers 0.1 % per tick: the AT_RISK account is revalued on every tick (never screened)
    # and is HEALTHY again on the first tick at 30 % or more
    for _ in range(40):
        before = dict(stats)
        d.price("BTC", d.spot["BTC"] * 1.001, 10**8)
        if d.on.status[r] == HEALTHY:
            break
        assert ratio_ppm() < 300_000
        assert stats["screened"] - before["screened"] == 1  # BOB only
    assert d.on.status[r] == HEALTHY and ratio_ppm() >= 300_000
    assert d.on.state_hash() == d.off.state_hash()


def test_snapshot_resume_with_screening_gives_the_same_state_hash() -> None:
    run = seeded_run(seed=5, ticks=10, move_ppm=1_000)
    d = run.twin
    resumed = Engine.from_state(d.on.state_dict())  # the screen is a cache, not state: rebuilt on resume
    assert resumed.state_hash() == d.on.state_hash()
    rng = random.Random(1)
    for _ in range(20):
        a = rng.choice(["BTC", "ETH"])
        e = ev.PriceObserved(d.step(100 * 10**6), "s1", a, f"{d.spot[a] * (1 + rng.randint(-3_000, 3_000) / PPM):.2f}")
        d.spot[a] = float(e.price)
        d.apply(e)
        resumed.apply(e)
    assert resumed.state_hash() == d.on.state_hash() == d.off.state_hash()
