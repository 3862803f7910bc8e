"""The account and collateral book, read side: what an account, a position or a bucket is worth now.

Owns the exact valuation every decision uses: collateral at its weighted price (yield-bearing tokens
at their fair rate, haircut on a de-peg), a position's risk and initial margin, cross and isolated
buckets (a portfolio account's from the option book), what counts toward a withdrawal, and the
checks that refuse moving collateral (unknown target, blocked oracle or valuation). Nothing here
changes state; the inputs that do are :mod:`fluidmargin.engine.accounts`.
"""

from __future__ import annotations

from fluidmargin.core.units import MAX_QUANTUMS, PPM, PRICE_DECIMALS, QUOTE_DECIMALS, Rounding, div_round
from fluidmargin.engine.funding import Funding
from fluidmargin.engine.ledger import Ledger
from fluidmargin.engine.options import OptionBook
from fluidmargin.engine.oracles import OracleState
from fluidmargin.engine.state import HEALTHY, STATUS_NAMES
from fluidmargin.engine.types import PORTFOLIO, YEAR_NS, Bucket, BucketRisk
from fluidmargin.model.instruments import CollateralAsset
from fluidmargin.risk.perp import margin
from fluidmargin.risk.perp import oracle as orc


class Book:
    """Exact valuation of collateral, positions and buckets, over the ledger."""

    def __init__(self, led: Ledger, oracles: OracleState, funding: Funding, opt: OptionBook) -> None:
        self.led = led
        self.oracles = oracles
        self.funding = funding
        self.opt = opt

    # --- collateral -------------------------------------------------------------------------------

    def collateral_value_quote_q(self, c: int, amount_q: int) -> int:
        """Weighted value of ``amount_q`` of collateral ``c`` in quote quantums, rounded down."""
        spec = self.led.coll[c]
        if c == self.led.quote_c:
            return amount_q
        if amount_q <= 0:
            # only the quote asset can be negative; any other debt counts at full weight, rounded up
            return -self._raw_value(spec, -amount_q, Rounding.CEIL)
        raw = self._raw_value(spec, amount_q, Rounding.FLOOR)
        return div_round(raw * spec.weight_ppm * self._depeg_weight_ppm(spec), PPM * PPM, Rounding.FLOOR)

    def _token_price_q(self, spec: CollateralAsset) -> int | None:
        """Price of one whole token (price quantums): fair yield rate x base, capped at the market."""
        index_q = self.oracles.index_q
        ys = spec.yield_spec
        if ys is None:
            return index_q.get(spec.price_asset or "")
        base = index_q.get(ys.base_asset)
        if base is None:
            return None
        fair = div_round(base * self._yield_rate_e18(spec), 10**18, Rounding.FLOOR)
        market = index_q.get(spec.price_asset or "") if spec.price_asset else None
        return fair if market is None else min(fair, market)

    def _yield_rate_e18(self, spec: CollateralAsset) -> int:
        ys = spec.yield_spec
        assert ys is not None
        dt = max(0, self.led.now_ns - ys.t0_ns)
        return div_round(ys.rate0_e18 * (PPM * YEAR_NS + ys.apr_ppm * dt), PPM * YEAR_NS, Rounding.FLOOR)

    def _depeg_weight_ppm(self, spec: CollateralAsset) -> int:
        ys = spec.yield_spec
        if ys is None or not spec.price_asset:
            return PPM
        base = self.oracles.index_q.get(ys.base_asset)
        market = self.oracles.index_q.get(spec.price_asset)
        if base is None or market is None:
            return PPM
        fair = div_round(base * self._yield_rate_e18(spec), 10**18, Rounding.FLOOR)
        if fair > 0 and (fair - market) * PPM > ys.depeg_threshold_ppm * fair:
            return PPM - ys.depeg_haircut_ppm
        return PPM

    def _raw_value(self, spec: CollateralAsset, amount_q: int, rounding: Rounding) -> int:
        price = self._token_price_q(spec)
        if price is None:
            return 0
        return div_round(amount_q * price, 10 ** (spec.decimals + PRICE_DECIMALS - QUOTE_DECIMALS), rounding)

    # --- positions and buckets ----------------------------------------------------------------------

    def position_risk(self, p: int) -> margin.PositionRisk:
        led = self.led
        m = led.markets[int(led.pos_mkt[p])]
        if m.mark_q is None:
            return margin.PositionRisk(0, 0, -int(led.pos_cost[p]), 0)
        return margin.position_risk(
            m.spec.margin,
            int(led.pos_size[p]),
            int(led.pos_cost[p]),
            self.funding.owed(p),
            m.mark_q,
            m.spec.size_decimals,
        )

    def position_initial(self, p: int) -> int:
        led = self.led
        m = led.markets[int(led.pos_mkt[p])]
        size = int(led.pos_size[p])
        if size == 0 or m.mark_q is None:
            return 0
        notional = margin.value_quote_q(abs(size), m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        oi = margin.value_quote_q(m.long_oi_base_q, m.mark_q, m.spec.size_decimals, Rounding.CEIL)
        return margin.initial_quote_q(m.spec.margin, notional, int(led.pos_lev[p]), abs(size), m.spec.size_decimals, oi)

    def valuation_blocked(self, r: int) -> str:
        """Why portfolio account ``r`` cannot be valued now (empty if it can, or is not a portfolio)."""
        if self.led.acct_mode[r] != PORTFOLIO:
            return ""
        why = self.opt.figures(r).blocked
        return f"valuation blocked: {why}" if why else ""

    def has_cross_perps(self, r: int) -> bool:
        led = self.led
        return any(led.pos_size[p] and not led.pos_iso[p] for p in led.positions_of(r))

    def has_positions(self, b: Bucket) -> bool:
        """Whether bucket ``b`` holds anything to close (perpetuals, or a portfolio's options)."""
        if b.pos >= 0:
            return bool(self.led.pos_size[b.pos])
        return self.has_cross_perps(b.row) or self.opt.has_positions(b.row)

    def cross_risk(self, r: int) -> BucketRisk:
        led = self.led
        if led.acct_mode[r] == PORTFOLIO:
            f = self.opt.figures(r)
            return BucketRisk(f.equity_quote_q, f.mm_quote_q)
        bal = led.bal
        eq = sum(self.collateral_value_quote_q(c, int(bal[r, c])) for c in range(len(led.coll)))
        mm = 0
        pos_iso, pos_size = led.pos_iso, led.pos_size
        for p in led.positions_of(r):
            if pos_iso[p] or pos_size[p] == 0:
                continue
            pr = self.position_risk(p)
            eq += pr.upnl_quote_q
            mm += pr.mm_quote_q
        return BucketRisk(eq, mm)

    def cross_initial(self, r: int) -> int:
        led = self.led
        if led.acct_mode[r] == PORTFOLIO:
            return self.opt.figures(r).im_quote_q
        return sum(self.position_initial(p) for p in led.positions_of(r) if not led.pos_iso[p])

    def iso_risk(self, p: int) -> BucketRisk:
        pr = self.position_risk(p)
        return BucketRisk(int(self.led.pos_iso_margin[p]) + pr.upnl_quote_q, pr.mm_quote_q)

    def bucket_risk(self, b: Bucket) -> BucketRisk:
        return self.cross_risk(b.row) if b.pos < 0 else self.iso_risk(b.pos)

    def cross_assets(self, r: int) -> list[str]:
        """The assets whose prices move account ``r``'s cross bucket (positions, collateral, options)."""
        led = self.led
        out = {led.markets[int(led.pos_mkt[p])].spec.base_asset for p in led.positions_of(r) if led.pos_size[p]}
        for c, spec in enumerate(led.coll):
            if c != led.quote_c and led.bal[r, c] != 0:
                if spec.price_asset:
                    out.add(spec.price_asset)
                if spec.yield_spec:
                    out.add(spec.yield_spec.base_asset)
        out |= self.opt.assets_of(r)
        return sorted(out)

    def bucket_assets(self, b: Bucket) -> list[str]:
        if b.pos >= 0:
            return [self.led.markets[int(self.led.pos_mkt[b.pos])].spec.base_asset]
        return self.cross_assets(b.row)

    # --- withdrawals ----------------------------------------------------------------------------------

    @staticmethod
    def check_amount(amount: int) -> str:
        if isinstance(amount, bool) or not isinstance(amount, int):
            return "amount must be an integer number of quantums"
        if amount <= 0:
            return "amount must be positive"
        if amount > MAX_QUANTUMS // 4:
            return f"amount {amount} is too large (would overflow)"
        return ""

    def transfer_target(self, account_id: int, asset: str, amount_q: int) -> tuple[int, int] | str:
        """(row, collateral index) of a deposit or withdrawal, or why it is refused."""
        led = self.led
        r = led.row_of.get(account_id)
        if r is None:
            return f"unknown account {account_id}"
        if led.is_vault(account_id):
            return "the backstop vault moves collateral only through vault deposits and claims"
        c = led.coll_idx.get(asset)
        if c is None:
            return f"unknown collateral asset {asset!r}"
        return self.check_amount(amount_q) or (r, c)

    def withdrawal_blocked(self, r: int) -> str:
        """Why account row ``r`` may not withdraw now, whatever the amount (empty: it may)."""
        st = self.led.status[r]
        if st not in (HEALTHY,):
            return f"account is {STATUS_NAMES[int(st)]}"
        return self.oracles.blocked(self.cross_assets(r), orc.Action.OPEN) or self.valuation_blocked(r)

    def withdrawal_headroom_quote_q(self, r: int) -> int:
        """Cross equity that counts toward a withdrawal less initial margin (``margin.withdrawal_headroom_quote_q``).

        Cross perpetuals' price profit counts at ``withdraw_upnl_weight_ppm``; losses, funding owed,
        collateral and option values in full. Isolated positions hold their margin and their P&L in
        their own buckets: neither counts here (nor does their margin sit in the balance).
        """
        led = self.led
        pnl = []
        for p in led.positions_of(r):
            if led.pos_size[p] and not led.pos_iso[p]:
                pnl.append(self.position_risk(p).value_quote_q - int(led.pos_cost[p]))
        fixed = self.cross_risk(r).equity_quote_q - sum(pnl)  # collateral - funding owed (+ option values)
        w = led.cfg.withdraw_upnl_weight_ppm
        return margin.withdrawal_headroom_quote_q(fixed, pnl, self.cross_initial(r), w)

    def withdrawable_quote_q(self, r: int) -> int:
        """How much of the quote asset account row ``r`` may withdraw now (the engine's own check, read-only)."""
        if self.withdrawal_blocked(r):
            return 0
        return max(0, min(self.withdrawal_headroom_quote_q(r), int(self.led.bal[r, self.led.quote_c])))
