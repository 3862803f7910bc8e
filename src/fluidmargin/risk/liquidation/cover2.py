"""Insurance-fund sizing by Cover-2: the fund that survives the default of the two largest exposures.

CPMI-IOSCO PFMI principle 4 (and EMIR art. 43) ask a central counterparty for prefunded resources that
cover the default of the two participants (with their affiliates) that would cause the largest credit
exposure in extreme but plausible market conditions. On a margin venue a participant is an account (to
treat affiliated accounts as one, give their buckets one owner) and what its default leaves to the
insurance fund is the loss the move inflicts beyond its equity:

* A **scenario** is a vector of per-market price moves in ppm (``-200_000``: the mark falls 20 %),
  either a market's own (it moves that market alone: :func:`market_shocks`) or joint (it moves several
  together, as a crash does: :func:`joint_scenarios`).
* A **bucket** is what the venue margins as one: an account's cross margin (its positions share the
  account's equity) or one isolated position (its own margin). Its equity is its collateral after current
  PnL (quote quantums), as the venue values it now.
* A position's **loss** under move ``mv`` is ``ceil(-size * mark * mv / (1e6 * 10**(size_decimals + 2)))``
  quote quantums (size in base quantums, mark in price quantums of 1e-8 quote): rounded up, against
  the fund. A gain is a negative loss; within a bucket gains offset losses.
* A bucket's **uncovered loss** is ``max(0, sum of its positions' losses - equity)``: what closing it at
  the moved price leaves unpaid. An account's is the sum over its buckets (an isolated bucket's gain
  does not help the cross bucket: its margin is ring-fenced, as in the engine).
* A scenario's **Cover-2** is the sum of its two largest accounts' uncovered losses. A **market's** figure
  is the largest Cover-2 over that market's own scenarios (its positions against their buckets' whole
  equity: a cross account's equity is shared by all its positions); the **venue's** the largest over
  every scenario (joint and single-market ones), so it is never below a market's. Ties go to the first
  scenario in the given order, and within a scenario to the account that comes first in the book.

Figures are exact integers. :func:`cover2` screens every (scenario, account) pair in floats (numba) with
a proven error bound, keeps the scenarios that could reach each maximum and the accounts that could be
among each kept scenario's largest, and recomputes exactly those with Python integers; the result is the
exact one. :func:`cover2_reference` computes every pair in Python integers: the twin the tests compare.

Not modelled here (the caller's): non-quote collateral re-priced by the move, option positions, close
costs (slippage, fees) beyond the moved mark, and the fund's own inventory; see ``fluidmargin.sim.cover2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, PPM, PRICE_DECIMALS, QUOTE_DECIMALS

MAX_MOVE_PPM = 10 * PPM  # a move of at most +1000 %; a fall of at most -100 % (the price reaches 0)
MAX_SIZE_DECIMALS = 18
# the float screen's relative error bound per term of a bucket's sum: 4u (u = 2**-53), twice what the
# analysis in _screen needs, so the bound also covers the rounding of its own computation
REL = 2.0**-51


# --- inputs -------------------------------------------------------------------------------------------


def _column(name: str, values: Any, lo: int, hi: int) -> np.ndarray:
    """``values`` as a 1-D int64 array within [lo, hi], or a ValidationError saying why not."""
    try:
        a = np.asarray(values)
    except (ValueError, TypeError) as e:
        raise ValidationError(f"{name}: not a column of numbers ({e})") from None
    if a.ndim != 1:
        raise ValidationError(f"{name}: a 1-D column expected, got shape {a.shape}")
    if a.dtype == bool:
        raise ValidationError(f"{name}: integers expected, got booleans")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValidationError(f"{name}: NaN or infinite value at index {int(np.argmin(np.isfinite(a)))}")
        if (a != np.floor(a)).any():
            raise ValidationError(f"{name}: whole quantums expected, got a fraction")
        if a.min() < lo or a.max() > hi:
            raise ValidationError(f"{name}: a value outside [{lo}, {hi}] (oversize)")
        return a.astype(np.int64)
    if a.dtype.kind == "O":
        for i, v in enumerate(a.tolist()):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValidationError(f"{name}: integers expected, got {type(v).__name__} at index {i}")
            if not lo <= int(v) <= hi:
                raise ValidationError(f"{name}: {v} at index {i} is outside [{lo}, {hi}] (oversize)")
        return np.array([int(v) for v in a.tolist()], dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise ValidationError(f"{name}: integers expected, got {a.dtype}")
    mn, mx = int(a.min()), int(a.max())
    if mn < lo or mx > hi:
        bad = mn if mn < lo else mx
        raise ValidationError(f"{name}: {bad} is outside [{lo}, {hi}] (oversize)")
    return a.astype(np.int64, copy=False)


def _same_length(what: str, **cols: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValidationError(f"{what}: columns of different lengths {lengths}")


@dataclass(frozen=True, slots=True, eq=False)
class Cover2Book:
    """What the venue holds, as columns (build it with :func:`make_book` or :func:`accounts_book`).

    Accounts ``a`` (ids), buckets ``b`` (owner row in the accounts, equity in quote quantums), positions
    ``p`` (bucket, market index, signed size in base quantums), markets ``m`` (name, mark in price
    quantums, size decimals). Every column is int64; any order (positions need not be sorted).
    """

    account_ids: np.ndarray
    bucket_owner: np.ndarray
    bucket_equity_quote_q: np.ndarray
    pos_bucket: np.ndarray
    pos_market: np.ndarray
    pos_size_base_q: np.ndarray
    markets: tuple[str, ...]
    mark_price_q: np.ndarray
    size_decimals: np.ndarray

    @property
    def n_accounts(self) -> int:
        return len(self.account_ids)


def make_book(
    account_ids: Any,
    bucket_owner: Any,
    bucket_equity_quote_q: Any,
    pos_bucket: Any,
    pos_market: Any,
    pos_size_base_q: Any,
    markets: Sequence[str],
    mark_price_q: Any,
    size_decimals: Any,
) -> Cover2Book:
    """A validated :class:`Cover2Book` (bad input: a ValidationError naming the column and the reason).

    Sizes and equities within +-2**62, marks within [1, 2**62], size decimals within [0, 18], account ids
    distinct, owners, buckets and market indices within their tables, parallel columns of one length.
    """
    big = MAX_QUANTUMS
    markets = tuple(markets)
    if any(not isinstance(s, str) or not s for s in markets):
        raise ValidationError("markets: non-empty names expected")
    if len(set(markets)) != len(markets):
        raise ValidationError("markets: a name given twice")
    nm = len(markets)
    ids = _column("account_ids", account_ids, -big, big)
    sorted_ids = np.sort(ids)
    if (sorted_ids[1:] == sorted_ids[:-1]).any():
        raise ValidationError("account_ids: an id given twice")
    owner = _column("bucket_owner", bucket_owner, 0, max(len(ids) - 1, 0))
    if len(owner) and not len(ids):
        raise ValidationError("bucket_owner: buckets without accounts")
    eq = _column("bucket_equity_quote_q", bucket_equity_quote_q, -big, big)
    _same_length("buckets", bucket_owner=owner, bucket_equity_quote_q=eq)
    pb = _column("pos_bucket", pos_bucket, 0, max(len(owner) - 1, 0))
    if len(pb) and not len(owner):
        raise ValidationError("pos_bucket: positions without buckets")
    pm = _column("pos_market", pos_market, -big, big)
    if len(pm) and (pm.min() < 0 or pm.max() >= nm):
        bad = int(pm.min()) if pm.min() < 0 else int(pm.max())
        raise ValidationError(f"pos_market: unknown market index {bad} (markets: {nm})")
    size = _column("pos_size_base_q", pos_size_base_q, -big, big)
    _same_length("positions", pos_bucket=pb, pos_market=pm, pos_size_base_q=size)
    mark = _column("mark_price_q", mark_price_q, 1, big)
    sd = _column("size_decimals", size_decimals, 0, MAX_SIZE_DECIMALS)
    if len(mark) != nm or len(sd) != nm:
        raise ValidationError(f"markets: {nm} names, {len(mark)} marks, {len(sd)} size decimals")
    return Cover2Book(ids, owner, eq, pb, pm, size, markets, mark, sd)


def accounts_book(
    account_ids: Any,
    equity_quote_q: Any,
    pos_account: Any,
    pos_market: Any,
    pos_size_base_q: Any,
    markets: Sequence[str],
    mark_price_q: Any,
    size_decimals: Any,
) -> Cover2Book:
    """One bucket per account (every position on the account's equity): ``pos_account`` is a row of
    ``account_ids``."""
    n = len(np.asarray(account_ids))
    return make_book(
        account_ids,
        np.arange(n, dtype=np.int64),
        equity_quote_q,
        pos_account,
        pos_market,
        pos_size_base_q,
        markets,
        mark_price_q,
        size_decimals,
    )


@dataclass(frozen=True, slots=True, eq=False)
class Scenarios:
    """Named scenarios over ``markets``: ``moves_ppm[s, m]`` is market m's move in scenario s, and
    ``single[s]`` the market scenario s belongs to (it moves no other), -1 for a joint scenario."""

    markets: tuple[str, ...]
    names: tuple[str, ...]
    moves_ppm: np.ndarray
    single: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.names)

    def __add__(self, other: Scenarios) -> Scenarios:
        if other.markets != self.markets:
            raise ValidationError("scenarios over different markets cannot be joined")
        moves = np.vstack([self.moves_ppm, other.moves_ppm])
        return make_scenarios(self.markets, self.names + other.names, moves, self.single + other.single)


def _move(name: str, v: Any, lo: int, hi: int) -> int:
    """One move in ppm: an int, or a float rounded away from zero (more severe)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValidationError(f"{name}: a number of ppm expected, got {type(v).__name__}")
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            raise ValidationError(f"{name}: NaN or infinite move")
        v = math.ceil(v) if v > 0 else math.floor(v)
    iv = int(v)
    if not lo <= iv <= hi:
        raise ValidationError(f"{name}: move {iv} ppm outside [{lo}, {hi}]")
    return iv


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def make_scenarios(
    markets: Sequence[str], names: Sequence[str], moves_ppm: Any, single: Sequence[int] | None = None
) -> Scenarios:
    """Scenarios from a (scenarios x markets) table of moves in ppm, validated: each move within
    [-1e6, +1e7] ppm (a price cannot go below zero), whole ppm (a float is rounded away from zero).

    ``single``: the market index each scenario belongs to, -1 for a joint one (default: a scenario that
    moves exactly one market is that market's); a market's scenario may move no other market.
    """
    markets, names = tuple(markets), tuple(names)
    if len(set(names)) != len(names):
        raise ValidationError("scenarios: a name given twice")
    if any(not isinstance(n, str) or not n for n in names):
        raise ValidationError("scenarios: non-empty names expected")
    try:
        a = np.asarray(moves_ppm)
    except (ValueError, TypeError) as e:
        raise ValidationError(f"scenarios: not a table of numbers ({e})") from None
    if a.size == 0:
        a = np.zeros((len(names), len(markets)), dtype=np.int64)
    if a.shape != (len(names), len(markets)):
        raise ValidationError(f"scenarios: table of shape {a.shape}, expected ({len(names)}, {len(markets)})")
    rows = [
        [
            _move(f"scenario {names[s]!r}, market {markets[m]!r}", _scalar(a[s, m]), -PPM, MAX_MOVE_PPM)
            for m in range(a.shape[1])
        ]
        for s in range(a.shape[0])
    ]
    table = np.array(rows, dtype=np.int64).reshape(len(names), len(markets))
    if single is None:
        nz = [np.flatnonzero(r) for r in table]
        single = [int(z[0]) if len(z) == 1 else -1 for z in nz]
    single = tuple(int(m) for m in single)
    if len(single) != len(names):
        raise ValidationError(f"scenarios: {len(single)} market indices for {len(names)} scenarios")
    for i, m in enumerate(single):
        if not -1 <= m < len(markets):
            raise ValidationError(f"scenario {names[i]!r}: unknown market index {m}")
        if m >= 0 and np.count_nonzero(np.delete(table[i], m)):
            raise ValidationError(f"scenario {names[i]!r} belongs to {markets[m]!r} but moves other markets")
    return Scenarios(markets, names, table, single)


def market_shocks(
    markets: Sequence[str],
    up_ppm: int | float | Mapping[str, int | float],
    down_ppm: int | float | Mapping[str, int | float],
) -> Scenarios:
    """Two scenarios per market, ``<market>:up`` and ``<market>:down``, each moving that market alone.

    ``up_ppm`` and ``down_ppm`` are magnitudes (``down_ppm=300_000``: the mark falls 30 %), one for every
    market or a mapping by market name; a market missing from a mapping, an unknown market, a negative
    or NaN shock or a fall beyond 100 % are refused.
    """
    markets = tuple(markets)
    names: list[str] = []
    rows: list[list[int]] = []
    for side, given, sign in (("up", up_ppm, 1), ("down", down_ppm, -1)):
        if isinstance(given, Mapping):
            unknown = sorted(set(given) - set(markets))
            if unknown:
                raise ValidationError(f"{side} shocks: unknown market {unknown[0]!r}")
            missing = [m for m in markets if m not in given]
            if missing:
                raise ValidationError(f"{side} shocks: no shock for market {missing[0]!r}")
        for i, m in enumerate(markets):
            v = given[m] if isinstance(given, Mapping) else given
            mag = _move(f"{side} shock of {m!r}", v, 0, PPM if sign < 0 else MAX_MOVE_PPM)
            row = [0] * len(markets)
            row[i] = sign * mag
            names.append(f"{m}:{side}")
            rows.append(row)
    order = sorted(range(len(names)), key=lambda k: (k % len(markets), k // len(markets))) if markets else []
    single = [k % len(markets) for k in order]
    return make_scenarios(markets, [names[k] for k in order], [rows[k] for k in order], single)


def joint_scenarios(markets: Sequence[str], moves: Mapping[str, Mapping[str, int | float]]) -> Scenarios:
    """Joint scenarios from ``{name: {market: signed move ppm}}`` (a market not named does not move);
    they count venue-wide only, even one that moves a single market."""
    markets = tuple(markets)
    index = {m: i for i, m in enumerate(markets)}
    rows = []
    for name, mv in moves.items():
        row = [0] * len(markets)
        for m, v in mv.items():
            if m not in index:
                raise ValidationError(f"scenario {name!r}: unknown market {m!r}")
            row[index[m]] = _move(f"scenario {name!r}, market {m!r}", v, -PPM, MAX_MOVE_PPM)
        rows.append(row)
    return make_scenarios(markets, list(moves), rows, [-1] * len(rows))


# --- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cover2Figure:
    """A Cover-2 figure and what drives it.

    ``fund_quote_q``: the two largest uncovered losses of the driving scenario, summed (quote quantums,
    every loss rounded up). ``scenario``: its name (the first reaching the maximum; ``""`` when none).
    ``accounts``: the ids of the (at most two) accounts with a positive uncovered loss among its two
    largest, largest first. ``top``: (account id, uncovered loss) of its largest accounts with a positive
    loss, largest first (ties: book order), at most the ``top`` asked for.
    """

    fund_quote_q: int
    scenario: str
    scenario_index: int
    accounts: tuple[int, ...]
    top: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Cover2Stats:
    """How much the exact confirmation did: scenarios and (scenario, account) pairs computed exactly."""

    accounts: int
    buckets: int
    positions: int
    scenarios: int
    scenarios_confirmed: int
    pairs_confirmed: int

    @property
    def confirmed_share(self) -> float:
        total = self.scenarios * self.accounts
        return self.pairs_confirmed / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Cover2Result:
    """The venue's figure (every scenario), each market's (its own scenarios), and the work done."""

    venue: Cover2Figure
    per_market: dict[str, Cover2Figure] = field(default_factory=dict)
    stats: Cover2Stats | None = field(default=None, compare=False)


# --- exact arithmetic (Python integers) ------------------------------------------------------------------


class _Exact:
    """Exact uncovered losses of chosen accounts, from the book's columns as Python integers."""

    def __init__(self, book: Cover2Book, rows: np.ndarray) -> None:
        """Index the buckets and positions of account rows ``rows`` (all when it covers every account)."""
        self.book = book
        if len(rows) < book.n_accounts:  # the chosen accounts' buckets and positions (one pass each)
            buckets = np.flatnonzero(np.isin(book.bucket_owner, rows))
            sel_p = np.flatnonzero(np.isin(book.pos_bucket, buckets))
        else:
            buckets, sel_p = np.arange(len(book.bucket_owner)), np.arange(len(book.pos_bucket))
        shift = book.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS
        den = [PPM * 10 ** int(s) for s in shift.tolist()]
        marks = book.mark_price_q.tolist()
        # account row -> [(equity, [(market, -size * mark, denominator), ...]), ...] per bucket
        self.buckets: dict[int, list[tuple[int, list[tuple[int, int, int]]]]] = {}
        slot: dict[int, list[tuple[int, int, int]]] = {}
        owner, eq = book.bucket_owner, book.bucket_equity_quote_q
        for b in buckets.tolist():
            terms: list[tuple[int, int, int]] = []
            slot[b] = terms
            self.buckets.setdefault(int(owner[b]), []).append((int(eq[b]), terms))
        pb, pm, ps = (
            book.pos_bucket[sel_p].tolist(),
            book.pos_market[sel_p].tolist(),
            book.pos_size_base_q[sel_p].tolist(),
        )
        for b, m, s in zip(pb, pm, ps, strict=True):
            if s:
                slot[b].append((m, -s * marks[m], den[m]))

    def uncovered(self, row: int, moves: Sequence[int]) -> int:
        """Account row ``row``'s uncovered loss under ``moves`` (ppm per market), exactly."""
        total = 0
        for equity, terms in self.buckets.get(row, ()):
            loss = 0
            for m, k, d in terms:
                mv = moves[m]
                if mv:
                    loss -= (-k * mv) // d  # ceil(k * mv / d): a loss rounds up, a gain down
            if loss > equity:
                total += loss - equity
        return total


def _figure(book: Cover2Book, sc: Scenarios, s: int, values: Sequence[tuple[int, int]], top: int) -> Cover2Figure:
    """The figure of scenario ``s`` from (row, exact uncovered) of its candidate accounts."""
    best = sorted(((-v, r) for r, v in values if v > 0))[: max(top, 2)]
    ranked = [(int(book.account_ids[r]), -nv) for nv, r in best]
    fund = sum(v for _a, v in ranked[:2])
    return Cover2Figure(fund, sc.names[s], s, tuple(a for a, _v in ranked[:2]), tuple(ranked[:top]))


def _no_figure() -> Cover2Figure:
    return Cover2Figure(0, "", -1, (), ())


def _groups(sc: Scenarios) -> dict[str, list[int]]:
    """The scenarios of each market (moving it alone), in the markets' order."""
    out: dict[str, list[int]] = {}
    for s, m in enumerate(sc.single):
        if m >= 0:
            out.setdefault(sc.markets[m], []).append(s)
    return {m: out[m] for m in sc.markets if m in out}


def _check(book: Cover2Book, sc: Scenarios, top: int) -> None:
    if not isinstance(book, Cover2Book) or not isinstance(sc, Scenarios):
        raise ValidationError("cover2 takes a Cover2Book and Scenarios (make_book, market_shocks, ...)")
    if sc.markets != book.markets:
        raise ValidationError(f"scenarios are over markets {sc.markets}, the book over {book.markets}")
    if not len(sc):
        raise ValidationError("no scenarios: Cover-2 needs at least one move to size the fund against")
    if isinstance(top, bool) or not isinstance(top, int) or top < 2:
        raise ValidationError("top must be an integer >= 2")


def _assemble(book: Cover2Book, sc: Scenarios, exact: dict[int, Cover2Figure], stats: Cover2Stats) -> Cover2Result:
    """The venue's and each market's figure: the first scenario with the largest fund."""

    def best(ss: Sequence[int]) -> Cover2Figure:
        cands = [exact[s] for s in ss if s in exact]
        return max(cands, key=lambda f: (f.fund_quote_q, -f.scenario_index)) if cands else _no_figure()

    per_market = {m: best(ss) for m, ss in _groups(sc).items()}
    return Cover2Result(best(range(len(sc))), per_market, stats)


def cover2_reference(book: Cover2Book, scenarios: Scenarios, top: int = 5) -> Cover2Result:
    """Cover-2 computed pair by pair in plain Python integers, straight from the definition (slow: the
    twin the tests and the benchmark compare :func:`cover2` with)."""
    _check(book, scenarios, top)
    den = [PPM * 10 ** (int(sd) + PRICE_DECIMALS - QUOTE_DECIMALS) for sd in book.size_decimals.tolist()]
    marks = book.mark_price_q.tolist()
    positions = list(
        zip(book.pos_bucket.tolist(), book.pos_market.tolist(), book.pos_size_base_q.tolist(), strict=True)
    )
    owner, equity = book.bucket_owner.tolist(), book.bucket_equity_quote_q.tolist()
    figures = {}
    for s in range(len(scenarios)):
        mv = scenarios.moves_ppm[s].tolist()
        loss = [0] * len(owner)
        for b, m, size in positions:
            loss[b] += -((size * marks[m] * mv[m]) // den[m])  # ceil(-size * mark * mv / den)
        uncovered = [0] * book.n_accounts
        for b, o in enumerate(owner):
            uncovered[o] += max(0, loss[b] - equity[b])
        figures[s] = _figure(book, scenarios, s, list(enumerate(uncovered)), top)
    n = len(scenarios)
    stats = Cover2Stats(book.n_accounts, len(owner), len(positions), n, n, n * book.n_accounts)
    return _assemble(book, scenarios, figures, stats)


# --- the float screen (numba) ----------------------------------------------------------------------------
#
# Error bound. A position's loss t = w * mv, w = -size * mark / (1e6 * 10**shift), is formed in floats
# with six roundings: |t_f - t| <= 6.01u|t| (u = 2**-53). A bucket's x = sum t - equity, summed over its
# n terms, is within gamma(n + 7) * (sum |t| + |equity|) of the real value, and sum |t| + |equity| <=
# sum |w| * max |mv| + |equity| =: gross. The screen uses e = REL * (n + 8) * gross with REL = 4u:
# twice the bound, the rest covering the roundings of e itself and of x +- e. Each exact loss is rounded
# up, so the exact bucket sum lies in [sum t, sum t + n): a bucket's exact uncovered max(0, x) lies in
# [max(0, x_f - e), max(0, x_f + e + n)]. An account's bounds sum its buckets' (non-negative terms)
# widened by REL * (buckets + 4) for that sum's own rounding.
#
# Candidates. With T the k-th largest lower bound over the accounts, at least k accounts are >= T
# exactly, so every account of the exact top k has an upper bound >= T. The pass keeps a running k-th
# largest lower bound (never above the final T) and records each (account, scenario) whose upper bound
# reaches it: every candidate is among the records, which are few (as in streaming top-k). The caller
# keeps the records whose upper bound reaches the final T.


def _pass_body(
    acct_bstart: Any,
    bkt_pstart: Any,
    w: Any,
    pm: Any,
    neg_eq: Any,
    e_move: Any,
    e_lo: Any,
    e_hi: Any,
    acct_rel: Any,
    moves_t: Any,
    big: Any,
    floor_thr: Any,
    topl: Any,
    topu: Any,
    rec_a: Any,
    rec_s: Any,
    rec_u: Any,
    rec_n: Any,
) -> None:
    """One streaming pass over the book for every scenario at once, the accounts in ``topl.shape[0]``
    chunks (threads in the parallel build), each with its own top-k lower bounds ``topl[c, s]``, top-2
    upper bounds ``topu[c, s]`` and records (account, scenario, upper bound; ``rec_n[c]`` may exceed the
    capacity: then some were not written). A record needs an upper bound > 0 that reaches both the
    running k-th lower bound and ``floor_thr[s]``.
    """
    n_chunks, n_s, k = topl.shape
    n_acc = acct_bstart.shape[0] - 1
    cap = rec_a.shape[1]
    for c in prange(n_chunks):
        x = np.empty(n_s)
        au = np.empty(n_s)
        al = np.empty(n_s)
        tl = topl[c]
        tu = topu[c]
        n = 0
        for a in range(c * n_acc // n_chunks, (c + 1) * n_acc // n_chunks):
            au[:] = 0.0
            al[:] = 0.0
            hit = False
            for b in range(acct_bstart[a], acct_bstart[a + 1]):
                p0 = bkt_pstart[b]
                p1 = bkt_pstart[b + 1]
                if p0 == p1 and neg_eq[b] <= 0.0:
                    continue  # no position, equity >= 0: nothing uncovered
                x[:] = neg_eq[b]
                for p in range(p0, p1):
                    wp = w[p]
                    row = moves_t[pm[p]]
                    for s in range(n_s):
                        x[s] += wp * row[s]
                em = e_move[b]
                el = e_lo[b]
                eh = e_hi[b]
                for s in range(n_s):
                    hi = x[s] + (em * big[s] + eh)
                    if hi > 0.0:
                        hit = True
                        au[s] += hi
                        lo = x[s] - (em * big[s] + el)
                        if lo > 0.0:
                            al[s] += lo
            if not hit:
                continue
            rel = acct_rel[a]
            for s in range(n_s):
                u = au[s]
                if u <= 0.0:
                    continue
                u = u * (1.0 + rel)
                lo = al[s] * (1.0 - rel)
                if lo > tl[s, k - 1]:
                    j = k - 1
                    while j > 0 and tl[s, j - 1] < lo:
                        tl[s, j] = tl[s, j - 1]
                        j -= 1
                    tl[s, j] = lo
                if u > tu[s, 0]:
                    tu[s, 1] = tu[s, 0]
                    tu[s, 0] = u
                elif u > tu[s, 1]:
                    tu[s, 1] = u
                if u >= tl[s, k - 1] and u >= floor_thr[s]:
                    if n < cap:
                        rec_a[c, n] = a
                        rec_s[c, n] = s
                        rec_u[c, n] = u
                    n += 1
        rec_n[c] = n


_pass_serial = njit(cache=True)(_pass_body)
_pass_parallel = njit(cache=True, parallel=True)(_pass_body)
PARALLEL_FROM = 100_000  # positions from which the accounts are screened in threads
REC_CAP = 4096  # records per chunk kept by the first pass (more: a second pass with the final thresholds)


@njit(cache=True)
def _counting_order(key: Any, n_keys: Any) -> Any:
    """A stable counting sort by ``key`` in [0, n_keys): (order, start of each key's run)."""
    start = np.zeros(n_keys + 1, dtype=np.int64)
    for i in range(key.shape[0]):
        start[key[i] + 1] += 1
    for j in range(n_keys):
        start[j + 1] += start[j]
    nxt = start[:-1].copy()
    order = np.empty(key.shape[0], dtype=np.int64)
    for i in range(key.shape[0]):
        order[nxt[key[i]]] = i
        nxt[key[i]] += 1
    return order, start


class _Prepared:
    """The book laid out for one streaming pass: buckets grouped by account, positions by bucket."""

    def __init__(self, book: Cover2Book) -> None:
        nb, na = len(book.bucket_owner), book.n_accounts
        b_order, self.acct_bstart = _counting_order(book.bucket_owner, na)
        rank = np.empty(nb, dtype=np.int64)
        rank[b_order] = np.arange(nb)
        pos_rank = rank[book.pos_bucket]
        p_order, self.bkt_pstart = _counting_order(pos_rank, nb)
        shift = (book.size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS).astype(np.float64)
        kf = book.mark_price_q.astype(np.float64) / (float(PPM) * 10.0**shift)
        self.pm = book.pos_market[p_order].astype(np.int32)
        self.w = -book.pos_size_base_q[p_order].astype(np.float64) * kf[self.pm]
        eq = book.bucket_equity_quote_q[b_order].astype(np.float64)
        terms = np.diff(self.bkt_pstart).astype(np.float64)
        coef = REL * (terms + 8.0)
        self.neg_eq = -eq
        self.e_move = coef * np.bincount(pos_rank[p_order], weights=np.abs(self.w), minlength=nb)
        self.e_lo = coef * np.abs(eq)
        self.e_hi = self.e_lo + terms
        self.acct_rel = REL * (np.diff(self.acct_bstart).astype(np.float64) + 4.0)

    def run(
        self, moves: np.ndarray, k: int, floor_thr: np.ndarray, chunks: int, cap: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n_s = moves.shape[0]
        topl = np.zeros((chunks, n_s, k))
        topu = np.zeros((chunks, n_s, 2))
        rec_a = np.zeros((chunks, cap), dtype=np.int64)
        rec_s = np.zeros((chunks, cap), dtype=np.int64)
        rec_u = np.zeros((chunks, cap))
        rec_n = np.zeros(chunks, dtype=np.int64)
        moves_t = np.ascontiguousarray(moves.T)
        big = np.abs(moves).max(axis=1) if moves.shape[1] else np.zeros(n_s)
        kernel = _pass_parallel if chunks > 1 else _pass_serial
        kernel(
            self.acct_bstart, self.bkt_pstart, self.w, self.pm, self.neg_eq, self.e_move, self.e_lo, self.e_hi,
            self.acct_rel, moves_t, big, floor_thr, topl, topu, rec_a, rec_s, rec_u, rec_n,
        )  # fmt: skip
        return topl, topu, rec_a, rec_s, rec_u, rec_n


def _records(
    rec_a: np.ndarray, rec_s: np.ndarray, rec_u: np.ndarray, rec_n: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = np.arange(rec_a.shape[1])[None, :] < rec_n[:, None]
    return rec_a[keep], rec_s[keep], rec_u[keep]


def _screen(
    book: Cover2Book, moves: np.ndarray, k: int, parallel: bool
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per scenario: a lower and an upper bound of its exact Cover-2, and its candidate account rows (a
    superset of its exact top k)."""
    prep = _Prepared(book)
    n_s = moves.shape[0]
    chunks = max(1, min(numba.get_num_threads(), book.n_accounts)) if parallel else 1
    topl, topu, *rec = prep.run(moves, k, np.zeros(n_s), chunks, REC_CAP)
    all_l = np.sort(topl.transpose(1, 0, 2).reshape(n_s, -1), axis=1)[:, ::-1]
    all_u = np.sort(topu.transpose(1, 0, 2).reshape(n_s, -1), axis=1)[:, ::-1]
    thr = all_l[:, k - 1]
    low = (all_l[:, 0] + all_l[:, 1]) * (1.0 - 4e-16)
    high = (all_u[:, 0] + all_u[:, 1]) * (1.0 + 4e-16)
    if rec[3].max() > REC_CAP:  # records overflowed: a second pass that records only what reaches thr
        rec = list(prep.run(moves, k, thr, chunks, REC_CAP)[2:])
        if rec[3].max() > REC_CAP:
            rec = list(prep.run(moves, k, thr, chunks, int(rec[3].max()))[2:])
    ra, rs, ru = _records(*rec)
    ok = (ru >= thr[rs]) & (ru > 0.0)
    ra, rs = ra[ok], rs[ok]
    order = np.lexsort((ra, rs))
    ra, rs = ra[order], rs[order]
    cuts = np.searchsorted(rs, np.arange(n_s + 1))
    return low, high, [ra[cuts[s] : cuts[s + 1]] for s in range(n_s)]


def cover2(book: Cover2Book, scenarios: Scenarios, top: int = 5, parallel: bool | None = None) -> Cover2Result:
    """The venue's and each market's Cover-2 fund (exact; see the module's docstring).

    ``top``: how many of the driving scenario's largest accounts each figure lists (at least 2).
    ``parallel``: screen the accounts in numba threads (default: when the book is large); the result is
    the same either way.
    """
    _check(book, scenarios, top)
    k = max(top, 2)
    n_s = len(scenarios)
    if parallel is None:
        parallel = len(book.pos_bucket) >= PARALLEL_FROM
    low, high, cands = _screen(book, scenarios.moves_ppm.astype(np.float64), k, parallel)
    # a scenario is kept when its upper bound reaches the best lower bound of a group it belongs to
    keep: set[int] = set()
    for ss in [list(range(n_s)), *_groups(scenarios).values()]:
        floor = max(low[s] for s in ss)
        keep.update(s for s in ss if high[s] >= floor)
    kept = sorted(keep)
    rows = np.unique(np.concatenate([cands[s] for s in kept])) if kept else np.zeros(0, dtype=np.int64)
    ex = _Exact(book, rows)
    figures = {}
    pairs = 0
    for s in kept:
        mv_list = scenarios.moves_ppm[s].tolist()
        values = [(r, ex.uncovered(r, mv_list)) for r in cands[s].tolist()]
        pairs += len(values)
        figures[s] = _figure(book, scenarios, s, values, top)
    stats = Cover2Stats(book.n_accounts, len(book.bucket_owner), len(book.pos_bucket), n_s, len(kept), pairs)
    return _assemble(book, scenarios, figures, stats)
