"""What the state hash covers: every field of the engine's state, one at a time.

The other hash tests compare two hashes of the same state, so a field left out of the hash (the seen
event ids' digest, say) would pass them all. Here each field of ``Engine.state_dict()`` is changed in
turn, and the hash must change:

* the hash of the dict itself (``state_hash`` over a changed ``state_dict(for_hash=True)``): every
  leaf, empty containers included, reaches the hash;
* an engine rebuilt by ``Engine.from_state`` from the changed full state: every field a snapshot
  restores reaches the hash (this is what catches a field that ``state_dict(for_hash=True)`` summarises
  or drops, such as the seen ids, or one that ``from_state`` forgets).

The fields are found by walking the dicts, not listed here: a new field is covered, or fails.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fluidmargin.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.model.instruments import OptionSpec
from support.desk import NS, VENUES, Desk, base, px, usd

Path = tuple[Any, ...]  # dict keys and list indices from the root
SOURCES = ("s1", "s2")
CALL, EXPIRY = (
    "BTC-C-50000",
    NS + 30 * 24 * 3600 * NS,
)  # two agreeing price sources: enough for any oracle policy to allow liquidations


def rich_engine() -> Engine:
    """A waterfall venue mid-story: cross and isolated positions, a withdrawal, funding accrued, a vault
    deposit and a pending withdrawal from it, a liquidation being auctioned, inputs with event ids."""
    cfg = dataclasses.replace(VENUES["waterfall"](), options=(OptionSpec(CALL, "BTC", px(50_000), EXPIRY, "call"),))
    d = Desk(cfg)

    def price(asset: str, text: str) -> None:
        ts = d.tick()
        for s in SOURCES:
            d.apply(ev.PriceObserved(ts, s, asset, text))

    price("BTC", "50000")
    price("ETH", "3000")
    for a, amount in ((1, 1_500), (2, 100_000), (3, 100_000), (9, 50_000)):
        d.open(a)
        d.apply(ev.Deposited(d.tick(), a, "USD", usd(amount), event_id=f"dep-{a}"))
    d.apply(ev.WithdrawalRequested(d.tick(), 3, "USD", usd(100), event_id="wd-3"))
    d.apply(ev.VaultDeposit(d.tick(), 9, usd(20_000)))
    d.apply(ev.VaultWithdrawalRequested(d.tick(), 9, usd(1_000)))
    d.pair(1, 2, "BTC-PERP", base("0.4"), px(50_000), leverage=20)
    d.pair(3, 2, "ETH-PERP", base(2), px(3_000), margin_mode="isolated", isolated_margin_quote_q=usd(1_000))
    for a in (4, 5):  # an option position between two portfolio-margin accounts
        d.open(a, 1_000_000)
        d.apply(ev.MarginModeChanged(d.tick(), a, "portfolio"))
    d.apply(ev.VolObserved(d.tick(), "vols", "BTC", EXPIRY, px(50_000), "0.6"))
    d.pair(4, 5, CALL, base(1, 4), px(3_000))
    d.clock(3600 * NS)  # funding accrues
    price("BTC", "50100")
    price("ETH", "3010")
    for p in ("49200", "48300", "47400", "46300"):  # steps under 2 %: the two sources never diverge
        price("BTC", p)  # at 46,300 account 1 has about 1,500 - 0.4 x 3,700 = 20 left, under 0.4 % of 18,520
    eng = d.eng
    assert eng.wf.auctions and eng.wf.shares and eng.wf.pending and eng.seen_ids and eng.opt.pos, "a short story"
    return eng


def leaves(obj: Any, path: Path = ()) -> Iterator[Path]:
    """Every leaf's path; an empty container is a leaf of its own."""
    if isinstance(obj, dict) and obj:
        for k in obj:
            yield from leaves(obj[k], (*path, k))
    elif isinstance(obj, list | tuple) and obj:
        for i, x in enumerate(obj):
            yield from leaves(x, (*path, i))
    elif isinstance(obj, np.ndarray) and obj.size:
        for i in range(obj.shape[0]):
            yield (*path, i)
    else:
        yield path


def changed(value: Any) -> Any:
    """``value`` changed as little as possible (an empty container gets one element)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, np.ndarray):  # empty: one zero row
        return np.zeros((1, *value.shape[1:]), dtype=value.dtype)
    if isinstance(value, list | tuple):
        return type(value)([0])
    if isinstance(value, dict):
        return {"x": 0}
    raise AssertionError(f"unexpected leaf {type(value).__name__}")


def with_change(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """A deep copy of ``state`` with the leaf at ``path`` changed."""
    out = copy.deepcopy(state)
    parent: Any = None
    node: Any = out
    for k in path:
        parent, node = node, node[k]
    if isinstance(parent, np.ndarray):  # one row of an array: its first element
        row = parent[path[-1]]
        if row.ndim:
            row.flat[0] = _nudged(row.flat[0])
        else:
            parent[path[-1]] = _nudged(row)
        return out
    new = changed(node)
    if isinstance(parent, tuple):  # rebuild the tuple up the path
        grand: Any = out
        for k in path[:-2]:
            grand = grand[k]
        grand[path[-2]] = (*parent[: path[-1]], new, *parent[path[-1] + 1 :])
    elif parent is None:
        raise AssertionError("the root is not a leaf")
    else:
        parent[path[-1]] = new
    return out


def _nudged(x: Any) -> Any:
    """One element of an array, moved by one toward zero (so an index or a flag stays in range)."""
    if isinstance(x, np.bool_):
        return not x
    return x - 1 if x > 0 else x + 1


def hash_of(eng: Engine, state: dict[str, Any]) -> str:
    """``state_hash`` as the engine computes it, over ``state`` in place of its own."""
    twin = Engine(eng.cfg)
    twin.state_dict = lambda for_hash=False: state  # type: ignore[method-assign]
    return twin.state_hash()


@pytest.fixture(scope="module")
def eng() -> Engine:
    return rich_engine()


def test_every_leaf_of_the_hashed_dict_reaches_the_hash(eng: Engine) -> None:
    state = eng.state_dict(for_hash=True)
    h0 = eng.state_hash()
    assert hash_of(eng, state) == h0
    paths = list(leaves(state))
    same = [p for p in paths if hash_of(eng, with_change(state, p)) == h0]
    assert not same, same
    assert {p[0] for p in paths} == set(state)  # every top-level field was walked


def test_every_restored_field_reaches_the_hash(eng: Engine) -> None:
    """Change one field of the full state, restore an engine from it: its hash must differ."""
    full = eng.state_dict()
    h0 = Engine.from_state(full).state_hash()
    assert h0 == eng.state_hash()
    hashed = eng.state_dict(for_hash=True)
    # the same fields as the hashed dict; only the seen ids are summarised there (count and digest)
    assert set(full) == set(hashed)
    assert {p for p in leaves(full) if p[0] != "seen_ids"} == {p for p in leaves(hashed) if p[0] != "seen_ids"}
    # "version" is written as a constant; the config is rebuilt and validated from its dict; empty
    # containers have nothing from_state would accept; the links between accounts, positions and markets
    # cannot change alone without breaking what from_state rebuilds. The first test covers all of these.
    skip = {"version", "config"}
    links = {("accounts", "first_pos"), ("positions", "pos_next"), ("positions", "pos_acct"), ("positions", "pos_mkt")}
    paths = [p for p in leaves(full) if p[0] not in skip and p[:2] not in links and not _empty(full, p)]
    assert {p[0] for p in paths} == set(full) - skip  # every other field has something to change here
    same = []
    for p in paths:
        changed_state = with_change(full, p)
        if Engine.from_state(changed_state).state_hash() == h0:
            same.append(p)
    assert not same, f"fields a snapshot restores that the hash does not see: {same}"
    assert any(p[0] == "seen_ids" for p in paths)


def _empty(state: dict[str, Any], path: Path) -> bool:
    node: Any = state
    for k in path:
        if isinstance(node, np.ndarray):
            return False
        node = node[k]
    return isinstance(node, list | tuple | dict | np.ndarray) and len(node) == 0
