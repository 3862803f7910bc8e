"""Unit helpers, the test venues and a readable engine driver (:class:`Desk`) for scenario tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

import numpy as np

from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS
from fluidmargin.engine import BucketRisk, Engine
from fluidmargin.model import events as ev
from fluidmargin.model.config import BackstopSpec, EngineConfig
from fluidmargin.model.instruments import AuctionSpec, ImpactSpec, LiquidationPolicy
from fluidmargin.sim.venues import perp_venue, waterfall_venue

# --- units ---------------------------------------------------------------------------------------

NS = 10**9  # ns per second
HOUR = 3600 * NS
DAY = 24 * HOUR
YEAR = 365 * DAY


def usd(x: str | int) -> int:
    """Quote quantums (1e-6 USD) of a decimal amount of USD."""
    return int(Decimal(str(x)) * 10**QUOTE_DECIMALS)


def px(x: str | int) -> int:
    """Price quantums (1e-8 USD per whole base unit)."""
    return int(Decimal(str(x)) * 10**PRICE_DECIMALS)


def base(x: str | int, decimals: int = 8) -> int:
    """Size quantums of a decimal amount of base asset (perp_venue markets use 8 decimals)."""
    return int(Decimal(str(x)) * 10**decimals)


WSTETH_DECIMALS = next(c.decimals for c in perp_venue(yield_collateral=True).collateral if c.symbol == "wstETH")


def wsteth(x: str | int | Decimal) -> int:
    """wstETH quantums (at the venue's decimals)."""
    return int(Decimal(str(x)) * 10**WSTETH_DECIMALS)


# --- venues --------------------------------------------------------------------------------------

VENUES: dict[str, Callable[[], EngineConfig]] = {
    "binance": lambda: perp_venue(("BTC", "ETH")),
    "binance-yield": lambda: perp_venue(("BTC", "ETH"), yield_collateral=True),
    "hyperliquid": lambda: perp_venue(("BTC", "ETH"), preset="hyperliquid"),
    "dydx": lambda: perp_venue(("BTC", "ETH"), preset="dydx"),
    "drift": lambda: perp_venue(("BTC", "ETH"), preset="drift"),
    # a small insurance fund: bankruptcies soon socialise losses
    "binance-small-fund": lambda: perp_venue(("BTC", "ETH"), insurance_fund_usd=50),
    "binance-partial": lambda: perp_venue(("BTC", "ETH"), liquidation="partial"),
    "binance-partial-capped": lambda: dataclasses.replace(
        perp_venue(("BTC", "ETH"), liquidation="partial"), liquidation_max_notional_quote_q=2_000 * 10**6
    ),
    "binance-breaker": lambda: dataclasses.replace(perp_venue(("BTC", "ETH")), breaker_band_ppm=50_000),
    # half of the cross unrealised profit counts toward withdrawals (the default counts none)
    "binance-upnl-half": lambda: dataclasses.replace(perp_venue(("BTC", "ETH")), withdraw_upnl_weight_ppm=500_000),
    # the waterfall: BTC auctions behind a backstop vault, ETH impact with its own fund, batched
    "waterfall": lambda: dataclasses.replace(
        waterfall_venue(insurance_fund_usd=200),
        backstop=BackstopSpec(max_notional_quote_q=usd(200_000), max_leverage=5, withdrawal_delay_ns=600 * NS),
        liquidation_max_account_notional_quote_q=usd(150_000),
    ),
    # the exact mass-liquidation kernels on every evaluation (from 1 bucket, not 256)
    "kernel-partial": lambda: dataclasses.replace(
        waterfall_venue(insurance_fund_usd=200), backstop=BackstopSpec(), mass_close_min=1
    ),
    "kernel-small-fund": lambda: dataclasses.replace(
        perp_venue(("BTC", "ETH"), insurance_fund_usd=50), mass_close_min=1
    ),
    # auctions one by one (linear and stair-step), a book-depth impact model, a tiny fund: ADL
    "auction-adl": lambda: perp_venue(
        ("BTC", "ETH"),
        insurance_fund_usd=20,
        policies={
            "BTC": LiquidationPolicy(execution="auction", auction=AuctionSpec(curve="linear", tail_s=120, tau_s=600)),
            "ETH": LiquidationPolicy(
                execution="impact",
                impact=ImpactSpec("book", book=((0, 10**7), (2_000, 10**8), (10_000, 10**9))),
            ),
        },
    ),
    # no ADL and a small fund: shortfalls are socialised, explicitly
    "no-adl": lambda: perp_venue(
        ("BTC", "ETH"),
        insurance_fund_usd=50,
        policies={a: LiquidationPolicy(adl=False) for a in ("BTC", "ETH")},
    ),
}

START_PRICES = {"BTC": px(50_000), "ETH": px(3_000)}


# --- a readable driver for scenario tests ------------------------------------------------------------


class Desk:
    """One engine plus a clock: ``desk.apply(event)`` returns the outputs (without the input).

    Helpers stamp events at ``desk.t`` and advance it by ``step_ns`` (one millisecond), so a
    scenario reads as a list of actions. ``desk.records`` keeps every ``(seq, event)`` returned.
    """

    def __init__(self, cfg: EngineConfig, screen: str = "incremental", t0: int = NS, step_ns: int = 10**6) -> None:
        self.cfg = cfg
        self.eng = Engine(cfg, screen)
        self.t = t0
        self.step_ns = step_ns
        self.records: list[tuple[int, ev.Event]] = []

    def tick(self, dt_ns: int | None = None) -> int:
        self.t += self.step_ns if dt_ns is None else dt_ns
        return self.t

    def apply(self, event: ev.Event) -> list[ev.Event]:
        recs = self.eng.apply(event)
        self.records.extend(recs)
        return [e for _, e in recs[1:]]

    def open(self, account_id: int, usd_amount: str | int = 0) -> list[ev.Event]:
        out = self.apply(ev.AccountOpened(self.tick(), account_id))
        if usd_amount:
            out += self.deposit(account_id, usd(usd_amount))
        return out

    def deposit(self, account_id: int, amount_q: int, asset: str = "USD") -> list[ev.Event]:
        return self.apply(ev.Deposited(self.tick(), account_id, asset, amount_q))

    def withdraw(self, account_id: int, amount_q: int, asset: str = "USD") -> list[ev.Event]:
        return self.apply(ev.WithdrawalRequested(self.tick(), account_id, asset, amount_q))

    def price(self, asset: str, text: str, source: str = "s1", **kw: int) -> list[ev.Event]:
        return self.apply(ev.PriceObserved(self.tick(), source, asset, text, **kw))

    def fill(self, account_id: int, market: str, size_base_q: int, price_q: int, **kw: object) -> list[ev.Event]:
        return self.apply(ev.TradeFilled(self.tick(), account_id, market, size_base_q, price_q, **kw))  # type: ignore[arg-type]

    def pair(self, buyer: int, seller: int, market: str, size_base_q: int, price_q: int, **kw: object) -> None:
        """A paired fill: ``buyer`` gets +size and ``seller`` -size at the same price and time."""
        ts = self.tick()
        for who, s in ((buyer, size_base_q), (seller, -size_base_q)):
            out = self.apply(ev.TradeFilled(ts, who, market, s, price_q, **kw))  # type: ignore[arg-type]
            rejected = [o for o in out if isinstance(o, ev.InputRejected)]
            assert not rejected, f"setup fill rejected: {rejected}"

    def clock(self, dt_ns: int) -> list[ev.Event]:
        return self.apply(ev.ClockAdvanced(self.tick(dt_ns)))

    def clock_to(self, ts_ns: int) -> list[ev.Event]:
        self.t = ts_ns
        return self.apply(ev.ClockAdvanced(ts_ns))

    def settle(self, account_id: int) -> list[ev.Event]:
        return self.apply(ev.FundingSettleRequested(self.tick(), account_id))

    def row(self, account_id: int) -> int:
        r = self.eng.row(account_id)
        assert r is not None
        return r

    def pos(self, account_id: int, market: str) -> int:
        p = self.eng.find_pos(self.row(account_id), self.eng.market_idx[market].i)
        assert p >= 0
        return p

    def cross(self, account_id: int) -> BucketRisk:
        return self.eng.cross_risk(self.row(account_id))

    def status(self, account_id: int) -> int:
        return int(self.eng.status[self.row(account_id)])


def state_diff(a: object, b: object, path: str = "") -> list[str]:
    """Paths where two ``Engine.state_dict()`` values differ (empty when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in state_diff(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(isinstance(x, dict) for x in a):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in state_diff(x, y, f"{path}[{i}]")]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        same = isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and (a == b).all()
        return [] if same else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def of_type(out: list[ev.Event], cls: type) -> list:
    return [e for e in out if isinstance(e, cls)]


def without_funding(cfg: EngineConfig) -> EngineConfig:
    """The same venue with a zero interest rate: with mark == index no funding accrues, so
    scenario arithmetic is exact to the quantum however much event time passes."""
    return replace(cfg, markets=tuple(replace(m, funding=replace(m.funding, interest_e9=0)) for m in cfg.markets))
