"""Prices: what oracle prints, operators and the clock do to the market state, and the tick that follows.

Owns the inputs ``PriceObserved`` (classify, re-anchor on a consistent new level, aggregate the sources,
set divergent ones aside), ``OracleReanchorRequested``, ``MarketHaltRequested`` / ``MarketResumeRequested``,
``LastTradeObserved``, ``FundingRatePublished`` and ``ClockAdvanced``; the circuit breaker and the
automatic halts; and the life of a tick on a new index: funding accrued, marks set, the float screen
run (perpetuals, collateral, portfolio accounts), exact confirmation, stale auctions polled.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import MAX_QUANTUMS, NS_PER_S, PRICE_DECIMALS, Rounding, parse_decimal
from fluidmargin.engine.confirm import Confirm
from fluidmargin.engine.funding import Funding
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options import OptionBook
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.state import LIQUIDATING
from fluidmargin.engine.types import DIVERGENCE_HALT, MANUAL_HALT, RANGE_HALT, Bucket
from fluidmargin.engine.waterfall import Waterfall
from fluidmargin.model import events as ev
from fluidmargin.risk.liquidation import breaker
from fluidmargin.risk.perp import funding as fnd
from fluidmargin.risk.perp import oracle as orc


class Prices:
    """Oracle, halt, funding-rate and clock inputs, and the tick each new index causes."""

    def __init__(
        self,
        led: Ledger,
        oracles: OracleState,
        funding: Funding,
        screen: Screen,
        confirm: Confirm,
        opt: OptionBook,
        wf: Waterfall,
    ) -> None:
        self.led = led
        self.oracles = oracles
        self.funding = funding
        self.screen = screen
        self.confirm = confirm
        self.opt = opt
        self.wf = wf

    def on_price_observed(self, e: ev.PriceObserved, out: list[ev.Event]) -> str:
        led, ora = self.led, self.oracles
        if e.asset not in led.markets_of_asset:
            return f"unknown asset {e.asset!r}"
        if not isinstance(e.price, str):
            return "price must be decimal text"
        pol = led.cfg.policy(e.asset)
        key = (e.asset, e.source)
        last = ora.src_last.get(key)
        was_open = not ora.blocked([e.asset], orc.Action.LIQUIDATE)
        window = self._jump_window(e.asset, pol)
        cl = orc.classify(
            e.price, e.confidence_ppm, e.ts_ns, last[1] if last else None, ora.index_q.get(e.asset), pol, window
        )
        if cl.validity == orc.Validity.TOO_VOLATILE and cl.price_q is not None:
            pend = orc.reanchor_step(ora.reanchor.get(e.asset), e.source, cl.price_q, e.ts_ns, pol)
            if not orc.reanchor_ready(pend, led.now_ns, pol):
                ora.reanchor[e.asset] = pend
                out.append(ev.OraclePriceRejected(e.ts_ns, e.source, e.asset, e.price, f"TOO_VOLATILE: {cl.reason}"))
                return ""
            self._adopt(e.asset, pend, out)
        elif cl.validity != orc.Validity.VALID:
            out.append(ev.OraclePriceRejected(e.ts_ns, e.source, e.asset, e.price, f"{cl.validity.name}: {cl.reason}"))
            return ""
        else:
            assert cl.price_q is not None
            ora.src_last[key] = (cl.price_q, e.ts_ns)
            ora.reanchor.pop(e.asset, None)  # the sources still print within the limit: no new level
        self._reindex(e, was_open, out)
        return ""

    def _jump_window(self, asset: str, pol: Any) -> list[int]:
        """The index samples the jump limit holds against besides the last index."""
        led, ora = self.led, self.oracles
        if not pol.jump_window_ns:
            return []
        cut = led.now_ns - pol.jump_window_ns
        return [p for t, p in ora.index_hist.get(asset, ()) if t >= cut]

    def _reindex(self, e: ev.PriceObserved, was_open: bool, out: list[ev.Event]) -> None:
        """Aggregate the sources after a print: a new index (marked, re-margined), a divergence, or none."""
        led, ora = self.led, self.oracles
        asset = e.asset
        agg = orc.aggregate_sources(ora.fresh_sources(asset), ora.index_q.get(asset), led.cfg.policy(asset))
        if agg.index_q is None or (agg.validity != orc.Validity.VALID and e.source in agg.outliers):
            why = f"{agg.validity.name}: {agg.reason}"
            out.append(ev.OraclePriceRejected(e.ts_ns, e.source, e.asset, e.price, why))
        if agg.validity == orc.Validity.DIVERGENT:
            self._diverge(asset, agg.reason, out)
        else:
            ora.diverged.pop(asset, None)
        if agg.index_q is None:
            return
        ora.index_ts[asset] = e.ts_ns
        ora.index_n[asset] = agg.n_sources
        self._breaker(asset, agg.index_q, out)
        if ora.index_q.get(asset) != agg.index_q:
            ora.index_q[asset] = agg.index_q
            out.append(ev.IndexPriceUpdated(e.ts_ns, asset, agg.index_q))
            self._on_index(asset, out)
        elif not was_open and not ora.blocked([asset], orc.Action.LIQUIDATE):
            self._reopen(asset, out)  # the same price, now confirmed: liquidations wait no longer

    def _diverge(self, asset: str, why: str, out: list[ev.Event]) -> None:
        """Sources set aside for divergence: halt new risk, for at most the policy's divergence_halt_ns."""
        led, ora = self.led, self.oracles
        since = ora.diverged.setdefault(asset, led.now_ns)
        if led.now_ns - since < led.cfg.policy(asset).divergence_halt_ns:
            self._halt(asset, f"{DIVERGENCE_HALT} {why}", out)
        else:
            self._lift(asset, (DIVERGENCE_HALT,), out)

    def _adopt(self, asset: str, pend: orc.Pending, out: list[ev.Event]) -> None:
        """Re-anchor on a level the sources printed consistently: their prints become their prices."""
        led, ora = self.led, self.oracles
        for s, p, t in pend.sources:
            ora.src_last[(asset, s)] = (p, t)
        ora.anchor_ts[asset] = pend.first_ts_ns
        ora.index_hist[asset] = []
        del ora.reanchor[asset]
        why = f"{pend.count} consistent prints over {led.now_ns - pend.first_ts_ns} ns"
        out.append(ev.OracleReanchored(led.now_ns, asset, ora.index_q.get(asset, 0), pend.last_q, why))

    def on_reanchor_requested(self, e: ev.OracleReanchorRequested, out: list[ev.Event]) -> str:
        """An operator's new reference level: the index moves to it (and margins); liquidations wait for
        a quorum of sources printing near it (the jump limit now holds from it)."""
        led, ora = self.led, self.oracles
        if e.asset not in led.markets_of_asset:
            return f"unknown asset {e.asset!r}"
        if e.price == "":
            pend = ora.reanchor.get(e.asset)
            if pend is None:
                return f"no pending level to adopt for {e.asset}: give a price"
            price_q = pend.last_q
        else:
            try:
                price_q = parse_decimal(e.price, PRICE_DECIMALS, Rounding.FLOOR, "price")
            except ValidationError as exc:
                return f"price: {exc}"
            if not 0 < price_q <= MAX_QUANTUMS // 4:
                return "price must be positive (and within range)"
        was_open = not ora.blocked([e.asset], orc.Action.LIQUIDATE)
        old = ora.index_q.get(e.asset, 0)
        ora.reanchor.pop(e.asset, None)
        ora.diverged.pop(e.asset, None)
        ora.anchor_ts[e.asset] = led.now_ns
        ora.index_hist[e.asset] = [(led.now_ns, price_q)]
        ora.index_n[e.asset] = 0  # the operator's level margins; the sources make it liquidation-grade
        out.append(ev.OracleReanchored(led.now_ns, e.asset, old, price_q, f"{MANUAL_HALT} {e.reason}".strip()))
        self._lift(e.asset, (RANGE_HALT, DIVERGENCE_HALT), out)
        if old != price_q:
            ora.index_q[e.asset] = price_q
            out.append(ev.IndexPriceUpdated(led.now_ns, e.asset, price_q))
            self._on_index(e.asset, out)
        elif not was_open and not ora.blocked([e.asset], orc.Action.LIQUIDATE):
            self._reopen(e.asset, out)
        return ""

    def _oracle_clock(self, out: list[ev.Event]) -> None:
        """Time alone ends a divergence halt: the divergent source went stale, or the halt ran its time."""
        led, ora = self.led, self.oracles
        for asset in sorted(ora.diverged):
            pol = led.cfg.policy(asset)
            agg = orc.aggregate_sources(ora.fresh_sources(asset), ora.index_q.get(asset), pol)
            if agg.validity == orc.Validity.DIVERGENT and led.now_ns - ora.diverged[asset] < pol.divergence_halt_ns:
                continue
            if agg.validity != orc.Validity.DIVERGENT:
                del ora.diverged[asset]
            was_open = not ora.blocked([asset], orc.Action.LIQUIDATE)
            self._lift(asset, (DIVERGENCE_HALT,), out)
            if not was_open and not ora.blocked([asset], orc.Action.LIQUIDATE):
                self._reopen(asset, out)

    def _reopen(self, asset: str, out: list[ev.Event]) -> None:
        """Re-judge every account exposed to ``asset`` once its price became liquidation-grade again."""
        led = self.led
        touched: list[Bucket] = []
        for m in led.markets_of_asset[asset]:
            if m.mark_q is not None:
                touched.extend(self.screen.remargin_all(m))
        for c in led.coll_of_asset[asset]:
            touched.extend(self.screen.remargin_collateral(c))
        self.confirm.evaluate(self.opt.screen(asset, touched), out)

    def _breaker(self, asset: str, index_q: int, out: list[ev.Event]) -> None:
        """Circuit breaker on a valid index: halt the asset's markets when the range within the window
        exceeds the band; resume them once it is back within (and no source is set aside for divergence).

        The index history is kept with the band at 0 too, so a band switched on judges the next tick."""
        led, ora = self.led, self.oracles
        hist = ora.index_hist.setdefault(asset, [])
        hist.append((led.now_ns, index_q))
        keep = max(led.cfg.breaker_window_ns, led.cfg.policy(asset).jump_window_ns)
        k = bisect.bisect_left(hist, (led.now_ns - keep, -1))
        if k:
            del hist[:k]
        halted, why = (False, "")
        if led.cfg.breaker_band_ppm:
            halted, why = breaker.range_halt(hist, led.cfg.breaker_band_ppm, led.cfg.breaker_window_ns)
        if halted:
            self._halt(asset, why, out)
            return
        since = ora.diverged.get(asset)
        if since is None or led.now_ns - since >= led.cfg.policy(asset).divergence_halt_ns:
            self._lift(asset, (RANGE_HALT, DIVERGENCE_HALT), out)

    def _lift(self, asset: str, kinds: tuple[str, ...], out: list[ev.Event]) -> None:
        """Resume the asset's markets halted automatically for one of ``kinds`` (an operator's halt waits
        for the operator)."""
        led, ora = self.led, self.oracles
        for m in led.markets_of_asset[asset]:
            why = ora.halted.get(m.spec.symbol, "")
            if why.startswith(kinds):
                del ora.halted[m.spec.symbol]
                out.append(ev.MarketResumed(led.now_ns, m.spec.symbol))

    def on_halt_requested(self, e: ev.MarketHaltRequested, out: list[ev.Event]) -> str:
        led, ora = self.led, self.oracles
        m = led.market_idx.get(e.market)
        if m is None:
            return f"unknown market {e.market!r}"
        if ora.halted.get(e.market, "").startswith(MANUAL_HALT):
            return f"market {e.market} is already halted by an operator"
        ora.halted[e.market] = f"{MANUAL_HALT} {e.reason}".strip()
        out.append(ev.MarketHalted(led.now_ns, e.market, ora.halted[e.market]))
        return ""

    def on_resume_requested(self, e: ev.MarketResumeRequested, out: list[ev.Event]) -> str:
        led, ora = self.led, self.oracles
        if e.market not in led.market_idx:
            return f"unknown market {e.market!r}"
        if not ora.halted.get(e.market, "").startswith(MANUAL_HALT):
            return f"market {e.market} is not halted by an operator"
        del ora.halted[e.market]
        out.append(ev.MarketResumed(led.now_ns, e.market))
        return ""

    def _halt(self, asset: str, reason: str, out: list[ev.Event]) -> None:
        """Halt the asset's markets (an automatic halt of another kind takes the new reason; an
        operator's halt stays as it is)."""
        led, ora = self.led, self.oracles
        for m in led.markets_of_asset[asset]:
            old = ora.halted.get(m.spec.symbol)
            if old is None or (not old.startswith(MANUAL_HALT) and _halt_kind(old) != _halt_kind(reason)):
                ora.halted[m.spec.symbol] = reason
                out.append(ev.MarketHalted(led.now_ns, m.spec.symbol, reason))

    def _on_index(self, asset: str, out: list[ev.Event]) -> None:
        led, ora = self.led, self.oracles
        index = ora.index_q[asset]
        touched: list[Bucket] = []
        for m in led.markets_of_asset[asset]:
            self.funding.accrue(m)
            interval_ns = m.spec.funding.interval_s * NS_PER_S
            ttf = interval_ns - (led.now_ns % interval_ns)
            m.mark_q = orc.mark_price_q(
                m.spec.mark_rule, index, m.last_trade_q, m.rate_e9, ttf, m.spec.funding.interval_s
            )
            if m.spec.funding.source == "computed":
                m.rate_e9 = fnd.funding_rate_e9(fnd.premium_e9(m.mark_q, index), m.spec.funding)
            out.append(ev.MarkPriceUpdated(led.now_ns, m.spec.symbol, m.mark_q, m.rate_e9, m.fidx))
            touched.extend(self.screen.remargin(m))
        for c in led.coll_of_asset[asset]:
            touched.extend(self.screen.remargin_collateral(c))
        # portfolio accounts: the delta-gamma screen of engine.options decides which to revalue in full
        # (the float screen above knows only tiered maintenance)
        touched = self.opt.screen(asset, touched)
        self.confirm.evaluate(touched, out)
        if self.wf.auctions:
            self.wf.poll({m.i for m in led.markets_of_asset[asset]}, out)
            self.confirm.evaluate([], out)

    def on_last_trade(self, e: ev.LastTradeObserved, out: list[ev.Event]) -> str:
        led = self.led
        m = led.market_idx.get(e.market)
        if m is None:
            return f"unknown market {e.market!r}"
        if isinstance(e.price_q, bool) or not isinstance(e.price_q, int) or not 0 < e.price_q < MAX_QUANTUMS:
            return "price_q must be a positive integer"
        m.last_trade_q = e.price_q
        return ""

    def on_funding_rate(self, e: ev.FundingRatePublished, out: list[ev.Event]) -> str:
        led = self.led
        m = led.market_idx.get(e.market)
        if m is None:
            return f"unknown market {e.market!r}"
        if m.spec.funding.source != "published":
            return f"market {e.market} computes its own funding rate"
        if isinstance(e.rate_e9, bool) or not isinstance(e.rate_e9, int) or abs(e.rate_e9) > fnd.RATE_SCALE:
            return "rate_e9 must be an integer within ±100 %"
        touched = self.screen.accrue_pass(m)
        m.rate_e9 = fnd.clamp(e.rate_e9, -m.spec.funding.cap_e9, m.spec.funding.cap_e9)
        self.confirm.evaluate(touched, out)
        return ""

    def on_clock(self, e: ev.ClockAdvanced, out: list[ev.Event]) -> str:
        led, ora = self.led, self.oracles
        if ora.diverged:
            self._oracle_clock(out)
        touched: list[Bucket] = []
        for m in led.markets:
            if m.mark_q is None:
                continue
            self.funding.accrue(m)
            touched.extend(self.screen.remargin(m))
        for c, spec in enumerate(led.coll):
            if spec.yield_spec is not None:  # yield accrual (and a de-peg it causes) moves with time alone
                touched.extend(self.screen.remargin_collateral(c))
        # a capped liquidation waits for its next window, which time alone opens
        n, k = led.n_acc, led.n_pos
        touched.extend(Bucket(r) for r in np.flatnonzero(led.status[:n] == LIQUIDATING).tolist())
        iso = np.flatnonzero((led.pos_status[:k] == LIQUIDATING) & (led.pos_size[:k] != 0) & (led.pos_iso[:k] == 1))
        touched.extend(Bucket(int(led.pos_acct[p]), p) for p in iso.tolist())
        touched = self.opt.screen(None, touched)  # theta: options lose time value (screened, as on a tick)
        self.confirm.evaluate(touched, out)
        self.wf.poll(None, out)
        self.confirm.evaluate([], out)
        return ""


def _halt_kind(reason: str) -> str:
    """An automatic halt's kind (its reason's fixed opening): a halt of the same kind keeps its reason."""
    return next((k for k in (MANUAL_HALT, DIVERGENCE_HALT, RANGE_HALT) if reason.startswith(k)), reason)
