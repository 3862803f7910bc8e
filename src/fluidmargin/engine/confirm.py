"""Exact confirmation: flagged buckets judged in integers and driven through the liquidation state machine.

Owns :meth:`Confirm.evaluate`, the one place a status changes: each flagged bucket's exact risk
(many at once by :mod:`fluidmargin.engine.batch`), its transition, the liquidation of breaches (worst
first; mass closes first when there are many), a re-check of what a liquidation touched on the side
(ADL counterparties, the vault), and finally the waterfall's execution of what the protocol took over.
It also holds the liquidator (the sizing protocol, set from the config) and the benchmarks' decision hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fluidmargin.engine.batch import Batch
from fluidmargin.engine.book import Book
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options import OptionBook
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.ports import SizingHost
from fluidmargin.engine.screen import Screen
from fluidmargin.engine.state import BANKRUPT, HEALTHY, LIQUIDATING, STATUS_NAMES, Trigger, transition
from fluidmargin.engine.types import ISO_BUCKET, PORTFOLIO, Breach, Bucket, BucketRisk
from fluidmargin.engine.waterfall import Liquidator, Waterfall
from fluidmargin.model import events as ev
from fluidmargin.risk.perp import oracle as orc
from fluidmargin.risk.perp.kernels import ACCT_STATUS


class Confirm:
    """Exact confirmation and the state machine; ``host`` is what the liquidator works on."""

    def __init__(
        self,
        led: Ledger,
        oracles: OracleState,
        book: Book,
        screen: Screen,
        batch: Batch,
        wf: Waterfall,
        opt: OptionBook,
        host: SizingHost,
        liquidator: Liquidator,
    ) -> None:
        self.led = led
        self.oracles = oracles
        self.book = book
        self.screen = screen
        self.batch = batch
        self.wf = wf
        self.opt = opt
        self.host = host
        self.liquidator = liquidator
        self.pending: list[Bucket] = []  # buckets a liquidation touched on the side (ADL, backstop)
        # called once breaches are confirmed, before they are executed; for instrumentation only
        self.decision_hook: Callable[[], None] | None = None

    def recheck(self, buckets: Iterable[Bucket]) -> None:
        """Confirm ``buckets`` again once the liquidations under way are done (ADL, backstop)."""
        self.pending.extend(buckets)

    def set_status(self, b: Bucket, new: int, health: int, out: list[ev.Event]) -> None:
        led = self.led
        old = led.status_of(b)
        if old == new:
            return
        if b.pos < 0:
            led.status[b.row] = new
            led.acct_f[b.row, ACCT_STATUS] = new
        else:
            led.pos_status[b.pos] = new
        name = "cross" if b.pos < 0 else ISO_BUCKET + led.markets[int(led.pos_mkt[b.pos])].spec.symbol
        out.append(
            ev.AccountStatusChanged(
                led.now_ns, int(led.acct_id[b.row]), name, STATUS_NAMES[old], STATUS_NAMES[new], health
            )
        )

    def evaluate(self, flagged: Iterable[Bucket], out: list[ev.Event]) -> None:
        """Confirm flagged buckets exactly, move them through the state machine, liquidate breaches,
        then execute what the protocol took over (netted per market when batching).

        Breaches are handled worst first, then larger maintenance first, then account id. Buckets a
        liquidation touched on the side (ADL counterparties, the vault) are confirmed right after.
        """
        self._evaluate_once(flagged, out)
        for _ in range(8):
            if not self.pending:
                break
            again, self.pending = self.pending, []
            self._evaluate_once(again, out)
        self.wf.flush(out)

    def _evaluate_once(self, flagged: Iterable[Bucket], out: list[ev.Event]) -> None:
        led, book, opt, batch = self.led, self.book, self.opt, self.batch
        band_trigger, set_status, blocked = self.screen.band_trigger, self.set_status, self.oracles.blocked
        cands = sorted(set(flagged))  # by row, then position (a Bucket is a tuple)
        breaches: list[Breach] = []
        known: dict[Bucket, BucketRisk] = {}
        batch.simple_pos = {}
        if len(cands) >= led.cfg.mass_close_min:
            cands = batch.confirm_simple(cands, breaches, known)
        for b in cands:
            if b.pos >= 0 and led.pos_size[b.pos] == 0:
                continue
            if b.pos < 0 and led.acct_mode[b.row] == PORTFOLIO and opt.update_blocked(b.row, out):
                continue  # cannot be valued: no decision on it until it can (see engine.options)
            risk = known.get(b) or book.bucket_risk(b)
            h = risk.health_quote_q
            st = led.status_of(b)
            if h < 0 and book.has_positions(b) and not blocked(book.bucket_assets(b), orc.Action.LIQUIDATE):
                breaches.append((h, -risk.mm_quote_q, int(led.acct_id[b.row]), b))
                continue
            trig = Trigger.BREACH_BLOCKED if h < 0 and book.has_positions(b) else band_trigger(st, risk)
            if st == BANKRUPT and trig == Trigger.OK and risk.equity_quote_q <= 0:
                continue
            new = transition(st, trig)
            set_status(b, new, h, out)
        breaches.sort()  # worst health, then larger maintenance, then account id, then bucket
        if self.decision_hook is not None:
            self.decision_hook()  # breaches found and confirmed; execution follows (benchmarks time this)
        breached = {t[3].row for t in breaches}
        resync = self.screen.resync
        for r in sorted({b.row for b in cands} - breached):
            resync(r)  # its class was in doubt: no position may keep an unapplied budget
        if len(breaches) >= led.cfg.mass_close_min and batch.simple_pos:
            breaches = batch.mass_close(breaches, out, self.liquidator)
        for _h, _mm, _aid, b in breaches:
            self._liquidate(b, out)

    def _liquidate(self, b: Bucket, out: list[ev.Event]) -> None:
        """Liquidate breached bucket ``b`` (unless an earlier close in this batch cured it) and settle its status."""
        led, book = self.led, self.book
        band_trigger, set_status = self.screen.band_trigger, self.set_status
        now = book.bucket_risk(b)
        if now.health_quote_q >= 0 or not book.has_positions(b):
            # an earlier liquidation in this batch (an isolated bucket releasing margin) cured it
            trig = band_trigger(led.status_of(b), now)
            set_status(b, transition(led.status_of(b), trig), now.health_quote_q, out)
            self.screen.resync(b.row)
            return
        set_status(b, transition(led.status_of(b), Trigger.BREACH), now.health_quote_q, out)
        if b.pos < 0 and led.acct_mode[b.row] == PORTFOLIO:
            self.opt.liquidate(b, out)  # full revaluation, largest contributor first, then delta hedge
        else:
            self.liquidator.liquidate(self.host, b, out)
        self.screen.resync(b.row)
        risk = book.bucket_risk(b)
        if b.pos >= 0 and led.pos_size[b.pos] == 0:
            set_status(b, transition(LIQUIDATING, Trigger.CLOSED), 0, out)
            return
        has_positions = book.has_positions(b)
        if risk.equity_quote_q <= 0 and not has_positions:
            trig = Trigger.BANKRUPT
        elif risk.health_quote_q >= 0:
            trig = Trigger.RESTORED if band_trigger(HEALTHY, risk) == Trigger.OK else Trigger.RESTORED_AT_RISK
        elif has_positions:
            trig = Trigger.CONTINUES  # a capped partial close: the rest follows on later events
        else:
            trig = Trigger.BANKRUPT
        set_status(b, transition(LIQUIDATING, trig), risk.health_quote_q, out)
