"""Governance in the engine: proposals under guardrails, as logged events (``engine/governance.py``).

The property test drives an engine through random proposals (some beyond the epoch cap, some of unknown
parameters), approvals, rejections, cancellations, operators' changes, clock jumps and price paths that
liquidate and bankrupt accounts behind a small insurance fund without ADL (so bad debt is socialised),
and holds the log to the guardrails, judged from the log's events alone (not from the engine's state):

* no activation moves a parameter by more than the epoch cap from its value before the epoch's first
  governance change (an operator's change starts the count afresh);
* no proposal is queued for other than ``timelock_ns`` after its approval (submission, in auto mode),
  none activates before that, and each activates on the first input at or after it;
* a proposal is rolled back exactly when, within its watch window, a figure since its activation summed
  from the events (bad debt socialised, insurance-fund deltas, liquidations) reaches its threshold;
* an operator's change stands: no proposal submitted before it ever changes that parameter after it;
* the same inputs replayed, or restored from a snapshot mid-way, give the same state hash.

Then unit tests of each refusal, the override, the rollback and the state hash.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PRICE_DECIMALS, format_decimal
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import EngineConfig, GovernanceSpec, parameter_owner
from fluidmargin.model.instruments import LiquidationPolicy
from fluidmargin.sim.venues import perp_venue
from support.desk import NS, Desk, base, of_type, px, usd

BTC, ETH = "BTC-PERP", "ETH-PERP"
EVIDENCE = json.dumps({"objective": {"before": "1.25", "after": "0.98"}, "runs": 64})
# parameters the proposals and the operator move: (market, name)
POOL: tuple[tuple[str, str], ...] = (
    ("", "at_risk_buffer_ppm"),
    ("", "liquidation_target_ppm"),
    (BTC, "liquidation_fee_ppm"),
    (ETH, "liquidation_fee_ppm"),
    (BTC, "margin.brackets.0.mmr_ppm"),
    (ETH, "margin.brackets.0.mmr_ppm"),
    (BTC, "oracle.max_jump_ppm"),
    ("", "mass_close_min"),
)


def venue(spec: GovernanceSpec | None, fund_usd: int = 20) -> EngineConfig:
    """Two markets liquidated at the mark, one price source, small funds (ETH its own) and no ADL: losses
    socialise."""
    cfg = perp_venue(
        ("BTC", "ETH"),
        insurance_fund_usd=fund_usd,
        single_source_liquidation=True,
        policies={
            "BTC": LiquidationPolicy(adl=False),
            "ETH": LiquidationPolicy(adl=False, own_fund=True, own_fund_quote_q=usd(fund_usd)),
        },
    )
    return dataclasses.replace(cfg, governance=spec)


def value_of(cfg: EngineConfig, market: str, name: str) -> int:
    obj, last = parameter_owner(cfg, market, name)
    return int(getattr(obj, last))


def submit(d: Desk, pid: str, changes: list[tuple[str, str, int]], **kw: Any) -> list[ev.Event]:
    kw.setdefault("evidence", EVIDENCE)
    return d.apply(
        ev.ProposalSubmitted(
            d.tick(), pid, [c[0] for c in changes], [c[1] for c in changes], [c[2] for c in changes], **kw
        )
    )


def rejected(out: list[ev.Event]) -> list[str]:
    return [o.reason for o in of_type(out, ev.InputRejected)]


# --- the property ------------------------------------------------------------------------------------

specs = st.builds(
    GovernanceSpec,
    mode=st.sampled_from(["manual", "auto"]),
    max_change_ppm=st.sampled_from([0, 50_000, 100_000, 300_000, 300_000]),
    epoch_ns=st.sampled_from([20 * NS, 60 * NS, 600 * NS]),
    timelock_ns=st.sampled_from([0, 5 * NS, 30 * NS]),
    watch_ns=st.sampled_from([0, 30 * NS, 120 * NS, 600 * NS]),
    rollback_fund_drawdown_quote_q=st.sampled_from([0, usd(1), usd(15)]),
    rollback_bad_debt_quote_q=st.sampled_from([0, 1, usd(50)]),
    rollback_liquidations=st.sampled_from([0, 1, 3]),
)
KINDS = ("price",) * 6 + ("clock",) * 2 + ("submit",) * 3 + ("approve",) * 3 + ("reject", "cancel", "operator", "pair")


def story(seed: int, n: int) -> list[tuple[str, int, list[tuple[int, int]], int]]:
    """``n`` steps drawn from ``seed``: a kind, and what it needs, drawn the same way for every kind (the
    driver reads what it uses): a small number (an asset, a clock jump, a proposal counted back from the
    latest, a parameter), changes (a parameter, one past the pool for an unknown one, and a relative move
    in ppm, mostly small) and a price move in ppm."""
    rng = random.Random(seed)
    steps = []
    for _ in range(n):
        changes = [
            (
                rng.randrange(len(POOL) + 1),
                rng.randint(-60_000, 60_000) if rng.random() < 0.7 else rng.randint(-4, 4) * 10**5,
            )
            for _ in range(rng.randint(1, 3))
        ]
        steps.append((rng.choice(KINDS), rng.randrange(8), changes, rng.randint(-120_000, 90_000)))
    return steps


class Driver:
    """Runs one generated story on a :class:`Desk`, keeping every input it applied."""

    def __init__(self, spec: GovernanceSpec) -> None:
        self.d = d = Desk(venue(spec), step_ns=NS)
        self.inputs: list[ev.Event] = []
        self.next_account = 1
        self.n_proposals = 0
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            self.apply(ev.PriceObserved(d.tick(), "s1", asset, price))
        for market in (BTC, BTC, ETH, ETH):
            self.pair(market, 50_000)

    def apply(self, e: ev.Event) -> None:
        self.inputs.append(e)
        self.d.apply(e)

    def pair(self, market: str, margin_ppm: int) -> None:
        """A long and a short at the index, each with ``margin_ppm`` of the notional as collateral."""
        d, eng = self.d, self.d.eng
        index = eng.index_q[market.split("-")[0]]
        size = base(1) if market == BTC else base(10)
        notional = size * index // 10**16  # USD
        a, b = self.next_account, self.next_account + 1
        self.next_account += 2
        for acct in (a, b):
            self.apply(ev.AccountOpened(d.tick(), acct))
            self.apply(ev.Deposited(d.tick(), acct, "USD", usd(max(1, notional * margin_ppm // 10**6))))
        ts = d.tick()
        for acct, s in ((a, size), (b, -size)):
            self.apply(ev.TradeFilled(ts, acct, market, s, index, leverage=100))

    def run(self, steps: list[tuple[Any, ...]]) -> None:
        d, eng = self.d, self.d.eng
        for kind, k, changes, move in steps:
            if kind == "price":
                asset = ("BTC", "ETH")[k % 2]
                moved = max(1, eng.index_q[asset] * (10**6 + move) // 10**6)
                self.apply(ev.PriceObserved(d.tick(), "s1", asset, format_decimal(moved, PRICE_DECIMALS)))
            elif kind == "clock":
                self.apply(ev.ClockAdvanced(d.tick((1, 3, 10, 40)[k % 4] * NS)))
            elif kind == "submit":
                markets, names, values = [], [], []
                for i, rel in changes:
                    m, n = POOL[i] if i < len(POOL) else (BTC, "no_such_parameter")
                    cur = value_of(eng.cfg, m, n) if i < len(POOL) else 1
                    markets.append(m)
                    names.append(n)
                    values.append(cur + cur * rel // 10**6)
                pid = f"p{self.n_proposals}"
                self.n_proposals += 1
                mode = d.cfg.governance.mode if k else "auto"  # type: ignore[union-attr]
                self.apply(ev.ProposalSubmitted(d.tick(), pid, markets, names, values, mode, EVIDENCE, by="t"))
            elif kind in ("approve", "reject", "cancel"):
                pid = f"p{self.n_proposals - 1 - k % 3}" if k < 7 else "nope"  # mostly one of the latest
                cls = {"approve": ev.ProposalApproved, "reject": ev.ProposalRejected, "cancel": ev.ProposalCancelled}
                self.apply(cls[kind](d.tick(), pid))
            elif kind == "operator":
                m, n = POOL[k % len(POOL)]
                cur = value_of(eng.cfg, m, n)
                self.apply(ev.ParameterChangeRequested(d.tick(), m, n, cur + cur * (move // 2) // 10**6))
            else:
                self.pair((BTC, ETH)[k % 2], (30_000, 50_000, 80_000)[k % 3])


def groups(records: list[tuple[int, ev.Event]]) -> list[tuple[ev.Event, list[ev.Event]]]:
    """The log as (input, its outputs) with columnar liquidations expanded."""
    out: list[tuple[ev.Event, list[ev.Event]]] = []
    for _seq, e in records:
        if e.is_input:
            out.append((e, []))
        else:
            out[-1][1].extend(ev.expand([e]))
    return out


class Checker:
    """Holds a log to the guardrails, from its events only."""

    def __init__(self, spec: GovernanceSpec, cfg: EngineConfig) -> None:
        self.spec = spec
        self.values: dict[tuple[str, str], int] = {k: value_of(cfg, *k) for k in POOL}
        self.epoch_base: dict[tuple[str, str], tuple[int, int]] = {}
        self.op_at: dict[tuple[str, str], int] = {}  # the group of an operator's last change
        self.submitted_at: dict[str, int] = {}
        self.queued: dict[str, int] = {}  # id -> activates_ns, while queued
        self.active: dict[str, dict[str, int]] = {}  # id -> figures since activation
        self.until: dict[str, int] = {}
        self.held: dict[str, set[tuple[str, str]]] = {}  # what a rollback of an active proposal restores

    def figures_reached(self, fig: dict[str, int]) -> list[tuple[str, int, int]]:
        s = self.spec
        limits = (
            ("bad_debt_quote_q", s.rollback_bad_debt_quote_q),
            ("fund_drawdown_quote_q", s.rollback_fund_drawdown_quote_q),
            ("liquidations", s.rollback_liquidations),
        )
        return [(m, fig[m], lim) for m, lim in limits if lim and fig[m] >= lim]

    def judge(self, pid: str) -> None:
        """At a point where the engine judged ``pid`` without rolling it back: no figure had reached its limit
        (or it holds nothing to roll back)."""
        assert not self.held[pid] or not self.figures_reached(self.active[pid]), (pid, self.active[pid])

    def check(self, g: int, e: ev.Event, outs: list[ev.Event]) -> None:
        spec, ts = self.spec, e.ts_ns
        if isinstance(e, ev.ProposalSubmitted) and not of_type(outs, ev.InputRejected):
            self.submitted_at[e.proposal_id] = g
        settled_here = {o.proposal_id for o in of_type(outs, ev.ProposalSettled)}
        # the active ones whose window has passed settle, unjudged; the others are judged below
        for pid in list(self.active):
            if ts >= self.until[pid]:
                assert pid in settled_here, f"{pid}: watch ended at {self.until[pid]}, not settled at {ts}"
                del self.active[pid]
        i = 0
        while i < len(outs):
            o = outs[i]
            for fig in self.active.values():  # every event after a proposal's activation counts toward it
                fig["bad_debt_quote_q"] += o.amount_quote_q if isinstance(o, ev.BadDebtSocialized) else 0
                fig["fund_drawdown_quote_q"] -= o.delta_quote_q if isinstance(o, ev.InsuranceFundChanged) else 0
                fig["liquidations"] += isinstance(o, ev.PositionLiquidated)
            if isinstance(o, ev.ProposalQueued):
                want = ts + spec.timelock_ns
                assert o.activates_ns == want and o.ts_ns == ts, o
                ok = isinstance(e, ev.ProposalApproved) or (isinstance(e, ev.ProposalSubmitted) and e.mode == "auto")
                assert ok and e.proposal_id == o.proposal_id, (e, o)
                self.queued[o.proposal_id] = o.activates_ns
            elif isinstance(o, ev.ProposalActivated):
                pid = o.proposal_id
                assert ts >= self.queued.pop(pid), f"{pid} activated before its timelock"
                epoch = ts // spec.epoch_ns
                for m, n, old, new in zip(o.markets, o.names, o.olds, o.values, strict=True):
                    key = (m, n)
                    assert self.values[key] == old
                    assert self.op_at.get(key, -1) < self.submitted_at[pid], f"{pid} overwrote an operator's {key}"
                    at, b = self.epoch_base.get(key, (-1, 0))
                    if at != epoch:
                        self.epoch_base[key] = (epoch, old)
                        b = old
                    assert abs(new - b) <= abs(b) * spec.max_change_ppm // 10**6, f"{pid}: {key} {b} -> {new}"
                self.active[pid] = dict.fromkeys(("bad_debt_quote_q", "fund_drawdown_quote_q", "liquidations"), 0)
                self.until[pid] = ts + spec.watch_ns
                self.held[pid] = set(zip(o.markets, o.names, strict=True))
            elif isinstance(o, ev.ProposalRolledBack):
                pid = o.proposal_id
                reached = self.figures_reached(self.active.pop(pid))
                assert reached and reached[0] == (o.metric, o.value, o.threshold), (pid, reached, o)
                restored = set(zip(o.markets, o.names, strict=True))
                skipped = {(x.split(":", 1)[0], x.split(":", 2)[1]) for x in o.skipped}
                assert self.held[pid] and restored | skipped == self.held[pid], (pid, o, self.held[pid])
                for key in restored:
                    assert self.op_at.get(key, -1) < self.submitted_at[pid], f"{pid} rolled back an operator's {key}"
            elif isinstance(o, ev.ProposalSettled):
                self.active.pop(o.proposal_id, None)
                self.queued.pop(o.proposal_id, None)
            elif isinstance(o, ev.ProposalOverridden) and o.effect == "released":
                self.held[o.proposal_id].discard((o.market, o.name))
            elif isinstance(o, ev.ProposalRefused | ev.ProposalOverridden) and o.proposal_id in self.queued:
                self.queued.pop(o.proposal_id)
            elif isinstance(o, ev.ParameterChanged):
                key = (o.market, o.name)
                if key in self.values:
                    self.values[key] = o.new
                    if isinstance(e, ev.ParameterChangeRequested) and i == 0:  # the operator's own
                        self.op_at[key] = g
                        self.epoch_base.pop(key, None)
            i += 1
        if isinstance(e, ev.ProposalRejected | ev.ProposalCancelled) and not of_type(outs, ev.InputRejected):
            self.queued.pop(e.proposal_id, None)
        for pid in self.active:  # judged at the end of the input: below every threshold
            self.judge(pid)
        for pid, at in self.queued.items():  # nothing due is left waiting
            assert at > ts, f"{pid} due at {at}, still queued at {ts}"


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(spec=specs, seed=st.integers(0, 2**32 - 1), n=st.integers(10, 70))
def test_proposals_keep_to_the_guardrails(spec: GovernanceSpec, seed: int, n: int) -> None:
    drv = Driver(spec)
    drv.run(story(seed, n))
    eng = drv.d.eng
    checker = Checker(spec, drv.d.cfg)
    for g, (e, outs) in enumerate(groups(drv.d.records)):
        checker.check(g, e, outs)
    # every change is in the log: the config holds what the events say
    for key, v in checker.values.items():
        assert value_of(eng.cfg, *key) == v, key
    # replay gives the same state; so does a restore from a snapshot half-way, then the rest
    h = eng.state_hash()
    assert _replayed(drv.d.cfg, drv.inputs) == h
    half = len(drv.inputs) // 2
    first = Engine(drv.d.cfg)
    first.apply_all(drv.inputs[:half])
    restored = Engine.from_state(first.state_dict())
    restored.apply_all(drv.inputs[half:])
    assert restored.state_hash() == h


def _replayed(cfg: EngineConfig, inputs: list[ev.Event]) -> str:
    eng = Engine(cfg)
    eng.apply_all(inputs)
    return eng.state_hash()


def test_the_property_sees_rollbacks_refusals_and_overrides() -> None:
    """The generator reaches what the property is about (else it would pass vacuously)."""
    seen: dict[str, int] = defaultdict(int)

    @SETTINGS
    @given(spec=specs, seed=st.integers(0, 2**32 - 1), n=st.integers(10, 70))
    def run(spec: GovernanceSpec, seed: int, n: int) -> None:
        drv = Driver(spec)
        drv.run(story(seed, n))
        for _seq, o in drv.d.records:
            seen[type(o).__name__] += 1
            if isinstance(o, ev.InputRejected) and "epoch cap" in o.reason:
                seen["beyond the cap"] += 1

    run()
    for name in ("ProposalActivated", "ProposalRolledBack", "ProposalSettled", "ProposalOverridden",
                 "BadDebtSocialized", "beyond the cap"):  # fmt: skip
        assert seen[name] > 0, (name, dict(seen))


# --- refusals ------------------------------------------------------------------------------------------


def desk(**kw: Any) -> Desk:
    spec = GovernanceSpec(**{"timelock_ns": 60 * NS, "watch_ns": 600 * NS, **kw})
    d = Desk(venue(spec, fund_usd=1_000), step_ns=NS)
    d.price("BTC", "50000")
    d.price("ETH", "3000")
    return d


FEE = 5_000  # BTC-PERP's liquidation fee (ppm) in the test venue


@pytest.mark.parametrize(
    ("changes", "kw", "reason"),
    [
        (
            [(BTC, "no_such_parameter", 1)],
            {},
            "BTC-PERP:no_such_parameter: 'no_such_parameter' is not a market parameter",
        ),
        ([("", "symbol", 1)], {}, "symbol: 'symbol' is not an engine parameter one may change"),
        ([("DOGE-PERP", "liquidation_fee_ppm", 1)], {}, "DOGE-PERP:liquidation_fee_ppm: unknown market 'DOGE-PERP'"),
        ([("", "at_risk_buffer_ppm", 400_000)], {}, "invalid value for at_risk_buffer_ppm"),
        ([(BTC, "liquidation_fee_ppm", FEE * 111 // 100)], {}, "beyond the epoch cap (at most 500 from 5000"),
        ([(BTC, "liquidation_fee_ppm", FEE)] * 2, {}, "must not change the same parameter twice"),
        ([], {}, "a proposal must change 1 to 32 parameters"),
        ([(BTC, "liquidation_fee_ppm", FEE)], {"evidence": ""}, "a proposal must carry its evidence"),
        ([(BTC, "liquidation_fee_ppm", FEE)], {"evidence": "[1, 2]"}, "evidence must be a JSON object"),
        ([(BTC, "liquidation_fee_ppm", FEE)], {"evidence": '{"x": 1.5}'}, "1.5 is not an integer"),
        ([(BTC, "liquidation_fee_ppm", FEE)], {"evidence": "{", "evidence_digest": "ab"}, "evidence_digest must be"),
        ([(BTC, "liquidation_fee_ppm", FEE)], {"mode": "auto"}, "an auto proposal is refused: the governance mode"),
        ([(BTC, "liquidation_fee_ppm", FEE)], {"mode": "yes"}, "mode must be manual or auto"),
    ],
)
def test_a_bad_proposal_is_refused_with_its_reason_and_nothing_applied(
    changes: list[tuple[str, str, int]], kw: dict[str, Any], reason: str
) -> None:
    d = desk()
    out = submit(d, "p", changes, **kw)
    assert len(rejected(out)) == 1 and reason in rejected(out)[0], out
    assert len(out) == 1
    assert "governance" not in d.eng.state_dict()  # no proposal was recorded
    d.clock(3600 * NS)
    assert value_of(d.eng.cfg, BTC, "liquidation_fee_ppm") == FEE


def test_a_lone_digest_is_evidence_enough_and_ids_are_unique() -> None:
    d = desk()
    digest = "ab" * 32
    assert not rejected(submit(d, "p", [(BTC, "liquidation_fee_ppm", 5_100)], evidence="", evidence_digest=digest))
    assert rejected(submit(d, "p", [(BTC, "liquidation_fee_ppm", 5_100)])) == ["proposal 'p' already exists"]
    assert rejected(submit(d, "a b", [(BTC, "liquidation_fee_ppm", 5_100)]))[0].startswith("proposal_id must be")


def test_without_governance_every_proposal_is_refused() -> None:
    d = Desk(venue(None))
    out = submit(d, "p", [(BTC, "liquidation_fee_ppm", 5_100)])
    assert rejected(out) == ["governance is not configured (the engine config has no governance section)"]
    assert "governance" not in d.eng.state_dict() and "governance" not in d.eng.cfg.to_dict()


@pytest.mark.parametrize("cls", [ev.ProposalApproved, ev.ProposalRejected, ev.ProposalCancelled])
def test_deciding_an_unknown_or_finished_proposal_is_refused(cls: type) -> None:
    d = desk()
    assert rejected(d.apply(cls(d.tick(), "nope"))) == ["proposal 'nope' is unknown or finished (no such proposal)"]
    submit(d, "p", [(BTC, "liquidation_fee_ppm", 5_100)])
    assert not rejected(d.apply(ev.ProposalRejected(d.tick(), "p", "no")))
    assert rejected(d.apply(cls(d.tick(), "p"))) == [
        "proposal 'p' is rejected, not submitted" + ("" if cls is ev.ProposalApproved else " or queued")
    ]


def test_an_approval_queues_behind_the_timelock_and_activates_on_the_first_input_after_it() -> None:
    d = desk()
    submit(d, "p", [(BTC, "liquidation_fee_ppm", 5_500), ("", "at_risk_buffer_ppm", 190_000)])
    out = d.apply(ev.ProposalApproved(d.tick(), "p", by="admin-key"))
    (q,) = of_type(out, ev.ProposalQueued)
    assert q.activates_ns == d.t + 60 * NS
    assert not of_type(d.clock_to(q.activates_ns - 1), ev.ProposalActivated)
    assert rejected(d.apply(ev.ProposalApproved(d.tick(0), "p"))) == ["proposal 'p' is queued, not submitted"]
    out = d.price("BTC", "50001")  # any input at or after the timelock
    assert d.t >= q.activates_ns
    (a,) = of_type(out, ev.ProposalActivated)
    assert (a.olds, a.values) == ([5_000, 200_000], [5_500, 190_000])
    assert [(o.name, o.old, o.new) for o in of_type(out, ev.ParameterChanged)] == [
        ("liquidation_fee_ppm", 5_000, 5_500),
        ("at_risk_buffer_ppm", 200_000, 190_000),
    ]
    assert value_of(d.eng.cfg, BTC, "liquidation_fee_ppm") == 5_500
    p = d.eng.gov.proposals["p"]
    assert (p.state, p.decided_by, p.evidence) == ("active", "admin-key", EVIDENCE)
    assert of_type(d.clock_to(a.watch_until_ns), ev.ProposalSettled)
    assert d.eng.gov.proposals["p"].state == "settled" and not d.eng.gov.busy


def test_proposals_in_one_epoch_count_together_and_a_late_one_is_refused_at_activation() -> None:
    d = desk(mode="auto", epoch_ns=3600 * NS, timelock_ns=10 * NS)
    assert not rejected(submit(d, "a", [(BTC, "liquidation_fee_ppm", 5_400)], mode="auto"))
    assert [o.proposal_id for o in of_type(d.clock(20 * NS), ev.ProposalActivated)] == ["a"]
    # from 5,400 within the epoch the base stays 5,000: 5,500 is the most, 5,600 is refused at submission
    reason = rejected(submit(d, "c", [(BTC, "liquidation_fee_ppm", 5_600)], mode="auto"))[0]
    assert "5000 -> 5600 is beyond the epoch cap (at most 500 from 5000 this epoch: 100000 ppm)" in reason
    assert not rejected(submit(d, "d", [(BTC, "liquidation_fee_ppm", 5_500)], mode="auto"))
    d.clock(20 * NS)
    assert value_of(d.eng.cfg, BTC, "liquidation_fee_ppm") == 5_500
    # submitted near the epoch's end, 4,600 fits (400 from 5,000), but it would activate in the next epoch,
    # measured from 5,500: refused then, nothing applied
    d.clock_to(3595 * NS)
    assert not rejected(submit(d, "b", [(BTC, "liquidation_fee_ppm", 4_600)], mode="auto"))
    out = d.clock(20 * NS)
    assert [(o.proposal_id, o.reason) for o in of_type(out, ev.ProposalRefused)] == [
        ("b", "BTC-PERP:liquidation_fee_ppm: 5500 -> 4600 is beyond the epoch cap (at most 550 from 5500 this "
         "epoch: 100000 ppm)")
    ]  # fmt: skip
    assert not of_type(out, ev.ParameterChanged) and value_of(d.eng.cfg, BTC, "liquidation_fee_ppm") == 5_500
    assert d.eng.gov.proposals["b"].state == "refused"


def test_an_operator_change_cancels_pending_proposals_and_is_never_rolled_back() -> None:
    d = desk(rollback_liquidations=1, timelock_ns=0, mode="auto")
    submit(d, "pending", [(ETH, "liquidation_fee_ppm", 5_200)])  # manual: waits for an approval
    submit(d, "active", [(BTC, "margin.brackets.0.mmr_ppm", 4_400), (ETH, "liquidation_fee_ppm", 5_100)], mode="auto")
    assert d.eng.gov.proposals["active"].state == "active"
    out = d.apply(ev.ParameterChangeRequested(d.tick(), ETH, "liquidation_fee_ppm", 7_000))
    assert [(o.proposal_id, o.effect, o.by) for o in of_type(out, ev.ProposalOverridden)] == [
        ("pending", "cancelled", "operator"),
        ("active", "released", "operator"),
    ]
    assert rejected(d.apply(ev.ProposalApproved(d.tick(), "pending"))) == [
        "proposal 'pending' is overridden, not submitted"
    ]
    # a liquidation now rolls the active proposal back: the margin rate, not the operator's fee
    d.open(1, 2_600)
    d.open(2, 100_000)
    d.pair(1, 2, BTC, base(1), px(50_000), leverage=100)
    out = d.price("BTC", "47500")
    (rb,) = of_type(out, ev.ProposalRolledBack)
    assert (rb.metric, rb.value, rb.threshold, rb.names, rb.values) == (
        "liquidations",
        1,
        1,
        ["margin.brackets.0.mmr_ppm"],
        [4_000],
    )
    assert value_of(d.eng.cfg, ETH, "liquidation_fee_ppm") == 7_000
    assert value_of(d.eng.cfg, BTC, "margin.brackets.0.mmr_ppm") == 4_000


def test_a_rollback_fires_on_bad_debt_within_the_window_only() -> None:
    spec = GovernanceSpec(mode="auto", timelock_ns=0, watch_ns=100 * NS, rollback_bad_debt_quote_q=1)
    for wait, fires in ((50, True), (150, False)):
        d = Desk(venue(spec, fund_usd=1), step_ns=NS)
        d.price("BTC", "50000")
        d.open(1, 2_600)
        d.open(2, 100_000)
        d.pair(1, 2, BTC, base(1), px(50_000), leverage=100)
        submit(d, "p", [("", "at_risk_buffer_ppm", 210_000)], mode="auto")
        d.clock(wait * NS)
        out = d.price("BTC", "40000")  # account 1 is bankrupt: the 1 USD fund cannot cover it
        assert of_type(out, ev.BadDebtSocialized)
        assert bool(of_type(out, ev.ProposalRolledBack)) is fires
        assert value_of(d.eng.cfg, "", "at_risk_buffer_ppm") == (200_000 if fires else 210_000)


def test_a_later_proposal_takes_over_the_parameter_and_its_rollback() -> None:
    d = desk(mode="auto", timelock_ns=0, max_change_ppm=300_000, rollback_liquidations=1)
    d.open(1, 1_800)
    d.open(2, 100_000)
    d.pair(1, 2, BTC, base(1), px(50_000), leverage=100)
    d.price("BTC", "48500")  # equity 300 against maintenance 194 (0.4 %): healthy
    submit(d, "p", [(BTC, "margin.brackets.0.mmr_ppm", 5_000), ("", "mass_close_min", 250)], mode="auto")
    out = submit(d, "q", [(BTC, "margin.brackets.0.mmr_ppm", 5_200)], mode="auto")  # 252: still healthy
    assert [(o.proposal_id, o.name, o.effect, o.by) for o in of_type(out, ev.ProposalOverridden)] == [
        ("p", "margin.brackets.0.mmr_ppm", "released", "proposal:q")
    ]
    out = d.price("BTC", "48300")  # equity 100 against 251: liquidated; both proposals see it
    assert [(o.proposal_id, o.names, o.values) for o in of_type(out, ev.ProposalRolledBack)] == [
        ("p", ["mass_close_min"], [256]),
        ("q", ["margin.brackets.0.mmr_ppm"], [5_000]),  # q restores the rate it found
    ]
    # a proposal whose every parameter was taken over has nothing to roll back: it runs out its window
    d2 = desk(mode="auto", timelock_ns=0, rollback_liquidations=1)
    submit(d2, "p", [(BTC, "liquidation_fee_ppm", 5_400)], mode="auto")
    submit(d2, "q", [(BTC, "liquidation_fee_ppm", 5_500)], mode="auto")
    assert d2.eng.gov.proposals["p"].held == [0]


def test_an_activation_that_liquidates_is_rolled_back_on_the_same_input() -> None:
    d = desk(mode="auto", timelock_ns=0, max_change_ppm=300_000, rollback_liquidations=1)
    d.open(1, 1_700)
    d.open(2, 100_000)
    d.pair(1, 2, BTC, base(1), px(50_000), leverage=100)
    d.price("BTC", "48500")  # equity 200 against maintenance 194 (0.4 %): healthy
    out = submit(d, "p", [(BTC, "margin.brackets.0.mmr_ppm", 5_000)], mode="auto")  # 0.5 %: 242.5 > 200
    kinds = [type(o).__name__ for o in out]
    assert kinds.index("ProposalActivated") < kinds.index("PositionLiquidated") < kinds.index("ProposalRolledBack")
    (rb,) = of_type(out, ev.ProposalRolledBack)
    assert (rb.metric, rb.value, rb.values) == ("liquidations", 1, [4_000])
    assert value_of(d.eng.cfg, BTC, "margin.brackets.0.mmr_ppm") == 4_000


def test_the_watch_window_ends_at_its_last_nanosecond() -> None:
    spec = GovernanceSpec(mode="auto", timelock_ns=0, watch_ns=100 * NS, rollback_bad_debt_quote_q=1)
    for at_end, fires in ((-1, True), (0, False)):
        d = Desk(venue(spec, fund_usd=1), step_ns=NS)
        d.price("BTC", "50000")
        d.open(1, 2_600)
        d.open(2, 100_000)
        d.pair(1, 2, BTC, base(1), px(50_000), leverage=100)
        (a,) = of_type(submit(d, "p", [("", "at_risk_buffer_ppm", 210_000)], mode="auto"), ev.ProposalActivated)
        d.t = a.watch_until_ns + at_end - NS  # the price comes a second later
        out = d.price("BTC", "40000")
        assert of_type(out, ev.BadDebtSocialized)
        assert bool(of_type(out, ev.ProposalRolledBack)) is fires
        assert bool(of_type(out, ev.ProposalSettled)) is not fires


def test_after_an_operator_change_governance_measures_from_the_operators_value() -> None:
    d = desk(mode="auto", epoch_ns=3600 * NS, timelock_ns=0)
    submit(d, "a", [(BTC, "liquidation_fee_ppm", 5_500)], mode="auto")
    d.apply(ev.ParameterChangeRequested(d.tick(), BTC, "liquidation_fee_ppm", 8_000))
    # 8,500 is 3,500 from the epoch's first base but within 800 of the operator's 8,000
    assert not rejected(submit(d, "b", [(BTC, "liquidation_fee_ppm", 8_800)], mode="auto"))
    assert rejected(submit(d, "c", [(BTC, "liquidation_fee_ppm", 7_100)], mode="auto"))  # 1,700 from 8,800's base
    assert value_of(d.eng.cfg, BTC, "liquidation_fee_ppm") == 8_800


def test_governance_state_is_in_the_hash_and_survives_a_snapshot() -> None:
    d = desk(rollback_liquidations=5)
    submit(d, "p", [(BTC, "liquidation_fee_ppm", 5_500)])
    d.apply(ev.ProposalApproved(d.tick(), "p"))
    d.clock(120 * NS)
    eng = d.eng
    h = eng.state_hash()
    full = eng.state_dict()
    assert Engine.from_state(full).state_hash() == h
    gov = full["governance"]
    mutations = [("liquidations", 1), ("epoch_base", [])]
    mutations += [(("proposals", 0, f), None) for f in gov["proposals"][0]]
    for where, _ in mutations:
        state = json.loads(json.dumps(gov))
        if isinstance(where, tuple):
            p = state["proposals"][0]
            v = p[where[2]]
            p[where[2]] = v + 1 if isinstance(v, int) else v + "x" if isinstance(v, str) else [*v, 0]
        else:
            state[where] = state[where] + 1 if isinstance(state[where], int) else []
        changed = {**full, "governance": state}
        assert Engine.from_state(changed).state_hash() != h, where


def test_the_spec_is_checked_and_round_trips() -> None:
    spec = GovernanceSpec(mode="auto", max_change_ppm=50_000, rollback_liquidations=7)
    cfg = venue(spec)
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValidationError, match="mode must be one of manual, auto"):
        GovernanceSpec(mode="vote")
    with pytest.raises(ValidationError, match=r"max_change_ppm must be in \[0, 1000000\]"):
        GovernanceSpec(max_change_ppm=2_000_000)
    with pytest.raises(ValidationError, match=r"epoch_ns must be in \[1,"):
        GovernanceSpec(epoch_ns=0)
