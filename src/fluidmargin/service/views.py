"""Read models: the engine's state as wire dicts. Each function runs in the worker thread.

Nothing here changes the engine's exact state. (Two helpers the views must avoid: ``vault_row()``
opens the vault's account on first use, and ``adl_rank`` folds a market's pending positions into
its column; the latter is harmless on the live state but not inside a what-if.)
"""

from __future__ import annotations

from typing import Any

from fluidmargin.core.units import FUNDING_DECIMALS, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, div_round
from fluidmargin.core.units import format_decimal as fmt
from fluidmargin.engine import waterfall as wfl
from fluidmargin.engine.engine import Engine
from fluidmargin.engine.state import STATUS_NAMES
from fluidmargin.engine.types import MODE_NAMES, PORTFOLIO
from fluidmargin.model import events as ev
from fluidmargin.risk.options.black76 import black76_greeks, year_fraction
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.risk.stats import gap
from fluidmargin.service.codec import RATE_DECIMALS, SHARE_DECIMALS, FieldError, Scales, to_quantums


class NotFound(LookupError):
    """An unknown id: 404."""


def q(x: int) -> str:
    return fmt(x, QUOTE_DECIMALS)


def px(x: int | None) -> str | None:
    return None if x is None else fmt(x, PRICE_DECIMALS)


def row_of(eng: Engine, account_id: int) -> int:
    r = eng.row_of.get(account_id)
    if r is None:
        raise NotFound(f"unknown account {account_id}")
    return r


# --- accounts ---------------------------------------------------------------------------------------


def _fixed_equity(eng: Engine, p: int, cross_eq: int, pr: margin.PositionRisk | None = None) -> int | None:
    """Position ``p``'s bucket equity less its value at the mark (None: no single-position price).

    Cross: the bucket's equity less this position's value. Isolated: the position's margin less its
    cost and funding owed. A portfolio account's perpetual has none (options move with it).
    """
    m = eng.markets[int(eng.pos_mkt[p])]
    portfolio_perp = eng.acct_mode[int(eng.pos_acct[p])] == PORTFOLIO and not eng.pos_iso[p]
    if m.mark_q is None or eng.pos_size[p] == 0 or portfolio_perp:
        return None
    if eng.pos_iso[p]:
        return int(eng.pos_iso_margin[p]) - int(eng.pos_cost[p]) - eng.funding_owed(p)
    return cross_eq - (eng.position_risk(p) if pr is None else pr).value_quote_q


def liquidation_price_q(eng: Engine, p: int, cross_eq: int, cross_mm: int) -> int | None:
    """Mark of position ``p``'s market at which its bucket reaches maintenance, all else held.

    The equity less this position's value is fixed (:func:`_fixed_equity`), the other positions'
    maintenance too (cross).
    """
    pr = eng.position_risk(p)
    fixed = _fixed_equity(eng, p, cross_eq, pr)
    if fixed is None:
        return None
    m = eng.markets[int(eng.pos_mkt[p])]
    other_mm = 0 if eng.pos_iso[p] else cross_mm - pr.mm_quote_q
    return margin.liquidation_price_q(m.spec.margin, int(eng.pos_size[p]), m.spec.size_decimals, fixed, other_mm)


def gap_risk_view(eng: Engine, p: int, cross_eq: int, pr: margin.PositionRisk | None = None) -> dict[str, Any] | None:
    """P(the mark touches position ``p``'s bankruptcy price within the liquidation horizon) and the add-on
    that keeps it under the target (:mod:`fluidmargin.risk.stats.gap`); None where no gap model is configured
    for the market or the position has no single-position bankruptcy price."""
    cfg = eng.cfg.gap_risk
    if cfg is None:
        return None
    m = eng.markets[int(eng.pos_mkt[p])]
    spec = cfg.spec_for(m.spec.symbol)
    fixed = _fixed_equity(eng, p, cross_eq, pr) if spec is not None else None
    if spec is None or fixed is None or m.mark_q is None:
        return None
    g = gap.position_gap_risk(spec, int(eng.pos_size[p]), m.spec.size_decimals, m.mark_q, fixed)
    return {
        "model": spec.model,
        "probability": gap.format_probability(g.probability),
        "target": spec.target,
        "horizon_s": spec.horizon_s,
        "bankruptcy_price": px(g.bankruptcy_price_q),
        "addon_quote": q(g.addon_quote_q),
    }


def position_view(eng: Engine, r: int, p: int, cross_eq: int, cross_mm: int, adl: bool) -> dict[str, Any]:
    m = eng.markets[int(eng.pos_mkt[p])]
    sd = m.spec.size_decimals
    size = int(eng.pos_size[p])
    cost = int(eng.pos_cost[p])
    pr = eng.position_risk(p)
    iso = bool(eng.pos_iso[p])
    shift = sd + PRICE_DECIMALS - QUOTE_DECIMALS
    num, den = (abs(cost) * 10**shift, abs(size)) if shift >= 0 else (abs(cost), abs(size) * 10**-shift)
    rank = eng.adl_rank(int(eng.acct_id[r]), m.spec.symbol) if adl else None
    status = int(eng.pos_status[p]) if iso else int(eng.status[r])
    return {
        "market": m.spec.symbol,
        "side": "long" if size > 0 else "short",
        "size": fmt(size, sd),
        "entry_price": fmt(div_round(num, den, Rounding.FLOOR), PRICE_DECIMALS),
        "mark_price": px(m.mark_q),
        "margin_mode": "isolated" if iso else "cross",
        "leverage": int(eng.pos_lev[p]),
        "isolated_margin": q(int(eng.pos_iso_margin[p])) if iso else None,
        "notional": q(pr.notional_quote_q),
        "value": q(pr.value_quote_q),
        "unrealized_pnl": q(pr.upnl_quote_q),
        "funding_owed": q(eng.funding_owed(p)),
        "maintenance_margin": q(pr.mm_quote_q),
        "initial_margin": q(eng.position_initial(p)),
        "health": q(eng.iso_risk(p).health_quote_q) if iso else None,
        "status": STATUS_NAMES[status],
        "liquidation_price": px(liquidation_price_q(eng, p, cross_eq, cross_mm)),
        "gap_risk": gap_risk_view(eng, p, cross_eq, pr),
        "adl": rank,
    }


def account_risk(eng: Engine, r: int, adl: bool = True) -> dict[str, Any]:
    risk = eng.cross_risk(r)
    im = eng.cross_initial(r)
    eq, mm = risk.equity_quote_q, risk.mm_quote_q
    return {
        "equity": q(eq),
        "maintenance_margin": q(mm),
        "initial_margin": q(im),
        "health": q(eq - mm),
        "free_collateral": q(eq - im),
        "withdrawable": q(eng.withdrawable_quote_q(r)),
        "positions": [position_view(eng, r, p, eq, mm, adl) for p in eng.positions_of(r) if eng.pos_size[p] != 0],
    }


def account_view(eng: Engine, account_id: int, adl: bool = True) -> dict[str, Any]:
    r = row_of(eng, account_id)
    balances = []
    for c, spec in enumerate(eng.coll):
        amount = int(eng.bal[r, c])
        balances.append(
            {
                "asset": spec.symbol,
                "amount": fmt(amount, spec.decimals),
                "value": q(eng.collateral_value_quote_q(c, amount)),
            }
        )
    wf = eng.wf
    shares = wf.shares.get(account_id, 0)
    pending = wf.pending.get(account_id)
    vault = None
    if shares or pending:
        vault = {
            "shares": fmt(shares, SHARE_DECIMALS),
            "pending_shares": fmt(pending[0], SHARE_DECIMALS) if pending else None,
            "claimable_at_ns": pending[1] if pending else None,
        }
    pm_mode = int(eng.acct_mode[r]) == PORTFOLIO
    return {
        "account_id": account_id,
        "margin_mode": MODE_NAMES[int(eng.acct_mode[r])],
        "valuation_blocked": (eng.opt.figures(r).blocked or None) if pm_mode else None,
        "status": STATUS_NAMES[int(eng.status[r])],
        "balances": balances,
        **account_risk(eng, r, adl),
        "vault": vault,
        "now_ns": eng.now_ns,
    }


# --- what-if ------------------------------------------------------------------------------------------


def fill_event(eng: Engine, account_id: int, body: Any, ts: int) -> ev.TradeFilled:
    """The TradeFilled a fill request describes (its quantums parsed exactly for its market)."""
    row_of(eng, account_id)
    m = eng.market_idx.get(body.market)
    if m is None and body.market in eng.opt.idx:
        return option_fill_event(eng, account_id, body, ts)
    if m is None:
        raise FieldError("market", f"unknown market {body.market!r}")
    sd = m.spec.size_decimals
    return ev.TradeFilled(
        ts,
        account_id,
        body.market,
        to_quantums(body.size, sd, "size", positive=True, signed=True),
        to_quantums(body.price, PRICE_DECIMALS, "price", positive=True),
        to_quantums(body.fee, QUOTE_DECIMALS, "fee"),
        body.margin_mode,
        body.leverage,
        to_quantums(body.isolated_margin, QUOTE_DECIMALS, "isolated_margin"),
    )


def what_if(eng: Engine, account_id: int, body: Any) -> dict[str, Any]:
    """The account before and after a hypothetical fill, on the live engine, restored after.

    The engine's own dry run (:meth:`Engine.what_if`): its pre-trade check, then the fill applied inside
    a savepoint, the figures read, and everything rolled back; nothing is logged. Funding is as accrued
    at the market's last pass (the real fill would first accrue it to its own time).
    """
    r = row_of(eng, account_id)
    e = fill_event(eng, account_id, body, eng.now_ns)
    before = account_risk(eng, r, adl=False)
    with eng.what_if(r, e) as w:
        after = account_risk(eng, r, adl=False) if w.applied else None
    return {"accepted": not w.reason, "reason": w.reason or None, "before": before, "after": after}


# --- markets, oracle, waterfall -------------------------------------------------------------------------


def markets_view(eng: Engine) -> list[dict[str, Any]]:
    out = []
    for m in eng.markets:
        s = m.spec
        out.append(
            {
                "symbol": s.symbol,
                "base_asset": s.base_asset,
                "size_decimals": s.size_decimals,
                "mark_price": px(m.mark_q),
                "index_price": px(eng.index_q.get(s.base_asset)),
                "last_trade_price": px(m.last_trade_q),
                "funding_rate": fmt(m.rate_e9, RATE_DECIMALS),
                "funding_interval_s": s.funding.interval_s,
                "funding_index": fmt(eng.fidx_now(m), FUNDING_DECIMALS),
                "open_interest": fmt(m.long_oi_base_q, s.size_decimals),
                "halted": s.symbol in eng.halted,
                "halt_reason": eng.halted.get(s.symbol),
                "liquidation_execution": s.liquidation.execution,
                "insurance_fund": eng.wf.fund_of_market(m.i),
            }
        )
    return out


def market_view(eng: Engine, symbol: str) -> dict[str, Any]:
    for v in markets_view(eng):
        if v["symbol"] == symbol:
            return v
    raise NotFound(f"unknown market {symbol!r}")


def oracle_view(eng: Engine, now_ns: int = 0) -> dict[str, Any]:
    """Index, sources and validity per asset, judged at ``now_ns`` (the time the service would stamp an
    input with now; never before the engine's own clock): a feed that has gone quiet shows as stale."""
    now = max(now_ns, eng.now_ns)
    assets = []
    for a in eng.assets:
        pol = eng.cfg.policy(a)
        sources = sorted((s, p, t) for (a2, s), (p, t) in eng.src_last.items() if a2 == a)
        validity = orc.staleness(now, eng.index_ts.get(a), pol)
        n = eng.index_n.get(a, 0)
        grade = orc.allowed(validity, orc.Action.LIQUIDATE, pol) and orc.liquidation_grade(n, pol)
        fresh = eng.fresh_sources(a, now)
        agg = orc.aggregate_sources(fresh, eng.index_q.get(a), pol) if fresh else None
        pending = eng.reanchor.get(a)
        assets.append(
            {
                "asset": a,
                "index_price": px(eng.index_q.get(a)),
                "index_ts_ns": eng.index_ts.get(a),
                "validity": validity.name.lower(),
                "index_sources": n,
                "liquidation_grade": bool(grade and not eng.auto_halt(a)),
                "set_aside": list(agg.outliers) if agg is not None and agg.index_q is not None else [],
                "pending_level": px(pending.last_q) if pending is not None else None,
                "sources": [{"source": s, "price": fmt(p, PRICE_DECIMALS), "ts_ns": t} for s, p, t in sources],
                "policy": {
                    "max_staleness_ns": pol.max_staleness_ns,
                    "max_jump_ppm": pol.max_jump_ppm,
                    "min_confidence_ppm": pol.min_confidence_ppm,
                    "max_divergence_ppm": pol.max_divergence_ppm,
                    "min_sources": pol.min_sources,
                    "aggregation": pol.aggregation,
                    "min_sources_liquidation": pol.min_sources_liquidation,
                    "single_source_liquidation": pol.single_source_liquidation,
                    "jump_window_ns": pol.jump_window_ns,
                    "reanchor_prints": pol.reanchor_prints,
                    "reanchor_after_ns": pol.reanchor_after_ns,
                    "reanchor_tolerance_ppm": pol.reanchor_tolerance_ppm,
                    "divergence_halt_ns": pol.divergence_halt_ns,
                },
            }
        )
    return {"now_ns": now, "assets": assets}


def auction_view(eng: Engine, a: wfl.Auction) -> dict[str, Any]:
    m = eng.markets[a.market]
    return {
        "auction_id": a.auction_id,
        "market": m.spec.symbol,
        "size": fmt(a.size, m.spec.size_decimals),
        "price": fmt(eng.wf.price_q(a), PRICE_DECIMALS),
        "ref_price": fmt(a.ref_q, PRICE_DECIMALS),
        "started_ns": a.started_ns,
        "accounts": list(a.accounts),
        "stale": eng.wf.stale(a) or None,
        "keeper_incentive": q(a.incentive_left_q),
        "now_ns": eng.now_ns,
    }


def auctions_view(eng: Engine) -> list[dict[str, Any]]:
    return [auction_view(eng, eng.wf.auctions[k]) for k in sorted(eng.wf.auctions)]


def one_auction(eng: Engine, auction_id: str) -> dict[str, Any]:
    a = eng.wf.auctions.get(auction_id)
    if a is None:
        raise NotFound(f"auction {auction_id!r} is unknown or finished")
    return auction_view(eng, a)


def vault_view(eng: Engine) -> dict[str, Any]:
    spec = eng.cfg.backstop
    if spec is None:
        return {
            "configured": False,
            "account_id": None,
            "equity": "0",
            "cash": "0",
            "notional": "0",
            "total_shares": "0",
            "max_leverage": None,
            "max_notional": None,
            "withdrawal_delay_ns": None,
        }
    r = eng.row_of.get(spec.account_id)  # not vault_row(): a read must not open it
    equity = cash = notional = 0
    if r is not None:
        equity = eng.cross_risk(r).equity_quote_q
        cash = int(eng.bal[r, eng.quote_c])
        for p in eng.positions_of(r):
            m = eng.markets[int(eng.pos_mkt[p])]
            if eng.pos_size[p] and m.mark_q is not None:
                size = abs(int(eng.pos_size[p]))
                notional += margin.value_quote_q(size, m.mark_q, m.spec.size_decimals, Rounding.CEIL)
    return {
        "configured": True,
        "account_id": spec.account_id,
        "equity": q(equity),
        "cash": q(cash),
        "notional": q(notional),
        "total_shares": fmt(eng.wf.total_shares, SHARE_DECIMALS),
        "max_leverage": spec.max_leverage,
        "max_notional": q(spec.max_notional_quote_q),
        "withdrawal_delay_ns": spec.withdrawal_delay_ns,
    }


def funds_view(eng: Engine) -> dict[str, Any]:
    return {
        "funds": [{"fund": k, "balance": q(v)} for k, v in sorted(eng.wf.funds.items())],
        "socialized_loss": q(eng.socialized_q),
    }


def risk_parameters(eng: Engine) -> dict[str, Any]:
    return {"config": Scales(eng.cfg).render_config(eng.cfg.to_dict())}


__all__ = ["FieldError", "NotFound"]


# --- options and portfolio margin ------------------------------------------------------------------------


def _dec(x: float, places: int = 8) -> str:
    """A float risk figure as a fixed-point decimal string (never a JSON float, never exponent notation)."""
    import math
    from decimal import ROUND_HALF_EVEN, Decimal

    if not math.isfinite(x):
        return "0"
    d = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def option_markets_view(eng: Engine) -> list[dict[str, Any]]:
    out = []
    for s in eng.opt.series:
        spec = s.spec
        index = eng.index_q.get(spec.underlying)
        pt = eng.opt.vols.get((spec.underlying, spec.expiry_ns, spec.strike_price_q))
        g = None
        if index is not None and pt is not None and s.settled_price_q is None:
            t = max(year_fraction(eng.now_ns, spec.expiry_ns), 0.0)
            g = black76_greeks(index / 10**PRICE_DECIMALS, spec.strike_price_q / 10**PRICE_DECIMALS, t, pt[0] / 1e6,
                               1.0, spec.is_call)  # fmt: skip
        out.append(
            {
                "symbol": spec.symbol,
                "underlying": spec.underlying,
                "right": spec.right,
                "strike": fmt(spec.strike_price_q, PRICE_DECIMALS),
                "expiry_ns": spec.expiry_ns,
                "size_decimals": spec.size_decimals,
                "index_price": px(index),
                "mark_vol": fmt(pt[0], 6) if pt else None,
                "mark_vol_ts_ns": pt[1] if pt else None,
                "mark_price": _dec(float(g.price)) if g else None,
                "delta": _dec(float(g.delta)) if g else None,
                "gamma": _dec(float(g.gamma), 12) if g else None,
                "vega": _dec(float(g.vega)) if g else None,
                "theta": _dec(float(g.theta) / 365) if g else None,
                "open_interest": fmt(s.long_oi_base_q, spec.size_decimals),
                "settled": s.settled_price_q is not None,
                "settlement_price": px(s.settled_price_q),
            }
        )
    return out


def option_market_view(eng: Engine, symbol: str) -> dict[str, Any]:
    for v in option_markets_view(eng):
        if v["symbol"] == symbol:
            return v
    raise NotFound(f"unknown option series {symbol!r}")


def vol_surface_view(eng: Engine, underlying: str) -> dict[str, Any]:
    if underlying not in eng.markets_of_asset:
        raise NotFound(f"unknown underlying {underlying!r}")
    pol = eng.cfg.policy(underlying)
    points = [
        {
            "expiry_ns": x,
            "strike": fmt(k, PRICE_DECIMALS),
            "vol": fmt(v, 6),
            "ts_ns": t,
            "source": src,
            "stale": orc.staleness(eng.now_ns, t, pol) != orc.Validity.VALID,
        }
        for (a, x, k), (v, t, src) in sorted(eng.opt.vols.items())
        if a == underlying
    ]
    return {"underlying": underlying, "now_ns": eng.now_ns, "points": points}


def portfolio_view(eng: Engine, account_id: int) -> dict[str, Any]:
    """Scenario matrix (which scenario is worst, by how much) and Greeks per position and in total."""
    r = row_of(eng, account_id)
    f = eng.opt.figures(r)
    positions = []
    tot = [0.0, 0.0, 0.0, 0.0]
    for p in eng.positions_of(r):
        size = int(eng.pos_size[p])
        if not size or eng.pos_iso[p]:
            continue
        m = eng.markets[int(eng.pos_mkt[p])]
        delta = size / 10**m.spec.size_decimals
        tot[0] += delta
        positions.append({"market": m.spec.symbol, "kind": "perpetual", "size": fmt(size, m.spec.size_decimals),
                          "value": None, "delta": _dec(delta), "gamma": "0", "vega": "0", "theta": "0"})  # fmt: skip
    for v in f.options:
        sd = eng.opt.idx[v.symbol].spec.size_decimals
        theta_day = v.theta / 365
        for i, x in enumerate((v.delta, v.gamma, v.vega, theta_day)):
            tot[i] += x
        positions.append({"market": v.symbol, "kind": "option", "size": fmt(v.size_base_q, sd),
                          "value": q(v.value_quote_q), "delta": _dec(v.delta), "gamma": _dec(v.gamma, 12),
                          "vega": _dec(v.vega), "theta": _dec(theta_day)})  # fmt: skip
    unders = []
    params = eng.opt.params
    for a, res in sorted(f.results.items()):
        rows = [
            {"index": i, "kind": sc.kind, "spot_shock": _dec(sc.spot_shock, 6), "vol_shock": sc.vol_shock.value,
             "dampening": _dec(sc.dampening, 9), "pnl": _dec(res.scenario_pnls_quote[i], 6)}
            for i, sc in enumerate(params.scenarios)
        ]  # fmt: skip
        unders.append(
            {
                "underlying": a,
                "spot": px(eng.index_q.get(a)) or "0",
                "worst_kind": res.worst.kind,
                "worst_index": res.worst.index,
                "worst_pnl": _dec(res.worst.pnl_quote, 6),
                "maintenance_requirement": _dec(res.maintenance_requirement_quote, 6),
                "initial_requirement": _dec(res.initial_requirement_quote, 6),
                "scenarios": rows,
            }
        )
    pm_mode = int(eng.acct_mode[r]) == PORTFOLIO
    risk = eng.cross_risk(r)
    im = eng.cross_initial(r)
    return {
        "account_id": account_id,
        "margin_mode": MODE_NAMES[int(eng.acct_mode[r])],
        "valuation_blocked": (f.blocked or None) if pm_mode else None,
        "equity": q(risk.equity_quote_q),
        "maintenance_margin": q(risk.mm_quote_q),
        "initial_margin": q(im),
        "health": q(risk.health_quote_q),
        "positions": positions,
        "total": {"delta": _dec(tot[0]), "gamma": _dec(tot[1], 12), "vega": _dec(tot[2]), "theta": _dec(tot[3])},
        "underlyings": unders,
        "now_ns": eng.now_ns,
    }


def option_fill_event(eng: Engine, account_id: int, body: Any, ts: int) -> ev.TradeFilled:
    s = eng.opt.idx[body.market]
    return ev.TradeFilled(
        ts,
        account_id,
        body.market,
        to_quantums(body.size, s.spec.size_decimals, "size", positive=True, signed=True),
        to_quantums(body.price, PRICE_DECIMALS, "price", positive=True),
        to_quantums(body.fee, QUOTE_DECIMALS, "fee"),
        body.margin_mode,
        body.leverage,
        to_quantums(body.isolated_margin, QUOTE_DECIMALS, "isolated_margin"),
    )
