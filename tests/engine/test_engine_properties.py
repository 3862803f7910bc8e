"""Properties of the engine over generated input sequences (see tests/support/strategies.py).

Every sequence is valid-but-varied: accounts, deposits and withdrawals (USD and, on the yield
venue, wstETH), paired fills in cross and isolated mode at many leverages, price random walks
with large moves (liquidations, bankruptcies, socialised losses), clock jumps of seconds to
hours (funding), funding settlements, seeded populations and bad inputs mixed in.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from fluidmargin.core.units import FUNDING_SCALE, PPM, QUOTE_SCALE, Rounding
from fluidmargin.engine import Bucket, Engine
from fluidmargin.engine.state import AT_RISK, BANKRUPT, HEALTHY, LIQUIDATING
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc
from support.strategies import Scenario, scenarios

# Derandomised (a fixed set of examples on every run) and without shrinking: a failing sequence is
# printed as generated, as a replayable ``build_scenario(venue, steps)`` call, which keeps a failing
# run within the time budget.
SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

U = 2.0**-53


def accepted(records: list[tuple[int, ev.Event]]) -> bool:
    return bool(records) and not any(isinstance(o, ev.InputRejected) for _, o in records[1:])


def outputs(records: list[tuple[int, ev.Event]]) -> list[ev.Event]:
    """The outputs, with the mass-liquidation kernel's columnar events expanded per account."""
    return ev.expand([o for _, o in records[1:]])


def open_buckets(eng: Engine) -> list[Bucket]:
    """Every bucket holding a position: cross buckets with a cross position, isolated positions."""
    out = []
    for r in range(eng.n_acc):
        ps = [p for p in eng.positions_of(r) if eng.pos_size[p]]
        if any(not eng.pos_iso[p] for p in ps):
            out.append(Bucket(r))
        out.extend(Bucket(r, p) for p in ps if eng.pos_iso[p])
    return out


def holds_collateral(eng: Engine, r: int) -> set[int]:
    return {c for c in range(len(eng.coll)) if c != eng.quote_c and eng.bal[r, c] != 0}


# --- 1. twins -------------------------------------------------------------------------------------


@SETTINGS
@given(scn=scenarios())
def test_incremental_and_reference_twins_agree_event_by_event(scn: Scenario) -> None:
    """The numba screen and the full exact recompute give the same outputs and the same state."""
    inc, ref = Engine(scn.cfg, "incremental"), Engine(scn.cfg, "reference")
    for i, e in enumerate(scn.events):
        a, b = inc.apply(e), ref.apply(e)
        assert a == b, f"outputs differ at event {i}: {e!r}"
        if i % 4 == 0 or isinstance(e, ev.AccountsSeeded | ev.ClockAdvanced):
            assert inc.state_hash() == ref.state_hash(), f"state differs after event {i}: {e!r}"
    assert inc.state_hash() == ref.state_hash()
    event(f"venue {scn.venue}")


# --- 2. float screen soundness --------------------------------------------------------------------


class Freshness:
    """Which float shadows are current.

    Every change of a position's inputs re-screens it: a new mark or a funding accrual re-screens
    the whole market (a fill or a settlement accrues its market too), an account's own deposit,
    withdrawal, fill, settlement, seeding or liquidation resynchronises the account. The one input
    that moves without an event is a yield token's value, which grows with time: an account holding
    one is current only when it was re-valued at the current time (its own event, a price of the
    token or its base asset, or a ClockAdvanced, which re-values yield collateral).
    """

    def __init__(self) -> None:
        self.ts: dict[int, int] = {}

    def after(self, eng: Engine, e: ev.Event, recs: list[tuple[int, ev.Event]]) -> None:
        ok = accepted(recs)
        outs = outputs(recs)
        rows: set[int] = set()
        if ok and isinstance(e, ev.Deposited | ev.WithdrawalRequested | ev.TradeFilled | ev.FundingSettleRequested):
            r = eng.row(e.account_id)
            if r is not None:
                rows.add(r)
        if ok and isinstance(e, ev.AccountsSeeded):
            rows |= {r for a in e.account_ids if (r := eng.row(a)) is not None}
        rows |= {r for o in outs if isinstance(o, ev.PositionLiquidated) if (r := eng.row(o.account_id)) is not None}
        revalued = {c for o in outs if isinstance(o, ev.IndexPriceUpdated) for c in eng.coll_of_asset.get(o.asset, [])}
        if ok and isinstance(e, ev.ClockAdvanced):
            revalued |= {c for c, spec in enumerate(eng.coll) if spec.yield_spec is not None}
        rows |= {r for r in range(eng.n_acc) if holds_collateral(eng, r) & revalued}
        for r in rows:
            self.ts[r] = eng.now_ns

    def current(self, eng: Engine, r: int) -> bool:
        return not holds_collateral(eng, r) or self.ts.get(r) == eng.now_ns


def check_screen(eng: Engine, fresh: Freshness, e: ev.Event) -> None:
    enter, leave = eng.cfg.at_risk_buffer_ppm, eng.cfg.at_risk_exit_ppm
    # (a) cross: |float health - exact health| <= the float error bound
    for r in range(eng.n_acc):
        if not fresh.current(eng, r):
            continue
        exact = eng.cross_risk(r).health_quote_q
        # the bound, plus the budgets the account's positions hold (moves not yet applied, see risk.kernels)
        h, err = float(eng.acct_h[r]), float(eng.acct_err[r]) + float(eng.acct_f[r, 4])
        assert abs(h - exact) <= err, f"account row {r}: float {h} vs exact {exact}, bound {err} after {e!r}"
    for b in open_buckets(eng):
        if not fresh.current(eng, b.row):
            continue
        risk = eng.bucket_risk(b)
        h = risk.health_quote_q
        # (b) isolated: |iso margin + float contribution - exact health| <= its bound
        if b.pos >= 0:
            im = float(eng.pos_iso_margin[b.pos])
            hf = im + float(eng.pos_c[b.pos])
            bound = float(eng.pos_e[b.pos]) + 2 * U * (abs(hf) + abs(im)) + 1e-6 + float(eng.pos_budget[b.pos])
            assert abs(hf - h) <= bound, f"isolated position {b.pos}: float {hf} vs exact {h}, bound {bound}"
        # (c) screening never misses: no bucket is left in breach while the oracle allows liquidating,
        #     and every status matches its exact class (with the band: enter below `enter`, leave at `leave`)
        blocked = eng.oracle_blocked(eng.bucket_assets(b), orc.Action.LIQUIDATE)
        # a capped partial liquidation leaves the bucket `liquidating` until later events finish it
        caps = eng.cfg.liquidation_max_notional_quote_q or eng.cfg.liquidation_max_account_notional_quote_q
        capped = caps > 0 and eng.status_of(b) == LIQUIDATING
        assert not (h < 0 and not blocked and not capped), f"missed breach: {b} health {h} after {e!r}"
        status = eng.status_of(b)
        if status == BANKRUPT or h < 0:
            continue
        if h * PPM < enter * risk.mm_quote_q:
            assert status == AT_RISK, f"{b}: status {status} but health {h} is below the at-risk band after {e!r}"
        elif h * PPM >= leave * risk.mm_quote_q:
            assert status == HEALTHY, f"{b}: status {status} but health {h} is above the band after {e!r}"
        else:
            assert status in (HEALTHY, AT_RISK), f"{b}: status {status} inside the band after {e!r}"


@SETTINGS
@given(scn=scenarios())
def test_float_screen_is_within_its_error_bound_and_never_misses_a_breach(scn: Scenario) -> None:
    eng = Engine(scn.cfg, "incremental")
    fresh = Freshness()
    for e in scn.events:
        recs = eng.apply(e)
        fresh.after(eng, e, recs)
        check_screen(eng, fresh, e)


# --- 3. value conservation ------------------------------------------------------------------------


class House:
    """The clearing counterparty's own book: positions it took over from liquidations at mark.

    A liquidation closes an account's position against the clearing ledger, so afterwards the
    accounts' open interest no longer nets to zero: the house holds the other side. ``cash`` is
    what it paid for that book (what the liquidated accounts received), ``funding`` what it would
    owe at the exact (unrounded) funding index, so that funding telescopes to zero over everyone.
    """

    def __init__(self, eng: Engine) -> None:
        self.pos = [0] * len(eng.markets)
        self.cash = 0
        self.funding = Fraction(0)
        self.inventory_pnl = 0  # what the waterfall moved from the clearing ledger to the funds

    def before(self, eng: Engine) -> tuple[list[int], list[int]]:
        return [m.fidx for m in eng.markets], list(self.pos)

    def after(self, eng: Engine, snap: tuple[list[int], list[int]], outs: list[ev.Event]) -> None:
        fidx0, pos0 = snap
        # within one event every funding accrual precedes every liquidation
        for m in eng.markets:
            self.funding += Fraction(
                pos0[m.i] * (m.fidx - fidx0[m.i]) * QUOTE_SCALE, 10**m.spec.size_decimals * FUNDING_SCALE
            )
        for o in outs:
            if isinstance(o, ev.PositionLiquidated):
                m = eng.market_idx[o.market]
                s, sd = o.size_base_q, m.spec.size_decimals
                self.cash += (
                    margin.value_quote_q(s, o.price_q, sd, Rounding.FLOOR)
                    if s > 0
                    else -margin.value_quote_q(-s, o.price_q, sd, Rounding.CEIL)
                )
                self.pos[m.i] += s
            elif isinstance(o, ev.AuctionBidFilled | ev.BackstopTakeover | ev.AutoDeleveraged):
                # the house hands inventory over to a bidder, the vault or an ADL counterparty at
                # price_q, on that taker's cash terms (a buyer pays the ceiling, a seller gets the floor)
                sym = o.auction_id.rsplit("-", 1)[0] if isinstance(o, ev.AuctionBidFilled) else o.market
                mkt = eng.market_idx[sym]
                d, sd = o.size_base_q, mkt.spec.size_decimals
                self.cash -= (
                    margin.value_quote_q(d, o.price_q, sd, Rounding.CEIL)
                    if d > 0
                    else -margin.value_quote_q(-d, o.price_q, sd, Rounding.FLOOR)
                )
                self.pos[mkt.i] -= d
                self.inventory_pnl += o.fund_pnl_quote_q
            elif isinstance(o, ev.LiquidationExecuted | ev.BatchNetted):
                self.inventory_pnl += o.fund_pnl_quote_q


def clearing_surplus(eng: Engine, house: House) -> Fraction:
    """Z = clearing + open costs + exact unsettled funding + the house's cash and exact funding.

    Derivation: the clearing ledger moves by minus each realised PnL and plus each funding
    settlement, so clearing + open costs = the cash the accounts paid into trades net of what
    they got out (each fill pays ceil when buying and gets floor when selling; a liquidation's
    cash comes from the house), and the exact funding of everyone (accounts and house) over any
    interval sums to zero because open interest nets to zero. Hence Z is exactly the sum of the
    rounding remainders kept by the system: 0 <= Z, and each rounding keeps less than a quantum.
    """
    z = Fraction(eng.clearing_q + house.cash + house.inventory_pnl) + house.funding
    for p in range(eng.n_pos):
        s = int(eng.pos_size[p])
        if not s:
            continue
        m = eng.markets[int(eng.pos_mkt[p])]
        z += int(eng.pos_cost[p])
        z += Fraction(s * (m.fidx - int(eng.pos_fidx[p])) * QUOTE_SCALE, 10**m.spec.size_decimals * FUNDING_SCALE)
    return z


def open_interest_nets(eng: Engine, house: House) -> bool:
    net = list(house.pos)
    for p in range(eng.n_pos):
        net[int(eng.pos_mkt[p])] += int(eng.pos_size[p])
    return not any(net)


@SETTINGS
@given(scn=scenarios())
def test_value_is_conserved_to_the_quantum_and_rounding_favours_the_system(scn: Scenario) -> None:
    eng = Engine(scn.cfg)
    house = House(eng)
    net = Counter()  # asset -> deposits - withdrawals, from the accepted inputs
    roundings = 0  # an upper bound on the roundings that may leave a remainder with the system
    fund0 = dict(eng.wf.funds)
    fund_moves: Counter[str] = Counter()
    for e in scn.events:
        snap = house.before(eng)
        fund_before = dict(eng.wf.funds)
        recs = eng.apply(e)
        outs = outputs(recs)
        house.after(eng, snap, outs)
        if accepted(recs):
            if isinstance(e, ev.Deposited):
                net[e.asset] += e.amount_q
            elif isinstance(e, ev.WithdrawalRequested):
                net[e.asset] -= e.amount_q
            elif isinstance(e, ev.AccountsSeeded):
                net[scn.cfg.quote] += sum(e.deposits_quote_q)
                roundings += len(e.pos_account)  # each seeded cost rounds once
            elif isinstance(e, ev.TradeFilled):
                roundings += 3  # closing cash, opening cash, the silent funding settlement
        roundings += sum(isinstance(o, ev.FundingSettled) for o in outs)
        # quote: every ledger together equals net deposits, to the quantum
        assert eng.ledger_total() == net[scn.cfg.quote], f"quote ledgers drifted after {e!r}"
        # other collateral: balances equal net deposits
        for c, spec in enumerate(eng.coll):
            if c != eng.quote_c:
                assert int(eng.bal[: eng.n_acc, c].astype(object).sum()) == net[spec.symbol]
                assert eng.ledger_total(c) == net[spec.symbol]
        # a fund only pays what it holds; a socialised loss comes only once that fund is empty
        running = fund_before
        for o in outs:
            if isinstance(o, ev.InsuranceFundChanged):
                assert o.balance_quote_q == running[o.fund] + o.delta_quote_q >= 0
                running[o.fund] = o.balance_quote_q
            if isinstance(o, ev.BadDebtSocialized):
                assert running[o.fund] == 0 and o.amount_quote_q > 0
        assert eng.wf.funds == running and min(running.values()) >= 0
        # the clearing ledger holds exactly the rounding remainders, none negative (checked where
        # open interest nets, i.e. not between the two legs of a pair)
        if scn.netted and open_interest_nets(eng, house):
            z = clearing_surplus(eng, house)
            assert 0 <= z <= roundings, f"clearing surplus {z} outside [0, {roundings}] after {e!r}"
        for o in outs:
            if isinstance(o, ev.InsuranceFundChanged):
                fund_moves[o.fund] += o.delta_quote_q
    assert all(eng.wf.funds[f] - fund0[f] == fund_moves[f] for f in fund0)
    event(f"netted {scn.netted}")


# --- 4. determinism -------------------------------------------------------------------------------


@SETTINGS
@given(scn=scenarios(), screen=st.sampled_from(["incremental", "reference"]))
def test_runs_are_deterministic_and_snapshots_resume_identically(scn: Scenario, screen: str) -> None:
    """Two runs agree; and an engine restored from its own snapshot before *every* event (float
    shadows rebuilt from exact state, on either screen) continues exactly like one never restored."""
    first, second = Engine(scn.cfg), Engine(scn.cfg)
    assert first.apply_all(scn.events) == second.apply_all(scn.events)
    assert first.state_hash() == second.state_hash()

    straight = Engine(scn.cfg)
    hopping = Engine(scn.cfg, screen)
    for i, e in enumerate(scn.events):
        hopping = Engine.from_state(hopping.state_dict(), screen=screen)
        if i % 8 == 0:
            assert hopping.state_hash() == straight.state_hash()
        assert hopping.apply(e) == straight.apply(e), f"restored engine diverged at event {i}: {e!r}"
    assert hopping.state_hash() == straight.state_hash() == first.state_hash()


# --- 5. pre-trade check ---------------------------------------------------------------------------


@SETTINGS
@given(scn=scenarios())
def test_an_accepted_opening_fill_leaves_its_buckets_at_initial_margin(scn: Scenario) -> None:
    """After an accepted fill that adds risk, the bucket holding it meets initial margin; and an
    isolated fill, which moves margin out of the cross balance, leaves a cross bucket that met
    initial margin before still meeting it."""
    eng = Engine(scn.cfg)
    for e in scn.events:
        r = eng.row(e.account_id) if isinstance(e, ev.TradeFilled) else None
        m = eng.market_idx.get(e.market) if isinstance(e, ev.TradeFilled) else None
        if r is None or m is None:
            eng.apply(e)
            continue
        p0 = eng.find_pos(r, m.i)
        old = int(eng.pos_size[p0]) if p0 >= 0 else 0
        cross_met_im = eng.cross_risk(r).equity_quote_q >= eng.cross_initial(r)
        recs = eng.apply(e)
        if not accepted(recs):
            continue
        new = old + e.size_delta_base_q
        if not (abs(new) > abs(old) or (old and new and (old > 0) != (new > 0))):
            continue
        p = eng.find_pos(r, m.i)
        if eng.pos_iso[p]:
            assert eng.iso_risk(p).equity_quote_q >= eng.position_initial(p), e
            if cross_met_im:
                risk, im = eng.cross_risk(r), eng.cross_initial(r)
                assert risk.equity_quote_q >= im, (
                    f"isolated fill left cross equity {risk.equity_quote_q} < IM {im}: {e!r}"
                )
        else:
            assert eng.cross_risk(r).equity_quote_q >= eng.cross_initial(r), e


# --- 5b. withdrawals ------------------------------------------------------------------------------


@SETTINGS
@given(scn=scenarios())
def test_the_withdrawable_amount_is_exactly_what_the_engine_accepts(scn: Scenario) -> None:
    """A quote withdrawal is accepted iff it is at most the engine's withdrawable figure (read at the
    withdrawal's time), and leaves the cross bucket at initial margin with unrealised profit weighted."""
    eng = Engine(scn.cfg)
    for e in scn.events:
        r = eng.row(e.account_id) if isinstance(e, ev.WithdrawalRequested) else None
        if r is None or e.asset != scn.cfg.quote or e.event_id in eng.seen_ids or e.ts_ns < eng.now_ns:
            eng.apply(e)
            continue
        now, eng.now_ns = eng.now_ns, e.ts_ns  # judged at the event's time, as apply does
        allowed = eng.withdrawable_quote_q(r)
        eng.now_ns = now
        ok = accepted(eng.apply(e))
        assert ok == (e.amount_q <= allowed), f"withdrawable {allowed} but {e!r} accepted={ok}"
        if ok:
            assert eng.withdrawal_headroom_quote_q(r) >= 0
        event(f"withdrawal accepted {ok}")


# --- 6. liquidation outcomes ----------------------------------------------------------------------


@SETTINGS
@given(scn=scenarios())
def test_liquidations_end_at_maintenance_or_in_bankruptcy(scn: Scenario) -> None:
    """Status events form a chain per bucket; a bucket enters liquidation only in breach and
    leaves it at or above maintenance, closed, or bankrupt with no cross position left."""
    eng = Engine(scn.cfg)
    last: dict[tuple[int, str], str] = {}
    for e in scn.events:
        outs = outputs(eng.apply(e))
        for o in outs:
            if not isinstance(o, ev.AccountStatusChanged):
                continue
            key = (o.account_id, o.bucket)
            assert o.old == last.get(key, "healthy"), f"status chain broken for {key}: {o!r}"
            last[key] = o.new
            if o.new == "liquidating":
                assert o.health_quote_q < 0, f"liquidating a bucket that is not in breach: {o!r}"
            if o.old == "liquidating":
                assert o.new in ("healthy", "at_risk", "bankrupt"), o
                if o.new in ("healthy", "at_risk") and o.bucket == "cross":
                    assert o.health_quote_q >= 0, o
        for r in range(eng.n_acc):
            if eng.status[r] == BANKRUPT:
                assert not any(eng.pos_size[p] and not eng.pos_iso[p] for p in eng.positions_of(r))
        if any(isinstance(o, ev.PositionLiquidated) for o in outs):
            for b in open_buckets(eng):
                caps = eng.cfg.liquidation_max_notional_quote_q or eng.cfg.liquidation_max_account_notional_quote_q
                capped = caps > 0 and eng.status_of(b) == LIQUIDATING
                if eng.status_of(b) != BANKRUPT and not capped:
                    assert eng.bucket_risk(b).health_quote_q >= 0 or eng.oracle_blocked(
                        eng.bucket_assets(b), orc.Action.LIQUIDATE
                    ), f"{b} left below maintenance after a liquidation in {e!r}"
    event(f"liquidated {any(v == 'bankrupt' for v in last.values())}")


REACHED = {
    "binance": (),
    "binance-small-fund": ("AutoDeleveraged",),
    "no-adl": ("BadDebtSocialized",),
    "waterfall": ("BatchNetted", "AuctionStarted", "AuctionBidFilled", "LiquidationExecuted", "VaultSharesChanged"),
    "kernel-partial": ("PositionsLiquidated", "BatchNetted", "AuctionBidFilled"),
    "kernel-small-fund": ("PositionsLiquidated", "AutoDeleveraged"),
    "auction-adl": ("AuctionStarted", "AuctionBidFilled", "AutoDeleveraged", "LiquidationExecuted"),
}


@pytest.mark.parametrize("venue", sorted(REACHED))
def test_generated_sequences_do_reach_liquidations_bankruptcies_and_socialised_losses(venue: str) -> None:
    """Guard on the generator itself: the properties above must see the interesting paths."""
    seen: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=40)
    @given(scn=scenarios(venues=(venue,)))
    def collect(scn: Scenario) -> None:
        eng = Engine(scn.cfg)
        for rec in eng.apply_all(scn.events):
            seen[type(rec[1]).__name__] += 1

    collect()
    assert seen["PositionLiquidated"] > 0
    assert seen["InsuranceFundChanged"] > 0
    assert seen["InputRejected"] > 0 and seen["OraclePriceRejected"] > 0
    assert seen["FundingSettled"] > 0
    missing = [k for k in REACHED[venue] if not seen[k]]
    assert not missing, f"the generator never reached {missing} on {venue}: {dict(seen)}"


def test_generated_sequences_do_reach_quorum_re_anchoring_and_breaker_halts() -> None:
    """Guard on the generator: quorum oracles (several sources), re-anchoring, divergence and
    breaker halts, and liquidations held back by a halt, all appear."""
    seen: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=60)
    @given(scn=scenarios(venues=("binance", "binance-breaker", "waterfall")))
    def collect(scn: Scenario) -> None:
        eng = Engine(scn.cfg)
        for _seq, e in eng.apply_all(scn.events):
            seen[type(e).__name__] += 1
            if isinstance(e, ev.MarketHalted):
                seen["halt: " + e.reason.split(" ")[0]] += 1
            if isinstance(e, ev.PriceObserved):
                seen["source " + e.source] += 1
        if eng.index_n and max(eng.index_n.values()) >= 2:
            seen["quorum index"] += 1

    collect()
    for k in ("OracleReanchored", "quorum index", "source q2", "halt: price", "halt: oracle", "MarketResumed"):
        assert seen[k] > 0, f"the generator never reached {k!r}: {dict(seen)}"
