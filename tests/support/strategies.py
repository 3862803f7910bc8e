"""Hypothesis strategies that generate valid-but-varied input sequences for a small venue.

The sequence strategy draws abstract *steps* (open an account, deposit, a paired fill, a price
tick, a clock jump, ...) and materialises them into concrete input events by running a scratch
engine, so that sizes and prices stay sensible (fills near the mark, sizes within the accounts'
margin) and fills stay *paired*: for every fill of +x on one account there is a fill of -x on
another at the same price and time, so open interest nets to zero. When the second leg of a
pair is rejected, the first leg is reversed at the same price and time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from hypothesis import strategies as st

from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, div_round, format_decimal
from fluidmargin.engine import Engine
from fluidmargin.engine.state import BANKRUPT, LIQUIDATING
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig
from support.desk import HOUR, NS, START_PRICES, VENUES, YEAR, base, px, usd, wsteth

# --- abstract steps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    usd_amount: int  # whole USD deposited on opening (0: none)


@dataclass(frozen=True)
class Deposit:
    who: int
    yield_token: bool
    amount: int  # whole USD, or 1e-3 wstETH


@dataclass(frozen=True)
class Withdraw:
    who: int
    yield_token: bool
    frac_ppm: int  # of the balance (above 1e6: more than the balance)


@dataclass(frozen=True)
class ProfitWithdraw:
    """Move a price ``move_ppm`` in favour of one account's largest cross position, then withdraw: the
    engine's withdrawable amount exactly (``exact``), or ``frac_ppm`` of what counting the whole
    unrealised profit would free (equity - initial margin, at most the balance), often refused."""

    who: int
    move_ppm: int
    exact: bool
    frac_ppm: int


@dataclass(frozen=True)
class PairFill:
    a: int
    b: int
    market: int
    buy: bool  # a buys (+) and b sells, or the other way round
    frac_ppm: int  # of the size the tighter account's free margin allows at its leverage
    reduce: bool  # trade against a's existing position (reduce or flip)
    price_off_ppm: int
    lev_a: int
    lev_b: int
    iso_a: bool
    iso_b: bool
    iso_frac_ppm: int  # isolated margin as a share of the quote balance
    fee_ppm: int
    refresh: bool  # refresh a stale index (same price) first so opening fills are not blocked


@dataclass(frozen=True)
class Tick:
    asset: int
    source: int  # 0: s1 (main); 1, 2: s2, s3 near the main price; 3: an outlier source
    move_ppm: int


@dataclass(frozen=True)
class Slide:
    """Several main-source ticks in one direction: buckets drift through at-risk into breach."""

    asset: int
    step_ppm: int
    n: int


@dataclass(frozen=True)
class Squeeze:
    """Move a price against one account's largest position in 0.1 % ticks until one of its buckets
    is at risk, then ``beyond`` more ticks (into breach, often)."""

    who: int
    beyond: int


@dataclass(frozen=True)
class Clock:
    dt_ns: int


@dataclass(frozen=True)
class Settle:
    who: int


@dataclass(frozen=True)
class Seed:
    pairs: int
    market: int
    lev: int
    iso: bool
    frac_ppm: int


@dataclass(frozen=True)
class Bad:
    kind: int
    who: int


@dataclass(frozen=True)
class Bid:
    """A bid on an open auction: ``frac_ppm`` of what is left, limit ``off_ppm`` through its price."""

    who: int
    pick: int
    frac_ppm: int
    off_ppm: int


@dataclass(frozen=True)
class Vault:
    """A backstop-vault action: 0 deposit, 1 request (``frac_ppm`` of shares held), 2 claim."""

    kind: int
    who: int
    amount: int
    frac_ppm: int


@dataclass(frozen=True)
class Admin:
    """An operator action: 0 halt, 1 resume, 2 an engine parameter, 3 a market parameter, 4 a bad one,
    5 an oracle re-anchor (the pending level, or the index moved by -30 %, -10 %, +20 %), 6 an oracle
    parameter."""

    kind: int
    market: int
    value: int


Step = (
    Open
    | Deposit
    | Withdraw
    | ProfitWithdraw
    | PairFill
    | Tick
    | Slide
    | Squeeze
    | Clock
    | Settle
    | Seed
    | Bad
    | Bid
    | Vault
    | Admin
)

BAD_PRICES = ("NaN", "nan", "inf", "-inf", "-5", "0", "abc", "1e40", "", "1e", "--1")
N_BAD_KINDS = 12

leverages = st.sampled_from([1, 2, 3, 5, 10, 20, 25, 50, 100, 125])
small_moves = st.integers(-8_000, 8_000)
large_moves = st.integers(40_000, 240_000).flatmap(lambda m: st.sampled_from([m, -m]))

step_strategy: st.SearchStrategy[Step] = st.one_of(
    st.builds(Open, st.sampled_from([0, 500, 2_000, 10_000, 100_000])),
    st.builds(Deposit, st.integers(0, 7), st.booleans(), st.integers(1, 50_000)),
    st.builds(
        Withdraw,
        st.integers(0, 7),
        st.booleans(),
        st.sampled_from([1_000, 50_000, 300_000, 900_000, 1_500_000]),
    ),
    st.builds(
        PairFill,
        st.integers(0, 7),
        st.integers(0, 7),
        st.integers(0, 1),
        st.booleans(),
        st.sampled_from([10_000, 100_000, 400_000, 800_000, 980_000, 1_300_000]),
        st.booleans(),
        st.integers(-3_000, 3_000),
        leverages,
        leverages,
        st.booleans(),
        st.booleans(),
        st.sampled_from([0, 100_000, 300_000, 700_000]),
        st.sampled_from([0, 0, 200, 500]),
        st.sampled_from([True, True, True, False]),
    ),
    st.builds(Tick, st.integers(0, 2), st.sampled_from([0, 0, 0, 1, 2, 3]), small_moves | large_moves),
    st.builds(
        Clock,
        st.one_of(
            st.integers(1, 59).map(lambda s: s * NS),
            st.integers(1, 59).map(lambda m: m * 60 * NS),
            st.integers(1, 12).map(lambda h: h * HOUR),
        ),
    ),
    st.builds(Settle, st.integers(0, 7)),
    st.builds(Seed, st.integers(1, 3), st.integers(0, 1), leverages, st.booleans(), st.integers(100_000, 900_000)),
    st.builds(Bad, st.integers(0, N_BAD_KINDS - 1), st.integers(0, 7)),
    st.builds(
        Bid,
        st.integers(0, 7),
        st.integers(0, 3),
        st.sampled_from([100_000, 500_000, 1_000_000, 2_000_000]),
        st.sampled_from([-5_000, 0, 0, 2_000, 20_000]),
    ),
    st.builds(
        Bid,
        st.integers(0, 7),
        st.integers(0, 3),
        st.sampled_from([100_000, 1_000_000]),
        st.sampled_from([0, 5_000]),
    ),
    st.builds(Admin, st.integers(0, 6), st.integers(0, 1), st.integers(0, 3)),
    st.builds(
        Vault,
        st.sampled_from([0, 0, 1, 2]),
        st.integers(0, 7),
        st.sampled_from([100, 1_000, 20_000]),
        st.sampled_from([300_000, 1_000_000, 1_500_000]),
    ),
)

# price ticks and paired fills carry the story: weight them up
main_ticks = st.builds(Tick, st.integers(0, 2), st.just(0), small_moves | large_moves)
bids = st.builds(
    Bid,
    st.integers(0, 7),
    st.integers(0, 3),
    st.sampled_from([300_000, 1_000_000]),
    st.sampled_from([-5_000, 0, 1_000, 10_000]),
)
weighted_steps = st.one_of(
    step_strategy,
    st.builds(
        ProfitWithdraw,
        st.integers(0, 7),
        st.integers(2_000, 60_000),
        st.booleans(),
        st.sampled_from([300_000, 1_000_000]),
    ),
    main_ticks,
    main_ticks,
    bids,
    bids,
    st.builds(Tick, st.integers(0, 1), st.just(0), large_moves),
    st.builds(
        Slide,
        st.integers(0, 1),
        st.integers(300, 4_000).flatmap(lambda m: st.sampled_from([m, -m])),
        st.integers(3, 15),
    ),
    st.builds(Squeeze, st.integers(0, 7), st.sampled_from([0, 0, 1, 3, 8])),
    st.builds(
        PairFill,
        st.integers(0, 7),
        st.integers(0, 7),
        st.integers(0, 1),
        st.booleans(),
        st.sampled_from([100_000, 500_000, 900_000]),
        st.booleans(),
        st.integers(-1_000, 1_000),
        st.sampled_from([5, 10, 20, 50]),
        st.sampled_from([5, 10, 20, 50]),
        st.booleans(),
        st.just(False),
        st.sampled_from([300_000, 700_000]),
        st.just(0),
        st.just(True),
    ),
)


# --- materialising steps into events ------------------------------------------------------------


@dataclass
class Scenario:
    """A concrete input sequence for one venue, and facts the builder learnt on the way."""

    venue: str
    cfg: EngineConfig
    events: list[ev.Event] = field(default_factory=list)
    netted: bool = True  # every market's fills netted to zero (no unmatched leg survived)
    steps: tuple[Step, ...] = ()

    def __repr__(self) -> str:
        """Compact and replayable: hypothesis prints this for a failing example."""
        return f"build_scenario({self.venue!r}, {list(self.steps)!r})"

    def _repr_pretty_(self, p: object, cycle: bool) -> None:
        p.text(repr(self))  # type: ignore[attr-defined]


class _Builder:
    def __init__(self, venue: str) -> None:
        self.venue = venue
        self.cfg = VENUES[venue]()
        self.eng = Engine(self.cfg)
        self.yield_c = self.eng.coll_idx.get("wstETH")
        self.assets = ["BTC", "ETH"] + (["WSTETH"] if self.yield_c is not None else [])
        self.t = NS
        self.n = 0
        self.accounts: list[int] = []
        self.scn = Scenario(venue, self.cfg)
        self.src_ts: dict[tuple[str, str], int] = {}

    # -- plumbing --
    def _id(self) -> str:
        self.n += 1
        return f"x{self.n}" if self.n % 3 else ""  # some events carry no id

    def emit(self, e: ev.Event) -> list[ev.Event]:
        self.scn.events.append(e)
        recs = self.eng.apply(e)
        return [o for _, o in recs[1:]]

    def step_time(self, dt: int = 1_000_000) -> int:
        self.t += dt
        return self.t

    @staticmethod
    def rejected(out: list[ev.Event]) -> bool:
        return any(isinstance(o, ev.InputRejected) for o in out)

    def acct(self, i: int) -> int | None:
        return self.accounts[i % len(self.accounts)] if self.accounts else None

    def wsteth_fair_q(self) -> int:
        eth = self.eng.index_q.get("ETH", START_PRICES["ETH"])
        spec = self.eng.coll[self.yield_c] if self.yield_c is not None else None
        assert spec is not None and spec.yield_spec is not None
        rate = spec.yield_spec.rate0_e18 * (YEAR * 10**6 + spec.yield_spec.apr_ppm * self.t) // (YEAR * 10**6)
        return eth * rate // 10**18

    def price_text(self, asset: str, price_q: int, source: str = "s1") -> None:
        ts = self.step_time()
        self.src_ts[(asset, source)] = ts
        self.emit(
            ev.PriceObserved(ts, source, asset, format_decimal(max(price_q, 1), PRICE_DECIMALS), event_id=self._id())
        )

    # -- prelude: prices and two funded accounts --
    def prelude(self) -> None:
        for a in ("BTC", "ETH"):
            self.price_text(a, START_PRICES[a])
            self.price_text(a, START_PRICES[a], "q2")
        if self.yield_c is not None:
            self.price_text("WSTETH", self.wsteth_fair_q() * 995 // 1000)
        for _ in range(3):
            self.open(Open(20_000))

    # -- steps --
    def open(self, s: Open) -> None:
        aid = 1 + len(self.accounts) if len(self.accounts) < 8 else None
        if aid is None:
            return
        self.accounts.append(aid)
        self.emit(ev.AccountOpened(self.step_time(), aid, event_id=self._id()))
        if s.usd_amount:
            self.emit(ev.Deposited(self.step_time(), aid, "USD", usd(s.usd_amount), event_id=self._id()))

    def deposit(self, s: Deposit) -> None:
        aid = self.acct(s.who)
        if aid is None:
            return
        if s.yield_token and self.yield_c is not None:
            # 0.001 to 50 wstETH
            self.emit(
                ev.Deposited(self.step_time(), aid, "wstETH", wsteth(Decimal(s.amount) / 1000), event_id=self._id())
            )
        else:
            self.emit(ev.Deposited(self.step_time(), aid, "USD", usd(s.amount), event_id=self._id()))

    def withdraw(self, s: Withdraw) -> None:
        aid = self.acct(s.who)
        if aid is None:
            return
        r = self.eng.row(aid)
        asset = "wstETH" if s.yield_token and self.yield_c is not None else "USD"
        bal = int(self.eng.bal[r, self.eng.coll_idx[asset]])
        amount = max(1, bal * s.frac_ppm // 10**6)
        self.emit(ev.WithdrawalRequested(self.step_time(), aid, asset, amount, event_id=self._id()))

    def profit_withdraw(self, s: ProfitWithdraw) -> None:
        aid = self.acct(s.who)
        if aid is None:
            return
        eng = self.eng
        r = eng.row(aid)
        ps = [p for p in eng.positions_of(r) if eng.pos_size[p] and not eng.pos_iso[p]]
        ps = [p for p in ps if eng.markets[int(eng.pos_mkt[p])].mark_q]
        if not ps:
            return
        p = max(ps, key=lambda p: abs(int(eng.pos_size[p])) * (eng.markets[int(eng.pos_mkt[p])].mark_q or 0))
        m = eng.markets[int(eng.pos_mkt[p])]
        self.tick(Tick(self.assets.index(m.spec.base_asset), 0, s.move_ppm if eng.pos_size[p] > 0 else -s.move_ppm))
        if s.exact:
            amount = eng.withdrawable_quote_q(r)
        else:
            free = min(eng.cross_risk(r).equity_quote_q - eng.cross_initial(r), int(eng.bal[r, eng.quote_c]))
            amount = free * s.frac_ppm // 10**6
        self.emit(ev.WithdrawalRequested(self.step_time(), aid, "USD", max(amount, 1), event_id=self._id()))

    def _refresh(self, asset: str) -> None:
        idx = self.eng.index_q.get(asset)
        ts = self.eng.index_ts.get(asset)
        if idx is not None and ts is not None and self.t + 1_000_000 - ts > self.cfg.policy(asset).max_staleness_ns:
            self.price_text(asset, idx)

    def pair_fill(self, s: PairFill) -> None:
        if len(self.accounts) < 2:
            return
        a, b = self.acct(s.a), self.acct(s.b)
        if a == b:
            b = self.accounts[(self.accounts.index(a) + 1) % len(self.accounts)]
        assert a is not None and b is not None
        eng = self.eng
        m = eng.markets[s.market]
        if s.refresh:
            self._refresh(m.spec.base_asset)
        if m.mark_q is None:
            return
        ra, rb = eng.row(a), eng.row(b)
        if any(int(eng.status[r]) in (LIQUIDATING, BANKRUPT) for r in (ra, rb)):
            return
        price = max(1, m.mark_q * (10**6 + s.price_off_ppm) // 10**6)
        pa = eng.find_pos(ra, m.i)
        held = int(eng.pos_size[pa]) if pa >= 0 else 0
        if s.reduce and held:
            size_a = -(held * s.frac_ppm // 10**6) or -held
        else:
            caps = []
            for r, lev, iso in ((ra, s.lev_a, s.iso_a), (rb, s.lev_b, s.iso_b)):
                p = eng.find_pos(r, m.i)
                if p >= 0 and eng.pos_size[p]:
                    iso = bool(eng.pos_iso[p])
                if iso:
                    free = int(eng.bal[r, eng.quote_c]) * s.iso_frac_ppm // 10**6
                else:
                    free = eng.cross_risk(r).equity_quote_q - eng.cross_initial(r)
                caps.append(max(free, 0) * min(lev, m.spec.margin.brackets[0].max_leverage, 50))
            notional_q = min(caps) * s.frac_ppm // 10**6
            size_a = notional_q * 10**m.spec.size_decimals * 10**PRICE_DECIMALS // (price * 10**QUOTE_DECIMALS)
            size_a = max(size_a, 1) * (1 if s.buy else -1)
        legs = []
        for who, r, size, lev, iso in ((a, ra, size_a, s.lev_a, s.iso_a), (b, rb, -size_a, s.lev_b, s.iso_b)):
            p = eng.find_pos(r, m.i)
            cur = int(eng.pos_size[p]) if p >= 0 else 0
            if cur != 0:
                iso = bool(eng.pos_iso[p])  # keep the mode of an open position
            cap = m.spec.margin.brackets[0].max_leverage
            lev = max(1, min(lev, cap))
            iso_margin = 0
            if iso and (cur == 0 or (cur > 0) == (size > 0)):
                iso_margin = int(eng.bal[r, eng.quote_c]) * s.iso_frac_ppm // 10**6
                iso_margin = max(iso_margin, 0)
            increases = abs(cur + size) > abs(cur) or (cur != 0 and (cur > 0) != (cur + size > 0) and cur + size != 0)
            fee = div_round(
                abs(size) * price * s.fee_ppm,
                10 ** (m.spec.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS) * 10**6,
                Rounding.CEIL,
            )
            legs.append((increases, who, size, lev, iso, iso_margin, fee))
        # an increasing leg goes first: if it is refused nothing else happens; a reducing leg is
        # only refused for an account being liquidated, which the builder avoids
        legs.sort(key=lambda leg: not leg[0])
        ts = self.step_time()
        done = []
        for _inc, who, size, lev, iso, iso_margin, fee in legs:
            out = self.emit(
                ev.TradeFilled(
                    ts,
                    who,
                    m.spec.symbol,
                    size,
                    price,
                    fee_quote_q=fee,
                    margin_mode="isolated" if iso else "cross",
                    leverage=lev,
                    isolated_margin_quote_q=iso_margin,
                    event_id=self._id(),
                )
            )
            if self.rejected(out):
                break
            done.append((who, size))
        if len(done) == 1:
            who, size = done[0]
            r = eng.row(who)
            p = eng.find_pos(r, m.i)
            mode = "isolated" if p >= 0 and eng.pos_iso[p] else "cross"
            out = self.emit(
                ev.TradeFilled(
                    ts,
                    who,
                    m.spec.symbol,
                    -size,
                    price,
                    margin_mode=mode,
                    leverage=max(1, int(eng.pos_lev[p])) if p >= 0 else 1,
                    event_id=self._id(),
                )
            )
            if self.rejected(out):
                self.scn.netted = False

    def tick(self, s: Tick) -> None:
        asset = self.assets[s.asset % len(self.assets)]
        if asset == "WSTETH":
            # the market price of the yield token: fair value less a discount (a de-peg when > 2 %)
            disc = abs(s.move_ppm) // 4
            self.price_text("WSTETH", self.wsteth_fair_q() * (10**6 - disc) // 10**6)
            return
        last = self.eng.index_q.get(asset, START_PRICES[asset])
        new = max(1, last * (10**6 + s.move_ppm) // 10**6)
        if s.source == 0:
            # the main price from a quorum: s1 and q2 agree (the default policy liquidates on two sources)
            self.price_text(asset, new, "s1")
            self.price_text(asset, new, "q2")
        elif s.source in (1, 2):
            noise = (s.move_ppm % 7_001) - 3_500  # within ±0.35 % of the main price
            self.price_text(asset, new * (10**6 + noise) // 10**6, f"s{s.source + 1}")
        else:
            self.price_text(asset, last * 106 // 100, "s9")  # an outlier 6 % away from the index

    def slide(self, s: Slide) -> None:
        for _ in range(s.n):
            self.tick(Tick(s.asset, 0, s.step_ppm))

    def squeeze(self, s: Squeeze) -> None:
        aid = self.acct(s.who)
        if aid is None:
            return
        eng = self.eng
        r = eng.row(aid)
        ps = [p for p in eng.positions_of(r) if eng.pos_size[p] and eng.markets[int(eng.pos_mkt[p])].mark_q]
        if not ps:
            return
        p = max(ps, key=lambda p: abs(int(eng.pos_size[p])) * (eng.markets[int(eng.pos_mkt[p])].mark_q or 0))
        m = eng.markets[int(eng.pos_mkt[p])]
        asset = self.assets.index(m.spec.base_asset)
        step = -1_000 if eng.pos_size[p] > 0 else 1_000
        left = None
        for _ in range(150):
            self.tick(Tick(asset, 0, step))
            if left is None and (int(eng.status[r]) != 0 or any(int(eng.pos_status[q]) != 0 for q in ps)):
                left = s.beyond
            if left is not None:
                if left == 0:
                    return
                left -= 1

    def clock(self, s: Clock) -> None:
        self.emit(ev.ClockAdvanced(self.step_time(s.dt_ns), event_id=self._id()))

    def settle(self, s: Settle) -> None:
        aid = self.acct(s.who)
        if aid is not None:
            self.emit(ev.FundingSettleRequested(self.step_time(), aid, event_id=self._id()))

    def seed(self, s: Seed) -> None:
        """A seeded population of long/short pairs at the mark (nets to zero per market)."""
        m = self.eng.markets[s.market]
        if m.mark_q is None or len(self.accounts) + 2 * s.pairs > 8:
            return
        self._refresh(m.spec.base_asset)
        lev = max(1, min(s.lev, 20, m.spec.margin.brackets[0].max_leverage))
        ids, deps, pa, mk, sz, pr, iso, isom, levs = [], [], [], [], [], [], [], [], []
        dep_q = usd(2_000 + s.frac_ppm // 100)
        notional_q = dep_q * lev * s.frac_ppm // 10**6 // 2
        size = max(1, notional_q * 10**m.spec.size_decimals * 10**PRICE_DECIMALS // (m.mark_q * 10**QUOTE_DECIMALS))
        for j in range(2 * s.pairs):
            aid = 1 + len(self.accounts) + j
            ids.append(aid)
            deps.append(dep_q)
            pa.append(j)
            mk.append(m.spec.symbol)
            sz.append(size if j % 2 == 0 else -size)
            pr.append(m.mark_q)
            iso.append(1 if s.iso and j % 2 == 0 else 0)
            isom.append(dep_q // 2 if s.iso and j % 2 == 0 else 0)
            levs.append(lev)
        out = self.emit(
            ev.AccountsSeeded(self.step_time(), ids, deps, pa, mk, sz, pr, iso, isom, levs, event_id=self._id())
        )
        if not self.rejected(out):
            self.accounts.extend(ids)

    def bad(self, s: Bad) -> None:
        aid = self.acct(s.who) or 1
        t = self.step_time()
        k = s.kind
        if k == 0:
            self.emit(ev.Deposited(t, 999_999, "USD", usd(10), event_id=self._id()))
        elif k == 1:
            self.emit(ev.PriceObserved(t, "s1", "BTC", BAD_PRICES[s.who % len(BAD_PRICES)], event_id=self._id()))
        elif k == 2:
            self.emit(ev.ClockAdvanced(self.eng.now_ns - 1, event_id=self._id()))
        elif k == 3:
            self.emit(ev.TradeFilled(t, aid, "DOGE-PERP", 1, px(1), event_id=self._id()))
        elif k == 4 and self.scn.events:
            prior = [e for e in self.scn.events if getattr(e, "event_id", "")]
            if prior:
                self.emit(prior[s.who % len(prior)])  # a duplicate: the engine answers []
        elif k == 5:
            self.emit(ev.Deposited(t, aid, "USD", -usd(5) if s.who % 2 else 0, event_id=self._id()))
        elif k == 6:
            self.emit(ev.WithdrawalRequested(t, aid, "USD", usd(10**9), event_id=self._id()))
        elif k == 7:
            self.emit(
                ev.TradeFilled(
                    t,
                    aid,
                    "BTC-PERP",
                    base("0.01"),
                    px(50_000),
                    leverage=0 if s.who % 2 else 1000,
                    event_id=self._id(),
                )
            )
        elif k == 8:
            self.emit(
                ev.AccountsSeeded(
                    t,
                    [900 + s.who],
                    [usd(100)],
                    [0],
                    ["BTC-PERP"],
                    [1],
                    [],
                    [0],
                    [0],
                    [1],
                    event_id=self._id(),
                )
            )
        elif k == 9:
            self.emit(ev.Deposited(t, aid, "DOGE", usd(1), event_id=self._id()))
        elif k == 10:
            # out of order for this source: not later than its last price
            last = max((ts for (a, _s), ts in self.src_ts.items() if a == "ETH"), default=0)
            self.emit(ev.PriceObserved(max(last, self.eng.now_ns), "s1", "ETH", "3000", event_id=self._id()))
        else:
            self.emit(ev.TradeFilled(t, aid, "ETH-PERP", 2**70, px(3_000), event_id=self._id()))

    def bid(self, s: Bid) -> None:
        auctions = sorted(self.eng.wf.auctions)
        aid = self.acct(s.who)
        if not auctions or aid is None:
            return
        a = self.eng.wf.auctions[auctions[s.pick % len(auctions)]]
        self._refresh(self.eng.markets[a.market].spec.base_asset)
        a = self.eng.wf.auctions.get(a.auction_id)
        if a is None:
            return
        price = self.eng.wf.price_q(a)
        side = 1 if a.size > 0 else -1
        limit = max(1, price * (10**6 + side * s.off_ppm) // 10**6)
        size = max(1, abs(a.size) * s.frac_ppm // 10**6)
        self.emit(ev.AuctionBid(self.step_time(), a.auction_id, aid, size, limit, event_id=self._id()))

    def vault(self, s: Vault) -> None:
        aid = self.acct(s.who)
        if aid is None:
            return
        t = self.step_time()
        if s.kind == 0:
            self.emit(ev.VaultDeposit(t, aid, usd(s.amount), event_id=self._id()))
        elif s.kind == 1:
            held = self.eng.wf.shares.get(aid, 0)
            self.emit(ev.VaultWithdrawalRequested(t, aid, max(1, held * s.frac_ppm // 10**6), event_id=self._id()))
        else:
            self.emit(ev.VaultWithdrawalClaimed(t, aid, event_id=self._id()))

    def admin(self, s: Admin) -> None:
        t = self.step_time()
        market = ("BTC-PERP", "ETH-PERP")[s.market]
        if s.kind == 0:
            self.emit(ev.MarketHaltRequested(t, market, "test", event_id=self._id()))
        elif s.kind == 1:
            self.emit(ev.MarketResumeRequested(t, market, event_id=self._id()))
        elif s.kind == 2:
            name, value = [
                ("at_risk_buffer_ppm", 100_000),
                ("at_risk_exit_ppm", 500_000),
                ("liquidation_target_ppm", 50_000),
                ("mass_close_min", 1),
            ][s.value]
            self.emit(ev.ParameterChangeRequested(t, "", name, value, event_id=self._id()))
        elif s.kind == 3:
            name, value = [
                ("liquidation_fee_ppm", 2_000),
                ("liquidation.batch", 1),
                ("liquidation.adl", 0),
                ("liquidation_fee_ppm", 10_000),
            ][s.value]
            self.emit(ev.ParameterChangeRequested(t, market, name, value, event_id=self._id()))
        elif s.kind == 5:
            asset = market.split("-")[0]
            index = self.eng.index_q.get(asset, START_PRICES[asset])
            moved = index * (700, 900, 1200)[max(s.value, 1) - 1] // 1000
            level = "" if s.value == 0 else format_decimal(moved, PRICE_DECIMALS)
            self.emit(ev.OracleReanchorRequested(t, asset, level, "test", event_id=self._id()))
        elif s.kind == 6:
            name, value = [
                ("oracle.max_jump_ppm", 400_000),
                ("oracle.single_source_liquidation", 1),
                ("oracle.jump_window_ns", 0),
                ("oracle.reanchor_prints", 1),
            ][s.value]
            self.emit(ev.ParameterChangeRequested(t, market, name, value, event_id=self._id()))
        else:
            self.emit(ev.ParameterChangeRequested(t, market, "size_decimals", 3, event_id=self._id()))

    def run(self, steps: list[Step]) -> Scenario:
        self.prelude()
        table = {
            Open: self.open,
            Deposit: self.deposit,
            Withdraw: self.withdraw,
            ProfitWithdraw: self.profit_withdraw,
            PairFill: self.pair_fill,
            Tick: self.tick,
            Slide: self.slide,
            Squeeze: self.squeeze,
            Clock: self.clock,
            Settle: self.settle,
            Seed: self.seed,
            Bad: self.bad,
            Bid: self.bid,
            Vault: self.vault,
            Admin: self.admin,
        }
        for s in steps:
            table[type(s)](s)  # type: ignore[operator]
        self.scn.steps = tuple(steps)
        return self.scn


def build_scenario(venue: str, steps: list[Step]) -> Scenario:
    """Materialise abstract steps into a concrete, deterministic input sequence for ``venue``."""
    return _Builder(venue).run(steps)


# every story opens with one to three leveraged pairs, so that price moves have something to move
opening_fills = st.lists(
    st.builds(
        PairFill,
        st.integers(0, 2),
        st.integers(0, 2),
        st.integers(0, 1),
        st.booleans(),
        st.sampled_from([500_000, 800_000, 950_000]),
        st.just(False),
        st.integers(-500, 500),
        st.sampled_from([10, 20, 50]),
        st.sampled_from([10, 20, 50]),
        st.booleans(),
        st.booleans(),
        st.sampled_from([300_000, 600_000]),
        st.just(0),
        st.just(True),
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def scenarios(
    draw: st.DrawFn, venues: tuple[str, ...] = tuple(VENUES), min_steps: int = 10, max_steps: int = 40
) -> Scenario:
    """A venue and an input sequence for it (see the module docstring)."""
    venue = draw(st.sampled_from(venues))
    steps = draw(opening_fills) + draw(st.lists(weighted_steps, min_size=min_steps, max_size=max_steps))
    return build_scenario(venue, steps)
