"""The exact mass-liquidation kernels agree with the per-bucket Python path, to the quantum.

``EngineConfig.mass_close_min`` decides from how many breaches in one evaluation the engine confirms
and closes simple buckets (isolated positions, single-position cross accounts) in numba kernels.
Setting it to 1 or to a billion runs the same events through either path: the state hash must be
the same, and the per-account outputs (the kernel's columnar event expanded) the same too.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.units import Rounding, div_round
from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation.exact128 import ge_products, muldiv
from fluidmargin.sim.venues import perp_venue
from support.desk import NS, px, state_diff, usd

I63 = st.integers(-(2**62), 2**62)


@settings(max_examples=3000, deadline=None)
@given(
    a=I63, b=I63, d=st.one_of(st.integers(1, 2**62), st.sampled_from([10**k for k in range(19)])), ceil=st.booleans()
)
def test_muldiv_is_exact_or_says_it_overflowed(a: int, b: int, d: int, ceil: bool) -> None:
    exact = div_round(a * b, d, Rounding.CEIL if ceil else Rounding.FLOOR)
    v, ok = muldiv(a, b, d, ceil)
    if abs(exact) < 2**62:
        assert ok and v == exact
    else:
        assert not ok


@settings(max_examples=1000, deadline=None)
@given(x=st.lists(st.integers(0, 2**62), min_size=4, max_size=4))
def test_product_comparison_is_exact(x: list[int]) -> None:
    assert ge_products(*x) == (x[0] * x[1] >= x[2] * x[3])


account = st.tuples(
    st.sampled_from(["BTC-PERP", "ETH-PERP"]),
    st.booleans(),  # long
    st.sampled_from([2, 5, 10, 20, 50]),  # leverage
    st.integers(1, 400),  # notional, hundreds of USD
    st.integers(0, 60),  # margin above initial, % of initial
    st.booleans(),  # isolated
)


def run(cfg, accounts, move_ppm: int, hours: int) -> tuple[dict, list[ev.Event]]:  # type: ignore[no-untyped-def]
    eng = Engine(cfg)
    t = NS
    prices = {"BTC": 50_000, "ETH": 3_000}
    for a, p in prices.items():
        eng.apply(ev.PriceObserved(t, "s1", a, str(p)))
    ids, deps, pa, mk, sz, pr, iso, isom, lev = [], [], [], [], [], [], [], [], []
    for i, (market, long_, leverage, notional_h, extra, isolated) in enumerate(accounts):
        price = prices[market[:3]]
        notional = usd(notional_h * 100)
        size = notional * 10**8 // (price * 10**6)
        im = notional // leverage + 1
        dep = im * (100 + extra) // 100 + 10
        ids.append(1_000 + i)
        deps.append(dep)
        pa.append(i)
        mk.append(market)
        sz.append(size if long_ else -size)
        pr.append(px(price))
        iso.append(int(isolated))
        isom.append(dep if isolated else 0)
        lev.append(leverage)
    out = eng.apply(ev.AccountsSeeded(t + 1, ids, deps, pa, mk, sz, pr, iso, isom, lev))
    assert not any(isinstance(o, ev.InputRejected) for _s, o in out), out[-1]
    eng.apply(ev.ClockAdvanced(t + hours * 3600 * NS))  # funding accrues: the kernel settles it
    t += hours * 3600 * NS + 1
    outs: list[ev.Event] = []
    for a, p in prices.items():
        new = p * (1_000_000 + move_ppm) // 1_000_000
        outs += [o for _s, o in eng.apply(ev.PriceObserved(t, "s1", a, str(new)))[1:]]
    state = eng.state_dict(for_hash=True)
    del state["config"], state["seq"]  # they differ in mass_close_min and so in how many events came out
    return state, outs


def per_account(outs: list[ev.Event]) -> Counter[str]:
    keep = (ev.AccountStatusChanged, ev.PositionLiquidated, ev.FundingSettled)
    return Counter(repr(o) for o in ev.expand(outs) if isinstance(o, keep))


@pytest.mark.parametrize("liquidation", ["partial", "close_at_mark"])
@settings(max_examples=60, deadline=None)
@given(
    accounts=st.lists(account, min_size=1, max_size=30),
    move_ppm=st.integers(-200_000, 200_000),
    hours=st.integers(0, 30),
)
def test_kernel_and_python_paths_agree(liquidation: str, accounts: list, move_ppm: int, hours: int) -> None:
    base = perp_venue(("BTC", "ETH"), liquidation=liquidation, insurance_fund_usd=10**9, single_source_liquidation=True)
    fast = dataclasses.replace(base, mass_close_min=1)
    slow = dataclasses.replace(base, mass_close_min=10**9)
    h_fast, o_fast = run(fast, accounts, move_ppm, hours)
    h_slow, o_slow = run(slow, accounts, move_ppm, hours)
    assert per_account(o_fast) == per_account(o_slow)
    assert state_diff(h_fast, h_slow) == []
    assert not any(isinstance(o, ev.PositionsLiquidated) for o in o_slow)


def test_a_crash_tick_goes_through_the_kernel() -> None:
    """Guard: the comparison above really exercises the kernel (a columnar event comes out)."""
    venue = perp_venue(("BTC", "ETH"), insurance_fund_usd=10**9, single_source_liquidation=True)
    cfg = dataclasses.replace(venue, mass_close_min=1)
    accounts = [("BTC-PERP", True, 50, 100, 0, i % 2 == 0) for i in range(10)]
    _h, outs = run(cfg, accounts, -30_000, 1)
    batch = [o for o in outs if isinstance(o, ev.PositionsLiquidated)]
    assert batch and sum(len(o.account_ids) for o in batch) == 10
