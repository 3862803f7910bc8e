"""Margin models (risk.margin over risk.presets): the liquidation price is where the bucket's
health (equity - maintenance, as ``position_risk`` computes it) crosses zero, rounded toward safety;
initial and maintenance margin round up; preset parameters mean what the venues publish."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import pytest

from fluidmargin.core.units import PPM, PRICE_SCALE, QUOTE_SCALE, Rounding
from fluidmargin.model.instruments import BracketModel
from fluidmargin.risk.perp import presets
from fluidmargin.risk.perp.margin import (
    initial_quote_q,
    initial_ratio,
    liquidation_price_q,
    maintenance_quote_q,
    position_risk,
    value_quote_q,
)


@dataclass(frozen=True)
class Bucket:
    """An isolated position (or a cross account with other positions folded into two numbers)."""

    model: BracketModel
    size: int  # signed base quantums
    sd: int
    entry_q: int
    collateral_q: int
    other_upnl_q: int = 0
    other_mm_q: int = 0

    @property
    def cost(self) -> int:
        return value_quote_q(self.size, self.entry_q, self.sd, Rounding.CEIL)

    @property
    def entry_notional(self) -> int:
        return value_quote_q(abs(self.size), self.entry_q, self.sd, Rounding.CEIL)

    def health(self, price_q: int) -> int:
        r = position_risk(self.model, self.size, self.cost, 0, price_q, self.sd, self.entry_notional)
        return self.collateral_q + self.other_upnl_q + r.upnl_quote_q - r.mm_quote_q - self.other_mm_q

    def liquidation_price(self) -> int | None:
        fixed = self.collateral_q + self.other_upnl_q - self.cost
        return liquidation_price_q(self.model, self.size, self.sd, fixed, self.other_mm_q, self.entry_notional)


USD = QUOTE_SCALE
PX = PRICE_SCALE
FLAT = presets.single_rate("0.01", "0.01")
GATE = presets.single_rate("0.01", 0, close_fee_ppm=600)
BYBIT = presets.single_rate("0.01", 0, mm_on_entry=True)
BYBIT_FEE = presets.single_rate("0.01", 0, mm_on_entry=True, close_fee_ppm=600)
BTCUSDT = presets.binance_btcusdt()
HL_TESTNET = presets.hyperliquid([(0, 40), (10_000, 25), (50_000, 10), (100_000, 5), (300_000, 3)])
DRIFT = presets.drift("0.1", "0.05", "0.0005")
DYDX = presets.dydx("0.05", "0.6")

BUCKETS = [
    # State: model, signed size (base quantums), size decimals, entry, collateral [, other PnL, other MM]
    pytest.param(Bucket(FLAT, 1000, 3, 10 * PX, 2 * USD), id="flat-long"),
    pytest.param(Bucket(FLAT, -1000, 3, 10 * PX, 2 * USD), id="flat-short"),
    pytest.param(Bucket(FLAT, 5000, 3, 10 * PX, 10 * USD, -3 * USD, 1 * USD), id="flat-cross-long"),
    pytest.param(Bucket(GATE, 1000, 3, 10 * PX, 2 * USD), id="gate-fee-long"),
    pytest.param(Bucket(GATE, -1000, 3, 10 * PX, 2 * USD), id="gate-fee-short"),
    pytest.param(Bucket(BYBIT, 1000, 3, 10 * PX, 2 * USD), id="bybit-long"),
    pytest.param(Bucket(BYBIT, -1000, 3, 10 * PX, 2 * USD), id="bybit-short"),
    pytest.param(Bucket(BYBIT_FEE, 1000, 3, 10 * PX, 2 * USD), id="bybit-entry-mm-with-fee-long"),
    pytest.param(Bucket(BYBIT_FEE, -1000, 3, 10 * PX, 2 * USD), id="bybit-entry-mm-with-fee-short"),
    # 100 BTC at 60k = 6M notional, 10x: stays in the 1 % bracket
    pytest.param(Bucket(BTCUSDT, 100_000, 3, 60_000 * PX, 600_000 * USD), id="btcusdt-long"),
    # 190 BTC short at 60k = 11.4M (1 % bracket); liquidated near 75k, 14M+ notional: the 2 % bracket
    pytest.param(Bucket(BTCUSDT, -190_000, 3, 60_000 * PX, 3_000_000 * USD), id="btcusdt-short-crosses-bracket"),
    # 10 BTC at 60k = 600k notional, 3x tier; liquidation falls into a lower tier
    pytest.param(Bucket(HL_TESTNET, 10_000, 3, 60_000 * PX, 400_000 * USD), id="hyperliquid-tiers-long"),
    pytest.param(Bucket(HL_TESTNET, -10_000, 3, 60_000 * PX, 200_000 * USD), id="hyperliquid-tiers-short"),
    # drift: 5000 SOL at 150, sqrt size premium binds
    pytest.param(Bucket(DRIFT, 5_000 * 10**9, 9, 150 * PX, 200_000 * USD), id="drift-long"),
    pytest.param(Bucket(DRIFT, -5_000 * 10**9, 9, 150 * PX, 200_000 * USD), id="drift-short"),
    pytest.param(Bucket(DYDX, 3 * 10**8, 8, 60_000 * PX, 20_000 * USD), id="dydx-long"),
]


@pytest.mark.parametrize("bucket", BUCKETS)
def test_liquidation_price_is_the_health_root_rounded_to_safety(bucket: Bucket) -> None:
    p = bucket.liquidation_price()
    assert p is not None
    # a step that moves the position's value by >= 20 quantums (health by >= 10: slope >= |size| / 2)
    step = -(-20 * 10 ** (bucket.sd + 2) // abs(bucket.size))
    toward_loss = -step if bucket.size > 0 else step
    # at the reported price the bucket still holds its maintenance, up to the quantum rounding of
    # value (down), notional and maintenance (up): the price is reached before the liquidation
    assert bucket.health(p) >= -3
    # and it is not far on the safe side: a step further toward loss, the bucket is under maintenance
    assert bucket.health(p + toward_loss) < 0
    assert bucket.health(p - toward_loss) > 0


@pytest.mark.parametrize(
    ("bucket", "expected"),
    [
        # long with collateral >= notional (1x) at mmr 1 %: no positive price liquidates it
        pytest.param(Bucket(FLAT, 1000, 3, 10 * PX, 10 * USD), None, id="unleveraged-long"),
        pytest.param(Bucket(FLAT, 0, 3, 10 * PX, 10 * USD), None, id="no-position"),
    ],
)
def test_no_liquidation_price(bucket: Bucket, expected: None) -> None:
    assert bucket.liquidation_price() is expected
    if bucket.size:
        assert bucket.health(1) >= 0  # not under maintenance even at the smallest price


@pytest.mark.parametrize(
    ("model", "notional_q", "leverage", "expected_q"),
    [
        # Binance: IM = notional / leverage, rounded up: 1000 / 3 = 333.333334
        pytest.param(FLAT, 1000 * USD, 3, 333_333_334, id="ceil"),
        # leverage above the bracket's maximum is capped: 5M BTCUSDT is in the 3M-12M bracket (50x)
        pytest.param(BTCUSDT, 5_000_000 * USD, 125, 100_000 * USD, id="capped-by-bracket"),
        pytest.param(BTCUSDT, 40_000 * USD, 125, 320 * USD, id="first-bracket-125x"),
        # never above the notional
        pytest.param(FLAT, 7, 1, 7, id="1x"),
        # dYdX IMF floor: 5 % of 1000 whatever leverage is asked for
        pytest.param(DYDX, 1000 * USD, 100, 50 * USD, id="dydx-imf-floor"),
    ],
)
def test_initial_margin(model: BracketModel, notional_q: int, leverage: int, expected_q: int) -> None:
    assert initial_quote_q(model, notional_q, leverage) == expected_q


@pytest.mark.parametrize(
    ("model", "notional_q", "expected_q"),
    [
        # 0.4 % of 333 quantums = 1.332 -> 2 (requirements round up)
        pytest.param(presets.single_rate("0.004"), 333, 2, id="rounds-up"),
        # 1 % of 1000 - 100 cum would be negative: floored at zero
        pytest.param(presets.single_rate("0.01", "100"), 1000 * USD, 0, id="never-negative"),
        # BTCUSDT 600k exactly: third bracket 0.65 % - 950 = 2950
        pytest.param(BTCUSDT, 600_000 * USD, 2950 * USD, id="btcusdt-floor"),
        # gate: mmr plus taker fee on the notional: 10 * (1 % + 0.06 %)
        pytest.param(GATE, 10 * USD, 106_000, id="close-fee"),
    ],
)
def test_maintenance_margin(model: BracketModel, notional_q: int, expected_q: int) -> None:
    assert maintenance_quote_q(model, notional_q) == expected_q


def test_entry_notional_maintenance_ignores_the_mark() -> None:
    # Bybit-simple: MM on the entry notional (10 at entry 10), whatever the mark
    assert maintenance_quote_q(BYBIT, 5 * USD, entry_notional_quote_q=10 * USD) == 100_000
    assert maintenance_quote_q(BYBIT, 20 * USD, entry_notional_quote_q=10 * USD) == 100_000


@pytest.mark.parametrize(
    ("imr", "expected_ppm"),
    [
        pytest.param("0.1", 100_000, id="divides-1e6"),
        # Drift markets publish IMRs like 3 % (1/0.03 = 33.3x): a trader at the market's maximum
        # leverage must need exactly the IMR, not 1/33 = 3.0303 %
        pytest.param("0.03", 30_000, id="imr-3%"),
    ],
)
def test_drift_preset_initial_ratio_at_max_leverage_is_the_imr(imr: str, expected_ppm: int) -> None:
    model = presets.drift(imr, "0.015", "0")
    lev = model.brackets[0].max_leverage
    assert initial_ratio(model, 1000 * USD, lev) == Fraction(expected_ppm, PPM)
